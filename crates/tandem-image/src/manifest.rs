//! `manifest.toml`: what an image says about itself.
//!
//! ```toml
//! name = "tandem-mta"
//! version = "6.2.5"                 # a tandem-version Version
//! entrypoint = ["bin/relay", "--spool", "/var/spool/relay"]  # argv[0] relative to the image root
//! data_format = 1                   # a change means data must be migrated
//! protocol = [1, 2]                 # HA protocol versions the image's agent speaks
//! agent = "bin/tandem"              # optional: the image carries its own agent
//! [health]                          # optional: how to tell the release came up
//! tcp = "127.0.0.1:2525"            # or http = "http://127.0.0.1:8080/health", or command = [...]
//! timeout = "10s"
//! ```
//!
//! The manifest is checked when the image is built, verified and installed,
//! and every error names the key, so a bad manifest is caught at the build,
//! not on a node mid-upgrade.

use std::path::{Component, Path};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tandem_toml::{location as toml_location, parse_duration};
use tandem_version::Version;
use toml::Spanned;

use crate::Error;

/// The largest manifest accepted; a manifest is a few hundred bytes.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024;

/// How long a health check may take when the manifest does not say.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(30);

/// A parsed and checked manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Manifest {
    /// The release's name.
    pub name: String,
    /// The release's version.
    pub version: Version,
    /// The command that runs the release; the first element is a path
    /// relative to the image root.
    pub entrypoint: Vec<String>,
    /// How to tell the release came up, if the image says.
    pub health: Option<HealthCheck>,
    /// The data format the release reads and writes.
    pub data_format: u32,
    /// The HA protocol versions the image's agent speaks.
    pub protocol: Vec<u32>,
    /// The image's own agent binary, relative to the image root.
    pub agent: Option<String>,
}

/// One way to check that a booted release is healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    /// What to probe.
    pub probe: HealthProbe,
    /// How long the release has to pass, from its start.
    #[serde(with = "duration_text")]
    pub timeout: Duration,
}

/// What a health check probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthProbe {
    /// A TCP connect to this address succeeds.
    Tcp(String),
    /// An HTTP GET of this URL answers 2xx.
    Http(String),
    /// This command exits 0.
    Command(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: Spanned<String>,
    version: Spanned<String>,
    entrypoint: Spanned<Vec<String>>,
    health: Option<Spanned<RawHealth>>,
    data_format: u32,
    protocol: Spanned<Vec<u32>>,
    agent: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    tcp: Option<String>,
    http: Option<String>,
    command: Option<Vec<String>>,
    timeout: Option<Spanned<String>>,
}

impl Manifest {
    /// Parses and checks a manifest; `origin` is named in every error.
    pub fn parse(text: &str, origin: &str) -> Result<Manifest, Error> {
        let error = |span: std::ops::Range<usize>, key: &str, message: String| {
            let (line, column) = toml_location::position(text, span.start);
            Error::Manifest {
                origin: origin.to_string(),
                line,
                column,
                key: key.to_string(),
                message,
            }
        };
        let raw: RawManifest = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let key = toml_location::key_on_line(text, span.start, "manifest");
            error(span, &key, e.message().trim().to_string())
        })?;

        if raw.name.get_ref().trim().is_empty() {
            return Err(error(raw.name.span(), "name", "must not be empty".into()));
        }
        let version = raw
            .version
            .get_ref()
            .parse::<Version>()
            .map_err(|e| error(raw.version.span(), "version", e.to_string()))?;
        let entrypoint = raw.entrypoint.get_ref().clone();
        match entrypoint.first() {
            None => {
                return Err(error(
                    raw.entrypoint.span(),
                    "entrypoint",
                    "must name the program to run, e.g. [\"bin/service\"]".into(),
                ));
            }
            Some(program) => check_relative(program)
                .map_err(|m| error(raw.entrypoint.span(), "entrypoint", m))?,
        }
        if raw.protocol.get_ref().is_empty() {
            return Err(error(
                raw.protocol.span(),
                "protocol",
                "must list the HA protocol versions the image speaks, e.g. [1, 2]".into(),
            ));
        }
        let agent = match raw.agent {
            Some(agent) => {
                check_relative(agent.get_ref()).map_err(|m| error(agent.span(), "agent", m))?;
                Some(agent.into_inner())
            }
            None => None,
        };
        let health = raw
            .health
            .map(|health| {
                let span = health.span();
                let health = health.into_inner();
                let timeout = match health.timeout {
                    Some(t) => parse_duration(t.get_ref())
                        .map_err(|m| error(t.span(), "health.timeout", m))?,
                    None => DEFAULT_HEALTH_TIMEOUT,
                };
                let probe = match (health.tcp, health.http, health.command) {
                    (Some(addr), None, None) => HealthProbe::Tcp(addr),
                    (None, Some(url), None) if url.starts_with("http://") => HealthProbe::Http(url),
                    (None, Some(url), None) => {
                        return Err(error(
                            span,
                            "health.http",
                            format!("{url:?} must be a plain http:// URL"),
                        ));
                    }
                    (None, None, Some(argv)) if !argv.is_empty() => HealthProbe::Command(argv),
                    _ => {
                        return Err(error(
                            span,
                            "health",
                            "give exactly one of tcp, http or a non-empty command".into(),
                        ));
                    }
                };
                Ok(HealthCheck { probe, timeout })
            })
            .transpose()?;

        Ok(Manifest {
            name: raw.name.into_inner(),
            version,
            entrypoint,
            health,
            data_format: raw.data_format,
            protocol: raw.protocol.into_inner(),
            agent,
        })
    }
}

/// A path inside the image: relative, without `..`.
fn check_relative(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    if path.is_empty() || p.is_absolute() {
        return Err(format!(
            "{path:?} must be a path relative to the image root"
        ));
    }
    if p.components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!("{path:?} must stay inside the image (no '..')"));
    }
    Ok(())
}

mod duration_text {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}ms", d.as_millis()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "relay"
version = "6.2.5"
entrypoint = ["bin/relay", "--fast"]
data_format = 2
protocol = [1, 2]
agent = "bin/tandem"
[health]
tcp = "127.0.0.1:2525"
timeout = "1500ms"
"#;

    fn error_of(text: &str) -> String {
        match Manifest::parse(text, "m.toml") {
            Ok(m) => panic!("expected an error, parsed {m:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_every_key() {
        let m = Manifest::parse(GOOD, "m.toml").expect("parse the manifest");
        assert_eq!(m.name, "relay");
        assert_eq!(m.version.to_string(), "6.2.5");
        assert_eq!(m.entrypoint, ["bin/relay", "--fast"]);
        assert_eq!(m.data_format, 2);
        assert_eq!(m.protocol, [1, 2]);
        assert_eq!(m.agent.as_deref(), Some("bin/tandem"));
        assert_eq!(
            m.health,
            Some(HealthCheck {
                probe: HealthProbe::Tcp("127.0.0.1:2525".into()),
                timeout: Duration::from_millis(1500)
            })
        );
    }

    #[test]
    fn errors_name_line_and_key() {
        let bad_version = GOOD.replace("\"6.2.5\"", "\"6.x.5\"");
        assert_eq!(
            error_of(&bad_version),
            "m.toml:3:11: version: bad version \"6.x.5\": minor \"x\" is not a number"
        );
        let escaping = GOOD.replace("\"bin/relay\"", "\"../relay\"");
        assert!(
            error_of(&escaping)
                .starts_with("m.toml:4:14: entrypoint: \"../relay\" must stay inside")
        );
        let absolute = GOOD.replace("bin/tandem", "/usr/bin/tandem");
        assert!(error_of(&absolute).contains("agent: \"/usr/bin/tandem\" must be a path relative"));
        let two_probes = GOOD.replace("timeout", "http = \"http://x/\"\ntimeout");
        assert!(error_of(&two_probes).contains("health: give exactly one of tcp, http"));
        let bad_timeout = GOOD.replace("1500ms", "1500 parsecs");
        let error = error_of(&bad_timeout);
        assert!(
            error.contains("health.timeout: \"1500 parsecs\" is not a duration"),
            "{error}"
        );
        assert!(error.contains("unknown unit \"parsecs\""), "{error}");
        let unknown = format!("{GOOD}\ncolour = \"red\"\n");
        assert!(error_of(&unknown).contains("unknown field `colour`"));
        let missing = GOOD.replace("data_format = 2\n", "");
        assert!(error_of(&missing).contains("missing field `data_format`"));
        let no_protocol = GOOD.replace("[1, 2]", "[]");
        assert!(error_of(&no_protocol).contains("protocol: must list"));
    }
}
