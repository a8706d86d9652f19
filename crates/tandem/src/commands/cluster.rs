//! `tandem status`, `tandem ha ...`, `tandem failover ...`: thin clients of
//! an agent's API. Any node answers for the whole cluster; `--node` aims a
//! command at another one, and the agent forwards it.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tandem_agent::api::{
    ApiClient, BootAnswer, BootRequest, ClusterNode, ClusterReport, CommandOutcome, CommandReply,
    CommandRequest, ConfigSyncStatus, ListenerAction, ListenerRequest, StatusReport, SyncStatus,
};
use tandem_core::node::DataState;
use tandem_core::status::PeerStatus;
use tandem_core::wire::RejectReason;
use tandem_core::{Command, EffectiveRole, GroupId};
use tandem_sync::receiver::StandbyState;

use crate::cli::{ApiTarget, FailoverCommand, HaCommand, ListenerCommand};

/// The agent the target names (config file, or address and token file)
/// and the cluster's API token.
fn resolve(target: &ApiTarget) -> anyhow::Result<(std::net::SocketAddr, String)> {
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
            _ => {
                bail!("say which agent to ask: --config FILE, or --api ADDR with --token-file FILE")
            }
        },
    };
    let token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("cannot read the API token from {}", token_file.display()))?
        .trim()
        .to_string();
    Ok((api, token))
}

/// The agent the target names, ready to call.
pub fn api_client(target: &ApiTarget) -> anyhow::Result<ApiClient> {
    let (api, token) = resolve(target)?;
    Ok(ApiClient::new(api, token)?)
}

/// The API clients of the aimed-at node(s): every node with `all`.
pub async fn clients(target: &ApiTarget, all: bool) -> anyhow::Result<Vec<(String, ApiClient)>> {
    let local = api_client(target)?;
    if !all && target.node.is_none() {
        return Ok(vec![("this node".into(), local)]);
    }
    let cluster = local.cluster().await?;
    let mut out = Vec::new();
    for node in &cluster.nodes {
        let name = node.name().to_string();
        if !all && target.node.as_deref() != Some(name.as_str()) {
            continue;
        }
        let api = match node {
            ClusterNode::Reachable(report) => report.agent.api,
            ClusterNode::Unreachable(gone) => {
                bail!("node {name} is unreachable: {}", gone.error)
            }
        };
        out.push((name, local.at(api)));
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
    let client = api_client(target)?;
    loop {
        let cluster = client.cluster().await?;
        if json {
            println!("{}", serde_json::to_string(&cluster)?);
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
            let mismatch = cluster
                .nodes
                .iter()
                .filter_map(ClusterNode::report)
                .any(|r| r.node.key_mismatch.is_some());
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
fn table(cluster: &ClusterReport) -> String {
    let local_peers = cluster
        .nodes
        .first()
        .and_then(ClusterNode::report)
        .map(|r| r.node.peers.as_slice())
        .unwrap_or_default();
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
    for (index, entry) in cluster.nodes.iter().enumerate() {
        let name = entry.name().to_string();
        let report = match entry {
            ClusterNode::Reachable(report) => report,
            ClusterNode::Unreachable(gone) => {
                let mut row: [String; 10] = Default::default();
                row[0] = name;
                row[1] = "?".into();
                row[2] = "unreachable".into();
                rows.push(row);
                notes.push(gone.error.clone());
                continue;
            }
        };
        let node = &report.node;
        let peer_view = local_peers.iter().find(|p| p.name == name);
        let (links, heard) = match (index, peer_view) {
            (0, _) => ("-".to_string(), "-".to_string()),
            (_, Some(peer)) => link_summary(peer),
            (_, None) => ("?".into(), "?".into()),
        };
        let agent = &report.agent;
        let holdoff = node
            .holdoff
            .as_ref()
            .map(|h| format!(" (held off by {})", h.from))
            .unwrap_or_default();
        rows.push([
            name,
            word(&node.configured_role),
            format!("{}{holdoff}", node.effective_role),
            node.priority.to_string(),
            or_dash(&node.version),
            links,
            heard,
            if agent.vip_bound.is_empty() {
                "-".into()
            } else {
                "owner".into()
            },
            match (agent.service_running, node.healthy) {
                (true, true) => "running".into(),
                (true, false) => "running, UNHEALTHY".into(),
                (false, true) => "-".into(),
                (false, false) => "unhealthy".into(),
            },
            data_sync_cell(&report.sync, node.data, &mut notes),
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
    for report in cluster.nodes.iter().filter_map(ClusterNode::report) {
        node_notes(report, &mut notes);
    }
    for note in notes {
        out.push_str(&format!("! {note}\n"));
    }
    out
}

/// `coordination = "etcd"`: the epoch a node serves under, and what its
/// fencing did (never a silent change of role).
fn coordination_notes(report: &StatusReport, notes: &mut Vec<String>) {
    let name = &report.node.node;
    for group in &report.node.groups {
        if let Some(epoch) = group.epoch {
            notes.push(format!(
                "{name}: holds group {} under etcd epoch {epoch}",
                group.group.0
            ));
        }
    }
    let counters = &report.node.counters;
    if counters.self_fenced > 0 {
        notes.push(format!(
            "{name}: stood down {} time(s) because its etcd session ran out or the leader key moved (see its log: session-expired, leader-moved)",
            counters.self_fenced
        ));
    }
    if counters.stale_epochs > 0 {
        notes.push(format!(
            "{name}: ignored {} claim(s) made under an older etcd epoch",
            counters.stale_epochs
        ));
    }
}

/// What a node's report has to say beyond its row: unsigned images, a key
/// mismatch, quarantined data, config sync, rejected datagrams.
fn node_notes(report: &StatusReport, notes: &mut Vec<String>) {
    let name = &report.node.node;
    if report.agent.allow_unsigned {
        notes.push(format!(
            "{name}: accepts unsigned images (allow_unsigned = true)"
        ));
    }
    if let Some(peer) = &report.node.key_mismatch {
        notes.push(format!(
            "{name}: FAILED: cluster key mismatch with {peer} (its heartbeats fail the MAC while the sync channel hears it): give every node the same cluster key file"
        ));
    }
    if let Some(sync) = &report.sync.detail {
        let quarantined = &sync.quarantine;
        if quarantined.files > 0 {
            notes.push(format!(
                "{name}: {} file(s) in quarantine ({} batch(es)): acknowledged data a catch-up would have deleted; {} (`tandem sync quarantine list`)",
                quarantined.files,
                quarantined.batches,
                if quarantined.merge {
                    "being merged back into the active"
                } else {
                    "restore or drop them"
                }
            ));
        }
        config_sync_notes(name, &sync.config, notes);
    }
    coordination_notes(report, notes);
    let rejected = &report.node.counters.rejected;
    for (reason, hint) in [
        (
            RejectReason::BadMac,
            "peer unauthenticated: cluster key mismatch?",
        ),
        (
            RejectReason::ForeignCluster,
            "heartbeats from another cluster on this link: cluster name mismatch?",
        ),
        (
            RejectReason::UnknownPeer,
            "heartbeats from a node not in this config: a [[peer]] missing?",
        ),
        (
            RejectReason::UnsupportedVersion,
            "a peer speaks a protocol this node does not: upgrade it",
        ),
    ] {
        if let Some(n) = rejected.get(&reason).filter(|n| **n > 0) {
            notes.push(format!(
                "{name}: {n} datagrams rejected ({}): {hint}",
                word(&reason)
            ));
        }
    }
}

/// What config sync has to say about a node: a disconnection, changes
/// held back, edits refused. Nothing when all is quiet.
fn config_sync_notes(name: &str, config: &ConfigSyncStatus, notes: &mut Vec<String>) {
    if config.disconnected {
        notes.push(format!(
            "{name}: disconnected from cluster config (keeps its own config; changes are refused cluster-wide)"
        ));
    }
    for (file, why) in &config.held {
        notes.push(format!("{name}: config change to {file} held: {why}"));
    }
    if config.refused_local_edits > 0 {
        notes.push(format!(
            "{name}: {} local config edit(s) refused; last: {}",
            config.refused_local_edits,
            config.last_refused.as_deref().unwrap_or("-")
        ));
    }
}

/// The DATA column (issue 6): `source` on the replicating active, the
/// receiver's state on a standby (`in-sync`, `syncing`, `stale`,
/// `unverified`), `-` without `[sync]`. Each standby as the active sees it
/// (state, lag, pending files) goes to the notes.
fn data_sync_cell(sync: &SyncStatus, data: DataState, notes: &mut Vec<String>) -> String {
    let Some(sync) = &sync.detail else {
        return "-".into();
    };
    if let Some(replicator) = &sync.replicator {
        for peer in &replicator.peers {
            notes.push(format!(
                "sync {} → {}: {}, lag {}, {} pending{}",
                word(&sync.data_sync),
                peer.name,
                word(&peer.state),
                peer.lag_ms
                    .map_or_else(|| "-".to_string(), |ms| format!("{ms} ms")),
                peer.pending_paths,
                peer.last_error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
        }
        return "source".into();
    }
    let state = sync.receiver.state;
    if data == DataState::Unverified && state != StandbyState::InSync {
        // Started (or lost the service) and not yet compared with the
        // active's data: it cannot take the service back until it is.
        return "unverified".into();
    }
    if !sync.data_in_sync && state != StandbyState::Syncing {
        return "stale".into();
    }
    word(&state)
}

/// A value's name as the API spells it (`in-sync`, `primary`): the word
/// serde gives a unit variant.
pub fn word(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.to_string()
    }
}

/// "hb0 up, hb1 down" and the freshest heartbeat age.
fn link_summary(peer: &PeerStatus) -> (String, String) {
    let summary: Vec<String> = peer
        .links
        .iter()
        .map(|l| format!("{} {}", l.link, if l.up { "up" } else { "down" }))
        .collect();
    let freshest = peer.links.iter().filter_map(|l| l.last_heard_ms_ago).min();
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
    let local = api_client(target)?;
    let cluster = local.cluster().await?;
    let standbys: Vec<(String, ApiClient)> = cluster
        .nodes
        .iter()
        .filter_map(ClusterNode::report)
        .filter(|r| r.node.effective_role == EffectiveRole::Standby)
        .map(|r| (r.node.node.clone(), local.at(r.agent.api)))
        .collect();
    if standbys.is_empty() {
        eprintln!("tandem: reload-standby refused: no node is standby");
        return Ok(ExitCode::from(1));
    }
    let mut results = Vec::new();
    for (name, client) in &standbys {
        let booted: BootAnswer = match client
            .post("/v1/images/boot", &BootRequest::default())
            .await
        {
            Ok(booted) => booted,
            Err(tandem_agent::Error::ApiRefused { body, .. }) => {
                eprintln!("tandem: {name}: reload refused: {}", body.error);
                return Ok(ExitCode::from(1));
            }
            Err(other) => return Err(other.into()),
        };
        let version = booted.version.clone();
        if !json {
            println!("{name}: booting slot {} ({version})", word(&booted.booted));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ready = client.status().await.is_ok_and(|s| {
                s.node.effective_role == EffectiveRole::Standby && s.node.version == version
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
        results.push(StandbyReady {
            node: name.clone(),
            version,
            ready: true,
        });
    }
    if json {
        println!("{}", serde_json::to_string(&results)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// One line of `failover reload-standby --json`.
#[derive(serde::Serialize)]
struct StandbyReady {
    node: String,
    version: String,
    ready: bool,
}

/// `tandem listener suspend|resume`.
pub async fn listener(command: ListenerCommand, json: bool) -> anyhow::Result<ExitCode> {
    let (request, target, what) = match command {
        ListenerCommand::Suspend {
            drain_timeout,
            target,
        } => (
            ListenerRequest {
                action: ListenerAction::Suspend,
                drain_timeout_ms: Some(drain_timeout.as_millis() as u64),
                node: target.node.clone(),
            },
            target,
            "listener suspend",
        ),
        ListenerCommand::Resume { target } => (
            ListenerRequest {
                action: ListenerAction::Resume,
                drain_timeout_ms: None,
                node: target.node.clone(),
            },
            target,
            "listener resume",
        ),
    };
    let reply = api_client(&target)?.listener(&request).await?;
    report(what, &reply, json)
}

/// Sends an HA command; `force` is for a takeover with stale data.
async fn send(
    command: Command,
    target: &ApiTarget,
    force: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let what = command.to_string();
    let request = CommandRequest {
        command,
        node: target.node.clone(),
        force,
    };
    let reply = api_client(target)?.command(&request).await?;
    report(&what, &reply, json)
}

/// Prints a command's answer; a refusal says why and exits 1.
fn report(what: &str, reply: &CommandReply, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string(reply)?);
    }
    let node = &reply.node;
    if reply.outcome == CommandOutcome::Refused {
        eprintln!(
            "tandem: {what} refused on {node}: {}",
            reply.reason.as_deref().unwrap_or("-")
        );
        return Ok(ExitCode::from(1));
    }
    if let Some(warning) = &reply.warning {
        eprintln!("tandem: warning: {warning}");
    }
    if !json {
        println!("{what}: {} on {node}", reply.outcome);
        for event in &reply.events {
            println!("  {event}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
