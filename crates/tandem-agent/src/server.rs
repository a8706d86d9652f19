//! The control API: HTTP/JSON on the node's management address.
//!
//! Every call but `/metrics` needs `Authorization: Bearer <token>` (the
//! token file is the same on every node, so any node can ask any other);
//! without it the answer is 401. Every mutating call is logged with its
//! caller. The API is cluster-aware like an ESA cluster: `/v1/cluster`
//! answers for every node, and a command aimed at another node is forwarded
//! to it.
//!
//! The handlers never touch HA state: they send an [`ApiRequest`] to the
//! driver loop, which owns the state machine, and wait for its reply.
//!
//! What each route takes and answers is typed in [`crate::api`] (listed in
//! `docs/api.md`); every caller, the CLI and the agents themselves, goes
//! through [`ApiClient`].
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/v1/status` | this node: the core's status plus the agent's |
//! | GET | `/v1/cluster` | every node's status (peers asked over their APIs) |
//! | POST | `/v1/command` | `{"command": ..., "node": "NAME"?}`: an HA command |
//! | POST | `/v1/listener` | `{"action": "suspend"\|"resume", "drain_timeout_ms"?, "node"?}` |
//! | GET | `/v1/images` | stored images (verified?, signer, slot) and the slot table |
//! | PUT | `/v1/images/NAME` | upload an image or its `.minisig` (`x-sha256` checked); in chunks with `?offset=N[&done=true]` |
//! | GET | `/v1/images/NAME/upload` | how much of a chunked upload arrived (to resume) |
//! | POST | `/v1/images/install` | `{"image": NAME}`: verify and unpack into the inactive slot |
//! | POST | `/v1/images/boot` | `{"slot": "a"\|"b"?}`: boot a slot (default: the pending one) |
//! | POST | `/v1/images/rollback` | back to the other slot |
//! | GET/POST | `/v1/upgrade` | the upgrade journal / submit an upgrade (active node) |
//! | POST | `/v1/upgrade/plan` | the plan an upgrade would follow |
//! | POST | `/v1/upgrade/abort` | stop at the next safe point |
//! | POST | `/v1/upgrade/resume` | a rollout in waves goes on after its canaries |
//! | PUT | `/v1/upgrade/journal` | a peer's replica of the journal |
//! | POST | `/v1/backup` | copy config and HA state to `state_dir/backups` |
//! | GET | `/v1/backups` | this node's backups |
//! | POST | `/v1/backup/restore` | `{"backup": ID, "force"?}`: restore (another node's only with force) |
//! | POST | `/v1/config-link` | `{"connected": bool}`: ESA's clusterconfig disconnect/reconnect |
//! | GET | `/metrics` | Prometheus text format, no token needed |
//! | POST | `/v1/sync/...` | cluster fsync, resync, report: see [`crate::replication`] |
//! | GET/PUT/POST | `/v1/config[/NAME\|/push]` | cluster config files: list, change, push now (with `[sync]`) |

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use tandem_core::Command;
use tandem_sync::fencing::Fencing;
use tokio::sync::{mpsc, oneshot};

use tandem_image::slots::SlotName;
use tandem_upgrade::UpgradeRun;

use crate::Error;
use crate::api::{
    AbortAnswer, ApiClient, BootAnswer, BootRequest, ClusterNode, ClusterReport, CommandOutcome,
    CommandReply, CommandRequest, ConfigLinkRequest, EPOCH_HEADER, ErrorBody, InstallRequest,
    ListenerAction, ListenerRequest, NodeName, PlanAnswer, ReplicaAnswer, RestoreRequest,
    ResumeAnswer, RollbackAnswer, RolloutUpgradeRequest, StatusReport, UnreachableNode,
    UpgradeStatus,
};
use crate::backup;
use crate::firmware::Firmware;
use crate::upgrade::{self, Upgrades};

/// A request from the API to the driver loop.
pub enum ApiRequest {
    /// This node's report.
    Status {
        /// Where the answer goes.
        reply: oneshot::Sender<StatusReport>,
    },
    /// An HA command.
    Command {
        /// The command.
        command: Command,
        /// The node it is for; this node when `None`.
        node: Option<String>,
        /// A takeover even with data not in sync.
        force: bool,
        /// Who asked, for the log.
        caller: String,
        /// Where the answer goes.
        reply: oneshot::Sender<CommandReply>,
    },
    /// Suspend or resume the service's listener on this node.
    Listener {
        /// What to do.
        action: ListenerAction,
        /// How long sessions in progress may take (suspend only).
        drain_timeout: Duration,
        /// Who asked, for the log.
        caller: String,
        /// Where the answer goes.
        reply: oneshot::Sender<CommandReply>,
    },
    /// Boot an image slot (the pending one when `slot` is `None`).
    Boot {
        /// The slot.
        slot: Option<SlotName>,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<BootAnswer, Error>>,
    },
    /// Roll back to the other image slot.
    Rollback {
        /// Where the answer goes.
        reply: oneshot::Sender<Result<RollbackAnswer, Error>>,
    },
    /// The Prometheus text.
    Metrics {
        /// Where the answer goes.
        reply: oneshot::Sender<String>,
    },
}

#[derive(Clone)]
struct ApiState {
    driver: mpsc::Sender<ApiRequest>,
    /// `(name, API address)` of every peer.
    peers: Vec<(String, SocketAddr)>,
    /// For asking peers (any address: see [`ApiClient::at`]).
    client: ApiClient,
    firmware: Firmware,
    upgrades: Upgrades,
    state_dir: std::path::PathBuf,
    config_file: std::path::PathBuf,
    node: String,
}

/// What the API serves from.
pub struct ApiSetup {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The bearer token.
    pub token: String,
    /// `(name, API address)` of every peer.
    pub peers: Vec<(String, SocketAddr)>,
    /// The driver loop's request channel.
    pub driver: mpsc::Sender<ApiRequest>,
    /// The node's images and slots.
    pub firmware: Firmware,
    /// The upgrade coordinator.
    pub upgrades: Upgrades,
    /// The node's state directory (backups, config link).
    pub state_dir: std::path::PathBuf,
    /// The node's config file (backups).
    pub config_file: std::path::PathBuf,
    /// This node's name (a restore checks it).
    pub node: String,
    /// Routes other modules serve (data sync).
    pub extra_routes: Router,
    /// The node's fencing epochs: its writes carry its own, and writes
    /// stamped older than the newest it knows are refused.
    pub fencing: Arc<Fencing>,
}

/// Binds the API and serves it until the process ends.
pub async fn serve(setup: ApiSetup) -> Result<(), Error> {
    let ApiSetup {
        addr,
        token,
        peers,
        driver,
        firmware,
        upgrades,
        state_dir,
        config_file,
        node,
        extra_routes,
        fencing,
    } = setup;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Bind {
            what: "management API".into(),
            addr,
            source: e,
        })?;
    // A peer slower than this is reported unreachable rather than holding
    // up `tandem status` for the whole cluster.
    let client = ApiClient::new(addr, token.clone())?
        .with_timeout(Duration::from_secs(2))
        .with_fencing(fencing.clone());
    let token_check = Arc::new(token.clone());
    let state = ApiState {
        driver,
        peers,
        client,
        firmware,
        upgrades,
        state_dir,
        config_file,
        node,
    };
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/cluster", get(cluster))
        .route("/v1/command", post(command))
        .route("/v1/listener", post(listener_command))
        .route("/v1/images", get(images_list))
        .route(
            "/v1/images/{name}",
            put(image_upload).layer(DefaultBodyLimit::max(MAX_IMAGE_BYTES)),
        )
        .route("/v1/images/{name}/upload", get(image_partial))
        .route("/v1/images/install", post(image_install))
        .route("/v1/images/boot", post(image_boot))
        .route("/v1/images/rollback", post(image_rollback))
        .route("/v1/upgrade", get(upgrade_status).post(upgrade_begin))
        .route("/v1/upgrade/plan", post(upgrade_plan))
        .route("/v1/upgrade/abort", post(upgrade_abort))
        .route("/v1/upgrade/resume", post(upgrade_resume))
        .route("/v1/upgrade/journal", put(upgrade_replica))
        .route("/v1/backup", post(backup))
        .route("/v1/backups", get(backups_list))
        .route("/v1/backup/restore", post(backup_restore))
        .route("/v1/config-link", post(config_link))
        .with_state(state.clone())
        .merge(extra_routes)
        // Every route above needs the token; /metrics (below) does not:
        // Prometheus scrapes it without credentials.
        .layer(middleware::from_fn_with_state(fencing, refuse_stale_writes))
        .layer(middleware::from_fn_with_state(token_check, require_token));
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(app);
    tokio::spawn(async move {
        let served = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "management API stopped");
        }
    });
    Ok(())
}

/// Whether the request carries the token, compared in constant time so it
/// cannot be guessed byte by byte.
pub(crate) fn token_ok(token: &str, headers: &HeaderMap) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    given.is_some_and(|g| {
        g.len() == token.len()
            && g.bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

/// A write another agent stamped with an older fencing epoch than this
/// node knows comes from a node that no longer holds the service (a paused
/// active that woke): 409, counted.
async fn refuse_stale_writes(
    State(fencing): State<Arc<Fencing>>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let epoch = request
        .headers()
        .get(EPOCH_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(epoch) = epoch
        && let Some(newest) = fencing.stale(epoch)
    {
        let refused = fencing.refuse_write();
        tracing::warn!(epoch, newest, refused, path = %request.uri().path(), "refused a write from an older epoch");
        return error_answer(
            StatusCode::CONFLICT,
            format!(
                "stale fencing epoch {epoch}: this node knows epoch {newest}, so the sender no longer holds the service"
            ),
        );
    }
    next.run(request).await
}

/// The API's one gate: 401 without the right bearer token.
async fn require_token(
    State(token): State<Arc<String>>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    if token_ok(&token, request.headers()) {
        next.run(request).await
    } else {
        denied()
    }
}

/// Every error answer: its status and an [`ErrorBody`].
pub(crate) fn error_answer(status: StatusCode, error: impl Into<String>) -> Response {
    let body = ErrorBody {
        error: error.into(),
        ..ErrorBody::default()
    };
    (status, Json(body)).into_response()
}

fn denied() -> Response {
    error_answer(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token (see the node's token_file)",
    )
}

fn unavailable() -> Response {
    error_answer(
        StatusCode::SERVICE_UNAVAILABLE,
        "the agent is shutting down",
    )
}

async fn ask<T>(
    state: &ApiState,
    make: impl FnOnce(oneshot::Sender<T>) -> ApiRequest,
) -> Option<T> {
    let (reply, answer) = oneshot::channel();
    state.driver.send(make(reply)).await.ok()?;
    answer.await.ok()
}

async fn status(State(state): State<ApiState>) -> Response {
    match ask(&state, |reply| ApiRequest::Status { reply }).await {
        Some(report) => Json(report).into_response(),
        None => unavailable(),
    }
}

async fn cluster(State(state): State<ApiState>) -> Response {
    let Some(local) = ask(&state, |reply| ApiRequest::Status { reply }).await else {
        return unavailable();
    };
    let mut nodes = vec![ClusterNode::Reachable(Box::new(local))];
    // Peers are few (usually one) and each ask is bounded by the client's
    // timeout, so asking in turn keeps this simple.
    for (name, addr) in &state.peers {
        nodes.push(match state.client.at(*addr).status().await {
            Ok(report) => ClusterNode::Reachable(Box::new(report)),
            Err(error) => ClusterNode::Unreachable(UnreachableNode {
                node: NodeName { node: name.clone() },
                error: format!("unreachable at {addr}: {error}"),
            }),
        });
    }
    Json(ClusterReport { nodes }).into_response()
}

async fn command(
    State(state): State<ApiState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(request): Json<CommandRequest>,
) -> Response {
    let (_, caller) = caller(&headers, from);
    tracing::info!(caller, command = %request.command, node = ?request.node, "operator command");
    // Aimed at a peer: ask its API, so its own answer (done, or refused
    // and why) comes back. Only when its API cannot be reached does the
    // command travel over the heartbeat link, answered "forwarded".
    if let Some((name, addr)) = request
        .node
        .as_ref()
        .filter(|n| **n != state.node)
        .and_then(|n| state.peers.iter().find(|(peer, _)| peer == n))
    {
        let body = CommandRequest {
            node: None,
            ..request.clone()
        };
        let on_behalf = format!("{caller} via {}", state.node);
        // Its answer (done, or refused and why) is the answer; when its API
        // cannot be asked, the heartbeat link is tried.
        match state
            .client
            .at(*addr)
            .on_behalf_of(on_behalf)
            .command(&body)
            .await
        {
            Ok(reply) => return command_answer(reply),
            Err(error) => {
                tracing::warn!(peer = %name, %error, "peer API did not take the forward: forwarding over the heartbeat link")
            }
        }
    }
    let asked = ask(&state, |reply| ApiRequest::Command {
        command: request.command,
        node: request.node,
        force: request.force,
        caller,
        reply,
    })
    .await;
    asked.map_or_else(unavailable, command_answer)
}

/// A command's reply: 409 when refused, so scripts see it in the status.
fn command_answer(reply: CommandReply) -> Response {
    let status = if reply.outcome == CommandOutcome::Refused {
        StatusCode::CONFLICT
    } else {
        StatusCode::OK
    };
    (status, Json(reply)).into_response()
}

/// Who is asking, for the log: the CLI's user (`x-tandem-user`) and
/// `user@address`.
fn caller(headers: &HeaderMap, from: SocketAddr) -> (String, String) {
    let user = headers
        .get("x-tandem-user")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown")
        .to_string();
    let caller = format!("{user}@{from}");
    (user, caller)
}

async fn listener_command(
    State(state): State<ApiState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(request): Json<ListenerRequest>,
) -> Response {
    let (user, caller) = caller(&headers, from);
    tracing::info!(caller, action = ?request.action, node = ?request.node, "listener command");
    // Another node's listener: ask that node's API (the listener is not HA
    // state, so it does not travel over the heartbeat links).
    if let Some(node) = request.node.as_deref()
        && let Some((_, addr)) = state.peers.iter().find(|(name, _)| name == node)
    {
        let forwarded = ListenerRequest {
            node: None,
            ..request
        };
        return match state
            .client
            .at(*addr)
            .on_behalf_of(user)
            .listener(&forwarded)
            .await
        {
            Ok(reply) => command_answer(reply),
            Err(e) => error_answer(StatusCode::BAD_GATEWAY, format!("{node}: {e}")),
        };
    }
    let drain_timeout = Duration::from_millis(request.drain_timeout_ms.unwrap_or(30_000));
    let asked = ask(&state, |reply| ApiRequest::Listener {
        action: request.action,
        drain_timeout,
        caller,
        reply,
    })
    .await;
    asked.map_or_else(unavailable, command_answer)
}

/// The largest image upload accepted.
const MAX_IMAGE_BYTES: usize = 1 << 30;

/// The answer of a call that either succeeds with a body or fails: a
/// refusal is 409 with its reason, a failure of this node 500 (see
/// [`Error::status_code`]); the body is an [`ErrorBody`] either way.
fn slot_answer<T: serde::Serialize>(result: Result<T, Error>) -> Response {
    match result {
        Ok(body) => Json(body).into_response(),
        Err(error) => error_answer(error.status_code(), error.to_string()),
    }
}

async fn images_list(State(state): State<ApiState>) -> Response {
    slot_answer(state.firmware.list().await)
}

/// `?offset=N[&done=true]`: one chunk of a chunked upload.
#[derive(Debug, Deserialize)]
struct ChunkQuery {
    offset: Option<u64>,
    #[serde(default)]
    done: bool,
}

async fn image_upload(
    State(state): State<ApiState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    Query(chunk): Query<ChunkQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let sha256 = headers
        .get("x-sha256")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let firmware = &state.firmware;
    match chunk.offset {
        Some(offset) => {
            if offset == 0 || chunk.done {
                tracing::info!(%from, name, offset, done = chunk.done, "image upload (chunked)");
            }
            slot_answer(
                firmware
                    .store_chunk(&name, offset, body.to_vec(), chunk.done, sha256)
                    .await,
            )
        }
        None => {
            tracing::info!(%from, name, bytes = body.len(), "image upload");
            slot_answer(firmware.store_upload(&name, body.to_vec(), sha256).await)
        }
    }
}

async fn image_partial(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    slot_answer(state.firmware.partial_size(&name).await)
}

async fn image_install(
    State(state): State<ApiState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Json(request): Json<InstallRequest>,
) -> Response {
    tracing::info!(%from, image = ?request.image, version = ?request.version, "image install");
    let installed = match (&request.image, &request.version) {
        (Some(image), _) => state.firmware.install(image).await,
        (None, Some(version)) => state.firmware.install_version(version).await,
        (None, None) => Err(Error::refused("name the image or the version to install")),
    };
    slot_answer(installed)
}

async fn image_boot(
    State(state): State<ApiState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Json(request): Json<BootRequest>,
) -> Response {
    tracing::info!(%from, slot = ?request.slot, "image boot");
    match ask(&state, |reply| ApiRequest::Boot {
        slot: request.slot,
        reply,
    })
    .await
    {
        Some(result) => slot_answer(result),
        None => unavailable(),
    }
}

async fn image_rollback(
    State(state): State<ApiState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
) -> Response {
    tracing::info!(%from, "image rollback");
    match ask(&state, |reply| ApiRequest::Rollback { reply }).await {
        Some(result) => slot_answer(result),
        None => unavailable(),
    }
}

async fn upgrade_status(State(state): State<ApiState>) -> Response {
    let run = state.upgrades.journal().await;
    Json(UpgradeStatus {
        coordinating: state.upgrades.coordinating(),
        run,
    })
    .into_response()
}

/// A plan as text (what `upgrade plan` prints) and as data.
fn plan_answer(plan: Result<tandem_upgrade::UpgradePlan, Error>) -> Response {
    slot_answer(plan.map(|plan| PlanAnswer {
        text: plan.to_string(),
        plan,
    }))
}

async fn upgrade_plan(
    State(state): State<ApiState>,
    Json(request): Json<RolloutUpgradeRequest>,
) -> Response {
    plan_answer(state.upgrades.plan(&request).await)
}

async fn upgrade_begin(
    State(state): State<ApiState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Json(request): Json<RolloutUpgradeRequest>,
) -> Response {
    let (upgrade, rollout) = (&request.upgrade, &request.rollout);
    tracing::warn!(%from, to = upgrade.to, strategy = ?upgrade.strategy, rollback = upgrade.rollback, ?rollout, "upgrade submitted");
    plan_answer(state.upgrades.begin(&request).await)
}

async fn upgrade_abort(
    State(state): State<ApiState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
) -> Response {
    tracing::warn!(%from, "upgrade abort requested");
    slot_answer(state.upgrades.abort().await.map(|()| AbortAnswer {
        abort: "requested: the upgrade stops at the next safe point".into(),
    }))
}

async fn upgrade_resume(
    State(state): State<ApiState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
) -> Response {
    tracing::warn!(%from, "upgrade resume requested");
    slot_answer(state.upgrades.resume().await.map(|()| ResumeAnswer {
        resume: "requested: the rollout goes on after its canaries".into(),
    }))
}

async fn upgrade_replica(State(state): State<ApiState>, Json(run): Json<UpgradeRun>) -> Response {
    slot_answer(
        state
            .upgrades
            .store_replica(run)
            .await
            .map(|()| ReplicaAnswer { stored: true }),
    )
}

async fn backup(
    State(state): State<ApiState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
) -> Response {
    tracing::info!(%from, "backup");
    slot_answer(backup::create(&state.state_dir, &state.config_file))
}

async fn backups_list(State(state): State<ApiState>) -> Response {
    slot_answer(backup::list(&state.state_dir))
}

async fn backup_restore(
    State(state): State<ApiState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Json(request): Json<RestoreRequest>,
) -> Response {
    tracing::warn!(%from, backup = request.backup, force = request.force, "backup restore");
    slot_answer(backup::restore(
        &state.state_dir,
        &state.config_file,
        &state.node,
        &request.backup,
        request.force,
    ))
}

async fn config_link(
    State(state): State<ApiState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Json(request): Json<ConfigLinkRequest>,
) -> Response {
    tracing::info!(%from, connected = request.connected, "cluster config link");
    slot_answer(upgrade::set_config_link(
        &state.state_dir,
        request.connected,
    ))
}

async fn metrics(State(state): State<ApiState>) -> Response {
    match ask(&state, |reply| ApiRequest::Metrics { reply }).await {
        Some(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        None => unavailable(),
    }
}
