//! `tandem mta ...` and `tandem bench relay`: the reference payload's own
//! commands, from the tandem-mta crate.

use std::process::ExitCode;

use anyhow::Context;
use tandem_mta::cli::{BenchRelayArgs, MtaCommand};

/// Runs `tandem mta serve|load|sink`.
pub async fn run(command: MtaCommand, json: bool) -> anyhow::Result<ExitCode> {
    // Under an agent with [sync], every 250 waits for the cluster fsync.
    let hook = super::sync::relay_hook()?;
    tandem_mta::cli::run_with_hook(command, json, hook).await?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the relay benchmark; the relay under test is this binary's
/// `mta serve`, in its own process so its memory is measured alone.
pub async fn bench_relay(args: BenchRelayArgs, json: bool) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the tandem binary to run the relay")?;
    let relay = vec![exe.into_os_string(), "mta".into(), "serve".into()];
    tandem_mta::cli::bench_relay(args, json, Some(relay)).await?;
    Ok(ExitCode::SUCCESS)
}
