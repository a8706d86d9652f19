//! Time as the core sees it: a monotonic instant handed in by the caller.
//!
//! The core never reads a clock. The agent passes `Millis` (milliseconds since
//! its own start, from a monotonic clock) into every [`crate::Node::step`], and
//! tests pass whatever instants they like. That is what makes every rule in
//! this crate testable without sleeping.

use serde::Serialize;
use std::time::Duration;

/// A monotonic instant: milliseconds since an arbitrary origin (the agent's start).
///
/// Only differences between two `Millis` of the same process mean anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
pub struct Millis(pub u64);

impl Millis {
    /// The origin.
    pub const ZERO: Millis = Millis(0);

    /// `self + d`, saturating instead of overflowing.
    pub fn plus(self, d: Duration) -> Millis {
        Millis(self.0.saturating_add(duration_ms(d)))
    }

    /// Time elapsed from `earlier` to `self`; zero if `earlier` is later.
    pub fn since(self, earlier: Millis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// Time left from `self` until `deadline`; zero if the deadline has passed.
    pub fn until(self, deadline: Millis) -> Duration {
        deadline.since(self)
    }
}

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// Whole milliseconds in `d`, saturating at `u64::MAX`.
pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
