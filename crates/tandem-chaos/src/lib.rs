//! What a fault campaign (`tandem chaos`, and the seeded simulation in
//! `tandem-core`'s tests) records, and the checkers that judge it.
//!
//! The campaign and the judge are apart, as in Jepsen: the campaign only
//! writes a [`History`] (client operations, deliveries at the sink, role
//! changes, faults), and each checker is a pure function of that history.
//! A checker can therefore be tested on hand-made histories that break
//! exactly its invariant, and a recorded history (`--history FILE`) can be
//! judged again later, by a newer checker, without rerunning anything.
//!
//! Layout:
//! - [`history`]: the events, one JSON object per line;
//! - [`check`]: the six checkers (lost, dual active, convergence,
//!   upgrades, logs, availability);
//! - [`summary`]: one run's figures and violations, as `tandem chaos
//!   --json` prints them;
//! - [`rng`]: the seeded generator both campaigns draw their faults from.
//!
//! Nothing here does I/O but [`history::History::read`] and
//! [`history::History::write`], which take any reader or writer.

pub mod check;
pub mod history;
pub mod rng;
pub mod summary;

pub use check::{Checker, Violation};
pub use history::UpgradePhase;
pub use history::{Entry, Event, History, Outcome, Phase};
pub use rng::SplitMix;
pub use summary::{FaultFigures, Settings, Summary, judge};

/// What can go wrong reading or writing a history.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A line of a history file is not an event.
    #[error(
        "history line {line}: {source}; each line must be one event as `tandem chaos --history` writes it"
    )]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What serde said.
        source: serde_json::Error,
    },
    /// The reader or writer failed.
    #[error("history: {0}")]
    Io(#[from] std::io::Error),
}
