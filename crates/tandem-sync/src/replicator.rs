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

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::frame::{ManifestSet, Message, read_frame, write_frame};
use crate::liveness::Liveness;
use crate::receiver::blocking;
use crate::report::{self, SyncReport};
use crate::store::{DataDir, ManifestEntry, Op, files_manifest};
use crate::tls::{Channel, TlsIdentity, connect};
use crate::unreplicated::{Unreplicated, record_missed};
use crate::{Error, Progress, Result, unix_ms};

mod keepalive;

/// `data_sync`: how far a commit goes before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataSync {
    /// Local only: nothing is replicated.
    Off,
    /// Return at once; the files are streamed to the standbys behind.
    Async,
    /// Return once every in-sync standby has the files fsync'd (RPO 0).
    Semi,
}

impl FromStr for DataSync {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(DataSync::Off),
            "async" => Ok(DataSync::Async),
            "semi" => Ok(DataSync::Semi),
            other => Err(format!(
                "data_sync = {other:?}: expected \"off\", \"async\" or \"semi\""
            )),
        }
    }
}

/// `sync_mode`: what a commit does about a standby that does not confirm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Mark it out of sync and succeed: availability first.
    Degrade,
    /// Fail the commit (the relay answers 451): durability first.
    Strict,
}

impl FromStr for SyncMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "degrade" => Ok(SyncMode::Degrade),
            "strict" => Ok(SyncMode::Strict),
            other => Err(format!(
                "sync_mode = {other:?}: expected \"degrade\" or \"strict\""
            )),
        }
    }
}

/// A standby to replicate to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    /// Its node name (as in its certificate).
    pub name: String,
    /// Its sync address (where its [`crate::receiver::Receiver`] listens).
    pub addr: SocketAddr,
}

/// How the replicator is set up; [`ReplicatorConfig::new`] gives defaults.
#[derive(Debug, Clone)]
pub struct ReplicatorConfig {
    /// This node's TLS identity.
    pub identity: TlsIdentity,
    /// The service's data dir; committed paths must be under it.
    pub data_dir: PathBuf,
    /// The standbys.
    pub peers: Vec<PeerAddr>,
    /// This node's cluster config files, compared in the sync report.
    pub config_files: Vec<PathBuf>,
    /// `data_sync`.
    pub data_sync: DataSync,
    /// `sync_mode`.
    pub sync_mode: SyncMode,
    /// `sync_timeout`: how long a commit waits for a standby's ack.
    pub sync_timeout: Duration,
    /// Time allowed to connect and complete the handshake.
    pub connect_timeout: Duration,
    /// Pause between attempts to reach a standby that is away.
    pub redial_every: Duration,
    /// A connected standby silent for this long (mid-request) is dropped
    /// and redialed; that brings a stalled peer back through catch-up.
    pub io_timeout: Duration,
    /// This node's unreplicated record: the paths of every batch a standby
    /// did not ack (`degrade`) are added to its entry, durably, before the
    /// commit returns. `None`: not recorded (a split brain may then lose
    /// mail).
    pub unreplicated: Option<Unreplicated>,
    /// Ping a standby after this long without an answer from it, so that
    /// liveness keeps being heard on an idle channel. `None`: no pings
    /// (receivers older than the ping drop the connection on one).
    pub keepalive: Option<Duration>,
    /// Where to report that a standby answered (its name): proof of life
    /// over the authenticated channel. At most one per standby per
    /// `keepalive` (1 s without), dropped when full: never waited for.
    pub heard: Option<mpsc::Sender<String>>,
}

impl ReplicatorConfig {
    /// `semi` + `degrade`, `sync_timeout` 2 s, redial every 500 ms.
    pub fn new(identity: TlsIdentity, data_dir: PathBuf, peers: Vec<PeerAddr>) -> Self {
        ReplicatorConfig {
            identity,
            data_dir,
            peers,
            config_files: Vec::new(),
            data_sync: DataSync::Semi,
            sync_mode: SyncMode::Degrade,
            sync_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            redial_every: Duration::from_millis(500),
            io_timeout: Duration::from_secs(30),
            unreplicated: None,
            keepalive: None,
            heard: None,
        }
    }
}

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

/// What [`Replicator::commit`] achieved.
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

/// A standby's state as the active sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerState {
    /// Not connected.
    Disconnected,
    /// Connected, being caught up (or resynced).
    Syncing,
    /// Connected but it missed commits (timeout, refused batch); its task
    /// is sending what it missed.
    OutOfSync,
    /// Every commit is waited for on it.
    InSync,
}

/// A standby's status, for `tandem status` and the sync report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Its node name.
    pub name: String,
    /// Its sync address.
    pub addr: String,
    /// Its state.
    pub state: PeerState,
    /// Progress of the catch-up or resync under way.
    pub progress: Option<Progress>,
    /// Batches sent and acknowledged (commits, catch-up chunks).
    pub round_trips: u64,
    /// How many times it fell out of sync (timeouts, lost connections).
    pub out_of_sync_events: u64,
    /// Paths waiting to be sent to it.
    pub pending_paths: u64,
    /// Replication lag: for an in-sync peer, commit-to-ack time of the last
    /// batch; otherwise, time since it stopped being in sync.
    pub lag_ms: Option<u64>,
    /// Its last acknowledgement (Unix ms).
    pub last_ack_unix_ms: Option<u64>,
    /// The last completed catch-up or resync (Unix ms).
    pub last_sync_unix_ms: Option<u64>,
    /// The last completed full resync (Unix ms).
    pub last_full_sync_unix_ms: Option<u64>,
    /// Why it is not in sync, when it is not.
    pub last_error: Option<String>,
}

/// The replicator's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicatorStatus {
    /// `data_sync`.
    pub data_sync: DataSync,
    /// `sync_mode`.
    pub sync_mode: SyncMode,
    /// Commits received.
    pub commits: u64,
    /// Group-commit batches run; `commits / batches` is the batching factor.
    pub batches: u64,
    /// Commits that returned `Degraded`.
    pub degraded_commits: u64,
    /// Commits that failed (strict, or a local read error).
    pub failed_commits: u64,
    /// Each standby.
    pub peers: Vec<PeerStatus>,
}

/// The result of a catch-up or resync on one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerOutcome {
    /// The peer.
    pub peer: String,
    /// What was sent, when it worked.
    pub progress: Option<Progress>,
    /// Why it did not.
    pub error: Option<String>,
}

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

struct Peer {
    name: String,
    addr: SocketAddr,
    jobs: mpsc::Sender<Job>,
    /// Wakes the peer task when its dirty set grows.
    wake: Notify,
    state: Mutex<PeerInner>,
}

struct PeerInner {
    state: PeerState,
    /// Paths it missed; only ever non-empty while not `InSync`.
    dirty: BTreeSet<String>,
    progress: Option<Progress>,
    round_trips: u64,
    out_of_sync_events: u64,
    last_batch_lag: Option<Duration>,
    not_in_sync_since: Option<Instant>,
    last_ack: Option<SystemTime>,
    last_sync: Option<SystemTime>,
    last_full_sync: Option<SystemTime>,
    last_error: Option<String>,
}

/// Work for a peer task.
enum Job {
    /// A group-commit batch; answer once acked.
    Batch {
        ops: Arc<Vec<Op>>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Catch up (`full`: resync).
    Sync {
        full: bool,
        progress: Option<ProgressFn>,
        reply: oneshot::Sender<Result<Progress>>,
    },
    /// Fetch the peer's manifest of one file set.
    Manifest {
        set: ManifestSet,
        reply: oneshot::Sender<Result<Vec<ManifestEntry>>>,
    },
    /// Push a config file.
    Config {
        name: String,
        mode: u32,
        content: Vec<u8>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Send a journal record.
    Journal {
        record: Vec<u8>,
        reply: oneshot::Sender<Result<()>>,
    },
}

impl Job {
    /// Answers the job with an error (the peer is not connected).
    fn fail(self, peer: &str) {
        let error = || Error::NotConnected {
            peer: peer.to_string(),
        };
        match self {
            Job::Batch { reply, .. } | Job::Config { reply, .. } | Job::Journal { reply, .. } => {
                let _ = reply.send(Err(error()));
            }
            Job::Sync { reply, .. } => {
                let _ = reply.send(Err(error()));
            }
            Job::Manifest { reply, .. } => {
                let _ = reply.send(Err(error()));
            }
        }
    }
}

impl PeerInner {
    /// Records paths the peer must still be sent. Not while it is
    /// disconnected: every connection starts with a manifest catch-up taken
    /// after its state leaves `Disconnected`, which covers any file written
    /// before that — so a long absence costs no memory here.
    fn remember_missed<'a>(&mut self, paths: impl IntoIterator<Item = &'a String>) {
        if self.state != PeerState::Disconnected {
            self.dirty.extend(paths.into_iter().cloned());
        }
    }
}

impl Peer {
    fn lock(&self) -> MutexGuard<'_, PeerInner> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
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
                Arc::new(Peer {
                    name: peer.name.clone(),
                    addr: peer.addr,
                    jobs,
                    wake: Notify::new(),
                    state: Mutex::new(PeerInner {
                        state: PeerState::Disconnected,
                        dirty: BTreeSet::new(),
                        progress: None,
                        round_trips: 0,
                        out_of_sync_events: 0,
                        last_batch_lag: None,
                        not_in_sync_since: Some(Instant::now()),
                        last_ack: None,
                        last_sync: None,
                        last_full_sync: None,
                        last_error: None,
                    }),
                })
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

/// Forms group-commit batches: takes everything pending, sends it, waits,
/// answers every commit in it; meanwhile the next batch gathers.
async fn leader(shared: Arc<Shared>) {
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

/// Owns the connection to one standby for the replicator's life: dials,
/// catches it up, then serves jobs and its dirty set; redials when the
/// connection is lost.
async fn peer_task(shared: Arc<Shared>, peer: Arc<Peer>, mut jobs: mpsc::Receiver<Job>) {
    let config = &shared.config;
    let mut seq = 0u64;
    loop {
        match connect(
            &config.identity,
            peer.addr,
            &peer.name,
            config.connect_timeout,
        )
        .await
        {
            Ok(mut channel) => {
                tracing::info!(peer = %peer.name, "sync connection up");
                set_state(&shared, &peer, PeerState::Syncing, None);
                let ended = session(&shared, &peer, &mut channel, &mut jobs, &mut seq).await;
                let why = match ended {
                    Ok(()) => return, // the replicator is going away
                    Err(e) => e.to_string(),
                };
                tracing::warn!(peer = %peer.name, error = %why, "sync connection lost");
                set_state(&shared, &peer, PeerState::Disconnected, Some(why));
            }
            Err(e) => {
                let why = e.to_string();
                let changed = {
                    let inner = peer.lock();
                    inner.last_error.as_deref() != Some(why.as_str())
                };
                if changed {
                    tracing::warn!(peer = %peer.name, error = %why, "cannot reach standby");
                    set_state(&shared, &peer, PeerState::Disconnected, Some(why));
                }
            }
        }
        // Answer jobs at once while away rather than let them wait for
        // a connection that may never come.
        let pause = tokio::time::sleep(config.redial_every);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => break,
                job = jobs.recv() => match job {
                    Some(job) => job.fail(&peer.name),
                    None => return,
                },
            }
        }
    }
}

/// Sets a peer's state. Leaving `InSync` counts as falling out of sync and
/// starts its lag clock.
fn set_state(shared: &Shared, peer: &Peer, state: PeerState, error: Option<String>) {
    {
        let mut inner = peer.lock();
        if inner.state == PeerState::InSync && state != PeerState::InSync {
            inner.out_of_sync_events += 1;
            inner.not_in_sync_since = Some(Instant::now());
        }
        if state != PeerState::Syncing {
            inner.progress = None;
        }
        if state == PeerState::Disconnected {
            // The catch-up that starts the next connection covers these.
            inner.dirty.clear();
        }
        inner.state = state;
        if error.is_some() {
            inner.last_error = error;
        }
    }
    shared.bump();
}

/// One connection's life: catch-up, then jobs and dirty paths. Returns
/// `Ok` only when the replicator is going away.
async fn session(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    channel: &mut Channel,
    jobs: &mut mpsc::Receiver<Job>,
    seq: &mut u64,
) -> Result<()> {
    sync_peer(shared, peer, channel, seq, false, None).await?;
    drain_dirty(shared, peer, channel, seq).await?;
    loop {
        tokio::select! {
            job = jobs.recv() => {
                let Some(job) = job else { return Ok(()) };
                run_job(shared, peer, channel, seq, job).await?;
            }
            () = peer.wake.notified() => {}
            () = keepalive::idle(shared, &peer.name) => {
                keepalive::ping(shared, channel, seq).await?;
            }
            // The standby speaks only when asked, so anything readable while
            // idle is its connection closing: notice it now, not at the next
            // commit (this is the active's crash detection of the standby).
            // `fill_buf` consumes nothing, so losing the race is harmless.
            idle = channel.stream.fill_buf() => {
                return Err(match idle {
                    Ok([]) => Error::Network {
                        peer: peer.name.clone(),
                        source: std::io::ErrorKind::UnexpectedEof.into(),
                    },
                    Ok(_) => Error::Protocol {
                        peer: peer.name.clone(),
                        reason: "sent a frame nobody asked for".into(),
                    },
                    Err(source) => Error::Network {
                        peer: peer.name.clone(),
                        source,
                    },
                });
            }
        }
        drain_dirty(shared, peer, channel, seq).await?;
    }
}

/// Runs one job. A network error ends the session (the job is answered
/// with it first); a refusal by the standby is only the job's failure.
async fn run_job(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    channel: &mut Channel,
    seq: &mut u64,
    job: Job,
) -> Result<()> {
    match job {
        Job::Batch { ops, reply } => {
            let result = send_batch(shared, peer, channel, seq, &ops).await;
            finish(&peer.name, reply, result)
        }
        Job::Sync {
            full,
            progress,
            reply,
        } => {
            set_state(shared, peer, PeerState::Syncing, None);
            let result = sync_peer(shared, peer, channel, seq, full, progress).await;
            finish(&peer.name, reply, result)
        }
        Job::Manifest { set, reply } => {
            let result = fetch_manifest(shared, channel, seq, set).await;
            finish(&peer.name, reply, result)
        }
        Job::Config {
            name,
            mode,
            content,
            reply,
        } => {
            *seq += 1;
            let message = Message::Config {
                seq: *seq,
                name,
                mode,
            };
            let result = request(shared, channel, *seq, &message, &content).await;
            finish(&peer.name, reply, result)
        }
        Job::Journal { record, reply } => {
            *seq += 1;
            let message = Message::Journal { seq: *seq };
            let result = request(shared, channel, *seq, &message, &record).await;
            finish(&peer.name, reply, result)
        }
    }
}

/// Answers a job. A refusal by the standby fails only the job; any other
/// error (network, timeout, protocol) is returned too, to end the session.
fn finish<T>(peer: &str, reply: oneshot::Sender<Result<T>>, result: Result<T>) -> Result<()> {
    match result {
        Ok(value) => {
            let _ = reply.send(Ok(value));
            Ok(())
        }
        Err(e @ Error::Remote { .. }) => {
            let _ = reply.send(Err(e));
            Ok(())
        }
        Err(e) => {
            let _ = reply.send(Err(Error::Network {
                peer: peer.to_string(),
                source: std::io::Error::other(e.to_string()),
            }));
            Err(e)
        }
    }
}

/// Sends the paths the peer missed until none are left, then marks it
/// `InSync` — under the lock the leader takes to choose between sending
/// and recording, so nothing is missed between the last send and the mark.
async fn drain_dirty(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    channel: &mut Channel,
    seq: &mut u64,
) -> Result<()> {
    loop {
        let paths: Vec<String> = {
            let mut inner = peer.lock();
            if inner.dirty.is_empty() {
                if inner.state != PeerState::InSync {
                    inner.state = PeerState::InSync;
                    inner.not_in_sync_since = None;
                    inner.last_error = None;
                    inner.progress = None;
                    drop(inner);
                    tracing::info!(peer = %peer.name, "standby in sync");
                    shared.bump();
                }
                return Ok(());
            }
            // Bounded chunks keep frames and memory small after a long
            // absence; the rest stays dirty for the next turn.
            let take: Vec<String> = inner.dirty.iter().take(256).cloned().collect();
            for path in &take {
                inner.dirty.remove(path);
            }
            take
        };
        let data = shared.data.clone();
        let ops = blocking(move || {
            paths
                .iter()
                .map(|p| data.read_op(p))
                .collect::<Result<Vec<_>>>()
        })
        .await?;
        if let Err(e) = send_batch(shared, peer, channel, seq, &ops).await {
            // Not sent: keep them for the next connection.
            peer.lock()
                .dirty
                .extend(ops.iter().map(|op| op.path().to_string()));
            return Err(e);
        }
    }
}

/// Sends puts and deletes and a commit; returns once the standby acked
/// (it has fsync'd files and directories).
async fn send_batch(
    shared: &Shared,
    peer: &Peer,
    channel: &mut Channel,
    seq: &mut u64,
    ops: &[Op],
) -> Result<()> {
    let net = net_error(channel.peer.clone());
    for op in ops {
        match op {
            Op::Put {
                path,
                mode,
                content,
            } => {
                let message = Message::Put {
                    path: path.clone(),
                    mode: *mode,
                };
                write_frame(&mut channel.stream, &message, content)
                    .await
                    .map_err(&net)?;
            }
            Op::Delete { path } => {
                let message = Message::Delete { path: path.clone() };
                write_frame(&mut channel.stream, &message, b"")
                    .await
                    .map_err(&net)?;
            }
        }
    }
    *seq += 1;
    request(shared, channel, *seq, &Message::Commit { seq: *seq }, b"").await?;
    let mut inner = peer.lock();
    inner.round_trips += 1;
    inner.last_ack = Some(SystemTime::now());
    Ok(())
}

/// Writes a request, flushes, and waits (≤ `io_timeout`) for its ack.
async fn request(
    shared: &Shared,
    channel: &mut Channel,
    seq: u64,
    message: &Message,
    body: &[u8],
) -> Result<()> {
    let net = net_error(channel.peer.clone());
    write_frame(&mut channel.stream, message, body)
        .await
        .map_err(&net)?;
    channel.stream.flush().await.map_err(&net)?;
    match answer(shared, channel).await? {
        Message::Ack { seq: acked } if acked == seq => Ok(()),
        Message::Nack { seq: nacked, error } if nacked == seq => Err(Error::Remote {
            peer: channel.peer.clone(),
            message: error,
        }),
        other => Err(Error::Protocol {
            peer: channel.peer.clone(),
            reason: format!("expected the answer to request {seq}, got {other:?}"),
        }),
    }
}

/// Reads the standby's next answer, within `io_timeout`.
async fn answer(shared: &Shared, channel: &mut Channel) -> Result<Message> {
    let timeout = shared.config.io_timeout;
    match tokio::time::timeout(timeout, read_frame(&mut channel.stream)).await {
        Err(_) => Err(Error::Timeout {
            peer: channel.peer.clone(),
            timeout,
        }),
        Ok(Err(source)) => Err(Error::Network {
            peer: channel.peer.clone(),
            source,
        }),
        Ok(Ok(None)) => Err(Error::Network {
            peer: channel.peer.clone(),
            source: std::io::ErrorKind::UnexpectedEof.into(),
        }),
        Ok(Ok(Some(frame))) => {
            shared.liveness.heard(&channel.peer);
            Ok(frame.message)
        }
    }
}

fn net_error(peer: String) -> impl Fn(std::io::Error) -> Error {
    move |source| Error::Network {
        peer: peer.clone(),
        source,
    }
}

async fn fetch_manifest(
    shared: &Shared,
    channel: &mut Channel,
    seq: &mut u64,
    set: ManifestSet,
) -> Result<Vec<ManifestEntry>> {
    *seq += 1;
    let net = net_error(channel.peer.clone());
    write_frame(
        &mut channel.stream,
        &Message::ManifestRequest { seq: *seq, set },
        b"",
    )
    .await
    .map_err(&net)?;
    channel.stream.flush().await.map_err(&net)?;
    match answer(shared, channel).await? {
        Message::Manifest {
            seq: answered,
            entries,
        } if answered == *seq => Ok(entries),
        Message::Nack { error, .. } => Err(Error::Remote {
            peer: channel.peer.clone(),
            message: error,
        }),
        other => Err(Error::Protocol {
            peer: channel.peer.clone(),
            reason: format!("expected a manifest, got {other:?}"),
        }),
    }
}

/// Catch-up (`full = false`) or resync (`full = true`): compare manifests,
/// send what differs (everything, for a resync), delete what this node does
/// not have. Files are read at send time, so a file changed meanwhile goes
/// in its newest state.
async fn sync_peer(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    channel: &mut Channel,
    seq: &mut u64,
    full: bool,
    callback: Option<ProgressFn>,
) -> Result<Progress> {
    // Whatever the peer missed so far is covered by the manifests taken
    // below; only changes after this point need to stay dirty.
    peer.lock().dirty.clear();
    // `off`: the data stays on the node that wrote it (in multi-active
    // modes every node serves its own, and a catch-up would delete the
    // peer's). The empty catch-up still tells the peer it is in sync.
    let (remote, local) = if shared.config.data_sync == DataSync::Off {
        (Vec::new(), Vec::new())
    } else {
        let remote = fetch_manifest(shared, channel, seq, ManifestSet::Data).await?;
        let data = shared.data.clone();
        (remote, blocking(move || data.manifest()).await?)
    };
    // What this node recorded as never seen by the peer, read before the
    // local manifest: once this catch-up ends, the peer has each of these
    // files (or deleted it with this node), so they leave the record —
    // else the peer's next catch-up of this node would quarantine files
    // both have, and their merge would deliver them twice.
    let recorded = match (&shared.config.unreplicated, shared.config.data_sync) {
        (Some(record), DataSync::Semi | DataSync::Async) => {
            let record = record.clone();
            let name = peer.name.clone();
            Some((record.clone(), blocking(move || record.paths(&name)).await?))
        }
        _ => None,
    };

    let remote_by_path: BTreeMap<&str, &ManifestEntry> =
        remote.iter().map(|e| (e.path.as_str(), e)).collect();
    let local_paths: BTreeSet<&str> = local.iter().map(|e| e.path.as_str()).collect();
    let to_put: Vec<&ManifestEntry> = local
        .iter()
        .filter(|entry| full || remote_by_path.get(entry.path.as_str()) != Some(entry))
        .collect();
    let to_delete: Vec<String> = remote
        .iter()
        .filter(|entry| !local_paths.contains(entry.path.as_str()))
        .map(|entry| entry.path.clone())
        .collect();

    let mut progress = Progress {
        peer: peer.name.clone(),
        files_total: (to_put.len() + to_delete.len()) as u64,
        bytes_total: to_put.iter().map(|e| e.size).sum(),
        ..Progress::default()
    };
    let report = |progress: &Progress| {
        peer.lock().progress = Some(progress.clone());
        if let Some(callback) = &callback {
            callback(progress);
        }
    };
    report(&progress);
    write_frame(
        &mut channel.stream,
        &Message::CatchUpBegin {
            files: progress.files_total,
            bytes: progress.bytes_total,
            full,
        },
        b"",
    )
    .await
    .map_err(net_error(channel.peer.clone()))?;

    // Chunks of at most 256 files or 4 MiB: one ack per chunk keeps the
    // standby's memory bounded and the progress bar moving.
    let mut chunks: Vec<Vec<String>> = Vec::new();
    let mut chunk: Vec<String> = Vec::new();
    let mut chunk_bytes = 0u64;
    for entry in &to_put {
        if !chunk.is_empty() && (chunk.len() >= 256 || chunk_bytes + entry.size > 4 << 20) {
            chunks.push(std::mem::take(&mut chunk));
            chunk_bytes = 0;
        }
        chunk_bytes += entry.size;
        chunk.push(entry.path.clone());
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks.extend(to_delete.chunks(1024).map(<[String]>::to_vec));

    for paths in chunks {
        let count = paths.len() as u64;
        let data = shared.data.clone();
        let ops = blocking(move || {
            paths
                .iter()
                .map(|p| data.read_op(p))
                .collect::<Result<Vec<_>>>()
        })
        .await?;
        send_batch(shared, peer, channel, seq, &ops).await?;
        progress.files_done += count;
        progress.bytes_done += ops.iter().map(Op::bytes).sum::<u64>();
        report(&progress);
    }
    *seq += 1;
    request(
        shared,
        channel,
        *seq,
        &Message::CatchUpEnd { seq: *seq },
        b"",
    )
    .await?;
    {
        let mut inner = peer.lock();
        let now = SystemTime::now();
        inner.last_sync = Some(now);
        if full {
            inner.last_full_sync = Some(now);
        }
    }
    if let Some((record, seen)) = recorded.filter(|(_, seen)| !seen.is_empty()) {
        let name = peer.name.clone();
        if let Err(e) = blocking(move || record.forget(&name, &seen)).await {
            // Kept: at worst a duplicate delivery later, never a loss.
            tracing::warn!(peer = %peer.name, error = %e, "cannot update the unreplicated record");
        }
    }
    tracing::info!(
        peer = %peer.name,
        full,
        files = progress.files_done,
        bytes = progress.bytes_done,
        "standby caught up"
    );
    Ok(progress)
}
