//! `tandem bench failover`: how long clients of the VIP wait when the active
//! node fails, measured the way the keepalived baseline was
//! (../shared/notes/keepalived-failover-baseline.md), so the two compare.
//!
//! A local pair on loopback (bind mode) runs a tiny service that answers
//! each connection with its node's name. A prober connects to the VIP every
//! 2 ms (50 ms timeout, overlapping) and records who answered. Each fault is
//! injected into the active agent N times, at a random phase of the
//! heartbeat cycle:
//! - `crash`: kill -9 — the peer sees the crash-detection connection close;
//! - `hang`: SIGSTOP — only the heartbeat timeout can notice;
//! - `planned`: `failover standby` — a switchover, which should refuse no
//!   connection at all.
//!
//! With `--coordination etcd` the pair coordinates through a local
//! 3-member etcd (started here, stopped at the end): a crash is still
//! taken over through the closed connection (the dead holder's key is
//! taken over at once), a hang only once the lease ends at etcd (TTL 2 s).
//! `dual_active_ms` is how long, after the fault, both nodes answered on
//! the VIP: a hung agent's service keeps serving, which only the lease's
//! end and the agent's wake-up can stop.
//!
//! With `--coordination etcd` a fourth fault follows, `partition`: the
//! active is cut from its peer and from etcd, in network namespaces (a
//! pair in `ip` VIP mode and an etcd witness; see [`super::bench_partition`],
//! which also defines its `failed_connects`, `dual_active_ms` and `lost`).
//! It needs root and `ip netns`; without them its row says `skipped` and
//! why, and the other faults still run. Target: `dual_active_ms` 0 and
//! `lost` 0.
//!
//! The gap is from the fault to the first connect answered by the new
//! active; failed connects are probes that failed after the fault. Figures
//! are printed, never asserted: these machines are shared and noisy.

use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::FromRawFd;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use tandem_core::Command;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::cli::CoordinationArg;
use crate::localcluster::{ClusterSpec, LocalCluster};
use crate::localetcd::LocalEtcd;
use tandem_agent::api::{CommandOutcome, CommandRequest};

/// One probe's outcome.
#[derive(Clone)]
pub(super) struct Probe {
    /// When the connect began.
    pub(super) started: Instant,
    /// When it was answered, failed or timed out.
    pub(super) finished: Instant,
    /// The name the service answered with; `None` when it failed.
    pub(super) answered_by: Option<String>,
}

/// The figures for one fault.
#[derive(Debug, Serialize)]
pub struct FaultResult {
    fault: &'static str,
    runs: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    failed_connects: u64,
    /// The longest time, over the runs, during which both nodes answered.
    dual_active_ms: f64,
    /// `partition` only: answers given by the cut-off active after its
    /// peer had taken over, over all runs (see `bench_partition`).
    #[serde(skip_serializing_if = "Option::is_none")]
    lost: Option<u64>,
    /// `partition` only: heals after which the cut-off node's agent had to
    /// be restarted to serve again (its etcd session did not recover).
    #[serde(skip_serializing_if = "Option::is_none")]
    restarts: Option<u64>,
}

impl FaultResult {
    /// The figures of `runs` runs of `fault`, from each run's gap.
    fn new(
        fault: &'static str,
        mut gaps: Vec<f64>,
        failed_connects: u64,
        dual_active_ms: f64,
    ) -> Self {
        gaps.sort_by(f64::total_cmp);
        FaultResult {
            fault,
            runs: gaps.len(),
            p50_ms: round(percentile(&gaps, 50)),
            p99_ms: round(percentile(&gaps, 99)),
            max_ms: round(gaps.last().copied().unwrap_or(0.0)),
            failed_connects,
            dual_active_ms: round(dual_active_ms),
            lost: None,
            restarts: None,
        }
    }
}

/// One row of the report: a fault's figures, or why it did not run.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum FaultRow {
    /// The fault ran `runs` times.
    Measured(FaultResult),
    /// The fault could not run here (the partition without root).
    Skipped {
        /// The fault's name.
        fault: &'static str,
        /// Why it did not run.
        skipped: String,
    },
}

/// The whole report, in the exact JSON shape.
#[derive(Debug, Serialize)]
pub struct FailoverReport {
    coordination: &'static str,
    interval_ms: u64,
    lost_threshold: u32,
    agent_idle_rss_kib: u64,
    results: Vec<FaultRow>,
}

pub(super) const INTERVAL_MS: u64 = 200;
pub(super) const LOST_THRESHOLD: u32 = 3;
const PROBE_EVERY: Duration = Duration::from_millis(2);
const PROBE_TIMEOUT: Duration = Duration::from_millis(50);
/// How long a run may take before the takeover counts as failed.
pub(super) const RUN_LIMIT: Duration = Duration::from_secs(5);

/// Runs the benchmark and prints the report.
pub async fn failover(
    runs: usize,
    coordination: CoordinationArg,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let exe = std::env::current_exe().context("cannot find the tandem binary")?;
    let etcd_dir = tempfile::tempdir().context("cannot create a directory for etcd")?;
    let etcd = match coordination {
        CoordinationArg::Peers => None,
        CoordinationArg::Etcd => Some(LocalEtcd::start(etcd_dir.path(), 3)?),
    };
    let spec = ClusterSpec {
        nodes: vec!["alpha".into(), "beta".into()],
        service: vec![
            exe.display().to_string(),
            "bench".into(),
            "name-service".into(),
        ],
        extra_toml: String::new(),
        interval_ms: INTERVAL_MS,
        lost_threshold: LOST_THRESHOLD,
        version: "bench".into(),
        log_dir: None,
        exe: Some(exe.clone()),
        remote_as_heartbeat: false,
        groups: 1,
        config_only: false,
        vip: None,
        etcd: etcd.as_ref().map(LocalEtcd::endpoints).unwrap_or_default(),
        netns: Vec::new(),
    };
    let mut cluster = LocalCluster::create(&spec)?;
    cluster.start_all()?;
    cluster.wait_for_active(0, Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = cluster.nodes[1].pid().map(rss_kib).unwrap_or(0);

    let mut results = Vec::new();
    for fault in ["crash", "hang", "planned"] {
        let mut gaps = Vec::new();
        let mut failed = 0u64;
        let mut dual = 0f64;
        for run in 0..runs {
            cluster.wait_for_active(0, Duration::from_secs(15)).await?;
            // Start at a random phase of the heartbeat cycle.
            tokio::time::sleep(Duration::from_millis(300 + random_below(INTERVAL_MS))).await;
            let (gap, failures, both) = measure(&mut cluster, fault).await?;
            if !json {
                eprintln!(
                    "{fault} run {}/{runs}: gap {gap:.1} ms, {failures} failed connects, both answered {both:.1} ms",
                    run + 1
                );
            }
            gaps.push(gap);
            failed += failures;
            dual = dual.max(both);
            // Bring the old active back: preemption returns the service to
            // a restarted primary; after a switchover the operator's choice
            // stands until `ha restore`.
            match fault {
                "crash" => cluster.start(0)?,
                "hang" => cluster.signal(0, libc::SIGCONT),
                _ => {
                    cluster
                        .client(0)?
                        .command(&CommandRequest::here(Command::HaRestore))
                        .await?;
                }
            }
        }
        results.push(FaultRow::Measured(FaultResult::new(
            fault, gaps, failed, dual,
        )));
    }
    // The loopback pair and its etcd are done: free their CPU for the
    // partition's own pair.
    drop(cluster);
    drop(etcd);
    if coordination == CoordinationArg::Etcd {
        let partition =
            tokio::task::spawn_blocking(move || super::bench_partition::run(runs, &exe, json))
                .await
                .context("the partition benchmark's thread failed")??;
        results.push(match partition {
            Ok(figures) => {
                let mut row = FaultResult::new(
                    "partition",
                    figures.gaps,
                    figures.failed_connects,
                    figures.dual_active_ms,
                );
                row.lost = Some(figures.lost);
                row.restarts = Some(figures.restarts);
                FaultRow::Measured(row)
            }
            Err(reason) => {
                if !json {
                    eprintln!("partition skipped: {reason}");
                }
                FaultRow::Skipped {
                    fault: "partition",
                    skipped: reason,
                }
            }
        });
    }
    let report = FailoverReport {
        coordination: coordination.as_str(),
        interval_ms: INTERVAL_MS,
        lost_threshold: LOST_THRESHOLD,
        agent_idle_rss_kib: rss,
        results,
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "failover on loopback (partition: in network namespaces), coordination {}, interval {INTERVAL_MS} ms, lost_threshold {LOST_THRESHOLD}, idle agent RSS {rss} KiB",
            report.coordination
        );
        println!(
            "{:<9} {:>4} {:>9} {:>9} {:>9} {:>15} {:>14} {:>5}",
            "fault",
            "runs",
            "p50 ms",
            "p99 ms",
            "max ms",
            "failed connects",
            "dual active ms",
            "lost"
        );
        for row in &report.results {
            match row {
                FaultRow::Measured(r) => println!(
                    "{:<9} {:>4} {:>9.1} {:>9.1} {:>9.1} {:>15} {:>14.1} {:>5}",
                    r.fault,
                    r.runs,
                    r.p50_ms,
                    r.p99_ms,
                    r.max_ms,
                    r.failed_connects,
                    r.dual_active_ms,
                    r.lost.map_or("-".to_string(), |n| n.to_string())
                ),
                FaultRow::Skipped { fault, skipped } => {
                    println!("{fault:<9} skipped: {skipped}");
                }
            }
        }
        for row in &report.results {
            if let FaultRow::Measured(r) = row
                && let Some(restarts) = r.restarts.filter(|n| *n > 0)
            {
                println!(
                    "{}: after {restarts} of {} heals the cut-off node's agent was restarted: its etcd session did not recover",
                    r.fault,
                    r.runs.saturating_sub(1)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Injects one fault into node 0 while probing; returns the gap in ms, the
/// failed connects after the fault, and how long (ms) both nodes answered.
async fn measure(cluster: &mut LocalCluster, fault: &str) -> anyhow::Result<(f64, u64, f64)> {
    let probes = Arc::new(Mutex::new(Vec::<Probe>::new()));
    let running = Arc::new(AtomicBool::new(true));
    let prober = tokio::spawn(probe_loop(cluster.vip, probes.clone(), running.clone()));
    tokio::time::sleep(Duration::from_millis(50)).await;

    let fault_at = Instant::now();
    match fault {
        "crash" => cluster.kill(0),
        "hang" => cluster.signal(0, libc::SIGSTOP),
        _ => {
            let reply = cluster
                .client(0)?
                .command(&CommandRequest::here(Command::FailoverStandby))
                .await?;
            if reply.outcome == CommandOutcome::Refused {
                bail!(
                    "failover standby was refused: {}",
                    reply.reason.unwrap_or_default()
                );
            }
        }
    }
    let takeover = loop {
        let first = probes
            .lock()
            .await
            .iter()
            .filter(|p| p.started >= fault_at && p.answered_by.as_deref() == Some("beta"))
            .map(|p| p.finished)
            .min();
        if let Some(at) = first {
            break at;
        }
        if fault_at.elapsed() > RUN_LIMIT {
            running.store(false, Ordering::Relaxed);
            bail!(
                "{fault}: beta did not answer on the VIP within {} s",
                RUN_LIMIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // Keep probing a little: failures right after a takeover count too.
    tokio::time::sleep(Duration::from_millis(200)).await;
    running.store(false, Ordering::Relaxed);
    let _ = prober.await;
    let probes = probes.lock().await;
    let after: Vec<&Probe> = probes.iter().filter(|p| p.started >= fault_at).collect();
    let failed = after.iter().filter(|p| p.answered_by.is_none()).count() as u64;
    // Both served while alpha still answered after beta first did.
    let last_alpha = after
        .iter()
        .filter(|p| p.answered_by.as_deref() == Some("alpha"))
        .map(|p| p.finished)
        .max();
    let both = last_alpha
        .filter(|at| *at > takeover)
        .map_or(0.0, |at| at.duration_since(takeover).as_secs_f64() * 1000.0);
    Ok((
        takeover.duration_since(fault_at).as_secs_f64() * 1000.0,
        failed,
        both,
    ))
}

/// Connects to `vip` every [`PROBE_EVERY`] (each probe its own task, with
/// [`PROBE_TIMEOUT`]) and records each outcome, until `running` turns
/// false or [`RUN_LIMIT`] and a second have passed.
pub(super) async fn probe_loop(
    vip: SocketAddr,
    probes: Arc<Mutex<Vec<Probe>>>,
    running: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    let mut tasks = tokio::task::JoinSet::new();
    // Bounded: a run never probes longer than its limit plus the tail.
    let stop_at = Instant::now() + RUN_LIMIT + Duration::from_secs(1);
    while running.load(Ordering::Relaxed) && Instant::now() < stop_at {
        tick.tick().await;
        let probes = probes.clone();
        tasks.spawn(async move {
            let started = Instant::now();
            let answered_by = tokio::time::timeout(PROBE_TIMEOUT, ask_name(vip))
                .await
                .ok()
                .flatten();
            probes.lock().await.push(Probe {
                started,
                finished: Instant::now(),
                answered_by,
            });
        });
    }
    while tasks.join_next().await.is_some() {}
}

async fn ask_name(vip: SocketAddr) -> Option<String> {
    let stream = tokio::net::TcpStream::connect(vip).await.ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).await.ok()?;
    let name = line.trim();
    (!name.is_empty()).then(|| name.to_string())
}

fn percentile(sorted: &[f64], p: usize) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Nearest rank, as in the keepalived baseline.
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

fn round(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}

pub(super) fn random_below(n: u64) -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom(2) writes at most 8 bytes into bytes.
    unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), 8, 0) };
    u64::from_le_bytes(bytes) % n.max(1)
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Set by SIGTERM: the name service stops accepting.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// SIGTERM handler: only an atomic store, which is async-signal-safe.
extern "C" fn stop_accepting(_: libc::c_int) {
    STOPPING.store(true, Ordering::Relaxed);
}

/// The benchmark's service: answers each connection on its socket-activated
/// sockets (fd 3 and up, one thread each) with this node's name
/// (`TANDEM_NODE`), then closes. Tiny on purpose, so the gap measures
/// tandem, not the service's start-up.
pub fn name_service() -> anyhow::Result<ExitCode> {
    let fds: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        == Some(std::process::id());
    if fds < 1 || !for_us {
        bail!(
            "name-service needs a socket by socket activation (LISTEN_FDS); the agent provides it"
        );
    }
    let name = std::env::var("TANDEM_NODE").unwrap_or_else(|_| "unknown".into());
    let answer = format!("{name}\n");
    // SIGTERM (the agent releasing the VIP) stops accepting at once, but a
    // connection already accepted still gets its answer: a planned
    // switchover must fail no client.
    // SAFETY: the handler only does async-signal-safe work (see below).
    unsafe {
        libc::signal(
            libc::SIGTERM,
            stop_accepting as *const () as libc::sighandler_t,
        )
    };
    let serve = move |fd: i32| {
        // SAFETY: fds 3.. were handed to this process by the
        // socket-activation protocol checked above; nothing else owns them.
        let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        // Non-blocking accept behind poll(2): a connection wakes the thread
        // at once, and every 50 ms it looks whether SIGTERM asked it to
        // stop. (Shutting the socket down instead would break it for the
        // agent and the next service instance too: they share it.)
        if listener.set_nonblocking(true).is_err() {
            return;
        }
        while !STOPPING.load(Ordering::Relaxed) {
            let mut poll = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, for the duration of the call.
            let ready = unsafe { libc::poll(&mut poll, 1, 50) };
            if ready <= 0 {
                continue;
            }
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.write_all(answer.as_bytes());
                }
                // Another thread won the race, or the listener is suspended
                // (tandem listener suspend): wait for the next wake-up.
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    };
    let threads: Vec<_> = (4..3 + fds)
        .map(|fd| {
            let serve = serve.clone();
            std::thread::spawn(move || serve(fd))
        })
        .collect();
    serve(3);
    for thread in threads {
        let _ = thread.join();
    }
    Ok(ExitCode::SUCCESS)
}
