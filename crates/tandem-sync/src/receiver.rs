//! The standby side of the sync channel: accepts the active's connection
//! and applies what it sends under this node's data dir.
//!
//! Every node runs one, whatever its role, because the active can move.
//! Puts and deletes are buffered until the batch's commit, then made
//! durable in one blocking task — appended to the standby log and flushed
//! once ([`crate::standby_log`]), or without a log applied in place (two
//! flushes) — and only then acked. That ack is what lets the active's
//! `commit` return under `data_sync = "semi"`. Logged operations reach the
//! data dir within 100 ms, and at once before anything reads it: a
//! manifest, the end of a catch-up or of a connection, and
//! [`Receiver::checkpoint`] before this node serves.
//!
//! A batch with a path that is not plainly inside the data dir (`..`, an
//! absolute path, a symlink out) is refused whole: nothing of it is written.
//!
//! The receiver is also the standby's crash detector for the active:
//! [`ReceiverEvent::Closed`] arrives the moment the active's process dies
//! and its kernel closes the connection; and, since a silent network cut
//! can leave a socket open for minutes, every frame from the active is
//! reported as [`ReceiverEvent::Heard`] (the active pings an idle channel:
//! see [`crate::liveness`]).
//!
//! **Before a catch-up, files it must not delete are put aside.** A peer
//! that connects is about to catch this node up, deleting what it does not
//! have. So first, the files this node acknowledged that the peer never
//! saw (its [`Unreplicated`] record for the peer) are moved to quarantine
//! ([`crate::quarantine`]); if that fails, the connection is refused.
//!
//! **A node that serves takes no replication** ([`Receiver::set_serving`]):
//! with two actives, the one that connects must not overwrite the other's
//! mail; the split brain resolves first.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::fencing::Fencing;
use crate::frame::{ManifestSet, Message, read_frame, write_frame};
use crate::liveness::RateLimit;
use crate::standby_log::StandbyLog;
use crate::store::{DataDir, Op, files_manifest, write_atomic};
use crate::tls::{Channel, TlsIdentity, accept_unanswered};
use crate::unreplicated::Unreplicated;
use crate::{Error, Progress, Result, blocking, unix_ms};

mod admission;
use admission::{admit, until_serving};

/// How the receiver is set up.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// This node's TLS identity.
    pub identity: TlsIdentity,
    /// Where replicated data goes: the service's data dir.
    pub data_dir: PathBuf,
    /// Where the last copy of each pushed config file is kept, as the
    /// active sent it: the reference a local edit is compared with.
    pub config_dir: PathBuf,
    /// The cluster config files of this node. A pushed file is installed
    /// at the one whose file name it carries; a name not listed is refused.
    pub config_files: Vec<PathBuf>,
    /// While this file exists the node is disconnected from cluster config
    /// (ESA's `clusterconfig disconnect`, during an upgrade): pushes are
    /// refused, and the node keeps its own config.
    pub config_hold: Option<PathBuf>,
    /// The node names allowed to connect (the other members of the cluster).
    pub expected_peers: Vec<String>,
    /// Where events go (connections, config updates, journal records). With
    /// `None`, journal records are refused: nobody would persist them.
    pub events: Option<mpsc::Sender<ReceiverEvent>>,
    /// Time allowed for the TLS handshake of a new connection.
    pub handshake_timeout: Duration,
    /// Where the standby log lives (see [`crate::standby_log`]): commits
    /// are acked after one flush of it and reach the data dir a little
    /// later. `None`: every batch is applied in place before its ack (two
    /// flushes).
    pub log_dir: Option<PathBuf>,
    /// This node's unreplicated record (the same directory its replicator
    /// writes): before a peer's catch-up, the files listed for that peer
    /// are moved to `quarantine_dir`. `None`: nothing is put aside.
    pub unreplicated: Option<Unreplicated>,
    /// Where those files go (`STATE_DIR/quarantine`); required with
    /// `unreplicated`.
    pub quarantine_dir: Option<PathBuf>,
    /// The newest fencing epoch this node knows: older commits are
    /// refused ([`crate::fencing`]).
    pub fencing: Arc<Fencing>,
}

/// How long acked operations wait in the standby log before they are put
/// in the data dir: long enough for the relay to deliver most messages,
/// whose put and delete then cancel out; short enough that the data dir
/// is rarely behind.
const MATERIALIZE_AFTER: Duration = Duration::from_millis(100);

/// At most one [`ReceiverEvent::Heard`] per connection in this time: the
/// agent needs "alive lately", not one event per frame.
const HEARD_EVERY: Duration = Duration::from_millis(50);

/// A batch above either bound (a catch-up chunk) is applied in place: it
/// would only be written twice through the log.
const LOGGED_OPS_MAX: usize = 64;
const LOGGED_BYTES_MAX: u64 = 1 << 20;

/// What the standby's data is, as far as this receiver knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StandbyState {
    /// No active is connected.
    Disconnected,
    /// An active is connected and catching this node up: the node's
    /// effective role is `syncing`, and it must not take over.
    Syncing,
    /// Caught up; every commit since was applied.
    InSync,
}

/// A snapshot of the receiver, for status and `tandem sync report`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiverStatus {
    /// The data's state.
    pub state: StandbyState,
    /// The connected active, if any.
    pub active: Option<String>,
    /// Progress of the catch-up under way, if any.
    pub progress: Option<Progress>,
    /// Commit batches applied and acked.
    pub batches_applied: u64,
    /// When the last batch was applied (Unix ms).
    pub last_applied_unix_ms: Option<u64>,
    /// When the last catch-up completed (Unix ms).
    pub last_catch_up_unix_ms: Option<u64>,
    /// Connections refused (plaintext, unknown certificate, wrong name).
    pub refused_connections: u64,
    /// Why the last one was refused.
    pub last_refused: Option<String>,
    /// Commits refused for an older fencing epoch ([`crate::fencing`]).
    #[serde(default)]
    pub stale_commits: u64,
}

/// Something the agent may want to act on.
#[derive(Debug)]
pub enum ReceiverEvent {
    /// An authenticated peer connected.
    Connected {
        /// Its node name.
        peer: String,
    },
    /// Its connection ended.
    Closed {
        /// Its node name.
        peer: String,
        /// The error, if it was not a clean close.
        error: Option<String>,
        /// The peer's end closed it (see [`crate::Error::peer_hung_up`]):
        /// its process may be gone. Otherwise this end hung up (a corrupt
        /// record, a protocol error), which proves nothing about the peer.
        peer_hung_up: bool,
    },
    /// A connection was refused.
    Refused {
        /// The address it came from.
        from: String,
        /// Why.
        reason: String,
    },
    /// A catch-up finished: this node's data is in sync with `peer`'s.
    CaughtUp {
        /// The active.
        peer: String,
    },
    /// A config file was replaced by a push from the active with other
    /// content (a push of the same content changes nothing and says
    /// nothing: the periodic pushes repeat every file).
    ConfigUpdated {
        /// Its name under the config dir.
        name: String,
        /// Its full path.
        path: PathBuf,
    },
    /// Files this node acknowledged that `peer` never saw were moved to
    /// quarantine before its catch-up (see [`crate::quarantine`]).
    Quarantined {
        /// The connecting active.
        peer: String,
        /// The batch, under the quarantine dir.
        id: String,
        /// How many files.
        files: u64,
    },
    /// A frame arrived from the connected active: it is alive, over an
    /// authenticated channel. At most one per connection per 50 ms, and
    /// dropped rather than waited for when the events channel is half full.
    Heard {
        /// The active.
        peer: String,
    },
    /// A journal record arrived. Persist it, then answer on `ack`; the
    /// active's `send_journal` returns only after that answer.
    Journal {
        /// The sender.
        peer: String,
        /// The opaque record.
        record: Vec<u8>,
        /// `Ok` once persisted, `Err(why)` if it could not be.
        ack: oneshot::Sender<Result<(), String>>,
    },
}

/// The standby side of the sync channel. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Receiver {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: ReceiverConfig,
    data: DataDir,
    configs: DataDir,
    /// The standby log, when `log_dir` is set.
    log: Option<StandbyLog>,
    /// Starts the materialization timer when the log has pending work.
    log_wake: Notify,
    /// Held while a pushed config file is installed; see
    /// [`Receiver::config_guard`].
    config_lock: tokio::sync::Mutex<()>,
    /// True while this node serves: see [`Receiver::set_serving`].
    serving: watch::Sender<bool>,
    /// Held while files are moved to quarantine, and by
    /// [`Receiver::checkpoint`]: the service must not start on a data dir
    /// that files are leaving.
    quarantining: tokio::sync::Mutex<()>,
    /// Plain std mutex: held for a few field updates, never across await.
    status: Mutex<ReceiverStatus>,
}

impl Shared {
    fn status(&self) -> MutexGuard<'_, ReceiverStatus> {
        // A panic while holding the lock leaves plain counters behind:
        // still fine to use.
        self.status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn event(&self, event: ReceiverEvent) {
        if let Some(events) = &self.config.events {
            let _ = events.send(event).await;
        }
    }

    /// Sends a hint (`Heard`) only while the events channel is less than
    /// half full: it never waits, and never takes the room the events
    /// that are waited for (`Closed`, `Journal`, ...) need.
    fn hint(&self, event: ReceiverEvent) {
        if let Some(events) = &self.config.events
            && events.capacity() * 2 > events.max_capacity()
        {
            let _ = events.try_send(event);
        }
    }

    /// Counts and reports a refused connection.
    async fn refused(&self, from: String, reason: String) {
        tracing::warn!(%from, %reason, "refused a sync connection");
        {
            let mut status = self.status();
            status.refused_connections += 1;
            status.last_refused = Some(reason.clone());
        }
        self.event(ReceiverEvent::Refused { from, reason }).await;
    }

    /// Why a peer is refused while this node serves.
    fn serving_refusal(&self, peer: &str) -> String {
        format!(
            "{} is active: it does not take replication from {peer} (two actives? the split brain resolves first)",
            self.config.identity.node()
        )
    }
}

impl Receiver {
    /// Opens (creating if needed) the data and config dirs, and the
    /// standby log, replaying what a crash left in it. Blocking.
    pub fn new(config: ReceiverConfig) -> Result<Self> {
        if let (Some(record), None) = (&config.unreplicated, &config.quarantine_dir) {
            return Err(Error::BadFile {
                path: record.dir().to_path_buf(),
                message: "the receiver has an unreplicated record but no quarantine_dir to put \
                          those files in before a catch-up; set quarantine_dir"
                    .into(),
            });
        }
        let data = DataDir::open(&config.data_dir)?;
        let configs = DataDir::open(&config.config_dir)?;
        let log = match &config.log_dir {
            Some(dir) => Some(StandbyLog::open(dir, data.clone())?),
            None => None,
        };
        Ok(Receiver {
            shared: Arc::new(Shared {
                config,
                data,
                configs,
                log,
                log_wake: Notify::new(),
                config_lock: tokio::sync::Mutex::new(()),
                serving: watch::Sender::new(false),
                quarantining: tokio::sync::Mutex::new(()),
                status: Mutex::new(ReceiverStatus {
                    state: StandbyState::Disconnected,
                    active: None,
                    progress: None,
                    batches_applied: 0,
                    last_applied_unix_ms: None,
                    last_catch_up_unix_ms: None,
                    refused_connections: 0,
                    last_refused: None,
                    stale_commits: 0,
                }),
            }),
        })
    }

    /// The receiver's state now.
    pub fn status(&self) -> ReceiverStatus {
        self.shared.status().clone()
    }

    /// Puts everything acked so far into the data dir, durably. The agent
    /// calls it before its service starts on this node: the service must
    /// find every acknowledged file, and must never write before the log
    /// that could replay over its files is gone. Waits for a quarantine
    /// under way, so the service never starts on a data dir files are
    /// leaving.
    pub async fn checkpoint(&self) -> Result<()> {
        let _settled = self.shared.quarantining.lock().await;
        materialize(&self.shared).await
    }

    /// Says whether this node serves (is active). While it does, a peer
    /// that connects is refused ([`Message::Refused`], counted, reported
    /// as [`ReceiverEvent::Refused`]), and setting it ends the connections
    /// open now: with two actives, neither may overwrite the other's data
    /// (nor quarantine its own) before the split brain is resolved. Call it
    /// with `true` before the service starts, then [`checkpoint`](Self::checkpoint).
    pub fn set_serving(&self, serving: bool) {
        // The agent calls this after every step: only a change wakes the
        // connections.
        self.shared.serving.send_if_modified(|now| {
            let changed = *now != serving;
            *now = serving;
            changed
        });
    }

    /// Holds off config pushes (they wait, and are installed after) while
    /// the caller compares config files with their reference copies, or
    /// puts a reference copy back: a push landing between reading a file
    /// and its reference would make the old content look like a local
    /// edit.
    pub async fn config_guard(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.shared.config_lock.lock().await
    }

    /// Accepts connections on `listener` until `shutdown` completes; then
    /// every connection is closed.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        let materializer = materialize_when_due(self.shared.clone());
        tokio::pin!(materializer);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = &mut materializer => {}
                accepted = listener.accept() => {
                    let Ok((tcp, _)) = accepted else {
                        // EMFILE and friends: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let shared = self.shared.clone();
                    connections.spawn(async move { connection(shared, tcp).await });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        // Dropping the set aborts every connection task.
        connections.shutdown().await;
    }
}

/// One accepted connection, from handshake to close.
async fn connection(shared: Arc<Shared>, tcp: tokio::net::TcpStream) {
    let from = tcp
        .peer_addr()
        .map_or_else(|_| "unknown".to_string(), |a| a.to_string());
    let config = &shared.config;
    let admitted = match accept_unanswered(
        &config.identity,
        tcp,
        &config.expected_peers,
        config.handshake_timeout,
    )
    .await
    {
        Ok(admission) => match admit(&shared, admission.peer()).await {
            Ok(()) => admission.welcome().await,
            Err(reason) => {
                let _ = admission.refuse(&reason).await;
                Err(Error::Refused {
                    peer: from.clone(),
                    reason,
                })
            }
        },
        Err(e) => Err(e),
    };
    let channel = match admitted {
        Ok(channel) => channel,
        Err(Error::Refused { reason, .. }) => return shared.refused(from, reason).await,
        Err(e) => return shared.refused(from, e.to_string()).await,
    };
    let peer = channel.peer.clone();
    tracing::info!(%peer, "sync connection from the active");
    {
        let mut status = shared.status();
        status.active = Some(peer.clone());
        // The active always starts with a catch-up; until it says so, this
        // node cannot claim to be in sync.
        status.state = StandbyState::Syncing;
    }
    shared
        .event(ReceiverEvent::Connected { peer: peer.clone() })
        .await;
    let result = converse(&shared, channel).await;
    // The active may be gone for good: this node may serve next, from
    // the data dir.
    if let Err(e) = materialize(&shared).await {
        tracing::error!(error = %e, "cannot put the standby log into the data dir");
    }
    {
        let mut status = shared.status();
        if status.active.as_deref() == Some(peer.as_str()) {
            status.active = None;
            status.state = StandbyState::Disconnected;
            status.progress = None;
        }
    }
    let peer_hung_up = result.as_ref().err().is_none_or(Error::peer_hung_up);
    let error = result.err().map(|e| e.to_string());
    if let Some(error) = &error {
        tracing::warn!(%peer, %error, peer_hung_up, "sync connection ended");
    }
    shared
        .event(ReceiverEvent::Closed {
            peer,
            error,
            peer_hung_up,
        })
        .await;
}

/// Reads requests and answers them until the active hangs up, or this node
/// starts serving.
async fn converse(shared: &Arc<Shared>, mut channel: Channel) -> Result<()> {
    let peer = channel.peer.clone();
    let net = |source: std::io::Error| Error::Network {
        peer: peer.clone(),
        source,
    };
    let mut serving = shared.serving.subscribe();
    let mut heard = RateLimit::new(HEARD_EVERY);
    // Puts and deletes since the last commit; applied together.
    let mut batch: Vec<Op> = Vec::new();
    loop {
        // Only the read is given up when this node starts serving: a frame
        // half read is lost with the connection, and anything read is
        // answered before the next turn.
        let frame = tokio::select! {
            frame = read_frame(&mut channel.stream) => frame.map_err(net)?,
            () = until_serving(&mut serving) => {
                return Err(Error::Refused {
                    peer: peer.clone(),
                    reason: shared.serving_refusal(&peer),
                });
            }
        };
        let Some(frame) = frame else { break };
        if heard.ready(std::time::Instant::now()) {
            shared.hint(ReceiverEvent::Heard { peer: peer.clone() });
        }
        let reply = match frame.message {
            Message::Put { path, mode } => {
                batch.push(Op::Put {
                    path,
                    mode,
                    content: frame.body,
                });
                continue;
            }
            Message::Delete { path } => {
                batch.push(Op::Delete { path });
                continue;
            }
            Message::Commit { seq, epoch } => {
                let ops = std::mem::take(&mut batch);
                match shared.config.fencing.stale(epoch) {
                    Some(newest) => refuse_stale(shared, &peer, seq, epoch, newest),
                    None => commit(shared, &peer, seq, ops).await,
                }
            }
            Message::ManifestRequest { seq, set } => {
                if set == ManifestSet::Data
                    && let Err(e) = materialize(shared).await
                {
                    tracing::error!(error = %e, "cannot put the standby log into the data dir");
                }
                let data = shared.data.clone();
                let files = shared.config.config_files.clone();
                let manifest = blocking(move || match set {
                    ManifestSet::Data => data.manifest(),
                    ManifestSet::Config => files_manifest(&files),
                });
                match manifest.await {
                    Ok(entries) => Message::Manifest { seq, entries },
                    Err(e) => Message::Nack {
                        seq,
                        error: e.to_string(),
                    },
                }
            }
            Message::CatchUpBegin { files, bytes, .. } => {
                let mut status = shared.status();
                status.state = StandbyState::Syncing;
                status.progress = Some(Progress {
                    peer: peer.clone(),
                    files_total: files,
                    bytes_total: bytes,
                    ..Progress::default()
                });
                continue;
            }
            Message::CatchUpEnd { seq } => {
                // In sync from here: the data dir says so too.
                if let Err(e) = materialize(shared).await {
                    tracing::error!(error = %e, "cannot put the standby log into the data dir");
                }
                {
                    let mut status = shared.status();
                    status.state = StandbyState::InSync;
                    status.progress = None;
                    status.last_catch_up_unix_ms = Some(unix_ms(SystemTime::now()));
                }
                shared
                    .event(ReceiverEvent::CaughtUp { peer: peer.clone() })
                    .await;
                Message::Ack { seq }
            }
            Message::Config { seq, name, mode } => {
                match install_config(shared, &name, mode, frame.body).await {
                    Ok(Some(path)) => {
                        shared
                            .event(ReceiverEvent::ConfigUpdated { name, path })
                            .await;
                        Message::Ack { seq }
                    }
                    Ok(None) => Message::Ack { seq },
                    Err(error) => {
                        tracing::warn!(%peer, %name, %error, "refused a config push");
                        Message::Nack { seq, error }
                    }
                }
            }
            Message::Journal { seq } => journal(shared, &peer, seq, frame.body).await,
            Message::Ping { seq } => Message::Pong { seq },
            other => {
                return Err(Error::Protocol {
                    peer: peer.clone(),
                    reason: format!("a standby does not expect {other:?}"),
                });
            }
        };
        write_frame(&mut channel.stream, &reply, b"")
            .await
            .map_err(net)?;
        channel.stream.flush().await.map_err(net)?;
    }
    Ok(())
}

/// Installs a pushed config file: first the reference copy under the
/// config dir, then the file itself at the path this node lists under that
/// name, each replaced atomically, under the config lock (an agent
/// comparing the two must never see half a push: see
/// [`Receiver::config_guard`]). Content that is already
/// the reference copy is left alone (and the file's mtime, which services
/// may watch). Returns the file's path when its content changed. The
/// error is the Nack's text: what was refused, and what to do.
async fn install_config(
    shared: &Arc<Shared>,
    name: &str,
    mode: u32,
    content: Vec<u8>,
) -> std::result::Result<Option<PathBuf>, String> {
    let _installing = shared.config_lock.lock().await;
    let node = shared.config.identity.node().to_string();
    if let Some(flag) = shared.config.config_hold.as_ref().filter(|f| f.exists()) {
        return Err(format!(
            "{node} is disconnected from cluster config ({}): it keeps its own config until it is reconnected",
            flag.display()
        ));
    }
    let Some(target) = shared
        .config
        .config_files
        .iter()
        .find(|f| f.file_name().is_some_and(|n| n == name))
        .cloned()
    else {
        return Err(format!(
            "{name} is not in {node}'s [sync] config list; add it there to receive it"
        ));
    };
    let configs = shared.configs.clone();
    let op = Op::Put {
        path: name.to_string(),
        mode,
        content: content.clone(),
    };
    let reference = shared.configs.root().join(name);
    blocking(move || {
        if std::fs::read(&reference).ok().as_ref() == Some(&content) {
            // No news: the cluster agreed on this already. A local file
            // that differs is a local edit, for this node's own config
            // sync to push (on a primary) or undo (on a standby); a
            // periodic push must not overwrite an edit another serving
            // node has not pushed yet.
            return Ok(None);
        }
        configs.apply(&[op])?;
        if std::fs::read(&target).ok().as_ref() == Some(&content) {
            return Ok(None);
        }
        write_atomic(&target, &content, mode)?;
        Ok(Some(target))
    })
    .await
    .map_err(|e| e.to_string())
}

/// Hands a journal record to the agent and answers once it is persisted.
async fn journal(shared: &Arc<Shared>, peer: &str, seq: u64, record: Vec<u8>) -> Message {
    let Some(events) = &shared.config.events else {
        return Message::Nack {
            seq,
            error: "this node has no journal consumer".into(),
        };
    };
    let (ack, answer) = oneshot::channel();
    let event = ReceiverEvent::Journal {
        peer: peer.to_string(),
        record,
        ack,
    };
    if events.send(event).await.is_err() {
        return Message::Nack {
            seq,
            error: "this node's agent is not taking journal records".into(),
        };
    }
    match answer.await {
        Ok(Ok(())) => Message::Ack { seq },
        Ok(Err(error)) => Message::Nack { seq, error },
        Err(_) => Message::Nack {
            seq,
            error: "the journal record was dropped unanswered".into(),
        },
    }
}

/// Makes a batch durable on this node: appended to the standby log when
/// there is one and the batch is a commit's, applied in place otherwise
/// (after what the log holds, to keep the order).
async fn store_batch(shared: &Arc<Shared>, ops: Vec<Op>, bytes: u64) -> Result<()> {
    let worker = shared.clone();
    let logged = blocking(move || match &worker.log {
        Some(log) if ops.len() <= LOGGED_OPS_MAX && bytes <= LOGGED_BYTES_MAX => {
            log.append(ops).map(Some)
        }
        Some(log) => {
            log.materialize()?;
            worker.data.apply(&ops).map(|()| None)
        }
        None => worker.data.apply(&ops).map(|()| None),
    })
    .await?;
    match logged {
        // So much is pending that memory and replay time come first.
        Some(true) => materialize(shared).await,
        Some(false) => {
            shared.log_wake.notify_one();
            Ok(())
        }
        None => Ok(()),
    }
}

/// Puts what the standby log holds into the data dir (see
/// [`StandbyLog::materialize`]).
async fn materialize(shared: &Arc<Shared>) -> Result<()> {
    let worker = shared.clone();
    blocking(move || match &worker.log {
        Some(log) => log.materialize(),
        None => Ok(()),
    })
    .await
}

/// Materializes `MATERIALIZE_AFTER` after the log got pending work; never
/// returns. Idle (no timer) while nothing is pending.
async fn materialize_when_due(shared: Arc<Shared>) {
    if shared.log.is_none() {
        return std::future::pending().await;
    }
    loop {
        shared.log_wake.notified().await;
        tokio::time::sleep(MATERIALIZE_AFTER).await;
        if let Err(e) = materialize(&shared).await {
            // The operations stay in the log (durable) and are retried.
            tracing::error!(error = %e, "cannot put the standby log into the data dir; retrying");
            shared.log_wake.notify_one();
        }
    }
}

/// Makes a batch durable and answers it.
async fn commit(shared: &Arc<Shared>, peer: &str, seq: u64, ops: Vec<Op>) -> Message {
    let files = ops.len() as u64;
    let bytes = ops.iter().map(Op::bytes).sum::<u64>();
    match store_batch(shared, ops, bytes).await {
        Ok(()) => {
            let mut status = shared.status();
            status.batches_applied += 1;
            status.last_applied_unix_ms = Some(unix_ms(SystemTime::now()));
            if let Some(progress) = status.progress.as_mut() {
                progress.files_done += files;
                progress.bytes_done += bytes;
            }
            Message::Ack { seq }
        }
        Err(e) => {
            tracing::warn!(%peer, error = %e, "refused a batch");
            Message::Nack {
                seq,
                error: e.to_string(),
            }
        }
    }
}

/// Answers a commit stamped with an older fencing epoch than this node
/// knows: its sender no longer holds the service ([`crate::fencing`]).
fn refuse_stale(shared: &Shared, peer: &str, seq: u64, epoch: u64, newest: u64) -> Message {
    shared.status().stale_commits += 1;
    tracing::warn!(%peer, epoch, newest, "refused a commit from an older epoch: its sender no longer holds the service");
    Message::Nack {
        seq,
        error: format!(
            "stale fencing epoch {epoch}: this node knows epoch {newest}, so the sender no longer holds the service"
        ),
    }
}
