//! Each strategy's plan, step by step, read against the seeds' procedures.

use crate::support::*;
use tandem_upgrade::{
    ClientImpact, PlanOptions, SlotStatus, SlotView, Strategy, UpgradePlan, plan, plan_rollback,
};

fn lines(plan: &UpgradePlan) -> Vec<String> {
    plan.steps
        .iter()
        .map(|s| format!("{}. {s}", s.id))
        .collect()
}

fn planned(
    cluster: &tandem_upgrade::ClusterState,
    target: &str,
    strategy: Strategy,
) -> UpgradePlan {
    plan(
        cluster,
        &v(target),
        &fortimail_catalog(),
        strategy,
        PlanOptions::default(),
    )
    .expect("plan the upgrade")
}

/// ASA 004 (reload-standby, fail over, upgrade the old active) with
/// Huawei 003's preflight (sync report, backups, preemption off and back).
#[test]
fn switchover_follows_asa_and_huawei() {
    let mut pair = active_passive(&["a", "b"], "6.2.0", &["6.2.5"]);
    pair.nodes[0].preempt = true;
    let p = planned(&pair, "6.2.5", Strategy::Switchover);
    assert_eq!(
        lines(&p),
        [
            "1. run the sync report; continue only if it is clean",
            "2. preflight: every node healthy, verified images for 6.2.5 where needed",
            "3. back up the configuration of a, b",
            "4. disable preemption on a",
            "5. install 6.2.5 into the inactive slot of b, a",
            "6. reload b into 6.2.5 (boot the pending slot)",
            "7. wait for b to be ready on 6.2.5, data in sync",
            "8. switch over: `failover standby` on a; a standby on 6.2.5 takes over",
            "9. check the service on the active node (b) on 6.2.5",
            "10. reload a into 6.2.5 (boot the pending slot)",
            "11. wait for a to be ready on 6.2.5, data in sync",
            "12. restore preemption (on) on a",
            "13. run the sync report; continue only if it is clean",
        ]
    );
    assert_eq!(p.impact.failovers, 1);
    assert_eq!(p.impact.outage_ms, 0);
    assert!(matches!(&p.steps[7].impact, ClientImpact::Failover { from } if from == "a"));
    assert!(p.steps[11].finally, "preemption comes back even on abort");
}

/// A multi-hop path: the whole pair finishes 6.2.5 before 6.4.0 starts,
/// and the second hop starts from the node the first made active.
#[test]
fn switchover_goes_hop_by_hop() {
    let pair = active_passive(&["a", "b"], "6.2.0", &["6.2.5", "6.4.0"]);
    let p = planned(&pair, "6.4.0", Strategy::Switchover);
    let hops: Vec<String> = p
        .hops
        .iter()
        .map(|h| format!("{} → {} ({})", h.from, h.to, h.rule))
        .collect();
    assert_eq!(
        hops,
        [
            "6.2.0 → 6.2.5 (catalog edge 6.2.0 → 6.2.5)",
            "6.2.5 → 6.4.0 (catalog edge 6.2.5 → 6.4.0)"
        ]
    );
    assert_eq!(
        lines(&p)[3..],
        [
            "4. install 6.2.5 into the inactive slot of b, a",
            "5. reload b into 6.2.5 (boot the pending slot)",
            "6. wait for b to be ready on 6.2.5, data in sync",
            "7. switch over: `failover standby` on a; a standby on 6.2.5 takes over",
            "8. check the service on the active node (b) on 6.2.5",
            "9. reload a into 6.2.5 (boot the pending slot)",
            "10. wait for a to be ready on 6.2.5, data in sync",
            "11. install 6.4.0 into the inactive slot of b, a",
            "12. reload a into 6.4.0 (boot the pending slot)",
            "13. wait for a to be ready on 6.4.0, data in sync",
            "14. switch over: `failover standby` on b; a standby on 6.4.0 takes over",
            "15. check the service on the active node (a) on 6.4.0",
            "16. reload b into 6.4.0 (boot the pending slot)",
            "17. wait for b to be ready on 6.4.0, data in sync",
            "18. run the sync report; continue only if it is clean",
        ]
    );
}

/// FortiMail 000: secondaries first; the primary sends holdoff and
/// restarts; roles never move; the plan states the outage.
#[test]
fn holdoff_follows_fortimail() {
    let trio = active_passive(&["a", "b", "c"], "6.2.0", &["6.2.5"]);
    let options = PlanOptions {
        restart_estimate_ms: 45_000,
        holdoff_secs: 240,
        ..PlanOptions::default()
    };
    let p = plan(
        &trio,
        &v("6.2.5"),
        &fortimail_catalog(),
        Strategy::Holdoff,
        options,
    )
    .expect("plan the upgrade");
    assert_eq!(
        lines(&p),
        [
            "1. run the sync report; continue only if it is clean",
            "2. preflight: every node healthy, verified images for 6.2.5 where needed",
            "3. back up the configuration of a, b, c",
            "4. install 6.2.5 into the inactive slot of c, b, a",
            "5. reload c into 6.2.5 (boot the pending slot)",
            "6. wait for c to be ready on 6.2.5, data in sync",
            "7. reload b into 6.2.5 (boot the pending slot)",
            "8. wait for b to be ready on 6.2.5, data in sync",
            "9. a sends `ha holdoff 240` to its peers, then boots 6.2.5",
            "10. check the service on the active node (a) on 6.2.5",
            "11. run the sync report; continue only if it is clean",
        ]
    );
    assert_eq!(
        p.steps[8].impact,
        ClientImpact::Outage {
            node: "a".into(),
            estimate_ms: 45_000
        }
    );
    assert_eq!(p.impact.outage_ms, 45_000);
    assert_eq!(p.impact.failovers, 0);
    assert!(p.impact.summary.contains("45 s"), "{}", p.impact.summary);
    assert!(
        p.impact.summary.contains("roles never move"),
        "{}",
        p.impact.summary
    );
}

/// ESA 002: disconnect, suspend, upgrade, resume, node by node, the
/// primary last; reconnect once the versions match.
#[test]
fn rolling_follows_esa() {
    let cluster = config_only(&["a", "b", "c"], "6.2.0", &["6.2.5"]);
    let p = planned(&cluster, "6.2.5", Strategy::Rolling { batch: 1 });
    assert_eq!(
        lines(&p),
        [
            "1. run the sync report; continue only if it is clean",
            "2. preflight: every node healthy, verified images for 6.2.5 where needed",
            "3. back up the configuration of a, b, c",
            "4. install 6.2.5 into the inactive slot of c, b, a",
            "5. disconnect c from cluster config",
            "6. suspend the listener of c and drain",
            "7. reload c into 6.2.5 (boot the pending slot)",
            "8. wait for c to be ready on 6.2.5, data in sync",
            "9. resume the listener of c",
            "10. disconnect b from cluster config",
            "11. suspend the listener of b and drain",
            "12. reload b into 6.2.5 (boot the pending slot)",
            "13. wait for b to be ready on 6.2.5, data in sync",
            "14. resume the listener of b",
            "15. disconnect a from cluster config",
            "16. suspend the listener of a and drain",
            "17. reload a into 6.2.5 (boot the pending slot)",
            "18. wait for a to be ready on 6.2.5, data in sync",
            "19. resume the listener of a",
            "20. reconnect a, b, c to cluster config (all on 6.2.5)",
            "21. run the sync report; continue only if it is clean",
        ]
    );
    // The plan says why c and b stay disconnected.
    let note = p.steps[8].note.clone().unwrap_or_default();
    assert!(note.contains("stays disconnected"), "{note}");
    assert!(note.contains("runs 6.2.0"), "{note}");
    assert_eq!(p.steps[18].note, None);
    assert_eq!(
        p.steps[5].impact,
        ClientImpact::ReducedCapacity { serving: 2, of: 3 }
    );
}

/// `--batch 2` on five nodes: two secondaries at a time, the primary alone;
/// a batch as large as the cluster is cut so one node always serves.
#[test]
fn rolling_batches_keep_a_node_serving() {
    let five = config_only(&["a", "b", "c", "d", "e"], "6.2.0", &["6.2.5"]);
    let p = planned(&five, "6.2.5", Strategy::Rolling { batch: 2 });
    let boots: Vec<String> = p
        .steps
        .iter()
        .filter(|s| matches!(s.kind, tandem_upgrade::StepKind::Boot { .. }))
        .map(|s| s.nodes.join(","))
        .collect();
    assert_eq!(boots, ["e,d", "c,b", "a"]);
    assert_eq!(p.impact.min_serving, 3);

    let pair = config_only(&["a", "b"], "6.2.0", &["6.2.5"]);
    let p = planned(&pair, "6.2.5", Strategy::Rolling { batch: 9 });
    let boots: Vec<String> = p
        .steps
        .iter()
        .filter(|s| matches!(s.kind, tandem_upgrade::StepKind::Boot { .. }))
        .map(|s| s.nodes.join(","))
        .collect();
    assert_eq!(boots, ["b", "a"]);
    assert_eq!(p.impact.min_serving, 1);
}

/// ASA active/active: both groups to a, upgrade b, both to b, upgrade a,
/// groups back where they were.
#[test]
fn active_active_follows_asa() {
    let pair = active_active("6.2.0", &["6.2.5"]);
    let p = planned(&pair, "6.2.5", Strategy::ActiveActive);
    assert_eq!(
        lines(&p),
        [
            "1. run the sync report; continue only if it is clean",
            "2. preflight: every node healthy, verified images for 6.2.5 where needed",
            "3. back up the configuration of a, b",
            "4. install 6.2.5 into the inactive slot of b, a",
            "5. move every failover group to a",
            "6. reload b into 6.2.5 (boot the pending slot)",
            "7. wait for b to be ready on 6.2.5, data in sync",
            "8. move every failover group to b",
            "9. reload a into 6.2.5 (boot the pending slot)",
            "10. wait for a to be ready on 6.2.5, data in sync",
            "11. move the groups back: group 1 to a, group 2 to b",
            "12. run the sync report; continue only if it is clean",
        ]
    );
}

/// Huawei 003 step 7: roll back the standby first, switch over, then roll
/// back the new standby — only ever a standby restarts.
#[test]
fn rollback_is_standby_first() {
    let mut pair = active_passive(&["a", "b"], "6.2.5", &[]);
    for n in &mut pair.nodes {
        n.other_slot = Some(SlotView {
            version: v("6.2.0"),
            state: SlotStatus::Good,
        });
    }
    let p = plan_rollback(
        &pair,
        &v("6.2.0"),
        Strategy::Switchover,
        PlanOptions::default(),
    )
    .expect("plan the rollback");
    assert!(p.rollback);
    assert_eq!(
        lines(&p),
        [
            "1. roll b back to 6.2.0 (boot the previous slot)",
            "2. wait for b to be ready on 6.2.0, data in sync",
            "3. switch over: `failover standby` on a; a standby on 6.2.0 takes over",
            "4. check the service on the active node (b) on 6.2.0",
            "5. roll a back to 6.2.0 (boot the previous slot)",
            "6. wait for a to be ready on 6.2.0, data in sync",
            "7. run the sync report; continue only if it is clean",
        ]
    );
}

/// Every plan prints as text and survives a JSON round trip (the CLI's
/// `--json`, the journal).
#[test]
fn plans_print_and_round_trip() {
    let p = planned(
        &active_passive(&["a", "b"], "6.2.0", &["6.2.5", "6.4.0"]),
        "6.4.0",
        Strategy::Switchover,
    );
    let text = p.to_string();
    assert!(
        text.starts_with("upgrade to 6.4.0 with switchover\npath:\n  6.2.0 → 6.2.5"),
        "{text}"
    );
    assert!(
        text.contains("expected client impact: no outage expected"),
        "{text}"
    );
    let json = serde_json::to_string(&p).expect("serialize the plan");
    let back: UpgradePlan = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("deserialize the plan from {json}: {e}"));
    assert_eq!(back, p);
}
