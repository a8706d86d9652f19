//! The seeds' procedures, and the other HA scenarios, on an in-memory
//! cluster with explicit time. Each test reads like the runbook it follows.

use crate::common::*;
use std::time::Duration;
use tandem_core::sim::Sim;
use tandem_core::*;

const G0: GroupId = GroupId(0);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Role-change reasons logged by `node` since `since`.
fn role_changes(
    sim: &Sim,
    node: &str,
    since: Millis,
) -> Vec<(EffectiveRole, EffectiveRole, Reason)> {
    events(&sim.outputs_since(node, since))
        .into_iter()
        .filter_map(|e| match e {
            Event::RoleChanged {
                from, to, reason, ..
            } => Some((from, to, reason)),
            _ => None,
        })
        .collect()
}

fn refusal(out: &[Output]) -> Option<Refusal> {
    out.iter().find_map(|o| match o {
        Output::Refused { reason, .. } => Some(reason.clone()),
        _ => None,
    })
}

/// Reboot `name` cleanly (goodbye), down for `down`, then let it settle.
fn reboot(sim: &mut Sim, name: &str, down: Duration) {
    sim.shutdown(name);
    sim.run_for(down);
    sim.restart(name);
    sim.run_for(Duration::from_secs(2));
}

#[test]
fn asa_zero_downtime_upgrade_of_an_active_standby_pair() {
    // ASA active/standby failover has no preemption.
    let mut cfgs = pair_configs();
    for c in &mut cfgs {
        c.preempt = false;
    }
    let mut sim = settled_pair(cfgs);
    assert_eq!(sim.holders(G0), ["a"]);

    // Step 2: `failover reload-standby` — the standby reboots; the active
    // keeps serving throughout.
    reboot(&mut sim, "b", Duration::from_secs(30));
    assert_eq!(sim.holders(G0), ["a"]);
    assert_eq!(
        sim.node("b")
            .expect("look up node b")
            .effective_role(sim.now),
        EffectiveRole::Standby
    );

    // Step 3: `failover active` on the standby once it is standby-ready.
    let t = sim.now;
    let out = sim.command("b", Command::FailoverActive);
    assert_eq!(
        actions(&out),
        vec![
            Output::ClaimVip { group: G0 },
            Output::Event(Event::CommandExecuted {
                command: Command::FailoverActive,
                forwarded_by: None,
            }),
            Output::StartService,
            Output::Event(Event::RoleChanged {
                group: Some(G0),
                from: EffectiveRole::Standby,
                to: EffectiveRole::Active,
                reason: Reason::OperatorTakeover,
            }),
        ]
    );
    sim.run_for(ms(5));
    assert_eq!(sim.holders(G0), ["b"]);
    assert_eq!(
        role_changes(&sim, "a", t),
        vec![(
            EffectiveRole::Active,
            EffectiveRole::Standby,
            Reason::TakenOver { by: "b".into() }
        )]
    );

    // Step 4: reload the former active; without preemption it comes back
    // standby and b keeps the role.
    reboot(&mut sim, "a", Duration::from_secs(30));
    sim.run_for(Duration::from_secs(10));
    assert_eq!(sim.holders(G0), ["b"]);
    assert_eq!(
        sim.node("b")
            .expect("look up node b")
            .status(sim.now)
            .counters
            .split_brain_events,
        0
    );
}

#[test]
fn huawei_disable_preemption_upgrade_then_reenable() {
    let mut cfgs = pair_configs();
    for c in &mut cfgs {
        c.preempt_delay = Duration::from_secs(5);
    }
    let mut sim = settled_pair(cfgs);
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.holders(G0), ["a"]);

    // Step 4: disable preemption on both devices (persisted).
    for n in ["a", "b"] {
        let out = sim.command(n, Command::HaPreempt(false));
        assert!(out.contains(&Output::Persist(PersistentState {
            preempt: false,
            ha_stopped: false
        })));
    }
    // Step 5: upgrade the standby.
    reboot(&mut sim, "b", Duration::from_secs(60));
    assert_eq!(sim.holders(G0), ["a"]);

    // A switchover too early is refused: b came back 3 s ago (preempt_delay 5 s).
    sim.run_for(Duration::from_secs(1));
    let out = sim.command("b", Command::FailoverActive);
    assert!(matches!(
        refusal(&out),
        Some(Refusal::PreemptDelayRunning { .. })
    ));

    // Step 6: switch over, from the active (make-before-break).
    sim.run_for(Duration::from_secs(3));
    let t = sim.now;
    let out = sim.command("a", Command::FailoverStandby);
    assert!(out.contains(&Output::Event(Event::HandoverStarted {
        group: G0,
        to: "b".into(),
        cause: HandoverCause::Operator
    })));
    // a still serves until b has claimed.
    assert_eq!(sim.holders(G0), ["a"]);
    sim.run_for(ms(5));
    assert_eq!(sim.holders(G0), ["b"]);
    assert_eq!(
        role_changes(&sim, "a", t),
        vec![(
            EffectiveRole::Active,
            EffectiveRole::Standby,
            Reason::HandedOver {
                to: "b".into(),
                cause: HandoverCause::Operator
            }
        )]
    );

    // Step 7: upgrade the new standby (the old active): it stays standby.
    reboot(&mut sim, "a", Duration::from_secs(60));
    sim.run_for(Duration::from_secs(10));
    assert_eq!(sim.holders(G0), ["b"]);

    // Step 10: re-enable preemption: the primary takes its role back.
    let t = sim.now;
    sim.command("a", Command::HaPreempt(true));
    sim.command("b", Command::HaPreempt(true));
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.holders(G0), ["a"]);
    assert_eq!(
        role_changes(&sim, "b", t),
        vec![(
            EffectiveRole::Active,
            EffectiveRole::Standby,
            Reason::HandedOver {
                to: "a".into(),
                cause: HandoverCause::Preemption
            }
        )]
    );
}

#[test]
fn fortimail_holdoff_while_the_primary_reboots_into_new_firmware() {
    let mut sim = settled_pair(pair_configs());
    // Secondaries first.
    reboot(&mut sim, "b", Duration::from_secs(60));
    assert_eq!(sim.holders(G0), ["a"]);

    // The primary sends holdoff, then reboots.
    let t = sim.now;
    sim.command("a", Command::HaHoldoff(Duration::from_secs(120)));
    sim.run_for(ms(5));
    assert_eq!(
        role_changes(&sim, "b", t),
        vec![(
            EffectiveRole::Standby,
            EffectiveRole::HeldOff,
            Reason::HoldoffReceived { from: "a".into() }
        )]
    );
    sim.shutdown("a");
    sim.run_for(Duration::from_secs(30));
    // Nobody takes over, and an operator takeover says why.
    assert_eq!(sim.holders(G0), Vec::<String>::new());
    let out = sim.command("b", Command::FailoverActive);
    match refusal(&out) {
        Some(Refusal::HoldoffActive { from, remaining }) => {
            assert_eq!(from, "a");
            assert!(remaining <= Duration::from_secs(90) && remaining > Duration::from_secs(85));
        }
        other => panic!("expected a holdoff refusal, got {other:?}"),
    }
    // The primary comes back on the new firmware and resumes its role.
    sim.restart("a");
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sim.holders(G0), ["a"]);
    assert_eq!(
        sim.node("b")
            .expect("look up node b")
            .effective_role(sim.now),
        EffectiveRole::Standby
    );
}

#[test]
fn holdoff_expires_if_the_primary_does_not_come_back() {
    let mut sim = settled_pair(pair_configs());
    sim.command("a", Command::HaHoldoff(Duration::from_secs(60)));
    sim.run_for(ms(5));
    let t = sim.now;
    sim.shutdown("a");
    sim.run_until(t.plus(Duration::from_millis(59_990)));
    assert_eq!(sim.holders(G0), Vec::<String>::new());
    sim.run_until(t.plus(Duration::from_millis(60_010)));
    assert_eq!(sim.holders(G0), ["b"]);
    let evs = events(&sim.outputs_since("b", t));
    assert!(evs.contains(&Event::HoldoffExpired { from: "a".into() }));
}

#[test]
fn a_hung_active_is_replaced_within_the_hold_time() {
    let mut sim = settled_pair(pair_configs());
    let t = sim.now;
    sim.hang("a");
    sim.run_for(ms(600 + 200));
    assert_eq!(
        sim.holders(G0),
        ["a", "b"],
        "a is frozen, still holding its VIP"
    );
    // SIGCONT: a hears b active; b ranks lower, so b steps down at once.
    sim.resume("a");
    sim.run_for(ms(20));
    assert_eq!(sim.holders(G0), ["a"]);
    let b_changes = role_changes(&sim, "b", t);
    assert_eq!(b_changes[0].2, Reason::PeerLost { peer: "a".into() });
    assert_eq!(b_changes[1].2, Reason::SplitBrain { peer: "a".into() });
}

#[test]
fn failover_standby_refused_when_the_peer_is_unhealthy_or_gone() {
    let mut sim = settled_pair(pair_configs());
    sim.input(
        "b",
        Input::LocalMonitor {
            healthy: false,
            detail: "port 25 refused".into(),
        },
    );
    sim.run_for(ms(300));
    let out = sim.command("a", Command::FailoverStandby);
    assert_eq!(refusal(&out), Some(Refusal::PeerUnhealthy("b".into())));
    sim.crash("b");
    let out = sim.command("a", Command::FailoverStandby);
    assert_eq!(refusal(&out), Some(Refusal::NoPeerReachable));
    let out = sim.command("b", Command::FailoverActive);
    assert_eq!(out, vec![]);
    assert_eq!(sim.holders(G0), ["a"]);
}

#[test]
fn on_failure_off_stops_ha_until_ha_restart() {
    let mut cfgs = pair_configs();
    cfgs[0].on_failure = OnFailure::Off;
    let mut sim = settled_pair(cfgs);
    let t = sim.now;
    let out = sim.input(
        "a",
        Input::LocalMonitor {
            healthy: false,
            detail: "spool disk full".into(),
        },
    );
    assert_eq!(
        actions(&out),
        vec![
            Output::Persist(PersistentState {
                preempt: true,
                ha_stopped: true
            }),
            Output::ReleaseVip { group: G0 },
            Output::StopService,
            Output::Event(Event::RoleChanged {
                group: Some(G0),
                from: EffectiveRole::Active,
                to: EffectiveRole::Off,
                reason: Reason::LocalMonitorFailed {
                    detail: "spool disk full".into()
                },
            }),
        ]
    );
    sim.run_for(ms(5));
    assert_eq!(sim.holders(G0), ["b"]);
    assert_eq!(
        role_changes(&sim, "b", t)[0].2,
        Reason::PeerStoodDown { peer: "a".into() }
    );
    // Fixed, but HA stays off until the operator restarts it.
    sim.input(
        "a",
        Input::LocalMonitor {
            healthy: true,
            detail: String::new(),
        },
    );
    sim.run_for(Duration::from_secs(5));
    assert_eq!(
        sim.node("a")
            .expect("look up node a")
            .effective_role(sim.now),
        EffectiveRole::Off
    );
    let out = sim.command("a", Command::FailoverActive);
    assert_eq!(refusal(&out), Some(Refusal::HaStopped));
    sim.command("a", Command::HaRestart);
    sim.run_for(Duration::from_secs(2));
    // Preemption is on: the primary takes its role back.
    assert_eq!(sim.holders(G0), ["a"]);
}

#[test]
fn on_failure_become_secondary_stays_standby_until_restore() {
    let mut sim = settled_pair(pair_configs());
    sim.input(
        "a",
        Input::LocalMonitor {
            healthy: false,
            detail: "down".into(),
        },
    );
    sim.run_for(ms(5));
    assert_eq!(sim.holders(G0), ["b"]);
    assert_eq!(
        sim.node("a")
            .expect("look up node a")
            .effective_role(sim.now),
        EffectiveRole::Failed
    );
    sim.input(
        "a",
        Input::LocalMonitor {
            healthy: true,
            detail: String::new(),
        },
    );
    sim.run_for(Duration::from_secs(10));
    // Preemption is on, but a failed primary comes back as secondary.
    assert_eq!(sim.holders(G0), ["b"]);
    // `ha restore` from either node puts everyone back.
    sim.command("b", Command::HaRestore);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.holders(G0), ["a"]);
}

#[test]
fn on_failure_restore_takes_the_role_back_even_without_preemption() {
    let mut cfgs = pair_configs();
    for c in &mut cfgs {
        c.preempt = false;
        c.on_failure = OnFailure::Restore;
    }
    let mut sim = settled_pair(cfgs);
    sim.input(
        "a",
        Input::LocalMonitor {
            healthy: false,
            detail: "down".into(),
        },
    );
    sim.run_for(ms(5));
    assert_eq!(sim.holders(G0), ["b"]);
    sim.input(
        "a",
        Input::LocalMonitor {
            healthy: true,
            detail: String::new(),
        },
    );
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.holders(G0), ["a"]);
}

#[test]
fn restore_is_refused_while_the_primary_is_unhealthy() {
    let mut sim = settled_pair(pair_configs());
    sim.input(
        "a",
        Input::LocalMonitor {
            healthy: false,
            detail: "down".into(),
        },
    );
    sim.run_for(ms(300));
    let out = sim.command("b", Command::HaRestore);
    assert_eq!(refusal(&out), Some(Refusal::PeerUnhealthy("a".into())));
}

#[test]
fn remote_monitor_failure_of_the_active_makes_the_standby_take_over() {
    let mut sim = settled_pair(pair_configs());
    let t = sim.now;
    sim.input(
        "b",
        Input::RemoteMonitor {
            peer: "a".into(),
            healthy: false,
            detail: "no SMTP banner".into(),
        },
    );
    sim.run_for(ms(5));
    assert_eq!(sim.holders(G0), ["b"]);
    assert_eq!(
        role_changes(&sim, "a", t)[0].2,
        Reason::TakenOver { by: "b".into() }
    );
}

#[test]
fn three_nodes_the_next_best_takes_over() {
    let cfgs = vec![
        NodeConfig::new("a", ConfiguredRole::Primary, 200, &["b", "c"]),
        NodeConfig::new("b", ConfiguredRole::Secondary, 150, &["a", "c"]),
        NodeConfig::new("c", ConfiguredRole::Secondary, 100, &["a", "b"]),
    ];
    let mut sim = settled_pair(cfgs);
    assert_eq!(sim.holders(G0), ["a"]);
    sim.crash("a");
    sim.run_for(ms(5));
    assert_eq!(sim.holders(G0), ["b"]);
    sim.hang("b");
    sim.run_for(ms(900));
    assert_eq!(sim.holders(G0), ["b", "c"]);
    sim.crash("b");
    sim.run_for(ms(5));
    assert_eq!(sim.holders(G0), ["c"]);
}

#[test]
fn forwarded_command_runs_on_the_node_it_concerns() {
    let mut sim = settled_pair(pair_configs());
    let out = sim.input(
        "a",
        Input::Forward {
            to: "b".into(),
            command: Command::FailoverActive,
        },
    );
    assert!(out.contains(&Output::Event(Event::CommandForwarded {
        to: "b".into(),
        command: Command::FailoverActive
    })));
    sim.run_for(ms(5));
    assert_eq!(sim.holders(G0), ["b"]);
}

fn active_active() -> Vec<NodeConfig> {
    let mut cfgs = pair_configs();
    for c in &mut cfgs {
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
    cfgs
}

#[test]
fn asa_active_active_groups_fail_over_independently() {
    let (g1, g2) = (GroupId(1), GroupId(2));
    let mut sim = settled_pair(active_active());
    assert_eq!(
        (sim.holders(g1), sim.holders(g2)),
        (vec!["a".into()], vec!["b".into()])
    );

    // Move group 2 to a (ASA AA upgrade: both groups on one unit).
    sim.command(
        "a",
        Command::FailoverGroup {
            group: g2,
            active: true,
        },
    );
    sim.run_for(ms(5));
    assert_eq!(sim.holders(g2), ["a"]);
    assert_eq!(sim.holders(g1), ["a"]);
    // Reload b; it comes back and, yielded, leaves group 2 where it is.
    reboot(&mut sim, "b", Duration::from_secs(10));
    // b restarted fresh: preemption brings group 2 home.
    assert_eq!(sim.holders(g2), ["b"]);
    assert_eq!(sim.holders(g1), ["a"]);
    // A crash of a moves only group 1.
    sim.crash("a");
    sim.run_for(ms(5));
    assert_eq!(
        (sim.holders(g1), sim.holders(g2)),
        (vec!["b".into()], vec!["b".into()])
    );
    let out = sim.command(
        "b",
        Command::FailoverGroup {
            group: GroupId(9),
            active: true,
        },
    );
    assert_eq!(refusal(&out), Some(Refusal::UnknownGroup(GroupId(9))));
}

#[test]
fn config_only_every_node_serves() {
    let mut cfgs = pair_configs();
    for c in &mut cfgs {
        c.mode = Mode::ConfigOnly;
        c.groups.clear();
    }
    let mut sim = settled_pair(cfgs);
    for n in ["a", "b"] {
        assert!(sim.nodes[n].service, "{n} serves");
        assert!(sim.nodes[n].vips.is_empty());
        assert_eq!(
            sim.node(n)
                .expect("look up the node")
                .effective_role(sim.now),
            EffectiveRole::Active
        );
    }
    let out = sim.command("a", Command::FailoverActive);
    assert_eq!(refusal(&out), Some(Refusal::ConfigOnlyMode));
    sim.input(
        "b",
        Input::LocalMonitor {
            healthy: false,
            detail: "down".into(),
        },
    );
    assert!(!sim.nodes["b"].service);
}

#[test]
fn a_forwarded_command_runs_once_although_it_comes_over_every_link() {
    // Regression: found by the random-fault property (ha restore ran twice).
    let mut cfgs = pair_configs();
    for c in &mut cfgs {
        c.links = vec!["hb0".into(), "hb1".into()];
    }
    let mut sim = settled_pair(cfgs);
    let t = sim.now;
    sim.command("a", Command::HaRestore);
    sim.run_for(ms(5));
    let runs = events(&sim.outputs_since("b", t))
        .into_iter()
        .filter(|e| matches!(e, Event::CommandExecuted { .. }))
        .count();
    assert_eq!(runs, 1);
}

#[test]
fn a_node_that_just_took_over_on_request_still_yields_to_a_better_active() {
    // Regression (found by the random-fault property): c accepted a
    // handover from b, then the primary came back from a partition, still
    // active. c's grace period covered only b, so c must step down at once.
    let cfgs = vec![
        NodeConfig::new("a", ConfiguredRole::Primary, 200, &["b", "c"]),
        NodeConfig::new("b", ConfiguredRole::Secondary, 150, &["a", "c"]),
        NodeConfig::new("c", ConfiguredRole::Secondary, 100, &["a", "b"]),
    ];
    let mut sim = Sim::new(cfgs, 1).expect("start the cluster");
    sim.run_for(Duration::from_secs(1));
    sim.isolate("a");
    sim.run_for(ms(700));
    assert_eq!(sim.holders(G0), ["a", "b"]);
    sim.command("b", Command::FailoverStandby);
    sim.run_for(ms(5));
    assert_eq!(sim.holders(G0), ["a", "c"]);
    sim.heal();
    sim.run_for(ms(250));
    assert_eq!(sim.holders(G0), ["a"]);
}
