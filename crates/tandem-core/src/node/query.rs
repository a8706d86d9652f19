//! Read-only views of a node: the public queries the agent makes between
//! steps (status, next deadline, role, persisted state) and the derived
//! states the rules are written in terms of (eligible, role per group,
//! preemption state, the heartbeat to send).
//!
//! Nothing here changes the node, so the agent may ask at any time without
//! affecting the next `step`. The derived states sit beside the public
//! queries so that `tandem status` and the rules cannot disagree on what
//! "eligible" or "held off" means.

use crate::config::{ConfiguredRole, GroupId, Mode, NodeConfig};
use crate::role::{EffectiveRole, PreemptState};
use crate::status::{GroupStatus, HoldoffStatus, LinkStatus, PeerStatus, Status};
use crate::time::{Millis, duration_ms};
use crate::wire::Heartbeat;
use std::time::Duration;

use super::{Node, PersistentState};

impl Node {
    /// This node's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Whether this node holds `group` (in config-only mode: whether it
    /// serves, whatever `group`).
    pub fn is_active(&self, group: GroupId) -> bool {
        self.groups
            .iter()
            .any(|g| g.active && (g.id == Some(group) || g.id.is_none()))
    }

    /// Groups this node holds.
    pub fn active_groups(&self) -> Vec<GroupId> {
        self.groups
            .iter()
            .filter(|g| g.active)
            .filter_map(|g| g.id)
            .collect()
    }

    /// This node's effective role as a whole at `now`.
    pub fn effective_role(&self, now: Millis) -> EffectiveRole {
        if let Some(r) = self.inactive_role() {
            return r;
        }
        if self.groups.iter().any(|g| g.active) {
            EffectiveRole::Active
        } else if self.holdoff_active(now) {
            EffectiveRole::HeldOff
        } else {
            EffectiveRole::Standby
        }
    }

    /// The state to persist now (the same as the last
    /// [`Output::Persist`](super::Output::Persist)).
    pub fn persistent_state(&self) -> PersistentState {
        PersistentState {
            preempt: self.preempt,
            ha_stopped: self.ha_stopped,
        }
    }

    /// When the agent should next call `step` with
    /// [`Input::Tick`](super::Input::Tick), seen from `now`: the next
    /// heartbeat, a peer's timeout, or the end of a holdoff, start-up wait,
    /// preemption delay, handover or grace period.
    /// Never later than the next heartbeat.
    pub fn next_deadline(&self, now: Millis) -> Millis {
        let one = Duration::from_millis(1);
        let mut candidates = vec![self.next_heartbeat];
        for p in self.peers.values().filter(|p| p.alive) {
            if let Some(last) = p.last_heard() {
                candidates.push(last.plus(self.hold).plus(one));
            }
        }
        candidates.extend(self.holdoff.as_ref().map(|h| h.until));
        candidates.extend(
            self.eligible_since
                .map(|s| s.plus(self.config.preempt_delay)),
        );
        candidates.extend(self.reclaim_until);
        candidates.extend(self.restore_until);
        // Self-fencing is due when the session's sure time runs out.
        if self.groups.iter().any(|g| g.active) {
            candidates.extend(self.store.valid_until);
        }
        if self.groups.iter().any(|g| !g.active) {
            candidates.push(self.startup_until);
        }
        for g in &self.groups {
            candidates.extend(g.handover.as_ref().map(|h| h.deadline));
            candidates.extend(g.grace_until);
            candidates.extend(g.yield_guard_until);
        }
        candidates
            .into_iter()
            .filter(|t| *t > now)
            .min()
            .unwrap_or(now.plus(self.config.interval))
    }

    /// A snapshot for `tandem status` at `now`.
    pub fn status(&self, now: Millis) -> Status {
        let groups = self
            .groups
            .iter()
            .enumerate()
            .filter_map(|(gi, g)| {
                let id = g.id?;
                let holder = if g.active {
                    Some(self.config.name.clone())
                } else {
                    self.peers
                        .iter()
                        .find(|(_, p)| p.active_in(Some(id)))
                        .map(|(n, _)| n.clone())
                };
                Some(GroupStatus {
                    group: id,
                    role: self.group_role(gi, now),
                    holder,
                    yielded_to: g.yielded_to.clone(),
                    epoch: self.own_epoch(gi, now),
                })
            })
            .collect();
        let peers = self
            .peers
            .iter()
            .map(|(name, p)| PeerStatus {
                name: name.clone(),
                alive: p.alive,
                configured_role: p.info.as_ref().map(|h| h.configured_role),
                effective_role: p.info.as_ref().filter(|_| p.alive).map(|h| h.role),
                priority: p.info.as_ref().map(|h| h.priority),
                healthy: p.info.as_ref().map(|h| h.healthy),
                preempt: p.info.as_ref().map(|h| h.preempt),
                version: p.info.as_ref().map(|h| h.version.clone()),
                protocol_version: p.protocol,
                groups: p
                    .info
                    .as_ref()
                    .map(|h| h.groups.clone())
                    .unwrap_or_default(),
                remote_service_ok: p.remote_ok,
                links: self
                    .config
                    .links
                    .iter()
                    .zip(&p.links)
                    .map(|(name, heard)| LinkStatus {
                        link: name.clone(),
                        last_heard_ms_ago: heard.map(|t| duration_ms(now.since(t))),
                        up: p.alive && heard.is_some_and(|t| now.since(t) <= self.hold),
                    })
                    .collect(),
            })
            .collect();
        Status {
            node: self.config.name.clone(),
            configured_role: self.config.role,
            effective_role: self.effective_role(now),
            priority: self.config.priority,
            mode: self.config.mode,
            healthy: self.local_healthy,
            ha_stopped: self.ha_stopped,
            preempt: self.preempt,
            preempt_state: self.preempt_state(now),
            version: self.config.version.clone(),
            groups,
            data: self.data,
            key_mismatch: self.key_mismatch.clone(),
            holdoff: self
                .holdoff
                .as_ref()
                .filter(|h| h.until > now)
                .map(|h| HoldoffStatus {
                    from: h.from.clone(),
                    remaining_ms: duration_ms(now.until(h.until)),
                }),
            peers,
            counters: self.counters.clone(),
        }
    }

    pub(super) fn self_eligible(&self) -> bool {
        let role_serves = match self.config.mode {
            Mode::ConfigOnly => self.config.role != ConfiguredRole::Off,
            _ => self.config.role.serves_groups(),
        };
        !self.shut_down
            && !self.ha_stopped
            && self.local_healthy
            && role_serves
            && self.data_ok()
            && !self.key_mismatch_blocks()
    }

    /// The role when the node cannot serve at all, if so.
    fn inactive_role(&self) -> Option<EffectiveRole> {
        if self.shut_down || self.ha_stopped || self.config.role == ConfiguredRole::Off {
            Some(EffectiveRole::Off)
        } else if !self.local_healthy || self.key_mismatch_blocks() {
            Some(EffectiveRole::Failed)
        } else if !self.data_ok() {
            Some(EffectiveRole::Syncing)
        } else {
            None
        }
    }

    pub(super) fn group_role(&self, gi: usize, now: Millis) -> EffectiveRole {
        if let Some(r) = self.inactive_role() {
            r
        } else if self.groups[gi].active {
            EffectiveRole::Active
        } else if self.holdoff_active(now) {
            EffectiveRole::HeldOff
        } else {
            EffectiveRole::Standby
        }
    }

    pub(super) fn holdoff_active(&self, now: Millis) -> bool {
        self.holdoff.as_ref().is_some_and(|h| h.until > now)
    }

    fn preempt_state(&self, now: Millis) -> PreemptState {
        let yielded = self.groups.iter().any(|g| g.yielded_to.is_some());
        let Some(since) = self.eligible_since else {
            return PreemptState::Disabled;
        };
        if !self.self_eligible() || yielded {
            PreemptState::Disabled
        } else if self.reclaim_until.is_some_and(|t| t > now) {
            PreemptState::Ready
        } else if !self.preempt || self.demoted {
            PreemptState::Disabled
        } else if now < since.plus(self.config.preempt_delay) {
            PreemptState::Delaying
        } else {
            PreemptState::Ready
        }
    }

    pub(super) fn in_startup(&self, now: Millis) -> bool {
        now < self.startup_until && self.peers.values().any(|p| p.info.is_none())
    }

    pub(super) fn heartbeat(&self, now: Millis) -> Heartbeat {
        Heartbeat {
            priority: self.config.priority,
            configured_role: self.config.role,
            role: self.effective_role(now),
            groups: self
                .groups
                .iter()
                .enumerate()
                .filter_map(|(gi, g)| g.id.map(|id| (id, self.group_role(gi, now))))
                .collect(),
            healthy: self.local_healthy,
            preempt: self.preempt_state(now),
            version: self.config.version.clone(),
            fencing: (0..self.groups.len())
                .filter_map(|gi| Some((self.groups[gi].id?, self.own_epoch(gi, now)?)))
                .collect(),
        }
    }

    pub(super) fn group_index(&self, id: GroupId) -> Option<usize> {
        self.groups.iter().position(|g| g.id == Some(id))
    }
}
