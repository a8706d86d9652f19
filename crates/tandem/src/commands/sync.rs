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

use anyhow::{Context, bail};
use serde_json::Value;
use tandem_mta::{CommitHook, HookFuture};
use tandem_sync::report::SyncReport;

use crate::cli::ApiTarget;
use crate::commands::cluster::ApiClient;

/// A resync moves every file: allow it time.
const RESYNC_TIMEOUT: Duration = Duration::from_secs(3600);

/// Sends a request to the active node: asks `client`'s agent, and if it
/// answers 409 with the active's API address, asks that one.
async fn to_active(
    client: &ApiClient,
    method: reqwest::Method,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<reqwest::Response> {
    let response = client
        .request(method.clone(), path)
        .timeout(timeout)
        .send()
        .await
        .with_context(|| format!("no agent answers at {} (is it running?)", client.addr()))?;
    if response.status() != reqwest::StatusCode::CONFLICT {
        return Ok(response);
    }
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let Some(active_api) = body["active_api"].as_str() else {
        bail!("{}", body["error"].as_str().unwrap_or("no node is active"));
    };
    let active = client.with_api(active_api);
    active
        .request(method, path)
        .timeout(timeout)
        .send()
        .await
        .with_context(|| format!("the active node's agent does not answer at {active_api}"))
}

/// Turns a non-2xx answer into an error with the agent's message.
async fn success(response: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    if status == reqwest::StatusCode::NOT_FOUND {
        bail!("the agent has no [sync] section: sync is not configured on this cluster");
    }
    let body: Value = response.json().await.unwrap_or(Value::Null);
    bail!(
        "agent answered {status}: {}",
        body["error"].as_str().unwrap_or("")
    )
}

/// `tandem sync report`: exit 0 when every node agrees, 1 when anything
/// differs (or a standby could not be compared).
pub async fn report(target: &ApiTarget, json: bool) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(target)?;
    let response = to_active(
        &client,
        reqwest::Method::GET,
        "/v1/sync/report",
        Duration::from_secs(60),
    )
    .await?;
    let report: SyncReport = success(response)
        .await?
        .json()
        .await
        .context("the agent's sync report is not what this tandem expects")?;
    // Quarantined files are data the nodes' manifests no longer show:
    // acknowledged on one node, set aside by a catch-up (issue 14).
    let quarantined: Vec<(String, u64)> = match client.get("/v1/cluster").await {
        Ok(cluster) => cluster["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| {
                let files = n["sync"]["quarantine"]["files"]
                    .as_u64()
                    .filter(|f| *f > 0)?;
                Some((n["node"]["node"].as_str().unwrap_or("?").to_string(), files))
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    if json {
        let mut value = serde_json::to_value(&report)?;
        value["quarantine"] = quarantined
            .iter()
            .map(|(node, files)| serde_json::json!({"node": node, "files": files}))
            .collect();
        println!("{value}");
    } else {
        print!("{}", render_report(&report));
        if !quarantined.is_empty() {
            println!(
                "quarantine (acknowledged files a catch-up set aside; `tandem sync quarantine list`):"
            );
            for (node, files) in &quarantined {
                println!("  {node}: {files} file(s)");
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
    let client = ApiClient::new(target)?;
    let path = format!(
        "/v1/config/{name}{}",
        if force { "?force=true" } else { "" }
    );
    let answer = client.put(&path, content, None).await?;
    if json {
        println!("{answer}");
    } else {
        println!(
            "{name}: changed (sha256 {})",
            short(answer["sha256"].as_str().unwrap_or("?"))
        );
        print_peers(&answer);
    }
    Ok(ExitCode::SUCCESS)
}

/// `tandem config push`: every cluster config file, now.
pub async fn config_push(target: &ApiTarget, force: bool, json: bool) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(target)?;
    let path = format!("/v1/config/push{}", if force { "?force=true" } else { "" });
    let answer = client.post(&path, &Value::Null).await?;
    if json {
        println!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    let files = answer["pushed"].as_array().cloned().unwrap_or_default();
    if files.is_empty() {
        println!(
            "no cluster config file to push ([sync] config is empty, or the files are missing)"
        );
    }
    for file in &files {
        let name = file["file"].as_str().unwrap_or("?");
        if let Some(held) = file["held"].as_str() {
            println!("{name}: held: {held}");
        } else if let Some(error) = file["error"].as_str() {
            println!("{name}: not pushed: {error}");
        } else {
            println!(
                "{name}: pushed (sha256 {})",
                short(file["sha256"].as_str().unwrap_or("?"))
            );
            print_peers(file);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_peers(answer: &Value) {
    for peer in answer["peers"].as_array().into_iter().flatten() {
        let name = peer["peer"].as_str().unwrap_or("?");
        match peer["error"].as_str() {
            Some(error) => println!("  {name}: not taken: {error}"),
            None => println!("  {name}: installed"),
        }
    }
}

/// `tandem config show`: exit 1 when a file differs from the cluster's
/// copy (a held change on the primary, or an edit on a standby not yet put
/// right).
pub async fn config_show(target: &ApiTarget, json: bool) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(target)?;
    let answer = client.get("/v1/config").await?;
    let files = answer["files"].as_array().cloned().unwrap_or_default();
    let changed = files.iter().any(|f| f["changed"] == true);
    if json {
        println!("{answer}");
    } else {
        let sync = &answer["sync"];
        println!(
            "cluster config on {}{}",
            answer["node"].as_str().unwrap_or("?"),
            if sync["disconnected"] == true {
                " (disconnected from cluster config)"
            } else {
                ""
            }
        );
        for file in &files {
            let hash = |key: &str| file[key].as_str().map_or("-", short).to_string();
            println!(
                "  {:<20} {:<12} agreed {:<12} {}",
                file["name"].as_str().unwrap_or("?"),
                hash("sha256"),
                hash("agreed_sha256"),
                if file["changed"] == true {
                    "CHANGED"
                } else {
                    ""
                }
            );
        }
        if let Some(held) = sync["held"].as_object() {
            for (name, why) in held {
                println!("held: {name}: {}", why.as_str().unwrap_or(""));
            }
        }
        if let Some(refused) = sync["last_refused"].as_str() {
            println!(
                "refused local edits: {} (last: {refused})",
                sync["refused_local_edits"]
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

/// `tandem ha resync`: a full push of config and data from the active to
/// every standby, with a progress bar (FortiMail `set system ha resync`).
pub async fn resync(target: &ApiTarget, json: bool) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(target)?;
    let response = to_active(
        &client,
        reqwest::Method::POST,
        "/v1/sync/resync",
        RESYNC_TIMEOUT,
    )
    .await?;
    let mut response = success(response).await?;
    let bar = crate::commands::bytes_bar(0, json);
    // The answer is JSON lines; a line may span chunks.
    let mut pending = Vec::new();
    let mut done: Option<Value> = None;
    while let Some(chunk) = response
        .chunk()
        .await
        .context("the resync answer broke off (did the active node stop?)")?
    {
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let Ok(value) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            if let Some(p) = value.get("progress") {
                bar.set_message(p["peer"].as_str().unwrap_or("").to_string());
                bar.set_length(p["bytes_total"].as_u64().unwrap_or(0));
                bar.set_position(p["bytes_done"].as_u64().unwrap_or(0));
            } else if value.get("done").is_some() {
                done = Some(value);
            }
        }
    }
    bar.finish_and_clear();
    let Some(done) = done else {
        bail!("the resync ended without a result (did the active node stop?)");
    };
    let empty = Vec::new();
    let failed = done["done"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .chain(done["config"].as_array().unwrap_or(&empty))
        .any(|o| !o["error"].is_null());
    if json {
        println!("{done}");
    } else {
        for outcome in done["done"].as_array().unwrap_or(&empty) {
            let peer = outcome["peer"].as_str().unwrap_or("?");
            match outcome["error"].as_str() {
                Some(error) => println!("{peer}: resync failed: {error}"),
                None => println!(
                    "{peer}: resynced {} files, {} bytes",
                    outcome["progress"]["files_done"], outcome["progress"]["bytes_done"]
                ),
            }
        }
        for outcome in done["config"].as_array().unwrap_or(&empty) {
            let file = outcome["file"].as_str().unwrap_or("?");
            if let Some(error) = outcome["error"].as_str() {
                println!("config {file}: {error}");
            } else {
                println!("config {file}: pushed");
            }
        }
        let _ = std::io::stdout().flush();
    }
    Ok(if failed {
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
    url: String,
    token: String,
    http: reqwest::Client,
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
        let http = reqwest::Client::builder()
            // The agent bounds a commit by sync_timeout (at most 60 s);
            // this only catches an agent that stopped answering.
            .timeout(Duration::from_secs(65))
            .build()?;
        Ok(Some(AgentCommit {
            url: format!("http://{}/v1/sync/commit", api.to_string_lossy()),
            token,
            http,
        }))
    }

    async fn call(&self, paths: &[PathBuf]) -> Result<(), String> {
        // The agent resolves paths against its data dir; a relative spool
        // path is relative to this process's directory.
        let cwd = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
        let paths: Vec<PathBuf> = paths.iter().map(|p| cwd.join(p)).collect();
        let response = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .json(&serde_json::json!({ "paths": paths }))
            .send()
            .await
            .map_err(|e| format!("the agent's cluster fsync at {} failed: {e}", self.url))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        Err(format!(
            "cluster fsync refused ({status}): {}",
            body["error"].as_str().unwrap_or("")
        ))
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
            tracing::info!(url = %hook.url, "cluster fsync: every 250 waits for the agent's commit");
            Arc::new(hook)
        }
        None => Arc::new(tandem_mta::NoopHook),
    })
}
