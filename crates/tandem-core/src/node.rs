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
//!
//! # Layout
//!
//! One struct, [`Node`], with its `impl` split by concern so that each rule
//! can be read in one place: `io` (the inputs, outputs and events the agent
//! sees), `peer` (what is known of each peer), `query` (read-only views and
//! the derived states the rules use), `inputs` (received messages and other
//! inputs), `commands` (operator commands), `reconcile` (the election
//! rules and per-group state) and `data` (replicated data and cluster key
//! mismatch).

use crate::config::{Mode, NodeConfig};
use crate::error::Error;
use crate::status::Counters;
use crate::time::Millis;
use std::collections::BTreeMap;
use std::time::Duration;

mod commands;
mod data;
mod inputs;
mod io;
mod peer;
mod query;
mod reconcile;
mod store;

pub use crate::role::DataState;
pub use io::{
    Destination, Event, Input, LeaderKey, LossCause, Output, PREEMPT_DRAIN_WAIT, PersistentState,
    Reason, StoreEvent, StoreRequest,
};

use commands::Origin;
use peer::{PeerState, ReceivedHoldoff};
use reconcile::GroupState;
use store::StoreView;

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
    /// What the coordination store granted (unused with peers).
    store: StoreView,
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
            .map(|p| (p.clone(), PeerState::new(links)))
            .collect();
        let data = if config.replicated_data {
            DataState::Unverified
        } else {
            DataState::InSync
        };
        let store = StoreView {
            valid_until: None,
            session: None,
            sync: (0, None),
            sync_waived: false,
            leaders: vec![Default::default(); groups.len()],
        };
        let mut node = Node {
            store,
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
            Input::Store(event) => self.on_store_event(&mut cx, event),
            Input::Shutdown => self.shutdown(&mut cx),
        }
        self.reconcile(&mut cx);
        cx.out
    }
}
