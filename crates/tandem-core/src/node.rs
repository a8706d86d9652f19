//! The node state machine: `Node::step(now, Input) -> Vec<Output>`.
//!
//! ```text
//!            ┌──────────── agent (tokio, does all I/O) ────────────┐
//!  datagram ─┤ Codec::open ─► Input::Received / Input::Rejected     │
//!  TCP close ┤ ─► Input::PeerConnectionClosed                       │
//!  monitors ─┤ ─► Input::LocalMonitor / Input::RemoteMonitor        │
//!  CLI/API  ─┤ ─► Input::Command / Input::Forward                   │
//!  timer    ─┤ ─► Input::Tick (at Node::next_deadline())            │
//!            └───────────────────────┬──────────────────────────────┘
//!                                    ▼
//!                     Node::step(now, input) ── pure ──► Vec<Output>
//!                                    │
//!   Send{to, message} ─► Codec::seal ─► every link │ ClaimVip / ReleaseVip
//!   StartService / StopService │ Persist │ Event (log it) │ Refused (tell the operator)
//! ```
//!
//! The agent executes the outputs **in order** (a claim is `ClaimVip` then
//! `StartService`; a release is `ReleaseVip` then `StopService`).
//!
//! # Rules
//!
//! Every step first applies its input, then re-evaluates everything
//! (`reconcile`): peer timeouts, holdoff expiry, then each failover group:
//!
//! * **Rank** for a group: (preferred node of the group, configured primary,
//!   priority, name) — higher wins. Configured role comes before priority so
//!   that `ha restore` always means "the primary is active".
//! * **An incumbent stays.** A standby never claims a group some reachable
//!   peer holds. A group with no active is claimed by the best-ranked eligible
//!   node (healthy, configured to serve, reachable) once it is out of its
//!   start-up wait, unless a peer's holdoff is running or it yielded the
//!   group to a peer that is still eligible.
//! * **Peer dead** when every link has been silent for more than
//!   `lost_threshold × interval`, or at once on a goodbye or a closed
//!   connection.
//! * **Split brain** (two actives see each other, e.g. after a partition
//!   heals): the worse-ranked steps down at once; both count the event.
//! * **Preemption and planned switchovers are make-before-break**: the
//!   active sends `Handover` to the target, the target claims and answers
//!   `Takeover`, then the old active releases. A node that claimed on
//!   request gets a grace period (the hold time) in which another active is
//!   not a split brain.
//! * **Preemption**: the active hands a group over to a better-ranked peer
//!   whose heartbeat says `PreemptState::Ready` (preemption on, healthy for
//!   `preempt_delay`, not demoted and not having yielded). With preemption
//!   off a recovered primary stays standby until `ha restore` or a
//!   switchover.

use crate::config::{ConfiguredRole, GroupId, LinkId, Mode, NodeConfig, OnFailure};
use crate::error::Error;
use crate::role::{Command, EffectiveRole, HandoverCause, PreemptState, Refusal};
use crate::status::{Counters, GroupStatus, HoldoffStatus, LinkStatus, PeerStatus, Status};
use crate::time::{Millis, duration_ms};
use crate::wire::{Envelope, Heartbeat, Message, RejectReason};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

mod data;
pub use data::DataState;

/// Something that happened, for the node to react to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Time passed. Send one at [`Node::next_deadline`] (or every
    /// `interval`, at the least): heartbeats, timeouts and expiries happen
    /// only in steps.
    Tick,
    /// An authenticated, replay-checked message arrived on `link`
    /// (from [`crate::wire::Codec::open`]).
    Received {
        /// The link it came in on (for per-link status).
        link: LinkId,
        /// The decoded message and its header.
        envelope: Envelope,
    },
    /// A datagram was dropped by the codec (or its sender is unknown);
    /// counted and shown in status.
    Rejected {
        /// The link it came in on.
        link: LinkId,
        /// Why.
        reason: RejectReason,
        /// The sender named in a datagram whose MAC did not match (a peer
        /// with another cluster key, or a forgery): unauthenticated, used
        /// only to say "cluster key mismatch with NAME".
        claimed_sender: Option<String>,
        /// How many datagrams this stands for (the agent drops a flood
        /// before its loop and reports it in batches).
        count: u64,
    },
    /// An authenticated message or keepalive from `peer` arrived on the TLS
    /// sync channel (issue 14: liveness comes from every authenticated
    /// channel). It keeps a known peer alive when its heartbeats are lost,
    /// e.g. to a flood at the heartbeat port; it never introduces a peer.
    ChannelHeard {
        /// The peer.
        peer: String,
    },
    /// The agent's TCP connection to `peer` closed without a goodbye: the
    /// peer process is taken as crashed, at once (no heartbeat timeout).
    PeerConnectionClosed {
        /// The peer's name.
        peer: String,
    },
    /// The peer's service port answered a probe (`remote_as_heartbeat`,
    /// FortiMail's "remote service as heartbeat"): it counts as traffic on
    /// `link`, so a known peer whose heartbeats are lost but whose service
    /// still answers is not declared dead. It never introduces a peer: the
    /// peer's state comes from its heartbeats.
    ServiceAnswered {
        /// The peer probed.
        peer: String,
        /// The link slot that stands for its service port.
        link: LinkId,
    },
    /// The local service monitor (lservice) changed its verdict (the agent
    /// applies its failure count before reporting a failure).
    LocalMonitor {
        /// Healthy or not.
        healthy: bool,
        /// What the monitor saw, for the log.
        detail: String,
    },
    /// The remote service monitor (rservice) probed `peer`'s service.
    /// A failed active peer is taken over as if it were down.
    RemoteMonitor {
        /// The peer probed.
        peer: String,
        /// Whether its service answered.
        healthy: bool,
        /// What the probe saw, for the log.
        detail: String,
    },
    /// An operator command aimed at this node.
    Command(Command),
    /// An operator command for `to`, to be forwarded over the heartbeat
    /// links (the API answers for the whole cluster).
    Forward {
        /// The node that should execute it.
        to: String,
        /// The command.
        command: Command,
    },
    /// Whether this node's replicated data is in step with the active's
    /// (issue 6: the sync receiver's state, kept through a crash of the
    /// active). A standby that is not in sync reports `syncing`, is not
    /// eligible and does not take over — it would serve with data missing.
    /// An active node ignores it: its data is the reference. The agent
    /// always sends `in_sync: true` with `allow_stale_takeover`.
    DataSync {
        /// `true` once caught up; `false` while catching up or stale.
        in_sync: bool,
    },
    /// The service drained after [`Output::DrainForHandover`]: hand
    /// `group` to `to` now if that is still right (the node re-checks).
    Drained {
        /// The group.
        group: GroupId,
        /// The peer to hand it to.
        to: String,
        /// Why.
        cause: HandoverCause,
    },
    /// The agent is shutting down cleanly: release everything and say
    /// goodbye. The node ignores every later input.
    Shutdown,
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Destination {
    /// Every peer, over every link.
    All,
    /// One peer, over every link.
    Peer(String),
}

/// Something the agent must do. Execute in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Output {
    /// Seal `message` (one datagram per link) and send it to `to` over every
    /// link.
    Send {
        /// Recipients.
        to: Destination,
        /// The message.
        message: Message,
    },
    /// Take the VIP of `group` (bind its socket, or add the address and send
    /// gratuitous ARP).
    ClaimVip {
        /// The group.
        group: GroupId,
    },
    /// Give up the VIP of `group`.
    ReleaseVip {
        /// The group.
        group: GroupId,
    },
    /// Start the service (the node now serves at least one group, or serves
    /// in config-only mode).
    StartService,
    /// Stop the service (the node serves nothing any more).
    StopService,
    /// Write this state durably; pass it back to [`Node::new`] after a
    /// restart.
    Persist(PersistentState),
    /// Log this (and count it in metrics). Every change of role is one.
    Event(Event),
    /// A preemption (or restore) is due, and the service drains its
    /// sessions before a planned handover (`drain_before_preemption`):
    /// drain, then send [`Input::Drained`]. Asked again after
    /// [`PREEMPT_DRAIN_WAIT`] if that never comes.
    DrainForHandover {
        /// The group.
        group: GroupId,
        /// The peer that will take it.
        to: String,
        /// Why.
        cause: HandoverCause,
    },
    /// An operator command was not carried out; tell the operator why.
    Refused {
        /// The command.
        command: Command,
        /// Why not.
        reason: Refusal,
    },
}

/// How long a node waits for [`Input::Drained`] before asking for the
/// drain of a preemption again.
pub const PREEMPT_DRAIN_WAIT: Duration = Duration::from_secs(10);

/// State that must survive a restart of the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistentState {
    /// Preemption, as last set by `ha preempt on|off`.
    pub preempt: bool,
    /// HA stopped by `on_failure = off` (until `ha restart`): a reboot must
    /// not silently bring the node back into the cluster.
    pub ha_stopped: bool,
}

/// How a peer was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossCause {
    /// Every link silent for the hold time.
    Timeout,
    /// Its connection closed without a goodbye (crash).
    ConnectionClosed,
    /// It said goodbye (clean shutdown).
    Goodbye,
}

/// Why a role changed. Carried by every [`Event::RoleChanged`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// No node held the group and this node ranks best (or, in config-only
    /// mode, the node is eligible to serve).
    Elected,
    /// The active peer was lost.
    PeerLost {
        /// The peer.
        peer: String,
    },
    /// The active peer gave the group up (failed, stopped) without handing
    /// it to anyone.
    PeerStoodDown {
        /// The peer.
        peer: String,
    },
    /// Two actives saw each other; `peer` ranks better, so this one yields.
    SplitBrain {
        /// The better-ranked active.
        peer: String,
    },
    /// Took the group over at the active's request.
    HandoverAccepted {
        /// The previous active.
        from: String,
        /// Why it handed over.
        cause: HandoverCause,
    },
    /// Released the group after `to` took it over at our request.
    HandedOver {
        /// The new active.
        to: String,
        /// Why.
        cause: HandoverCause,
    },
    /// Released the group because `by` took it over (`failover active` there,
    /// or its remote monitor found our service failed).
    TakenOver {
        /// The new active.
        by: String,
    },
    /// `failover active` on this node.
    OperatorTakeover,
    /// Took over because the remote monitor found the active peer's service
    /// failed.
    RemoteMonitorFailed {
        /// The peer.
        peer: String,
    },
    /// The local monitor reports the service failed.
    LocalMonitorFailed {
        /// What it saw.
        detail: String,
    },
    /// The local monitor reports the service healthy again.
    LocalMonitorRecovered,
    /// `ha restart`.
    HaRestarted,
    /// This node's replicated data came in step, or fell out of it
    /// ([`Input::DataSync`]).
    DataSync {
        /// The new state.
        in_sync: bool,
    },
    /// A peer's holdoff started.
    HoldoffReceived {
        /// The peer.
        from: String,
    },
    /// A peer's holdoff ended (expired, or the peer came back).
    HoldoffEnded {
        /// The peer.
        from: String,
    },
    /// The agent is shutting down.
    ShuttingDown,
    /// `peer` is heard on the sync channel but its heartbeats fail the MAC:
    /// the two nodes have different cluster keys.
    KeyMismatch {
        /// The peer.
        peer: String,
    },
    /// This node's data was not compared with the active's since it
    /// started or lost the service: `syncing` while a peer is active and
    /// has not caught it up, `standby` again when no peer is active.
    DataUnverified,
    /// Re-evaluated with no single cause (should be rare; logged anyway).
    Reevaluated,
}

/// A log record. Each one is worth a line in the journal and a metric.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    /// This node's effective role in a group changed (`group: None` in
    /// config-only mode, which has no groups).
    RoleChanged {
        /// The group.
        group: Option<GroupId>,
        /// Old role.
        from: EffectiveRole,
        /// New role.
        to: EffectiveRole,
        /// Why.
        reason: Reason,
    },
    /// A peer was heard (first time, or again after being lost).
    PeerFound {
        /// The peer.
        peer: String,
    },
    /// A peer is taken as dead.
    PeerLost {
        /// The peer.
        peer: String,
        /// How we noticed.
        cause: LossCause,
    },
    /// This node and `peer` were both active in a group.
    SplitBrain {
        /// The group.
        group: Option<GroupId>,
        /// The other active.
        peer: String,
    },
    /// A peer asked for a holdoff; this node will not take over from it for
    /// `duration` (already capped at `holdoff_max`).
    HoldoffReceived {
        /// The peer.
        from: String,
        /// How long.
        duration: Duration,
    },
    /// A peer's holdoff ran out.
    HoldoffExpired {
        /// The peer.
        from: String,
    },
    /// The peer that sent a holdoff came back (new boot epoch): holdoff over.
    HoldoffCleared {
        /// The peer.
        from: String,
    },
    /// This node announced a holdoff to its peers.
    HoldoffSent {
        /// How long.
        duration: Duration,
    },
    /// This node asked `to` to take a group over.
    HandoverStarted {
        /// The group.
        group: GroupId,
        /// The target.
        to: String,
        /// Why.
        cause: HandoverCause,
    },
    /// `to` did not take the group within the hold time; this node keeps it.
    HandoverFailed {
        /// The group.
        group: GroupId,
        /// The target.
        to: String,
    },
    /// An operator command was carried out here.
    CommandExecuted {
        /// The command.
        command: Command,
        /// The peer that forwarded it, if it was forwarded.
        forwarded_by: Option<String>,
    },
    /// An operator command was forwarded to a peer.
    CommandForwarded {
        /// The peer.
        to: String,
        /// The command.
        command: Command,
    },
    /// The remote monitor finds `peer`'s service failed.
    RemoteMonitorFailed {
        /// The peer.
        peer: String,
        /// What the probe saw.
        detail: String,
    },
    /// The remote monitor finds `peer`'s service healthy again.
    RemoteMonitorRecovered {
        /// The peer.
        peer: String,
    },
    /// Preemption was switched on or off here.
    PreemptChanged {
        /// Now on?
        enabled: bool,
    },
    /// A cluster key mismatch with `peer` was found (`found`), or is over.
    KeyMismatch {
        /// The peer.
        peer: String,
        /// Found now, or over.
        found: bool,
    },
}

/// Rank of a node for one group; the greatest wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank<'a> {
    preferred: bool,
    primary: bool,
    priority: u8,
    name: &'a str,
}

#[derive(Debug, Clone)]
struct Departure {
    at: Millis,
    epoch: Option<u64>,
    cause: LossCause,
}

/// What this node knows about one peer.
#[derive(Debug, Clone)]
struct PeerState {
    /// Last time each link delivered anything from this peer.
    links: Vec<Option<Millis>>,
    /// The last heartbeat (kept after loss, for status; logic only reads it
    /// while `alive`).
    info: Option<Heartbeat>,
    /// The peer's boot epoch, from its last message.
    epoch: Option<u64>,
    /// Protocol version of its last message.
    protocol: Option<u8>,
    /// Reachable: heard within the hold time and not departed since.
    alive: bool,
    /// Set when lost by goodbye or closed connection; stale datagrams of the
    /// same epoch must not bring it back.
    departed: Option<Departure>,
    /// The remote monitor's last verdict on its service.
    remote_ok: bool,
    /// (epoch, id) of the forwarded commands it sent us lately.
    commands_seen: VecDeque<(u64, u32)>,
    /// Last message or keepalive on the authenticated sync channel.
    channel_heard: Option<Millis>,
    /// Last datagram naming this peer whose MAC did not match.
    bad_mac_at: Option<Millis>,
}

impl PeerState {
    fn last_heard(&self) -> Option<Millis> {
        self.links
            .iter()
            .flatten()
            .copied()
            .chain(self.channel_heard)
            .max()
    }
    fn eligible(&self) -> bool {
        self.alive
            && self.remote_ok
            && self.info.as_ref().is_some_and(|h| {
                h.healthy
                    && h.configured_role.serves_groups()
                    && !matches!(
                        h.role,
                        EffectiveRole::Off | EffectiveRole::Failed | EffectiveRole::Syncing
                    )
            })
    }
    fn active_in(&self, group: Option<GroupId>) -> bool {
        match (group, &self.info) {
            (Some(g), Some(h)) => self.alive && h.group_role(g) == Some(EffectiveRole::Active),
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
struct PendingHandover {
    to: String,
    cause: HandoverCause,
    deadline: Millis,
}

/// This node's state in one failover group (or, in config-only mode, the
/// one pseudo-group with `id: None` that stands for "serving").
#[derive(Debug, Clone)]
struct GroupState {
    id: Option<GroupId>,
    preferred: Option<String>,
    /// Holds the group (VIP claimed).
    active: bool,
    /// The role last reported in an event.
    reported: EffectiveRole,
    /// Why `active` last changed, for the next event.
    change_reason: Option<Reason>,
    /// Gave the group to this peer (operator or handover): do not advertise
    /// preemption while that peer is eligible.
    yielded_to: Option<String>,
    /// Until then, do not claim the group even if no active is seen: the
    /// peer we yielded to is already active (make-before-break), but its
    /// heartbeat saying so may still be on the way. After that, a yield no
    /// longer blocks claiming an orphaned group (else a yielded node and a
    /// restarted peer could each wait for the other).
    yield_guard_until: Option<Millis>,
    /// Claimed on request: until then the nodes in `grace_from` (the
    /// actives when we claimed) are expected to release; seeing them active
    /// is not a split brain. Any other active still is.
    grace_until: Option<Millis>,
    /// See `grace_until`.
    grace_from: BTreeSet<String>,
    /// Asked a peer to take the group over.
    handover: Option<PendingHandover>,
    /// Asked the agent to drain for a preemption: not again until then.
    drain_asked_until: Option<Millis>,
    /// Peers seen active at the same time as us (each counted once).
    split_brain_with: BTreeSet<String>,
    /// The last node seen holding the group.
    last_active: Option<String>,
}

#[derive(Debug, Clone)]
struct ReceivedHoldoff {
    from: String,
    epoch: Option<u64>,
    until: Millis,
}

/// Who issued a command.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    Operator,
    Forwarded(String),
}

/// Working state of one `step`.
struct Ctx {
    now: Millis,
    out: Vec<Output>,
    /// Cause of node-wide changes made by the input, for role events.
    cause: Option<Reason>,
    /// Send a heartbeat now (role changed, command executed).
    heartbeat_now: bool,
}

impl Ctx {
    fn emit(&mut self, e: Event) {
        self.out.push(Output::Event(e));
    }
}

/// One cluster node's HA state machine. Pure: no I/O, no clock.
#[derive(Debug, Clone)]
pub struct Node {
    config: NodeConfig,
    hold: Duration,
    /// Until then (unless every peer has been heard) a standby does not
    /// claim anything: it first learns whether some peer is active.
    startup_until: Millis,
    ha_stopped: bool,
    shut_down: bool,
    local_healthy: bool,
    /// [`Input::DataSync`]: whether this node's data is in step with the
    /// active's (see [`DataState`]).
    data: DataState,
    /// When the node started (or `ha restart`): the start-up wait runs
    /// from here.
    started_at: Millis,
    /// A peer heard on the sync channel but only with a wrong MAC (see
    /// [`Reason::KeyMismatch`]); updated at every step.
    key_mismatch: Option<String>,
    local_detail: String,
    /// Since when this node could serve (healthy, running); for
    /// `preempt_delay`.
    eligible_since: Option<Millis>,
    /// Recovered with `on_failure = become-secondary`: no preemption until
    /// restore, takeover or restart.
    demoted: bool,
    /// `ha restore` (or `on_failure = restore`): advertise `Ready` until then.
    reclaim_until: Option<Millis>,
    /// `ha restore` seen: handovers until then are for restore.
    restore_until: Option<Millis>,
    preempt: bool,
    groups: Vec<GroupState>,
    peers: BTreeMap<String, PeerState>,
    holdoff: Option<ReceivedHoldoff>,
    announce_holdoff_until: Option<Millis>,
    next_heartbeat: Millis,
    serving: bool,
    /// Id of the next command this node forwards.
    next_command_id: u32,
    counters: Counters,
}

impl Node {
    /// A node at time `now` (its boot). `persisted` is the last
    /// [`Output::Persist`] of a previous run, if any.
    ///
    /// The node starts standby (or off) and claims nothing for one hold
    /// time, or until it has heard every peer.
    pub fn new(
        config: NodeConfig,
        persisted: Option<PersistentState>,
        now: Millis,
    ) -> Result<Node, Error> {
        config.validate()?;
        let hold = config.hold_time();
        let groups = match config.mode {
            Mode::ConfigOnly => vec![GroupState::new(None, None)],
            _ => config
                .groups
                .iter()
                .map(|g| GroupState::new(Some(g.id), g.preferred.clone()))
                .collect(),
        };
        let links = config.links.len();
        let peers = config
            .peers
            .iter()
            .map(|p| {
                let st = PeerState {
                    links: vec![None; links],
                    info: None,
                    epoch: None,
                    protocol: None,
                    alive: false,
                    departed: None,
                    remote_ok: true,
                    commands_seen: VecDeque::new(),
                    channel_heard: None,
                    bad_mac_at: None,
                };
                (p.clone(), st)
            })
            .collect();
        let data = if config.replicated_data {
            DataState::Unverified
        } else {
            DataState::InSync
        };
        let mut node = Node {
            preempt: persisted.map_or(config.preempt, |p| p.preempt),
            ha_stopped: persisted.is_some_and(|p| p.ha_stopped),
            config,
            hold,
            startup_until: now.plus(hold),
            shut_down: false,
            local_healthy: true,
            data,
            started_at: now,
            key_mismatch: None,
            local_detail: String::new(),
            eligible_since: None,
            demoted: false,
            reclaim_until: None,
            restore_until: None,
            groups,
            peers,
            holdoff: None,
            announce_holdoff_until: None,
            next_heartbeat: now,
            serving: false,
            next_command_id: 1,
            counters: Counters::default(),
        };
        for gi in 0..node.groups.len() {
            node.groups[gi].reported = node.group_role(gi, now);
        }
        if node.self_eligible() {
            node.eligible_since = Some(now);
        }
        Ok(node)
    }

    /// Feeds one input at time `now` and returns what to do, in order.
    ///
    /// `now` must not go backwards between calls.
    pub fn step(&mut self, now: Millis, input: Input) -> Vec<Output> {
        if self.shut_down {
            return Vec::new();
        }
        let mut cx = Ctx {
            now,
            out: Vec::new(),
            cause: None,
            heartbeat_now: false,
        };
        match input {
            Input::Tick => {}
            Input::Received { link, envelope } => self.on_received(&mut cx, link, envelope),
            Input::ServiceAnswered { peer, link } => {
                if let Some(p) = self.peers.get_mut(&peer)
                    && p.alive
                    && let Some(slot) = p.links.get_mut(usize::from(link.0))
                {
                    *slot = Some(cx.now);
                }
            }
            Input::Rejected {
                reason,
                claimed_sender,
                count,
                ..
            } => self.on_rejected(cx.now, reason, claimed_sender, count),
            Input::ChannelHeard { peer } => self.on_channel_heard(cx.now, &peer),
            Input::PeerConnectionClosed { peer } => {
                let epoch = self.peers.get(&peer).and_then(|p| p.epoch);
                self.depart(&mut cx, &peer, LossCause::ConnectionClosed, epoch);
            }
            Input::LocalMonitor { healthy, detail } => {
                self.on_local_monitor(&mut cx, healthy, detail)
            }
            Input::RemoteMonitor {
                peer,
                healthy,
                detail,
            } => self.on_remote_monitor(&mut cx, peer, healthy, detail),
            Input::Command(c) => self.execute(&mut cx, c, Origin::Operator),
            Input::Forward { to, command } => self.forward(&mut cx, to, command),
            Input::DataSync { in_sync } => {
                let state = if in_sync {
                    DataState::InSync
                } else {
                    DataState::Behind
                };
                if self.data != state {
                    self.data = state;
                    cx.cause = Some(Reason::DataSync { in_sync });
                }
            }
            Input::Drained { group, to, cause } => self.on_drained(&mut cx, group, &to, cause),
            Input::Shutdown => self.shutdown(&mut cx),
        }
        self.reconcile(&mut cx);
        cx.out
    }

    // ------------------------------------------------------------ queries

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Changes the software version this node reports, after it booted
    /// another image slot; the next heartbeat carries it. A version longer
    /// than [`crate::MAX_NAME_LEN`] bytes is refused, as in the config.
    pub fn set_version(&mut self, version: &str) -> Result<(), Error> {
        if version.len() > crate::MAX_NAME_LEN {
            return Err(Error::InvalidConfig(format!(
                "version string longer than {} bytes",
                crate::MAX_NAME_LEN
            )));
        }
        self.config.version = version.to_owned();
        Ok(())
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Whether this node holds `group` (in config-only mode: whether it
    /// serves, whatever `group`).
    pub fn is_active(&self, group: GroupId) -> bool {
        self.groups
            .iter()
            .any(|g| g.active && (g.id == Some(group) || g.id.is_none()))
    }

    /// Groups this node holds.
    pub fn active_groups(&self) -> Vec<GroupId> {
        self.groups
            .iter()
            .filter(|g| g.active)
            .filter_map(|g| g.id)
            .collect()
    }

    /// This node's effective role as a whole at `now`.
    pub fn effective_role(&self, now: Millis) -> EffectiveRole {
        if let Some(r) = self.inactive_role() {
            return r;
        }
        if self.groups.iter().any(|g| g.active) {
            EffectiveRole::Active
        } else if self.holdoff_active(now) {
            EffectiveRole::HeldOff
        } else {
            EffectiveRole::Standby
        }
    }

    /// The state to persist now (the same as the last [`Output::Persist`]).
    pub fn persistent_state(&self) -> PersistentState {
        PersistentState {
            preempt: self.preempt,
            ha_stopped: self.ha_stopped,
        }
    }

    /// When the agent should next call `step` with [`Input::Tick`], seen
    /// from `now`: the next heartbeat, a peer's timeout, or the end of a
    /// holdoff, start-up wait, preemption delay, handover or grace period.
    /// Never later than the next heartbeat.
    pub fn next_deadline(&self, now: Millis) -> Millis {
        let one = Duration::from_millis(1);
        let mut candidates = vec![self.next_heartbeat];
        for p in self.peers.values().filter(|p| p.alive) {
            if let Some(last) = p.last_heard() {
                candidates.push(last.plus(self.hold).plus(one));
            }
        }
        candidates.extend(self.holdoff.as_ref().map(|h| h.until));
        candidates.extend(
            self.eligible_since
                .map(|s| s.plus(self.config.preempt_delay)),
        );
        candidates.extend(self.reclaim_until);
        candidates.extend(self.restore_until);
        if self.groups.iter().any(|g| !g.active) {
            candidates.push(self.startup_until);
        }
        for g in &self.groups {
            candidates.extend(g.handover.as_ref().map(|h| h.deadline));
            candidates.extend(g.grace_until);
            candidates.extend(g.yield_guard_until);
        }
        candidates
            .into_iter()
            .filter(|t| *t > now)
            .min()
            .unwrap_or(now.plus(self.config.interval))
    }

    /// A snapshot for `tandem status` at `now`.
    pub fn status(&self, now: Millis) -> Status {
        let groups = self
            .groups
            .iter()
            .enumerate()
            .filter_map(|(gi, g)| {
                let id = g.id?;
                let holder = if g.active {
                    Some(self.config.name.clone())
                } else {
                    self.peers
                        .iter()
                        .find(|(_, p)| p.active_in(Some(id)))
                        .map(|(n, _)| n.clone())
                };
                Some(GroupStatus {
                    group: id,
                    role: self.group_role(gi, now),
                    holder,
                    yielded_to: g.yielded_to.clone(),
                })
            })
            .collect();
        let peers = self
            .peers
            .iter()
            .map(|(name, p)| PeerStatus {
                name: name.clone(),
                alive: p.alive,
                configured_role: p.info.as_ref().map(|h| h.configured_role),
                effective_role: p.info.as_ref().filter(|_| p.alive).map(|h| h.role),
                priority: p.info.as_ref().map(|h| h.priority),
                healthy: p.info.as_ref().map(|h| h.healthy),
                preempt: p.info.as_ref().map(|h| h.preempt),
                version: p.info.as_ref().map(|h| h.version.clone()),
                protocol_version: p.protocol,
                groups: p
                    .info
                    .as_ref()
                    .map(|h| h.groups.clone())
                    .unwrap_or_default(),
                remote_service_ok: p.remote_ok,
                links: self
                    .config
                    .links
                    .iter()
                    .zip(&p.links)
                    .map(|(name, heard)| LinkStatus {
                        link: name.clone(),
                        last_heard_ms_ago: heard.map(|t| duration_ms(now.since(t))),
                        up: p.alive && heard.is_some_and(|t| now.since(t) <= self.hold),
                    })
                    .collect(),
            })
            .collect();
        Status {
            node: self.config.name.clone(),
            configured_role: self.config.role,
            effective_role: self.effective_role(now),
            priority: self.config.priority,
            mode: self.config.mode,
            healthy: self.local_healthy,
            ha_stopped: self.ha_stopped,
            preempt: self.preempt,
            preempt_state: self.preempt_state(now),
            version: self.config.version.clone(),
            groups,
            data: self.data,
            key_mismatch: self.key_mismatch.clone(),
            holdoff: self
                .holdoff
                .as_ref()
                .filter(|h| h.until > now)
                .map(|h| HoldoffStatus {
                    from: h.from.clone(),
                    remaining_ms: duration_ms(now.until(h.until)),
                }),
            peers,
            counters: self.counters.clone(),
        }
    }

    // ------------------------------------------------------------ derived state

    fn self_eligible(&self) -> bool {
        let role_serves = match self.config.mode {
            Mode::ConfigOnly => self.config.role != ConfiguredRole::Off,
            _ => self.config.role.serves_groups(),
        };
        !self.shut_down
            && !self.ha_stopped
            && self.local_healthy
            && role_serves
            && self.data_ok()
            && !self.key_mismatch_blocks()
    }

    /// The role when the node cannot serve at all, if so.
    fn inactive_role(&self) -> Option<EffectiveRole> {
        if self.shut_down || self.ha_stopped || self.config.role == ConfiguredRole::Off {
            Some(EffectiveRole::Off)
        } else if !self.local_healthy || self.key_mismatch_blocks() {
            Some(EffectiveRole::Failed)
        } else if !self.data_ok() {
            Some(EffectiveRole::Syncing)
        } else {
            None
        }
    }

    fn group_role(&self, gi: usize, now: Millis) -> EffectiveRole {
        if let Some(r) = self.inactive_role() {
            r
        } else if self.groups[gi].active {
            EffectiveRole::Active
        } else if self.holdoff_active(now) {
            EffectiveRole::HeldOff
        } else {
            EffectiveRole::Standby
        }
    }

    fn holdoff_active(&self, now: Millis) -> bool {
        self.holdoff.as_ref().is_some_and(|h| h.until > now)
    }

    fn preempt_state(&self, now: Millis) -> PreemptState {
        let yielded = self.groups.iter().any(|g| g.yielded_to.is_some());
        let Some(since) = self.eligible_since else {
            return PreemptState::Disabled;
        };
        if !self.self_eligible() || yielded {
            PreemptState::Disabled
        } else if self.reclaim_until.is_some_and(|t| t > now) {
            PreemptState::Ready
        } else if !self.preempt || self.demoted {
            PreemptState::Disabled
        } else if now < since.plus(self.config.preempt_delay) {
            PreemptState::Delaying
        } else {
            PreemptState::Ready
        }
    }

    fn self_rank(&self, gi: usize) -> Rank<'_> {
        self.rank(
            gi,
            &self.config.name,
            self.config.role,
            self.config.priority,
        )
    }

    fn rank<'a>(&self, gi: usize, name: &'a str, role: ConfiguredRole, priority: u8) -> Rank<'a> {
        Rank {
            preferred: self.groups[gi].preferred.as_deref() == Some(name),
            primary: role == ConfiguredRole::Primary,
            priority,
            name,
        }
    }

    fn peer_rank<'a>(&self, gi: usize, name: &'a str, p: &PeerState) -> Option<Rank<'a>> {
        p.info
            .as_ref()
            .map(|h| self.rank(gi, name, h.configured_role, h.priority))
    }

    /// The best-ranked eligible peer for group `gi`, if any.
    fn best_eligible_peer(&self, gi: usize) -> Option<(&str, Rank<'_>)> {
        self.peers
            .iter()
            .filter(|(_, p)| p.eligible())
            .filter_map(|(n, p)| self.peer_rank(gi, n, p).map(|r| (n.as_str(), r)))
            .max_by(|a, b| a.1.cmp(&b.1))
    }

    fn in_startup(&self, now: Millis) -> bool {
        now < self.startup_until && self.peers.values().any(|p| p.info.is_none())
    }

    fn heartbeat(&self, now: Millis) -> Heartbeat {
        Heartbeat {
            priority: self.config.priority,
            configured_role: self.config.role,
            role: self.effective_role(now),
            groups: self
                .groups
                .iter()
                .enumerate()
                .filter_map(|(gi, g)| g.id.map(|id| (id, self.group_role(gi, now))))
                .collect(),
            healthy: self.local_healthy,
            preempt: self.preempt_state(now),
            version: self.config.version.clone(),
        }
    }

    fn group_index(&self, id: GroupId) -> Option<usize> {
        self.groups.iter().position(|g| g.id == Some(id))
    }

    // ------------------------------------------------------------ inputs

    fn on_received(&mut self, cx: &mut Ctx, link: LinkId, env: Envelope) {
        let now = cx.now;
        let interval = self.config.interval;
        if !self.peers.contains_key(&env.sender) {
            self.counters.reject(RejectReason::UnknownPeer);
            return;
        }
        if env.message == Message::Goodbye {
            return self.depart(cx, &env.sender, LossCause::Goodbye, Some(env.epoch));
        }
        let Some(peer) = self.peers.get_mut(&env.sender) else {
            return;
        };
        if let Some(d) = &peer.departed
            && d.epoch == Some(env.epoch)
            && (d.cause == LossCause::Goodbye || now.since(d.at) < interval)
        {
            // A datagram of the run that said goodbye, or one in flight when
            // its connection closed: the peer is not back.
            return;
        }
        if let Some(slot) = peer.links.get_mut(usize::from(link.0)) {
            *slot = Some(now);
        }
        peer.protocol = Some(env.version);
        let new_epoch = peer.epoch != Some(env.epoch);
        peer.epoch = Some(env.epoch);
        if !peer.alive {
            peer.alive = true;
            peer.departed = None;
            cx.emit(Event::PeerFound {
                peer: env.sender.clone(),
            });
        }
        if new_epoch
            && let Some(h) = &self.holdoff
            && h.from == env.sender
            && h.epoch.is_some_and(|e| e != env.epoch)
        {
            cx.emit(Event::HoldoffCleared {
                from: h.from.clone(),
            });
            cx.cause = Some(Reason::HoldoffEnded {
                from: h.from.clone(),
            });
            self.holdoff = None;
        }
        let from = env.sender;
        match env.message {
            Message::Heartbeat(h) => {
                self.counters.heartbeats_received += 1;
                if let Some(p) = self.peers.get_mut(&from) {
                    p.info = Some(h);
                }
            }
            Message::Holdoff { duration } => self.on_holdoff(cx, from, env.epoch, duration),
            Message::Goodbye => {}
            Message::Takeover { group } => self.on_takeover(cx, &from, group),
            Message::Handover { group, to, cause } => {
                if to == self.config.name {
                    self.on_handover(cx, &from, group, cause);
                }
            }
            Message::Command { id, command } => {
                // Sent once per link: run each command once.
                let key = (env.epoch, id);
                let Some(p) = self.peers.get_mut(&from) else {
                    return;
                };
                if p.commands_seen.contains(&key) {
                    return;
                }
                if p.commands_seen.len() >= 32 {
                    p.commands_seen.pop_front();
                }
                p.commands_seen.push_back(key);
                self.execute(cx, command, Origin::Forwarded(from));
            }
        }
    }

    fn depart(&mut self, cx: &mut Ctx, name: &str, cause: LossCause, epoch: Option<u64>) {
        let Some(p) = self.peers.get_mut(name) else {
            return;
        };
        p.departed = Some(Departure {
            at: cx.now,
            epoch,
            cause,
        });
        if p.alive {
            p.alive = false;
            cx.emit(Event::PeerLost {
                peer: name.to_owned(),
                cause,
            });
        }
    }

    fn on_holdoff(&mut self, cx: &mut Ctx, from: String, epoch: u64, asked: Duration) {
        let duration = asked.min(self.config.holdoff_max);
        let until = cx.now.plus(duration);
        match &mut self.holdoff {
            // A repeat of the holdoff already running: keep the later end.
            Some(h) if h.from == from && h.epoch == Some(epoch) && h.until > cx.now => {
                h.until = h.until.max(until);
            }
            _ => {
                cx.emit(Event::HoldoffReceived {
                    from: from.clone(),
                    duration,
                });
                cx.cause = Some(Reason::HoldoffReceived { from: from.clone() });
                self.holdoff = Some(ReceivedHoldoff {
                    from,
                    epoch: Some(epoch),
                    until,
                });
            }
        }
    }

    fn on_takeover(&mut self, cx: &mut Ctx, from: &str, group: GroupId) {
        let Some(gi) = self.group_index(group) else {
            return;
        };
        let g = &mut self.groups[gi];
        g.last_active = Some(from.to_owned());
        g.grace_until = None;
        if g.active {
            // Only the node that gives the group up yields it; a standby
            // that merely hears of the takeover keeps its preemption.
            g.yielded_to = Some(from.to_owned());
            g.yield_guard_until = Some(cx.now.plus(self.hold));
            let reason = match g.handover.take() {
                Some(h) if h.to == from => Reason::HandedOver {
                    to: from.to_owned(),
                    cause: h.cause,
                },
                _ => Reason::TakenOver {
                    by: from.to_owned(),
                },
            };
            self.set_active(cx, gi, false, reason);
        }
    }

    fn on_handover(&mut self, cx: &mut Ctx, from: &str, group: GroupId, cause: HandoverCause) {
        let Some(gi) = self.group_index(group) else {
            return;
        };
        if !self.self_eligible() || self.data == DataState::Unverified {
            // The sender's handover times out and it keeps the group. Data
            // not yet compared with the sender's (the sender is active)
            // must be caught up first (issue 14).
            return;
        }
        if !self.groups[gi].active {
            let reason = Reason::HandoverAccepted {
                from: from.to_owned(),
                cause,
            };
            self.claim_on_request(cx, gi, reason, Some(from));
        } else {
            cx.out.push(Output::Send {
                to: Destination::All,
                message: Message::Takeover { group },
            });
        }
    }

    /// Claims a group by request (operator, handover, remote monitor): a
    /// grace period during which the old active is expected to release, and
    /// a `Takeover` so that it does.
    fn claim_on_request(&mut self, cx: &mut Ctx, gi: usize, reason: Reason, from: Option<&str>) {
        let id = self.groups[gi].id;
        let mut releasers: BTreeSet<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.active_in(id))
            .map(|(n, _)| n.clone())
            .collect();
        releasers.extend(from.map(str::to_owned));
        let g = &mut self.groups[gi];
        g.grace_until = Some(cx.now.plus(self.hold));
        g.grace_from = releasers;
        g.yielded_to = None;
        g.handover = None;
        if let Some(group) = g.id {
            cx.out.push(Output::Send {
                to: Destination::All,
                message: Message::Takeover { group },
            });
        }
        self.set_active(cx, gi, true, reason);
    }

    fn on_local_monitor(&mut self, cx: &mut Ctx, healthy: bool, detail: String) {
        if healthy == self.local_healthy {
            return;
        }
        self.local_healthy = healthy;
        if healthy {
            self.local_detail.clear();
            cx.cause = Some(Reason::LocalMonitorRecovered);
            match self.config.on_failure {
                OnFailure::Restore => self.reclaim_until = Some(cx.now.plus(self.hold * 3)),
                OnFailure::BecomeSecondary => self.demoted = true,
                OnFailure::Off => {}
            }
        } else {
            self.local_detail = detail.clone();
            cx.cause = Some(Reason::LocalMonitorFailed { detail });
            if self.config.on_failure == OnFailure::Off && !self.ha_stopped {
                self.ha_stopped = true;
                cx.out.push(Output::Persist(self.persistent_state()));
            }
        }
    }

    fn on_remote_monitor(&mut self, cx: &mut Ctx, peer: String, healthy: bool, detail: String) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.remote_ok == healthy {
            return;
        }
        p.remote_ok = healthy;
        cx.emit(if healthy {
            Event::RemoteMonitorRecovered { peer }
        } else {
            Event::RemoteMonitorFailed { peer, detail }
        });
    }

    fn forward(&mut self, cx: &mut Ctx, to: String, command: Command) {
        if to == self.config.name {
            return self.execute(cx, command, Origin::Operator);
        }
        match self.peers.get(&to) {
            Some(p) if p.alive => {
                let message = self.command_message(command.clone());
                cx.out.push(Output::Send {
                    to: Destination::Peer(to.clone()),
                    message,
                });
                cx.emit(Event::CommandForwarded { to, command });
            }
            _ => cx.out.push(Output::Refused {
                command,
                reason: Refusal::PeerUnreachable(to),
            }),
        }
    }

    fn command_message(&mut self, command: Command) -> Message {
        let id = self.next_command_id;
        self.next_command_id = self.next_command_id.wrapping_add(1);
        Message::Command { id, command }
    }

    fn shutdown(&mut self, cx: &mut Ctx) {
        for gi in 0..self.groups.len() {
            if self.groups[gi].active {
                self.set_active(cx, gi, false, Reason::ShuttingDown);
            }
        }
        self.shut_down = true;
        cx.cause = Some(Reason::ShuttingDown);
    }

    // ------------------------------------------------------------ commands

    fn execute(&mut self, cx: &mut Ctx, command: Command, origin: Origin) {
        let result = match &command {
            Command::FailoverActive => self.cmd_takeover(cx, None),
            Command::FailoverGroup {
                group,
                active: true,
            } => self.cmd_takeover(cx, Some(*group)),
            Command::FailoverStandby => self.cmd_standby(cx, None),
            Command::FailoverGroup {
                group,
                active: false,
            } => self.cmd_standby(cx, Some(*group)),
            Command::HaRestore => self.cmd_restore(cx, &origin),
            Command::HaRestart => self.cmd_restart(cx),
            Command::HaPreempt(on) => {
                if self.preempt != *on {
                    self.preempt = *on;
                    cx.out.push(Output::Persist(self.persistent_state()));
                }
                cx.emit(Event::PreemptChanged { enabled: *on });
                Ok(())
            }
            Command::HaHoldoff(d) => self.cmd_holdoff(cx, *d),
        };
        match result {
            Ok(()) => {
                cx.heartbeat_now = true;
                cx.emit(Event::CommandExecuted {
                    command,
                    forwarded_by: match origin {
                        Origin::Operator => None,
                        Origin::Forwarded(p) => Some(p),
                    },
                });
            }
            Err(reason) => cx.out.push(Output::Refused { command, reason }),
        }
    }

    /// Group indexes a failover command concerns, or why it cannot apply.
    fn command_groups(&self, group: Option<GroupId>) -> Result<Vec<usize>, Refusal> {
        if self.shut_down {
            return Err(Refusal::ShuttingDown);
        }
        if self.config.mode == Mode::ConfigOnly {
            return Err(Refusal::ConfigOnlyMode);
        }
        match group {
            None => Ok((0..self.groups.len()).collect()),
            Some(id) => self
                .group_index(id)
                .map(|gi| vec![gi])
                .ok_or(Refusal::UnknownGroup(id)),
        }
    }

    fn cmd_takeover(&mut self, cx: &mut Ctx, group: Option<GroupId>) -> Result<(), Refusal> {
        let now = cx.now;
        let targets = self.command_groups(group)?;
        if self.ha_stopped {
            return Err(Refusal::HaStopped);
        }
        if !self.config.role.serves_groups() {
            return Err(Refusal::NotServing(self.config.role));
        }
        if !self.local_healthy {
            return Err(Refusal::LocalUnhealthy);
        }
        if !self.data_ok() {
            return Err(Refusal::DataNotInSync);
        }
        if let Some(h) = self.holdoff.as_ref().filter(|h| h.until > now) {
            return Err(Refusal::HoldoffActive {
                from: h.from.clone(),
                remaining: now.until(h.until),
            });
        }
        if let Some(since) = self.eligible_since {
            let ready = since.plus(self.config.preempt_delay);
            if now < ready {
                return Err(Refusal::PreemptDelayRunning {
                    remaining: now.until(ready),
                });
            }
        }
        let todo: Vec<usize> = targets
            .into_iter()
            .filter(|&gi| !self.groups[gi].active)
            .collect();
        if todo.is_empty() {
            return Err(Refusal::AlreadyActive);
        }
        self.demoted = false;
        for gi in todo {
            self.claim_on_request(cx, gi, Reason::OperatorTakeover, None);
        }
        Ok(())
    }

    fn cmd_standby(&mut self, cx: &mut Ctx, group: Option<GroupId>) -> Result<(), Refusal> {
        let targets: Vec<usize> = self
            .command_groups(group)?
            .into_iter()
            .filter(|&gi| self.groups[gi].active)
            .collect();
        if targets.is_empty() {
            return Err(Refusal::NotActive);
        }
        // Check every group first: hand over all or nothing.
        let mut plan = Vec::new();
        for &gi in &targets {
            match self.best_eligible_peer(gi) {
                Some((to, _)) => plan.push((gi, to.to_owned())),
                None => {
                    let reachable = self
                        .peers
                        .iter()
                        .filter(|(_, p)| p.alive)
                        .filter_map(|(n, p)| self.peer_rank(gi, n, p).map(|r| (n, r)))
                        .max_by(|a, b| a.1.cmp(&b.1));
                    return Err(match reachable {
                        Some((n, _)) => Refusal::PeerUnhealthy(n.clone()),
                        None => Refusal::NoPeerReachable,
                    });
                }
            }
        }
        for (gi, to) in plan {
            self.start_handover(cx, gi, to, HandoverCause::Operator);
        }
        Ok(())
    }

    fn start_handover(&mut self, cx: &mut Ctx, gi: usize, to: String, cause: HandoverCause) {
        let deadline = cx.now.plus(self.hold);
        let g = &mut self.groups[gi];
        let Some(group) = g.id else {
            return;
        };
        g.yielded_to = Some(to.clone());
        g.yield_guard_until = Some(deadline);
        g.handover = Some(PendingHandover {
            to: to.clone(),
            cause,
            deadline,
        });
        cx.out.push(Output::Send {
            to: Destination::Peer(to.clone()),
            message: Message::Handover {
                group,
                to: to.clone(),
                cause,
            },
        });
        cx.emit(Event::HandoverStarted { group, to, cause });
    }

    fn cmd_restore(&mut self, cx: &mut Ctx, origin: &Origin) -> Result<(), Refusal> {
        if self.shut_down {
            return Err(Refusal::ShuttingDown);
        }
        if *origin == Origin::Operator && self.config.mode != Mode::ConfigOnly {
            // Refuse up front if the node that should end up active cannot.
            for gi in 0..self.groups.len() {
                let mut owner = (self.self_rank(gi), None::<&PeerState>);
                for (n, p) in &self.peers {
                    if let Some(r) = self.peer_rank(gi, n, p)
                        && p.info
                            .as_ref()
                            .is_some_and(|h| h.configured_role.serves_groups())
                        && r > owner.0
                    {
                        owner = (r, Some(p));
                    }
                }
                match owner {
                    (r, Some(p)) if !p.alive => {
                        return Err(Refusal::PeerUnreachable(r.name.to_owned()));
                    }
                    (r, Some(p)) if !p.eligible() => {
                        return Err(Refusal::PeerUnhealthy(r.name.to_owned()));
                    }
                    (_, None) if self.config.role.serves_groups() && !self.self_eligible() => {
                        return Err(if self.ha_stopped {
                            Refusal::HaStopped
                        } else {
                            Refusal::LocalUnhealthy
                        });
                    }
                    _ => {}
                }
            }
            let message = self.command_message(Command::HaRestore);
            cx.out.push(Output::Send {
                to: Destination::All,
                message,
            });
        }
        let window = cx.now.plus(self.hold * 3);
        for g in &mut self.groups {
            g.yielded_to = None;
        }
        self.demoted = false;
        self.restore_until = Some(window);
        if self.self_eligible() {
            self.reclaim_until = Some(window);
        }
        Ok(())
    }

    fn cmd_restart(&mut self, cx: &mut Ctx) -> Result<(), Refusal> {
        if self.shut_down {
            return Err(Refusal::ShuttingDown);
        }
        for gi in 0..self.groups.len() {
            if self.groups[gi].active {
                self.set_active(cx, gi, false, Reason::HaRestarted);
            }
            let g = &mut self.groups[gi];
            g.yielded_to = None;
            g.handover = None;
            g.grace_until = None;
        }
        if self.ha_stopped {
            self.ha_stopped = false;
            cx.out.push(Output::Persist(self.persistent_state()));
        }
        self.demoted = false;
        self.eligible_since = None;
        self.started_at = cx.now;
        self.startup_until = cx.now.plus(self.hold);
        for p in self.peers.values_mut() {
            // Re-learn the peers before claiming anything, as at boot.
            if !p.alive {
                p.info = None;
            }
        }
        cx.cause = Some(Reason::HaRestarted);
        Ok(())
    }

    fn cmd_holdoff(&mut self, cx: &mut Ctx, d: Duration) -> Result<(), Refusal> {
        if self.shut_down {
            return Err(Refusal::ShuttingDown);
        }
        if d > self.config.holdoff_max {
            return Err(Refusal::HoldoffTooLong {
                requested: d,
                max: self.config.holdoff_max,
            });
        }
        self.announce_holdoff_until = Some(cx.now.plus(d));
        cx.out.push(Output::Send {
            to: Destination::All,
            message: Message::Holdoff { duration: d },
        });
        cx.emit(Event::HoldoffSent { duration: d });
        Ok(())
    }

    // ------------------------------------------------------------ reconcile

    fn set_active(&mut self, cx: &mut Ctx, gi: usize, active: bool, reason: Reason) {
        if self.groups[gi].active == active {
            return;
        }
        if !active && matches!(reason, Reason::SplitBrain { .. } | Reason::TakenOver { .. }) {
            // Its data was the reference; now another node's is, which
            // may hold what this one never saw.
            self.data_unverified();
        }
        let g = &mut self.groups[gi];
        g.active = active;
        g.change_reason = Some(reason);
        if active {
            g.last_active = Some(self.config.name.clone());
            g.yielded_to = None;
            g.yield_guard_until = None;
        } else {
            g.grace_until = None;
            g.handover = None;
            g.drain_asked_until = None;
        }
        if let Some(group) = g.id {
            cx.out.push(if active {
                Output::ClaimVip { group }
            } else {
                Output::ReleaseVip { group }
            });
        }
    }

    fn reconcile(&mut self, cx: &mut Ctx) {
        let now = cx.now;
        // Peers silent on every link for the hold time are dead.
        let lost: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.alive && p.last_heard().is_none_or(|t| now.since(t) > self.hold))
            .map(|(n, _)| n.clone())
            .collect();
        for peer in lost {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.alive = false;
            }
            cx.emit(Event::PeerLost {
                peer,
                cause: LossCause::Timeout,
            });
        }
        self.update_key_mismatch(cx);
        if let Some(h) = &self.holdoff
            && h.until <= now
        {
            cx.emit(Event::HoldoffExpired {
                from: h.from.clone(),
            });
            cx.cause.get_or_insert(Reason::HoldoffEnded {
                from: h.from.clone(),
            });
            self.holdoff = None;
        }
        if self.announce_holdoff_until.is_some_and(|t| t <= now) {
            self.announce_holdoff_until = None;
        }
        for t in [&mut self.reclaim_until, &mut self.restore_until] {
            if t.is_some_and(|t| t <= now) {
                *t = None;
            }
        }
        if !self.self_eligible() {
            self.eligible_since = None;
        } else if self.eligible_since.is_none() {
            self.eligible_since = Some(now);
        }

        for gi in 0..self.groups.len() {
            self.decide(cx, gi);
        }

        let serve = self.groups.iter().any(|g| g.active);
        if serve != self.serving {
            self.serving = serve;
            cx.out.push(if serve {
                Output::StartService
            } else {
                Output::StopService
            });
        }

        for gi in 0..self.groups.len() {
            let role = self.group_role(gi, now);
            let g = &mut self.groups[gi];
            let reason = g.change_reason.take();
            if role != g.reported {
                let from = g.reported;
                g.reported = role;
                self.counters.transitions += 1;
                cx.heartbeat_now = true;
                cx.emit(Event::RoleChanged {
                    group: g.id,
                    from,
                    to: role,
                    reason: reason.or_else(|| cx.cause.clone()).unwrap_or(
                        if EffectiveRole::Syncing == role || EffectiveRole::Syncing == from {
                            Reason::DataUnverified
                        } else {
                            Reason::Reevaluated
                        },
                    ),
                });
            }
        }

        if self.shut_down {
            // Last words, after the VIPs are released and the service stopped.
            cx.out.push(Output::Send {
                to: Destination::All,
                message: Message::Goodbye,
            });
            return;
        }
        let due = now >= self.next_heartbeat;
        if due {
            self.next_heartbeat = now.plus(self.config.interval);
        }
        if due || cx.heartbeat_now {
            self.counters.heartbeats_sent += 1;
            cx.out.push(Output::Send {
                to: Destination::All,
                message: Message::Heartbeat(self.heartbeat(now)),
            });
        }
        if due {
            self.resend_pending(cx);
        }
    }

    /// Messages that must get through even if a datagram is lost: repeated
    /// with every regular heartbeat while they matter.
    fn resend_pending(&mut self, cx: &mut Ctx) {
        let now = cx.now;
        if let Some(until) = self.announce_holdoff_until {
            cx.out.push(Output::Send {
                to: Destination::All,
                message: Message::Holdoff {
                    duration: now.until(until),
                },
            });
        }
        for g in &self.groups {
            let Some(group) = g.id else { continue };
            if let Some(h) = &g.handover {
                cx.out.push(Output::Send {
                    to: Destination::Peer(h.to.clone()),
                    message: Message::Handover {
                        group,
                        to: h.to.clone(),
                        cause: h.cause,
                    },
                });
            }
            if g.active
                && g.grace_until.is_some_and(|t| t > now)
                && self.peers.values().any(|p| p.active_in(g.id))
            {
                cx.out.push(Output::Send {
                    to: Destination::All,
                    message: Message::Takeover { group },
                });
            }
        }
    }

    /// Applies the election rules to group `gi`.
    fn decide(&mut self, cx: &mut Ctx, gi: usize) {
        let now = cx.now;
        let eligible = self.self_eligible();
        let active = self.groups[gi].active;
        let ineligible_reason = || {
            cx.cause.clone().unwrap_or_else(|| {
                if self.shut_down {
                    Reason::ShuttingDown
                } else if !self.local_healthy {
                    Reason::LocalMonitorFailed {
                        detail: self.local_detail.clone(),
                    }
                } else if let Some(peer) = self.key_mismatch.clone() {
                    Reason::KeyMismatch { peer }
                } else {
                    Reason::Reevaluated
                }
            })
        };
        if self.config.mode == Mode::ConfigOnly {
            if eligible != active {
                let reason = if eligible {
                    cx.cause.clone().unwrap_or(Reason::Elected)
                } else {
                    ineligible_reason()
                };
                self.set_active(cx, gi, eligible, reason);
            }
            return;
        }
        let id = self.groups[gi].id;
        if !eligible {
            if active {
                let reason = ineligible_reason();
                self.set_active(cx, gi, false, reason);
            }
            let g = &mut self.groups[gi];
            g.handover = None;
            g.grace_until = None;
            return;
        }
        let actives: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.active_in(id))
            .map(|(n, _)| n.clone())
            .collect();
        if let Some(a) = actives.first() {
            self.groups[gi].last_active = Some(a.clone());
        }
        if active {
            self.decide_active(cx, gi, &actives);
        } else {
            self.decide_standby(cx, gi, &actives, now);
        }
    }

    fn decide_active(&mut self, cx: &mut Ctx, gi: usize, actives: &[String]) {
        let now = cx.now;
        let id = self.groups[gi].id;
        // A planned handover completes once the target is seen active.
        if let Some(h) = self.groups[gi].handover.clone() {
            if actives.contains(&h.to) {
                self.groups[gi].yielded_to = Some(h.to.clone());
                self.groups[gi].yield_guard_until = Some(now.plus(self.hold));
                let reason = Reason::HandedOver {
                    to: h.to,
                    cause: h.cause,
                };
                return self.set_active(cx, gi, false, reason);
            }
            if now >= h.deadline {
                let g = &mut self.groups[gi];
                g.handover = None;
                g.yielded_to = None;
                if let Some(group) = id {
                    cx.emit(Event::HandoverFailed { group, to: h.to });
                }
            }
        }
        let in_grace = self.groups[gi].grace_until.is_some_and(|t| t > now);
        if !in_grace {
            self.groups[gi].grace_until = None;
            self.groups[gi].grace_from.clear();
        }
        // Actives other than those expected to release after our claim.
        let grace_from = &self.groups[gi].grace_from;
        let contenders: Vec<String> = actives
            .iter()
            .filter(|p| !(in_grace && grace_from.contains(*p)))
            .cloned()
            .collect();
        // Split brain: count each peer once per episode.
        let g = &mut self.groups[gi];
        g.split_brain_with.retain(|p| contenders.contains(p));
        let mut fresh = Vec::new();
        for p in &contenders {
            if g.split_brain_with.insert(p.clone()) {
                fresh.push(p.clone());
            }
        }
        for peer in fresh {
            self.counters.split_brain_events += 1;
            cx.emit(Event::SplitBrain { group: id, peer });
        }
        let me = self.self_rank(gi);
        let better = contenders
            .iter()
            .filter_map(|n| {
                let p = self.peers.get(n)?;
                self.peer_rank(gi, n, p).filter(|r| *r > me)
            })
            .max();
        if let Some(r) = better {
            let peer = r.name.to_owned();
            return self.set_active(cx, gi, false, Reason::SplitBrain { peer });
        }
        // Preemption: hand over to a better-ranked peer that is ready.
        if self.groups[gi].handover.is_none() && actives.is_empty() && !in_grace {
            let Some(to) = self.preemption_target(gi) else {
                self.groups[gi].drain_asked_until = None;
                return;
            };
            let cause = if self.restore_until.is_some_and(|t| t > now) {
                HandoverCause::Restore
            } else {
                HandoverCause::Preemption
            };
            if !self.config.drain_before_preemption {
                return self.start_handover(cx, gi, to, cause);
            }
            let g = &mut self.groups[gi];
            if let Some(group) = g.id
                && g.drain_asked_until.is_none_or(|t| now >= t)
            {
                g.drain_asked_until = Some(now.plus(PREEMPT_DRAIN_WAIT));
                cx.out.push(Output::DrainForHandover { group, to, cause });
            }
        }
    }

    /// The better-ranked peer, eligible and ready to preempt, that group
    /// `gi` should go to, if any.
    fn preemption_target(&self, gi: usize) -> Option<String> {
        let me = self.self_rank(gi);
        self.peers
            .iter()
            .filter(|(_, p)| {
                p.eligible()
                    && p.info
                        .as_ref()
                        .is_some_and(|h| h.preempt == PreemptState::Ready)
            })
            .filter_map(|(n, p)| self.peer_rank(gi, n, p))
            .filter(|r| *r > me)
            .max()
            .map(|r| r.name.to_owned())
    }

    /// The service drained for a preemption: hand over if the same peer
    /// is still the one to preempt (else the agent resumes the listener).
    fn on_drained(&mut self, cx: &mut Ctx, group: GroupId, to: &str, cause: HandoverCause) {
        let Some(gi) = self.group_index(group) else {
            return;
        };
        let g = &mut self.groups[gi];
        g.drain_asked_until = None;
        if !g.active || g.handover.is_some() {
            return;
        }
        if self.preemption_target(gi).as_deref() == Some(to) {
            self.start_handover(cx, gi, to.to_owned(), cause);
        }
    }

    fn decide_standby(&mut self, cx: &mut Ctx, gi: usize, actives: &[String], now: Millis) {
        // A reachable active whose service our remote monitor still trusts
        // keeps the group.
        if actives
            .iter()
            .any(|n| self.peers.get(n).is_some_and(|p| p.remote_ok))
        {
            return;
        }
        // Any active left is one whose service the remote monitor finds failed.
        let failed_active = actives.first().cloned();
        if self.in_startup(now) || self.holdoff_active(now) {
            return;
        }
        if let Some(y) = self.groups[gi].yielded_to.clone() {
            if !self.peers.get(&y).is_some_and(|p| p.eligible()) {
                self.groups[gi].yielded_to = None;
            } else if self.groups[gi].yield_guard_until.is_some_and(|t| t > now) {
                return;
            }
        }
        let me = self.self_rank(gi);
        if self.best_eligible_peer(gi).is_some_and(|(_, r)| r > me) {
            return;
        }
        if let Some(peer) = failed_active {
            let from = peer.clone();
            return self.claim_on_request(
                cx,
                gi,
                Reason::RemoteMonitorFailed { peer },
                Some(&from),
            );
        }
        let reason = match self.groups[gi].last_active.clone() {
            Some(p) if p != self.config.name => {
                if self.peers.get(&p).is_some_and(|s| s.alive) {
                    Reason::PeerStoodDown { peer: p }
                } else {
                    Reason::PeerLost { peer: p }
                }
            }
            _ => Reason::Elected,
        };
        self.set_active(cx, gi, true, reason);
    }
}

impl GroupState {
    fn new(id: Option<GroupId>, preferred: Option<String>) -> Self {
        GroupState {
            id,
            preferred,
            active: false,
            reported: EffectiveRole::Standby,
            change_reason: None,
            yielded_to: None,
            yield_guard_until: None,
            grace_until: None,
            grace_from: BTreeSet::new(),
            handover: None,
            drain_asked_until: None,
            split_brain_with: BTreeSet::new(),
            last_active: None,
        }
    }
}
