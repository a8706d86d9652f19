//! `[etcd]`: where the coordination store is and how long a session lives
//! (`[cluster] coordination = "etcd"`). Read here with the other sections;
//! [`crate::store`] talks to it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// etcd's smallest lease TTL with its default timings: ceil(1.5 × the
/// 1 s election timeout) rounds up to 2 s (server.go `minTTL`). A shorter
/// TTL is raised by etcd itself, so a node would believe its session
/// shorter than it is and a standby would wait longer than it thinks.
pub const MIN_TTL: Duration = Duration::from_secs(2);

/// `[cluster] coordination`, as written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CoordinationName {
    /// The peers alone (the default).
    #[default]
    Peers,
    /// An etcd cluster (`[etcd]`).
    Etcd,
}

/// `[etcd]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSection {
    /// Client URLs of the etcd members, e.g. `["http://10.0.0.3:2379"]`.
    pub endpoints: Vec<String>,
    /// Where the cluster's keys live (default `/tandem/CLUSTER`).
    pub prefix: Option<String>,
    /// The session's time to live (at least 2 s).
    #[serde(
        default = "default_ttl",
        deserialize_with = "tandem_toml::duration::field"
    )]
    pub ttl: Duration,
    /// How long a connection attempt may take.
    #[serde(
        default = "default_dial_timeout",
        deserialize_with = "tandem_toml::duration::field"
    )]
    pub dial_timeout: Duration,
    /// CA certificate (PEM) that signed the members' certificates.
    pub ca: Option<PathBuf>,
    /// This node's client certificate (PEM), with `key`.
    pub cert: Option<PathBuf>,
    /// This node's client key (PEM), with `cert`.
    pub key: Option<PathBuf>,
    /// Keep serving without etcd while every peer answers (Patroni's
    /// failsafe mode).
    #[serde(default)]
    pub failsafe: bool,
}

/// `[etcd]`, checked, with paths resolved and the prefix settled.
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    /// Client URLs.
    pub endpoints: Vec<String>,
    /// Key prefix, without a trailing slash.
    pub prefix: String,
    /// Session time to live.
    pub ttl: Duration,
    /// Connection timeout.
    pub dial_timeout: Duration,
    /// TLS files, if any.
    pub ca: Option<PathBuf>,
    /// Client certificate.
    pub cert: Option<PathBuf>,
    /// Client key.
    pub key: Option<PathBuf>,
    /// Failsafe mode.
    pub failsafe: bool,
}

impl EtcdSection {
    /// Checks the section; on error, the key at fault and what to do.
    pub fn settle(
        self,
        cluster: &str,
        base: &Path,
    ) -> Result<EtcdSettings, (&'static str, String)> {
        if self.endpoints.is_empty() {
            return Err((
                "etcd.endpoints",
                "list at least one etcd client URL, e.g. [\"http://10.0.0.3:2379\"]".into(),
            ));
        }
        if let Some(bad) = self
            .endpoints
            .iter()
            .find(|e| !(e.starts_with("http://") || e.starts_with("https://")))
        {
            return Err((
                "etcd.endpoints",
                format!("{bad:?} is not a client URL: write http://HOST:PORT or https://HOST:PORT"),
            ));
        }
        if self.ttl < MIN_TTL || self.ttl.subsec_nanos() != 0 {
            return Err((
                "etcd.ttl",
                format!(
                    "{:?} cannot be kept: etcd leases are whole seconds and at least {} s with its default timings (1.5 × the election timeout); write \"2s\" or more",
                    self.ttl,
                    MIN_TTL.as_secs()
                ),
            ));
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err((
                "etcd.cert",
                "a client certificate needs its key: give both `cert` and `key`, or neither".into(),
            ));
        }
        let prefix = self
            .prefix
            .unwrap_or_else(|| format!("/tandem/{cluster}"))
            .trim_end_matches('/')
            .to_string();
        if !prefix.starts_with('/') {
            return Err((
                "etcd.prefix",
                format!("{prefix:?} must start with '/', e.g. \"/tandem/{cluster}\""),
            ));
        }
        let resolve = |p: Option<PathBuf>| p.map(|p| base.join(p));
        Ok(EtcdSettings {
            endpoints: self.endpoints,
            prefix,
            ttl: self.ttl,
            dial_timeout: self.dial_timeout,
            ca: resolve(self.ca),
            cert: resolve(self.cert),
            key: resolve(self.key),
            failsafe: self.failsafe,
        })
    }
}

fn default_ttl() -> Duration {
    MIN_TTL
}
fn default_dial_timeout() -> Duration {
    Duration::from_secs(1)
}
