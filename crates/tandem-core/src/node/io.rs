//! What goes into [`Node::step`](super::Node::step) and what comes out: the
//! vocabulary the agent and the node share.
//!
//! These types are the whole contract with the agent (re-exported from
//! `tandem_core::node` and from the crate root), so they live apart from the
//! rules: a change here is a change for every caller, a change in the rules
//! is not.

use crate::config::{GroupId, LinkId};
use crate::role::{Command, EffectiveRole, HandoverCause, Refusal};
use crate::wire::{Envelope, Message, RejectReason};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Something that happened, for the node to react to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Time passed. Send one at
    /// [`Node::next_deadline`](super::Node::next_deadline) (or every
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
    /// What the coordination store said (`coordination = "etcd"`; ignored
    /// with peers).
    Store(StoreEvent),
    /// The agent is shutting down cleanly: release everything and say
    /// goodbye. The node ignores every later input.
    Shutdown,
}

/// The coordination store's word, as the agent's adapter reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// This node's session (its lease) is surely alive until `valid_until`:
    /// the time the renewal was *sent*, plus the TTL, minus a margin, so
    /// that the node stops serving before the store can expire the lease.
    SessionRenewed {
        /// The session's id at the store (etcd's lease id).
        session: u64,
        /// Until then.
        valid_until: crate::time::Millis,
    },
    /// The session is gone: the store says the lease is unknown or
    /// revoked. Keys attached to it are gone too.
    SessionLost,
    /// What `group`'s leader key holds, as of store revision `revision`
    /// (a linearizable read, a watch event, or the answer to a request).
    Leader {
        /// The group.
        group: GroupId,
        /// The store revision of this report; older ones are ignored.
        revision: u64,
        /// The holder and its epoch; `None` when the key is absent.
        holder: Option<LeaderKey>,
    },
    /// What the `sync` key says, as of store revision `revision`: with
    /// replicated data (`semi`), only these nodes may take a group over
    /// (Patroni's `/sync`). `None`: no key yet, nothing restricted.
    Sync {
        /// The store revision of this report.
        revision: u64,
        /// The leader that wrote it and the standbys in sync with it.
        members: Option<Vec<String>>,
    },
    /// The operator forced a takeover (`failover active --force`): this
    /// node may take over though the `sync` key does not name it, until it
    /// serves.
    WaiveSync,
}

/// A group's leader key: who holds it, under which session, and under
/// which fencing epoch (the key's revision when it was written).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderKey {
    /// The holder.
    pub node: String,
    /// The holder's session: a key written by an earlier run of this node
    /// (an older session) is not this run's.
    pub session: u64,
    /// The fencing epoch.
    pub epoch: u64,
}

/// What the node asks of the coordination store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum StoreRequest {
    /// Write `group`'s leader key with this node's session, only if it is
    /// absent; with `evict`, also if `evict` holds it (its process is
    /// proven dead, or it handed the group over): the key moves to this
    /// node only if it is still the version `evict` wrote.
    /// Answer with [`StoreEvent::Leader`] either way.
    Acquire {
        /// The group.
        group: GroupId,
        /// A holder that may be replaced.
        evict: Option<String>,
    },
    /// Delete `group`'s leader key if this node holds it.
    Release {
        /// The group.
        group: GroupId,
    },
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
    /// Write this state durably; pass it back to
    /// [`Node::new`](super::Node::new) after a restart.
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
    /// Ask the coordination store for something; answer with
    /// [`Input::Store`].
    Store(StoreRequest),
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
    /// Self-fenced: this node's store session could not be renewed in
    /// time (the store, or a quorum of it, is out of reach).
    SessionExpired,
    /// Self-fenced: the store gave the group's leader key to `to`.
    LeaderMoved {
        /// The new holder.
        to: String,
        /// Its fencing epoch.
        epoch: u64,
    },
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
