//! What the replicator reports about itself and its standbys: the types of
//! [`super::Replicator::status`], of the sync report's peer columns, and of
//! the per-peer outcomes of a catch-up, resync or push. Plain data, so that
//! callers (and [`crate::report`]) can read it without the machinery.

use serde::{Deserialize, Serialize};

use super::config::{DataSync, SyncMode};
use crate::Progress;

/// A standby's state as the active sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerState {
    /// Not connected.
    Disconnected,
    /// Connected, being caught up (or resynced).
    Syncing,
    /// Connected but it missed commits (timeout, refused batch); its task
    /// is sending what it missed.
    OutOfSync,
    /// Every commit is waited for on it.
    InSync,
}

/// A standby's status, for `tandem status` and the sync report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Its node name.
    pub name: String,
    /// Its sync address.
    pub addr: String,
    /// Its state.
    pub state: PeerState,
    /// Progress of the catch-up or resync under way.
    pub progress: Option<Progress>,
    /// Batches sent and acknowledged (commits, catch-up chunks).
    pub round_trips: u64,
    /// How many times it fell out of sync (timeouts, lost connections).
    pub out_of_sync_events: u64,
    /// Paths waiting to be sent to it.
    pub pending_paths: u64,
    /// Replication lag: for an in-sync peer, commit-to-ack time of the last
    /// batch; otherwise, time since it stopped being in sync.
    pub lag_ms: Option<u64>,
    /// Its last acknowledgement (Unix ms).
    pub last_ack_unix_ms: Option<u64>,
    /// The last completed catch-up or resync (Unix ms).
    pub last_sync_unix_ms: Option<u64>,
    /// The last completed full resync (Unix ms).
    pub last_full_sync_unix_ms: Option<u64>,
    /// Why it is not in sync, when it is not.
    pub last_error: Option<String>,
}

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
