//! The driver: one `select!` loop that owns the state machine, feeds it
//! everything the agent observes, and carries out what it decides.
//!
//! Nothing else touches the [`Node`]: links, crash detection, the API and
//! the supervisor all talk to this loop over channels, so the core sees one
//! ordered stream of inputs, as in its tests. The loop must never block:
//! a stalled loop stops heartbeats and the peer would take over. So the
//! service is stopped asynchronously (the supervisor escalates on its own
//! time) and every send is fire-and-forget.
//!
//! **Planned handover with data sync.** `failover standby` on an active
//! node with `[sync]` and a service that drains itself (`suspend =
//! "signal"`) first suspends the service's listener and lets the sessions
//! in progress finish while this node is still active, and only then hands
//! over (see [`HANDOVER_DRAIN`]). Without that, a session accepted just
//! before the handover would store its message after this node stopped
//! being active: its cluster fsync is refused (the client gets a 4xx), or,
//! already under way, lands in the new active's spool after its relay has
//! read it. New connections meanwhile wait in the VIP socket's backlog and
//! are served by the new active. The wait happens in a task, never in
//! the loop, which gets the command back when the drain is over.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tandem_core::{
    Codec, Command, Destination, Event, GroupId, HandoverCause, Input, LinkId, Millis, Mode, Node,
    Output,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::api::{self, ApiRequest, CommandReply, ListenerAction};
use crate::config::ConfigChangeAction;
use crate::config::{AgentConfig, ModeName, SuspendMethod};
use crate::crash_link::{self, Identity, PeerLinkEvent};
use crate::firmware::{BootVerdict, Firmware};
use crate::links::{Datagram, HeartbeatLinks, LinkEvent};
use crate::monitor::{self, Verdict};
use crate::replication::Replication;
use crate::state::{self, SavedState};
use crate::supervisor::{self, ServiceEvent, ServiceSpec, SupervisorHandle};
use crate::upgrade::{self, Upgrades};
use crate::vip_ip::IpVip;
use crate::{Error, vip};
use tandem_image::slots::SlotName;

/// How long the service must go without failing before the local monitor
/// reports it healthy again.
const RECOVERY_QUIET: Duration = Duration::from_secs(30);

/// How long the API's answer has to get out before the agent replaces
/// itself with a slot's agent.
const EXEC_DELAY: Duration = Duration::from_millis(300);

/// Runs the agent until `shutdown` resolves, then leaves the cluster
/// cleanly: the peers are told goodbye, the VIP and the service released.
/// How long a planned handover with data sync lets the service's sessions
/// in progress finish before it hands over anyway (those still open then
/// are closed with a 4xx by the service). SMTP sessions of one message take
/// milliseconds; an idle client holding a session open costs this much
/// delay to the connections waiting in the backlog, never their failure.
/// With [`DRAIN_MARGIN`] it stays under the CLI's 5 s request timeout, so
/// `tandem failover standby` still gets its answer.
const HANDOVER_DRAIN: Duration = Duration::from_secs(3);

/// How long after [`HANDOVER_DRAIN`] the service may take to close what
/// was left and write its marker before the handover goes on without it.
const DRAIN_MARGIN: Duration = Duration::from_secs(1);

/// The file in the control dir a draining service writes when its sessions
/// in progress are over (`tandem mta serve` does).
const DRAINED_MARKER: &str = "drained";

/// An operator command and where its answer goes; a `failover standby` is
/// held in a task until the service drained (module doc).
struct HeldCommand {
    command: Command,
    node: Option<String>,
    /// A takeover even with data not in sync.
    force: bool,
    caller: String,
    reply: oneshot::Sender<CommandReply>,
    /// The handover suspended the listener for its drain (so a refusal
    /// resumes it; an operator's own suspend is never undone here).
    drained: bool,
}

pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let mut agent = Agent::start(config).await?;
    if agent.firmware.boot_in_progress().await.is_some() {
        let hold = agent.node.config().hold_time();
        agent.standby_check_at = Some(Instant::now() + hold + Duration::from_secs(1));
    }
    // The first heartbeat is due at once; the peers learn of this node
    // before its start-up wait ends, so a pair starting together does not
    // elect two actives.
    agent.step(Input::Tick).await;
    tokio::pin!(shutdown);
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    let watchdog = watchdog_interval();
    let mut watchdog_at = Instant::now();
    let config_changes = agent.replication.config_changes();

    loop {
        let deadline = agent
            .clock
            .instant(agent.node.next_deadline(agent.clock.now()));
        let recover_at = agent.recover_at;
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep_until(deadline) => { agent.step(Input::Tick).await; }
            Some(event) = agent.inbox.recv() => match event {
                LinkEvent::Datagram(datagram) => agent.receive(datagram).await,
                LinkEvent::Rejected { link, reason, claimed_sender, count } => {
                    agent.step(Input::Rejected { link, reason, claimed_sender, count }).await;
                }
            },
            Some(event) = agent.peer_events.recv() => agent.peer_event(event).await,
            Some(input) = agent.replication.next_input() => { agent.step(input).await; }
            action = config_changes.next() => agent.on_config_change(action).await,
            Some(request) = agent.api.recv() => agent.api_request(request).await,
            Some(held) = agent.drained.recv() => agent.answer_command(held).await,
            Some((group, to, cause)) = agent.preemption_drained.recv() => {
                agent.hand_over_drained(group, to, cause).await;
            }
            Some(event) = agent.service_events.recv() => agent.service_event(event).await,
            Some(verdict) = agent.boot_verdict_rx.recv() => agent.boot_verdict(verdict).await,
            () = tokio::time::sleep_until(agent.exec_after.as_ref().map_or_else(Instant::now, |(at, _)| *at)), if agent.exec_after.is_some() => {
                if let Some((_, path)) = agent.exec_after.take() {
                    agent.exec_into(&path).await;
                }
            }
            () = tokio::time::sleep_until(agent.standby_check_at.unwrap_or_else(Instant::now)), if agent.standby_check_at.is_some() => {
                agent.standby_check_at = None;
                if !agent.service_running && agent.firmware.boot_in_progress().await.is_some() {
                    let firmware = agent.firmware.clone();
                    let verdicts = agent.boot_verdicts.clone();
                    tokio::spawn(async move {
                        let _ = verdicts.send(firmware.check_boot(true).await).await;
                    });
                }
            }
            Some(verdict) = agent.verdicts.recv() => {
                let input = match verdict {
                    Verdict::Answered { peer } => {
                        let link = LinkId(u8::try_from(agent.config.links.len()).unwrap_or(u8::MAX));
                        Input::ServiceAnswered { peer, link }
                    }
                    // A node that no longer serves cannot judge its service:
                    // on a shared VIP the probe reaches whoever serves now.
                    // Its recovery comes from the quiet-period timer.
                    Verdict::Local { healthy: true, .. } if !agent.service_running => continue,
                    Verdict::Local { healthy, detail } => {
                        if !healthy {
                            agent.recover_at = Some(Instant::now() + RECOVERY_QUIET);
                        }
                        Input::LocalMonitor { healthy, detail }
                    }
                    Verdict::Remote { peer, healthy, detail } => Input::RemoteMonitor { peer, healthy, detail },
                };
                agent.step(input).await;
            }
            () = tokio::time::sleep_until(recover_at.unwrap_or_else(Instant::now)), if recover_at.is_some() => {
                agent.recover_at = None;
                let detail = format!("no service failure for {} s", RECOVERY_QUIET.as_secs());
                agent.step(Input::LocalMonitor { healthy: true, detail }).await;
            }
        }
        if let Some(every) = watchdog
            && watchdog_at.elapsed() >= every
        {
            notify_systemd(&[sd_notify::NotifyState::Watchdog]);
            watchdog_at = Instant::now();
        }
    }

    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("shutting down: saying goodbye and releasing the service");
    agent.step(Input::Shutdown).await;
    agent.supervisor.stop().await;
    agent.replication.checkpoint_standby_log().await;
    Ok(())
}

/// Monotonic time since the agent started, as the core counts it.
struct Clock {
    start: Instant,
}

impl Clock {
    fn now(&self) -> Millis {
        Millis(u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    fn instant(&self, at: Millis) -> Instant {
        self.start + Duration::from_millis(at.0)
    }
}

/// Counters the core does not keep.
#[derive(Default)]
struct AgentCounters {
    service_starts: u64,
    service_crashes: u64,
    peer_connections_closed: u64,
}

struct Agent {
    config: AgentConfig,
    clock: Clock,
    node: Node,
    codec: Codec,
    saved: SavedState,
    links: HeartbeatLinks,
    inbox: mpsc::Receiver<LinkEvent>,
    peer_events: mpsc::Receiver<PeerLinkEvent>,
    api: mpsc::Receiver<ApiRequest>,
    /// Handovers whose drain is over, back from their waiting task.
    drained: mpsc::Receiver<HeldCommand>,
    drained_tx: mpsc::Sender<HeldCommand>,
    /// Preemptions whose drain is over (or was not possible).
    preemption_drained: mpsc::Receiver<(GroupId, String, HandoverCause)>,
    preemption_drained_tx: mpsc::Sender<(GroupId, String, HandoverCause)>,
    /// The listener was suspended for a preemption's drain: resumed if the
    /// handover does not happen after all.
    suspended_for_preemption: bool,
    service_events: mpsc::Receiver<ServiceEvent>,
    supervisor: SupervisorHandle,
    service_running: bool,
    /// The service's pid, while it runs.
    service_pid: Option<u32>,
    /// `tandem listener suspend` is in force.
    listener_suspended: bool,
    /// The images and A/B slots.
    firmware: Firmware,
    boot_verdicts: mpsc::Sender<BootVerdict>,
    boot_verdict_rx: mpsc::Receiver<BootVerdict>,
    /// Re-execute the agent from a booted slot at this moment (after the
    /// API has answered).
    exec_after: Option<(Instant, std::path::PathBuf)>,
    /// A boot found in flight at start-up (the agent was re-executed from
    /// the slot, or crashed): checked as a standby boot at this moment
    /// unless the node serves by then.
    standby_check_at: Option<Instant>,
    /// Shared with the lservice monitor: probe only while serving.
    serving: Arc<AtomicBool>,
    verdicts: mpsc::Receiver<Verdict>,
    /// The VIP sockets this node holds, per group.
    vip: BTreeMap<GroupId, Vec<(SocketAddr, Arc<OwnedFd>)>>,
    /// `ip` mode: each group's address (empty in `bind` mode).
    ip_vips: Vec<IpVip>,
    /// When to report the local service healthy again after a failure.
    recover_at: Option<Instant>,
    counters: AgentCounters,
    /// `[sync]`: the sync receiver, and the replicator while active.
    replication: Replication,
}

impl Agent {
    async fn start(config: AgentConfig) -> Result<Agent, Error> {
        let clock = Clock {
            start: Instant::now(),
        };
        let saved = state::start(&config.node.state_dir)?;
        let (firmware, repaired) =
            Firmware::open(&config.node.state_dir, &config.images).map_err(Error::State)?;
        for note in repaired {
            tracing::warn!(note, "image slots repaired after an interrupted operation");
        }
        let mut node_config = config.node_config();
        if let Some(version) = firmware.version().await {
            node_config.version = version;
        }
        let node = Node::new(node_config, saved.core, clock.now())?;
        let (boot_verdicts, boot_verdict_rx) = mpsc::channel(4);
        let codec = Codec::new(
            &config.secrets.cluster_key,
            &config.cluster.name,
            &config.node.name,
            saved.epoch,
        );
        vip::enable_request_migration();

        let (datagrams, inbox) = mpsc::channel(256);
        let links = HeartbeatLinks::bind(&config, datagrams).await?;
        let (peer_tx, peer_events) = mpsc::channel(64);
        let identity = Identity {
            cluster: config.cluster.name.clone(),
            name: config.node.name.clone(),
            epoch: saved.epoch,
            key: config.secrets.cluster_key.clone(),
        };
        let sync_peers = config
            .peers
            .iter()
            .map(|p| (p.name.clone(), p.sync))
            .collect();
        // With [sync], the TLS sync channel owns the sync port and is the
        // crash detector (see crate::replication).
        let replication = Replication::start(&config).await?;
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
        )
        .map_err(Error::State)?;
        api::serve(api::ApiSetup {
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
        })
        .await?;
        let (service_tx, service_events) = mpsc::channel(64);
        let supervisor = supervisor::spawn(service_tx);
        let (verdict_tx, verdicts) = mpsc::channel(16);
        let (drained_tx, drained) = mpsc::channel(4);
        let (preemption_drained_tx, preemption_drained) = mpsc::channel(4);
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
        tracing::info!(
            node = %config.node.name,
            epoch = saved.epoch,
            api = %config.node.api,
            "agent started"
        );
        Ok(Agent {
            clock,
            node,
            codec,
            saved,
            links,
            inbox,
            peer_events,
            api,
            drained,
            drained_tx,
            preemption_drained,
            preemption_drained_tx,
            suspended_for_preemption: false,
            service_events,
            supervisor,
            service_running: false,
            service_pid: None,
            listener_suspended: false,
            firmware,
            boot_verdicts,
            boot_verdict_rx,
            exec_after: None,
            standby_check_at: None,
            serving,
            verdicts,
            vip: BTreeMap::new(),
            ip_vips: config.vip.ip_vips(),
            config,
            recover_at: None,
            counters: AgentCounters::default(),
            replication,
        })
    }

    /// Feeds one input to the core and carries out its outputs; returns
    /// the outputs for callers that report them (the API).
    async fn step(&mut self, input: Input) -> Vec<Output> {
        let outputs = self.node.step(self.clock.now(), input);
        // Replication follows the role before the outputs run: a node that
        // has just become active starts its replicator before its service
        // starts, or the service's first cluster fsyncs would be refused
        // (409, a 4xx to the client) while the outputs still run — a
        // window as long as the step's fsync'd persist on a busy disk.
        self.replication.after_step(&self.node, self.clock.now());
        for output in &outputs {
            self.execute(output).await;
        }
        // After a split brain this node survived as active, or when a peer
        // comes back (a partition healing), the other side may have held the
        // address and pointed clients at itself with its own gratuitous ARP:
        // announce again so they return without waiting for their neighbour
        // entries to expire.
        let reannounce = outputs.iter().any(|o| {
            matches!(
                o,
                Output::Event(Event::SplitBrain { .. } | Event::PeerFound { .. })
            )
        });
        if reannounce {
            for group in self.node.active_groups() {
                if let Some(ip) = self.ip_vip(group) {
                    match ip.claim().await {
                        Ok(_) => tracing::info!(group = group.0, "VIP announced again"),
                        Err(e) => {
                            tracing::error!(group = group.0, error = %e, "cannot announce the VIP")
                        }
                    }
                }
            }
        }
        outputs
    }

    async fn execute(&mut self, output: &Output) {
        match output {
            Output::Send { to, message } => {
                let peers: Vec<String> = match to {
                    Destination::All => self.links.peer_names().map(str::to_string).collect(),
                    Destination::Peer(p) => vec![p.clone()],
                };
                for peer in peers {
                    let codec = &mut self.codec;
                    self.links
                        .send(&peer, || match codec.seal_for(&peer, message) {
                            Ok(bytes) => Some(bytes),
                            Err(e) => {
                                tracing::error!(error = %e, "cannot encode a message");
                                None
                            }
                        })
                        .await;
                }
            }
            Output::ClaimVip { group } => self.claim_vip(*group).await,
            Output::ReleaseVip { group } => {
                self.listener_suspended = false;
                if self.vip.remove(group).is_some() {
                    tracing::info!(group = group.0, "VIP released");
                }
                if let Some(ip) = self.ip_vip(*group) {
                    match ip.release().await {
                        Ok(report) => {
                            tracing::info!(group = group.0, report = ?report, "VIP address removed")
                        }
                        Err(e) => {
                            tracing::error!(group = group.0, error = %e, "cannot remove the VIP address")
                        }
                    }
                }
            }
            Output::StartService => {
                // Config-only mode has no failover group, so the core never
                // claims a VIP: every serving node binds it itself (with
                // SO_REUSEPORT the kernel spreads connections over them).
                if self.config.cluster.mode == ModeName::ConfigOnly && self.vip.is_empty() {
                    self.bind_vip(GroupId(0));
                }
                self.service_running = true;
                self.serving.store(true, Ordering::Relaxed);
                self.start_service().await;
            }
            Output::StopService => {
                // A config-only node that stops serving must not keep a
                // share of the VIP's connections queued where nobody accepts.
                if self.config.cluster.mode == ModeName::ConfigOnly {
                    self.vip.remove(&GroupId(0));
                }
                self.service_running = false;
                self.serving.store(false, Ordering::Relaxed);
                self.supervisor.request_stop().await;
            }
            Output::Persist(core) => {
                self.saved.core = Some(*core);
                if let Err(e) = state::save(&self.config.node.state_dir, &self.saved) {
                    tracing::error!(error = %e, "cannot persist HA state");
                }
            }
            Output::Event(event) => log_event(event),
            Output::Refused { command, reason } => {
                tracing::warn!(%command, %reason, "command refused");
            }
            Output::DrainForHandover { group, to, cause } => {
                self.drain_for_preemption(*group, to.clone(), *cause).await;
            }
        }
    }

    /// Binds the group's VIP addresses and, in active-active mode, gives a
    /// running service the new socket too.
    async fn claim_vip(&mut self, group: GroupId) {
        // In ip mode the address goes on the interface first: sockets can
        // only bind to an address the host has.
        if let Some(ip) = self.ip_vip(group) {
            match ip.claim().await {
                Ok(report) => {
                    tracing::info!(group = group.0, report = ?report, "VIP address added")
                }
                Err(e) => {
                    tracing::error!(group = group.0, error = %e, "cannot add the VIP address")
                }
            }
        }
        self.bind_vip(group);
        // A service already running (another group of active-active) must
        // get the new socket too.
        if self.service_running && self.node.config().mode == Mode::ActiveActive {
            self.restart_service().await;
        }
    }

    /// Binds the group's VIP addresses. In active-passive mode every listen
    /// address belongs to the one group; in active-active, group N owns the
    /// N-th address.
    fn bind_vip(&mut self, group: GroupId) {
        let addrs: Vec<SocketAddr> = match self.config.cluster.mode {
            ModeName::ActiveActive => self
                .config
                .vip
                .listen
                .get(usize::from(group.0))
                .copied()
                .into_iter()
                .collect(),
            _ => self.config.vip.listen.clone(),
        };
        let mut sockets = Vec::new();
        for addr in addrs {
            match vip::bind(addr) {
                Ok(fd) => sockets.push((addr, fd)),
                Err(e) => tracing::error!(%addr, error = %e, "cannot bind the VIP"),
            }
        }
        tracing::info!(group = group.0, addrs = ?sockets.iter().map(|(a, _)| a).collect::<Vec<_>>(), "VIP claimed");
        self.vip.insert(group, sockets);
    }

    /// The `ip` mode address of a group: group N has the N-th address
    /// (active-passive has one group and one address).
    fn ip_vip(&self, group: GroupId) -> Option<&IpVip> {
        self.ip_vips.get(usize::from(group.0))
    }

    fn vip_sockets(&self) -> Vec<Arc<OwnedFd>> {
        self.vip
            .values()
            .flatten()
            .map(|(_, fd)| fd.clone())
            .collect()
    }

    /// Starts the service (from the current image slot, if one is booted)
    /// and, when that slot's boot awaits its health check, runs the check.
    async fn start_service(&mut self) {
        self.replication.checkpoint_standby_log().await;
        let spec = self.service_spec().await;
        self.supervisor.start(spec, self.vip_sockets()).await;
        let firmware = self.firmware.clone();
        let verdicts = self.boot_verdicts.clone();
        if firmware.boot_in_progress().await.is_some() {
            tokio::spawn(async move {
                let _ = verdicts.send(firmware.check_boot(false).await).await;
            });
        } else if firmware.take_unchecked().await {
            tokio::spawn(async move {
                let _ = verdicts.send(firmware.check_first_serve().await).await;
            });
        }
    }

    /// A cluster config file changed on this node: tell the running
    /// service as `[sync] on_config_change` says. One not running reads
    /// the new file when it starts.
    async fn on_config_change(&mut self, action: ConfigChangeAction) {
        if !self.service_running {
            return;
        }
        match action {
            ConfigChangeAction::None => {}
            ConfigChangeAction::Signal(signal) => {
                if self.signal_service(signal) {
                    tracing::info!(signal, "config changed: signalled the service to reload");
                }
            }
            ConfigChangeAction::Restart => {
                tracing::info!("config changed: restarting the service");
                self.restart_service().await;
            }
        }
    }

    /// Sends `signal` to the service's main process; false when it has
    /// none running.
    fn signal_service(&self, signal: libc::c_int) -> bool {
        let Some(pid) = self.service_pid.and_then(|p| libc::pid_t::try_from(p).ok()) else {
            return false;
        };
        // SAFETY: kill(2) with a pid the supervisor reported as running.
        unsafe { libc::kill(pid, signal) == 0 }
    }

    async fn restart_service(&mut self) {
        self.supervisor.request_stop().await;
        self.start_service().await;
    }

    /// The service command: the current slot's entrypoint (resolved in the
    /// slot) followed by `[service] args`, or `[service] command` when no
    /// image has been booted.
    async fn service_spec(&self) -> ServiceSpec {
        let mut env = vec![
            ("TANDEM_NODE".into(), self.config.node.name.clone()),
            (
                "TANDEM_CONTROL_DIR".into(),
                self.control_dir().display().to_string(),
            ),
        ];
        let argv = match self.firmware.current().await {
            Some((_, manifest, root)) => {
                env.push(("TANDEM_IMAGE_ROOT".into(), root.display().to_string()));
                env.push(("TANDEM_IMAGE_VERSION".into(), manifest.version.to_string()));
                let mut argv: Vec<String> = manifest.entrypoint.clone();
                if let Some(program) = argv.first_mut() {
                    *program = root.join(&*program).display().to_string();
                }
                argv.extend(self.config.service.args.iter().cloned());
                argv
            }
            None => self.config.service.command.clone(),
        };
        env.extend(self.replication.service_env(&self.config));
        ServiceSpec {
            argv,
            cwd: self.config.service.cwd.clone(),
            env,
            grace: self.config.service.grace,
        }
    }

    async fn receive(&mut self, datagram: Datagram) {
        let input = match self
            .codec
            .admit(datagram.envelope, crate::upgrade::now_ms())
        {
            Ok(envelope) => Input::Received {
                link: datagram.link,
                envelope,
            },
            Err(e) => {
                tracing::debug!(from = %datagram.from, error = %e, "datagram rejected");
                // The link's task authenticated it: only a replay is
                // left to find here.
                match e.reject_reason() {
                    Some(reason) => Input::Rejected {
                        link: datagram.link,
                        reason,
                        claimed_sender: None,
                        count: 1,
                    },
                    None => return,
                }
            }
        };
        self.step(input).await;
    }

    async fn peer_event(&mut self, event: PeerLinkEvent) {
        match event {
            PeerLinkEvent::Connected { peer, epoch } => {
                tracing::info!(%peer, epoch, "crash-detection connection up");
            }
            PeerLinkEvent::Closed { peer } => {
                self.counters.peer_connections_closed += 1;
                tracing::info!(%peer, "crash-detection connection closed");
                self.step(Input::PeerConnectionClosed { peer }).await;
            }
        }
    }

    async fn service_event(&mut self, event: ServiceEvent) {
        match event {
            ServiceEvent::Started { pid } => {
                self.counters.service_starts += 1;
                self.service_pid = Some(pid);
                self.replication.service_alive(true);
                tracing::info!(pid, "service running");
            }
            ServiceEvent::Crashed { status, restart_in } => {
                self.counters.service_crashes += 1;
                self.service_pid = None;
                self.replication.service_alive(false);
                tracing::warn!(%status, restart_in_ms = restart_in.as_millis() as u64, "service crashed");
            }
            ServiceEvent::CrashLoop | ServiceEvent::SpawnFailed { .. } => {
                let detail = match event {
                    ServiceEvent::SpawnFailed { error } => error,
                    _ => "the service is crash-looping".to_string(),
                };
                self.recover_at = Some(Instant::now() + RECOVERY_QUIET);
                self.step(Input::LocalMonitor {
                    healthy: false,
                    detail,
                })
                .await;
            }
            ServiceEvent::Stopped => {
                self.service_pid = None;
                self.replication.service_alive(false);
                tracing::info!("service stopped");
            }
        }
    }

    async fn api_request(&mut self, request: ApiRequest) {
        match request {
            ApiRequest::Status { reply } => {
                let _ = reply.send(self.report());
            }
            ApiRequest::Metrics { reply } => {
                let _ = reply.send(self.metrics());
            }
            ApiRequest::Boot { slot, reply } => {
                let _ = reply.send(self.boot(slot).await);
            }
            ApiRequest::Rollback { reply } => {
                let _ = reply.send(self.rollback().await);
            }
            ApiRequest::Listener {
                action,
                drain_timeout,
                caller,
                reply,
            } => {
                let answer = self.listener(action, drain_timeout).await;
                tracing::info!(caller, outcome = %answer.outcome, reason = ?answer.reason, "listener command handled");
                let _ = reply.send(answer);
            }
            ApiRequest::Command {
                command,
                node,
                force,
                caller,
                reply,
            } => {
                let held = HeldCommand {
                    command,
                    node,
                    force,
                    caller,
                    reply,
                    drained: false,
                };
                if self.drains_before(&held) {
                    self.drain_then_hand_over(held).await;
                } else {
                    self.answer_command(held).await;
                }
            }
        }
    }

    /// Whether `handover` is a planned handover of this active node that
    /// must drain first (module doc): data sync on, the service running
    /// and draining itself, its listener not already suspended.
    fn drains_before(&self, handover: &HeldCommand) -> bool {
        let here = handover
            .node
            .as_ref()
            .is_none_or(|n| *n == self.config.node.name);
        here && handover.command == Command::FailoverStandby && self.service_drains()
    }

    /// Whether the running service can drain its sessions before a planned
    /// handover: data sync on, the service running and draining itself,
    /// its listener not already suspended.
    fn service_drains(&self) -> bool {
        self.replication.enabled()
            && self.service_running
            && self.service_pid.is_some()
            && self.config.service.suspend == SuspendMethod::Signal
            && !self.listener_suspended
    }

    /// Suspends the listener and clears the drained marker; `None` when the
    /// service cannot drain now (the handover goes on without).
    async fn start_drain(&mut self) -> Option<std::path::PathBuf> {
        if !self.service_drains() {
            return None;
        }
        let marker = self.control_dir().join(DRAINED_MARKER);
        if let Err(e) = std::fs::remove_file(&marker)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, "cannot clear the drained marker; handing over without a drain");
            return None;
        }
        let suspended = self.listener(ListenerAction::Suspend, HANDOVER_DRAIN).await;
        (suspended.outcome == "done").then_some(marker)
    }

    /// A preemption is due (the core asks, issue 14): drain the service's
    /// sessions as a planned handover does, then give the core
    /// [`Input::Drained`] from the loop.
    async fn drain_for_preemption(&mut self, group: GroupId, to: String, cause: HandoverCause) {
        let back = self.preemption_drained_tx.clone();
        let Some(marker) = self.start_drain().await else {
            let _ = back.try_send((group, to, cause));
            return;
        };
        self.suspended_for_preemption = true;
        tracing::info!(%to, "preemption: draining the service's sessions before handing over");
        tokio::spawn(async move {
            wait_for_drain(&marker).await;
            let _ = back.send((group, to, cause)).await;
        });
    }

    /// The drain for a preemption is over: the core hands over if that is
    /// still right; if it did not, this node still serves and its listener
    /// is resumed.
    async fn hand_over_drained(&mut self, group: GroupId, to: String, cause: HandoverCause) {
        let outputs = self.step(Input::Drained { group, to, cause }).await;
        let handing_over = outputs
            .iter()
            .any(|o| matches!(o, Output::Event(Event::HandoverStarted { .. })));
        let suspended_here = std::mem::take(&mut self.suspended_for_preemption);
        if suspended_here && !handing_over && self.listener_suspended && self.service_running {
            self.listener(ListenerAction::Resume, HANDOVER_DRAIN).await;
        }
    }

    /// Suspends the listener and hands `handover` to a task that waits
    /// (bounded) for the service's drained marker, then gives it back to
    /// the loop ([`Agent::answer_command`]).
    async fn drain_then_hand_over(&mut self, mut handover: HeldCommand) {
        let Some(marker) = self.start_drain().await else {
            return self.answer_command(handover).await;
        };
        tracing::info!("planned handover: draining the service's sessions first");
        handover.drained = true;
        let back = self.drained_tx.clone();
        tokio::spawn(async move {
            wait_for_drain(&marker).await;
            let _ = back.send(handover).await;
        });
    }

    /// Runs a command and answers it. A planned handover that was drained
    /// first and then refused resumes the listener: this node still serves.
    async fn answer_command(&mut self, held: HeldCommand) {
        let HeldCommand {
            command,
            node,
            force,
            caller,
            reply,
            drained,
        } = held;
        let answer = self.command(command, node, force, &caller).await;
        if drained && answer.outcome == "refused" && self.listener_suspended && self.service_running
        {
            self.listener(ListenerAction::Resume, HANDOVER_DRAIN).await;
        }
        let _ = reply.send(answer);
    }

    async fn command(
        &mut self,
        command: Command,
        node: Option<String>,
        force: bool,
        caller: &str,
    ) -> CommandReply {
        let me = self.config.node.name.clone();
        let target = node.unwrap_or_else(|| me.clone());
        if target != me && !self.config.peers.iter().any(|p| p.name == target) {
            return CommandReply {
                node: target.clone(),
                outcome: "refused".into(),
                reason: Some(format!("{target:?} is not a node of this cluster")),
                events: vec![],
                warning: None,
            };
        }
        let forwarded = target != me;
        let takeover = matches!(
            command,
            Command::FailoverActive | Command::FailoverGroup { active: true, .. }
        );
        // A forced takeover of a stale node: the operator accepts its data
        // as it is, and is told what that may cost.
        let mut warning = None;
        let mut outputs = Vec::new();
        if force
            && takeover
            && !forwarded
            && let Some((input, may_lose)) = self.replication.accept_stale()
        {
            tracing::warn!(caller, %may_lose, "forced takeover with data not in sync");
            outputs = self.step(input).await;
            warning = Some(format!("forced with data not in sync: may lose {may_lose}"));
        }
        // With no peer serving, accepting the data is itself the takeover;
        // the command would only be refused as "already active".
        let active_now = warning.is_some()
            && self.node.status(self.clock.now()).effective_role
                == tandem_core::EffectiveRole::Active;
        if !active_now {
            let input = if forwarded {
                Input::Forward {
                    to: target.clone(),
                    command,
                }
            } else {
                Input::Command(command)
            };
            outputs.extend(self.step(input).await);
        }
        let mut reply = CommandReply {
            node: target,
            outcome: if forwarded { "forwarded" } else { "done" }.into(),
            reason: None,
            events: vec![],
            warning,
        };
        for output in outputs {
            match output {
                Output::Refused { reason, .. } => {
                    reply.outcome = "refused".into();
                    reply.reason = Some(reason.to_string());
                }
                Output::Event(event) => reply.events.push(describe(&event)),
                _ => {}
            }
        }
        tracing::info!(caller, outcome = %reply.outcome, reason = ?reply.reason, "command handled");
        reply
    }

    /// Boots an image slot: journal the switch, then restart the service
    /// from it when this node serves (its health check follows). A standby
    /// has no service to check: its boot stays open until it next serves.
    async fn boot(&mut self, slot: Option<SlotName>) -> Result<serde_json::Value, String> {
        let slot = self.firmware.begin_boot(slot).await?;
        self.report_version().await;
        let version = self.node.config().version.clone();
        // An image with its own agent: this process hands over to it (same
        // pid) once the answer is out; the new agent finishes the boot.
        if let Some((_, manifest, root)) = self.firmware.current().await
            && let Some(agent) = manifest.agent
        {
            self.exec_after = Some((Instant::now() + EXEC_DELAY, root.join(agent)));
            return Ok(
                serde_json::json!({"booted": slot, "health": "the agent restarts from the slot", "version": version}),
            );
        }
        if self.service_running {
            self.restart_service().await;
            return Ok(
                serde_json::json!({"booted": slot, "health": "checking", "version": version}),
            );
        }
        // A standby: back as a healthy standby on the new slot is its boot
        // check (Standby Ready); the service is checked when it next serves.
        // With no service to restart between tries, spend them all now: a
        // failing slot must end rolled back (marked bad, the previous one
        // current), never left pending, or an upgrade waits on it forever.
        let mut verdict = self.firmware.check_boot(true).await;
        for _ in 0..4 {
            if !matches!(verdict, BootVerdict::Retry { .. }) {
                break;
            }
            verdict = self.firmware.check_boot(true).await;
        }
        match verdict {
            BootVerdict::Good { .. } => {
                self.firmware.mark_unchecked(slot).await;
                Ok(
                    serde_json::json!({"booted": slot, "health": "standby ready; the service is checked when this node next serves", "version": version}),
                )
            }
            verdict => {
                self.report_version().await;
                Err(format!("the boot of slot {slot} failed: {verdict:?}"))
            }
        }
    }

    /// Leaves the cluster cleanly (goodbye, VIP released, service stopped)
    /// and replaces this process with the slot's agent, keeping the pid.
    async fn exec_into(&mut self, agent: &std::path::Path) {
        self.step(Input::Shutdown).await;
        self.supervisor.stop().await;
        if let Err(e) = self.firmware.prepare_agent_exec().await {
            tracing::error!(error = %e, "cannot journal the agent's re-execution; exiting so the supervisor restarts it");
            std::process::exit(1);
        }
        self.replication.checkpoint_standby_log().await;
        let error = crate::firmware::exec_agent(agent);
        // exec only returns on failure: the boot try failed; a restart
        // (systemd) counts it and, after the last try, rolls back.
        tracing::error!(agent = %agent.display(), error = %error, "cannot execute the slot's agent");
        std::process::exit(1);
    }

    /// On-demand rollback to the other slot.
    async fn rollback(&mut self) -> Result<serde_json::Value, String> {
        let slot = self.firmware.rollback().await?;
        self.report_version().await;
        if self.service_running {
            self.restart_service().await;
        }
        Ok(serde_json::json!({"running": slot, "version": self.node.config().version}))
    }

    /// Carries the current slot's version into the heartbeats.
    async fn report_version(&mut self) {
        if let Some(version) = self.firmware.version().await
            && let Err(e) = self.node.set_version(&version)
        {
            tracing::warn!(error = %e, "cannot report the new version");
        }
    }

    async fn boot_verdict(&mut self, verdict: BootVerdict) {
        match verdict {
            BootVerdict::Good { slot, version } if !self.service_running => {
                tracing::info!(%slot, version, "image slot is Standby Ready; its service is checked when this node next serves");
                self.firmware.mark_unchecked(slot).await;
            }
            BootVerdict::Good { slot, version } => {
                tracing::info!(%slot, version, "image slot passed its health check: marked good");
            }
            BootVerdict::Retry { reason } => {
                tracing::warn!(reason, "image slot failed its health check; trying again");
                if self.service_running {
                    self.restart_service().await;
                }
            }
            BootVerdict::RolledBack { from, reason } => {
                tracing::error!(%from, reason, "image slot failed every boot try: rolled back");
                self.report_version().await;
                if self.service_running {
                    self.restart_service().await;
                }
            }
            BootVerdict::Failed(reason) => tracing::error!(reason, "image slot check failed"),
        }
    }

    /// `tandem listener suspend|resume` on this node.
    async fn listener(&mut self, action: ListenerAction, drain_timeout: Duration) -> CommandReply {
        let mut reply = CommandReply {
            node: self.config.node.name.clone(),
            outcome: "done".into(),
            reason: None,
            events: vec![],
            warning: None,
        };
        if !self.service_running {
            reply.outcome = "refused".into();
            reply.reason = Some("this node does not run the service now (not active)".into());
            return reply;
        }
        let suspend = action == ListenerAction::Suspend;
        match self.config.service.suspend {
            SuspendMethod::Signal => {
                if self.service_pid.is_none() {
                    reply.outcome = "refused".into();
                    reply.reason = Some("the service is not running".into());
                    return reply;
                }
                if suspend {
                    let control = self.control_dir();
                    let written = std::fs::create_dir_all(&control).and_then(|()| {
                        std::fs::write(
                            control.join("drain-timeout-ms"),
                            drain_timeout.as_millis().to_string(),
                        )
                    });
                    if let Err(e) = written {
                        tracing::warn!(error = %e, "cannot pass the drain timeout; the service uses its own");
                    }
                }
                self.signal_service(if suspend {
                    libc::SIGUSR1
                } else {
                    libc::SIGUSR2
                });
            }
            SuspendMethod::Socket if suspend => {
                for (_, fd) in self.vip.values().flatten() {
                    // SAFETY: shutdown(2) on a socket this agent owns. On a
                    // listening socket it stops accepting for every process
                    // sharing it; established sessions are separate sockets.
                    unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RD) };
                }
            }
            SuspendMethod::Socket => {
                // A shut-down listener cannot listen again: bind fresh
                // sockets and restart the service on them.
                let groups: Vec<GroupId> = self.vip.keys().copied().collect();
                for group in groups {
                    self.vip.remove(&group);
                    self.bind_vip(group);
                }
                self.restart_service().await;
            }
        }
        self.listener_suspended = suspend;
        reply.events.push(serde_json::json!({
            "listener": if suspend { "suspended" } else { "resumed" },
            "method": format!("{:?}", self.config.service.suspend).to_lowercase(),
            "drain_timeout_ms": drain_timeout.as_millis() as u64,
        }));
        reply
    }

    /// Where the agent leaves instructions for the service.
    fn control_dir(&self) -> std::path::PathBuf {
        self.config.node.state_dir.join("control")
    }

    fn report(&self) -> serde_json::Value {
        let now = self.clock.now();
        let status = self.node.status(now);
        let vip: Vec<String> = self
            .vip
            .values()
            .flatten()
            .map(|(a, _)| a.to_string())
            .collect();
        serde_json::json!({
            "node": status,
            "agent": {
                "pid": std::process::id(),
                "epoch": self.saved.epoch,
                "uptime_ms": now.0,
                "api": self.config.node.api,
                "config": self.config.origin,
                "vip_bound": vip,
                "service_running": self.service_running,
                "listener": if self.listener_suspended { "suspended" } else { "open" },
                "allow_unsigned": self.config.images.allow_unsigned,
                "config_link": upgrade::config_link(&self.config.node.state_dir),
                "service_pid": self.service_pid,
                "service_starts": self.counters.service_starts,
                "service_crashes": self.counters.service_crashes,
                "peer_connections_closed": self.counters.peer_connections_closed,
            },
            "sync": self.replication.status(),
        })
    }

    fn metrics(&self) -> String {
        let status = self.node.status(self.clock.now());
        let node = &self.config.node.name;
        let mut out = String::new();
        let mut metric = |help: &str, kind: &str, name: &str, samples: Vec<(String, String)>| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, value) in samples {
                out.push_str(&format!("{name}{{node=\"{node}\"{labels}}} {value}\n"));
            }
        };
        let role = status.effective_role.to_string();
        metric(
            "Effective role of this node (1 for the current one).",
            "gauge",
            "tandem_role",
            [
                "active",
                "standby",
                "held-off",
                "failed",
                "off",
                "syncing",
                "disconnected",
            ]
            .iter()
            .map(|r| (format!(",role=\"{r}\""), u8::from(role == *r).to_string()))
            .collect(),
        );
        metric(
            "Role transitions since start.",
            "counter",
            "tandem_role_transitions_total",
            vec![(String::new(), status.counters.transitions.to_string())],
        );
        metric(
            "Heartbeats sent.",
            "counter",
            "tandem_heartbeats_sent_total",
            vec![(String::new(), status.counters.heartbeats_sent.to_string())],
        );
        metric(
            "Heartbeats received and accepted.",
            "counter",
            "tandem_heartbeats_received_total",
            vec![(
                String::new(),
                status.counters.heartbeats_received.to_string(),
            )],
        );
        metric(
            "Datagrams rejected, by reason.",
            "counter",
            "tandem_heartbeats_rejected_total",
            status
                .counters
                .rejected
                .iter()
                .map(|(reason, n)| {
                    (
                        format!(",reason=\"{}\"", reason_label(*reason)),
                        n.to_string(),
                    )
                })
                .collect(),
        );
        metric(
            "Split-brain events resolved.",
            "counter",
            "tandem_split_brain_events_total",
            vec![(
                String::new(),
                status.counters.split_brain_events.to_string(),
            )],
        );
        metric(
            "Whether each peer is alive.",
            "gauge",
            "tandem_peer_up",
            status
                .peers
                .iter()
                .map(|p| {
                    (
                        format!(",peer=\"{}\"", p.name),
                        u8::from(p.alive).to_string(),
                    )
                })
                .collect(),
        );
        metric(
            "Service starts.",
            "counter",
            "tandem_service_starts_total",
            vec![(String::new(), self.counters.service_starts.to_string())],
        );
        metric(
            "Service crashes.",
            "counter",
            "tandem_service_crashes_total",
            vec![(String::new(), self.counters.service_crashes.to_string())],
        );
        metric(
            "A peer heard on the sync channel whose heartbeats fail the MAC: different cluster keys (1 while it lasts).",
            "gauge",
            "tandem_key_mismatch",
            status
                .peers
                .iter()
                .map(|p| {
                    let mismatch = status.key_mismatch.as_deref() == Some(p.name.as_str());
                    (
                        format!(",peer=\"{}\"", p.name),
                        u8::from(mismatch).to_string(),
                    )
                })
                .collect(),
        );
        for (name, kind, help, value) in self.replication.metrics() {
            metric(help, kind, name, vec![(String::new(), value.to_string())]);
        }
        out
    }
}

/// Waits (bounded) for the service's drained marker.
async fn wait_for_drain(marker: &std::path::Path) {
    let started = Instant::now();
    let deadline = started + HANDOVER_DRAIN + DRAIN_MARGIN;
    while !marker.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if marker.exists() {
        tracing::info!(
            drain_ms = started.elapsed().as_millis() as u64,
            "service drained; handing over"
        );
    } else {
        tracing::warn!("the service did not report its drain in time; handing over anyway");
    }
}

fn reason_label(reason: tandem_core::wire::RejectReason) -> String {
    serde_json::to_value(reason)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{reason:?}"))
}

/// An event as one JSON value, for logs and API replies.
fn describe(event: &Event) -> serde_json::Value {
    serde_json::to_value(event).unwrap_or_else(|_| serde_json::Value::String(format!("{event:?}")))
}

fn log_event(event: &Event) {
    let record = describe(event);
    match event {
        Event::RoleChanged { .. } | Event::SplitBrain { .. } | Event::PeerLost { .. } => {
            tracing::warn!(event = %record, "HA event");
        }
        Event::KeyMismatch { peer, found: true } => {
            tracing::error!(event = %record, %peer, "cluster key mismatch with {peer}: its heartbeats fail the MAC while the sync channel hears it; this node will not serve beside it (give every node the same cluster key file)");
        }
        _ => tracing::info!(event = %record, "HA event"),
    }
}

fn notify_systemd(states: &[sd_notify::NotifyState]) {
    // Without NOTIFY_SOCKET (not under systemd) this is a no-op.
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Half of systemd's WatchdogSec, if the unit sets one.
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    Some(Duration::from_micros(usec / 2))
}
