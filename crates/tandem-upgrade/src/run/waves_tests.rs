//! Tests of a run driven by a fleet rollout (`run::waves`): a wave's plan
//! touches only its nodes, a canary pauses the run until it is resumed, a
//! failed canary stops it within `--max-failed 0`, and `--auto-revert`
//! reverts exactly the upgraded nodes, standbys first.
//!
//! The cluster is a small model that carries out the run's actions at
//! once: a boot of a release the test marked bad falls back to the
//! previous slot, as `tandem-image` does.

use std::time::Duration;

use tandem_core::{ConfiguredRole, EffectiveRole, Mode};
use tandem_version::{Catalog, Version};

use crate::cluster::{
    ClusterState, ConfigLink, ImageFile, Listener, NodeState, SlotStatus, SlotView,
};
use crate::fleet::{Batch, RolloutPolicy, RolloutStatus};
use crate::plan::{HopReason, PlanOptions, PlannedHop, Strategy, WaveScope, plan, plan_wave};
use crate::run::{Observation, RunStatus, UpgradeRun};
use crate::step::{Action, StepKind};

fn v(text: &str) -> Version {
    text.parse().expect("parse the test version")
}

/// 6.2.0 → 6.2.5 → 6.4.0, along the edges.
fn catalog() -> Catalog {
    let text = r#"
        rules = "edges"
        [[release]]
        version = "6.2.0"
        [[release]]
        version = "6.2.5"
        [[release]]
        version = "6.4.0"
        [[edge]]
        from = "6.2.0"
        to = "6.2.5"
        [[edge]]
        from = "6.2.5"
        to = "6.4.0"
    "#;
    Catalog::parse(text, "test catalog").expect("parse the test catalog")
}

/// A config-only cluster on 6.2.0 with every later image: the first node
/// is the primary (priority 200), the others secondaries whose priority
/// falls with the name (`b` 99, `c` 98…), so the last goes first.
fn config_only(names: &[&str]) -> ClusterState {
    let nodes = names
        .iter()
        .enumerate()
        .map(|(i, name)| NodeState {
            name: name.to_string(),
            configured: if i == 0 {
                ConfiguredRole::Primary
            } else {
                ConfiguredRole::Secondary
            },
            effective: EffectiveRole::Active,
            priority: if i == 0 {
                200
            } else {
                100u8.saturating_sub(u8::try_from(i).expect("a small index"))
            },
            running: v("6.2.0"),
            healthy: true,
            in_sync: true,
            preempt: false,
            groups: vec![],
            images: ["6.2.5", "6.4.0"]
                .iter()
                .map(|r| ImageFile {
                    version: v(r),
                    verified: true,
                })
                .collect(),
            other_slot: None,
            listener: Listener::Accepting,
            config_link: ConfigLink::Connected,
        })
        .collect();
    ClusterState::config_only(nodes)
}

fn policy(canary: usize, max_failed: usize, auto_revert: bool) -> RolloutPolicy {
    RolloutPolicy {
        batch: Batch::Nodes(1),
        canary,
        health_deadline: Duration::from_secs(60),
        max_failed,
        auto_revert,
        auto_promote: None,
    }
}

/// A run of `cluster` to `to` in waves under `policy`.
fn run_in_waves(cluster: &ClusterState, to: &str, policy: RolloutPolicy) -> UpgradeRun {
    let whole = plan(
        cluster,
        &v(to),
        &catalog(),
        Strategy::Rolling { batch: 1 },
        PlanOptions::default(),
    )
    .expect("plan the upgrade");
    UpgradeRun::in_waves(whole, cluster.clone(), policy, PlanOptions::default())
        .expect("start the run in waves")
}

/// The cluster, carrying out actions at once.
struct Model {
    state: ClusterState,
    /// A boot of this node fails its health check and falls back.
    bad: Vec<String>,
    /// Every action carried out, in order.
    log: Vec<Action>,
}

impl Model {
    fn node(&mut self, name: &str) -> &mut NodeState {
        self.state
            .node_mut(name)
            .unwrap_or_else(|| panic!("the run named unknown node {name}"))
    }

    fn apply(&mut self, action: &Action) -> Vec<Observation> {
        self.log.push(action.clone());
        match action {
            Action::InstallImage { node, version } => {
                self.node(node).other_slot = Some(SlotView {
                    version: *version,
                    state: SlotStatus::Pending,
                });
            }
            Action::BootPending { node, version } => {
                let fails = self.bad.contains(node);
                let n = self.node(node);
                if fails {
                    n.other_slot = Some(SlotView {
                        version: *version,
                        state: SlotStatus::Bad,
                    });
                } else {
                    n.other_slot = Some(SlotView {
                        version: n.running,
                        state: SlotStatus::Good,
                    });
                    n.running = *version;
                }
            }
            Action::BootPrevious { node, version } => {
                let n = self.node(node);
                n.other_slot = Some(SlotView {
                    version: n.running,
                    state: SlotStatus::Good,
                });
                n.running = *version;
            }
            Action::SuspendListener { node } => self.node(node).listener = Listener::Suspended,
            Action::ResumeListener { node } => self.node(node).listener = Listener::Accepting,
            Action::DisconnectConfig { node } => {
                self.node(node).config_link = ConfigLink::Disconnected;
            }
            Action::ReconnectConfig { node } => {
                self.node(node).config_link = ConfigLink::Connected;
            }
            Action::TakeBackup { node } => {
                return vec![Observation::BackupTaken { node: node.clone() }];
            }
            Action::RunSyncReport => return vec![Observation::SyncReport { clean: true }],
            Action::Command { .. }
            | Action::Wait { .. }
            | Action::Done { .. }
            | Action::RolledBack { .. }
            | Action::Stopped { .. } => {}
        }
        vec![]
    }

    /// The nodes the run booted with `pick`'s kind of boot, in order.
    fn boots(&self, pick: fn(&Action) -> Option<&String>) -> Vec<String> {
        self.log.iter().filter_map(pick).cloned().collect()
    }
}

fn pending_boot(action: &Action) -> Option<&String> {
    match action {
        Action::BootPending { node, .. } => Some(node),
        _ => None,
    }
}

fn previous_boot(action: &Action) -> Option<&String> {
    match action {
        Action::BootPrevious { node, .. } => Some(node),
        _ => None,
    }
}

/// Drives the run until it ends or pauses; its last action.
fn drive(run: &mut UpgradeRun, model: &mut Model) -> Action {
    for turn in 0..1_000u64 {
        let now = turn * 1_000;
        let actions = run.next(now);
        let journal = serde_json::to_string(&*run).expect("write the journal");
        let back: UpgradeRun = serde_json::from_str(&journal).expect("read the journal");
        assert_eq!(back, *run, "the journal keeps the rollout");
        if let Some(last) = actions.iter().find(|a| {
            matches!(
                a,
                Action::Done { .. } | Action::RolledBack { .. } | Action::Stopped { .. }
            )
        }) {
            return last.clone();
        }
        if run.paused() {
            return actions.last().cloned().expect("a paused run waits");
        }
        for action in &actions {
            for observation in model.apply(action) {
                run.observe(now, observation);
            }
        }
        run.observe(now, Observation::Cluster(model.state.clone()));
    }
    panic!("the run did not end in 1000 turns: {:?}", run.status);
}

fn versions(model: &Model) -> Vec<(String, String)> {
    model
        .state
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.running.to_string()))
        .collect()
}

fn hop(from: &str, to: &str) -> PlannedHop {
    PlannedHop {
        from: v(from),
        to: v(to),
        rule: HopReason::Edge {
            from: from.into(),
            to: to.into(),
        },
    }
}

#[test]
fn a_wave_plan_touches_only_its_nodes_and_reconnects_only_at_the_end() {
    let mut cluster = config_only(&["a", "b", "c"]);
    let scope = |nodes: &[&str], prologue, epilogue| WaveScope {
        nodes: nodes.iter().map(|n| n.to_string()).collect(),
        prologue,
        epilogue,
    };
    let canary = plan_wave(
        &cluster,
        &hop("6.2.0", "6.2.5"),
        Strategy::Rolling { batch: 1 },
        PlanOptions::default(),
        scope(&["c"], true, false),
    )
    .expect("plan the canary wave");
    let booted: Vec<&String> = canary
        .steps
        .iter()
        .filter(|s| matches!(s.kind, StepKind::Boot { .. }))
        .flat_map(|s| &s.nodes)
        .collect();
    assert_eq!(booted, ["c"], "{canary}");
    assert_eq!(
        canary.steps[0].kind,
        StepKind::SyncReport,
        "the first wave checks first"
    );
    assert!(
        !canary
            .steps
            .iter()
            .any(|s| matches!(s.kind, StepKind::Reconnect { .. })),
        "c may not reconnect while a and b run 6.2.0: {canary}"
    );

    // b and c upgraded: the last wave (the primary alone) reconnects all.
    for name in ["b", "c"] {
        let node = cluster.node_mut(name).expect("a test node");
        node.running = v("6.2.5");
        node.config_link = ConfigLink::Disconnected;
    }
    let last = plan_wave(
        &cluster,
        &hop("6.2.0", "6.2.5"),
        Strategy::Rolling { batch: 1 },
        PlanOptions::default(),
        scope(&["a"], false, true),
    )
    .expect("plan the last wave");
    let kinds: Vec<&StepKind> = last.steps.iter().map(|s| &s.kind).collect();
    assert!(
        !kinds.iter().any(|k| matches!(k, StepKind::Backup)),
        "no second backup: {last}"
    );
    let reconnect = last
        .steps
        .iter()
        .find(|s| matches!(s.kind, StepKind::Reconnect { .. }))
        .unwrap_or_else(|| panic!("the last wave reconnects: {last}"));
    assert_eq!(reconnect.nodes, ["a", "b", "c"]);
    assert_eq!(
        last.steps.last().map(|s| &s.kind),
        Some(&StepKind::SyncReport)
    );
}

#[test]
fn a_canary_pauses_the_run_until_resumed_then_every_node_upgrades() {
    let cluster = config_only(&["a", "b", "c"]);
    let mut run = run_in_waves(&cluster, "6.2.5", policy(1, 0, false));
    let mut model = Model {
        state: cluster,
        bad: vec![],
        log: vec![],
    };
    let paused = drive(&mut run, &mut model);
    let Action::Wait { waiting_for, .. } = &paused else {
        panic!("{paused:?}")
    };
    assert!(
        waiting_for.contains("tandem upgrade resume"),
        "{waiting_for}"
    );
    assert_eq!(model.boots(pending_boot), ["c"], "only the canary");
    assert_eq!(
        versions(&model),
        [
            ("a".into(), "6.2.0".into()),
            ("b".into(), "6.2.0".into()),
            ("c".into(), "6.2.5".into())
        ]
    );
    // The pause outlives the coordinator.
    let journal = serde_json::to_string(&run).expect("write the journal");
    let journal: UpgradeRun = serde_json::from_str(&journal).expect("read the journal");
    let mut run =
        UpgradeRun::resume(journal, model.state.clone(), 0).expect("resume on a new coordinator");
    assert!(run.paused());
    assert!(matches!(run.next(5)[..], [Action::Wait { .. }]));

    run.observe(6, Observation::Resume);
    let last = drive(&mut run, &mut model);
    assert!(matches!(last, Action::Done { .. }), "{last:?}");
    assert_eq!(model.boots(pending_boot), ["c", "b", "a"]);
    assert!(
        model
            .state
            .nodes
            .iter()
            .all(|n| n.running == v("6.2.5") && n.config_link == ConfigLink::Connected),
        "{:?}",
        model.state
    );
    assert_eq!(run.status, RunStatus::Done);
}

#[test]
fn a_failed_canary_stops_the_run_with_max_failed_0_and_nothing_else_is_touched() {
    let cluster = config_only(&["a", "b", "c"]);
    let mut run = run_in_waves(&cluster, "6.2.5", policy(1, 0, false));
    let mut model = Model {
        state: cluster,
        bad: vec!["c".into()],
        log: vec![],
    };
    let last = drive(&mut run, &mut model);
    let Action::Stopped { message } = &last else {
        panic!("{last:?}")
    };
    assert!(message.contains("more than --max-failed 0"), "{message}");
    assert!(
        message.contains("c (") || message.contains("(c)"),
        "{message}"
    );
    assert_eq!(model.boots(pending_boot), ["c"], "no node after the canary");
    assert!(model.boots(previous_boot).is_empty(), "no revert asked for");
    let c = model.state.node("c").expect("c");
    assert_eq!(c.running, v("6.2.0"), "its slot fell back");
    assert_eq!(c.listener, Listener::Accepting, "it serves again");
    assert!(matches!(
        run.rollout().map(|r| r.status()),
        Some(RolloutStatus::Stopped { .. })
    ));
    assert!(matches!(run.status, RunStatus::Stopped { .. }));
}

#[test]
fn auto_revert_reverts_exactly_the_upgraded_nodes_standbys_first() {
    // Waves: d, c, b (one node each), then the primary a. b fails.
    let cluster = config_only(&["a", "b", "c", "d"]);
    let mut run = run_in_waves(&cluster, "6.2.5", policy(0, 0, true));
    let mut model = Model {
        state: cluster,
        bad: vec!["b".into()],
        log: vec![],
    };
    let last = drive(&mut run, &mut model);
    let Action::RolledBack { message } = &last else {
        panic!("{last:?}")
    };
    assert!(message.contains("reverted, standbys first"), "{message}");
    assert_eq!(model.boots(pending_boot), ["d", "c", "b"]);
    assert_eq!(
        model.boots(previous_boot),
        ["d", "c"],
        "the healthy upgraded nodes, in wave order; b fell back by itself, a was never touched"
    );
    assert!(
        model.state.nodes.iter().all(|n| n.running == v("6.2.0")
            && n.listener == Listener::Accepting
            && n.config_link == ConfigLink::Connected),
        "{:?}",
        model.state
    );
}

#[test]
fn a_multi_hop_path_goes_one_rollout_per_hop() {
    let cluster = config_only(&["a", "b", "c"]);
    let mut run = run_in_waves(&cluster, "6.4.0", policy(0, 0, false));
    let mut model = Model {
        state: cluster,
        bad: vec![],
        log: vec![],
    };
    let last = drive(&mut run, &mut model);
    assert!(matches!(last, Action::Done { .. }), "{last:?}");
    let boots: Vec<(String, Version)> = model
        .log
        .iter()
        .filter_map(|a| match a {
            Action::BootPending { node, version } => Some((node.clone(), *version)),
            _ => None,
        })
        .collect();
    let first_of_second_hop = boots.iter().position(|(_, v2)| *v2 == v("6.4.0"));
    assert_eq!(
        first_of_second_hop,
        Some(3),
        "every node finishes 6.2.5 before any boots 6.4.0: {boots:?}"
    );
    assert!(model.state.nodes.iter().all(|n| n.running == v("6.4.0")));
}

#[test]
fn a_rollout_is_refused_for_a_strategy_that_does_not_go_in_waves() {
    let mut pair = config_only(&["a", "b"]);
    pair.mode = Mode::ActivePassive;
    pair.groups = vec![tandem_core::GroupId(0)];
    pair.nodes[1].effective = EffectiveRole::Standby;
    let whole = plan(
        &pair,
        &v("6.2.5"),
        &catalog(),
        Strategy::Switchover,
        PlanOptions::default(),
    )
    .expect("plan the switchover");
    let refused = UpgradeRun::in_waves(whole, pair, policy(1, 0, false), PlanOptions::default())
        .expect_err("a switchover does not go in waves");
    let text = refused.to_string();
    assert!(
        text.contains("rolling") && text.contains("switchover"),
        "{text}"
    );
}
