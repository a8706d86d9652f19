//! The planner: the fewest hops from the running release to a target.
//!
//! Each hop is a full upgrade of the cluster (every node, one at a time), so
//! fewer hops means less time with mixed versions and fewer chances to fail.
//! Among equally short paths the planner prefers, at each step, the highest
//! release: the newest maintenance release of a line carries the most fixes
//! and is the safer stepping stone.
//!
//! Hops only go up, so the releases between `from` and `to` form a DAG in
//! version order. One pass from the top computes each release's distance to
//! the target; a greedy walk from `from` then picks, at each step, the
//! highest release one step closer. That gives the shortest path and the
//! tie-break in O(n²) hop checks, for catalogs of at most a few hundred
//! releases.

use crate::catalog::Catalog;
use crate::rules::HopRule;
use crate::{Error, Version};

/// One hop of a path: install `to` on nodes running `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop {
    /// The release the cluster runs before the hop.
    pub from: Version,
    /// The release the hop installs.
    pub to: Version,
    /// Why the catalog's rules allow it.
    pub rule: HopRule,
}

/// A planned path; `hops` is empty when `from == to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradePath {
    /// The running release.
    pub from: Version,
    /// The target release.
    pub to: Version,
    /// The hops in order; the last one installs `to`.
    pub hops: Vec<Hop>,
}

impl Catalog {
    /// The fewest-hop supported path from `from` to `to`.
    pub fn plan(&self, from: &Version, to: &Version) -> Result<UpgradePath, Error> {
        let start = self.index_of(from).ok_or_else(|| self.unknown(from))?;
        let end = self.index_of(to).ok_or_else(|| self.unknown(to))?;
        if end < start {
            return Err(Error::Downgrade {
                from: *from,
                to: *to,
            });
        }
        let version = |i: usize| self.releases()[i].version;
        let hop = |i: usize, j: usize| self.check_hop(&version(i), &version(j));

        // distance[i - start]: hops from release i to the target, if reachable.
        let span = end - start;
        let mut distance: Vec<Option<usize>> = vec![None; span + 1];
        distance[span] = Some(0);
        for i in (start..end).rev() {
            distance[i - start] = (i + 1..=end)
                .filter_map(|j| distance[j - start].filter(|_| hop(i, j).is_ok()))
                .min()
                .map(|d| d + 1);
        }

        if distance[0].is_none() {
            let refusal = match hop(start, end) {
                Err(refusal) => refusal,
                Ok(_) => unreachable!("a legal direct hop is a path of length 1"),
            };
            return Err(Error::NoPath {
                from: *from,
                to: *to,
                refusal,
                highest_reachable: version(self.highest_reachable(start, end)),
            });
        }

        let mut hops = Vec::new();
        let mut at = start;
        while at != end {
            let want = distance[at - start].map(|d| d - 1);
            let step = (at + 1..=end).rev().find_map(|j| match hop(at, j) {
                Ok(rule) if distance[j - start] == want => Some((j, rule)),
                _ => None,
            });
            let Some((next, rule)) = step else {
                unreachable!("a release with a finite distance has a successor one closer")
            };
            hops.push(Hop {
                from: version(at),
                to: version(next),
                rule,
            });
            at = next;
        }
        Ok(UpgradePath {
            from: *from,
            to: *to,
            hops,
        })
    }

    /// The highest release up to `end` reachable from release `start` by
    /// legal hops: how far toward the target the rules do go.
    fn highest_reachable(&self, start: usize, end: usize) -> usize {
        let releases = &self.releases()[..=end];
        let mut reached = vec![false; releases.len()];
        reached[start] = true;
        let mut highest = start;
        for i in start..releases.len() {
            if !reached[i] {
                continue;
            }
            highest = i;
            for (j, release) in releases.iter().enumerate().skip(i + 1) {
                if !reached[j]
                    && self
                        .check_hop(&releases[i].version, &release.version)
                        .is_ok()
                {
                    reached[j] = true;
                }
            }
        }
        highest
    }
}
