//! The step machine, action by action: what it asks for, how it resumes
//! after a coordinator crash, how it aborts and rolls back.

use crate::support::*;
use tandem_core::{Command, EffectiveRole};
use tandem_upgrade::{
    Action, ClusterState, NodeChange, Observation, PlanOptions, RunStatus, StepId, StepKind,
    Strategy, UpgradeRun, plan,
};

fn pair_run() -> (ClusterState, UpgradeRun) {
    let mut pair = active_passive(&["a", "b"], "6.2.0", &["6.2.5"]);
    pair.nodes[0].preempt = true;
    let p = plan(
        &pair,
        &v("6.2.5"),
        &fortimail_catalog(),
        Strategy::Switchover,
        PlanOptions::default(),
    )
    .expect("plan the upgrade");
    (pair.clone(), UpgradeRun::new(p, pair))
}

/// Runs the model until the run starts `step`; returns that step's first
/// actions, not yet carried out.
fn until_step(run: &mut UpgradeRun, model: &mut Model, step: u32) -> Vec<Action> {
    for _ in 0..200 {
        let actions = run.next(0);
        if run.running_step() == Some(StepId(step)) {
            return actions;
        }
        for action in &actions {
            for o in model.apply(action) {
                run.observe(0, o);
            }
        }
        if actions.iter().all(|a| matches!(a, Action::Wait { .. })) {
            model.progress(0);
        }
        run.observe(0, Observation::Cluster(model.state.clone()));
    }
    panic!("never reached step {step}: {:?}", run.status);
}

#[test]
fn first_actions_are_huawei_preflight() {
    let (_, mut run) = pair_run();
    assert_eq!(run.next(0), [Action::RunSyncReport]);
    assert!(matches!(
        run.next(5)[..],
        [Action::Wait {
            step: StepId(1),
            ..
        }]
    ));
    run.observe(10, Observation::SyncReport { clean: true });
    // Preflight passes at once; backups are asked of both nodes.
    assert_eq!(
        run.next(10),
        [
            Action::TakeBackup { node: "a".into() },
            Action::TakeBackup { node: "b".into() }
        ]
    );
    run.observe(11, Observation::BackupTaken { node: "a".into() });
    run.observe(12, Observation::BackupTaken { node: "b".into() });
    assert_eq!(
        run.next(12),
        [Action::Command {
            node: "a".into(),
            command: Command::HaPreempt(false)
        }]
    );
    run.observe(
        13,
        Observation::NodeReports {
            node: "a".into(),
            change: NodeChange::Preempt(false),
        },
    );
    assert_eq!(
        run.next(13),
        [
            Action::InstallImage {
                node: "b".into(),
                version: v("6.2.5")
            },
            Action::InstallImage {
                node: "a".into(),
                version: v("6.2.5")
            }
        ]
    );
}

#[test]
fn a_dirty_sync_report_stops_before_anything_changes() {
    let (_, mut run) = pair_run();
    run.next(0);
    run.observe(1, Observation::SyncReport { clean: false });
    let actions = run.next(1);
    let [Action::Stopped { message }] = &actions[..] else {
        panic!("{actions:?}")
    };
    assert!(message.contains("sync report"), "{message}");
    assert!(message.contains("a on 6.2.0, b on 6.2.0"), "{message}");
}

/// kill -9 after the standby's reload was asked for and carried out, before
/// the journal recorded it: the new coordinator sees b on 6.2.5 and does
/// not reload it again.
#[test]
fn resume_marks_a_visible_effect_done_without_redoing_it() {
    let (pair, mut run) = pair_run();
    let mut model = Model::new(pair);
    let actions = until_step(&mut run, &mut model, 6);
    assert_eq!(
        actions,
        [Action::BootPending {
            node: "b".into(),
            version: v("6.2.5")
        }]
    );
    let journal = serde_json::to_string(&run).expect("serialize the journal");
    model.apply(&actions[0]);
    model.progress(0); // b finishes booting
    let journal: UpgradeRun = serde_json::from_str(&journal).expect("deserialize the journal");
    let mut run = UpgradeRun::resume(journal, model.state.clone(), 0).expect("resume the run");
    let next = run.next(0);
    assert!(
        matches!(
            next[..],
            [Action::Wait {
                step: StepId(7),
                ..
            }]
        ),
        "reload done, waiting for b to sync: {next:?}"
    );
    assert_eq!(
        model
            .log
            .iter()
            .filter(|a| matches!(a, Action::BootPending { .. }))
            .count(),
        1
    );
}

/// A resumed switchover whose command was lost is asked for again, and the
/// new coordinator's clock restarts the step's timer.
#[test]
fn resume_reissues_a_lost_command() {
    let (pair, mut run) = pair_run();
    let mut model = Model::new(pair);
    let lost = until_step(&mut run, &mut model, 8);
    assert_eq!(lost.len(), 1, "{lost:?}");
    let journal = serde_json::to_value(&run).expect("serialize the journal");
    let journal: UpgradeRun = serde_json::from_value(journal).expect("deserialize the journal");
    let mut run = UpgradeRun::resume(journal, model.state.clone(), 7).expect("resume the run");
    assert_eq!(
        run.next(7),
        [Action::Command {
            node: "a".into(),
            command: Command::FailoverStandby
        }]
    );
    let until = match &run.next(8)[..] {
        [Action::Wait { until_ms, .. }] => *until_ms,
        other => panic!("{other:?}"),
    };
    assert_eq!(until, 7 + PlanOptions::default().step_timeout_ms);
}

/// `upgrade abort` during the standby's reload: the run finishes the step
/// and the wait for b (a safe point), gives preemption back, and stops.
#[test]
fn abort_stops_at_the_next_safe_point() {
    let (pair, mut run) = pair_run();
    let mut model = Model::new(pair);
    for action in until_step(&mut run, &mut model, 6) {
        model.apply(&action);
    }
    run.observe(0, Observation::Abort);
    let mut rng = Rng(7);
    let outcome = drive(run, &mut model, &mut rng, 0);
    let Action::Stopped { message } = &outcome.last else {
        panic!("{:?}", outcome.last)
    };
    assert!(message.contains("aborted at a safe point"), "{message}");
    assert!(message.contains("a on 6.2.0, b on 6.2.5"), "{message}");
    assert!(model.state.nodes[0].preempt, "preemption given back");
    assert_eq!(model.state.actives().len(), 1);
    assert!(!model.log.iter().any(|a| matches!(
        a,
        Action::Command {
            command: Command::FailoverStandby,
            ..
        }
    )));
}

/// The old active's new image fails its health check after the switchover:
/// roll back standby first (b is active on 6.2.5, a fell back to 6.2.0), so
/// switch over to a, then roll b back. Only a standby ever restarts.
#[test]
fn health_failure_rolls_back_standby_first() {
    let (pair, run) = pair_run();
    let mut model = Model::new(pair);
    model.fail_on = Some(("a".into(), v("6.2.5")));
    let outcome = drive(run, &mut model, &mut Rng(3), 0);
    let Action::RolledBack { message } = &outcome.last else {
        panic!("{:?}", outcome.last)
    };
    assert!(
        message.contains("a failed its health check on 6.2.5"),
        "{message}"
    );
    assert!(model.state.nodes.iter().all(|n| n.running == v("6.2.0")));
    let tail: Vec<Action> = model
        .log
        .iter()
        .skip_while(|a| !matches!(a, Action::BootPending { node, .. } if node == "a"))
        .filter(|a| !matches!(a, Action::Wait { .. }))
        .cloned()
        .collect();
    assert_eq!(
        tail,
        [
            Action::BootPending {
                node: "a".into(),
                version: v("6.2.5")
            },
            Action::Command {
                node: "b".into(),
                command: Command::FailoverStandby
            },
            Action::BootPrevious {
                node: "b".into(),
                version: v("6.2.0")
            },
            Action::Command {
                node: "a".into(),
                command: Command::HaPreempt(true)
            },
            Action::RunSyncReport,
        ]
    );
    assert!(matches!(outcome.run.status, RunStatus::RolledBack { .. }));
}

/// A standby that never catches up: the wait times out and the run stops
/// with the reason, before any switchover.
#[test]
fn a_timeout_stops_with_what_it_waited_for() {
    let (pair, mut run) = pair_run();
    let mut model = Model::new(pair);
    until_step(&mut run, &mut model, 7);
    // b is up on 6.2.5 but never in sync.
    if let Some(b) = model.state.node_mut("b") {
        b.in_sync = false;
        b.effective = EffectiveRole::Standby;
        b.healthy = true;
        b.running = v("6.2.5");
    }
    model.booting.clear();
    run.observe(0, Observation::Cluster(model.state.clone()));
    let far = PlanOptions::default().ready_timeout_ms + 1;
    let actions = run.next(far);
    let [Action::Stopped { message }] = &actions[..] else {
        panic!("{actions:?}")
    };
    assert!(message.contains("stopped at step 7"), "{message}");
    assert!(message.contains("timed out"), "{message}");
    // The operator fixes b and retries: the run goes on from step 7.
    if let Some(b) = model.state.node_mut("b") {
        b.in_sync = true;
    }
    run.retry();
    run.observe(far, Observation::Cluster(model.state.clone()));
    assert_eq!(
        run.next(far),
        [Action::Command {
            node: "a".into(),
            command: Command::FailoverStandby
        }]
    );
}

/// The agent refuses cluster config changes while a rolling upgrade has a
/// node disconnected (ESA's rule).
#[test]
fn config_changes_are_refused_while_a_node_is_disconnected() {
    let cluster = config_only(&["a", "b", "c"], "6.2.0", &["6.2.5"]);
    let p = plan(
        &cluster,
        &v("6.2.5"),
        &fortimail_catalog(),
        Strategy::Rolling { batch: 1 },
        PlanOptions::default(),
    )
    .expect("plan the upgrade");
    let mut run = UpgradeRun::new(p, cluster.clone());
    let mut model = Model::new(cluster);
    until_step(&mut run, &mut model, 10);
    assert_eq!(
        model.state.config_change_allowed(),
        Err(vec!["c".to_string()])
    );
}

/// The pair as a kill -9 of the active `a` leaves it while the run waits to
/// reload the standby `b`: `b` took over, still on the old release; `a` is
/// back as a standby (preemption is off by then), or not back yet.
fn a_failed_over_to_b(model: &mut Model, a_back: bool) {
    for n in &mut model.state.nodes {
        n.effective = match (n.name.as_str(), a_back) {
            ("b", _) => EffectiveRole::Active,
            (_, true) => EffectiveRole::Standby,
            (_, false) => EffectiveRole::Off,
        };
        n.healthy = n.name == "b" || a_back;
    }
}

/// The steps of the plan that reload a node, in order, by node.
fn boots(run: &UpgradeRun) -> Vec<String> {
    run.forward
        .plan
        .steps
        .iter()
        .filter(|s| matches!(s.kind, StepKind::Boot { .. }))
        .flat_map(|s| s.nodes.clone())
        .collect()
}

/// Issue 8: the active dies before the standby's reload and its peer takes
/// over on the old release. The new coordinator does not stop for the
/// operator: it plans the rest again (now `a` is the standby, reloaded
/// first) and the run ends on the target with preemption given back.
#[test]
fn a_failover_before_the_switchover_is_planned_again_and_finishes() {
    let (pair, mut run) = pair_run();
    let mut model = Model::new(pair);
    until_step(&mut run, &mut model, 6);
    let old_id = run.id;
    a_failed_over_to_b(&mut model, true);
    run.observe(0, Observation::Cluster(model.state.clone()));
    let actions = run.next(0);
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Stopped { .. })),
        "{actions:?}"
    );
    assert_eq!(run.replaced.len(), 1, "the old plan is kept for the record");
    assert!(run.id > old_id, "every copy of the old plan gives way");
    assert_eq!(boots(&run), ["a", "b"], "the standby now is reloaded first");
    let old_step = &run.replaced[0].records[5];
    assert_eq!(old_step.state, tandem_upgrade::StepState::Failed);
    assert!(
        old_step
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("planned again")),
        "{old_step:?}"
    );
    for action in &actions {
        for o in model.apply(action) {
            run.observe(0, o);
        }
    }
    let outcome = drive(run, &mut model, &mut Rng(3), 0);
    assert!(
        matches!(outcome.last, Action::Done { .. }),
        "{:?}",
        outcome.last
    );
    assert!(model.state.nodes.iter().all(|n| n.running == v("6.2.5")));
    assert!(model.state.nodes[0].preempt, "preemption given back on a");
    assert_eq!(model.state.actives().len(), 1);
}

/// While the failed node is not back, no plan can be made (a plan needs
/// every node healthy): the step waits, saying so, and plans again once
/// the node is back.
#[test]
fn a_failover_waits_for_the_failed_node_before_planning_again() {
    let (pair, mut run) = pair_run();
    let mut model = Model::new(pair);
    until_step(&mut run, &mut model, 6);
    a_failed_over_to_b(&mut model, false);
    run.observe(0, Observation::Cluster(model.state.clone()));
    let actions = run.next(1_000);
    let [Action::Wait { waiting_for, .. }] = &actions[..] else {
        panic!("{actions:?}")
    };
    assert!(
        waiting_for.contains("planning the rest again"),
        "{waiting_for}"
    );
    assert!(run.replaced.is_empty());
    a_failed_over_to_b(&mut model, true);
    run.observe(2_000, Observation::Cluster(model.state.clone()));
    run.next(2_000);
    assert_eq!(run.replaced.len(), 1);
    assert_eq!(run.status, RunStatus::Running);
}

/// A failed node that never comes back: at the step's timeout the run
/// stops where it is, a safe point (the peer serves on the old release),
/// and the message says what to do.
#[test]
fn a_failed_node_that_stays_down_stops_the_run_saying_what_to_do() {
    let (pair, mut run) = pair_run();
    let mut model = Model::new(pair);
    until_step(&mut run, &mut model, 6);
    a_failed_over_to_b(&mut model, false);
    run.observe(0, Observation::Cluster(model.state.clone()));
    let after_timeout = PlanOptions::default().boot_timeout_ms + 1;
    let actions = run.next(after_timeout);
    let [Action::Stopped { message }] = &actions[..] else {
        panic!("{actions:?}")
    };
    assert!(
        message.contains("b (still on 6.2.0) serves now"),
        "{message}"
    );
    assert!(message.contains("not healthy"), "{message}");
    assert!(message.contains("tandem upgrade run"), "{message}");
}
