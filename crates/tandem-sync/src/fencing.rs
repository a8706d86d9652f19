//! Fencing epochs on the sync channel and the agents' API (`coordination =
//! "etcd"`): the active stamps each commit, and each write one agent makes
//! to another, with the epoch it serves under, and a receiver refuses one
//! stamped older than the newest epoch its node knows. A paused active that wakes after another node took the service
//! over can then not write into a standby of the new active, whatever
//! its replicator still had in flight.
//!
//! The agent keeps both numbers current from its HA state; 0 means "no
//! epoch" (peers coordination), which refuses nothing.

use std::sync::atomic::{AtomicU64, Ordering};

/// This node's two epochs, shared between the agent and the sync tasks.
#[derive(Debug, Default)]
pub struct Fencing {
    /// The epoch this node serves under (its commits carry it).
    own: AtomicU64,
    /// The newest epoch this node knows of (older commits are refused).
    newest: AtomicU64,
    /// API writes refused for an older epoch.
    stale_writes: AtomicU64,
}

impl Fencing {
    /// Records the epoch this node serves under (0: none).
    pub fn set_own(&self, epoch: u64) {
        self.own.store(epoch, Ordering::Relaxed);
    }

    /// Records the newest epoch known; never goes back.
    pub fn see(&self, epoch: u64) {
        self.newest.fetch_max(epoch, Ordering::Relaxed);
    }

    /// The epoch to stamp on a commit.
    pub fn own(&self) -> u64 {
        self.own.load(Ordering::Relaxed)
    }

    /// Counts an API write refused for its older epoch; the new total.
    pub fn refuse_write(&self) -> u64 {
        self.stale_writes.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// API writes refused so far for an older epoch.
    pub fn stale_writes(&self) -> u64 {
        self.stale_writes.load(Ordering::Relaxed)
    }

    /// `Some(newest)` when a commit stamped `epoch` is stale.
    pub fn stale(&self, epoch: u64) -> Option<u64> {
        let newest = self.newest.load(Ordering::Relaxed);
        (epoch < newest).then_some(newest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_older_epochs_are_stale_and_the_newest_never_goes_back() {
        let f = Fencing::default();
        assert_eq!(f.stale(0), None, "no epoch known: nothing refused");
        f.see(7);
        f.see(5);
        assert_eq!(f.stale(6), Some(7));
        assert_eq!(f.stale(7), None);
        assert_eq!(f.stale(9), None);
        f.set_own(9);
        assert_eq!(f.own(), 9);
    }
}
