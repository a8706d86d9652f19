//! The command line, defined once: parsing, `--help`, and the completion
//! scripts of `tandem completions` all come from these types.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;
use tandem_toml::parse_duration;
use tandem_version::Version;

/// Keep a stateful service available on a cluster of Linux nodes, and
/// upgrade it without downtime.
#[derive(Debug, Parser)]
#[command(
    name = "tandem",
    version,
    about,
    long_about = "tandem keeps a stateful network service (a mail relay, a gateway, \
a firewall) running on a pair or cluster of Linux nodes. One node is active and \
owns the service address; the others stand by with the service's data \
replicated, and take over in well under a second when the active node fails. \
tandem also upgrades the whole cluster's \"firmware\" (the service's release) \
one node at a time, along a supported version path, without clients noticing.",
    after_help = "Exit status: 0 success; 1 the answer is no (for example, no supported \
upgrade path); 2 bad invocation or unreadable input.\n\
Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=tandem=debug) for fine control."
)]
pub struct Cli {
    /// Print machine-readable JSON on stdout instead of text, where the
    /// command prints data.
    #[arg(long, global = true)]
    pub json: bool,

    /// Log more: -v info, -vv debug, -vvv trace.
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Log less: -q errors only, -qq nothing.
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub quiet: u8,

    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for journald, jq and log shippers.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Plan the supported upgrade path between two releases.
    ///
    /// Reads a release catalog and prints the fewest hops from the running
    /// release to the target, with the rule that allows each hop. Exits 1
    /// when no supported path exists and says which rule or release blocks it.
    Path(PathArgs),

    /// Run the agent: the HA daemon of this node.
    ///
    /// Joins the cluster described by the config file, elects an active
    /// node with the peers, owns the VIP and runs the service while this
    /// node is active. Stops cleanly (goodbye to the peers, service
    /// stopped, VIP released) on SIGTERM or Ctrl-C. Notifies systemd
    /// (Type=notify, WatchdogSec) when run under it.
    Agent {
        /// The node's config file (see docs/config.md).
        #[arg(long, value_name = "FILE", env = "TANDEM_CONFIG")]
        config: PathBuf,
    },

    /// Check an agent config file and exit (0 valid, 2 invalid).
    #[command(subcommand)]
    Config(ConfigCommand),

    /// The whole cluster at a glance: roles, versions, links, VIP, service.
    Status {
        /// How to reach an agent.
        #[command(flatten)]
        target: ApiTarget,
        /// Redraw every second until interrupted.
        #[arg(long)]
        watch: bool,
    },

    /// HA processes and preferences (FortiMail `set system ha ...`).
    #[command(subcommand)]
    Ha(HaCommand),

    /// Move the service between nodes (ASA `failover ...`).
    #[command(subcommand)]
    Failover(FailoverCommand),

    /// The whole product on this machine: a local cluster under mail load,
    /// upgraded from one signed release to the next while clients keep
    /// sending; ends with a report (exit 1 if an acknowledged message was
    /// lost).
    Demo(DemoArgs),

    /// Back up, list and restore nodes' configuration and HA state.
    #[command(subcommand)]
    Backup(BackupCommand),

    /// Upgrade the whole cluster along a supported path, one node at a time.
    #[command(subcommand)]
    Upgrade(UpgradeCommand),

    /// Stop or resume accepting new connections on a node (ESA
    /// `suspendlistener` / `resume`); sessions in progress finish.
    #[command(subcommand)]
    Listener(ListenerCommand),

    /// The reference payload: a durable SMTP relay, its load generator and sink.
    #[command(subcommand)]
    Mta(tandem_mta::cli::MtaCommand),

    /// Benchmarks that print their figures (compare ratios, not absolutes).
    #[command(subcommand)]
    Bench(BenchCommand),

    /// A seeded fault campaign: a local cluster under mail load, faults
    /// injected one after another, every operation recorded, and checkers
    /// that judge the history (nothing acknowledged lost, never two
    /// actives under etcd, a settled cluster after the heal). Exit 1 on a
    /// violation.
    Chaos(crate::commands::chaos::ChaosArgs),

    /// Build, sign and verify firmware images (the service's releases).
    #[command(subcommand)]
    Image(ImageCommand),

    /// Config and data sync between the nodes: the sync report.
    #[command(subcommand)]
    Sync(SyncCommand),

    /// The cluster CA and node certificates of the sync channel.
    #[command(subcommand)]
    Cert(CertCommand),

    /// Print a shell completion script (bash, zsh, fish, ...).
    ///
    /// For example: tandem completions bash > /etc/bash_completion.d/tandem
    Completions(CompletionsArgs),
}

/// Arguments of `tandem path`.
#[derive(Debug, Args)]
pub struct PathArgs {
    /// The release catalog (TOML); see catalogs/ for examples.
    #[arg(long, value_name = "FILE")]
    pub catalog: PathBuf,

    /// The release the cluster runs now, e.g. 7.0(1) or 6.2.0.
    #[arg(long, value_name = "VERSION")]
    pub from: Version,

    /// The release to upgrade to.
    #[arg(long, value_name = "VERSION")]
    pub to: Version,
}

/// `tandem image ...`: the signed release images a node installs into its
/// A/B slots.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Make an ed25519 signing key pair in minisign's formats.
    ///
    /// The secret key is written with mode 0600 and never overwritten;
    /// unencrypted unless --password-env names a variable holding a password.
    Keygen {
        /// Where to write the secret key.
        #[arg(long, value_name = "FILE")]
        secret: PathBuf,
        /// Where to write the public key (give it to the nodes' trusted_keys).
        #[arg(long, value_name = "FILE")]
        public: PathBuf,
        /// Encrypt the secret key with the password in this environment variable.
        #[arg(long, value_name = "VAR")]
        password_env: Option<String>,
    },

    /// Build an image from a manifest and a directory of files.
    Build {
        /// The image's manifest.toml (name, version, entrypoint, health, ...).
        #[arg(long, value_name = "FILE")]
        manifest: PathBuf,
        /// The release's files; the entrypoint is relative to this directory.
        #[arg(long, value_name = "DIR")]
        files: PathBuf,
        /// The image file to write.
        #[arg(short, long, value_name = "IMAGE")]
        output: PathBuf,
        /// Compress with gzip instead of zstd.
        #[arg(long)]
        gzip: bool,
    },

    /// Sign an image, writing IMAGE.minisig (checkable with `minisign -V`).
    Sign {
        /// The secret key.
        #[arg(long, value_name = "FILE")]
        secret: PathBuf,
        /// Read the secret key's password from this environment variable.
        #[arg(long, value_name = "VAR")]
        password_env: Option<String>,
        /// The image to sign.
        image: PathBuf,
    },

    /// Check an image's signature and contents; exit 1 with the reason if
    /// anything is wrong.
    ///
    /// Checks the minisign signature (IMAGE.minisig) against the public key,
    /// then every archive entry: a manifest that parses, no absolute paths,
    /// no '..', no links or devices escaping the root, size and entry limits.
    Verify {
        /// The trusted public key (minisign format).
        #[arg(long, value_name = "FILE")]
        public: PathBuf,
        /// The image to check.
        image: PathBuf,
    },

    /// Send an image (and its .minisig) to a node's agent, or to every node.
    ///
    /// The sha256 is checked on arrival; a failed upload is simply sent
    /// again. The agent keeps images in its state directory.
    Push {
        /// The image file.
        image: PathBuf,
        #[command(flatten)]
        nodes: Nodes,
    },

    /// The images a node holds, whether they verify, and its A/B slots.
    List {
        #[command(flatten)]
        target: ApiTarget,
    },

    /// Verify a pushed image on the node and unpack it into its inactive slot.
    Install {
        /// The image's file name, as pushed.
        image: String,
        #[command(flatten)]
        nodes: Nodes,
    },

    /// Boot a node's pending slot: the service restarts from it if the node
    /// serves, and its health check decides between good and rollback.
    Boot {
        #[command(flatten)]
        target: ApiTarget,
    },

    /// Go back to the other slot on a node.
    Rollback {
        #[command(flatten)]
        target: ApiTarget,
    },
}

/// `tandem config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file: every error names the file, line and key.
    Check {
        /// The file to check.
        file: PathBuf,
    },

    /// Change a cluster config file (one listed under `[sync] config`):
    /// the primary writes it and pushes it to every node at once.
    ///
    /// Refused on a standby, naming the primary; and, as on an ESA
    /// cluster, refused cluster-wide while a node is disconnected from
    /// cluster config for an upgrade, unless --force.
    Put {
        /// The file's name as listed, e.g. relay.toml.
        name: String,
        /// Where the new content is.
        file: PathBuf,
        /// Change the connected nodes even while one is disconnected.
        #[arg(long)]
        force: bool,
        /// How to reach the primary's agent.
        #[command(flatten)]
        target: ApiTarget,
    },

    /// Push every cluster config file from the primary to the standbys now.
    ///
    /// The primary pushes on every change and every config_sync_interval
    /// anyway; this is for not waiting. --force also pushes changes held
    /// back while a node is disconnected.
    Push {
        /// Push held changes too.
        #[arg(long)]
        force: bool,
        /// How to reach the primary's agent.
        #[command(flatten)]
        target: ApiTarget,
    },

    /// The cluster config files on a node: their hash, the hash the
    /// cluster agreed on, held changes and refused local edits.
    Show {
        /// How to reach the agent.
        #[command(flatten)]
        target: ApiTarget,
    },
}

/// Where the agent's API is and how to authenticate; taken from the
/// config file when given, else from --api and --token-file.
#[derive(Debug, Args, Clone)]
pub struct ApiTarget {
    /// Read the API address and token file from this agent config.
    #[arg(long, value_name = "FILE", env = "TANDEM_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// The agent's API address.
    #[arg(long, value_name = "ADDR", env = "TANDEM_API", global = true)]
    pub api: Option<std::net::SocketAddr>,
    /// The file holding the API token.
    #[arg(long, value_name = "FILE", env = "TANDEM_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// Aim the command at this node (any node answers for the cluster).
    #[arg(long, value_name = "NAME", global = true)]
    pub node: Option<String>,
}

/// The node a command is aimed at, or with `--all` every node.
#[derive(Debug, Args)]
pub struct Nodes {
    /// Every node of the cluster, not only the one aimed at.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub target: ApiTarget,
}

/// `tandem ha ...`.
#[derive(Debug, Subcommand)]
pub enum HaCommand {
    /// Restart HA on a node that a monitor stopped (on_failure = "off").
    Restart {
        #[command(flatten)]
        target: ApiTarget,
    },
    /// Return every node to its configured role.
    Restore {
        #[command(flatten)]
        target: ApiTarget,
    },
    /// Turn preemption on or off (Huawei upgrade steps 4 and 10).
    Preempt {
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[command(flatten)]
        target: ApiTarget,
    },
    /// Push all config and data from the active to every standby, with a
    /// progress bar (FortiMail `set system ha resync`).
    Resync {
        #[command(flatten)]
        target: ApiTarget,
    },
    /// Ask the peers not to take over for SECS seconds (a planned restart).
    Holdoff {
        /// Seconds, at most the cluster's holdoff_max.
        secs: u64,
        #[command(flatten)]
        target: ApiTarget,
    },
}

/// `tandem sync ...`.
#[derive(Debug, Subcommand)]
pub enum SyncCommand {
    /// Per file, the size and hash on every node and whether they agree;
    /// each standby's lag and last sync. Exit 1 when anything differs.
    Report {
        #[command(flatten)]
        target: ApiTarget,
    },
    /// Files a catch-up set aside instead of deleting: acknowledged on a
    /// node while the active never saw them (a partition, a forced
    /// takeover). With `merge_quarantine` (the default) they go back to
    /// the active by themselves.
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
}

/// `tandem sync quarantine ...`.
#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// Every node's quarantine batches: where, from whom, how many files.
    List {
        #[command(flatten)]
        target: ApiTarget,
    },
    /// Merge batch ID into the active's data dir now (files it already
    /// has with the same content count as duplicates; with other content
    /// they stay).
    Restore {
        /// The batch (`tandem sync quarantine list`).
        id: String,
        #[command(flatten)]
        target: ApiTarget,
    },
    /// Delete batch ID for good.
    Drop {
        /// The batch (`tandem sync quarantine list`).
        id: String,
        #[command(flatten)]
        target: ApiTarget,
    },
}

/// `tandem cert ...`.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Make the cluster CA (ca.pem, ca.key) in DIR; keep it off the nodes.
    Init {
        /// The CA directory (created; an existing CA is not overwritten).
        dir: PathBuf,
    },
    /// Issue NAME's certificate and key, signed by the CA, into -o DIR.
    Issue {
        /// The CA directory (`tandem cert init`).
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// The node's name, as in its `[node] name`.
        #[arg(long, value_name = "NAME")]
        node: String,
        /// Where to write NAME.pem, NAME.key and ca.pem (the node's cert_dir).
        #[arg(short, long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// `tandem failover ...`.
#[derive(Debug, Subcommand)]
pub enum FailoverCommand {
    /// Make this node (or --node) active: take over the service.
    Active {
        /// Take over even if this node's data is not in sync (`syncing`):
        /// it then serves without what it missed, and the answer says how
        /// much that may be.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        target: ApiTarget,
    },
    /// Hand the service over to the peer (ASA `no failover active`).
    Standby {
        #[command(flatten)]
        target: ApiTarget,
    },
    /// Boot every standby into its pending slot and wait until it is back
    /// in standby with the new version (ASA's `failover reload-standby`).
    ReloadStandby {
        /// How long to wait for Standby Ready.
        #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_duration)]
        timeout: std::time::Duration,
        #[command(flatten)]
        target: ApiTarget,
    },
    /// Move one failover group (active-active mode).
    Group {
        /// The group number.
        group: u8,
        /// active or standby.
        #[arg(value_parser = ["active", "standby"])]
        state: String,
        #[command(flatten)]
        target: ApiTarget,
    },
}

/// `tandem demo` options.
#[derive(Debug, Args, Clone)]
pub struct DemoArgs {
    /// The upgrade strategy: switchover, holdoff (active-passive), rolling
    /// (config-only), active-active.
    #[arg(long, default_value = "switchover", value_parser = ["switchover", "holdoff", "rolling", "active-active"])]
    pub strategy: String,
    /// Nodes in the local cluster: 2, or 3 for rolling, unless given.
    #[arg(long)]
    pub nodes: Option<usize>,
    /// The cluster's mode; the strategy's own when absent (rolling:
    /// config-only, active-active: active-active, else active-passive).
    #[arg(long, value_parser = ["active-passive", "config-only", "active-active"])]
    pub mode: Option<String>,
    /// Nodes upgraded at once with the rolling strategy.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Inject a fault, for tests: `kill-coordinator` (kill -9 of the
    /// coordinating agent mid-upgrade, restarted a second later like a
    /// service manager would) or `bad-image` (the target release's health
    /// check fails).
    #[arg(long, hide = true, value_parser = ["kill-coordinator", "bad-image"])]
    pub fault: Option<String>,
    /// With `--fault kill-coordinator`: kill once this many steps are done
    /// (the switchover step's number by default).
    #[arg(long, hide = true)]
    pub fault_after: Option<usize>,
    /// The release the cluster starts on (a release of the example catalog).
    #[arg(long, default_value = "6.2.0")]
    pub from: String,
    /// The release to upgrade to.
    #[arg(long, default_value = "6.2.5")]
    pub to: String,
    /// The most messages the demo sends (it stops earlier when the upgrade
    /// is over).
    #[arg(long, default_value_t = 5000)]
    pub messages: u64,
    /// Send no mail: bring your own client. The progress lines (the VIPs,
    /// "every node runs ...", "upgrade: ...") go to stderr, with --json too.
    #[arg(long)]
    pub no_load: bool,
    /// Serve the VIP on this loopback address instead of a free port.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// Relay to this next hop (e.g. postfix's smtp-sink) instead of the
    /// built-in counting sink; nothing is counted then.
    #[arg(long, value_name = "ADDR")]
    pub relay_to: Option<std::net::SocketAddr>,
    /// Seconds of load before the upgrade starts.
    #[arg(long, default_value_t = 1)]
    pub start_delay: u64,
    /// Seconds to keep serving after the upgrade ends.
    #[arg(long, default_value_t = 1)]
    pub linger: u64,
    /// `peers`, or `etcd`: quorum and fencing through a local 3-member etcd
    /// the demo starts on loopback (Debian's etcd-server).
    #[arg(long, value_enum, default_value_t = CoordinationArg::Peers)]
    pub coordination: CoordinationArg,
}

/// What an upgrade aims at: the release, the catalog, the strategy.
#[derive(Debug, Args, Clone)]
pub struct UpgradeTarget {
    /// The release to reach.
    #[arg(long, value_name = "VERSION")]
    pub to: String,
    /// The release catalog (TOML) whose rules give the path.
    #[arg(long, value_name = "FILE")]
    pub catalog: PathBuf,
    /// switchover (active-passive default), holdoff, rolling (config-only
    /// default) or active-active.
    #[arg(long)]
    pub strategy: Option<String>,
    /// Nodes upgraded at once with the rolling strategy: a count (3) or a
    /// share of the cluster (30%, rounded up to whole nodes). With the
    /// rollout knobs below: the nodes of each wave after the canaries.
    #[arg(long, value_name = "N|P%")]
    pub batch: Option<tandem_upgrade::Batch>,
    /// The rollout knobs: any of them makes the upgrade go in waves.
    #[command(flatten)]
    pub rollout: crate::commands::upgrade::rollout_args::RolloutArgs,
}

/// `tandem upgrade ...`.
#[derive(Debug, Subcommand)]
pub enum UpgradeCommand {
    /// The steps an upgrade would take, the version path with the rule for
    /// each hop, and the expected client impact.
    Plan {
        #[command(flatten)]
        upgrade: UpgradeTarget,
        #[command(flatten)]
        target: ApiTarget,
    },
    /// Submit the upgrade to the cluster and follow it; Ctrl-C detaches,
    /// the upgrade goes on (the active node coordinates it).
    Run {
        #[command(flatten)]
        upgrade: UpgradeTarget,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        target: ApiTarget,
    },
    /// Where the upgrade is: each step, its state, and the outcome.
    Status {
        /// Follow it until it ends.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        target: ApiTarget,
    },
    /// The last upgrade's report: a timeline of its steps with their
    /// durations, the release each node runs, and the client impact when
    /// it was measured (`--impact` with the JSON `tandem demo --json` or a
    /// benchmark printed).
    Report {
        /// A measurement of the client impact to include (JSON with
        /// sent/acknowledged/lost/failed_sessions/max_gap_ms/failovers).
        #[arg(long, value_name = "FILE")]
        impact: Option<PathBuf>,
        #[command(flatten)]
        target: ApiTarget,
    },
    /// Stop at the next safe point.
    Abort {
        #[command(flatten)]
        target: ApiTarget,
    },
    /// Go on with a rollout in waves paused after its canaries (`upgrade
    /// run --canary K`), and follow it.
    Resume {
        #[command(flatten)]
        target: ApiTarget,
    },
    /// Go back to an earlier release, standby first (Huawei step 7).
    Rollback {
        /// The release to go back to.
        #[arg(long, value_name = "VERSION")]
        to: String,
        /// switchover or another strategy; the mode's default when absent.
        #[arg(long)]
        strategy: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        target: ApiTarget,
    },
    /// Play a fleet rollout many times, touching no node: how long it takes
    /// (p50, p99) and how likely it is to stop, for given rollout knobs.
    ///
    /// The fleet is one config-only cluster of relays whose primary goes
    /// last, alone: canaries first, then batches. Each node takes --boot
    /// plus --health (each varied by up to 20 %, from the seed) and fails
    /// with probability --fail-rate; more than --max-failed failures stop
    /// the rollout. A duration runs until the rollout is done or stopped;
    /// the pause after the canaries counts as resumed at once. The same
    /// seed gives the same figures.
    Simulate(crate::commands::upgrade::simulate::SimulateArgs),
}

/// `tandem backup ...`.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Archive the node's config and HA state with a timestamp (every node
    /// with --all).
    Create {
        #[command(flatten)]
        nodes: Nodes,
    },
    /// The node's backups, oldest first.
    List {
        #[command(flatten)]
        target: ApiTarget,
    },
    /// Restore a backup; one made on another node only with --force. The
    /// agent runs the restored config after its next restart.
    Restore {
        /// The backup's id (see `tandem backup list`).
        id: String,
        /// Restore even a backup made on another node.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        target: ApiTarget,
    },
}

/// `tandem listener ...`.
#[derive(Debug, Subcommand)]
pub enum ListenerCommand {
    /// Stop accepting new connections; sessions in progress may finish.
    Suspend {
        /// How long sessions in progress may take (e.g. 30s); with
        /// `suspend = "signal"` the service then answers 421 and closes them.
        #[arg(long, value_name = "DUR", default_value = "30s", value_parser = parse_duration)]
        drain_timeout: std::time::Duration,
        #[command(flatten)]
        target: ApiTarget,
    },
    /// Accept new connections again.
    Resume {
        #[command(flatten)]
        target: ApiTarget,
    },
}

/// `tandem bench ...`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// tandem's relay against postfix, same load and next hop, in one run.
    Relay(tandem_mta::cli::BenchRelayArgs),

    /// Failover gaps of a local pair on loopback: crash, hang, planned
    /// (and with --coordination etcd, a partition in network namespaces).
    ///
    /// Probes the VIP every 2 ms and injects each fault --runs times into
    /// the active agent; prints p50/p99/max gap, failed connects and the
    /// time both nodes answered per fault, and the idle agent's RSS. The
    /// partition needs root, and is skipped with the reason without it.
    Failover {
        /// Runs per fault.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// `peers`, or `etcd` (a local 3-member etcd is started).
        #[arg(long, value_enum, default_value_t = CoordinationArg::Peers)]
        coordination: CoordinationArg,
    },

    /// Cluster fsync's cost and worth: a local pair with the relay under the
    /// same load with data_sync = off, async and semi (a few rounds, median
    /// kept), then semi with a kill -9 of the active mid-load (acknowledged
    /// mail lost, duplicates).
    Sync {
        /// Messages per run.
        #[arg(long, default_value_t = 2000)]
        messages: u64,
        /// Parallel SMTP sessions.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Rounds of off, async and semi (each round on fresh pairs); each
        /// mode's figures are its median round.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
        rounds: u64,
        /// Runs of the returning primary (issue 14): it crashes with mail
        /// queued, the secondary takes more, it restarts.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
        returns: u64,
    },

    /// The failover benchmark's service (run by the agent, not by hand).
    #[command(hide = true)]
    NameService,
}

/// Arguments of `tandem completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to generate completions for.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}

/// `--coordination`: who decides which node serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CoordinationArg {
    /// The peers alone, over the heartbeat links.
    Peers,
    /// A local etcd (`coordination = "etcd"`).
    Etcd,
}

impl CoordinationArg {
    /// As written in `[cluster] coordination`.
    pub fn as_str(self) -> &'static str {
        match self {
            CoordinationArg::Peers => "peers",
            CoordinationArg::Etcd => "etcd",
        }
    }
}
