//! `coordination = "etcd"` with a real etcd (Debian's `etcd-server`) on
//! loopback: each test starts its own members in a temporary directory and
//! stops them. A crash is proven by the closed connection and taken over at
//! once; a hung active is replaced once its lease ends and fences itself
//! when it wakes; a dead etcd makes the active stand down, and all comes
//! back with it; bad settings and a hand-written leader key get clear
//! errors and never two actives. Skips, saying why, without an `etcd`.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tandem::localcluster::{ClusterSpec, LocalCluster};
use tandem::localetcd::LocalEtcd;
use tandem_core::EffectiveRole;

const EXE: &str = env!("CARGO_BIN_EXE_tandem");

fn etcd_or_skip(test: &str) -> bool {
    if LocalEtcd::binary().is_none() {
        eprintln!("{test}: skipped: no `etcd` on PATH (Debian package etcd-server)");
        return false;
    }
    true
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build the runtime")
}

fn pair(etcd: &LocalEtcd) -> LocalCluster {
    pair_with(etcd, "")
}

/// A started pair whose `[etcd]` table (the config's last) gets `keys`.
fn pair_with(etcd: &LocalEtcd, keys: &str) -> LocalCluster {
    let spec = ClusterSpec {
        exe: Some(EXE.into()),
        etcd: etcd.endpoints(),
        ..ClusterSpec::new(
            &["alpha", "beta"],
            vec![EXE.into(), "bench".into(), "name-service".into()],
        )
    };
    let mut cluster = LocalCluster::create(&spec).expect("create the cluster");
    for node in &cluster.nodes {
        let mut text = std::fs::read_to_string(&node.config).expect("read a config");
        text.push_str(keys);
        std::fs::write(&node.config, text).expect("write a config");
    }
    cluster.start_all().expect("start the pair");
    cluster
}

fn role(rt: &tokio::runtime::Runtime, cluster: &LocalCluster, i: usize) -> Option<EffectiveRole> {
    rt.block_on(cluster.status(i))
        .map(|s| s.node.effective_role)
}

/// Who answers on the VIP (the service writes its node's name).
fn vip_answer(vip: SocketAddr) -> Option<String> {
    let stream = TcpStream::connect_timeout(&vip, Duration::from_millis(300)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    Some(line.trim().to_string())
}

/// Polls every 20 ms until `done`, failing after `within`; returns the
/// time it took.
fn wait(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "not {what} within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn settled(rt: &tokio::runtime::Runtime, cluster: &LocalCluster) {
    rt.block_on(cluster.wait_for_active(0, Duration::from_secs(20)))
        .expect("alpha active, beta standby");
    wait("alpha on the VIP", Duration::from_secs(5), || {
        vip_answer(cluster.vip).as_deref() == Some("alpha")
    });
}

#[test]
fn the_holder_serves_under_an_epoch_and_a_crash_is_taken_over_at_once() {
    if !etcd_or_skip("crash") {
        return;
    }
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let etcd = LocalEtcd::start(dir.path(), 1).expect("start etcd");
    let rt = runtime();
    // A long lease sets the two paths well apart on a loaded machine.
    let mut cluster = pair_with(&etcd, "ttl = \"6s\"\n");
    settled(&rt, &cluster);
    let alpha = rt.block_on(cluster.status(0)).expect("alpha answers");
    let epoch = alpha.node.groups.first().and_then(|g| g.epoch);
    assert!(epoch.is_some(), "alpha holds the key: {alpha:?}");
    let (code, table, err) = cluster.cli(1, &["status"]);
    assert_eq!(code, 0, "{err}");
    let note = format!(
        "alpha: holds group 0 under etcd epoch {}",
        epoch.unwrap_or(0)
    );
    assert!(
        table.contains(&note),
        "the status says who holds the key: {table}"
    );

    // Both crash-detection connections are up once a few heartbeats went
    // by; a kill before that is seen only by the heartbeat timeout.
    wait("beta hearing alpha", Duration::from_secs(5), || {
        rt.block_on(cluster.status(1))
            .is_some_and(|s| s.node.counters.heartbeats_received >= 3)
    });
    // A write stamped with an older epoch (a paused active that woke) is
    // refused by every agent; the current epoch passes.
    let write = |epoch: u64| {
        let request =
            tandem_agent::api::CommandRequest::here(tandem_core::Command::HaPreempt(true));
        rt.block_on(async {
            reqwest::Client::new()
                .post(format!("http://{}/v1/command", cluster.nodes[1].api))
                .bearer_auth(cluster.token())
                .header(tandem_agent::api::EPOCH_HEADER, epoch)
                .json(&request)
                .send()
                .await
                .expect("post a command to beta")
        })
    };
    let current = epoch.unwrap_or(0);
    let stale = write(current - 1);
    assert_eq!(stale.status().as_u16(), 409);
    let body = rt.block_on(stale.text()).unwrap_or_default();
    assert!(body.contains("stale fencing epoch"), "{body}");
    assert_eq!(write(current).status().as_u16(), 200);
    let metrics = rt.block_on(async {
        reqwest::get(format!("http://{}/metrics", cluster.nodes[1].api))
            .await
            .expect("get beta's metrics")
            .text()
            .await
            .unwrap_or_default()
    });
    assert!(
        metrics.contains("tandem_stale_writes_total{node=\"beta\"} 1"),
        "the refusal is counted: {metrics}"
    );
    cluster.kill(0);
    let took = wait("beta active", Duration::from_secs(10), || {
        role(&rt, &cluster, 1) == Some(EffectiveRole::Active)
    });
    // Proof of death (the closed connection) lets beta take alpha's key at
    // once: waiting for the lease would take at least 5.25 s (6 s TTL, a
    // renewal every 750 ms). The figure itself is `bench failover`'s.
    assert!(took < Duration::from_secs(4), "beta took {took:?}");
    let beta = rt.block_on(cluster.status(1)).expect("beta answers");
    let newer = beta.node.groups.first().and_then(|g| g.epoch);
    assert!(newer > epoch, "the epoch grows: {epoch:?} → {newer:?}");
    wait("beta on the VIP", Duration::from_secs(5), || {
        vip_answer(cluster.vip).as_deref() == Some("beta")
    });
    // Its member key follows its role (Patroni's members/NODE).
    wait(
        "beta's member key saying active",
        Duration::from_secs(5),
        || {
            rt.block_on(etcd.value("/tandem/local/members/beta"))
                .ok()
                .flatten()
                .is_some_and(|v| v.contains("\"role\":\"active\""))
        },
    );

    // The primary comes back and is handed the group.
    cluster.start(0).expect("restart alpha");
    rt.block_on(cluster.wait_for_active(0, Duration::from_secs(20)))
        .expect("alpha active again");
}

#[test]
fn a_hung_active_is_replaced_after_its_lease_and_stands_down_when_it_wakes() {
    if !etcd_or_skip("hang") {
        return;
    }
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let etcd = LocalEtcd::start(dir.path(), 1).expect("start etcd");
    let rt = runtime();
    let cluster = pair(&etcd);
    settled(&rt, &cluster);
    cluster.signal(0, libc::SIGSTOP);
    let took = wait("beta active", Duration::from_secs(10), || {
        role(&rt, &cluster, 1) == Some(EffectiveRole::Active)
    });
    // Not before the lease (2 s TTL) could end at etcd.
    assert!(took >= Duration::from_millis(1500), "beta took {took:?}");
    cluster.signal(0, libc::SIGCONT);
    wait("alpha standing down", Duration::from_secs(5), || {
        role(&rt, &cluster, 0).is_some_and(|r| r != EffectiveRole::Active)
    });
    let alpha = rt.block_on(cluster.status(0)).expect("alpha answers");
    assert!(
        alpha.node.counters.self_fenced >= 1,
        "{:?}",
        alpha.node.counters
    );
}

#[test]
fn without_etcd_the_active_stands_down_and_all_returns_with_it() {
    if !etcd_or_skip("etcd down") {
        return;
    }
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let mut etcd = LocalEtcd::start(dir.path(), 1).expect("start etcd");
    let rt = runtime();
    let cluster = pair(&etcd);
    settled(&rt, &cluster);
    etcd.kill(0);
    // alpha stands down by itself, 1.5 s after its last renewal (the
    // bound is loose: the poll runs on a shared machine).
    wait("nobody active", Duration::from_secs(5), || {
        (0..2).all(|i| role(&rt, &cluster, i) != Some(EffectiveRole::Active))
    });
    // And nobody serves while etcd is away.
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            (0..2).all(|i| role(&rt, &cluster, i) != Some(EffectiveRole::Active)),
            "a node serves without etcd"
        );
    }
    etcd.restart(0).expect("restart etcd");
    etcd.wait_all_healthy(Duration::from_secs(20))
        .expect("etcd healthy again");
    wait("one active again", Duration::from_secs(20), || {
        (0..2)
            .filter(|i| role(&rt, &cluster, *i) == Some(EffectiveRole::Active))
            .count()
            == 1
    });
}

#[test]
fn an_unreachable_etcd_stops_the_agent_with_its_endpoints_named() {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let spec = ClusterSpec {
        exe: Some(EXE.into()),
        etcd: vec![endpoint.clone()],
        log_dir: Some(dir.path().to_path_buf()),
        ..ClusterSpec::new(&["alpha", "beta"], vec!["true".into()])
    };
    let cluster = LocalCluster::create(&spec).expect("create the cluster");
    let out = std::process::Command::new(EXE)
        .arg("agent")
        .arg("--config")
        .arg(&cluster.nodes[0].config)
        .output()
        .expect("run the agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the agent must not start: {stderr}");
    assert!(stderr.contains(&endpoint), "names the endpoint: {stderr}");
}

#[test]
fn bad_etcd_settings_are_refused_with_the_key_and_what_to_do() {
    let cases = [
        (
            "[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\nttl = \"1s\"\n",
            "etcd.ttl",
        ),
        (
            "[etcd]\nendpoints = [\"127.0.0.1:2379\"]\n",
            "etcd.endpoints",
        ),
        ("[etcd]\nendpoints = []\n", "etcd.endpoints"),
        (
            "[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\ncert = \"c.pem\"\n",
            "etcd.cert",
        ),
    ];
    for (etcd, key) in cases {
        let spec = ClusterSpec {
            exe: Some(EXE.into()),
            extra_toml: etcd.into(),
            ..ClusterSpec::new(&["alpha", "beta"], vec!["true".into()])
        };
        let cluster = LocalCluster::create(&spec).expect("create the cluster");
        let config = &cluster.nodes[0].config;
        let text = std::fs::read_to_string(config).expect("read the config");
        let text = text.replace("[cluster]\n", "[cluster]\ncoordination = \"etcd\"\n");
        std::fs::write(config, text).expect("write the config");
        let out = std::process::Command::new(EXE)
            .args(["config", "check"])
            .arg(config)
            .output()
            .expect("run config check");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{etcd}: accepted");
        assert!(stderr.contains(key), "{etcd}: names {key}: {stderr}");
    }
}

#[test]
fn one_of_three_members_lost_changes_nothing_and_two_lost_stop_the_service_until_they_return() {
    if !etcd_or_skip("3 members") {
        return;
    }
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let mut etcd = LocalEtcd::start(dir.path(), 3).expect("start 3 etcd members");
    let rt = runtime();
    let cluster = pair(&etcd);
    settled(&rt, &cluster);
    // A follower: losing etcd's leader pauses writes for an election,
    // which a loaded machine can stretch past a 2 s session's good time.
    let follower = rt.block_on(etcd.follower()).expect("find an etcd follower");
    etcd.kill(follower);
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(role(&rt, &cluster, 0), Some(EffectiveRole::Active));
        assert_eq!(role(&rt, &cluster, 1), Some(EffectiveRole::Standby));
    }
    let second = rt.block_on(etcd.follower()).unwrap_or((follower + 1) % 3);
    etcd.kill(second);
    wait("nobody active", Duration::from_secs(5), || {
        (0..2).all(|i| role(&rt, &cluster, i) != Some(EffectiveRole::Active))
    });
    wait("the VIP silent", Duration::from_secs(5), || {
        vip_answer(cluster.vip).is_none()
    });
    etcd.restart(follower).expect("restart the first member");
    etcd.restart(second).expect("restart the second member");
    etcd.wait_all_healthy(Duration::from_secs(20))
        .expect("etcd healthy again");
    wait("one active again", Duration::from_secs(20), || {
        (0..2)
            .filter(|i| role(&rt, &cluster, *i) == Some(EffectiveRole::Active))
            .count()
            == 1
    });
}

#[test]
fn a_leader_key_written_by_hand_blocks_its_group_with_a_clear_error() {
    if !etcd_or_skip("garbage key") {
        return;
    }
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let etcd = LocalEtcd::start(dir.path(), 1).expect("start etcd");
    let rt = runtime();
    let key = "/tandem/local/leader/0";
    rt.block_on(etcd.put(key, "garbage, not tandem's"))
        .expect("write a leader key by hand");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("create the log directory");
    let spec = ClusterSpec {
        exe: Some(EXE.into()),
        etcd: etcd.endpoints(),
        log_dir: Some(logs.clone()),
        ..ClusterSpec::new(
            &["alpha", "beta"],
            vec![EXE.into(), "bench".into(), "name-service".into()],
        )
    };
    let mut cluster = LocalCluster::create(&spec).expect("create the cluster");
    cluster.start_all().expect("start the pair");
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            (0..2).all(|i| role(&rt, &cluster, i) != Some(EffectiveRole::Active)),
            "a node serves under a key it does not hold"
        );
    }
    let log = std::fs::read_to_string(logs.join("alpha.log")).expect("read alpha's log");
    assert!(log.contains("etcdctl del"), "the log says how: {log}");
    rt.block_on(etcd.delete(key))
        .expect("delete the hand-written key");
    rt.block_on(cluster.wait_for_active(0, Duration::from_secs(20)))
        .expect("alpha serves once the key is gone");
}

#[test]
fn failsafe_keeps_the_active_through_an_etcd_outage_while_its_peer_answers() {
    if !etcd_or_skip("failsafe") {
        return;
    }
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let mut etcd = LocalEtcd::start(dir.path(), 1).expect("start etcd");
    let spec = ClusterSpec {
        exe: Some(EXE.into()),
        etcd: etcd.endpoints(),
        ..ClusterSpec::new(
            &["alpha", "beta"],
            vec![EXE.into(), "bench".into(), "name-service".into()],
        )
    };
    let mut cluster = LocalCluster::create(&spec).expect("create the cluster");
    for node in &cluster.nodes {
        // [etcd] is the config's last table.
        let mut text = std::fs::read_to_string(&node.config).expect("read a config");
        text.push_str("failsafe = true\n");
        std::fs::write(&node.config, text).expect("write a config");
    }
    cluster.start_all().expect("start the pair");
    let rt = runtime();
    settled(&rt, &cluster);
    let epoch = |rt: &tokio::runtime::Runtime| {
        rt.block_on(cluster.status(0))
            .and_then(|s| s.node.groups.first().and_then(|g| g.epoch))
    };
    let before = epoch(&rt);
    assert!(before.is_some(), "alpha holds the key");
    etcd.kill(0);
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(role(&rt, &cluster, 0), Some(EffectiveRole::Active));
        assert_eq!(role(&rt, &cluster, 1), Some(EffectiveRole::Standby));
    }
    etcd.restart(0).expect("restart etcd");
    etcd.wait_all_healthy(Duration::from_secs(20))
        .expect("etcd healthy again");
    // alpha holds the key in etcd again (its old lease, which etcd
    // extends when it restarts, or a new one), without standing down.
    wait("alpha's key in etcd", Duration::from_secs(10), || {
        assert_eq!(role(&rt, &cluster, 0), Some(EffectiveRole::Active));
        rt.block_on(etcd.value("/tandem/local/leader/0"))
            .ok()
            .flatten()
            .is_some_and(|v| v.contains("\"alpha\""))
    });
    assert!(epoch(&rt) >= before);
}

#[test]
fn wrong_tls_stops_the_agent_with_its_endpoints_named() {
    if !etcd_or_skip("wrong TLS") {
        return;
    }
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let etcd = LocalEtcd::start(&dir.path().join("etcd"), 1).expect("start etcd");
    // etcd speaks plain HTTP here; the agent is told to use TLS with a CA
    // that is not a certificate at all.
    let endpoint = etcd.endpoints().remove(0).replace("http://", "https://");
    let spec = ClusterSpec {
        exe: Some(EXE.into()),
        etcd: vec![endpoint.clone()],
        ..ClusterSpec::new(&["alpha", "beta"], vec!["true".into()])
    };
    let cluster = LocalCluster::create(&spec).expect("create the cluster");
    let config = &cluster.nodes[0].config;
    let ca = dir.path().join("not-a-ca.pem");
    std::fs::write(&ca, "this is not a certificate\n").expect("write the CA file");
    let mut text = std::fs::read_to_string(config).expect("read the config");
    // [etcd] is the config's last table.
    text.push_str(&format!("ca = {:?}\n", ca.display().to_string()));
    std::fs::write(config, text).expect("write the config");
    let out = std::process::Command::new(EXE)
        .arg("agent")
        .arg("--config")
        .arg(config)
        .output()
        .expect("run the agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the agent must not start: {stderr}");
    assert!(stderr.contains(&endpoint), "names the endpoint: {stderr}");
    assert!(stderr.contains("[etcd] ca"), "says what to check: {stderr}");
}
