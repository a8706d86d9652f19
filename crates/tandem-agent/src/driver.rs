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
//!
//! # Layout
//! This file holds the `Agent`, its start-up, the loop and the execution
//! of the core's outputs. Its effects on the service (start, signals,
//! listener suspend and the drains) are in `driver/service.rs`, on image
//! slots in `driver/boot.rs`, on the VIP in `driver/vip_claim.rs`, and what
//! it shows of itself (`/v1/status`, `/metrics`) in `driver/observe.rs`.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tandem_core::{
    Codec, Command, Destination, Event, GroupId, HandoverCause, Input, LinkId, Millis, Node,
    Output, StoreEvent,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::api::{CommandOutcome, CommandReply, ListenerAction};
use crate::config::{AgentConfig, ModeName};
use crate::crash_link::PeerLinkEvent;
use crate::etcd::StoreLink;
use crate::firmware::{BootVerdict, Firmware};
use crate::links::{Datagram, HeartbeatLinks, LinkEvent};
use crate::monitor::Verdict;
use crate::replication::Replication;
use crate::server::ApiRequest;
use crate::state::{self, SavedState};
use crate::supervisor::{ServiceEvent, SupervisorHandle};
use crate::vip_ip::IpVip;
use crate::{Error, vip};

mod boot;
mod coordination;
mod observe;
mod service;
mod vip_claim;
mod wiring;

pub(crate) use wiring::SimulatedPorts;
use wiring::Wiring;

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
    let agent = Agent::start(config, None).await?;
    drive(agent, shutdown).await
}

/// The loop: feeds the core until `shutdown`, then says goodbye.
pub(crate) async fn drive(
    mut agent: Agent,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
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

    // A tick at least every interval, whatever else wakes the loop: the
    // core drops deadlines already past, so its next deadline, asked
    // again at every wake-up, could land `interval` ahead each time, and
    // an API poll faster than that (every 50 ms under `tandem chaos`)
    // starved the timer; an active cut off from everything served on
    // 2 s past its lease.
    let interval = agent.node.config().interval;
    let mut last_tick = Instant::now();
    loop {
        let deadline = agent
            .clock
            .instant(agent.node.next_deadline(agent.clock.now()))
            .min(last_tick + interval);
        let recover_at = agent.recover_at;
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep_until(deadline) => {
                last_tick = Instant::now();
                agent.step(Input::Tick).await;
            }
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
            Some(news) = agent.store.news.recv() => agent.store_news(news).await,
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

    fn millis(&self, at: Instant) -> Millis {
        let since = at.saturating_duration_since(self.start);
        Millis(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }
}

/// Counters the core does not keep.
#[derive(Default)]
struct AgentCounters {
    service_starts: u64,
    service_crashes: u64,
    peer_connections_closed: u64,
}

pub(crate) struct Agent {
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
    /// `coordination = "etcd"`: the adapter's ends.
    store: StoreLink,
    /// The fencing epochs the sync channel and the API stamp and check.
    fencing: Arc<tandem_sync::fencing::Fencing>,
    /// The standbys last published in etcd's `sync` key, and when.
    sync_published: Option<(Vec<String>, Instant)>,
}

impl Agent {
    /// Starts an agent on real sockets, or on `simulated`'s network with a
    /// simulated service (see [`crate::sim`]).
    pub(crate) async fn start(
        config: AgentConfig,
        simulated: Option<SimulatedPorts>,
    ) -> Result<Agent, Error> {
        let clock = Clock {
            start: Instant::now(),
        };
        let saved = state::start(&config.node.state_dir)?;
        let (firmware, repaired) = Firmware::open(&config.node.state_dir, &config.images)?;
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
        let wiring = match simulated {
            Some(ports) => Wiring::simulated(&config, ports).await?,
            None => {
                vip::enable_request_migration();
                Wiring::real(&config, &firmware, saved.epoch).await?
            }
        };
        let (drained_tx, drained) = mpsc::channel(4);
        let (preemption_drained_tx, preemption_drained) = mpsc::channel(4);
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
            links: wiring.links,
            inbox: wiring.inbox,
            peer_events: wiring.peer_events,
            api: wiring.api,
            drained,
            drained_tx,
            preemption_drained,
            preemption_drained_tx,
            suspended_for_preemption: false,
            service_events: wiring.service_events,
            supervisor: wiring.supervisor,
            service_running: false,
            service_pid: None,
            listener_suspended: false,
            firmware,
            boot_verdicts,
            boot_verdict_rx,
            exec_after: None,
            standby_check_at: None,
            serving: wiring.serving,
            verdicts: wiring.verdicts,
            vip: BTreeMap::new(),
            ip_vips: config.vip.ip_vips(),
            config,
            recover_at: None,
            counters: AgentCounters::default(),
            replication: wiring.replication,
            store: wiring.store,
            sync_published: None,
            fencing: wiring.fencing,
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
        if self.config.etcd.is_some() {
            let (own, newest) = self.node.fencing_epochs(self.clock.now());
            self.fencing.set_own(own);
            self.fencing.see(newest);
            self.publish_to_store();
        }
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
            Output::Store(request) => {
                if self.store.requests.send(request.clone()).is_err() {
                    tracing::error!(?request, "no coordination store is configured");
                }
            }
            Output::Refused { command, reason } => {
                tracing::warn!(%command, %reason, "command refused");
            }
            Output::DrainForHandover { group, to, cause } => {
                self.drain_for_preemption(*group, to.clone(), *cause).await;
            }
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
        if drained
            && answer.outcome == CommandOutcome::Refused
            && self.listener_suspended
            && self.service_running
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
                outcome: CommandOutcome::Refused,
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
        // etcd's `sync` key does not name this node (the active went on
        // without it): the operator's force lets it take over anyway.
        if force && takeover && !forwarded && self.node.held_back_by_sync() {
            tracing::warn!(
                caller,
                "forced takeover by a standby etcd's sync key does not name"
            );
            outputs.extend(self.step(Input::Store(StoreEvent::WaiveSync)).await);
            let lost = "forced past etcd's sync key: the last active acknowledged mail after this node fell out of sync, which this node lacks until that node returns (its unreplicated record is merged back then)";
            warning = Some(match warning {
                Some(w) => format!("{w}; {lost}"),
                None => lost.to_string(),
            });
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
            outcome: if forwarded {
                CommandOutcome::Forwarded
            } else {
                CommandOutcome::Done
            },
            reason: None,
            events: vec![],
            warning,
        };
        for output in outputs {
            match output {
                Output::Refused { reason, .. } => {
                    reply.outcome = CommandOutcome::Refused;
                    reply.reason = Some(reason.to_string());
                }
                Output::Event(event) => reply.events.push(describe(&event)),
                _ => {}
            }
        }
        tracing::info!(caller, outcome = %reply.outcome, reason = ?reply.reason, "command handled");
        reply
    }
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
