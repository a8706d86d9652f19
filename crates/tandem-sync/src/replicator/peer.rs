//! One standby, seen from the active: its state, the jobs its task serves,
//! and the task itself, which owns the TLS connection for the replicator's
//! life — dial, catch up, then batches, jobs and the paths it missed, until
//! the connection is lost and it redials. Everything that speaks to a
//! standby goes through this task, so requests on one connection never
//! interleave and a lost connection is noticed in one place.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, oneshot};

use super::catch_up::sync_peer;
use super::config::PeerAddr;
use super::status::PeerState;
use super::{ProgressFn, Shared, keepalive};
use crate::blocking;
use crate::frame::{ManifestSet, Message, read_frame, write_frame};
use crate::store::{ManifestEntry, Op};
use crate::tls::{Channel, connect};
use crate::{Error, Progress, Result};

pub(super) struct Peer {
    pub(super) name: String,
    pub(super) addr: SocketAddr,
    pub(super) jobs: mpsc::Sender<Job>,
    /// Wakes the peer task when its dirty set grows.
    pub(super) wake: Notify,
    state: Mutex<PeerInner>,
}

pub(super) struct PeerInner {
    pub(super) state: PeerState,
    /// Paths it missed; only ever non-empty while not `InSync`.
    pub(super) dirty: BTreeSet<String>,
    pub(super) progress: Option<Progress>,
    pub(super) round_trips: u64,
    pub(super) out_of_sync_events: u64,
    pub(super) last_batch_lag: Option<Duration>,
    pub(super) not_in_sync_since: Option<Instant>,
    pub(super) last_ack: Option<SystemTime>,
    pub(super) last_sync: Option<SystemTime>,
    pub(super) last_full_sync: Option<SystemTime>,
    pub(super) last_error: Option<String>,
}

/// Work for a peer task.
pub(super) enum Job {
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
    pub(super) fn remember_missed<'a>(&mut self, paths: impl IntoIterator<Item = &'a String>) {
        if self.state != PeerState::Disconnected {
            self.dirty.extend(paths.into_iter().cloned());
        }
    }
}

impl Peer {
    pub(super) fn lock(&self) -> MutexGuard<'_, PeerInner> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A standby not dialed yet: `Disconnected`, and not in sync since now,
    /// so that its lag counts from the replicator's start.
    pub(super) fn new(addr: &PeerAddr, jobs: mpsc::Sender<Job>) -> Self {
        Peer {
            name: addr.name.clone(),
            addr: addr.addr,
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
        }
    }
}

/// Owns the connection to one standby for the replicator's life: dials,
/// catches it up, then serves jobs and its dirty set; redials when the
/// connection is lost.
pub(super) async fn peer_task(shared: Arc<Shared>, peer: Arc<Peer>, mut jobs: mpsc::Receiver<Job>) {
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
        let ops = read_ops(shared, paths).await?;
        if let Err(e) = send_batch(shared, peer, channel, seq, &ops).await {
            // Not sent: keep them for the next connection.
            peer.lock()
                .dirty
                .extend(ops.iter().map(|op| op.path().to_string()));
            return Err(e);
        }
    }
}

/// Reads `paths` from the data dir as the ops a batch carries, off the
/// async threads.
pub(super) async fn read_ops(shared: &Shared, paths: Vec<String>) -> Result<Vec<Op>> {
    let data = shared.data.clone();
    blocking(move || {
        paths
            .iter()
            .map(|p| data.read_op(p))
            .collect::<Result<Vec<_>>>()
    })
    .await
}

/// Sends puts and deletes and a commit; returns once the standby acked
/// (it has fsync'd files and directories).
pub(super) async fn send_batch(
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
    let commit = Message::Commit {
        seq: *seq,
        epoch: shared.config.fencing.own(),
    };
    request(shared, channel, *seq, &commit, b"").await?;
    let mut inner = peer.lock();
    inner.round_trips += 1;
    inner.last_ack = Some(SystemTime::now());
    Ok(())
}

/// Writes a request, flushes, and waits (≤ `io_timeout`) for its ack.
pub(super) async fn request(
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
pub(super) async fn answer(shared: &Shared, channel: &mut Channel) -> Result<Message> {
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

pub(super) fn net_error(peer: String) -> impl Fn(std::io::Error) -> Error {
    move |source| Error::Network {
        peer: peer.clone(),
        source,
    }
}

pub(super) async fn fetch_manifest(
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
