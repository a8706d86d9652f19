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

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.verbose, cli.quiet, cli.log_format);
    let result = match cli.command {
        Command::Path(args) => commands::path::run(&args, cli.json),
        Command::Image(command) => commands::image::run(command, cli.json),
        Command::Completions(args) => commands::completions::run(&args),
    };
    result.unwrap_or_else(|error| {
        eprintln!("tandem: error: {error:#}");
        ExitCode::from(1)
    })
}
