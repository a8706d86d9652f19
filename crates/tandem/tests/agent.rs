//! The HA pair end to end, for what only processes and sockets show: real
//! `tandem agent` processes on loopback, a real service on the VIP, kill -9
//! (the service dies with its agent), the CLI, the API's token and
//! metrics, forged datagrams, systemd's notify socket, listener suspension
//! and backups. The HA rules themselves (a hang, a partition, late
//! heartbeats, groups, the service as a heartbeat, a failing service) are
//! tested on the simulated cluster: `crates/tandem-agent/tests/sim.rs`.
//!
//! These clusters run side by side with every other test on two cores, so
//! their hold time is long (2 s): a starved scheduler must not fail a node
//! over in the middle of a test of something else. A crash still fails
//! over at once, through the closed connection.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command as Process;
use std::time::Duration;

use tandem::localcluster::{ClusterSpec, LocalCluster};
use tandem_agent::api::{ListenerState, StatusReport};
use tandem_core::wire::RejectReason;
use tandem_core::{Codec, EffectiveRole, Message};

const EXE: &str = env!("CARGO_BIN_EXE_tandem");

fn pair() -> LocalCluster {
    pair_with(vec![EXE.into(), "bench".into(), "name-service".into()], "")
}

fn pair_with(service: Vec<String>, extra_toml: &str) -> LocalCluster {
    let spec = ClusterSpec {
        extra_toml: extra_toml.into(),
        exe: Some(EXE.into()),
        lost_threshold: 10,
        ..ClusterSpec::new(&["alpha", "beta"], service)
    };
    let mut cluster = LocalCluster::create(&spec).expect("create the cluster");
    cluster.start_all().expect("start the pair");
    cluster
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build the runtime")
}

fn settle(rt: &tokio::runtime::Runtime, cluster: &LocalCluster, active: usize) {
    rt.block_on(cluster.wait_for_active(active, Duration::from_secs(15)))
        .expect("wait for the active");
}

/// Who answers on the VIP (the service writes its node's name).
fn vip_answer(vip: SocketAddr) -> Option<String> {
    let stream = TcpStream::connect_timeout(&vip, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    Some(line.trim().to_string())
}

/// Polls the VIP until `name` answers; bounded.
fn wait_vip(vip: SocketAddr, name: &str) {
    for _ in 0..200 {
        if vip_answer(vip).as_deref() == Some(name) {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{name} never answered on the VIP {vip}");
}

fn tandem(cluster: &LocalCluster, node: usize, args: &[&str]) -> (i32, String, String) {
    cluster.cli(node, args)
}

/// Node `node`'s effective role; `None` while its agent does not answer.
fn role(
    rt: &tokio::runtime::Runtime,
    cluster: &LocalCluster,
    node: usize,
) -> Option<EffectiveRole> {
    rt.block_on(cluster.status(node))
        .map(|s| s.node.effective_role)
}

/// Node `node`'s status report; the test fails if its agent does not answer.
fn report(rt: &tokio::runtime::Runtime, cluster: &LocalCluster, node: usize) -> StatusReport {
    rt.block_on(cluster.status(node))
        .unwrap_or_else(|| panic!("node {node}'s agent does not answer its status"))
}

const ACTIVE: Option<EffectiveRole> = Some(EffectiveRole::Active);
const STANDBY: Option<EffectiveRole> = Some(EffectiveRole::Standby);

#[test]
fn kill_9_of_the_active_moves_the_vip_and_the_primary_comes_back() {
    let rt = runtime();
    let mut cluster = pair();
    settle(&rt, &cluster, 0);
    wait_vip(cluster.vip, "alpha");
    let service = rt
        .block_on(cluster.status(0))
        .and_then(|s| s.agent.service_pid);
    let Some(service) = service else {
        panic!("alpha runs its service")
    };

    cluster.kill(0);
    // The service dies with its agent (PR_SET_PDEATHSIG): a dead agent must
    // not leave a live service holding the address.
    let mut gone = false;
    for _ in 0..100 {
        let state = std::fs::read_to_string(format!("/proc/{service}/stat")).unwrap_or_default();
        if state.is_empty() || state.contains(") Z ") {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(gone, "alpha's service (pid {service}) outlived its agent");
    settle(&rt, &cluster, 1);
    wait_vip(cluster.vip, "beta");
    let beta = report(&rt, &cluster, 1);
    assert_eq!(
        beta.node.peers.first().map(|p| p.alive),
        Some(false),
        "{beta:?}"
    );

    // The restarted primary takes its role back (preemption is on).
    cluster.start(0).expect("restart alpha");
    settle(&rt, &cluster, 0);
    wait_vip(cluster.vip, "alpha");
}

#[test]
fn operator_commands_through_the_cli() {
    let rt = runtime();
    let cluster = pair();
    settle(&rt, &cluster, 0);

    // status: a table with both nodes, and JSON for scripts.
    let (code, table, err) = tandem(&cluster, 1, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(table.starts_with("NODE"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("alpha") && l.contains("active") && l.contains("owner")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("beta") && l.contains("standby")),
        "{table}"
    );
    let (code, json, _) = tandem(&cluster, 1, &["--json", "status"]);
    assert_eq!(code, 0);
    let doc: serde_json::Value = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("parse the status as JSON: {e:#}\n{json}"));
    assert_eq!(doc["nodes"].as_array().map(Vec::len), Some(2));

    // A command that cannot be done says why, exit 1.
    let (code, _, err) = tandem(&cluster, 0, &["failover", "active"]);
    assert_eq!(code, 1);
    assert!(err.contains("already active"), "{err}");

    // failover standby hands the service to beta (ASA `no failover active`).
    let (code, out, err) = tandem(&cluster, 0, &["failover", "standby"]);
    assert_eq!(code, 0, "{out}{err}");
    settle(&rt, &cluster, 1);
    wait_vip(cluster.vip, "beta");

    // A command aimed at another node is forwarded by the answering one,
    // and that node's own answer comes back: a refusal with its reason...
    let (code, _, err) = tandem(&cluster, 0, &["failover", "active", "--node", "beta"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("refused on beta: already active"), "{err}");
    // ...or what it did.
    let (code, out, err) = tandem(&cluster, 1, &["failover", "active", "--node", "alpha"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("done on alpha"), "{out}");
    settle(&rt, &cluster, 0);

    // Preemption off, then a holdoff from the primary: beta shows it and
    // would refuse to take over.
    let (code, _, err) = tandem(&cluster, 0, &["ha", "preempt", "off"]);
    assert_eq!(code, 0, "{err}");
    let alpha = report(&rt, &cluster, 0);
    assert!(!alpha.node.preempt, "{alpha:?}");
    let (code, _, err) = tandem(&cluster, 0, &["ha", "holdoff", "30"]);
    assert_eq!(code, 0, "{err}");
    let mut held = false;
    for _ in 0..40 {
        let holdoff = rt.block_on(cluster.status(1)).and_then(|s| s.node.holdoff);
        if holdoff.is_some_and(|h| h.from == "alpha") {
            held = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(held, "beta reports the holdoff from alpha");
    let (code, _, err) = tandem(&cluster, 1, &["failover", "active"]);
    assert_eq!(code, 1, "a takeover during a holdoff is refused");
    assert!(err.contains("holdoff"), "{err}");

    // ha restore and ha restart answer too.
    let (code, _, err) = tandem(&cluster, 0, &["ha", "restore"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = tandem(&cluster, 0, &["ha", "restart"]);
    assert!(code == 0 || err.contains("refused"), "{err}");
}

#[test]
fn api_needs_the_token_and_metrics_are_prometheus_text() {
    let rt = runtime();
    let cluster = pair();
    settle(&rt, &cluster, 0);
    let api = cluster.nodes[0].api;
    let (code, metrics) = rt.block_on(async {
        let http = reqwest::Client::new();
        let denied = http
            .get(format!("http://{api}/v1/status"))
            .send()
            .await
            .map(|r| r.status().as_u16());
        let wrong = http
            .get(format!("http://{api}/v1/status"))
            .bearer_auth("not-the-token")
            .send()
            .await
            .map(|r| r.status().as_u16());
        assert_eq!((denied.ok(), wrong.ok()), (Some(401), Some(401)));
        let metrics = http.get(format!("http://{api}/metrics")).send().await;
        match metrics {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => panic!("metrics: {e}"),
        }
    });
    assert_eq!(code, 200);
    assert!(
        metrics.contains("tandem_role{node=\"alpha\",role=\"active\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tandem_peer_up{node=\"alpha\",peer=\"beta\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE tandem_heartbeats_sent_total counter"),
        "{metrics}"
    );
}

#[test]
fn foreign_keys_and_replayed_datagrams_are_rejected_and_counted() {
    let rt = runtime();
    let cluster = pair();
    settle(&rt, &cluster, 0);

    let key = std::fs::read(cluster.dir.join("cluster.key")).expect("read cluster.key");
    let key = key.trim_ascii();
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket");
    let alpha_link = cluster.nodes[0].link;

    // The right key, a datagram sent twice: the second is a replay.
    let mut codec = Codec::new(key, "local", "beta", u64::MAX / 2);
    let bytes = codec
        .seal(
            &Message::Holdoff {
                duration: Duration::from_secs(1),
            },
            tandem_core::wire::PROTOCOL_VERSION,
        )
        .expect("seal the holdoff");
    for _ in 0..2 {
        socket
            .send_to(&bytes, alpha_link)
            .expect("send the holdoff");
    }
    // A wrong key: a foreign or misconfigured node.
    let mut stranger = Codec::new(b"another cluster's key, 32 bytes!", "local", "beta", 1);
    let forged = stranger
        .seal(&Message::Goodbye, tandem_core::wire::PROTOCOL_VERSION)
        .expect("seal the forged goodbye");
    socket
        .send_to(&forged, alpha_link)
        .expect("send the forged goodbye");

    let mut rejected = std::collections::BTreeMap::new();
    let count = |rejected: &std::collections::BTreeMap<RejectReason, u64>, reason| {
        rejected.get(&reason).copied().unwrap_or(0)
    };
    for _ in 0..40 {
        rejected = rt
            .block_on(cluster.status(0))
            .map(|s| s.node.counters.rejected)
            .unwrap_or_default();
        if count(&rejected, RejectReason::Replay) >= 1
            && count(&rejected, RejectReason::BadMac) >= 1
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        count(&rejected, RejectReason::Replay) >= 1,
        "replay counted: {rejected:?}"
    );
    assert!(
        count(&rejected, RejectReason::BadMac) >= 1,
        "bad MAC counted: {rejected:?}"
    );
    let (code, table, _) = tandem(&cluster, 0, &["status"]);
    assert_eq!(code, 0);
    assert!(
        table.contains("rejected (bad-mac): peer unauthenticated: cluster key mismatch?"),
        "{table}"
    );
    // The forged goodbye changed nothing.
    assert_eq!(role(&rt, &cluster, 0), ACTIVE);
    assert_eq!(role(&rt, &cluster, 1), STANDBY);
}

#[test]
fn a_bad_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().expect("create a temp dir");
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "[node]\nname = \"a\"\npriority = 300\nrole = \"primary\"\nstate_dir = \"s\"\napi = \"127.0.0.1:1\"\nsync = \"127.0.0.1:2\"\ntoken_file = \"t\"\n",
    )
    .expect("write the bad config");
    let out = Process::new(EXE)
        .args(["config", "check"])
        .arg(&file)
        .output()
        .expect("run config check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("node.toml:3: priority:"), "{err}");

    let out = Process::new(EXE)
        .args(["agent", "--config"])
        .arg(&file)
        .output()
        .expect("run the agent");
    assert_eq!(
        out.status.code(),
        Some(2),
        "the agent refuses to start on a bad config"
    );
}

#[test]
fn the_agent_tells_systemd_it_is_ready_and_pings_the_watchdog() {
    use std::os::unix::net::UnixDatagram;
    let spec = ClusterSpec {
        exe: Some(EXE.into()),
        ..ClusterSpec::new(
            &["alpha", "beta"],
            vec![EXE.into(), "bench".into(), "name-service".into()],
        )
    };
    let cluster = LocalCluster::create(&spec).expect("create the cluster");
    let socket_path = cluster.dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set the read timeout");
    let mut agent = Process::new(EXE)
        .args(["agent", "--config"])
        .arg(&cluster.nodes[0].config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("TANDEM_CONFIG")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start alpha's agent");
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !(seen.iter().any(|m: &String| m.contains("READY=1"))
        && seen.iter().any(|m| m.contains("WATCHDOG=1")))
    {
        match socket.recv(&mut buf) {
            Ok(n) => seen.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) => {
                seen.push(format!("timeout: {e}"));
                break;
            }
        }
    }
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(seen.iter().any(|m| m.contains("READY=1")), "{seen:?}");
    assert!(seen.iter().any(|m| m.contains("WATCHDOG=1")), "{seen:?}");
}

/// Reads one SMTP reply line, or None on timeout/close.
fn smtp_line(reader: &mut BufReader<TcpStream>) -> Option<String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(n) if n > 0 => Some(line.trim_end().to_string()),
        _ => None,
    }
}

#[test]
fn listener_suspend_drains_and_resume_reopens_the_relay() {
    let rt = runtime();
    let sink = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the sink");
    let next_hop = sink.local_addr().expect("read the sink's address");
    let script =
        format!("exec {EXE} mta serve --spool \"spool-$TANDEM_NODE\" --relay-to {next_hop}");
    let cluster = pair_with(
        vec!["sh".into(), "-c".into(), script],
        "cwd = \".\"\nsuspend = \"signal\"\n",
    );
    settle(&rt, &cluster, 0);

    // A session in progress before the suspend.
    let mut session = None;
    for _ in 0..100 {
        if let Ok(stream) = TcpStream::connect(cluster.vip) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
            let mut reader = BufReader::new(stream);
            if smtp_line(&mut reader).is_some_and(|l| l.starts_with("220")) {
                session = Some(reader);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let Some(mut session) = session else {
        panic!("the relay never greeted on the VIP")
    };

    let (code, out, err) = tandem(
        &cluster,
        1,
        &[
            "listener",
            "suspend",
            "--drain-timeout",
            "300ms",
            "--node",
            "alpha",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let status = report(&rt, &cluster, 0);
    assert_eq!(
        status.agent.listener,
        ListenerState::Suspended,
        "{status:?}"
    );
    // After the drain timeout the idle session is told to come back later.
    let told = smtp_line(&mut session);
    assert!(
        told.as_deref().is_some_and(|l| l.starts_with("421")),
        "{told:?}"
    );
    // A new connection is not greeted while suspended.
    let fresh = TcpStream::connect(cluster.vip).expect("connect to the VIP");
    let _ = fresh.set_read_timeout(Some(Duration::from_millis(400)));
    let mut fresh = BufReader::new(fresh);
    assert_eq!(smtp_line(&mut fresh), None, "no greeting while suspended");

    let (code, _, err) = tandem(&cluster, 0, &["listener", "resume"]);
    assert_eq!(code, 0, "{err}");
    let _ = fresh
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(3)));
    let greeting = smtp_line(&mut fresh);
    assert!(
        greeting.as_deref().is_some_and(|l| l.starts_with("220")),
        "greeted after resume: {greeting:?}"
    );

    // A standby has no listener to suspend.
    let (code, _, err) = tandem(&cluster, 1, &["listener", "suspend"]);
    assert_eq!(code, 1);
    assert!(err.contains("not active"), "{err}");
}

#[test]
fn socket_suspend_works_for_any_service() {
    let rt = runtime();
    let cluster = pair();
    settle(&rt, &cluster, 0);
    wait_vip(cluster.vip, "alpha");

    let (code, _, err) = tandem(
        &cluster,
        0,
        &["listener", "suspend", "--drain-timeout", "1s"],
    );
    assert_eq!(code, 0, "{err}");
    let refused = TcpStream::connect_timeout(&cluster.vip, Duration::from_millis(500));
    assert!(
        refused.is_err(),
        "new connections are refused while suspended"
    );

    let (code, _, err) = tandem(&cluster, 0, &["listener", "resume"]);
    assert_eq!(code, 0, "{err}");
    wait_vip(cluster.vip, "alpha");
}

#[test]
fn backups_are_made_listed_and_restored_only_onto_their_node() {
    let rt = runtime();
    let cluster = pair();
    settle(&rt, &cluster, 0);

    let (code, out, err) = tandem(&cluster, 0, &["backup", "create", "--all"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("alpha: backup ") && out.contains("beta: backup "),
        "{out}"
    );
    let (code, out, err) = tandem(&cluster, 1, &["--json", "backup", "list"]);
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("parse the backup list as JSON: {e:#}\n{out}"));
    let backups = listed[0]["answer"]["backups"].clone();
    assert_eq!(backups[0]["node"], "beta", "{backups}");
    let id = backups[0]["backup"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    let (code, out, err) = tandem(&cluster, 1, &["backup", "restore", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("restart the agent"), "{out}");

    // alpha's backup placed on beta: refused unless forced.
    let alpha_backups = cluster.dir.join("state/alpha/backups");
    let alpha_id = std::fs::read_dir(&alpha_backups)
        .expect("list alpha's backups")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .expect("find alpha's backup");
    let foreign = cluster.dir.join("state/beta/backups/from-alpha");
    std::fs::create_dir_all(&foreign).expect("create beta's from-alpha dir");
    std::fs::copy(
        alpha_backups.join(&alpha_id).join("config.toml"),
        foreign.join("config.toml"),
    )
    .expect("copy alpha's backup config");
    let (code, _, err) = tandem(&cluster, 1, &["backup", "restore", "from-alpha"]);
    assert_eq!(code, 1);
    assert!(err.contains("made on alpha, not on beta"), "{err}");
    let (code, _, err) = tandem(&cluster, 1, &["backup", "restore", "from-alpha", "--force"]);
    assert_eq!(code, 0, "{err}");
}
