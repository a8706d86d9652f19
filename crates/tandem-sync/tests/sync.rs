//! The sync engine end to end: real TLS over 127.0.0.1, in one process.
//! Every test is bounded by a timeout; none asserts on timing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_sync::fencing::Fencing;
use tandem_sync::frame::{Message, read_frame, write_frame};
use tandem_sync::receiver::{Receiver, ReceiverConfig, ReceiverEvent, StandbyState};
use tandem_sync::replicator::{
    DataSync, DegradeGate, DurabilityLevel, PeerAddr, PeerState, Replicator, ReplicatorConfig,
    SyncMode,
};
use tandem_sync::store::DataDir;
use tandem_sync::tls::{self, TlsIdentity};
use tandem_sync::{Error, Progress, cert};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// Every test must finish well within this.
const BOUND: Duration = Duration::from_secs(30);

/// A cluster CA, certificates for node-a/b/c, and data dirs.
struct Cluster {
    dir: TempDir,
}

impl Cluster {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        cert::init(&dir.path().join("ca")).expect("create the cluster CA");
        for node in ["node-a", "node-b", "node-c"] {
            cert::issue(&dir.path().join("ca"), node, &dir.path().join("certs"))
                .expect("issue a node certificate");
        }
        Cluster { dir }
    }

    fn identity(&self, node: &str) -> TlsIdentity {
        TlsIdentity::load(&self.dir.path().join("certs"), node)
            .expect("load the node's TLS identity")
    }

    fn data(&self, node: &str) -> PathBuf {
        self.dir.path().join(node).join("data")
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A running receiver and the way to stop it.
struct Standby {
    receiver: Receiver,
    addr: SocketAddr,
    events: mpsc::Receiver<ReceiverEvent>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

fn receiver_config(
    cluster: &Cluster,
    node: &str,
    expected: &[&str],
    events: mpsc::Sender<ReceiverEvent>,
) -> ReceiverConfig {
    ReceiverConfig {
        identity: cluster.identity(node),
        data_dir: cluster.data(node),
        config_dir: cluster.path().join(node).join("config"),
        config_files: vec![cluster.path().join(node).join("etc/mta.toml")],
        config_hold: Some(cluster.path().join(node).join("config-disconnected")),
        expected_peers: expected.iter().map(|s| s.to_string()).collect(),
        events: Some(events),
        handshake_timeout: Duration::from_secs(5),
        log_dir: Some(cluster.path().join(node).join("sync-log")),
        unreplicated: None,
        quarantine_dir: None,
        fencing: Default::default(),
    }
}

impl Standby {
    async fn start(cluster: &Cluster, node: &str, expected: &[&str]) -> Self {
        Self::start_on(
            cluster,
            node,
            expected,
            "127.0.0.1:0".parse().expect("parse the bind address"),
        )
        .await
    }

    async fn start_on(cluster: &Cluster, node: &str, expected: &[&str], addr: SocketAddr) -> Self {
        let (events_tx, events) = mpsc::channel(64);
        let receiver = Receiver::new(receiver_config(cluster, node, expected, events_tx))
            .expect("create the receiver");
        let listener = TcpListener::bind(addr).await.expect("bind the receiver");
        let addr = listener.local_addr().expect("read the receiver's address");
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = receiver.clone();
        let task = tokio::spawn(async move {
            serving
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
        });
        Standby {
            receiver,
            addr,
            events,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) -> SocketAddr {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
        self.addr
    }

    /// The next event that `pick` accepts.
    async fn event<T>(&mut self, pick: impl Fn(ReceiverEvent) -> Option<T>) -> T {
        loop {
            let event = self.events.recv().await.expect("receiver events");
            if let Some(found) = pick(event) {
                return found;
            }
        }
    }
}

fn replicator_config(cluster: &Cluster, peer_addr: SocketAddr) -> ReplicatorConfig {
    let mut config = ReplicatorConfig::new(
        cluster.identity("node-a"),
        cluster.data("node-a"),
        vec![PeerAddr {
            name: "node-b".into(),
            addr: peer_addr,
        }],
    );
    config.redial_every = Duration::from_millis(50);
    config.sync_timeout = Duration::from_secs(10);
    config
}

/// Writes a file under the active's data dir, as the relay would.
fn write(cluster: &Cluster, node: &str, relative: &str, content: &[u8]) -> PathBuf {
    let path = cluster.data(node).join(relative);
    std::fs::create_dir_all(path.parent().expect("find the parent directory"))
        .expect("create the parent directory");
    std::fs::write(&path, content).expect("write the file");
    path
}

fn manifest(cluster: &Cluster, node: &str) -> Vec<tandem_sync::store::ManifestEntry> {
    DataDir::open(&cluster.data(node))
        .expect("open the data directory")
        .manifest()
        .expect("read the manifest")
}

async fn bounded<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, work)
        .await
        .expect("test exceeded its time bound")
}

// ── certificates ────────────────────────────────────────────────────────

#[test]
fn keys_are_private_and_missing_files_say_what_to_run() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let ca = cert::init(&dir.path().join("ca")).expect("create the CA");
    let mode = std::fs::metadata(&ca.key)
        .expect("read the CA key's metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        cert::init(&dir.path().join("ca")).is_err(),
        "a second init must not replace the CA"
    );

    let node = cert::issue(&dir.path().join("ca"), "mx1", &dir.path().join("certs"))
        .expect("issue a node certificate");
    let mode = std::fs::metadata(&node.key)
        .expect("read the node key's metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let missing = cert::issue(&dir.path().join("nowhere"), "mx1", dir.path()).unwrap_err();
    assert!(
        missing.to_string().contains("tandem cert init"),
        "{missing}"
    );
    let missing = TlsIdentity::load(&dir.path().join("certs"), "mx2").unwrap_err();
    assert!(
        missing.to_string().contains("tandem cert issue"),
        "{missing}"
    );
    assert!(cert::issue(&dir.path().join("ca"), "bad name!", dir.path()).is_err());
}

// ── the channel refuses what it must ────────────────────────────────────

#[tokio::test]
async fn a_plaintext_client_is_refused_with_a_clear_error() {
    bounded(async {
        let cluster = Cluster::new();
        let mut standby = Standby::start(&cluster, "node-b", &["node-a"]).await;
        let mut plain = TcpStream::connect(standby.addr)
            .await
            .expect("connect in plaintext");
        plain
            .write_all(b"PUT queue/x\n")
            .await
            .expect("write a plaintext command");
        let mut answer = String::new();
        plain
            .read_to_string(&mut answer)
            .await
            .expect("read the answer");
        assert!(
            answer.contains("only mutually-authenticated TLS"),
            "{answer}"
        );
        let reason = standby
            .event(|e| match e {
                ReceiverEvent::Refused { reason, .. } => Some(reason),
                _ => None,
            })
            .await;
        assert!(reason.contains("plaintext"), "{reason}");
        assert_eq!(standby.receiver.status().refused_connections, 1);

        // And the other way: dialing something that answers in plaintext.
        let fake = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake server");
        let fake_addr = fake.local_addr().expect("read the fake server's address");
        tokio::spawn(async move {
            let (mut tcp, _) = fake.accept().await.expect("accept a connection");
            let _ = tcp.write_all(b"220 smtp.example ESMTP\r\n").await;
            let mut sink = [0u8; 1024];
            let _ = tcp.read(&mut sink).await;
        });
        let error = tls::connect(
            &cluster.identity("node-a"),
            fake_addr,
            "node-b",
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(matches!(error, Error::Plaintext { .. }), "{error}");
    })
    .await
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    bounded(async {
        let cluster = Cluster::new();
        let other = Cluster::new(); // same node names, another CA
        let mut standby = Standby::start(&cluster, "node-b", &["node-a"]).await;
        let error = tls::connect(
            &other.identity("node-a"),
            standby.addr,
            "node-b",
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        // The foreign client does not trust our server either: it fails
        // first, on its side; either way nothing is accepted.
        assert!(matches!(error, Error::Handshake { .. }), "{error}");
        let reason = standby
            .event(|e| match e {
                ReceiverEvent::Refused { reason, .. } => Some(reason),
                _ => None,
            })
            .await;
        assert!(reason.contains("handshake"), "{reason}");

        // A foreign client that trusts our CA (it got our ca.pem) but has
        // its certificate from the other CA: refused by our server.
        let certs = other.path().join("certs");
        let forged = TlsIdentity::from_pem(
            "node-a",
            &std::fs::read_to_string(certs.join("node-a.pem"))
                .expect("read the foreign certificate"),
            &std::fs::read_to_string(certs.join("node-a.key")).expect("read the foreign key"),
            &std::fs::read_to_string(cluster.path().join("ca/ca.pem"))
                .expect("read our CA certificate"),
        )
        .expect("build the forged identity");
        let error = tls::connect(&forged, standby.addr, "node-b", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("refused our certificate"),
            "{error}"
        );
        let reason = standby
            .event(|e| match e {
                ReceiverEvent::Refused { reason, .. } => Some(reason),
                _ => None,
            })
            .await;
        assert!(reason.contains("UnknownIssuer"), "{reason}");
    })
    .await
}

#[tokio::test]
async fn a_wrong_node_name_is_refused_on_both_ends() {
    bounded(async {
        let cluster = Cluster::new();
        let mut standby = Standby::start(&cluster, "node-b", &["node-a"]).await;
        // node-c has a valid certificate of this cluster, but node-b does
        // not expect it.
        let error = tls::connect(
            &cluster.identity("node-c"),
            standby.addr,
            "node-b",
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(matches!(error, Error::Refused { .. }), "{error}");
        assert!(error.to_string().contains("node-c"), "{error}");
        let reason = standby
            .event(|e| match e {
                ReceiverEvent::Refused { reason, .. } => Some(reason),
                _ => None,
            })
            .await;
        assert!(
            reason.contains("node-c") && reason.contains("node-a"),
            "{reason}"
        );

        // The active dials node-c's address believing it is node-b.
        let impostor = Standby::start(&cluster, "node-c", &["node-a"]).await;
        let error = tls::connect(
            &cluster.identity("node-a"),
            impostor.addr,
            "node-b",
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        match error {
            Error::WrongPeer {
                presented,
                expected,
                ..
            } => {
                assert_eq!(presented, "node-c");
                assert_eq!(expected, "node-b");
            }
            other => panic!("expected WrongPeer, got {other}"),
        }
    })
    .await
}

#[tokio::test]
async fn a_path_escaping_the_data_dir_is_refused() {
    bounded(async {
        let cluster = Cluster::new();
        let standby = Standby::start(&cluster, "node-b", &["node-a"]).await;
        let mut channel = tls::connect(
            &cluster.identity("node-a"),
            standby.addr,
            "node-b",
            Duration::from_secs(5),
        )
        .await
        .expect("connect to the standby");
        for (seq, evil) in [(1, "../evil"), (2, "/tmp/evil"), (3, "a/../../evil")] {
            let put = Message::Put {
                path: evil.into(),
                mode: 0o644,
            };
            write_frame(&mut channel.stream, &put, b"pwned")
                .await
                .expect("write an evil put");
            write_frame(&mut channel.stream, &Message::Commit { seq, epoch: 0 }, b"")
                .await
                .expect("write a commit");
            channel.stream.flush().await.expect("flush the stream");
            let answer = read_frame(&mut channel.stream)
                .await
                .expect("read the answer")
                .expect("get an answer frame");
            match answer.message {
                Message::Nack { seq: s, error } => {
                    assert_eq!(s, seq);
                    assert!(error.contains("refused"), "{error}");
                }
                other => panic!("{evil}: expected a nack, got {other:?}"),
            }
        }
        assert!(!cluster.path().join("node-b/evil").exists());
        assert!(manifest(&cluster, "node-b").is_empty());

        // The active refuses such paths before sending anything.
        let replicator = Replicator::start(replicator_config(&cluster, standby.addr))
            .expect("start the replicator");
        let error = replicator
            .commit(&[PathBuf::from("/etc/passwd")])
            .await
            .unwrap_err();
        assert!(matches!(error, Error::BadPath { .. }), "{error}");
        let error = replicator
            .commit(&[PathBuf::from("../x")])
            .await
            .unwrap_err();
        assert!(matches!(error, Error::BadPath { .. }), "{error}");
    })
    .await
}

#[tokio::test]
async fn a_commit_stamped_with_an_older_epoch_is_refused_and_counted() {
    bounded(async {
        let cluster = Cluster::new();
        let (events_tx, _events) = mpsc::channel(64);
        // The standby knows epoch 7: another node took the service over.
        let fencing = Arc::new(Fencing::default());
        fencing.see(7);
        let mut config = receiver_config(&cluster, "node-b", &["node-a"], events_tx);
        config.fencing = fencing.clone();
        let receiver = Receiver::new(config).expect("create the receiver");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("read the receiver's address");
        let serving = receiver.clone();
        tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
        let mut channel = tls::connect(
            &cluster.identity("node-a"),
            addr,
            "node-b",
            Duration::from_secs(5),
        )
        .await
        .expect("connect to the standby");
        // A paused active that served under epoch 5 wakes and commits.
        for (seq, epoch, file) in [(1, 5, "spool/stale"), (2, 7, "spool/current")] {
            let put = Message::Put {
                path: file.into(),
                mode: 0o644,
            };
            write_frame(&mut channel.stream, &put, b"mail")
                .await
                .expect("write a put");
            write_frame(&mut channel.stream, &Message::Commit { seq, epoch }, b"")
                .await
                .expect("write a commit");
            channel.stream.flush().await.expect("flush the stream");
            let answer = read_frame(&mut channel.stream)
                .await
                .expect("read the answer")
                .expect("get an answer frame");
            match (epoch, answer.message) {
                (5, Message::Nack { seq: s, error }) => {
                    assert_eq!(s, seq);
                    assert!(error.contains("stale fencing epoch 5"), "{error}");
                }
                (7, Message::Ack { seq: s }) => assert_eq!(s, seq),
                (_, other) => panic!("epoch {epoch}: unexpected {other:?}"),
            }
        }
        assert_eq!(receiver.status().stale_commits, 1);
        // The current batch reaches the data dir (through the standby log);
        // the stale one never does.
        let names = || -> Vec<String> {
            manifest(&cluster, "node-b")
                .iter()
                .map(|e| e.path.clone())
                .collect()
        };
        for _ in 0..100 {
            if names().iter().any(|p| p.contains("current")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let files = names();
        assert!(files.iter().any(|p| p.contains("current")), "{files:?}");
        assert!(
            files.iter().all(|p| !p.contains("stale")),
            "the stale batch reached the data: {files:?}"
        );
    })
    .await
}

// ── cluster fsync ───────────────────────────────────────────────────────

#[tokio::test]
async fn puts_and_deletes_are_on_the_standby_disk_when_a_semi_commit_returns() {
    bounded(async {
        let cluster = Cluster::new();
        let standby = Standby::start(&cluster, "node-b", &["node-a"]).await;
        let replicator = Replicator::start(replicator_config(&cluster, standby.addr))
            .expect("start the replicator");
        replicator.wait_all_in_sync().await;
        assert_eq!(standby.receiver.status().state, StandbyState::InSync);

        let path = write(
            &cluster,
            "node-a",
            "queue/msg-1",
            b"From: a\r\n\r\nhello\r\n",
        );
        let durability = replicator
            .commit(std::slice::from_ref(&path))
            .await
            .expect("commit the message");
        assert_eq!(durability.level, DurabilityLevel::Replicated);
        assert_eq!(durability.acked_by, ["node-b"]);
        // Acked: in the standby log, and in the data dir once the log is
        // put there (before the standby serves, at a manifest, or soon).
        standby
            .receiver
            .checkpoint()
            .await
            .expect("checkpoint the standby");
        let on_standby = cluster.data("node-b").join("queue/msg-1");
        assert_eq!(
            std::fs::read(&on_standby).expect("read the standby's copy"),
            b"From: a\r\n\r\nhello\r\n"
        );

        // A relative path works too, and a second version replaces the first.
        write(&cluster, "node-a", "queue/msg-1", b"v2");
        replicator
            .commit(&[PathBuf::from("queue/msg-1")])
            .await
            .expect("commit the second version");
        standby
            .receiver
            .checkpoint()
            .await
            .expect("checkpoint the standby");
        assert_eq!(
            std::fs::read(&on_standby).expect("read the standby's copy"),
            b"v2"
        );

        // Delivered: the relay removes the file and commits its path.
        std::fs::remove_file(&path).expect("deliver the message");
        let durability = replicator
            .commit(&[path])
            .await
            .expect("commit the delivery");
        assert_eq!(durability.level, DurabilityLevel::Replicated);
        standby
            .receiver
            .checkpoint()
            .await
            .expect("checkpoint the standby");
        assert!(!on_standby.exists());
        assert_eq!(manifest(&cluster, "node-a"), manifest(&cluster, "node-b"));

        // The standby dies the moment a commit returns, before its log
        // reaches the data dir: a new receiver replays the log.
        let last = write(&cluster, "node-a", "queue/msg-2", b"the last one");
        replicator
            .commit(&[last])
            .await
            .expect("commit the last message");
        standby.task.abort();
        let _ = standby.task.await;
        let (events, _) = mpsc::channel(1);
        Receiver::new(receiver_config(&cluster, "node-b", &["node-a"], events))
            .expect("reopen the receiver");
        assert_eq!(
            std::fs::read(cluster.data("node-b").join("queue/msg-2"))
                .expect("read the standby's copy"),
            b"the last one"
        );
    })
    .await
}

#[tokio::test]
async fn concurrent_commits_share_round_trips() {
    bounded(async {
        let cluster = Cluster::new();
        let standby = Standby::start(&cluster, "node-b", &["node-a"]).await;
        let replicator = Replicator::start(replicator_config(&cluster, standby.addr))
            .expect("start the replicator");
        replicator.wait_all_in_sync().await;
        let before = replicator.status();

        const COMMITS: usize = 64;
        let mut tasks = Vec::new();
        for i in 0..COMMITS {
            let path = write(
                &cluster,
                "node-a",
                &format!("queue/m{i}"),
                format!("{i}").as_bytes(),
            );
            let replicator = replicator.clone();
            tasks.push(tokio::spawn(
                async move { replicator.commit(&[path]).await },
            ));
        }
        for task in tasks {
            let durability = task
                .await
                .expect("join the commit task")
                .expect("commit a message");
            assert_eq!(durability.level, DurabilityLevel::Replicated);
        }
        let after = replicator.status();
        let batches = after.batches - before.batches;
        let round_trips = after.peers[0].round_trips - before.peers[0].round_trips;
        println!("{COMMITS} concurrent commits: {batches} batches, {round_trips} round trips");
        assert!(batches < COMMITS as u64, "no batching: {batches} batches");
        assert_eq!(round_trips, batches);
        standby
            .receiver
            .checkpoint()
            .await
            .expect("checkpoint the standby");
        assert_eq!(manifest(&cluster, "node-a"), manifest(&cluster, "node-b"));
    })
    .await
}

/// A standby that takes part in the catch-up, then never acks a commit:
/// a hung process or a dead disk.
async fn stalling_standby(cluster: &Cluster) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the stalling standby");
    let addr = listener.local_addr().expect("read its address");
    let identity = cluster.identity("node-b");
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept a connection");
        let expected = vec!["node-a".to_string()];
        let mut channel = tls::accept(&identity, tcp, &expected, Duration::from_secs(5))
            .await
            .expect("accept the TLS handshake");
        while let Ok(Some(frame)) = read_frame(&mut channel.stream).await {
            let reply = match frame.message {
                Message::ManifestRequest { seq, .. } => Message::Manifest {
                    seq,
                    entries: vec![],
                },
                Message::CatchUpEnd { seq } => Message::Ack { seq },
                Message::Commit { .. } => {
                    // Hold the connection open and say nothing.
                    std::future::pending::<()>().await;
                    unreachable!()
                }
                _ => continue,
            };
            write_frame(&mut channel.stream, &reply, b"")
                .await
                .expect("write the reply");
            channel.stream.flush().await.expect("flush the reply");
        }
    });
    addr
}

#[tokio::test]
async fn a_stalled_standby_is_marked_out_of_sync_with_degrade() {
    bounded(async {
        let cluster = Cluster::new();
        let addr = stalling_standby(&cluster).await;
        let mut config = replicator_config(&cluster, addr);
        config.sync_timeout = Duration::from_millis(300);
        config.sync_mode = SyncMode::Degrade;
        let replicator = Replicator::start(config).expect("start the replicator");
        replicator.wait_all_in_sync().await;

        let path = write(&cluster, "node-a", "queue/m1", b"x");
        let durability = replicator.commit(&[path]).await.expect("commit a message");
        assert_eq!(durability.level, DurabilityLevel::Degraded);
        assert!(durability.acked_by.is_empty());
        assert_eq!(durability.missing[0].0, "node-b");
        assert!(
            durability.missing[0].1.contains("sync_timeout"),
            "{:?}",
            durability.missing
        );

        let status = replicator.status();
        assert_eq!(status.degraded_commits, 1);
        assert_eq!(status.peers[0].state, PeerState::OutOfSync);
        assert_eq!(status.peers[0].out_of_sync_events, 1);
        assert!(status.peers[0].last_error.is_some());

        // Later commits do not wait for it at all.
        let path = write(&cluster, "node-a", "queue/m2", b"y");
        let durability = replicator.commit(&[path]).await.expect("commit a message");
        assert_eq!(durability.level, DurabilityLevel::Degraded);
        assert_eq!(replicator.status().peers[0].out_of_sync_events, 1);
    })
    .await
}

/// Records the standbys it is asked to drop; refuses when told to.
#[derive(Debug, Default)]
struct RecordingGate {
    dropped: Mutex<Vec<Vec<String>>>,
    refuse: bool,
}

impl DegradeGate for RecordingGate {
    fn drop_standbys(
        &self,
        standbys: Vec<String>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            self.dropped
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(standbys);
            if self.refuse {
                Err("etcd did not answer".into())
            } else {
                Ok(())
            }
        })
    }
}

#[tokio::test]
async fn a_degraded_semi_commit_drops_the_standby_first_or_fails() {
    bounded(async {
        for refuse in [false, true] {
            let cluster = Cluster::new();
            let addr = stalling_standby(&cluster).await;
            let gate = Arc::new(RecordingGate {
                refuse,
                ..RecordingGate::default()
            });
            let mut config = replicator_config(&cluster, addr);
            config.sync_timeout = Duration::from_millis(300);
            config.sync_mode = SyncMode::Degrade;
            config.degrade_gate = Some(gate.clone());
            let replicator = Replicator::start(config).expect("start the replicator");
            replicator.wait_all_in_sync().await;
            let path = write(&cluster, "node-a", "queue/m1", b"x");
            let answer = replicator.commit(&[path]).await;
            // The gate was asked before the commit returned, either way.
            let dropped = gate
                .dropped
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            assert_eq!(dropped, [vec!["node-b".to_string()]], "refuse {refuse}");
            match (refuse, answer) {
                (false, Ok(d)) => assert_eq!(d.level, DurabilityLevel::Degraded),
                (true, Err(Error::NotReplicated { .. })) => {}
                (_, other) => panic!("refuse {refuse}: {other:?}"),
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_stalled_standby_fails_the_commit_with_strict() {
    bounded(async {
        let cluster = Cluster::new();
        let addr = stalling_standby(&cluster).await;
        let mut config = replicator_config(&cluster, addr);
        config.sync_timeout = Duration::from_millis(300);
        config.sync_mode = SyncMode::Strict;
        let replicator = Replicator::start(config).expect("start the replicator");
        replicator.wait_all_in_sync().await;

        let path = write(&cluster, "node-a", "queue/m1", b"x");
        let error = replicator
            .commit(std::slice::from_ref(&path))
            .await
            .unwrap_err();
        match &error {
            Error::NotReplicated { failures } => assert_eq!(failures[0].0, "node-b"),
            other => panic!("expected NotReplicated, got {other}"),
        }
        assert!(error.to_string().contains("strict"), "{error}");
        // Out of sync now, so the next commit fails at once.
        assert!(replicator.commit(&[path]).await.is_err());
        assert_eq!(replicator.status().failed_commits, 2);
    })
    .await
}

#[tokio::test]
async fn a_standby_down_with_async_does_not_block_commits() {
    bounded(async {
        let cluster = Cluster::new();
        // Nothing listens there.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a throwaway listener")
            .local_addr()
            .expect("read its address");
        let mut config = replicator_config(&cluster, addr);
        config.data_sync = DataSync::Async;
        let replicator = Replicator::start(config).expect("start the replicator");
        let path = write(&cluster, "node-a", "queue/m1", b"x");
        let durability = replicator.commit(&[path]).await.expect("commit a message");
        assert_eq!(durability.level, DurabilityLevel::Queued);

        let mut config = replicator_config(&cluster, addr);
        config.data_sync = DataSync::Off;
        let off = Replicator::start(config).expect("start the replicator");
        let durability = off
            .commit(&[PathBuf::from("queue/m1")])
            .await
            .expect("commit a message");
        assert_eq!(durability.level, DurabilityLevel::Local);
    })
    .await
}

#[tokio::test]
async fn with_data_sync_off_each_node_keeps_its_own_data() {
    bounded(async {
        // Multi-active modes: both nodes serve, each from its own data.
        let cluster = Cluster::new();
        write(&cluster, "node-b", "queue/beta-own", b"b");
        write(&cluster, "node-a", "queue/alpha-own", b"a");
        let standby = Standby::start(&cluster, "node-b", &["node-a"]).await;
        let mut config = replicator_config(&cluster, standby.addr);
        config.data_sync = DataSync::Off;
        let replicator = Replicator::start(config).expect("start the replicator");
        replicator.wait_all_in_sync().await;
        assert_eq!(standby.receiver.status().state, StandbyState::InSync);
        assert!(cluster.data("node-b").join("queue/beta-own").exists());
        assert!(!cluster.data("node-b").join("queue/alpha-own").exists());
    })
    .await
}

// ── catch-up, resync, report ────────────────────────────────────────────

/// A TCP relay between the active and a standby that, once armed, flips
/// one byte of the next chunk the active sends: a transfer corrupted on
/// the way, as a bad NIC or cable would (and TCP's checksum can miss).
struct CorruptingProxy {
    addr: SocketAddr,
    armed: Arc<std::sync::atomic::AtomicBool>,
}

impl CorruptingProxy {
    async fn start(to: SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("read the proxy's address");
        let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let trigger = armed.clone();
        tokio::spawn(async move {
            while let Ok((from_active, _)) = listener.accept().await {
                let Ok(to_standby) = TcpStream::connect(to).await else {
                    continue;
                };
                let (mut active_rx, mut active_tx) = from_active.into_split();
                let (mut standby_rx, mut standby_tx) = to_standby.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut standby_rx, &mut active_tx).await;
                });
                let trigger = trigger.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match active_rx.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if trigger.swap(false, Ordering::SeqCst) {
                            buf[n / 2] ^= 0x5a;
                        }
                        if standby_tx.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        CorruptingProxy { addr, armed }
    }

    fn arm(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_transfer_corrupted_on_the_way_is_detected_and_resent() {
    bounded(async {
        let cluster = Cluster::new();
        let mut standby = Standby::start(&cluster, "node-b", &["node-a"]).await;
        let proxy = CorruptingProxy::start(standby.addr).await;
        let replicator = Replicator::start(replicator_config(&cluster, proxy.addr))
            .expect("start the replicator");
        replicator.wait_all_in_sync().await;

        // A byte of this file flips on its way to the standby.
        let content: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
        proxy.arm();
        let path = write(&cluster, "node-a", "queue/precious", &content);
        replicator
            .commit(&[path])
            .await
            .expect("commit the message");

        // Detected: the standby's TLS layer refuses the record whose
        // authentication tag no longer matches, and drops the connection.
        let error = standby
            .event(|e| match e {
                ReceiverEvent::Closed { error, .. } => Some(error),
                _ => None,
            })
            .await;
        assert!(error.is_some(), "the corrupted record must be refused");
        // Resent: the active redials, compares manifests by hash, and sends
        // the file again; the standby ends with the right bytes.
        replicator.wait_all_in_sync().await;
        let copy = std::fs::read(cluster.data("node-b").join("queue/precious"))
            .expect("read the standby's copy");
        assert!(copy == content, "the standby holds the file as sent");
        assert_eq!(manifest(&cluster, "node-a"), manifest(&cluster, "node-b"));
        assert!(replicator.status().peers[0].out_of_sync_events >= 1);
    })
    .await
}

#[tokio::test]
async fn a_standby_that_missed_writes_catches_up_on_reconnection() {
    bounded(async {
        let cluster = Cluster::new();
        // The standby has stale data: a file the active deleted, an old version.
        write(&cluster, "node-b", "queue/gone", b"delivered long ago");
        write(&cluster, "node-b", "queue/changed", b"old");
        write(&cluster, "node-a", "queue/changed", b"new");
        write(&cluster, "node-a", "queue/new", b"fresh");
        let standby = Standby::start(&cluster, "node-b", &["node-a"]).await;
        let replicator = Replicator::start(replicator_config(&cluster, standby.addr))
            .expect("start the replicator");
        replicator.wait_all_in_sync().await;
        assert_eq!(manifest(&cluster, "node-a"), manifest(&cluster, "node-b"));
        assert!(!cluster.data("node-b").join("queue/gone").exists());

        // The standby goes away; the active carries on (degrade).
        let addr = standby.stop().await;
        replicator
            .wait_for(|s| s.peers[0].state != PeerState::InSync)
            .await;
        for i in 0..20 {
            let path = write(&cluster, "node-a", &format!("queue/while-away-{i}"), b"m");
            let durability = replicator.commit(&[path]).await.expect("commit a message");
            assert_eq!(durability.level, DurabilityLevel::Degraded);
        }
        let gone = cluster.data("node-a").join("queue/new");
        std::fs::remove_file(&gone).expect("deliver the message");
        replicator
            .commit(&[gone])
            .await
            .expect("commit the delivery");
        assert_ne!(manifest(&cluster, "node-a"), manifest(&cluster, "node-b"));

        // It comes back on the same address: caught up without anyone asking.
        let standby = Standby::start_on(&cluster, "node-b", &["node-a"], addr).await;
        replicator.wait_all_in_sync().await;
        assert_eq!(manifest(&cluster, "node-a"), manifest(&cluster, "node-b"));
        assert_eq!(standby.receiver.status().state, StandbyState::InSync);
        let status = replicator.status();
        assert!(status.peers[0].last_sync_unix_ms.is_some());
        assert!(status.peers[0].out_of_sync_events >= 1);
    })
    .await
}

#[tokio::test]
async fn resync_pushes_everything_with_progress() {
    bounded(async {
        let cluster = Cluster::new();
        for i in 0..10 {
            write(&cluster, "node-a", &format!("q/{i}"), &vec![b'a'; 1000 + i]);
        }
        let standby = Standby::start(&cluster, "node-b", &["node-a"]).await;
        let replicator = Replicator::start(replicator_config(&cluster, standby.addr))
            .expect("start the replicator");
        replicator.wait_all_in_sync().await;
        // Damage on the standby that no commit will ever touch.
        std::fs::write(cluster.data("node-b").join("q/3"), vec![b'b'; 1003])
            .expect("damage a file on the standby");
        write(&cluster, "node-b", "stray", b"x");

        let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
        let record = seen.clone();
        let outcomes = replicator
            .resync(Some(Arc::new(move |p: &Progress| {
                record
                    .lock()
                    .expect("lock the progress record")
                    .push(p.clone())
            })))
            .await;
        assert_eq!(outcomes.len(), 1);
        assert_eq!(outcomes[0].error, None);
        let done = outcomes[0]
            .progress
            .clone()
            .expect("read the final progress");
        assert_eq!(done.files_total, 11, "10 puts and 1 delete");
        assert_eq!(done.files_done, 11);
        assert_eq!(done.bytes_done, done.bytes_total);
        let seen = seen.lock().expect("lock the progress record").clone();
        assert!(seen.len() >= 2, "at least the start and the end");
        assert_eq!(seen.last().expect("read the last progress").files_done, 11);
        assert_eq!(manifest(&cluster, "node-a"), manifest(&cluster, "node-b"));
        assert!(
            replicator.status().peers[0]
                .last_full_sync_unix_ms
                .is_some()
        );
        replicator.wait_all_in_sync().await;
    })
    .await
}

#[tokio::test]
async fn the_sync_report_shows_a_difference_made_by_hand() {
    bounded(async {
        let cluster = Cluster::new();
        write(&cluster, "node-a", "q/1", b"one");
        write(&cluster, "node-a", "q/2", b"two");
        let standby = Standby::start(&cluster, "node-b", &["node-a"]).await;
        let replicator = Replicator::start(replicator_config(&cluster, standby.addr))
            .expect("start the replicator");
        replicator.wait_all_in_sync().await;

        let report = replicator.report().await.expect("make a report");
        assert!(report.agree, "{report:#?}");
        assert!(report.all_in_sync);
        assert_eq!(report.data_sets[0].files.len(), 2);

        std::fs::write(cluster.data("node-b").join("q/2"), b"TWO")
            .expect("change a file on the standby");
        let report = replicator.report().await.expect("make a report");
        assert!(!report.agree);
        let differing: Vec<_> = report.differences().map(|(_, f)| f.path.as_str()).collect();
        assert_eq!(differing, ["q/2"]);
        let file = report
            .differences()
            .next()
            .expect("find the differing file")
            .1;
        assert_ne!(file.nodes["node-a"], file.nodes["node-b"]);
        // It serializes for `--json`.
        let json = serde_json::to_string(&report).expect("serialize the report");
        assert!(json.contains("\"agree\":false"));
    })
    .await
}

#[tokio::test]
async fn config_files_and_journal_records_reach_the_standby() {
    bounded(async {
        let cluster = Cluster::new();
        let mut standby = Standby::start(&cluster, "node-b", &["node-a"]).await;
        let replicator = Replicator::start(replicator_config(&cluster, standby.addr))
            .expect("start the replicator");
        replicator.wait_all_in_sync().await;
        std::fs::create_dir_all(cluster.path().join("node-b/etc"))
            .expect("create the standby's config directory");

        let outcomes = replicator
            .push_config("mta.toml", b"listen = \"0.0.0.0:25\"\n", 0o640)
            .await
            .expect("push the config");
        assert_eq!(outcomes[0].error, None);
        let path = standby
            .event(|e| match e {
                ReceiverEvent::ConfigUpdated { path, .. } => Some(path),
                _ => None,
            })
            .await;
        // Installed where the standby lists it, not only as a reference copy.
        assert_eq!(path, cluster.path().join("node-b/etc/mta.toml"));
        assert_eq!(
            std::fs::read(&path).expect("read the installed config"),
            b"listen = \"0.0.0.0:25\"\n"
        );
        // The same content again (every periodic push) is acked, but
        // neither rewrites the file nor reports a change: a service
        // reloaded on change must not be reloaded every interval.
        let written = std::fs::metadata(&path)
            .expect("read the config's metadata")
            .modified()
            .expect("read the config's modification time");
        let again = replicator
            .push_config("mta.toml", b"listen = \"0.0.0.0:25\"\n", 0o640)
            .await
            .expect("push the same config again");
        assert_eq!(again[0].error, None);
        while let Ok(event) = standby.events.try_recv() {
            assert!(
                !matches!(event, ReceiverEvent::ConfigUpdated { .. }),
                "{event:?}"
            );
        }
        assert_eq!(
            std::fs::metadata(&path)
                .expect("read the config's metadata")
                .modified()
                .expect("read the config's modification time"),
            written
        );
        assert!(
            replicator
                .push_config("../escape", b"", 0o644)
                .await
                .is_err()
        );
        // A name the standby does not list is refused, naming the fix.
        let unlisted = replicator.push_config("other.toml", b"x", 0o644).await;
        let error = unlisted.expect("push an unlisted config")[0]
            .error
            .clone()
            .unwrap_or_default();
        assert!(
            error.contains("not in node-b's [sync] config list"),
            "{error}"
        );
        // A standby disconnected from cluster config keeps its own.
        std::fs::write(cluster.path().join("node-b/config-disconnected"), b"")
            .expect("disconnect the standby from cluster config");
        let held = replicator
            .push_config("mta.toml", b"changed\n", 0o640)
            .await;
        let error = held.expect("push a config to a disconnected standby")[0]
            .error
            .clone()
            .unwrap_or_default();
        assert!(
            error.contains("disconnected from cluster config"),
            "{error}"
        );
        assert_eq!(
            std::fs::read(cluster.path().join("node-b/etc/mta.toml"))
                .expect("read the standby's config"),
            b"listen = \"0.0.0.0:25\"\n"
        );

        let sending = tokio::spawn({
            let replicator = replicator.clone();
            async move { replicator.send_journal(b"step 3 done").await }
        });
        let (record, ack) = standby
            .event(|e| match e {
                ReceiverEvent::Journal { record, ack, .. } => Some((record, ack)),
                _ => None,
            })
            .await;
        assert_eq!(record, b"step 3 done");
        ack.send(Ok(())).expect("acknowledge the journal record");
        let outcomes = sending.await.expect("join the journal task");
        assert_eq!(outcomes[0].error, None);
    })
    .await
}
