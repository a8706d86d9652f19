//! Fleet rollouts: how a release reaches hundreds of nodes in waves, and
//! what that costs in time and risk.
//!
//! A cluster's [`crate::UpgradeRun`] takes one node (or one `rolling` batch)
//! at a time and rolls back on the first failed health check, which is
//! right for a pair and too slow and too brittle for a fleet of 1,000
//! relays. This module adds the knobs operators know from Nomad's `update`
//! block and Mender's phased rollouts (`../shared/notes/quorum-and-fault-testing.md`,
//! "Rollout knobs people know"):
//!
//! ```text
//!  ClusterState + RolloutPolicy ──plan_waves()──► [canary] [batch] … [batch] [final]
//!                                                     │
//!  agent ──FleetObservation──► FleetRollout::observe ─┐
//!  agent ◄──Vec<FleetAction>── FleetRollout::next(now)◄┘
//!        Upgrade a wave · Wait · Paused (after the canaries) · Revert · Done · Stopped
//!
//!  SimulateSpec ──simulate()──► SimulateReport { p50, p99, stop_chance }
//!        (a seeded PRNG plays the nodes against the same FleetRollout)
//! ```
//!
//! - **Waves** ([`plan_waves`]): `--canary K` nodes first, then batches of
//!   `--batch N|P%`; the node the cluster's strategy keeps for last (the
//!   active of an active-passive cluster, the configured primary of a
//!   config-only one, the best-ranked group holder of an active-active one)
//!   alone at the end, as the planner does within a hop. Within the rest,
//!   the planner's rank: config-only nodes, then secondaries, then the
//!   primary; lower priority first.
//! - **The rollout** ([`FleetRollout`], in `rollout`): pure like
//!   [`crate::UpgradeRun`], time passed in as milliseconds. A wave's nodes
//!   upgrade in parallel; the next wave starts once every node of this one
//!   is healthy or failed. More than `--max-failed` failures stop it; with
//!   `--auto-revert` it then gives the order to revert the upgraded nodes,
//!   standbys first. After the canaries it pauses for `tandem upgrade
//!   resume`, unless `--auto-promote` lets it go on once they stayed
//!   healthy that long.
//! - **The simulation** ([`simulate()`], in `simulate`): the rollout of a
//!   synthetic config-only fleet, run many times with seeded boot times and
//!   failures, for `tandem upgrade simulate`.
//!
//! `tandem upgrade run --canary …` drives one rollout per hop from inside
//! a [`crate::UpgradeRun`] (`run::waves`): each wave the rollout orders
//! becomes a plan of the wave's nodes only, and what the plan shows of
//! them (healthy on the release, or fallen back) goes back in as
//! [`FleetObservation`]s.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tandem_core::Mode;

use crate::cluster::{ClusterState, NodeState};
use crate::error::PlanError;

mod rollout;
mod simulate;
#[cfg(test)]
mod tests;

pub use rollout::{FleetAction, FleetObservation, FleetRollout, NodeProgress, RolloutStatus};
pub use simulate::{SimulateReport, SimulateSpec, relay_fleet, simulate};

/// How many nodes upgrade at once after the canaries: `--batch 10` or
/// `--batch 10%`.
///
/// Written to the journal as the operator typed it (`"10"`, `"10%"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Batch {
    /// A number of nodes (at least one).
    Nodes(usize),
    /// A share of the whole fleet in percent (1 to 100), rounded up to
    /// whole nodes, so a small fleet still moves at least one node a wave.
    Percent(u8),
}

impl Batch {
    /// The batch in nodes for a fleet of `fleet` nodes (at least one).
    pub fn nodes_of(self, fleet: usize) -> usize {
        match self {
            Batch::Nodes(n) => n.max(1),
            Batch::Percent(p) => fleet.saturating_mul(usize::from(p)).div_ceil(100).max(1),
        }
    }

    /// Refuses a batch of no nodes, or a share outside 1–100 %, which the
    /// enum can hold but `FromStr` never makes.
    pub fn check(self) -> Result<Batch, PlanError> {
        match self {
            Batch::Nodes(0) => Err(PlanError::ZeroBatch),
            Batch::Percent(p) if !(1..=100).contains(&p) => Err(PlanError::BatchShareOutOfRange {
                text: self.to_string(),
            }),
            ok => Ok(ok),
        }
    }
}

impl std::fmt::Display for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Batch::Nodes(n) => write!(f, "{n}"),
            Batch::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl std::str::FromStr for Batch {
    type Err = PlanError;

    /// `"10"` (nodes) or `"10%"` (of the fleet); whole numbers only.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let unreadable = || PlanError::BatchUnreadable {
            text: text.to_string(),
        };
        let batch = match trimmed.strip_suffix('%') {
            Some(share) => {
                // Parsed wide so "250%" says "out of range", not "unreadable".
                let share: u64 = share.trim().parse().map_err(|_| unreadable())?;
                let share = u8::try_from(share)
                    .ok()
                    .filter(|p| (1..=100).contains(p))
                    .ok_or_else(|| PlanError::BatchShareOutOfRange {
                        text: text.to_string(),
                    })?;
                Batch::Percent(share)
            }
            None => Batch::Nodes(trimmed.parse().map_err(|_| unreadable())?),
        };
        batch.check()
    }
}

impl From<Batch> for String {
    fn from(batch: Batch) -> String {
        batch.to_string()
    }
}

impl TryFrom<String> for Batch {
    type Error = PlanError;

    fn try_from(text: String) -> Result<Batch, PlanError> {
        text.parse()
    }
}

/// The operator's rollout knobs (`tandem upgrade run --batch … --canary …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutPolicy {
    /// Nodes per wave after the canaries.
    pub batch: Batch,
    /// Nodes upgraded first, alone in their wave, before any batch (0: no
    /// canary wave, no pause).
    pub canary: usize,
    /// How long a node may take from the start of its upgrade to a passing
    /// health check before it counts as failed (Nomad's
    /// `healthy_deadline`).
    pub health_deadline: Duration,
    /// How many failed nodes the rollout tolerates; one more stops it.
    pub max_failed: usize,
    /// Whether a stopped rollout reverts the nodes it upgraded, standbys
    /// first (Nomad's `auto_revert`).
    pub auto_revert: bool,
    /// `None`: after the canaries, pause for `tandem upgrade resume`.
    /// `Some(d)`: go on by itself once every canary has been healthy for
    /// `d` (Nomad's `auto_promote` with `min_healthy_time`).
    pub auto_promote: Option<Duration>,
}

impl Default for RolloutPolicy {
    /// What `upgrade run` does today: one node at a time, no canary, stop
    /// at the first failure; Nomad's five-minute healthy deadline.
    fn default() -> Self {
        RolloutPolicy {
            batch: Batch::Nodes(1),
            canary: 0,
            health_deadline: Duration::from_secs(300),
            max_failed: 0,
            auto_revert: false,
            auto_promote: None,
        }
    }
}

impl RolloutPolicy {
    /// Refuses a policy `FromStr` would never make (a zero batch).
    pub fn check(&self) -> Result<(), PlanError> {
        self.batch.check().map(|_| ())
    }
}

/// What a wave is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WaveKind {
    /// The first `--canary` nodes; the rollout pauses after them.
    Canary,
    /// Up to `--batch` nodes.
    Batch,
    /// The one node the strategy keeps for last: the active (active-passive),
    /// the configured primary (config-only), the best-ranked group holder
    /// (active-active).
    Final,
}

impl std::fmt::Display for WaveKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WaveKind::Canary => "canary",
            WaveKind::Batch => "batch",
            WaveKind::Final => "final",
        })
    }
}

/// Nodes upgraded together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    /// What the wave is for.
    pub kind: WaveKind,
    /// Its nodes, never empty, in the order they are listed to the agent.
    pub nodes: Vec<String>,
}

/// Orders every node of `cluster` into waves: canaries, batches, then the
/// node the cluster's mode keeps for last, alone. Every node is in exactly
/// one wave. Within the rest, the planner's rank (`plan::rank`), so a
/// rollout and a plan agree on which node goes first.
///
/// Refuses an empty cluster, an active-passive cluster without exactly one
/// active node (there would be no telling which node to keep for last),
/// and a zero batch.
pub fn plan_waves(cluster: &ClusterState, policy: &RolloutPolicy) -> Result<Vec<Wave>, PlanError> {
    policy.check()?;
    if cluster.nodes.is_empty() {
        return Err(PlanError::NoNodes);
    }
    let mut ordered: Vec<&NodeState> = cluster.nodes.iter().collect();
    ordered.sort_by_key(|n| crate::plan::rank(n));
    let last: Option<String> = match cluster.mode {
        Mode::ActivePassive => {
            let actives = cluster.actives();
            match actives.as_slice() {
                [active] => Some(active.name.clone()),
                _ => {
                    return Err(PlanError::ActiveNotUnique {
                        found: actives.iter().map(|n| n.name.clone()).collect(),
                    });
                }
            }
        }
        Mode::ConfigOnly => cluster.primary().map(|n| n.name.clone()),
        // The planner moves every group to its best-ranked server and
        // upgrades that one last.
        Mode::ActiveActive => ordered
            .iter()
            .rev()
            .find(|n| n.configured.serves_groups())
            .map(|n| n.name.clone()),
    };
    let rest: Vec<String> = ordered
        .iter()
        .filter(|n| Some(&n.name) != last.as_ref())
        .map(|n| n.name.clone())
        .collect();
    // One node always keeps serving, whatever batch was asked for, as in
    // the planner's rolling hops.
    let total = cluster.nodes.len();
    let batch = policy
        .batch
        .nodes_of(total)
        .min(total.saturating_sub(1))
        .max(1);
    let canaries = policy.canary.min(rest.len());
    let mut waves = Vec::new();
    if canaries > 0 {
        waves.push(Wave {
            kind: WaveKind::Canary,
            nodes: rest[..canaries].to_vec(),
        });
    }
    for chunk in rest[canaries..].chunks(batch) {
        waves.push(Wave {
            kind: WaveKind::Batch,
            nodes: chunk.to_vec(),
        });
    }
    if let Some(last) = last {
        waves.push(Wave {
            kind: WaveKind::Final,
            nodes: vec![last],
        });
    }
    Ok(waves)
}

/// A duration as the rollout's millisecond clock counts it; durations
/// beyond 584 million years saturate.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
