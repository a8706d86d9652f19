//! The planner: (cluster state, target, catalog, strategy) → the ordered
//! steps of an upgrade, or a refusal that says why.
//!
//! ```text
//!  prologue   sync report · preflight · backups · [preemption off]
//!  per hop    install the hop's image everywhere, then the strategy's order:
//!               switchover     standbys · switch over · old active
//!               holdoff        secondaries · primary (holdoff, restart)
//!               rolling        batches of secondaries · primary, each
//!                              disconnected, drained, upgraded, resumed;
//!                              reconnect once every node runs the hop
//!               active-active  groups to A · others · groups to B · A · groups back
//!  epilogue   [preemption restored] · sync report
//! ```
//!
//! The whole cluster finishes one hop before the next begins, so at most two
//! releases (the hop's two ends) ever run at once. A rollback plan is the
//! same walk with "boot the previous slot" in place of "install and boot",
//! which gives Huawei's order (seed 003, step 7) for free: standbys first,
//! then a switchover, then the old active.
//!
//! The planner also accepts a cluster caught between the two ends of a hop
//! (some nodes already upgraded): nodes already on a hop's release skip it.
//!
//! This file holds the plan's types, the entry points and the refusals
//! they share; how the steps of an allowed plan are laid out is in
//! `planner`.

use serde::{Deserialize, Serialize};
use tandem_core::{ConfiguredRole, EffectiveRole, GroupId, Mode};
use tandem_version::{Catalog, HopRule, Version};

use crate::cluster::{ClusterState, SlotStatus};
use crate::error::{ModeName, PlanError};
use crate::step::{ClientImpact, Step, StepId, StepKind};

mod planner;

use planner::Planner;
pub(crate) use planner::{WaveScope, rank};

pub use crate::strategy::Strategy;

/// Settings of a plan the operator may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanOptions {
    /// How long a node takes to restart into a new slot and pass its
    /// health check, milliseconds: the holdoff outage estimate.
    pub restart_estimate_ms: u64,
    /// The holdoff a restarting primary sends, seconds (must be within the
    /// peers' `holdoff_max`).
    pub holdoff_secs: u64,
    /// How long a boot (or rollback) may take before it counts as failed.
    pub boot_timeout_ms: u64,
    /// How long a node may take to be ready and in sync after its boot.
    pub ready_timeout_ms: u64,
    /// How long any other step may take.
    pub step_timeout_ms: u64,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            restart_estimate_ms: 30_000,
            holdoff_secs: 300,
            boot_timeout_ms: 300_000,
            ready_timeout_ms: 600_000,
            step_timeout_ms: 120_000,
        }
    }
}

/// Why a hop is allowed, in a form that goes into the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "rule")]
pub enum HopReason {
    /// A later maintenance release of the same minor.
    Maintenance,
    /// The next minor release.
    MinorStep,
    /// From the last minor of a major to the first of the next.
    MajorStep,
    /// A hop the catalog lists (`from` → `to` as written there).
    Edge {
        /// The edge's `from` pattern.
        from: String,
        /// The edge's `to` pattern.
        to: String,
    },
    /// Back to the release in each node's previous slot.
    Rollback,
}

impl From<HopRule> for HopReason {
    fn from(rule: HopRule) -> Self {
        match rule {
            HopRule::Maintenance => HopReason::Maintenance,
            HopRule::MinorStep => HopReason::MinorStep,
            HopRule::MajorStep => HopReason::MajorStep,
            HopRule::Edge { from, to } => HopReason::Edge {
                from: from.to_string(),
                to: to.to_string(),
            },
        }
    }
}

impl std::fmt::Display for HopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HopReason::Maintenance => f.write_str("maintenance release"),
            HopReason::MinorStep => f.write_str("minor step"),
            HopReason::MajorStep => f.write_str("major step"),
            HopReason::Edge { from, to } => write!(f, "catalog edge {from} → {to}"),
            HopReason::Rollback => f.write_str("rollback to the previous slot"),
        }
    }
}

/// One hop of the version path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedHop {
    /// The release the cluster runs before it.
    pub from: Version,
    /// The release it installs.
    pub to: Version,
    /// Why it is allowed.
    pub rule: HopReason,
}

/// What clients should expect over the whole plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImpactEstimate {
    /// In words, for `upgrade plan`.
    pub summary: String,
    /// Planned failovers (VIP moves).
    pub failovers: u32,
    /// Expected time the service is unreachable, milliseconds.
    pub outage_ms: u64,
    /// The fewest nodes serving at any point.
    pub min_serving: usize,
}

/// A plan: what `upgrade plan` prints and `upgrade run` executes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradePlan {
    /// The release every node runs at the end.
    pub target: Version,
    /// The strategy.
    pub strategy: Strategy,
    /// Whether this plan rolls back rather than upgrades.
    pub rollback: bool,
    /// The version path, one hop after another.
    pub hops: Vec<PlannedHop>,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// The expected client impact.
    pub impact: ImpactEstimate,
    /// The nodes that had preemption on when the plan was made; the plan
    /// turns it back on there at the end.
    pub preempt_was_on: Vec<String>,
}

impl UpgradePlan {
    /// The step with this id.
    pub fn step(&self, id: StepId) -> Option<&Step> {
        self.steps.iter().find(|s| s.id == id)
    }
}

impl std::fmt::Display for UpgradePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.rollback {
            "roll back"
        } else {
            "upgrade"
        };
        writeln!(f, "{verb} to {} with {}", self.target, self.strategy)?;
        writeln!(f, "path:")?;
        for hop in &self.hops {
            writeln!(f, "  {} → {}  ({})", hop.from, hop.to, hop.rule)?;
        }
        writeln!(f, "steps:")?;
        for step in &self.steps {
            write!(f, "  {:>2}. {step}", step.id)?;
            if step.impact != ClientImpact::None {
                write!(f, "  [impact: {}]", step.impact)?;
            }
            writeln!(f)?;
            if let Some(note) = &step.note {
                writeln!(f, "      note: {note}")?;
            }
        }
        writeln!(f, "expected client impact: {}", self.impact.summary)
    }
}

/// Plans the upgrade of `cluster` to `target` along `catalog`'s rules.
pub fn plan(
    cluster: &ClusterState,
    target: &Version,
    catalog: &Catalog,
    strategy: Strategy,
    options: PlanOptions,
) -> Result<UpgradePlan, PlanError> {
    check_common(cluster, strategy, true)?;
    let versions = cluster.versions();
    if versions.iter().all(|v| v == target) {
        return Err(PlanError::AlreadyAtTarget { version: *target });
    }
    let mixed = || PlanError::MixedVersions {
        versions: versions.clone(),
        target: *target,
    };
    let lowest = *versions.first().ok_or(PlanError::NoNodes)?;
    if versions.len() > 2 {
        return Err(mixed());
    }
    let path = catalog.plan(&lowest, target)?;
    // Two releases running is fine only mid-hop: the newer must be where
    // the first hop lands, so the cluster still never runs three.
    if let Some(newer) = versions.get(1)
        && path.hops.first().map(|h| h.to) != Some(*newer)
    {
        return Err(mixed());
    }
    if cluster.sync_clean == Some(false) {
        return Err(PlanError::SyncNotClean);
    }
    let hops: Vec<PlannedHop> = path
        .hops
        .iter()
        .map(|h| PlannedHop {
            from: h.from,
            to: h.to,
            rule: h.rule.into(),
        })
        .collect();
    for hop in &hops {
        for node in cluster.nodes.iter().filter(|n| n.running < hop.to) {
            match node.image(&hop.to) {
                None => {
                    return Err(PlanError::ImageMissing {
                        node: node.name.clone(),
                        version: hop.to,
                    });
                }
                Some(image) if !image.verified => {
                    return Err(PlanError::ImageUnverified {
                        node: node.name.clone(),
                        version: hop.to,
                    });
                }
                Some(_) => {}
            }
        }
    }
    Planner::new(cluster, strategy, options, false).build(hops, *target)
}

/// Plans a rollback of `cluster` to `to`, the release in each upgraded
/// node's previous slot: standbys first, then a switchover, then the old
/// active (seed 003, step 7).
pub fn plan_rollback(
    cluster: &ClusterState,
    to: &Version,
    strategy: Strategy,
    options: PlanOptions,
) -> Result<UpgradePlan, PlanError> {
    if cluster.nodes.iter().all(|n| n.running == *to) {
        return Err(PlanError::AlreadyAtTarget { version: *to });
    }
    check_common(cluster, strategy, true)?;
    rollback_plan(cluster, to, strategy, options, Restore::from(cluster))
}

/// What a rollback puts back as it was before the upgrade began.
#[derive(Debug, Clone)]
pub(crate) struct Restore {
    /// The nodes that had preemption on.
    pub preempt_was_on: Vec<String>,
    /// Each failover group's holder.
    pub groups_home: Vec<(GroupId, String)>,
}

impl From<&ClusterState> for Restore {
    fn from(cluster: &ClusterState) -> Self {
        Restore {
            preempt_was_on: cluster
                .nodes
                .iter()
                .filter(|n| n.preempt)
                .map(|n| n.name.clone())
                .collect(),
            groups_home: cluster
                .groups
                .iter()
                .filter_map(|g| cluster.holder(*g).map(|n| (*g, n.name.clone())))
                .collect(),
        }
    }
}

/// The rollback of a run: like [`plan_rollback`], but from a cluster that
/// may be unhealthy (the failed image is why) or already back on `to` with
/// only tidying left (listeners to resume, nodes to reconnect, groups and
/// preemption to give back).
pub(crate) fn rollback_plan(
    cluster: &ClusterState,
    to: &Version,
    strategy: Strategy,
    options: PlanOptions,
    restore: Restore,
) -> Result<UpgradePlan, PlanError> {
    let versions = cluster.versions();
    let newer: Vec<Version> = versions.iter().copied().filter(|v| v != to).collect();
    let from = match newer[..] {
        [] => *to,
        [from] => from,
        _ => {
            return Err(PlanError::MixedVersions {
                versions,
                target: *to,
            });
        }
    };
    for node in cluster.nodes.iter().filter(|n| n.running != *to) {
        let good = node
            .other_slot
            .is_some_and(|s| s.version == *to && s.state == SlotStatus::Good);
        if !good {
            return Err(PlanError::NoRollbackImage {
                node: node.name.clone(),
                version: *to,
            });
        }
    }
    let hop = PlannedHop {
        from,
        to: *to,
        rule: HopReason::Rollback,
    };
    let mut planner = Planner::new(cluster, strategy, options, true);
    planner.restore = restore;
    planner.build(vec![hop], *to)
}

/// One wave of a fleet rollout (`run::waves`): `hop` for the nodes of
/// `scope` only, with the refusals of a fresh plan (every node healthy,
/// only the hop's two releases running, the images there).
pub(crate) fn plan_wave(
    cluster: &ClusterState,
    hop: &PlannedHop,
    strategy: Strategy,
    options: PlanOptions,
    scope: WaveScope,
) -> Result<UpgradePlan, PlanError> {
    check_common(cluster, strategy, true)?;
    let versions = cluster.versions();
    if versions.iter().any(|v| *v != hop.from && *v != hop.to) {
        return Err(PlanError::MixedVersions {
            versions,
            target: hop.to,
        });
    }
    if let Some(missing) = crate::step::missing_image(cluster, &[hop.to]) {
        return Err(PlanError::Replan { reason: missing });
    }
    let mut planner = Planner::new(cluster, strategy, options, false);
    planner.scope = Some(scope);
    planner.build(vec![hop.clone()], hop.to)
}

/// The revert a stopped fleet rollout orders: exactly `nodes`, back from
/// `hop.to` to `hop.from` (each boots its previous slot), one at a time in
/// the planner's rank, which is the rollout's order: standbys first, the
/// primary last. Nodes the rollout did not name (those that failed fell
/// back by themselves) are left alone.
pub(crate) fn revert_wave(
    cluster: &ClusterState,
    hop: &PlannedHop,
    strategy: Strategy,
    options: PlanOptions,
    nodes: Vec<String>,
) -> Result<UpgradePlan, PlanError> {
    for node in cluster
        .nodes
        .iter()
        .filter(|n| nodes.contains(&n.name) && n.running != hop.from)
    {
        let good = node
            .other_slot
            .is_some_and(|s| s.version == hop.from && s.state == SlotStatus::Good);
        if !good {
            return Err(PlanError::NoRollbackImage {
                node: node.name.clone(),
                version: hop.from,
            });
        }
    }
    let back = PlannedHop {
        from: hop.to,
        to: hop.from,
        rule: HopReason::Rollback,
    };
    let strategy = match strategy {
        Strategy::Rolling { .. } => Strategy::Rolling { batch: 1 },
        other => other,
    };
    let mut planner = Planner::new(cluster, strategy, options, true);
    planner.scope = Some(WaveScope {
        nodes,
        prologue: false,
        epilogue: true,
    });
    planner.build(vec![back], hop.from)
}

/// A new plan for the rest of a run whose roles moved under it: a node the
/// plan was about to restart serves now, because the node serving before
/// failed (a kill -9 of the coordinating active, seed 003's "active fails
/// during the upgrade"). The old plan's order (standby first, the active
/// last) no longer fits, but its hops do: this plans the hops from
/// `from_hop` on against the cluster as it is now, with the refusals of a
/// fresh plan (every node healthy, one active, the images there), and gives
/// back at the end what the old plan would have (preemption where it was
/// on before the run began, groups to their first holders).
pub(crate) fn replan(
    cluster: &ClusterState,
    old: &UpgradePlan,
    from_hop: usize,
) -> Result<UpgradePlan, PlanError> {
    check_common(cluster, old.strategy, true)?;
    let hops: Vec<PlannedHop> = old.hops.iter().skip(from_hop).cloned().collect();
    let Some(first) = hops.first() else {
        return Err(PlanError::AlreadyAtTarget {
            version: old.target,
        });
    };
    // Only the two ends of the hop under way may run, as in any plan.
    let versions = cluster.versions();
    if versions.iter().any(|v| *v != first.from && *v != first.to) {
        return Err(PlanError::MixedVersions {
            versions,
            target: old.target,
        });
    }
    if let Some(missing) = crate::step::missing_image(cluster, &[first.to]) {
        return Err(PlanError::Replan { reason: missing });
    }
    let mut options = PlanOptions::default();
    for step in &old.steps {
        match &step.kind {
            StepKind::Boot { holdoff_secs, .. } => {
                options.boot_timeout_ms = step.timeout_ms;
                if let Some(secs) = holdoff_secs {
                    options.holdoff_secs = *secs;
                }
            }
            StepKind::WaitReady { .. } => options.ready_timeout_ms = step.timeout_ms,
            StepKind::SyncReport => options.step_timeout_ms = step.timeout_ms,
            _ => {}
        }
    }
    let mut planner = Planner::new(cluster, old.strategy, options, false);
    planner.restore = Restore {
        preempt_was_on: old.preempt_was_on.clone(),
        groups_home: old
            .steps
            .iter()
            .find_map(|s| match &s.kind {
                StepKind::RestoreGroups { holders } => Some(holders.clone()),
                _ => None,
            })
            .unwrap_or_else(|| Restore::from(cluster).groups_home),
    };
    planner.build(hops, old.target)
}

/// The refusals every plan shares: mode, strategy, health.
fn check_common(
    cluster: &ClusterState,
    strategy: Strategy,
    check_health: bool,
) -> Result<(), PlanError> {
    if cluster.nodes.is_empty() {
        return Err(PlanError::NoNodes);
    }
    if !strategy.fits(cluster.mode) {
        return Err(PlanError::StrategyNotForMode {
            strategy,
            mode: ModeName(cluster.mode),
            suggested: Strategy::default_for(cluster.mode),
        });
    }
    if let Strategy::Rolling { batch: 0 } = strategy {
        return Err(PlanError::ZeroBatch);
    }
    if let Some(node) = cluster.nodes.iter().find(|n| check_health && !n.healthy) {
        return Err(PlanError::Unhealthy {
            node: node.name.clone(),
        });
    }
    let servers = cluster
        .nodes
        .iter()
        .filter(|n| match cluster.mode {
            Mode::ConfigOnly => n.configured != ConfiguredRole::Off,
            _ => n.configured.serves_groups(),
        })
        .count();
    if servers < 2 {
        return Err(PlanError::TooFewNodes {
            strategy,
            needed: 2,
            have: servers,
        });
    }
    match cluster.mode {
        Mode::ActivePassive => {
            let actives = cluster.actives();
            if actives.len() != 1 {
                return Err(PlanError::ActiveNotUnique {
                    found: actives.iter().map(|n| n.name.clone()).collect(),
                });
            }
            if strategy == Strategy::Holdoff {
                let primary = cluster.primary().ok_or(PlanError::NoPrimary)?;
                if primary.effective != EffectiveRole::Active {
                    return Err(PlanError::PrimaryNotActive {
                        primary: primary.name.clone(),
                        active: actives.first().map(|n| n.name.clone()).unwrap_or_default(),
                    });
                }
            }
        }
        Mode::ActiveActive => {
            if let Some(group) = cluster
                .groups
                .iter()
                .find(|g| cluster.holder(**g).is_none())
            {
                return Err(PlanError::GroupUnheld { group: group.0 });
            }
        }
        Mode::ConfigOnly => {}
    }
    Ok(())
}
