//! `tandem upgrade simulate`: the figures of a fleet rollout before anyone
//! runs one — its duration (p50, p99) and the chance it stops — from
//! `tandem_upgrade::simulate`, which plays the same pure rollout state
//! machine `upgrade run` will drive, against seeded boot times and
//! failures. Printed as a short table, or one JSON document with `--json`.
//!
//! Kept apart from `upgrade.rs` because it shares nothing with the API
//! clients there: no agent, no network, no runtime needed.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use tandem_toml::parse_duration;
use tandem_upgrade::{SimulateReport, SimulateSpec};

/// The flags of `tandem upgrade simulate` (the subcommand's help is on
/// its variant in `cli.rs`); kept here, beside what reads them.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Nodes in the fleet.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub nodes: u32,
    /// Nodes per wave after the canaries: a count (10) or a share of
    /// the fleet (10%).
    #[arg(long, value_name = "N|P%", default_value = "1")]
    pub batch: tandem_upgrade::Batch,
    /// Nodes upgraded first, in a wave of their own.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub canary: usize,
    /// Failed nodes tolerated; one more stops the rollout.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_failed: usize,
    /// How long a node may take to turn healthy before it counts as
    /// failed.
    #[arg(long, value_name = "DUR", default_value = "5m", value_parser = parse_duration)]
    pub health_deadline: Duration,
    /// Go on after the canaries once they stayed healthy this long,
    /// instead of pausing for `tandem upgrade resume`.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub auto_promote: Option<Duration>,
    /// How long a node takes to boot the new release.
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_duration)]
    pub boot: Duration,
    /// How long from its boot until a node's health check passes.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = parse_duration)]
    pub health: Duration,
    /// The chance that one node's upgrade fails: 0.01 or 1%.
    #[arg(long, value_name = "P", default_value = "0", value_parser = parse_fail_rate)]
    pub fail_rate: f64,
    /// Seed of the simulated boot times and failures.
    #[arg(long, value_name = "S", default_value_t = 1)]
    pub seed: u64,
    /// Rollouts to play.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
}

/// Exit code for a simulation the library refuses (too large): bad input.
const EXIT_BAD_INPUT: u8 = 2;

/// Simulates and prints the report.
pub fn run(spec: &SimulateSpec, json: bool) -> ExitCode {
    let report = match tandem_upgrade::simulate(spec) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("tandem: cannot simulate: {error}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    tracing::info!(
        nodes = spec.nodes,
        runs = report.runs,
        seed = spec.seed,
        "simulated fleet rollouts"
    );
    if json {
        println!("{}", as_json(spec, &report));
    } else {
        print!("{}", as_text(spec, &report));
    }
    ExitCode::SUCCESS
}

/// Parses `--fail-rate`: a probability (`0.01`) or a percentage (`1%`).
pub fn parse_fail_rate(text: &str) -> Result<f64, String> {
    let trimmed = text.trim();
    let (number, scale) = match trimmed.strip_suffix('%') {
        Some(percent) => (percent.trim(), 100.0),
        None => (trimmed, 1.0),
    };
    let rate = number
        .parse::<f64>()
        .map_err(|_| format!("{text:?} is not a fail rate: write a probability such as 0.01, or a percentage such as 1%"))?
        / scale;
    if !(0.0..=1.0).contains(&rate) {
        return Err(format!(
            "fail rate {text:?} is out of range: give a probability from 0 to 1, or a percentage from 0% to 100%"
        ));
    }
    Ok(rate)
}

/// The `--json` document: the inputs as given, then the figures; times in
/// milliseconds.
#[derive(Debug, Serialize)]
struct SimulateJson {
    nodes: usize,
    runs: usize,
    seed: u64,
    batch: String,
    canary: usize,
    max_failed: usize,
    health_deadline_ms: u64,
    auto_promote_ms: Option<u64>,
    boot_ms: u64,
    health_ms: u64,
    fail_rate: f64,
    waves: usize,
    canary_nodes: usize,
    batch_nodes: usize,
    p50_ms: u64,
    p99_ms: u64,
    stop_chance: f64,
}

fn as_json(spec: &SimulateSpec, report: &SimulateReport) -> String {
    let policy = &spec.policy;
    let doc = SimulateJson {
        nodes: spec.nodes,
        runs: report.runs,
        seed: spec.seed,
        batch: policy.batch.to_string(),
        canary: policy.canary,
        max_failed: policy.max_failed,
        health_deadline_ms: ms(policy.health_deadline),
        auto_promote_ms: policy.auto_promote.map(ms),
        boot_ms: ms(spec.boot),
        health_ms: ms(spec.health),
        fail_rate: spec.fail_rate,
        waves: report.waves,
        canary_nodes: report.canary_nodes,
        batch_nodes: report.batch_nodes,
        p50_ms: ms(report.p50),
        p99_ms: ms(report.p99),
        stop_chance: report.stop_chance,
    };
    // Numbers and strings only: serializing cannot fail.
    serde_json::to_string(&doc).unwrap_or_default()
}

fn as_text(spec: &SimulateSpec, report: &SimulateReport) -> String {
    let policy = &spec.policy;
    let canaries = match report.canary_nodes {
        0 => String::new(),
        k => format!("{k} canar{}, then ", if k == 1 { "y" } else { "ies" }),
    };
    let promotion = match (report.canary_nodes, policy.auto_promote) {
        (0, _) => String::new(),
        (_, Some(healthy_for)) => format!(
            "  after canaries   go on once healthy for {}\n",
            clock(healthy_for)
        ),
        (_, None) => {
            "  after canaries   pause for `tandem upgrade resume` (counted as resumed at once)\n"
                .to_string()
        }
    };
    let mut out = format!(
        "fleet rollout of {} node(s), simulated {} time(s) (seed {})\n",
        spec.nodes, report.runs, spec.seed
    );
    out.push_str(&format!(
        "  waves            {}: {canaries}batches of up to {} (--batch {}), the primary last\n",
        report.waves, report.batch_nodes, policy.batch
    ));
    out.push_str(&promotion);
    out.push_str(&format!(
        "  each node        boot {} + health {} (each ±20 %), fails {:.2} % of the time, deadline {}\n",
        clock(spec.boot),
        clock(spec.health),
        spec.fail_rate * 100.0,
        clock(policy.health_deadline)
    ));
    out.push_str(&format!(
        "  duration p50     {}\n  duration p99     {}\n",
        clock(report.p50),
        clock(report.p99)
    ));
    out.push_str(&format!(
        "  stop chance      {:.1} %  (more than --max-failed {} failed node(s))\n",
        report.stop_chance * 100.0,
        policy.max_failed
    ));
    let expected_failures = spec.fail_rate * spec.nodes as f64;
    if report.stop_chance >= 0.5 && expected_failures > 0.0 {
        out.push_str(&format!(
            "  note: about {expected_failures:.1} node(s) fail at this rate, so most runs stop (the durations above are until the stop); \
a larger --max-failed, or a lower fail rate, lets the rollout finish\n"
        ));
    }
    out
}

/// Whole milliseconds; beyond u64 saturates (no rollout lasts that long).
fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `1h 02m 03s`, `14m 05s` or `42.5s`: a rollout's length at a glance.
fn clock(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0..60 if duration.subsec_millis() == 0 => format!("{secs}s"),
        0..60 => format!("{:.1}s", duration.as_secs_f64()),
        60..3600 => format!("{}m {:02}s", secs / 60, secs % 60),
        _ => format!("{}h {:02}m {:02}s", secs / 3600, secs / 60 % 60, secs % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_rates_are_probabilities_or_percentages() {
        assert_eq!(parse_fail_rate("0.01"), Ok(0.01));
        assert_eq!(parse_fail_rate("1%"), Ok(0.01));
        assert_eq!(parse_fail_rate(" 50 % "), Ok(0.5));
        assert_eq!(parse_fail_rate("0"), Ok(0.0));
        assert_eq!(parse_fail_rate("1"), Ok(1.0));
        for bad in ["1.5", "101%", "-0.1"] {
            let error = parse_fail_rate(bad).expect_err("refuse a rate out of range");
            assert!(error.contains("from 0 to 1"), "{bad}: {error}");
        }
        for bad in ["often", "", "%", "NaN"] {
            let error = parse_fail_rate(bad).expect_err("refuse an unreadable rate");
            assert!(
                error.contains("such as 0.01") || error.contains("out of range"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn clocks_read_at_a_glance() {
        assert_eq!(clock(Duration::from_millis(42_500)), "42.5s");
        assert_eq!(clock(Duration::from_secs(30)), "30s");
        assert_eq!(clock(Duration::from_secs(14 * 60 + 5)), "14m 05s");
        assert_eq!(clock(Duration::from_secs(3723)), "1h 02m 03s");
    }
}
