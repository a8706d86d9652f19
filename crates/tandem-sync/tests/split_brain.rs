//! Two actives, and what must survive them (issue 14): degraded commits
//! recorded, quarantine before a catch-up, a serving node refusing
//! replication, keepalive pings. Real TLS over 127.0.0.1, in one process;
//! every test is bounded by a timeout, none asserts on timing.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tandem_sync::receiver::{Receiver, ReceiverConfig, ReceiverEvent};
use tandem_sync::replicator::{DurabilityLevel, PeerAddr, PeerState, Replicator, ReplicatorConfig};
use tandem_sync::store::{DataDir, ManifestEntry};
use tandem_sync::unreplicated::Unreplicated;
use tandem_sync::{Error, cert, quarantine, tls};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

const BOUND: Duration = Duration::from_secs(30);

async fn bounded<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, work)
        .await
        .expect("test exceeded its time bound")
}

/// A cluster CA, certificates for node-a and node-b, and per-node dirs.
struct Cluster {
    dir: TempDir,
}

impl Cluster {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        cert::init(&dir.path().join("ca")).expect("create the cluster CA");
        for node in ["node-a", "node-b"] {
            cert::issue(&dir.path().join("ca"), node, &dir.path().join("certs"))
                .expect("issue a node certificate");
        }
        Cluster { dir }
    }

    fn identity(&self, node: &str) -> tls::TlsIdentity {
        tls::TlsIdentity::load(&self.dir.path().join("certs"), node)
            .expect("load the node's TLS identity")
    }

    fn node(&self, node: &str) -> PathBuf {
        self.dir.path().join(node)
    }

    fn data(&self, node: &str) -> PathBuf {
        self.node(node).join("data")
    }

    fn quarantine(&self, node: &str) -> PathBuf {
        self.node(node).join("quarantine")
    }

    /// The node's record, as both its replicator and its receiver use it.
    fn record(&self, node: &str) -> Unreplicated {
        Unreplicated::open(&self.node(node).join("unreplicated"))
            .expect("open the unreplicated record")
    }

    fn write(&self, node: &str, relative: &str, content: &[u8]) -> PathBuf {
        let path = self.data(node).join(relative);
        std::fs::create_dir_all(path.parent().expect("find the parent directory"))
            .expect("create the parent directory");
        std::fs::write(&path, content).expect("write the file");
        path
    }

    fn manifest(&self, node: &str) -> Vec<ManifestEntry> {
        DataDir::open(&self.data(node))
            .expect("open the data directory")
            .manifest()
            .expect("read the manifest")
    }

    /// `node` as the active, replicating to `peer` at `addr`.
    fn active(&self, node: &str, peer: &str, addr: SocketAddr) -> ReplicatorConfig {
        let mut config = ReplicatorConfig::new(
            self.identity(node),
            self.data(node),
            vec![PeerAddr {
                name: peer.into(),
                addr,
            }],
        );
        config.redial_every = Duration::from_millis(50);
        config.sync_timeout = Duration::from_secs(10);
        config.unreplicated = Some(self.record(node));
        config
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

impl Standby {
    /// `node` receiving from `peer`, with its record and quarantine dir
    /// (`quarantine`) or without.
    async fn start(cluster: &Cluster, node: &str, peer: &str, quarantine: bool) -> Self {
        Self::start_on(
            cluster,
            node,
            peer,
            quarantine,
            "127.0.0.1:0".parse().expect("parse the bind address"),
        )
        .await
    }

    async fn start_on(
        cluster: &Cluster,
        node: &str,
        peer: &str,
        quarantine: bool,
        addr: SocketAddr,
    ) -> Self {
        let (events_tx, events) = mpsc::channel(64);
        let receiver = Receiver::new(ReceiverConfig {
            identity: cluster.identity(node),
            data_dir: cluster.data(node),
            config_dir: cluster.node(node).join("config"),
            config_files: Vec::new(),
            config_hold: None,
            expected_peers: vec![peer.to_string()],
            events: Some(events_tx),
            handshake_timeout: Duration::from_secs(5),
            log_dir: Some(cluster.node(node).join("sync-log")),
            unreplicated: quarantine.then(|| cluster.record(node)),
            quarantine_dir: quarantine.then(|| cluster.quarantine(node)),
            fencing: Default::default(),
        })
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

/// An address nothing listens on.
async fn nowhere() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a throwaway listener")
        .local_addr()
        .expect("read its address")
}

fn set(paths: &[&str]) -> BTreeSet<String> {
    paths.iter().map(|p| p.to_string()).collect()
}

/// The scenario of issue 14, run twice: with the quarantine, and without
/// it to show that the catch-up would indeed delete the loser's mail.
async fn split_brain(quarantine: bool) -> (Cluster, Standby) {
    let cluster = Cluster::new();
    let standby = Standby::start(&cluster, "node-b", "node-a", quarantine).await;
    let node_a = Replicator::start(cluster.active("node-a", "node-b", standby.addr))
        .expect("start node-a's replicator");
    node_a.wait_all_in_sync().await;
    // Replicated before the partition; node-a delivers it during it.
    let delivered = cluster.write("node-a", "queue/delivered", b"from a, before");
    let durability = node_a
        .commit(std::slice::from_ref(&delivered))
        .await
        .expect("commit before the partition");
    assert_eq!(durability.level, DurabilityLevel::Replicated);
    standby
        .receiver
        .checkpoint()
        .await
        .expect("checkpoint the standby");
    assert!(cluster.data("node-b").join("queue/delivered").exists());

    // The partition: node-b stops hearing node-a and becomes active too.
    let addr = standby.stop().await;
    node_a
        .wait_for(|s| s.peers[0].state != PeerState::InSync)
        .await;
    let mine = cluster.write("node-a", "queue/a-only", b"acked by a alone");
    let durability = node_a
        .commit(&[mine])
        .await
        .expect("commit during the partition");
    assert_eq!(durability.level, DurabilityLevel::Degraded);
    std::fs::remove_file(&delivered).expect("deliver the replicated file");
    node_a
        .commit(&[delivered])
        .await
        .expect("commit the delivery");
    // Only files that exist are recorded: a delete needs no protection.
    assert_eq!(
        cluster
            .record("node-a")
            .paths("node-b")
            .expect("read node-a's record"),
        set(&["queue/a-only"])
    );

    let node_b = Replicator::start(cluster.active("node-b", "node-a", nowhere().await))
        .expect("start node-b's replicator");
    let b1 = cluster.write("node-b", "queue/b-only-1", b"acked by b alone");
    let b2 = cluster.write("node-b", "queue/deep/b-only-2", b"this one too");
    let durability = node_b
        .commit(&[b1, b2])
        .await
        .expect("commit on node-b during the partition");
    assert_eq!(durability.level, DurabilityLevel::Degraded);
    assert_eq!(
        cluster
            .record("node-b")
            .paths("node-a")
            .expect("read node-b's record"),
        set(&["queue/b-only-1", "queue/deep/b-only-2"])
    );
    drop(node_b);

    // The split brain resolves for node-a: node-b is a standby again, and
    // node-a catches it up.
    let standby = Standby::start_on(&cluster, "node-b", "node-a", quarantine, addr).await;
    node_a.wait_all_in_sync().await;
    standby
        .receiver
        .checkpoint()
        .await
        .expect("checkpoint the standby");
    assert_eq!(cluster.manifest("node-a"), cluster.manifest("node-b"));
    // What node-a delivered is gone from node-b, quarantine or not.
    assert!(!cluster.data("node-b").join("queue/delivered").exists());
    (cluster, standby)
}

#[tokio::test]
async fn a_catch_up_after_a_split_brain_quarantines_what_the_loser_acknowledged() {
    bounded(async {
        let (cluster, mut standby) = split_brain(true).await;
        let listed = quarantine::list(&cluster.quarantine("node-b")).expect("list the quarantine");
        assert_eq!(listed.len(), 1, "node-b's own mail must be in quarantine");
        // Sent before the connection was welcomed, so already there.
        let mut quarantined = None;
        while let Ok(event) = standby.events.try_recv() {
            if let ReceiverEvent::Quarantined { peer, id, files } = event {
                assert_eq!(peer, "node-a");
                quarantined = Some((id, files));
            }
        }
        let (id, files) = quarantined.expect("a Quarantined event");
        assert_eq!(files, 2);
        let batch = cluster.quarantine("node-b").join(&id);
        assert_eq!(
            std::fs::read(batch.join("queue/b-only-1")).expect("read a quarantined file"),
            b"acked by b alone"
        );
        assert_eq!(
            std::fs::read(batch.join("queue/deep/b-only-2")).expect("read a quarantined file"),
            b"this one too"
        );
        assert!(batch.join(quarantine::METADATA).is_file());
        assert!(!batch.join("queue/delivered").exists());
        assert_eq!(listed[0].id, id);
        assert_eq!(listed[0].from, "node-a");
        assert_eq!(listed[0].paths, ["queue/b-only-1", "queue/deep/b-only-2"]);
        // Put aside once: the record is empty, a reconnection moves nothing.
        assert!(
            cluster
                .record("node-b")
                .paths("node-a")
                .expect("read node-b's record")
                .is_empty()
        );
        // node-a's catch-up gave node-b everything node-a had: node-b has
        // now seen queue/a-only, so node-a's record of it is gone (else
        // node-b's next catch-up of node-a would quarantine it and its
        // merge deliver it twice).
        assert!(
            cluster
                .record("node-a")
                .paths("node-b")
                .expect("read node-a's record")
                .is_empty()
        );
    })
    .await
}

#[tokio::test]
async fn without_the_quarantine_the_catch_up_deletes_the_losers_mail() {
    bounded(async {
        // The control for the test above: the same story, no quarantine.
        let (cluster, _standby) = split_brain(false).await;
        assert!(!cluster.data("node-b").join("queue/b-only-1").exists());
        assert!(
            quarantine::list(&cluster.quarantine("node-b"))
                .expect("list the quarantine")
                .is_empty()
        );
    })
    .await
}

#[tokio::test]
async fn a_serving_receiver_refuses_replication_and_ends_what_is_open() {
    bounded(async {
        let cluster = Cluster::new();
        let mut standby = Standby::start(&cluster, "node-b", "node-a", true).await;
        standby.receiver.set_serving(true);
        let error = tls::connect(
            &cluster.identity("node-a"),
            standby.addr,
            "node-b",
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        match &error {
            Error::Refused { reason, .. } => assert!(
                reason.contains("node-b is active")
                    && reason.contains("from node-a")
                    && reason.contains("split brain"),
                "{reason}"
            ),
            other => panic!("expected Refused, got {other}"),
        }
        let reason = standby
            .event(|e| match e {
                ReceiverEvent::Refused { reason, .. } => Some(reason),
                _ => None,
            })
            .await;
        assert!(reason.contains("node-b is active"), "{reason}");
        assert_eq!(standby.receiver.status().refused_connections, 1);

        standby.receiver.set_serving(false);
        let replicator = Replicator::start(cluster.active("node-a", "node-b", standby.addr))
            .expect("start the replicator");
        replicator.wait_all_in_sync().await;
        // Idle: nothing is being sent when it ends.
        standby.receiver.set_serving(true);
        let error = standby
            .event(|e| match e {
                ReceiverEvent::Closed {
                    peer,
                    error,
                    peer_hung_up,
                } if peer == "node-a" => Some((error, peer_hung_up)),
                _ => None,
            })
            .await;
        let (error, peer_hung_up) = error;
        let error = error.unwrap_or_default();
        assert!(error.contains("node-b is active"), "{error}");
        // This end hung up, for a reason of its own: no proof that the
        // peer's process is gone.
        assert!(!peer_hung_up, "{error}");
        replicator
            .wait_for(|s| s.peers[0].state != PeerState::InSync)
            .await;
        // The active redials, and is refused.
        standby
            .event(|e| match e {
                ReceiverEvent::Refused { .. } => Some(()),
                _ => None,
            })
            .await;
        assert!(standby.receiver.status().refused_connections >= 2);
    })
    .await
}

#[tokio::test]
async fn an_idle_channel_is_pinged_and_both_ends_hear_each_other() {
    bounded(async {
        let cluster = Cluster::new();
        let mut standby = Standby::start(&cluster, "node-b", "node-a", false).await;
        let (heard_tx, mut heard) = mpsc::channel(16);
        let mut config = cluster.active("node-a", "node-b", standby.addr);
        config.keepalive = Some(Duration::from_millis(50));
        config.heard = Some(heard_tx);
        let replicator = Replicator::start(config).expect("start the replicator");
        replicator.wait_all_in_sync().await;
        let round_trips = replicator.status().peers[0].round_trips;

        // What the catch-up made heard is behind us; from here on only
        // pings can make anything heard.
        while heard.try_recv().is_ok() {}
        while standby.events.try_recv().is_ok() {}
        for _ in 0..3 {
            assert_eq!(heard.recv().await.as_deref(), Some("node-b"));
        }
        for _ in 0..2 {
            let peer = standby
                .event(|e| match e {
                    ReceiverEvent::Heard { peer } => Some(peer),
                    _ => None,
                })
                .await;
            assert_eq!(peer, "node-a");
        }
        let status = replicator.status();
        assert_eq!(status.peers[0].state, PeerState::InSync);
        assert_eq!(
            status.peers[0].round_trips, round_trips,
            "no batch was sent"
        );
    })
    .await
}

#[tokio::test]
async fn a_receiver_with_a_record_needs_a_quarantine_dir() {
    let cluster = Cluster::new();
    let (events, _) = mpsc::channel(1);
    let error = Receiver::new(ReceiverConfig {
        identity: cluster.identity("node-b"),
        data_dir: cluster.data("node-b"),
        config_dir: cluster.node("node-b").join("config"),
        config_files: Vec::new(),
        config_hold: None,
        expected_peers: vec!["node-a".into()],
        events: Some(events),
        handshake_timeout: Duration::from_secs(5),
        log_dir: None,
        unreplicated: Some(cluster.record("node-b")),
        quarantine_dir: None,
        fencing: Default::default(),
    })
    .unwrap_err();
    assert!(error.to_string().contains("quarantine_dir"), "{error}");
}
