//! The sync routes the agent's API serves for this node's replication:
//! `POST /v1/sync/commit` (the service's cluster fsync), `POST
//! /v1/sync/resync` and `GET /v1/sync/report`. Apart from
//! [`super`] so that the replication state and its HTTP face read apart.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use tokio::sync::mpsc;

use super::{Shared, config_sync};
use crate::api::{CommitBody, ErrorBody, ResyncDone, ResyncLine, ResyncProgress};
use crate::server::error_answer;

/// 409 naming the active node and its API, so a client can ask there.
pub(super) fn not_active(shared: &Shared) -> Response {
    let (active, active_api) = match shared.active_peer() {
        Some((name, api)) => (Some(name), api),
        None => (None, None),
    };
    let error = match &active {
        Some(name) => format!(
            "{} is not the active node; {name} is (ask its API at {})",
            shared.node,
            active_api.map_or_else(|| "?".to_string(), |a| a.to_string())
        ),
        None => format!("{} is not the active node, and no node is", shared.node),
    };
    let body = ErrorBody {
        error,
        active,
        active_api,
    };
    (StatusCode::CONFLICT, Json(body)).into_response()
}

/// Cluster fsync. 200 with the durability reached; 503 when `strict` and
/// a standby did not confirm (the caller must not acknowledge: the relay
/// answers 451); 400 for a path outside the data dir; 409 when this
/// node is not active (a service running here must not acknowledge).
pub(super) async fn commit(
    State(shared): State<Arc<Shared>>,
    Json(request): Json<CommitBody>,
) -> Response {
    let paths = request.into_paths();
    let Some(replicator) = shared.replicator() else {
        return not_active(&shared);
    };
    match replicator.commit(&paths).await {
        Ok(durability) => Json(durability).into_response(),
        Err(e @ tandem_sync::Error::NotReplicated { .. }) => {
            error_answer(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        Err(e @ tandem_sync::Error::BadPath { .. }) => error_answer(
            StatusCode::BAD_REQUEST,
            format!(
                "{e} (paths must be under the data dir {})",
                shared.settings.data_dir.display()
            ),
        ),
        Err(e) => error_answer(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `tandem ha resync`: pushes the config files, then every data file, to
/// every standby. The answer is a stream of JSON lines: `{"progress": ...}`
/// after each chunk, then `{"done": [outcome per peer], "config": [...]}`.
pub(super) async fn resync(State(shared): State<Arc<Shared>>) -> Response {
    let Some(replicator) = shared.replicator() else {
        return not_active(&shared);
    };
    let (lines, mut rx) = mpsc::channel::<ResyncLine>(64);
    let progress_lines = lines.clone();
    tokio::spawn(async move {
        // A resync is the operator's explicit "make them equal": held
        // config changes go too (FortiMail's `ha resync` forces config).
        let config_outcomes = config_sync::push(&shared, &replicator, true, true).await;
        let progress: tandem_sync::replicator::ProgressFn = Arc::new(move |p| {
            // A full channel only thins the progress bar; never block the
            // transfer on a slow client.
            let line = ResyncLine::Progress(ResyncProgress {
                progress: p.clone(),
            });
            let _ = progress_lines.try_send(line);
        });
        let outcomes = replicator.resync(Some(progress)).await;
        let done = ResyncLine::Done(ResyncDone {
            done: outcomes,
            config: config_outcomes,
        });
        let _ = lines.send(done).await;
    });
    let stream =
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|line| line.map(json_line)));
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// One line of the resync stream; a line that cannot be written ends the
/// stream, which the client reports as a resync without a result.
fn json_line(line: ResyncLine) -> Result<String, std::io::Error> {
    let mut text = serde_json::to_string(&line).map_err(std::io::Error::other)?;
    text.push('\n');
    Ok(text)
}

/// `tandem sync report`: every node's data manifest compared file by file.
pub(super) async fn report(State(shared): State<Arc<Shared>>) -> Response {
    let Some(replicator) = shared.replicator() else {
        return not_active(&shared);
    };
    match replicator.report().await {
        Ok(report) => Json(report).into_response(),
        Err(e) => error_answer(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
