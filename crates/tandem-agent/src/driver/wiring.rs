//! How an agent is wired to the world: the real one (UDP links, the crash
//! link, the API server, the service supervisor, the monitors) or a
//! simulated one ([`crate::sim`]: datagrams through a simulated network, a
//! service that starts and stops at once, no sockets but the VIP's).
//!
//! Everything else in the agent is the same in both, so a simulated
//! cluster on tokio's paused clock runs the very loop a node runs.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::sync::mpsc;

use crate::Error;
use crate::config::AgentConfig;
use crate::crash_link::{self, Identity, PeerLinkEvent};
use crate::etcd::{self, StoreLink};
use crate::firmware::Firmware;
use crate::links::{HeartbeatLinks, LinkEvent, SimDatagram};
use crate::monitor::{self, Verdict};
use crate::replication::Replication;
use crate::server::{self, ApiRequest};
use crate::supervisor::{self, ServiceEvent, SupervisorHandle};
use crate::upgrade::Upgrades;
use tandem_sync::fencing::Fencing;

/// What the loop reads from and acts through.
pub(super) struct Wiring {
    pub links: HeartbeatLinks,
    pub inbox: mpsc::Receiver<LinkEvent>,
    pub peer_events: mpsc::Receiver<PeerLinkEvent>,
    pub api: mpsc::Receiver<ApiRequest>,
    pub service_events: mpsc::Receiver<ServiceEvent>,
    pub supervisor: SupervisorHandle,
    pub verdicts: mpsc::Receiver<Verdict>,
    pub serving: Arc<AtomicBool>,
    pub replication: Replication,
    pub store: StoreLink,
    /// The node's fencing epochs, shared by the sync channel and the API.
    pub fencing: Arc<Fencing>,
}

/// A simulated node's ends of the simulated network: where its datagrams
/// go, and where the network, the crash detector and the operator reach it.
pub(crate) struct SimulatedPorts {
    /// Its outgoing datagrams.
    pub wire: mpsc::UnboundedSender<SimDatagram>,
    /// Datagrams the network delivers to it.
    pub inbox: mpsc::Receiver<LinkEvent>,
    /// Peer connections opening and closing (a peer's crash).
    pub peer_events: mpsc::Receiver<PeerLinkEvent>,
    /// Operator requests (status, commands).
    pub api: mpsc::Receiver<ApiRequest>,
    /// The monitors' verdicts, as the simulation decides them.
    pub verdicts: mpsc::Receiver<Verdict>,
}

impl Wiring {
    /// Real sockets, processes and probes.
    pub async fn real(
        config: &AgentConfig,
        firmware: &Firmware,
        epoch: u64,
    ) -> Result<Wiring, Error> {
        // etcd first: a node that cannot reach it must not start at all.
        let store = match &config.etcd {
            Some(settings) => {
                let groups = config.node_config().groups.iter().map(|g| g.id).collect();
                etcd::start(settings, &config.node.name, &config.node.version, groups).await?
            }
            None => StoreLink::none(),
        };
        let (datagrams, inbox) = mpsc::channel(256);
        let links = HeartbeatLinks::bind(config, datagrams).await?;
        let (peer_tx, peer_events) = mpsc::channel(64);
        let identity = Identity {
            cluster: config.cluster.name.clone(),
            name: config.node.name.clone(),
            epoch,
            key: config.secrets.cluster_key.clone(),
        };
        let sync_peers = config
            .peers
            .iter()
            .map(|p| (p.name.clone(), p.sync))
            .collect();
        // With [sync], the TLS sync channel owns the sync port and is the
        // crash detector (see crate::replication).
        let gate = store
            .sync_key
            .clone()
            .map(|key| key as Arc<dyn tandem_sync::replicator::DegradeGate>);
        let fencing = Arc::new(Fencing::default());
        let replication = Replication::start(config, gate, fencing.clone()).await?;
        if !replication.enabled() {
            crash_link::start(config.node.sync, identity, sync_peers, peer_tx).await?;
        }
        let (api_tx, api) = mpsc::channel(64);
        let api_peers = config
            .peers
            .iter()
            .map(|p| (p.name.clone(), p.api))
            .collect();
        let upgrades = Upgrades::start(
            &config.node.state_dir,
            std::iter::once((config.node.name.clone(), config.node.api))
                .chain(config.peers.iter().map(|p| (p.name.clone(), p.api)))
                .collect(),
            config.secrets.api_token.clone(),
            fencing.clone(),
        )?;
        server::serve(server::ApiSetup {
            addr: config.node.api,
            token: config.secrets.api_token.clone(),
            peers: api_peers,
            driver: api_tx,
            firmware: firmware.clone(),
            upgrades,
            state_dir: config.node.state_dir.clone(),
            config_file: config.origin.clone(),
            node: config.node.name.clone(),
            extra_routes: replication.router(),
            fencing: fencing.clone(),
        })
        .await?;
        let (service_tx, service_events) = mpsc::channel(64);
        let supervisor = supervisor::spawn(service_tx);
        let (verdict_tx, verdicts) = mpsc::channel(16);
        let serving = Arc::new(AtomicBool::new(false));
        if config.monitor.lservice
            && let Some(vip) = config.vip.listen.first()
        {
            monitor::spawn_local(
                config.monitor.clone(),
                *vip,
                serving.clone(),
                verdict_tx.clone(),
            );
        }
        for peer in &config.peers {
            if let Some(addr) = peer.service {
                monitor::spawn_remote(
                    config.monitor.clone(),
                    peer.name.clone(),
                    addr,
                    verdict_tx.clone(),
                );
                if config.cluster.remote_as_heartbeat {
                    let interval = config.cluster.interval;
                    monitor::spawn_heartbeat_probe(
                        peer.name.clone(),
                        addr,
                        interval,
                        verdict_tx.clone(),
                    );
                }
            }
        }
        Ok(Wiring {
            links,
            inbox,
            peer_events,
            api,
            service_events,
            supervisor,
            verdicts,
            serving,
            replication,
            store,
            fencing,
        })
    }

    /// The simulated network's ports and a service that runs nothing; no
    /// probes (the simulation decides what fails).
    pub async fn simulated(config: &AgentConfig, ports: SimulatedPorts) -> Result<Wiring, Error> {
        let (service_tx, service_events) = mpsc::channel(64);
        Ok(Wiring {
            links: HeartbeatLinks::simulated(config, ports.wire),
            inbox: ports.inbox,
            peer_events: ports.peer_events,
            api: ports.api,
            service_events,
            supervisor: supervisor::simulated(service_tx),
            verdicts: ports.verdicts,
            serving: Arc::new(AtomicBool::new(false)),
            replication: Replication::start(config, None, Arc::default()).await?,
            store: StoreLink::none(),
            fencing: Arc::default(),
        })
    }
}
