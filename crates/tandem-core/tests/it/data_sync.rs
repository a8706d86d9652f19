//! Replicated data across faults (issue 14): over random sequences of
//! crash, restart, hang, partition and heal, a node never becomes active
//! while its data is behind the active's, and never takes the service from
//! a reachable active (preemption, handover) before it was caught up.
//!
//! The agent's sync receiver is modelled here: a standby that hears an
//! active both ways for `CATCH_UP` is caught up (`DataSync { true }`); a new
//! sync connection (a random `Behind` action) says `false`; a node that was
//! behind when it crashed comes back behind (the stale marker). Forcing
//! (`failover active --force`) is the only way out of `Behind` without a
//! catch-up, and it is not among the actions.

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tandem_core::node::DataState;
use tandem_core::sim::Sim;
use tandem_core::*;

const NAMES: [&str; 3] = ["a", "b", "c"];
const SLICE: Duration = Duration::from_millis(10);
const CATCH_UP: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
enum Action {
    Wait(u64),
    Crash(usize),
    Restart(usize),
    Hang(usize),
    Resume(usize),
    Cut(usize, usize),
    Heal,
    Behind(usize),
    Preempt(usize, bool),
    Standby(usize),
}

fn action(n: usize) -> impl Strategy<Value = Action> {
    let node = 0..n;
    prop_oneof![
        6 => (1u64..1500).prop_map(Action::Wait),
        2 => node.clone().prop_map(Action::Crash),
        3 => node.clone().prop_map(Action::Restart),
        1 => node.clone().prop_map(Action::Hang),
        1 => node.clone().prop_map(Action::Resume),
        2 => (node.clone(), node.clone()).prop_map(|(a, b)| Action::Cut(a, b)),
        2 => Just(Action::Heal),
        2 => node.clone().prop_map(Action::Behind),
        1 => (node.clone(), any::<bool>()).prop_map(|(i, on)| Action::Preempt(i, on)),
        1 => node.prop_map(Action::Standby),
    ]
}

fn configs(n: usize) -> Vec<NodeConfig> {
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
            c.replicated_data = true;
            // As the agent sets it for a service that drains itself.
            c.drain_before_preemption = true;
            c
        })
        .collect()
}

fn running(sim: &Sim, name: &str) -> bool {
    sim.nodes.get(name).is_some_and(|n| n.up && !n.hung)
}

fn active(sim: &Sim, name: &str) -> bool {
    running(sim, name) && sim.node(name).is_some_and(|n| n.is_active(GroupId(0)))
}

fn run(n: usize, actions: Vec<Action>) -> Result<(), TestCaseError> {
    let mut sim = Sim::new(configs(n), 3).expect("start the cluster");
    let mut cut: BTreeSet<(usize, usize)> = BTreeSet::new();
    // Since when each standby has heard an active both ways.
    let mut heard_since: BTreeMap<usize, Millis> = BTreeMap::new();
    // A node behind when it crashed restarts behind (the stale marker).
    let mut behind_at_crash: BTreeSet<usize> = BTreeSet::new();
    sim.run_for(Duration::from_secs(1));
    for a in actions {
        let mut wait = SLICE;
        match a {
            Action::Wait(ms) => wait = Duration::from_millis(ms),
            Action::Crash(i) => {
                let name = NAMES[i % n];
                if sim
                    .node(name)
                    .is_some_and(|x| x.data_state() == DataState::Behind)
                {
                    behind_at_crash.insert(i % n);
                }
                sim.crash(name);
            }
            Action::Restart(i) => {
                let name = NAMES[i % n];
                if !sim.nodes[name].up {
                    sim.restart(name);
                    if behind_at_crash.remove(&(i % n)) {
                        sim.input(name, Input::DataSync { in_sync: false });
                    }
                }
            }
            Action::Hang(i) => sim.hang(NAMES[i % n]),
            Action::Resume(i) => sim.resume(NAMES[i % n]),
            Action::Cut(x, y) => {
                let (x, y) = (x % n, y % n);
                for l in 0..1 {
                    sim.cut(NAMES[x], NAMES[y], l);
                }
                cut.insert((x, y));
                cut.insert((y, x));
            }
            Action::Heal => {
                sim.heal();
                cut.clear();
            }
            Action::Behind(i) => {
                let name = NAMES[i % n];
                if running(&sim, name) && !active(&sim, name) {
                    sim.input(name, Input::DataSync { in_sync: false });
                }
            }
            Action::Preempt(i, on) => {
                sim.command(NAMES[i % n], Command::HaPreempt(on));
            }
            Action::Standby(i) => {
                sim.command(NAMES[i % n], Command::FailoverStandby);
            }
        }
        let end = sim.now.plus(wait);
        while sim.now < end {
            // The model's catch-up: a standby that hears an active.
            for (y, name) in NAMES.iter().copied().enumerate().take(n) {
                let hears_active = (0..n).any(|x| {
                    x != y
                        && active(&sim, NAMES[x])
                        && !cut.contains(&(x, y))
                        && running(&sim, name)
                });
                if !hears_active || active(&sim, name) {
                    heard_since.remove(&y);
                    continue;
                }
                let since = *heard_since.entry(y).or_insert(sim.now);
                let state = sim.node(name).map(Node::data_state);
                if sim.now.since(since) >= CATCH_UP && state != Some(DataState::InSync) {
                    sim.input(name, Input::DataSync { in_sync: true });
                }
            }
            let before: Vec<(bool, Option<DataState>)> = (0..n)
                .map(|i| {
                    (
                        active(&sim, NAMES[i]),
                        sim.node(NAMES[i]).map(Node::data_state),
                    )
                })
                .collect();
            let from = sim.now;
            sim.run_until(sim.now.plus(SLICE).min(end));
            for (i, (was_active, state)) in before.into_iter().enumerate() {
                if was_active || !active(&sim, NAMES[i]) {
                    continue;
                }
                prop_assert!(
                    state != Some(DataState::Behind),
                    "{} became active at {} while behind",
                    NAMES[i],
                    sim.now
                );
                if state == Some(DataState::Unverified) {
                    let by_request = sim.outputs_since(NAMES[i], from).iter().any(|o| {
                        matches!(
                            o,
                            Output::Event(Event::RoleChanged {
                                to: EffectiveRole::Active,
                                reason: Reason::HandoverAccepted { .. },
                                ..
                            })
                        )
                    });
                    prop_assert!(
                        !by_request,
                        "{} took a handover at {} before it was caught up",
                        NAMES[i],
                        sim.now
                    );
                }
            }
        }
    }
    for (t, node, o) in &sim.log {
        if let Output::Event(Event::RoleChanged {
            from, to, reason, ..
        }) = o
        {
            prop_assert!(
                *reason != Reason::Reevaluated,
                "{node} at {t}: {from} -> {to} without a reason"
            );
        }
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("TANDEM_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn never_active_while_behind_pair(actions in prop::collection::vec(action(2), 1..30)) {
        run(2, actions)?;
    }

    #[test]
    fn never_active_while_behind_three_nodes(actions in prop::collection::vec(action(3), 1..30)) {
        run(3, actions)?;
    }
}

/// The first scenario, deterministic: the primary crashes, the
/// secondary serves, the primary restarts with preemption on. It must not
/// take the service back before it was caught up, then must, after its
/// peer drained.
#[test]
fn a_returning_primary_waits_for_its_catch_up_then_preempts() {
    let mut sim = Sim::new(configs(2), 1).expect("start the pair");
    sim.run_for(Duration::from_secs(2));
    sim.input("b", Input::DataSync { in_sync: true });
    assert_eq!(sim.holders(GroupId(0)), vec!["a".to_string()]);
    sim.crash("a");
    sim.run_for(Duration::from_millis(50));
    assert_eq!(sim.holders(GroupId(0)), vec!["b".to_string()]);
    sim.restart("a");
    sim.run_for(Duration::from_secs(3));
    assert_eq!(sim.holders(GroupId(0)), vec!["b".to_string()]);
    let a = sim.node("a").expect("look up node a");
    assert_eq!(a.effective_role(sim.now), EffectiveRole::Syncing);
    let caught_up = sim.now;
    sim.input("a", Input::DataSync { in_sync: true });
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.holders(GroupId(0)), vec!["a".to_string()]);
    // b drained its sessions before it handed the service back.
    let out = sim.outputs_since("b", caught_up);
    let drain = out
        .iter()
        .position(|o| matches!(o, Output::DrainForHandover { to, .. } if to == "a"));
    let handover = out.iter().position(|o| {
        matches!(
            o,
            Output::Event(Event::HandoverStarted {
                cause: HandoverCause::Preemption,
                ..
            })
        )
    });
    assert!(drain.is_some() && drain < handover, "{out:#?}");
}
