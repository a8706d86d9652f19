//! Liveness from the sync channel: "heard from" hints for the agent.
//!
//! An open TCP socket proves nothing: a silent network cut (a switch
//! dying, a firewall dropping state) leaves it open for minutes. A frame
//! that arrives over the mutually-authenticated channel does prove the
//! peer alive, so both ends report what they hear: the active every answer
//! of a standby (on [`crate::replicator::ReplicatorConfig::heard`]), the
//! standby every frame of the active
//! ([`crate::receiver::ReceiverEvent::Heard`]). To keep those coming on an
//! idle channel the active sends [`crate::frame::Message::Ping`] after
//! `keepalive` without an answer, which the standby answers with
//! [`crate::frame::Message::Pong`].
//!
//! These are hints: reported with `try_send`, dropped when the channel is
//! full, rate-limited — replication never waits for whoever reads them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// Lets an event through at most once per `every`.
#[derive(Debug, Clone)]
pub(crate) struct RateLimit {
    every: Duration,
    last: Option<Instant>,
}

impl RateLimit {
    pub(crate) fn new(every: Duration) -> Self {
        RateLimit { every, last: None }
    }

    /// Whether an event at `now` goes through (and if so, counts it).
    pub(crate) fn ready(&mut self, now: Instant) -> bool {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

/// The active's view: when each standby last answered, and the reports of
/// it.
#[derive(Debug)]
pub(crate) struct Liveness {
    reports: Option<mpsc::Sender<String>>,
    every: Duration,
    peers: Mutex<HashMap<String, PeerLiveness>>,
}

#[derive(Debug)]
struct PeerLiveness {
    last_answer: Instant,
    reports: RateLimit,
}

impl Liveness {
    /// Reports on `reports`, at most once per peer per `every`.
    pub(crate) fn new(reports: Option<mpsc::Sender<String>>, every: Duration) -> Self {
        Liveness {
            reports,
            every,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// `peer` answered now.
    pub(crate) fn heard(&self, peer: &str) {
        self.heard_at(peer, Instant::now());
    }

    pub(crate) fn heard_at(&self, peer: &str, now: Instant) {
        let report = {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            let state = peers
                .entry(peer.to_string())
                .or_insert_with(|| PeerLiveness {
                    last_answer: now,
                    reports: RateLimit::new(self.every),
                });
            state.last_answer = now;
            state.reports.ready(now)
        };
        if report && let Some(reports) = &self.reports {
            let _ = reports.try_send(peer.to_string());
        }
    }

    /// When `peer` last answered, if ever.
    pub(crate) fn last_answer(&self, peer: &str) -> Option<Instant> {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .map(|state| state.last_answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limit_lets_one_through_per_interval() {
        let start = Instant::now();
        let mut limit = RateLimit::new(Duration::from_millis(50));
        assert!(limit.ready(start));
        assert!(!limit.ready(start + Duration::from_millis(10)));
        assert!(!limit.ready(start + Duration::from_millis(49)));
        assert!(limit.ready(start + Duration::from_millis(50)));
        assert!(!limit.ready(start + Duration::from_millis(60)));
        // A clock read out of order never panics nor lets one through.
        assert!(!limit.ready(start));
    }

    #[test]
    fn reports_are_per_peer_rate_limited_and_never_block() {
        let (tx, mut rx) = mpsc::channel(2);
        let liveness = Liveness::new(Some(tx), Duration::from_secs(1));
        let start = Instant::now();
        assert_eq!(liveness.last_answer("node-b"), None);
        liveness.heard_at("node-b", start);
        liveness.heard_at("node-b", start + Duration::from_millis(100));
        liveness.heard_at("node-c", start + Duration::from_millis(100));
        assert_eq!(rx.try_recv().expect("receive node-b's report"), "node-b");
        assert_eq!(rx.try_recv().expect("receive node-c's report"), "node-c");
        assert!(rx.try_recv().is_err());
        // Every answer counts for idleness, reported or not.
        assert_eq!(
            liveness.last_answer("node-b"),
            Some(start + Duration::from_millis(100))
        );
        // A full channel drops the report instead of waiting.
        liveness.heard_at("node-b", start + Duration::from_secs(2));
        liveness.heard_at("node-c", start + Duration::from_secs(2));
        liveness.heard_at("node-d", start + Duration::from_secs(2));
        assert_eq!(rx.try_recv().expect("receive node-b's report"), "node-b");
        assert_eq!(rx.try_recv().expect("receive node-c's report"), "node-c");
        assert!(rx.try_recv().is_err());
    }
}
