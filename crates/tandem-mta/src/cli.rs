//! `tandem mta …`: the command-line face of this crate.
//!
//! The `tandem` binary owns the runtime, tracing and exit codes; it embeds
//! [`MtaCommand`] as a subcommand and calls [`run`]. Arguments are checked
//! here and turned into the library calls ([`crate::relay::start`],
//! [`crate::load::load`], [`crate::sink::sink`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::load::{LoadOptions, LoadReport, load};
use crate::relay::{RelayOptions, start};
use crate::server::Listen;
use crate::sink::{SinkOptions, SinkReport, sink};
use crate::spool::{CommitHook, NoopHook};
use tandem_toml::parse_duration;

/// The mail relay and its test tools.
#[derive(Debug, Subcommand)]
pub enum MtaCommand {
    /// Run the relay: accept mail, spool it durably, deliver it to the next hop.
    Serve(ServeArgs),
    /// Send a bounded load of uniquely identified messages (loopback only).
    Load(LoadArgs),
    /// Accept and count messages by id; report duplicates and missing ids.
    Sink(SinkArgs),
}

/// `serve` arguments.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; ignored when sockets are inherited (LISTEN_FDS).
    #[arg(long, default_value = "127.0.0.1:2525")]
    pub listen: Vec<SocketAddr>,
    /// Spool directory (created if missing).
    #[arg(long)]
    pub spool: PathBuf,
    /// Next hop, HOST:PORT.
    #[arg(long)]
    pub relay_to: String,
    /// TOML file with limits, timeouts and delivery tuning.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The name in the greeting and Received: headers (the config's
    /// `hostname` otherwise); under tandem, `$TANDEM_NODE` tells clients
    /// which node answered.
    #[arg(long)]
    pub hostname: Option<String>,
}

/// `load` arguments.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The relay to load (loopback only).
    #[arg(long)]
    pub to: SocketAddr,
    /// Number of messages.
    #[arg(long, default_value_t = 1000)]
    pub messages: u64,
    /// Parallel sessions.
    #[arg(long, default_value_t = 10)]
    pub concurrency: usize,
    /// Message size in octets.
    #[arg(long, default_value_t = 4096)]
    pub size: usize,
    /// Stop after this long at most (e.g. 60s).
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Write the ids of acknowledged messages here, one per line.
    #[arg(long)]
    pub acked_out: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `sink` arguments.
#[derive(Debug, Args)]
pub struct SinkArgs {
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1:2526")]
    pub listen: SocketAddr,
    /// Stop after this long at most.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Stop once this many distinct ids arrived.
    #[arg(long)]
    pub exit_after: Option<u64>,
    /// File of ids that must arrive (e.g. `load --acked-out`); stops when all did.
    #[arg(long)]
    pub expect: Option<PathBuf>,
    /// Answer 451 to the first N messages (exercises the relay's retries).
    #[arg(long, default_value_t = 0)]
    pub tempfail_first: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs one `tandem mta` subcommand. `json` is the binary's global flag.
pub async fn run(cmd: MtaCommand, json: bool) -> Result<()> {
    run_with_hook(cmd, json, Arc::new(NoopHook)).await
}

/// [`run`], with the commit hook `serve` runs before every `250` (the
/// binary passes the agent's cluster fsync when it runs under an agent).
pub async fn run_with_hook(cmd: MtaCommand, json: bool, hook: Arc<dyn CommitHook>) -> Result<()> {
    match cmd {
        MtaCommand::Serve(a) => serve(a, json, hook).await,
        MtaCommand::Load(a) => {
            let json = json || a.json;
            let report = load(LoadOptions {
                to: a.to,
                messages: a.messages,
                concurrency: a.concurrency,
                size: a.size,
                timeout: a.timeout,
            })
            .await?;
            if let Some(path) = &a.acked_out {
                let mut text = report.acked_ids.join("\n");
                text.push('\n');
                std::fs::write(path, text).map_err(|e| Error::path(path, e))?;
            }
            print_load(&report, json)
        }
        MtaCommand::Sink(a) => {
            let json = json || a.json;
            let expect = match &a.expect {
                Some(path) => {
                    let text = std::fs::read_to_string(path).map_err(|e| Error::path(path, e))?;
                    Some(
                        text.lines()
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(String::from)
                            .collect(),
                    )
                }
                None => None,
            };
            let report = sink(SinkOptions {
                listen: a.listen,
                duration: a.duration,
                exit_after: a.exit_after,
                expect,
                tempfail_first: a.tempfail_first,
            })
            .await?;
            print_sink(&report, json)
        }
    }
}

/// On exit, how long sessions in progress may take to finish.
const EXIT_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);
/// On exit, how long the queue may take to reach the next hop.
const EXIT_FLUSH: std::time::Duration = std::time::Duration::from_secs(3);

/// Runs the relay until SIGINT/SIGTERM; SIGUSR1 suspends the listener,
/// SIGUSR2 resumes it. The drain timeout is the configured one, unless the
/// agent that runs the relay left another in
/// `$TANDEM_CONTROL_DIR/drain-timeout-ms` (`tandem listener suspend
/// --drain-timeout`). Once the sessions in progress are over, the relay
/// writes the suspend's report to `$TANDEM_CONTROL_DIR/drained`: an agent
/// handing the service over waits for it, so that no message is stored
/// after its node stopped being active.
async fn serve(a: ServeArgs, json: bool, hook: Arc<dyn CommitHook>) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut config = match &a.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(hostname) = &a.hostname {
        config.hostname = hostname.clone();
    }
    let listen = match crate::activation::inherited_listeners()? {
        Some(ls) => Listen::Inherited(ls),
        None => Listen::Bind(a.listen.clone()),
    };
    let mut opts = RelayOptions::new(listen, a.spool.clone(), a.relay_to.clone());
    opts.config = config;
    opts.hook = hook;
    let relay = start(opts).await?;
    let addrs = relay.listener().local_addrs().await;
    let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    if json {
        println!(
            "{}",
            serde_json::json!({"event": "listening", "addrs": addrs})
        );
    } else {
        println!("tandem-mta: listening on {}", addrs.join(" "));
    }
    let sig = |k| signal(k).map_err(Error::Io);
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    let mut usr1 = sig(SignalKind::user_defined1())?;
    let mut usr2 = sig(SignalKind::user_defined2())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = usr1.recv() => {
                let control = relay.listener().clone();
                let drain = agent_drain_timeout().unwrap_or_else(|| control.default_drain_timeout());
                tokio::spawn(async move {
                    let report = control.suspend(drain).await;
                    tracing::info!(?report, "listener suspended and drained");
                    report_drained(&report);
                });
            }
            _ = usr2.recv() => {
                if let Err(e) = relay.listener().resume().await {
                    tracing::error!(error = %e, "resume failed");
                }
            }
        }
    }
    // Leaving (the agent stops the service at a switchover): stop taking
    // mail, let sessions in progress finish, and give the queue a bounded
    // moment to reach the next hop, so a planned stop strands as little as
    // possible in this node's spool. A kill -9 skips all this; the spool
    // is still safe, only later.
    let report = relay.listener().suspend(EXIT_DRAIN).await;
    tracing::info!(?report, "listener closed for exit");
    // Under an agent with `[sync]` (it sets TANDEM_API) the new active has
    // every acknowledged message; delivering them here too after losing
    // the service would only send them twice (issue 14), so no flush.
    let flush = if std::env::var_os("TANDEM_API").is_some() {
        std::time::Duration::ZERO
    } else {
        EXIT_FLUSH
    };
    let flush_until = tokio::time::Instant::now() + flush;
    while relay.queue_stats().pending > 0 && tokio::time::Instant::now() < flush_until {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let stats = relay.queue_stats();
    relay.shutdown().await;
    tracing::info!(?stats, "relay stopped");
    Ok(())
}

/// Tells the supervising agent, if any, that the drain is over (see
/// [`serve`]).
fn report_drained(report: &crate::server::SuspendReport) {
    let Some(dir) = std::env::var_os("TANDEM_CONTROL_DIR") else {
        return;
    };
    let text = serde_json::to_string(report).unwrap_or_default();
    if let Err(e) = std::fs::write(std::path::Path::new(&dir).join("drained"), text) {
        tracing::warn!(error = %e, "cannot tell the agent the drain is over");
    }
}

/// The drain timeout the supervising agent asked for, if any.
fn agent_drain_timeout() -> Option<std::time::Duration> {
    let dir = std::env::var_os("TANDEM_CONTROL_DIR")?;
    let text = std::fs::read_to_string(std::path::Path::new(&dir).join("drain-timeout-ms")).ok()?;
    text.trim()
        .parse()
        .ok()
        .map(std::time::Duration::from_millis)
}

fn print_load(r: &LoadReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        println!(
            "sent {}  acknowledged {}  rejected {}  failed sessions {}  connect failures {}  {:.1} s  {:.0} msg/s  latency p50 {:.1} ms  p99 {:.1} ms",
            r.sent,
            r.acknowledged,
            r.rejected,
            r.failed_sessions,
            r.connect_failures,
            r.elapsed_s,
            r.msgs_per_s,
            r.latency.p50_ms,
            r.latency.p99_ms
        );
    }
    Ok(())
}

fn print_sink(r: &SinkReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        let missing = match (r.expected, r.missing) {
            (Some(e), Some(m)) => format!("  expected {e}  missing {m}"),
            _ => String::new(),
        };
        println!(
            "messages {}  distinct ids {}  duplicates {}{}",
            r.messages, r.distinct_ids, r.duplicates, missing
        );
        for id in &r.missing_ids {
            println!("missing: {id}");
        }
        for id in &r.duplicate_ids {
            println!("duplicate: {id}");
        }
    }
    Ok(())
}

/// `tandem bench relay` arguments (wired by the binary, not under `mta`).
#[derive(Debug, Args)]
pub struct BenchRelayArgs {
    /// Parallel client sessions.
    #[arg(long, default_value_t = 20)]
    pub sessions: usize,
    /// Messages per relay.
    #[arg(long, default_value_t = 5000)]
    pub messages: u64,
    /// Message size in octets.
    #[arg(long, default_value_t = 4096)]
    pub size: usize,
    /// Measure tandem only.
    #[arg(long)]
    pub no_postfix: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `tandem bench relay`. `relay_command` starts tandem's relay as its
/// own process (e.g. `[path/to/tandem, mta, serve]`), so its memory is
/// measured apart from the load generator; None runs it in this process.
pub async fn bench_relay(
    args: BenchRelayArgs,
    json: bool,
    relay_command: Option<Vec<std::ffi::OsString>>,
) -> Result<()> {
    let report = crate::bench::bench_relay(crate::bench::BenchOptions {
        sessions: args.sessions,
        messages: args.messages,
        size: args.size,
        postfix: !args.no_postfix,
        relay_command,
    })
    .await?;
    if json || args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let row = |name: &str, s: &crate::bench::BenchSide| {
        let rss = s
            .rss_kib
            .map(|r| format!("{r} KiB"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{name:8} {:>9.0} msg/s  p99 {:>7.1} ms  end-to-end {:>7.0} msg/s  rss {rss:>10}  acked {}  missing {}  duplicates {}",
            s.msgs_per_s,
            s.p99_ms,
            s.end_to_end_msgs_per_s,
            s.acknowledged,
            s.missing,
            s.duplicates
        );
    };
    row("tandem", &report.tandem);
    match (&report.postfix, &report.postfix_skipped) {
        (Some(p), _) => row("postfix", p),
        (None, Some(why)) => println!("postfix  skipped: {why}"),
        (None, None) => {}
    }
    Ok(())
}
