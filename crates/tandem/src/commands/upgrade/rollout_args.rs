//! The rollout knobs of `tandem upgrade plan|run` (`--canary`,
//! `--health-deadline`, `--max-failed`, `--auto-revert`, `--auto-promote`)
//! and the [`RolloutPolicy`] they make. Kept beside the command rather
//! than in `cli.rs` because they are one group, read in one place: any of
//! them turns the upgrade into a rollout in waves, and `--batch` (which
//! `cli.rs` keeps, as it means something without them) joins them then.

use std::time::Duration;

use clap::Args;
use tandem_toml::parse_duration;
use tandem_upgrade::{Batch, RolloutPolicy};

/// Nomad's and Mender's knobs for `upgrade run` (the rolling strategy).
#[derive(Debug, Args, Clone, Default)]
pub struct RolloutArgs {
    /// Rollout in waves (rolling strategy): upgrade K nodes first, in a
    /// wave of their own, then pause for `tandem upgrade resume` (or go on
    /// by itself with --auto-promote).
    #[arg(long, value_name = "K")]
    pub canary: Option<usize>,
    /// Rollout in waves: how long a node may take to turn healthy on the
    /// new release before it counts as failed [default: 5m].
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub health_deadline: Option<Duration>,
    /// Rollout in waves: failed nodes tolerated; one more stops the
    /// rollout [default: 0].
    #[arg(long, value_name = "N")]
    pub max_failed: Option<usize>,
    /// Rollout in waves: when too many nodes failed, revert the nodes it
    /// upgraded, standbys first (a failed node already fell back).
    #[arg(long)]
    pub auto_revert: bool,
    /// Rollout in waves: go on after the canaries once they stayed healthy
    /// this long, instead of pausing for `tandem upgrade resume`.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub auto_promote: Option<Duration>,
}

impl RolloutArgs {
    /// The rollout in waves the flags ask for, with `batch` for the waves
    /// after the canaries: `None` unless one of the knobs is given
    /// (`--batch` alone keeps its old meaning).
    pub fn policy(&self, batch: Option<Batch>) -> Option<RolloutPolicy> {
        let wanted = self.canary.is_some()
            || self.health_deadline.is_some()
            || self.max_failed.is_some()
            || self.auto_revert
            || self.auto_promote.is_some();
        if !wanted {
            return None;
        }
        let default = RolloutPolicy::default();
        Some(RolloutPolicy {
            batch: batch.unwrap_or(default.batch),
            canary: self.canary.unwrap_or(default.canary),
            health_deadline: self.health_deadline.unwrap_or(default.health_deadline),
            max_failed: self.max_failed.unwrap_or(default.max_failed),
            auto_revert: self.auto_revert,
            auto_promote: self.auto_promote,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_knob_makes_a_rollout_and_the_rest_take_the_defaults() {
        let none = RolloutArgs::default();
        assert_eq!(none.policy(Some(Batch::Nodes(3))), None, "--batch alone");
        let canary = RolloutArgs {
            canary: Some(2),
            ..RolloutArgs::default()
        };
        let policy = canary
            .policy(Some(Batch::Percent(10)))
            .expect("a rollout with a canary");
        assert_eq!(policy.canary, 2);
        assert_eq!(policy.batch, Batch::Percent(10));
        assert_eq!(policy.max_failed, 0);
        assert_eq!(policy.health_deadline, Duration::from_secs(300));
        assert!(!policy.auto_revert);
    }
}
