//! What the operator configured for this node, as the core needs it.
//!
//! The agent parses TOML and builds a [`NodeConfig`]; the core validates it
//! ([`NodeConfig::validate`]) and never changes it. Settings an operator can
//! change at run time (`ha preempt on|off`) live in the node's state and are
//! persisted through [`crate::Output::Persist`] instead.

use crate::error::Error;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The role an operator gave a node (FortiMail's "configured operating mode").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfiguredRole {
    /// Preferred active node. `ha restore` makes it active again.
    Primary,
    /// Serves when the primary cannot.
    Secondary,
    /// Shares configuration with the cluster; in `active-passive` and
    /// `active-active` modes it never serves a failover group.
    ConfigOnly,
    /// Takes no part in HA at all.
    Off,
}

impl ConfiguredRole {
    /// Whether a node with this role may hold a failover group.
    pub fn serves_groups(self) -> bool {
        matches!(self, ConfiguredRole::Primary | ConfiguredRole::Secondary)
    }
}

/// How the cluster shares the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// One failover group: one active node, the others standby.
    ActivePassive,
    /// Every node serves on its own address; only configuration is shared.
    /// There are no failover groups and no VIP.
    ConfigOnly,
    /// Two or more failover groups, each with its own VIP and preferred node,
    /// failing over independently (Cisco ASA failover groups).
    ActiveActive,
}

/// Names a failover group (and so its VIP). Active-passive uses group 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupId(pub u8);

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "group {}", self.0)
    }
}

/// One failover group: a VIP that exactly one node should hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverGroup {
    /// The group's id, the same on every node.
    pub id: GroupId,
    /// The node that should hold this group when it is healthy (ASA's
    /// "preferred unit"). `None`: the usual ranking (primary first, then
    /// priority, then name) decides.
    pub preferred: Option<String>,
}

/// What a failing local monitor (lservice) does to this node's HA role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Stop HA on this node (VIP released, service stopped, effective role
    /// `off`) until `ha restart`.
    Off,
    /// Mark the node failed while the monitor fails; on recovery it takes back
    /// its configured role (a primary becomes active again even without
    /// preemption).
    Restore,
    /// Mark the node failed while the monitor fails; on recovery it stays
    /// standby until `ha restore` or a switchover.
    BecomeSecondary,
}

/// Who decides which node serves (`[cluster] coordination`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Coordination {
    /// The peers alone, over the heartbeat links: fast, and a node that
    /// hears nobody serves (so each side of a partition does).
    #[default]
    Peers,
    /// A coordination store (etcd) grants a session and a leader key per
    /// group: a node serves only while it holds both (see `node::store`).
    Store,
}

impl Coordination {
    /// Whether a store has the last word.
    pub fn uses_store(self) -> bool {
        self == Coordination::Store
    }
}

/// Index of a heartbeat link into [`NodeConfig::links`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LinkId(pub u8);

/// Largest name (node, cluster, link) or version string, in bytes; names go
/// on the wire with a one-byte length.
pub const MAX_NAME_LEN: usize = 64;

/// Everything the core needs to know about this node and its cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    /// This node's name, unique in the cluster. Node-local.
    pub name: String,
    /// Election priority (higher wins among nodes of the same configured
    /// role). Node-local: peers learn it from heartbeats.
    pub priority: u8,
    /// The operator's role for this node.
    pub role: ConfiguredRole,
    /// How the cluster shares the service.
    pub mode: Mode,
    /// Failover groups: exactly one in `active-passive`, two or more in
    /// `active-active`, ignored in `config-only`.
    pub groups: Vec<FailoverGroup>,
    /// Names of the other nodes. Messages from other names are rejected.
    pub peers: Vec<String>,
    /// Names of the heartbeat links (for status); [`LinkId`] indexes this.
    pub links: Vec<String>,
    /// Heartbeat interval (default 200 ms).
    pub interval: Duration,
    /// A peer is dead when every link has been silent for
    /// `lost_threshold × interval` (default 3).
    pub lost_threshold: u32,
    /// Preemption at start-up (`ha preempt on|off` changes it at run time):
    /// a better-ranked node takes a group back from a worse one.
    pub preempt: bool,
    /// How long a node must have been healthy and eligible before it
    /// preempts or accepts `failover active`.
    pub preempt_delay: Duration,
    /// Longest holdoff this node honours, whatever a peer asks for.
    pub holdoff_max: Duration,
    /// What a local monitor failure does.
    pub on_failure: OnFailure,
    /// Software version string carried in heartbeats (for status).
    pub version: String,
    /// The service's data is replicated to this node (`[sync]` with
    /// `data_sync` other than `off`): the node starts with its data
    /// unverified ([`crate::node::DataState::Unverified`]) and cannot
    /// preempt or accept a handover until an active has caught it up.
    pub replicated_data: bool,
    /// The service drains its sessions before a planned handover: a due
    /// preemption first asks the agent to drain
    /// ([`crate::Output::DrainForHandover`]), then hands over.
    pub drain_before_preemption: bool,
    /// Who decides which node serves.
    pub coordination: Coordination,
    /// With a store: an active whose session ran out keeps serving while
    /// every peer is alive over the heartbeat links (Patroni's failsafe
    /// mode), and takes its key back when the store returns.
    pub failsafe: bool,
}

impl NodeConfig {
    /// An active-passive node with one link (`hb0`) and the documented
    /// defaults: interval 200 ms, lost threshold 3, preemption on with no
    /// delay, holdoff at most 5 minutes, `on_failure = become-secondary`.
    pub fn new(name: &str, role: ConfiguredRole, priority: u8, peers: &[&str]) -> Self {
        NodeConfig {
            name: name.to_owned(),
            priority,
            role,
            mode: Mode::ActivePassive,
            groups: vec![FailoverGroup {
                id: GroupId(0),
                preferred: None,
            }],
            peers: peers.iter().map(|p| (*p).to_owned()).collect(),
            links: vec!["hb0".to_owned()],
            interval: Duration::from_millis(200),
            lost_threshold: 3,
            preempt: true,
            preempt_delay: Duration::ZERO,
            holdoff_max: Duration::from_secs(300),
            on_failure: OnFailure::BecomeSecondary,
            version: String::new(),
            replicated_data: false,
            drain_before_preemption: false,
            coordination: Coordination::Peers,
            failsafe: false,
        }
    }

    /// How long every link must be silent before a peer counts as dead.
    pub fn hold_time(&self) -> Duration {
        self.interval.saturating_mul(self.lost_threshold)
    }

    /// Checks the rules the state machine relies on.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        let name_ok = |n: &str| !n.is_empty() && n.len() <= MAX_NAME_LEN;
        if !name_ok(&self.name) {
            return bad(format!("node name must be 1..={MAX_NAME_LEN} bytes"));
        }
        for (i, p) in self.peers.iter().enumerate() {
            if !name_ok(p) {
                return bad(format!("peer name {p:?} must be 1..={MAX_NAME_LEN} bytes"));
            }
            if *p == self.name {
                return bad(format!("peer {p:?} is this node's own name"));
            }
            if self.peers[..i].contains(p) {
                return bad(format!("peer {p:?} is listed twice"));
            }
        }
        if self.links.is_empty() || self.links.len() > usize::from(u8::MAX) {
            return bad("between 1 and 255 heartbeat links are needed".into());
        }
        if self.interval.is_zero() {
            return bad("interval must be more than zero".into());
        }
        if self.lost_threshold == 0 {
            return bad("lost_threshold must be at least 1".into());
        }
        if self.version.len() > MAX_NAME_LEN {
            return bad(format!("version string longer than {MAX_NAME_LEN} bytes"));
        }
        match self.mode {
            Mode::ActivePassive if self.groups.len() != 1 => {
                return bad("active-passive mode has exactly one failover group".into());
            }
            Mode::ActiveActive if self.groups.len() < 2 => {
                return bad("active-active mode needs two or more failover groups".into());
            }
            _ => {}
        }
        for (i, g) in self.groups.iter().enumerate() {
            if self.groups[..i].iter().any(|o| o.id == g.id) {
                return bad(format!("{} is listed twice", g.id));
            }
            if let Some(p) = &g.preferred
                && *p != self.name
                && !self.peers.contains(p)
            {
                return bad(format!(
                    "{}: preferred node {p:?} is not in the cluster",
                    g.id
                ));
            }
        }
        Ok(())
    }
}
