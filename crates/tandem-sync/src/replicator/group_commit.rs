//! Group commit: the leader task that turns the commits gathered while a
//! batch is in flight into the next batch, hands it to the in-sync peers,
//! waits for their acks (≤ `sync_timeout`) and answers every commit in it
//! with the [`Durability`] reached. One batch at a time is what makes one
//! round trip cover many commits under load; this is also where a standby
//! that does not confirm is dropped out of sync (`degrade`) or fails the
//! commit (`strict`), and where a degraded batch is recorded as
//! unreplicated before any commit in it returns.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::Shared;
use super::config::{DataSync, SyncMode};
use super::peer::Job;
use super::status::PeerState;
use crate::blocking;
use crate::store::Op;
use crate::unreplicated::record_missed;
use crate::{Error, Result};

/// How durable a commit is when it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DurabilityLevel {
    /// On this node only (`data_sync = "off"`, or no standby configured).
    Local,
    /// On this node, and queued for the standbys (`async`).
    Queued,
    /// Fsync'd on every standby (`semi`, all in sync).
    Replicated,
    /// Fsync'd on the standbys in `acked_by` only; the others are out of
    /// sync (`semi` + `degrade`).
    Degraded,
}

/// What [`Replicator::commit`](super::Replicator::commit) achieved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durability {
    /// The level reached.
    pub level: DurabilityLevel,
    /// The group-commit batch that carried it (`semi` only).
    pub batch: Option<u64>,
    /// Standbys that acknowledged it.
    pub acked_by: Vec<String>,
    /// Standbys that did not, with the reason.
    pub missing: Vec<(String, String)>,
}

/// Forms group-commit batches: takes everything pending, sends it, waits,
/// answers every commit in it; meanwhile the next batch gathers.
pub(super) async fn leader(shared: Arc<Shared>) {
    let mut batch_no = 0u64;
    loop {
        shared.leader_wake.notified().await;
        loop {
            let (paths, waiters, since) = {
                let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
                if pending.paths.is_empty() && pending.waiters.is_empty() {
                    break;
                }
                (
                    std::mem::take(&mut pending.paths),
                    std::mem::take(&mut pending.waiters),
                    pending.since.take().unwrap_or_else(Instant::now),
                )
            };
            batch_no += 1;
            shared.counters().batches += 1;
            let outcome = run_batch(&shared, batch_no, &paths, since).await;
            {
                let mut counters = shared.counters();
                match &outcome {
                    Ok(d) if d.level == DurabilityLevel::Degraded => {
                        counters.degraded += waiters.len() as u64
                    }
                    Ok(_) => {}
                    Err(_) => counters.failed += waiters.len() as u64,
                }
            }
            for waiter in waiters {
                let answer = match &outcome {
                    Ok(durability) => Ok(durability.clone()),
                    Err(BatchFailure::Local(message)) => Err(Error::Io {
                        path: shared.data.root().to_path_buf(),
                        source: std::io::Error::other(message.clone()),
                    }),
                    Err(BatchFailure::NotReplicated(failures)) => Err(Error::NotReplicated {
                        failures: failures.clone(),
                    }),
                };
                let _ = waiter.send(answer);
            }
        }
    }
}

/// Why a batch failed; cloned to every commit in it.
enum BatchFailure {
    /// Reading the files on this node failed.
    Local(String),
    /// `strict` and some standbys did not confirm.
    NotReplicated(Vec<(String, String)>),
}

async fn run_batch(
    shared: &Arc<Shared>,
    batch_no: u64,
    paths: &BTreeSet<String>,
    since: Instant,
) -> Result<Durability, BatchFailure> {
    let data = shared.data.clone();
    let to_read: Vec<String> = paths.iter().cloned().collect();
    let ops = blocking(move || to_read.iter().map(|p| data.read_op(p)).collect())
        .await
        .map_err(|e| BatchFailure::Local(e.to_string()))?;
    let ops: Arc<Vec<Op>> = Arc::new(ops);

    let mut in_flight = Vec::new();
    let mut missing = Vec::new();
    for peer in &shared.peers {
        let mut inner = peer.lock();
        if inner.state == PeerState::InSync {
            let (reply, answer) = oneshot::channel();
            match peer.jobs.try_send(Job::Batch {
                ops: ops.clone(),
                reply,
            }) {
                Ok(()) => in_flight.push((peer, answer)),
                Err(_) => {
                    drop(inner);
                    let why = "its queue is full: it is not keeping up";
                    shared.fall_out_of_sync(peer, paths, why);
                    missing.push((peer.name.clone(), why.to_string()));
                }
            }
        } else {
            // Not waited for: its task sends these when it can.
            inner.remember_missed(paths);
            let why = format!("{:?}", inner.state).to_lowercase();
            drop(inner);
            peer.wake.notify_one();
            missing.push((peer.name.clone(), format!("not in sync ({why})")));
        }
    }

    let timeout = shared.config.sync_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut acked_by = Vec::new();
    for (peer, answer) in in_flight {
        let why = match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(Ok(()))) => {
                peer.lock().last_batch_lag = Some(since.elapsed());
                acked_by.push(peer.name.clone());
                continue;
            }
            Ok(Ok(Err(e))) => e.to_string(),
            Ok(Err(_)) => "its connection was lost".to_string(),
            Err(_) => format!("no ack within sync_timeout ({timeout:?})"),
        };
        shared.fall_out_of_sync(peer, paths, &why);
        missing.push((peer.name.clone(), why));
    }

    // Acknowledged (degrade), or already acknowledged (async) without
    // these standbys: recorded before the answer, or a catch-up from one
    // of them could delete the files. A strict semi commit fails instead.
    let acked_anyway =
        shared.config.sync_mode == SyncMode::Degrade || shared.config.data_sync == DataSync::Async;
    // A semi commit acknowledged without a standby: that standby must first
    // lose its right to take over (etcd's `sync` key), or the commit fails.
    if let Some(gate) = shared.config.degrade_gate.as_ref().filter(|_| {
        !missing.is_empty()
            && shared.config.data_sync == DataSync::Semi
            && shared.config.sync_mode == SyncMode::Degrade
    }) {
        let standbys = missing.iter().map(|(peer, _)| peer.clone()).collect();
        if let Err(e) = gate.drop_standbys(standbys).await {
            tracing::error!(error = %e, "cannot take the lagging standbys out of etcd's sync key: the commit fails");
            let mut missing = missing;
            for (_, why) in &mut missing {
                why.push_str(&format!("; and it stays allowed to take over: {e}"));
            }
            return Err(BatchFailure::NotReplicated(missing));
        }
    }
    if let Some(record) = shared.config.unreplicated.as_ref().filter(|_| acked_anyway) {
        let peers = missing.iter().map(|(peer, _)| peer.clone()).collect();
        if let Err(e) = record_missed(record, &ops, peers).await {
            tracing::error!(error = %e, "cannot record what the standbys missed: the commit fails");
            return Err(BatchFailure::Local(format!(
                "cannot record what the standbys missed: {e}"
            )));
        }
    }
    let level = if missing.is_empty() {
        DurabilityLevel::Replicated
    } else if shared.config.sync_mode == SyncMode::Strict {
        return Err(BatchFailure::NotReplicated(missing));
    } else {
        DurabilityLevel::Degraded
    };
    Ok(Durability {
        level,
        batch: Some(batch_no),
        acked_by,
        missing,
    })
}
