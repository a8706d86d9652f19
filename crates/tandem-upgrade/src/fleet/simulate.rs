//! [`simulate()`]: how long a fleet rollout takes and how likely it is to
//! stop, found by playing it many times — `tandem upgrade simulate`.
//!
//! Each run drives a real [`FleetRollout`] over a synthetic config-only
//! fleet ([`relay_fleet`]): every node told to upgrade takes its boot time
//! plus its health time, each scaled by a seeded factor between 0.8 and
//! 1.2, and fails with probability `fail_rate` (its health check fails at
//! the end of that time). Time is simulated, so a day-long rollout of
//! 1,000 nodes plays in microseconds per node; nothing sleeps.
//!
//! What a duration counts: from the first wave's start until the rollout
//! is done or stopped. A pause after the canaries counts as resumed at
//! once (no operator time), and a revert as instant: the figures are the
//! machine's share of the window, the part the knobs change.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use tandem_core::{ConfiguredRole, EffectiveRole};
use tandem_version::{Spelling, Version};

use super::rollout::{FleetAction, FleetObservation, FleetRollout};
use super::{RolloutPolicy, WaveKind, millis, plan_waves};
use crate::cluster::{ClusterState, NodeState};
use crate::error::PlanError;

/// The most node upgrades (`nodes × runs`) one simulation plays: about
/// twenty seconds of a release build, so a typo in `--runs` does not hang
/// the command.
const MAX_NODE_UPGRADES: u128 = 20_000_000;

/// How far a node's boot and health times stray from the given ones, each
/// way (0.2: between 80 % and 120 %).
const JITTER: f64 = 0.2;

/// What to simulate.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulateSpec {
    /// Nodes in the fleet (at least one).
    pub nodes: usize,
    /// The rollout's knobs.
    pub policy: RolloutPolicy,
    /// How long a node takes to boot the new release.
    pub boot: Duration,
    /// How long after its boot a node's health check passes (or fails).
    pub health: Duration,
    /// The chance that one node's upgrade fails, from 0 to 1.
    pub fail_rate: f64,
    /// The seed: the same spec and seed give the same report.
    pub seed: u64,
    /// How many rollouts to play (at least one).
    pub runs: usize,
}

/// What the runs showed.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulateReport {
    /// The median rollout duration (done or stopped).
    pub p50: Duration,
    /// The duration 99 runs in 100 stay within.
    pub p99: Duration,
    /// The share of runs that stopped on too many failures, from 0 to 1.
    pub stop_chance: f64,
    /// Runs played.
    pub runs: usize,
    /// Waves in the rollout.
    pub waves: usize,
    /// Nodes in the canary wave (0: none).
    pub canary_nodes: usize,
    /// Nodes in a full batch.
    pub batch_nodes: usize,
}

/// A fleet of `nodes` relays in one config-only cluster, as an ESA-style
/// cluster of mail relays is: every node serves on its own address; the
/// first, `relay-0001`, is the configured primary (config is pushed from
/// it), so it goes last, alone; the others are secondaries of equal
/// priority, upgraded in name order.
pub fn relay_fleet(nodes: usize) -> ClusterState {
    let width = nodes.max(1).to_string().len().max(4);
    let running = Version {
        major: 1,
        minor: 0,
        maint: 0,
        build: None,
        spelling: Spelling::Dotted { v_prefix: false },
    };
    let nodes = (1..=nodes)
        .map(|i| {
            let primary = i == 1;
            NodeState::new(
                format!("relay-{i:0width$}"),
                if primary {
                    ConfiguredRole::Primary
                } else {
                    ConfiguredRole::Secondary
                },
                EffectiveRole::Active,
                if primary { 200 } else { 100 },
                running,
            )
        })
        .collect();
    ClusterState::config_only(nodes)
}

/// Plays `spec.runs` rollouts of a [`relay_fleet`] of `spec.nodes` and
/// reports their durations and how often they stopped.
pub fn simulate(spec: &SimulateSpec) -> Result<SimulateReport, PlanError> {
    if !(0.0..=1.0).contains(&spec.fail_rate) {
        // Also refuses NaN, which no range contains.
        return Err(PlanError::FailRateOutOfRange {
            rate: spec.fail_rate,
        });
    }
    if spec.runs == 0 {
        return Err(PlanError::NoSimulationRuns);
    }
    if spec.nodes == 0 {
        return Err(PlanError::NoNodes);
    }
    let work = (spec.nodes as u128).saturating_mul(spec.runs as u128);
    if work > MAX_NODE_UPGRADES {
        return Err(PlanError::SimulationTooLarge {
            nodes: spec.nodes,
            runs: spec.runs,
            work,
            max: MAX_NODE_UPGRADES,
        });
    }
    let waves = plan_waves(&relay_fleet(spec.nodes), &spec.policy)?;
    let canary_nodes = waves
        .iter()
        .filter(|w| w.kind == WaveKind::Canary)
        .map(|w| w.nodes.len())
        .sum();
    let batch_nodes = waves
        .iter()
        .filter(|w| w.kind == WaveKind::Batch)
        .map(|w| w.nodes.len())
        .max()
        .unwrap_or(0);
    let wave_count = waves.len();

    // One seed per run, drawn from the master seed, so a run's nodes do
    // not depend on how many numbers the runs before it drew.
    let mut seeds = SplitMix64::new(spec.seed);
    let mut durations = Vec::with_capacity(spec.runs);
    let mut stopped = 0usize;
    for run in 0..spec.runs {
        let rollout = FleetRollout::new(waves.clone(), spec.policy);
        let mut rng = SplitMix64::new(seeds.next_u64());
        let (ended_ms, was_stopped) =
            play(rollout, spec, &mut rng).ok_or(PlanError::SimulationStalled {
                run,
                seed: spec.seed,
            })?;
        durations.push(ended_ms);
        if was_stopped {
            stopped += 1;
        }
    }
    durations.sort_unstable();
    Ok(SimulateReport {
        p50: Duration::from_millis(percentile(&durations, 50)),
        p99: Duration::from_millis(percentile(&durations, 99)),
        stop_chance: stopped as f64 / spec.runs as f64,
        runs: spec.runs,
        waves: wave_count,
        canary_nodes,
        batch_nodes,
    })
}

/// A node's reported outcome, due at a simulated time.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    at_ms: u64,
    /// Breaks ties in the order the nodes were told to upgrade, so equal
    /// times give the same order on every platform.
    seq: u64,
    node: String,
    healthy: bool,
}

/// Plays one rollout to its end: `(when it ended, whether it stopped)`,
/// or `None` if it stalled (a bug: every wait has an end here).
fn play(
    mut rollout: FleetRollout,
    spec: &SimulateSpec,
    rng: &mut SplitMix64,
) -> Option<(u64, bool)> {
    let boot = millis(spec.boot) as f64;
    let health = millis(spec.health) as f64;
    let mut due: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut now = 0u64;
    // Every turn starts a wave, delivers an outcome, passes a deadline or
    // ends the run; a few turns per node is far more than enough.
    let turns = spec.nodes.saturating_mul(8).saturating_add(64);
    for _ in 0..turns {
        for action in rollout.next(now) {
            match action {
                FleetAction::Upgrade { nodes, .. } => {
                    for node in nodes {
                        let took = boot * rng.jitter() + health * rng.jitter();
                        // `as` saturates for floats; times stay far below.
                        let at_ms = now.saturating_add(took.round() as u64);
                        let healthy = rng.unit() >= spec.fail_rate;
                        due.push(Reverse(Due {
                            at_ms,
                            seq,
                            node,
                            healthy,
                        }));
                        seq += 1;
                    }
                }
                FleetAction::Wait { until_ms, .. } => {
                    let next_due = due.peek().map(|Reverse(d)| d.at_ms);
                    now = match (next_due, until_ms) {
                        (Some(a), Some(b)) => a.min(b),
                        (Some(a), None) | (None, Some(a)) => a,
                        (None, None) => return None,
                    }
                    .max(now);
                    while due.peek().is_some_and(|Reverse(d)| d.at_ms <= now) {
                        let Some(Reverse(d)) = due.pop() else { break };
                        let observation = if d.healthy {
                            FleetObservation::NodeHealthy { node: d.node }
                        } else {
                            FleetObservation::NodeFailed {
                                node: d.node,
                                reason: "simulated health check failure".to_string(),
                            }
                        };
                        rollout.observe(now, observation);
                    }
                }
                FleetAction::Paused { .. } => rollout.observe(now, FleetObservation::Resume),
                FleetAction::Revert { nodes } => {
                    for node in nodes {
                        rollout.observe(now, FleetObservation::NodeReverted { node });
                    }
                }
                FleetAction::Done { .. } => return Some((now, false)),
                FleetAction::Stopped { .. } | FleetAction::Reverted { .. } => {
                    return Some((now, true));
                }
            }
        }
    }
    None
}

/// The nearest-rank percentile of sorted values (0 for none).
fn percentile(sorted: &[u64], percent: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (sorted.len() * percent).div_ceil(100).max(1);
    sorted.get(rank - 1).copied().unwrap_or(0)
}

/// SplitMix64 (Steele, Lea, Flood 2014), written here rather than taken
/// from `rand`: tandem-upgrade stays pure and free of dependencies beyond
/// the workspace's own, and a simulation must give the same figures for a
/// seed on every platform and every future build — which a crate's
/// "small, fast" generator, free to change between versions, does not
/// promise. Statistical quality is ample for drawing boot times.
#[derive(Debug, Clone)]
struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1): the top 53 bits, as many as an f64 holds exactly.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A factor in [1 − JITTER, 1 + JITTER).
    fn jitter(&mut self) -> f64 {
        1.0 - JITTER + 2.0 * JITTER * self.unit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // The first outputs for seed 1234567 in the reference C code
        // (splitmix64.c by Sebastiano Vigna), so a seed means the same
        // everywhere.
        let mut rng = SplitMix64::new(1_234_567);
        let first: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        assert_eq!(
            first,
            vec![
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423
            ]
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50), 50);
        assert_eq!(percentile(&values, 99), 99);
        assert_eq!(percentile(&[7], 99), 7);
        assert_eq!(percentile(&[], 50), 0);
    }
}
