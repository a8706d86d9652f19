//! The step machine, action by action: what it asks for, how it resumes
//! after a coordinator crash, how it aborts and rolls back.

use crate::support::*;
use tandem_core::{Command, EffectiveRole};
use tandem_upgrade::{
    Action, ClusterState, NodeChange, Observation, PlanOptions, RunStatus, StepId, Strategy,
    UpgradeRun, plan,
};

fn pair_run() -> (ClusterState, UpgradeRun) {
    let mut pair = active_passive(&["a", "b"], "6.2.0", &["6.2.5"]);
    pair.nodes[0].preempt = true;
    let p = match plan(
        &pair,
        &v("6.2.5"),
        &fortimail_catalog(),
        Strategy::Switchover,
        PlanOptions::default(),
    ) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
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
    let journal = serde_json::to_string(&run).unwrap_or_default();
    model.apply(&actions[0]);
    model.progress(0); // b finishes booting
    let journal: UpgradeRun = serde_json::from_str(&journal).unwrap_or_else(|e| panic!("{e}"));
    let mut run =
        UpgradeRun::resume(journal, model.state.clone(), 0).unwrap_or_else(|e| panic!("{e}"));
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
    let journal = serde_json::to_value(&run).unwrap_or_default();
    let journal: UpgradeRun = serde_json::from_value(journal).unwrap_or_else(|e| panic!("{e}"));
    let mut run =
        UpgradeRun::resume(journal, model.state.clone(), 7).unwrap_or_else(|e| panic!("{e}"));
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
    .unwrap_or_else(|e| panic!("{e}"));
    let mut run = UpgradeRun::new(p, cluster.clone());
    let mut model = Model::new(cluster);
    until_step(&mut run, &mut model, 10);
    assert_eq!(
        model.state.config_change_allowed(),
        Err(vec!["c".to_string()])
    );
}
