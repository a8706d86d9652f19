//! `tandem mta …` without the rest of tandem, for trying the relay by hand
//! and for measurements: `cargo run --release -p tandem-mta --example mta -- serve …`.

use clap::Parser;
use tandem_mta::cli::{MtaCommand, run};

/// The relay and its test tools.
#[derive(Parser)]
struct Cli {
    /// Print reports as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: MtaCommand,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli.cmd, cli.json).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
