//! Each checker against a hand-made history that breaks exactly its
//! promise (it must catch it, and name the first culprit), and against
//! the clean history of a campaign with a failover in it (it must pass).

use std::collections::BTreeMap;

use tandem_chaos::check::{self, Checker};
use tandem_chaos::{Event, History, Outcome, Phase, Settings, UpgradePhase, judge};

fn op(h: &mut History, t: u64, id: &str, node: &str, outcome: Outcome) {
    h.push(
        t,
        Event::Op {
            client: 0,
            id: id.into(),
            start_ms: t.saturating_sub(2),
            node: Some(node.into()),
            outcome,
            reply: String::new(),
        },
    );
}

fn delivered(h: &mut History, t: u64, id: &str) {
    h.push(t, Event::Delivered { id: id.into() });
}

fn role(h: &mut History, t: u64, node: &str, epoch: u64, accepting: bool) {
    let role = if accepting { "active" } else { "standby" };
    h.push(
        t,
        Event::Role {
            node: node.into(),
            group: 0,
            role: role.into(),
            epoch,
            accepting,
        },
    );
}

fn fault(h: &mut History, t: u64, kind: &str, target: &str, phase: Phase) {
    h.push(
        t,
        Event::Fault {
            kind: kind.into(),
            target: target.into(),
            phase,
        },
    );
}

fn settled(h: &mut History, t: u64, actives: &[&str], in_sync: bool) {
    let actives = BTreeMap::from([(
        "0".to_string(),
        actives.iter().map(|a| a.to_string()).collect(),
    )]);
    h.push(
        t,
        Event::Cluster {
            actives,
            in_sync,
            report_clean: true,
        },
    );
}

fn node_end(h: &mut History, t: u64, node: &str) {
    h.push(
        t,
        Event::NodeEnd {
            node: node.into(),
            panics: 0,
            failed: false,
            reason: None,
        },
    );
}

/// A campaign with one fault: alpha killed at 100 ms, beta takes over at
/// 150 ms under a new epoch, alpha back as standby; every message
/// delivered, one of them twice.
fn clean() -> History {
    let mut h = History::new();
    role(&mut h, 0, "alpha", 1, true);
    role(&mut h, 0, "beta", 1, false);
    op(&mut h, 50, "m1", "alpha", Outcome::Acked);
    op(&mut h, 90, "m2", "alpha", Outcome::Acked);
    fault(&mut h, 100, "kill-agent", "alpha", Phase::Start);
    role(&mut h, 100, "alpha", 0, false);
    op(&mut h, 110, "m3", "alpha", Outcome::ConnectFailed);
    role(&mut h, 150, "beta", 2, true);
    op(&mut h, 170, "m3", "beta", Outcome::Acked);
    fault(&mut h, 200, "kill-agent", "alpha", Phase::End);
    op(&mut h, 220, "m6", "beta", Outcome::Acked);
    role(&mut h, 250, "alpha", 2, false);
    op(&mut h, 260, "m4", "beta", Outcome::Refused);
    op(&mut h, 280, "m5", "beta", Outcome::Acked);
    h.push(300, Event::Heal);
    settled(&mut h, 310, &["beta"], false);
    settled(&mut h, 400, &["beta"], true);
    for (t, id) in [
        (320, "m1"),
        (330, "m2"),
        (340, "m2"),
        (350, "m3"),
        (360, "m5"),
        (370, "m6"),
    ] {
        delivered(&mut h, t, id);
    }
    node_end(&mut h, 500, "alpha");
    node_end(&mut h, 500, "beta");
    h
}

fn settings(coordination: &str) -> Settings {
    Settings {
        seed: 7,
        nodes: 2,
        coordination: coordination.into(),
        convergence_bound_ms: 200,
        tail_ms: 50,
    }
}

#[test]
fn a_clean_history_passes_every_checker() {
    let s = judge(&clean(), &settings("etcd"));
    assert_eq!(s.violations, vec![], "{}", s.table());
    assert_eq!((s.operations, s.acknowledged, s.delivered), (7, 5, 5));
    assert_eq!((s.lost, s.duplicates, s.dual_active_ms), (0, 1, 0));
    let kill = s.faults["kill-agent"];
    assert_eq!(kill.count, 1);
    // From the fault at 100 ms to beta's first 250 at 170 ms.
    assert_eq!(kill.max_unavailable_ms, 70);
    assert!(s.table().contains("no violations"));
}

#[test]
fn an_acknowledged_message_never_delivered_is_lost() {
    let mut h = clean();
    op(&mut h, 290, "m7", "beta", Outcome::Acked);
    op(&mut h, 295, "m8", "beta", Outcome::Acked);
    let (d, v) = check::lost(&h);
    assert_eq!((d.acknowledged, d.delivered, d.lost), (7, 5, 2));
    let v = v.expect("a violation");
    assert_eq!(v.checker, Checker::Lost);
    assert!(
        v.first.contains("m7") && v.first.contains("beta"),
        "{}",
        v.first
    );
}

#[test]
fn refused_and_broken_operations_are_owed_nothing() {
    let mut h = clean();
    op(&mut h, 290, "m8", "beta", Outcome::Broken);
    op(&mut h, 291, "m9", "beta", Outcome::Refused);
    assert_eq!(check::lost(&h).1, None);
}

#[test]
fn two_nodes_accepting_at_once_is_dual_active() {
    let mut h = clean();
    // Alpha back at 250 ms calls itself active under the old epoch while
    // beta still serves.
    role(&mut h, 260, "alpha", 1, true);
    role(&mut h, 290, "alpha", 1, true);
    role(&mut h, 295, "alpha", 1, false);
    role(&mut h, 295, "beta", 2, true);
    let (ms, v) = check::dual_active(&h, true);
    assert_eq!(ms, 30);
    let v = v.expect("a violation");
    assert_eq!(v.checker, Checker::DualActive);
    assert!(
        v.first.contains("alpha (epoch 1)") && v.first.contains("260 ms"),
        "{}",
        v.first
    );
    // Peers mode measures it and does not fail.
    assert_eq!(check::dual_active(&h, false), (30, None));
    let s = judge(&h, &settings("peers"));
    assert_eq!((s.dual_active_ms, s.violations.len()), (30, 0));
}

#[test]
fn one_observation_between_two_is_not_dual_active() {
    // Alpha seen accepting once, then not: when it stopped between the two
    // is unknown, so nothing is counted against it.
    let mut h = clean();
    role(&mut h, 260, "alpha", 1, true);
    role(&mut h, 280, "alpha", 1, false);
    assert_eq!(check::dual_active(&h, true), (0, None));
}

#[test]
fn a_cluster_that_never_settles_fails_convergence() {
    let mut h = clean();
    h.entries
        .retain(|e| !matches!(e.event, Event::Cluster { .. }));
    settled(&mut h, 320, &["alpha", "beta"], true);
    settled(&mut h, 450, &[], true);
    settled(&mut h, 600, &["beta"], true); // too late: the bound is 200 ms
    let v = check::convergence(&h, 200).expect("a violation");
    assert_eq!(v.checker, Checker::Convergence);
    assert!(v.first.contains("last seen at 450 ms"), "{}", v.first);
    assert_eq!(check::convergence(&h, 400), None);
}

#[test]
fn a_standby_never_in_sync_fails_convergence() {
    let mut h = clean();
    h.entries
        .retain(|e| !matches!(e.event, Event::Cluster { .. }));
    settled(&mut h, 320, &["beta"], false);
    assert!(check::convergence(&h, 200).is_some());
    h.entries.retain(|e| e.event != Event::Heal);
    let v = check::convergence(&h, 200).expect("a violation");
    assert!(v.first.contains("no final heal"), "{}", v.first);
}

#[test]
fn an_upgrade_must_end_on_its_target_or_say_why_it_stopped() {
    let upgrade = |phase, reason: Option<&str>| Event::Upgrade {
        phase,
        target: "6.2.5".into(),
        reason: reason.map(Into::into),
    };
    let mut h = clean();
    h.push(10, upgrade(UpgradePhase::Started, None));
    assert!(
        check::upgrades(&h)
            .unwrap()
            .first
            .contains("neither finished nor stopped")
    );
    h.push(20, upgrade(UpgradePhase::Stopped, Some(" ")));
    assert!(
        check::upgrades(&h)
            .unwrap()
            .first
            .contains("without a reason")
    );
    h.entries.pop();
    h.push(20, upgrade(UpgradePhase::Stopped, Some("beta unhealthy")));
    assert_eq!(check::upgrades(&h), None);
    h.push(30, upgrade(UpgradePhase::Started, None));
    h.push(40, upgrade(UpgradePhase::Finished, None));
    assert_eq!(check::upgrades(&h), None);
}

#[test]
fn a_panic_or_an_unexplained_failure_is_caught() {
    let mut h = clean();
    h.push(
        600,
        Event::NodeEnd {
            node: "gamma".into(),
            panics: 0,
            failed: true,
            reason: Some("service exited 3 times".into()),
        },
    );
    assert_eq!(check::logs(&h), None);
    h.push(
        600,
        Event::NodeEnd {
            node: "delta".into(),
            panics: 0,
            failed: true,
            reason: None,
        },
    );
    assert!(
        check::logs(&h)
            .unwrap()
            .first
            .contains("delta ended failed")
    );
    let mut h = clean();
    h.push(
        600,
        Event::NodeEnd {
            node: "beta".into(),
            panics: 2,
            failed: false,
            reason: None,
        },
    );
    assert!(check::logs(&h).unwrap().first.contains("2 panic"));
}

#[test]
fn an_outage_is_charged_to_the_fault_under_way() {
    let mut h = History::new();
    for t in (0..=1000).step_by(10) {
        if !(300..700).contains(&t) {
            op(&mut h, t, &format!("m{t}"), "alpha", Outcome::Acked);
        }
    }
    fault(&mut h, 250, "partition-active", "alpha", Phase::Start);
    fault(&mut h, 400, "partition-active", "alpha", Phase::End);
    fault(&mut h, 800, "sigstop-agent", "beta", Phase::Start);
    // Never ended: it lasts to the end of the history.
    let f = check::availability(&h, 50);
    // The last 250 before the outage was at 290 ms, the next at 700 ms.
    assert_eq!(f["partition-active"].max_unavailable_ms, 410);
    assert_eq!(f["sigstop-agent"].max_unavailable_ms, 10);
    assert_eq!(f["sigstop-agent"].count, 1);
}

#[test]
fn the_json_summary_has_the_documented_shape() {
    let s = judge(&clean(), &settings("etcd"));
    let v = serde_json::to_value(&s).unwrap();
    for key in [
        "seed",
        "nodes",
        "coordination",
        "duration_s",
        "operations",
        "acknowledged",
        "delivered",
        "lost",
        "duplicates",
        "dual_active_ms",
        "faults",
        "violations",
    ] {
        assert!(v.get(key).is_some(), "no {key} in {v}");
    }
    assert_eq!(v["faults"]["kill-agent"]["count"], 1);
}
