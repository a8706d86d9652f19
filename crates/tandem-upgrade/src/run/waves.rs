//! A run driven by a fleet rollout (`tandem upgrade run --canary 1
//! --batch 10% --max-failed 2 --auto-revert …`): the [`FleetRollout`]
//! decides which nodes go when; the step machine carries out one wave at a
//! time as an ordinary plan of that wave's nodes only.
//!
//! ```text
//!  FleetRollout::next ──Upgrade{wave}──► plan_wave(view, hop, wave's nodes) ──► forward track
//!        ▲                                                                        │ steps
//!        │   NodeHealthy / NodeFailed (what the view shows of each node)          ▼
//!        └──────────────────────────────────────────────────── the track is through
//!  Revert{nodes} ──► revert_wave(exactly those nodes, standbys first) ──► NodeReverted
//!  Paused · Wait ──► Action::Wait (only `upgrade resume`, or the time, moves it)
//!  Done (more hops: a new rollout for the next hop) · Stopped · Reverted ──► the run ends
//! ```
//!
//! Why it is built so:
//! - The rollout is asked for its next move only between waves, once
//!   every node of the wave has an outcome. Its own health deadline is
//!   then never what fails a node: the wave's plan carries
//!   `--health-deadline` as its boot and ready timeouts, so a slow node
//!   fails in the step machine, where the run also knows to resume its
//!   listener before anything else happens.
//! - A node that does not come up healthy fails alone: its slot already
//!   fell back (`tandem-image`), so instead of the whole-hop rollback of a
//!   run without a rollout, the wave's listeners are resumed and the
//!   rollout counts one failure against `--max-failed`. Only the rollout's
//!   `Stopped` or `Revert` ends the run early.
//! - A hop starts only once the one before is through on every node: a
//!   node that failed within the budget keeps the next hop from starting
//!   (the cluster never runs three releases), and the run stops saying so.
//! - Only the rolling strategy (config-only clusters) goes in waves for
//!   now: its batches are already waves. Switchover and holdoff move the
//!   service between two nodes, where a canary means nothing new.

use serde::{Deserialize, Serialize};

use super::{RunStatus, StepState, Track, UpgradeRun};
use crate::cluster::ClusterState;
use crate::error::PlanError;
use crate::fleet::{
    FleetAction, FleetObservation, FleetRollout, RolloutPolicy, RolloutStatus, WaveKind, millis,
};
use crate::plan::{
    ImpactEstimate, PlanOptions, PlannedHop, Strategy, UpgradePlan, WaveScope, plan_wave,
    revert_wave,
};
use crate::step::{Action, ClientImpact, Step, StepId, StepKind};

/// What the run's current track (its `forward`) is doing for the rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "work")]
pub enum WaveWork {
    /// Upgrading one wave of the hop's rollout.
    Upgrade {
        /// The wave's index in the rollout.
        wave: usize,
        /// What the wave is for.
        kind: WaveKind,
        /// Its nodes.
        nodes: Vec<String>,
    },
    /// A node of the wave did not come up healthy: the wave's listeners
    /// resume first; then these outcomes go to the rollout.
    Settle {
        /// What each node of the wave came to.
        outcomes: Vec<FleetObservation>,
    },
    /// Reverting the nodes the rollout named, in its order.
    Revert {
        /// The nodes.
        nodes: Vec<String>,
    },
}

/// The fleet side of a run: the rollout of the hop under way and what the
/// run's track is doing for it. Journaled with the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetRun {
    /// The operator's knobs.
    pub policy: RolloutPolicy,
    /// The strategy every wave's plan uses (rolling).
    pub strategy: Strategy,
    /// The timeouts of the waves' plans (boots and readiness take
    /// `--health-deadline`).
    pub options: PlanOptions,
    /// The whole path, one rollout per hop.
    pub hops: Vec<PlannedHop>,
    /// The index in `hops` of the hop under way.
    pub hop: usize,
    /// The rollout of that hop.
    pub rollout: FleetRollout,
    /// What the current track does; `None` between waves.
    pub work: Option<WaveWork>,
    /// Steps settled in the tracks before the current one, so a copy of
    /// the journal a wave further on counts as ahead.
    pub settled_before: usize,
    /// The tracks of the waves before, oldest first, for the record.
    #[serde(default)]
    pub earlier: Vec<Track>,
    /// The rollout's summary once every hop is through.
    #[serde(default)]
    pub outcome: Option<String>,
}

impl UpgradeRun {
    /// Starts a run of `plan` in waves under `policy`: `plan` is the
    /// whole-cluster plan the operator saw (its refusals already passed);
    /// each wave gets its own plan, with `options`' timeouts and the
    /// policy's health deadline for boots and readiness.
    ///
    /// Refuses a strategy other than rolling, and a rollback.
    pub fn in_waves(
        plan: UpgradePlan,
        cluster: ClusterState,
        policy: RolloutPolicy,
        options: PlanOptions,
    ) -> Result<UpgradeRun, PlanError> {
        if !matches!(plan.strategy, Strategy::Rolling { .. }) || plan.rollback {
            return Err(PlanError::RolloutNeedsRolling {
                strategy: plan.strategy,
            });
        }
        let rollout = FleetRollout::plan(&cluster, policy)?;
        let deadline_ms = millis(policy.health_deadline);
        let options = PlanOptions {
            boot_timeout_ms: deadline_ms,
            ready_timeout_ms: deadline_ms,
            ..options
        };
        let fleet = FleetRun {
            policy,
            strategy: plan.strategy,
            options,
            hops: plan.hops.clone(),
            hop: 0,
            rollout,
            work: None,
            settled_before: 0,
            earlier: Vec::new(),
            outcome: None,
        };
        // The first track is the plan without its steps: it names the
        // target and the path until the first wave's plan replaces it.
        let mut first = plan;
        first.steps.clear();
        let mut run = UpgradeRun::new(first, cluster);
        run.fleet = Some(Box::new(fleet));
        Ok(run)
    }

    /// The rollout of the hop under way, when the run goes in waves.
    pub fn rollout(&self) -> Option<&FleetRollout> {
        self.fleet.as_ref().map(|f| &f.rollout)
    }

    /// Whether the run waits for `tandem upgrade resume` after its canaries.
    pub fn paused(&self) -> bool {
        !self.status.is_finished()
            && self
                .rollout()
                .is_some_and(|r| *r.status() == RolloutStatus::Paused)
    }

    /// Whether `tandem upgrade resume` has something to act on: the
    /// rollout paused after its canaries, or auto-promotion still waiting
    /// on them (a resume promotes them early).
    pub fn resumable(&self) -> bool {
        self.paused()
            || !self.status.is_finished()
                && self.rollout().is_some_and(|r| {
                    r.policy().auto_promote.is_some()
                        && r.waves()
                            .get(r.current_wave())
                            .is_some_and(|w| w.kind == WaveKind::Canary)
                })
    }

    /// `upgrade resume`: the rollout goes on after its canaries.
    pub(super) fn resume_rollout(&mut self, now_ms: u64) {
        if let Some(fleet) = self.fleet.as_mut() {
            fleet.rollout.observe(now_ms, FleetObservation::Resume);
        }
    }

    /// [`UpgradeRun::next`] for a run in waves.
    pub(super) fn next_in_waves(&mut self, now_ms: u64) -> Vec<Action> {
        // Each turn returns, or settles a wave, plans one, or starts a
        // hop: there are never more of those in one call than nodes and
        // hops, so the bound is only a guard.
        let turns =
            4 * (self.view.nodes.len() + self.fleet.as_ref().map_or(0, |f| f.hops.len())) + 16;
        for _ in 0..turns {
            if let Some(action) = self.finished_action() {
                return vec![action];
            }
            let Some(fleet) = self.fleet.as_mut() else {
                return self.next_step(now_ms);
            };
            if fleet.work.is_some() {
                let actions = self.next_step(now_ms);
                if !actions.is_empty() || self.status.is_finished() {
                    if actions.is_empty() {
                        continue;
                    }
                    return actions;
                }
                if self.track_through() {
                    if self.status == RunStatus::Aborting {
                        // The wave stopped at a safe point: ask the
                        // rollout for nothing more.
                        self.finish();
                    } else {
                        self.settle_work(now_ms);
                    }
                }
                continue;
            }
            if self.status == RunStatus::Aborting {
                self.finish();
                continue;
            }
            let Some(order) = fleet.rollout.next(now_ms).into_iter().next() else {
                return vec![];
            };
            if let Some(actions) = self.carry_out(order) {
                return actions;
            }
        }
        vec![self.wait(
            None,
            "the rollout to move (it did not within one turn: a bug, report it)".to_string(),
        )]
    }

    /// Turns one order of the rollout into the run's next track or its
    /// end; `Some` when there is nothing to do but wait.
    fn carry_out(&mut self, order: FleetAction) -> Option<Vec<Action>> {
        let fleet = self.fleet.as_ref()?;
        let hop = fleet.hops.get(fleet.hop)?.clone();
        match order {
            FleetAction::Upgrade { wave, kind, nodes } => {
                let waves = fleet.rollout.waves().len();
                let scope = WaveScope {
                    nodes: nodes.clone(),
                    prologue: fleet.hop == 0 && wave == 0,
                    epilogue: fleet.hop + 1 == fleet.hops.len() && wave + 1 == waves,
                };
                let strategy = Strategy::Rolling {
                    batch: nodes.len().max(1),
                };
                match plan_wave(&self.view, &hop, strategy, fleet.options, scope) {
                    Ok(plan) => self.start_work(plan, WaveWork::Upgrade { wave, kind, nodes }),
                    Err(e) => {
                        self.status = RunStatus::Stopped {
                            message: format!(
                                "wave {} of {waves} ({kind}: {}) of the hop to {} cannot be planned: {e}; {}; fix the cause and run `tandem upgrade run` again to go on, or `tandem upgrade rollback`",
                                wave + 1,
                                nodes.join(", "),
                                hop.to,
                                self.versions_text()
                            ),
                        };
                    }
                }
                None
            }
            FleetAction::Revert { nodes } => {
                match revert_wave(
                    &self.view,
                    &hop,
                    fleet.strategy,
                    fleet.options,
                    nodes.clone(),
                ) {
                    Ok(plan) => self.start_work(plan, WaveWork::Revert { nodes }),
                    Err(e) => {
                        self.status = RunStatus::Stopped {
                            message: format!(
                                "the rollout stopped and its nodes ({}) are to be reverted, but the revert cannot be planned: {e}; {}; run `tandem upgrade rollback --to {}`",
                                nodes.join(", "),
                                self.versions_text(),
                                hop.from
                            ),
                        };
                    }
                }
                None
            }
            FleetAction::Wait {
                until_ms,
                waiting_for,
            } => Some(vec![self.wait(until_ms, waiting_for)]),
            FleetAction::Paused { message } => Some(vec![self.wait(None, message)]),
            FleetAction::Done { summary } => {
                self.next_hop(summary);
                None
            }
            FleetAction::Stopped { message } => {
                self.status = RunStatus::Stopped {
                    message: format!("{message}; {}", self.versions_text()),
                };
                None
            }
            FleetAction::Reverted { message } => {
                self.status = RunStatus::RolledBack { reason: message };
                None
            }
        }
    }

    /// The hop's rollout is through: the next hop's rollout starts, or the
    /// run is done.
    fn next_hop(&mut self, summary: String) {
        let versions = self.versions_text();
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        let Some(hop) = fleet.hops.get(fleet.hop).cloned() else {
            return;
        };
        if fleet.hop + 1 >= fleet.hops.len() {
            fleet.outcome = Some(summary);
            self.status = RunStatus::Done;
            return;
        }
        if fleet.rollout.failed() > 0 {
            self.status = RunStatus::Stopped {
                message: format!(
                    "the hop to {}: {summary}; the next hop starts only once every node runs {}: {versions}; fix the failed node(s) and run `tandem upgrade run` again",
                    hop.to, hop.to
                ),
            };
            return;
        }
        match FleetRollout::plan(&self.view, fleet.policy) {
            Ok(rollout) => {
                fleet.hop += 1;
                fleet.rollout = rollout;
            }
            Err(e) => {
                self.status = RunStatus::Stopped {
                    message: format!(
                        "every node runs {}, but the waves of the next hop cannot be planned: {e}; {versions}; run `tandem upgrade run` again",
                        hop.to
                    ),
                };
            }
        }
    }

    /// Makes `plan` the run's track, keeping the one before for the record.
    fn start_work(&mut self, plan: UpgradePlan, work: WaveWork) {
        let old = std::mem::replace(&mut self.forward, Track::new(plan));
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        fleet.settled_before += old
            .records
            .iter()
            .filter(|r| r.state != StepState::Pending)
            .count();
        if !old.plan.steps.is_empty() {
            fleet.earlier.push(old);
        }
        fleet.work = Some(work);
    }

    /// Every step of the current track is done or skipped.
    fn track_through(&self) -> bool {
        self.forward
            .records
            .iter()
            .all(|r| matches!(r.state, StepState::Done | StepState::Skipped))
    }

    /// The current track is through: what it did goes to the rollout.
    fn settle_work(&mut self, now_ms: u64) {
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        let Some(hop) = fleet.hops.get(fleet.hop).cloned() else {
            return;
        };
        let outcomes = match fleet.work.take() {
            Some(WaveWork::Upgrade { nodes, .. }) => outcomes(
                &self.view,
                &hop,
                &nodes,
                "not healthy on the release after its wave",
            ),
            Some(WaveWork::Settle { outcomes }) => outcomes,
            Some(WaveWork::Revert { nodes }) => {
                let behind: Vec<&String> = nodes
                    .iter()
                    .filter(|n| !self.view.node(n).is_some_and(|n| n.runs(&hop.from)))
                    .collect();
                if !behind.is_empty() {
                    let behind = behind
                        .iter()
                        .map(|n| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ");
                    self.status = RunStatus::Stopped {
                        message: format!(
                            "the revert's plan ended but {behind} do(es) not run {} healthy; {}; repair the node(s) and run `tandem upgrade rollback --to {}`",
                            hop.from,
                            self.versions_text(),
                            hop.from
                        ),
                    };
                    return;
                }
                nodes
                    .into_iter()
                    .map(|node| FleetObservation::NodeReverted { node })
                    .collect()
            }
            None => Vec::new(),
        };
        for outcome in outcomes {
            fleet.rollout.observe(now_ms, outcome);
        }
    }

    /// Called when step `i` of the current track failed with `reason`.
    /// In an upgrade wave, a boot or readiness step failing is the
    /// failure of the nodes not healthy on the release: their outcomes
    /// are kept, the wave's listeners resume, and `true` tells
    /// [`UpgradeRun::fail`] the run goes on. Any other failure is the
    /// run's, as without a rollout.
    pub(super) fn wave_node_failed(&mut self, i: usize, reason: &str) -> bool {
        let Some(fleet) = self.fleet.as_ref() else {
            return false;
        };
        let Some(WaveWork::Upgrade { nodes, .. }) = &fleet.work else {
            return false;
        };
        let health_step = self.forward.plan.steps.get(i).is_some_and(|s| {
            matches!(
                s.kind,
                StepKind::Boot {
                    rollback: false,
                    ..
                } | StepKind::WaitReady { .. }
            )
        });
        let Some(hop) = fleet.hops.get(fleet.hop) else {
            return false;
        };
        if !health_step {
            return false;
        }
        let outcomes = outcomes(&self.view, hop, nodes, reason);
        let settle = Step {
            id: StepId(1),
            hop: Some(0),
            kind: StepKind::Resume,
            nodes: nodes.clone(),
            precondition: "every boot of the wave ended".to_string(),
            impact: ClientImpact::None,
            safe_point: true,
            finally: false,
            timeout_ms: fleet.options.step_timeout_ms,
            note: Some(
                "a node that failed serves again on the release its slot fell back to".to_string(),
            ),
        };
        let plan = UpgradePlan {
            target: hop.to,
            strategy: fleet.strategy,
            rollback: false,
            hops: vec![hop.clone()],
            steps: vec![settle],
            impact: ImpactEstimate {
                summary: "none: the wave's listeners resume".to_string(),
                failovers: 0,
                outage_ms: 0,
                min_serving: self.view.serving(),
            },
            preempt_was_on: Vec::new(),
        };
        self.start_work(plan, WaveWork::Settle { outcomes });
        true
    }

    /// A wait for the rollout: until `until_ms`, or (`None`) until an
    /// observation (`upgrade resume`) moves it.
    fn wait(&self, until_ms: Option<u64>, waiting_for: String) -> Action {
        Action::Wait {
            step: self.forward.plan.steps.last().map_or(StepId(0), |s| s.id),
            until_ms: until_ms.unwrap_or(u64::MAX),
            waiting_for,
        }
    }
}

/// What each of `nodes` came to in the hop, as `view` shows it: healthy on
/// the hop's release, or failed (with the slot's fallback when there was
/// one, `reason` otherwise). The healthy ones come first, so a rollout
/// stopped by the failures counts them as upgraded.
fn outcomes(
    view: &ClusterState,
    hop: &PlannedHop,
    nodes: &[String],
    reason: &str,
) -> Vec<FleetObservation> {
    let (healthy, failed): (Vec<&String>, Vec<&String>) = nodes
        .iter()
        .partition(|n| view.node(n).is_some_and(|n| n.runs(&hop.to)));
    let healthy = healthy
        .into_iter()
        .map(|node| FleetObservation::NodeHealthy { node: node.clone() });
    let failed = failed.into_iter().map(|name| {
        let reason = match view.node(name) {
            Some(node) if node.boot_failed(&hop.to) => format!(
                "failed its health check on {} and fell back to {}",
                hop.to, node.running
            ),
            _ => reason.to_string(),
        };
        FleetObservation::NodeFailed {
            node: name.clone(),
            reason,
        }
    });
    healthy.chain(failed).collect()
}
