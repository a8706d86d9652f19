//! Relay settings: limits, timeouts, delivery tuning; read from TOML.
//!
//! Everything has a default, so `serve` runs with no file at all; `--config
//! FILE` overrides what it names. Unknown keys are errors (a typo must not
//! silently leave a limit at its default), reported with file, line and key.
//!
//! ```toml
//! hostname = "relay.example"
//! [limits]
//! max_message_size = 10485760
//! max_recipients = 100
//! max_sessions = 200
//! command_timeout = "5m"
//! [delivery]
//! concurrency = 8
//! retry_base = "1s"
//! retry_max = "5m"
//! rescan_interval = "1s"
//! [listener]
//! drain_timeout = "30s"
//! ```

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// The whole relay configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Our name: in the greeting, the EHLO reply, the `Received:` header, and our EHLO to the next hop.
    pub hostname: String,
    /// Protocol limits of the SMTP server.
    pub limits: Limits,
    /// How the queue is delivered to the next hop.
    pub delivery: DeliveryConfig,
    /// Listener behaviour (suspend / drain).
    pub listener: ListenerConfig,
}

/// Limits of the SMTP server, each answered with its standard reply.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Longest command or text line, CRLF included (RFC 5321: 1000). Longer: `500 5.5.2`.
    pub max_line_length: usize,
    /// Largest message body in octets, announced in `SIZE`. Larger: `552 5.3.4`.
    pub max_message_size: usize,
    /// Most recipients in one transaction. More: `452 4.5.3`.
    pub max_recipients: usize,
    /// Most concurrent sessions. More: `421 4.3.2` and close.
    pub max_sessions: usize,
    /// Most commands that fail (5xx) in one session before we hang up.
    pub max_errors: usize,
    /// How long we wait for a command or a line of DATA. Then: `421 4.4.2`.
    #[serde(deserialize_with = "tandem_toml::duration::field")]
    pub command_timeout: Duration,
}

/// Delivery to the next hop.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Parallel connections to the next hop; each is reused across messages.
    pub concurrency: usize,
    /// First retry delay after a temporary failure; doubles on each attempt.
    #[serde(deserialize_with = "tandem_toml::duration::field")]
    pub retry_base: Duration,
    /// Longest retry delay.
    #[serde(deserialize_with = "tandem_toml::duration::field")]
    pub retry_max: Duration,
    /// Time allowed to connect to the next hop.
    #[serde(deserialize_with = "tandem_toml::duration::field")]
    pub connect_timeout: Duration,
    /// Time allowed for each reply of the next hop.
    #[serde(deserialize_with = "tandem_toml::duration::field")]
    pub reply_timeout: Duration,
    /// Messages one connection sends before it is closed and reopened.
    pub max_messages_per_connection: usize,
    /// How often `queue/` is listed for messages another process wrote into
    /// it (the HA agent merging quarantined messages back), so they are
    /// delivered without a restart.
    #[serde(deserialize_with = "tandem_toml::duration::field")]
    pub rescan_interval: Duration,
}

/// Listener behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// Default drain timeout of a suspend (sessions still open then get `421 4.3.2`).
    #[serde(deserialize_with = "tandem_toml::duration::field")]
    pub drain_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hostname: "tandem-mta.localdomain".to_string(),
            limits: Limits::default(),
            delivery: DeliveryConfig::default(),
            listener: ListenerConfig::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line_length: 1000,
            max_message_size: 10 * 1024 * 1024,
            max_recipients: 100,
            max_sessions: 500,
            max_errors: 20,
            command_timeout: Duration::from_secs(300),
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            concurrency: 16,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(120),
            max_messages_per_connection: 10_000,
            rescan_interval: Duration::from_secs(1),
        }
    }
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            drain_timeout: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// Reads and validates a TOML file; errors name the file, line and key.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::path(path, e))?;
        Config::from_toml(&text).map_err(|(line, message)| Error::Config {
            path: path.to_path_buf(),
            line,
            message,
        })
    }

    /// Parses TOML text; the error is (1-based line or 0, message).
    pub fn from_toml(text: &str) -> std::result::Result<Config, (usize, String)> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(0);
            (line, e.message().to_string())
        })?;
        config.validate().map_err(|m| (0, m))?;
        Ok(config)
    }

    /// Rejects values that would make the relay useless or unsafe.
    fn validate(&self) -> std::result::Result<(), String> {
        let l = &self.limits;
        if l.max_line_length < 512 {
            return Err("limits.max_line_length must be at least 512 (RFC 5321)".into());
        }
        if l.max_recipients == 0 || l.max_sessions == 0 || l.max_message_size == 0 {
            return Err(
                "limits.max_recipients, max_sessions and max_message_size must be positive".into(),
            );
        }
        if self.delivery.concurrency == 0 || self.delivery.max_messages_per_connection == 0 {
            return Err(
                "delivery.concurrency and max_messages_per_connection must be positive".into(),
            );
        }
        if self.delivery.retry_base.is_zero() || self.delivery.retry_max < self.delivery.retry_base
        {
            return Err("delivery.retry_base must be positive and at most retry_max".into());
        }
        if self.delivery.rescan_interval.is_zero() {
            return Err("delivery.rescan_interval must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = Config::from_toml("[limits]\nmax_recipients = 3\ncommand_timeout = \"250ms\"\n")
            .expect("parse the config");
        assert_eq!(c.limits.max_recipients, 3);
        assert_eq!(c.limits.command_timeout, Duration::from_millis(250));
        assert_eq!(c.limits.max_line_length, 1000);
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let (line, msg) =
            Config::from_toml("hostname = \"x\"\n\n[limits]\nmax_recipientz = 3\n").unwrap_err();
        assert_eq!(line, 4);
        assert!(msg.contains("max_recipientz"), "{msg}");
    }

    #[test]
    fn file_errors_name_file_line_and_key() {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, "[delivery]\nconcurrency = 4\nretry_bse = \"1s\"\n")
            .expect("write the config");
        let msg = Config::from_file(&path).unwrap_err().to_string();
        assert!(msg.starts_with(&format!("{}:3:", path.display())), "{msg}");
        assert!(msg.contains("retry_bse"), "{msg}");
    }

    #[test]
    fn bad_duration() {
        let (line, msg) =
            Config::from_toml("[delivery]\nretry_base = \"3 fortnights\"\n").unwrap_err();
        assert_eq!(line, 2);
        assert!(msg.contains("duration"), "{msg}");
    }
}
