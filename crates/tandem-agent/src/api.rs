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
//! | method | path | what |
//! |---|---|---|
//! | GET | `/v1/status` | this node: the core's status plus the agent's |
//! | GET | `/v1/cluster` | every node's status (peers asked over their APIs) |
//! | POST | `/v1/command` | `{"command": ..., "node": "NAME"?}`: an HA command |
//! | POST | `/v1/listener` | `{"action": "suspend"\|"resume", "drain_timeout_ms"?, "node"?}` |
//! | GET | `/metrics` | Prometheus text format, no token needed |
//! | POST | `/v1/sync/...` | cluster fsync, resync, report: see [`crate::replication`] |

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tandem_core::Command;
use tokio::sync::{mpsc, oneshot};

use crate::Error;

/// A request from the API to the driver loop.
pub enum ApiRequest {
    /// This node's report.
    Status {
        /// Where the answer goes.
        reply: oneshot::Sender<serde_json::Value>,
    },
    /// An HA command.
    Command {
        /// The command.
        command: Command,
        /// The node it is for; this node when `None`.
        node: Option<String>,
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
    /// The Prometheus text.
    Metrics {
        /// Where the answer goes.
        reply: oneshot::Sender<String>,
    },
}

/// The body of `POST /v1/command`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandRequest {
    /// The command, as the core spells it (e.g. `"failover-standby"`,
    /// `{"ha-preempt": false}`).
    pub command: Command,
    /// The node that should execute it; the answering node when absent.
    #[serde(default)]
    pub node: Option<String>,
}

/// `suspend` or `resume`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListenerAction {
    /// Stop accepting new connections; let sessions in progress finish.
    Suspend,
    /// Accept again.
    Resume,
}

/// The body of `POST /v1/listener`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListenerRequest {
    /// What to do.
    pub action: ListenerAction,
    /// Drain timeout for a suspend, in milliseconds (default 30 s).
    #[serde(default)]
    pub drain_timeout_ms: Option<u64>,
    /// The node it is for; the answering node when absent.
    #[serde(default)]
    pub node: Option<String>,
}

/// The answer to a command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandReply {
    /// The node that executed (or forwarded) it.
    pub node: String,
    /// `done`, `refused` or `forwarded`.
    pub outcome: String,
    /// Why it was refused, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What happened as a result (role changes and the like).
    #[serde(default)]
    pub events: Vec<serde_json::Value>,
}

#[derive(Clone)]
struct ApiState {
    token: String,
    driver: mpsc::Sender<ApiRequest>,
    /// `(name, API address)` of every peer.
    peers: Vec<(String, SocketAddr)>,
    client: reqwest::Client,
}

/// Binds the API and serves it until the process ends.
pub async fn serve(
    addr: SocketAddr,
    token: String,
    peers: Vec<(String, SocketAddr)>,
    driver: mpsc::Sender<ApiRequest>,
    extra_routes: Router,
) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Bind {
            what: "management API".into(),
            addr,
            source: e,
        })?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| Error::State(format!("HTTP client: {e}")))?;
    let state = ApiState {
        token,
        driver,
        peers,
        client,
    };
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/cluster", get(cluster))
        .route("/v1/command", post(command))
        .route("/v1/listener", post(listener_command))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(extra_routes);
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

fn authorized(state: &ApiState, headers: &HeaderMap) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compare in constant time so the token cannot be guessed byte by byte.
    given.is_some_and(|g| {
        g.len() == state.token.len()
            && g.bytes()
                .zip(state.token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

fn denied() -> Response {
    (StatusCode::UNAUTHORIZED, Json(serde_json::json!({"error": "missing or wrong bearer token (see the node's token_file)"}))).into_response()
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({"error": "the agent is shutting down"})),
    )
        .into_response()
}

async fn ask<T>(
    state: &ApiState,
    make: impl FnOnce(oneshot::Sender<T>) -> ApiRequest,
) -> Option<T> {
    let (reply, answer) = oneshot::channel();
    state.driver.send(make(reply)).await.ok()?;
    answer.await.ok()
}

async fn status(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return denied();
    }
    match ask(&state, |reply| ApiRequest::Status { reply }).await {
        Some(report) => Json(report).into_response(),
        None => unavailable(),
    }
}

async fn cluster(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return denied();
    }
    let Some(local) = ask(&state, |reply| ApiRequest::Status { reply }).await else {
        return unavailable();
    };
    let mut nodes = vec![local];
    // Peers are few (usually one) and each ask is bounded by the client's
    // timeout, so asking in turn keeps this simple.
    for (name, addr) in &state.peers {
        nodes.push(peer_status(&state, name, *addr).await);
    }
    Json(serde_json::json!({ "nodes": nodes })).into_response()
}

async fn peer_status(state: &ApiState, name: &str, addr: SocketAddr) -> serde_json::Value {
    let request = state
        .client
        .get(format!("http://{addr}/v1/status"))
        .bearer_auth(&state.token);
    let answer = match request.send().await {
        Ok(r) if r.status().is_success() => r
            .json::<serde_json::Value>()
            .await
            .map_err(|e| e.to_string()),
        Ok(r) => Err(format!("answered {}", r.status())),
        Err(e) => Err(e.to_string()),
    };
    answer.unwrap_or_else(|error| {
        serde_json::json!({"node": {"node": name}, "error": format!("unreachable at {addr}: {error}")})
    })
}

async fn command(
    State(state): State<ApiState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(request): Json<CommandRequest>,
) -> Response {
    if !authorized(&state, &headers) {
        return denied();
    }
    let user = headers
        .get("x-tandem-user")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown");
    let caller = format!("{user}@{from}");
    tracing::info!(caller, command = %request.command, node = ?request.node, "operator command");
    let asked = ask(&state, |reply| ApiRequest::Command {
        command: request.command,
        node: request.node,
        caller,
        reply,
    })
    .await;
    match asked {
        Some(reply) if reply.outcome == "refused" => {
            (StatusCode::CONFLICT, Json(reply)).into_response()
        }
        Some(reply) => Json(reply).into_response(),
        None => unavailable(),
    }
}

async fn listener_command(
    State(state): State<ApiState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(request): Json<ListenerRequest>,
) -> Response {
    if !authorized(&state, &headers) {
        return denied();
    }
    let user = headers
        .get("x-tandem-user")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown");
    let caller = format!("{user}@{from}");
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
        let answer = state
            .client
            .post(format!("http://{addr}/v1/listener"))
            .bearer_auth(&state.token)
            .header("x-tandem-user", user)
            .json(&forwarded)
            .send()
            .await;
        return match answer {
            Ok(r) => {
                let status = r.status();
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                (status, Json(body)).into_response()
            }
            Err(e) => (
                StatusCode::BAD_GATEWAY,
                Json(serde_json::json!({"error": format!("{node} is unreachable at {addr}: {e}")})),
            )
                .into_response(),
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
    match asked {
        Some(reply) if reply.outcome == "refused" => {
            (StatusCode::CONFLICT, Json(reply)).into_response()
        }
        Some(reply) => Json(reply).into_response(),
        None => unavailable(),
    }
}

async fn metrics(State(state): State<ApiState>) -> Response {
    match ask(&state, |reply| ApiRequest::Metrics { reply }).await {
        Some(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        None => unavailable(),
    }
}
