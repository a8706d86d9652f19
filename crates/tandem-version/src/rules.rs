//! Is one hop — installing release `to` on a node running `from` — supported
//! with zero downtime?
//!
//! Each rule answers with the reason, allowed or not, because the operator
//! reads it: `tandem path` prints why each hop is allowed, and a refusal must
//! say which rule blocks it and what to do instead. Under every rule a hop
//! goes to a strictly higher release (there is no downgrade path; going back
//! is a rollback to the previous image) and both ends are catalog releases.

use std::fmt;

use crate::Version;
use crate::catalog::{Catalog, Rules, VersionPattern};

/// Why a hop is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HopRule {
    /// A later maintenance (or interim) release of the same minor.
    Maintenance,
    /// The next minor release present in the catalog.
    MinorStep,
    /// From the last minor of one major to the first minor of the next.
    MajorStep,
    /// A hop the catalog lists.
    Edge {
        /// The edge's `from` as written.
        from: VersionPattern,
        /// The edge's `to` as written.
        to: VersionPattern,
    },
}

impl fmt::Display for HopRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HopRule::Maintenance => f.write_str("maintenance release"),
            HopRule::MinorStep => f.write_str("minor step"),
            HopRule::MajorStep => f.write_str("major step"),
            HopRule::Edge { from, to } => write!(f, "catalog edge {from} → {to}"),
        }
    }
}

/// Why a hop is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HopRefusal {
    /// The version is not a release in the catalog.
    Unknown(Version),
    /// `to` is not higher than `from`.
    NotHigher,
    /// The hop skips the next minor release (`next` = its major, minor).
    SkipsMinor {
        /// The minor line that must be installed first.
        next: (u32, u32),
    },
    /// A major upgrade must start from the last minor of the running major.
    MajorNotFromLastMinor {
        /// The last minor line of the running major.
        last: (u32, u32),
    },
    /// The hop skips the next major release present in the catalog.
    SkipsMajor {
        /// The next major release.
        next: u32,
    },
    /// A major upgrade must land on the first minor of the next major.
    MajorNotToFirstMinor {
        /// The first minor line of the next major.
        first: (u32, u32),
    },
    /// No catalog edge connects the two releases.
    NoEdge,
}

impl fmt::Display for HopRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HopRefusal::Unknown(v) => write!(f, "{v} is not a release in the catalog"),
            HopRefusal::NotHigher => f.write_str("not an upgrade: the target is not newer"),
            HopRefusal::SkipsMinor { next: (ma, mi) } => {
                write!(
                    f,
                    "minor-step rule: cannot skip minor release {ma}.{mi}; install a {ma}.{mi} release first"
                )
            }
            HopRefusal::MajorNotFromLastMinor { last: (ma, mi) } => write!(
                f,
                "minor-step rule: a major upgrade must start from {ma}.{mi}, the last {ma}.x minor release"
            ),
            HopRefusal::SkipsMajor { next } => {
                write!(f, "minor-step rule: cannot skip major release {next}")
            }
            HopRefusal::MajorNotToFirstMinor { first: (ma, mi) } => write!(
                f,
                "minor-step rule: a major upgrade must go to {ma}.{mi}, the first {ma}.x minor release"
            ),
            HopRefusal::NoEdge => f.write_str("edges rule: no catalog edge allows this hop"),
        }
    }
}

impl Catalog {
    /// Whether installing `to` on a node running `from` is supported with
    /// zero downtime, and why.
    pub fn check_hop(&self, from: &Version, to: &Version) -> Result<HopRule, HopRefusal> {
        for version in [from, to] {
            if self.index_of(version).is_none() {
                return Err(HopRefusal::Unknown(*version));
            }
        }
        if to <= from {
            return Err(HopRefusal::NotHigher);
        }
        match self.rules() {
            Rules::MinorStep => self.minor_step(from, to),
            Rules::Edges => self
                .edges()
                .iter()
                .find(|e| e.from.matches(from) && e.to.matches(to))
                .map(|e| HopRule::Edge {
                    from: e.from,
                    to: e.to,
                })
                .ok_or(HopRefusal::NoEdge),
        }
    }

    /// Seed 004's table. Both ends are known releases and `to > from`.
    fn minor_step(&self, from: &Version, to: &Version) -> Result<HopRule, HopRefusal> {
        if from.line() == to.line() {
            return Ok(HopRule::Maintenance);
        }
        let lines = || self.releases().iter().map(|r| r.version.line());
        // The first minor line above `from`'s exists: `to` is on one.
        let next = lines()
            .find(|line| *line > from.line())
            .unwrap_or(to.line());
        if from.major == to.major {
            return if to.line() == next {
                Ok(HopRule::MinorStep)
            } else {
                Err(HopRefusal::SkipsMinor { next })
            };
        }
        let last = lines()
            .filter(|(major, _)| *major == from.major)
            .max()
            .unwrap_or(from.line());
        if from.line() != last {
            return Err(HopRefusal::MajorNotFromLastMinor { last });
        }
        if to.major != next.0 {
            return Err(HopRefusal::SkipsMajor { next: next.0 });
        }
        if to.line() != next {
            return Err(HopRefusal::MajorNotToFirstMinor { first: next });
        }
        Ok(HopRule::MajorStep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Edge, Release};

    fn v(text: &str) -> Version {
        text.parse().expect("parse the version")
    }

    fn asa() -> Catalog {
        let releases = [
            "7.0(1)", "7.0(2)", "7.0(4)", "7.1(1)", "7.1(2)", "7.2(1)", "7.2(2.5)", "8.0(1)",
            "8.1(1)", "9.0(1)",
        ];
        Catalog::from_parts(
            Rules::MinorStep,
            releases.iter().map(|t| Release::new(v(t))).collect(),
            vec![],
        )
    }

    #[test]
    fn asa_table_of_seed_004() {
        let c = asa();
        let hop = |a: &str, b: &str| c.check_hop(&v(a), &v(b));
        // Maintenance: any to any later within a minor, skipping those between.
        assert_eq!(hop("7.0(1)", "7.0(4)"), Ok(HopRule::Maintenance));
        assert_eq!(
            hop("7.2(1)", "7.2(2.5)"),
            Ok(HopRule::Maintenance),
            "interim is maintenance"
        );
        // Minor: only to the next minor; 7.0(1) → 7.2(1) must go through 7.1.
        assert_eq!(hop("7.0(1)", "7.1(1)"), Ok(HopRule::MinorStep));
        assert_eq!(hop("7.0(2)", "7.1(2)"), Ok(HopRule::MinorStep));
        assert_eq!(
            hop("7.0(1)", "7.2(1)"),
            Err(HopRefusal::SkipsMinor { next: (7, 1) })
        );
        // Major: from the last 7.x minor (7.2) to the first 8.x minor (8.0).
        assert_eq!(hop("7.2(1)", "8.0(1)"), Ok(HopRule::MajorStep));
        assert_eq!(hop("7.2(2.5)", "8.0(1)"), Ok(HopRule::MajorStep));
        assert_eq!(
            hop("7.1(1)", "8.0(1)"),
            Err(HopRefusal::MajorNotFromLastMinor { last: (7, 2) })
        );
        assert_eq!(
            hop("7.2(1)", "8.1(1)"),
            Err(HopRefusal::MajorNotToFirstMinor { first: (8, 0) })
        );
        assert_eq!(hop("8.1(1)", "9.0(1)"), Ok(HopRule::MajorStep));
        // Every rule: strictly upward, both ends known.
        assert_eq!(hop("7.0(4)", "7.0(1)"), Err(HopRefusal::NotHigher));
        assert_eq!(hop("7.0(4)", "7.0(4)"), Err(HopRefusal::NotHigher));
        assert_eq!(
            hop("7.0(1)", "7.0(3)"),
            Err(HopRefusal::Unknown(v("7.0(3)")))
        );
        assert_eq!(
            hop("6.0(1)", "7.0(1)"),
            Err(HopRefusal::Unknown(v("6.0(1)")))
        );
    }

    #[test]
    fn a_major_cannot_be_skipped() {
        let c = Catalog::from_parts(
            Rules::MinorStep,
            ["7.2(1)", "8.0(1)", "9.0(1)"]
                .iter()
                .map(|t| Release::new(v(t)))
                .collect(),
            vec![],
        );
        assert_eq!(
            c.check_hop(&v("7.2(1)"), &v("9.0(1)")),
            Err(HopRefusal::SkipsMajor { next: 8 })
        );
    }

    #[test]
    fn edges_match_exact_and_line_patterns() {
        let pattern = |t: &str| t.parse::<VersionPattern>().expect("parse the pattern");
        let c = Catalog::from_parts(
            Rules::Edges,
            ["6.0.7", "6.2.0", "6.2.5", "6.4.1"]
                .iter()
                .map(|t| Release::new(v(t)))
                .collect(),
            vec![
                Edge {
                    from: pattern("6.0.7"),
                    to: pattern("6.2.*"),
                },
                Edge {
                    from: pattern("6.2.*"),
                    to: pattern("6.2.*"),
                },
            ],
        );
        let hop = |a: &str, b: &str| c.check_hop(&v(a), &v(b));
        assert!(matches!(hop("6.2.0", "6.2.5"), Ok(HopRule::Edge { .. })));
        assert!(matches!(hop("6.0.7", "6.2.5"), Ok(HopRule::Edge { .. })));
        assert_eq!(
            hop("6.2.5", "6.2.0"),
            Err(HopRefusal::NotHigher),
            "edges never go down"
        );
        assert_eq!(hop("6.2.5", "6.4.1"), Err(HopRefusal::NoEdge));
        assert_eq!(
            hop("6.2.0", "6.2.5").map(|r| r.to_string()),
            Ok("catalog edge 6.2.* → 6.2.*".to_string())
        );
    }
}
