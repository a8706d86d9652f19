//! An in-memory, deterministic cluster for tests: nodes, a network of links
//! that can drop, cut, isolate and heal, and explicit time.
//!
//! Every datagram goes through the real [`Codec`] (HMAC, replay guard), one
//! per link, and arrives `latency` later unless its link is cut or the
//! seeded loss drops it. [`Sim::run_until`] advances time event by event:
//! deliveries, and a `Tick` for each node at its [`Node::next_deadline`].
//! Nothing sleeps; a run of seconds of cluster time takes microseconds.
//!
//! Faults: [`Sim::crash`] (process dies; peers see the connection close),
//! [`Sim::hang`] (SIGSTOP: silent, no close), [`Sim::shutdown`] (clean, with
//! goodbye), [`Sim::restart`] (new boot epoch, persisted state kept),
//! [`Sim::cut`] / [`Sim::isolate`] / [`Sim::heal`] and [`Sim::set_loss`].
//!
//! With [`Sim::with_store`] the nodes coordinate through a simulated etcd
//! ([`store`]), which a node can be cut from ([`Sim::cut_store`]).

mod store;

pub use store::SimStore;

use crate::config::{GroupId, LinkId, NodeConfig};
use crate::node::{Destination, Input, Node, Output, PersistentState};
use crate::time::Millis;
use crate::wire::Codec;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const KEY: &[u8] = b"sim cluster key";
const CLUSTER: &str = "sim";

/// One simulated node and what its agent would have done.
#[derive(Debug, Clone)]
pub struct SimNode {
    /// The state machine.
    pub node: Node,
    /// Its codec.
    pub codec: Codec,
    /// Process running (not crashed or shut down).
    pub up: bool,
    /// Process stopped (SIGSTOP): neither steps nor sends.
    pub hung: bool,
    /// VIPs it holds.
    pub vips: BTreeSet<GroupId>,
    /// Service running.
    pub service: bool,
    /// Groups whose listener is suspended for a planned handover (the
    /// agent drains the service first, and the old active takes no new
    /// client until it releases, or resumes if the handover fails).
    pub suspended: BTreeSet<GroupId>,
    /// Last persisted state.
    pub persisted: Option<PersistentState>,
    /// When its agent's timer fires next (`Node::next_deadline` after its
    /// last step).
    wake: Millis,
    config: NodeConfig,
    epoch: u64,
}

#[derive(Debug, Clone)]
struct Packet {
    at: Millis,
    from: String,
    to: String,
    link: LinkId,
    bytes: Vec<u8>,
}

/// The simulated cluster.
#[derive(Debug, Clone)]
pub struct Sim {
    /// Current time.
    pub now: Millis,
    /// One-way delivery time.
    pub latency: Duration,
    /// The nodes, by name.
    pub nodes: BTreeMap<String, SimNode>,
    /// Every output, with time and node, in order.
    pub log: Vec<(Millis, String, Output)>,
    /// Cut links, as (from, to, link): directed.
    cuts: BTreeSet<(String, String, u8)>,
    in_flight: Vec<Packet>,
    loss_permille: u32,
    rng: u64,
    store: Option<SimStore>,
}

impl Sim {
    /// A cluster of nodes with these configurations, all booted at time 0.
    /// `seed` drives packet loss; print it when a test fails.
    pub fn new(configs: Vec<NodeConfig>, seed: u64) -> Result<Sim, crate::Error> {
        let mut nodes = BTreeMap::new();
        for c in configs {
            let node = Node::new(c.clone(), None, Millis::ZERO)?;
            let codec = Codec::new(KEY, CLUSTER, &c.name, 1);
            nodes.insert(
                c.name.clone(),
                SimNode {
                    node,
                    codec,
                    up: true,
                    hung: false,
                    vips: BTreeSet::new(),
                    service: false,
                    suspended: BTreeSet::new(),
                    persisted: None,
                    wake: Millis::ZERO,
                    config: c,
                    epoch: 1,
                },
            );
        }
        Ok(Sim {
            now: Millis::ZERO,
            latency: Duration::from_millis(1),
            nodes,
            log: Vec::new(),
            cuts: BTreeSet::new(),
            in_flight: Vec::new(),
            loss_permille: 0,
            rng: seed.max(1),
            store: None,
        })
    }

    /// Feeds `input` to `name` now, carries out its outputs and returns them.
    pub fn input(&mut self, name: &str, input: Input) -> Vec<Output> {
        let now = self.now;
        let Some(n) = self.nodes.get_mut(name) else {
            return Vec::new();
        };
        if !n.up || n.hung {
            return Vec::new();
        }
        let out = n.node.step(now, input);
        n.wake = n.node.next_deadline(now);
        self.apply(name, &out);
        out
    }

    /// An operator command on `name`.
    pub fn command(&mut self, name: &str, c: crate::Command) -> Vec<Output> {
        self.input(name, Input::Command(c))
    }

    fn apply(&mut self, name: &str, out: &[Output]) {
        let mut drained = Vec::new();
        let mut requests = Vec::new();
        for o in out {
            self.log.push((self.now, name.to_owned(), o.clone()));
            let Some(n) = self.nodes.get_mut(name) else {
                return;
            };
            match o {
                Output::Send { to, message } => {
                    let dests: Vec<String> = match to {
                        Destination::All => n.config.peers.clone(),
                        Destination::Peer(p) => vec![p.clone()],
                    };
                    let links = n.config.links.len();
                    for d in dests {
                        for l in 0..links {
                            let Ok(bytes) = n.codec.seal_for(&d, message) else {
                                continue;
                            };
                            let link = LinkId(l as u8);
                            self.in_flight.push(Packet {
                                at: self.now.plus(self.latency),
                                from: name.to_owned(),
                                to: d.clone(),
                                link,
                                bytes,
                            });
                        }
                    }
                }
                Output::ClaimVip { group } => {
                    n.vips.insert(*group);
                }
                Output::ReleaseVip { group } => {
                    n.vips.remove(group);
                    n.suspended.remove(group);
                }
                Output::StartService => n.service = true,
                Output::StopService => n.service = false,
                Output::Persist(p) => n.persisted = Some(*p),
                Output::Event(crate::Event::HandoverStarted { group, .. }) => {
                    n.suspended.insert(*group);
                }
                Output::Event(crate::Event::HandoverFailed { group, .. }) => {
                    n.suspended.remove(group);
                }
                Output::Event(_) | Output::Refused { .. } => {}
                Output::Store(request) => requests.push(request.clone()),
                Output::DrainForHandover { group, to, cause } => {
                    // The simulated service drains at once.
                    drained.push(Input::Drained {
                        group: *group,
                        to: to.clone(),
                        cause: *cause,
                    });
                }
            }
        }
        for input in drained {
            self.input(name, input);
        }
        for request in requests {
            self.store_request(name, &request);
        }
    }

    fn random_permille(&mut self) -> u32 {
        // xorshift64: deterministic, no dependency.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % 1000) as u32
    }

    /// Advances time to `t`, delivering datagrams and ticking nodes at their
    /// deadlines on the way.
    pub fn run_until(&mut self, t: Millis) {
        loop {
            let next_packet = self.in_flight.iter().map(|p| p.at).min();
            let next_tick = self
                .nodes
                .values()
                .filter(|n| n.up && !n.hung)
                .map(|n| n.wake)
                .min();
            let next_store = self.store_deadline();
            let Some(next) = [next_packet, next_tick, next_store]
                .into_iter()
                .flatten()
                .min()
            else {
                break;
            };
            if next > t {
                break;
            }
            self.now = next.max(self.now);
            // Deliver everything due, in send order.
            let (due, rest): (Vec<Packet>, Vec<Packet>) = std::mem::take(&mut self.in_flight)
                .into_iter()
                .partition(|p| p.at <= self.now);
            self.in_flight = rest;
            for p in due {
                self.deliver(p);
            }
            self.run_store();
            let names: Vec<String> = self.nodes.keys().cloned().collect();
            for name in names {
                let due = self
                    .nodes
                    .get(&name)
                    .is_some_and(|n| n.up && !n.hung && n.wake <= self.now);
                if due {
                    self.input(&name, Input::Tick);
                }
            }
        }
        self.now = self.now.max(t);
    }

    /// Advances time by `d`.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now.plus(d));
    }

    fn deliver(&mut self, p: Packet) {
        if self
            .cuts
            .contains(&(p.from.clone(), p.to.clone(), p.link.0))
        {
            return;
        }
        if self.loss_permille > 0 && self.random_permille() < self.loss_permille {
            return;
        }
        let Some(n) = self.nodes.get_mut(&p.to) else {
            return;
        };
        if !n.up || n.hung {
            return;
        }
        // The sim's clock doubles as the wall clock: its epochs (1, 2, ...)
        // are never ahead of it by more than `wire::MAX_EPOCH_AHEAD`.
        let input = match n.codec.open(&p.bytes, self.now.0) {
            Ok(envelope) => Input::Received {
                link: p.link,
                envelope,
            },
            Err(e) => match e.reject_reason() {
                Some(reason) => Input::Rejected {
                    link: p.link,
                    reason,
                    claimed_sender: None,
                    count: 1,
                },
                None => return,
            },
        };
        self.input(&p.to, input);
    }

    /// Cuts `link` between `a` and `b`, both ways.
    pub fn cut(&mut self, a: &str, b: &str, link: u8) {
        self.cuts.insert((a.to_owned(), b.to_owned(), link));
        self.cuts.insert((b.to_owned(), a.to_owned(), link));
    }

    /// Cuts `link` from `a` to `b` only (one-way failure).
    pub fn cut_one_way(&mut self, a: &str, b: &str, link: u8) {
        self.cuts.insert((a.to_owned(), b.to_owned(), link));
    }

    /// Cuts every link between `a` and every other node.
    pub fn isolate(&mut self, a: &str) {
        let others: Vec<String> = self.nodes.keys().filter(|n| *n != a).cloned().collect();
        let links = self.nodes.get(a).map_or(0, |n| n.config.links.len());
        for o in others {
            for l in 0..links {
                self.cut(a, &o, l as u8);
            }
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cuts.clear();
    }

    /// Drops this share of datagrams (per mille), chosen by the seeded RNG.
    pub fn set_loss(&mut self, permille: u32) {
        self.loss_permille = permille.min(1000);
    }

    /// The process of `name` dies (kill -9): it stops at once, and every
    /// peer's agent sees its connection close.
    pub fn crash(&mut self, name: &str) {
        let peers = match self.nodes.get_mut(name) {
            Some(n) => {
                n.up = false;
                // Whatever it held, the OS frees when the process dies
                // (bind mode) — PR_SET_PDEATHSIG stops the service.
                n.vips.clear();
                n.suspended.clear();
                n.service = false;
                n.config.peers.clone()
            }
            None => return,
        };
        for p in peers {
            self.input(
                &p,
                Input::PeerConnectionClosed {
                    peer: name.to_owned(),
                },
            );
        }
    }

    /// The process of `name` stops (SIGSTOP): silent, connections stay open.
    pub fn hang(&mut self, name: &str) {
        if let Some(n) = self.nodes.get_mut(name) {
            n.hung = true;
        }
    }

    /// SIGCONT after [`Sim::hang`]: its overdue timer fires at once.
    pub fn resume(&mut self, name: &str) {
        if let Some(n) = self.nodes.get_mut(name) {
            n.hung = false;
        }
        self.input(name, Input::Tick);
    }

    /// Clean shutdown of `name` (goodbye sent).
    pub fn shutdown(&mut self, name: &str) -> Vec<Output> {
        let out = self.input(name, Input::Shutdown);
        if let Some(n) = self.nodes.get_mut(name) {
            n.up = false;
        }
        out
    }

    /// Starts `name` again (after crash or shutdown): a new boot epoch and
    /// its persisted state.
    pub fn restart(&mut self, name: &str) {
        let now = self.now;
        if let Some(n) = self.nodes.get_mut(name) {
            n.epoch += 1;
            if let Ok(node) = Node::new(n.config.clone(), n.persisted, now) {
                n.node = node;
            }
            n.codec = Codec::new(KEY, CLUSTER, &n.config.name, n.epoch);
            n.up = true;
            n.hung = false;
            n.wake = now;
            n.vips.clear();
            n.suspended.clear();
            n.service = false;
        }
        self.store_restarted(name);
    }

    /// Nodes holding `group`'s VIP, among running ones.
    pub fn holders(&self, group: GroupId) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.up && n.vips.contains(&group))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The node `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name).map(|n| &n.node)
    }

    /// Outputs logged for `name` since `since` (inclusive).
    pub fn outputs_since(&self, name: &str, since: Millis) -> Vec<Output> {
        self.log
            .iter()
            .filter(|(t, n, _)| *t >= since && n == name)
            .map(|(_, _, o)| o.clone())
            .collect()
    }
}
