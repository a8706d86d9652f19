//! The active side: cluster fsync (`commit`), group commit, degrade or
//! strict, catch-up, resync, config and journal pushes.
//!
//! ```text
//!  commit(paths) ──► pending set ──► leader task ───────► peer task (one per standby)
//!  commit(paths) ──►  (gathers       one batch in flight:  owns the TLS connection:
//!  commit(paths) ──►   while a        read the files, hand  dial, catch up, send
//!       ▲              batch flies)   to in-sync peers,     batches, answer jobs
//!       └──────────── Durability ◄─── wait ≤ sync_timeout ◄─ Ack (standby fsync'd)
//! ```
//!
//! **Group commit.** Only one batch is in flight at a time; every commit
//! that arrives meanwhile joins the next one, so under load one round trip
//! (and one directory fsync on the standby) covers many messages. Paths
//! are a set: a file committed twice is sent once, as it is *at send time*.
//!
//! **What a commit sends.** The state of each path when the batch is
//! read: its content if it exists, a delete if not. Sending current state
//! rather than "the change" is what makes replays, catch-up and retries
//! idempotent, and it is why deletions need no separate API: commit the
//! path of a file you removed.
//!
//! **Peer states.** `InSync` peers receive batches and are waited for.
//! Any other peer (`Disconnected`, `Syncing`, `OutOfSync`) gets the batch's
//! paths added to its *dirty set* instead, which its task sends when it
//! can; a peer becomes `InSync` again only when its dirty set is empty, a
//! check made under the same lock the leader uses to choose, so no commit
//! can slip between the two. A peer that misses `sync_timeout` or loses
//! its connection becomes `OutOfSync` (counted): `degrade` carries on
//! without it, `strict` fails the commit.
//!
//! **Catch-up.** On every (re)connection the peer task compares manifests
//! (path, size, SHA-256): it sends what differs and deletes what the
//! active no longer has, with progress, before the peer can be `InSync`.
//! Resync is the same with every file sent.
//!
//! **Degraded commits are recorded.** The paths of a batch some standby
//! did not ack go to this node's unreplicated record for that standby
//! ([`crate::unreplicated`]) before the commit returns, so that if the
//! standby later catches this node up, those files are quarantined rather
//! than deleted. **Idle channels are pinged** (`keepalive`), and every
//! answer is reported as liveness ([`crate::liveness`]).
//!
//! **Layout.** This file holds the [`Replicator`] handle and what its
//! tasks share; `config` the settings, `status` what it reports,
//! `group_commit` the leader task, `peer` the per-standby task,
//! `catch_up` the manifest comparison every connection starts with, and
//! `keepalive` the pings on an idle connection.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::blocking;
use crate::frame::ManifestSet;
use crate::liveness::Liveness;
use crate::report::{self, SyncReport};
use crate::store::{DataDir, ManifestEntry, files_manifest};
use crate::{Error, Progress, Result, unix_ms};

mod catch_up;
mod config;
mod group_commit;
mod keepalive;
mod peer;
mod status;

pub use config::{DataSync, DegradeGate, PeerAddr, ReplicatorConfig, SyncMode};
pub use group_commit::{Durability, DurabilityLevel};
pub use status::{PeerOutcome, PeerState, PeerStatus, ReplicatorStatus};

use group_commit::leader;
use peer::{Job, Peer, peer_task};

/// Called after every chunk of a catch-up or resync.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// The active side of cluster fsync. Cheap to clone; the tasks stop when
/// the last clone is dropped.
#[derive(Clone)]
pub struct Replicator {
    owner: Arc<Owner>,
}

impl std::fmt::Debug for Replicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicator")
            .field("status", &self.status())
            .finish()
    }
}

/// Holds the tasks; aborts them when dropped. Kept apart from `Shared`
/// because the tasks hold `Shared`, and a cycle would never drop.
struct Owner {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

struct Shared {
    config: ReplicatorConfig,
    data: DataDir,
    /// Commits waiting for the next batch.
    pending: Mutex<Pending>,
    /// Wakes the leader; `notify_one` keeps a permit, so none is lost.
    leader_wake: Notify,
    peers: Vec<Arc<Peer>>,
    counters: Mutex<Counters>,
    /// Bumped on every peer state change, for `wait_for`.
    changed: watch::Sender<u64>,
    /// When each standby last answered; reports it on `config.heard`.
    liveness: Liveness,
}

#[derive(Default)]
struct Pending {
    paths: BTreeSet<String>,
    waiters: Vec<oneshot::Sender<Result<Durability>>>,
    /// When the oldest of these commits arrived: the start of its lag.
    since: Option<Instant>,
}

#[derive(Default)]
struct Counters {
    commits: u64,
    batches: u64,
    degraded: u64,
    failed: u64,
}

impl Shared {
    fn counters(&self) -> MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|generation| *generation += 1);
    }

    /// Marks `peer` out of sync because of `why`, remembering `paths` as
    /// missed. Counted once per fall, not once per missed batch.
    fn fall_out_of_sync<'a>(
        &self,
        peer: &Peer,
        paths: impl IntoIterator<Item = &'a String>,
        why: &str,
    ) {
        {
            let mut inner = peer.lock();
            if inner.state == PeerState::InSync {
                inner.state = PeerState::OutOfSync;
                inner.out_of_sync_events += 1;
                inner.not_in_sync_since = Some(Instant::now());
                tracing::warn!(peer = %peer.name, why, "standby out of sync");
            }
            inner.remember_missed(paths);
            inner.last_error = Some(why.to_string());
        }
        peer.wake.notify_one();
        self.bump();
    }
}

impl Replicator {
    /// Starts the leader and one task per peer. Must be called inside a
    /// tokio runtime. Peers are dialed (and caught up) at once.
    pub fn start(config: ReplicatorConfig) -> Result<Self> {
        let data = DataDir::open(&config.data_dir)?;
        let mut receivers = Vec::new();
        let peers = config
            .peers
            .iter()
            .map(|peer| {
                // A few slots: the leader has one batch in flight, plus
                // resync, report and config jobs.
                let (jobs, rx) = mpsc::channel(16);
                receivers.push(rx);
                Arc::new(Peer::new(peer, jobs))
            })
            .collect::<Vec<_>>();
        let (changed, _) = watch::channel(0);
        let liveness = Liveness::new(
            config.heard.clone(),
            config.keepalive.unwrap_or(Duration::from_secs(1)),
        );
        let shared = Arc::new(Shared {
            liveness,
            config,
            data,
            pending: Mutex::new(Pending::default()),
            leader_wake: Notify::new(),
            peers,
            counters: Mutex::new(Counters::default()),
            changed,
        });
        let mut tasks = vec![tokio::spawn(leader(shared.clone()))];
        for (peer, jobs) in shared.peers.iter().zip(receivers) {
            tasks.push(tokio::spawn(peer_task(shared.clone(), peer.clone(), jobs)));
        }
        Ok(Replicator {
            owner: Arc::new(Owner { shared, tasks }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.owner.shared
    }

    /// Cluster fsync: returns when `paths` (files under the data dir,
    /// absolute or relative to it, already durable locally) are as durable
    /// as `data_sync` asks. A path whose file no longer exists replicates
    /// as a delete.
    ///
    /// With `semi` + `strict`, an error means: do not acknowledge the
    /// client. With `degrade` the only errors are bad paths and local I/O.
    pub async fn commit(&self, paths: &[PathBuf]) -> Result<Durability> {
        let shared = self.shared();
        shared.counters().commits += 1;
        let local = Durability {
            level: DurabilityLevel::Local,
            batch: None,
            acked_by: Vec::new(),
            missing: Vec::new(),
        };
        if shared.config.data_sync == DataSync::Off || shared.peers.is_empty() {
            return Ok(local);
        }
        let relative = paths
            .iter()
            .map(|p| shared.data.relative(p))
            .collect::<Result<Vec<_>>>()?;
        let (reply, answer) = oneshot::channel();
        {
            let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.paths.extend(relative);
            pending.since.get_or_insert_with(Instant::now);
            if shared.config.data_sync == DataSync::Semi {
                pending.waiters.push(reply);
            }
        }
        shared.leader_wake.notify_one();
        if shared.config.data_sync == DataSync::Async {
            return Ok(Durability {
                level: DurabilityLevel::Queued,
                ..local
            });
        }
        answer.await.map_err(|_| Error::Stopped)?
    }

    /// Brings every connected standby up to date by manifest comparison
    /// (what happens on its own at every reconnection).
    pub async fn catch_up(&self, progress: Option<ProgressFn>) -> Vec<PeerOutcome> {
        self.sync_all(false, progress).await
    }

    /// `tandem ha resync`: a full push of every file to every connected
    /// standby, and removal of what the active does not have.
    pub async fn resync(&self, progress: Option<ProgressFn>) -> Vec<PeerOutcome> {
        self.sync_all(true, progress).await
    }

    async fn sync_all(&self, full: bool, progress: Option<ProgressFn>) -> Vec<PeerOutcome> {
        self.ask_each_peer(|reply| Job::Sync {
            full,
            progress: progress.clone(),
            reply,
        })
        .await
        .into_iter()
        .map(|(peer, result)| match result {
            Ok(progress) => PeerOutcome {
                peer,
                progress: Some(progress),
                error: None,
            },
            Err(e) => PeerOutcome {
                peer,
                progress: None,
                error: Some(e.to_string()),
            },
        })
        .collect()
    }

    /// Pushes a config file to every connected standby (written under its
    /// config dir). Returns each peer's outcome: config is not
    /// commit-critical, so a peer that is away is an outcome, not an error.
    /// Only a bad `name` is an error.
    pub async fn push_config(
        &self,
        name: &str,
        content: &[u8],
        mode: u32,
    ) -> Result<Vec<PeerOutcome>> {
        crate::store::check_relative(name)?;
        Ok(self
            .each_peer(|reply| Job::Config {
                name: name.to_string(),
                mode,
                content: content.to_vec(),
                reply,
            })
            .await)
    }

    /// Sends an opaque journal record to every connected standby and
    /// returns once each has persisted it (or failed to).
    pub async fn send_journal(&self, record: &[u8]) -> Vec<PeerOutcome> {
        self.each_peer(|reply| Job::Journal {
            record: record.to_vec(),
            reply,
        })
        .await
    }

    async fn each_peer(
        &self,
        job: impl Fn(oneshot::Sender<Result<()>>) -> Job,
    ) -> Vec<PeerOutcome> {
        self.ask_each_peer(job)
            .await
            .into_iter()
            .map(|(peer, result)| PeerOutcome {
                peer,
                progress: None,
                error: result.err().map(|e| e.to_string()),
            })
            .collect()
    }

    /// Hands every peer's task the job `job` makes, then waits for each
    /// answer, in peer order; a task that is gone answers `Stopped`.
    async fn ask_each_peer<T>(
        &self,
        job: impl Fn(oneshot::Sender<Result<T>>) -> Job,
    ) -> Vec<(String, Result<T>)> {
        let mut answers = Vec::new();
        for peer in &self.shared().peers {
            let (reply, answer) = oneshot::channel();
            let sent = peer.jobs.send(job(reply)).await.is_ok();
            answers.push((peer.name.clone(), sent, answer));
        }
        let mut results = Vec::new();
        for (peer, sent, answer) in answers {
            let result = match (sent, answer.await) {
                (true, Ok(result)) => result,
                _ => Err(Error::Stopped),
            };
            results.push((peer, result));
        }
        results
    }

    /// The replicator's state now.
    pub fn status(&self) -> ReplicatorStatus {
        let shared = self.shared();
        let counters = shared.counters();
        let now = Instant::now();
        let peers = shared
            .peers
            .iter()
            .map(|peer| {
                let inner = peer.lock();
                let lag = match inner.state {
                    PeerState::InSync => inner.last_batch_lag,
                    _ => inner.not_in_sync_since.map(|since| now - since),
                };
                PeerStatus {
                    name: peer.name.clone(),
                    addr: peer.addr.to_string(),
                    state: inner.state,
                    progress: inner.progress.clone(),
                    round_trips: inner.round_trips,
                    out_of_sync_events: inner.out_of_sync_events,
                    pending_paths: inner.dirty.len() as u64,
                    lag_ms: lag.map(|d| d.as_millis() as u64),
                    last_ack_unix_ms: inner.last_ack.map(unix_ms),
                    last_sync_unix_ms: inner.last_sync.map(unix_ms),
                    last_full_sync_unix_ms: inner.last_full_sync.map(unix_ms),
                    last_error: inner.last_error.clone(),
                }
            })
            .collect();
        ReplicatorStatus {
            data_sync: shared.config.data_sync,
            sync_mode: shared.config.sync_mode,
            commits: counters.commits,
            batches: counters.batches,
            degraded_commits: counters.degraded,
            failed_commits: counters.failed,
            peers,
        }
    }

    /// Waits until `condition` holds for the status (checked at every peer
    /// state change). Wrap it in a timeout.
    pub async fn wait_for(&self, condition: impl Fn(&ReplicatorStatus) -> bool) {
        let mut changes = self.shared().changed.subscribe();
        loop {
            if condition(&self.status()) {
                return;
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits until every standby is `InSync`.
    pub async fn wait_all_in_sync(&self) {
        self.wait_for(|status| {
            status
                .peers
                .iter()
                .all(|peer| peer.state == PeerState::InSync)
        })
        .await
    }

    /// The sync report: this node's and every reachable standby's
    /// manifests compared file by file — the data dir, and the config
    /// files when there are any — with each standby's lag and last
    /// successful sync.
    pub async fn report(&self) -> Result<SyncReport> {
        let shared = self.shared();
        let data = shared.data.clone();
        let local_data = blocking(move || data.manifest()).await?;
        let mut sets = vec![self.compare("data", ManifestSet::Data, local_data).await];
        if !shared.config.config_files.is_empty() {
            let files = shared.config.config_files.clone();
            let local_config = blocking(move || files_manifest(&files)).await?;
            sets.push(
                self.compare("config", ManifestSet::Config, local_config)
                    .await,
            );
        }
        Ok(report::build(
            shared.config.identity.node(),
            sets,
            self.status().peers,
        ))
    }

    /// One file set compared across this node (`local`) and every peer.
    async fn compare(
        &self,
        name: &str,
        set: ManifestSet,
        local: Vec<ManifestEntry>,
    ) -> report::DataSetReport {
        let shared = self.shared();
        let mut manifests = BTreeMap::new();
        manifests.insert(shared.config.identity.node().to_string(), Ok(local));
        for (peer, manifest) in self
            .ask_each_peer(|reply| Job::Manifest { set, reply })
            .await
        {
            manifests.insert(peer, manifest.map_err(|e| e.to_string()));
        }
        report::compare(name, &manifests)
    }
}
