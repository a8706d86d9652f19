//! The step machine: an [`UpgradeRun`] is the journal of one upgrade, and
//! it says what to do next from what has been observed.
//!
//! ```text
//!            ┌──────────── Observation (node reports, acks, abort) ────┐
//!            ▼                                                          │
//!   UpgradeRun::observe ──► UpgradeRun::next(now) ──► Vec<Action> ──► agent
//!            ▲                      │                                   │
//!            │               persist the run (serde) before acting      │
//!   UpgradeRun::resume(journal, fresh cluster state)  ◄── new coordinator
//! ```
//!
//! The run is pure, like `tandem-core`'s node: time is the `now_ms` the
//! caller passes (milliseconds of the coordinator's monotonic clock), and
//! nothing happens unless the caller does it. Steps run one after another;
//! a step starts, checks its precondition against the latest observed
//! state, emits its actions once, then waits until the observed state shows
//! its effect (done), shows it cannot come (failed), or its timeout passes.
//!
//! Why it survives the coordinator: the serialized run holds the plan and
//! each step's state. A new coordinator deserializes it and calls
//! [`UpgradeRun::resume`] with a fresh cluster state; the step that was
//! running is re-derived — marked done if its effect is visible, its
//! actions emitted again otherwise (they are idempotent). Timestamps of the
//! old coordinator mean nothing on the new one (each agent's clock starts at
//! its own start), so the running step's timer restarts.
//!
//! Failure: a node whose new image fails its health check (it fell back to
//! its previous slot, or runs the new release but never turns healthy)
//! starts a rollback of the current hop, standby first ([`plan_rollback`]).
//! A failover the plan did not make (the active node died, its peer took
//! over, so the node the plan was about to restart now serves) makes the run
//! plan the rest of its hops again from the cluster as it is
//! ([`UpgradeRun::replaced`] keeps the old track). Any other failure, or an
//! abort, stops at a safe point with a message saying where the cluster is
//! and what to do.

use serde::{Deserialize, Serialize};
use tandem_version::Version;

use crate::cluster::ClusterState;
use crate::error::PlanError;
use crate::plan::{Restore, UpgradePlan, rollback_plan};
use crate::step::{Action, Failure, StepId, StepKind};

mod observation;
mod waves;
#[cfg(test)]
mod waves_tests;

use observation::apply;
pub use observation::{NodeChange, Observation};
pub use waves::{FleetRun, WaveWork};

/// Where one step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepState {
    /// Not started.
    Pending,
    /// Started: its actions may have been carried out.
    Running,
    /// Its effect was observed.
    Done,
    /// It failed; see [`StepRecord::detail`].
    Failed,
    /// Not run: the run stopped before it.
    Skipped,
}

/// The journal's entry for one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Where the step is.
    pub state: StepState,
    /// When it started, in the clock of the coordinator that started it
    /// (reset on resume).
    pub started_ms: Option<u64>,
    /// When it ended, in the clock of the coordinator that ended it.
    pub finished_ms: Option<u64>,
    /// Whether this coordinator emitted the step's actions.
    pub issued: bool,
    /// Nodes that acknowledged the step's action (backups).
    pub acks: Vec<String>,
    /// Why it failed, or what it waited for.
    pub detail: Option<String>,
}

impl StepRecord {
    fn new() -> Self {
        StepRecord {
            state: StepState::Pending,
            started_ms: None,
            finished_ms: None,
            issued: false,
            acks: Vec::new(),
            detail: None,
        }
    }
}

/// A plan and the journal of its steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Track {
    /// The plan.
    pub plan: UpgradePlan,
    /// One record per step of the plan, in order.
    pub records: Vec<StepRecord>,
}

impl Track {
    fn new(plan: UpgradePlan) -> Self {
        let records = plan.steps.iter().map(|_| StepRecord::new()).collect();
        Track { plan, records }
    }
}

/// Where the run as a whole is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "status")]
pub enum RunStatus {
    /// Upgrading.
    Running,
    /// An abort was asked for; going on to the next safe point.
    Aborting,
    /// Rolling back after an image failed its health check.
    RollingBack {
        /// What failed.
        reason: String,
    },
    /// Every node runs the target.
    Done,
    /// Rolled back; every node runs the release the failed hop started from.
    RolledBack {
        /// What failed.
        reason: String,
    },
    /// Stopped at a safe point.
    Stopped {
        /// Where, why, and what to do.
        message: String,
    },
}

impl RunStatus {
    /// Whether the run is over.
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            RunStatus::Done | RunStatus::RolledBack { .. } | RunStatus::Stopped { .. }
        )
    }
}

/// One upgrade in progress: what the journal stores and replicates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeRun {
    /// Which upgrade this is: set by whoever starts it (the agent uses its
    /// clock), so a replica of an older run never overwrites a newer one.
    #[serde(default)]
    pub id: u64,
    /// The upgrade.
    pub forward: Track,
    /// The rollback, once an image health failure started one.
    pub rollback: Option<Track>,
    /// Where the run is.
    pub status: RunStatus,
    /// The cluster as last observed (replaced on resume).
    pub view: ClusterState,
    /// Earlier forward tracks of this run, oldest first: each one was
    /// replaced by a new plan when a failover the plan did not make moved
    /// the service (see [`UpgradeRun::next`]). Kept for the record; the
    /// step that found the roles moved is marked failed with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaced: Vec<Track>,
    /// The fleet rollout driving the run (`upgrade run --canary …`): then
    /// `forward` is the plan of one wave at a time. `None`: the run is the
    /// one plan of the whole cluster, as it always was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<Box<FleetRun>>,
}

impl UpgradeRun {
    /// Starts a run of `plan` on the cluster as observed now.
    pub fn new(plan: UpgradePlan, cluster: ClusterState) -> Self {
        UpgradeRun {
            id: 0,
            forward: Track::new(plan),
            rollback: None,
            status: RunStatus::Running,
            view: cluster,
            replaced: Vec::new(),
            fleet: None,
        }
    }

    /// Takes over a run from its journal on a new coordinator: `fresh` is
    /// the cluster as this coordinator sees it now, `now_ms` its clock.
    pub fn resume(
        mut journal: UpgradeRun,
        fresh: ClusterState,
        now_ms: u64,
    ) -> Result<UpgradeRun, PlanError> {
        for track in std::iter::once(&journal.forward).chain(journal.rollback.as_ref()) {
            for step in &track.plan.steps {
                if let Some(node) = step.nodes.iter().find(|n| fresh.node(n).is_none()) {
                    return Err(PlanError::JournalNodeMissing { node: node.clone() });
                }
            }
        }
        journal.view = fresh;
        let track = journal.track_mut();
        for record in &mut track.records {
            if record.state == StepState::Running {
                // The old coordinator's clock and its "already asked" mean
                // nothing here: start the timer again, re-derive the action.
                record.started_ms = Some(now_ms);
                record.issued = false;
            }
        }
        Ok(journal)
    }

    /// How far the run has come, for choosing between two copies of the
    /// same run's journal: a finished run is furthest, a rollback is past
    /// every forward step, and within a track each settled step counts.
    /// Two coordinators may briefly overlap around a failover; the copy
    /// with more progress is the one to keep, whoever sent it last.
    pub fn progress(&self) -> (u8, usize) {
        let phase = if self.status.is_finished() {
            2
        } else if self.rollback.is_some() {
            1
        } else {
            0
        };
        let settled = self
            .current()
            .records
            .iter()
            .filter(|r| {
                matches!(
                    r.state,
                    StepState::Done | StepState::Failed | StepState::Skipped
                )
            })
            .count();
        // The waves' plans before this one count too: a copy a wave further
        // on is ahead even while its new plan has settled nothing yet.
        let earlier = self.fleet.as_ref().map_or(0, |f| f.settled_before);
        (phase, earlier + settled)
    }

    /// Whether `other` (a copy of the journal from elsewhere) should
    /// replace this one: a newer run, or the same run further on.
    pub fn superseded_by(&self, other: &UpgradeRun) -> bool {
        other.id > self.id || other.id == self.id && other.progress() > self.progress()
    }

    /// The plan being carried out now (the rollback's once one started).
    pub fn current(&self) -> &Track {
        self.rollback.as_ref().unwrap_or(&self.forward)
    }

    fn track_mut(&mut self) -> &mut Track {
        match self.rollback.as_mut() {
            Some(track) => track,
            None => &mut self.forward,
        }
    }

    /// The step running now, if any.
    pub fn running_step(&self) -> Option<StepId> {
        let track = self.current();
        track
            .records
            .iter()
            .position(|r| r.state == StepState::Running)
            .and_then(|i| track.plan.steps.get(i))
            .map(|s| s.id)
    }

    /// Takes in something the agent saw.
    pub fn observe(&mut self, now_ms: u64, observation: Observation) {
        match observation {
            Observation::Cluster(cluster) => self.view = cluster,
            Observation::Node(node) => match self.view.node_mut(&node.name) {
                Some(old) => *old = node,
                None => self.view.nodes.push(node),
            },
            Observation::NodeReports { node, change } => {
                if let Some(n) = self.view.node_mut(&node) {
                    apply(n, change);
                }
            }
            Observation::SyncReport { clean } => self.view.sync_clean = Some(clean),
            Observation::BackupTaken { node } => {
                if let Some(i) = self.running_index() {
                    let track = self.track_mut();
                    let is_backup = track
                        .plan
                        .steps
                        .get(i)
                        .is_some_and(|s| s.kind == StepKind::Backup);
                    if let Some(record) = track.records.get_mut(i)
                        && is_backup
                        && !record.acks.contains(&node)
                    {
                        record.acks.push(node);
                    }
                }
            }
            Observation::ActionFailed { step, node, reason } => {
                if self.running_step() == Some(step)
                    && let Some(i) = self.running_index()
                {
                    self.fail(
                        now_ms,
                        i,
                        Failure::Other(format!("{node} refused or failed: {reason}")),
                    );
                }
            }
            Observation::ActionUndelivered { step, node, reason } => {
                if self.running_step() == Some(step)
                    && let Some(i) = self.running_index()
                    && let Some(record) = self.track_mut().records.get_mut(i)
                {
                    record.issued = false;
                    record.detail = Some(format!("{node} did not answer: {reason}"));
                }
            }
            Observation::StepTimedOut { step } => {
                if self.running_step() == Some(step)
                    && let Some(i) = self.running_index()
                {
                    let failure = self.timeout_failure(i);
                    self.fail(now_ms, i, failure);
                }
            }
            Observation::Abort => {
                if self.status == RunStatus::Running {
                    self.status = RunStatus::Aborting;
                }
                // A rollback is not aborted: stopping it half way would
                // leave the cluster on two releases with nobody finishing.
            }
            Observation::Resume => self.resume_rollout(now_ms),
        }
    }

    fn running_index(&self) -> Option<usize> {
        self.current()
            .records
            .iter()
            .position(|r| r.state == StepState::Running)
    }

    /// What to do now. Call it after every observation and whenever a
    /// [`Action::Wait`]'s `until_ms` passes; persist the run before
    /// carrying out the actions it returns.
    pub fn next(&mut self, now_ms: u64) -> Vec<Action> {
        if self.fleet.is_some() {
            return self.next_in_waves(now_ms);
        }
        self.next_step(now_ms)
    }

    /// The step machine over the current track. In a fleet rollout it
    /// returns nothing once the wave's track is through, and the rollout
    /// (`waves`) decides what comes after.
    fn next_step(&mut self, now_ms: u64) -> Vec<Action> {
        loop {
            if let Some(action) = self.finished_action() {
                return vec![action];
            }
            let aborting = self.status == RunStatus::Aborting;
            let view = self.view.clone();
            let track = self.track_mut();
            let Some(i) = track
                .records
                .iter()
                .position(|r| !matches!(r.state, StepState::Done | StepState::Skipped))
            else {
                if self.fleet.is_some() && !self.status.is_finished() {
                    return vec![];
                }
                self.finish();
                continue;
            };
            let (Some(step), Some(record)) = (track.plan.steps.get(i), track.records.get_mut(i))
            else {
                return vec![];
            };
            if record.state == StepState::Failed {
                // Only reached if a failure did not finish the run.
                return vec![];
            }
            if record.state == StepState::Pending {
                let at_safe_point = i == 0
                    || track
                        .plan
                        .steps
                        .get(i - 1)
                        .is_some_and(|s| s.safe_point || s.finally);
                if aborting && at_safe_point && !step.finally {
                    for (s, r) in track.plan.steps.iter().zip(track.records.iter_mut()) {
                        if r.state == StepState::Pending && !s.finally {
                            r.state = StepState::Skipped;
                        }
                    }
                    continue;
                }
                record.state = StepState::Running;
                record.started_ms = Some(now_ms);
                record.issued = false;
            }
            if let Some(failure) = step.failed(&view) {
                let deadline = record
                    .started_ms
                    .unwrap_or(now_ms)
                    .saturating_add(step.timeout_ms);
                let (id, hop) = (step.id, step.hop);
                let failure = match failure {
                    // The service moved to a node the plan was about to
                    // restart, because the node serving before failed. Every
                    // step checks its precondition against the cluster as
                    // observed, so the rest of the upgrade can be planned
                    // again from here, as the operator would with `upgrade
                    // run`: nothing is lost by not waiting for them. Until
                    // the cluster is fit for a plan (the failed node back
                    // and healthy) the step waits, bounded by its timeout;
                    // then the run stops here, a safe point (the service
                    // is up on the node that took over), saying what to do.
                    Failure::RolesMoved(why) if self.rollback.is_none() => {
                        match self.replan(now_ms, i, hop, &why) {
                            Ok(()) => continue,
                            Err(e) if now_ms < deadline => {
                                let waiting_for =
                                    format!("{why}; planning the rest again once possible: {e}");
                                if let Some(record) = self.track_mut().records.get_mut(i) {
                                    record.detail = Some(waiting_for.clone());
                                }
                                return vec![Action::Wait {
                                    step: id,
                                    until_ms: deadline,
                                    waiting_for,
                                }];
                            }
                            Err(e) => Failure::Other(format!(
                                "{why}; the rest could not be planned again: {e}"
                            )),
                        }
                    }
                    other => other,
                };
                self.fail(now_ms, i, failure);
                continue;
            }
            if step.done(&view, &record.acks, record.issued) {
                record.state = StepState::Done;
                record.finished_ms = Some(now_ms);
                record.detail = None;
                continue;
            }
            let deadline = record
                .started_ms
                .unwrap_or(now_ms)
                .saturating_add(step.timeout_ms);
            if now_ms >= deadline {
                let failure = self.timeout_failure(i);
                self.fail(now_ms, i, failure);
                continue;
            }
            let id = step.id;
            if record.issued
                && matches!(step.kind, StepKind::Switchover { .. })
                && let Some(why) = step.blocked(&view)
            {
                // The handover it asked for did not hold: the node that
                // took over died and the old active serves again. Ask
                // again once a standby on the release is ready.
                record.issued = false;
                record.detail = Some(why.clone());
                return vec![Action::Wait {
                    step: id,
                    until_ms: deadline,
                    waiting_for: why,
                }];
            }
            if !record.issued {
                if let Some(why) = step.blocked(&view) {
                    record.detail = Some(why.clone());
                    return vec![Action::Wait {
                        step: id,
                        until_ms: deadline,
                        waiting_for: why,
                    }];
                }
                let actions = step.actions(&view, &record.acks);
                record.issued = true;
                record.detail = None;
                if step.kind == StepKind::SyncReport {
                    // Only a report asked for by this step counts.
                    self.view.sync_clean = None;
                }
                if !actions.is_empty() {
                    return actions;
                }
                continue;
            }
            return vec![Action::Wait {
                step: id,
                until_ms: deadline,
                waiting_for: step.waiting_for(),
            }];
        }
    }

    /// Replaces the forward plan with one for the rest of its hops (from
    /// `hop` on), made against the cluster as observed: step `i`, which
    /// found that a failover moved the service (`why`), is closed as
    /// failed in the old track, kept in [`UpgradeRun::replaced`]. The run's
    /// id goes up, so every copy of the old plan's journal, wherever it
    /// is, gives way to this one.
    fn replan(
        &mut self,
        now_ms: u64,
        i: usize,
        hop: Option<usize>,
        why: &str,
    ) -> Result<(), PlanError> {
        let plan = crate::plan::replan(&self.view, &self.forward.plan, hop.unwrap_or(0))?;
        let mut old = std::mem::replace(&mut self.forward, Track::new(plan));
        if let Some(record) = old.records.get_mut(i) {
            record.state = StepState::Failed;
            record.finished_ms = Some(now_ms);
            record.detail = Some(format!("{why}; the rest of the upgrade was planned again"));
        }
        self.replaced.push(old);
        self.id = self.id.saturating_add(1);
        Ok(())
    }

    /// Lets a stopped run go on from the step that failed, after the
    /// operator mended the cause (`upgrade run` again).
    pub fn retry(&mut self) {
        if !matches!(self.status, RunStatus::Stopped { .. }) {
            return;
        }
        let track = self.track_mut();
        for record in &mut track.records {
            if matches!(record.state, StepState::Failed | StepState::Skipped) {
                record.state = StepState::Pending;
                record.issued = false;
            }
        }
        self.status = if self.rollback.is_some() {
            RunStatus::RollingBack {
                reason: "retried".to_string(),
            }
        } else {
            RunStatus::Running
        };
    }

    fn finished_action(&self) -> Option<Action> {
        match &self.status {
            RunStatus::Done => Some(Action::Done {
                // A rollout may end within its failure budget with a node
                // still on the old release: its summary says so.
                summary: match self.fleet.as_ref().and_then(|f| f.outcome.as_ref()) {
                    Some(outcome) => format!("{outcome} ({})", self.versions_text()),
                    None => format!(
                        "every node runs {} ({})",
                        self.forward.plan.target,
                        self.versions_text()
                    ),
                },
            }),
            RunStatus::RolledBack { reason } => Some(Action::RolledBack {
                message: format!(
                    "{reason}; rolled back, standby first: {}",
                    self.versions_text()
                ),
            }),
            RunStatus::Stopped { message } => Some(Action::Stopped {
                message: message.clone(),
            }),
            _ => None,
        }
    }

    /// Every step of the current track is done or skipped.
    fn finish(&mut self) {
        self.status = match &self.status {
            RunStatus::Aborting => RunStatus::Stopped {
                message: format!(
                    "aborted at a safe point; {}; run `tandem upgrade run` again to continue, or `tandem upgrade rollback`",
                    self.versions_text()
                ),
            },
            RunStatus::RollingBack { reason } => RunStatus::RolledBack {
                reason: reason.clone(),
            },
            _ => RunStatus::Done,
        };
    }

    fn timeout_failure(&self, i: usize) -> Failure {
        let track = self.current();
        let Some(step) = track.plan.steps.get(i) else {
            return Failure::Other("timed out".to_string());
        };
        match step.timeout_is_health(&self.view) {
            Some(reason) => Failure::Health(reason),
            None => Failure::Other(format!(
                "step {} ({step}) timed out after {} s waiting for {}",
                step.id,
                step.timeout_ms / 1000,
                track
                    .records
                    .get(i)
                    .and_then(|r| r.detail.clone())
                    .unwrap_or_else(|| step.waiting_for())
            )),
        }
    }

    /// Marks step `i` failed and decides what follows: a rollback for an
    /// image health failure during the upgrade, a stop otherwise.
    fn fail(&mut self, now_ms: u64, i: usize, failure: Failure) {
        let in_rollback = self.rollback.is_some();
        let track = self.track_mut();
        let hop = track.plan.steps.get(i).and_then(|s| s.hop);
        let step_text = track
            .plan
            .steps
            .get(i)
            .map(|s| format!("step {} ({s})", s.id))
            .unwrap_or_default();
        let (reason, health) = match failure {
            Failure::Health(r) => (r, true),
            Failure::Other(r) | Failure::RolesMoved(r) => (r, false),
        };
        if let Some(record) = track.records.get_mut(i) {
            record.state = StepState::Failed;
            record.finished_ms = Some(now_ms);
            record.detail = Some(reason.clone());
        }
        let from = hop.and_then(|h| track.plan.hops.get(h)).map(|h| h.from);
        // In a fleet rollout a node that does not come up healthy fails
        // alone: the rollout counts it against --max-failed.
        if self.wave_node_failed(i, &reason) {
            return;
        }
        if health
            && !in_rollback
            && let Some(from) = from
        {
            self.start_rollback(reason, from);
            return;
        }
        let what_next = if in_rollback {
            "the rollback could not finish: repair the node and run `tandem upgrade rollback`"
        } else {
            "fix the cause and run `tandem upgrade run` to continue from this step, or `tandem upgrade rollback`"
        };
        self.status = RunStatus::Stopped {
            message: format!(
                "stopped at {step_text}: {reason}; {}; {what_next}",
                self.versions_text()
            ),
        };
    }

    fn start_rollback(&mut self, reason: String, to: Version) {
        let plan = &self.forward.plan;
        let mut options = crate::PlanOptions::default();
        if let Some(step) = plan
            .steps
            .iter()
            .find(|s| matches!(s.kind, StepKind::Boot { .. }))
        {
            options.boot_timeout_ms = step.timeout_ms;
        }
        // Give back what the upgrade changed before it began: preemption
        // where it was on, groups to their holders.
        let restore = Restore {
            preempt_was_on: plan.preempt_was_on.clone(),
            groups_home: plan
                .steps
                .iter()
                .find_map(|s| match &s.kind {
                    StepKind::RestoreGroups { holders } => Some(holders.clone()),
                    _ => None,
                })
                .unwrap_or_default(),
        };
        match rollback_plan(&self.view, &to, plan.strategy, options, restore) {
            Ok(rollback) => {
                self.rollback = Some(Track::new(rollback));
                self.status = RunStatus::RollingBack { reason };
            }
            Err(e) => {
                self.status = RunStatus::Stopped {
                    message: format!(
                        "{reason}; a rollback cannot be planned: {e}; {}",
                        self.versions_text()
                    ),
                };
            }
        }
    }

    /// "a on 6.2.5, b on 6.2.0" for messages.
    fn versions_text(&self) -> String {
        self.view
            .nodes
            .iter()
            .map(|n| format!("{} on {}", n.name, n.running))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
