//! What a node knows of its own replicated data, and of peers it hears
//! only on the authenticated sync channel (issue 14: nothing acknowledged
//! is ever lost).
//!
//! **Data.** A node whose data is replicated starts [`DataState::Unverified`]:
//! it may hold less than the active (it was away while the active took
//! mail) or more (it acknowledged mail the active never saw). It must not
//! take the service from a reachable active (preemption, a planned
//! handover) before the active has compared manifests with it and caught
//! it up; with no active anywhere its data is the best there is, so it may
//! still claim an orphaned group. [`DataState::Behind`] (the agent says so:
//! a catch-up under way, or the stale marker of a node that stopped in one)
//! never serves, unless the operator forces it.
//!
//! **Channel liveness and key mismatch.** A heartbeat flood can make the
//! kernel drop real heartbeats while the TLS sync connection, which
//! authenticates both ends with the cluster CA, still carries keepalives:
//! [`super::Input::ChannelHeard`] keeps the peer alive then. A peer heard on that
//! channel whose datagrams all fail the MAC has another cluster key: the
//! node shows `failed` ("cluster key mismatch with NAME") instead of
//! serving beside it. Only a configured primary that already serves keeps
//! serving, so two mismatched nodes end with one active.

use super::{Ctx, Event, Node, Reason};
use crate::config::ConfiguredRole;
use crate::role::{DataState, EffectiveRole};
use crate::time::Millis;
use crate::wire::RejectReason;

/// How long a non-primary node waits at start, at most, when a peer is
/// heard only with a wrong MAC: long enough for the active's sync
/// connection to show whether it is a key mismatch.
const KEY_PROOF_WAIT_HOLDS: u32 = 10;

impl Node {
    /// Whether the data may serve: in sync, the reference (active), or
    /// unverified with no active peer to be behind of.
    pub(super) fn data_ok(&self) -> bool {
        if self.groups.iter().any(|g| g.active) {
            return true;
        }
        match self.data {
            DataState::InSync => true,
            DataState::Behind => false,
            DataState::Unverified => !self.peers.values().any(|p| {
                p.alive
                    && p.info
                        .as_ref()
                        .is_some_and(|h| h.role == EffectiveRole::Active)
            }),
        }
    }

    /// The data as this node knows it (for status and tests).
    pub fn data_state(&self) -> DataState {
        self.data
    }

    /// After an unplanned loss of the service: the data is no longer the
    /// reference and must be compared with the new active's.
    pub(super) fn data_unverified(&mut self) {
        if self.config.replicated_data && self.data == DataState::InSync {
            self.data = DataState::Unverified;
        }
    }

    /// A key mismatch keeps this node from serving, except a configured
    /// primary that already serves (one of two mismatched nodes must).
    pub(super) fn key_mismatch_blocks(&self) -> bool {
        self.key_mismatch.is_some()
            && !(self.config.role == ConfiguredRole::Primary
                && self.groups.iter().any(|g| g.active))
    }

    pub(super) fn on_rejected(
        &mut self,
        now: Millis,
        reason: RejectReason,
        claimed_sender: Option<String>,
        count: u64,
    ) {
        self.counters.reject_n(reason, count);
        if reason != RejectReason::BadMac {
            return;
        }
        let Some(p) = claimed_sender.and_then(|name| self.peers.get_mut(&name)) else {
            return;
        };
        p.bad_mac_at = Some(now);
        if p.info.is_none()
            && self.config.role != ConfiguredRole::Primary
            && now < self.startup_until
        {
            // A peer we cannot read yet: before claiming anything, give its
            // sync connection time to show whether it is our active.
            let longest = self.started_at.plus(self.hold * KEY_PROOF_WAIT_HOLDS);
            self.startup_until = self.startup_until.max(longest);
        }
    }

    pub(super) fn on_channel_heard(&mut self, now: Millis, peer: &str) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.channel_heard = Some(now);
        }
    }

    /// Re-evaluates the key mismatch at `cx.now`: a peer heard on the sync
    /// channel and with bad MACs within the hold time, and with no valid
    /// datagram on any link.
    pub(super) fn update_key_mismatch(&mut self, cx: &mut Ctx) {
        let now = cx.now;
        let recent = |t: Option<Millis>| t.is_some_and(|t| now.since(t) <= self.hold);
        let found = self
            .peers
            .iter()
            .find(|(_, p)| {
                recent(p.bad_mac_at)
                    && recent(p.channel_heard)
                    && !p.links.iter().any(|t| recent(*t))
            })
            .map(|(name, _)| name.clone());
        if found == self.key_mismatch {
            return;
        }
        if let Some(peer) = self.key_mismatch.take() {
            cx.emit(Event::KeyMismatch { peer, found: false });
        }
        if let Some(peer) = &found {
            cx.emit(Event::KeyMismatch {
                peer: peer.clone(),
                found: true,
            });
            cx.cause = Some(Reason::KeyMismatch { peer: peer.clone() });
        }
        self.key_mismatch = found;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Input;
    use crate::config::NodeConfig;
    use crate::wire::{Envelope, Heartbeat, Message};
    use crate::{GroupId, LinkId, PreemptState};

    fn heartbeat(role: EffectiveRole) -> Heartbeat {
        Heartbeat {
            priority: 100,
            configured_role: ConfiguredRole::Secondary,
            role,
            groups: vec![(GroupId(0), role)],
            healthy: true,
            preempt: PreemptState::Disabled,
            version: String::new(),
            fencing: Vec::new(),
        }
    }

    fn hear(node: &mut Node, at: u64, role: EffectiveRole) {
        node.step(
            Millis(at),
            Input::Received {
                link: LinkId(0),
                envelope: Envelope {
                    version: crate::wire::PROTOCOL_VERSION,
                    sender: "b".into(),
                    epoch: 1,
                    seq: at,
                    message: Message::Heartbeat(heartbeat(role)),
                },
            },
        );
    }

    fn primary(replicated: bool) -> Node {
        let mut config = NodeConfig::new("a", ConfiguredRole::Primary, 100, &["b"]);
        config.replicated_data = replicated;
        Node::new(config, None, Millis(0)).expect("create the node")
    }

    #[test]
    fn an_unverified_primary_is_syncing_beside_an_active_peer_and_cannot_preempt() {
        let mut a = primary(true);
        hear(&mut a, 1, EffectiveRole::Active);
        for t in (200..3000).step_by(200) {
            hear(&mut a, t, EffectiveRole::Active);
            a.step(Millis(t + 1), Input::Tick);
            assert_eq!(a.effective_role(Millis(t + 1)), EffectiveRole::Syncing);
            assert_eq!(
                a.status(Millis(t + 1)).preempt_state,
                PreemptState::Disabled
            );
        }
        a.step(Millis(3001), Input::DataSync { in_sync: true });
        assert_eq!(a.effective_role(Millis(3001)), EffectiveRole::Standby);
    }

    #[test]
    fn without_replication_a_returning_primary_is_a_standby_at_once() {
        let mut a = primary(false);
        hear(&mut a, 1, EffectiveRole::Active);
        assert_eq!(a.effective_role(Millis(1)), EffectiveRole::Standby);
    }

    #[test]
    fn an_unverified_node_with_no_active_anywhere_claims() {
        let mut a = primary(true);
        a.step(Millis(1000), Input::Tick);
        assert!(a.is_active(GroupId(0)));
    }
}
