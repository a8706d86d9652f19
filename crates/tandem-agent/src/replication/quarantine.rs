//! Quarantined files back where they belong (issue 14).
//!
//! A catch-up never deletes a file this node may have acknowledged and the
//! active never saw: the receiver moves such files to
//! `STATE_DIR/quarantine/<when>-<from>/` first (see
//! [`tandem_sync::quarantine`]). This module gets them delivered: with
//! `merge_quarantine` (the default) a task sends each file to the active
//! node, which writes it into its data dir where it is absent and
//! replicates it like a commit — the relay picks new queue files up by
//! itself, so a merged message is delivered at least once. A file the
//! active already has with the same content is a duplicate (counted); with
//! other content, a conflict, kept for the operator.
//!
//! ```text
//!  standby: quarantine/ID/queue/X ── PUT /v1/sync/merge/queue/X ──► active:
//!                                                  data/queue/X (absent) + commit
//! ```
//!
//! The operator's side: `GET /v1/sync/quarantine`,
//! `POST /v1/sync/quarantine/{id}/restore` (merge now, whatever
//! `merge_quarantine` says) and `DELETE /v1/sync/quarantine/{id}`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tandem_sync::quarantine::{self, QuarantineBatch};
use tandem_sync::store::{DataDir, write_atomic};

use super::Shared;
use super::routes::not_active;
use crate::Error;
use crate::api::{
    DroppedBatch, ErrorBody, MergeAnswer, MergeOutcome, MergeRefusal, QuarantineList,
    QuarantineStatus, QuarantineSummary, RestoredBatch,
};
use crate::server::error_answer;

/// How often the merge task looks for work when nothing wakes it.
const MERGE_EVERY: Duration = Duration::from_secs(2);

/// How long the active may take to write and replicate one merged file.
const MERGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts the task that merges quarantined files into the active.
pub(super) fn start(shared: Arc<Shared>) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(MERGE_EVERY) => {}
                () = shared.quarantine_wake.notified() => {}
            }
            if !shared.settings.merge_quarantine {
                continue;
            }
            if let Err(e) = merge_all(&shared).await {
                let error = e.to_string();
                let mut counters = shared.merges();
                if counters.last_error.as_deref() != Some(error.as_str()) {
                    tracing::warn!(error, "cannot merge quarantined files yet; retrying");
                }
                counters.last_error = Some(error);
            }
        }
    });
}

/// Where the receiver puts files aside: `STATE_DIR/quarantine`.
pub(super) fn quarantine_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("quarantine")
}

/// The batches in quarantine; an unreadable dir reads as none (logged).
pub(super) fn batches(shared: &Shared) -> Vec<QuarantineBatch> {
    match quarantine::list(&quarantine_dir(&shared.state_dir)) {
        Ok(batches) => batches,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the quarantine");
            Vec::new()
        }
    }
}

/// The `quarantine` part of the sync status.
pub(super) fn status(shared: &Shared) -> QuarantineStatus {
    let batches = batches(shared);
    QuarantineStatus {
        dir: quarantine_dir(&shared.state_dir),
        list: batches
            .iter()
            .map(|b| QuarantineSummary {
                id: b.id.clone(),
                from: b.from.clone(),
                at_unix_ms: b.at_unix_ms,
                files: b.paths.len(),
                bytes: b.bytes,
            })
            .collect(),
        batches: batches.len(),
        files: batches.iter().map(|b| b.paths.len()).sum(),
        merge: shared.settings.merge_quarantine,
        counters: shared.merges().clone(),
    }
}

async fn merge_all(shared: &Arc<Shared>) -> Result<(), Error> {
    for batch in batches(shared) {
        merge_batch(shared, &batch.id).await?;
    }
    Ok(())
}

/// Merges every file of batch `id` into the active: here if this node is
/// active, else through the active's API. A merged or duplicate file
/// leaves the quarantine; a conflict stays.
async fn merge_batch(shared: &Arc<Shared>, id: &str) -> Result<RestoredBatch, Error> {
    let dir = quarantine_dir(&shared.state_dir);
    let files = quarantine::restore_paths(&dir, id)?;
    let mut summary = RestoredBatch {
        id: id.to_string(),
        ..RestoredBatch::default()
    };
    for (relative, file) in files {
        let content = tokio::fs::read(&file).await.map_err(Error::io(&file))?;
        let mode = file_mode(&file);
        let outcome = if shared.replicator().is_some() {
            merge_here(shared, &relative, &content, mode).await?
        } else {
            merge_at_active(shared, &relative, content).await?
        };
        let mut counters = shared.merges();
        match outcome {
            MergeOutcome::Merged => {
                counters.merged += 1;
                summary.merged += 1;
            }
            MergeOutcome::Duplicate => {
                counters.duplicates += 1;
                summary.duplicates += 1;
            }
            MergeOutcome::Conflict => {
                counters.conflicts += 1;
                summary.conflicts += 1;
                continue;
            }
        }
        counters.last_error = None;
        drop(counters);
        quarantine::remove_path(&dir, id, &relative)?;
    }
    if summary.merged + summary.duplicates + summary.conflicts > 0 {
        tracing::info!(
            batch = id,
            merged = summary.merged,
            duplicates = summary.duplicates,
            conflicts = summary.conflicts,
            "quarantined files merged back into the active"
        );
    }
    Ok(summary)
}

fn file_mode(file: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(file).map_or(0o644, |m| m.permissions().mode() & 0o7777)
}

/// On the active: puts `content` at `relative` in the data dir unless a
/// file is there already, and replicates it.
async fn merge_here(
    shared: &Arc<Shared>,
    relative: &str,
    content: &[u8],
    mode: u32,
) -> Result<MergeOutcome, Error> {
    // Taken first and held: a node that stops being active mid-merge must
    // still replicate what it wrote (or say it failed, so the sender keeps
    // its copy) — never leave a file only here, for the next catch-up to
    // delete.
    let Some(replicator) = shared.replicator() else {
        return Err(Error::refused(format!(
            "{} is not active: merge into the active node",
            shared.node
        )));
    };
    let data_dir = shared.settings.data_dir.clone();
    let relative = relative.to_string();
    let content = content.to_vec();
    let (outcome, path) = tokio::task::spawn_blocking(move || {
        let data = DataDir::open(&data_dir)?;
        let relative = data.relative(Path::new(&relative))?;
        let path = data_dir.join(&relative);
        match std::fs::read(&path) {
            Ok(existing) if existing == content => return Ok((MergeOutcome::Duplicate, path)),
            Ok(_) => return Ok((MergeOutcome::Conflict, path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(Error::Io { path, source }),
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
        }
        write_atomic(&path, &content, mode)?;
        Ok((MergeOutcome::Merged, path))
    })
    .await
    .map_err(Error::task("merging a quarantined file"))??;
    if outcome == MergeOutcome::Merged {
        // Degraded is fine: a standby that missed it is recorded, and the
        // file is quarantined there, not deleted, at its next catch-up.
        replicator
            .commit(std::slice::from_ref(&path))
            .await
            .map_err(|source| Error::NotReplicated { path, source })?;
    }
    Ok(outcome)
}

/// On a standby: sends one file to the active's API.
async fn merge_at_active(
    shared: &Shared,
    relative: &str,
    content: Vec<u8>,
) -> Result<MergeOutcome, Error> {
    let Some((active, Some(api))) = shared.active_peer() else {
        return Err(Error::refused(
            "no active node to merge into: the merge waits for one",
        ));
    };
    let route = format!("/v1/sync/merge/{relative}");
    let unreachable = |source| Error::ApiUnreachable {
        addr: api,
        path: route.clone(),
        source,
    };
    // Read raw: a conflict is the active's answer in a 409, not a failure.
    let response = shared
        .api
        .at(api)
        .with_timeout(MERGE_TIMEOUT)
        .request(reqwest::Method::PUT, &route)
        .body(content)
        .send()
        .await
        .map_err(unreachable)?;
    let status = response.status();
    let body = response.bytes().await.map_err(unreachable)?;
    if status.is_success() {
        return serde_json::from_slice::<MergeAnswer>(&body)
            .map(|answer| answer.outcome)
            .map_err(|e| Error::ApiAnswer {
                addr: api,
                path: route.clone(),
                detail: format!("{active}'s answer for {relative}: {e}"),
            });
    }
    let refusal: MergeRefusal = serde_json::from_slice(&body).unwrap_or_default();
    if status == reqwest::StatusCode::CONFLICT && refusal.conflict {
        return Ok(MergeOutcome::Conflict);
    }
    let why = if refusal.error.is_empty() {
        "no reason given"
    } else {
        &refusal.error
    };
    Err(Error::ApiRefused {
        addr: api,
        path: route,
        status: status.as_u16(),
        body: Box::new(ErrorBody {
            error: format!("{active}: {why}"),
            ..ErrorBody::default()
        }),
    })
}

// ------------------------------------------------------------------ routes

/// `PUT /v1/sync/merge/{*path}`: on the active, a quarantined file from a
/// peer. 200 `{"outcome": "merged"|"duplicate"}`; 409 with `conflict` when
/// a different file is there; 409 naming the active when this node is not.
pub(super) async fn merge(
    State(shared): State<Arc<Shared>>,
    UrlPath(relative): UrlPath<String>,
    content: Bytes,
) -> Response {
    if shared.replicator().is_none() {
        return not_active(&shared);
    }
    match merge_here(&shared, &relative, &content, 0o644).await {
        Ok(MergeOutcome::Conflict) => {
            let refusal = MergeRefusal {
                error: format!(
                    "{relative} exists on {} with other content; kept in the sender's quarantine",
                    shared.node
                ),
                conflict: true,
            };
            (StatusCode::CONFLICT, Json(refusal)).into_response()
        }
        Ok(outcome) => Json(MergeAnswer { outcome }).into_response(),
        Err(e) => error_answer(e.status_code(), e.to_string()),
    }
}

/// `GET /v1/sync/quarantine`: this node's batches.
pub(super) async fn list(State(shared): State<Arc<Shared>>) -> Response {
    Json(QuarantineList {
        node: shared.node.clone(),
        merge: shared.settings.merge_quarantine,
        batches: batches(&shared),
    })
    .into_response()
}

/// `POST /v1/sync/quarantine/{id}/restore`: merge the batch now.
pub(super) async fn restore(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    match merge_batch(&shared, &id).await {
        Ok(summary) => Json(summary).into_response(),
        Err(e) => error_answer(e.status_code(), e.to_string()),
    }
}

/// `DELETE /v1/sync/quarantine/{id}`: the operator gives the batch up.
pub(super) async fn drop_batch(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    match quarantine::drop_batch(&quarantine_dir(&shared.state_dir), &id) {
        Ok(()) => {
            tracing::warn!(batch = %id, "quarantine batch dropped by the operator");
            Json(DroppedBatch { dropped: id }).into_response()
        }
        Err(e) => error_answer(StatusCode::NOT_FOUND, e.to_string()),
    }
}
