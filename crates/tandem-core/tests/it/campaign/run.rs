//! One plan carried out on the in-memory cluster, written down as a
//! `tandem_chaos::History` exactly as the real `tandem chaos` campaign
//! would write it: client operations, deliveries at the sink, every role
//! change, the faults, the final heal and the settling snapshots.
//!
//! Role changes are taken from the sim's output log, so a node that held
//! the VIP for a single millisecond is seen doing so, and a node that
//! stops taking clients is recorded as taking them up to that instant:
//! the dual-active checker (which counts only between two observations
//! that both saw a node accepting) then measures what happened, not what
//! a sampler happened to catch. Every node is also polled every 100 ms,
//! for what changes with time alone.

use std::collections::{BTreeMap, BTreeSet};

use tandem_chaos::{Event, History, Outcome, Phase};
use tandem_core::sim::{Sim, SimStore};
use tandem_core::{Command, Coordination, EffectiveRole, GroupId, Millis, NodeConfig, Output};

use super::plan::{Kind, Mode, Plan, SplitMix, Target};

/// The one failover group of these clusters.
pub const G: GroupId = GroupId(0);
/// The client sends one message this often (sim time).
pub const CLIENT_EVERY_MS: u64 = 10;
/// How often the settling cluster is looked at as a whole (and every
/// node's role polled, for what changes with time alone).
pub const SNAPSHOT_EVERY_MS: u64 = 100;
/// After the cluster first settled, how long the run goes on: a cluster
/// that settles and then splits again is caught within it.
pub const SETTLED_FOR_MS: u64 = 200;

const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

/// The cluster of a plan: the first node primary, the others secondaries
/// in falling priority, preemption on (so restarts provoke handovers).
fn configs(plan: &Plan) -> Vec<NodeConfig> {
    let coordination = match plan.mode {
        Mode::Store => Coordination::Store,
        Mode::Peers => Coordination::Peers,
    };
    crate::common::ranked_configs(&NAMES[..plan.nodes], coordination, true)
}

/// A fault in force, with the nodes it was resolved to when it started.
#[derive(Debug, Clone)]
struct InForce {
    index: usize,
    kind: Kind,
    target: String,
    other: String,
    loss_permille: u32,
}

/// What a node was last recorded as.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    role: String,
    epoch: u64,
    accepting: bool,
}

/// The run in progress.
struct Campaign<'p> {
    plan: &'p Plan,
    sim: Sim,
    names: Vec<String>,
    history: History,
    /// Which of several serving nodes the client reaches (only drawn when
    /// there are several).
    client_rng: SplitMix,
    in_force: Vec<InForce>,
    cuts: BTreeSet<(String, String)>,
    store_cuts: BTreeSet<String>,
    /// Per node: VIP held and service up, replayed from the output log.
    holds: BTreeMap<String, (bool, bool, bool)>,
    seen: BTreeMap<String, Seen>,
    ops: u64,
    /// Nodes that produced outputs since they were last observed.
    touched: BTreeSet<String>,
    /// Print every output (`TANDEM_SIM_TRACE`).
    trace: bool,
}

/// Carries out `plan` and returns its history. `seed` also seeds the
/// sim's packet loss, so the run depends on nothing else. The settling
/// phase lasts until [`SETTLED_FOR_MS`] after the cluster first settled,
/// and at most `settle_max_ms` (past the convergence bound, so that a
/// cluster that never settles is seen not to).
pub fn run(plan: &Plan, settle_max_ms: u64) -> History {
    run_keeping_sim(plan, settle_max_ms).0
}

/// [`run`], also handing back the sim as it ended (for a replay to show
/// what each node thought).
pub fn run_keeping_sim(plan: &Plan, settle_max_ms: u64) -> (History, Sim) {
    let sim = Sim::new(configs(plan), plan.seed).expect("the campaign's configs are valid");
    let sim = match plan.mode {
        Mode::Store => sim.with_store(SimStore::new()),
        Mode::Peers => sim,
    };
    let names: Vec<String> = NAMES[..plan.nodes].iter().map(|n| n.to_string()).collect();
    let mut c = Campaign {
        plan,
        sim,
        holds: names
            .iter()
            .map(|n| (n.clone(), (false, false, false)))
            .collect(),
        names,
        history: History::new(),
        client_rng: SplitMix::new(plan.seed ^ 0x00C1_1E47),
        in_force: Vec::new(),
        cuts: BTreeSet::new(),
        store_cuts: BTreeSet::new(),
        seen: BTreeMap::new(),
        ops: 0,
        touched: BTreeSet::new(),
        trace: std::env::var_os("TANDEM_SIM_TRACE").is_some(),
    };
    c.go(settle_max_ms);
    (c.history, c.sim)
}

impl Campaign<'_> {
    fn go(&mut self, settle_max_ms: u64) {
        // Starts before ends at the same instant would leave a fault of
        // length 0 in force; ends first, then starts, in plan order.
        let mut actions: Vec<(u64, bool, usize)> = Vec::new();
        for (i, f) in self.plan.faults.iter().enumerate() {
            actions.push((f.start_ms, true, i));
            actions.push((f.end_ms, false, i));
        }
        actions.sort_by_key(|&(t, start, i)| (t, start, i));
        let heal = self.plan.heal_ms();
        let mut end = heal + settle_max_ms;
        let mut next_action = 0;
        let mut next_client = 0;
        let mut next_poll = 0;
        let mut healed = false;
        loop {
            let action_at = actions.get(next_action).map_or(u64::MAX, |a| a.0);
            let t = next_client.min(action_at).min(next_poll).min(end);
            self.sim.run_until(Millis(t));
            self.drain_log();
            while let Some(&(at, start, i)) = actions.get(next_action)
                && at <= t
            {
                next_action += 1;
                if start {
                    self.start(i);
                } else {
                    self.end(i);
                }
                self.drain_log();
                self.sync_holds();
                self.touched.extend(self.names.iter().cloned());
            }
            if t >= next_poll {
                self.touched.extend(self.names.iter().cloned());
            }
            self.observe_touched();
            if !healed && next_action == actions.len() && t >= heal {
                healed = true;
                next_poll = t;
                self.history.push(t, Event::Heal);
            }
            if t >= next_poll {
                if healed && self.snapshot() {
                    end = end.min(t + SETTLED_FOR_MS);
                }
                next_poll = t + SNAPSHOT_EVERY_MS;
            }
            if t >= next_client {
                self.client_op();
                next_client = t + CLIENT_EVERY_MS;
            }
            if t >= end {
                break;
            }
        }
        for name in self.names.clone() {
            let failed = self.sim.nodes.get(&name).is_some_and(|n| {
                n.up && n.node.effective_role(self.sim.now) == EffectiveRole::Failed
            });
            self.history.push(
                end,
                Event::NodeEnd {
                    node: name,
                    panics: 0,
                    failed,
                    reason: failed.then(|| "local monitor failed".to_owned()),
                },
            );
        }
    }

    fn now_ms(&self) -> u64 {
        self.sim.now.0
    }

    /// Whether `name` takes clients: running, not stopped, VIP and
    /// service, and its listener not suspended for a planned handover.
    fn serving(&self, name: &str) -> bool {
        self.sim.nodes.get(name).is_some_and(|n| {
            n.up && !n.hung && n.vips.contains(&G) && n.service && !n.suspended.contains(&G)
        })
    }

    fn servers(&self) -> Vec<String> {
        self.names
            .iter()
            .filter(|n| self.serving(n))
            .cloned()
            .collect()
    }

    /// Replays the outputs since the last call, recording every change of
    /// a node's VIP-and-service at the millisecond it happened.
    fn drain_log(&mut self) {
        let log = std::mem::take(&mut self.sim.log);
        for (at, name, output) in log {
            if self.trace && !matches!(output, Output::Send { .. } | Output::Persist(_)) {
                eprintln!("{:>6} ms {name}: {output:?}", at.0);
            }
            if !self.touched.contains(&name) {
                self.touched.insert(name.clone());
            }
            let Some(h) = self.holds.get_mut(&name) else {
                continue;
            };
            match output {
                Output::ClaimVip { group } if group == G => h.0 = true,
                Output::ReleaseVip { group } if group == G => (h.0, h.2) = (false, false),
                Output::StartService => h.1 = true,
                Output::StopService => h.1 = false,
                Output::Event(tandem_core::Event::HandoverStarted { group, .. }) if group == G => {
                    h.2 = true
                }
                Output::Event(tandem_core::Event::HandoverFailed { group, .. }) if group == G => {
                    h.2 = false
                }
                _ => continue,
            }
            let (vip, service, suspended) = *h;
            let runs = self.sim.nodes.get(&name).is_some_and(|n| n.up && !n.hung);
            self.record(&name, at.0, runs && vip && service && !suspended);
        }
    }

    /// The campaign itself changed nodes (crash, restart, rogue VIP): the
    /// log does not say so, the nodes do.
    fn sync_holds(&mut self) {
        for (name, h) in &mut self.holds {
            if let Some(n) = self.sim.nodes.get(name) {
                *h = (n.vips.contains(&G), n.service, n.suspended.contains(&G));
            }
        }
    }

    /// Observes the nodes that did something (or that the campaign hit)
    /// since they were last observed.
    fn observe_touched(&mut self) {
        let t = self.now_ms();
        for name in std::mem::take(&mut self.touched) {
            let accepting = self.serving(&name);
            self.record(&name, t, accepting);
        }
    }

    /// Records `name`'s role at `t` if it differs from the last record.
    fn record(&mut self, name: &str, t: u64, accepting: bool) {
        let Some(n) = self.sim.nodes.get(name) else {
            return;
        };
        let now = self.sim.now;
        let (role, epoch) = if !n.up {
            ("down".to_owned(), 0)
        } else if n.hung {
            ("unreachable".to_owned(), 0)
        } else if accepting {
            ("active".to_owned(), n.node.fencing_epochs(now).0)
        } else {
            let role = match n.node.effective_role(now) {
                EffectiveRole::Active => EffectiveRole::Standby,
                r => r,
            };
            (role.to_string(), n.node.fencing_epochs(now).0)
        };
        let seen = Seen {
            role,
            epoch,
            accepting,
        };
        let before = self.seen.get(name);
        if before == Some(&seen) {
            return;
        }
        // The checker counts a node as serving only between two
        // observations that both say so: it took clients right up to this
        // instant, and says so before saying it stopped.
        if let Some(b) = before.filter(|b| b.accepting && !seen.accepting) {
            let closing = Event::Role {
                node: name.to_owned(),
                group: G.0,
                role: b.role.clone(),
                epoch: b.epoch,
                accepting: true,
            };
            self.history.push(t, closing);
        }
        self.history.push(
            t,
            Event::Role {
                node: name.to_owned(),
                group: G.0,
                role: seen.role.clone(),
                epoch: seen.epoch,
                accepting: seen.accepting,
            },
        );
        self.seen.insert(name.to_owned(), seen);
    }

    /// One message from the client to whichever node serves the group.
    fn client_op(&mut self) {
        let t = self.now_ms();
        self.ops += 1;
        let id = format!("m{}", self.ops);
        let servers = self.servers();
        let node = match servers.len() {
            0 => None,
            1 => servers.first().cloned(),
            n => servers.get(self.client_rng.index(n)).cloned(),
        };
        let Some(node) = node else {
            self.history.push(
                t,
                Event::Op {
                    client: 0,
                    id,
                    start_ms: t,
                    node: None,
                    outcome: Outcome::ConnectFailed,
                    reply: "connection refused".into(),
                },
            );
            return;
        };
        // With a store, what the node took is kept only if it held the
        // key then: the real leader never sees a stale holder's writes.
        let delivered = match self.plan.mode {
            Mode::Store => {
                self.sim.store().and_then(|s| s.leader(G)).map(|(n, _)| n) == Some(node.as_str())
            }
            Mode::Peers => true,
        };
        self.history.push(
            t,
            Event::Op {
                client: 0,
                id: id.clone(),
                start_ms: t,
                node: Some(node),
                outcome: Outcome::Acked,
                reply: "250 ok".into(),
            },
        );
        if delivered {
            self.history.push(t, Event::Delivered { id });
        }
    }

    /// Records the cluster as a whole; true when it is settled (one
    /// active, every node up and well).
    fn snapshot(&mut self) -> bool {
        let t = self.now_ms();
        let now = self.sim.now;
        let in_sync = self
            .sim
            .nodes
            .values()
            .all(|n| n.up && !n.hung && n.node.effective_role(now) != EffectiveRole::Failed);
        let servers = self.servers();
        let settled = in_sync && servers.len() == 1;
        self.history.push(
            t,
            Event::Cluster {
                actives: BTreeMap::from([(G.0.to_string(), servers)]),
                in_sync,
                report_clean: true,
            },
        );
        settled
    }

    fn start(&mut self, index: usize) {
        let f = self.plan.faults[index].clone();
        let n = self.names.len();
        let target = match f.target {
            Target::Serving => self
                .servers()
                .first()
                .cloned()
                .unwrap_or_else(|| self.names[f.other % n].clone()),
            Target::Node(i) => self.names[i % n].clone(),
            Target::Network => "network".to_owned(),
        };
        let target = if f.kind == Kind::RogueVip {
            // The bug needs a node that is up and does not serve.
            self.names
                .iter()
                .find(|m| !self.serving(m) && self.sim.nodes.get(*m).is_some_and(|x| x.up))
                .cloned()
                .unwrap_or(target)
        } else {
            target
        };
        let at = self.names.iter().position(|m| *m == target).unwrap_or(0);
        let other = self.names[(at + f.other.max(1)) % n].clone();
        self.history.push(
            self.now_ms(),
            Event::Fault {
                kind: f.kind.name().to_owned(),
                target: target.clone(),
                phase: Phase::Start,
            },
        );
        match f.kind {
            Kind::Switchover => {
                let command = if self.serving(&target) {
                    Command::FailoverStandby
                } else {
                    Command::FailoverActive
                };
                self.sim.command(&target, command);
            }
            Kind::RogueVip => {
                if let Some(node) = self.sim.nodes.get_mut(&target) {
                    node.vips.insert(G);
                    node.service = true;
                }
            }
            _ => {}
        }
        self.in_force.push(InForce {
            index,
            kind: f.kind,
            target,
            other,
            loss_permille: f.loss_permille,
        });
        self.apply_in_force();
    }

    fn end(&mut self, index: usize) {
        let Some(pos) = self.in_force.iter().position(|f| f.index == index) else {
            return;
        };
        let f = self.in_force.remove(pos);
        if f.kind == Kind::RogueVip
            && let Some(node) = self.sim.nodes.get_mut(&f.target)
        {
            node.vips.remove(&G);
            node.service = false;
        }
        self.apply_in_force();
        self.history.push(
            self.now_ms(),
            Event::Fault {
                kind: f.kind.name().to_owned(),
                target: f.target,
                phase: Phase::End,
            },
        );
    }

    /// Brings the sim to what the faults in force say, so that faults
    /// may overlap: a node stays down while any crash holds it down, a
    /// link stays cut while any isolation or one-way cut covers it.
    fn apply_in_force(&mut self) {
        let hits = |kinds: &[Kind]| -> BTreeSet<String> {
            self.in_force
                .iter()
                .filter(|f| kinds.contains(&f.kind))
                .map(|f| f.target.clone())
                .collect()
        };
        let down = hits(&[Kind::Crash, Kind::RestartInRecovery]);
        let hung = hits(&[Kind::Hang]);
        let store_cut = hits(&[Kind::IsolateWithStore, Kind::CutStore]);
        let isolated = hits(&[Kind::Isolate, Kind::IsolateWithStore]);
        let mut cuts = BTreeSet::new();
        for a in &isolated {
            for b in self.names.iter().filter(|b| *b != a) {
                cuts.insert((a.clone(), b.clone()));
                cuts.insert((b.clone(), a.clone()));
            }
        }
        for f in self.in_force.iter().filter(|f| f.kind == Kind::OneWay) {
            cuts.insert((f.target.clone(), f.other.clone()));
        }
        let loss = self
            .in_force
            .iter()
            .filter(|f| f.kind == Kind::Loss)
            .map(|f| f.loss_permille)
            .max()
            .unwrap_or(0);
        for name in self.names.clone() {
            let up = self.sim.nodes.get(&name).is_some_and(|n| n.up);
            if down.contains(&name) && up {
                self.sim.crash(&name);
            } else if !down.contains(&name) && !up {
                self.sim.restart(&name);
            }
            let Some(n) = self.sim.nodes.get(&name) else {
                continue;
            };
            if n.up && hung.contains(&name) && !n.hung {
                self.sim.hang(&name);
            } else if n.up && !hung.contains(&name) && n.hung {
                self.sim.resume(&name);
            }
        }
        if cuts != self.cuts {
            self.sim.heal();
            for (a, b) in &cuts {
                self.sim.cut_one_way(a, b, 0);
            }
            self.cuts = cuts;
        }
        for name in store_cut.difference(&self.store_cuts) {
            self.sim.cut_store(name);
        }
        for name in self.store_cuts.difference(&store_cut) {
            self.sim.heal_store(name);
        }
        self.store_cuts = store_cut;
        self.sim.set_loss(loss);
    }
}
