//! The delivery queue: every spooled message goes to the next hop, at least once.
//!
//! ```text
//!  Spool::store ─┐                        ┌─► worker 1 ─┐ (one connection each,
//!  recover()  ───┤                        │             │  reused across messages)
//!  rescan (1 s) ─┼─► ready queue (mpsc) ──┼─► worker 2 ─┤
//!  retry timer ──┘          ▲             └─► worker N ─┘
//!                           └──── 4xx / next hop down: back off, 2^n × base
//! ```
//!
//! A message leaves `queue/` only after the next hop's `250` for it
//! ([`Spool::finish`]); a crash before that means it is delivered again after
//! restart (at-least-once — the duplicate is the price of never losing one).
//! A 5xx moves the refused recipients' copy to `failed/` with the reason.
//! Each id is in exactly one place at a time (ready queue, a worker, or the
//! retry timer), so no message is sent twice concurrently.
//!
//! The rescan (every `delivery.rescan_interval`) delivers what another
//! process put into `queue/` while the relay runs — the HA agent merging
//! quarantined messages back — without a restart: [`Spool::adopt_new`] hands
//! over only ids the spool does not know yet (not stored, recovered or
//! adopted before), which keeps the "one place at a time" rule.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::client::{Client, Transaction};
use crate::config::DeliveryConfig;
use crate::error::{Error, Result};
use crate::spool::{Spool, SpooledMessage};

/// Most files one rescan reads: bounds the work of a scan however many
/// files landed at once (the rest waits for the next scan).
const MAX_PROBES_PER_SCAN: usize = 1000;

/// The shortest rescan period: a zero from code (not from a validated
/// file) must not become a busy loop (or a panicking `interval`).
const MIN_RESCAN_INTERVAL: Duration = Duration::from_millis(10);

/// A message waiting for (another) delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Item {
    /// Spool id.
    id: String,
    /// Attempts made so far (drives the backoff).
    attempts: u32,
}

/// Counters of the delivery queue (monotonic since start).
#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    deferred: AtomicU64,
    bounced: AtomicU64,
}

/// Snapshot of the delivery counters.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages handed to the next hop (250) since start.
    pub delivered: u64,
    /// Temporary failures (each attempt counts).
    pub deferred: u64,
    /// Messages (or parts) moved to `failed/`.
    pub bounced: u64,
    /// Messages in the queue or being delivered now.
    pub pending: u64,
}

/// Handle on the running delivery queue.
#[derive(Clone)]
pub(crate) struct Queue {
    ready: mpsc::UnboundedSender<Item>,
    counters: Arc<Counters>,
    /// Messages accepted and not yet finished.
    pending: Arc<AtomicU64>,
}

impl Queue {
    /// Starts the workers and the retry timer; queues everything already spooled.
    pub(crate) fn start(
        spool: Spool,
        next_hop: String,
        helo: String,
        config: DeliveryConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(Queue, Vec<JoinHandle<()>>)> {
        let (ready_tx, ready_rx) = mpsc::unbounded_channel();
        let (retry_tx, retry_rx) = mpsc::unbounded_channel();
        let queue = Queue {
            ready: ready_tx.clone(),
            counters: Arc::new(Counters::default()),
            pending: Arc::new(AtomicU64::new(0)),
        };
        let recovered = spool.recover()?;
        if !recovered.is_empty() {
            tracing::info!(count = recovered.len(), "recovered spooled messages");
        }
        // Known before the rescan starts, so it does not queue them again.
        spool.track(&recovered);
        for id in recovered {
            queue.push(id);
        }
        let rescan_task = tokio::spawn(rescan(
            spool.clone(),
            queue.clone(),
            config.rescan_interval,
            shutdown.clone(),
        ));
        let ready_rx = Arc::new(Mutex::new(ready_rx));
        let ctx = Arc::new(Worker {
            spool,
            next_hop,
            helo,
            config,
            ready: ready_rx,
            retry: retry_tx,
            counters: queue.counters.clone(),
            pending: queue.pending.clone(),
        });
        let mut tasks = Vec::new();
        for n in 0..ctx.config.concurrency {
            tasks.push(tokio::spawn(ctx.clone().run(n, shutdown.clone())));
        }
        tasks.push(tokio::spawn(retry_timer(retry_rx, ready_tx, shutdown)));
        tasks.push(rescan_task);
        Ok((queue, tasks))
    }

    /// Queues a freshly spooled message for delivery.
    pub(crate) fn push(&self, id: String) {
        self.pending.fetch_add(1, Ordering::Relaxed);
        // Fails only once the workers are gone (shutdown): the message stays
        // in queue/ and is recovered at the next start.
        let _ = self.ready.send(Item { id, attempts: 0 });
    }

    /// Current counters.
    pub(crate) fn stats(&self) -> QueueStats {
        QueueStats {
            delivered: self.counters.delivered.load(Ordering::Relaxed),
            deferred: self.counters.deferred.load(Ordering::Relaxed),
            bounced: self.counters.bounced.load(Ordering::Relaxed),
            pending: self.pending.load(Ordering::Relaxed),
        }
    }
}

/// What every worker shares.
struct Worker {
    spool: Spool,
    next_hop: String,
    helo: String,
    config: DeliveryConfig,
    /// Shared receiver: the worker that holds the lock takes the next message.
    ready: Arc<Mutex<mpsc::UnboundedReceiver<Item>>>,
    retry: mpsc::UnboundedSender<(Instant, Item)>,
    counters: Arc<Counters>,
    pending: Arc<AtomicU64>,
}

/// What became of one attempt.
enum Outcome {
    /// Done: every recipient delivered or bounced.
    Finished,
    /// Try again later.
    Retry,
}

impl Worker {
    async fn run(self: Arc<Self>, n: usize, mut shutdown: watch::Receiver<bool>) {
        let mut conn: Option<Client> = None;
        let mut sent_on_conn = 0usize;
        // Consecutive connection failures of this worker: it backs off too,
        // so a dead next hop is not hammered by every worker at once.
        let mut failures = 0u32;
        loop {
            let item = tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => break,
                item = async { self.ready.lock().await.recv().await } => match item {
                    Some(item) => item,
                    None => break,
                },
            };
            let msg = match self.spool.load(&item.id).await {
                Ok(msg) => msg,
                Err(Error::Path { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    // Gone from queue/ (removed by someone else): if it comes
                    // back, the rescan adopts it again.
                    self.spool.forget(&item.id);
                    self.pending.fetch_sub(1, Ordering::Relaxed);
                    continue;
                }
                Err(e) => {
                    tracing::error!(id = %item.id, error = %e, "unreadable spool file, moved to failed/");
                    if let Err(e2) = self.spool.quarantine(&item.id, &e.to_string()) {
                        tracing::error!(id = %item.id, error = %e2, "cannot quarantine");
                    }
                    self.pending.fetch_sub(1, Ordering::Relaxed);
                    continue;
                }
            };
            if conn.is_none() {
                match self.connect().await {
                    Ok(c) => {
                        conn = Some(c);
                        sent_on_conn = 0;
                        failures = 0;
                    }
                    Err(e) => {
                        tracing::warn!(worker = n, next_hop = %self.next_hop, error = %e, "next hop unreachable");
                        self.defer(item);
                        failures = failures.saturating_add(1);
                        let pause = self.backoff(failures);
                        tokio::select! {
                            _ = shutdown.wait_for(|s| *s) => break,
                            _ = tokio::time::sleep(pause) => {}
                        }
                        continue;
                    }
                }
            }
            let Some(client) = conn.as_mut() else {
                continue;
            };
            let result = client
                .send(&msg.envelope.from, &msg.envelope.rcpts, &msg.body)
                .await;
            match result {
                Ok(tx) => {
                    sent_on_conn += 1;
                    match self.settle(&msg, tx).await {
                        Outcome::Finished => {
                            self.pending.fetch_sub(1, Ordering::Relaxed);
                        }
                        Outcome::Retry => self.defer(item),
                    }
                }
                Err(e) => {
                    tracing::warn!(id = %msg.id, error = %e, "delivery attempt failed");
                    conn = None;
                    self.defer(item);
                }
            }
            if sent_on_conn >= self.config.max_messages_per_connection
                && let Some(c) = conn.take()
            {
                c.quit().await;
            }
        }
        if let Some(c) = conn {
            c.quit().await;
        }
    }

    async fn connect(&self) -> Result<Client> {
        let addr = resolve(&self.next_hop).await?;
        Client::connect(
            addr,
            &self.helo,
            self.config.connect_timeout,
            self.config.reply_timeout,
        )
        .await
    }

    /// Applies the next hop's answers to the spool.
    async fn settle(&self, msg: &SpooledMessage, tx: Transaction) -> Outcome {
        let mut remaining = Vec::new();
        let mut refused = Vec::new();
        if !tx.mail.is_ok() {
            if tx.mail.is_permanent() {
                refused = msg
                    .envelope
                    .rcpts
                    .iter()
                    .map(|r| (r.clone(), format!("MAIL: {}", tx.mail)))
                    .collect();
            } else {
                remaining = msg.envelope.rcpts.clone();
            }
        } else {
            for (rcpt, reply) in msg.envelope.rcpts.iter().zip(&tx.rcpts) {
                if reply.is_ok() {
                    match &tx.data {
                        Some(d) if d.is_ok() => {}
                        Some(d) if d.is_permanent() => {
                            refused.push((rcpt.clone(), format!("DATA: {d}")))
                        }
                        _ => remaining.push(rcpt.clone()),
                    }
                } else if reply.is_permanent() {
                    refused.push((rcpt.clone(), format!("RCPT: {reply}")));
                } else {
                    remaining.push(rcpt.clone());
                }
            }
        }
        let delivered = msg.envelope.rcpts.len() - remaining.len() - refused.len();
        let retry = !remaining.is_empty();
        let bounced = !refused.is_empty();
        if bounced {
            tracing::warn!(id = %msg.id, refused = ?refused, "next hop refused recipients; copy kept in failed/");
        }
        if let Err(e) = self.spool.finish(msg, remaining, refused).await {
            // The queue file is intact: the worst case is a second delivery.
            tracing::error!(id = %msg.id, error = %e, "cannot update the spool after delivery");
            return Outcome::Retry;
        }
        // Counted only once the spool says so, so that a reader of the
        // counters never sees a bounce whose copy is not yet in failed/.
        if bounced {
            self.counters.bounced.fetch_add(1, Ordering::Relaxed);
        }
        if delivered > 0 {
            self.counters.delivered.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(id = %msg.id, delivered, "delivered");
        }
        if retry {
            Outcome::Retry
        } else {
            Outcome::Finished
        }
    }

    /// Schedules another attempt after the backoff for this message.
    fn defer(&self, mut item: Item) {
        self.counters.deferred.fetch_add(1, Ordering::Relaxed);
        item.attempts = item.attempts.saturating_add(1);
        let at = Instant::now() + self.backoff(item.attempts);
        let _ = self.retry.send((at, item));
    }

    /// base × 2^(n-1), capped at retry_max.
    fn backoff(&self, n: u32) -> Duration {
        let factor = 1u32 << n.saturating_sub(1).min(20);
        self.config
            .retry_base
            .saturating_mul(factor)
            .min(self.config.retry_max)
    }
}

/// Every `every`, adopts the files another process wrote into `queue/` and
/// queues them (see the module docs).
async fn rescan(spool: Spool, queue: Queue, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every.max(MIN_RESCAN_INTERVAL));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first tick is immediate, and recovery has just listed queue/.
    tick.tick().await;
    // Warn when scanning starts failing, not every period while it fails.
    let mut failing = false;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        match spool.adopt_new(MAX_PROBES_PER_SCAN).await {
            Ok(ids) => {
                if failing {
                    tracing::info!("spool rescan works again");
                    failing = false;
                }
                if !ids.is_empty() {
                    tracing::info!(
                        count = ids.len(),
                        "adopted messages written into queue/ by another process"
                    );
                }
                for id in ids {
                    queue.push(id);
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot rescan the spool queue; retrying every period");
                    failing = true;
                }
            }
        }
    }
}

/// Holds deferred messages until their time, then puts them back in the ready queue.
async fn retry_timer(
    mut incoming: mpsc::UnboundedReceiver<(Instant, Item)>,
    ready: mpsc::UnboundedSender<Item>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut heap: BinaryHeap<Reverse<(Instant, Item)>> = BinaryHeap::new();
    loop {
        let next = heap.peek().map(|Reverse((at, _))| *at);
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => return,
            got = incoming.recv() => match got {
                Some(entry) => heap.push(Reverse(entry)),
                None => return,
            },
            _ = sleep_until_opt(next) => {
                let now = Instant::now();
                while let Some(Reverse((at, _))) = heap.peek() {
                    if *at > now {
                        break;
                    }
                    if let Some(Reverse((_, item))) = heap.pop() {
                        let _ = ready.send(item);
                    }
                }
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves HOST:PORT (first address).
pub(crate) async fn resolve(target: &str) -> Result<SocketAddr> {
    let mut addrs = tokio::net::lookup_host(target)
        .await
        .map_err(|e| Error::Socket {
            what: "resolve",
            addr: target.to_string(),
            source: e,
        })?;
    addrs
        .next()
        .ok_or_else(|| Error::Invalid(format!("{target} resolves to no address")))
}
