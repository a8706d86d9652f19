//! The election rules. After every input, `reconcile` expires what timed
//! out (peers, holdoffs, restore windows), then `decide` settles each
//! failover group in turn: keep it, hand it over, yield it in a split brain,
//! or claim it. Also here: what the node keeps per group (`GroupState`) and
//! the rank by which nodes are compared.
//!
//! Every claim and release goes through `set_active`, so the VIP outputs,
//! the role events and the bookkeeping of handovers, yields and grace
//! periods stay in step whatever caused the change.

use crate::config::{ConfiguredRole, GroupId, Mode};
use crate::role::{EffectiveRole, HandoverCause, PreemptState};
use crate::time::Millis;
use crate::wire::Message;
use std::collections::BTreeSet;

use super::peer::PeerState;
use super::store;
use super::{Ctx, Destination, Event, LossCause, Node, Output, PREEMPT_DRAIN_WAIT, Reason};

/// Rank of a node for one group; the greatest wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Rank<'a> {
    pub(super) preferred: bool,
    pub(super) primary: bool,
    pub(super) priority: u8,
    pub(super) name: &'a str,
}

/// A handover this node asked for and waits to see completed.
#[derive(Debug, Clone)]
pub(super) struct PendingHandover {
    pub(super) to: String,
    pub(super) cause: HandoverCause,
    pub(super) deadline: Millis,
}

/// This node's state in one failover group (or, in config-only mode, the
/// one pseudo-group with `id: None` that stands for "serving").
#[derive(Debug, Clone)]
pub(super) struct GroupState {
    pub(super) id: Option<GroupId>,
    pub(super) preferred: Option<String>,
    /// Holds the group (VIP claimed).
    pub(super) active: bool,
    /// The role last reported in an event.
    pub(super) reported: EffectiveRole,
    /// Why `active` last changed, for the next event.
    pub(super) change_reason: Option<Reason>,
    /// Gave the group to this peer (operator or handover): do not advertise
    /// preemption while that peer is eligible.
    pub(super) yielded_to: Option<String>,
    /// Until then, do not claim the group even if no active is seen: the
    /// peer we yielded to is already active (make-before-break), but its
    /// heartbeat saying so may still be on the way. After that, a yield no
    /// longer blocks claiming an orphaned group (else a yielded node and a
    /// restarted peer could each wait for the other).
    pub(super) yield_guard_until: Option<Millis>,
    /// Claimed on request: until then the nodes in `grace_from` (the
    /// actives when we claimed) are expected to release; seeing them active
    /// is not a split brain. Any other active still is.
    pub(super) grace_until: Option<Millis>,
    /// See `grace_until`.
    pub(super) grace_from: BTreeSet<String>,
    /// Asked a peer to take the group over.
    pub(super) handover: Option<PendingHandover>,
    /// Asked the agent to drain for a preemption: not again until then.
    pub(super) drain_asked_until: Option<Millis>,
    /// Peers seen active at the same time as us (each counted once).
    pub(super) split_brain_with: BTreeSet<String>,
    /// The last node seen holding the group.
    pub(super) last_active: Option<String>,
}

impl GroupState {
    pub(super) fn new(id: Option<GroupId>, preferred: Option<String>) -> Self {
        GroupState {
            id,
            preferred,
            active: false,
            reported: EffectiveRole::Standby,
            change_reason: None,
            yielded_to: None,
            yield_guard_until: None,
            grace_until: None,
            grace_from: BTreeSet::new(),
            handover: None,
            drain_asked_until: None,
            split_brain_with: BTreeSet::new(),
            last_active: None,
        }
    }
}

impl Node {
    pub(super) fn self_rank(&self, gi: usize) -> Rank<'_> {
        self.rank(
            gi,
            &self.config.name,
            self.config.role,
            self.config.priority,
        )
    }

    fn rank<'a>(&self, gi: usize, name: &'a str, role: ConfiguredRole, priority: u8) -> Rank<'a> {
        Rank {
            preferred: self.groups[gi].preferred.as_deref() == Some(name),
            primary: role == ConfiguredRole::Primary,
            priority,
            name,
        }
    }

    pub(super) fn peer_rank<'a>(
        &self,
        gi: usize,
        name: &'a str,
        p: &PeerState,
    ) -> Option<Rank<'a>> {
        p.info
            .as_ref()
            .map(|h| self.rank(gi, name, h.configured_role, h.priority))
    }

    /// The best-ranked eligible peer for group `gi`, if any.
    pub(super) fn best_eligible_peer(&self, gi: usize) -> Option<(&str, Rank<'_>)> {
        self.peers
            .iter()
            .filter(|(_, p)| p.eligible())
            .filter_map(|(n, p)| self.peer_rank(gi, n, p).map(|r| (n.as_str(), r)))
            .max_by(|a, b| a.1.cmp(&b.1))
    }

    pub(super) fn set_active(&mut self, cx: &mut Ctx, gi: usize, active: bool, reason: Reason) {
        if self.groups[gi].active == active {
            return;
        }
        if !active && !matches!(reason, Reason::SessionExpired | Reason::LeaderMoved { .. }) {
            self.release_key(cx, gi);
        }
        if !active && matches!(reason, Reason::SplitBrain { .. } | Reason::TakenOver { .. }) {
            // Its data was the reference; now another node's is, which
            // may hold what this one never saw.
            self.data_unverified();
        }
        let g = &mut self.groups[gi];
        g.active = active;
        g.change_reason = Some(reason);
        if active {
            g.last_active = Some(self.config.name.clone());
            g.yielded_to = None;
            g.yield_guard_until = None;
            // A forced takeover is spent once it took effect.
            self.store.sync_waived = false;
        } else {
            g.grace_until = None;
            g.handover = None;
            g.drain_asked_until = None;
        }
        if let Some(group) = g.id {
            cx.out.push(if active {
                Output::ClaimVip { group }
            } else {
                Output::ReleaseVip { group }
            });
        }
    }

    /// Claims a group by request (operator, handover, remote monitor): a
    /// grace period during which the old active is expected to release, and
    /// a `Takeover` so that it does.
    pub(super) fn claim_on_request(
        &mut self,
        cx: &mut Ctx,
        gi: usize,
        reason: Reason,
        from: Option<&str>,
    ) {
        if !self.store_allows_claim(cx, gi, from) {
            self.store.leaders[gi].pending = Some(store::PendingClaim {
                reason,
                from: from.map(str::to_owned),
            });
            return;
        }
        let id = self.groups[gi].id;
        let mut releasers: BTreeSet<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.active_in(id))
            .map(|(n, _)| n.clone())
            .collect();
        releasers.extend(from.map(str::to_owned));
        let g = &mut self.groups[gi];
        g.grace_until = Some(cx.now.plus(self.hold));
        g.grace_from = releasers;
        g.yielded_to = None;
        g.handover = None;
        if let Some(group) = g.id {
            cx.out.push(Output::Send {
                to: Destination::All,
                message: Message::Takeover { group },
            });
        }
        self.set_active(cx, gi, true, reason);
    }

    pub(super) fn start_handover(
        &mut self,
        cx: &mut Ctx,
        gi: usize,
        to: String,
        cause: HandoverCause,
    ) {
        let deadline = cx.now.plus(self.hold);
        let g = &mut self.groups[gi];
        let Some(group) = g.id else {
            return;
        };
        g.yielded_to = Some(to.clone());
        g.yield_guard_until = Some(deadline);
        g.handover = Some(PendingHandover {
            to: to.clone(),
            cause,
            deadline,
        });
        cx.out.push(Output::Send {
            to: Destination::Peer(to.clone()),
            message: Message::Handover {
                group,
                to: to.clone(),
                cause,
            },
        });
        cx.emit(Event::HandoverStarted { group, to, cause });
    }

    pub(super) fn reconcile(&mut self, cx: &mut Ctx) {
        let now = cx.now;
        // Peers silent on every link for the hold time are dead.
        let lost: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.alive && p.last_heard().is_none_or(|t| now.since(t) > self.hold))
            .map(|(n, _)| n.clone())
            .collect();
        for peer in lost {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.alive = false;
            }
            cx.emit(Event::PeerLost {
                peer,
                cause: LossCause::Timeout,
            });
        }
        self.update_key_mismatch(cx);
        if let Some(h) = &self.holdoff
            && h.until <= now
        {
            cx.emit(Event::HoldoffExpired {
                from: h.from.clone(),
            });
            cx.cause.get_or_insert(Reason::HoldoffEnded {
                from: h.from.clone(),
            });
            self.holdoff = None;
        }
        if self.announce_holdoff_until.is_some_and(|t| t <= now) {
            self.announce_holdoff_until = None;
        }
        for t in [&mut self.reclaim_until, &mut self.restore_until] {
            if t.is_some_and(|t| t <= now) {
                *t = None;
            }
        }
        if !self.self_eligible() {
            self.eligible_since = None;
        } else if self.eligible_since.is_none() {
            self.eligible_since = Some(now);
        }

        self.fence(cx);
        for gi in 0..self.groups.len() {
            self.decide(cx, gi);
        }
        self.release_idle_keys(cx);

        let serve = self.groups.iter().any(|g| g.active);
        if serve != self.serving {
            self.serving = serve;
            cx.out.push(if serve {
                Output::StartService
            } else {
                Output::StopService
            });
        }

        for gi in 0..self.groups.len() {
            let role = self.group_role(gi, now);
            let g = &mut self.groups[gi];
            let reason = g.change_reason.take();
            if role != g.reported {
                let from = g.reported;
                g.reported = role;
                self.counters.transitions += 1;
                cx.heartbeat_now = true;
                cx.emit(Event::RoleChanged {
                    group: g.id,
                    from,
                    to: role,
                    reason: reason.or_else(|| cx.cause.clone()).unwrap_or(
                        if EffectiveRole::Syncing == role || EffectiveRole::Syncing == from {
                            Reason::DataUnverified
                        } else {
                            Reason::Reevaluated
                        },
                    ),
                });
            }
        }

        if self.shut_down {
            // Last words, after the VIPs are released and the service stopped.
            cx.out.push(Output::Send {
                to: Destination::All,
                message: Message::Goodbye,
            });
            return;
        }
        let due = now >= self.next_heartbeat;
        if due {
            self.next_heartbeat = now.plus(self.config.interval);
        }
        if due || cx.heartbeat_now {
            self.counters.heartbeats_sent += 1;
            cx.out.push(Output::Send {
                to: Destination::All,
                message: Message::Heartbeat(self.heartbeat(now)),
            });
        }
        if due {
            self.resend_pending(cx);
        }
    }

    /// Messages that must get through even if a datagram is lost: repeated
    /// with every regular heartbeat while they matter.
    fn resend_pending(&mut self, cx: &mut Ctx) {
        let now = cx.now;
        if let Some(until) = self.announce_holdoff_until {
            cx.out.push(Output::Send {
                to: Destination::All,
                message: Message::Holdoff {
                    duration: now.until(until),
                },
            });
        }
        for g in &self.groups {
            let Some(group) = g.id else { continue };
            if let Some(h) = &g.handover {
                cx.out.push(Output::Send {
                    to: Destination::Peer(h.to.clone()),
                    message: Message::Handover {
                        group,
                        to: h.to.clone(),
                        cause: h.cause,
                    },
                });
            }
            if g.active
                && g.grace_until.is_some_and(|t| t > now)
                && self.peers.values().any(|p| p.active_in(g.id))
            {
                cx.out.push(Output::Send {
                    to: Destination::All,
                    message: Message::Takeover { group },
                });
            }
        }
    }

    /// Applies the election rules to group `gi`.
    fn decide(&mut self, cx: &mut Ctx, gi: usize) {
        let now = cx.now;
        let eligible = self.self_eligible();
        let active = self.groups[gi].active;
        let ineligible_reason = || {
            cx.cause.clone().unwrap_or_else(|| {
                if self.shut_down {
                    Reason::ShuttingDown
                } else if !self.local_healthy {
                    Reason::LocalMonitorFailed {
                        detail: self.local_detail.clone(),
                    }
                } else if let Some(peer) = self.key_mismatch.clone() {
                    Reason::KeyMismatch { peer }
                } else {
                    Reason::Reevaluated
                }
            })
        };
        if self.config.mode == Mode::ConfigOnly {
            if eligible != active {
                let reason = if eligible {
                    cx.cause.clone().unwrap_or(Reason::Elected)
                } else {
                    ineligible_reason()
                };
                self.set_active(cx, gi, eligible, reason);
            }
            return;
        }
        let id = self.groups[gi].id;
        if !eligible {
            if active {
                let reason = ineligible_reason();
                self.set_active(cx, gi, false, reason);
            }
            let g = &mut self.groups[gi];
            g.handover = None;
            g.grace_until = None;
            return;
        }
        let mut actives: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.active_in(id))
            .map(|(n, _)| n.clone())
            .collect();
        actives.retain(|n| self.active_claim_current(n, gi));
        if let Some(a) = actives.first() {
            self.groups[gi].last_active = Some(a.clone());
        }
        if active {
            self.decide_active(cx, gi, &actives);
        } else {
            self.decide_standby(cx, gi, &actives, now);
        }
    }

    fn decide_active(&mut self, cx: &mut Ctx, gi: usize, actives: &[String]) {
        let now = cx.now;
        let id = self.groups[gi].id;
        // A planned handover completes once the target is seen active.
        if let Some(h) = self.groups[gi].handover.clone() {
            if actives.contains(&h.to) {
                self.groups[gi].yielded_to = Some(h.to.clone());
                self.groups[gi].yield_guard_until = Some(now.plus(self.hold));
                let reason = Reason::HandedOver {
                    to: h.to,
                    cause: h.cause,
                };
                return self.set_active(cx, gi, false, reason);
            }
            if now >= h.deadline {
                let g = &mut self.groups[gi];
                g.handover = None;
                g.yielded_to = None;
                if let Some(group) = id {
                    cx.emit(Event::HandoverFailed { group, to: h.to });
                }
                // Under a store the target may hold the key by now (its
                // heartbeats did not reach this node): the handover's
                // exemption is over, so the key decides before this node
                // takes clients again (the sim campaign, seed 4181).
                if self.store_coordinated() {
                    self.fence(cx);
                    if !self.groups[gi].active {
                        return;
                    }
                }
            }
        }
        let in_grace = self.groups[gi].grace_until.is_some_and(|t| t > now);
        if !in_grace {
            self.groups[gi].grace_until = None;
            self.groups[gi].grace_from.clear();
        }
        // Actives other than those expected to release after our claim.
        let grace_from = &self.groups[gi].grace_from;
        let contenders: Vec<String> = actives
            .iter()
            .filter(|p| !(in_grace && grace_from.contains(*p)))
            .cloned()
            .collect();
        // Split brain: count each peer once per episode.
        let g = &mut self.groups[gi];
        g.split_brain_with.retain(|p| contenders.contains(p));
        let mut fresh = Vec::new();
        for p in &contenders {
            if g.split_brain_with.insert(p.clone()) {
                fresh.push(p.clone());
            }
        }
        for peer in fresh {
            self.counters.split_brain_events += 1;
            cx.emit(Event::SplitBrain { group: id, peer });
        }
        let me = self.self_rank(gi);
        let better = contenders
            .iter()
            .filter_map(|n| {
                let p = self.peers.get(n)?;
                self.peer_rank(gi, n, p).filter(|r| *r > me)
            })
            .max();
        if let Some(r) = better {
            let peer = r.name.to_owned();
            return self.set_active(cx, gi, false, Reason::SplitBrain { peer });
        }
        // Preemption: hand over to a better-ranked peer that is ready.
        if self.groups[gi].handover.is_none() && actives.is_empty() && !in_grace {
            let Some(to) = self.preemption_target(gi) else {
                self.groups[gi].drain_asked_until = None;
                return;
            };
            let cause = if self.restore_until.is_some_and(|t| t > now) {
                HandoverCause::Restore
            } else {
                HandoverCause::Preemption
            };
            if !self.config.drain_before_preemption {
                return self.start_handover(cx, gi, to, cause);
            }
            let g = &mut self.groups[gi];
            if let Some(group) = g.id
                && g.drain_asked_until.is_none_or(|t| now >= t)
            {
                g.drain_asked_until = Some(now.plus(PREEMPT_DRAIN_WAIT));
                cx.out.push(Output::DrainForHandover { group, to, cause });
            }
        }
    }

    /// The better-ranked peer, eligible and ready to preempt, that group
    /// `gi` should go to, if any.
    pub(super) fn preemption_target(&self, gi: usize) -> Option<String> {
        let me = self.self_rank(gi);
        self.peers
            .iter()
            .filter(|(_, p)| {
                p.eligible()
                    && p.info
                        .as_ref()
                        .is_some_and(|h| h.preempt == PreemptState::Ready)
            })
            // Under a store with replicated data, only to a peer the
            // `sync` key names (tandem chaos, partition-active, seed 1: the
            // primary back from a partition was handed the group before
            // the key named it again, and nobody served).
            .filter(|(n, _)| !self.store_coordinated() || self.sync_names(n))
            .filter_map(|(n, p)| self.peer_rank(gi, n, p))
            .filter(|r| *r > me)
            .max()
            .map(|r| r.name.to_owned())
    }

    fn decide_standby(&mut self, cx: &mut Ctx, gi: usize, actives: &[String], now: Millis) {
        // A reachable active whose service our remote monitor still trusts
        // keeps the group.
        if actives
            .iter()
            .any(|n| self.peers.get(n).is_some_and(|p| p.remote_ok))
        {
            return;
        }
        // Any active left is one whose service the remote monitor finds failed.
        let failed_active = actives.first().cloned();
        if self.in_startup(now) || self.holdoff_active(now) {
            return;
        }
        if let Some(y) = self.groups[gi].yielded_to.clone() {
            if !self.peers.get(&y).is_some_and(|p| p.eligible()) {
                self.groups[gi].yielded_to = None;
            } else if self.groups[gi].yield_guard_until.is_some_and(|t| t > now) {
                return;
            }
        }
        let me = self.self_rank(gi);
        if self.best_eligible_peer(gi).is_some_and(|(_, r)| r > me) {
            return;
        }
        if let Some(peer) = failed_active {
            let from = peer.clone();
            return self.claim_on_request(
                cx,
                gi,
                Reason::RemoteMonitorFailed { peer },
                Some(&from),
            );
        }
        let reason = match self.groups[gi].last_active.clone() {
            Some(p) if p != self.config.name => {
                if self.peers.get(&p).is_some_and(|s| s.alive) {
                    Reason::PeerStoodDown { peer: p }
                } else {
                    Reason::PeerLost { peer: p }
                }
            }
            _ => Reason::Elected,
        };
        // With a store, the key decides; a holder proven dead is evicted.
        if !self.store_allows_claim(cx, gi, None) {
            return;
        }
        self.set_active(cx, gi, true, reason);
    }
}
