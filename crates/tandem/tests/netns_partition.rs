//! Issue 14 on a real network: a healed partition must not delete the
//! loser's acknowledged mail.
//!
//! A pair of agents in `ip` VIP mode, each in its own network namespace,
//! with `[sync]` (`data_sync = "semi"`, `sync_mode = "degrade"`) and the
//! reference relay as the service; the next hop lives in a third namespace.
//!
//! ```text
//!   n1 198.18.0.1 ─┐
//!   n2 198.18.0.2 ─┼─ br0 (bridge namespace)      VIP 198.18.0.100/24
//!   c  198.18.0.10 ┘  (the next hop, :2526)
//! ```
//!
//! The nodes are cut from each other (blackhole routes; `c` still reaches
//! both) long enough for the TLS sync connection to break
//! (`tcp_retries2 = 3` in both nodes). Both become active and both
//! acknowledge mail while the next hop is down, so every message stays
//! queued where it was taken. The partition heals, one node steps down and
//! is caught up by the other: its acknowledged messages, which the winner
//! never saw, must go to `STATE_DIR/quarantine/` and (`merge_quarantine`,
//! the default) back to the winner, whose relay delivers them. Then the
//! next hop comes up and the test counts acknowledged against delivered.
//!
//! `tandem mta load` and `tandem mta sink` accept loopback addresses only,
//! so the clients and the sink are the same library code run in this
//! process, on threads moved into the namespaces with `setns(2)`; the API
//! is asked the same way (plain HTTP, no `curl` needed).
//!
//! Needs root and `ip netns`; prints `SKIP: <reason>` and passes otherwise.
//! The namespaces, cuts and witness are `tandem::netns` (shared with
//! `tandem bench failover --coordination etcd`); they are named
//! `tdmTAG-<pid>-*` (one tag per test) and deleted by a guard's `Drop`.
//! 198.18.0.0/24 is a benchmarking range that is never routed, and the
//! namespaces have no link to the host's network.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem::netns;
use tandem_mta::Listen;
use tandem_mta::client::Client;
use tandem_mta::sink::{Sink, SinkReport};

const EXE: &str = env!("CARGO_BIN_EXE_tandem");
const TOKEN: &str = "netns-partition-test-token-0123456789";
const VIP: &str = "198.18.0.100:2525";
const NEXT_HOP: &str = "198.18.0.10:2526";
/// Messages each side acknowledges during the partition.
const PER_SIDE: u64 = 20;

fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) -> String {
    run(args).expect("run a command")
}

/// Runs `f` on a thread moved into network namespace `ns`: every socket
/// it creates lives there (and stays there, whichever thread uses it).
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    netns::in_netns(ns, f).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The namespaces ([`netns::Lab`]) and the agents in them; on drop the
/// agents are killed first (their logs' tails printed first if the test
/// is failing), then the namespaces deleted.
struct Lab {
    net: netns::Lab,
    agents: Vec<Option<Child>>,
    logs: Vec<PathBuf>,
}

impl Lab {
    fn ns(&self, name: &str) -> String {
        self.net.ns(name)
    }

    /// `tag` keeps the namespaces of tests running side by side apart.
    fn new(dir: &Path, tag: &str) -> Result<Lab, String> {
        let net = netns::Lab::new(tag).map_err(|e| format!("{e:#}"))?;
        Ok(Lab {
            net,
            agents: vec![None, None],
            logs: vec![dir.join("n1.log"), dir.join("n2.log")],
        })
    }

    fn start(&mut self, i: usize, dir: &Path) {
        let config = dir.join(format!("n{}.toml", i + 1));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.logs[i])
            .expect("open the agent log");
        let child = self
            .net
            .command(&format!("n{}", i + 1), EXE)
            .args(["-v", "agent", "--config"])
            .arg(&config)
            .env_remove("TANDEM_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the agent");
        self.agents[i] = Some(child);
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.agents[i].take() {
            // `ip netns exec` execs the agent, so this pid is the agent's.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Cuts n1 and n2 from each other; `c` keeps reaching both.
    fn partition(&mut self) {
        self.net.partition().expect("cut n1 from n2");
    }

    /// Cuts node `n` (1 or 2) from the other and from `c` (the etcd
    /// witness and the next hop).
    fn isolate(&mut self, n: u8) {
        self.net.isolate(n).expect("isolate a node");
    }

    fn heal(&mut self) {
        self.net.heal().expect("heal the cut");
    }

    /// One etcd member in `c` (198.18.0.10:2379), the pair's witness;
    /// waits until it is healthy. Without an `etcd` binary, the reason to
    /// skip.
    fn start_etcd(&mut self, dir: &Path) -> Result<(), String> {
        if tandem::localetcd::LocalEtcd::binary().is_none() {
            return Err("no `etcd` on PATH (Debian package etcd-server)".into());
        }
        self.net.start_etcd(dir).unwrap_or_else(|e| panic!("{e:#}"));
        Ok(())
    }

    fn holds_vip(&self, node: &str) -> bool {
        self.net.has_address(node, netns::VIP_ADDRESS)
    }

    /// Node `i`'s `GET /v1/status`, asked inside its namespace.
    fn status(&self, i: usize) -> Option<Value> {
        let addr: SocketAddr = format!("198.18.0.{}:7401", i + 1)
            .parse()
            .expect("parse the API address");
        in_netns(&self.ns(&format!("n{}", i + 1)), || {
            http_get(addr, "/v1/status")
        })
    }

    fn role(&self, i: usize) -> String {
        self.status(i)
            .and_then(|s| s["node"]["effective_role"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    fn print_log_tails(&self) {
        for log in &self.logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(80);
            eprintln!(
                "----- {} (last {} lines)",
                log.display(),
                lines.len() - from
            );
            for line in &lines[from..] {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_log_tails();
        }
        for i in 0..self.agents.len() {
            self.kill(i);
        }
        // Then `net` drops: the witness stops, the routes go, the
        // namespaces are deleted.
    }
}

/// A plain HTTP/1.1 GET with the API token; the JSON body, if any.
fn http_get(addr: SocketAddr, path: &str) -> Option<Value> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .ok()?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&response[..split]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return None;
    }
    let mut body = response[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body)?;
    }
    serde_json::from_slice(&body).ok()
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

fn write_configs(dir: &Path, etcd: bool) {
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("write {name}: {e:#}"));
    };
    write("cluster.key", "netns-partition-test-key-0123456789");
    write("api.token", TOKEN);
    // The next hop is down for most of the test: without a cap, the
    // relay's doubling retry delay (up to 5 min) would outlast the wait for
    // delivery once it comes up.
    write(
        "mta.toml",
        "[delivery]\nretry_base = \"1s\"\nretry_max = \"2s\"\nconnect_timeout = \"2s\"\n",
    );
    let ca = dir.join("ca");
    must(&[EXE, "cert", "init", &ca.to_string_lossy()]);
    for (me, peer, prio, role) in [(1, 2, 200, "primary"), (2, 1, 100, "secondary")] {
        let certs = dir.join("certs").join(format!("n{me}"));
        must(&[
            EXE,
            "cert",
            "issue",
            "--ca",
            &ca.to_string_lossy(),
            "--node",
            &format!("n{me}"),
            "-o",
            &certs.to_string_lossy(),
        ]);
        let data = dir.join("data").join(format!("n{me}"));
        let spool = data.join("spool");
        let mta_config = dir.join("mta.toml");
        let command = [
            EXE,
            "mta",
            "serve",
            "--spool",
            &spool.to_string_lossy(),
            "--relay-to",
            NEXT_HOP,
            "--config",
            &mta_config.to_string_lossy(),
        ]
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ");
        let (coordination, etcd_section) = if etcd {
            (
                "coordination = \"etcd\"\n",
                "\n[etcd]\nendpoints = [\"http://198.18.0.10:2379\"]\n",
            )
        } else {
            ("", "")
        };
        let text = format!(
            r#"[node]
name = "n{me}"
priority = {prio}
role = "{role}"
state_dir = "state-n{me}"
api = "198.18.0.{me}:7401"
sync = "198.18.0.{me}:7601"
token_file = "api.token"

[cluster]
name = "netns-partition"
key_file = "cluster.key"
{coordination}
[[link]]
name = "eth0"
listen = "198.18.0.{me}:7501"

[[peer]]
name = "n{peer}"
links = ["198.18.0.{peer}:7501"]
sync = "198.18.0.{peer}:7601"
api = "198.18.0.{peer}:7401"

[vip]
mode = "ip"
interface = "eth0"
address = "198.18.0.100/24"
listen = ["{VIP}"]

[service]
command = [{command}]
grace = "10s"

[sync]
cert_dir = "certs/n{me}"
data_dir = "data/n{me}"
data_sync = "semi"
sync_mode = "degrade"
{etcd_section}"#
        );
        write(&format!("n{me}.toml"), &text);
    }
}

/// What one side's clients got: the ids acknowledged (250) and what was not.
struct Sent {
    acked: Vec<String>,
    failures: Vec<String>,
}

/// Sends `PER_SIDE` messages to the VIP from inside namespace `ns` (where
/// the VIP is local while this side holds it), one session, reconnecting
/// if it breaks; each message is tried up to 3 times, all within `within`.
fn send_from(ns: &str, tag: &str, within: Duration) -> Sent {
    let run_id = format!("part{}-{tag}", std::process::id());
    in_netns(ns, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build the runtime");
        rt.block_on(async {
            let to: SocketAddr = VIP.parse().expect("parse the VIP");
            let deadline = tokio::time::Instant::now() + within;
            let mut sent = Sent {
                acked: Vec::new(),
                failures: Vec::new(),
            };
            let mut conn: Option<Client> = None;
            for n in 0..PER_SIDE {
                let id = format!("{run_id}-{n:08}");
                let body = tandem_mta::load::message(&id, 1024);
                let rcpt = vec![format!("{id}@load.tandem.invalid")];
                for _attempt in 0..3 {
                    if tokio::time::Instant::now() >= deadline {
                        break;
                    }
                    if conn.is_none() {
                        match Client::connect(
                            to,
                            "load.tandem.invalid",
                            Duration::from_secs(5),
                            within.min(Duration::from_secs(30)),
                        )
                        .await
                        {
                            Ok(c) => conn = Some(c),
                            Err(e) => {
                                sent.failures.push(format!("{id}: connect: {e}"));
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                continue;
                            }
                        }
                    }
                    let Some(client) = conn.as_mut() else {
                        continue;
                    };
                    match client.send("load@tandem.invalid", &rcpt, &body).await {
                        Ok(tx) => match tx.data {
                            Some(r) if r.is_ok() => {
                                sent.acked.push(id.clone());
                                break;
                            }
                            other => {
                                sent.failures
                                    .push(format!("{id}: refused: {other:?} (mail {:?})", tx.mail));
                            }
                        },
                        Err(e) => {
                            sent.failures.push(format!("{id}: session broke: {e}"));
                            conn = None;
                        }
                    }
                }
            }
            if let Some(c) = conn {
                c.quit().await;
            }
            sent
        })
    })
}

/// The next hop, a counting sink in `c`, with the runtime it runs on.
struct NextHop {
    sink: Sink,
    _rt: tokio::runtime::Runtime,
}

impl NextHop {
    /// Binds the sink at `NEXT_HOP` inside `c`.
    fn up(lab: &Lab) -> NextHop {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("build the runtime");
        let listener = in_netns(&lab.ns("c"), || {
            std::net::TcpListener::bind(NEXT_HOP).expect("bind the sink")
        });
        let sink = rt
            .block_on(Sink::bind(Listen::Inherited(vec![listener]), 0))
            .expect("start the sink");
        NextHop { sink, _rt: rt }
    }

    /// Waits (60 s at most) until every id in `acked` arrived; the report
    /// then, and how long it took.
    fn wait_for(&self, acked: &[String]) -> (SinkReport, Duration) {
        let started = Instant::now();
        let mut report = self.sink.report(Some(acked));
        while report.missing != Some(0) && started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(200));
            report = self.sink.report(Some(acked));
        }
        (report, started.elapsed())
    }
}

fn queued(dir: &Path, node: &str) -> usize {
    std::fs::read_dir(dir.join("data").join(node).join("spool").join("queue"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Whether a `tandem mta serve` process with this spool runs (its agent
/// starts it; /proc shows every namespace's processes).
fn relay_running(spool: &Path) -> bool {
    let needle = spool.to_string_lossy().into_owned();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|p| {
        std::fs::read(p.path().join("cmdline")).is_ok_and(|c| {
            let args: Vec<String> = c
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.windows(2).any(|w| w[0] == "mta" && w[1] == "serve") && args.contains(&needle)
        })
    })
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    started.elapsed()
}

fn peer_states(status: &Option<Value>) -> Vec<String> {
    status
        .as_ref()
        .and_then(|s| s["sync"]["replicator"]["peers"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|p| p["state"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[test]
fn a_healed_partition_keeps_the_losers_acknowledged_mail() {
    let dir = tempfile::tempdir().expect("create a temp dir");
    let dir = dir.path();
    let mut lab = match Lab::new(dir, "q") {
        Ok(lab) => lab,
        Err(reason) => {
            eprintln!("SKIP: {reason}");
            return;
        }
    };
    let t0 = Instant::now();
    let at = || format!("[{:5.1} s]", t0.elapsed().as_secs_f64());
    write_configs(dir, false);
    lab.start(0, dir);
    lab.start(1, dir);

    // n1 (primary) active, n2 standby and in sync.
    wait_until("n1 active with n2 in sync", Duration::from_secs(30), || {
        let s = lab.status(0);
        s.as_ref()
            .is_some_and(|s| s["node"]["effective_role"] == "active")
            && peer_states(&s) == ["in-sync"]
            && lab.holds_vip("n1")
    });
    assert!(!lab.holds_vip("n2"), "n2 holds the VIP as a standby");
    println!("{} n1 active, n2 in sync", at());

    // The partition: both sides take over, and the TLS sync connection
    // between them breaks (n1's replicator loses n2, n2's receiver loses n1).
    lab.partition();
    let partitioned = Instant::now();
    println!("{} partitioned (blackhole routes)", at());
    let took = wait_until("both nodes active", Duration::from_secs(30), || {
        lab.role(0) == "active" && lab.role(1) == "active"
    });
    println!(
        "{} both active after {:.1} s; n1 holds the VIP {}, n2 {}",
        at(),
        took.as_secs_f64(),
        lab.holds_vip("n1"),
        lab.holds_vip("n2")
    );
    let mut last = (Vec::new(), Value::Null, Vec::new());
    wait_until(
        "the sync connection broken on both sides",
        Duration::from_secs(60),
        || {
            let (s1, s2) = (lab.status(0), lab.status(1));
            last = (
                peer_states(&s1),
                s2.as_ref()
                    .map(|s| s["sync"]["receiver"]["active"].clone())
                    .unwrap_or(Value::Null),
                peer_states(&s2),
            );
            last.0 == ["disconnected"] && last.1.is_null() && last.2 == ["disconnected"]
        },
    );
    println!(
        "{} sync connection broken {:.1} s after the cut: n1's replicator sees n2 {:?}, \
         n2's receiver connected to {}, n2's replicator sees n1 {:?}",
        at(),
        partitioned.elapsed().as_secs_f64(),
        last.0,
        last.1,
        last.2
    );

    // Both sides take mail; the next hop is down, so it stays queued.
    let (n1_ns, n2_ns) = (lab.ns("n1"), lab.ns("n2"));
    let (sent1, sent2) = std::thread::scope(|s| {
        let a = s.spawn(|| send_from(&n1_ns, "n1", Duration::from_secs(60)));
        let b = s.spawn(|| send_from(&n2_ns, "n2", Duration::from_secs(60)));
        (
            a.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
            b.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
        )
    });
    println!(
        "{} acknowledged during the partition: n1 {} (failures {:?}), n2 {} (failures {:?}); \
         queued: n1 {}, n2 {}",
        at(),
        sent1.acked.len(),
        sent1.failures,
        sent2.acked.len(),
        sent2.failures,
        queued(dir, "n1"),
        queued(dir, "n2")
    );
    assert_eq!(
        sent1.acked.len() as u64,
        PER_SIDE,
        "n1 acknowledged every message"
    );
    assert_eq!(
        sent2.acked.len() as u64,
        PER_SIDE,
        "n2 acknowledged every message"
    );
    let acked: Vec<String> = sent1.acked.iter().chain(&sent2.acked).cloned().collect();
    println!(
        "{} partition held {:.1} s; healing",
        at(),
        partitioned.elapsed().as_secs_f64()
    );

    // Heal: exactly one keeps the VIP and stays active.
    lab.heal();
    let mut owners = (true, true);
    let took = wait_until(
        "exactly one active node holding the VIP",
        Duration::from_secs(30),
        || {
            owners = (lab.holds_vip("n1"), lab.holds_vip("n2"));
            let roles = (lab.role(0), lab.role(1));
            owners.0 ^ owners.1
                && (roles.0 == "active") == owners.0
                && (roles.1 == "active") == owners.1
        },
    );
    let (winner, loser) = if owners.0 { (0, 1) } else { (1, 0) };
    println!(
        "{} healed after {:.1} s: n{} won, n{} stepped down ({})",
        at(),
        took.as_secs_f64(),
        winner + 1,
        loser + 1,
        lab.role(loser)
    );

    // The loser's relay exits: on its way out it tries its queue for up
    // to 3 s, which it cannot while the next hop is down. So whatever it
    // acknowledged reaches the next hop only through its quarantine and
    // the merge into the winner, which is what this test is about. (The
    // agent's `service_running` turns false when the stop is asked, not
    // when the process is gone: look for the process itself.)
    let loser_spool = dir
        .join("data")
        .join(format!("n{}", loser + 1))
        .join("spool");
    let took = wait_until(
        "the loser's relay process gone",
        Duration::from_secs(30),
        || !relay_running(&loser_spool),
    );
    println!(
        "{} n{}'s relay exited {:.1} s later",
        at(),
        loser + 1,
        took.as_secs_f64()
    );

    // The winner catches the loser up; the loser's own messages go to its
    // quarantine and back to the winner.
    let took = wait_until(
        "the loser in sync on the winner",
        Duration::from_secs(30),
        || peer_states(&lab.status(winner)) == ["in-sync"],
    );
    println!(
        "{} n{} in sync on n{} {:.1} s later; queued: n1 {}, n2 {}",
        at(),
        loser + 1,
        winner + 1,
        took.as_secs_f64(),
        queued(dir, "n1"),
        queued(dir, "n2")
    );
    let quarantine = |i: usize| {
        lab.status(i)
            .map(|s| s["sync"]["quarantine"].clone())
            .unwrap_or(Value::Null)
    };
    for i in [0, 1] {
        println!(
            "{} n{} quarantine before delivery: {}",
            at(),
            i + 1,
            quarantine(i)
        );
    }

    // The next hop comes up in `c`: every acknowledged id must arrive.
    let next_hop = NextHop::up(&lab);
    println!("{} next hop up on {NEXT_HOP}", at());
    let (_, delivery) = next_hop.wait_for(&acked);
    // A moment more for late duplicates.
    std::thread::sleep(Duration::from_secs(2));
    let report = next_hop.sink.report(Some(&acked));
    let missing = report.missing.unwrap_or(u64::MAX);
    let lost_from = |sent: &Sent| {
        sent.acked
            .iter()
            .filter(|id| report.missing_ids.contains(id))
            .count()
    };
    println!(
        "{} acknowledged {}  delivered {} (messages {})  duplicates {}  lost {}  \
         (lost of n1's {}, of n2's {}; delivery took {:.1} s)",
        at(),
        acked.len(),
        report.distinct_ids,
        report.messages,
        report.duplicates,
        missing,
        lost_from(&sent1),
        lost_from(&sent2),
        delivery.as_secs_f64()
    );
    if !report.duplicate_ids.is_empty() {
        println!("duplicate ids: {:?}", report.duplicate_ids);
    }
    for i in [0, 1] {
        println!(
            "{} n{} quarantine after delivery: {}",
            at(),
            i + 1,
            quarantine(i)
        );
    }
    println!(
        "{} queued at the end: n1 {}, n2 {}",
        at(),
        queued(dir, "n1"),
        queued(dir, "n2")
    );
    assert_eq!(
        missing, 0,
        "acknowledged but never delivered (lost): {:?}",
        report.missing_ids
    );
    // The loser's acknowledged mail went the way issue 14 wants: into its
    // quarantine, then every file merged into the winner (or found there).
    let q = quarantine(loser);
    let counters = &q["counters"];
    let merged = counters["merged"].as_u64().unwrap_or(0);
    let already = counters["duplicates"].as_u64().unwrap_or(0);
    assert_eq!(
        (merged + already, q["files"].as_u64()),
        (PER_SIDE, Some(0)),
        "n{}'s quarantine: every message it acknowledged merged into n{}: {q}",
        loser + 1,
        winner + 1
    );
    drop(next_hop);
    println!("{} done", at());
}

/// Issue 16 on a real network: with `coordination = "etcd"` (one member,
/// the witness, in `c`) the active is cut from its peer and from etcd
/// while clients on both sides send mail. It must stand down before its
/// peer takes over (the VIP is never held by both), and nothing either
/// side acknowledged may be lost once the partition heals.
#[test]
fn an_isolated_active_stands_down_before_its_peer_serves_and_loses_nothing_under_etcd() {
    let dir = tempfile::tempdir().expect("create a temp dir");
    let dir = dir.path();
    let mut lab = match Lab::new(dir, "e") {
        Ok(lab) => lab,
        Err(reason) => {
            eprintln!("SKIP: {reason}");
            return;
        }
    };
    if let Err(reason) = lab.start_etcd(dir) {
        eprintln!("SKIP: {reason}");
        return;
    }
    let t0 = Instant::now();
    let at = || format!("[{:5.1} s]", t0.elapsed().as_secs_f64());
    write_configs(dir, true);
    lab.start(0, dir);
    lab.start(1, dir);
    wait_until("n1 active with n2 in sync", Duration::from_secs(30), || {
        let s = lab.status(0);
        s.as_ref()
            .is_some_and(|s| s["node"]["effective_role"] == "active")
            && peer_states(&s) == ["in-sync"]
            && lab.holds_vip("n1")
    });
    println!("{} n1 active under etcd, n2 in sync", at());

    lab.isolate(1);
    let cut = Instant::now();
    println!("{} n1 cut from n2 and from etcd", at());
    // Sample who holds the VIP every few ms while both sides send.
    let (n1_ns, n2_ns) = (lab.ns("n1"), lab.ns("n2"));
    let sampling = std::sync::atomic::AtomicBool::new(true);
    let (sent1, sent2, samples) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut samples = Vec::new();
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                samples.push((cut.elapsed(), lab.holds_vip("n1"), lab.holds_vip("n2")));
            }
            samples
        });
        // n1's clients reach nobody once it stands down: they give up
        // after 10 s; n2's have time to see n2 take over.
        let a = s.spawn(|| send_from(&n1_ns, "n1", Duration::from_secs(10)));
        let b = s.spawn(|| send_from(&n2_ns, "n2", Duration::from_secs(30)));
        let sent = (
            a.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
            b.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
        );
        wait_until("n2 active, n1 not", Duration::from_secs(30), || {
            lab.role(1) == "active" && lab.role(0) != "active"
        });
        sampling.store(false, std::sync::atomic::Ordering::Relaxed);
        let samples = sampler
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        (sent.0, sent.1, samples)
    });
    let released = samples.iter().find(|(_, n1, _)| !n1).map(|(t, _, _)| *t);
    let claimed = samples.iter().find(|(_, _, n2)| *n2).map(|(t, _, _)| *t);
    let both = samples.iter().filter(|(_, n1, n2)| *n1 && *n2).count();
    println!(
        "{} n1 released the VIP at {released:?}, n2 claimed it at {claimed:?} after the cut; \
         {} samples, {both} with both holding it; acknowledged: n1 {} (failures {}), n2 {} (failures {})",
        at(),
        samples.len(),
        sent1.acked.len(),
        sent1.failures.len(),
        sent2.acked.len(),
        sent2.failures.len()
    );
    assert_eq!(both, 0, "the VIP was held by both nodes at once");
    assert!(
        released.is_some() && claimed.is_some() && released < claimed,
        "n1 must let go before n2 takes over"
    );
    let acked: Vec<String> = sent1.acked.iter().chain(&sent2.acked).cloned().collect();
    assert!(!acked.is_empty(), "some mail was acknowledged");

    lab.heal();
    // n1's lease expired during the cut: it starts a new etcd session,
    // is caught up, and (preemption) is handed the service back.
    let took = wait_until(
        "n1 active again, alone on the VIP",
        Duration::from_secs(30),
        || lab.role(0) == "active" && lab.holds_vip("n1") && !lab.holds_vip("n2"),
    );
    println!(
        "{} healed; n1 serves again after {:.1} s",
        at(),
        took.as_secs_f64()
    );

    // The next hop comes up in `c`: every acknowledged id must arrive.
    let (report, _) = NextHop::up(&lab).wait_for(&acked);
    println!(
        "{} acknowledged {}  delivered {}  duplicates {}  lost {}",
        at(),
        acked.len(),
        report.distinct_ids,
        report.duplicates,
        report.missing.unwrap_or(u64::MAX)
    );
    assert_eq!(
        report.missing,
        Some(0),
        "acknowledged but never delivered (lost): {:?}",
        report.missing_ids
    );
}

/// The other half of issue 16's partitions: the *standby* is cut from the
/// active and from etcd. Nothing changes: the active keeps the service
/// (semi degrades to local acknowledgement), the standby never serves, and
/// after the heal everything acknowledged is delivered.
#[test]
fn an_isolated_standby_changes_nothing_under_etcd() {
    let dir = tempfile::tempdir().expect("create a temp dir");
    let dir = dir.path();
    let mut lab = match Lab::new(dir, "s") {
        Ok(lab) => lab,
        Err(reason) => {
            eprintln!("SKIP: {reason}");
            return;
        }
    };
    if let Err(reason) = lab.start_etcd(dir) {
        eprintln!("SKIP: {reason}");
        return;
    }
    write_configs(dir, true);
    lab.start(0, dir);
    lab.start(1, dir);
    wait_until("n1 active with n2 in sync", Duration::from_secs(30), || {
        let s = lab.status(0);
        s.as_ref()
            .is_some_and(|s| s["node"]["effective_role"] == "active")
            && peer_states(&s) == ["in-sync"]
    });
    lab.isolate(2);
    let n1_ns = lab.ns("n1");
    let sampling = std::sync::atomic::AtomicBool::new(true);
    let (sent, samples) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut samples = Vec::new();
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                samples.push((lab.holds_vip("n1"), lab.holds_vip("n2")));
            }
            samples
        });
        let sent = send_from(&n1_ns, "n1", Duration::from_secs(30));
        // Longer than a lease: n2 must still not serve.
        std::thread::sleep(Duration::from_secs(3));
        sampling.store(false, std::sync::atomic::Ordering::Relaxed);
        let samples = sampler
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        (sent, samples)
    });
    println!(
        "standby isolated: {} samples, n1 held the VIP in {}, n2 in {}; acknowledged {} (failures {})",
        samples.len(),
        samples.iter().filter(|(a, _)| *a).count(),
        samples.iter().filter(|(_, b)| *b).count(),
        sent.acked.len(),
        sent.failures.len()
    );
    assert!(samples.iter().all(|(a, b)| *a && !*b), "the VIP moved");
    assert_eq!(sent.acked.len() as u64, PER_SIDE, "n1 took every message");
    lab.heal();
    wait_until("n2 back in sync", Duration::from_secs(30), || {
        peer_states(&lab.status(0)) == ["in-sync"]
    });
    let (report, _) = NextHop::up(&lab).wait_for(&sent.acked);
    assert_eq!(report.missing, Some(0), "lost: {:?}", report.missing_ids);
}
