//! What travels over the control API, as types both ends share.
//!
//! The server serialises these and every client (the CLI, peers forwarding
//! a command, the upgrade coordinator, the relay's commit hook) reads them
//! back through [`super::ApiClient`], so a renamed field is a compile error
//! on both sides instead of a `null` read at run time. `docs/api.md` lists
//! them per route.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tandem_core::{Command, Status};
use tandem_sync::receiver::ReceiverStatus;
use tandem_sync::replicator::{DataSync, ReplicatorStatus, SyncMode};

mod images;
mod sync;

pub use images::*;
pub use sync::*;

/// Every non-2xx answer's body: what went wrong, in words.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what to do.
    #[serde(default)]
    pub error: String,
    /// On a refused commit: the node that is active, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<String>,
    /// On a refused commit: that node's API address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_api: Option<SocketAddr>,
}

/// `GET /v1/status`: one node's report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    /// The core's view: roles, peers, counters.
    pub node: Status,
    /// The agent's own facts: process, VIP, service.
    pub agent: AgentReport,
    /// Config and data sync.
    pub sync: SyncStatus,
}

impl StatusReport {
    /// The replicator, while this node is the active with `[sync]`.
    pub fn replicator(&self) -> Option<&ReplicatorStatus> {
        self.sync.detail.as_ref()?.replicator.as_ref()
    }
}

/// Whether the service's listener accepts connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListenerState {
    /// Accepting.
    Open,
    /// Suspended by `tandem listener suspend` or an upgrade step.
    Suspended,
}

/// Whether a node takes cluster config changes (ESA's clusterconfig): the
/// upgrade planner's own type, so the status and the plan cannot disagree.
pub use tandem_upgrade::ConfigLink;

/// The agent's part of `/v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentReport {
    /// The agent's process id.
    pub pid: u32,
    /// Its boot epoch (goes up at every start).
    pub epoch: u64,
    /// Since the agent started.
    pub uptime_ms: u64,
    /// Its API address.
    pub api: SocketAddr,
    /// Its config file.
    pub config: PathBuf,
    /// The VIP addresses it has bound.
    pub vip_bound: Vec<String>,
    /// The service runs.
    pub service_running: bool,
    /// The service's listener.
    pub listener: ListenerState,
    /// Accepts unsigned images.
    pub allow_unsigned: bool,
    /// Cluster config link.
    pub config_link: ConfigLink,
    /// The service's process id while it runs.
    pub service_pid: Option<u32>,
    /// Service starts since the agent started.
    pub service_starts: u64,
    /// Service exits nobody asked for.
    pub service_crashes: u64,
    /// Peer connections closed (crash detection).
    pub peer_connections_closed: u64,
}

/// The `sync` part of `/v1/status`: `{"enabled": false}` without `[sync]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncStatus {
    /// `[sync]` is configured.
    pub enabled: bool,
    /// The rest, with `[sync]`.
    #[serde(flatten)]
    pub detail: Option<SyncDetail>,
}

/// Config and data sync on a node with `[sync]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncDetail {
    /// `off`, `async` or `semi`.
    pub data_sync: DataSync,
    /// `degrade` or `strict`.
    pub sync_mode: SyncMode,
    /// What is replicated.
    pub data_dir: PathBuf,
    /// A stale standby may take over.
    pub allow_stale_takeover: bool,
    /// This node's data is as fresh as the active's.
    pub data_in_sync: bool,
    /// Acknowledged data a catch-up would have deleted.
    pub quarantine: QuarantineStatus,
    /// The receiver (every node has one).
    pub receiver: ReceiverStatus,
    /// The replicator, while this node is the active.
    pub replicator: Option<ReplicatorStatus>,
    /// Cluster config files.
    pub config: ConfigSyncStatus,
}

/// The quarantine of one node.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QuarantineStatus {
    /// Where it is.
    pub dir: PathBuf,
    /// Each batch, oldest first.
    pub list: Vec<QuarantineSummary>,
    /// How many batches.
    pub batches: usize,
    /// How many files in all.
    pub files: usize,
    /// Merged back into the active automatically (`merge_quarantine`).
    pub merge: bool,
    /// What merging has done since the agent started.
    pub counters: MergeCounters,
}

/// One quarantined batch, summarised.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuarantineSummary {
    /// Its id (the directory name).
    pub id: String,
    /// The peer whose catch-up would have deleted it.
    pub from: String,
    /// When it was set aside.
    pub at_unix_ms: u64,
    /// How many files.
    pub files: usize,
    /// How many bytes.
    pub bytes: u64,
}

/// What merging the quarantine back has done since the agent started.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeCounters {
    /// Files the active did not have, now in its data dir.
    pub merged: u64,
    /// Files the active already had with the same content.
    pub duplicates: u64,
    /// Files the active has with other content: kept here.
    pub conflicts: u64,
    /// Why the last merge attempt stopped, if it did.
    pub last_error: Option<String>,
}

/// Cluster config sync on one node.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConfigSyncStatus {
    /// The cluster config files.
    pub files: Vec<PathBuf>,
    /// How often the active pushes them even unchanged.
    pub interval_ms: u64,
    /// Disconnected from cluster config.
    pub disconnected: bool,
    /// Changes not pushed because a node is disconnected: file → why.
    pub held: BTreeMap<String, String>,
    /// Local edits a standby refused (and undid).
    pub refused_local_edits: u64,
    /// The last such refusal.
    pub last_refused: Option<String>,
    /// When the active last pushed (Unix ms).
    pub last_push_unix_ms: Option<u64>,
    /// Peers that did not take the last push, and why.
    pub last_push_errors: Vec<String>,
}

/// `GET /v1/cluster`: every node's report, the answering node's first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterReport {
    /// One entry per node.
    pub nodes: Vec<ClusterNode>,
}

/// A node in `/v1/cluster`: its report, or why it could not be asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ClusterNode {
    /// It answered.
    Reachable(Box<StatusReport>),
    /// It did not.
    Unreachable(UnreachableNode),
}

/// A peer whose API did not answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnreachableNode {
    /// `{"node": NAME}`, where a report has its status.
    pub node: NodeName,
    /// Why, in words.
    pub error: String,
}

/// Just a node's name, in the place a report has its status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeName {
    /// The name.
    pub node: String,
}

impl ClusterNode {
    /// The node's name.
    pub fn name(&self) -> &str {
        match self {
            ClusterNode::Reachable(report) => &report.node.node,
            ClusterNode::Unreachable(gone) => &gone.node.node,
        }
    }

    /// Its report, if it answered.
    pub fn report(&self) -> Option<&StatusReport> {
        match self {
            ClusterNode::Reachable(report) => Some(report),
            ClusterNode::Unreachable(_) => None,
        }
    }
}

/// The body of `POST /v1/command`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandRequest {
    /// The command, as the core spells it (e.g. `"failover-standby"`,
    /// `{"ha-preempt": false}`).
    pub command: Command,
    /// The node that should execute it; the answering node when absent.
    #[serde(default)]
    pub node: Option<String>,
    /// A takeover even when this node's data is not in sync.
    #[serde(default)]
    pub force: bool,
}

impl CommandRequest {
    /// `command` for the answering node, not forced.
    pub fn here(command: Command) -> CommandRequest {
        CommandRequest {
            command,
            node: None,
            force: false,
        }
    }
}

/// `suspend` or `resume`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListenerAction {
    /// Stop accepting new connections; let sessions in progress finish.
    Suspend,
    /// Accept again.
    Resume,
}

/// The body of `POST /v1/listener`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListenerRequest {
    /// What to do.
    pub action: ListenerAction,
    /// Drain timeout for a suspend, in milliseconds (default 30 s).
    #[serde(default)]
    pub drain_timeout_ms: Option<u64>,
    /// The node it is for; the answering node when absent.
    #[serde(default)]
    pub node: Option<String>,
}

/// What became of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommandOutcome {
    /// Executed.
    Done,
    /// Refused; the reply says why (HTTP 409).
    Refused,
    /// Sent over the heartbeat link to a node whose API did not answer.
    Forwarded,
}

impl std::fmt::Display for CommandOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CommandOutcome::Done => "done",
            CommandOutcome::Refused => "refused",
            CommandOutcome::Forwarded => "forwarded",
        })
    }
}

/// The answer to a command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandReply {
    /// The node that executed (or forwarded) it.
    pub node: String,
    /// What became of it.
    pub outcome: CommandOutcome,
    /// Why it was refused, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What happened as a result (role changes and the like), each as the
    /// log shows it.
    #[serde(default)]
    pub events: Vec<serde_json::Value>,
    /// What the operator accepted by forcing it (a stale takeover: how
    /// much may be lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// The body of `POST /v1/images/install`: an image by file name, or the
/// verified image of a release.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InstallRequest {
    /// The image's file name in the node's store.
    #[serde(default)]
    pub image: Option<String>,
    /// Or the release whose image to install.
    #[serde(default)]
    pub version: Option<String>,
}

/// The body of `POST /v1/images/boot`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BootRequest {
    /// The slot; the pending one when absent.
    #[serde(default)]
    pub slot: Option<tandem_image::slots::SlotName>,
}

/// The body of `POST /v1/backup/restore`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreRequest {
    /// The backup's id.
    pub backup: String,
    /// Restore another node's backup.
    #[serde(default)]
    pub force: bool,
}

/// The body of `POST /v1/config-link`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ConfigLinkRequest {
    /// Connect (`true`) or disconnect.
    pub connected: bool,
}

/// The body of `POST /v1/sync/commit`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitRequest {
    /// The files to replicate before the caller acknowledges them.
    pub paths: Vec<PathBuf>,
}
