//! Properties over random event sequences on the in-memory cluster.
//!
//! Like openraft's simulation suite: safety checked after every 10 ms of
//! cluster time while faults happen, then a liveness phase with every fault
//! removed in which the cluster must heal. proptest prints the failing
//! sequence (and shrinks it); the sim itself is deterministic.

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tandem_core::sim::Sim;
use tandem_core::*;

const NAMES: [&str; 3] = ["a", "b", "c"];
const SLICE: Duration = Duration::from_millis(10);
/// Heartbeats flowing both ways must end a double active within one
/// interval plus delivery; allow a little more.
const SETTLE: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
enum Action {
    Wait(u64),
    Crash(usize),
    Restart(usize),
    Hang(usize),
    Resume(usize),
    Shutdown(usize),
    Cut(usize, usize, u8),
    CutOneWay(usize, usize, u8),
    Isolate(usize),
    Heal,
    Monitor(usize, bool),
    Cmd(usize, Command),
}

fn action(n: usize) -> impl Strategy<Value = Action> {
    let node = 0..n;
    prop_oneof![
        6 => (1u64..1500).prop_map(Action::Wait),
        1 => node.clone().prop_map(Action::Crash),
        2 => node.clone().prop_map(Action::Restart),
        1 => node.clone().prop_map(Action::Hang),
        1 => node.clone().prop_map(Action::Resume),
        1 => node.clone().prop_map(Action::Shutdown),
        1 => (node.clone(), node.clone(), 0u8..2).prop_map(|(a, b, l)| Action::Cut(a, b, l)),
        1 => (node.clone(), node.clone(), 0u8..2).prop_map(|(a, b, l)| Action::CutOneWay(a, b, l)),
        1 => node.clone().prop_map(Action::Isolate),
        2 => Just(Action::Heal),
        2 => (node.clone(), any::<bool>()).prop_map(|(i, h)| Action::Monitor(i, h)),
        3 => (node, prop_oneof![
            Just(Command::FailoverActive),
            Just(Command::FailoverStandby),
            Just(Command::HaRestore),
            Just(Command::HaRestart),
            any::<bool>().prop_map(Command::HaPreempt),
            (1u64..3000).prop_map(|ms| Command::HaHoldoff(Duration::from_millis(ms))),
        ]).prop_map(|(i, c)| Action::Cmd(i, c)),
    ]
}

fn configs(n: usize, preempt: bool, on_failure: OnFailure, active_active: bool) -> Vec<NodeConfig> {
    (0..n)
        .map(|i| {
            let peers: Vec<&str> = NAMES[..n]
                .iter()
                .copied()
                .filter(|p| *p != NAMES[i])
                .collect();
            let role = if i == 0 {
                ConfiguredRole::Primary
            } else {
                ConfiguredRole::Secondary
            };
            let mut c = NodeConfig::new(NAMES[i], role, 200 - 50 * i as u8, &peers);
            c.links = vec!["hb0".into(), "hb1".into()];
            c.preempt = preempt;
            c.preempt_delay = Duration::from_millis(500);
            c.holdoff_max = Duration::from_secs(2);
            c.on_failure = on_failure;
            if active_active {
                c.mode = Mode::ActiveActive;
                c.groups = vec![
                    FailoverGroup {
                        id: GroupId(1),
                        preferred: Some("a".into()),
                    },
                    FailoverGroup {
                        id: GroupId(2),
                        preferred: Some("b".into()),
                    },
                ];
            }
            c
        })
        .collect()
}

/// Tracks since when each pair of nodes has exchanged heartbeats both ways,
/// and double actives seen at the previous sample.
struct Checker {
    connected_since: BTreeMap<(usize, usize), Millis>,
    /// (pair, group) both active at the last sample. A planned handover is
    /// make-before-break: both hold the VIP for one message delay (1 ms
    /// here), so a double active is a fault only when it lasts from one
    /// 10 ms sample to the next.
    doubles: BTreeSet<((usize, usize), GroupId)>,
    groups: Vec<GroupId>,
}

impl Checker {
    fn connected(sim: &Sim, cuts: &dyn Fn(usize, usize, u8) -> bool, x: usize, y: usize) -> bool {
        let live = |i: usize| sim.nodes.get(NAMES[i]).is_some_and(|n| n.up && !n.hung);
        live(x) && live(y) && (0..2).any(|l| !cuts(x, y, l)) && (0..2).any(|l| !cuts(y, x, l))
    }

    /// Never two actives of a group while heartbeats flow both ways.
    fn check(
        &mut self,
        sim: &Sim,
        n: usize,
        cuts: &dyn Fn(usize, usize, u8) -> bool,
    ) -> Result<(), TestCaseError> {
        let pairs = (0..n).flat_map(|x| (x + 1..n).map(move |y| (x, y)));
        for (x, y) in pairs {
            if Self::connected(sim, cuts, x, y) {
                self.connected_since.entry((x, y)).or_insert(sim.now);
            } else {
                self.connected_since.remove(&(x, y));
            }
            let Some(since) = self.connected_since.get(&(x, y)) else {
                continue;
            };
            if sim.now.since(*since) < SETTLE {
                continue;
            }
            for g in &self.groups {
                let h = sim.holders(*g);
                let double = h.contains(&NAMES[x].to_string()) && h.contains(&NAMES[y].to_string());
                if !double {
                    self.doubles.remove(&((x, y), *g));
                    continue;
                }
                prop_assert!(
                    self.doubles.insert(((x, y), *g)),
                    "two actives of {g} at {} while connected since {since}",
                    sim.now
                );
            }
        }
        Ok(())
    }
}

/// A reachable, healthy active is only deposed by a command, preemption (a
/// handover), a split brain, its own failure or shutdown; and no role ever
/// changes without a stated reason.
fn check_reasons(sim: &Sim) -> Result<(), TestCaseError> {
    for (t, node, o) in &sim.log {
        if let Output::Event(Event::RoleChanged {
            from, to, reason, ..
        }) = o
        {
            prop_assert!(
                *reason != Reason::Reevaluated,
                "{node} at {t}: {from} -> {to} without a reason"
            );
            if *from == EffectiveRole::Active && *to != EffectiveRole::Active {
                let ok = matches!(
                    reason,
                    Reason::SplitBrain { .. }
                        | Reason::HandedOver { .. }
                        | Reason::TakenOver { .. }
                        | Reason::LocalMonitorFailed { .. }
                        | Reason::ShuttingDown
                        | Reason::HaRestarted
                );
                prop_assert!(ok, "{node} at {t} deposed: {reason:?}");
            }
        }
    }
    Ok(())
}

fn run_scenario(
    n: usize,
    preempt: bool,
    on_failure: OnFailure,
    active_active: bool,
    actions: Vec<Action>,
    restore_from: usize,
) -> Result<(), TestCaseError> {
    let cfgs = configs(n, preempt, on_failure, active_active);
    let groups: Vec<GroupId> = if active_active {
        vec![GroupId(1), GroupId(2)]
    } else {
        vec![GroupId(0)]
    };
    let mut sim = Sim::new(cfgs, 1).expect("start the cluster");
    // Cuts mirrored here so the checker knows which pairs are connected.
    let mut cuts = std::collections::BTreeSet::<(usize, usize, u8)>::new();
    let mut checker = Checker {
        connected_since: BTreeMap::new(),
        doubles: BTreeSet::new(),
        groups: groups.clone(),
    };
    sim.run_for(Duration::from_secs(1));
    for a in actions {
        let name = |i: usize| NAMES[i % n];
        let mut wait = SLICE;
        match a {
            Action::Wait(ms) => wait = Duration::from_millis(ms),
            Action::Crash(i) => sim.crash(name(i)),
            Action::Restart(i) => {
                if !sim.nodes[name(i)].up {
                    sim.restart(name(i));
                }
            }
            Action::Hang(i) => sim.hang(name(i)),
            Action::Resume(i) => sim.resume(name(i)),
            Action::Shutdown(i) => {
                sim.shutdown(name(i));
            }
            Action::Cut(x, y, l) => {
                sim.cut(name(x), name(y), l);
                cuts.insert((x % n, y % n, l));
                cuts.insert((y % n, x % n, l));
            }
            Action::CutOneWay(x, y, l) => {
                sim.cut_one_way(name(x), name(y), l);
                cuts.insert((x % n, y % n, l));
            }
            Action::Isolate(i) => {
                sim.isolate(name(i));
                for o in 0..n {
                    for l in 0..2 {
                        cuts.insert((i % n, o, l));
                        cuts.insert((o, i % n, l));
                    }
                }
            }
            Action::Heal => {
                sim.heal();
                cuts.clear();
            }
            Action::Monitor(i, healthy) => {
                sim.input(
                    name(i),
                    Input::LocalMonitor {
                        healthy,
                        detail: "probe".into(),
                    },
                );
            }
            Action::Cmd(i, c) => {
                sim.command(name(i), c);
            }
        }
        let end = sim.now.plus(wait);
        while sim.now < end {
            sim.run_until(sim.now.plus(SLICE).min(end));
            checker.check(&sim, n, &|x, y, l| cuts.contains(&(x, y, l)))?;
        }
    }
    check_reasons(&sim)?;

    // Liveness: remove every fault; the cluster must heal to one active per group.
    sim.heal();
    for name in &NAMES[..n] {
        sim.resume(name);
        if !sim.nodes[*name].up {
            sim.restart(name);
        }
        sim.input(
            name,
            Input::LocalMonitor {
                healthy: true,
                detail: String::new(),
            },
        );
        if sim.node(name).is_some_and(|x| x.status(sim.now).ha_stopped) {
            sim.command(name, Command::HaRestart);
        }
    }
    sim.run_for(Duration::from_secs(4));
    for g in &groups {
        prop_assert_eq!(
            sim.holders(*g).len(),
            1,
            "{} after healing: {:?}",
            g,
            sim.holders(*g)
        );
    }
    // `ha restore` from any node: every node back to its configured role.
    sim.command(NAMES[restore_from % n], Command::HaRestore);
    sim.run_for(Duration::from_secs(2));
    if active_active {
        prop_assert_eq!(sim.holders(GroupId(1)), vec!["a".to_string()]);
        prop_assert_eq!(sim.holders(GroupId(2)), vec!["b".to_string()]);
    } else {
        prop_assert_eq!(sim.holders(GroupId(0)), vec!["a".to_string()]);
        for name in &NAMES[1..n] {
            prop_assert_eq!(
                sim.node(name)
                    .expect("look up the node")
                    .effective_role(sim.now),
                EffectiveRole::Standby
            );
        }
    }
    check_reasons(&sim)?;
    Ok(())
}

fn on_failure() -> impl Strategy<Value = OnFailure> {
    prop::sample::select(vec![
        OnFailure::Off,
        OnFailure::Restore,
        OnFailure::BecomeSecondary,
    ])
}

/// Cases per property: modest by default to keep `cargo test` fast; set
/// `TANDEM_PROPTEST_CASES` for a deeper hunt.
pub(crate) fn cases(default: u32) -> u32 {
    std::env::var("TANDEM_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(48), ..ProptestConfig::default() })]

    #[test]
    fn random_faults_pair(
        preempt in any::<bool>(),
        of in on_failure(),
        actions in prop::collection::vec(action(2), 1..25),
        restore_from in 0usize..2,
    ) {
        run_scenario(2, preempt, of, false, actions, restore_from)?;
    }

    #[test]
    fn random_faults_three_nodes(
        preempt in any::<bool>(),
        of in on_failure(),
        actions in prop::collection::vec(action(3), 1..25),
        restore_from in 0usize..3,
    ) {
        run_scenario(3, preempt, of, false, actions, restore_from)?;
    }

    #[test]
    fn random_faults_active_active(
        preempt in any::<bool>(),
        of in on_failure(),
        actions in prop::collection::vec(action(2), 1..25),
        restore_from in 0usize..2,
    ) {
        run_scenario(2, preempt, of, true, actions, restore_from)?;
    }

    /// Failover happens within the hold time (at once on a crash or a clean
    /// shutdown), whatever the phase of the heartbeat cycle.
    #[test]
    fn failover_within_the_hold_time(phase in 0u64..400, fault in 0u8..3) {
        let cfgs = configs(2, true, OnFailure::BecomeSecondary, false);
        let mut sim = Sim::new(cfgs, 1).expect("start the cluster");
        sim.run_for(Duration::from_millis(2000 + phase));
        prop_assert_eq!(sim.holders(GroupId(0)), vec!["a".to_string()]);
        let t = sim.now;
        let bound = match fault {
            0 => { sim.crash("a"); Duration::from_millis(2) }
            1 => { sim.shutdown("a"); Duration::from_millis(2) }
            // 3 × 200 ms silent, the 1 ms "more than", and delivery.
            _ => { sim.hang("a"); Duration::from_millis(600 + 1 + 1) }
        };
        sim.run_until(t.plus(bound));
        prop_assert!(sim.holders(GroupId(0)).contains(&"b".to_string()), "b not active {bound:?} after fault {fault}");
    }

    /// Holdoff is honoured for its duration (capped at holdoff_max) and
    /// then expires.
    #[test]
    fn holdoff_honoured_and_expires(holdoff_ms in 300u64..4000, gap_ms in 0u64..200) {
        let cfgs = configs(2, true, OnFailure::BecomeSecondary, false);
        let max = cfgs[1].holdoff_max;
        let mut sim = Sim::new(cfgs, 1).expect("start the cluster");
        sim.run_for(Duration::from_secs(2));
        let asked = Duration::from_millis(holdoff_ms);
        let out = sim.command("a", Command::HaHoldoff(asked));
        if asked > max {
            // The sender refuses too long a holdoff itself.
            let refused = out.iter().any(|o| matches!(o, Output::Refused { .. }));
            prop_assert!(refused);
            return Ok(());
        }
        // b hears it 1 ms later, and holds off until then + `asked`.
        let expiry = sim.now.plus(Duration::from_millis(1)).plus(asked);
        sim.run_for(Duration::from_millis(gap_ms));
        sim.shutdown("a");
        while sim.now < Millis(expiry.0 - 1) {
            sim.run_until(sim.now.plus(SLICE).min(Millis(expiry.0 - 1)));
            prop_assert!(sim.holders(GroupId(0)).is_empty(), "b took over during the holdoff at {}", sim.now);
        }
        sim.run_until(expiry.plus(Duration::from_millis(2)));
        prop_assert_eq!(sim.holders(GroupId(0)), vec!["b".to_string()]);
    }
}
