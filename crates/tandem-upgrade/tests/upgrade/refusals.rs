//! Refusals: each reason a plan is refused, and that the message names
//! what is wrong.

use crate::support::*;
use tandem_core::EffectiveRole;
use tandem_upgrade::{ClusterState, PlanError, PlanOptions, Strategy, plan};

fn refused(cluster: &ClusterState, target: &str, strategy: Strategy) -> PlanError {
    match plan(
        cluster,
        &v(target),
        &fortimail_catalog(),
        strategy,
        PlanOptions::default(),
    ) {
        Ok(p) => panic!("planned although it should not:\n{p}"),
        Err(e) => e,
    }
}

#[test]
fn strategy_must_fit_the_mode() {
    let pair = active_passive(&["a", "b"], "6.2.0", &["6.2.5"]);
    let e = refused(&pair, "6.2.5", Strategy::Rolling { batch: 1 });
    assert!(matches!(e, PlanError::StrategyNotForMode { .. }));
    assert_eq!(
        e.to_string(),
        "strategy rolling does not apply to a active-passive cluster (use switchover)"
    );
    let co = config_only(&["a", "b"], "6.2.0", &["6.2.5"]);
    assert!(matches!(
        refused(&co, "6.2.5", Strategy::Switchover),
        PlanError::StrategyNotForMode { .. }
    ));
    assert!(matches!(
        refused(&co, "6.2.5", Strategy::Rolling { batch: 0 }),
        PlanError::ZeroBatch
    ));
}

#[test]
fn every_node_must_be_healthy() {
    let mut pair = active_passive(&["a", "b"], "6.2.0", &["6.2.5"]);
    pair.nodes[1].healthy = false;
    let e = refused(&pair, "6.2.5", Strategy::Switchover);
    assert!(e.to_string().starts_with("node b is not healthy"), "{e}");
}

#[test]
fn images_must_be_present_and_verified_for_every_hop() {
    let pair = active_passive(&["a", "b"], "6.2.0", &["6.2.5"]);
    let e = refused(&pair, "6.4.0", Strategy::Switchover);
    assert!(
        matches!(&e, PlanError::ImageMissing { node, version } if node == "a" && *version == v("6.4.0")),
        "{e}"
    );
    let mut pair = active_passive(&["a", "b"], "6.2.0", &["6.2.5"]);
    pair.nodes[0].images[0].verified = false;
    let e = refused(&pair, "6.2.5", Strategy::Switchover);
    assert_eq!(
        e.to_string(),
        "the image for 6.2.5 on node a is not verified: verify its signature first"
    );
}

#[test]
fn path_problems_come_from_the_catalog() {
    let pair = active_passive(&["a", "b"], "6.2.0", &["6.2.5"]);
    assert!(matches!(
        refused(&pair, "7.0.0", Strategy::Switchover),
        PlanError::NoPath(_)
    ));
    let e = refused(&pair, "6.2.0", Strategy::Switchover);
    assert_eq!(
        e.to_string(),
        "every node already runs 6.2.0: nothing to do"
    );
}

#[test]
fn three_releases_or_a_stray_one_are_refused() {
    let mut trio = active_passive(&["a", "b", "c"], "6.2.0", &["6.2.5", "6.4.0"]);
    trio.nodes[1].running = v("6.2.5");
    trio.nodes[2].running = v("6.4.0");
    assert!(matches!(
        refused(&trio, "6.4.0", Strategy::Switchover),
        PlanError::MixedVersions { .. }
    ));
    // Mid-hop is fine: b already on 6.2.5 skips the first hop's reload,
    // so the first restart is a's, after the switchover.
    let mut pair = active_passive(&["a", "b"], "6.2.0", &["6.2.5", "6.4.0"]);
    pair.nodes[1].running = v("6.2.5");
    let p = plan(
        &pair,
        &v("6.4.0"),
        &fortimail_catalog(),
        Strategy::Switchover,
        PlanOptions::default(),
    )
    .expect("plan the upgrade");
    let first_boot = p
        .steps
        .iter()
        .find(|s| matches!(s.kind, tandem_upgrade::StepKind::Boot { .. }));
    assert_eq!(
        first_boot.map(|s| s.to_string()).as_deref(),
        Some("reload a into 6.2.5 (boot the pending slot)")
    );
}

#[test]
fn holdoff_needs_the_primary_active() {
    let mut pair = active_passive(&["a", "b"], "6.2.0", &["6.2.5"]);
    pair.nodes[0].effective = EffectiveRole::Standby;
    pair.nodes[1].effective = EffectiveRole::Active;
    let e = refused(&pair, "6.2.5", Strategy::Holdoff);
    assert!(e.to_string().contains("run `ha restore` first"), "{e}");
    // No active at all is refused for every active-passive strategy.
    pair.nodes[1].effective = EffectiveRole::Standby;
    assert!(matches!(
        refused(&pair, "6.2.5", Strategy::Switchover),
        PlanError::ActiveNotUnique { .. }
    ));
}

#[test]
fn a_lone_node_cannot_be_upgraded_without_downtime() {
    let one = active_passive(&["a"], "6.2.0", &["6.2.5"]);
    assert!(matches!(
        refused(&one, "6.2.5", Strategy::Switchover),
        PlanError::TooFewNodes {
            needed: 2,
            have: 1,
            ..
        }
    ));
}

#[test]
fn a_dirty_sync_report_is_refused() {
    let mut pair = active_passive(&["a", "b"], "6.2.0", &["6.2.5"]);
    pair.sync_clean = Some(false);
    assert!(matches!(
        refused(&pair, "6.2.5", Strategy::Switchover),
        PlanError::SyncNotClean
    ));
}
