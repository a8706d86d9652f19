//! One module per subcommand. Each exposes `run(args, ...) -> Result<ExitCode>`
//! and prints its own output: tables and sentences for people, one JSON
//! document on stdout with `--json`.

pub mod agent;
pub mod backup;
pub mod bench;
pub mod bench_partition;
pub mod bench_sync;
pub mod cert;
pub mod chaos;
pub mod cluster;
pub mod completions;
pub mod demo;
pub mod image;
pub mod mta;
pub mod path;
pub mod quarantine;
pub mod sync;
pub mod upgrade;

/// A progress bar over bytes (resync, image upload); hidden for `--json`,
/// whose stdout is for the one JSON document.
pub fn bytes_bar(len: u64, hidden: bool) -> indicatif::ProgressBar {
    let bar = if hidden {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(len)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:12} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

/// An agent's answer, or its refusal (409: it understood the call and
/// said no, in words) for the caller to print as its own; any other
/// failure (no agent there, a wrong token) stays an error.
pub fn refusal<T>(answer: Result<T, tandem_agent::Error>) -> anyhow::Result<Result<T, String>> {
    match answer {
        Ok(answer) => Ok(Ok(answer)),
        Err(tandem_agent::Error::ApiRefused {
            status: 409, body, ..
        }) => Ok(Err(body.error)),
        Err(other) => Err(other.into()),
    }
}
