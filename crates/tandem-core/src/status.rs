//! The status snapshot `tandem status` shows, and the node's counters.
//!
//! Plain data, serializable to JSON; built by [`crate::Node::status`]. Ages
//! are in milliseconds so the JSON stays flat.

use crate::config::{ConfiguredRole, GroupId, Mode};
use crate::role::{DataState, EffectiveRole, PreemptState};
use crate::wire::RejectReason;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One node's view of itself and its peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// This node's name.
    pub node: String,
    /// Its configured role.
    pub configured_role: ConfiguredRole,
    /// Its effective role.
    pub effective_role: EffectiveRole,
    /// Its priority.
    pub priority: u8,
    /// The cluster mode.
    pub mode: Mode,
    /// The local monitor's last verdict.
    pub healthy: bool,
    /// HA stopped by `on_failure = off` (until `ha restart`).
    pub ha_stopped: bool,
    /// Preemption setting.
    pub preempt: bool,
    /// What its heartbeats say about preempting.
    pub preempt_state: PreemptState,
    /// Its software version.
    pub version: String,
    /// Per failover group: its role there and who holds it.
    pub groups: Vec<GroupStatus>,
    /// This node's replicated data compared with the active's.
    pub data: DataState,
    /// A peer heard on the sync channel whose heartbeats fail the MAC:
    /// the two nodes have different cluster keys.
    pub key_mismatch: Option<String>,
    /// A peer's holdoff in force, if any.
    pub holdoff: Option<HoldoffStatus>,
    /// Every configured peer as this node sees it.
    pub peers: Vec<PeerStatus>,
    /// Counters since start.
    pub counters: Counters,
}

/// One failover group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// The group.
    pub group: GroupId,
    /// This node's role in it.
    pub role: EffectiveRole,
    /// The node holding it, as far as this node knows.
    pub holder: Option<String>,
    /// The peer this node yielded the group to, if any.
    pub yielded_to: Option<String>,
    /// The fencing epoch under which this node holds the group's leader
    /// key (`coordination = "etcd"`).
    #[serde(default)]
    pub epoch: Option<u64>,
}

/// A holdoff in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldoffStatus {
    /// The peer that asked for it.
    pub from: String,
    /// Time left.
    pub remaining_ms: u64,
}

/// A peer as this node sees it. Fields from its heartbeat are `None` until
/// one has been received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer's name.
    pub name: String,
    /// Reachable (some link heard within the hold time, no goodbye since).
    pub alive: bool,
    /// Its configured role.
    pub configured_role: Option<ConfiguredRole>,
    /// Its effective role (only while alive).
    pub effective_role: Option<EffectiveRole>,
    /// Its priority.
    pub priority: Option<u8>,
    /// Its local monitor's verdict.
    pub healthy: Option<bool>,
    /// Its preemption state.
    pub preempt: Option<PreemptState>,
    /// Its software version.
    pub version: Option<String>,
    /// The protocol version it speaks to us.
    pub protocol_version: Option<u8>,
    /// Its role per failover group.
    pub groups: Vec<(GroupId, EffectiveRole)>,
    /// Our remote monitor's verdict on its service.
    pub remote_service_ok: bool,
    /// Each heartbeat link.
    pub links: Vec<LinkStatus>,
}

/// One heartbeat link to one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    /// The link's name.
    pub link: String,
    /// How long ago it last delivered anything; `None` if never.
    pub last_heard_ms_ago: Option<u64>,
    /// Heard within the hold time.
    pub up: bool,
}

/// Counters since the node started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Changes of effective role (every `RoleChanged` event).
    pub transitions: u64,
    /// Split-brain episodes seen (per group and peer).
    pub split_brain_events: u64,
    /// Heartbeats accepted.
    pub heartbeats_received: u64,
    /// Heartbeat messages emitted.
    pub heartbeats_sent: u64,
    /// Datagrams dropped, by reason.
    pub rejected: BTreeMap<RejectReason, u64>,
    /// Active claims and store answers ignored because they carried an
    /// older fencing epoch than one already known (`coordination = "etcd"`).
    #[serde(default)]
    pub stale_epochs: u64,
    /// Groups this node gave up because its store session ran out or the
    /// store gave the key to another node.
    #[serde(default)]
    pub self_fenced: u64,
}

impl Counters {
    pub(crate) fn reject(&mut self, reason: RejectReason) {
        self.reject_n(reason, 1);
    }

    pub(crate) fn reject_n(&mut self, reason: RejectReason, count: u64) {
        *self.rejected.entry(reason).or_default() += count;
    }
}
