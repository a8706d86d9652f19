//! The `partition` fault of `tandem bench failover --coordination etcd`:
//! the active is cut from its peer and from etcd, on a real network.
//!
//! Loopback cannot cut one node off, so this fault runs in network
//! namespaces ([`crate::netns`]): a pair of agents in `ip` VIP mode on a
//! bridge (n1 the primary, n2 the secondary), the benchmark's name service
//! as their service, and `coordination = "etcd"` with a one-member etcd,
//! the witness, in a third namespace. Each run waits for n1 active and n2
//! standby, then isolates n1 (blackhole routes: n1 reaches neither n2 nor
//! the witness, and neither reaches it) and probes the VIP every 2 ms from
//! inside each node's namespace. Inside a namespace the VIP answers only
//! when that node holds it and its service accepts: the other node's
//! answers are cut off too. The run ends some time after n2 first answered
//! and n1 last did, and the routes are removed (healed) for the next run.
//!
//! What a run measures, all from the moment the first route is added (the
//! four routes take a few ms):
//! - the gap: until n2's first answered probe;
//! - `failed_connects`: probes from n2's side that got no answer. Until
//!   the takeover all of them fail (n1, who serves, is out of their
//!   reach), so this counts the gap in probes, plus any failure after it;
//! - `dual_active_ms`: the time during which both nodes *answered*, each
//!   node's state between two of its probes taken to be that of the
//!   earlier one (so its resolution is the probe period). Which node held
//!   the VIP address is not sampled: an address without a service
//!   accepting behind it serves no one;
//! - `lost`: probes that n1 answered and that started after n2 had first
//!   answered. n2 serves only once it holds the leader key at etcd, so by
//!   then n1 no longer held it: a client's write taken there would be
//!   taken by a node that no longer held the key, invisible to the one
//!   that does. The name service keeps no state, so this counts the
//!   answers that would have been such writes; it is a lower bound (the
//!   key moved somewhat before n2's first answer).
//!
//! After a heal n1 should find etcd again, start a new session and, as the
//! primary with `preempt`, take the service back. If it has not within
//! 10 s (an agent whose lease ended while it was cut off can go on renewing
//! the dead lease), its agent is restarted so the next run starts from a
//! settled pair; the row's `restarts` counts those heals.
//!
//! Needs root and `ip netns`; without them the fault is skipped, and the
//! report says why.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use tandem_agent::api::ApiClient;
use tandem_core::EffectiveRole;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::bench::{INTERVAL_MS, LOST_THRESHOLD, Probe, RUN_LIMIT, probe_loop, random_below};
use crate::netns::{self, Lab};

/// The agents' API port, on each node's own address.
const API_PORT: u16 = 7401;
/// The heartbeat link's port (UDP).
const LINK_PORT: u16 = 7501;
/// The crash-detection (sync) port.
const SYNC_PORT: u16 = 7601;
/// The name service's port on the VIP.
const SERVICE_PORT: u16 = 7000;
/// How long the pair may take to settle with n1 active and n2 standby:
/// at the start, and after each heal (n1 takes the service back, as the
/// primary with `preempt`).
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
/// How long n1 may take, after a heal, to take the service back by
/// itself before its agent is restarted.
const RECOVER_LIMIT: Duration = Duration::from_secs(10);
/// How long both sides keep probing after the takeover and after n1's
/// last answer, to catch late answers from n1.
const TAIL: Duration = Duration::from_millis(300);

/// The partition fault's figures over all runs.
pub struct PartitionFigures {
    /// Each run's gap, in ms.
    pub gaps: Vec<f64>,
    /// Probes from n2's side, after the cut, that got no answer.
    pub failed_connects: u64,
    /// The longest time, over the runs, during which both nodes answered.
    pub dual_active_ms: f64,
    /// Answers given by n1 after n2 had taken over, over all runs.
    pub lost: u64,
    /// Heals after which n1's agent had to be restarted to serve again.
    pub restarts: u64,
}

/// Runs the partition fault `runs` times; `Ok(Err(reason))` when it
/// cannot run here (not root, no `ip netns`, no etcd). Progress goes to
/// stderr unless `quiet`. Blocking: call it off the async runtime.
pub fn run(
    runs: usize,
    exe: &Path,
    quiet: bool,
) -> anyhow::Result<Result<PartitionFigures, String>> {
    let dir = tempfile::tempdir().context("cannot create a directory for the partition lab")?;
    let mut lab = match Lab::new("b") {
        Ok(lab) => lab,
        Err(reason) => return Ok(Err(format!("{reason:#}"))),
    };
    if let Err(reason) = lab.start_etcd(dir.path()) {
        return Ok(Err(format!("{reason:#}")));
    }
    let mut pair = Pair::start(lab, dir.path(), exe)?;
    let mut figures = PartitionFigures {
        gaps: Vec::new(),
        failed_connects: 0,
        dual_active_ms: 0.0,
        lost: 0,
        restarts: 0,
    };
    for run in 0..runs {
        let measured = pair
            .one_run()
            .with_context(|| format!("partition run {}/{runs}", run + 1))
            .map_err(|e| anyhow::anyhow!("{e:#}\n{}", pair.log_tails()))?;
        if !quiet {
            let stood_down = measured
                .stood_down_ms
                .map_or("n1 did not answer after the cut".into(), |ms| {
                    format!("n1 last answered {ms:.1} ms after the cut")
                });
            eprintln!(
                "partition run {}/{runs}: {stood_down}, n2 first {:.1} ms after it; \
                 {} failed connects, both answered {:.1} ms, lost {}",
                run + 1,
                measured.gap_ms,
                measured.failed_connects,
                measured.both_ms,
                measured.lost
            );
            if measured.n1_still_answering {
                eprintln!(
                    "partition run {}/{runs}: n1 still answered when probing stopped",
                    run + 1
                );
            }
        }
        figures.gaps.push(measured.gap_ms);
        figures.failed_connects += measured.failed_connects;
        figures.dual_active_ms = figures.dual_active_ms.max(measured.both_ms);
        figures.lost += measured.lost;
        pair.lab
            .heal()
            .context("cannot heal the partition between runs")?;
        // n1 should find etcd again, start a new session and, as the
        // primary, take the service back. An agent whose lease ended while
        // it was cut off may instead keep renewing the dead lease ("lease
        // not found") and never serve again: then it is restarted, so the
        // next run starts from a settled pair, and the note says so.
        if run + 1 < runs && pair.wait_settled(RECOVER_LIMIT).is_err() {
            if !quiet {
                eprintln!(
                    "partition run {}/{runs}: n1 did not take the service back within {} s of the heal \
                     (its etcd session did not recover); restarting its agent",
                    run + 1,
                    RECOVER_LIMIT.as_secs()
                );
            }
            figures.restarts += 1;
            pair.restart_agent(1)?;
        }
    }
    Ok(Ok(figures))
}

/// What one run measured (see the module's doc).
struct RunFigures {
    gap_ms: f64,
    /// n1's last answer after the cut, if it answered at all.
    stood_down_ms: Option<f64>,
    failed_connects: u64,
    both_ms: f64,
    lost: u64,
    /// n1 answered until the probes ended: the overlap may be longer.
    n1_still_answering: bool,
}

/// The two agents in their namespaces; killed on drop, before the lab
/// (with the witness and the namespaces) goes.
struct Pair {
    /// n1's and n2's agents, while they run.
    agents: [Option<Child>; 2],
    /// Their configs.
    configs: [PathBuf; 2],
    /// Their logs (appended to across restarts), for the error when a run
    /// fails.
    logs: [PathBuf; 2],
    /// The tandem binary the agents run.
    exe: PathBuf,
    token: String,
    lab: Lab,
}

impl Pair {
    /// Writes both configs under `dir`, starts both agents and waits until
    /// n1 serves with n2 standby.
    fn start(lab: Lab, dir: &Path, exe: &Path) -> anyhow::Result<Pair> {
        let token = random_hex(48);
        write_private(&dir.join("api.token"), &token)?;
        write_private(&dir.join("cluster.key"), &random_hex(32))?;
        let mut pair = Pair {
            agents: [None, None],
            configs: [dir.join("n1.toml"), dir.join("n2.toml")],
            logs: [dir.join("n1.log"), dir.join("n2.log")],
            exe: exe.to_path_buf(),
            token,
            lab,
        };
        for n in [1u8, 2] {
            let config = &pair.configs[usize::from(n - 1)];
            std::fs::write(config, config_text(dir, exe, n))
                .with_context(|| format!("cannot write {}", config.display()))?;
            pair.start_agent(n)?;
        }
        pair.wait_settled(SETTLE_LIMIT)
            .map_err(|e| anyhow::anyhow!("{e:#}\n{}", pair.log_tails()))?;
        Ok(pair)
    }

    /// Starts node `n`'s agent in its namespace.
    fn start_agent(&mut self, n: u8) -> anyhow::Result<()> {
        let i = usize::from(n - 1);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.logs[i])
            .with_context(|| format!("cannot open {}", self.logs[i].display()))?;
        let child = self
            .lab
            .command(&format!("n{n}"), &self.exe)
            .arg("agent")
            .arg("--config")
            .arg(&self.configs[i])
            .env_remove("TANDEM_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start n{n}'s agent ({})", self.exe.display()))?;
        self.agents[i] = Some(child);
        Ok(())
    }

    /// kill -9 of node `n`'s agent and a new one in its place (with a new
    /// etcd session).
    fn restart_agent(&mut self, n: u8) -> anyhow::Result<()> {
        if let Some(mut agent) = self.agents[usize::from(n - 1)].take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        self.start_agent(n)
    }

    /// Node `n`'s role as its own API reports it, asked inside its
    /// namespace; `None` when it does not answer.
    fn role(&self, n: u8) -> Option<EffectiveRole> {
        let api = SocketAddr::from((netns::node_address(n), API_PORT));
        let token = self.token.clone();
        let asked = netns::in_netns(&self.lab.ns(&format!("n{n}")), move || {
            // A runtime of this thread's own: the client's sockets are
            // made here, inside the namespace.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            let client = ApiClient::new(api, token).ok()?;
            runtime
                .block_on(client.status())
                .ok()
                .map(|s| s.node.effective_role)
        });
        asked.ok().flatten()
    }

    /// Waits up to `within` until n1 is active and n2 standby.
    fn wait_settled(&self, within: Duration) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        loop {
            let roles = (self.role(1), self.role(2));
            if roles == (Some(EffectiveRole::Active), Some(EffectiveRole::Standby)) {
                return Ok(());
            }
            if started.elapsed() > within {
                bail!(
                    "the pair did not settle with n1 active and n2 standby within {} s \
                     (n1 {:?}, n2 {:?})",
                    within.as_secs(),
                    roles.0,
                    roles.1
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One run: settle, isolate n1 while probing from both sides, measure.
    /// Leaves the cut in place (the caller heals).
    fn one_run(&mut self) -> anyhow::Result<RunFigures> {
        self.wait_settled(SETTLE_LIMIT)?;
        // Start at a random phase of the heartbeat cycle and of the
        // session's renewals.
        std::thread::sleep(Duration::from_millis(300 + random_below(INTERVAL_MS)));
        let vip = SocketAddr::from((netns::VIP_ADDRESS, SERVICE_PORT));
        let running = Arc::new(AtomicBool::new(true));
        let sides = [
            Arc::new(Mutex::new(Vec::<Probe>::new())),
            Arc::new(Mutex::new(Vec::<Probe>::new())),
        ];
        let mut probers = Vec::new();
        for (n, probes) in [1u8, 2].into_iter().zip(&sides) {
            let ns = self.lab.ns(&format!("n{n}"));
            let (probes, running) = (probes.clone(), running.clone());
            probers.push(std::thread::spawn(move || {
                netns::in_netns(&ns, move || {
                    // Tasks of a current-thread runtime run on this thread,
                    // so every probe's socket is made inside the namespace.
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("cannot build a runtime for the prober")?;
                    runtime.block_on(probe_loop(vip, probes, running));
                    anyhow::Ok(())
                })
            }));
        }
        std::thread::sleep(Duration::from_millis(50));

        let cut = Instant::now();
        let isolated = self.lab.isolate(1).context("cannot isolate n1");
        let takeover = isolated.and_then(|()| wait_for_takeover(&sides[1], cut));
        // Keep probing until n1 has been silent for a while, within the
        // probers' own limit.
        let mut n1_still_answering = false;
        if let Ok(takeover) = takeover {
            loop {
                let last_n1 = last_answer(&sides[0].blocking_lock(), "n1", cut);
                let quiet_since = last_n1.map_or(takeover, |at| at.max(takeover));
                if quiet_since.elapsed() >= TAIL {
                    break;
                }
                if cut.elapsed() > RUN_LIMIT {
                    n1_still_answering = last_n1.is_some_and(|at| at.elapsed() < TAIL);
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        running.store(false, Ordering::Relaxed);
        for prober in probers {
            match prober.join() {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e)) | Err(e)) => return Err(e),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        let takeover = takeover?;

        let n1 = sides[0].blocking_lock();
        let n2 = sides[1].blocking_lock();
        let stood_down = last_answer(&n1, "n1", cut);
        let failed_connects = n2
            .iter()
            .filter(|p| p.started >= cut && p.answered_by.is_none())
            .count() as u64;
        let lost = n1
            .iter()
            .filter(|p| p.started >= takeover && p.answered_by.as_deref() == Some("n1"))
            .count() as u64;
        Ok(RunFigures {
            gap_ms: ms(takeover.duration_since(cut)),
            stood_down_ms: stood_down.map(|at| ms(at.duration_since(cut))),
            failed_connects,
            both_ms: ms(both_answered(&n1, &n2, cut)),
            lost,
            n1_still_answering,
        })
    }

    /// The last lines of both agents' logs, for an error (the logs go with
    /// the lab's directory).
    fn log_tails(&self) -> String {
        let mut text = String::from("the agents' logs end:");
        for log in &self.logs {
            let content = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = content.lines().collect();
            let from = lines.len().saturating_sub(15);
            text.push_str(&format!(
                "\n--- {}\n{}",
                log.display(),
                lines[from..].join("\n")
            ));
        }
        text
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // `ip netns exec` execs the agent: this pid is the agent's, and
        // its service dies with it.
        for mut agent in self.agents.iter_mut().filter_map(Option::take) {
            let _ = agent.kill();
            let _ = agent.wait();
        }
    }
}

/// Waits until n2's side has an answered probe started after the cut;
/// the end of the first such probe is the takeover.
fn wait_for_takeover(n2: &Mutex<Vec<Probe>>, cut: Instant) -> anyhow::Result<Instant> {
    loop {
        let first = n2
            .blocking_lock()
            .iter()
            .filter(|p| p.started >= cut && p.answered_by.as_deref() == Some("n2"))
            .map(|p| p.finished)
            .min();
        if let Some(at) = first {
            return Ok(at);
        }
        if cut.elapsed() > RUN_LIMIT {
            bail!(
                "n2 did not answer on the VIP within {} s of n1's isolation",
                RUN_LIMIT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The end of the last probe `name` answered that started after `from`.
fn last_answer(probes: &[Probe], name: &str, from: Instant) -> Option<Instant> {
    probes
        .iter()
        .filter(|p| p.started >= from && p.answered_by.as_deref() == Some(name))
        .map(|p| p.finished)
        .max()
}

/// How long, from `from` to the last probe, n1 (probes `n1`, answered
/// "n1") and n2 (probes `n2`, answered "n2") both answered. Each side's
/// state between two of its probes is that of the earlier one's answer.
fn both_answered(n1: &[Probe], n2: &[Probe], from: Instant) -> Duration {
    let mut changes: Vec<(Instant, usize, bool)> = n1
        .iter()
        .map(|p| (p.started, 0, p.answered_by.as_deref() == Some("n1")))
        .chain(
            n2.iter()
                .map(|p| (p.started, 1, p.answered_by.as_deref() == Some("n2"))),
        )
        .collect();
    changes.sort_by_key(|change| change.0);
    let mut answering = [false, false];
    let mut since = from;
    let mut total = Duration::ZERO;
    for (at, side, answered) in changes {
        if at > since {
            if answering == [true, true] {
                total += at - since;
            }
            since = at;
        }
        answering[side] = answered;
    }
    total
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Node `n`'s config: `ip` VIP mode on the bridge, the name service on
/// the VIP, etcd at the witness.
fn config_text(dir: &Path, exe: &Path, n: u8) -> String {
    let me = netns::node_address(n);
    let (peer_n, priority, role) = if n == 1 {
        (2, 200, "primary")
    } else {
        (1, 100, "secondary")
    };
    let peer = netns::node_address(peer_n);
    let path = |name: &str| format!("{:?}", dir.join(name).display().to_string());
    let service = format!("{:?}", exe.display().to_string());
    let vip = netns::VIP_ADDRESS;
    let endpoint = netns::ETCD_ENDPOINT;
    format!(
        r#"[node]
name = "n{n}"
priority = {priority}
role = "{role}"
state_dir = {state}
api = "{me}:{API_PORT}"
sync = "{me}:{SYNC_PORT}"
token_file = {token}

[cluster]
name = "bench-partition"
key_file = {key}
interval = "{INTERVAL_MS}ms"
lost_threshold = {LOST_THRESHOLD}
preempt = true
coordination = "etcd"

[[link]]
name = "eth0"
listen = "{me}:{LINK_PORT}"

[[peer]]
name = "n{peer_n}"
links = ["{peer}:{LINK_PORT}"]
sync = "{peer}:{SYNC_PORT}"
api = "{peer}:{API_PORT}"

[vip]
mode = "ip"
interface = "eth0"
address = "{vip}/24"
listen = ["{vip}:{SERVICE_PORT}"]

[service]
command = [{service}, "bench", "name-service"]
grace = "10s"

[etcd]
endpoints = ["{endpoint}"]
ttl = "2s"
"#,
        state = path(&format!("state-n{n}")),
        token = path("api.token"),
        key = path("cluster.key"),
    )
}

/// `len` random hex digits.
fn random_hex(len: usize) -> String {
    (0..len)
        .map(|_| char::from_digit(random_below(16) as u32, 16).unwrap_or('0'))
        .collect()
}

/// Writes a secret readable by its owner only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))
}
