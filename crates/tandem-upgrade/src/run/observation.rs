//! What the agent tells the step machine: [`Observation`]s fed to
//! [`super::UpgradeRun::observe`], and [`NodeChange`], one field of a node
//! as it changes. Apart from the machine itself so the journal's rules
//! (`run.rs`) read without the vocabulary of what comes in.

use serde::{Deserialize, Serialize};
use tandem_core::{EffectiveRole, GroupId};
use tandem_version::Version;

use crate::cluster::{ClusterState, ConfigLink, Listener, NodeState, SlotView};
use crate::step::StepId;

/// Something the agent saw, fed to [`UpgradeRun::observe`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "observation")]
pub enum Observation {
    /// A fresh snapshot of the whole cluster.
    Cluster(ClusterState),
    /// A fresh snapshot of one node (its status, or heartbeat and slots).
    Node(NodeState),
    /// One thing one node now reports.
    NodeReports {
        /// The node.
        node: String,
        /// What changed.
        change: NodeChange,
    },
    /// The sync report came back.
    SyncReport {
        /// Whether every node agrees on every synced file.
        clean: bool,
    },
    /// A node's configuration backup is written.
    BackupTaken {
        /// The node.
        node: String,
    },
    /// An action could not be carried out (a command refused, an install
    /// failed); the step stops the run.
    ActionFailed {
        /// The step that asked for it.
        step: StepId,
        /// The node concerned.
        node: String,
        /// Why, as the node said it.
        reason: String,
    },
    /// An action did not reach its node (down, or its agent restarting):
    /// nothing was refused, so the step asks again on the next turn once
    /// the node answers; its timeout bounds the wait.
    ActionUndelivered {
        /// The step that asked for it.
        step: StepId,
        /// The node concerned.
        node: String,
        /// What the transport said.
        reason: String,
    },
    /// The agent's own timer for a step fired (the run also checks
    /// timeouts against `now_ms` by itself).
    StepTimedOut {
        /// The step.
        step: StepId,
    },
    /// The operator asked to stop (`upgrade abort`): the run stops at the
    /// next safe point.
    Abort,
    /// The operator's `upgrade resume`: a fleet rollout paused after its
    /// canaries goes on (ignored by a run without one).
    Resume,
}

/// One field of a node's state, as it changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeChange {
    /// Its effective role.
    Role(EffectiveRole),
    /// The release it runs.
    Version(Version),
    /// Its other slot.
    OtherSlot(Option<SlotView>),
    /// Whether its data is in sync with the active.
    InSync(bool),
    /// Whether its service is healthy.
    Healthy(bool),
    /// Whether preemption is on.
    Preempt(bool),
    /// The failover groups it is active for.
    Groups(Vec<GroupId>),
    /// Its listener.
    Listener(Listener),
    /// Its cluster-config membership.
    ConfigLink(ConfigLink),
}

/// Applies one reported change to the node as observed.
pub(super) fn apply(node: &mut NodeState, change: NodeChange) {
    match change {
        NodeChange::Role(r) => node.effective = r,
        NodeChange::Version(v) => node.running = v,
        NodeChange::OtherSlot(s) => node.other_slot = s,
        NodeChange::InSync(b) => node.in_sync = b,
        NodeChange::Healthy(b) => node.healthy = b,
        NodeChange::Preempt(b) => node.preempt = b,
        NodeChange::Groups(g) => node.groups = g,
        NodeChange::Listener(l) => node.listener = l,
        NodeChange::ConfigLink(c) => node.config_link = c,
    }
}
