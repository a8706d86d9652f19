//! `[monitor]`: how the lservice and rservice probes run (FortiMail's
//! monitors). Read here with the other sections; [`crate::monitor`] runs
//! the probes.

use std::time::Duration;

use serde::Deserialize;

/// `[monitor]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorSection {
    /// Probe the local service on the VIP while serving.
    #[serde(default = "default_true")]
    pub lservice: bool,
    /// Time between probes.
    #[serde(
        default = "default_interval",
        deserialize_with = "tandem_toml::duration::field"
    )]
    pub interval: Duration,
    /// A probe's timeout.
    #[serde(
        default = "default_timeout",
        deserialize_with = "tandem_toml::duration::field"
    )]
    pub timeout: Duration,
    /// Misses in a row before the verdict turns to unhealthy.
    #[serde(default = "default_failures")]
    pub failures: u32,
    /// Also wait for the service's first byte (SMTP, FTP and SSH greet
    /// first): catches a service that still holds its socket but no longer
    /// serves, which a bare connect cannot see — the kernel completes the
    /// handshake from the listen backlog.
    #[serde(default)]
    pub banner: bool,
}

impl Default for MonitorSection {
    fn default() -> Self {
        MonitorSection {
            lservice: true,
            interval: default_interval(),
            timeout: default_timeout(),
            failures: default_failures(),
            banner: false,
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_timeout() -> Duration {
    Duration::from_millis(500)
}
fn default_failures() -> u32 {
    3
}
