//! One module per subcommand. Each exposes `run(args, ...) -> Result<ExitCode>`
//! and prints its own output: tables and sentences for people, one JSON
//! document on stdout with `--json`.

pub mod agent;
pub mod backup;
pub mod bench;
pub mod bench_sync;
pub mod cert;
pub mod cluster;
pub mod completions;
pub mod demo;
pub mod image;
pub mod mta;
pub mod path;
pub mod sync;
pub mod upgrade;
