//! The agent's configuration file: one TOML file per node.
//!
//! Node-local settings (`[node]`: name, priority, role, addresses) are kept
//! apart from cluster-wide ones (`[cluster]`, `[vip]`, `[service]`), which
//! must be the same on every node — config sync will push only those. The
//! file is validated completely before the agent starts (`tandem config
//! check FILE` runs the same code), and every error names the file, line and
//! key, because a mistake found at 3 a.m. by a failing failover is the most
//! expensive kind. Every key is documented in `docs/config.md`.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tandem_core::{ConfiguredRole, FailoverGroup, GroupId, Mode, NodeConfig, OnFailure};
use toml::Spanned;

use crate::Error;

mod cluster;
mod etcd;
mod images;
mod monitor;
mod sync;

use crate::vip_ip::{GarpPlan, IpVip};
pub use cluster::{ClusterSection, GroupSection, ModeName, OnFailureName};
pub use etcd::{CoordinationName, EtcdSection, EtcdSettings};
pub use images::ImagesSection;
pub use monitor::MonitorSection;
pub use sync::{ConfigChangeAction, SyncSection, SyncSettings};

/// A validated agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where the file was read from (for messages).
    pub origin: PathBuf,
    /// This node's settings.
    pub node: NodeSection,
    /// Settings every node shares.
    pub cluster: ClusterSection,
    /// Heartbeat links, in order; peers list their address on each.
    pub links: Vec<LinkSection>,
    /// The other nodes.
    pub peers: Vec<PeerSection>,
    /// The service address.
    pub vip: VipSection,
    /// The protected service.
    pub service: ServiceSection,
    /// Service monitors.
    pub monitor: MonitorSection,
    /// Image trust.
    pub images: ImagesSection,
    /// The HMAC key for heartbeats and the API token, read from their files.
    pub secrets: Secrets,
    /// `[sync]`: config and data sync; `None` when absent (no replication).
    pub sync: Option<SyncSettings>,
    /// `[etcd]` when `coordination = "etcd"`.
    pub etcd: Option<EtcdSettings>,
}

/// The name of the extra link `remote_as_heartbeat` adds; it is the last.
pub const SERVICE_LINK: &str = "service";

/// `[node]`: settings of this node only; never synced.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Unique name in the cluster.
    pub name: String,
    /// Election priority, 0–255; higher wins among nodes of one role.
    pub priority: u8,
    /// `primary`, `secondary`, `config-only` or `off`.
    pub role: RoleName,
    /// Where the agent keeps its state (persisted HA state, slots, journal).
    pub state_dir: PathBuf,
    /// The management API's address (HTTP).
    pub api: SocketAddr,
    /// Where this node accepts peers' crash-detection connections (TCP).
    pub sync: SocketAddr,
    /// File holding the API's bearer token (mode 0600).
    pub token_file: PathBuf,
    /// The software version this node runs, shown in status.
    #[serde(default)]
    pub version: String,
}

/// The configured role, as written in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoleName {
    /// Preferred active.
    Primary,
    /// Standby by preference.
    Secondary,
    /// Serves always; only config is shared.
    ConfigOnly,
    /// Takes no part in HA.
    Off,
}

/// `[[link]]`: one heartbeat link.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSection {
    /// Its name, for status.
    pub name: String,
    /// Where this node listens for heartbeats on this link (UDP).
    pub listen: SocketAddr,
}

/// `[[peer]]`: another node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    /// Its name.
    pub name: String,
    /// Its heartbeat address on each link, in `[[link]]` order.
    pub links: Vec<SocketAddr>,
    /// Its crash-detection (sync) address.
    pub sync: SocketAddr,
    /// Its management API.
    pub api: SocketAddr,
    /// Its service's own address, probed by the rservice monitor.
    #[serde(default)]
    pub service: Option<SocketAddr>,
}

/// `[vip]`: the address clients use.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipSection {
    /// `bind`: the active node binds `listen` and passes the sockets to the
    /// service (loopback-friendly). `ip`: the active node adds `address` to
    /// `interface` and announces it with gratuitous ARP.
    #[serde(default = "default_vip_mode")]
    pub mode: String,
    /// Sockets the agent binds (after adding the address, in `ip` mode) and
    /// hands to the service; may be empty in `ip` mode.
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// `ip` mode: the interface that carries the VIP.
    pub interface: Option<String>,
    /// `ip` mode: the address with its prefix, e.g. `198.18.0.100/24`; in
    /// active-active mode, one per failover group in `addresses`.
    pub address: Option<String>,
    /// `ip` mode, active-active: one address per failover group.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// `ip` mode: gratuitous ARP frames sent on a claim.
    #[serde(default = "default_garp_count")]
    pub garp_count: u32,
    /// `ip` mode: time between those frames.
    #[serde(
        default = "default_garp_interval",
        deserialize_with = "tandem_toml::duration::field"
    )]
    pub garp_interval: Duration,
}

fn default_garp_count() -> u32 {
    3
}
fn default_garp_interval() -> Duration {
    Duration::from_millis(50)
}

impl VipSection {
    /// The `ip` mode addresses: `addresses`, or the single `address`.
    pub fn ip_addresses(&self) -> Vec<&str> {
        if self.addresses.is_empty() {
            self.address.iter().map(String::as_str).collect()
        } else {
            self.addresses.iter().map(String::as_str).collect()
        }
    }

    /// The `ip` mode VIPs, one per failover group (empty in `bind` mode).
    pub fn ip_vips(&self) -> Vec<IpVip> {
        let (Some(interface), "ip") = (self.interface.as_deref(), self.mode.as_str()) else {
            return Vec::new();
        };
        let plan = GarpPlan {
            count: self.garp_count,
            spacing: self.garp_interval,
        };
        // Validated when the config was parsed.
        self.ip_addresses()
            .into_iter()
            .filter_map(|a| IpVip::parse(interface, a).ok())
            .map(|v| v.with_garp(plan))
            .collect()
    }
}

/// `[service]`: what to run on the active node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    /// The command and its arguments.
    pub command: Vec<String>,
    /// Time from SIGTERM to SIGKILL on stop.
    #[serde(
        default = "default_grace",
        deserialize_with = "tandem_toml::duration::field"
    )]
    pub grace: Duration,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// Appended to an image's entrypoint when the service runs from an
    /// image slot (which replaces `command`).
    #[serde(default)]
    pub args: Vec<String>,
    /// How `tandem listener suspend|resume` reaches the service.
    #[serde(default)]
    pub suspend: SuspendMethod,
}

/// How the listener is suspended and resumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SuspendMethod {
    /// Works for any service: the agent shuts the VIP sockets down (new
    /// connections are refused; sessions in progress go on) and on resume
    /// binds fresh ones and restarts the service with them.
    #[default]
    Socket,
    /// The service drains itself: SIGUSR1 suspends, SIGUSR2 resumes, the
    /// drain timeout is left in `$TANDEM_CONTROL_DIR/drain-timeout-ms`
    /// (`tandem mta serve` does this).
    Signal,
}

/// Secrets read from the files the config names.
#[derive(Clone)]
pub struct Secrets {
    /// The heartbeat HMAC key.
    pub cluster_key: Vec<u8>,
    /// The API bearer token.
    pub api_token: String,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets { .. }")
    }
}

fn default_vip_mode() -> String {
    "bind".into()
}
fn default_grace() -> Duration {
    Duration::from_secs(5)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: Spanned<NodeSection>,
    cluster: Spanned<ClusterSection>,
    #[serde(default, rename = "link")]
    links: Vec<LinkSection>,
    #[serde(default, rename = "peer")]
    peers: Vec<Spanned<PeerSection>>,
    vip: Spanned<VipSection>,
    service: Spanned<ServiceSection>,
    #[serde(default)]
    monitor: MonitorSection,
    #[serde(default)]
    images: ImagesSection,
    sync: Option<Spanned<SyncSection>>,
    etcd: Option<Spanned<EtcdSection>>,
}

impl AgentConfig {
    /// Reads, parses and validates a config file, and reads the key and
    /// token files it names.
    pub fn load(path: &Path) -> Result<AgentConfig, Error> {
        // Absolute from here on: every relative path in the file is
        // resolved against its directory, and config sync compares those
        // paths with the absolute ones inotify reports (a relative
        // `--config` left edits unseen until the periodic push).
        let absolute = std::path::absolute(path).map_err(|e| Error::Config {
            origin: path.display().to_string(),
            line: 0,
            key: String::new(),
            message: format!("cannot resolve the path: {e}"),
        })?;
        let path = absolute.as_path();
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            origin: path.display().to_string(),
            line: 0,
            key: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        let config = Self::parse(&text, path)?;
        let secrets = Secrets {
            cluster_key: read_secret(&config, &config.cluster.key_file, "cluster.key_file", 16)?,
            api_token: String::from_utf8_lossy(&read_secret(
                &config,
                &config.node.token_file,
                "node.token_file",
                16,
            )?)
            .trim()
            .to_string(),
        };
        Ok(AgentConfig { secrets, ..config })
    }

    /// Parses and validates config text; secrets are left empty.
    pub fn parse(text: &str, origin: &Path) -> Result<AgentConfig, Error> {
        let error = |span: Range<usize>, key: &str, message: String| Error::Config {
            origin: origin.display().to_string(),
            line: tandem_toml::location::position(text, span.start).0,
            key: key.to_string(),
            message,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let key = tandem_toml::location::key_on_line(text, span.start, "config");
            error(span, &key, e.message().trim().to_string())
        })?;

        let node_span = raw.node.span();
        let node = raw.node.into_inner();
        if node.name.is_empty() || node.name.len() > tandem_core::MAX_NAME_LEN {
            return Err(error(
                node_span,
                "node.name",
                format!("must be 1 to {} bytes", tandem_core::MAX_NAME_LEN),
            ));
        }
        let cluster_span = raw.cluster.span();
        let cluster = raw.cluster.into_inner();
        if raw.links.is_empty() {
            return Err(error(
                0..0,
                "link",
                "at least one [[link]] (a heartbeat address) is needed".into(),
            ));
        }
        let mut peers = Vec::new();
        for (i, peer) in raw.peers.into_iter().enumerate() {
            let span = peer.span();
            let peer = peer.into_inner();
            if peer.name == node.name {
                return Err(error(
                    span,
                    &format!("peer[{i}].name"),
                    format!("{:?} is this node's own name", peer.name),
                ));
            }
            if peer.links.len() != raw.links.len() {
                return Err(error(
                    span,
                    &format!("peer[{i}].links"),
                    format!(
                        "lists {} addresses but there are {} [[link]] tables: give the peer's address on each link, in order",
                        peer.links.len(),
                        raw.links.len()
                    ),
                ));
            }
            if peers.iter().any(|p: &PeerSection| p.name == peer.name) {
                return Err(error(
                    span,
                    &format!("peer[{i}].name"),
                    format!("{:?} is listed twice", peer.name),
                ));
            }
            peers.push(peer);
        }
        if cluster.remote_as_heartbeat
            && let Some(peer) = peers.iter().find(|p| p.service.is_none())
        {
            return Err(error(
                cluster_span.clone(),
                "cluster.remote_as_heartbeat",
                format!(
                    "needs every peer's service address; peer {:?} has no `service`",
                    peer.name
                ),
            ));
        }
        if peers.is_empty() {
            return Err(error(
                0..0,
                "peer",
                "at least one [[peer]] is needed: tandem runs a cluster".into(),
            ));
        }
        let vip_span = raw.vip.span();
        let vip = raw.vip.into_inner();
        match vip.mode.as_str() {
            "bind" if vip.listen.is_empty() => {
                return Err(error(
                    vip_span,
                    "vip.listen",
                    "name at least one address".into(),
                ));
            }
            "bind" => {}
            "ip" => {
                let interface = vip.interface.as_deref().ok_or_else(|| {
                    error(
                        vip_span.clone(),
                        "vip.interface",
                        "ip mode needs the interface that carries the VIP".into(),
                    )
                })?;
                let addresses = vip.ip_addresses();
                if addresses.is_empty() {
                    return Err(error(
                        vip_span,
                        "vip.address",
                        "ip mode needs the address with its prefix, e.g. \"198.18.0.100/24\""
                            .into(),
                    ));
                }
                for address in addresses {
                    IpVip::parse(interface, address)
                        .map_err(|e| error(vip_span.clone(), "vip.address", e.to_string()))?;
                }
            }
            other => {
                return Err(error(
                    vip_span,
                    "vip.mode",
                    format!("{other:?}: use \"bind\" or \"ip\""),
                ));
            }
        }
        let service_span = raw.service.span();
        let service = raw.service.into_inner();
        if service.command.is_empty() {
            return Err(error(
                service_span,
                "service.command",
                "name the program to run".into(),
            ));
        }
        let mode_groups = match cluster.mode {
            ModeName::ActiveActive => cluster.groups.len(),
            _ => 1,
        };
        if cluster.mode == ModeName::ActiveActive && mode_groups < 2 {
            return Err(error(
                cluster_span,
                "cluster.groups",
                "active-active mode needs two or more [[cluster.groups]]".into(),
            ));
        }
        let per_group = if vip.mode == "ip" {
            vip.ip_addresses().len()
        } else {
            vip.listen.len()
        };
        if cluster.mode == ModeName::ActiveActive && per_group != mode_groups {
            return Err(error(
                vip_span,
                if vip.mode == "ip" {
                    "vip.addresses"
                } else {
                    "vip.listen"
                },
                format!("active-active mode needs one address per failover group ({mode_groups})"),
            ));
        }

        // Relative paths are relative to the config file, so a config and
        // its key files can move together.
        let base = origin.parent().unwrap_or(Path::new("."));
        let mut node = node;
        let mut cluster = cluster;
        let mut service = service;
        node.state_dir = base.join(&node.state_dir);
        node.token_file = base.join(&node.token_file);
        cluster.key_file = base.join(&cluster.key_file);
        service.cwd = service.cwd.map(|cwd| base.join(cwd));
        let etcd = match (cluster.coordination, raw.etcd) {
            (CoordinationName::Etcd, Some(section)) => {
                let span = section.span();
                let settings = section
                    .into_inner()
                    .settle(&cluster.name, base)
                    .map_err(|(key, message)| error(span, key, message))?;
                Some(settings)
            }
            (CoordinationName::Etcd, None) => {
                return Err(error(
                    cluster_span,
                    "cluster.coordination",
                    "\"etcd\" needs an [etcd] section with its endpoints".into(),
                ));
            }
            (CoordinationName::Peers, Some(section)) => {
                return Err(error(
                    section.span(),
                    "etcd",
                    "[etcd] is used only with [cluster] coordination = \"etcd\": set that, or remove the section".into(),
                ));
            }
            (CoordinationName::Peers, None) => None,
        };
        let sync = match raw.sync {
            Some(section) => {
                let span = section.span();
                let settings = section
                    .into_inner()
                    .resolve(base)
                    .map_err(|(key, message)| error(span.clone(), key, message))?;
                if cluster.mode != ModeName::ActivePassive
                    && settings.data_sync != tandem_sync::replicator::DataSync::Off
                {
                    return Err(error(
                        span,
                        "sync.data_sync",
                        "data replication needs one active node: in active-active and config-only modes every node serves its own data, and each would overwrite the others'; set data_sync = \"off\" (config files still sync), or use mode = \"active-passive\"".into(),
                    ));
                }
                if service.suspend == SuspendMethod::Signal
                    && matches!(
                        settings.on_config_change,
                        ConfigChangeAction::Signal(libc::SIGUSR1 | libc::SIGUSR2)
                    )
                {
                    return Err(error(
                        span,
                        "sync.on_config_change",
                        "SIGUSR1 and SIGUSR2 already suspend and resume the listener ([service] suspend = \"signal\"); give the service's reload signal, e.g. \"signal:HUP\", or \"restart\"".into(),
                    ));
                }
                if settings.config.iter().any(|f| f == origin) {
                    return Err(error(
                        span,
                        "sync.config",
                        format!(
                            "{} is this agent's own config: it holds node-local settings ([node]) that never sync; list the service's config files instead",
                            origin.display()
                        ),
                    ));
                }
                Some(settings)
            }
            None => None,
        };

        let config = AgentConfig {
            origin: origin.to_path_buf(),
            node,
            cluster,
            links: raw.links,
            peers,
            vip,
            service,
            monitor: raw.monitor,
            images: ImagesSection {
                trusted_keys: raw
                    .images
                    .trusted_keys
                    .iter()
                    .map(|k| base.join(k))
                    .collect(),
                allow_unsigned: raw.images.allow_unsigned,
            },
            sync,
            etcd,
            secrets: Secrets {
                cluster_key: Vec::new(),
                api_token: String::new(),
            },
        };
        config
            .node_config()
            .validate()
            .map_err(|e| error(0..0, "config", e.to_string()))?;
        Ok(config)
    }

    /// The state machine's view of this config.
    pub fn node_config(&self) -> NodeConfig {
        let role = match self.node.role {
            RoleName::Primary => ConfiguredRole::Primary,
            RoleName::Secondary => ConfiguredRole::Secondary,
            RoleName::ConfigOnly => ConfiguredRole::ConfigOnly,
            RoleName::Off => ConfiguredRole::Off,
        };
        let peers: Vec<&str> = self.peers.iter().map(|p| p.name.as_str()).collect();
        let mut config = NodeConfig::new(&self.node.name, role, self.node.priority, &peers);
        config.mode = match self.cluster.mode {
            ModeName::ActivePassive => Mode::ActivePassive,
            ModeName::ConfigOnly => Mode::ConfigOnly,
            ModeName::ActiveActive => Mode::ActiveActive,
        };
        if config.mode == Mode::ActiveActive {
            config.groups = self
                .cluster
                .groups
                .iter()
                .enumerate()
                .map(|(i, g)| FailoverGroup {
                    id: GroupId(u8::try_from(i).unwrap_or(u8::MAX)),
                    preferred: g.preferred.clone(),
                })
                .collect();
        }
        config.links = self.links.iter().map(|l| l.name.clone()).collect();
        if self.cluster.remote_as_heartbeat {
            config.links.push(SERVICE_LINK.to_string());
        }
        config.interval = self.cluster.interval;
        config.lost_threshold = self.cluster.lost_threshold;
        config.preempt = self.cluster.preempt;
        config.preempt_delay = self.cluster.preempt_delay;
        config.holdoff_max = self.cluster.holdoff_max;
        config.on_failure = match self.cluster.on_failure {
            OnFailureName::Off => OnFailure::Off,
            OnFailureName::Restore => OnFailure::Restore,
            OnFailureName::BecomeSecondary => OnFailure::BecomeSecondary,
        };
        config.version = self.node.version.clone();
        // With data replicated, a node's data must be compared with the
        // active's before it may take the service from it (issue 14).
        config.replicated_data = self.sync.as_ref().is_some_and(|s| {
            s.data_sync != tandem_sync::replicator::DataSync::Off && !s.allow_stale_takeover
        });
        // A service that drains itself drains before a preemption too, as
        // before any planned handover.
        config.drain_before_preemption =
            self.sync.is_some() && self.service.suspend == SuspendMethod::Signal;
        config.coordination = match self.cluster.coordination {
            CoordinationName::Peers => tandem_core::Coordination::Peers,
            CoordinationName::Etcd => tandem_core::Coordination::Store,
        };
        config.failsafe = self.etcd.as_ref().is_some_and(|e| e.failsafe);
        config
    }
}

fn read_secret(
    config: &AgentConfig,
    path: &Path,
    key: &str,
    min_len: usize,
) -> Result<Vec<u8>, Error> {
    let fail = |message: String| Error::Config {
        origin: config.origin.display().to_string(),
        line: 0,
        key: key.to_string(),
        message,
    };
    let bytes =
        std::fs::read(path).map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    // A secret others can read is no secret: say so, loudly, but start —
    // refusing would turn a permissions slip into an outage.
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                file = %path.display(),
                key,
                "the file is readable by group or others: chmod 600 it"
            );
        }
    }
    let trimmed = bytes.trim_ascii();
    if trimmed.len() < min_len {
        return Err(fail(format!(
            "{} holds {} bytes; at least {min_len} are needed (e.g. `head -c 32 /dev/urandom | base64 > {}`)",
            path.display(),
            trimmed.len(),
            path.display()
        )));
    }
    Ok(trimmed.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tandem agent --config examples/pair/alpha.toml`, as the example
    /// suggests: every path the agent uses comes out absolute, so config
    /// sync matches the absolute paths inotify reports.
    #[test]
    fn a_relative_config_path_gives_absolute_paths() {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let example = include_str!("../../../examples/pair/alpha.toml");
        let text = format!(
            "{example}\n[sync]\ncert_dir = \"certs\"\ndata_dir = \"data\"\nconfig = [\"mta.toml\"]\n"
        );
        std::fs::write(dir.path().join("alpha.toml"), text).expect("write the config");
        for secret in ["cluster.key", "api.token"] {
            let file = dir.path().join(secret);
            std::fs::write(&file, "a secret of more than sixteen bytes\n").expect("write a secret");
            std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("restrict a secret's permissions");
        }
        // The same file, named relative to the current directory.
        let cwd = std::env::current_dir().expect("read the current directory");
        let up: PathBuf = cwd.components().skip(1).map(|_| "..").collect();
        let relative = up.join(
            dir.path()
                .join("alpha.toml")
                .strip_prefix("/")
                .expect("strip the root from the config path"),
        );
        assert!(relative.is_relative());
        let config = AgentConfig::load(&relative).expect("load the config");
        assert!(config.origin.is_absolute(), "{}", config.origin.display());
        assert!(config.node.state_dir.is_absolute());
        let sync = config.sync.expect("parse the [sync] section");
        assert!(
            sync.config.iter().all(|p| p.is_absolute()),
            "{:?}",
            sync.config
        );
        assert!(sync.data_dir.is_absolute());
    }
}
