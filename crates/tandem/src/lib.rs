//! `tandem`: the one binary's library half — a command-line front end over
//! the tandem crates.
//!
//! # Layout
//! - [`cli`]: every flag and subcommand, defined once with clap; help, man
//!   page text and shell completions all come from it.
//! - [`logging`]: tracing to stderr, as text for people or JSON for
//!   journald and `jq`.
//! - [`commands`]: one module per subcommand; each turns parsed arguments
//!   into calls on the library crates and prints the answer.
//! - [`localcluster`]: a whole cluster of real agents on loopback, for the
//!   benchmarks, the demo and the end-to-end tests.
//!
//! Exit codes follow clap's convention: 0 success, 1 the command ran and the
//! answer is "no" (no upgrade path, a failed check), 2 bad invocation or
//! unreadable input.

pub mod chaos;
pub mod cli;
pub mod commands;
pub mod localcluster;
pub mod localetcd;
pub mod logging;
pub mod netns;
