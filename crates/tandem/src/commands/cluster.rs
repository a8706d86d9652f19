//! `tandem status`, `tandem ha ...`, `tandem failover ...`: thin clients of
//! an agent's API. Any node answers for the whole cluster; `--node` aims a
//! command at another one, and the agent forwards it.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tandem_core::{Command, GroupId};

use crate::cli::{ApiTarget, FailoverCommand, HaCommand, ListenerCommand};

/// An agent's API, ready to call.
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client for the agent at `api`, with the token in hand.
    pub fn with_token(api: std::net::SocketAddr, token: String) -> anyhow::Result<ApiClient> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        Ok(ApiClient {
            base: format!("http://{api}"),
            token,
            http,
        })
    }

    /// A client for the agent the target names (config file, or address
    /// and token file).
    pub fn new(target: &ApiTarget) -> anyhow::Result<ApiClient> {
        let (api, token_file) = match &target.config {
            Some(path) => {
                let config = tandem_agent::config::AgentConfig::parse(
                    &std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                    path,
                )?;
                (
                    target.api.unwrap_or(config.node.api),
                    target.token_file.clone().unwrap_or(config.node.token_file),
                )
            }
            None => match (target.api, &target.token_file) {
                (Some(api), Some(file)) => (api, file.clone()),
                _ => bail!(
                    "say which agent to ask: --config FILE, or --api ADDR with --token-file FILE"
                ),
            },
        };
        let token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("cannot read the API token from {}", token_file.display()))?
            .trim()
            .to_string();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        Ok(ApiClient {
            base: format!("http://{api}"),
            token,
            http,
        })
    }

    /// The agent's address.
    pub fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    /// The agent's base URL (`http://ADDR`).
    pub fn base(&self) -> String {
        self.base.clone()
    }

    /// PUT raw bytes (an image upload), with their sha256 when known.
    pub async fn put(
        &self,
        path: &str,
        body: Vec<u8>,
        sha256: Option<&str>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .request(reqwest::Method::PUT, path)
            .timeout(Duration::from_secs(300))
            .body(body);
        if let Some(sha) = sha256 {
            request = request.header("x-sha256", sha);
        }
        self.answer(request, false, "refused the upload").await
    }

    /// Sends a request and reads its JSON answer. Non-2xx answers are
    /// errors, except 409 when `conflict_is_answer` (a refusal the caller
    /// reports itself).
    async fn answer(
        &self,
        request: reqwest::RequestBuilder,
        conflict_is_answer: bool,
        failed: &str,
    ) -> anyhow::Result<Value> {
        let response = request
            .send()
            .await
            .with_context(|| format!("no agent answers at {} (is it running?)", self.addr()))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() || conflict_is_answer && status == reqwest::StatusCode::CONFLICT {
            return Ok(body);
        }
        bail!(
            "agent at {} {failed} ({status}): {}",
            self.addr(),
            body["error"].as_str().unwrap_or("")
        )
    }

    /// The same token, another agent (`api` is `HOST:PORT`).
    pub fn with_api(&self, api: &str) -> ApiClient {
        ApiClient {
            base: format!("http://{api}"),
            token: self.token.clone(),
            http: self.http.clone(),
        }
    }

    /// A request with the token set, for callers that need the raw answer
    /// (statuses with a meaning, streamed bodies).
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// GET a path; non-2xx answers are errors.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.answer(self.request(reqwest::Method::GET, path), false, "answered")
            .await
    }

    /// POST an HA command; a refusal is an answer, not an error.
    pub async fn command(&self, command: Command, node: Option<String>) -> anyhow::Result<Value> {
        self.post(
            "/v1/command",
            &serde_json::json!({"command": command, "node": node}),
        )
        .await
    }

    /// POST a mutating call, naming the caller; 409 (refused) is an answer.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
        let request = self
            .request(reqwest::Method::POST, path)
            .header("x-tandem-user", user)
            .json(body);
        self.answer(request, true, "answered").await
    }
}

/// The API clients of the aimed-at node(s): every node with `all`.
pub async fn clients(target: &ApiTarget, all: bool) -> anyhow::Result<Vec<(String, ApiClient)>> {
    let local = ApiClient::new(target)?;
    if !all && target.node.is_none() {
        return Ok(vec![("this node".into(), local)]);
    }
    let cluster = local.get("/v1/cluster").await?;
    let mut out = Vec::new();
    for report in cluster["nodes"].as_array().into_iter().flatten() {
        let name = report["node"]["node"].as_str().unwrap_or("?").to_string();
        if !all && target.node.as_deref() != Some(name.as_str()) {
            continue;
        }
        let api: std::net::SocketAddr = report["agent"]["api"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("node {name} is unreachable: {}", report["error"]))?;
        out.push((name, local.with_api(&api.to_string())));
    }
    if out.is_empty() {
        anyhow::bail!(
            "no node named {:?} in this cluster",
            target.node.as_deref().unwrap_or("")
        );
    }
    Ok(out)
}

/// `tandem status`: one table for the whole cluster.
pub async fn status(target: &ApiTarget, watch: bool, json: bool) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(target)?;
    loop {
        let cluster = client.get("/v1/cluster").await?;
        if json {
            println!("{cluster}");
        } else {
            if watch {
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", table(&cluster));
            let _ = std::io::stdout().flush();
        }
        if !watch {
            // A key mismatch is a cluster that cannot fail over safely:
            // scripts and monitors must see it in the exit status.
            let mismatch = cluster["nodes"]
                .as_array()
                .is_some_and(|nodes| nodes.iter().any(|n| !n["node"]["key_mismatch"].is_null()));
            return Ok(if mismatch {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Renders `/v1/cluster` as the status table. The first report is the
/// answering node's, whose view of its peers gives the heartbeat ages.
fn table(cluster: &Value) -> String {
    let empty = Vec::new();
    let nodes = cluster["nodes"].as_array().unwrap_or(&empty);
    let local_peers = nodes.first().map(|n| &n["node"]["peers"]);
    let mut rows = vec![
        [
            "NODE",
            "CONFIGURED",
            "EFFECTIVE",
            "PRIO",
            "VERSION",
            "LINKS",
            "HEARD",
            "VIP",
            "SERVICE",
            "DATA",
        ]
        .map(String::from),
    ];
    let mut notes = Vec::new();
    for (index, report) in nodes.iter().enumerate() {
        let node = &report["node"];
        let name = node["node"].as_str().unwrap_or("?").to_string();
        if let Some(error) = report["error"].as_str() {
            rows.push([
                name,
                "?".into(),
                "unreachable".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
            ]);
            notes.push(error.to_string());
            continue;
        }
        let peer_view = local_peers
            .and_then(|peers| peers.as_array())
            .and_then(|peers| peers.iter().find(|p| p["name"] == name));
        let (links, heard) = match (index, peer_view) {
            (0, _) => ("-".to_string(), "-".to_string()),
            (_, Some(peer)) => link_summary(peer),
            (_, None) => ("?".into(), "?".into()),
        };
        let agent = &report["agent"];
        let vip = agent["vip_bound"].as_array().map(|a| a.len()).unwrap_or(0);
        let holdoff = node["holdoff"]["from"]
            .as_str()
            .map(|f| format!(" (held off by {f})"))
            .unwrap_or_default();
        rows.push([
            name,
            text(&node["configured_role"]),
            format!("{}{holdoff}", text(&node["effective_role"])),
            text(&node["priority"]),
            text(&node["version"]),
            links,
            heard,
            if vip > 0 { "owner".into() } else { "-".into() },
            match (agent["service_running"] == true, node["healthy"] != false) {
                (true, true) => "running".into(),
                (true, false) => "running, UNHEALTHY".into(),
                (false, true) => "-".into(),
                (false, false) => "unhealthy".into(),
            },
            data_sync_cell(&report["sync"], &node["data"], &mut notes),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for report in nodes {
        let rejected = &report["node"]["counters"]["rejected"];
        let name = text(&report["node"]["node"]);
        if report["agent"]["allow_unsigned"] == true {
            notes.push(format!(
                "{name}: accepts unsigned images (allow_unsigned = true)"
            ));
        }
        if let Some(peer) = report["node"]["key_mismatch"].as_str() {
            notes.push(format!(
                "{name}: FAILED: cluster key mismatch with {peer} (its heartbeats fail the MAC while the sync channel hears it): give every node the same cluster key file"
            ));
        }
        let quarantined = &report["sync"]["quarantine"];
        if let Some(n) = quarantined["files"].as_u64().filter(|n| *n > 0) {
            notes.push(format!(
                "{name}: {n} file(s) in quarantine ({} batch(es)): acknowledged data a catch-up would have deleted; {} (`tandem sync quarantine list`)",
                quarantined["batches"].as_u64().unwrap_or(0),
                if quarantined["merge"] == true {
                    "being merged back into the active"
                } else {
                    "restore or drop them"
                }
            ));
        }
        config_sync_notes(&name, &report["sync"]["config"], &mut notes);
        for (reason, hint) in [
            ("bad-mac", "peer unauthenticated: cluster key mismatch?"),
            (
                "foreign-cluster",
                "heartbeats from another cluster on this link: cluster name mismatch?",
            ),
            (
                "unknown-peer",
                "heartbeats from a node not in this config: a [[peer]] missing?",
            ),
            (
                "unsupported-version",
                "a peer speaks a protocol this node does not: upgrade it",
            ),
        ] {
            if let Some(n) = rejected[reason].as_u64().filter(|n| *n > 0) {
                notes.push(format!("{name}: {n} datagrams rejected ({reason}): {hint}"));
            }
        }
    }
    for note in notes {
        out.push_str(&format!("! {note}\n"));
    }
    out
}

/// What config sync has to say about a node: a disconnection, changes
/// held back, edits refused. Nothing when all is quiet.
fn config_sync_notes(name: &str, config: &Value, notes: &mut Vec<String>) {
    if config["disconnected"] == true {
        notes.push(format!(
            "{name}: disconnected from cluster config (keeps its own config; changes are refused cluster-wide)"
        ));
    }
    for (file, why) in config["held"].as_object().into_iter().flatten() {
        notes.push(format!(
            "{name}: config change to {file} held: {}",
            why.as_str().unwrap_or("")
        ));
    }
    if let Some(n) = config["refused_local_edits"].as_u64().filter(|n| *n > 0) {
        notes.push(format!(
            "{name}: {n} local config edit(s) refused; last: {}",
            text(&config["last_refused"])
        ));
    }
}

/// The DATA column (issue 6): `source` on the replicating active, the
/// receiver's state on a standby (`in-sync`, `syncing`, `stale`,
/// `unverified`), `-`
/// without `[sync]`. Each standby as the active sees it (state, lag,
/// pending files) goes to the notes.
fn data_sync_cell(sync: &Value, data: &Value, notes: &mut Vec<String>) -> String {
    if sync["enabled"] != true {
        return "-".into();
    }
    if let Some(replicator) = sync.get("replicator").filter(|r| !r.is_null()) {
        let empty = Vec::new();
        for peer in replicator["peers"].as_array().unwrap_or(&empty) {
            notes.push(format!(
                "sync {} → {}: {}, lag {}, {} pending{}",
                text(&sync["data_sync"]),
                text(&peer["name"]),
                text(&peer["state"]),
                peer["lag_ms"]
                    .as_u64()
                    .map_or_else(|| "-".to_string(), |ms| format!("{ms} ms")),
                peer["pending_paths"].as_u64().unwrap_or(0),
                peer["last_error"]
                    .as_str()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
        }
        return "source".into();
    }
    let state = text(&sync["receiver"]["state"]);
    if data == "unverified" && sync["receiver"]["state"] != "in-sync" {
        // Started (or lost the service) and not yet compared with the
        // active's data: it cannot take the service back until it is.
        return "unverified".into();
    }
    if sync["data_in_sync"] == false {
        if state == "syncing" {
            state
        } else {
            "stale".into()
        }
    } else {
        state
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// "hb0 up, hb1 down" and the freshest heartbeat age.
fn link_summary(peer: &Value) -> (String, String) {
    let empty = Vec::new();
    let links = peer["links"].as_array().unwrap_or(&empty);
    let summary: Vec<String> = links
        .iter()
        .map(|l| {
            format!(
                "{} {}",
                text(&l["link"]),
                if l["up"] == true { "up" } else { "down" }
            )
        })
        .collect();
    let freshest = links
        .iter()
        .filter_map(|l| l["last_heard_ms_ago"].as_u64())
        .min();
    (
        summary.join(", "),
        freshest.map_or_else(|| "never".into(), |ms| format!("{ms}ms")),
    )
}

/// `tandem ha ...`.
pub async fn ha(command: HaCommand, json: bool) -> anyhow::Result<ExitCode> {
    let (command, target) = match command {
        HaCommand::Restart { target } => (Command::HaRestart, target),
        HaCommand::Restore { target } => (Command::HaRestore, target),
        HaCommand::Preempt { state, target } => (Command::HaPreempt(state == "on"), target),
        HaCommand::Holdoff { secs, target } => {
            (Command::HaHoldoff(Duration::from_secs(secs)), target)
        }
        HaCommand::Resync { target } => return super::sync::resync(&target, json).await,
    };
    send(command, &target, false, json).await
}

/// `tandem failover ...`.
pub async fn failover(command: FailoverCommand, json: bool) -> anyhow::Result<ExitCode> {
    let (command, target) = match command {
        FailoverCommand::Active { force, target } => {
            return send(Command::FailoverActive, &target, force, json).await;
        }
        FailoverCommand::Standby { target } => (Command::FailoverStandby, target),
        FailoverCommand::ReloadStandby { timeout, target } => {
            return reload_standby(&target, timeout, json).await;
        }
        FailoverCommand::Group {
            group,
            state,
            target,
        } => (
            Command::FailoverGroup {
                group: GroupId(group),
                active: state == "active",
            },
            target,
        ),
    };
    send(command, &target, false, json).await
}

/// ASA's `failover reload-standby`: boot every standby into its pending
/// slot and wait until each is back in standby with the new version.
async fn reload_standby(
    target: &ApiTarget,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let local = ApiClient::new(target)?;
    let cluster = local.get("/v1/cluster").await?;
    let mut standbys = Vec::new();
    for report in cluster["nodes"].as_array().into_iter().flatten() {
        if report["node"]["effective_role"] == "standby"
            && let Some(api) = report["agent"]["api"].as_str()
        {
            standbys.push((text(&report["node"]["node"]), local.with_api(api)));
        }
    }
    if standbys.is_empty() {
        eprintln!("tandem: reload-standby refused: no node is standby");
        return Ok(ExitCode::from(1));
    }
    let mut results = Vec::new();
    for (name, client) in &standbys {
        let booted = client
            .post("/v1/images/boot", &serde_json::json!({}))
            .await?;
        if let Some(error) = booted["error"].as_str() {
            eprintln!("tandem: {name}: reload refused: {error}");
            return Ok(ExitCode::from(1));
        }
        let version = text(&booted["version"]);
        if !json {
            println!(
                "{name}: booting slot {} ({version})",
                text(&booted["booted"])
            );
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = client.get("/v1/status").await.ok();
            let ready = status.as_ref().is_some_and(|s| {
                s["node"]["effective_role"] == "standby" && text(&s["node"]["version"]) == version
            });
            if ready {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                eprintln!(
                    "tandem: {name} is not Standby Ready after {} s",
                    timeout.as_secs()
                );
                return Ok(ExitCode::from(1));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !json {
            println!("{name}: Standby Ready on {version}");
        }
        results.push(serde_json::json!({"node": name, "version": version, "ready": true}));
    }
    if json {
        println!("{}", Value::Array(results));
    }
    Ok(ExitCode::SUCCESS)
}

/// `tandem listener suspend|resume`.
pub async fn listener(command: ListenerCommand, json: bool) -> anyhow::Result<ExitCode> {
    let (body, target, what) = match command {
        ListenerCommand::Suspend {
            drain_timeout,
            target,
        } => (
            serde_json::json!({"action": "suspend", "drain_timeout_ms": drain_timeout.as_millis() as u64, "node": target.node}),
            target,
            "listener suspend",
        ),
        ListenerCommand::Resume { target } => (
            serde_json::json!({"action": "resume", "node": target.node}),
            target,
            "listener resume",
        ),
    };
    let reply = ApiClient::new(&target)?.post("/v1/listener", &body).await?;
    report(what, &reply, json)
}

/// Sends one command; a refusal prints why and exits 1.
/// Sends an HA command; `force` is for a takeover with stale data.
async fn send(
    command: Command,
    target: &ApiTarget,
    force: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(target)?;
    let what = command.to_string();
    let body = serde_json::json!({"command": command, "node": target.node, "force": force});
    let reply = client.post("/v1/command", &body).await?;
    report(&what, &reply, json)
}

/// Prints a command's answer; a refusal says why and exits 1.
fn report(what: &str, reply: &Value, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{reply}");
    }
    let node = text(&reply["node"]);
    match reply["outcome"].as_str() {
        Some("refused") => {
            eprintln!(
                "tandem: {what} refused on {node}: {}",
                text(&reply["reason"])
            );
            Ok(ExitCode::from(1))
        }
        Some(outcome) => {
            if let Some(warning) = reply["warning"].as_str() {
                eprintln!("tandem: warning: {warning}");
            }
            if !json {
                println!("{what}: {outcome} on {node}");
                for event in reply["events"].as_array().into_iter().flatten() {
                    println!("  {event}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        None => bail!("unexpected answer from the agent: {reply}"),
    }
}
