//! [`FleetRollout`]: the pure state machine of a rollout in waves, driven
//! like [`crate::UpgradeRun`] — the agent feeds [`FleetObservation`]s in
//! and carries out the [`FleetAction`]s that [`FleetRollout::next`] gives
//! back; time is the `now_ms` it passes, never a clock read here.
//!
//! ```text
//!            Running ──canary wave settled──► Paused ──Resume──► Running
//!               │      (or, with auto_promote, Wait until the canaries
//!               │       stayed healthy that long, then Running)
//!               ├──last wave settled──► Done
//!               └──failed > max_failed──► Stopped
//!                      (auto_revert) ──► Stopping ──wave in flight settled──►
//!                                        Reverting ──every NodeReverted──► Reverted
//! ```
//!
//! Why the rules are what they are:
//! - A wave starts only when every node of the one before is healthy or
//!   failed, so a bad release never reaches more than one wave past the
//!   failures that reveal it.
//! - A wave's nodes all start together, so they share one health deadline
//!   (the wave's start plus `health_deadline`); that keeps `next` O(1) per
//!   call on a fleet of thousands.
//! - Once stopped, no node is ever told to upgrade again; nodes already
//!   upgrading cannot be called back, so their outcome is still recorded.
//!   With `auto_revert` the revert waits for them, so it reverts every node
//!   the new release reached, and none twice.
//! - A failed node needs no revert: its A/B slot already fell back
//!   (`tandem-image` keeps a new slot only once its health check passes).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{RolloutPolicy, Wave, WaveKind, millis};
use crate::cluster::ClusterState;
use crate::error::PlanError;

/// Something the agent saw, fed to [`FleetRollout::observe`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "observation")]
pub enum FleetObservation {
    /// The node runs the new release and its health check passes.
    NodeHealthy {
        /// The node.
        node: String,
    },
    /// The node's upgrade failed: its boot fell back, an action was
    /// refused, or (after it was healthy) its health check failed again.
    NodeFailed {
        /// The node.
        node: String,
        /// Why, as the node said it.
        reason: String,
    },
    /// The agent's own timer for the node's health deadline fired (the
    /// rollout also checks the deadline against `now_ms` by itself).
    HealthDeadlinePassed {
        /// The node.
        node: String,
    },
    /// The operator's `tandem upgrade resume`: go on after the canaries.
    Resume,
    /// A node the rollout asked to revert runs its previous release again.
    NodeReverted {
        /// The node.
        node: String,
    },
}

/// What to do now, from [`FleetRollout::next`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "action")]
pub enum FleetAction {
    /// Upgrade these nodes, all at once; report each as healthy or failed.
    Upgrade {
        /// The wave's index in [`FleetRollout::waves`].
        wave: usize,
        /// What the wave is for.
        kind: WaveKind,
        /// Its nodes.
        nodes: Vec<String>,
    },
    /// Nothing to do until an observation comes, or until `until_ms`.
    Wait {
        /// When to call `next` again without an observation (a health
        /// deadline, the end of the canaries' healthy time); `None` when
        /// only an observation can move the rollout.
        until_ms: Option<u64>,
        /// What for, in words.
        waiting_for: String,
    },
    /// The canaries are done: nothing happens until [`FleetObservation::Resume`].
    Paused {
        /// Where the rollout is and what to do.
        message: String,
    },
    /// Revert these nodes to their previous release, in this order
    /// (standbys first, the active last); report each as reverted.
    Revert {
        /// The nodes, in order.
        nodes: Vec<String>,
    },
    /// Every wave is through and no more than `max_failed` nodes failed.
    Done {
        /// What happened, in words.
        summary: String,
    },
    /// Stopped after too many failures; nothing was reverted.
    Stopped {
        /// Why, where the fleet is, and what to do.
        message: String,
    },
    /// Stopped after too many failures, and every upgraded node reverted.
    Reverted {
        /// Why, and what was reverted.
        message: String,
    },
}

/// Where one node is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "progress")]
pub enum NodeProgress {
    /// Its wave has not started.
    Waiting,
    /// Told to upgrade; neither healthy nor failed yet.
    Upgrading,
    /// Runs the new release, healthy.
    Healthy,
    /// Its upgrade failed (its slot fell back by itself).
    Failed {
        /// Why.
        reason: String,
    },
    /// Told to revert; not reported back yet.
    Reverting,
    /// Back on its previous release.
    Reverted,
}

/// Where the rollout as a whole is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "status")]
pub enum RolloutStatus {
    /// Upgrading wave after wave.
    Running,
    /// Waiting for [`FleetObservation::Resume`] after the canaries.
    Paused,
    /// Too many failures, `auto_revert` on: waiting for the wave in flight
    /// to settle before reverting.
    Stopping {
        /// Why it stopped.
        reason: String,
    },
    /// Reverting the upgraded nodes.
    Reverting {
        /// Why it stopped.
        reason: String,
    },
    /// Every wave through.
    Done,
    /// Stopped after too many failures, nothing reverted.
    Stopped {
        /// Why it stopped.
        reason: String,
    },
    /// Stopped after too many failures, the upgraded nodes reverted.
    Reverted {
        /// Why it stopped.
        reason: String,
    },
}

impl RolloutStatus {
    /// Whether the rollout is over.
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            RolloutStatus::Done | RolloutStatus::Stopped { .. } | RolloutStatus::Reverted { .. }
        )
    }

    /// Whether too many failures stopped it (reverting or not): from then
    /// on no node is told to upgrade.
    pub fn has_stopped(&self) -> bool {
        matches!(
            self,
            RolloutStatus::Stopping { .. }
                | RolloutStatus::Reverting { .. }
                | RolloutStatus::Stopped { .. }
                | RolloutStatus::Reverted { .. }
        )
    }
}

/// One fleet rollout in progress: the waves, each node's progress, and
/// what comes next. Serializable, like [`crate::UpgradeRun`], so a
/// coordinator can journal and replicate it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetRollout {
    /// The knobs it runs with.
    policy: RolloutPolicy,
    /// Every wave, in order.
    waves: Vec<Wave>,
    /// Every node of every wave, by name.
    nodes: BTreeMap<String, NodeProgress>,
    /// The wave being upgraded; `waves.len()` once all are through.
    current: usize,
    /// When the current wave's nodes were told to upgrade; `None` before.
    wave_started_ms: Option<u64>,
    /// Nodes of the current wave still [`NodeProgress::Upgrading`].
    in_flight: usize,
    /// When the last node of the current wave settled (the start of the
    /// canaries' healthy time).
    wave_settled_ms: Option<u64>,
    /// Nodes whose upgrade failed, over the whole rollout.
    failed: usize,
    /// Nodes told to revert and not reported back yet.
    reverting: usize,
    /// Whether the canaries were promoted (resumed, or auto-promoted).
    promoted: bool,
    /// Where the rollout is.
    status: RolloutStatus,
}

impl FleetRollout {
    /// A rollout of `waves` (from [`super::plan_waves`]) under `policy`.
    pub fn new(waves: Vec<Wave>, policy: RolloutPolicy) -> FleetRollout {
        let nodes = waves
            .iter()
            .flat_map(|w| w.nodes.iter())
            .map(|n| (n.clone(), NodeProgress::Waiting))
            .collect();
        FleetRollout {
            policy,
            waves,
            nodes,
            current: 0,
            wave_started_ms: None,
            in_flight: 0,
            wave_settled_ms: None,
            failed: 0,
            reverting: 0,
            promoted: false,
            status: RolloutStatus::Running,
        }
    }

    /// Plans the waves of `cluster` under `policy` and starts a rollout.
    pub fn plan(cluster: &ClusterState, policy: RolloutPolicy) -> Result<FleetRollout, PlanError> {
        Ok(FleetRollout::new(
            super::plan_waves(cluster, &policy)?,
            policy,
        ))
    }

    /// Where the rollout is.
    pub fn status(&self) -> &RolloutStatus {
        &self.status
    }

    /// The waves, in order.
    pub fn waves(&self) -> &[Wave] {
        &self.waves
    }

    /// The knobs it runs with.
    pub fn policy(&self) -> &RolloutPolicy {
        &self.policy
    }

    /// Where one node is; `None` for a node not in the rollout.
    pub fn progress(&self, node: &str) -> Option<&NodeProgress> {
        self.nodes.get(node)
    }

    /// How many nodes failed so far.
    pub fn failed(&self) -> usize {
        self.failed
    }

    /// The index of the wave being upgraded (`waves().len()` once all are
    /// through).
    pub fn current_wave(&self) -> usize {
        self.current
    }

    /// Takes in something the agent saw. Reports about nodes that are not
    /// in the rollout, or not in a state the report applies to (a node
    /// healthy before it was told to upgrade, healthy after its deadline
    /// failed it), change nothing.
    pub fn observe(&mut self, now_ms: u64, observation: FleetObservation) {
        match observation {
            FleetObservation::NodeHealthy { node } => {
                if let Some(progress) = self.nodes.get_mut(&node)
                    && *progress == NodeProgress::Upgrading
                {
                    *progress = NodeProgress::Healthy;
                    self.settle_one(now_ms);
                }
            }
            FleetObservation::NodeFailed { node, reason } => self.fail(now_ms, &node, reason),
            FleetObservation::HealthDeadlinePassed { node } => {
                let reason = self.deadline_reason();
                if self.nodes.get(&node) == Some(&NodeProgress::Upgrading) {
                    self.fail(now_ms, &node, reason);
                }
            }
            FleetObservation::Resume => {
                // A resume promotes the canaries once they are through:
                // from the pause, or early while auto-promotion waits. One
                // that comes while they still upgrade is ignored, so it
                // cannot skip the look at them it exists for.
                let canaries_through = self.status == RolloutStatus::Running
                    && self.wave_started_ms.is_some()
                    && self.in_flight == 0
                    && self
                        .waves
                        .get(self.current)
                        .is_some_and(|w| w.kind == WaveKind::Canary);
                if self.status == RolloutStatus::Paused || canaries_through {
                    self.promoted = true;
                    self.status = RolloutStatus::Running;
                }
            }
            FleetObservation::NodeReverted { node } => {
                if let Some(progress) = self.nodes.get_mut(&node)
                    && *progress == NodeProgress::Reverting
                {
                    *progress = NodeProgress::Reverted;
                    self.reverting = self.reverting.saturating_sub(1);
                }
            }
        }
    }

    /// What to do now. Call it after every observation and whenever a
    /// [`FleetAction::Wait`]'s `until_ms` passes; persist the rollout
    /// before carrying out what it returns.
    pub fn next(&mut self, now_ms: u64) -> Vec<FleetAction> {
        loop {
            self.expire(now_ms);
            match &self.status {
                RolloutStatus::Done => {
                    return vec![FleetAction::Done {
                        summary: self.summary(),
                    }];
                }
                RolloutStatus::Stopped { reason } => {
                    return vec![FleetAction::Stopped {
                        message: format!(
                            "{reason}; fix the cause and run `tandem upgrade run` again to go on, or `tandem upgrade rollback`"
                        ),
                    }];
                }
                RolloutStatus::Reverted { reason } => {
                    return vec![FleetAction::Reverted {
                        message: format!(
                            "{reason}; every node it upgraded was reverted, standbys first"
                        ),
                    }];
                }
                RolloutStatus::Paused => {
                    return vec![FleetAction::Paused {
                        message: self.pause_message(),
                    }];
                }
                RolloutStatus::Stopping { reason } => {
                    if self.in_flight > 0 {
                        return vec![self.wait_for_wave("to settle before the revert")];
                    }
                    let reason = reason.clone();
                    let order = self.revert_order();
                    if order.is_empty() {
                        self.status = RolloutStatus::Stopped {
                            reason: format!("{reason}; no node was upgraded, nothing to revert"),
                        };
                        continue;
                    }
                    for node in &order {
                        if let Some(progress) = self.nodes.get_mut(node) {
                            *progress = NodeProgress::Reverting;
                        }
                    }
                    self.reverting = order.len();
                    self.status = RolloutStatus::Reverting { reason };
                    return vec![FleetAction::Revert { nodes: order }];
                }
                RolloutStatus::Reverting { reason } => {
                    if self.reverting == 0 {
                        self.status = RolloutStatus::Reverted {
                            reason: reason.clone(),
                        };
                        continue;
                    }
                    return vec![FleetAction::Wait {
                        until_ms: None,
                        waiting_for: format!("{} node(s) to report reverted", self.reverting),
                    }];
                }
                RolloutStatus::Running => {}
            }
            let Some(wave) = self.waves.get(self.current) else {
                self.status = RolloutStatus::Done;
                continue;
            };
            if self.wave_started_ms.is_none() {
                let mut started = 0;
                for node in &wave.nodes {
                    if let Some(progress) = self.nodes.get_mut(node)
                        && *progress == NodeProgress::Waiting
                    {
                        *progress = NodeProgress::Upgrading;
                        started += 1;
                    }
                }
                self.wave_started_ms = Some(now_ms);
                self.wave_settled_ms = None;
                self.in_flight = started;
                if started == 0 {
                    // Only reachable with a node listed in two waves.
                    self.wave_settled_ms = Some(now_ms);
                    continue;
                }
                return vec![FleetAction::Upgrade {
                    wave: self.current,
                    kind: wave.kind,
                    nodes: wave.nodes.clone(),
                }];
            }
            if self.in_flight > 0 {
                return vec![self.wait_for_wave("to turn healthy")];
            }
            let more_waves = self.current + 1 < self.waves.len();
            if wave.kind == WaveKind::Canary && more_waves && !self.promoted {
                let all_healthy = wave
                    .nodes
                    .iter()
                    .all(|n| self.nodes.get(n) == Some(&NodeProgress::Healthy));
                match self.policy.auto_promote {
                    Some(healthy_for) if all_healthy => {
                        let settled = self.wave_settled_ms.unwrap_or(now_ms);
                        let promote_at = settled.saturating_add(millis(healthy_for));
                        if now_ms < promote_at {
                            return vec![FleetAction::Wait {
                                until_ms: Some(promote_at),
                                waiting_for: format!(
                                    "the canaries to stay healthy for {healthy_for:?} (auto-promotion)"
                                ),
                            }];
                        }
                        self.promoted = true;
                    }
                    // Without auto-promotion, or with a canary failed
                    // (within --max-failed), a person looks first.
                    _ => {
                        self.status = RolloutStatus::Paused;
                        continue;
                    }
                }
            }
            self.current += 1;
            self.wave_started_ms = None;
            self.wave_settled_ms = None;
        }
    }

    /// Marks `node` failed (from upgrading, or from healthy when its
    /// health check fails again) and stops the rollout when that makes
    /// one failure too many.
    fn fail(&mut self, now_ms: u64, node: &str, reason: String) {
        let Some(progress) = self.nodes.get_mut(node) else {
            return;
        };
        let was = std::mem::replace(progress, NodeProgress::Failed { reason });
        match was {
            NodeProgress::Upgrading => {
                self.failed += 1;
                self.settle_one(now_ms);
            }
            NodeProgress::Healthy => self.failed += 1,
            // Not upgraded (yet), already failed, or being reverted: the
            // report does not apply.
            other => *progress = other,
        }
        self.check_failures();
    }

    /// One node of the current wave left `Upgrading`.
    fn settle_one(&mut self, now_ms: u64) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight == 0 {
            self.wave_settled_ms = Some(now_ms);
        }
    }

    /// Fails every node of the current wave still upgrading once the
    /// wave's health deadline has passed.
    fn expire(&mut self, now_ms: u64) {
        let Some(deadline) = self.deadline() else {
            return;
        };
        if self.in_flight == 0 || now_ms < deadline || self.status.is_finished() {
            return;
        }
        let reason = self.deadline_reason();
        let Some(wave) = self.waves.get(self.current) else {
            return;
        };
        for node in &wave.nodes {
            if let Some(progress) = self.nodes.get_mut(node)
                && *progress == NodeProgress::Upgrading
            {
                *progress = NodeProgress::Failed {
                    reason: reason.clone(),
                };
                self.failed += 1;
            }
        }
        self.in_flight = 0;
        self.wave_settled_ms = Some(now_ms);
        self.check_failures();
    }

    /// The current wave's health deadline, once it has started.
    fn deadline(&self) -> Option<u64> {
        self.wave_started_ms
            .map(|started| started.saturating_add(millis(self.policy.health_deadline)))
    }

    fn deadline_reason(&self) -> String {
        format!(
            "not healthy within the health deadline of {:?}",
            self.policy.health_deadline
        )
    }

    fn wait_for_wave(&self, what_for: &str) -> FleetAction {
        FleetAction::Wait {
            until_ms: self.deadline(),
            waiting_for: format!(
                "{} node(s) of wave {} of {} {what_for}",
                self.in_flight,
                self.current + 1,
                self.waves.len()
            ),
        }
    }

    /// Stops the rollout once more than `max_failed` nodes failed.
    fn check_failures(&mut self) {
        let stoppable = matches!(self.status, RolloutStatus::Running | RolloutStatus::Paused);
        if !stoppable || self.failed <= self.policy.max_failed {
            return;
        }
        let failed: Vec<&str> = self
            .nodes
            .iter()
            .filter(|(_, p)| matches!(p, NodeProgress::Failed { .. }))
            .map(|(n, _)| n.as_str())
            .collect();
        let shown = failed
            .iter()
            .take(5)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        let more = failed.len().saturating_sub(5);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        let reason = format!(
            "{} node(s) failed ({shown}{more}), more than --max-failed {} allows: the rollout stopped in wave {} of {} with {} of {} node(s) upgraded",
            self.failed,
            self.policy.max_failed,
            (self.current + 1).min(self.waves.len()),
            self.waves.len(),
            self.count(|p| *p == NodeProgress::Healthy),
            self.nodes.len()
        );
        self.status = if self.policy.auto_revert {
            RolloutStatus::Stopping { reason }
        } else {
            RolloutStatus::Stopped { reason }
        };
    }

    /// The nodes to revert: every healthy upgraded node, in wave order —
    /// standbys first, the node kept for last (the active) last.
    fn revert_order(&self) -> Vec<String> {
        self.waves
            .iter()
            .flat_map(|w| w.nodes.iter())
            .filter(|n| self.nodes.get(*n) == Some(&NodeProgress::Healthy))
            .cloned()
            .collect()
    }

    fn count(&self, matching: impl Fn(&NodeProgress) -> bool) -> usize {
        self.nodes.values().filter(|p| matching(p)).count()
    }

    fn summary(&self) -> String {
        format!(
            "every wave is through: {} of {} node(s) upgraded in {} wave(s), {} failed (--max-failed {})",
            self.count(|p| *p == NodeProgress::Healthy),
            self.nodes.len(),
            self.waves.len(),
            self.failed,
            self.policy.max_failed
        )
    }

    fn pause_message(&self) -> String {
        let canaries = self.waves.get(self.current).map_or(0, |w| w.nodes.len());
        let left: usize = self
            .waves
            .iter()
            .skip(self.current + 1)
            .map(|w| w.nodes.len())
            .sum();
        let waves_left = self.waves.len().saturating_sub(self.current + 1);
        format!(
            "paused after the {canaries} canary node(s) ({} failed so far): check them, then run `tandem upgrade resume` to upgrade the other {left} node(s) in {waves_left} wave(s)",
            self.failed
        )
    }
}
