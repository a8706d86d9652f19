//! What a node keeps about each peer, and the peer-level facts the rules
//! ask of it: when it was last heard, whether it may take a group, whether
//! it holds one.
//!
//! This is the node's only view of the other nodes. Keeping it in one type
//! with the few questions asked of it means the rules never read raw
//! heartbeats: "eligible" and "active in a group" mean the same thing in an
//! election, a command and a status report.

use crate::config::GroupId;
use crate::role::EffectiveRole;
use crate::time::Millis;
use crate::wire::Heartbeat;
use std::collections::VecDeque;

use super::LossCause;

/// What this node knows about one peer.
#[derive(Debug, Clone)]
pub(super) struct PeerState {
    /// Last time each link delivered anything from this peer.
    pub(super) links: Vec<Option<Millis>>,
    /// The last heartbeat (kept after loss, for status; logic only reads it
    /// while `alive`).
    pub(super) info: Option<Heartbeat>,
    /// The peer's boot epoch, from its last message.
    pub(super) epoch: Option<u64>,
    /// Protocol version of its last message.
    pub(super) protocol: Option<u8>,
    /// Reachable: heard within the hold time and not departed since.
    pub(super) alive: bool,
    /// Set when lost by goodbye or closed connection; stale datagrams of the
    /// same epoch must not bring it back.
    pub(super) departed: Option<Departure>,
    /// The remote monitor's last verdict on its service.
    pub(super) remote_ok: bool,
    /// (epoch, id) of the forwarded commands it sent us lately.
    pub(super) commands_seen: VecDeque<(u64, u32)>,
    /// Last message or keepalive on the authenticated sync channel.
    pub(super) channel_heard: Option<Millis>,
    /// Last datagram naming this peer whose MAC did not match.
    pub(super) bad_mac_at: Option<Millis>,
}

impl PeerState {
    /// A configured peer not heard yet, with `links` link slots.
    pub(super) fn new(links: usize) -> Self {
        PeerState {
            links: vec![None; links],
            info: None,
            epoch: None,
            protocol: None,
            alive: false,
            departed: None,
            remote_ok: true,
            commands_seen: VecDeque::new(),
            channel_heard: None,
            bad_mac_at: None,
        }
    }

    pub(super) fn last_heard(&self) -> Option<Millis> {
        self.links
            .iter()
            .flatten()
            .copied()
            .chain(self.channel_heard)
            .max()
    }
    pub(super) fn eligible(&self) -> bool {
        self.alive
            && self.remote_ok
            && self.info.as_ref().is_some_and(|h| {
                h.healthy
                    && h.configured_role.serves_groups()
                    && !matches!(
                        h.role,
                        EffectiveRole::Off | EffectiveRole::Failed | EffectiveRole::Syncing
                    )
            })
    }
    pub(super) fn active_in(&self, group: Option<GroupId>) -> bool {
        match (group, &self.info) {
            (Some(g), Some(h)) => self.alive && h.group_role(g) == Some(EffectiveRole::Active),
            _ => false,
        }
    }
}

/// How and when a peer left, so that its late datagrams do not revive it.
#[derive(Debug, Clone)]
pub(super) struct Departure {
    pub(super) at: Millis,
    pub(super) epoch: Option<u64>,
    pub(super) cause: LossCause,
}

/// A holdoff a peer asked of this node: no takeover from it until `until`.
#[derive(Debug, Clone)]
pub(super) struct ReceivedHoldoff {
    pub(super) from: String,
    pub(super) epoch: Option<u64>,
    pub(super) until: Millis,
}
