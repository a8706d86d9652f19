//! The campaign's one clock and one history: every task (clients, the
//! observers, the nemesis) records into the same [`Recorder`], so the
//! checkers see one order of events on one time line.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tandem_chaos::{Event, History};

/// A handle on the campaign's history; clones share it.
#[derive(Clone)]
pub struct Recorder {
    started: Instant,
    history: Arc<Mutex<History>>,
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::new()
    }
}

impl Recorder {
    /// A new, empty history whose clock starts now.
    pub fn new() -> Recorder {
        Recorder {
            started: Instant::now(),
            history: Arc::new(Mutex::new(History::new())),
        }
    }

    /// Milliseconds since the campaign started.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Records `event` now.
    pub fn push(&self, event: Event) {
        self.push_at(self.now_ms(), event);
    }

    /// Records `event` at `t_ms`.
    pub fn push_at(&self, t_ms: u64, event: Event) {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(t_ms, event);
    }

    /// A copy of the history so far.
    pub fn snapshot(&self) -> History {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
