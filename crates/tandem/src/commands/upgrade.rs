//! `tandem upgrade plan|run|status|report|abort|resume|rollback`: clients of
//! the agents' upgrade API. The cluster does the work — the active node coordinates and
//! replicates the journal — so this command only submits and follows:
//! Ctrl-C detaches, it never aborts. With the rollout knobs (`--canary`,
//! `--batch P%`, `--max-failed`, `--auto-revert`, ...) the run goes in
//! waves; `run` stops following at the pause after the canaries, and
//! `resume` goes on and follows. `tandem upgrade simulate` talks to no
//! agent: it plays fleet rollouts locally (`simulate`).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::Value;
use tandem_agent::api::{
    AbortAnswer, ApiClient, ClusterNode, ClusterReport, PlanAnswer, ResumeAnswer,
    RolloutUpgradeRequest, UpgradeRequest, UpgradeStatus,
};
use tandem_core::EffectiveRole;
use tandem_upgrade::{Batch, NodeProgress, RunStatus, StepState, UpgradeRun};

use crate::cli::{ApiTarget, UpgradeCommand, UpgradeTarget};
use crate::commands::cluster::api_client;
use crate::commands::refusal;

pub mod rollout_args;
pub mod simulate;

/// Runs one `tandem upgrade` subcommand.
pub async fn run(command: UpgradeCommand, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        UpgradeCommand::Plan { upgrade, target } => {
            let client = api_client(&target)?;
            let body = request(&upgrade, &client).await?;
            let planned = client.post("/v1/upgrade/plan", &body).await;
            let answer: PlanAnswer = match refusal(planned)? {
                Ok(answer) => answer,
                Err(error) => {
                    eprintln!("tandem: no plan: {error}");
                    return Ok(ExitCode::from(1));
                }
            };
            if json {
                println!("{}", serde_json::to_string(&answer.plan)?);
            } else {
                print!("{}", answer.text);
            }
            Ok(ExitCode::SUCCESS)
        }
        UpgradeCommand::Run {
            upgrade,
            yes,
            target,
        } => {
            let body = request(&upgrade, &api_client(&target)?).await?;
            submit(&target, body, yes, json).await
        }
        UpgradeCommand::Rollback {
            to,
            strategy,
            yes,
            target,
        } => {
            // A rollback goes back along the path the journal took: no
            // catalog needed.
            let body = UpgradeRequest {
                to,
                catalog: String::new(),
                catalog_origin: None,
                strategy,
                batch: None,
                rollback: true,
            };
            submit(&target, body.into(), yes, json).await
        }
        UpgradeCommand::Status { follow, target } => {
            let client = api_client(&target)?;
            if follow {
                return follow_run(&client, json, AtPause::Stop).await;
            }
            let answer: UpgradeStatus = client.get("/v1/upgrade").await?;
            if json {
                println!("{}", serde_json::to_string(&answer)?);
                return Ok(ExitCode::SUCCESS);
            }
            match &answer.run {
                Some(run) => print!("{}", describe(run)),
                None => println!("no upgrade has run on this cluster"),
            }
            Ok(ExitCode::SUCCESS)
        }
        UpgradeCommand::Report { impact, target } => {
            let client = api_client(&target)?;
            let answer: UpgradeStatus = client.get("/v1/upgrade").await?;
            let Some(run) = answer.run else {
                println!("no upgrade has run on this cluster");
                return Ok(ExitCode::SUCCESS);
            };
            // Without the cluster's answer the report says what the
            // journal last saw of each node.
            let versions = client
                .cluster()
                .await
                .map(|cluster| versions_now(&cluster))
                .unwrap_or_default();
            let impact = match impact {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    Some(
                        serde_json::from_str::<Value>(&text)
                            .with_context(|| format!("{} is not JSON", path.display()))?,
                    )
                }
                None => None,
            };
            let report = Report::new(&run, versions, impact);
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{report}");
            }
            Ok(ExitCode::SUCCESS)
        }
        UpgradeCommand::Simulate(simulate::SimulateArgs {
            nodes,
            batch,
            canary,
            max_failed,
            health_deadline,
            auto_promote,
            boot,
            health,
            fail_rate,
            seed,
            runs,
        }) => {
            let spec = tandem_upgrade::SimulateSpec {
                nodes: nodes as usize,
                policy: tandem_upgrade::RolloutPolicy {
                    batch,
                    canary,
                    health_deadline,
                    max_failed,
                    // A revert adds no time to what the simulation counts.
                    auto_revert: false,
                    auto_promote,
                },
                boot,
                health,
                fail_rate,
                seed,
                runs: runs as usize,
            };
            Ok(simulate::run(&spec, json))
        }
        UpgradeCommand::Abort { target } => {
            let client = active_client(&api_client(&target)?).await?;
            // The abort takes no body.
            let answer: AbortAnswer = match refusal(client.post("/v1/upgrade/abort", &()).await)? {
                Ok(answer) => answer,
                Err(error) => {
                    eprintln!("tandem: abort: {error}");
                    return Ok(ExitCode::from(1));
                }
            };
            println!("{}", answer.abort);
            Ok(ExitCode::SUCCESS)
        }
        UpgradeCommand::Resume { target } => {
            let local = api_client(&target)?;
            let client = active_client(&local).await?;
            // The resume takes no body.
            let answer: ResumeAnswer = match refusal(client.post("/v1/upgrade/resume", &()).await)?
            {
                Ok(answer) => answer,
                Err(error) => {
                    eprintln!("tandem: resume: {error}");
                    return Ok(ExitCode::from(1));
                }
            };
            if !json {
                println!("{}", answer.resume);
            }
            // The copy followed may still show the pause for a moment: a
            // pause counts only once the rollout was seen going on (the
            // next hop's canaries pause again).
            follow_run(&local, json, AtPause::StopOnceMoved).await
        }
    }
}

/// The request for `upgrade plan|run`. Without a rollout knob it is what
/// it always was: `--batch 3` is the rolling strategy's batch, and
/// `--batch 30%` becomes one, resolved against the cluster's size now.
async fn request(
    upgrade: &UpgradeTarget,
    client: &ApiClient,
) -> anyhow::Result<RolloutUpgradeRequest> {
    let catalog = std::fs::read_to_string(&upgrade.catalog)
        .with_context(|| format!("cannot read catalog {}", upgrade.catalog.display()))?;
    let rollout = upgrade.rollout.policy(upgrade.batch);
    let batch = match (upgrade.batch, &rollout) {
        (None, _) | (Some(_), Some(_)) => None,
        (Some(Batch::Nodes(nodes)), None) => Some(nodes),
        (Some(share @ Batch::Percent(_)), None) => {
            let cluster = client.cluster().await.with_context(|| {
                format!("cannot read the cluster's size to turn --batch {share} into nodes: pass --batch N instead")
            })?;
            Some(share.nodes_of(cluster.nodes.len()))
        }
    };
    Ok(RolloutUpgradeRequest {
        upgrade: UpgradeRequest {
            to: upgrade.to.clone(),
            catalog,
            catalog_origin: Some(upgrade.catalog.display().to_string()),
            strategy: upgrade.strategy.clone(),
            batch,
            rollback: false,
        },
        rollout,
    })
}

/// The API of the node that is active now (the coordinator).
async fn active_client(local: &ApiClient) -> anyhow::Result<ApiClient> {
    let cluster = local.cluster().await?;
    cluster
        .nodes
        .iter()
        .filter_map(ClusterNode::report)
        .find(|report| report.node.effective_role == EffectiveRole::Active)
        .map(|report| local.at(report.agent.api))
        .context("no node is active: an upgrade needs an active node to coordinate it")
}

async fn submit(
    target: &ApiTarget,
    body: RolloutUpgradeRequest,
    yes: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let local = api_client(target)?;
    let coordinator = active_client(&local).await?;
    let planned = coordinator.post("/v1/upgrade/plan", &body).await;
    let plan: PlanAnswer = match refusal(planned)? {
        Ok(plan) => plan,
        Err(error) => {
            eprintln!("tandem: no plan: {error}");
            return Ok(ExitCode::from(1));
        }
    };
    if !json {
        print!("{}", plan.text);
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!("not a terminal: pass --yes to run the upgrade without confirmation");
        }
        eprint!("Run this upgrade? [y/N] ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !answer.trim().eq_ignore_ascii_case("y") {
            eprintln!("not started");
            return Ok(ExitCode::from(1));
        }
    }
    let started = coordinator
        .post::<_, PlanAnswer>("/v1/upgrade", &body)
        .await;
    if let Err(error) = refusal(started)? {
        eprintln!("tandem: upgrade refused: {error}");
        return Ok(ExitCode::from(1));
    }
    follow_run(&local, json, AtPause::Stop).await
}

/// Whether following a run in waves ends at the pause after its canaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AtPause {
    /// At any pause: `upgrade run` hands over to the operator there.
    Stop,
    /// Only at a pause after the rollout was seen going on: `upgrade
    /// resume` follows past the pause it lifted.
    StopOnceMoved,
}

/// Follows the replicated journal until the run ends, or pauses after its
/// canaries (exit 0: `tandem upgrade resume` goes on); Ctrl-C detaches.
async fn follow_run(client: &ApiClient, json: bool, at_pause: AtPause) -> anyhow::Result<ExitCode> {
    match follow_journal(client, json, at_pause).await? {
        None => {
            eprintln!(
                "detached; the upgrade goes on in the cluster: tandem upgrade status --follow"
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(run) => {
            if json {
                println!("{}", serde_json::to_string(&run)?);
            } else {
                print!("{}", describe(&run));
            }
            Ok(if run.status == RunStatus::Done || run.paused() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// Follows an upgrade to its end, with a progress bar on stderr unless
/// `quiet`, and returns its outcome in words (for the demo).
pub async fn follow(client: &ApiClient, quiet: bool) -> anyhow::Result<String> {
    match follow_journal(client, quiet, AtPause::Stop).await? {
        None => Ok("detached".into()),
        Some(run) => Ok(status_text(&run.status)),
    }
}

/// Polls the journal (every node has a copy) until the run is over, or
/// paused as `at_pause` says; `None` when Ctrl-C detached.
async fn follow_journal(
    client: &ApiClient,
    quiet: bool,
    at_pause: AtPause,
) -> anyhow::Result<Option<UpgradeRun>> {
    let mut moved = false;
    let bar = if quiet || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(1)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut last_line = String::new();
    // Bounded: an upgrade that runs for a day is followed with `status`.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(24 * 3600);
    while tokio::time::Instant::now() < give_up {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                bar.abandon();
                return Ok(None);
            }
            () = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
        let answer: UpgradeStatus = match client.get("/v1/upgrade").await {
            Ok(a) => a,
            Err(e) => {
                bar.set_message(format!("(the node is unreachable: {e})"));
                continue;
            }
        };
        let Some(run) = answer.run else {
            continue;
        };
        let track = run.current();
        let done = track
            .records
            .iter()
            .filter(|r| r.state == StepState::Done)
            .count();
        bar.set_length(track.records.len() as u64);
        bar.set_position(done as u64);
        let running = run
            .running_step()
            .and_then(|id| track.plan.step(id))
            .map(ToString::to_string);
        let line = match running {
            Some(step) => step,
            None if run.paused() => "paused after the canaries".to_string(),
            None => status_text(&run.status),
        };
        if line != last_line {
            if !quiet {
                bar.println(format!("  {line}"));
            }
            bar.set_message(line.clone());
            last_line = line;
        }
        let paused = run.paused();
        if run.status.is_finished() || paused && (at_pause == AtPause::Stop || moved) {
            bar.finish_and_clear();
            return Ok(Some(run));
        }
        moved |= !paused;
    }
    bail!("gave up following the upgrade after a day: see tandem upgrade status")
}

fn status_text(status: &RunStatus) -> String {
    match status {
        RunStatus::Running => "running".into(),
        RunStatus::Aborting => "aborting at the next safe point".into(),
        RunStatus::RollingBack { reason } => format!("rolling back: {reason}"),
        RunStatus::Done => "done: every node runs the target".into(),
        RunStatus::RolledBack { reason } => format!("rolled back: {reason}"),
        RunStatus::Stopped { message } => format!("stopped: {message}"),
    }
}

/// The journal as text: the outcome, the rollout when the run goes in
/// waves, and every step with its state and time.
fn describe(run: &UpgradeRun) -> String {
    let mut out = format!("upgrade: {}\n", status_text(&run.status));
    out.push_str(&rollout_text(run));
    for (title, track) in tracks(run) {
        out.push_str(&format!("{title} ({}):\n", track.plan.strategy));
        for (step, record) in track.plan.steps.iter().zip(&track.records) {
            let took = match (record.started_ms, record.finished_ms) {
                (Some(a), Some(b)) => format!(" ({} ms)", b.saturating_sub(a)),
                _ => String::new(),
            };
            let state = format!("{:?}", record.state).to_lowercase();
            out.push_str(&format!("  {state:<8} {step}{took}\n"));
            if let Some(detail) = &record.detail
                && record.state == StepState::Failed
            {
                out.push_str(&format!("           ! {detail}\n"));
            }
        }
    }
    out
}

/// Every track of the journal, titled, in the order they ran: the waves'
/// plans before the current one, the plan, the rollback.
fn tracks(run: &UpgradeRun) -> Vec<(&'static str, &tandem_upgrade::Track)> {
    let earlier = run.fleet.iter().flat_map(|f| f.earlier.iter());
    earlier
        .map(|t| ("wave", t))
        .chain(std::iter::once(("plan", &run.forward)))
        .chain(run.rollback.iter().map(|t| ("rollback", t)))
        .collect()
}

/// The rollout of a run in waves, as text: where it is, the failed nodes,
/// and each wave with its nodes' progress; empty for a run without one.
fn rollout_text(run: &UpgradeRun) -> String {
    let (Some(fleet), Some(rollout)) = (&run.fleet, run.rollout()) else {
        return String::new();
    };
    let status = if run.paused() {
        "paused after the canaries: check them, then `tandem upgrade resume`".to_string()
    } else {
        serde_json::to_value(rollout.status())
            .ok()
            .and_then(|v| v.get("status").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| format!("{:?}", rollout.status()))
    };
    let waves = rollout.waves();
    let mut out = format!(
        "rollout: {status}\n  hop {} of {} (to {}), wave {} of {}, {} failed (--max-failed {})\n",
        fleet.hop + 1,
        fleet.hops.len(),
        fleet
            .hops
            .get(fleet.hop)
            .map_or_else(String::new, |h| h.to.to_string()),
        (rollout.current_wave() + 1).min(waves.len()),
        waves.len(),
        rollout.failed(),
        rollout.policy().max_failed
    );
    for (i, wave) in waves.iter().enumerate() {
        let nodes: Vec<String> = wave
            .nodes
            .iter()
            .map(|n| match rollout.progress(n) {
                Some(NodeProgress::Failed { reason }) => format!("{n} failed ({reason})"),
                Some(progress) => serde_json::to_value(progress)
                    .ok()
                    .and_then(|v| {
                        v.get("progress")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    })
                    .map_or_else(|| n.clone(), |p| format!("{n} {p}")),
                None => n.clone(),
            })
            .collect();
        out.push_str(&format!(
            "  wave {} ({}): {}\n",
            i + 1,
            wave.kind,
            nodes.join(", ")
        ));
    }
    out
}

/// `tandem upgrade report`: what the journal says happened, when, and to
/// whom, with the client impact when one was measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The outcome in words.
    pub outcome: String,
    /// The strategy.
    pub strategy: String,
    /// The target release.
    pub target: String,
    /// The releases installed, hop by hop.
    pub path: Vec<String>,
    /// Every step of the plan (then of the rollback, if one ran).
    pub timeline: Vec<TimelineEntry>,
    /// From the first step's start to the last step's end, in ms.
    pub total_ms: u64,
    /// The release each node runs: as it reports now when it answered,
    /// else as the journal last saw it.
    pub versions: BTreeMap<String, String>,
    /// The measured client impact, when given.
    pub impact: Option<Value>,
}

/// One step in a [`Report`].
#[derive(Debug, Clone, Serialize)]
pub struct TimelineEntry {
    /// `wave` (an earlier wave of a rollout), `plan` or `rollback`.
    pub track: &'static str,
    /// The step's number.
    pub step: u32,
    /// What it does.
    pub what: String,
    /// pending, running, done, failed or skipped.
    pub state: String,
    /// When it started, in ms after the run's first step started.
    pub at_ms: Option<u64>,
    /// How long it took.
    pub took_ms: Option<u64>,
    /// Why it failed, or what it waited for.
    pub detail: Option<String>,
}

impl Report {
    /// Builds the report from the journal, the versions the nodes report
    /// now and an optional impact measurement.
    pub fn new(
        run: &UpgradeRun,
        versions_now: BTreeMap<String, String>,
        impact: Option<Value>,
    ) -> Report {
        let tracks = tracks(run);
        // Times in the journal are the coordinators' wall clocks (ms since
        // the epoch); the timeline counts from the first start.
        let first = tracks
            .iter()
            .flat_map(|(_, t)| t.records.iter().filter_map(|r| r.started_ms))
            .min();
        let last = tracks
            .iter()
            .flat_map(|(_, t)| t.records.iter().filter_map(|r| r.finished_ms))
            .max();
        let mut timeline = Vec::new();
        for (name, track) in &tracks {
            for (step, record) in track.plan.steps.iter().zip(&track.records) {
                timeline.push(TimelineEntry {
                    track: name,
                    step: step.id.0,
                    what: step.to_string(),
                    state: format!("{:?}", record.state).to_lowercase(),
                    at_ms: record
                        .started_ms
                        .zip(first)
                        .map(|(s, f)| s.saturating_sub(f)),
                    took_ms: record
                        .started_ms
                        .zip(record.finished_ms)
                        .map(|(s, f)| f.saturating_sub(s)),
                    detail: record.detail.clone(),
                });
            }
        }
        let mut versions: BTreeMap<String, String> = run
            .view
            .nodes
            .iter()
            .map(|n| (n.name.clone(), format!("{} (as last seen)", n.running)))
            .collect();
        versions.extend(versions_now);
        Report {
            outcome: status_text(&run.status),
            strategy: run.forward.plan.strategy.to_string(),
            target: run.forward.plan.target.to_string(),
            path: run
                .forward
                .plan
                .hops
                .iter()
                .map(|h| h.to.to_string())
                .collect(),
            timeline,
            total_ms: first.zip(last).map_or(0, |(f, l)| l.saturating_sub(f)),
            versions,
            impact,
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "upgrade to {} with {}: {}",
            self.target, self.strategy, self.outcome
        )?;
        writeln!(f, "path: {}", self.path.join(" → "))?;
        writeln!(
            f,
            "timeline ({:.1} s in all):",
            self.total_ms as f64 / 1000.0
        )?;
        let mut track = "";
        for entry in &self.timeline {
            if entry.track != track {
                track = entry.track;
                writeln!(f, "  {track}:")?;
            }
            let at = entry.at_ms.map_or_else(
                || "      -".to_string(),
                |ms| format!("{:>6.1}s", ms as f64 / 1000.0),
            );
            let took = entry
                .took_ms
                .map_or_else(String::new, |ms| format!("  ({ms} ms)"));
            writeln!(
                f,
                "  {at}  {:<8} {:>2}. {}{took}",
                entry.state, entry.step, entry.what
            )?;
            if entry.state == "failed"
                && let Some(detail) = &entry.detail
            {
                writeln!(f, "                     ! {detail}")?;
            }
        }
        writeln!(f, "versions:")?;
        for (node, version) in &self.versions {
            writeln!(f, "  {node:<10} {version}")?;
        }
        match &self.impact {
            Some(impact) => {
                writeln!(f, "client impact (measured):")?;
                for key in [
                    "sent",
                    "acknowledged",
                    "delivered",
                    "lost",
                    "duplicates",
                    "failed_sessions",
                    "max_gap_ms",
                    "failovers",
                    "queued_after",
                ] {
                    if let Some(value) = impact.get(key) {
                        writeln!(f, "  {key:<16} {value}")?;
                    }
                }
            }
            None => writeln!(
                f,
                "client impact: not measured here (pass --impact with the JSON of `tandem demo --json` or a benchmark)"
            )?,
        }
        Ok(())
    }
}

/// `node → version` from `GET /v1/cluster`, for the nodes that answered.
pub fn versions_now(cluster: &ClusterReport) -> BTreeMap<String, String> {
    cluster
        .nodes
        .iter()
        .filter_map(ClusterNode::report)
        .map(|report| (report.node.node.clone(), report.node.version.clone()))
        .collect()
}
