//! `tandem bench sync`: what cluster fsync costs, and what it saves.
//!
//! A local pair runs the relay (spool in its `[sync]` data dir) in front of
//! an in-process counting sink; the same load goes through it with
//! `data_sync = off`, `async` and `semi`, then once more in `semi` with a
//! kill -9 of the active agent in the middle of the load, and `returns`
//! times the returning primary of issue 14 (it crashes with mail queued,
//! the secondary takes more, it comes back). The figures are printed,
//! never asserted: the machine decides them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tandem_mta::Listen;
use tandem_mta::load::{LoadOptions, LoadReport, load};
use tandem_mta::sink::Sink;

use crate::localcluster::{ClusterSpec, LocalCluster};
use tandem_agent::api::StatusReport;
use tandem_core::EffectiveRole;
use tandem_sync::replicator::PeerState;

fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// A started pair with `data_sync = mode`, relaying to `next_hop`, settled
/// with its standby in sync.
async fn relay_pair(mode: &str, next_hop: SocketAddr) -> anyhow::Result<LocalCluster> {
    let exe = std::env::current_exe().context("cannot find the tandem binary")?;
    let script = format!(
        "exec {} mta serve --spool \"data/$TANDEM_NODE/spool\" --relay-to {next_hop}",
        exe.display()
    );
    let spec = ClusterSpec {
        extra_toml: "cwd = \".\"\n".into(),
        version: "bench".into(),
        exe: Some(exe),
        ..ClusterSpec::new(&["alpha", "beta"], vec!["sh".into(), "-c".into(), script])
    };
    let mut cluster = LocalCluster::create(&spec)?;
    cluster.enable_sync(&format!("data_sync = \"{mode}\"\n"))?;
    cluster.start_all()?;
    cluster.wait_for_active(0, Duration::from_secs(15)).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = cluster.status(0).await;
        let in_sync = status
            .as_ref()
            .and_then(StatusReport::replicator)
            .is_some_and(|r| r.peers.iter().all(|p| p.state == PeerState::InSync));
        // The relay must be up too: it greets on the VIP.
        if in_sync && tokio::net::TcpStream::connect(cluster.vip).await.is_ok() {
            return Ok(cluster);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{mode}: the standby never came in sync"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn send(to: SocketAddr, messages: u64, concurrency: usize) -> anyhow::Result<LoadReport> {
    Ok(load(LoadOptions {
        to,
        messages,
        concurrency,
        size: 4096,
        timeout: Duration::from_secs(120),
    })
    .await?)
}

fn p99(mut samples: Vec<u64>) -> u64 {
    samples.sort_unstable();
    samples
        .get((samples.len() * 99 / 100).min(samples.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

const MODES: [&str; 3] = ["off", "async", "semi"];

/// One mode's figures: one run, or the median run of a few.
#[derive(Debug, Clone, Serialize)]
struct ModeFigures {
    msgs_per_s: f64,
    acknowledged: u64,
    smtp_p99_ms: f64,
    /// `async`: the replication lag the active reported, p99.
    #[serde(skip_serializing_if = "Option::is_none")]
    lag_p99_ms: Option<u64>,
    /// `semi`: every 250 waited for its commit, so the transaction's p99
    /// bounds the commit's.
    #[serde(skip_serializing_if = "Option::is_none")]
    commit_p99_ms: Option<f64>,
    /// `semi`: group-commit batches and commits (their ratio is the
    /// batching factor).
    #[serde(skip_serializing_if = "Option::is_none")]
    batches: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    commits: Option<u64>,
    /// Every round's throughput, on the median.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    runs_msgs_per_s: Vec<f64>,
}

/// Kill -9 of the active mid-load.
#[derive(Debug, Serialize)]
struct CrashFigures {
    acknowledged: u64,
    delivered: u64,
    lost: u64,
    duplicates: u64,
    rejected_during_failover: u64,
}

/// The returning primary of issue 14, over `runs` pairs.
#[derive(Debug, Serialize)]
struct ReturnFigures {
    runs: usize,
    acknowledged: u64,
    delivered: u64,
    lost: u64,
    duplicates: u64,
    restart_to_active_ms: Vec<u64>,
    restart_to_active_ms_median: u64,
}

/// What `bench sync --json` prints.
#[derive(Debug, Serialize)]
struct SyncBench {
    off: ModeFigures,
    #[serde(rename = "async")]
    async_: ModeFigures,
    semi: ModeFigures,
    rounds: usize,
    semi_vs_off_pct: f64,
    semi_vs_off_pct_by_round: Vec<f64>,
    crash: CrashFigures,
    #[serde(rename = "return")]
    return_: ReturnFigures,
}

/// Runs the benchmark and prints the figures: each mode's median run of
/// `rounds`, and semi's throughput as a share of off's.
pub async fn run(
    messages: u64,
    concurrency: usize,
    rounds: u64,
    returns: u64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let rounds = rounds.max(1) as usize;
    let mut runs: BTreeMap<&str, Vec<ModeFigures>> = BTreeMap::new();
    let mut ratios = Vec::new();
    for round in 0..rounds {
        // Each round starts with the next mode, so a machine that drifts
        // (other tenants, a warming page cache) weighs on every mode alike.
        for i in 0..MODES.len() {
            let mode = MODES[(round + i) % MODES.len()];
            let figures = measure(mode, messages, concurrency).await?;
            if !json {
                eprintln!(
                    "round {}/{rounds} {mode}: {}",
                    round + 1,
                    serde_json::to_string(&figures)?
                );
            }
            runs.entry(mode).or_default().push(figures);
        }
        // Off and semi of the same round ran side by side: their ratio is
        // the least noisy figure this machine gives.
        let last = |mode| {
            runs.get(mode)
                .and_then(|r| r.get(round))
                .map_or(0.0, |f| f.msgs_per_s)
        };
        ratios.push(percent(last("semi"), last("off")));
    }
    let mut median = |mode| -> anyhow::Result<ModeFigures> {
        let mut figures = runs.remove(mode).unwrap_or_default();
        figures.sort_by(|a, b| a.msgs_per_s.total_cmp(&b.msgs_per_s));
        let all = figures.iter().map(|f| f.msgs_per_s).collect();
        let mut median = figures
            .get(figures.len() / 2)
            .cloned()
            .with_context(|| format!("no run of {mode}"))?;
        median.runs_msgs_per_s = all;
        Ok(median)
    };
    ratios.sort_by(f64::total_cmp);
    let r = SyncBench {
        off: median("off")?,
        async_: median("async")?,
        semi: median("semi")?,
        rounds,
        semi_vs_off_pct: ratios[ratios.len() / 2],
        semi_vs_off_pct_by_round: ratios,
        crash: crash(messages, concurrency).await?,
        return_: returning(messages, concurrency, returns).await?,
    };
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        let or_dash = |v: Option<u64>| v.map_or_else(|| "-".into(), |v| v.to_string());
        println!(
            "off {} msg/s  async {} msg/s (lag p99 {} ms)  semi {} msg/s (p99 {} ms): semi {} % of off (median of {rounds} rounds)",
            r.off.msgs_per_s,
            r.async_.msgs_per_s,
            or_dash(r.async_.lag_p99_ms),
            r.semi.msgs_per_s,
            r.semi.commit_p99_ms.unwrap_or_default(),
            r.semi_vs_off_pct,
        );
        let c = &r.crash;
        println!(
            "crash (kill -9 of the active mid-load, semi): acknowledged {}  delivered {}  lost {}  duplicates {}",
            c.acknowledged, c.delivered, c.lost, c.duplicates
        );
        let b = &r.return_;
        println!(
            "return (the crashed primary restarts, {} runs): acknowledged {}  delivered {}  lost {}  duplicates {}  restart to active again: median {} ms",
            b.runs,
            b.acknowledged,
            b.delivered,
            b.lost,
            b.duplicates,
            b.restart_to_active_ms_median
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn percent(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        (part / whole * 1000.0).round() / 10.0
    } else {
        0.0
    }
}

/// One load through a fresh pair with `data_sync = mode`: its figures.
async fn measure(mode: &str, messages: u64, concurrency: usize) -> anyhow::Result<ModeFigures> {
    let sink_addr = free_addr()?;
    let _sink = Sink::bind(Listen::Bind(vec![sink_addr]), 0).await?;
    let cluster = relay_pair(mode, sink_addr).await?;
    // Sample the replication lag the active reports while the load runs.
    let done = AtomicBool::new(false);
    let sampler = async {
        let mut lags = Vec::new();
        while !done.load(Ordering::Relaxed) {
            if let Some(lag) = cluster
                .status(0)
                .await
                .and_then(|s| s.replicator()?.peers.first()?.lag_ms)
            {
                lags.push(lag);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        lags
    };
    let loader = async {
        let result = send(cluster.vip, messages, concurrency).await;
        done.store(true, Ordering::Relaxed);
        result
    };
    let (result, lag_samples) = tokio::join!(loader, sampler);
    let result = result?;
    let status = cluster.status(0).await;
    let replicator = status.as_ref().and_then(StatusReport::replicator);
    let semi = mode == "semi";
    Ok(ModeFigures {
        msgs_per_s: (result.msgs_per_s * 10.0).round() / 10.0,
        acknowledged: result.acknowledged,
        smtp_p99_ms: result.latency.p99_ms,
        lag_p99_ms: (mode == "async").then(|| p99(lag_samples)),
        commit_p99_ms: semi.then_some(result.latency.p99_ms),
        batches: replicator.filter(|_| semi).map(|r| r.batches),
        commits: replicator.filter(|_| semi).map(|r| r.commits),
        runs_msgs_per_s: Vec::new(),
    })
}

/// `semi`, kill -9 of the active halfway through the load: counts the
/// acknowledged messages that never reach the sink after the failover.
async fn crash(messages: u64, concurrency: usize) -> anyhow::Result<CrashFigures> {
    let sink_addr = free_addr()?;
    let sink = Sink::bind(Listen::Bind(vec![sink_addr]), 0).await?;
    let mut cluster = relay_pair("semi", sink_addr).await?;
    let vip = cluster.vip;
    let load = tokio::spawn(async move { send(vip, messages, concurrency).await });
    // Kill once about half the load has reached the sink.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while sink.report(None).distinct_ids < messages / 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.kill(0);
    let result = load.await.context("the load task failed")??;
    let acked = result.acked_ids.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while sink.report(Some(&acked)).missing != Some(0) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = sink.report(Some(&acked));
    let lost = delivered.missing.unwrap_or(0);
    Ok(CrashFigures {
        acknowledged: acked.len() as u64,
        delivered: acked.len() as u64 - lost,
        lost,
        duplicates: delivered.duplicates,
        rejected_during_failover: result.rejected + result.failed_sessions,
    })
}

/// Issue 14's returning primary, `runs` times on fresh pairs: with the next
/// hop down, the active primary is killed with mail queued, the secondary
/// takes over and acknowledges more, the primary restarts (it must be
/// caught up before it takes the service back). Then the next hop comes
/// up and every acknowledged message is counted at the sink.
async fn returning(messages: u64, concurrency: usize, runs: u64) -> anyhow::Result<ReturnFigures> {
    let batch = (messages / 8).clamp(10, 500);
    let (mut acknowledged, mut delivered, mut lost, mut duplicates) = (0u64, 0u64, 0u64, 0u64);
    let mut back_ms = Vec::new();
    for _ in 0..runs.max(1) {
        let sink_addr = free_addr()?;
        let mut cluster = relay_pair("semi", sink_addr).await?;
        let before = send(cluster.vip, batch, concurrency).await?;
        cluster.kill(0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while cluster.status(1).await.map(|s| s.node.effective_role) != Some(EffectiveRole::Active)
        {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "beta did not take over"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let during = send(cluster.vip, batch * 6, concurrency).await?;
        let restarted = tokio::time::Instant::now();
        cluster.start(0)?;
        cluster.wait_for_active(0, Duration::from_secs(30)).await?;
        back_ms.push(restarted.elapsed().as_millis() as u64);
        let acked: Vec<String> = before
            .acked_ids
            .into_iter()
            .chain(during.acked_ids)
            .collect();
        let sink = Sink::bind(Listen::Bind(vec![sink_addr]), 0).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while sink.report(Some(&acked)).missing != Some(0) && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let report = sink.report(Some(&acked));
        let missing = report.missing.unwrap_or(acked.len() as u64);
        acknowledged += acked.len() as u64;
        delivered += acked.len() as u64 - missing;
        lost += missing;
        duplicates += report.duplicates;
    }
    let mut sorted = back_ms.clone();
    sorted.sort_unstable();
    Ok(ReturnFigures {
        runs: back_ms.len(),
        acknowledged,
        delivered,
        lost,
        duplicates,
        restart_to_active_ms_median: sorted[sorted.len() / 2],
        restart_to_active_ms: back_ms,
    })
}
