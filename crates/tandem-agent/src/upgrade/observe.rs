//! The cluster as the upgrade's step machine sees it, read from every
//! node's own API (its status and its images), and the rule for which node
//! coordinates.
//!
//! Apart from the coordinator's loop because this is the one place that
//! turns API answers into `tandem-upgrade`'s `ClusterState`: a node that
//! does not answer, or answers something odd, is decided here.

use std::time::Duration;

use tandem_core::{ConfiguredRole, EffectiveRole, Mode};
use tandem_image::slots::{SlotName, SlotState};
use tandem_upgrade::cluster::{ImageFile, Listener, SlotStatus, SlotView};
use tandem_upgrade::{ClusterState, NodeState};
use tandem_version::Version;

use super::Upgrades;
use crate::Error;
use crate::api::{self, ImageList, ListenerState, StatusReport};

/// How long a node may take to say how it is: slower counts as not
/// answering this turn.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(3);

impl Upgrades {
    /// Whether this node should coordinate now. Every node answers from
    /// the same statuses, so at most one says yes once they agree:
    ///
    /// - `active-passive`: this node is active and no other node is. While
    ///   a switchover has two actives for a moment, nobody coordinates; the
    ///   one left active resumes from the journal.
    /// - `config-only` and `active-active`: several nodes are active by
    ///   design (every node serves; each holds a group), so "the only
    ///   active" would never hold and the upgrade would stall. The active
    ///   node that ranks first (highest priority, then name) coordinates;
    ///   when the plan moves every group away from it, it is no longer
    ///   active and the next one resumes.
    pub(super) async fn only_active(&self) -> bool {
        let mut actives = Vec::new();
        let mut mode = None;
        for (i, (name, addr)) in self.nodes.iter().enumerate() {
            let Ok(status) = self.observer(*addr).status().await else {
                continue;
            };
            let node = status.node;
            mode.get_or_insert(node.mode);
            if node.effective_role == EffectiveRole::Active {
                actives.push((i == 0, node.priority, name.clone()));
            }
        }
        match mode {
            Some(Mode::ConfigOnly | Mode::ActiveActive) => {
                let first = actives
                    .iter()
                    .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.2.cmp(&a.2)));
                first.is_some_and(|(me, _, _)| *me)
            }
            _ => actives.len() == 1 && actives[0].0,
        }
    }

    /// The whole cluster, from every node's own API.
    pub(super) async fn observe(&self) -> Result<ClusterState, Error> {
        self.observe_with_gaps().await.map(|(state, _)| state)
    }

    /// The cluster as observed now, with what was last known (`before`)
    /// of each node that did not answer: its release, images and slots
    /// (only that it is off is new). Without this a node whose agent is
    /// restarting would look like it runs whatever the first node runs,
    /// and a step could count it as done, or issue nothing for it and then
    /// wait for it forever.
    pub(super) async fn observe_since(&self, before: &ClusterState) -> Result<ClusterState, Error> {
        let (mut state, gaps) = self.observe_with_gaps().await?;
        for name in gaps {
            if let (Some(node), Some(known)) = (state.node_mut(&name), before.node(&name)) {
                node.running = known.running;
                node.images = known.images.clone();
                node.other_slot = known.other_slot;
                node.configured = known.configured;
                node.priority = known.priority;
            }
        }
        Ok(state)
    }

    /// The whole cluster, and the nodes that did not answer.
    async fn observe_with_gaps(&self) -> Result<(ClusterState, Vec<String>), Error> {
        let mut gaps = Vec::new();
        let mut nodes = Vec::new();
        let mut mode = Mode::ActivePassive;
        let mut groups = Vec::new();
        for (name, addr) in &self.nodes {
            let observer = self.observer(*addr);
            let status = observer.status().await;
            let images = observer.get::<ImageList>("/v1/images").await;
            match (status, images) {
                (Ok(status), Ok(images)) => {
                    let node = node_state(name, &status, &images)?;
                    mode = status.node.mode;
                    for group in &status.node.groups {
                        if !groups.contains(&group.group) {
                            groups.push(group.group);
                        }
                    }
                    nodes.push(node);
                }
                _ => {
                    gaps.push(name.clone());
                    nodes.push(unreachable_node(name, nodes.first()));
                }
            }
        }
        let state = ClusterState {
            mode,
            groups,
            nodes,
            sync_clean: None,
        };
        Ok((state, gaps))
    }

    /// Whether `node` holds `version` in a slot marked bad: a boot of it
    /// failed its health check and the node went back to its previous
    /// release.
    pub(super) async fn fell_back(&self, node: &str, version: &Version) -> bool {
        let Some(api) = self.node_api(node) else {
            return false;
        };
        let Ok(images) = api
            .with_timeout(OBSERVE_TIMEOUT)
            .get::<ImageList>("/v1/images")
            .await
        else {
            return false;
        };
        [SlotName::A, SlotName::B].into_iter().any(|s| {
            let slot = images.slots.slot(s);
            slot.state == SlotState::Bad && slot.version.is_some_and(|v| v == *version)
        })
    }

    /// The API at `addr`, for a quick look: a node slower than
    /// [`OBSERVE_TIMEOUT`] counts as not answering.
    fn observer(&self, addr: std::net::SocketAddr) -> api::ApiClient {
        self.client.at(addr).with_timeout(OBSERVE_TIMEOUT)
    }
}

/// A node that does not answer: `off`, on the release last seen cluster-wide.
fn unreachable_node(name: &str, like: Option<&NodeState>) -> NodeState {
    let running = like.map_or_else(
        || Version {
            major: 0,
            minor: 0,
            maint: 0,
            build: None,
            spelling: tandem_version::Spelling::Dotted { v_prefix: false },
        },
        |n| n.running,
    );
    NodeState {
        healthy: false,
        in_sync: false,
        ..NodeState::new(
            name,
            ConfiguredRole::Secondary,
            EffectiveRole::Off,
            0,
            running,
        )
    }
}

/// One node as the step machine sees it, from its status and its images.
fn node_state(name: &str, status: &StatusReport, images: &ImageList) -> Result<NodeState, Error> {
    let node = &status.node;
    let running: Version = node.version.parse().map_err(|e: tandem_version::Error| {
        Error::refused(format!(
            "{name} reports version {:?}, which is not a release ({e}): boot an image first",
            node.version
        ))
    })?;
    let other_slot = [SlotName::A, SlotName::B]
        .into_iter()
        .filter(|s| Some(*s) != images.slots.current)
        .find_map(|s| {
            let info = images.slots.slot(s);
            let state = match info.state {
                SlotState::Pending => SlotStatus::Pending,
                SlotState::Good => SlotStatus::Good,
                SlotState::Bad => SlotStatus::Bad,
                SlotState::Empty => return None,
            };
            Some(SlotView {
                version: info.version?,
                state,
            })
        });
    let files = images
        .images
        .iter()
        .filter_map(|i| {
            Some(ImageFile {
                version: i.version?,
                verified: i.verified,
            })
        })
        .collect();
    let groups = node
        .groups
        .iter()
        .filter(|g| g.role == EffectiveRole::Active)
        .map(|g| g.group)
        .collect();
    Ok(NodeState {
        name: name.to_string(),
        configured: node.configured_role,
        effective: node.effective_role,
        priority: node.priority,
        running,
        healthy: node.healthy,
        in_sync: true,
        preempt: node.preempt,
        groups,
        images: files,
        other_slot,
        listener: match status.agent.listener {
            ListenerState::Suspended => Listener::Suspended,
            ListenerState::Open => Listener::Accepting,
        },
        config_link: status.agent.config_link,
    })
}
