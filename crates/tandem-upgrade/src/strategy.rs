//! [`Strategy`]: how a cluster is taken from one release to the next, and
//! which strategy fits which cluster mode.
//!
//! Its own module because both the planner (`plan`) and the error type
//! (`error`, whose refusals name the strategy asked for and the one that
//! applies) need it: kept in `plan`, it made `error` and `plan` import each
//! other. The module is private; the type is public where it always was,
//! as `tandem_upgrade::Strategy` and `tandem_upgrade::plan::Strategy`.

use serde::{Deserialize, Serialize};
use tandem_core::Mode;

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
