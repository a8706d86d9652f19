//! The sync report (Huawei's "synchronization report", seed 003): for
//! each data set and each file, the size and hash on every node and
//! whether they agree; each standby's replication lag and last successful
//! sync. `tandem sync report` prints it (`--json`: this, serialized) and
//! exits 1 when `agree` is false.
//!
//! The comparison is a pure function of manifests, so it is tested without
//! a network and can compare any data set (data dir, config files).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::peer_status::{PeerState, PeerStatus};
use crate::store::{ManifestEntry, hex};

/// The whole report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReport {
    /// The node that made it (the active).
    pub node: String,
    /// When (Unix ms).
    pub generated_unix_ms: u64,
    /// Every data set agrees on every node.
    pub agree: bool,
    /// Every standby is in sync.
    pub all_in_sync: bool,
    /// One entry per data set.
    pub data_sets: Vec<DataSetReport>,
    /// Each standby as the active sees it: state, lag, last sync.
    pub peers: Vec<PeerStatus>,
}

/// One data set on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSetReport {
    /// Its name (`data`, `config`).
    pub name: String,
    /// Same files with the same content on every node that answered, and
    /// every node answered.
    pub agree: bool,
    /// Per node: totals and one digest over the whole manifest.
    pub nodes: BTreeMap<String, NodeSummary>,
    /// Per file, sorted by path.
    pub files: Vec<FileReport>,
}

/// A data set on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSummary {
    /// Number of files.
    pub files: u64,
    /// Total bytes.
    pub bytes: u64,
    /// SHA-256 over the sorted manifest: equal digests, equal data sets.
    pub digest: String,
    /// Why the node's manifest could not be had (then the rest is zero).
    pub error: Option<String>,
}

/// One file on every node that answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileReport {
    /// Relative path.
    pub path: String,
    /// Present with the same content on every node that answered.
    pub agree: bool,
    /// Per node: its size and hash, `None` when absent there.
    pub nodes: BTreeMap<String, Option<FileState>>,
}

/// A file's size and hash on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileState {
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

impl SyncReport {
    /// The files that differ, per data set: what to show first.
    pub fn differences(&self) -> impl Iterator<Item = (&str, &FileReport)> {
        self.data_sets.iter().flat_map(|set| {
            set.files
                .iter()
                .filter(|file| !file.agree)
                .map(move |file| (set.name.as_str(), file))
        })
    }
}

/// Compares one data set's manifests, one per node (`Err` = that node's
/// manifest could not be fetched, and why).
pub fn compare(
    name: &str,
    manifests: &BTreeMap<String, Result<Vec<ManifestEntry>, String>>,
) -> DataSetReport {
    let mut nodes = BTreeMap::new();
    let mut by_node: BTreeMap<&str, BTreeMap<&str, &ManifestEntry>> = BTreeMap::new();
    let mut paths = BTreeSet::new();
    for (node, manifest) in manifests {
        match manifest {
            Ok(entries) => {
                nodes.insert(node.clone(), summarize(entries));
                let files = entries.iter().map(|e| (e.path.as_str(), e)).collect();
                paths.extend(entries.iter().map(|e| e.path.as_str()));
                by_node.insert(node, files);
            }
            Err(error) => {
                nodes.insert(
                    node.clone(),
                    NodeSummary {
                        files: 0,
                        bytes: 0,
                        digest: String::new(),
                        error: Some(error.clone()),
                    },
                );
            }
        }
    }
    let files: Vec<FileReport> = paths
        .into_iter()
        .map(|path| {
            let states: BTreeMap<String, Option<FileState>> = by_node
                .iter()
                .map(|(node, files)| {
                    let state = files.get(path).map(|e| FileState {
                        size: e.size,
                        sha256: e.sha256.clone(),
                    });
                    (node.to_string(), state)
                })
                .collect();
            let first = states.values().next().cloned().flatten();
            let agree = first.is_some() && states.values().all(|s| *s == first);
            FileReport {
                path: path.to_string(),
                agree,
                nodes: states,
            }
        })
        .collect();
    let digests: BTreeSet<&str> = nodes.values().map(|n| n.digest.as_str()).collect();
    let agree = nodes.values().all(|n| n.error.is_none()) && digests.len() <= 1;
    DataSetReport {
        name: name.to_string(),
        agree,
        nodes,
        files,
    }
}

/// Puts the data sets and the peers' status together.
pub fn build(node: &str, data_sets: Vec<DataSetReport>, peers: Vec<PeerStatus>) -> SyncReport {
    SyncReport {
        node: node.to_string(),
        generated_unix_ms: crate::unix_ms(std::time::SystemTime::now()),
        agree: data_sets.iter().all(|set| set.agree),
        all_in_sync: peers.iter().all(|p| p.state == PeerState::InSync),
        data_sets,
        peers,
    }
}

fn summarize(entries: &[ManifestEntry]) -> NodeSummary {
    let mut hasher = Sha256::new();
    for entry in entries {
        hasher.update(entry.path.as_bytes());
        hasher.update(b"\0");
        hasher.update(entry.size.to_string().as_bytes());
        hasher.update(b"\0");
        hasher.update(entry.sha256.as_bytes());
        hasher.update(b"\n");
    }
    NodeSummary {
        files: entries.len() as u64,
        bytes: entries.iter().map(|e| e.size).sum(),
        digest: hex(&hasher.finalize()),
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, sha: &str) -> ManifestEntry {
        ManifestEntry {
            path: path.into(),
            size: 1,
            sha256: sha.into(),
        }
    }

    #[test]
    fn equal_manifests_agree_and_a_hand_made_difference_shows() {
        let mut manifests = BTreeMap::new();
        manifests.insert("a".to_string(), Ok(vec![entry("x", "1"), entry("y", "2")]));
        manifests.insert("b".to_string(), Ok(vec![entry("x", "1"), entry("y", "2")]));
        assert!(compare("data", &manifests).agree);

        manifests.insert("b".to_string(), Ok(vec![entry("x", "1"), entry("y", "3")]));
        let report = compare("data", &manifests);
        assert!(!report.agree);
        let differing: Vec<_> = report.files.iter().filter(|f| !f.agree).collect();
        assert_eq!(differing.len(), 1);
        assert_eq!(differing[0].path, "y");
    }

    #[test]
    fn a_missing_file_or_an_unreachable_node_disagrees() {
        let mut manifests = BTreeMap::new();
        manifests.insert("a".to_string(), Ok(vec![entry("x", "1")]));
        manifests.insert("b".to_string(), Ok(vec![]));
        let report = compare("data", &manifests);
        assert!(!report.agree);
        assert_eq!(report.files[0].nodes["b"], None);

        manifests.insert("b".to_string(), Err("not connected".into()));
        let report = compare("data", &manifests);
        assert!(!report.agree);
        assert_eq!(report.nodes["b"].error.as_deref(), Some("not connected"));
    }
}
