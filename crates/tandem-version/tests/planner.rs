//! The planner against the seeds' examples, and its invariants over random
//! catalogs: every hop legal, every path as short as a brute-force search's,
//! parse∘print the identity, ordering total and consistent.

use proptest::prelude::*;
use tandem_version::{
    Catalog, Edge, Error, HopRefusal, HopRule, Release, Rules, Spelling, Version, VersionPattern,
};

fn v(text: &str) -> Version {
    text.parse().expect("parse the version")
}

fn catalog(rules: Rules, versions: &[&str], edges: &[(&str, &str)]) -> Catalog {
    let pattern = |t: &str| t.parse::<VersionPattern>().expect("parse the pattern");
    Catalog::from_parts(
        rules,
        versions.iter().map(|t| Release::new(v(t))).collect(),
        edges
            .iter()
            .map(|(from, to)| Edge {
                from: pattern(from),
                to: pattern(to),
            })
            .collect(),
    )
}

fn hops(path: &tandem_version::UpgradePath) -> Vec<String> {
    path.hops.iter().map(|h| h.to.to_string()).collect()
}

fn plan(c: &Catalog, from: &str, to: &str) -> Result<Vec<String>, Error> {
    c.plan(&v(from), &v(to)).map(|p| hops(&p))
}

const ASA: &[&str] = &[
    "7.0(1)", "7.0(2)", "7.0(4)", "7.1(1)", "7.1(2)", "7.2(1)", "8.0(1)", "8.0(2)",
];

#[test]
fn seed_004_asa_examples() {
    let c = catalog(Rules::MinorStep, ASA, &[]);
    // 7.0(1) → 7.0(4) in one hop, skipping the maintenance releases between.
    assert_eq!(
        plan(&c, "7.0(1)", "7.0(4)").ok(),
        Some(vec!["7.0(4)".to_string()])
    );
    // 7.0(1) → 7.2(1) goes through 7.1; the newest 7.1 is the stepping stone.
    assert_eq!(
        plan(&c, "7.0(1)", "7.2(1)").ok(),
        Some(vec!["7.1(2)".to_string(), "7.2(1)".to_string()])
    );
    // 7.2(1) → 8.0(1) directly when 7.2 is the last 7.x minor.
    let path = c
        .plan(&v("7.2(1)"), &v("8.0(1)"))
        .map_err(|e| e.to_string());
    assert_eq!(
        path.as_ref().map(hops).ok(),
        Some(vec!["8.0(1)".to_string()])
    );
    assert_eq!(path.ok().map(|p| p.hops[0].rule), Some(HopRule::MajorStep));
    // A long way round: every hop, and the tie-break toward the newest.
    assert_eq!(
        plan(&c, "7.0(1)", "8.0(2)").ok(),
        Some(["7.1(2)", "7.2(1)", "8.0(2)"].map(String::from).to_vec())
    );
}

#[test]
fn same_version_is_an_empty_path() {
    let c = catalog(Rules::MinorStep, ASA, &[]);
    assert_eq!(plan(&c, "7.1(1)", "7.1(1)").ok(), Some(vec![]));
}

#[test]
fn seed_000_fortimail_path() {
    let c = catalog(
        Rules::Edges,
        &["6.2.0", "6.2.1", "6.2.3", "6.2.5"],
        &[("6.2.0", "6.2.3"), ("6.2.3", "6.2.5"), ("6.2.0", "6.2.1")],
    );
    assert_eq!(
        plan(&c, "6.2.0", "6.2.5").ok(),
        Some(vec!["6.2.3".to_string(), "6.2.5".to_string()])
    );
}

#[test]
fn refusals_say_what_blocks() {
    let c = catalog(Rules::MinorStep, ASA, &[]);
    let message = plan(&c, "7.0(4)", "7.0(1)").err().map(|e| e.to_string());
    assert_eq!(
        message.as_deref(),
        Some(
            "7.0(1) is older than 7.0(4): there is no downgrade path (to go back, roll back to the previous image)"
        )
    );
    let message = plan(&c, "7.0(3)", "7.2(1)").err().map(|e| e.to_string());
    assert_eq!(
        message.as_deref(),
        Some("7.0(3) is not a release in the catalog (nearest known releases: 7.0(2) and 7.0(4))")
    );
    let message = plan(&c, "7.0(1)", "9.0(1)").err().map(|e| e.to_string());
    assert_eq!(
        message.as_deref(),
        Some("9.0(1) is not a release in the catalog (the newest known release is 8.0(2))")
    );

    let c = catalog(
        Rules::Edges,
        &["6.0.7", "6.2.0", "6.2.5", "7.0.1"],
        &[("6.0.7", "6.2.*"), ("6.2.*", "6.2.*")],
    );
    match c.plan(&v("6.0.7"), &v("7.0.1")) {
        Err(err @ Error::NoPath { .. }) => {
            let Error::NoPath {
                refusal,
                highest_reachable,
                ..
            } = &err
            else {
                unreachable!()
            };
            assert_eq!(*refusal, HopRefusal::NoEdge);
            assert_eq!(*highest_reachable, v("6.2.5"));
            assert_eq!(
                err.to_string(),
                "no supported upgrade path from 6.0.7 to 7.0.1: the direct hop is refused (edges rule: no catalog edge allows this hop); from 6.0.7 the rules reach no further toward 7.0.1 than 6.2.5"
            );
        }
        other => panic!("expected NoPath, got {other:?}"),
    }
}

// ---- properties -----------------------------------------------------------

fn any_version() -> impl Strategy<Value = Version> {
    (
        0u32..30,
        0u32..30,
        0u32..30,
        proptest::option::of(0u32..30),
        0u8..3,
    )
        .prop_map(|(major, minor, maint, build, style)| Version {
            major,
            minor,
            maint,
            build,
            spelling: match style {
                0 => Spelling::Asa,
                1 => Spelling::Dotted { v_prefix: false },
                _ => Spelling::Dotted { v_prefix: true },
            },
        })
}

/// Small catalogs over few lines, so that minor and major steps, gaps and
/// edges all occur.
fn any_catalog() -> impl Strategy<Value = Catalog> {
    let release = (1u32..4, 0u32..3, 0u32..3).prop_map(|(major, minor, maint)| Version {
        major,
        minor,
        maint,
        build: None,
        spelling: Spelling::Dotted { v_prefix: false },
    });
    let pattern =
        (any::<bool>(), 1u32..4, 0u32..3, 0u32..3).prop_map(|(line, major, minor, maint)| {
            if line {
                VersionPattern::Line { major, minor }
            } else {
                VersionPattern::Exact(Version {
                    major,
                    minor,
                    maint,
                    build: None,
                    spelling: Spelling::Dotted { v_prefix: false },
                })
            }
        });
    (
        any::<bool>(),
        proptest::collection::vec(release, 1..10),
        proptest::collection::vec((pattern.clone(), pattern), 0..12),
    )
        .prop_map(|(edges_rules, releases, edges)| {
            Catalog::from_parts(
                if edges_rules {
                    Rules::Edges
                } else {
                    Rules::MinorStep
                },
                releases.into_iter().map(Release::new).collect(),
                edges
                    .into_iter()
                    .map(|(from, to)| Edge { from, to })
                    .collect(),
            )
        })
}

/// The fewest hops from `from` to `to` by trying every path (exponential;
/// fine for catalogs of under ten releases).
fn brute_force_min(c: &Catalog, from: Version, to: Version) -> Option<usize> {
    if from == to {
        return Some(0);
    }
    c.releases()
        .iter()
        .filter(|r| c.check_hop(&from, &r.version).is_ok() && r.version <= to)
        .filter_map(|r| brute_force_min(c, r.version, to).map(|n| n + 1))
        .min()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn print_then_parse_is_identity(version in any_version()) {
        let text = version.to_string();
        let back: Version = text.parse().map_err(|e: Error| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, version);
        prop_assert_eq!(back.spelling, version.spelling);
        prop_assert_eq!(back.to_string(), text);
    }

    #[test]
    fn ordering_is_total_and_consistent(a in any_version(), b in any_version(), c in any_version()) {
        use std::cmp::Ordering;
        prop_assert_eq!(a.cmp(&b), b.cmp(&a).reverse());
        prop_assert_eq!(a.cmp(&b) == Ordering::Equal, a == b);
        if a <= b && b <= c { prop_assert!(a <= c); }
        let key = |x: &Version| (x.major, x.minor, x.maint, x.build);
        prop_assert_eq!(a.cmp(&b), key(&a).cmp(&key(&b)));
    }

    #[test]
    fn parser_never_panics(text in "\\PC{0,20}") {
        let _ = text.parse::<Version>();
    }

    #[test]
    fn planned_paths_are_legal_and_shortest(c in any_catalog(), i in 0usize..10, j in 0usize..10) {
        let releases = c.releases();
        let from = releases[i % releases.len()].version;
        let to = releases[j % releases.len()].version;
        let expected = if from <= to { brute_force_min(&c, from, to) } else { None };
        match c.plan(&from, &to) {
            Ok(path) => {
                prop_assert_eq!(Some(path.hops.len()), expected);
                let mut at = from;
                for hop in &path.hops {
                    prop_assert_eq!(hop.from, at);
                    prop_assert!(hop.to > hop.from);
                    prop_assert_eq!(c.check_hop(&hop.from, &hop.to), Ok(hop.rule));
                    at = hop.to;
                }
                prop_assert_eq!(at, to);
            }
            Err(Error::Downgrade { .. }) => prop_assert!(to < from),
            Err(Error::NoPath { highest_reachable, .. }) => {
                prop_assert_eq!(expected, None);
                prop_assert!(highest_reachable < to);
                prop_assert!(brute_force_min(&c, from, highest_reachable).is_some());
            }
            Err(other) => prop_assert!(false, "unexpected error {}", other),
        }
    }

    #[test]
    fn minor_step_always_reaches_any_newer_release(c in any_catalog(), i in 0usize..10, j in 0usize..10) {
        let c = Catalog::from_parts(Rules::MinorStep, c.releases().to_vec(), vec![]);
        let releases = c.releases();
        let (a, b) = (releases[i % releases.len()].version, releases[j % releases.len()].version);
        let (from, to) = if a <= b { (a, b) } else { (b, a) };
        prop_assert!(c.plan(&from, &to).is_ok());
    }
}
