//! The crate's one error type.
//!
//! Two families share it: decoding a datagram (the agent drops the packet and
//! counts it under [`crate::wire::RejectReason`]) and validating a
//! [`crate::NodeConfig`] (the agent refuses to start). Each variant says what
//! the operator should look at.

use thiserror::Error;

/// Everything that can go wrong in `tandem-core`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// The HMAC tag does not match: the sender uses another cluster key, or
    /// the datagram was altered on the way.
    #[error("bad MAC on a message claiming to be from {claimed_sender:?}: key mismatch?")]
    BadMac {
        /// The sender name the (unauthenticated) header claims; for diagnostics only.
        claimed_sender: String,
    },
    /// The datagram belongs to another cluster (another cluster id).
    #[error("message from foreign cluster {found:?} (this node is in {expected:?})")]
    ForeignCluster {
        /// The cluster id in the datagram.
        found: String,
        /// Our cluster id.
        expected: String,
    },
    /// A correctly signed datagram seen before, or from an older boot epoch
    /// of the sender: a replay (or a very late duplicate).
    #[error("replayed message from {sender:?} (epoch {epoch}, seq {seq})")]
    Replay {
        /// The authenticated sender.
        sender: String,
        /// The sender's boot epoch in the datagram.
        epoch: u64,
        /// The sequence number in the datagram.
        seq: u64,
    },
    /// A protocol version this node does not speak (it speaks
    /// [`crate::wire::PROTOCOL_VERSION`] and the one before).
    #[error("unsupported protocol version {0} (this node speaks {min}..={max})",
        min = crate::protocol::OLDEST_PROTOCOL_VERSION, max = crate::protocol::PROTOCOL_VERSION)]
    UnsupportedVersion(u8),
    /// The bytes are not a well-formed tandem message.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// A message that the requested (older) protocol version cannot express,
    /// e.g. a forwarded command to a version-1 peer.
    #[error("message cannot be encoded in protocol version {version}: {what}")]
    NotEncodable {
        /// The protocol version asked for.
        version: u8,
        /// What it lacks.
        what: &'static str,
    },
    /// The node configuration is not usable.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}
