//! Listening sockets, the accept loops, and the suspend/resume control.
//!
//! ```text
//!   ListenerControl ──suspend/resume──► acceptor task per socket ──► Session task per client
//!        │                                   (stopped on suspend)         │
//!        └── kick (watch) ────────────────────────────────────────────────┘  421 after drain
//! ```
//!
//! Suspend (Cisco ESA `suspendlistener`) stops the acceptors: a socket we
//! bound ourselves is closed, so new clients are refused at once and retry
//! elsewhere; an inherited socket (socket activation: the agent owns the VIP)
//! is kept open but not accepted from — it cannot be re-created, and the
//! agent decides where the next connection goes. Sessions in progress may
//! finish until the drain timeout; then they get `421 4.3.2` and are closed.
//! Delivery of the queue is not affected. Resume re-binds (same address, the
//! port actually bound the first time) and starts the acceptors again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::session::{Handler, Session, SessionConfig};

/// Where a server listens.
#[derive(Debug)]
pub enum Listen {
    /// Bind these addresses ourselves (re-bound on resume).
    Bind(Vec<SocketAddr>),
    /// Serve on sockets handed to us (socket activation); kept across suspend.
    Inherited(Vec<std::net::TcpListener>),
}

/// Whether the listener accepts new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListenerState {
    /// Accepting.
    Running,
    /// Not accepting (sessions in progress may still be draining).
    Suspended,
}

/// What a suspend did.
#[derive(Debug, Clone, Serialize)]
pub struct SuspendReport {
    /// Sessions open when the listener stopped accepting.
    pub sessions_at_suspend: usize,
    /// Sessions still open at the drain timeout, closed with `421 4.3.2`.
    pub sessions_closed: usize,
    /// Time from suspend to no session left, in milliseconds.
    pub drain_ms: u64,
}

/// One listening socket and how to get it back after a suspend.
struct Socket {
    /// The address actually bound (port 0 resolved).
    addr: SocketAddr,
    /// For inherited sockets: kept here while suspended.
    kept: Option<TcpListener>,
    /// True if we bound it and can bind it again.
    rebindable: bool,
}

struct Running {
    /// Dropping it (or sending true) stops the acceptors.
    stop: watch::Sender<bool>,
    /// One per socket; returns the listener if it must be kept.
    acceptors: Vec<JoinHandle<Option<TcpListener>>>,
}

/// Shared by the control handle and the acceptors.
struct Shared<H> {
    handler: Arc<H>,
    config: Arc<SessionConfig>,
    /// Number of open sessions; watched by drains.
    sessions: watch::Sender<usize>,
    /// Bumped to make every open session answer 421 and close.
    kick: watch::Sender<u64>,
}

/// The trait object the control uses to start acceptors without being
/// generic over the handler (so `ListenerControl` is one concrete type).
trait Acceptors: Send + Sync {
    fn spawn(
        &self,
        listener: TcpListener,
        stop: watch::Receiver<bool>,
        keep: bool,
    ) -> JoinHandle<Option<TcpListener>>;
    fn sessions(&self) -> watch::Receiver<usize>;
    fn kick(&self);
}

impl<H: Handler> Acceptors for Shared<H> {
    fn spawn(
        &self,
        listener: TcpListener,
        stop: watch::Receiver<bool>,
        keep: bool,
    ) -> JoinHandle<Option<TcpListener>> {
        let me = Shared {
            handler: self.handler.clone(),
            config: self.config.clone(),
            sessions: self.sessions.clone(),
            kick: self.kick.clone(),
        };
        tokio::spawn(accept_loop(me, listener, stop, keep))
    }

    fn sessions(&self) -> watch::Receiver<usize> {
        self.sessions.subscribe()
    }

    fn kick(&self) {
        self.kick.send_modify(|k| *k += 1);
    }
}

/// Control handle of a server's listener: suspend, resume, state. Clone freely.
#[derive(Clone)]
pub struct ListenerControl {
    inner: Arc<ControlInner>,
}

struct ControlInner {
    acceptors: Box<dyn Acceptors>,
    /// Sockets and the running acceptors; a tokio mutex because suspend
    /// awaits the acceptors while holding it (no resume can interleave).
    state: Mutex<(Vec<Socket>, Option<Running>)>,
    /// Default drain timeout.
    drain_timeout: Duration,
}

impl ListenerControl {
    /// Binds (or adopts) the sockets and starts accepting.
    pub(crate) async fn start<H: Handler>(
        listen: Listen,
        handler: Arc<H>,
        config: Arc<SessionConfig>,
        drain_timeout: Duration,
    ) -> Result<ListenerControl> {
        let mut sockets = Vec::new();
        match listen {
            Listen::Bind(addrs) => {
                if addrs.is_empty() {
                    return Err(Error::Invalid("no address to listen on".into()));
                }
                for addr in addrs {
                    let l = bind(addr)?;
                    let addr = l.local_addr()?;
                    sockets.push(Socket {
                        addr,
                        kept: Some(l),
                        rebindable: true,
                    });
                }
            }
            Listen::Inherited(ls) => {
                if ls.is_empty() {
                    return Err(Error::Activation("no inherited socket".into()));
                }
                for l in ls {
                    l.set_nonblocking(true)?;
                    let l = TcpListener::from_std(l)?;
                    let addr = l.local_addr()?;
                    sockets.push(Socket {
                        addr,
                        kept: Some(l),
                        rebindable: false,
                    });
                }
            }
        }
        let (sessions, _) = watch::channel(0usize);
        let (kick, _) = watch::channel(0u64);
        let shared = Shared {
            handler,
            config,
            sessions,
            kick,
        };
        let control = ListenerControl {
            inner: Arc::new(ControlInner {
                acceptors: Box::new(shared),
                state: Mutex::new((sockets, None)),
                drain_timeout,
            }),
        };
        control.resume().await?;
        Ok(control)
    }

    /// The addresses served (with the real port when 0 was asked for).
    pub async fn local_addrs(&self) -> Vec<SocketAddr> {
        self.inner
            .state
            .lock()
            .await
            .0
            .iter()
            .map(|s| s.addr)
            .collect()
    }

    /// Running or suspended.
    pub async fn state(&self) -> ListenerState {
        if self.inner.state.lock().await.1.is_some() {
            ListenerState::Running
        } else {
            ListenerState::Suspended
        }
    }

    /// Number of sessions open now.
    pub fn sessions(&self) -> usize {
        *self.inner.acceptors.sessions().borrow()
    }

    /// The drain timeout from the configuration.
    pub fn default_drain_timeout(&self) -> Duration {
        self.inner.drain_timeout
    }

    /// Stops accepting, then waits for sessions in progress to end; those
    /// still open after `drain_timeout` get `421 4.3.2` and are closed.
    /// Returns when no session is left. Suspending a suspended listener only drains.
    pub async fn suspend(&self, drain_timeout: Duration) -> SuspendReport {
        let started = tokio::time::Instant::now();
        {
            let mut state = self.inner.state.lock().await;
            if let Some(running) = state.1.take() {
                let _ = running.stop.send(true);
                for (i, task) in running.acceptors.into_iter().enumerate() {
                    // The acceptor hands back a socket that must be kept.
                    let kept = task.await.ok().flatten();
                    if let Some(sock) = state.0.get_mut(i) {
                        sock.kept = kept;
                    }
                }
            }
        }
        let mut sessions = self.inner.acceptors.sessions();
        let sessions_at_suspend = *sessions.borrow_and_update();
        let drained = tokio::time::timeout(drain_timeout, sessions.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok());
        let mut sessions_closed = 0;
        if !drained {
            sessions_closed = *sessions.borrow();
            // Only if no resume happened meanwhile: never kick new sessions.
            if self.inner.state.lock().await.1.is_none() {
                self.inner.acceptors.kick();
                // Sessions react at their next read; one busy storing a
                // message finishes that first (bounded by the disk and the
                // commit hook), so this wait has a generous cap.
                let _ =
                    tokio::time::timeout(Duration::from_secs(60), sessions.wait_for(|n| *n == 0))
                        .await
                        .map(|r| r.is_ok());
            }
        }
        SuspendReport {
            sessions_at_suspend,
            sessions_closed,
            drain_ms: started.elapsed().as_millis() as u64,
        }
    }

    /// Starts accepting again (re-binding sockets closed by a suspend).
    /// Resuming a running listener does nothing.
    pub async fn resume(&self) -> Result<()> {
        let mut state = self.inner.state.lock().await;
        if state.1.is_some() {
            return Ok(());
        }
        let (stop, stop_rx) = watch::channel(false);
        let mut listeners = Vec::new();
        for sock in state.0.iter_mut() {
            let l = match sock.kept.take() {
                Some(l) => l,
                None => bind(sock.addr)?,
            };
            listeners.push((l, !sock.rebindable));
        }
        let acceptors = listeners
            .into_iter()
            .map(|(l, keep)| self.inner.acceptors.spawn(l, stop_rx.clone(), keep))
            .collect();
        state.1 = Some(Running { stop, acceptors });
        Ok(())
    }

    /// Stops accepting and closes every session at once (421): shutdown.
    pub(crate) async fn close(&self) {
        let mut state = self.inner.state.lock().await;
        if let Some(running) = state.1.take() {
            let _ = running.stop.send(true);
            for task in running.acceptors {
                let _ = task.await;
            }
        }
        state.0.iter_mut().for_each(|s| s.kept = None);
        drop(state);
        self.inner.acceptors.kick();
        let mut sessions = self.inner.acceptors.sessions();
        let _ = tokio::time::timeout(Duration::from_secs(10), sessions.wait_for(|n| *n == 0))
            .await
            .map(|r| r.is_ok());
    }
}

/// Binds with SO_REUSEADDR so a resume right after a suspend is not refused
/// because of connections in TIME_WAIT.
fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let err = |e| Error::Socket {
        what: "bind",
        addr: addr.to_string(),
        source: e,
    };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(1024).map_err(err)
}

/// Decrements the session count when a session task ends, however it ends.
struct SessionGuard(watch::Sender<usize>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

async fn accept_loop<H: Handler>(
    shared: Shared<H>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    keep: bool,
) -> Option<TcpListener> {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: pause briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut over_limit = false;
        shared.sessions.send_modify(|n| {
            if *n >= shared.config.limits.max_sessions {
                over_limit = true;
            } else {
                *n += 1;
            }
        });
        if over_limit {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut stream = stream;
                let _ = stream
                    .write_all(b"421 4.3.2 Too many connections, try again later\r\n")
                    .await;
                let _ = stream.shutdown().await;
            });
            continue;
        }
        let guard = SessionGuard(shared.sessions.clone());
        let session = Session::new(
            stream,
            peer,
            shared.handler.clone(),
            shared.config.clone(),
            shared.kick.subscribe(),
        );
        tokio::spawn(async move {
            session.run().await;
            drop(guard);
        });
    }
    if keep { Some(listener) } else { None }
}
