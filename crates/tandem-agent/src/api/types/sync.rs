//! The answers of the sync routes (`/v1/sync/...`, `/v1/config...`): the
//! sync report, resync progress, the quarantine and cluster config files,
//! as `tandem sync` and `tandem sync quarantine` read them.
//!
//! `GET /v1/sync/report` answers a [`tandem_sync::report::SyncReport`] and
//! `POST /v1/sync/commit` a [`tandem_sync::replicator::Durability`]; a
//! standby asked what only the active answers says 409 with an
//! [`super::ErrorBody`] naming the active (`active`, `active_api`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tandem_sync::Progress;
use tandem_sync::quarantine::QuarantineBatch;
use tandem_sync::replicator::PeerOutcome;

use super::CommitRequest;

/// What `POST /v1/sync/commit` accepts: [`CommitRequest`], or the bare list
/// of paths the first relays sent, which the agent still takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CommitBody {
    /// `{"paths": ["queue/ID", ...]}`
    Paths(CommitRequest),
    /// `["queue/ID", ...]`
    List(Vec<PathBuf>),
}

impl CommitBody {
    /// The files to replicate, whichever form they came in.
    pub fn into_paths(self) -> Vec<PathBuf> {
        match self {
            CommitBody::Paths(request) => request.paths,
            CommitBody::List(paths) => paths,
        }
    }
}

/// One line of the `POST /v1/sync/resync` answer, a stream of JSON lines:
/// progress lines while data moves, then one [`ResyncLine::Done`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ResyncLine {
    /// After each chunk sent.
    Progress(ResyncProgress),
    /// The last line.
    Done(ResyncDone),
}

/// `{"progress": ...}`: how far the resync of one standby has come.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResyncProgress {
    /// The standby being resynced and the files and bytes sent so far.
    pub progress: Progress,
}

/// The last line of a resync: what became of each standby and each config
/// file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResyncDone {
    /// One outcome per standby: what was sent, or why not.
    pub done: Vec<PeerOutcome>,
    /// The config files pushed first (held changes included).
    pub config: Vec<ConfigPushOutcome>,
}

impl ResyncDone {
    /// Some standby or config file was not resynced.
    pub fn failed(&self) -> bool {
        self.done.iter().any(|o| o.error.is_some())
            || self
                .config
                .iter()
                .any(|o| matches!(o.result, ConfigPushResult::Failed { .. }))
    }
}

/// What became of one cluster config file in a push.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigPushOutcome {
    /// The file's name (as `[sync] config` lists it, without the dir).
    pub file: String,
    /// Pushed, held or failed.
    #[serde(flatten)]
    pub result: ConfigPushResult,
}

/// How a config file's push went; the wire tells them apart by their
/// fields (`sha256`+`peers`, `held`, `error`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConfigPushResult {
    /// Sent to every connected standby.
    Pushed {
        /// The content's sha256, in hex.
        sha256: String,
        /// Each standby's outcome: installed, or why not.
        peers: Vec<PeerOutcome>,
    },
    /// A change not pushed because a node is disconnected from cluster
    /// config.
    Held {
        /// Why, and how to go on.
        held: String,
    },
    /// Not pushed at all (a name the sync channel refuses).
    Failed {
        /// Why.
        error: String,
    },
}

/// `POST /v1/config/push`: every cluster config file's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigPushReport {
    /// One outcome per file pushed or held.
    pub pushed: Vec<ConfigPushOutcome>,
}

/// `GET /v1/config`: the cluster config files as one node has them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterConfigReport {
    /// The node answering.
    pub node: String,
    /// Each file of its `[sync] config`.
    pub files: Vec<ClusterConfigFile>,
    /// What config sync has done on it.
    pub sync: super::ConfigSyncStatus,
}

/// One cluster config file on one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterConfigFile {
    /// Its name, the same on every node.
    pub name: String,
    /// Where this node keeps it.
    pub path: PathBuf,
    /// Its content's sha256; `None` when it does not exist here.
    pub sha256: Option<String>,
    /// The sha256 of the content the cluster agreed on; `None` before the
    /// first push.
    pub agreed_sha256: Option<String>,
    /// It differs from the agreed content (a held change, or an edit on a
    /// standby not yet undone).
    pub changed: bool,
}

/// 423 from `PUT /v1/config/{name}`: a node is disconnected from cluster
/// config, so changes are refused cluster-wide unless forced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigLocked {
    /// Why, and how to go on.
    pub error: String,
    /// The disconnected nodes.
    pub disconnected: Vec<String>,
}

/// `GET /v1/sync/quarantine`: one node's quarantine, file by file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuarantineList {
    /// The node answering.
    pub node: String,
    /// Its batches are merged into the active by themselves
    /// (`merge_quarantine`).
    pub merge: bool,
    /// Each batch, with its files.
    pub batches: Vec<QuarantineBatch>,
}

/// `POST /v1/sync/quarantine/{id}/restore`: what merging the batch into
/// the active came to. Merged and duplicate files leave the quarantine;
/// conflicts stay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredBatch {
    /// The batch.
    pub id: String,
    /// Files the active did not have, now in its data dir.
    pub merged: u64,
    /// Files the active already had with the same content.
    pub duplicates: u64,
    /// Files the active has with other content, kept here.
    pub conflicts: u64,
}

/// `DELETE /v1/sync/quarantine/{id}`: the batch given up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DroppedBatch {
    /// The batch's id.
    pub dropped: String,
}

/// What the active did with one quarantined file a peer sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MergeOutcome {
    /// It did not have the file: written and replicated.
    Merged,
    /// It had the file with the same content.
    Duplicate,
    /// It has the file with other content: the sender keeps its copy.
    Conflict,
}

/// 200 from `PUT /v1/sync/merge/{*path}`: merged or duplicate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MergeAnswer {
    /// What the active did.
    pub outcome: MergeOutcome,
}

/// 409 from `PUT /v1/sync/merge/{*path}`: the active has the file with
/// other content (`conflict`), or the node asked is not the active.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MergeRefusal {
    /// Why, in words.
    #[serde(default)]
    pub error: String,
    /// The refusal is a conflict: kept in the sender's quarantine, not
    /// retried.
    #[serde(default)]
    pub conflict: bool,
}

/// What config sync reads of a peer's `GET /v1/status`: only whether it
/// is disconnected from cluster config. Read alone, so a peer running
/// another release (during an upgrade, which is when a node disconnects)
/// is still understood.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerConfigLink {
    /// The agent's part of the status, reduced to its config link.
    pub agent: AgentConfigLink,
}

/// The config link within [`PeerConfigLink`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentConfigLink {
    /// Connected to cluster config, or not.
    pub config_link: super::ConfigLink,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The wire shapes relays and older peers send or read must not move.
    #[test]
    fn the_wire_shapes_stay_what_clients_read() {
        let list: CommitBody =
            serde_json::from_value(json!(["queue/A"])).expect("read a list body");
        let paths: CommitBody =
            serde_json::from_value(json!({"paths": ["queue/B"]})).expect("read a paths body");
        assert_eq!(list.into_paths(), vec![PathBuf::from("queue/A")]);
        assert_eq!(paths.into_paths(), vec![PathBuf::from("queue/B")]);

        let pushed = ConfigPushOutcome {
            file: "relay.toml".into(),
            result: ConfigPushResult::Pushed {
                sha256: "ab".into(),
                peers: Vec::new(),
            },
        };
        assert_eq!(
            serde_json::to_value(&pushed).expect("write a pushed outcome"),
            json!({"file": "relay.toml", "sha256": "ab", "peers": []})
        );
        let held: ConfigPushOutcome =
            serde_json::from_value(json!({"file": "a", "held": "beta is away"}))
                .expect("read a held outcome");
        assert!(matches!(held.result, ConfigPushResult::Held { .. }));
        let failed: ConfigPushOutcome =
            serde_json::from_value(json!({"file": "a", "error": "bad name"}))
                .expect("read a failed outcome");
        assert!(matches!(failed.result, ConfigPushResult::Failed { .. }));

        let progress = json!({"progress": {"peer": "beta", "files_done": 1, "files_total": 2,
            "bytes_done": 3, "bytes_total": 4}});
        let line: ResyncLine = serde_json::from_value(progress).expect("read a progress line");
        assert!(matches!(line, ResyncLine::Progress(p) if p.progress.bytes_total == 4));
        let done = json!({"done": [{"peer": "beta", "progress": null, "error": "gone"}],
            "config": [{"file": "a", "sha256": "ab", "peers": []}]});
        let line: ResyncLine = serde_json::from_value(done).expect("read a done line");
        assert!(matches!(line, ResyncLine::Done(d) if d.failed()));

        let conflict: MergeRefusal =
            serde_json::from_value(json!({"error": "other content", "conflict": true}))
                .expect("read a conflict refusal");
        assert!(conflict.conflict);
        let not_active: MergeRefusal =
            serde_json::from_value(json!({"error": "not active", "active": "beta"}))
                .expect("read a not-active refusal");
        assert!(!not_active.conflict);
        assert_eq!(
            serde_json::to_value(MergeAnswer {
                outcome: MergeOutcome::Duplicate
            })
            .expect("write a merge answer"),
            json!({"outcome": "duplicate"})
        );
    }
}
