//! `[monitor]`: how the lservice and rservice probes run (FortiMail's
//! monitors). Read here with the other sections; [`crate::monitor`] runs
//! the probes.

use std::time::Duration;

use serde::Deserialize;

/// `[monitor]` in the config; a key left out takes its value from
/// [`MonitorSection::default`].
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorSection {
    /// Probe the local service on the VIP while serving.
    pub lservice: bool,
    /// Time between probes.
    #[serde(deserialize_with = "tandem_toml::duration::field")]
    pub interval: Duration,
    /// A probe's timeout.
    #[serde(deserialize_with = "tandem_toml::duration::field")]
    pub timeout: Duration,
    /// Misses in a row before the verdict turns to unhealthy.
    pub failures: u32,
    /// Also wait for the service's first byte (SMTP, FTP and SSH greet
    /// first): catches a service that still holds its socket but no longer
    /// serves, which a bare connect cannot see — the kernel completes the
    /// handshake from the listen backlog.
    pub banner: bool,
}

impl Default for MonitorSection {
    fn default() -> Self {
        MonitorSection {
            lservice: true,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            failures: 3,
            banner: false,
        }
    }
}
