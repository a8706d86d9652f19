//! What the replicator reports about itself and its standbys: the types of
//! [`super::Replicator::status`] and of the per-peer outcomes of a
//! catch-up, resync or push. Plain data, so that callers can read it
//! without the machinery. A standby's own status ([`PeerState`],
//! [`PeerStatus`]) is shared with the sync report, so it is defined in the
//! crate's neutral `peer_status` module and re-exported here.

use serde::{Deserialize, Serialize};

use super::config::{DataSync, SyncMode};
use crate::Progress;
pub use crate::peer_status::{PeerState, PeerStatus};

/// The replicator's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicatorStatus {
    /// `data_sync`.
    pub data_sync: DataSync,
    /// `sync_mode`.
    pub sync_mode: SyncMode,
    /// Commits received.
    pub commits: u64,
    /// Group-commit batches run; `commits / batches` is the batching factor.
    pub batches: u64,
    /// Commits that returned `Degraded`.
    pub degraded_commits: u64,
    /// Commits that failed (strict, or a local read error).
    pub failed_commits: u64,
    /// Each standby.
    pub peers: Vec<PeerStatus>,
}

/// The result of a catch-up or resync on one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerOutcome {
    /// The peer.
    pub peer: String,
    /// What was sent, when it worked.
    pub progress: Option<Progress>,
    /// Why it did not.
    pub error: Option<String>,
}
