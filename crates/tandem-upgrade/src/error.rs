//! The crate's one error type: why a plan (or a resume) was refused.
//!
//! Every refusal names the node, version or rule involved and, where there
//! is one, what the operator can do about it: the CLI prints these as they
//! are, before anything on the cluster has changed.

use tandem_core::Mode;
use tandem_version::Version;

use crate::strategy::Strategy;

/// Why no plan could be made, or why a journal cannot be resumed.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The cluster state lists no node.
    #[error("the cluster has no nodes")]
    NoNodes,

    /// The strategy does not apply to the cluster's mode.
    #[error("strategy {strategy} does not apply to a {mode} cluster (use {suggested})")]
    StrategyNotForMode {
        /// The strategy asked for.
        strategy: Strategy,
        /// The cluster's mode, as the operator spells it.
        mode: ModeName,
        /// The strategy that does apply.
        suggested: Strategy,
    },

    /// `rolling` with a batch of zero nodes.
    #[error("a rolling batch must upgrade at least one node at a time")]
    ZeroBatch,

    /// A run whose roles moved under it cannot be planned again yet.
    #[error("{reason}")]
    Replan {
        /// Why, naming the node.
        reason: String,
    },

    /// A node is not healthy; an upgrade starts only from a healthy cluster.
    #[error(
        "node {node} is not healthy: repair it (or remove it from the cluster) before upgrading"
    )]
    Unhealthy {
        /// The node.
        node: String,
    },

    /// A node that needs an image does not have it.
    #[error("node {node} has no image for {version}: copy the image to it first")]
    ImageMissing {
        /// The node.
        node: String,
        /// The release whose image is missing.
        version: Version,
    },

    /// A node has the image but its signature has not been verified.
    #[error("the image for {version} on node {node} is not verified: verify its signature first")]
    ImageUnverified {
        /// The node.
        node: String,
        /// The release whose image is unverified.
        version: Version,
    },

    /// The catalog has no supported path (or does not know a version).
    #[error("no upgrade path: {0}")]
    NoPath(#[from] tandem_version::Error),

    /// Every node already runs the target.
    #[error("every node already runs {version}: nothing to do")]
    AlreadyAtTarget {
        /// The target.
        version: Version,
    },

    /// The nodes run versions that no single path explains: more than two
    /// releases, or a newer one that is not a hop on the path to the target.
    #[error(
        "the nodes run {} — not two consecutive releases of one path toward {target}: finish or roll back the earlier upgrade first",
        list(.versions)
    )]
    MixedVersions {
        /// The releases running, lowest first.
        versions: Vec<Version>,
        /// The target asked for.
        target: Version,
    },

    /// The cluster's last sync report shows differences.
    #[error(
        "the last sync report shows configuration differences: resolve them (`tandem sync report`) before upgrading"
    )]
    SyncNotClean,

    /// Active-passive needs exactly one active node to plan around.
    #[error("expected exactly one active node, found {}", if .found.is_empty() { "none".to_string() } else { .found.join(", ") })]
    ActiveNotUnique {
        /// The nodes reporting active.
        found: Vec<String>,
    },

    /// `holdoff` keeps roles where they are, so the primary must be active.
    #[error(
        "holdoff upgrades the primary last without moving roles, but {active} is active, not the primary {primary}: run `ha restore` first, or use switchover"
    )]
    PrimaryNotActive {
        /// The configured primary.
        primary: String,
        /// The active node.
        active: String,
    },

    /// No node is configured primary (holdoff and rolling need one to put last).
    #[error("no node is configured primary")]
    NoPrimary,

    /// Too few nodes to keep the service up while one is upgraded.
    #[error("{strategy} needs at least {needed} nodes able to serve, the cluster has {have}")]
    TooFewNodes {
        /// The strategy.
        strategy: Strategy,
        /// Nodes needed.
        needed: usize,
        /// Nodes available.
        have: usize,
    },

    /// A failover group has no node holding it.
    #[error("failover group {group} is held by no node")]
    GroupUnheld {
        /// The group.
        group: u8,
    },

    /// A rollback needs the release to go back to in the node's other slot.
    #[error(
        "node {node} cannot roll back to {version}: its other slot does not hold a good {version} image"
    )]
    NoRollbackImage {
        /// The node.
        node: String,
        /// The release to go back to.
        version: Version,
    },

    /// A fleet rollout's `--batch` is neither a node count nor a share.
    #[error(
        "{text:?} is not a batch size: write a number of nodes such as `10`, or a share of the fleet such as `10%`"
    )]
    BatchUnreadable {
        /// The text given.
        text: String,
    },

    /// A fleet rollout's `--batch` share is not between 1 % and 100 %.
    #[error(
        "batch {text:?} is not a share from 1% to 100% of the fleet: write e.g. `10%`, or a number of nodes such as `10`"
    )]
    BatchShareOutOfRange {
        /// The text given.
        text: String,
    },

    /// A simulated node failure rate that is not a probability.
    #[error(
        "fail rate {rate} is not a probability: give a number from 0 to 1 (0.01, or 1%, for one node in a hundred)"
    )]
    FailRateOutOfRange {
        /// The rate given.
        rate: f64,
    },

    /// A simulation asked for no runs.
    #[error("a simulation needs at least one run: pass --runs 1 or more")]
    NoSimulationRuns,

    /// A simulation too large to finish in reasonable time.
    #[error(
        "{runs} runs of {nodes} nodes is {work} simulated node upgrades, more than the {max} simulated at once: lower --runs (1000 runs already give a steady p99)"
    )]
    SimulationTooLarge {
        /// Nodes in the fleet.
        nodes: usize,
        /// Runs asked for.
        runs: usize,
        /// `nodes × runs`.
        work: u128,
        /// The most simulated at once.
        max: u128,
    },

    /// A simulated rollout stopped making progress: a bug in the rollout
    /// state machine, never an input error.
    #[error(
        "the simulated rollout {run} made no progress (a bug in tandem): report it with the command line, seed {seed}"
    )]
    SimulationStalled {
        /// Which run (from 0).
        run: usize,
        /// The simulation's seed.
        seed: u64,
    },

    /// The fresh cluster state given to resume a journal does not name the
    /// same nodes as the journal's plan.
    #[error("the journal's plan concerns node {node}, which the cluster no longer reports")]
    JournalNodeMissing {
        /// The node missing from the cluster state.
        node: String,
    },

    /// Rollout knobs were given for a strategy that does not go in waves.
    #[error(
        "the rollout knobs (--canary, --batch P%, --health-deadline, --max-failed, --auto-revert, --auto-promote) work with the rolling strategy of config-only clusters for now, not with {strategy}: leave them out to upgrade with {strategy}"
    )]
    RolloutNeedsRolling {
        /// The strategy asked for.
        strategy: crate::strategy::Strategy,
    },
}

/// A mode as the operator spells it (`active-passive`, …), for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeName(pub Mode);

impl std::fmt::Display for ModeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Mode::ActivePassive => "active-passive",
            Mode::ConfigOnly => "config-only",
            Mode::ActiveActive => "active-active",
        })
    }
}

fn list(versions: &[Version]) -> String {
    versions
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
