//! A simulated coordination store with etcd's semantics, for [`Sim`]
//! clusters with `coordination = Store`: leases that expire at the store's
//! own time, leader keys attached to a lease and written only if absent
//! (or held by the node named to evict), a revision that grows with every
//! write and is the fencing epoch, and watches that tell every node that
//! can reach the store what changed.
//!
//! Each node's "agent" keeps its session alive every `renew_every`; a node
//! cut from the store cannot, and its `valid_until` runs out (at the
//! renewal's send time plus the TTL minus `margin`) before the store
//! expires its lease, which is the order that keeps two nodes from serving
//! at once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::Sim;
use crate::config::GroupId;
use crate::node::{Input, LeaderKey, StoreEvent, StoreRequest};
use crate::time::Millis;

/// The store and who can reach it.
#[derive(Debug, Clone)]
pub struct SimStore {
    /// Lease time to live.
    pub ttl: Duration,
    /// How much earlier than the store a node gives its session up.
    pub margin: Duration,
    /// How often a node's agent renews its session.
    pub renew_every: Duration,
    revision: u64,
    /// Lease id → (owner, expiry at the store).
    leases: BTreeMap<u64, (String, Millis)>,
    next_lease: u64,
    /// Node → its current lease id.
    sessions: BTreeMap<String, u64>,
    /// Group → (holder, lease, epoch).
    leaders: BTreeMap<GroupId, (String, u64, u64)>,
    /// Nodes that cannot reach the store.
    cut: BTreeSet<String>,
    /// Each node's next renewal.
    next_renew: BTreeMap<String, Millis>,
}

impl SimStore {
    /// A store with etcd's smallest usual TTL (2 s), nodes renewing every
    /// 500 ms and giving up 500 ms early.
    pub fn new() -> SimStore {
        SimStore {
            ttl: Duration::from_secs(2),
            margin: Duration::from_millis(500),
            renew_every: Duration::from_millis(500),
            revision: 1,
            leases: BTreeMap::new(),
            next_lease: 1,
            sessions: BTreeMap::new(),
            leaders: BTreeMap::new(),
            cut: BTreeSet::new(),
            next_renew: BTreeMap::new(),
        }
    }

    /// The current holder of `group`'s key and its epoch.
    pub fn leader(&self, group: GroupId) -> Option<(&str, u64)> {
        self.leaders
            .get(&group)
            .map(|(n, _, epoch)| (n.as_str(), *epoch))
    }

    fn report(&self, group: GroupId) -> StoreEvent {
        StoreEvent::Leader {
            group,
            revision: self.revision,
            holder: self
                .leaders
                .get(&group)
                .map(|(node, session, epoch)| LeaderKey {
                    node: node.clone(),
                    session: *session,
                    epoch: *epoch,
                }),
        }
    }

    /// Ends lease `id` and deletes its keys; returns the groups changed.
    fn end_lease(&mut self, id: u64) -> Vec<GroupId> {
        self.leases.remove(&id);
        let gone: Vec<GroupId> = self
            .leaders
            .iter()
            .filter(|(_, (_, lease, _))| *lease == id)
            .map(|(g, _)| *g)
            .collect();
        for g in &gone {
            self.leaders.remove(g);
            self.revision += 1;
        }
        gone
    }
}

impl Default for SimStore {
    fn default() -> SimStore {
        SimStore::new()
    }
}

impl Sim {
    /// Puts every node under a simulated store (their configs must say
    /// `coordination = Store`).
    pub fn with_store(mut self, store: SimStore) -> Sim {
        self.store = Some(store);
        self
    }

    /// The simulated store, if any.
    pub fn store(&self) -> Option<&SimStore> {
        self.store.as_ref()
    }

    /// `name` can no longer reach the store (nor the store it).
    pub fn cut_store(&mut self, name: &str) {
        if let Some(s) = &mut self.store {
            s.cut.insert(name.to_owned());
        }
    }

    /// `name` reaches the store again; its watch resumes with a fresh read.
    pub fn heal_store(&mut self, name: &str) {
        let Some(s) = &mut self.store else { return };
        s.cut.remove(name);
        let groups = self
            .nodes
            .get(name)
            .map(|n| n.config.groups.iter().map(|g| g.id).collect::<Vec<_>>())
            .unwrap_or_default();
        let reports: Vec<StoreEvent> = groups.into_iter().map(|g| s.report(g)).collect();
        for r in reports {
            self.input(name, Input::Store(r));
        }
    }

    /// The earliest time the store needs attention (a renewal or an
    /// expiry).
    pub(super) fn store_deadline(&self) -> Option<Millis> {
        let s = self.store.as_ref()?;
        let renew = self
            .nodes
            .iter()
            .filter(|(_, n)| n.up && !n.hung)
            .filter_map(|(name, _)| s.next_renew.get(name).copied().or(Some(Millis::ZERO)))
            .min();
        let expiry = s.leases.values().map(|(_, t)| *t).min();
        [renew, expiry].into_iter().flatten().min()
    }

    /// Expires leases and renews sessions due at `self.now`.
    pub(super) fn run_store(&mut self) {
        let now = self.now;
        let Some(s) = &mut self.store else { return };
        let expired: Vec<u64> = s
            .leases
            .iter()
            .filter(|(_, (_, t))| *t <= now)
            .map(|(id, _)| *id)
            .collect();
        let mut changed = Vec::new();
        for id in expired {
            changed.extend(s.end_lease(id));
        }
        self.notify(&changed);
        let due: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.up && !n.hung)
            .map(|(name, _)| name.clone())
            .filter(|name| {
                self.store
                    .as_ref()
                    .is_some_and(|s| s.next_renew.get(name).is_none_or(|t| *t <= now))
            })
            .collect();
        for name in due {
            self.renew(&name);
        }
    }

    /// `name`'s agent started again: a new process, a new session.
    pub(super) fn store_restarted(&mut self, name: &str) {
        if let Some(s) = &mut self.store {
            s.sessions.remove(name);
            s.next_renew.remove(name);
        }
    }

    /// `name`'s agent renews its session (or, when the store lost it,
    /// starts a new one).
    fn renew(&mut self, name: &str) {
        let now = self.now;
        let Some(s) = &mut self.store else { return };
        s.next_renew
            .insert(name.to_owned(), now.plus(s.renew_every));
        if s.cut.contains(name) {
            return;
        }
        let valid_until = now.plus(s.ttl.saturating_sub(s.margin));
        let expiry = now.plus(s.ttl);
        let mut lost = false;
        let session = match s.sessions.get(name).copied() {
            Some(id) if s.leases.contains_key(&id) => {
                s.leases.insert(id, (name.to_owned(), expiry));
                id
            }
            old => {
                lost = old.is_some();
                let id = s.next_lease;
                s.next_lease += 1;
                s.leases.insert(id, (name.to_owned(), expiry));
                s.sessions.insert(name.to_owned(), id);
                id
            }
        };
        if lost {
            self.input(name, Input::Store(StoreEvent::SessionLost));
        }
        self.input(
            name,
            Input::Store(StoreEvent::SessionRenewed {
                session,
                valid_until,
            }),
        );
    }

    /// Carries out `name`'s request, if it can reach the store.
    pub(super) fn store_request(&mut self, name: &str, request: &StoreRequest) {
        let Some(s) = &mut self.store else { return };
        if s.cut.contains(name) {
            return;
        }
        let Some(lease) = s
            .sessions
            .get(name)
            .copied()
            .filter(|id| s.leases.contains_key(id))
        else {
            return;
        };
        let mut changed = Vec::new();
        match request {
            StoreRequest::Acquire { group, evict } => {
                let holder = s.leaders.get(group).map(|(n, l, _)| (n.clone(), *l));
                // With `evict` holding it, the key moves (a swap: the old
                // holder's session stays, as the etcd adapter does it).
                let free = match &holder {
                    None => true,
                    Some((h, l)) => Some(h) == evict.as_ref() && *l != lease,
                };
                if free {
                    s.revision += 1;
                    s.leaders
                        .insert(*group, (name.to_owned(), lease, s.revision));
                }
                changed.push(*group);
            }
            StoreRequest::Release { group } => {
                if s.leaders.get(group).is_some_and(|(n, _, _)| n == name) {
                    s.leaders.remove(group);
                    s.revision += 1;
                    changed.push(*group);
                }
            }
        }
        self.notify(&changed);
    }

    /// Tells every running node that reaches the store what `groups` hold.
    fn notify(&mut self, groups: &[GroupId]) {
        let Some(s) = &self.store else { return };
        let groups: BTreeSet<GroupId> = groups.iter().copied().collect();
        let reports: Vec<StoreEvent> = groups.iter().map(|g| s.report(*g)).collect();
        let names: Vec<String> = self
            .nodes
            .keys()
            .filter(|n| !s.cut.contains(*n))
            .cloned()
            .collect();
        for name in names {
            for r in &reports {
                self.input(&name, Input::Store(r.clone()));
            }
        }
    }
}
