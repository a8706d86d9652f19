//! The agent's side of `coordination = "etcd"` that is not the adapter's:
//! what etcd said, turned into core inputs on the agent's clock, and what
//! this node publishes there after each step (its member key, and while
//! it serves with replicated data, the `sync` key's standbys).

use std::time::Duration;

use tandem_core::{EffectiveRole, Input, StoreEvent};
use tokio::time::Instant;

use super::Agent;
use crate::etcd::{MemberState, StoreNews};

/// The `sync` key is written again at most this often when nothing
/// changed (a failed write is retried then).
const SYNC_REPUBLISH: Duration = Duration::from_secs(1);

impl Agent {
    /// Hands what etcd said to the core.
    pub(super) async fn store_news(&mut self, news: StoreNews) {
        let event = match news {
            StoreNews::Renewed {
                session,
                valid_until,
            } => StoreEvent::SessionRenewed {
                session,
                valid_until: self.clock.millis(valid_until),
            },
            StoreNews::Lost => StoreEvent::SessionLost,
            StoreNews::Sync { revision, members } => StoreEvent::Sync { revision, members },
            StoreNews::Leader {
                group,
                revision,
                holder,
            } => StoreEvent::Leader {
                group,
                revision,
                holder,
            },
        };
        self.step(Input::Store(event)).await;
    }

    /// After a step: this node's member key, and the `sync` key while it
    /// serves with replicated data.
    pub(super) fn publish_to_store(&mut self) {
        let now = self.clock.now();
        let role = self.node.effective_role(now);
        let data = serde_json::to_value(self.node.data_state()).ok();
        self.store.set_member(MemberState {
            role: role.to_string(),
            data: data
                .as_ref()
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string(),
        });
        let Some(key) = self
            .store
            .sync_key
            .clone()
            .filter(|_| role == EffectiveRole::Active && self.node.config().replicated_data)
        else {
            self.sync_published = None;
            return;
        };
        // Sampled before the in-sync set: a standby dropped in between
        // makes this publication stale, and it is skipped.
        let drops = key.drops();
        let Some(standbys) = self.replication.in_sync_standbys() else {
            return;
        };
        let due = match &self.sync_published {
            Some((last, at)) => *last != standbys || at.elapsed() >= SYNC_REPUBLISH,
            None => true,
        };
        if due {
            self.sync_published = Some((standbys.clone(), Instant::now()));
            tokio::spawn(async move { key.publish(standbys, drops).await });
        }
    }
}
