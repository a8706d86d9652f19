//! The load generator: many SMTP sessions, each sending many messages, each
//! message with a unique id, and a report of what was acknowledged.
//!
//! It is a test tool, so it is bounded (a message count and an overall
//! deadline) and talks to loopback addresses only. Each session keeps its
//! connection across messages, like `smtp-source`; a broken session is
//! counted, reconnected, and the message it was sending is counted as not
//! acknowledged (it is never retried: the report is about what the server
//! acknowledged, which is what the sink must then have received).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::time::Instant;

use crate::client::Client;
use crate::error::{Error, Result};

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The relay (loopback only).
    pub to: SocketAddr,
    /// Messages in total.
    pub messages: u64,
    /// Sessions in parallel.
    pub concurrency: usize,
    /// Approximate message size in octets.
    pub size: usize,
    /// Give up on whatever is not sent by then.
    pub timeout: Duration,
}

/// Latency percentiles of acknowledged messages, MAIL to final reply.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Worst, milliseconds.
    pub max_ms: f64,
}

/// What happened.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Prefix of every id of this run.
    pub run_id: String,
    /// Messages attempted (a transaction was started).
    pub sent: u64,
    /// Messages the server answered 2xx after the data.
    pub acknowledged: u64,
    /// Messages the server refused (4xx/5xx).
    pub rejected: u64,
    /// Sessions that broke after connecting (reset, timeout, protocol error).
    pub failed_sessions: u64,
    /// Connection attempts that failed (refused, timed out); the message
    /// that would have been sent counts as not sent.
    pub connect_failures: u64,
    /// Wall-clock seconds.
    pub elapsed_s: f64,
    /// Acknowledged messages per second.
    pub msgs_per_s: f64,
    /// Latency of acknowledged messages.
    pub latency: Latency,
    /// Ids of the acknowledged messages (not in JSON output; see `--acked-out`).
    #[serde(skip)]
    pub acked_ids: Vec<String>,
}

/// Runs the load and reports.
pub async fn load(opts: LoadOptions) -> Result<LoadReport> {
    if !opts.to.ip().is_loopback() {
        return Err(Error::Invalid(format!(
            "load targets loopback addresses only, not {}",
            opts.to
        )));
    }
    if opts.concurrency == 0 {
        return Err(Error::Invalid("concurrency must be at least 1".into()));
    }
    let run_id = format!(
        "{:x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0)
    );
    let started = Instant::now();
    let deadline = started + opts.timeout;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..opts.concurrency.min(opts.messages.max(1) as usize) {
        let opts = opts.clone();
        let next = next.clone();
        let run_id = run_id.clone();
        tasks.push(tokio::spawn(session(opts, run_id, next, deadline)));
    }
    let mut total = SessionTally::default();
    for t in tasks {
        if let Ok(t) = t.await {
            total.sent += t.sent;
            total.rejected += t.rejected;
            total.failed_sessions += t.failed_sessions;
            total.connect_failures += t.connect_failures;
            total.acked.extend(t.acked);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut lat: Vec<u64> = total.acked.iter().map(|(_, us)| *us).collect();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    let acknowledged = total.acked.len() as u64;
    Ok(LoadReport {
        run_id,
        sent: total.sent,
        acknowledged,
        rejected: total.rejected,
        failed_sessions: total.failed_sessions,
        connect_failures: total.connect_failures,
        elapsed_s: elapsed,
        msgs_per_s: if elapsed > 0.0 {
            acknowledged as f64 / elapsed
        } else {
            0.0
        },
        latency: Latency {
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            max_ms: lat.last().map(|&u| u as f64 / 1000.0).unwrap_or(0.0),
        },
        acked_ids: total.acked.into_iter().map(|(id, _)| id).collect(),
    })
}

#[derive(Default)]
struct SessionTally {
    sent: u64,
    rejected: u64,
    failed_sessions: u64,
    connect_failures: u64,
    /// (id, latency in microseconds)
    acked: Vec<(String, u64)>,
}

async fn session(
    opts: LoadOptions,
    run_id: String,
    next: Arc<AtomicU64>,
    deadline: Instant,
) -> SessionTally {
    let mut tally = SessionTally::default();
    let mut conn: Option<Client> = None;
    let reply_timeout = Duration::from_secs(30);
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= opts.messages || Instant::now() >= deadline {
            break;
        }
        let id = format!("{run_id}-{n:08}");
        if conn.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match Client::connect(
                opts.to,
                "load.tandem.invalid",
                left.min(Duration::from_secs(5)),
                reply_timeout,
            )
            .await
            {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, "load: connect failed");
                    tally.connect_failures += 1;
                    // Do not spin through the remaining messages in a burst
                    // of refused connections; the count stays bounded anyway.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        let Some(client) = conn.as_mut() else {
            continue;
        };
        let body = message(&id, opts.size);
        let rcpt = vec![format!("{id}@load.tandem.invalid")];
        let t0 = Instant::now();
        tally.sent += 1;
        let left = deadline.saturating_duration_since(t0);
        match tokio::time::timeout(left, client.send("load@tandem.invalid", &rcpt, &body)).await {
            Ok(Ok(tx)) => match tx.data {
                Some(r) if r.is_ok() => tally.acked.push((id, t0.elapsed().as_micros() as u64)),
                _ => tally.rejected += 1,
            },
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "load: session broke");
                tally.failed_sessions += 1;
                conn = None;
            }
            Err(_) => {
                tally.failed_sessions += 1;
                conn = None;
                break;
            }
        }
    }
    if let Some(c) = conn {
        c.quit().await;
    }
    tally
}

/// A message of about `size` octets whose header carries `id`.
pub fn message(id: &str, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: <load@tandem.invalid>\r\nTo: <{id}@load.tandem.invalid>\r\nSubject: tandem load {id}\r\nMessage-ID: <{id}@tandem.invalid>\r\nX-Tandem-Id: {id}\r\n\r\n"
    )
    .into_bytes();
    // Filler lines of 78 octets; one starts with a dot to exercise stuffing.
    let line = b".tandem load filler 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQ\r\n";
    while m.len() < size {
        m.extend_from_slice(line);
    }
    m
}
