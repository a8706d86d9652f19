//! The upgrade journal: this node's copy on disk and the copies on its
//! peers.
//!
//! The journal is what lets an upgrade survive the failovers it causes
//! (and a kill -9 of its coordinator), so the rules for which copy wins
//! live in one place: a copy further on always wins, wherever it lands and
//! whoever sent it last, so a stale push never rewinds a run.

use std::time::Duration;

use tandem_upgrade::UpgradeRun;

use super::Upgrades;
use crate::Error;
use crate::api::{ReplicaAnswer, UpgradeStatus};

/// How long a peer may take to read or take a copy of the journal: one
/// that is slower is caught up by the next push or the next pull.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// How long reading a peer's copy may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(3);

impl Upgrades {
    /// A peer's copy of the journal arrives. Around a failover two nodes
    /// may coordinate for a moment (the old one has not yet seen that it
    /// lost the role); the copy that is further on wins, whoever sent it
    /// last, so a stale push never rewinds the journal. A coordinator
    /// takes only a copy strictly ahead of its own, and then stops (see
    /// `coordinate`).
    pub async fn store_replica(&self, run: UpgradeRun) -> Result<(), Error> {
        let mut journal = self.journal.lock().await;
        let take = match journal.as_ref() {
            None => true,
            Some(mine) if self.coordinating() => mine.superseded_by(&run),
            Some(mine) => !run.superseded_by(mine),
        };
        if take {
            self.persist(&run)?;
            *journal = Some(run);
        }
        Ok(())
    }

    /// Pulls every peer's copy of the journal and keeps one strictly
    /// further on than this node's. The coordinator pushes each copy once,
    /// best effort: a node whose agent was down at that moment (killed,
    /// restarting) missed it, and the last push of a run (done, stopped)
    /// is never followed by another. Without this the node would report
    /// the run as unfinished for ever, and resume it from a stale step if
    /// it became the active one. Only a node holding an unfinished copy
    /// asks, so an idle cluster makes no calls.
    pub(super) async fn catch_up(&self) {
        for (name, addr) in self.nodes.iter().skip(1) {
            let peer = self.client.at(*addr).with_timeout(PULL_TIMEOUT);
            let theirs = match peer.get::<UpgradeStatus>("/v1/upgrade").await {
                Ok(UpgradeStatus { run: Some(run), .. }) => run,
                Ok(UpgradeStatus { run: None, .. }) => continue,
                Err(e) => {
                    tracing::debug!(peer = %name, error = %e, "cannot read the peer's journal");
                    continue;
                }
            };
            let mut journal = self.journal.lock().await;
            // Checked under the lock: a coordinator started meanwhile
            // takes copies only through `store_replica`'s rule.
            if self.coordinating_or_ahead(journal.as_ref(), &theirs) {
                continue;
            }
            if let Err(e) = self.persist(&theirs) {
                tracing::error!(error = %e, "cannot write the upgrade journal");
                continue;
            }
            tracing::info!(peer = %name, status = ?theirs.status, "took the peer's newer copy of the upgrade journal");
            *journal = Some(theirs);
        }
    }

    /// Whether a peer's copy must be left alone: this node coordinates,
    /// or its own copy is not strictly behind the peer's.
    fn coordinating_or_ahead(&self, mine: Option<&UpgradeRun>, theirs: &UpgradeRun) -> bool {
        self.coordinating() || mine.is_some_and(|m| !m.superseded_by(theirs))
    }

    /// Writes the journal here and pushes it to every peer (best effort:
    /// a peer that misses one gets the next). `false`, writing nothing,
    /// when the copy here is already further on (another coordinator's).
    pub(super) async fn record(&self, run: &UpgradeRun) -> bool {
        {
            let mut journal = self.journal.lock().await;
            if journal.as_ref().is_some_and(|j| run.superseded_by(j)) {
                return false;
            }
            if let Err(e) = self.persist(run) {
                tracing::error!(error = %e, "cannot write the upgrade journal");
            }
            *journal = Some(run.clone());
        }
        for (name, addr) in self.nodes.iter().skip(1) {
            let peer = self.client.at(*addr).with_timeout(PEER_TIMEOUT);
            let sent: Result<ReplicaAnswer, _> = peer.put("/v1/upgrade/journal", run).await;
            if let Err(e) = sent {
                tracing::debug!(peer = %name, error = %e, "journal not replicated");
            }
        }
        true
    }

    /// Replaces `state_dir/upgrade.json` atomically and durably: a crash
    /// leaves the old copy or the new one, never half of one.
    fn persist(&self, run: &UpgradeRun) -> Result<(), Error> {
        let path = self.state_dir.join("upgrade.json");
        let tmp = self.state_dir.join("upgrade.json.tmp");
        let bytes = serde_json::to_vec_pretty(run).map_err(|e| Error::Io {
            path: path.clone(),
            source: e.into(),
        })?;
        let write = || -> std::io::Result<()> {
            let file = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut &file, &bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.state_dir)?.sync_all()
        };
        write().map_err(Error::io(path))
    }
}
