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

use serde::{Deserialize, Serialize};
use tandem_core::{ConfiguredRole, EffectiveRole, GroupId, Mode};
use tandem_version::{Catalog, HopRule, Version};

use crate::cluster::{ClusterState, ConfigLink, Listener, NodeState, SlotStatus};
use crate::error::{ModeName, PlanError};
use crate::step::{ClientImpact, Step, StepId, StepKind};

/// How the cluster is taken from one release to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "strategy")]
pub enum Strategy {
    /// ASA / Huawei: upgrade the standby, switch over, upgrade the old
    /// active. Default for `active-passive`.
    Switchover,
    /// FortiMail active-passive: secondaries first, then the primary
    /// restarts under a holdoff; roles never move.
    Holdoff,
    /// ESA clusters / FortiMail config-only: node by node (or `batch` at a
    /// time), each disconnected, drained, upgraded, resumed. Default for
    /// `config-only`.
    Rolling {
        /// Nodes upgraded at once; capped so one node always serves.
        batch: usize,
    },
    /// ASA failover groups: every group to one node, upgrade the other(s),
    /// move them over, upgrade the first, groups back. Default for
    /// `active-active`.
    ActiveActive,
}

impl Strategy {
    /// The strategy a mode uses when the operator names none.
    pub fn default_for(mode: Mode) -> Strategy {
        match mode {
            Mode::ActivePassive => Strategy::Switchover,
            Mode::ConfigOnly => Strategy::Rolling { batch: 1 },
            Mode::ActiveActive => Strategy::ActiveActive,
        }
    }

    /// Whether the strategy applies to a cluster of this mode.
    pub fn fits(self, mode: Mode) -> bool {
        matches!(
            (self, mode),
            (
                Strategy::Switchover | Strategy::Holdoff,
                Mode::ActivePassive
            ) | (Strategy::Rolling { .. }, Mode::ConfigOnly)
                | (Strategy::ActiveActive, Mode::ActiveActive)
        )
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Strategy::Switchover => f.write_str("switchover"),
            Strategy::Holdoff => f.write_str("holdoff"),
            Strategy::Rolling { batch: 1 } => f.write_str("rolling"),
            Strategy::Rolling { batch } => write!(f, "rolling (batch {batch})"),
            Strategy::ActiveActive => f.write_str("active-active"),
        }
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;

    /// Parses the CLI's `--strategy` value; `rolling` means batch 1 (the
    /// CLI's `--batch` sets it apart).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "switchover" => Ok(Strategy::Switchover),
            "holdoff" => Ok(Strategy::Holdoff),
            "rolling" => Ok(Strategy::Rolling { batch: 1 }),
            "active-active" => Ok(Strategy::ActiveActive),
            other => Err(format!(
                "unknown strategy {other:?}: expected switchover, holdoff, rolling or active-active"
            )),
        }
    }
}

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

/// Builds the steps, tracking the roles the plan itself moves (who is
/// active after each switchover) so later hops start from the right node.
struct Planner<'a> {
    cluster: &'a ClusterState,
    strategy: Strategy,
    options: PlanOptions,
    rollback: bool,
    steps: Vec<Step>,
    /// The active node as the plan will have left it (active-passive).
    active: Option<String>,
    /// The releases each node runs as the plan will have left it.
    running: Vec<(String, Version)>,
    failovers: u32,
    outage_ms: u64,
    min_serving: usize,
    /// What to give back at the end: preemption, group holders.
    restore: Restore,
}

impl<'a> Planner<'a> {
    fn new(
        cluster: &'a ClusterState,
        strategy: Strategy,
        options: PlanOptions,
        rollback: bool,
    ) -> Self {
        Planner {
            cluster,
            strategy,
            options,
            rollback,
            steps: Vec::new(),
            active: cluster.actives().first().map(|n| n.name.clone()),
            running: cluster
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.running))
                .collect(),
            failovers: 0,
            outage_ms: 0,
            min_serving: cluster.serving(),
            restore: Restore::from(cluster),
        }
    }

    fn build(mut self, hops: Vec<PlannedHop>, target: Version) -> Result<UpgradePlan, PlanError> {
        let all = self.names(|_| true);
        let preempt_was_on = self.restore.preempt_was_on.clone();
        let moves_roles = matches!(self.strategy, Strategy::Switchover | Strategy::ActiveActive);

        if !self.rollback {
            self.push(None, StepKind::SyncReport, all.clone(), "none");
            self.push(
                None,
                StepKind::Preflight {
                    versions: hops.iter().map(|h| h.to).collect(),
                },
                all.clone(),
                "none",
            );
            self.push(None, StepKind::Backup, all.clone(), "none");
        }
        if moves_roles && !preempt_was_on.is_empty() {
            // Preemption would pull a group back to a node mid-upgrade
            // (seed 003, step 4).
            self.push(
                None,
                StepKind::SetPreempt { on: false },
                preempt_was_on.clone(),
                "none",
            );
        }
        for (index, hop) in hops.iter().enumerate() {
            match self.strategy {
                Strategy::Switchover => self.switchover_hop(index, hop),
                Strategy::Holdoff => self.holdoff_hop(index, hop),
                Strategy::Rolling { batch } => self.rolling_hop(index, hop, batch),
                Strategy::ActiveActive => self.active_active_hop(index, hop),
            }
        }
        if moves_roles && !preempt_was_on.is_empty() {
            self.push(
                None,
                StepKind::SetPreempt { on: true },
                preempt_was_on.clone(),
                "the upgrade is finished or stopped at a safe point",
            );
            if let Some(last) = self.steps.last_mut() {
                last.finally = true;
            }
        }
        self.push(None, StepKind::SyncReport, all, "every node on the target");

        let impact = self.estimate(&hops);
        Ok(UpgradePlan {
            target,
            strategy: self.strategy,
            rollback: self.rollback,
            hops,
            steps: self.steps,
            impact,
            preempt_was_on,
        })
    }

    /// Names of the nodes that pass `filter`, in the cluster's order.
    fn names(&self, filter: impl Fn(&NodeState) -> bool) -> Vec<String> {
        self.cluster
            .nodes
            .iter()
            .filter(|n| filter(n))
            .map(|n| n.name.clone())
            .collect()
    }

    /// What the node will run when the plan reaches this point.
    fn running(&self, name: &str) -> Option<Version> {
        self.running
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    /// The nodes that still need `hop`, least important first: config-only
    /// nodes, then by rank (secondary before primary, lower priority
    /// first), the way seed 000 puts secondaries before the primary.
    fn needing(&self, hop: &PlannedHop) -> Vec<&'a NodeState> {
        let mut nodes: Vec<&NodeState> = self
            .cluster
            .nodes
            .iter()
            // A hop from a release to itself (a rollback with nothing
            // left to roll back) needs no node.
            .filter(|n| hop.from != hop.to && self.running(&n.name) == Some(hop.from))
            .collect();
        nodes.sort_by_key(|n| rank(n));
        nodes
    }

    fn push(&mut self, hop: Option<usize>, kind: StepKind, nodes: Vec<String>, pre: &str) {
        let timeout_ms = match kind {
            StepKind::Boot { .. } => self.options.boot_timeout_ms,
            StepKind::WaitReady { .. } | StepKind::CheckService { .. } => {
                self.options.ready_timeout_ms
            }
            _ => self.options.step_timeout_ms,
        };
        // Steps that leave every node serving or ready in its role.
        let safe_point = matches!(
            kind,
            StepKind::SyncReport
                | StepKind::Preflight { .. }
                | StepKind::Backup
                | StepKind::SetPreempt { .. }
                | StepKind::Install { .. }
                | StepKind::WaitReady { .. }
                | StepKind::CheckService { .. }
                | StepKind::Resume
                | StepKind::Reconnect { .. }
                | StepKind::RestoreGroups { .. }
        );
        let id = StepId(u32::try_from(self.steps.len() + 1).unwrap_or(u32::MAX));
        self.steps.push(Step {
            id,
            hop,
            kind,
            nodes,
            precondition: pre.to_string(),
            impact: ClientImpact::None,
            safe_point,
            finally: false,
            timeout_ms,
            note: None,
        });
    }

    /// Sets the impact (and note) of the last step pushed.
    fn last(&mut self, impact: ClientImpact, note: Option<String>) {
        if let Some(step) = self.steps.last_mut() {
            step.impact = impact;
            step.note = note;
        }
    }

    /// Installs the hop's image on every node that needs it (an upgrade),
    /// or nothing (a rollback boots the slot already there).
    fn install(&mut self, index: usize, hop: &PlannedHop, nodes: &[&NodeState]) {
        if !self.rollback && !nodes.is_empty() {
            self.push(
                Some(index),
                StepKind::Install { version: hop.to },
                nodes.iter().map(|n| n.name.clone()).collect(),
                "the image is verified on the node",
            );
        }
    }

    fn boot(&mut self, index: usize, hop: &PlannedHop, nodes: Vec<String>, holdoff: bool) {
        let pre = if holdoff {
            "every other node ready and in sync"
        } else {
            "the node holds no VIP (not active)"
        };
        self.push(
            Some(index),
            StepKind::Boot {
                version: hop.to,
                rollback: self.rollback,
                holdoff_secs: holdoff.then_some(self.options.holdoff_secs),
            },
            nodes.clone(),
            pre,
        );
        for name in nodes {
            if let Some(entry) = self.running.iter_mut().find(|(n, _)| *n == name) {
                entry.1 = hop.to;
            }
        }
    }

    fn wait_ready(&mut self, index: usize, hop: &PlannedHop, nodes: Vec<String>) {
        self.push(
            Some(index),
            StepKind::WaitReady { version: hop.to },
            nodes,
            "the node booted",
        );
    }

    /// ASA's reload-standby and Huawei steps 5–7.
    fn switchover_hop(&mut self, index: usize, hop: &PlannedHop) {
        let needing = self.needing(hop);
        self.install(index, hop, &needing);
        let active = self.active.clone();
        let standbys: Vec<&NodeState> = needing
            .iter()
            .copied()
            .filter(|n| Some(&n.name) != active.as_ref())
            .collect();
        for node in &standbys {
            self.boot(index, hop, vec![node.name.clone()], false);
            self.wait_ready(index, hop, vec![node.name.clone()]);
        }
        let Some(active) = active else { return };
        if !needing.iter().any(|n| n.name == active) {
            return;
        }
        // The core hands over to the best-ranked eligible peer; every
        // group-serving peer runs the hop's release by now.
        let successor = self
            .cluster
            .nodes
            .iter()
            .filter(|n| n.name != active && n.configured.serves_groups())
            .max_by_key(|n| (n.configured == ConfiguredRole::Primary, n.priority, &n.name))
            .map(|n| n.name.clone())
            .unwrap_or_default();
        self.push(
            Some(index),
            StepKind::Switchover { version: hop.to },
            vec![active.clone(), successor.clone()],
            "a standby on the hop's release is ready and in sync",
        );
        self.last(
            ClientImpact::Failover {
                from: active.clone(),
            },
            None,
        );
        self.failovers += 1;
        self.push(
            Some(index),
            StepKind::CheckService { version: hop.to },
            vec![successor.clone()],
            "the switchover is done",
        );
        self.boot(index, hop, vec![active.clone()], false);
        self.wait_ready(index, hop, vec![active]);
        self.active = Some(successor);
    }

    /// FortiMail (seed 000): secondaries first, then the primary under a
    /// holdoff; roles never move.
    fn holdoff_hop(&mut self, index: usize, hop: &PlannedHop) {
        let needing = self.needing(hop);
        self.install(index, hop, &needing);
        let active = self.active.clone();
        for node in needing.iter().filter(|n| Some(&n.name) != active.as_ref()) {
            self.boot(index, hop, vec![node.name.clone()], false);
            self.wait_ready(index, hop, vec![node.name.clone()]);
        }
        let Some(primary) = active.filter(|a| needing.iter().any(|n| &n.name == a)) else {
            return;
        };
        self.boot(index, hop, vec![primary.clone()], true);
        let estimate_ms = self.options.restart_estimate_ms;
        self.last(
            ClientImpact::Outage {
                node: primary.clone(),
                estimate_ms,
            },
            Some(format!(
                "the secondaries are held off and do not take over: clients get no answer on the VIP while {primary} restarts"
            )),
        );
        self.outage_ms += estimate_ms;
        self.min_serving = 0;
        self.push(
            Some(index),
            StepKind::CheckService { version: hop.to },
            vec![primary],
            "the primary restarted",
        );
    }

    /// ESA (seed 002): per batch, disconnect, drain, upgrade, resume; the
    /// primary alone and last; reconnect when the versions match again.
    fn rolling_hop(&mut self, index: usize, hop: &PlannedHop, batch: usize) {
        let needing = self.needing(hop);
        self.install(index, hop, &needing);
        let total = self.cluster.nodes.len();
        // One node always keeps serving, whatever batch was asked for.
        let batch = batch.min(total.saturating_sub(1)).max(1);
        let (primary, others): (Vec<&NodeState>, Vec<&NodeState>) = needing
            .iter()
            .partition(|n| n.configured == ConfiguredRole::Primary);
        let mut batches: Vec<Vec<String>> = others
            .chunks(batch)
            .map(|c| c.iter().map(|n| n.name.clone()).collect())
            .collect();
        if !primary.is_empty() {
            batches.push(primary.iter().map(|n| n.name.clone()).collect());
        }
        let disconnected_all = needing.len();
        // A node an interrupted run left drained but already on this
        // release (it fell back by itself) serves again first.
        let drained: Vec<String> = self.names(|n| {
            n.listener == Listener::Suspended && !needing.iter().any(|m| m.name == n.name)
        });
        if !drained.is_empty() {
            self.push(Some(index), StepKind::Resume, drained, "the node is ready");
        }
        for (i, nodes) in batches.iter().enumerate() {
            let last = i + 1 == batches.len();
            let serving = total - nodes.len();
            self.min_serving = self.min_serving.min(serving);
            self.push(Some(index), StepKind::Disconnect, nodes.clone(), "none");
            self.push(
                Some(index),
                StepKind::Suspend,
                nodes.clone(),
                "another node keeps serving",
            );
            self.last(ClientImpact::ReducedCapacity { serving, of: total }, None);
            self.boot(index, hop, nodes.clone(), false);
            self.last(ClientImpact::ReducedCapacity { serving, of: total }, None);
            self.wait_ready(index, hop, nodes.clone());
            self.push(
                Some(index),
                StepKind::Resume,
                nodes.clone(),
                "the node is ready",
            );
            if !last || disconnected_all < total {
                let note = format!(
                    "stays disconnected from cluster config: the cluster still runs {} and a node only reconnects to a cluster on its own release; cluster config changes are refused until every node runs {} and reconnects",
                    hop.from, hop.to
                );
                self.last(ClientImpact::None, Some(note));
            }
        }
        // Nodes an interrupted run left disconnected reconnect too.
        let reconnect: Vec<String> = self.names(|n| {
            needing.iter().any(|m| m.name == n.name) || n.config_link == ConfigLink::Disconnected
        });
        if !reconnect.is_empty() {
            self.push(
                Some(index),
                StepKind::Reconnect { version: hop.to },
                reconnect,
                "every node runs the hop's release",
            );
        }
    }

    /// ASA active/active: groups to one node, upgrade the others, groups to
    /// an upgraded node, upgrade the first, groups back.
    fn active_active_hop(&mut self, index: usize, hop: &PlannedHop) {
        let needing = self.needing(hop);
        self.install(index, hop, &needing);
        let holders = self.restore.groups_home.clone();
        let servers: Vec<&NodeState> = needing
            .iter()
            .copied()
            .filter(|n| n.configured.serves_groups())
            .collect();
        // The best-ranked server is upgraded last, like the primary.
        let Some(last) = servers.last().map(|n| n.name.clone()) else {
            // Nothing to boot (a rollback where every node fell back by
            // itself): only the groups go home.
            self.restore_groups(index, holders);
            return;
        };
        let others: Vec<String> = needing
            .iter()
            .filter(|n| n.name != last)
            .map(|n| n.name.clone())
            .collect();
        if !others.is_empty() {
            self.move_groups(index, &last);
            for node in &others {
                self.boot(index, hop, vec![node.clone()], false);
                self.wait_ready(index, hop, vec![node.clone()]);
            }
        }
        let Some(first_upgraded) = others
            .iter()
            .rev()
            .find(|n| {
                self.cluster
                    .node(n)
                    .is_some_and(|n| n.configured.serves_groups())
            })
            .cloned()
            .or_else(|| {
                // Every other server already ran the hop's release.
                self.cluster
                    .nodes
                    .iter()
                    .find(|n| n.name != last && n.configured.serves_groups())
                    .map(|n| n.name.clone())
            })
        else {
            return;
        };
        self.move_groups(index, &first_upgraded);
        self.boot(index, hop, vec![last.clone()], false);
        self.wait_ready(index, hop, vec![last]);
        self.restore_groups(index, holders);
        self.failovers += 1;
    }

    fn restore_groups(&mut self, index: usize, holders: Vec<(GroupId, String)>) {
        let mut holder_names: Vec<String> = Vec::new();
        for (_, name) in &holders {
            if !holder_names.contains(name) {
                holder_names.push(name.clone());
            }
        }
        self.push(
            Some(index),
            StepKind::RestoreGroups { holders },
            holder_names,
            "every holder healthy",
        );
    }

    fn move_groups(&mut self, index: usize, to: &str) {
        self.push(
            Some(index),
            StepKind::MoveGroups,
            vec![to.to_string()],
            "the node is healthy and in sync",
        );
        let from = self.names(|n| n.name != to && n.configured.serves_groups());
        self.last(
            ClientImpact::Failover {
                from: from.join(", "),
            },
            None,
        );
        self.failovers += 1;
    }

    fn estimate(&self, hops: &[PlannedHop]) -> ImpactEstimate {
        let n = hops.len();
        let verb = if self.rollback { "rollback" } else { "upgrade" };
        let summary = match self.strategy {
            Strategy::Switchover | Strategy::ActiveActive => format!(
                "no outage expected: {} planned failover(s) over {n} hop(s), each to a node whose data is in sync; new connections see only the VIP move, sessions not yet synchronized may need to reconnect",
                self.failovers
            ),
            Strategy::Holdoff => format!(
                "an outage of about {} s per hop ({n} hop(s), {} s in all) while the primary restarts: the secondaries are held off and do not take over, so the VIP gets no answer until the primary is back; roles never move",
                self.options.restart_estimate_ms.div_ceil(1000),
                self.outage_ms.div_ceil(1000)
            ),
            Strategy::Rolling { .. } => format!(
                "no outage expected: capacity drops to {} of {} node(s) while a batch {verb}s; listeners drain before a node restarts, so no connection is cut",
                self.min_serving,
                self.cluster.nodes.len()
            ),
        };
        ImpactEstimate {
            summary,
            failovers: self.failovers,
            outage_ms: self.outage_ms,
            min_serving: self.min_serving,
        }
    }
}

/// Upgrade order within a hop: config-only nodes first, then secondaries,
/// then the primary; lower priority first; name breaks ties.
fn rank(node: &NodeState) -> (u8, u8, String) {
    let role = match node.configured {
        ConfiguredRole::Off | ConfiguredRole::ConfigOnly => 0,
        ConfiguredRole::Secondary => 1,
        ConfiguredRole::Primary => 2,
    };
    (role, node.priority, node.name.clone())
}
