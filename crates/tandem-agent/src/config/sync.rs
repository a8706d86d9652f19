//! `[sync]` as written and as resolved: the keys, their defaults, and the
//! checks that name the key at fault (see `docs/config.md`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tandem_sync::replicator::{DataSync, SyncMode};

/// `[sync]` as written in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncSection {
    /// `off`, `async` or `semi`.
    #[serde(default = "default_data_sync")]
    pub data_sync: String,
    /// `degrade` or `strict`.
    #[serde(default = "default_sync_mode")]
    pub sync_mode: String,
    /// How long a commit waits for a standby, e.g. `"2s"`.
    #[serde(default = "default_sync_timeout")]
    pub sync_timeout: String,
    /// This node's certificate, key and the cluster CA (`tandem cert issue`).
    pub cert_dir: PathBuf,
    /// The service's data dir: what is replicated.
    pub data_dir: PathBuf,
    /// Where the cluster's agreed copy of each config file is kept.
    pub config_dir: Option<PathBuf>,
    /// Cluster config files, the same on every node: the active pushes
    /// them on change and every `config_sync_interval`.
    #[serde(default)]
    pub config: Vec<PathBuf>,
    /// How often the active pushes the config files even unchanged, e.g.
    /// `"30s"`: a node that missed a push gets it then.
    #[serde(default = "default_config_sync_interval")]
    pub config_sync_interval: String,
    /// Let a standby that is not in sync take over (it may lose data).
    #[serde(default)]
    pub allow_stale_takeover: bool,
    /// What the running service is told when a cluster config file changes
    /// on this node: `"none"`, `"signal:HUP"` (or another signal) or
    /// `"restart"`.
    #[serde(default = "default_on_config_change")]
    pub on_config_change: String,
    /// Merge quarantined files back into the active's data dir (issue
    /// 14): on by default, which is what a spool of queued messages needs.
    /// Off: they wait for `tandem sync quarantine restore|drop`.
    #[serde(default = "default_merge_quarantine")]
    pub merge_quarantine: bool,
}

fn default_merge_quarantine() -> bool {
    true
}

fn default_on_config_change() -> String {
    "none".into()
}

/// What the running service is told when a cluster config file changed on
/// this node: pushed here by the primary, or changed on the primary itself.
/// A service that is not running reads the new file when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigChangeAction {
    /// Nothing: the service re-reads its files itself, or the operator
    /// reloads it.
    None,
    /// This signal to the service's main process (e.g. postfix's and
    /// nginx's SIGHUP reload).
    Signal(libc::c_int),
    /// Stop and start the service, with the grace period of a stop.
    Restart,
}

impl std::str::FromStr for ConfigChangeAction {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        const SIGNALS: [(&str, libc::c_int); 4] = [
            ("HUP", libc::SIGHUP),
            ("USR1", libc::SIGUSR1),
            ("USR2", libc::SIGUSR2),
            ("WINCH", libc::SIGWINCH),
        ];
        match text {
            "none" => return Ok(ConfigChangeAction::None),
            "restart" => return Ok(ConfigChangeAction::Restart),
            _ => {}
        }
        let name = text
            .strip_prefix("signal:")
            .map(|s| s.trim_start_matches("SIG"));
        SIGNALS
            .iter()
            .find(|(known, _)| Some(*known) == name)
            .map(|(_, signal)| ConfigChangeAction::Signal(*signal))
            .ok_or_else(|| {
                format!(
                    "{text:?} is not an action: give \"none\", \"restart\" or \"signal:NAME\" with NAME one of HUP, USR1, USR2, WINCH"
                )
            })
    }
}

fn default_data_sync() -> String {
    "semi".into()
}
fn default_sync_mode() -> String {
    "degrade".into()
}
fn default_sync_timeout() -> String {
    "2s".into()
}
fn default_config_sync_interval() -> String {
    "30s".into()
}

/// `[sync]`, validated, with paths made absolute.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// How far a commit goes before it returns.
    pub data_sync: DataSync,
    /// What a commit does about a standby that does not confirm.
    pub sync_mode: SyncMode,
    /// How long a commit waits for a standby.
    pub sync_timeout: Duration,
    /// Certificates of this node.
    pub cert_dir: PathBuf,
    /// The replicated data dir.
    pub data_dir: PathBuf,
    /// Where the cluster's agreed copy of each config file is kept.
    pub config_dir: PathBuf,
    /// Cluster config files.
    pub config: Vec<PathBuf>,
    /// How often they are pushed even unchanged.
    pub config_sync_interval: Duration,
    /// A stale standby may take over.
    pub allow_stale_takeover: bool,
    /// What the running service is told when a config file changes here.
    pub on_config_change: ConfigChangeAction,
    /// Quarantined files go back to the active by themselves.
    pub merge_quarantine: bool,
}

impl SyncSection {
    /// Checks every key; relative paths are relative to `base` (the config
    /// file's directory). On error: the key at fault and what to do.
    pub fn resolve(self, base: &Path) -> Result<SyncSettings, (&'static str, String)> {
        let data_sync = self.data_sync.parse().map_err(|e| ("sync.data_sync", e))?;
        let sync_mode = self.sync_mode.parse().map_err(|e| ("sync.sync_mode", e))?;
        let sync_timeout = tandem_toml::parse_duration(&self.sync_timeout)
            .map_err(|e| ("sync.sync_timeout", e))?;
        if sync_timeout.is_zero() || sync_timeout > Duration::from_secs(60) {
            return Err((
                "sync.sync_timeout",
                format!(
                    "{:?} is out of range: give 1ms to 60s (a commit holds the client that long at most)",
                    self.sync_timeout
                ),
            ));
        }
        let data_dir = base.join(&self.data_dir);
        let config_dir = match &self.config_dir {
            Some(dir) => base.join(dir),
            None => data_dir.with_file_name(format!(
                "{}.config",
                data_dir
                    .file_name()
                    .map_or("data".into(), |n| n.to_string_lossy())
            )),
        };
        if config_dir.starts_with(&data_dir) || data_dir.starts_with(&config_dir) {
            return Err((
                "sync.config_dir",
                format!(
                    "{} and data_dir {} overlap: pushed config files would be replicated as data (or the reverse); use two separate directories",
                    config_dir.display(),
                    data_dir.display()
                ),
            ));
        }
        let config_sync_interval = tandem_toml::parse_duration(&self.config_sync_interval)
            .map_err(|e| ("sync.config_sync_interval", e))?;
        if config_sync_interval < Duration::from_secs(1) {
            return Err((
                "sync.config_sync_interval",
                format!(
                    "{:?} is too short: give 1s or more (changes are pushed at once anyway; this is the safety net)",
                    self.config_sync_interval
                ),
            ));
        }
        let mut config: Vec<PathBuf> = Vec::new();
        for file in &self.config {
            let path = base.join(file);
            let Some(name) = path.file_name() else {
                return Err((
                    "sync.config",
                    format!("{}: name a file, not a directory", file.display()),
                ));
            };
            // A pushed file is known by its name alone: the receiver puts
            // it where its own list has that name.
            if let Some(twin) = config.iter().find(|p| p.file_name() == Some(name)) {
                return Err((
                    "sync.config",
                    format!(
                        "{} and {} have the same file name; config files are pushed by name, so give each a distinct one",
                        twin.display(),
                        path.display()
                    ),
                ));
            }
            config.push(path);
        }
        Ok(SyncSettings {
            data_sync,
            sync_mode,
            sync_timeout,
            cert_dir: base.join(&self.cert_dir),
            data_dir,
            config_dir,
            config,
            config_sync_interval,
            allow_stale_takeover: self.allow_stale_takeover,
            merge_quarantine: self.merge_quarantine,
            on_config_change: self
                .on_config_change
                .parse()
                .map_err(|e| ("sync.on_config_change", e))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(extra: &str) -> SyncSection {
        toml::from_str(&format!(
            "cert_dir = \"certs\"\ndata_dir = \"data\"\n{extra}"
        ))
        .expect("parse the test TOML")
    }

    #[test]
    fn defaults_are_semi_degrade_two_seconds() {
        let settings = section("")
            .resolve(Path::new("/etc/tandem"))
            .expect("resolve the settings");
        assert_eq!(settings.data_sync, DataSync::Semi);
        assert_eq!(settings.sync_mode, SyncMode::Degrade);
        assert_eq!(settings.sync_timeout, Duration::from_secs(2));
        assert_eq!(settings.data_dir, Path::new("/etc/tandem/data"));
        assert_eq!(settings.config_dir, Path::new("/etc/tandem/data.config"));
        assert!(!settings.allow_stale_takeover);
        assert_eq!(settings.on_config_change, ConfigChangeAction::None);
    }

    #[test]
    fn config_change_actions_parse() {
        for (text, action) in [
            ("none", ConfigChangeAction::None),
            ("restart", ConfigChangeAction::Restart),
            ("signal:HUP", ConfigChangeAction::Signal(libc::SIGHUP)),
            ("signal:SIGUSR1", ConfigChangeAction::Signal(libc::SIGUSR1)),
        ] {
            assert_eq!(text.parse(), Ok(action), "{text}");
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        for (extra, key) in [
            ("data_sync = \"sync\"", "sync.data_sync"),
            ("sync_mode = \"lenient\"", "sync.sync_mode"),
            ("sync_timeout = \"0s\"", "sync.sync_timeout"),
            ("sync_timeout = \"soon\"", "sync.sync_timeout"),
            ("config_dir = \"data/config\"", "sync.config_dir"),
            (
                "config_sync_interval = \"10ms\"",
                "sync.config_sync_interval",
            ),
            ("config = [\"a/mta.toml\", \"b/mta.toml\"]", "sync.config"),
            ("on_config_change = \"reload\"", "sync.on_config_change"),
            (
                "on_config_change = \"signal:KILL\"",
                "sync.on_config_change",
            ),
        ] {
            let err = section(extra).resolve(Path::new("/x")).expect_err(extra);
            assert_eq!(err.0, key, "{extra}: {}", err.1);
        }
    }
}
