//! The tandem agent: the daemon on each node.
//!
//! The decisions are not made here: `tandem-core`'s pure state machine
//! decides, and the agent only does what it is told — sends heartbeats,
//! binds or releases the VIP, starts or stops the service — and feeds back
//! what it observes. That keeps every HA rule testable without sockets.
//!
//! ```text
//!  UDP links ──┐                         ┌─► send heartbeats (links)
//!  sync conns ─┼─► driver ─► Node::step ─┼─► bind/release VIP sockets
//!  API (axum) ─┤   (one select! loop)    ├─► start/stop service (supervisor)
//!  supervisor ─┘                         └─► persist, log, count
//! ```
//!
//! # Layout
//! - [`api`]: the control API's contract: its request and answer types
//!   (listed in `docs/api.md`) and the one [`api::ApiClient`] every caller
//!   uses.
//! - [`backup`]: backups of the node's config and HA state, and restores.
//! - [`config`]: the TOML config file, validated with file/line/key errors;
//!   each section beyond the core's in `config/` (`[sync]`, `[images]`,
//!   `[monitor]`).
//! - [`crash_link`]: authenticated TCP connections to peers, for instant
//!   crash detection (the `[node] sync` address, older than data sync).
//! - [`driver`]: the one loop that feeds the core and executes its outputs;
//!   its effects on the service (`driver/service.rs`) and the VIP
//!   (`driver/vip_claim.rs`), and what it shows (`driver/observe.rs`:
//!   status and metrics).
//! - [`firmware`]: the node's images and A/B slots (install, boot with a
//!   health check, rollback).
//! - [`links`]: heartbeat links (UDP).
//! - [`monitor`]: lservice and rservice probes (FortiMail's monitors).
//! - [`replication`]: `[sync]`: the TLS sync receiver, the active's
//!   replicator, cluster fsync, resync, config sync and the quarantine.
//! - [`server`]: the HTTP/JSON control API and Prometheus `/metrics`.
//! - [`sim`]: a simulated cluster of agents in one process on a paused
//!   clock, over a network tests can cut, delay and heal.
//! - [`state`]: the boot epoch and persisted HA state.
//! - [`supervisor`]: runs the service with the VIP's sockets.
//! - [`upgrade`]: cluster upgrades coordinated by the active node (the
//!   steps, the observation of the cluster, the journal replicated to every
//!   peer, the config link in `upgrade/`).
//! - [`vip`] and [`vip_ip`]: the VIP's listening sockets in `bind` mode, and
//!   the address itself in `ip` mode.

pub mod api;
pub mod backup;
pub mod config;
pub mod crash_link;
pub mod driver;
pub mod etcd;
pub mod firmware;
pub mod links;
pub mod monitor;
pub mod replication;
pub mod server;
pub mod sim;
pub mod state;
pub mod supervisor;
pub mod upgrade;
pub mod vip;
pub mod vip_ip;

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file is invalid; `line` 0 means the whole file.
    #[error("{origin}{}: {key}: {message}", if *line > 0 { format!(":{line}") } else { String::new() })]
    Config {
        /// The config file.
        origin: String,
        /// 1-based line, or 0.
        line: usize,
        /// The key at fault.
        key: String,
        /// What is wrong and what to do.
        message: String,
    },

    /// A socket could not be bound.
    #[error(
        "cannot bind the {what} on {addr}: {source} (is another agent running, or the address wrong?)"
    )]
    Bind {
        /// What the socket is for.
        what: String,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },

    /// The saved HA state is unusable.
    #[error("HA state: {0}")]
    State(String),

    /// An agent's API did not answer.
    #[error(
        "no agent answers at {addr} ({path}): {source} (is it running, and is the address right?)"
    )]
    ApiUnreachable {
        /// The agent's API address.
        addr: SocketAddr,
        /// The route called.
        path: String,
        /// What failed.
        source: reqwest::Error,
    },

    /// An agent's API answered with an error.
    #[error("agent at {addr} refused {path} ({status}): {}", body.error)]
    ApiRefused {
        /// The agent's API address.
        addr: SocketAddr,
        /// The route called.
        path: String,
        /// The HTTP status.
        status: u16,
        /// What it said.
        body: Box<crate::api::ErrorBody>,
    },

    /// An agent's API answered something this version cannot read.
    #[error(
        "agent at {addr} gave an unreadable answer to {path}: {detail} (do both ends run the same tandem version?)"
    )]
    ApiAnswer {
        /// The agent's API address.
        addr: SocketAddr,
        /// The route called.
        path: String,
        /// What did not parse.
        detail: String,
    },

    /// The state machine refused its configuration.
    #[error(transparent)]
    Core(#[from] tandem_core::Error),

    /// The node understood a request (an operator's, or a peer's) and will
    /// not carry it out as things stand; the reason says why and what to do
    /// instead. The API answers it with 409.
    #[error("{reason}")]
    Refused {
        /// Why, and what to do next: shown to the operator as is.
        reason: String,
    },

    /// An image or slot operation failed: the image does not verify, the
    /// slots are not in a state that allows it, or their files failed.
    #[error(transparent)]
    Image(#[from] tandem_image::Error),

    /// An upgrade cannot be planned, or its journal cannot be resumed on
    /// the cluster as it is now.
    #[error(transparent)]
    UpgradePlan(#[from] tandem_upgrade::PlanError),

    /// A release number or an upgrade catalog is not valid.
    #[error(transparent)]
    Version(#[from] tandem_version::Error),

    /// Data sync failed: a file of the data dir or of the quarantine, a
    /// path outside the data dir, a peer.
    #[error(transparent)]
    Sync(#[from] tandem_sync::Error),

    /// A file written into the data dir did not reach the standbys.
    #[error("{path} not replicated: {source}")]
    NotReplicated {
        /// The file.
        path: PathBuf,
        /// What the replicator said.
        source: tandem_sync::Error,
    },

    /// The upgrade journal on disk is not valid JSON of a run.
    #[error("{path} is corrupt ({source}); move it away to forget the upgrade")]
    CorruptJournal {
        /// The journal file.
        path: PathBuf,
        /// What did not parse.
        source: serde_json::Error,
    },

    /// The coordination store could not be reached or used.
    #[error("etcd at {endpoints}: {message}")]
    Etcd {
        /// The endpoints tried.
        endpoints: String,
        /// What failed, and what to do.
        message: String,
    },

    /// Work handed to the blocking pool never finished: it panicked (a
    /// bug) or the runtime is shutting down.
    #[error("{task} did not finish: {source} (see the agent's log)")]
    TaskFailed {
        /// What the task was doing.
        task: &'static str,
        /// Why it ended.
        source: tokio::task::JoinError,
    },
}

impl Error {
    /// A refusal of a request, with why and what to do instead.
    pub(crate) fn refused(reason: impl Into<String>) -> Error {
        Error::Refused {
            reason: reason.into(),
        }
    }

    /// A blocking task that did not finish, doing `task`.
    pub(crate) fn task(task: &'static str) -> impl FnOnce(tokio::task::JoinError) -> Error {
        move |source| Error::TaskFailed { task, source }
    }

    /// The HTTP status the API answers this error with: 409 when the
    /// request was understood and refused (an image that does not verify,
    /// a plan that cannot be made, a slot in the wrong state), 400 for a
    /// path that is not one, 502 when a node this one asked did not answer
    /// usably, 500 when this node failed (its disk, a task, a bug).
    ///
    /// Here, beside the variants, rather than in the handlers: the match
    /// is exhaustive, so a new variant cannot be added without deciding
    /// its status, and every route answers a given error alike.
    pub fn status_code(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            Error::Refused { .. }
            | Error::UpgradePlan(_)
            | Error::Version(_)
            | Error::ApiRefused { .. } => StatusCode::CONFLICT,
            Error::Image(tandem_image::Error::Io { .. } | tandem_image::Error::InjectedCrash) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Error::Image(_) => StatusCode::CONFLICT,
            Error::Sync(tandem_sync::Error::BadPath { .. }) => StatusCode::BAD_REQUEST,
            Error::Sync(tandem_sync::Error::MissingFile { .. }) => StatusCode::NOT_FOUND,
            Error::ApiUnreachable { .. } | Error::ApiAnswer { .. } | Error::Etcd { .. } => {
                StatusCode::BAD_GATEWAY
            }
            Error::Config { .. }
            | Error::Bind { .. }
            | Error::Io { .. }
            | Error::State(_)
            | Error::Core(_)
            | Error::Sync(_)
            | Error::NotReplicated { .. }
            | Error::CorruptJournal { .. }
            | Error::TaskFailed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
