//! Config and data sync between tandem agents: the engine behind cluster
//! fsync (`POST /v1/sync/commit`), `tandem ha resync`, catch-up after an
//! absence and `tandem sync report` (issue 6).
//!
//! The guarantee this crate exists for: with `data_sync = "semi"`, a message
//! the relay acknowledged is already written *and fsync'd* on every in-sync
//! standby. None of the appliances in `seeds/` states that guarantee; Patroni's
//! synchronous mode is the model.
//!
//! ```text
//!  active node                                   standby node
//!  ───────────                                   ────────────
//!  relay ─ commit(paths) ─► Replicator           Receiver ─► data dir
//!                           │ group commit:        ▲  tmp + fsync + rename
//!                           │ one batch in flight, │  + dir fsync, then Ack
//!                           │ the next gathers     │
//!                           └─ one task per peer ──┘  mutually-authenticated
//!                              (dials, catches up,     TLS, length-prefixed
//!                               sends batches)         frames
//! ```
//!
//! The active dials; every node runs a [`Receiver`](receiver::Receiver),
//! because roles move. The same connection is the HA pair's crash detector:
//! its close is reported at once on both ends.
//!
//! # Layout
//! - [`cert`]: the cluster CA and per-node certificates (rcgen, ECDSA P-256).
//! - [`tls`]: rustls configurations (ring provider, explicit) and the
//!   authenticated connect / accept that check the peer's node name.
//! - [`frame`]: the wire format: a JSON header and a raw byte body per frame.
//! - [`store`]: the data dir: path checks, atomic durable writes, manifests.
//! - [`receiver`]: the standby side: applies what the active sends.
//! - [`replicator`]: the active side: cluster fsync, group commit,
//!   degrade/strict, catch-up and resync.
//! - [`unreplicated`]: which files this node acknowledged that a peer never
//!   saw (degraded commits), so no catch-up from that peer deletes them.
//! - [`quarantine`]: where those files go before such a catch-up, and the
//!   operator's functions to list, restore and drop them.
//! - [`liveness`]: rate-limited "heard from" hints, and the keepalive
//!   pings that keep them coming on an idle channel.
//! - [`report`]: the sync report (Huawei's "synchronization report").
//! - `peer_status` (private; its types are re-exported by [`replicator`]):
//!   a standby as the active sees it, shared by the replicator's status
//!   and the report.
//!
//! # Wiring it into the agent
//! Every node: [`tls::TlsIdentity::load`], then [`receiver::Receiver::serve`]
//! on its sync address. The active node: [`replicator::Replicator::start`]
//! with its peers; `POST /v1/sync/commit` calls
//! [`replicator::Replicator::commit`]. When the node stops being active, drop
//! the `Replicator`.
//!
//! # Nothing acknowledged is ever lost (issue 14)
//! A catch-up deletes on the standby what the active does not have. After
//! a partition in which both nodes were active (`sync_mode = "degrade"`),
//! that would delete mail the loser acknowledged. So each node records,
//! durably and before the relay answers 250, the files it committed that a
//! peer did not ack ([`unreplicated::Unreplicated`]); when that peer later
//! connects as the active, the receiver first moves those files to the
//! quarantine dir ([`quarantine`]), and only then takes the catch-up. A
//! node that serves ([`receiver::Receiver::set_serving`]) takes no
//! replication at all: two actives must not overwrite each other.

#![deny(missing_docs)]

pub mod cert;
pub mod fencing;
pub mod frame;
pub mod liveness;
mod peer_status;
pub mod quarantine;
pub mod receiver;
pub mod replicator;
pub mod report;
pub mod standby_log;
pub mod store;
pub mod tls;
pub mod unreplicated;

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong in sync. Variants carry the file, peer or
/// path they are about, so a message can be shown as is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },

    /// A file this node needs does not exist; `hint` says what to run.
    #[error("{path} does not exist: {hint}")]
    MissingFile {
        /// The missing file.
        path: PathBuf,
        /// The command that makes it.
        hint: String,
    },

    /// A file exists but cannot be used (bad PEM, wrong kind of key, ...).
    #[error("{path}: {message}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// Making a certificate failed, or a name cannot be put in one.
    #[error("certificate: {0}")]
    Cert(String),

    /// Building a TLS configuration failed.
    #[error("TLS configuration: {0}")]
    TlsConfig(String),

    /// A TCP connection to a peer could not be made, or broke.
    #[error("sync connection with {peer}: {source}")]
    Network {
        /// The peer's name or address.
        peer: String,
        /// The OS error.
        source: std::io::Error,
    },

    /// The other end does not speak TLS: someone connected with plaintext,
    /// or we dialed something that is not a tandem agent's sync port.
    #[error(
        "sync connection with {peer}: the other end spoke plaintext, not TLS; the sync channel accepts only mutually-authenticated TLS"
    )]
    Plaintext {
        /// The peer's name or address.
        peer: String,
    },

    /// The TLS handshake failed: most often a certificate that was not
    /// signed by this cluster's CA.
    #[error(
        "sync connection with {peer}: TLS handshake failed: {reason} (are both nodes' certificates issued by the same `tandem cert init` CA?)"
    )]
    Handshake {
        /// The peer's name or address.
        peer: String,
        /// What rustls said.
        reason: String,
    },

    /// The peer's certificate is valid for this cluster but names another
    /// node than the one expected.
    #[error("sync connection with {peer}: its certificate is for {presented}, expected {expected}")]
    WrongPeer {
        /// The address.
        peer: String,
        /// The node name in the certificate.
        presented: String,
        /// What we expected.
        expected: String,
    },

    /// The peer accepted TLS but refused us (it does not expect our name).
    #[error("sync connection with {peer}: refused: {reason}")]
    Refused {
        /// The peer.
        peer: String,
        /// Its reason.
        reason: String,
    },

    /// The peer sent something the protocol does not allow.
    #[error("sync connection with {peer}: protocol error: {reason}")]
    Protocol {
        /// The peer.
        peer: String,
        /// What was wrong.
        reason: String,
    },

    /// The peer could not apply what we sent (disk full, bad path, ...).
    #[error("{peer} could not apply the change: {message}")]
    Remote {
        /// The peer.
        peer: String,
        /// Its error.
        message: String,
    },

    /// A path is not inside the data dir, or is not a plain relative path.
    #[error("path {path:?} refused: {reason}")]
    BadPath {
        /// The path as given.
        path: String,
        /// Why it is refused.
        reason: String,
    },

    /// `sync_mode = "strict"` and a standby did not confirm the commit: the
    /// caller must not acknowledge its client (the relay answers 451).
    #[error("commit not replicated (sync_mode = strict): {}", describe_failures(.failures))]
    NotReplicated {
        /// Each standby that did not confirm, and why.
        failures: Vec<(String, String)>,
    },

    /// The request needed a standby that is not connected.
    #[error("{peer} is not connected")]
    NotConnected {
        /// The peer.
        peer: String,
    },

    /// No answer within the allowed time.
    #[error("{peer} did not answer within {timeout:?}")]
    Timeout {
        /// The peer.
        peer: String,
        /// The time allowed.
        timeout: Duration,
    },

    /// The replicator's tasks have stopped (it is being dropped).
    #[error("the replicator has stopped")]
    Stopped,

    /// A node name or quarantine batch id that cannot be used: these
    /// become file names, so anything that could leave their directory is
    /// refused.
    #[error("{what} {name:?} refused: {reason}")]
    BadName {
        /// What the name is for ("peer name", "quarantine batch id").
        what: String,
        /// The name as given.
        name: String,
        /// Why it is refused.
        reason: String,
    },
}

impl Error {
    /// Whether the peer's end closed the connection: an end of stream
    /// (with or without TLS's `close_notify`) or a reset, which is what
    /// the kernel does when the peer's process dies. A corrupt record, a
    /// protocol error or a timeout is this end's decision to hang up and
    /// says nothing about the peer's process (`tandem chaos`,
    /// `sync-byte-flip`: taking it for a death moved the service away
    /// from a live active).
    pub fn peer_hung_up(&self) -> bool {
        use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
        match self {
            Error::Network { source, .. } => matches!(
                source.kind(),
                UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
            ),
            _ => false,
        }
    }
}

fn describe_failures(failures: &[(String, String)]) -> String {
    failures
        .iter()
        .map(|(peer, why)| format!("{peer}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// How far a catch-up or resync has come; handed to progress callbacks and
/// shown in status, so the CLI can draw a progress bar.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    /// The standby being brought up to date.
    pub peer: String,
    /// Files put or deleted so far.
    pub files_done: u64,
    /// Files to put or delete in all.
    pub files_total: u64,
    /// Bytes sent so far.
    pub bytes_done: u64,
    /// Bytes to send in all.
    pub bytes_total: u64,
}

/// Milliseconds since the Unix epoch, for status and reports.
pub(crate) fn unix_ms(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Checks a name that becomes a file name (a peer's record, a quarantine
/// batch): letters, digits, `-`, `_` and `.`, not starting with `.`, at
/// most 255 bytes. So no `/`, no `..`, nothing hidden, nothing that could
/// name a file outside its directory.
pub(crate) fn check_name(what: &str, name: &str) -> Result<()> {
    let refuse = |reason: &str| {
        Err(Error::BadName {
            what: what.to_string(),
            name: name.to_string(),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() || name.len() > 255 {
        return refuse("must be 1 to 255 bytes");
    }
    if name.starts_with('.') {
        return refuse("must not start with '.'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return refuse("only letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

/// Wraps an I/O error with the path it is about.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}

/// Runs blocking file work off the async threads. A crate-wide helper
/// (the receiver, the replicator and the unreplicated record all use it),
/// so it lives here with the error it reports, not in any one of them.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Io {
            path: PathBuf::new(),
            source: std::io::Error::other(format!("file task failed: {e}")),
        })?
}

#[cfg(test)]
mod tests {
    use super::Error;
    use std::io::{Error as IoError, ErrorKind};

    fn network(kind: ErrorKind) -> Error {
        Error::Network {
            peer: "b".into(),
            source: IoError::new(kind, "x"),
        }
    }

    #[test]
    fn only_the_peer_closing_its_end_counts_as_it_hanging_up() {
        for kind in [
            ErrorKind::UnexpectedEof,
            ErrorKind::ConnectionReset,
            ErrorKind::BrokenPipe,
        ] {
            assert!(network(kind).peer_hung_up(), "{kind:?}");
        }
        // A corrupt TLS record (rustls reports InvalidData), a timeout.
        for kind in [ErrorKind::InvalidData, ErrorKind::TimedOut] {
            assert!(!network(kind).peer_hung_up(), "{kind:?}");
        }
        let protocol = Error::Protocol {
            peer: "b".into(),
            reason: "bad frame".into(),
        };
        assert!(!protocol.peer_hung_up());
    }
}
