//! Service monitors (FortiMail's `lservice` and `rservice`).
//!
//! - **lservice** probes this node's own service while it serves: a TCP
//!   connect to the VIP. `failures` misses in a row make the node unhealthy
//!   (the core then applies `on_failure`); one success makes it healthy
//!   again. A process crash loop is reported by the supervisor, not here:
//!   this catches the service that runs but no longer answers.
//! - **rservice** probes each peer's service at the address its `[[peer]]`
//!   gives (`service = "ADDR"`), so a peer whose service is dead while its
//!   agent still heartbeats is taken over.
//!
//! Monitors only report changes of verdict; the driver turns them into
//! core inputs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::config::MonitorSection;

/// A change of a monitor's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The local service.
    Local {
        /// Healthy or not.
        healthy: bool,
        /// What the last probe saw.
        detail: String,
    },
    /// A peer's service answered a heartbeat probe (`remote_as_heartbeat`).
    Answered {
        /// The peer.
        peer: String,
    },
    /// A peer's service.
    Remote {
        /// The peer.
        peer: String,
        /// Healthy or not.
        healthy: bool,
        /// What the last probe saw.
        detail: String,
    },
}

/// Starts the lservice probe of `addr`; it probes only while `serving` is
/// set (a standby has no service to probe).
pub fn spawn_local(
    settings: MonitorSection,
    addr: SocketAddr,
    serving: Arc<AtomicBool>,
    verdicts: mpsc::Sender<Verdict>,
) {
    spawn_probe(
        settings,
        addr,
        Some(serving),
        verdicts,
        |healthy, detail| Verdict::Local { healthy, detail },
    );
}

/// Starts an rservice probe of `peer`'s service at `addr`.
pub fn spawn_remote(
    settings: MonitorSection,
    peer: String,
    addr: SocketAddr,
    verdicts: mpsc::Sender<Verdict>,
) {
    spawn_probe(settings, addr, None, verdicts, move |healthy, detail| {
        Verdict::Remote {
            peer: peer.clone(),
            healthy,
            detail,
        }
    });
}

/// The probe loop both monitors share: every `settings.interval`, probe
/// `addr` (only while `serving`, when given) and send a verdict when it
/// changes.
fn spawn_probe(
    settings: MonitorSection,
    addr: SocketAddr,
    serving: Option<Arc<AtomicBool>>,
    verdicts: mpsc::Sender<Verdict>,
    verdict: impl Fn(bool, String) -> Verdict + Send + 'static,
) {
    tokio::spawn(async move {
        let mut tracker = Tracker::new(settings.failures);
        let mut tick = tokio::time::interval(settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if serving.as_ref().is_some_and(|s| !s.load(Ordering::Relaxed)) {
                tracker.reset();
                continue;
            }
            let outcome = probe(addr, settings.timeout, settings.banner).await;
            if let Some((healthy, detail)) = tracker.observe(outcome)
                && verdicts.send(verdict(healthy, detail)).await.is_err()
            {
                return;
            }
        }
    });
}

/// Probes `peer`'s service port every `interval` for `remote_as_heartbeat`;
/// each answer counts as traffic on the service link.
pub fn spawn_heartbeat_probe(
    peer: String,
    addr: SocketAddr,
    interval: Duration,
    verdicts: mpsc::Sender<Verdict>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            if probe(addr, interval, false).await.is_ok()
                && verdicts
                    .send(Verdict::Answered { peer: peer.clone() })
                    .await
                    .is_err()
            {
                return;
            }
        }
    });
}

async fn probe(addr: SocketAddr, timeout: Duration, banner: bool) -> Result<(), String> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        if banner {
            let mut first = [0u8; 1];
            match stream.read(&mut first).await {
                Ok(1) => {}
                Ok(_) => return Err(format!("{addr} closed without a greeting")),
                Err(e) => return Err(format!("{addr}: {e}")),
            }
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("{addr}: no answer in {} ms", timeout.as_millis())),
    }
}

/// Turns probe outcomes into verdict changes: `failures` misses in a row
/// to go unhealthy, one success to come back.
#[derive(Debug)]
struct Tracker {
    failures: u32,
    misses: u32,
    healthy: bool,
}

impl Tracker {
    fn new(failures: u32) -> Tracker {
        Tracker {
            failures: failures.max(1),
            misses: 0,
            healthy: true,
        }
    }

    fn reset(&mut self) {
        self.misses = 0;
        self.healthy = true;
    }

    fn observe(&mut self, outcome: Result<(), String>) -> Option<(bool, String)> {
        match outcome {
            Ok(()) => {
                self.misses = 0;
                (!self.healthy).then(|| {
                    self.healthy = true;
                    (true, "the service answers again".to_string())
                })
            }
            Err(detail) => {
                self.misses += 1;
                (self.healthy && self.misses >= self.failures).then(|| {
                    self.healthy = false;
                    (false, format!("{detail} ({} probes in a row)", self.misses))
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_changes_after_n_misses_and_one_success() {
        let mut t = Tracker::new(3);
        let miss = || Err("refused".to_string());
        assert_eq!(t.observe(miss()), None);
        assert_eq!(t.observe(miss()), None);
        assert_eq!(t.observe(miss()).map(|v| v.0), Some(false));
        assert_eq!(t.observe(miss()), None, "reported once");
        assert_eq!(t.observe(Ok(())).map(|v| v.0), Some(true));
        assert_eq!(t.observe(Ok(())), None);
        assert_eq!(t.observe(miss()), None, "the count starts again");
    }
}
