//! What the planner and the step machine know about the cluster: one
//! snapshot of every node, as the agent gathers it from heartbeats, its
//! image store and the sync channel.
//!
//! The crate never asks for any of this; the agent hands it in — whole, to
//! [`crate::plan()`] and to [`crate::UpgradeRun::resume`], and piecewise as
//! [`crate::Observation`]s while a run goes on. Every step decides whether
//! it is done, and whether it may start, from this snapshot alone, which is
//! what makes a step safe to retry after the coordinator dies.

use serde::{Deserialize, Serialize};
use tandem_core::{ConfiguredRole, EffectiveRole, GroupId, Mode};
use tandem_version::Version;

/// The whole cluster as last observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// How the cluster shares the service.
    pub mode: Mode,
    /// The failover groups configured (`active-active`: two or more; the
    /// other modes leave it empty or list group 0, and it is not read).
    pub groups: Vec<GroupId>,
    /// Every node, in any order; names are unique.
    pub nodes: Vec<NodeState>,
    /// The last `sync report`: `Some(true)` when every node agrees on every
    /// synced file, `Some(false)` when some differ, `None` when none was run
    /// since the last change that could affect it.
    pub sync_clean: Option<bool>,
}

/// One node as last observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// The node's unique name.
    pub name: String,
    /// The role the operator configured.
    pub configured: ConfiguredRole,
    /// What the node does now (for `active-active`, `active` when it holds
    /// any group). A node that is rebooting or unreachable reports `off`.
    pub effective: EffectiveRole,
    /// Election priority (higher wins among nodes of the same role).
    pub priority: u8,
    /// The release it runs now.
    pub running: Version,
    /// Whether its local service monitor passes.
    pub healthy: bool,
    /// Whether its data is in sync with the active node (a standby that has
    /// caught up; always true for the active itself).
    pub in_sync: bool,
    /// Whether preemption is on (`ha preempt on`).
    pub preempt: bool,
    /// The failover groups it is active for (`active-active`; not read in
    /// the other modes, where `effective` says it).
    pub groups: Vec<GroupId>,
    /// The image files the node has, installed or not.
    pub images: Vec<ImageFile>,
    /// The slot it does not run from, if that slot holds anything.
    pub other_slot: Option<SlotView>,
    /// Whether its client listener accepts connections.
    pub listener: Listener,
    /// Whether it takes part in cluster configuration (rolling upgrades
    /// disconnect it, like ESA's `clusterconfig disconnect`).
    pub config_link: ConfigLink,
}

/// An image file a node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFile {
    /// Its release.
    pub version: Version,
    /// Whether its signature has been checked against the node's trust
    /// policy. Only verified images are installed.
    pub verified: bool,
}

/// The slot a node does not run from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotView {
    /// The release it holds.
    pub version: Version,
    /// What is known of it.
    pub state: SlotStatus,
}

/// A slot's state, as `tandem-image` keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlotStatus {
    /// Installed, never booted to a good health check: ready for a boot.
    Pending,
    /// Booted once and passed its health check: a rollback target.
    Good,
    /// Failed to boot; the node fell back to the slot it runs now.
    Bad,
}

/// A node's client listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Listener {
    /// Accepting new connections.
    Accepting,
    /// Suspended (ESA's `suspendlistener`), with in-flight sessions drained.
    Suspended,
}

/// A node's membership in cluster configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfigLink {
    /// Receives and may make cluster configuration changes.
    Connected,
    /// Keeps its own copy; cluster changes neither reach it nor come from it.
    Disconnected,
}

impl ClusterState {
    /// A config-only cluster (ESA clusters, FortiMail config-only) of
    /// `nodes`, in sync: every node serves and only configuration is
    /// shared, so it has no failover groups.
    pub fn config_only(nodes: Vec<NodeState>) -> ClusterState {
        ClusterState {
            mode: Mode::ConfigOnly,
            groups: vec![],
            nodes,
            sync_clean: Some(true),
        }
    }

    /// The node called `name`, if there is one.
    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The node called `name`, mutably.
    pub fn node_mut(&mut self, name: &str) -> Option<&mut NodeState> {
        self.nodes.iter_mut().find(|n| n.name == name)
    }

    /// The nodes that are active now (in every mode but `config-only`).
    pub fn actives(&self) -> Vec<&NodeState> {
        self.nodes
            .iter()
            .filter(|n| n.effective == EffectiveRole::Active)
            .collect()
    }

    /// The node holding `group` (`active-active`).
    pub fn holder(&self, group: GroupId) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.groups.contains(&group))
    }

    /// The configured primary, if one is configured.
    pub fn primary(&self) -> Option<&NodeState> {
        self.nodes
            .iter()
            .find(|n| n.configured == ConfiguredRole::Primary)
    }

    /// The distinct releases the nodes run, lowest first.
    pub fn versions(&self) -> Vec<Version> {
        let mut versions: Vec<Version> = self.nodes.iter().map(|n| n.running).collect();
        versions.sort();
        versions.dedup();
        versions
    }

    /// How many nodes take client connections now. In `config-only` mode
    /// every healthy node whose listener accepts serves on its own address;
    /// in the other modes the active node(s) serve through the VIPs.
    pub fn serving(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.is_serving(self.mode))
            .count()
    }

    /// Whether every failover group (or, in `active-passive`, the one VIP)
    /// is held by a node that can serve: the service is reachable.
    pub fn service_reachable(&self) -> bool {
        match self.mode {
            Mode::ConfigOnly => self.serving() > 0,
            Mode::ActivePassive => self.serving() > 0,
            Mode::ActiveActive => self.groups.iter().all(|g| {
                self.holder(*g)
                    .is_some_and(|n| n.is_serving(Mode::ActiveActive))
            }),
        }
    }

    /// Whether a cluster configuration change may be made now. ESA's rule
    /// (seed 002): while any node is disconnected, a change would leave the
    /// nodes' settings unsynchronized, so the agent refuses it and names the
    /// disconnected nodes.
    pub fn config_change_allowed(&self) -> Result<(), Vec<String>> {
        let disconnected: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.config_link == ConfigLink::Disconnected)
            .map(|n| n.name.clone())
            .collect();
        if disconnected.is_empty() {
            Ok(())
        } else {
            Err(disconnected)
        }
    }
}

impl NodeState {
    /// A healthy node in sync, accepting, connected to cluster config, with
    /// no group, no image file and no other slot: the usual starting point,
    /// changed where a node differs.
    pub fn new(
        name: impl Into<String>,
        configured: ConfiguredRole,
        effective: EffectiveRole,
        priority: u8,
        running: Version,
    ) -> NodeState {
        NodeState {
            name: name.into(),
            configured,
            effective,
            priority,
            running,
            healthy: true,
            in_sync: true,
            preempt: false,
            groups: vec![],
            images: vec![],
            other_slot: None,
            listener: Listener::Accepting,
            config_link: ConfigLink::Connected,
        }
    }

    /// Whether the node has a verified image file for `version`.
    pub fn image(&self, version: &Version) -> Option<ImageFile> {
        self.images.iter().copied().find(|i| i.version == *version)
    }

    /// Whether the node serves clients now in a cluster of this mode.
    pub fn is_serving(&self, mode: Mode) -> bool {
        let up = self.healthy && self.listener == Listener::Accepting;
        match mode {
            Mode::ConfigOnly => up && self.effective != EffectiveRole::Off,
            Mode::ActivePassive | Mode::ActiveActive => {
                up && self.effective == EffectiveRole::Active
            }
        }
    }

    /// Whether the node has `version` installed and ready to boot.
    pub fn has_pending(&self, version: &Version) -> bool {
        self.other_slot
            .is_some_and(|s| s.version == *version && s.state == SlotStatus::Pending)
    }

    /// Whether booting `version` failed on this node and it fell back.
    pub fn boot_failed(&self, version: &Version) -> bool {
        self.running != *version
            && self
                .other_slot
                .is_some_and(|s| s.version == *version && s.state == SlotStatus::Bad)
    }

    /// Whether the node runs `version`, healthy, out of a finished boot.
    pub fn runs(&self, version: &Version) -> bool {
        self.running == *version && self.healthy && self.effective != EffectiveRole::Off
    }
}
