//! `tandem demo`: the whole product in one command, on this machine.
//!
//! Builds and signs two releases of the mail relay (a throwaway key), starts
//! a local cluster on loopback with the relay on the VIP and a counting sink
//! as its next hop, installs the first release everywhere, drives mail
//! through the VIP, upgrades the cluster to the second release while the
//! mail flows, and reports what the clients saw: every acknowledged message
//! must reach the sink. Exit 1 if one did not.
//!
//! Every strategy has its cluster: `switchover` and `holdoff` an
//! active-passive pair, `rolling` three config-only nodes (all serving the
//! VIP at once: on loopback they share it with `SO_REUSEPORT`),
//! `active-active` a pair with two failover groups, each on its own VIP.
//! When the catalog's path has several hops (`--to 6.4.0`) every release on
//! it is built, signed and pushed to every node. Two hidden faults exist for
//! the tests: `--fault kill-coordinator` (kill -9 of the coordinating agent
//! once `--fault-after` steps are done, restarted a second later as a
//! service manager would) and `--fault bad-image` (the first release the
//! upgrade installs fails its health check, so the run must roll back).
//! After a kill, a run that stopped at a safe point is run again once (what
//! its message tells the operator).
//!
//! **Data sync.** The active-passive pair runs with `[sync] data_sync =
//! "semi"` (a throwaway cluster CA and node certificates, made with the
//! project's own cert code): the relay answers 250 only once the standby
//! has the message on disk, so a node killed -9 while active strands
//! nothing — the standby that takes over holds and delivers every
//! acknowledged message. Config-only (`rolling`) and active-active clusters
//! run without it: every node there is active at once, and the agent's
//! replicator (started by any active node, towards every peer) would have
//! the actives replicate their spools into each other. Their nodes keep
//! their spools local; none is killed in those demos, and each drains its
//! own queue while it serves.
//!
//! Every node's spool is `data/NODE/spool` in the cluster's directory (the
//! `[sync]` data dir where there is one). Before it stops the cluster the
//! demo waits, bounded, for every spool's queue to empty and reports what
//! was left (`queued_after`), so an outside next hop (`--relay-to`) gets
//! everything the cluster acknowledged.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use tandem_image::archive::{self, Compression};
use tandem_image::signing;
use tandem_mta::Listen;
use tandem_mta::load::LoadReport;
use tandem_mta::sink::Sink;
use tokio::sync::Mutex;
use tokio::time::Instant;

use tandem_upgrade::{StepKind, StepState, UpgradePlan};
use tandem_version::{Catalog, Version};

use crate::cli::{CoordinationArg, DemoArgs};
use crate::commands::upgrade::{Report, versions_now};
use crate::localcluster::{ClusterSpec, LocalCluster};
use crate::localetcd::LocalEtcd;
use tandem_agent::api::{
    ApiClient, BootAnswer, BootRequest, InstallAnswer, InstallRequest, PlanAnswer, UpgradeRequest,
    UpgradeStatus, UploadAnswer,
};
use tandem_core::EffectiveRole;
use traffic::{load_loop, probe_loop, wait_serving};

mod traffic;

/// The example catalog the demo upgrades along (6.2.0 → 6.2.5, FortiMail's
/// seed), built in so the demo runs from any directory.
const CATALOG: &str = include_str!("../../../../catalogs/fortimail-example.toml");

/// The demo's report, in the JSON shape.
#[derive(Debug, Serialize)]
struct DemoReport {
    strategy: String,
    /// The cluster's mode (beyond the shape: which cluster ran).
    mode: String,
    /// `peers` or `etcd`.
    coordination: &'static str,
    /// How the upgrade ended, in words ("done: ...", "rolled back: ...").
    outcome: String,
    /// The releases the upgrade installed, hop by hop.
    path: Vec<String>,
    from: String,
    to: String,
    sent: u64,
    acknowledged: u64,
    delivered: u64,
    lost: u64,
    duplicates: u64,
    failed_sessions: u64,
    max_gap_ms: f64,
    failovers: u64,
    /// The cluster's `[sync] data_sync`: `semi` (active-passive) or `off`
    /// (no `[sync]`: config-only and active-active, see the module doc).
    data_sync: String,
    /// Messages still queued in the nodes' spools when the demo stopped the
    /// cluster (counted per node, so a mirrored copy counts twice): 0 when
    /// everything acknowledged had left for the next hop.
    queued_after: u64,
    /// Each node's version as it reported it (none: it did not answer).
    versions_after: BTreeMap<String, Option<String>>,
    duration_s: f64,
    /// `tandem upgrade report` of the run: its timeline and versions.
    report: Option<Report>,
}

/// Runs the demo.
pub async fn run(args: DemoArgs, json: bool) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    // Progress goes to stderr; with `--json` too when the clients are the
    // operator's own (`--no-load`): they need the VIPs, the moment the
    // service is up and the moment the upgrade is over, and stdout keeps
    // only the report.
    let progress = !json || args.no_load;
    let say = |line: &str| {
        if progress {
            eprintln!("demo: {line}");
        }
    };
    let mode = args.mode.clone().unwrap_or_else(|| {
        match args.strategy.as_str() {
            "rolling" => "config-only",
            "active-active" => "active-active",
            _ => "active-passive",
        }
        .to_string()
    });
    let nodes = args
        .nodes
        .unwrap_or(if mode == "config-only" { 3 } else { 2 });
    if nodes < 2 {
        bail!("--nodes must be at least 2");
    }
    let exe = std::env::current_exe().context("cannot find the tandem binary")?;
    let mut work = tempfile::tempdir().context("cannot make a working directory")?;
    // For debugging a failed run: TANDEM_DEMO_KEEP keeps the logs (the
    // cluster's own directory still goes with it).
    let keep = std::env::var_os("TANDEM_DEMO_KEEP").is_some();
    work.disable_cleanup(keep);
    if keep {
        eprintln!("demo: logs kept in {}", work.path().display());
    }
    let dir = work.path();

    // Every release on the catalog's path, so a multi-hop upgrade finds the
    // image of each hop on every node (the preflight insists).
    let catalog = Catalog::parse(CATALOG, "catalogs/fortimail-example.toml")?;
    let (from, to): (Version, Version) = (args.from.parse()?, args.to.parse()?);
    let path = catalog
        .plan(&from, &to)
        .with_context(|| format!("no upgrade path from {from} to {to}"))?;
    let hops: Vec<String> = path.hops.iter().map(|h| h.to.to_string()).collect();
    let Some(first_hop) = hops.first().cloned() else {
        bail!("{from} is already {to}: nothing to upgrade");
    };

    // The next hop: a counting sink, or the operator's own.
    let sink = match args.relay_to {
        Some(_) => None,
        None => {
            Some(Sink::bind(Listen::Bind(vec![SocketAddr::from(([127, 0, 0, 1], 0))]), 0).await?)
        }
    };
    let next_hop = match (&sink, args.relay_to) {
        (Some(sink), _) => sink.local_addr().await,
        (None, Some(addr)) => addr,
        (None, None) => bail!("no next hop"),
    };

    // Signed releases of the relay: the first, then one per hop.
    let releases: Vec<String> = std::iter::once(args.from.clone())
        .chain(hops.iter().cloned())
        .collect();
    say(&format!(
        "building and signing releases {} (throwaway key)",
        releases.join(", ")
    ));
    let bad_image = args.fault.as_deref() == Some("bad-image");
    let (secret, public) = (dir.join("release.key"), dir.join("release.pub"));
    signing::keygen(&secret, &public, None)?;
    let key = signing::read_secret_key(&secret, None)?;
    let mut images = Vec::new();
    for version in &releases {
        let broken = bad_image && *version == first_hop;
        let image = build_release(dir, &exe, version, broken)?;
        signing::sign(&image, &key)?;
        images.push(image);
    }

    // The cluster: the relay on the VIP, spools per node.
    let names: Vec<String> = ["alpha", "beta", "gamma", "delta", "epsilon"]
        .iter()
        .cycle()
        .take(nodes)
        .enumerate()
        .map(|(i, n)| {
            if i < 5 {
                n.to_string()
            } else {
                format!("{n}{i}")
            }
        })
        .collect();
    // Spools at `data/NODE/spool`, relative to the cluster's directory
    // (the service's cwd): inside the `[sync]` data dir where there is one.
    let bootstrap = format!(
        "exec {:?} mta serve --spool \"data/$TANDEM_NODE/spool\" --relay-to {next_hop}",
        exe.display().to_string(),
    );
    let data_sync = if mode == "active-passive" {
        "semi"
    } else {
        "off"
    };
    // With etcd, three members on loopback for the demo's life (dropped,
    // and so stopped, when it returns).
    let etcd = match args.coordination {
        CoordinationArg::Peers => None,
        CoordinationArg::Etcd => {
            say("starting a local 3-member etcd (coordination = \"etcd\")");
            Some(LocalEtcd::start(&dir.join("etcd"), 3)?)
        }
    };
    let spec = ClusterSpec {
        nodes: names.clone(),
        service: vec!["sh".into(), "-c".into(), bootstrap],
        extra_toml: format!(
            "cwd = \".\"\nargs = [\"data\", \"{next_hop}\"]\nsuspend = \"signal\"\n\n[images]\ntrusted_keys = [{:?}]\n",
            public.display().to_string()
        ),
        interval_ms: 200,
        lost_threshold: 3,
        version: args.from.clone(),
        log_dir: Some(dir.to_path_buf()),
        exe: Some(exe.clone()),
        remote_as_heartbeat: false,
        groups: if mode == "active-active" { 2 } else { 1 },
        config_only: mode == "config-only",
        vip: args.listen,
        etcd: etcd.as_ref().map(LocalEtcd::endpoints).unwrap_or_default(),
        netns: Vec::new(),
    };
    let mut cluster = LocalCluster::create(&spec)?;
    if data_sync == "semi" {
        cluster.enable_sync("data_sync = \"semi\"\n")?;
    }
    cluster.start_all()?;
    settle(&cluster, &mode).await?;
    say(&format!(
        "{} nodes ({mode}, data_sync {data_sync}, coordination {}) up on loopback; VIP {} ; next hop {next_hop}",
        names.len(),
        args.coordination.as_str(),
        cluster
            .vips
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    ));

    // Every node holds every release and runs the first from an image slot.
    let clients: Vec<ApiClient> = (0..names.len())
        .map(|i| cluster.client(i))
        .collect::<anyhow::Result<_>>()?;
    for image in &images {
        let name = file_name(image);
        let bytes = std::fs::read(image)?;
        let sha = signing::sha256_file(image)?;
        let signature = std::fs::read(signing::signature_path(image))?;
        for client in &clients {
            let _: UploadAnswer = client
                .put_bytes(&format!("/v1/images/{name}"), bytes.clone(), Some(&sha))
                .await?;
            let _: UploadAnswer = client
                .put_bytes(
                    &format!("/v1/images/{name}.minisig"),
                    signature.clone(),
                    None,
                )
                .await?;
        }
    }
    let first = file_name(&images[0]);
    for (i, client) in clients.iter().enumerate().rev() {
        let install = InstallRequest {
            image: Some(first.clone()),
            version: None,
        };
        let _: InstallAnswer = client
            .post("/v1/images/install", &install)
            .await
            .with_context(|| format!("{}: install {first}", names[i]))?;
        let _: BootAnswer = client
            .post("/v1/images/boot", &BootRequest::default())
            .await
            .with_context(|| format!("{}: boot", names[i]))?;
    }
    settle(&cluster, &mode).await?;
    for vip in &cluster.vips {
        wait_serving(*vip, Duration::from_secs(15)).await?;
    }
    say(&format!(
        "every node runs {} from a signed image",
        args.from
    ));

    // Mail through the VIPs, and a prober timing the service, while the
    // cluster upgrades under it.
    let running = Arc::new(AtomicBool::new(true));
    let loads = Arc::new(Mutex::new(Vec::<LoadReport>::new()));
    let load_task = (!args.no_load).then(|| {
        tokio::spawn(load_loop(
            cluster.vips.clone(),
            args.messages,
            running.clone(),
            loads.clone(),
        ))
    });
    let probe = tokio::spawn(probe_loop(
        cluster.vips.clone(),
        clients.clone(),
        running.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(args.start_delay)).await;

    say(&format!(
        "upgrading {} → {} ({}) with the {} strategy",
        args.from,
        args.to,
        hops.join(" → "),
        args.strategy
    ));
    let request = UpgradeRequest {
        to: args.to.clone(),
        catalog: CATALOG.to_string(),
        catalog_origin: Some("catalogs/fortimail-example.toml".into()),
        strategy: Some(args.strategy.clone()),
        batch: args.batch,
        rollback: false,
    };
    // The coordinator: the only active node, or the first one (config-only,
    // active-active); the agents refuse anyone else.
    let begun: PlanAnswer = match clients[0].post("/v1/upgrade", &request).await {
        Ok(begun) => begun,
        Err(e) => {
            running.store(false, Ordering::Relaxed);
            bail!("the upgrade was refused: {e}");
        }
    };
    if !json {
        eprint!("{}", begun.text);
    }
    if args.fault.as_deref() == Some("kill-coordinator") {
        let after = match args.fault_after {
            Some(n) => n,
            None => switchover_step(&begun.plan).unwrap_or(1),
        };
        kill_coordinator(&mut cluster, &clients, after, &say).await?;
    }
    let mut outcome = follow_any(&clients).await;
    say(&format!("upgrade: {outcome}"));
    if args.fault.as_deref() == Some("kill-coordinator") && outcome.starts_with("stopped") {
        // What the message tells the operator to do: run it again, once
        // the killed node is back.
        say("fault: the upgrade stopped at a safe point; running it again, as its message says");
        let mut again: Option<Result<PlanAnswer, tandem_agent::Error>> = None;
        'retry: for _ in 0..50 {
            for client in &clients {
                let active = client
                    .status()
                    .await
                    .is_ok_and(|s| s.node.effective_role == EffectiveRole::Active);
                if active {
                    let answer = client.post("/v1/upgrade", &request).await;
                    let taken = answer.is_ok();
                    again = Some(answer);
                    if taken {
                        break 'retry;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        match again {
            Some(Ok(_)) => {
                outcome = follow_any(&clients).await;
                say(&format!("upgrade, second run: {outcome}"));
            }
            Some(Err(e)) => say(&format!("the second run was refused: {e}")),
            None => say("the second run was refused: no node was active"),
        }
    }
    tokio::time::sleep(Duration::from_secs(args.linger)).await;
    running.store(false, Ordering::Relaxed);
    if let Some(task) = load_task {
        let _ = task.await;
    }
    let (max_gap_ms, failovers) = probe.await.unwrap_or((0.0, 0));

    // What the cluster acknowledged must leave it before it stops: wait,
    // bounded, for every spool's queue to empty (with semi sync a
    // standby's mirror empties as the active's deletions replicate).
    let spools = cluster.dir.join("data");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut queued_after = queued_total(&spools, &names);
    while queued_after > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        queued_after = queued_total(&spools, &names);
    }
    if queued_after > 0 {
        // Where, and which files: what a search for the cause starts from.
        let left: Vec<String> = names
            .iter()
            .map(|node| {
                let files: Vec<String> =
                    std::fs::read_dir(spools.join(node).join("spool").join("queue"))
                        .map(|d| {
                            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                                .collect()
                        })
                        .unwrap_or_default();
                format!("{node}: [{}]", files.join(" "))
            })
            .collect();
        say(&format!(
            "{queued_after} message(s) still queued in the nodes' spools: {}",
            left.join("; ")
        ));
    }

    // Everything acknowledged must reach the next hop.
    let loads = loads.lock().await;
    let acked: Vec<String> = loads
        .iter()
        .flat_map(|r| r.acked_ids.iter().cloned())
        .collect();
    let mut delivered_report = None;
    if let Some(sink) = &sink {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let report = sink.report(Some(&acked));
            if report.missing == Some(0) || Instant::now() > deadline {
                delivered_report = Some(report);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut versions_after = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let version = cluster.status(i).await.map(|s| s.node.version);
        versions_after.insert(name.clone(), version);
    }
    // The upgrade's own report, from the journal any node holds.
    let mut upgrade_report = None;
    for client in &clients {
        if let Ok(UpgradeStatus { run: Some(run), .. }) = client.get("/v1/upgrade").await
            && let Ok(cluster) = client.cluster().await
        {
            upgrade_report = Some(Report::new(&run, versions_now(&cluster), None));
            break;
        }
    }
    let lost = delivered_report
        .as_ref()
        .and_then(|r| r.missing)
        .unwrap_or(0);
    let report = DemoReport {
        strategy: args.strategy.clone(),
        mode: mode.clone(),
        coordination: args.coordination.as_str(),
        outcome: outcome.clone(),
        path: hops.clone(),
        from: args.from.clone(),
        to: args.to.clone(),
        sent: loads.iter().map(|r| r.sent).sum(),
        acknowledged: acked.len() as u64,
        delivered: acked.len() as u64 - lost,
        lost,
        duplicates: delivered_report.as_ref().map_or(0, |r| r.duplicates),
        failed_sessions: loads
            .iter()
            .map(|r| r.failed_sessions + r.connect_failures)
            .sum(),
        max_gap_ms: (max_gap_ms * 10.0).round() / 10.0,
        failovers,
        data_sync: data_sync.to_string(),
        queued_after,
        versions_after,
        duration_s: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        report: upgrade_report,
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        if let Some(upgrade) = &report.report {
            // The demo measured the client impact: the report shows it.
            let mut upgrade = upgrade.clone();
            let mut figures = serde_json::to_value(&report)?;
            if let Some(map) = figures.as_object_mut() {
                map.remove("report");
            }
            upgrade.impact = Some(figures);
            print!("{upgrade}");
        }
        println!("upgrade: {outcome}");
        println!(
            "sent {}  acknowledged {}  delivered {}  lost {}  duplicates {}  failed sessions {}",
            report.sent,
            report.acknowledged,
            report.delivered,
            report.lost,
            report.duplicates,
            report.failed_sessions
        );
        println!(
            "data_sync {}  queued in the spools after {}",
            report.data_sync, report.queued_after
        );
        println!(
            "longest service gap {:.1} ms  failovers {}  versions after {}  in {:.1} s",
            report.max_gap_ms,
            report.failovers,
            serde_json::to_string(&report.versions_after)?,
            report.duration_s
        );
        if let Some(r) = &delivered_report
            && !r.missing_ids.is_empty()
        {
            println!("missing: {}", r.missing_ids.join(" "));
        }
        println!("logs and state were in {} (removed on exit)", dir.display());
    }
    drop(cluster);
    // A rollback the fault asked for is the expected ending of that demo.
    let ended_well = outcome.starts_with("done") || bad_image && outcome.starts_with("rolled back");
    Ok(if report.lost == 0 && ended_well {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Messages queued in every node's spool (`SPOOLS/NODE/spool/queue`).
fn queued_total(spools: &std::path::Path, nodes: &[String]) -> u64 {
    nodes
        .iter()
        .map(|node| {
            std::fs::read_dir(spools.join(node).join("spool").join("queue"))
                .map_or(0, |d| d.count() as u64)
        })
        .sum()
}

/// Follows the upgrade from the last node that answers (a node killed by a
/// fault is skipped; a restarted one catches up from its peers' copies of
/// the journal) and returns its outcome in words. Bounded by `FOLLOW_LIMIT`:
/// a run that never ends (a stale journal was once followed for ever) must
/// fail the demo, and the tests on it, rather than hang them.
async fn follow_any(clients: &[ApiClient]) -> String {
    let follow = async {
        for client in clients.iter().rev() {
            match crate::commands::upgrade::follow(client, true).await {
                Ok(outcome) => return outcome,
                Err(e) => tracing::warn!(error = %e, "cannot follow the upgrade there"),
            }
        }
        "unknown: no node answered".to_string()
    };
    tokio::time::timeout(FOLLOW_LIMIT, follow)
        .await
        .unwrap_or_else(|_| {
            format!(
                "unknown: the upgrade did not end within {} s",
                FOLLOW_LIMIT.as_secs()
            )
        })
}

/// How long the demo follows one run: far beyond what the demo's upgrades
/// take (seconds, even through a killed coordinator).
const FOLLOW_LIMIT: Duration = Duration::from_secs(600);

/// Waits for the cluster to settle in its mode: one active and the rest
/// standby (active-passive), or every node active.
async fn settle(cluster: &LocalCluster, mode: &str) -> anyhow::Result<()> {
    if mode == "active-passive" {
        cluster.wait_for_active(0, Duration::from_secs(15)).await
    } else {
        cluster.wait_for_all_active(Duration::from_secs(15)).await
    }
}

/// The number of the plan's first switchover step, if it has one.
fn switchover_step(plan: &UpgradePlan) -> Option<usize> {
    plan.steps
        .iter()
        .find(|s| matches!(s.kind, StepKind::Switchover { .. }))
        .map(|s| s.id.0 as usize)
}

/// `--fault kill-coordinator`: once `after` steps of the run are done,
/// kill -9 the agent that coordinates, and start it again a second later
/// (as systemd's `Restart=always` would). Bounded: gives up after 60 s.
async fn kill_coordinator(
    cluster: &mut LocalCluster,
    clients: &[ApiClient],
    after: usize,
    say: &impl Fn(&str),
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        for (i, client) in clients.iter().enumerate() {
            let Ok(UpgradeStatus {
                coordinating: true,
                run: Some(run),
            }) = client.get("/v1/upgrade").await
            else {
                continue;
            };
            // Around a switchover the old coordinator may still say so for
            // a moment: the one that counts is active.
            let active = cluster
                .status(i)
                .await
                .is_some_and(|s| s.node.effective_role == EffectiveRole::Active);
            if !active {
                continue;
            }
            let done = run
                .current()
                .records
                .iter()
                .filter(|r| r.state == StepState::Done)
                .count();
            if done >= after || run.status.is_finished() {
                say(&format!(
                    "fault: kill -9 of {}'s agent, the coordinator, after {done} steps",
                    cluster.nodes[i].name
                ));
                cluster.kill(i);
                tokio::time::sleep(Duration::from_secs(1)).await;
                cluster.start(i)?;
                say(&format!(
                    "fault: {}'s agent started again",
                    cluster.nodes[i].name
                ));
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the upgrade never reached step {after}: no coordinator killed")
}

fn file_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One release of the relay: a script that runs this binary's relay, with
/// the nodes' data base (`data`, relative to the service's cwd) and the next
/// hop as the service's `args`.
fn build_release(
    dir: &std::path::Path,
    exe: &std::path::Path,
    version: &str,
    broken: bool,
) -> anyhow::Result<std::path::PathBuf> {
    let files = dir.join(format!("release-{version}"));
    std::fs::create_dir_all(files.join("bin"))?;
    let script = files.join("bin/relay");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n# tandem-mta {version}\nexec {:?} mta serve --spool \"$1/$TANDEM_NODE/spool\" --relay-to \"$2\"\n",
            exe.display().to_string()
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    let manifest = dir.join(format!("manifest-{version}.toml"));
    std::fs::write(
        &manifest,
        format!(
            "name = \"tandem-mta\"\nversion = \"{version}\"\nentrypoint = [\"bin/relay\"]\ndata_format = 1\nprotocol = [2]\n{}",
            // A release whose health check can never pass: the slot must
            // fall back and the upgrade roll back.
            if broken {
                "\n[health]\ncommand = [\"false\"]\ntimeout = \"2s\"\n"
            } else {
                ""
            }
        ),
    )?;
    let image = dir.join(format!("tandem-mta-{version}.tandem"));
    archive::build(&manifest, &files, &image, Compression::Zstd)?;
    Ok(image)
}
