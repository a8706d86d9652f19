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
//! - [`backup`]: backups of the node's config and HA state, and restores.
//! - [`config`]: the TOML config file, validated with file/line/key errors.
//! - [`driver`]: the one loop that feeds the core and executes its outputs.
//! - [`firmware`]: the node's images and A/B slots (install, boot with a
//!   health check, rollback).
//! - [`links`]: heartbeat links (UDP).
//! - [`crash_link`]: authenticated TCP connections to peers, for instant
//!   crash detection (the `[node] sync` address, older than data sync).
//! - [`replication`]: `[sync]`: the TLS sync receiver, the active's
//!   replicator, cluster fsync and resync routes (issue 6).
//! - [`api`]: the HTTP/JSON control API and Prometheus `/metrics`.
//! - [`monitor`]: lservice and rservice probes (FortiMail's monitors).
//! - [`supervisor`]: runs the service with the VIP's sockets.
//! - [`upgrade`]: cluster upgrades coordinated by the active node, with a
//!   journal replicated to every peer.
//! - [`vip`]: the VIP's listening sockets in `bind` mode.
//! - [`state`]: the boot epoch and persisted HA state.

pub mod api;
pub mod backup;
pub mod config;
pub mod crash_link;
pub mod driver;
pub mod firmware;
pub mod links;
pub mod monitor;
pub mod replication;
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

    /// The state machine refused its configuration.
    #[error(transparent)]
    Core(#[from] tandem_core::Error),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
