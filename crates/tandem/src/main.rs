//! `tandem`: the one binary. Everything but the dispatch lives in the
//! library half of this crate (`lib.rs`), so the end-to-end tests can use
//! the same local-cluster harness as the benchmarks.

use std::process::ExitCode;

use clap::Parser;

use tandem::cli::{BenchCommand, CertCommand, Cli, Command, ConfigCommand, SyncCommand};
use tandem::{commands, logging};

/// The async runtime for commands that do network work: two worker threads
/// match the machines tandem runs on and keep the agent's footprint small.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Runs `future` to completion on a fresh [`runtime`].
fn block_on<T>(future: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    runtime()?.block_on(future)
}

/// The agent's runtime: one thread. Its work is one event loop plus short
/// I/O, and an idle HA daemon should cost little memory (the failover
/// benchmark reports its RSS); slow file work goes to the blocking pool.
fn agent_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // Each thread that allocates gets its own malloc arena by default;
    // two are plenty for a daemon this size.
    // SAFETY: mallopt only tunes the allocator, before any thread starts.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(
        cli.command,
        Command::Agent { .. } | Command::Mta(_) | Command::Bench(BenchCommand::NameService)
    ) {
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
        Command::Config(ConfigCommand::Put {
            name,
            file,
            force,
            target,
        }) => block_on(commands::sync::config_put(
            &target, &name, &file, force, json,
        )),
        Command::Config(ConfigCommand::Push { force, target }) => {
            block_on(commands::sync::config_push(&target, force, json))
        }
        Command::Config(ConfigCommand::Show { target }) => {
            block_on(commands::sync::config_show(&target, json))
        }
        Command::Agent { config } => {
            agent_runtime().and_then(|rt| rt.block_on(commands::agent::run(&config)))
        }
        Command::Status { target, watch } => {
            block_on(commands::cluster::status(&target, watch, json))
        }
        Command::Ha(command) => block_on(commands::cluster::ha(command, json)),
        Command::Failover(command) => block_on(commands::cluster::failover(command, json)),
        Command::Demo(args) => block_on(commands::demo::run(args, json)),
        Command::Chaos(args) => commands::chaos::run(args, json),
        Command::Backup(command) => block_on(commands::backup::run(command, json)),
        Command::Upgrade(command) => block_on(commands::upgrade::run(command, json)),
        Command::Listener(command) => block_on(commands::cluster::listener(command, json)),
        Command::Mta(command) => block_on(commands::mta::run(command, json)),
        Command::Bench(BenchCommand::Relay(args)) => {
            block_on(commands::mta::bench_relay(args, json))
        }
        Command::Bench(BenchCommand::Failover { runs, coordination }) => {
            block_on(commands::bench::failover(runs, coordination, json))
        }
        Command::Bench(BenchCommand::NameService) => commands::bench::name_service(),
        Command::Bench(BenchCommand::Sync {
            messages,
            concurrency,
            rounds,
            returns,
        }) => block_on(commands::bench_sync::run(
            messages,
            concurrency,
            rounds,
            returns,
            json,
        )),
        Command::Sync(SyncCommand::Report { target }) => {
            block_on(commands::sync::report(&target, json))
        }
        Command::Sync(SyncCommand::Quarantine(command)) => {
            block_on(commands::quarantine::run(command, json))
        }
        Command::Cert(CertCommand::Init { dir }) => commands::cert::init(&dir, json),
        Command::Cert(CertCommand::Issue { ca, node, out }) => {
            commands::cert::issue(&ca, &node, &out, json)
        }
    };
    result.unwrap_or_else(|error| {
        eprintln!("tandem: error: {error:#}");
        ExitCode::from(1)
    })
}
