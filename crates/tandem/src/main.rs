//! `tandem`: the one binary, a command-line front end over the tandem crates.
//!
//! # Layout
//! - [`cli`]: every flag and subcommand, defined once with clap; help, man
//!   page text and shell completions all come from it.
//! - [`logging`]: tracing to stderr, as text for people or JSON for
//!   journald and `jq`.
//! - [`commands`]: one module per subcommand; each turns parsed arguments
//!   into calls on the library crates and prints the answer.
//!
//! Exit codes follow clap's convention: 0 success, 1 the command ran and the
//! answer is "no" (no upgrade path, a failed check), 2 bad invocation or
//! unreadable input.

mod cli;
mod commands;
mod logging;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{BenchCommand, Cli, Command, ConfigCommand};

/// The async runtime for commands that do network work: two worker threads
/// match the machines tandem runs on and keep the agent's footprint small.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Agent { .. } | Command::Mta(_)) {
        // A command whose output is piped into `head` should end quietly
        // when the pipe closes, like other Unix tools, not panic. Daemons
        // keep Rust's default (ignored), so a closed log pipe cannot kill
        // them.
        // SAFETY: setting a signal disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    logging::init(cli.verbose, cli.quiet, cli.log_format);
    let json = cli.json;
    let result = match cli.command {
        Command::Path(args) => commands::path::run(&args, json),
        Command::Image(command) => commands::image::run(command, json),
        Command::Completions(args) => commands::completions::run(&args),
        Command::Config(ConfigCommand::Check { file }) => commands::agent::check(&file, json),
        Command::Agent { config } => {
            runtime().and_then(|rt| rt.block_on(commands::agent::run(&config)))
        }
        Command::Status { target, watch } => {
            runtime().and_then(|rt| rt.block_on(commands::cluster::status(&target, watch, json)))
        }
        Command::Ha(command) => {
            runtime().and_then(|rt| rt.block_on(commands::cluster::ha(command, json)))
        }
        Command::Failover(command) => {
            runtime().and_then(|rt| rt.block_on(commands::cluster::failover(command, json)))
        }
        Command::Mta(command) => {
            runtime().and_then(|rt| rt.block_on(commands::mta::run(command, json)))
        }
        Command::Bench(BenchCommand::Relay(args)) => {
            runtime().and_then(|rt| rt.block_on(commands::mta::bench_relay(args, json)))
        }
    };
    result.unwrap_or_else(|error| {
        eprintln!("tandem: error: {error:#}");
        ExitCode::from(1)
    })
}
