//! A simulated cluster: two or more agents in one process, on tokio's
//! paused clock, over a network a test can cut, delay and heal.
//!
//! Each node runs the agent's own loop ([`crate::driver`]) with the
//! simulated wiring: its heartbeats go through [`SimCluster`]'s router
//! instead of UDP sockets (authenticated on arrival exactly as a link task
//! does), its service starts and stops at once, and the operator reaches
//! it through the same requests the API server sends, and its monitors'
//! verdicts are whatever the test says ([`SimCluster::verdict`]). A crash
//! ends its task and closes its peer connections, as the kernel would; a freeze
//! stops polling its loop (SIGSTOP); a partition drops datagrams in one or
//! both directions. On a paused clock a test of
//! an HA rule takes the time its timers say, not the wall clock's, with no
//! sleeps and no shared lock, so such tests run side by side
//! (`turmoil`'s idea, kept small: the agent's only simulated effects are
//! datagrams, peer connections and the service).
//!
//! Real processes and sockets stay for what only they can show (the
//! service's sockets, signals, the CLI): see `crates/tandem/tests`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tandem_core::{Command, EffectiveRole};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::Error;
use crate::api::{CommandReply, StatusReport};
use crate::config::AgentConfig;
use crate::crash_link::PeerLinkEvent;
use crate::driver::{self, SimulatedPorts};
use crate::links::{LinkEvent, SimDatagram, authenticate};
use crate::monitor::Verdict;
use crate::server::ApiRequest;

/// Heartbeat interval of a simulated cluster.
pub const INTERVAL: Duration = Duration::from_millis(100);
/// Heartbeats missed before a peer is dead: the hold time is
/// `INTERVAL × LOST_THRESHOLD`.
pub const LOST_THRESHOLD: u32 = 3;

/// How long [`SimCluster::status`] waits for a frozen node.
const STATUS_TIMEOUT: Duration = Duration::from_millis(20);

/// What the router knows: which link address is whose, what is cut, and
/// each running node's inbox.
struct Network {
    /// Link address → node index.
    owners: BTreeMap<SocketAddr, usize>,
    /// Directed `(from, to)` pairs whose datagrams are dropped.
    cut: BTreeSet<(usize, usize)>,
    /// Added to every delivery.
    delay: Duration,
    /// The running nodes' inboxes (`None` while a node is down).
    inboxes: Vec<Option<mpsc::Sender<LinkEvent>>>,
    key: Vec<u8>,
    cluster: String,
}

/// The shape of a simulated cluster.
#[derive(Debug, Clone, Copy)]
pub struct SimSpec {
    /// Failover groups: with two or more the cluster is active-active,
    /// group N preferring node N (modulo).
    pub groups: usize,
    /// Count a peer's answering service as a link (its probes are the
    /// test's [`SimCluster::verdict`] calls).
    pub remote_as_heartbeat: bool,
}

impl Default for SimSpec {
    fn default() -> SimSpec {
        SimSpec {
            groups: 1,
            remote_as_heartbeat: false,
        }
    }
}

/// One node of the simulation.
struct SimNode {
    name: String,
    config_file: PathBuf,
    /// While it runs: how to ask it, stop it, and tell it of peers.
    running: Option<Running>,
}

struct Running {
    /// `true` while the node's loop is not polled (SIGSTOP).
    frozen: watch::Sender<bool>,
    api: mpsc::Sender<ApiRequest>,
    verdicts: mpsc::Sender<Verdict>,
    peer_events: mpsc::Sender<PeerLinkEvent>,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), Error>>,
}

/// Two or more agents on a simulated network.
pub struct SimCluster {
    nodes: Vec<SimNode>,
    network: Arc<Mutex<Network>>,
}

impl SimCluster {
    /// Writes an active-passive cluster of `names` (the first is the
    /// primary, priorities falling) under `dir` and starts every node.
    pub async fn start(names: &[&str], dir: &Path) -> Result<SimCluster, Error> {
        SimCluster::start_with(names, SimSpec::default(), dir).await
    }

    /// The same, shaped by `spec`.
    pub async fn start_with(
        names: &[&str],
        spec: SimSpec,
        dir: &Path,
    ) -> Result<SimCluster, Error> {
        let groups = spec.groups;
        let active_active = groups >= 2;
        let groups_toml: String = (0..groups)
            .filter(|_| active_active)
            .map(|g| {
                format!(
                    "[[cluster.groups]]\npreferred = {:?}\n",
                    names[g % names.len()]
                )
            })
            .collect();
        let io = |path: &Path| Error::io(path.to_path_buf());
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let key_file = dir.join("cluster.key");
        std::fs::write(&key_file, "simulated-cluster-key-0123456789").map_err(io(&key_file))?;
        let token_file = dir.join("api.token");
        std::fs::write(&token_file, "simulated-api-token-0123456789").map_err(io(&token_file))?;
        let mut nodes = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let mut text = format!(
                "[node]\nname = {name:?}\npriority = {}\nrole = {:?}\nstate_dir = {:?}\n\
                 api = \"10.255.1.{n}:7001\"\nsync = \"10.255.1.{n}:7002\"\ntoken_file = {:?}\n\n\
                 [cluster]\nname = \"sim\"\nkey_file = {:?}\nmode = {mode:?}\n\
                 interval = \"{}ms\"\nlost_threshold = {LOST_THRESHOLD}\npreempt = true\n\
                 remote_as_heartbeat = {}\n{groups_toml}\n\
                 [[link]]\nname = \"hb\"\nlisten = \"{}\"\n\n",
                200usize.saturating_sub(i * 10),
                if i == 0 { "primary" } else { "secondary" },
                dir.join(name),
                token_file,
                key_file,
                INTERVAL.as_millis(),
                spec.remote_as_heartbeat,
                link_addr(i),
                n = i + 1,
                mode = if active_active {
                    "active-active"
                } else {
                    "active-passive"
                },
            );
            for (j, peer) in names.iter().enumerate().filter(|(j, _)| *j != i) {
                text.push_str(&format!(
                    "[[peer]]\nname = {peer:?}\nlinks = [\"{}\"]\nsync = \"10.255.1.{n}:7002\"\n\
                     api = \"10.255.1.{n}:7001\"\nservice = \"10.255.1.{n}:25\"\n\n",
                    link_addr(j),
                    n = j + 1
                ));
            }
            // Port 0: a claimed VIP binds a loopback socket nobody uses, so
            // nodes of one process never collide.
            let vips = vec!["\"127.0.0.1:0\""; groups.max(1)].join(", ");
            text.push_str(&format!(
                "[vip]\nmode = \"bind\"\nlisten = [{vips}]\n\n\
                 [service]\ncommand = [\"simulated\"]\n\n[monitor]\nlservice = false\n"
            ));
            let config_file = dir.join(format!("{name}.toml"));
            std::fs::write(&config_file, text).map_err(io(&config_file))?;
            nodes.push(SimNode {
                name: name.to_string(),
                config_file,
                running: None,
            });
        }
        let first = AgentConfig::load(&nodes[0].config_file)?;
        let network = Network {
            owners: (0..names.len()).map(|i| (link_addr(i), i)).collect(),
            cut: BTreeSet::new(),
            delay: Duration::ZERO,
            inboxes: vec![None; names.len()],
            key: first.secrets.cluster_key.clone(),
            cluster: first.cluster.name.clone(),
        };
        let mut cluster = SimCluster {
            nodes,
            network: Arc::new(Mutex::new(network)),
        };
        for i in 0..names.len() {
            cluster.boot(i).await?;
        }
        Ok(cluster)
    }

    fn network(&self) -> MutexGuard<'_, Network> {
        self.network.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts node `i`'s agent (again, after a crash: a new boot epoch).
    pub async fn boot(&mut self, i: usize) -> Result<(), Error> {
        let config = AgentConfig::load(&self.nodes[i].config_file)?;
        let (wire, mut outgoing) = mpsc::unbounded_channel::<SimDatagram>();
        let (inbox_tx, inbox) = mpsc::channel(256);
        let (peer_tx, peer_events) = mpsc::channel(64);
        let (api_tx, api) = mpsc::channel(64);
        let (verdict_tx, verdicts) = mpsc::channel(16);
        let ports = SimulatedPorts {
            wire,
            inbox,
            peer_events,
            api,
            verdicts,
        };
        let agent = driver::Agent::start(config, Some(ports)).await?;
        self.network().inboxes[i] = Some(inbox_tx);
        let network = self.network.clone();
        // The router for this node's datagrams: ends with the node.
        tokio::spawn(async move {
            while let Some(datagram) = outgoing.recv().await {
                deliver(&network, i, datagram);
            }
        });
        let (shutdown, stop) = oneshot::channel::<()>();
        let (frozen, thawed) = watch::channel(false);
        let agent_loop = driver::drive(agent, async {
            let _ = stop.await;
        });
        let task = tokio::spawn(freezable(agent_loop, thawed));
        self.nodes[i].running = Some(Running {
            frozen,
            api: api_tx,
            verdicts: verdict_tx,
            peer_events: peer_tx,
            shutdown,
            task,
        });
        Ok(())
    }

    /// kill -9 of node `i`'s agent: its loop ends mid-step, its datagrams
    /// stop, and its peers' connections to it close at once.
    pub async fn crash(&mut self, i: usize) {
        let Some(running) = self.nodes[i].running.take() else {
            return;
        };
        running.task.abort();
        let _ = running.task.await;
        self.network().inboxes[i] = None;
        let name = self.nodes[i].name.clone();
        for peer in self.nodes.iter().filter_map(|n| n.running.as_ref()) {
            let _ = peer
                .peer_events
                .send(PeerLinkEvent::Closed { peer: name.clone() })
                .await;
        }
    }

    /// SIGSTOP of node `i`'s agent: its loop is not polled, so it neither
    /// sends nor reads, while its peer connections stay open (a hang, not
    /// a crash); what arrives meanwhile waits in its inbox.
    pub fn freeze(&self, i: usize) {
        if let Some(running) = &self.nodes[i].running {
            let _ = running.frozen.send(true);
        }
    }

    /// SIGCONT: node `i`'s loop runs again, its timers long overdue.
    pub fn thaw(&self, i: usize) {
        if let Some(running) = &self.nodes[i].running {
            let _ = running.frozen.send(false);
        }
    }

    /// A clean stop of node `i` (its goodbye goes out first).
    pub async fn stop(&mut self, i: usize) -> Result<(), Error> {
        let Some(running) = self.nodes[i].running.take() else {
            return Ok(());
        };
        let _ = running.shutdown.send(());
        let stopped = running
            .task
            .await
            .map_err(|e| Error::State(format!("node {i}'s loop panicked: {e}")))?;
        self.network().inboxes[i] = None;
        stopped
    }

    /// Drops every datagram from `a` to `b` and from `b` to `a`.
    pub fn partition(&self, a: usize, b: usize) {
        let mut network = self.network();
        network.cut.insert((a, b));
        network.cut.insert((b, a));
    }

    /// Drops datagrams from `from` to `to` only.
    pub fn cut_one_way(&self, from: usize, to: usize) {
        self.network().cut.insert((from, to));
    }

    /// Every link works again.
    pub fn heal(&self) {
        self.network().cut.clear();
    }

    /// Delays every datagram by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.network().delay = delay;
    }

    /// Node `i`'s monitors report `verdict` (an lservice or rservice
    /// probe's change, or a peer's service answering a heartbeat probe);
    /// dropped while the node is down.
    pub async fn verdict(&self, i: usize, verdict: Verdict) {
        if let Some(running) = &self.nodes[i].running {
            let _ = running.verdicts.send(verdict).await;
        }
    }

    /// Node `i`'s own report; `None` while it is down or frozen (a live
    /// loop answers within the same simulated instant, so the timeout only
    /// ends a wait on a frozen one).
    pub async fn status(&self, i: usize) -> Option<StatusReport> {
        let running = self.nodes[i].running.as_ref()?;
        let (reply, answer) = oneshot::channel();
        running.api.try_send(ApiRequest::Status { reply }).ok()?;
        tokio::time::timeout(STATUS_TIMEOUT, answer)
            .await
            .ok()?
            .ok()
    }

    /// Node `i`'s effective role; `None` while it is down.
    pub async fn role(&self, i: usize) -> Option<EffectiveRole> {
        Some(self.status(i).await?.node.effective_role)
    }

    /// Who holds each failover group, as node `i` sees it (`None` where it
    /// knows of no holder, or is down).
    pub async fn holders(&self, i: usize) -> Vec<Option<String>> {
        self.status(i)
            .await
            .map(|s| s.node.groups.into_iter().map(|g| g.holder).collect())
            .unwrap_or_default()
    }

    /// The nodes that say they are active, by name.
    pub async fn actives(&self) -> Vec<String> {
        let mut actives = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if self.role(i).await == Some(EffectiveRole::Active) {
                actives.push(node.name.clone());
            }
        }
        actives
    }

    /// An operator command on node `i`, as `POST /v1/command` gives it.
    pub async fn command(&self, i: usize, command: Command) -> Result<CommandReply, Error> {
        let running = self.nodes[i]
            .running
            .as_ref()
            .ok_or_else(|| Error::State(format!("node {i} is down")))?;
        let (reply, answer) = oneshot::channel();
        let request = ApiRequest::Command {
            command,
            node: None,
            force: false,
            caller: "simulation".into(),
            reply,
        };
        let gone = || Error::State(format!("node {i} stopped answering"));
        running.api.send(request).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())
    }

    /// Stops every node.
    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            let _ = self.stop(i).await;
        }
    }
}

/// Polls `agent_loop` only while `frozen` says no: a stopped process, as
/// the simulation sees one.
async fn freezable<T>(
    agent_loop: impl std::future::Future<Output = T>,
    mut frozen: watch::Receiver<bool>,
) -> T {
    tokio::pin!(agent_loop);
    loop {
        if *frozen.borrow_and_update() {
            // A dropped sender is a cluster gone: the loop may end too.
            if frozen.changed().await.is_err() {
                return agent_loop.await;
            }
            continue;
        }
        tokio::select! {
            out = &mut agent_loop => return out,
            changed = frozen.changed() => {
                if changed.is_err() {
                    return agent_loop.await;
                }
            }
        }
    }
}

/// Node `i`'s address on the heartbeat link: never bound, only the
/// router's key (and the sender a receiving node logs).
fn link_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 255, 0, (i + 1) as u8], 7000))
}

/// Routes one datagram from node `from`: dropped when cut or when nobody
/// owns the address, else authenticated as a link task would and handed to
/// the owner's inbox, after the network's delay.
fn deliver(network: &Mutex<Network>, from: usize, datagram: SimDatagram) {
    let network = network.lock().unwrap_or_else(|p| p.into_inner());
    let Some(&to) = network.owners.get(&datagram.to) else {
        return;
    };
    if network.cut.contains(&(from, to)) {
        return;
    }
    let Some(inbox) = network.inboxes[to].clone() else {
        return;
    };
    let sender = link_addr(from);
    let event = match authenticate(
        &network.key,
        &network.cluster,
        datagram.link,
        sender,
        &datagram.bytes,
    ) {
        Ok(datagram) => LinkEvent::Datagram(datagram),
        Err(Some((reason, claimed_sender))) => LinkEvent::Rejected {
            link: datagram.link,
            reason,
            claimed_sender,
            count: 1,
        },
        Err(None) => return,
    };
    let delay = network.delay;
    drop(network);
    if delay.is_zero() {
        // A full inbox drops the datagram, as a full socket buffer would.
        let _ = inbox.try_send(event);
    } else {
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = inbox.try_send(event);
        });
    }
}
