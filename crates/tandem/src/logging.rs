//! Log output: tracing events to stderr, so stdout stays clean for command
//! output (`--json` pipes into `jq` untouched).
//!
//! `-v`/`-q` move the level from the default `warn`; `RUST_LOG`, when set,
//! wins, so a single module can be traced without rebuilding. JSON lines
//! (`--log-format json`) are for journald and log shippers.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(verbose: u8, quiet: u8, format: LogFormat) {
    let level = match i16::from(verbose) - i16::from(quiet) {
        ..=-2 => "off",
        -1 => "error",
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
