//! Tests of the fleet rollout: the knobs as the operator types them, the
//! wave order the seeds ask for (standbys before the active, the primary
//! last), a rollout walked action by action like the seeds' runbooks, and
//! properties over random fleets and random outcomes — every node in one
//! wave, nothing upgraded after a stop, a seed giving the same figures.

use std::time::Duration;

use proptest::prelude::*;
use tandem_core::{ConfiguredRole, EffectiveRole, GroupId, Mode};

use super::*;
use crate::cluster::{ClusterState, NodeState};

/// A healthy node; everything the wave order does not read is left as in
/// [`relay_fleet`].
fn node(
    name: &str,
    configured: ConfiguredRole,
    effective: EffectiveRole,
    priority: u8,
) -> NodeState {
    let mut node = relay_fleet(1).nodes.remove(0);
    node.name = name.to_string();
    node.configured = configured;
    node.effective = effective;
    node.priority = priority;
    node
}

/// An active-passive cluster: `a` primary and active, the others
/// secondaries on standby, priority falling with the name (`b` 99, `c` 98…).
fn active_passive(names: &[&str]) -> ClusterState {
    let nodes = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            if i == 0 {
                node(name, ConfiguredRole::Primary, EffectiveRole::Active, 200)
            } else {
                let priority = 100u8.saturating_sub(u8::try_from(i).unwrap_or(99));
                node(
                    name,
                    ConfiguredRole::Secondary,
                    EffectiveRole::Standby,
                    priority,
                )
            }
        })
        .collect();
    ClusterState {
        mode: Mode::ActivePassive,
        groups: vec![GroupId(0)],
        nodes,
        sync_clean: Some(true),
    }
}

fn policy(batch: &str, canary: usize, max_failed: usize) -> RolloutPolicy {
    RolloutPolicy {
        batch: batch.parse().expect("parse the test batch"),
        canary,
        max_failed,
        ..RolloutPolicy::default()
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn upgrade(wave: usize, kind: WaveKind, nodes: &[&str]) -> Vec<FleetAction> {
    vec![FleetAction::Upgrade {
        wave,
        kind,
        nodes: names(nodes),
    }]
}

fn healthy(node: &str) -> FleetObservation {
    FleetObservation::NodeHealthy {
        node: node.to_string(),
    }
}

fn failed(node: &str) -> FleetObservation {
    FleetObservation::NodeFailed {
        node: node.to_string(),
        reason: "boot fell back to the previous slot".to_string(),
    }
}

// ---- the knobs as typed ----

#[test]
fn batches_parse_as_nodes_or_a_share() {
    assert_eq!("10".parse::<Batch>().expect("parse 10"), Batch::Nodes(10));
    assert_eq!(
        "10%".parse::<Batch>().expect("parse 10%"),
        Batch::Percent(10)
    );
    assert_eq!(
        " 25 % ".parse::<Batch>().expect("parse 25 %"),
        Batch::Percent(25)
    );
    assert_eq!(
        "100%".parse::<Batch>().expect("parse 100%"),
        Batch::Percent(100)
    );
    assert_eq!(Batch::Percent(10).to_string(), "10%");
    assert_eq!(Batch::Nodes(3).to_string(), "3");
}

#[test]
fn bad_batches_say_what_to_write() {
    for text in ["ten", "-1", "1.5", "%", "", "10%%", "1e3"] {
        let error = text
            .parse::<Batch>()
            .expect_err("refuse an unreadable batch");
        assert!(
            matches!(error, PlanError::BatchUnreadable { .. }),
            "{text}: {error}"
        );
        assert!(error.to_string().contains("such as `10%`"), "{error}");
    }
    for text in ["0%", "101%", "250%", "99999999999999999999%"] {
        let error = text
            .parse::<Batch>()
            .expect_err("refuse a share out of range");
        // The last is too big even for u64: unreadable is fair for it.
        assert!(
            matches!(
                error,
                PlanError::BatchShareOutOfRange { .. } | PlanError::BatchUnreadable { .. }
            ),
            "{text}: {error}"
        );
    }
    assert!(matches!("0".parse::<Batch>(), Err(PlanError::ZeroBatch)));
    assert!(matches!(
        plan_waves(
            &relay_fleet(3),
            &RolloutPolicy {
                batch: Batch::Percent(0),
                ..RolloutPolicy::default()
            }
        ),
        Err(PlanError::BatchShareOutOfRange { .. })
    ));
}

#[test]
fn a_share_rounds_up_to_whole_nodes() {
    assert_eq!(Batch::Percent(10).nodes_of(1000), 100);
    assert_eq!(Batch::Percent(10).nodes_of(5), 1);
    assert_eq!(Batch::Percent(15).nodes_of(10), 2);
    assert_eq!(Batch::Percent(100).nodes_of(3), 3);
    assert_eq!(Batch::Nodes(7).nodes_of(3), 7);
}

#[test]
fn policies_go_to_the_journal_as_typed() {
    let policy = policy("10%", 5, 2);
    let text = serde_json::to_string(&policy).expect("serialize the policy");
    assert!(text.contains(r#""batch":"10%""#), "{text}");
    let back: RolloutPolicy = serde_json::from_str(&text).expect("deserialize the policy");
    assert_eq!(back, policy);
    let bad = text.replace("10%", "0%");
    assert!(serde_json::from_str::<RolloutPolicy>(&bad).is_err());
}

// ---- wave order ----

#[test]
fn active_passive_waves_put_standbys_first_and_the_active_last() {
    let cluster = active_passive(&["a", "b", "c", "d", "e"]);
    let waves = plan_waves(&cluster, &policy("2", 1, 0)).expect("plan the waves");
    let shape: Vec<(WaveKind, Vec<String>)> =
        waves.into_iter().map(|w| (w.kind, w.nodes)).collect();
    // Lower priority first, as the planner orders standbys: e 96, d 97, ...
    assert_eq!(
        shape,
        vec![
            (WaveKind::Canary, names(&["e"])),
            (WaveKind::Batch, names(&["d", "c"])),
            (WaveKind::Batch, names(&["b"])),
            (WaveKind::Final, names(&["a"])),
        ]
    );
}

#[test]
fn after_a_failover_the_new_active_is_kept_for_last() {
    let mut cluster = active_passive(&["a", "b", "c"]);
    cluster.nodes[0].effective = EffectiveRole::Standby;
    cluster.nodes[1].effective = EffectiveRole::Active;
    let waves = plan_waves(&cluster, &policy("10", 0, 0)).expect("plan the waves");
    assert_eq!(waves.last().map(|w| w.nodes.clone()), Some(names(&["b"])));
    assert_eq!(waves[0].nodes, names(&["c", "a"]));
}

#[test]
fn active_passive_needs_one_active() {
    let mut cluster = active_passive(&["a", "b"]);
    cluster.nodes[1].effective = EffectiveRole::Active;
    let error = plan_waves(&cluster, &RolloutPolicy::default()).expect_err("two actives");
    assert!(
        error
            .to_string()
            .contains("exactly one active node, found a, b"),
        "{error}"
    );
    assert!(matches!(
        plan_waves(
            &ClusterState {
                nodes: vec![],
                ..cluster
            },
            &RolloutPolicy::default()
        ),
        Err(PlanError::NoNodes)
    ));
}

#[test]
fn a_fleet_of_relays_goes_canaries_then_tenths_then_the_primary() {
    let waves = plan_waves(&relay_fleet(1000), &policy("10%", 5, 0)).expect("plan the waves");
    let sizes: Vec<(WaveKind, usize)> = waves.iter().map(|w| (w.kind, w.nodes.len())).collect();
    let mut expected = vec![(WaveKind::Canary, 5)];
    expected.extend(std::iter::repeat_n((WaveKind::Batch, 100), 9));
    expected.push((WaveKind::Batch, 94));
    expected.push((WaveKind::Final, 1));
    assert_eq!(sizes, expected);
    assert_eq!(
        waves[0].nodes,
        names(&[
            "relay-0002",
            "relay-0003",
            "relay-0004",
            "relay-0005",
            "relay-0006"
        ])
    );
    assert_eq!(
        waves.last().map(|w| w.nodes.clone()),
        Some(names(&["relay-0001"]))
    );
}

#[test]
fn a_batch_of_the_whole_fleet_still_leaves_one_node_serving() {
    let mut cluster = relay_fleet(4);
    cluster.nodes[0].configured = ConfiguredRole::Secondary; // no primary
    let waves = plan_waves(&cluster, &policy("100%", 0, 0)).expect("plan the waves");
    assert!(waves.iter().all(|w| w.nodes.len() <= 3), "{waves:?}");
}

// ---- the rollout, action by action ----

#[test]
fn canaries_pause_until_resumed_then_batches_run_to_done() {
    let cluster = active_passive(&["a", "b", "c", "d"]);
    let mut rollout = FleetRollout::plan(&cluster, policy("2", 1, 0)).expect("plan the rollout");
    assert_eq!(rollout.next(0), upgrade(0, WaveKind::Canary, &["d"]));
    assert!(matches!(
        rollout.next(10)[..],
        [FleetAction::Wait {
            until_ms: Some(300_000),
            ..
        }]
    ));
    rollout.observe(90_000, healthy("d"));
    let paused = rollout.next(90_000);
    let [FleetAction::Paused { message }] = &paused[..] else {
        panic!("expected a pause after the canaries, got {paused:?}");
    };
    assert!(
        message.contains("tandem upgrade resume")
            && message.contains("other 3 node(s) in 2 wave(s)"),
        "{message}"
    );
    // Time alone does not end a pause.
    assert_eq!(rollout.next(10_000_000), paused);
    rollout.observe(10_000_000, FleetObservation::Resume);
    assert_eq!(
        rollout.next(10_000_000),
        upgrade(1, WaveKind::Batch, &["c", "b"])
    );
    rollout.observe(10_050_000, healthy("c"));
    assert!(matches!(
        rollout.next(10_050_000)[..],
        [FleetAction::Wait { .. }]
    ));
    rollout.observe(10_060_000, healthy("b"));
    assert_eq!(
        rollout.next(10_060_000),
        upgrade(2, WaveKind::Final, &["a"])
    );
    rollout.observe(10_100_000, healthy("a"));
    let done = rollout.next(10_100_000);
    assert!(
        matches!(&done[..], [FleetAction::Done { summary }] if summary.contains("4 of 4 node(s) upgraded in 3 wave(s), 0 failed")),
        "{done:?}"
    );
    assert_eq!(rollout.status(), &RolloutStatus::Done);
}

#[test]
fn auto_promotion_waits_for_the_canaries_healthy_time() {
    let mut policy = policy("10", 2, 0);
    policy.auto_promote = Some(Duration::from_secs(60));
    let mut rollout = FleetRollout::plan(&relay_fleet(5), policy).expect("plan the rollout");
    assert_eq!(
        rollout.next(0),
        upgrade(0, WaveKind::Canary, &["relay-0002", "relay-0003"])
    );
    rollout.observe(1_000, healthy("relay-0002"));
    rollout.observe(5_000, healthy("relay-0003"));
    assert!(matches!(
        rollout.next(5_000)[..],
        [FleetAction::Wait {
            until_ms: Some(65_000),
            ..
        }]
    ));
    assert!(matches!(
        rollout.next(64_999)[..],
        [FleetAction::Wait { .. }]
    ));
    assert_eq!(
        rollout.next(65_000),
        upgrade(1, WaveKind::Batch, &["relay-0004", "relay-0005"])
    );
}

#[test]
fn a_resume_while_the_canaries_upgrade_is_ignored() {
    let mut rollout =
        FleetRollout::plan(&relay_fleet(4), policy("10", 1, 0)).expect("plan the rollout");
    assert_eq!(
        rollout.next(0),
        upgrade(0, WaveKind::Canary, &["relay-0002"])
    );
    rollout.observe(1, FleetObservation::Resume);
    rollout.observe(2, healthy("relay-0002"));
    assert!(matches!(rollout.next(2)[..], [FleetAction::Paused { .. }]));
}

#[test]
fn a_failed_canary_within_the_budget_pauses_even_with_auto_promotion() {
    let mut policy = policy("10", 2, 1);
    policy.auto_promote = Some(Duration::from_secs(1));
    let mut rollout = FleetRollout::plan(&relay_fleet(5), policy).expect("plan the rollout");
    rollout.next(0);
    rollout.observe(1, healthy("relay-0002"));
    rollout.observe(2, failed("relay-0003"));
    assert!(matches!(
        rollout.next(10_000)[..],
        [FleetAction::Paused { .. }]
    ));
}

#[test]
fn one_failure_too_many_stops_and_nothing_more_is_upgraded() {
    let mut rollout =
        FleetRollout::plan(&relay_fleet(6), policy("2", 0, 1)).expect("plan the rollout");
    assert_eq!(
        rollout.next(0),
        upgrade(0, WaveKind::Batch, &["relay-0002", "relay-0003"])
    );
    rollout.observe(10, failed("relay-0002"));
    rollout.observe(20, healthy("relay-0003"));
    assert_eq!(
        rollout.next(20),
        upgrade(1, WaveKind::Batch, &["relay-0004", "relay-0005"])
    );
    rollout.observe(30, failed("relay-0005"));
    // The second failure is one more than --max-failed 1: stopped at once,
    // though relay-0004 still upgrades.
    let stopped = rollout.next(30);
    assert!(
        matches!(&stopped[..], [FleetAction::Stopped { message }]
            if message.contains("2 node(s) failed (relay-0002, relay-0005), more than --max-failed 1")
            && message.contains("tandem upgrade run")),
        "{stopped:?}"
    );
    rollout.observe(40, healthy("relay-0004"));
    // Its late report is recorded; the rollout stays stopped.
    assert_eq!(rollout.next(50), stopped);
    assert_eq!(rollout.progress("relay-0006"), Some(&NodeProgress::Waiting));
    assert_eq!(rollout.progress("relay-0004"), Some(&NodeProgress::Healthy));
}

#[test]
fn the_health_deadline_fails_the_nodes_still_upgrading() {
    let mut rollout =
        FleetRollout::plan(&relay_fleet(4), policy("3", 0, 5)).expect("plan the rollout");
    rollout.next(1_000);
    rollout.observe(2_000, healthy("relay-0002"));
    assert!(matches!(
        rollout.next(2_000)[..],
        [FleetAction::Wait {
            until_ms: Some(301_000),
            ..
        }]
    ));
    // A late report after the deadline changes nothing.
    assert_eq!(
        rollout.next(301_000),
        upgrade(1, WaveKind::Final, &["relay-0001"])
    );
    rollout.observe(301_500, healthy("relay-0003"));
    assert_eq!(rollout.failed(), 2);
    assert!(matches!(
        rollout.progress("relay-0003"),
        Some(NodeProgress::Failed { reason }) if reason.contains("health deadline of 300s")
    ));
    // The agent's own timer says the same for one node.
    rollout.observe(
        301_600,
        FleetObservation::HealthDeadlinePassed {
            node: "relay-0001".into(),
        },
    );
    assert_eq!(rollout.failed(), 3);
}

#[test]
fn auto_revert_waits_for_the_wave_then_reverts_standbys_first() {
    let cluster = active_passive(&["a", "b", "c", "d"]);
    let mut policy = policy("10", 0, 0);
    policy.auto_revert = true;
    let mut rollout = FleetRollout::plan(&cluster, policy).expect("plan the rollout");
    assert_eq!(
        rollout.next(0),
        upgrade(0, WaveKind::Batch, &["d", "c", "b"])
    );
    rollout.observe(10, healthy("d"));
    rollout.observe(20, failed("c"));
    // Stopped, but b still upgrades: the revert waits for it.
    assert!(matches!(rollout.status(), RolloutStatus::Stopping { .. }));
    assert!(matches!(rollout.next(20)[..], [FleetAction::Wait { .. }]));
    rollout.observe(30, healthy("b"));
    assert_eq!(
        rollout.next(30),
        vec![FleetAction::Revert {
            nodes: names(&["d", "b"])
        }]
    );
    assert!(matches!(
        rollout.next(31)[..],
        [FleetAction::Wait { until_ms: None, .. }]
    ));
    rollout.observe(40, FleetObservation::NodeReverted { node: "d".into() });
    rollout.observe(50, FleetObservation::NodeReverted { node: "b".into() });
    let reverted = rollout.next(50);
    assert!(
        matches!(&reverted[..], [FleetAction::Reverted { message }] if message.contains("standbys first")),
        "{reverted:?}"
    );
    assert_eq!(rollout.progress("a"), Some(&NodeProgress::Waiting));
}

#[test]
fn a_revert_with_nothing_upgraded_just_stops() {
    let mut policy = policy("10", 0, 0);
    policy.auto_revert = true;
    let mut rollout = FleetRollout::plan(&relay_fleet(2), policy).expect("plan the rollout");
    rollout.next(0);
    rollout.observe(5, failed("relay-0002"));
    let stopped = rollout.next(5);
    assert!(
        matches!(&stopped[..], [FleetAction::Stopped { message }] if message.contains("nothing to revert")),
        "{stopped:?}"
    );
}

#[test]
fn a_rollout_survives_the_journal() {
    let mut rollout =
        FleetRollout::plan(&relay_fleet(5), policy("2", 1, 0)).expect("plan the rollout");
    rollout.next(0);
    rollout.observe(5, healthy("relay-0002"));
    let text = serde_json::to_string(&rollout).expect("serialize the rollout");
    let mut back: FleetRollout = serde_json::from_str(&text).expect("deserialize the rollout");
    assert_eq!(back, rollout);
    assert_eq!(back.next(5), rollout.next(5));
}

// ---- the simulation ----

fn spec(nodes: usize, batch: &str, fail_rate: f64, seed: u64) -> SimulateSpec {
    SimulateSpec {
        nodes,
        policy: policy(batch, 0, 0),
        boot: Duration::from_secs(60),
        health: Duration::from_secs(30),
        fail_rate,
        seed,
        runs: 50,
    }
}

#[test]
fn a_flawless_fleet_takes_between_the_fastest_and_slowest_waves() {
    let report = simulate(&spec(100, "10%", 0.0, 7)).expect("simulate");
    assert_eq!(report.stop_chance, 0.0);
    // 99 secondaries in batches of 10, then the primary: 11 waves of
    // 90 s ± 20 %.
    assert_eq!(
        (report.waves, report.batch_nodes, report.canary_nodes),
        (11, 10, 0)
    );
    let (fastest, slowest) = (Duration::from_secs(11 * 72), Duration::from_secs(11 * 108));
    assert!(
        fastest <= report.p50 && report.p50 <= report.p99 && report.p99 <= slowest,
        "{report:?}"
    );
}

#[test]
fn bad_specs_are_refused_with_what_to_do() {
    let error = simulate(&spec(10, "1", 1.5, 1)).expect_err("refuse a rate over 1");
    assert!(error.to_string().contains("from 0 to 1"), "{error}");
    assert!(matches!(
        simulate(&spec(10, "1", f64::NAN, 1)),
        Err(PlanError::FailRateOutOfRange { .. })
    ));
    let none = SimulateSpec {
        runs: 0,
        ..spec(10, "1", 0.0, 1)
    };
    assert!(
        simulate(&none)
            .expect_err("refuse no runs")
            .to_string()
            .contains("--runs 1 or more")
    );
    let huge = SimulateSpec {
        nodes: 1_000_000,
        runs: 1_000,
        ..spec(10, "1", 0.0, 1)
    };
    assert!(
        simulate(&huge)
            .expect_err("refuse a huge simulation")
            .to_string()
            .contains("lower --runs")
    );
    assert!(matches!(
        simulate(&spec(0, "1", 0.0, 1)),
        Err(PlanError::NoNodes)
    ));
}

// ---- properties ----

/// A cluster of one of the three modes, with `nodes` nodes.
fn any_cluster(mode: u8, nodes: usize) -> ClusterState {
    let list: Vec<String> = (0..nodes).map(|i| format!("n{i:02}")).collect();
    let list: Vec<&str> = list.iter().map(String::as_str).collect();
    let mut cluster = active_passive(&list);
    match mode % 3 {
        0 => {}
        1 => {
            cluster.mode = Mode::ConfigOnly;
            cluster.groups = vec![];
            for n in &mut cluster.nodes {
                n.effective = EffectiveRole::Active;
            }
        }
        _ => {
            cluster.mode = Mode::ActiveActive;
            cluster.groups = vec![GroupId(1), GroupId(2)];
            for n in cluster.nodes.iter_mut().take(2) {
                n.effective = EffectiveRole::Active;
            }
        }
    }
    cluster
}

fn any_batch() -> impl Strategy<Value = Batch> {
    prop_oneof![
        (1usize..12).prop_map(Batch::Nodes),
        (1u8..=100).prop_map(Batch::Percent)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn every_node_is_in_exactly_one_wave_and_canaries_lead(
        mode in 0u8..3, nodes in 1usize..40, batch in any_batch(), canary in 0usize..8,
    ) {
        let cluster = any_cluster(mode, nodes);
        let policy = RolloutPolicy { batch, canary, ..RolloutPolicy::default() };
        let waves = plan_waves(&cluster, &policy).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut seen: Vec<&String> = waves.iter().flat_map(|w| w.nodes.iter()).collect();
        seen.sort();
        let mut all: Vec<&String> = cluster.nodes.iter().map(|n| &n.name).collect();
        all.sort();
        prop_assert_eq!(seen, all);
        prop_assert!(waves.iter().all(|w| !w.nodes.is_empty()));
        // Canaries: only the first wave, and as many as asked (or all
        // but the final node; none when the final node is the fleet).
        for (i, wave) in waves.iter().enumerate() {
            prop_assert_eq!(wave.kind == WaveKind::Canary, i == 0 && canary > 0 && nodes > 1);
        }
        if let Some(first) = waves.first().filter(|w| w.kind == WaveKind::Canary) {
            prop_assert_eq!(first.nodes.len(), canary.min(nodes - 1));
        }
        let size = batch.nodes_of(nodes).min(nodes.saturating_sub(1)).max(1);
        for wave in waves.iter().filter(|w| w.kind == WaveKind::Batch) {
            prop_assert!(wave.nodes.len() <= size);
        }
        if cluster.mode == Mode::ActivePassive {
            let last = waves.last().expect("at least one wave");
            prop_assert_eq!(last.kind, WaveKind::Final);
            prop_assert_eq!(&last.nodes, &vec![cluster.actives()[0].name.clone()]);
        }
    }

    #[test]
    fn a_rollout_never_upgrades_after_it_stopped_and_stops_on_one_failure_too_many(
        nodes in 1usize..30, batch in any_batch(), canary in 0usize..4, max_failed in 0usize..4,
        auto_revert: bool, auto_promote: bool,
        outcomes in proptest::collection::vec((0u8..10, 1u64..200_000), 64),
    ) {
        let policy = RolloutPolicy {
            batch, canary, max_failed, auto_revert,
            auto_promote: auto_promote.then_some(Duration::from_secs(30)),
            ..RolloutPolicy::default()
        };
        let mut rollout = FleetRollout::plan(&relay_fleet(nodes), policy)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut now = 0u64;
        let mut in_flight: Vec<String> = Vec::new();
        let mut upgraded_after_stop = false;
        let mut draw = outcomes.iter().cycle();
        for _ in 0..(nodes * 6 + 20) {
            let stopped_before = rollout.status().has_stopped();
            let actions = rollout.next(now);
            for action in &actions {
                match action {
                    FleetAction::Upgrade { nodes, .. } => {
                        upgraded_after_stop |= stopped_before;
                        in_flight.extend(nodes.iter().cloned());
                    }
                    FleetAction::Paused { .. } => rollout.observe(now, FleetObservation::Resume),
                    FleetAction::Revert { nodes } => {
                        for node in nodes {
                            rollout.observe(now, FleetObservation::NodeReverted { node: node.clone() });
                        }
                    }
                    FleetAction::Wait { until_ms, .. } => {
                        let (kind, step) = draw.next().copied().unwrap_or((0, 1));
                        now += step;
                        if let Some(node) = in_flight.pop() {
                            // 0..3 fail, 3 deadline, the rest healthy.
                            let observation = match kind {
                                0..=2 => failed(&node),
                                3 => FleetObservation::HealthDeadlinePassed { node },
                                _ => healthy(&node),
                            };
                            rollout.observe(now, observation);
                        } else if let Some(until) = until_ms {
                            now = now.max(*until);
                        }
                    }
                    FleetAction::Done { .. } | FleetAction::Stopped { .. } | FleetAction::Reverted { .. } => {}
                }
            }
            prop_assert!(!upgraded_after_stop, "an upgrade after the stop: {:?}", actions);
            if rollout.failed() > max_failed {
                prop_assert!(rollout.status().has_stopped(), "{:?}", rollout.status());
            }
            if rollout.status().is_finished() {
                break;
            }
        }
        prop_assert!(rollout.status().is_finished(), "never finished: {:?}", rollout.status());
        if rollout.status() == &RolloutStatus::Done {
            prop_assert!(rollout.failed() <= max_failed);
        }
    }

    #[test]
    fn a_seed_gives_the_same_figures(
        nodes in 1usize..60, batch in any_batch(), canary in 0usize..5,
        fail_rate in 0.0f64..0.3, seed: u64,
    ) {
        let spec = SimulateSpec {
            nodes,
            policy: RolloutPolicy { batch, canary, max_failed: 1, ..RolloutPolicy::default() },
            boot: Duration::from_secs(40),
            health: Duration::from_secs(20),
            fail_rate,
            seed,
            runs: 20,
        };
        let first = simulate(&spec).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&first, &simulate(&spec).map_err(|e| TestCaseError::fail(e.to_string()))?);
        prop_assert!(first.p50 <= first.p99);
        prop_assert!((0.0..=1.0).contains(&first.stop_chance));
    }

    #[test]
    fn certain_outcomes_give_certain_stop_chances(
        nodes in 1usize..40, batch in any_batch(), canary in 0usize..5, seed: u64,
    ) {
        let base = SimulateSpec {
            nodes,
            policy: RolloutPolicy { batch, canary, max_failed: 0, ..RolloutPolicy::default() },
            boot: Duration::from_secs(60),
            health: Duration::from_secs(30),
            fail_rate: 0.0,
            seed,
            runs: 10,
        };
        let never = simulate(&base).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(never.stop_chance, 0.0);
        let always = simulate(&SimulateSpec { fail_rate: 1.0, ..base })
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(always.stop_chance, 1.0);
    }
}
