//! The counting sink: an SMTP server that accepts everything and counts ids.
//!
//! It stands in for the next hop in tests, benchmarks and the demo, and
//! answers the only question that matters there: did every acknowledged
//! message arrive, and how many arrived twice? A message's id is its
//! `X-Tandem-Id:` header (written by [`crate::load`]); a message without
//! one (e.g. from postfix's `smtp-source`) counts once per recipient address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::Limits;
use crate::error::{Error, Result};
use crate::server::{Listen, ListenerControl};
use crate::session::{Handler, MessageContext, SessionConfig};
use crate::spool::Envelope;

/// How many ids a report lists at most (the counts are always complete).
const LIST_CAP: usize = 100;

/// What the sink saw.
#[derive(Debug, Clone, Serialize)]
pub struct SinkReport {
    /// Transactions accepted (250).
    pub messages: u64,
    /// Distinct ids among them.
    pub distinct_ids: u64,
    /// Arrivals beyond the first of an id.
    pub duplicates: u64,
    /// Some duplicated ids (at most 100).
    pub duplicate_ids: Vec<String>,
    /// Transactions answered 451 on purpose (`tempfail_first`).
    pub tempfailed: u64,
    /// Ids expected (from `--expect`), if given.
    pub expected: Option<u64>,
    /// Expected ids that never arrived, if an expectation was given.
    pub missing: Option<u64>,
    /// Some missing ids (at most 100).
    pub missing_ids: Vec<String>,
    /// Seconds the sink ran.
    pub elapsed_s: f64,
}

/// A running sink.
pub struct Sink {
    control: ListenerControl,
    handler: Arc<SinkHandler>,
    started: Instant,
}

/// Options of [`sink`] (the one-call form used by the CLI).
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// Address to listen on (loopback only).
    pub listen: SocketAddr,
    /// Stop after this long at most.
    pub duration: Duration,
    /// Stop once this many distinct ids arrived.
    pub exit_after: Option<u64>,
    /// Ids that must arrive (report which did not).
    pub expect: Option<Vec<String>>,
    /// Answer `451 4.3.0` to the first N transactions (to test retries).
    pub tempfail_first: u64,
}

/// Binds, counts until `duration` or `exit_after`, and reports.
pub async fn sink(opts: SinkOptions) -> Result<SinkReport> {
    let s = Sink::bind(Listen::Bind(vec![opts.listen]), opts.tempfail_first).await?;
    eprintln!("tandem-mta sink: listening on {}", s.local_addr().await);
    Ok(
        s.run_until(opts.exit_after, opts.duration, opts.expect.as_deref())
            .await,
    )
}

impl Sink {
    /// Starts listening. Only loopback addresses are allowed: the sink is a test tool.
    pub async fn bind(listen: Listen, tempfail_first: u64) -> Result<Sink> {
        if let Listen::Bind(addrs) = &listen
            && let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback())
        {
            return Err(Error::Invalid(format!(
                "sink listens on loopback only, not {a}"
            )));
        }
        let (distinct, _) = watch::channel(0u64);
        let handler = Arc::new(SinkHandler {
            seen: Mutex::new(HashMap::new()),
            messages: AtomicU64::new(0),
            tempfail_left: AtomicU64::new(tempfail_first),
            tempfailed: AtomicU64::new(0),
            distinct,
        });
        let config = Arc::new(SessionConfig {
            hostname: "tandem-sink.localdomain".to_string(),
            limits: Limits {
                max_message_size: 64 * 1024 * 1024,
                max_recipients: 10_000,
                max_sessions: 10_000,
                command_timeout: Duration::from_secs(60),
                ..Limits::default()
            },
        });
        let control =
            ListenerControl::start(listen, handler.clone(), config, Duration::from_secs(1)).await?;
        Ok(Sink {
            control,
            handler,
            started: Instant::now(),
        })
    }

    /// The address it listens on.
    pub async fn local_addr(&self) -> SocketAddr {
        self.control
            .local_addrs()
            .await
            .first()
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The listener control (tests use it to make the next hop "go down").
    pub fn listener(&self) -> &ListenerControl {
        &self.control
    }

    /// How many copies of each id arrived so far.
    pub fn copies(&self) -> HashMap<String, u32> {
        self.handler
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Counts so far, checked against `expect` if given.
    pub fn report(&self, expect: Option<&[String]>) -> SinkReport {
        let seen = self.handler.seen.lock().unwrap_or_else(|p| p.into_inner());
        let duplicates: u64 = seen.values().map(|&n| u64::from(n.saturating_sub(1))).sum();
        let mut duplicate_ids: Vec<String> = seen
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, _)| k.clone())
            .collect();
        duplicate_ids.sort();
        duplicate_ids.truncate(LIST_CAP);
        let (expected, missing, missing_ids) = match expect {
            Some(ids) => {
                let missing: Vec<&String> =
                    ids.iter().filter(|id| !seen.contains_key(*id)).collect();
                let list = missing
                    .iter()
                    .take(LIST_CAP)
                    .map(|s| s.to_string())
                    .collect();
                (Some(ids.len() as u64), Some(missing.len() as u64), list)
            }
            None => (None, None, Vec::new()),
        };
        SinkReport {
            messages: self.handler.messages.load(Ordering::Relaxed),
            distinct_ids: seen.len() as u64,
            duplicates,
            duplicate_ids,
            tempfailed: self.handler.tempfailed.load(Ordering::Relaxed),
            expected,
            missing,
            missing_ids,
            elapsed_s: self.started.elapsed().as_secs_f64(),
        }
    }

    /// Waits until `exit_after` distinct ids arrived (or, with `expect`,
    /// every expected id) or `duration` passed; then closes and reports.
    pub async fn run_until(
        self,
        exit_after: Option<u64>,
        duration: Duration,
        expect: Option<&[String]>,
    ) -> SinkReport {
        let mut distinct = self.handler.distinct.subscribe();
        let handler = self.handler.clone();
        let done = async {
            match (exit_after, expect) {
                (Some(n), _) => {
                    let _ = distinct.wait_for(|d| *d >= n).await;
                }
                (None, Some(ids)) => loop {
                    if handler.has_all(ids) {
                        break;
                    }
                    if distinct.changed().await.is_err() {
                        break;
                    }
                },
                (None, None) => std::future::pending::<()>().await,
            }
        };
        let _ = tokio::time::timeout(duration, done).await;
        self.control.close().await;
        self.report(expect)
    }
}

struct SinkHandler {
    /// Arrivals per id.
    seen: Mutex<HashMap<String, u32>>,
    messages: AtomicU64,
    tempfail_left: AtomicU64,
    tempfailed: AtomicU64,
    /// Number of distinct ids, for waiters.
    distinct: watch::Sender<u64>,
}

impl SinkHandler {
    fn has_all(&self, ids: &[String]) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        ids.iter().all(|id| seen.contains_key(id))
    }
}

impl Handler for SinkHandler {
    async fn message(&self, _ctx: MessageContext, envelope: Envelope, body: Vec<u8>) -> String {
        if self
            .tempfail_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            self.tempfailed.fetch_add(1, Ordering::Relaxed);
            return "451 4.3.0 Error: try again later (sink told to)".to_string();
        }
        let ids = match header_id(&body) {
            Some(id) => vec![id],
            None => envelope.rcpts,
        };
        let n = {
            // A std mutex: held for a few map operations, never across an await.
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            for id in ids {
                *seen.entry(id).or_insert(0) += 1;
            }
            seen.len() as u64
        };
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.distinct.send_replace(n);
        "250 2.0.0 Ok: counted".to_string()
    }
}

/// The `X-Tandem-Id:` header's value, looked for in the header section only.
pub(crate) fn header_id(body: &[u8]) -> Option<String> {
    for line in body.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return None;
        }
        if line.len() > 12 && line[..12].eq_ignore_ascii_case(b"x-tandem-id:") {
            let v = String::from_utf8_lossy(&line[12..]).trim().to_string();
            return (!v.is_empty()).then_some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_header_id() {
        assert_eq!(
            header_id(b"Received: x\r\nX-Tandem-Id: abc-1\r\n\r\nbody"),
            Some("abc-1".into())
        );
        assert_eq!(header_id(b"Subject: x\r\n\r\nX-Tandem-Id: no\r\n"), None);
    }
}
