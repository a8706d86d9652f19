//! `[cluster]`: the settings every node of the cluster shares (mode,
//! timing, failover groups, coordination). Read with the other sections in
//! [`super`].

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::CoordinationName;

/// `[cluster]`: the same on every node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// The cluster's name; heartbeats of other clusters are dropped.
    pub name: String,
    /// File holding the shared HMAC key (at least 16 bytes).
    pub key_file: PathBuf,
    /// `active-passive`, `config-only` or `active-active`.
    #[serde(default = "default_mode")]
    pub mode: ModeName,
    /// Heartbeat interval.
    #[serde(
        default = "default_interval",
        deserialize_with = "tandem_toml::duration::field"
    )]
    pub interval: Duration,
    /// Missed heartbeats (on every link) before a peer is dead.
    #[serde(default = "default_lost_threshold")]
    pub lost_threshold: u32,
    /// Whether a better-ranked node takes the service back.
    #[serde(default = "default_true")]
    pub preempt: bool,
    /// How long a node must be healthy before it preempts.
    #[serde(default, deserialize_with = "tandem_toml::duration::field")]
    pub preempt_delay: Duration,
    /// The longest holdoff honoured.
    #[serde(
        default = "default_holdoff_max",
        deserialize_with = "tandem_toml::duration::field"
    )]
    pub holdoff_max: Duration,
    /// What a failing local monitor does: `off`, `restore`, `become-secondary`.
    #[serde(default = "default_on_failure")]
    pub on_failure: OnFailureName,
    /// Failover groups in active-active mode, by preferred node.
    #[serde(default)]
    pub groups: Vec<GroupSection>,
    /// Count each peer's service port (its `[[peer]] service`) as one more
    /// heartbeat link: a peer whose heartbeats are lost but whose service
    /// answers is not declared dead (FortiMail's remote-as-heartbeat).
    #[serde(default)]
    pub remote_as_heartbeat: bool,
    /// Who decides which node serves: `peers` or `etcd` (with `[etcd]`).
    #[serde(default)]
    pub coordination: CoordinationName,
}

/// The mode, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModeName {
    /// One active, the rest standby.
    ActivePassive,
    /// All serve; only config is shared.
    ConfigOnly,
    /// Two or more failover groups.
    ActiveActive,
}

/// `on_failure`, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailureName {
    /// Stop HA until `ha restart`.
    Off,
    /// Fail, then take back the configured role on recovery.
    Restore,
    /// Fail, then stay standby on recovery.
    BecomeSecondary,
}

/// `[[cluster.groups]]`: one failover group.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSection {
    /// The node that should hold the group.
    pub preferred: Option<String>,
}

fn default_mode() -> ModeName {
    ModeName::ActivePassive
}
fn default_interval() -> Duration {
    Duration::from_millis(200)
}
fn default_lost_threshold() -> u32 {
    3
}
fn default_holdoff_max() -> Duration {
    Duration::from_secs(300)
}
fn default_on_failure() -> OnFailureName {
    OnFailureName::BecomeSecondary
}
fn default_true() -> bool {
    true
}
