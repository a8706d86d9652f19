//! Replay protection for one peer's datagrams: [`ReplayGuard`].
//!
//! A datagram is authentic (its MAC checks) long before it is fresh: anyone
//! on the path can record one and send it again. The guard accepts each
//! `(epoch, seq)` once. Because every start of the sender picks a larger
//! epoch, the epoch is also the only way to tell a restart from a replay of
//! the previous run, which makes it the field an attacker (or a holder of the
//! cluster key, or a sender whose clock once jumped far ahead) would aim at:
//! with a single "newest epoch" rule, one datagram carrying epoch 2^64−1 made
//! every later real heartbeat look older and locked the peer out until the
//! receiver restarted. Two measures keep one bad epoch from doing that:
//!
//! - an epoch more than [`MAX_EPOCH_AHEAD`] ahead of the receiver's wall
//!   clock is refused ([`ReplayVerdict::FutureEpoch`]): epochs are the
//!   sender's wall-clock milliseconds at boot, so a real one is never far
//!   ahead of a synchronised receiver;
//! - the guard keeps the two newest accepted epochs live, each with its own
//!   sequence window, so one forged epoch (within the hour) pushes the real
//!   one into the second slot instead of out, and the real peer's next
//!   restart (newer than the real epoch) still gets in, replacing the older
//!   live epoch. Only two or more accepted epochs newer than the real one can
//!   evict it.

/// Width of the replay window, in datagrams.
pub const REPLAY_WINDOW: u64 = 64;

/// How far ahead of the receiver's wall clock (Unix milliseconds) a new
/// epoch may be: one hour. Generous for clock skew between nodes, yet it
/// keeps a forged epoch from reaching far beyond any real one.
pub const MAX_EPOCH_AHEAD: u64 = 60 * 60 * 1000;

/// One live epoch and its sliding window of accepted sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    epoch: u64,
    /// The highest sequence number accepted in `epoch`.
    high: u64,
    /// Bit i set: sequence number `high - i` was accepted.
    seen: u64,
}

impl Window {
    fn new(epoch: u64, seq: u64) -> Self {
        Window {
            epoch,
            high: seq,
            seen: 1,
        }
    }

    fn accept(&mut self, seq: u64) -> Result<(), ReplayVerdict> {
        if seq > self.high {
            let shift = seq - self.high;
            self.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.high = seq;
            return Ok(());
        }
        let age = self.high - seq;
        if age >= REPLAY_WINDOW {
            return Err(ReplayVerdict::TooOld);
        }
        let bit = 1u64 << age;
        if self.seen & bit != 0 {
            return Err(ReplayVerdict::Duplicate);
        }
        self.seen |= bit;
        Ok(())
    }
}

/// Rejects replayed datagrams from one peer.
///
/// Within an epoch, a sequence number is accepted once. Rather than "seq
/// must exceed the last one", each epoch keeps a 64-datagram sliding window
/// (as IPsec and WireGuard do): the agent seals one datagram per link, and
/// links may reorder against each other; a strict rule would then drop the
/// slower link's heartbeats and show a healthy link as down.
///
/// Across epochs, the guard keeps the two newest accepted epochs live (see
/// the module docs for why two):
///
/// - a datagram of a live epoch is checked against that epoch's window;
/// - a new epoch is refused as [`ReplayVerdict::FutureEpoch`] if it is more
///   than [`MAX_EPOCH_AHEAD`] ahead of the receiver's clock (live epochs are
///   not re-checked, so a receiver clock stepping back does not cut off a
///   peer already accepted);
/// - a new epoch newer than the older live one replaces it (and becomes the
///   newest if it is newer than that too): a restart of the sender;
/// - a new epoch older than both live ones (or than the only one, before a
///   second was seen) is [`ReplayVerdict::OldEpoch`]: a previous run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayGuard {
    /// The newest epoch accepted.
    newest: Option<Window>,
    /// The epoch accepted before it (set once a second epoch was accepted).
    older: Option<Window>,
}

impl ReplayGuard {
    /// A guard that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts (and records) `(epoch, seq)` or says why not. `now_unix_ms`
    /// is the receiver's wall clock, in milliseconds since the Unix epoch.
    pub fn check(&mut self, epoch: u64, seq: u64, now_unix_ms: u64) -> Result<(), ReplayVerdict> {
        for live in [&mut self.newest, &mut self.older].into_iter().flatten() {
            if live.epoch == epoch {
                return live.accept(seq);
            }
        }
        if epoch > now_unix_ms.saturating_add(MAX_EPOCH_AHEAD) {
            return Err(ReplayVerdict::FutureEpoch);
        }
        let fresh = Some(Window::new(epoch, seq));
        match (self.newest, self.older) {
            (None, _) => self.newest = fresh,
            (Some(newest), _) if epoch > newest.epoch => {
                self.older = std::mem::replace(&mut self.newest, fresh);
            }
            (Some(_), Some(older)) if epoch > older.epoch => self.older = fresh,
            (Some(_), _) => return Err(ReplayVerdict::OldEpoch),
        }
        Ok(())
    }
}

/// Why [`ReplayGuard::check`] refused a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayVerdict {
    /// From an epoch older than both live ones (a previous run of the sender).
    OldEpoch,
    /// From a new epoch more than [`MAX_EPOCH_AHEAD`] ahead of the receiver's
    /// clock: forged, or the sender's clock is far off.
    FutureEpoch,
    /// This sequence number was already accepted.
    Duplicate,
    /// Older than the replay window.
    TooOld,
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    #[test]
    fn a_middle_epoch_replaces_the_older_live_one() {
        let mut g = ReplayGuard::new();
        assert_eq!(g.check(10, 1, NOW), Ok(()));
        assert_eq!(g.check(30, 1, NOW), Ok(()));
        assert_eq!(g.check(20, 1, NOW), Ok(()));
        // 10 was evicted by 20; 30 and 20 are live with their own windows.
        assert_eq!(g.check(10, 2, NOW), Err(ReplayVerdict::OldEpoch));
        assert_eq!(g.check(30, 1, NOW), Err(ReplayVerdict::Duplicate));
        assert_eq!(g.check(20, 2, NOW), Ok(()));
        assert_eq!(g.check(15, 1, NOW), Err(ReplayVerdict::OldEpoch));
    }

    #[test]
    fn a_live_epoch_survives_the_receiver_clock_stepping_back() {
        let mut g = ReplayGuard::new();
        assert_eq!(g.check(NOW, 1, NOW), Ok(()));
        assert_eq!(g.check(NOW, 2, NOW - 2 * MAX_EPOCH_AHEAD), Ok(()));
        assert_eq!(
            g.check(NOW + 1, 1, NOW - 2 * MAX_EPOCH_AHEAD),
            Err(ReplayVerdict::FutureEpoch)
        );
        assert_eq!(g.check(u64::MAX, 1, u64::MAX), Ok(()), "no overflow");
    }
}
