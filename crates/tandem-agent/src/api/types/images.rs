//! The answers of the image and slot routes (`/v1/images...`), the
//! upgrade routes (`/v1/upgrade...`), backups and the config link: what
//! `tandem image`, `tandem upgrade` and `tandem backup` read, and what the
//! upgrade coordinator reads from its peers.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tandem_image::slots::{SlotName, SlotTable};
use tandem_upgrade::{RolloutPolicy, UpgradePlan, UpgradeRun};
use tandem_version::Version;

use super::ConfigLink;

/// `GET /v1/images`: the images a node stores and its slot table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageList {
    /// Every stored image, by file name.
    pub images: Vec<ImageEntry>,
    /// The A/B slots: what each holds, the current one, a boot in flight.
    pub slots: SlotTable,
    /// The node accepts unsigned images.
    pub allow_unsigned: bool,
}

/// One stored image and what this node's trust policy says of it. The
/// details are there only when it verified; `error` only when it did not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageEntry {
    /// Its file name in the node's store.
    pub image: String,
    /// It passed the signature and archive checks.
    pub verified: bool,
    /// The release it carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Version>,
    /// The service it is a release of (the manifest's `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The key id that signed it; none when unsigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// The image file's size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The slot it is installed in, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<SlotName>,
    /// The image file's sha256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Why it did not verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `PUT /v1/images/NAME`: the file stored, or (a chunk that is not the
/// last of a chunked upload) how much has arrived.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UploadAnswer {
    /// The whole file arrived, matched its sha256 and is stored.
    Stored(StoredImage),
    /// A chunk was appended; more are to come.
    Received(ChunkReceived),
}

/// A file stored by an upload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredImage {
    /// Where the node keeps it.
    pub stored: PathBuf,
    /// Its sha256, as the node computed it.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

/// One chunk of a chunked upload, appended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ChunkReceived {
    /// The bytes of the upload that have arrived so far.
    pub have: u64,
}

/// `GET /v1/images/NAME/upload`: how much of a chunked upload arrived, so
/// a cut transfer resumes there.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartialUpload {
    /// The file being uploaded.
    pub name: String,
    /// The bytes that arrived (0: none, start over).
    pub have: u64,
}

/// `POST /v1/images/install`: the image unpacked into the inactive slot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstallAnswer {
    /// The image's file name.
    pub installed: String,
    /// The slot it went into (now pending).
    pub slot: SlotName,
    /// The release it carries.
    pub version: Version,
    /// The key id that signed it; none when unsigned.
    pub signer: Option<String>,
}

/// `POST /v1/images/boot`: the slot switched to, and how its health is
/// being decided.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootAnswer {
    /// The slot booted.
    pub booted: SlotName,
    /// What decides whether the boot is kept.
    pub health: BootHealth,
    /// The release the node reports now.
    pub version: String,
}

/// How a boot's health is decided: the three ways a node can boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BootHealth {
    /// The image carries its own agent: this agent hands over to it (same
    /// pid), and the new agent finishes the boot.
    #[serde(rename = "the agent restarts from the slot")]
    AgentRestarts,
    /// The service restarted from the slot; its health check runs now.
    #[serde(rename = "checking")]
    Checking,
    /// A standby is back as a healthy standby on the slot (Standby
    /// Ready); its service is checked the first time it serves.
    #[serde(rename = "standby ready; the service is checked when this node next serves")]
    StandbyReady,
}

impl std::fmt::Display for BootHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BootHealth::AgentRestarts => "the agent restarts from the slot",
            BootHealth::Checking => "checking",
            BootHealth::StandbyReady => {
                "standby ready; the service is checked when this node next serves"
            }
        })
    }
}

/// `POST /v1/images/rollback`: the slot the node runs from again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackAnswer {
    /// The slot now current.
    pub running: SlotName,
    /// The release the node reports now.
    pub version: String,
}

/// The body of `POST /v1/upgrade` and `POST /v1/upgrade/plan`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpgradeRequest {
    /// The target release.
    pub to: String,
    /// The release catalog, as TOML text (empty for a rollback, which
    /// needs none).
    pub catalog: String,
    /// Where the catalog came from, for error messages.
    #[serde(default)]
    pub catalog_origin: Option<String>,
    /// The strategy; the mode's default when absent.
    #[serde(default)]
    pub strategy: Option<String>,
    /// Nodes upgraded at once (rolling).
    #[serde(default)]
    pub batch: Option<usize>,
    /// Roll back to this release instead of upgrading.
    #[serde(default)]
    pub rollback: bool,
}

/// The body `tandem upgrade plan|run` sends to `POST /v1/upgrade/plan`
/// and `POST /v1/upgrade`: an [`UpgradeRequest`] and, for a rollout in
/// waves, its knobs. A caller that sends a bare [`UpgradeRequest`] (older
/// CLIs, the demo) is read as one without knobs: the upgrade runs as it
/// always did, one plan for the whole cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutUpgradeRequest {
    /// What to upgrade to, how.
    #[serde(flatten)]
    pub upgrade: UpgradeRequest,
    /// Canaries, batches, the failure budget and the revert
    /// (`--canary`, `--batch N|P%`, `--max-failed`, ...); `None`: no
    /// rollout in waves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutPolicy>,
}

impl From<UpgradeRequest> for RolloutUpgradeRequest {
    fn from(upgrade: UpgradeRequest) -> Self {
        RolloutUpgradeRequest {
            upgrade,
            rollout: None,
        }
    }
}

/// `POST /v1/upgrade/plan` and `POST /v1/upgrade`: the plan (to follow,
/// or now being followed), as text and as data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanAnswer {
    /// The plan as `tandem upgrade plan` prints it.
    pub text: String,
    /// The plan itself.
    pub plan: UpgradePlan,
}

/// `GET /v1/upgrade`: this node's copy of the upgrade journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpgradeStatus {
    /// This node coordinates the upgrade now.
    pub coordinating: bool,
    /// The last (or running) upgrade; none if no upgrade has run.
    pub run: Option<UpgradeRun>,
}

/// `POST /v1/upgrade/abort`: the abort was taken.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AbortAnswer {
    /// What happens now, in words.
    pub abort: String,
}

/// `POST /v1/upgrade/resume`: the rollout goes on after its canaries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResumeAnswer {
    /// What happens now, in words.
    pub resume: String,
}

/// `PUT /v1/upgrade/journal`: a peer's copy of the journal was received.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ReplicaAnswer {
    /// Always true: a copy behind this node's own is received and dropped,
    /// which is not an error.
    pub stored: bool,
}

/// `POST /v1/backup`: the backup made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupAnswer {
    /// Its id (milliseconds since the epoch, so ids sort by age).
    pub backup: String,
    /// The folder that holds it.
    pub dir: PathBuf,
    /// The files it holds.
    pub files: Vec<String>,
    /// The node it was made on (its config's `[node] name`).
    pub node: Option<String>,
}

/// `GET /v1/backups`: this node's backups, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupList {
    /// One entry per backup.
    pub backups: Vec<BackupSummary>,
}

/// One backup in a [`BackupList`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupSummary {
    /// Its id.
    pub backup: String,
    /// The node it was made on, if its config says.
    pub node: Option<String>,
    /// The files it holds.
    pub files: Vec<String>,
}

/// `POST /v1/backup/restore`: the backup restored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreAnswer {
    /// The id of the backup restored.
    pub restored: String,
    /// The id of the backup of what was there before (to undo it).
    pub previous_state_saved_as: String,
    /// What to do for the restore to take effect.
    pub note: String,
}

/// `POST /v1/config-link`: whether the node takes cluster config now.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ConfigLinkAnswer {
    /// The link as it is after the call.
    pub config_link: ConfigLink,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn read<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
        serde_json::from_value(value).expect("read the wire value")
    }

    /// The shapes the CLI, the upgrade coordinator and scripts read must
    /// stay what the agent sent before these types existed.
    #[test]
    fn the_wire_shapes_stay_what_clients_read() {
        let boot = BootAnswer {
            booted: SlotName::B,
            health: BootHealth::StandbyReady,
            version: "6.2.5".into(),
        };
        assert_eq!(
            serde_json::to_value(&boot).expect("write the boot answer"),
            json!({"booted": "b", "version": "6.2.5",
                "health": "standby ready; the service is checked when this node next serves"})
        );
        for health in [
            BootHealth::AgentRestarts,
            BootHealth::Checking,
            BootHealth::StandbyReady,
        ] {
            let wire = serde_json::to_value(health).expect("write the boot health");
            assert_eq!(wire, json!(health.to_string()));
        }

        let stored: UploadAnswer = read(json!({"stored": "/s/images/r.tandem",
            "sha256": "ab", "size": 3}));
        assert!(matches!(stored, UploadAnswer::Stored(s) if s.size == 3));
        let chunk: UploadAnswer = read(json!({"have": 4194304}));
        assert!(matches!(chunk, UploadAnswer::Received(c) if c.have == 4 << 20));

        let listing: ImageList = read(json!({
            "images": [
                {"image": "r-6.2.0.tandem", "version": "6.2.0", "name": "relay",
                 "signer": null, "verified": true, "size": 10, "slot": "a", "sha256": "ab"},
                {"image": "broken.tandem", "verified": false, "error": "bad signature"},
            ],
            "slots": {"current": "a", "boot": null,
                "a": {"state": "good", "version": "6.2.0", "sha256": "ab", "signer": null},
                "b": {"state": "empty", "version": null, "sha256": null, "signer": null}},
            "allow_unsigned": true,
        }));
        assert_eq!(listing.images[0].slot, Some(SlotName::A));
        assert_eq!(listing.images[1].error.as_deref(), Some("bad signature"));
        assert_eq!(listing.slots.current, Some(SlotName::A));
        let unverified =
            serde_json::to_value(&listing.images[1]).expect("write the unverified image");
        assert_eq!(
            unverified,
            json!({"image": "broken.tandem", "verified": false, "error": "bad signature"})
        );

        let status: UpgradeStatus = read(json!({"coordinating": false, "run": null}));
        assert!(status.run.is_none());
        // A bare upgrade request (the demo, older CLIs) still reads, as
        // one without a rollout in waves.
        let bare: RolloutUpgradeRequest = read(json!({"to": "6.2.5", "catalog": "",
            "strategy": "rolling", "batch": 2}));
        assert!(bare.rollout.is_none());
        assert_eq!(bare.upgrade.batch, Some(2));
        let knobs: RolloutUpgradeRequest = read(json!({"to": "6.2.5", "catalog": "",
            "rollout": {"batch": "10%", "canary": 1, "health_deadline": {"secs": 60, "nanos": 0},
                "max_failed": 0, "auto_revert": true, "auto_promote": null}}));
        assert_eq!(knobs.rollout.map(|r| r.canary), Some(1));
        let link = ConfigLinkAnswer {
            config_link: ConfigLink::Disconnected,
        };
        assert_eq!(
            serde_json::to_value(link).expect("write the config link answer"),
            json!({"config_link": "disconnected"})
        );
    }
}
