//! Cluster upgrades under postfix's own clients (issue 8): for each
//! strategy, `smtp-source` sends mail through the VIP(s) of a
//! `tandem demo --no-load` cluster whose relay hands it to `smtp-sink`,
//! while the cluster is upgraded 6.2.0 → 6.2.5. Clients and next hop that
//! tandem did not write are the honest judges of "no acknowledged message
//! lost" and "no failed session": our own load generator and sink share
//! our reading of SMTP, postfix's do not.
//!
//! ```text
//!   smtp-source ──► VIP(s) ──► tandem-mta relay (the upgraded service) ──► smtp-sink -d DUMP
//!   (runs of M messages,       (tandem demo --no-load --listen --relay-to)   (one file per
//!    recipients SEQ r RUN@…)                                                  transaction)
//! ```
//!
//! **What counts as acknowledged.** smtp-source prints nothing per message;
//! it exits 0 only when every message of the run got its 250, and exits
//! non-zero at the first failure of any session (a refused connection, a
//! 4xx, a reset), leaving the rest of that run unknown. So the load is many
//! short runs, each with its own recipient `rRUN@…`, which `-N` prefixes
//! with the message's sequence number (1..=M): a run that exited 0 had its
//! M messages `SEQrRUN@…` acknowledged, every one of which must appear in
//! smtp-sink's dump files (`X-Rcpt-Args:`). A run that failed proves
//! nothing about its messages, so they are not counted as acknowledged
//! (the test prints how many that leaves unverified); they may arrive or
//! not, as any SMTP client's unconfirmed message may. Short runs keep that
//! blind spot small. A message seen twice at the sink is a duplicate
//! (at-least-once delivery), printed, not a failure.
//!
//! **What each strategy must show.** All: the upgrade ends done with every
//! node on 6.2.5, and nothing acknowledged lost. `switchover` and `rolling`
//! promise no failed client session: every smtp-source run exits 0.
//! `holdoff` restarts the primary under the VIP and `active-active` moves
//! groups between nodes: failed runs are allowed there and printed, and
//! holdoff's outage window must be in the demo's report as a measured
//! figure consistent with the run (no timing is asserted: the machine
//! decides the figures).
//!
//! Skipped, saying why, when smtp-source or smtp-sink is missing (`.ci/run`
//! installs postfix). All traffic stays on 127.0.0.0/8; every loop is
//! bounded in count and time; the runs take turns (a lock), as in
//! `upgrade.rs`, so that clusters do not measure each other.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

const SMTP_SOURCE: &str = "/usr/sbin/smtp-source";
const SMTP_SINK: &str = "/usr/sbin/smtp-sink";

/// Messages per smtp-source run: small, so a failed run leaves few
/// messages unverified.
const RUN_MESSAGES: u32 = 10;
/// Parallel sessions per run.
const RUN_SESSIONS: u32 = 2;
/// The most runs per upgrade (bounds the messages: 200 × 10).
const MAX_RUNS: u32 = 200;
/// The longest the load may go on, whatever the demo says.
const MAX_LOAD: Duration = Duration::from_secs(120);
/// The longest one smtp-source run may take before it is killed (and
/// counted as failed).
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a whole demo may take before it is killed.
const DEMO_TIMEOUT: Duration = Duration::from_secs(300);

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Whether postfix's tools are here; says why not when they are not.
fn postfix_tools(test: &str) -> bool {
    for tool in [SMTP_SOURCE, SMTP_SINK] {
        if !Path::new(tool).exists() {
            println!("SKIP {test}: {tool} is missing (apt-get install postfix)");
            return false;
        }
    }
    true
}

/// A free TCP port on 127.0.0.1 (released before use: a small race that
/// local tests accept).
fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("read the local address")
}

/// Waits for `child` at most `within`; kills it after that. `None` when it
/// had to be killed.
fn wait_bounded(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// smtp-sink writing each transaction to a file in `dump`; killed on drop.
struct SmtpSink {
    child: Child,
}

impl SmtpSink {
    fn start(addr: SocketAddr, dump: &Path) -> SmtpSink {
        let mut command = Command::new(SMTP_SINK);
        // As root smtp-sink must be told whom to run as; it then writes the
        // dump files as that user (the dump dir is world-writable).
        // SAFETY: geteuid(2) has no preconditions and touches no memory.
        if unsafe { libc::geteuid() } == 0 {
            command.args(["-u", "nobody"]);
        }
        let child = command
            .arg("-d")
            .arg(dump.join("%H%M%S."))
            .arg(addr.to_string())
            .arg("256")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start smtp-sink");
        SmtpSink { child }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One smtp-source run and what it said.
#[derive(Debug)]
struct Run {
    /// Its number, in the recipient `rRUN@…`.
    id: u32,
    /// Whether smtp-source exited 0: every message got its 250.
    ok: bool,
    /// Whether it started after the upgrade had begun.
    during_upgrade: bool,
    /// When it ended, from the start of the load.
    ended_at: Duration,
    /// smtp-source's last words when it failed.
    reason: String,
}

/// One smtp-source run of [`RUN_MESSAGES`] messages to `vip`.
fn smtp_source(id: u32, vip: SocketAddr) -> (bool, String) {
    let spawned = Command::new(SMTP_SOURCE)
        .args(["-N", "-s", &RUN_SESSIONS.to_string()])
        .args(["-m", &RUN_MESSAGES.to_string(), "-l", "1024"])
        .args(["-f", "source@client.test", "-t"])
        .arg(format!("r{id}@dest.test"))
        .arg(vip.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return (false, format!("cannot run {SMTP_SOURCE}: {e}")),
    };
    // Its stderr is a line or two; read it after the exit.
    let status = wait_bounded(&mut child, RUN_TIMEOUT);
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    match status {
        Some(s) if s.success() => (true, String::new()),
        Some(s) => (false, format!("{s}: {}", stderr.trim())),
        None => (false, format!("killed after {} s", RUN_TIMEOUT.as_secs())),
    }
}

/// Recipients `SEQrRUN@…` found in smtp-sink's dump files, with how many
/// times each arrived.
fn delivered(dump: &Path) -> BTreeMap<(u32, u32), u32> {
    let mut seen = BTreeMap::new();
    for entry in std::fs::read_dir(dump)
        .expect("read the dump dir")
        .flatten()
    {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for rcpt in text
            .lines()
            .filter_map(|l| l.strip_prefix("X-Rcpt-Args: <"))
        {
            let digits = rcpt.chars().take_while(char::is_ascii_digit).count();
            let run = rcpt[digits..]
                .strip_prefix('r')
                .and_then(|rest| rest.split('@').next())
                .and_then(|run| run.parse::<u32>().ok());
            if let (Ok(seq), Some(run)) = (rcpt[..digits].parse::<u32>(), run) {
                *seen.entry((run, seq)).or_insert(0) += 1;
            }
        }
    }
    seen
}

/// What one upgrade under smtp-source showed.
struct Outcome {
    /// The demo's JSON report.
    report: Value,
    /// Every smtp-source run.
    runs: Vec<Run>,
    /// Acknowledged messages (in runs that exited 0).
    acknowledged: usize,
    /// Acknowledged messages missing at smtp-sink, as `SEQrRUN`.
    lost: Vec<String>,
    /// Extra copies at smtp-sink.
    duplicates: u32,
}

impl Outcome {
    fn failed_runs(&self) -> Vec<&Run> {
        self.runs.iter().filter(|r| !r.ok).collect()
    }
}

/// Runs `tandem --json demo --no-load ARGS` with smtp-source sending
/// through its VIP(s) to smtp-sink from the moment every node serves until
/// the upgrade is over, and gathers what happened.
fn upgrade_under_smtp_source(args: &[&str]) -> Outcome {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("create a temp dir");
    let dump = dir.path().join("dump");
    std::fs::create_dir(&dump).expect("create the dump dir");
    // smtp-sink writes as `nobody`: it must reach and write the dump dir.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the temp dir");
    std::fs::set_permissions(&dump, std::fs::Permissions::from_mode(0o777))
        .expect("chmod the dump dir");
    let sink_addr = free_addr();
    let _sink = SmtpSink::start(sink_addr, &dump);
    let vip = free_addr();

    let (vip_s, sink_s) = (vip.to_string(), sink_addr.to_string());
    let mut demo = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["--json", "demo"])
        .args(args)
        .args(["--no-load", "--listen", &vip_s, "--relay-to", &sink_s])
        // Load before the upgrade starts, and time after it for the last
        // run to finish before the cluster stops.
        .args(["--start-delay", "2", "--linger", "3"])
        .env_remove("TANDEM_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tandem demo");

    // The demo's progress lines (stderr, with --json too under --no-load)
    // say when to start and stop; stdout is the report.
    let (lines_tx, lines) = mpsc::channel::<String>();
    let stderr = demo.stderr.take().expect("take the demo's stderr");
    let progress = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line.clone());
            all.push(line);
        }
        all
    });
    let mut stdout = demo.stdout.take().expect("take the demo's stdout");
    let report_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });

    let started = Instant::now();
    let next_line = |until: Instant| -> Option<String> {
        let left = until.checked_duration_since(Instant::now())?;
        lines.recv_timeout(left).ok()
    };
    // "demo: N nodes (...) up on loopback; VIP A B ; next hop X"
    let mut vips: Vec<SocketAddr> = Vec::new();
    let mut serving = false;
    while let Some(line) = next_line(started + DEMO_TIMEOUT) {
        if let Some((_, rest)) = line.split_once(" VIP ") {
            vips = rest
                .split_whitespace()
                .take_while(|w| *w != ";")
                .filter_map(|w| w.parse().ok())
                .collect();
        }
        if line.starts_with("demo: every node runs") {
            serving = true;
            break;
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let upgrading = Arc::new(AtomicBool::new(false));
    let mut runs = Vec::new();
    if serving && !vips.is_empty() {
        assert_eq!(vips[0], vip, "the demo serves the VIP it was given");
        let sender = {
            let (stop, upgrading, vips) = (stop.clone(), upgrading.clone(), vips.clone());
            std::thread::spawn(move || {
                let began = Instant::now();
                let mut runs = Vec::new();
                for id in 0..MAX_RUNS {
                    if stop.load(Ordering::Relaxed) || began.elapsed() > MAX_LOAD {
                        break;
                    }
                    let during_upgrade = upgrading.load(Ordering::Relaxed);
                    // Turn about to each VIP (one per failover group).
                    let (ok, reason) = smtp_source(id, vips[id as usize % vips.len()]);
                    runs.push(Run {
                        id,
                        ok,
                        during_upgrade,
                        ended_at: began.elapsed(),
                        reason,
                    });
                    std::thread::sleep(Duration::from_millis(50));
                }
                runs
            })
        };
        // "demo: upgrading ..." then "demo: upgrade: <outcome>".
        while let Some(line) = next_line(started + DEMO_TIMEOUT) {
            if line.starts_with("demo: upgrading") {
                upgrading.store(true, Ordering::Relaxed);
            }
            if line.starts_with("demo: upgrade: ") {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        runs = sender.join().expect("join the sender thread");
    }
    let status = wait_bounded(&mut demo, DEMO_TIMEOUT.saturating_sub(started.elapsed()));
    let stdout = report_reader.join().unwrap_or_default();
    let stderr = progress.join().unwrap_or_default().join("\n");
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("parse the report as JSON: {e:#}\n{stdout}\n{stderr}"));
    assert!(
        serving,
        "the demo never said every node serves (VIPs {vips:?}):\n{stderr}"
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "demo {args:?} failed ({status:?}): {report}\n{stderr}"
    );

    // Every message of every run that exited 0 must be at the sink. The
    // demo waited for every spool to empty before it stopped the cluster,
    // so what is not in the dump now never will be.
    let seen = delivered(&dump);
    let mut acknowledged = 0;
    let mut lost = Vec::new();
    for run in runs.iter().filter(|r| r.ok) {
        for seq in 1..=RUN_MESSAGES {
            acknowledged += 1;
            if !seen.contains_key(&(run.id, seq)) {
                lost.push(format!("{seq}r{}", run.id));
            }
        }
    }
    let duplicates = seen.values().map(|n| n - 1).sum();
    let outcome = Outcome {
        report,
        runs,
        acknowledged,
        lost,
        duplicates,
    };
    // The figures, for whoever reads the test output.
    let mut figures = outcome.report.clone();
    if let Some(map) = figures.as_object_mut() {
        map.remove("report");
    }
    let failed = outcome.failed_runs();
    println!(
        "demo {}: smtp-source runs {} ({} during the upgrade), failed {}, acknowledged {}, \
         unverified (in failed runs) {}, at smtp-sink {}, lost {}, duplicates {}; demo: {figures}",
        args.join(" "),
        outcome.runs.len(),
        outcome.runs.iter().filter(|r| r.during_upgrade).count(),
        failed.len(),
        outcome.acknowledged,
        failed.len() as u32 * RUN_MESSAGES,
        seen.len(),
        outcome.lost.len(),
        outcome.duplicates,
    );
    // The demo's progress, where it says which node did what when.
    println!("{stderr}");
    for run in &failed {
        println!(
            "  run {} failed at {:.2} s: {}",
            run.id,
            run.ended_at.as_secs_f64(),
            run.reason
        );
    }
    outcome
}

/// What every strategy must show: the load overlapped the upgrade, the
/// upgrade ended with every node on 6.2.5, and every message smtp-source
/// got a 250 for reached smtp-sink.
fn upgraded_and_nothing_lost(outcome: &Outcome, nodes: usize) {
    let report = &outcome.report;
    assert!(
        report["outcome"]
            .as_str()
            .is_some_and(|o| o.starts_with("done")),
        "{report}"
    );
    let versions = report["versions_after"]
        .as_object()
        .unwrap_or_else(|| panic!("no versions: {report}"));
    assert_eq!(versions.len(), nodes, "{report}");
    for (node, v) in versions {
        assert_eq!(v, "6.2.5", "{node} ends on {v}: {report}");
    }
    assert!(
        outcome.runs.iter().any(|r| r.during_upgrade),
        "no smtp-source run overlapped the upgrade: {:?}",
        outcome.runs
    );
    assert!(outcome.acknowledged > 0, "no message was acknowledged");
    assert!(
        outcome.lost.is_empty(),
        "acknowledged by the cluster but never at smtp-sink: {:?}",
        outcome.lost
    );
    // `queued_after` (spool files left when the demo stopped) is printed
    // with the figures, not asserted: an acknowledged message left there
    // undelivered shows above as lost, and a left-over copy of one that was
    // delivered is a duplicate in waiting, not a loss (seen about once in
    // 80 release switchover demos on a busy machine; cause not yet found).
}

/// No smtp-source run failed: every session of every run was served.
fn no_failed_session(outcome: &Outcome) {
    let failed: Vec<String> = outcome
        .failed_runs()
        .iter()
        .map(|r| format!("run {}: {}", r.id, r.reason))
        .collect();
    assert!(failed.is_empty(), "failed smtp-source runs: {failed:#?}");
}

#[test]
fn switchover_under_smtp_source_loses_nothing_and_fails_no_session() {
    if !postfix_tools("switchover_under_smtp_source_loses_nothing_and_fails_no_session") {
        return;
    }
    let outcome = upgrade_under_smtp_source(&["--strategy", "switchover"]);
    upgraded_and_nothing_lost(&outcome, 2);
    no_failed_session(&outcome);
    assert!(
        outcome.report["failovers"].as_u64().unwrap_or(0) >= 1,
        "the switchover moved the VIP: {}",
        outcome.report
    );
}

#[test]
fn rolling_on_three_nodes_under_smtp_source_loses_nothing_and_fails_no_session() {
    if !postfix_tools("rolling_on_three_nodes_under_smtp_source_loses_nothing_and_fails_no_session")
    {
        return;
    }
    let outcome = upgrade_under_smtp_source(&["--strategy", "rolling", "--nodes", "3"]);
    assert_eq!(outcome.report["mode"], "config-only", "{}", outcome.report);
    upgraded_and_nothing_lost(&outcome, 3);
    no_failed_session(&outcome);
}

#[test]
fn holdoff_under_smtp_source_loses_nothing_and_reports_its_outage() {
    if !postfix_tools("holdoff_under_smtp_source_loses_nothing_and_reports_its_outage") {
        return;
    }
    let outcome = upgrade_under_smtp_source(&["--strategy", "holdoff"]);
    upgraded_and_nothing_lost(&outcome, 2);
    let report = &outcome.report;
    // The outage window is what the demo's prober measured (the longest
    // gap between two greetings on the VIP): present, and consistent with
    // the run it was measured in — not negative, and no longer than the
    // whole demo. Its size is the machine's, printed above, not asserted.
    let gap_ms = report["max_gap_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("no outage figure (max_gap_ms): {report}"));
    let duration_ms = report["duration_s"]
        .as_f64()
        .unwrap_or_else(|| panic!("no duration: {report}"))
        * 1000.0;
    assert!(
        gap_ms.is_finite() && gap_ms >= 0.0 && gap_ms <= duration_ms,
        "outage {gap_ms} ms in a demo of {duration_ms} ms: {report}"
    );
    // Roles never move under holdoff: whatever outage there was is the
    // primary restarting in place, not a failover.
    assert_eq!(report["failovers"], 0, "{report}");
    let timeline = report["report"]["timeline"]
        .as_array()
        .unwrap_or_else(|| panic!("no timeline: {report}"));
    assert!(
        timeline.iter().any(
            |s| s["what"].as_str().is_some_and(|w| w.contains("holdoff"))
                && s["state"] == "done"
                && s["took_ms"].is_number()
        ),
        "the holdoff step, done and timed: {report}"
    );
}

#[test]
fn active_active_under_smtp_source_loses_nothing() {
    if !postfix_tools("active_active_under_smtp_source_loses_nothing") {
        return;
    }
    let outcome = upgrade_under_smtp_source(&["--strategy", "active-active"]);
    assert_eq!(
        outcome.report["mode"], "active-active",
        "{}",
        outcome.report
    );
    upgraded_and_nothing_lost(&outcome, 2);
    assert!(
        outcome.report["failovers"].as_u64().unwrap_or(0) >= 2,
        "the groups moved away and back: {}",
        outcome.report
    );
    // Both groups' VIPs carried mail: every other run went to the second.
    assert!(
        outcome.runs.iter().any(|r| r.ok && r.id % 2 == 1),
        "no run through the second group's VIP succeeded: {:?}",
        outcome.runs
    );
}
