//! `tandem sync report`, `tandem ha resync`, `tandem config put|push|show`
//! (config sync), and the relay's cluster fsync (the [`CommitHook`]
//! `tandem mta serve` uses under an agent with `[sync]`).
//!
//! Report and resync are the active node's to answer; a standby answers
//! 409 naming the active and its API, and these commands follow it there,
//! so `--config` may point at any node.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use tandem_agent::Error as AgentError;
use tandem_agent::api::{
    ApiClient, ClusterConfigReport, CommitRequest, ConfigPushOutcome, ConfigPushReport,
    ConfigPushResult, ErrorBody, ResyncDone, ResyncLine,
};
use tandem_mta::{CommitHook, HookFuture};
use tandem_sync::replicator::PeerOutcome;
use tandem_sync::report::SyncReport;

use crate::cli::ApiTarget;
use crate::commands::cluster::api_client;

/// A resync moves every file: allow it time.
const RESYNC_TIMEOUT: Duration = Duration::from_secs(3600);

/// A report reads every node's manifest.
const REPORT_TIMEOUT: Duration = Duration::from_secs(60);

/// A config change returns once every standby has installed it (or not).
const CONFIG_PUT_TIMEOUT: Duration = Duration::from_secs(300);

/// The agent bounds a commit by sync_timeout (at most 60 s); this only
/// catches an agent that stopped answering.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(65);

const REPORT: &str = "/v1/sync/report";
const RESYNC: &str = "/v1/sync/resync";

/// Where to ask again after a standby's 409: the active's API, when the
/// refusal names it.
fn active_client(client: &ApiClient, refusal: &ErrorBody) -> anyhow::Result<ApiClient> {
    match refusal.active_api {
        Some(api) => Ok(client.at(api)),
        None if refusal.error.is_empty() => bail!("no node is active"),
        None => bail!("{}", refusal.error),
    }
}

/// "409 Conflict", as the operator knows HTTP statuses.
fn status_text(status: u16) -> String {
    StatusCode::from_u16(status).map_or_else(|_| status.to_string(), |s| s.to_string())
}

/// A sync route's error in the operator's words: a 404 means the agent has
/// no `[sync]` (the routes do not exist then).
fn sync_error(error: AgentError) -> anyhow::Error {
    match error {
        AgentError::ApiRefused { status: 404, .. } => {
            anyhow!("the agent has no [sync] section: sync is not configured on this cluster")
        }
        AgentError::ApiRefused { status, body, .. } => {
            anyhow!("agent answered {}: {}", status_text(status), body.error)
        }
        other => other.into(),
    }
}

/// How many files one node holds in quarantine.
#[derive(Debug, Serialize)]
struct QuarantinedFiles {
    node: String,
    files: usize,
}

/// `tandem sync report --json`: the report, and the quarantine it cannot
/// see.
#[derive(Serialize)]
struct ReportOutput<'a> {
    #[serde(flatten)]
    report: &'a SyncReport,
    quarantine: &'a [QuarantinedFiles],
}

/// `tandem sync report`: exit 0 when every node agrees, 1 when anything
/// differs (or a standby could not be compared).
pub async fn report(target: &ApiTarget, json: bool) -> anyhow::Result<ExitCode> {
    let client = api_client(target)?;
    let asked = client.clone().with_timeout(REPORT_TIMEOUT);
    let report: SyncReport = match asked.get(REPORT).await {
        Err(AgentError::ApiRefused {
            status: 409, body, ..
        }) => active_client(&asked, &body)?.get(REPORT).await,
        answer => answer,
    }
    .map_err(sync_error)?;
    // Quarantined files are data the nodes' manifests no longer show:
    // acknowledged on one node, set aside by a catch-up (issue 14).
    let quarantined: Vec<QuarantinedFiles> = match client.cluster().await {
        Ok(cluster) => cluster
            .nodes
            .iter()
            .filter_map(|node| {
                let report = node.report()?;
                let files = report.sync.detail.as_ref()?.quarantine.files;
                (files > 0).then(|| QuarantinedFiles {
                    node: report.node.node.clone(),
                    files,
                })
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    if json {
        let output = ReportOutput {
            report: &report,
            quarantine: &quarantined,
        };
        println!("{}", serde_json::to_string(&output)?);
    } else {
        print!("{}", render_report(&report));
        if !quarantined.is_empty() {
            println!(
                "quarantine (acknowledged files a catch-up set aside; `tandem sync quarantine list`):"
            );
            for q in &quarantined {
                println!("  {}: {} file(s)", q.node, q.files);
            }
        }
    }
    Ok(if report.agree && quarantined.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn render_report(report: &SyncReport) -> String {
    let mut out = format!(
        "sync report from {} (active): {}\n",
        report.node,
        if report.agree {
            "every node agrees"
        } else {
            "NODES DIFFER"
        }
    );
    for set in &report.data_sets {
        out.push_str(&format!(
            "\n{}: {}\n",
            set.name,
            if set.agree { "agree" } else { "differ" }
        ));
        for (node, summary) in &set.nodes {
            match &summary.error {
                Some(error) => out.push_str(&format!("  {node:<12} unavailable: {error}\n")),
                None => out.push_str(&format!(
                    "  {node:<12} {} files  {} bytes  digest {}\n",
                    summary.files,
                    summary.bytes,
                    short(&summary.digest)
                )),
            }
        }
    }
    let differences: Vec<_> = report.differences().collect();
    if !differences.is_empty() {
        out.push_str("\ndifferences:\n");
        for (set, file) in differences {
            let states: Vec<String> = file
                .nodes
                .iter()
                .map(|(node, state)| match state {
                    Some(s) => format!("{node}: {} B {}", s.size, short(&s.sha256)),
                    None => format!("{node}: missing"),
                })
                .collect();
            out.push_str(&format!("  {set}/{}  {}\n", file.path, states.join("  ")));
        }
    }
    out.push_str("\nstandbys:\n");
    for peer in &report.peers {
        out.push_str(&format!(
            "  {:<12} {:<13} lag {}  pending {}  last sync {}{}\n",
            peer.name,
            serde_json::to_value(peer.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            peer.lag_ms
                .map_or_else(|| "-".to_string(), |ms| format!("{ms} ms")),
            peer.pending_paths,
            peer.last_sync_unix_ms
                .map_or_else(|| "never".to_string(), ago),
            peer.last_error
                .as_deref()
                .map(|e| format!("  ({e})"))
                .unwrap_or_default()
        ));
    }
    out
}

/// `tandem config put NAME FILE`: a cluster config change, made on the
/// primary. A refusal (standby, disconnected node) is the agent's message.
pub async fn config_put(
    target: &ApiTarget,
    name: &str,
    file: &std::path::Path,
    force: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let content = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let client = api_client(target)?.with_timeout(CONFIG_PUT_TIMEOUT);
    let path = format!(
        "/v1/config/{name}{}",
        if force { "?force=true" } else { "" }
    );
    let outcome: ConfigPushOutcome = client.put_bytes(&path, content, None).await?;
    if json {
        println!("{}", serde_json::to_string(&outcome)?);
        return Ok(ExitCode::SUCCESS);
    }
    match &outcome.result {
        ConfigPushResult::Pushed { sha256, peers } => {
            println!("{name}: changed (sha256 {})", short(sha256));
            print_peers(peers);
        }
        ConfigPushResult::Held { held } => println!("{name}: changed, held: {held}"),
        ConfigPushResult::Failed { error } => println!("{name}: changed, not pushed: {error}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `tandem config push`: every cluster config file, now.
pub async fn config_push(target: &ApiTarget, force: bool, json: bool) -> anyhow::Result<ExitCode> {
    let client = api_client(target)?;
    let path = format!("/v1/config/push{}", if force { "?force=true" } else { "" });
    let answer: ConfigPushReport = client.post(&path, &()).await?;
    if json {
        println!("{}", serde_json::to_string(&answer)?);
        return Ok(ExitCode::SUCCESS);
    }
    if answer.pushed.is_empty() {
        println!(
            "no cluster config file to push ([sync] config is empty, or the files are missing)"
        );
    }
    for outcome in &answer.pushed {
        let name = &outcome.file;
        match &outcome.result {
            ConfigPushResult::Held { held } => println!("{name}: held: {held}"),
            ConfigPushResult::Failed { error } => println!("{name}: not pushed: {error}"),
            ConfigPushResult::Pushed { sha256, peers } => {
                println!("{name}: pushed (sha256 {})", short(sha256));
                print_peers(peers);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_peers(peers: &[PeerOutcome]) {
    for peer in peers {
        match &peer.error {
            Some(error) => println!("  {}: not taken: {error}", peer.peer),
            None => println!("  {}: installed", peer.peer),
        }
    }
}

/// `tandem config show`: exit 1 when a file differs from the cluster's
/// copy (a held change on the primary, or an edit on a standby not yet put
/// right).
pub async fn config_show(target: &ApiTarget, json: bool) -> anyhow::Result<ExitCode> {
    let client = api_client(target)?;
    let answer: ClusterConfigReport = client.get("/v1/config").await?;
    let changed = answer.files.iter().any(|f| f.changed);
    if json {
        println!("{}", serde_json::to_string(&answer)?);
    } else {
        let sync = &answer.sync;
        println!(
            "cluster config on {}{}",
            answer.node,
            if sync.disconnected {
                " (disconnected from cluster config)"
            } else {
                ""
            }
        );
        for file in &answer.files {
            let hash = |sha: &Option<String>| sha.as_deref().map_or("-", short).to_string();
            println!(
                "  {:<20} {:<12} agreed {:<12} {}",
                file.name,
                hash(&file.sha256),
                hash(&file.agreed_sha256),
                if file.changed { "CHANGED" } else { "" }
            );
        }
        for (name, why) in &sync.held {
            println!("held: {name}: {why}");
        }
        if let Some(refused) = &sync.last_refused {
            println!(
                "refused local edits: {} (last: {refused})",
                sync.refused_local_edits
            );
        }
    }
    Ok(if changed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// "12 s ago" from a Unix-ms timestamp.
fn ago(unix_ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    format!("{} s ago", now.saturating_sub(unix_ms) / 1000)
}

/// Starts the resync on the active node: asks `client`'s agent, and if it
/// answers 409 naming the active's API, asks that one. The answer is read
/// raw: it is a stream.
async fn start_resync(client: &ApiClient) -> anyhow::Result<reqwest::Response> {
    let send = |client: &ApiClient| client.request(Method::POST, RESYNC).send();
    let mut asked = client.clone();
    let mut response = send(&asked)
        .await
        .map_err(|source| unreachable(&asked, source))?;
    if response.status() == StatusCode::CONFLICT {
        let refusal: ErrorBody = response.json().await.unwrap_or_default();
        asked = active_client(client, &refusal)?;
        response = send(&asked)
            .await
            .map_err(|source| unreachable(&asked, source))?;
    }
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body: ErrorBody = response.json().await.unwrap_or_default();
    Err(sync_error(AgentError::ApiRefused {
        addr: asked.addr(),
        path: RESYNC.into(),
        status: status.as_u16(),
        body: Box::new(body),
    }))
}

fn unreachable(client: &ApiClient, source: reqwest::Error) -> anyhow::Error {
    AgentError::ApiUnreachable {
        addr: client.addr(),
        path: RESYNC.into(),
        source,
    }
    .into()
}

/// `tandem ha resync`: a full push of config and data from the active to
/// every standby, with a progress bar (FortiMail `set system ha resync`).
pub async fn resync(target: &ApiTarget, json: bool) -> anyhow::Result<ExitCode> {
    let client = api_client(target)?.with_timeout(RESYNC_TIMEOUT);
    let mut response = start_resync(&client).await?;
    let bar = crate::commands::bytes_bar(0, json);
    // The answer is JSON lines; a line may span chunks.
    let mut pending = Vec::new();
    let mut done: Option<ResyncDone> = None;
    while let Some(chunk) = response
        .chunk()
        .await
        .context("the resync answer broke off (did the active node stop?)")?
    {
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            match serde_json::from_slice::<ResyncLine>(&line) {
                Ok(ResyncLine::Progress(p)) => {
                    bar.set_message(p.progress.peer);
                    bar.set_length(p.progress.bytes_total);
                    bar.set_position(p.progress.bytes_done);
                }
                Ok(ResyncLine::Done(outcome)) => done = Some(outcome),
                // A line this version cannot read only thins the progress bar.
                Err(_) => {}
            }
        }
    }
    bar.finish_and_clear();
    let Some(done) = done else {
        bail!("the resync ended without a result (did the active node stop?)");
    };
    if json {
        println!("{}", serde_json::to_string(&done)?);
    } else {
        for outcome in &done.done {
            let peer = &outcome.peer;
            match (&outcome.error, &outcome.progress) {
                (Some(error), _) => println!("{peer}: resync failed: {error}"),
                (None, progress) => {
                    let (files, bytes) = progress
                        .as_ref()
                        .map_or((0, 0), |p| (p.files_done, p.bytes_done));
                    println!("{peer}: resynced {files} files, {bytes} bytes");
                }
            }
        }
        for outcome in &done.config {
            let file = &outcome.file;
            match &outcome.result {
                ConfigPushResult::Failed { error } => println!("config {file}: {error}"),
                ConfigPushResult::Held { held } => println!("config {file}: held: {held}"),
                ConfigPushResult::Pushed { .. } => println!("config {file}: pushed"),
            }
        }
        let _ = std::io::stdout().flush();
    }
    Ok(if done.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The relay's cluster fsync: `POST /v1/sync/commit` on the local agent
/// before every `250`. Any failure (strict mode with a standby away, this
/// node not active, the agent gone) refuses the message: the relay answers
/// 451 and the client retries, which is safe; a `250` without the commit
/// could lose mail on failover.
pub struct AgentCommit {
    api: ApiClient,
}

impl AgentCommit {
    /// From the environment the agent gives its service: `TANDEM_API` and
    /// `TANDEM_TOKEN_FILE`. `None` when not run under an agent with `[sync]`.
    pub fn from_env() -> anyhow::Result<Option<AgentCommit>> {
        let (Some(api), Some(token_file)) = (
            std::env::var_os("TANDEM_API"),
            std::env::var_os("TANDEM_TOKEN_FILE"),
        ) else {
            return Ok(None);
        };
        let api = api.to_string_lossy();
        let addr = api
            .parse()
            .with_context(|| format!("TANDEM_API: {api:?} is not the agent's HOST:PORT"))?;
        let token_file = PathBuf::from(token_file);
        let token = std::fs::read_to_string(&token_file)
            .with_context(|| {
                format!(
                    "TANDEM_TOKEN_FILE: cannot read the agent's API token from {}",
                    token_file.display()
                )
            })?
            .trim()
            .to_string();
        let api = ApiClient::new(addr, token)?.with_timeout(COMMIT_TIMEOUT);
        Ok(Some(AgentCommit { api }))
    }

    async fn call(&self, paths: &[PathBuf]) -> Result<(), String> {
        // The agent resolves paths against its data dir; a relative spool
        // path is relative to this process's directory.
        let cwd = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
        let request = CommitRequest {
            paths: paths.iter().map(|p| cwd.join(p)).collect(),
        };
        self.api.commit(&request).await.map_err(|e| match e {
            AgentError::ApiRefused { status, body, .. } => {
                format!(
                    "cluster fsync refused ({}): {}",
                    status_text(status),
                    body.error
                )
            }
            other => format!("the agent's cluster fsync failed: {other}"),
        })
    }
}

impl CommitHook for AgentCommit {
    fn commit<'a>(&'a self, paths: &'a [PathBuf]) -> HookFuture<'a> {
        Box::pin(async move { self.call(paths).await.map_err(tandem_mta::Error::Hook) })
    }
}

/// The hook for `tandem mta serve`: the agent's cluster fsync when run
/// under an agent with `[sync]`, local durability only otherwise.
pub fn relay_hook() -> anyhow::Result<Arc<dyn CommitHook>> {
    Ok(match AgentCommit::from_env()? {
        Some(hook) => {
            tracing::info!(api = %hook.api.addr(), "cluster fsync: every 250 waits for the agent's commit");
            Arc::new(hook)
        }
        None => Arc::new(tandem_mta::NoopHook),
    })
}
