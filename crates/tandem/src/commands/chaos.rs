//! `tandem chaos`: runs a fault campaign ([`crate::chaos`]) and prints
//! its judgement — a table per fault kind and the violations, or one
//! JSON object with `--json` — and, with `--history FILE`, the whole
//! history as JSONL. Exit 1 on any violation, naming the checker and the
//! first operation that broke it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use tandem_toml::parse_duration;

use crate::chaos::{self, Coordination, Options, faults::Kind};

/// How the campaign's nodes coordinate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ChaosCoordination {
    /// Heartbeats between the nodes only (dual active is measured, not failed).
    Peers,
    /// A 3-member etcd of the campaign's own (dual active must be 0).
    Etcd,
}

/// The flags of `tandem chaos` (its help is on the variant in `cli.rs`).
#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// Nodes in the cluster.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=9))]
    pub nodes: u32,
    /// How the nodes coordinate.
    #[arg(long, value_enum, default_value = "etcd")]
    pub coordination: ChaosCoordination,
    /// How long faults are injected for; the heal and the checks follow.
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// The seed of the fault sequence (printed, to replay a run); random
    /// when not given.
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Only these fault kinds, comma-separated (e.g.
    /// kill-agent,etcd-kill-two).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub faults: Vec<String>,
    /// Write the history (one JSON event per line) to FILE.
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,
    /// Keep the agents' logs in DIR (removed with the cluster otherwise).
    #[arg(long, value_name = "DIR")]
    pub logs: Option<PathBuf>,
    /// Stay on loopback even as root (no network namespaces: the
    /// partition and netem faults are left out).
    #[arg(long)]
    pub loopback: bool,
}

/// Runs the campaign and prints its report.
pub fn run(args: ChaosArgs, json: bool) -> anyhow::Result<ExitCode> {
    let faults = args
        .faults
        .iter()
        .map(|f| Kind::from_name(f.trim()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let seed = args.seed.unwrap_or_else(random_seed);
    let opts = Options {
        nodes: args.nodes as usize,
        coordination: match args.coordination {
            ChaosCoordination::Peers => Coordination::Peers,
            ChaosCoordination::Etcd => Coordination::Etcd,
        },
        duration: args.duration,
        seed,
        faults,
        exe: std::env::current_exe().context("cannot find the tandem binary")?,
        log_dir: args.logs.clone(),
        loopback: args.loopback,
    };
    if !json {
        eprintln!(
            "chaos: seed {seed}, {} nodes, {:?} coordination, faults for {:?}",
            opts.nodes, args.coordination, args.duration
        );
    }
    let progress = |line: &str| {
        if !json {
            eprintln!("  {line}");
        }
    };
    let report = chaos::run(&opts, &progress)?;
    if let Some(path) = &args.history {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot write the history to {}", path.display()))?;
        report.history.write(std::io::BufWriter::new(file))?;
    }
    if json {
        println!("{}", serde_json::to_string(&report.summary)?);
    } else {
        print!("{}", report.summary.table());
        if !report.left_out.is_empty() {
            println!("\nleft out:");
            for (kind, why) in &report.left_out {
                println!("  {kind}: {why}");
            }
        }
    }
    Ok(if report.summary.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom(2) writes at most bytes.len() bytes into bytes.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n == bytes.len() as isize {
        // Small enough to type back in.
        u64::from_le_bytes(bytes) % 1_000_000
    } else {
        u64::from(std::process::id())
    }
}
