//! The service supervisor: runs the protected service while this node should
//! serve, and never lets it outlive its reason to run.
//!
//! - It is started when the node becomes active (every node in config-only
//!   mode) and handed the VIP's listening sockets by the systemd
//!   socket-activation protocol (`LISTEN_FDS`, `LISTEN_PID`, fds from 3), so
//!   any socket-activatable service works unchanged.
//! - It is stopped with SIGTERM, a grace period, then SIGKILL, to its whole
//!   process group, so helpers the service forked go too.
//! - A crash restarts it with exponential backoff; too many crashes in a
//!   short window is reported as a crash loop, for the monitors to act on.
//! - `PR_SET_PDEATHSIG` kills it if the agent itself dies: a dead agent must
//!   never leave a live service holding the address, or the peer's takeover
//!   would make two servers.
//!
//! The supervisor is an actor: [`spawn`] returns a [`SupervisorHandle`] for
//! commands, and events come back on a channel the driver selects on.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};

/// What to run.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Working directory; the agent's when `None`.
    pub cwd: Option<PathBuf>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Time between SIGTERM and SIGKILL on stop.
    pub grace: Duration,
}

/// What happened to the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceEvent {
    /// The service was started with this process id.
    Started {
        /// Its pid.
        pid: u32,
    },
    /// It could not be started at all (missing program, ...).
    SpawnFailed {
        /// Why.
        error: String,
    },
    /// It exited while it should have been running; a restart follows.
    Crashed {
        /// Exit code or signal, as text.
        status: String,
        /// Delay before the restart.
        restart_in: Duration,
    },
    /// It crashed [`CRASH_LOOP_COUNT`] times within [`CRASH_LOOP_WINDOW`].
    CrashLoop,
    /// It was stopped on request.
    Stopped,
}

/// Crashes within [`CRASH_LOOP_WINDOW`] that make a crash loop.
pub const CRASH_LOOP_COUNT: usize = 5;
/// The window for [`CRASH_LOOP_COUNT`].
pub const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(30);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

enum Control {
    Start {
        spec: ServiceSpec,
        sockets: Vec<Arc<OwnedFd>>,
    },
    Stop {
        done: oneshot::Sender<()>,
    },
    Pid {
        reply: oneshot::Sender<Option<u32>>,
    },
}

/// Commands to a running supervisor.
#[derive(Clone)]
pub struct SupervisorHandle {
    tx: mpsc::Sender<Control>,
}

impl SupervisorHandle {
    /// Starts the service (a no-op if it runs); `sockets` are passed as fds
    /// 3, 4, ... with `LISTEN_FDS`.
    pub async fn start(&self, spec: ServiceSpec, sockets: Vec<Arc<OwnedFd>>) {
        // The actor only ends when every handle is gone, so a send cannot
        // fail while `self` exists.
        let _ = self.tx.send(Control::Start { spec, sockets }).await;
    }

    /// Stops the service and waits until it is gone.
    pub async fn stop(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Control::Stop { done }).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Asks the service to stop without waiting for it: the caller's loop
    /// must not stall for the grace period. Commands are handled in order,
    /// so a later `start` still follows this stop.
    pub async fn request_stop(&self) {
        let (done, _) = oneshot::channel();
        let _ = self.tx.send(Control::Stop { done }).await;
    }

    /// The running service's pid.
    pub async fn pid(&self) -> Option<u32> {
        let (reply, wait) = oneshot::channel();
        self.tx.send(Control::Pid { reply }).await.ok()?;
        wait.await.ok().flatten()
    }
}

/// Starts the supervisor actor; events arrive on `events`.
pub fn spawn(events: mpsc::Sender<ServiceEvent>) -> SupervisorHandle {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(run(rx, events));
    SupervisorHandle { tx }
}

/// A supervisor that runs nothing: it answers as a service that starts at
/// once and stops when asked, for the simulated cluster of [`crate::sim`],
/// where the HA rules are under test and a process would only add time.
pub fn simulated(events: mpsc::Sender<ServiceEvent>) -> SupervisorHandle {
    let (tx, mut rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut running = false;
        while let Some(control) = rx.recv().await {
            match control {
                Control::Start { .. } if !running => {
                    running = true;
                    let _ = events.send(ServiceEvent::Started { pid: 0 }).await;
                }
                Control::Start { .. } => {}
                Control::Stop { done } => {
                    if std::mem::take(&mut running) {
                        let _ = events.send(ServiceEvent::Stopped).await;
                    }
                    let _ = done.send(());
                }
                Control::Pid { reply } => {
                    let _ = reply.send(None);
                }
            }
        }
    });
    SupervisorHandle { tx }
}

struct Wanted {
    spec: ServiceSpec,
    sockets: Vec<Arc<OwnedFd>>,
}

async fn run(mut rx: mpsc::Receiver<Control>, events: mpsc::Sender<ServiceEvent>) {
    let mut wanted: Option<Wanted> = None;
    let mut child: Option<Child> = None;
    let mut restart_at: Option<Instant> = None;
    let mut crashes: VecDeque<Instant> = VecDeque::new();
    let mut backoff = BACKOFF_FIRST;

    loop {
        tokio::select! {
            control = rx.recv() => match control {
                None => {
                    if let Some(c) = child.take() { terminate(c, Duration::from_secs(1)).await; }
                    return;
                }
                Some(Control::Start { spec, sockets }) => {
                    wanted = Some(Wanted { spec, sockets });
                    if child.is_none() {
                        restart_at = None;
                        backoff = BACKOFF_FIRST;
                        child = launch(wanted.as_ref(), &events).await;
                    }
                }
                Some(Control::Stop { done }) => {
                    let grace = wanted.take().map_or(Duration::from_secs(1), |w| w.spec.grace);
                    restart_at = None;
                    if let Some(c) = child.take() {
                        terminate(c, grace).await;
                        let _ = events.send(ServiceEvent::Stopped).await;
                    }
                    let _ = done.send(());
                }
                Some(Control::Pid { reply }) => {
                    let _ = reply.send(child.as_ref().and_then(Child::id));
                }
            },
            status = wait_child(&mut child) => {
                child = None;
                if wanted.is_none() { continue; }
                let now = Instant::now();
                crashes.push_back(now);
                while crashes.front().is_some_and(|t| now.duration_since(*t) > CRASH_LOOP_WINDOW) {
                    crashes.pop_front();
                }
                let _ = events.send(ServiceEvent::Crashed { status, restart_in: backoff }).await;
                if crashes.len() >= CRASH_LOOP_COUNT {
                    let _ = events.send(ServiceEvent::CrashLoop).await;
                }
                restart_at = Some(now + backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            },
            () = sleep_until(restart_at.unwrap_or_else(Instant::now)), if restart_at.is_some() => {
                restart_at = None;
                child = launch(wanted.as_ref(), &events).await;
            },
        }
    }
}

/// Waits for the child to exit; pending forever when there is none.
async fn wait_child(child: &mut Option<Child>) -> String {
    match child {
        Some(c) => match c.wait().await {
            Ok(status) => status.to_string(),
            Err(e) => format!("wait failed: {e}"),
        },
        None => std::future::pending().await,
    }
}

async fn launch(wanted: Option<&Wanted>, events: &mpsc::Sender<ServiceEvent>) -> Option<Child> {
    let wanted = wanted?;
    match start_process(&wanted.spec, &wanted.sockets) {
        Ok(child) => {
            let pid = child.id().unwrap_or(0);
            tracing::info!(pid, argv = ?wanted.spec.argv, "service started");
            let _ = events.send(ServiceEvent::Started { pid }).await;
            Some(child)
        }
        Err(e) => {
            let error = format!(
                "cannot start {:?}: {e}",
                wanted.spec.argv.first().map_or("", |s| s.as_str())
            );
            tracing::error!(%error, "service spawn failed");
            let _ = events.send(ServiceEvent::SpawnFailed { error }).await;
            None
        }
    }
}

/// SIGTERM to the process group, then SIGKILL after `grace`.
async fn terminate(mut child: Child, grace: Duration) {
    if let Some(pid) = child.id() {
        signal_group(pid, libc::SIGTERM);
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            signal_group(pid, libc::SIGKILL); // stragglers in the group
            return;
        }
        tracing::warn!(
            pid,
            grace_ms = grace.as_millis() as u64,
            "service ignored SIGTERM; killing it"
        );
        signal_group(pid, libc::SIGKILL);
    }
    let _ = child.kill().await;
}

fn signal_group(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) with a negative pid signals the process group the
        // child leads (it called setpgid(0, 0)); no memory is involved.
        unsafe { libc::kill(-pid, signal) };
    }
}

/// Spawns the service: its own process group, SIGKILL when the agent dies,
/// and the sockets at fds 3.. with `LISTEN_FDS`/`LISTEN_PID`.
fn start_process(spec: &ServiceSpec, sockets: &[Arc<OwnedFd>]) -> std::io::Result<Child> {
    let (program, args) = spec.argv.split_first().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty service command")
    })?;
    let mut command = if sockets.is_empty() {
        let mut c = Command::new(program);
        c.args(args);
        c
    } else {
        // LISTEN_PID must be the service's own pid, known only after fork;
        // a shell that sets it and then execs keeps that pid.
        let mut c = Command::new("/bin/sh");
        c.arg("-c")
            .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
            .arg(program)
            .args(args);
        c.env("LISTEN_FDS", sockets.len().to_string());
        c
    };
    if sockets.is_empty() {
        command.env_remove("LISTEN_FDS");
    }
    command
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES");
    command.envs(spec.env.iter().map(|(k, v)| (k, v)));
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    command.kill_on_drop(true);
    let fds: Vec<RawFd> = sockets.iter().map(|s| s.as_raw_fd()).collect();
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes async-signal-safe calls (signal, prctl, setpgid, fcntl, dup2)
    // on integers.
    unsafe {
        command.pre_exec(move || set_up_child(&fds));
    }
    command.spawn()
}

/// In the forked child: default signal handling, die with the parent, lead
/// a process group, and move the sockets to 3, 4, ... without close-on-exec.
fn set_up_child(fds: &[RawFd]) -> std::io::Result<()> {
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    // SAFETY: plain syscalls on integers, async-signal-safe.
    unsafe {
        // An ignored signal stays ignored across exec, and a shell cannot
        // even trap one ignored on entry: an agent started under nohup
        // would pass its ignored SIGHUP on, and `on_config_change =
        // "signal:HUP"` (or a stop's SIGTERM) would never reach the
        // service. It starts as under systemd, with every disposition
        // default.
        for signal in [
            libc::SIGHUP,
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGTERM,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGPIPE,
        ] {
            libc::signal(signal, libc::SIG_DFL);
        }
        check(libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ))?;
        check(libc::setpgid(0, 0))?;
        // First lift every socket above the target range, so moving one into
        // place cannot overwrite another that has not moved yet.
        let top = 3 + fds.len() as libc::c_int;
        let mut lifted = [0 as RawFd; 64];
        if fds.len() > lifted.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "too many sockets",
            ));
        }
        for (i, fd) in fds.iter().enumerate() {
            lifted[i] = check(libc::fcntl(*fd, libc::F_DUPFD, top))?;
        }
        for (i, fd) in lifted[..fds.len()].iter().enumerate() {
            // dup2 leaves the new descriptor without FD_CLOEXEC.
            check(libc::dup2(*fd, 3 + i as libc::c_int))?;
            libc::close(*fd);
        }
    }
    Ok(())
}
