//! Quorum and fencing through a coordination store (`coordination =
//! "etcd"`): the rules that decide whether this node may serve a group, so
//! that a partition never leaves two actives.
//!
//! With peers alone a node that hears nobody serves, so each side of a
//! partition does. With a store, serving a group needs two things the
//! store grants, Patroni's way:
//!
//! - **a session**: a lease this node keeps alive. The agent reports how
//!   long it is surely alive ([`StoreEvent::SessionRenewed`]): the time it
//!   *sent* the renewal plus the TTL minus a margin, so the node stops
//!   before the store can expire the lease and hand the group to another
//!   node. A node that cannot reach a quorum of the store cannot renew,
//!   and self-fences when that time passes.
//! - **the group's leader key**, attached to that session. The election
//!   rules of `reconcile` still say who *should* serve; where they would
//!   claim, the node asks the store ([`StoreRequest::Acquire`]) and claims
//!   only once the store says the key is its own. The key's revision is the
//!   group's **fencing epoch**: it only grows, it travels in heartbeats,
//!   and a node ignores an active that shows an older epoch than one it
//!   knows (counted in `stale_epochs`).
//!
//! Speed comes from proof of death, not from the lease: when a holder's
//! connection closed or it said goodbye, the request names it in `evict`
//! and the store may replace its key at once; a silent holder (a hang, a
//! partition) keeps its key until its lease expires at the store.

use crate::config::GroupId;
use crate::time::Millis;

use super::io::{LeaderKey, StoreEvent, StoreRequest};
use super::{Ctx, LossCause, Node, Output, Reason};

/// What this node knows from the store.
#[derive(Debug, Clone, Default)]
pub(super) struct StoreView {
    /// Until then this node's session is surely alive at the store;
    /// `None`: no session (not granted yet, or lost).
    pub(super) valid_until: Option<Millis>,
    /// The session's id at the store.
    pub(super) session: Option<u64>,
    /// Per group (indexed like `Node::groups`): the leader key as last
    /// reported, and the revision of that report.
    pub(super) leaders: Vec<LeaderView>,
    /// The `sync` key's members and the revision of that report.
    pub(super) sync: (u64, Option<Vec<String>>),
    /// `failover active --force`: the `sync` key does not hold this node
    /// back until it serves.
    pub(super) sync_waived: bool,
}

/// One group's leader key, as far as this node knows.
#[derive(Debug, Clone, Default)]
pub(super) struct LeaderView {
    /// Who holds it (`None`: absent, or not known yet).
    pub(super) holder: Option<LeaderKey>,
    /// The store revision of the last report (0: nothing heard yet); older
    /// reports are ignored.
    pub(super) revision: u64,
    /// The highest fencing epoch seen for this group, from the store or
    /// from a peer's heartbeat.
    pub(super) highest_epoch: u64,
    /// When this node last asked for the key; not again within an interval.
    pub(super) asked_at: Option<Millis>,
    /// A claim by request (handover, operator, remote monitor) that waits
    /// for the key: made once the store grants it.
    pub(super) pending: Option<PendingClaim>,
}

/// A claim by request waiting for the store.
#[derive(Debug, Clone)]
pub(super) struct PendingClaim {
    pub(super) reason: Reason,
    pub(super) from: Option<String>,
}

impl Node {
    /// Whether coordination goes through a store.
    pub(super) fn store_coordinated(&self) -> bool {
        self.config.coordination.uses_store()
    }

    /// Whether this node holds group `gi`'s leader key under a live session
    /// at `now`. Always true without a store.
    pub(super) fn holds_lease(&self, gi: usize, now: Millis) -> bool {
        if !self.store_coordinated() {
            return true;
        }
        self.store.valid_until.is_some_and(|t| now < t)
            && self.store.leaders[gi]
                .holder
                .as_ref()
                .is_some_and(|k| self.is_mine(k))
    }

    /// The fencing epochs of the first group (the sync channel carries one
    /// data set per node): the one this node serves under (0: none) and
    /// the newest it knows (0: none). Both 0 with peers.
    pub fn fencing_epochs(&self, now: Millis) -> (u64, u64) {
        let Some(view) = self.store.leaders.first() else {
            return (0, 0);
        };
        (self.own_epoch(0, now).unwrap_or(0), view.highest_epoch)
    }

    /// Whether `key` was written by this run of this node.
    fn is_mine(&self, key: &LeaderKey) -> bool {
        key.node == self.config.name && Some(key.session) == self.store.session
    }

    /// The fencing epoch this node serves group `gi` under: its key's, or
    /// in failsafe mode the last one it held.
    pub(super) fn own_epoch(&self, gi: usize, now: Millis) -> Option<u64> {
        if !self.store_coordinated() {
            return None;
        }
        if self.holds_lease(gi, now) {
            return self.store.leaders[gi].holder.as_ref().map(|k| k.epoch);
        }
        let view = &self.store.leaders[gi];
        (self.groups[gi].active && self.failsafe_covers() && view.highest_epoch > 0)
            .then_some(view.highest_epoch)
    }

    /// Before a claim of group `gi`: true when the store lets this node
    /// serve it now. Otherwise asks for the key (at most once an
    /// interval, and only with a live session) and returns false; the
    /// claim happens when the store answers. `evict` names a holder this
    /// node may replace (it asked for this, or its service failed).
    pub(super) fn store_allows_claim(
        &mut self,
        cx: &mut Ctx,
        gi: usize,
        evict: Option<&str>,
    ) -> bool {
        let now = cx.now;
        if self.holds_lease(gi, now) {
            return true;
        }
        let Some(group) = self.groups[gi].id else {
            return true;
        };
        if self.store.valid_until.is_none_or(|t| now >= t) {
            return false;
        }
        if !self.named_in_sync() {
            return false;
        }
        let holder = self.store.leaders[gi]
            .holder
            .as_ref()
            .map(|k| k.node.clone());
        let evict = match (holder, evict) {
            (None, _) => None,
            (Some(h), Some(e)) if h == e => Some(h),
            // An earlier run of this very node (it crashed and restarted):
            // that process is gone.
            (Some(h), _) if h == self.config.name => Some(h),
            // Its process is gone (a closed connection, a goodbye): proof
            // enough to end its session now rather than wait for the TTL.
            (Some(h), _) if self.death_proven(&h) => Some(h),
            // A live or silent holder keeps the key until its lease ends.
            (Some(_), _) => return false,
        };
        let view = &mut self.store.leaders[gi];
        if view
            .asked_at
            .is_some_and(|t| now.since(t) < self.config.interval)
        {
            return false;
        }
        view.asked_at = Some(now);
        cx.out
            .push(Output::Store(StoreRequest::Acquire { group, evict }));
        false
    }

    /// Failsafe mode: every configured peer is alive over the links.
    fn failsafe_covers(&self) -> bool {
        self.config.failsafe && !self.peers.is_empty() && self.peers.values().all(|p| p.alive)
    }

    /// Whether etcd's `sync` key keeps this node from taking over (with
    /// replicated data: it is not named, and no takeover was forced).
    pub fn held_back_by_sync(&self) -> bool {
        !self.named_in_sync()
    }

    /// With replicated data, whether the `sync` key as this node last read
    /// it lets `peer` take over: it names it, or does not exist yet. An
    /// active hands a group over (preemption) only to such a peer: one the
    /// key does not name could not take it, and nobody would serve.
    pub(super) fn sync_names(&self, peer: &str) -> bool {
        if !self.config.replicated_data {
            return true;
        }
        match &self.store.sync.1 {
            Some(members) => members.iter().any(|m| m == peer),
            None => true,
        }
    }

    /// With replicated data, whether the `sync` key lets this node take
    /// over: it names it (or does not exist yet), or the operator forced it.
    fn named_in_sync(&self) -> bool {
        if !self.config.replicated_data || self.store.sync_waived {
            return true;
        }
        match &self.store.sync.1 {
            Some(members) => members.contains(&self.config.name),
            None => true,
        }
    }

    /// `peer` is lost, and not by silence: its connection closed or it
    /// said goodbye.
    fn death_proven(&self, peer: &str) -> bool {
        self.peers.get(peer).is_some_and(|p| {
            !p.alive
                && p.departed.as_ref().is_some_and(|d| {
                    matches!(d.cause, LossCause::ConnectionClosed | LossCause::Goodbye)
                })
        })
    }

    /// Applies what the store says.
    pub(super) fn on_store_event(&mut self, cx: &mut Ctx, event: StoreEvent) {
        if !self.store_coordinated() {
            return;
        }
        match event {
            StoreEvent::SessionRenewed {
                session,
                valid_until,
            } => {
                self.store.session = Some(session);
                self.store.valid_until = Some(valid_until);
            }
            StoreEvent::SessionLost => {
                self.store.valid_until = None;
                // Our keys hung on that session: they are gone with it.
                if let Some(session) = self.store.session.take() {
                    let me = self.config.name.clone();
                    for view in &mut self.store.leaders {
                        if view
                            .holder
                            .as_ref()
                            .is_some_and(|k| k.node == me && k.session == session)
                        {
                            view.holder = None;
                        }
                    }
                }
            }
            StoreEvent::Leader {
                group,
                revision,
                holder,
            } => self.on_leader(cx, group, revision, holder),
            StoreEvent::Sync { revision, members } => {
                if revision >= self.store.sync.0 {
                    self.store.sync = (revision, members);
                }
            }
            StoreEvent::WaiveSync => self.store.sync_waived = true,
        }
    }

    fn on_leader(
        &mut self,
        cx: &mut Ctx,
        group: GroupId,
        revision: u64,
        holder: Option<LeaderKey>,
    ) {
        let Some(gi) = self.group_index(group) else {
            return;
        };
        let view = &mut self.store.leaders[gi];
        let stale = revision < view.revision
            || holder
                .as_ref()
                .is_some_and(|k| k.epoch < view.highest_epoch);
        if stale {
            self.counters.stale_epochs += 1;
            return;
        }
        view.revision = revision;
        if let Some(k) = &holder {
            view.highest_epoch = view.highest_epoch.max(k.epoch);
        }
        view.holder = holder;
        let mine = self.store.leaders[gi]
            .holder
            .as_ref()
            .is_some_and(|k| self.is_mine(k));
        let view = &mut self.store.leaders[gi];
        let pending = view.pending.take();
        if mine && let Some(p) = pending {
            self.claim_on_request(cx, gi, p.reason, p.from.as_deref());
        }
    }

    /// A peer's heartbeat showed these fencing epochs: a newer epoch than
    /// ours means the key moved, whatever the store's answers still on
    /// their way say.
    pub(super) fn on_peer_fencing(&mut self, peer: &str, fencing: &[(GroupId, u64)]) {
        if !self.store_coordinated() {
            return;
        }
        for (group, epoch) in fencing {
            let Some(gi) = self.group_index(*group) else {
                continue;
            };
            let view = &mut self.store.leaders[gi];
            if *epoch > view.highest_epoch {
                view.highest_epoch = *epoch;
                // The peer's session is not known here; only that the
                // key is no longer ours.
                view.holder = Some(LeaderKey {
                    node: peer.to_owned(),
                    session: 0,
                    epoch: *epoch,
                });
            }
        }
    }

    /// Whether `peer`, which says it is active in group `gi`, may be
    /// believed: with a store, only under the newest epoch this node knows.
    pub(super) fn active_claim_current(&mut self, peer: &str, gi: usize) -> bool {
        if !self.store_coordinated() {
            return true;
        }
        let Some(id) = self.groups[gi].id else {
            return true;
        };
        let epoch = self
            .peers
            .get(peer)
            .and_then(|p| p.info.as_ref())
            .and_then(|h| h.fencing.iter().find(|(g, _)| *g == id).map(|(_, e)| *e));
        let current = epoch.is_some_and(|e| e >= self.store.leaders[gi].highest_epoch);
        if !current {
            self.counters.stale_epochs += 1;
        }
        current
    }

    /// Self-fencing: every group this node serves without its key under a
    /// live session is released now, before the store can give it away.
    pub(super) fn fence(&mut self, cx: &mut Ctx) {
        if !self.store_coordinated() {
            return;
        }
        let now = cx.now;
        for gi in 0..self.groups.len() {
            if !self.groups[gi].active || self.holds_lease(gi, now) {
                continue;
            }
            let moved = match &self.store.leaders[gi].holder {
                Some(k) if k.node != self.config.name && self.store.valid_until.is_some() => {
                    Some(Reason::LeaderMoved {
                        to: k.node.clone(),
                        epoch: k.epoch,
                    })
                }
                _ => None,
            };
            // A planned handover to the new holder completes the usual
            // way, once its heartbeat says it serves (make-before-break):
            // no connection is refused in between.
            let handing_to = self.groups[gi].handover.as_ref().map(|h| h.to.as_str());
            if let Some(Reason::LeaderMoved { to, .. }) = &moved
                && Some(to.as_str()) == handing_to
            {
                continue;
            }
            if moved.is_none() && self.failsafe_covers() {
                // Every peer hears this node serve, so none claims; take
                // the key back as soon as the store answers again.
                self.store_allows_claim(cx, gi, None);
                continue;
            }
            let reason = moved.unwrap_or(Reason::SessionExpired);
            self.counters.self_fenced += 1;
            self.set_active(cx, gi, false, reason);
        }
    }

    /// Releases every key this node holds for a group it does not serve:
    /// its session came back (same lease) after it fenced itself, or it
    /// stood back for a better-ranked peer after the grant. A live holder
    /// keeps its key until its lease ends, so an idle one would keep every
    /// other node from serving while it waits for them (found by the sim
    /// campaign, `tests/it/campaign.rs`: nobody served after the heal).
    pub(super) fn release_idle_keys(&mut self, cx: &mut Ctx) {
        if !self.store_coordinated() {
            return;
        }
        for gi in 0..self.groups.len() {
            if !self.groups[gi].active && self.holds_lease(gi, cx.now) {
                self.release_key(cx, gi);
            }
        }
    }

    /// Releases group `gi`'s key at the store after this node gave the
    /// group up of its own accord (a handover, a failure, a shutdown), so
    /// that the next holder need not wait for the lease.
    pub(super) fn release_key(&mut self, cx: &mut Ctx, gi: usize) {
        if !self.store_coordinated() {
            return;
        }
        let mine = self.store.leaders[gi]
            .holder
            .as_ref()
            .is_some_and(|k| self.is_mine(k));
        if mine && let Some(group) = self.groups[gi].id {
            self.store.leaders[gi].holder = None;
            cx.out.push(Output::Store(StoreRequest::Release { group }));
        }
    }
}
