//! `tandem completions SHELL`: shell completion scripts, generated from the
//! same clap definition as the parser so they can never drift from it.

use std::process::ExitCode;

use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs};

/// Writes the completion script for the chosen shell to stdout.
pub fn run(args: &CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut command = Cli::command();
    clap_complete::generate(args.shell, &mut command, "tandem", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}
