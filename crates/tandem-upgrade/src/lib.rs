//! # tandem-upgrade
//!
//! Zero-downtime cluster upgrades, decided without doing anything: the
//! planner turns (cluster state, target release, catalog, strategy) into an
//! ordered plan of steps, and the step machine turns (journal, observations)
//! into the next actions. No I/O, no clock, no tokio — the agent observes
//! and acts, like `tandem-core`'s node and openraft's engine.
//!
//! ```text
//!  ClusterState + target + Catalog + Strategy ──plan()──► UpgradePlan
//!                                                             │
//!  agent ──Observation──► UpgradeRun::observe ─┐    UpgradeRun::new(plan, state)
//!  agent ◄──Vec<Action>── UpgradeRun::next(now)◄┘             │
//!        └── persists and replicates the UpgradeRun (serde) after each call
//!  new coordinator: UpgradeRun::resume(journal, fresh state, now) and go on
//! ```
//!
//! # Layout
//! - [`cluster`]: [`ClusterState`] and [`NodeState`], what is known of the
//!   nodes: roles, releases, slots, images, sync, listener, config link.
//! - [`plan`]: [`plan()`], [`plan_rollback`], [`Strategy`], [`UpgradePlan`]:
//!   the four strategies from the seeds (switchover — ASA 004 and Huawei
//!   003; holdoff — FortiMail 000; rolling — ESA 002; active-active — ASA
//!   failover groups), hop by hop along the catalog's path.
//!   ([`Strategy`] is defined in the private `strategy` module, which
//!   `error` shares.)
//! - [`step`]: [`Step`], [`StepKind`], [`Action`], [`ClientImpact`]: what
//!   each step needs, asks for, and counts as done.
//! - [`run`]: [`UpgradeRun`], [`Observation`]: the journal and step machine:
//!   resume after a coordinator crash, abort at a safe point, rollback
//!   standby-first on an image health failure; [`UpgradeRun::in_waves`]
//!   drives a [`FleetRollout`] per hop (`upgrade run --canary …`), one
//!   plan per wave, a failed node counted rather than rolled back.
//! - [`fleet`]: [`plan_waves`], [`FleetRollout`], [`simulate()`]: a
//!   release across a fleet in waves — canaries, batches (`N` or `P%`),
//!   the active or primary last — with a failure budget, a pause after the
//!   canaries and an auto-revert; and the seeded simulation behind
//!   `tandem upgrade simulate`.
//! - [`error`]: [`PlanError`], the crate's one error type.
//!
//! # Driving a run (what the agent does)
//!
//! ```text
//! let plan = tandem_upgrade::plan(&state, &target, &catalog, strategy, options)?;
//! let mut run = UpgradeRun::new(plan, state);          // or UpgradeRun::resume(journal, state, now)
//! loop {
//!     let actions = run.next(now());
//!     journal.store_and_replicate(&run)?;              // before acting: a crash re-derives
//!     for action in actions {
//!         match action {
//!             Action::Command { node, command } => api(node).command(command),
//!             Action::InstallImage { node, version } => api(node).install(version),
//!             Action::BootPending { node, .. } | Action::BootPrevious { node, .. } => api(node).boot(..),
//!             Action::SuspendListener { node } | Action::ResumeListener { node } => ..,
//!             Action::DisconnectConfig { node } | Action::ReconnectConfig { node } => ..,
//!             Action::TakeBackup { node } => ..,        // then Observation::BackupTaken
//!             Action::RunSyncReport => ..,              // then Observation::SyncReport
//!             Action::Wait { until_ms, .. } => wait for an observation or until_ms,
//!             Action::Done { .. } | Action::RolledBack { .. } | Action::Stopped { .. } => return,
//!         }
//!     }
//!     // every change a node reports (heartbeat, status, slots) goes in:
//!     run.observe(now(), Observation::Node(snapshot));
//! }
//! ```

#![deny(missing_docs)]

pub mod cluster;
pub mod error;
pub mod fleet;
pub mod plan;
pub mod run;
pub mod step;
mod strategy;

pub use cluster::{ClusterState, ConfigLink, ImageFile, Listener, NodeState, SlotStatus, SlotView};
pub use error::{ModeName, PlanError};
pub use fleet::{
    Batch, FleetAction, FleetObservation, FleetRollout, NodeProgress, RolloutPolicy, RolloutStatus,
    SimulateReport, SimulateSpec, Wave, WaveKind, plan_waves, relay_fleet, simulate,
};
pub use plan::{
    HopReason, ImpactEstimate, PlanOptions, PlannedHop, Strategy, UpgradePlan, plan, plan_rollback,
};
pub use run::{
    FleetRun, NodeChange, Observation, RunStatus, StepRecord, StepState, Track, UpgradeRun,
    WaveWork,
};
pub use step::{Action, ClientImpact, Step, StepId, StepKind};
