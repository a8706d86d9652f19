//! A standby as the active sees it: [`PeerState`] and [`PeerStatus`].
//!
//! Plain data, read by the replicator's status and by the sync report's
//! peer columns. Its own module so that the report does not import the
//! replicator (which builds the report: that made the two import each
//! other). The module is private; the types are public where they always
//! were, as `tandem_sync::replicator::{PeerState, PeerStatus}`.

use serde::{Deserialize, Serialize};

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
