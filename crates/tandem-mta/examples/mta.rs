//! `tandem mta …` and `tandem bench relay` without the rest of tandem, for
//! trying the relay by hand and for measurements:
//! `cargo run --release -p tandem-mta --example mta -- serve …` or `-- bench`.

use clap::{Parser, Subcommand};
use tandem_mta::cli::{BenchRelayArgs, MtaCommand, bench_relay, run};

/// The relay, its test tools, and the benchmark.
#[derive(Parser)]
struct Cli {
    /// Print reports as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    #[command(flatten)]
    Mta(MtaCommand),
    /// Compare the relay with postfix (`tandem bench relay`).
    Bench(BenchRelayArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Mta(cmd) => run(cmd, cli.json).await,
        Cmd::Bench(args) => {
            let relay = std::env::current_exe()
                .ok()
                .map(|exe| vec![exe.into_os_string(), "serve".into()]);
            bench_relay(args, cli.json, relay).await
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
