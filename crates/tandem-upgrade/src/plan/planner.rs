//! The step layout of a plan: the [`Planner`] walks the hops and, for each,
//! lays out the strategy's order of installs, boots, switchovers, drains
//! and group moves, with each step's precondition, timeout and client
//! impact. Kept apart from the entry points in [`super`] because those
//! decide whether a plan may be made at all (the refusals), and this only
//! how its steps go once it may; the same walk serves upgrades, rollbacks,
//! replans and the waves of a fleet rollout (a [`WaveScope`]: the plan
//! touches only the wave's nodes).

use tandem_core::{ConfiguredRole, GroupId};
use tandem_version::Version;

use super::{ImpactEstimate, PlanOptions, PlannedHop, Restore, Strategy, UpgradePlan};
use crate::cluster::{ClusterState, ConfigLink, Listener, NodeState};
use crate::error::PlanError;
use crate::step::{ClientImpact, Step, StepId, StepKind};

/// Builds the steps, tracking the roles the plan itself moves (who is
/// active after each switchover) so later hops start from the right node.
pub(super) struct Planner<'a> {
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
    pub(super) restore: Restore,
    /// The nodes a wave of a fleet rollout may touch; `None`: every node.
    pub(super) scope: Option<WaveScope>,
}

/// What one wave's plan covers: its nodes, and whether it carries the
/// checks a whole-cluster plan opens and closes with. The checks run once
/// per rollout, not once per wave, so a fleet of a thousand nodes is not
/// backed up a hundred times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WaveScope {
    /// The nodes the plan may upgrade (or revert).
    pub nodes: Vec<String>,
    /// Open with the sync report, the preflight and the backups (the
    /// rollout's first wave).
    pub prologue: bool,
    /// Close with the sync report (the rollout's last wave).
    pub epilogue: bool,
}

impl<'a> Planner<'a> {
    pub(super) fn new(
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
            scope: None,
        }
    }

    pub(super) fn build(
        mut self,
        hops: Vec<PlannedHop>,
        target: Version,
    ) -> Result<UpgradePlan, PlanError> {
        let all = self.names(|_| true);
        let preempt_was_on = self.restore.preempt_was_on.clone();
        let moves_roles = matches!(self.strategy, Strategy::Switchover | Strategy::ActiveActive);

        let prologue = self.scope.as_ref().is_none_or(|s| s.prologue);
        let epilogue = self.scope.as_ref().is_none_or(|s| s.epilogue);
        if !self.rollback && prologue {
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
        if epilogue {
            self.push(None, StepKind::SyncReport, all, "every node on the target");
        }

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
            // A wave of a fleet rollout touches only its own nodes.
            .filter(|n| {
                self.scope
                    .as_ref()
                    .is_none_or(|s| s.nodes.contains(&n.name))
            })
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
        // A wave reconnects only once it leaves every node on the hop's
        // release (a node reconnects only to a cluster on its own release):
        // earlier waves stay disconnected until the last one, and a node
        // that failed and fell back keeps them so, until the operator runs
        // the upgrade again for it.
        let whole_cluster_on_hop =
            self.scope.is_none() || self.running.iter().all(|(_, v)| *v == hop.to);
        if !reconnect.is_empty() && whole_cluster_on_hop {
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
/// then the primary; lower priority first; name breaks ties. A fleet
/// rollout orders its waves by the same rank (`crate::fleet::plan_waves`).
pub(crate) fn rank(node: &NodeState) -> (u8, u8, String) {
    let role = match node.configured {
        ConfiguredRole::Off | ConfiguredRole::ConfigOnly => 0,
        ConfiguredRole::Secondary => 1,
        ConfiguredRole::Primary => 2,
    };
    (role, node.priority, node.name.clone())
}
