//! Quorum and fencing through a coordination store (`coordination =
//! "etcd"`), on the in-memory cluster with a simulated etcd: partitions,
//! crashes, hangs and a lost store, each checked every 5 ms of cluster time
//! against the rule that matters: a node serves a group only while the
//! store says it holds that group's key. Then the same over random fault
//! sequences (proptest).

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use tandem_core::sim::{Sim, SimStore};
use tandem_core::{Coordination, GroupId, Input, NodeConfig, StoreEvent};

const G: GroupId = GroupId(0);

fn store_configs(names: &[&str], preempt: bool) -> Vec<NodeConfig> {
    super::common::ranked_configs(names, Coordination::Store, preempt)
}

fn cluster(names: &[&str], preempt: bool, seed: u64) -> Sim {
    Sim::new(store_configs(names, preempt), seed)
        .expect("start the cluster")
        .with_store(SimStore::new())
}

/// The running, unfrozen nodes that hold the group's VIP.
fn serving(sim: &Sim) -> Vec<String> {
    sim.holders(G)
        .into_iter()
        .filter(|n| sim.nodes.get(n).is_some_and(|n| !n.hung))
        .collect()
}

/// What one run saw, sampled every 5 ms.
#[derive(Debug, Default)]
struct Watch {
    /// Samples with two or more serving nodes.
    double: u64,
    /// Samples where a serving node was not the store's leader.
    unleased: Vec<(u64, String)>,
    /// The store's epochs, in the order seen.
    epochs: Vec<u64>,
}

impl Watch {
    fn run(&mut self, sim: &mut Sim, span: Duration) {
        let end = sim.now.plus(span);
        while sim.now < end {
            sim.run_for(Duration::from_millis(5));
            let serving = serving(sim);
            // A planned handover is make-before-break: the old active
            // serves until it sees the new one serve (it yielded to it).
            let handing_over = |n: &str| {
                sim.node(n)
                    .and_then(|node| node.status(sim.now).groups.first().cloned())
                    .and_then(|g| g.yielded_to)
            };
            let planned = |n: &str| handing_over(n).is_some_and(|to| serving.contains(&to));
            if serving.len() > 1 && !serving.iter().any(|n| planned(n)) {
                self.double += 1;
            }
            let leader = sim.store().and_then(|s| s.leader(G));
            for n in &serving {
                if leader.map(|(l, _)| l) != Some(n.as_str()) && !planned(n) {
                    self.unleased.push((sim.now.0, n.clone()));
                }
            }
            if let Some((_, epoch)) = leader
                && self.epochs.last() != Some(&epoch)
            {
                self.epochs.push(epoch);
            }
        }
    }

    fn assert_safe(&self) {
        assert_eq!(self.double, 0, "two nodes served at once: {self:?}");
        assert!(self.unleased.is_empty(), "served without the key: {self:?}");
        assert!(
            self.epochs.windows(2).all(|w| w[0] < w[1]),
            "epochs went back: {:?}",
            self.epochs
        );
    }
}

fn settled(names: &[&str]) -> (Sim, Watch) {
    let mut sim = cluster(names, true, 7);
    let mut watch = Watch::default();
    watch.run(&mut sim, Duration::from_secs(3));
    assert_eq!(serving(&sim), ["a"], "the primary serves");
    (sim, watch)
}

/// Time until `who` serves, sampling every 5 ms up to `within`.
fn time_until_serving(sim: &mut Sim, watch: &mut Watch, who: &str, within: Duration) -> Duration {
    let start = sim.now;
    while serving(sim) != [who] {
        assert!(
            sim.now.since(start) < within,
            "{who} does not serve after {within:?}: {:?}",
            serving(sim)
        );
        watch.run(sim, Duration::from_millis(5));
    }
    sim.now.since(start)
}

#[test]
fn a_partition_between_peers_leaves_the_key_holder_alone_serving() {
    let (mut sim, mut watch) = settled(&["a", "b"]);
    // The sync channel's epochs: a serves under the key's, b knows it.
    let epoch = sim.store().and_then(|s| s.leader(G)).map(|(_, e)| e);
    let epochs = |sim: &Sim, n: &str| sim.node(n).map(|n| n.fencing_epochs(sim.now));
    assert_eq!(epochs(&sim, "a"), epoch.map(|e| (e, e)));
    assert_eq!(epochs(&sim, "b"), epoch.map(|e| (0, e)));
    // The peers lose each other but both still reach the store: with
    // peers alone, b would serve after the hold time.
    sim.isolate("a");
    watch.run(&mut sim, Duration::from_secs(10));
    assert_eq!(serving(&sim), ["a"]);
    sim.heal();
    watch.run(&mut sim, Duration::from_secs(3));
    assert_eq!(serving(&sim), ["a"]);
    watch.assert_safe();
}

#[test]
fn an_active_cut_from_everything_fences_itself_before_the_store_moves_the_key() {
    let (mut sim, mut watch) = settled(&["a", "b"]);
    let before = sim.store().and_then(|s| s.leader(G)).map(|(_, e)| e);
    sim.isolate("a");
    sim.cut_store("a");
    let took = time_until_serving(&mut sim, &mut watch, "b", Duration::from_secs(5));
    let ttl = SimStore::new().ttl;
    // b waits for a's lease to expire at the store: at most TTL plus one
    // renewal period, never less than the margin before it.
    assert!(took <= ttl + SimStore::new().renew_every, "took {took:?}");
    let a = sim.node("a").expect("a exists").status(sim.now);
    assert!(a.counters.self_fenced >= 1, "{:?}", a.counters);
    let after = sim.store().and_then(|s| s.leader(G)).map(|(_, e)| e);
    assert!(after > before, "the epoch grows: {before:?} → {after:?}");
    // a comes back: it does not serve, b keeps the key.
    sim.heal();
    sim.heal_store("a");
    watch.run(&mut sim, Duration::from_secs(3));
    watch.assert_safe();
}

#[test]
fn a_crashed_active_is_evicted_at_once_through_its_closed_connection() {
    let (mut sim, mut watch) = settled(&["a", "b"]);
    sim.crash("a");
    let took = time_until_serving(&mut sim, &mut watch, "b", Duration::from_secs(5));
    assert!(
        took <= Duration::from_millis(50),
        "proof of death, not the TTL: took {took:?}"
    );
    // The restarted primary gets its group back, by handover.
    sim.restart("a");
    time_until_serving(&mut sim, &mut watch, "a", Duration::from_secs(5));
    watch.assert_safe();
}

#[test]
fn a_hung_active_is_replaced_after_the_lease_and_fences_itself_when_it_wakes() {
    let (mut sim, mut watch) = settled(&["a", "b"]);
    sim.hang("a");
    let took = time_until_serving(&mut sim, &mut watch, "b", Duration::from_secs(5));
    let store = SimStore::new();
    assert!(took <= store.ttl + store.renew_every, "took {took:?}");
    sim.resume("a");
    // It wakes believing it serves; its first step fences it.
    assert!(
        !sim.holders(G).contains(&"a".to_string()),
        "a still holds the VIP"
    );
    watch.run(&mut sim, Duration::from_secs(3));
    watch.assert_safe();
}

#[test]
fn without_the_store_nobody_serves_and_all_recovers_when_it_returns() {
    let (mut sim, mut watch) = settled(&["a", "b", "c"]);
    for n in ["a", "b", "c"] {
        sim.cut_store(n);
    }
    let store = SimStore::new();
    watch.run(&mut sim, store.ttl);
    assert!(serving(&sim).is_empty(), "{:?}", serving(&sim));
    watch.run(&mut sim, Duration::from_secs(5));
    assert!(serving(&sim).is_empty(), "{:?}", serving(&sim));
    for n in ["a", "b", "c"] {
        sim.heal_store(n);
    }
    time_until_serving(&mut sim, &mut watch, "a", Duration::from_secs(5));
    watch.assert_safe();
}

#[test]
fn an_isolated_minority_primary_never_serves_beside_the_majority() {
    let (mut sim, mut watch) = settled(&["a", "b", "c"]);
    // a is cut from its peers and from the store (which the majority
    // side reaches): b, next in rank, takes over once a's lease ends.
    sim.isolate("a");
    sim.cut_store("a");
    time_until_serving(&mut sim, &mut watch, "b", Duration::from_secs(5));
    watch.run(&mut sim, Duration::from_secs(5));
    assert_eq!(serving(&sim), ["b"]);
    // On the heal the better-ranked a does not win by rank: it comes back
    // standby and (preemption on) is handed the group by the holder.
    sim.heal();
    sim.heal_store("a");
    watch.run(&mut sim, Duration::from_secs(5));
    watch.assert_safe();
}

#[test]
fn failsafe_keeps_the_active_while_every_peer_answers_and_only_then() {
    let mut configs = store_configs(&["a", "b"], true);
    for c in &mut configs {
        c.failsafe = true;
    }
    let mut sim = Sim::new(configs, 7)
        .expect("start the pair")
        .with_store(SimStore::new());
    let mut watch = Watch::default();
    watch.run(&mut sim, Duration::from_secs(3));
    assert_eq!(serving(&sim), ["a"]);
    // etcd gone for both: a keeps serving, b hears it and claims nothing.
    sim.cut_store("a");
    sim.cut_store("b");
    for _ in 0..100 {
        watch.run(&mut sim, Duration::from_millis(100));
        assert_eq!(serving(&sim), ["a"], "at {:?}", sim.now);
    }
    // etcd back: a takes its key again without a gap.
    sim.heal_store("a");
    sim.heal_store("b");
    for _ in 0..30 {
        watch.run(&mut sim, Duration::from_millis(100));
        assert_eq!(serving(&sim), ["a"], "at {:?}", sim.now);
    }
    assert_eq!(
        sim.store().and_then(|s| s.leader(G)).map(|(n, _)| n),
        Some("a")
    );
    // etcd gone and the peers apart: a cannot know b is not serving, so it
    // stands down; b cannot reach etcd, so nobody serves.
    sim.cut_store("a");
    sim.cut_store("b");
    sim.isolate("a");
    watch.run(&mut sim, Duration::from_secs(5));
    assert!(serving(&sim).is_empty(), "{:?}", serving(&sim));
    assert_eq!(watch.double, 0, "{watch:?}");
}

#[derive(Debug, Clone)]
enum Fault {
    Run(u16),
    Crash(usize),
    Restart(usize),
    Hang(usize),
    Resume(usize),
    Isolate(usize),
    CutStore(usize),
    HealStore(usize),
    Heal,
}

fn fault(n: usize) -> impl Strategy<Value = Fault> {
    prop_oneof![
        4 => (1u16..3000).prop_map(Fault::Run),
        1 => (0..n).prop_map(Fault::Crash),
        1 => (0..n).prop_map(Fault::Restart),
        1 => (0..n).prop_map(Fault::Hang),
        1 => (0..n).prop_map(Fault::Resume),
        1 => (0..n).prop_map(Fault::Isolate),
        1 => (0..n).prop_map(Fault::CutStore),
        1 => (0..n).prop_map(Fault::HealStore),
        1 => Just(Fault::Heal),
    ]
}

fn run_faults(
    names: &[&str],
    preempt: bool,
    seed: u64,
    faults: &[Fault],
) -> Result<(), TestCaseError> {
    let mut sim = cluster(names, preempt, seed);
    let mut watch = Watch::default();
    let mut own_epochs: BTreeMap<String, u64> = BTreeMap::new();
    watch.run(&mut sim, Duration::from_secs(2));
    for f in faults {
        match f {
            Fault::Run(ms) => watch.run(&mut sim, Duration::from_millis(u64::from(*ms))),
            Fault::Crash(i) => sim.crash(names[*i]),
            Fault::Restart(i) => {
                if !sim.nodes[names[*i]].up {
                    sim.restart(names[*i]);
                }
            }
            Fault::Hang(i) => sim.hang(names[*i]),
            Fault::Resume(i) => sim.resume(names[*i]),
            Fault::Isolate(i) => sim.isolate(names[*i]),
            Fault::CutStore(i) => sim.cut_store(names[*i]),
            Fault::HealStore(i) => sim.heal_store(names[*i]),
            Fault::Heal => sim.heal(),
        }
        // A node's own epoch, as its heartbeat would carry it, only grows.
        for name in names {
            let Some(n) = sim.node(name) else { continue };
            if let Some(epoch) = n.status(sim.now).groups.first().and_then(|g| g.epoch) {
                let last = own_epochs.entry(name.to_string()).or_default();
                prop_assert!(epoch >= *last, "{name}'s epoch went from {last} to {epoch}");
                *last = epoch;
            }
        }
        prop_assert_eq!(
            watch.double,
            0,
            "two nodes served at once after {:?}: {:?}",
            f,
            watch
        );
        prop_assert!(
            watch.unleased.is_empty(),
            "served without the key after {:?}: {:?}",
            f,
            watch
        );
    }
    // Once every fault is over, one node serves again.
    for name in names {
        if !sim.nodes[*name].up {
            sim.restart(name);
        }
        sim.resume(name);
        sim.heal_store(name);
    }
    sim.heal();
    watch.run(&mut sim, Duration::from_secs(6));
    prop_assert_eq!(
        serving(&sim).len(),
        1,
        "after the faults: {:?}",
        serving(&sim)
    );
    prop_assert!(
        watch.epochs.windows(2).all(|w| w[0] < w[1]),
        "{:?}",
        watch.epochs
    );
    prop_assert_eq!(watch.double, 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(super::properties::cases(64)))]

    /// Never two nodes serving, never one serving without the key, and
    /// epochs only grow, whatever happens to a pair and its store.
    #[test]
    fn a_pair_under_random_faults_never_serves_twice(
        seed in 1u64..1000,
        preempt in any::<bool>(),
        faults in prop::collection::vec(fault(2), 1..25),
    ) {
        run_faults(&["a", "b"], preempt, seed, &faults)?;
    }

    /// The same for three nodes.
    #[test]
    fn three_nodes_under_random_faults_never_serve_twice(
        seed in 1u64..1000,
        faults in prop::collection::vec(fault(3), 1..25),
    ) {
        run_faults(&["a", "b", "c"], true, seed, &faults)?;
    }
}

#[test]
fn with_replicated_data_only_a_standby_named_in_sync_takes_over_unless_forced() {
    let mut configs = store_configs(&["a", "b"], true);
    for c in &mut configs {
        c.replicated_data = true;
    }
    let mut sim = Sim::new(configs, 7)
        .expect("start the pair")
        .with_store(SimStore::new());
    let mut watch = Watch::default();
    watch.run(&mut sim, Duration::from_secs(2));
    // b is caught up by a, then falls behind: a took it out of `sync`
    // before acknowledging a commit without it.
    sim.input("b", Input::DataSync { in_sync: true });
    watch.run(&mut sim, Duration::from_secs(1));
    assert_eq!(serving(&sim), ["a"]);
    let sync = |members: &[&str]| {
        Input::Store(StoreEvent::Sync {
            revision: u64::MAX / 2,
            members: Some(members.iter().map(|m| m.to_string()).collect()),
        })
    };
    sim.input("b", sync(&["a"]));
    sim.crash("a");
    watch.run(&mut sim, Duration::from_secs(5));
    assert!(
        serving(&sim).is_empty(),
        "b took over without the data a acknowledged alone: {:?}",
        serving(&sim)
    );
    // The operator forces it, accepting what may be lost.
    sim.input("b", Input::Store(StoreEvent::WaiveSync));
    time_until_serving(&mut sim, &mut watch, "b", Duration::from_secs(5));
    watch.assert_safe();
}

#[test]
fn a_returning_primary_is_handed_the_group_only_once_the_sync_key_names_it() {
    let mut configs = store_configs(&["a", "b"], true);
    for c in &mut configs {
        c.replicated_data = true;
    }
    let mut sim = Sim::new(configs, 11)
        .expect("start the pair")
        .with_store(SimStore::new());
    let mut watch = Watch::default();
    sim.input("b", Input::DataSync { in_sync: true });
    watch.run(&mut sim, Duration::from_secs(2));
    assert_eq!(serving(&sim), ["a"]);
    let sync = |members: &[&str]| {
        Input::Store(StoreEvent::Sync {
            revision: u64::MAX / 2,
            members: Some(members.iter().map(|m| m.to_string()).collect()),
        })
    };
    // a crashes; b takes over and names only itself in `sync`.
    sim.crash("a");
    time_until_serving(&mut sim, &mut watch, "b", Duration::from_secs(5));
    for n in ["a", "b"] {
        sim.input(n, sync(&["b"]));
    }
    // a comes back and catches up; until `sync` names it, b keeps the
    // group (a could not take it: handing it over would leave nobody).
    sim.restart("a");
    sim.input("b", sync(&["b"]));
    sim.input("a", Input::DataSync { in_sync: true });
    watch.run(&mut sim, Duration::from_secs(5));
    assert_eq!(
        serving(&sim),
        ["b"],
        "b handed the group to a before `sync` named a"
    );
    // b names a in `sync`: the preemption goes ahead, and a serves.
    for n in ["a", "b"] {
        sim.input(n, sync(&["b", "a"]));
    }
    time_until_serving(&mut sim, &mut watch, "a", Duration::from_secs(10));
    watch.assert_safe();
}
