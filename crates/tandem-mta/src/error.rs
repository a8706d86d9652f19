//! The crate's one error type.
//!
//! Every fallible public function returns [`Error`]. Variants carry the
//! context a person needs to act (which file, which address, which key) so the
//! binary can print the chain and map it to an exit code without guessing.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can go wrong in the relay, the load generator and the sink.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a file or directory of the spool (or another named path).
    #[error("{path}: {source}")]
    Path {
        /// The file or directory the operation was about.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },

    /// Binding, accepting or connecting a socket failed.
    #[error("{what} {addr}: {source}")]
    Socket {
        /// What we were doing ("bind", "connect", ...).
        what: &'static str,
        /// The address involved.
        addr: String,
        /// What the operating system said.
        source: io::Error,
    },

    /// Any other I/O error on an established connection.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),

    /// The configuration file could not be read or is invalid.
    #[error("{path}:{line}: {message}")]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// 1-based line of the offending key (0 when unknown).
        line: usize,
        /// What is wrong, naming the key.
        message: String,
    },

    /// A command-line value is invalid (bad duration, non-loopback target, ...).
    #[error("invalid argument: {0}")]
    Invalid(String),

    /// The peer broke the SMTP protocol (malformed reply, unexpected close).
    #[error("smtp protocol error with {peer}: {message}")]
    Protocol {
        /// The remote end.
        peer: SocketAddr,
        /// What was wrong.
        message: String,
    },

    /// The peer answered with a reply code we treat as a failure.
    #[error("{peer} answered {code} {text}")]
    Reply {
        /// The remote end.
        peer: SocketAddr,
        /// The three-digit reply code.
        code: u16,
        /// The reply text (lines joined by spaces).
        text: String,
    },

    /// A network operation did not complete in its allotted time.
    #[error("timed out: {0}")]
    Timeout(String),

    /// A spool file is corrupt (truncated or not written by us).
    #[error("spool file {path} is corrupt: {message}")]
    CorruptSpool {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// The commit hook (cluster fsync) refused or failed.
    #[error("commit hook failed: {0}")]
    Hook(String),

    /// Serialising a report failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),

    /// Socket activation variables are present but wrong.
    #[error("socket activation: {0}")]
    Activation(String),
}

impl Error {
    /// Wraps an [`io::Error`] with the path it was about.
    pub(crate) fn path(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Path {
            path: path.into(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
