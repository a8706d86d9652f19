//! Config and data sync end to end (issue 6): real agents with `[sync]`,
//! the relay as their service committing through `POST /v1/sync/commit`,
//! a counting sink as its next hop, faults injected with kill -9.
//!
//! The clusters of this file run one at a time (a shared lock), as in
//! `agent.rs`: the hold time must not be eaten by clusters competing for
//! the same cores.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use tandem::localcluster::{ClusterSpec, LocalCluster};
use tandem_agent::api::{
    ConfigLinkAnswer, ConfigLinkRequest, ConfigSyncStatus, ListenerState, StatusReport,
};
use tandem_core::EffectiveRole;
use tandem_mta::Listen;
use tandem_mta::load::{LoadOptions, LoadReport, load};
use tandem_mta::sink::Sink;
use tandem_sync::replicator::PeerState;

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

const EXE: &str = env!("CARGO_BIN_EXE_tandem");

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build the runtime")
}

/// A free loopback port for the next hop; nothing listens on it until a
/// test binds its sink there.
fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("read the free port's address")
}

/// A pair with `[sync]` (`keys` added to it, the last section of each
/// config) whose service is `service`, not started yet. The relay's spool
/// lives in its node's data dir.
fn sync_cluster(service: Vec<String>, keys: &str) -> LocalCluster {
    let spec = ClusterSpec {
        extra_toml: "cwd = \".\"\n".into(),
        log_dir: std::env::var_os("TANDEM_TEST_LOGS").map(Into::into),
        exe: Some(EXE.into()),
        ..ClusterSpec::new(&["alpha", "beta"], service)
    };
    let cluster = LocalCluster::create(&spec).expect("create the cluster");
    cluster.enable_sync(keys).expect("enable sync");
    cluster
}

/// [`sync_cluster`], started.
fn sync_pair(service: Vec<String>, keys: &str) -> LocalCluster {
    let mut cluster = sync_cluster(service, keys);
    cluster.start_all().expect("start the pair");
    cluster
}

fn name_service() -> Vec<String> {
    vec![EXE.into(), "bench".into(), "name-service".into()]
}

fn relay_pair(next_hop: SocketAddr, keys: &str) -> LocalCluster {
    let script =
        format!("exec {EXE} mta serve --spool \"data/$TANDEM_NODE/spool\" --relay-to {next_hop}");
    sync_pair(vec!["sh".into(), "-c".into(), script], keys)
}

fn name_service_pair(keys: &str) -> LocalCluster {
    sync_pair(name_service(), keys)
}

/// Waits until node `active` is active, the other standby, and the
/// active's replicator has every standby in sync.
fn settle_in_sync(rt: &tokio::runtime::Runtime, cluster: &LocalCluster, active: usize) {
    rt.block_on(cluster.wait_for_active(active, Duration::from_secs(15)))
        .expect("wait for the active");
    let peers_in_sync = |status: &StatusReport| {
        status
            .replicator()
            .is_some_and(|r| r.peers.iter().all(|p| p.state == PeerState::InSync))
    };
    wait_until("the standby in sync", Duration::from_secs(10), || {
        rt.block_on(cluster.status(active))
            .is_some_and(|s| peers_in_sync(&s))
    });
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn send(rt: &tokio::runtime::Runtime, to: SocketAddr, messages: u64) -> LoadReport {
    rt.block_on(load(LoadOptions {
        to,
        messages,
        concurrency: 4,
        size: 2048,
        timeout: Duration::from_secs(20),
    }))
    .expect("send the load")
}

/// The file names in a spool's queue.
fn queued(data_dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(data_dir.join("spool/queue"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn tandem(cluster: &LocalCluster, node: usize, args: &[&str]) -> (i32, String, String) {
    cluster.cli(node, args)
}

/// Node `i`'s status report; panics when its agent does not answer.
fn status_of(rt: &tokio::runtime::Runtime, cluster: &LocalCluster, i: usize) -> StatusReport {
    rt.block_on(cluster.status(i))
        .unwrap_or_else(|| panic!("{} did not answer", cluster.nodes[i].name))
}

/// The config sync part of a status report, if the node has `[sync]`.
fn config_sync(status: &StatusReport) -> Option<&ConfigSyncStatus> {
    status.sync.detail.as_ref().map(|d| &d.config)
}

/// The guarantee of `semi`: a 250 means the standby has the message on
/// disk, so a kill -9 of the active right after it loses nothing.
#[test]
fn semi_acknowledged_mail_is_on_the_standby_and_delivered_after_kill_9() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let rt = runtime();
    // The next hop is down for now: acknowledged mail stays spooled.
    let next_hop = free_addr();
    let mut cluster = relay_pair(next_hop, "data_sync = \"semi\"\n");
    settle_in_sync(&rt, &cluster, 0);

    let report = send(&rt, cluster.vip, 30);
    assert_eq!(report.acknowledged, 30, "{report:?}");
    // The standby acks from its log; the sync report's manifest puts the
    // log in its data dir first, and must find both nodes agreeing.
    let (code, out, err) = tandem(&cluster, 0, &["sync", "report"]);
    assert_eq!(code, 0, "{out}{err}");
    let on_active = queued(&cluster.data_dir(0));
    let on_standby = queued(&cluster.data_dir(1));
    assert_eq!(on_active.len(), 30, "every message spooled on the active");
    assert!(
        on_active.is_subset(&on_standby),
        "acknowledged but not on the standby: {:?}",
        on_active.difference(&on_standby).collect::<Vec<_>>()
    );

    // One more, and the active dies right after its 250.
    let last = send(&rt, cluster.vip, 1);
    assert_eq!(last.acknowledged, 1, "{last:?}");
    cluster.kill(0);
    let acked: Vec<String> = report
        .acked_ids
        .iter()
        .chain(&last.acked_ids)
        .cloned()
        .collect();

    let sink = rt
        .block_on(Sink::bind(Listen::Bind(vec![next_hop]), 0))
        .expect("bind the sink");
    wait_until(
        "every acknowledged message at the sink",
        Duration::from_secs(20),
        || sink.report(Some(&acked)).missing == Some(0),
    );
    let delivered = sink.report(Some(&acked));
    println!(
        "crash after 250: acknowledged {} delivered {} duplicates {}",
        acked.len(),
        delivered.distinct_ids,
        delivered.duplicates
    );
    let status = status_of(&rt, &cluster, 1);
    assert_eq!(
        status.node.effective_role,
        EffectiveRole::Active,
        "{status:?}"
    );
}

/// Both nodes die right after their 250s: first the standby (before its
/// log reached its data dir), then the active. The standby comes back
/// alone, replays its log, takes over and delivers every acknowledged
/// message: RPO 0 holds with the standby log.
#[test]
fn acknowledged_mail_survives_a_kill_9_of_both_nodes_from_the_standby_log() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let rt = runtime();
    let next_hop = free_addr();
    let mut cluster = relay_pair(next_hop, "data_sync = \"semi\"\n");
    settle_in_sync(&rt, &cluster, 0);

    let report = send(&rt, cluster.vip, 20);
    assert_eq!(report.acknowledged, 20, "{report:?}");
    cluster.kill(1);
    cluster.kill(0);
    let sink = rt
        .block_on(Sink::bind(Listen::Bind(vec![next_hop]), 0))
        .expect("bind the sink");
    cluster.start(1).expect("restart beta");
    wait_until(
        "every acknowledged message at the sink",
        Duration::from_secs(30),
        || sink.report(Some(&report.acked_ids)).missing == Some(0),
    );
    let status = status_of(&rt, &cluster, 1);
    assert_eq!(
        status.node.effective_role,
        EffectiveRole::Active,
        "{status:?}"
    );
}

/// Reads one SMTP reply (every line of a multi-line one); its last line.
fn smtp_reply(reader: &mut impl std::io::BufRead) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return line,
            Ok(_) if line.as_bytes().get(3) == Some(&b'-') => continue,
            Ok(_) => return line,
        }
    }
}

/// A `semi` pair of relays that drain themselves (`suspend = "signal"`),
/// started.
fn draining_relay_pair(next_hop: SocketAddr) -> LocalCluster {
    let script =
        format!("exec {EXE} mta serve --spool \"data/$TANDEM_NODE/spool\" --relay-to {next_hop}");
    let spec = ClusterSpec {
        extra_toml: "cwd = \".\"\nsuspend = \"signal\"\n".into(),
        log_dir: std::env::var_os("TANDEM_TEST_LOGS").map(Into::into),
        exe: Some(EXE.into()),
        ..ClusterSpec::new(&["alpha", "beta"], vec!["sh".into(), "-c".into(), script])
    };
    let mut cluster = LocalCluster::create(&spec).expect("create the cluster");
    cluster
        .enable_sync("data_sync = \"semi\"\n")
        .expect("enable sync");
    cluster.start_all().expect("start the pair");
    cluster
}

/// A planned handover with `semi` (`failover standby`): a session in
/// progress on the active when the operator asks is finished there while
/// that node is still active — its message gets its 250 and is on the new
/// active's disk — instead of being refused because its node stopped being
/// active mid-session (what a switchover under load used to do).
#[test]
fn a_session_open_at_a_planned_handover_is_acknowledged_and_on_the_new_active() {
    use std::io::{BufReader, Write};
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let rt = runtime();
    // The next hop is down: the message stays in the spools to be seen.
    let cluster = draining_relay_pair(free_addr());
    settle_in_sync(&rt, &cluster, 0);

    // A session on the active, up to the message's body.
    let stream = std::net::TcpStream::connect(cluster.vip).expect("connect to the VIP");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("set the read timeout");
    let mut writer = stream.try_clone().expect("clone the stream");
    let mut reader = BufReader::new(stream);
    let mut say = |line: &str, reader: &mut BufReader<std::net::TcpStream>| {
        writer
            .write_all(line.as_bytes())
            .unwrap_or_else(|e| panic!("send {line:?}: {e:#}"));
        smtp_reply(reader)
    };
    assert!(smtp_reply(&mut reader).starts_with("220"));
    assert!(say("EHLO handover.test\r\n", &mut reader).starts_with("250"));
    assert!(say("MAIL FROM:<a@client.test>\r\n", &mut reader).starts_with("250"));
    assert!(say("RCPT TO:<b@dest.test>\r\n", &mut reader).starts_with("250"));
    assert!(say("DATA\r\n", &mut reader).starts_with("354"));

    std::thread::scope(|scope| {
        let handover = scope.spawn(|| tandem(&cluster, 0, &["failover", "standby"]));
        // The handover has begun: alpha drains (its listener suspended) or
        // has already given up the service.
        wait_until("the handover to begin", Duration::from_secs(10), || {
            rt.block_on(cluster.status(0)).is_some_and(|s| {
                s.agent.listener == ListenerState::Suspended
                    || s.node.effective_role != EffectiveRole::Active
            })
        });
        let answer = say(
            "X-Tandem-Id: handover-1\r\nSubject: open at the handover\r\n\r\nbody\r\n.\r\n",
            &mut reader,
        );
        assert!(
            answer.starts_with("250"),
            "the message of a session open at the handover: {answer:?}"
        );
        let _ = say("QUIT\r\n", &mut reader);
        let (code, out, err) = handover.join().expect("join the cli thread");
        assert_eq!(code, 0, "failover standby: {out}{err}");
    });
    rt.block_on(cluster.wait_for_active(1, Duration::from_secs(15)))
        .expect("wait for beta to be active");
    // semi: acknowledged means on the standby's disk, which serves now.
    assert_eq!(
        queued(&cluster.data_dir(1)).len(),
        1,
        "the acknowledged message in the new active's spool"
    );
}

/// A planned handover that drained the service and was then refused (no
/// standby to take over) leaves the node serving: its listener resumed.
#[test]
fn a_refused_handover_resumes_the_drained_listener() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let rt = runtime();
    let sink_addr = free_addr();
    let sink = rt
        .block_on(Sink::bind(Listen::Bind(vec![sink_addr]), 0))
        .expect("bind the sink");
    let mut cluster = draining_relay_pair(sink_addr);
    settle_in_sync(&rt, &cluster, 0);
    cluster.kill(1);
    wait_until("the standby seen gone", Duration::from_secs(10), || {
        rt.block_on(cluster.status(0))
            .is_some_and(|s| s.node.peers.first().is_some_and(|p| !p.alive))
    });
    let (code, out, err) = tandem(&cluster, 0, &["failover", "standby"]);
    assert_ne!(code, 0, "no standby to hand over to: {out}{err}");
    let status = status_of(&rt, &cluster, 0);
    assert_eq!(
        status.node.effective_role,
        EffectiveRole::Active,
        "{status:?}"
    );
    assert_eq!(status.agent.listener, ListenerState::Open, "{status:?}");
    let after = send(&rt, cluster.vip, 3);
    assert_eq!(after.acknowledged, 3, "served after the refusal: {after:?}");
    wait_until("the mail delivered", Duration::from_secs(10), || {
        sink.report(Some(&after.acked_ids)).missing == Some(0)
    });
}

/// A standby that is down: `degrade` carries on and says so; `strict`
/// refuses, so the relay answers 4xx and the client keeps its message.
#[test]
fn standby_down_degrade_carries_on_strict_refuses() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let rt = runtime();
    for mode in ["degrade", "strict"] {
        let sink_addr = free_addr();
        let sink = rt
            .block_on(Sink::bind(Listen::Bind(vec![sink_addr]), 0))
            .expect("bind the sink");
        let mut cluster = relay_pair(
            sink_addr,
            &format!("data_sync = \"semi\"\nsync_mode = \"{mode}\"\nsync_timeout = \"500ms\"\n"),
        );
        settle_in_sync(&rt, &cluster, 0);
        let before = send(&rt, cluster.vip, 3);
        assert_eq!(before.acknowledged, 3, "{mode}: {before:?}");

        cluster.kill(1);
        wait_until("the standby seen gone", Duration::from_secs(5), || {
            rt.block_on(cluster.status(0)).is_some_and(|s| {
                s.replicator()
                    .and_then(|r| r.peers.first())
                    .is_some_and(|p| p.state == PeerState::Disconnected)
            })
        });
        let after = send(&rt, cluster.vip, 3);
        let status = status_of(&rt, &cluster, 0);
        let replicator = status.replicator();
        if mode == "degrade" {
            assert_eq!(after.acknowledged, 3, "degrade: {after:?}");
            assert!(
                replicator.is_some_and(|r| r.degraded_commits >= 3),
                "{replicator:?}"
            );
        } else {
            assert_eq!(after.acknowledged, 0, "strict: {after:?}");
            assert_eq!(after.rejected, 3, "strict: {after:?}");
            assert!(
                replicator.is_some_and(|r| r.failed_commits >= 3),
                "{replicator:?}"
            );
        }
        // Nothing acknowledged is lost either way.
        let acked: Vec<String> = before
            .acked_ids
            .iter()
            .chain(&after.acked_ids)
            .cloned()
            .collect();
        wait_until(
            "acknowledged mail delivered",
            Duration::from_secs(10),
            || sink.report(Some(&acked)).missing == Some(0),
        );
    }
}

/// Huawei's synchronization report: a file changed by hand on the standby
/// shows as a difference (exit 1); `tandem ha resync` puts it right.
#[test]
fn sync_report_shows_a_difference_made_by_hand_and_resync_repairs_it() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let rt = runtime();
    let cluster = name_service_pair("data_sync = \"semi\"\n");
    settle_in_sync(&rt, &cluster, 0);
    std::fs::write(cluster.data_dir(0).join("shared.txt"), "from the active\n")
        .expect("write alpha's shared.txt");
    let resync = tandem(&cluster, 1, &["ha", "resync", "--json"]);
    assert_eq!(resync.0, 0, "{resync:?}");
    let (code, out, err) = tandem(&cluster, 0, &["sync", "report"]);
    assert_eq!(code, 0, "in step after the resync: {out}{err}");

    std::fs::write(cluster.data_dir(1).join("shared.txt"), "edited by hand\n")
        .expect("write beta's shared.txt");
    // Asked of the standby: it points the CLI at the active.
    let (code, out, err) = tandem(&cluster, 1, &["sync", "report"]);
    assert_eq!(code, 1, "a difference: {out}{err}");
    assert!(out.contains("data/shared.txt"), "{out}");
    let (code, json, _) = tandem(&cluster, 0, &["sync", "report", "--json"]);
    assert_eq!(code, 1);
    let report: Value = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("parse the sync report as JSON: {e:#}\n{json}"));
    assert_eq!(report["agree"], false, "{report}");

    let resync = tandem(&cluster, 0, &["ha", "resync"]);
    assert_eq!(resync.0, 0, "{resync:?}");
    assert!(resync.1.contains("beta: resynced"), "{resync:?}");
    let text = std::fs::read_to_string(cluster.data_dir(1).join("shared.txt"))
        .expect("read beta's shared.txt");
    assert_eq!(text, "from the active\n");
    let (code, out, err) = tandem(&cluster, 0, &["sync", "report"]);
    assert_eq!(code, 0, "{out}{err}");
}

/// A node whose certificate another CA signed is refused by its peer,
/// with a reason, and never counts as in sync.
#[test]
fn a_certificate_from_another_ca_is_refused() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let rt = runtime();
    let spec_keys = "data_sync = \"semi\"\n";
    let spec = ClusterSpec {
        exe: Some(EXE.into()),
        ..ClusterSpec::new(&["alpha", "beta"], name_service())
    };
    let mut cluster = LocalCluster::create(&spec).expect("create the cluster");
    cluster.enable_sync(spec_keys).expect("enable sync");
    // alpha's certificate and key from a rogue CA; the trusted CA stays.
    let rogue = cluster.dir.join("rogue");
    tandem_sync::cert::init(&rogue.join("ca")).expect("create the rogue CA");
    tandem_sync::cert::issue(&rogue.join("ca"), "alpha", &rogue.join("certs"))
        .expect("issue alpha's rogue certificate");
    for file in ["alpha.pem", "alpha.key"] {
        std::fs::copy(
            rogue.join("certs").join(file),
            cluster.dir.join("certs").join(file),
        )
        .expect("copy a rogue certificate file");
    }
    cluster.start_all().expect("start the pair");
    let role = |i: usize| {
        rt.block_on(cluster.status(i))
            .map(|s| s.node.effective_role)
    };
    // alpha serves; beta, which the active cannot reach, counts as stale.
    wait_until(
        "alpha active, beta syncing",
        Duration::from_secs(15),
        || role(0) == Some(EffectiveRole::Active) && role(1) == Some(EffectiveRole::Syncing),
    );
    wait_until(
        "beta to refuse alpha's certificate",
        Duration::from_secs(10),
        || {
            rt.block_on(cluster.status(1))
                .and_then(|s| s.sync.detail)
                .is_some_and(|d| d.receiver.refused_connections > 0)
        },
    );
    let standby = status_of(&rt, &cluster, 1);
    let why = standby
        .sync
        .detail
        .as_ref()
        .and_then(|d| d.receiver.last_refused.as_deref())
        .unwrap_or("");
    assert!(why.contains("TLS"), "{standby:?}");
    let active = status_of(&rt, &cluster, 0);
    assert_ne!(
        active
            .replicator()
            .and_then(|r| r.peers.first())
            .map(|p| p.state),
        Some(PeerState::InSync),
        "{active:?}"
    );
}

/// Reads a file the test expects to exist, or an empty string.
/// Lists `name` under `[sync] config` on every node, at
/// `etc/NODE/name` (where its own service would read it), with the
/// content given for each node; returns the files' paths. `[sync]` is the
/// last section of a node's config, so the key can be appended.
fn list_config_file(cluster: &LocalCluster, name: &str, contents: &[&str]) -> Vec<PathBuf> {
    cluster
        .nodes
        .iter()
        .zip(contents)
        .map(|(node, content)| {
            let mut config = read(&node.config);
            config.push_str(&format!("config = [\"etc/{}/{name}\"]\n", node.name));
            std::fs::write(&node.config, config).expect("write the node config");
            let file = cluster.dir.join("etc").join(&node.name).join(name);
            std::fs::create_dir_all(file.parent().unwrap_or(Path::new("/")))
                .expect("create the config dir");
            std::fs::write(&file, content).expect("write the config file");
            file
        })
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Config sync (FortiMail, ESA): the active pushes a cluster config file
/// at start and on every change; an edit on the standby is undone with a
/// warning naming the primary; a change asked of the standby is refused;
/// while a node is disconnected from cluster config, changes are refused
/// cluster-wide unless forced, and the sync report shows the difference;
/// a held change goes out once the node reconnects.
#[test]
fn config_files_follow_the_primary_and_changes_elsewhere_are_refused() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let rt = runtime();
    let mut cluster = sync_cluster(
        name_service(),
        "data_sync = \"semi\"\nconfig_sync_interval = \"1s\"",
    );
    let paths = list_config_file(
        &cluster,
        "relay.toml",
        &["limit = 1\n", "limit = 99 # stale\n"],
    );
    let relay_toml = |i: usize| paths[i].clone();
    cluster.start_all().expect("start the pair");
    settle_in_sync(&rt, &cluster, 0);
    let wait = Duration::from_secs(10);

    // The primary's copy wins at start, and every change follows it.
    wait_until("the first push", wait, || {
        read(&relay_toml(1)) == "limit = 1\n"
    });
    std::fs::write(relay_toml(0), "limit = 2\n").expect("write alpha's relay.toml");
    wait_until("the edit pushed", wait, || {
        read(&relay_toml(1)) == "limit = 2\n"
    });

    // An edit on the standby is undone, and the standby says why.
    std::fs::write(relay_toml(1), "limit = 3 # on beta\n").expect("write beta's relay.toml");
    wait_until("the standby's edit undone", wait, || {
        read(&relay_toml(1)) == "limit = 2\n"
    });
    let beta = status_of(&rt, &cluster, 1);
    let refused = config_sync(&beta);
    assert!(
        refused.is_some_and(|c| c.refused_local_edits >= 1),
        "{beta:?}"
    );
    let why = refused
        .and_then(|c| c.last_refused.as_deref())
        .unwrap_or("");
    assert!(why.contains("standby") && why.contains("alpha"), "{why}");
    let (_, table, _) = tandem(&cluster, 0, &["status"]);
    assert!(
        table.contains("beta: 1 local config edit(s) refused"),
        "{table}"
    );

    // Through the API: refused on the standby, naming the primary.
    let new = cluster.dir.join("relay.new.toml");
    std::fs::write(&new, "limit = 4\n").expect("write relay.new.toml");
    let new = new.to_string_lossy().into_owned();
    let (code, out, err) = tandem(&cluster, 1, &["config", "put", "relay.toml", &new]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("standby") && err.contains("alpha"), "{err}");
    let (code, out, err) = tandem(&cluster, 0, &["config", "put", "relay.toml", &new]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("beta: installed"), "{out}");
    assert_eq!(read(&relay_toml(1)), "limit = 4\n");

    // beta disconnects from cluster config (an upgrade): changes are
    // refused cluster-wide, unless forced; beta keeps its own copy.
    let beta_api = cluster.client(1).expect("connect to beta's API");
    let _: ConfigLinkAnswer = rt
        .block_on(beta_api.post("/v1/config-link", &ConfigLinkRequest { connected: false }))
        .expect("disconnect beta from cluster config");
    std::fs::write(cluster.dir.join("relay.new.toml"), "limit = 5\n")
        .expect("write relay.new.toml");
    let (code, _, err) = tandem(&cluster, 0, &["config", "put", "relay.toml", &new]);
    assert_ne!(code, 0);
    assert!(
        err.contains("beta is disconnected from cluster config"),
        "{err}"
    );
    assert_eq!(
        read(&relay_toml(0)),
        "limit = 4\n",
        "a refused change is not made"
    );
    let (code, out, err) = tandem(
        &cluster,
        0,
        &["config", "put", "--force", "relay.toml", &new],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("beta: not taken"), "{out}");
    assert_eq!(read(&relay_toml(0)), "limit = 5\n");
    assert_eq!(read(&relay_toml(1)), "limit = 4\n");
    let (code, out, err) = tandem(&cluster, 0, &["sync", "report"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("config/relay.toml"), "{out}");

    // A hand edit on the primary is held while beta is disconnected...
    std::fs::write(relay_toml(0), "limit = 6\n").expect("write alpha's relay.toml");
    wait_until("the change held", wait, || {
        rt.block_on(cluster.status(0))
            .is_some_and(|s| config_sync(&s).is_some_and(|c| c.held.contains_key("relay.toml")))
    });
    let (code, out, _) = tandem(&cluster, 0, &["config", "show"]);
    assert_eq!(code, 1, "a held change: {out}");
    assert!(
        out.contains("held: relay.toml") && out.contains("CHANGED"),
        "{out}"
    );
    let (_, table, _) = tandem(&cluster, 0, &["status"]);
    assert!(
        table.contains("beta: disconnected from cluster config")
            && table.contains("alpha: config change to relay.toml held"),
        "{table}"
    );
    // ...and goes out once beta reconnects (the periodic push).
    let _: ConfigLinkAnswer = rt
        .block_on(beta_api.post("/v1/config-link", &ConfigLinkRequest { connected: true }))
        .expect("reconnect beta to cluster config");
    wait_until("the held change pushed", wait, || {
        read(&relay_toml(1)) == "limit = 6\n"
    });
    let (code, out, err) = tandem(&cluster, 0, &["sync", "report"]);
    assert_eq!(code, 0, "{out}{err}");
}

/// A node that stopped while catching up comes back stale: alone, it does
/// not serve with what it has (its peer may have taken mail it lacks), and
/// `failover active` is refused; `--force` takes over and says what it may
/// lose. Its data is then the reference: the mark is gone, and the peer
/// that comes back is caught up from it before it may preempt.
#[test]
fn a_node_marked_stale_does_not_serve_alone_until_caught_up() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let rt = runtime();
    let mut cluster = sync_cluster(name_service(), "data_sync = \"semi\"");
    // What the agent leaves behind when it dies mid-catch-up.
    let marker = cluster.dir.join("state/beta/data-stale");
    std::fs::create_dir_all(cluster.dir.join("state/beta")).expect("create beta's state dir");
    std::fs::write(&marker, "behind\n").expect("write the data-stale marker");
    cluster.start(1).expect("start beta");
    let role = |cluster: &LocalCluster, i: usize| {
        rt.block_on(cluster.status(i))
            .map(|s| s.node.effective_role)
    };
    wait_until("beta up", Duration::from_secs(10), || {
        role(&cluster, 1).is_some()
    });
    // Alone, an unmarked node takes over within its dead interval (under
    // a second here); give it several times that.
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        assert_eq!(
            role(&cluster, 1),
            Some(EffectiveRole::Syncing),
            "a stale node must not serve alone"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, _, err) = tandem(&cluster, 1, &["failover", "active"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not in sync"), "{err}");
    let (code, out, err) = tandem(&cluster, 1, &["failover", "active", "--force"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("may lose"),
        "the forced takeover says its cost: {err}"
    );
    wait_until("beta active", Duration::from_secs(10), || {
        role(&cluster, 1) == Some(EffectiveRole::Active) && !marker.exists()
    });
    // alpha, the preferred node, comes back: it may preempt only once beta
    // has caught it up, so nothing beta took is left behind.
    cluster.start(0).expect("start alpha");
    settle_in_sync(&rt, &cluster, 0);
    assert!(!cluster.dir.join("state/alpha/data-stale").exists());
}

/// In active-active every node serves its own data: replicating it would
/// let each node's catch-up delete the other's. The config says so, and
/// with `data_sync = "off"` config files still sync.
#[test]
fn active_active_with_data_replication_is_refused_by_the_config() {
    for (data_sync, expected) in [("semi", 2), ("off", 0)] {
        let spec = ClusterSpec {
            groups: 2,
            exe: Some(EXE.into()),
            ..ClusterSpec::new(&["alpha", "beta"], name_service())
        };
        let cluster = LocalCluster::create(&spec).expect("create the cluster");
        cluster
            .enable_sync(&format!("data_sync = \"{data_sync}\""))
            .expect("enable sync");
        let out = std::process::Command::new(EXE)
            .args(["config", "check"])
            .arg(&cluster.nodes[0].config)
            .output()
            .expect("run config check");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(expected), "{data_sync}: {err}");
        if expected != 0 {
            assert!(
                err.contains("sync.data_sync") && err.contains("active-active"),
                "{err}"
            );
        }
    }
}

/// `tandem bench sync --json` prints the figures issues 6 and 14 name, and
/// its crash and return runs lose nothing acknowledged: the benchmark itself can fail,
/// not only the tests beside it.
#[test]
fn bench_sync_prints_its_figures_and_loses_nothing_in_the_crash_run() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let out = std::process::Command::new(EXE)
        .args(["--json", "bench", "sync", "--messages", "200"])
        .args(["--concurrency", "4", "--rounds", "1", "--returns", "1"])
        .output()
        .expect("run bench sync");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("parse the bench report as JSON: {e:#}\n{stdout}"));
    for mode in ["off", "async", "semi"] {
        assert_eq!(report[mode]["acknowledged"], 200, "{mode}: {report}");
        assert!(report[mode]["msgs_per_s"].as_f64() > Some(0.0), "{report}");
    }
    assert!(report["async"]["lag_p99_ms"].is_u64(), "{report}");
    assert!(report["semi"]["commit_p99_ms"].is_number(), "{report}");
    assert!(report["semi_vs_off_pct"].as_f64() > Some(0.0), "{report}");
    let crash = &report["crash"];
    assert!(crash["acknowledged"].as_u64() > Some(0), "{report}");
    assert_eq!(crash["lost"], 0, "{report}");
    assert_eq!(crash["delivered"], crash["acknowledged"], "{report}");
    let back = &report["return"];
    assert!(back["acknowledged"].as_u64() > Some(0), "{report}");
    assert_eq!(back["lost"], 0, "{report}");
    assert!(back["restart_to_active_ms_median"].is_u64(), "{report}");
}

/// `on_config_change = "signal:HUP"`: a cluster config file changed on
/// one node reloads the service on every node that runs it: here, the
/// node where it was edited and the node it was pushed to (active-active,
/// so both serve). The periodic pushes of unchanged files reload nothing.
#[test]
fn a_changed_config_file_reloads_the_running_service_on_every_node() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let rt = runtime();
    let service = "trap 'echo hup >> hups-$TANDEM_NODE' HUP; while :; do sleep 0.2 & wait $!; done";
    let spec = ClusterSpec {
        extra_toml: "cwd = \".\"\n".into(),
        groups: 2,
        exe: Some(EXE.into()),
        ..ClusterSpec::new(
            &["alpha", "beta"],
            vec!["sh".into(), "-c".into(), service.into()],
        )
    };
    let mut cluster = LocalCluster::create(&spec).expect("create the cluster");
    cluster
        .enable_sync(
            "data_sync = \"off\"\nconfig_sync_interval = \"1s\"\non_config_change = \"signal:HUP\"",
        )
        .expect("enable sync");
    let paths = list_config_file(&cluster, "app.conf", &["workers = 1\n"; 2]);
    let app_conf = |i: usize| paths[i].clone();
    cluster.start_all().expect("start the pair");
    let logs: Vec<std::path::PathBuf> = cluster
        .nodes
        .iter()
        .map(|n| cluster.dir.join(format!("hups-{}", n.name)))
        .collect();
    let hups = |i: usize| read(&logs[i]).lines().count();
    let wait = Duration::from_secs(15);
    // Both nodes serve and have pushed (the same file: nothing changed).
    wait_until("both nodes serving and pushing", wait, || {
        (0..2).all(|i| {
            rt.block_on(cluster.status(i)).is_some_and(|s| {
                s.agent.service_pid.is_some()
                    && config_sync(&s).is_some_and(|c| c.last_push_unix_ms.is_some())
            })
        })
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!((hups(0), hups(1)), (0, 0), "reloaded with nothing changed");

    std::fs::write(app_conf(0), "workers = 4\n").expect("write alpha's app.conf");
    wait_until("both services reloaded", wait, || {
        hups(0) >= 1 && hups(1) >= 1
    });
    assert_eq!(read(&app_conf(1)), "workers = 4\n");
    // Periodic pushes of the unchanged file follow: no more reloads.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!((hups(0), hups(1)), (1, 1));
}
