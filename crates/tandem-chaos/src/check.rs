//! The checkers: each a pure function of a [`History`], each for one
//! promise.
//!
//! 1. [`lost`]: every message answered 250 is delivered at least once.
//! 2. [`dual_active`]: how long two nodes took clients at once; with a
//!    coordination store that must be never.
//! 3. [`convergence`]: within a bound after the final heal, one active per
//!    group, every node in sync, a clean sync report.
//! 4. [`upgrades`]: an upgrade started during the campaign ends on its
//!    target, or stops with a reason.
//! 5. [`logs`]: no panic, and no node `failed` without a reason.
//! 6. [`availability`]: per fault kind, the longest time no client got
//!    an answer 250 (a figure, never a violation).
//!
//! A node's state is only known when it was asked ([`Event::Role`]), so
//! [`dual_active`] counts a node as taking clients between two of its
//! observations only when both say so: the figure is what was certainly
//! seen, never an artefact of when the observer happened to ask.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::history::{Event, History, Outcome, Phase, UpgradePhase};

/// Which checker found a violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Checker {
    /// An acknowledged message was never delivered.
    Lost,
    /// Two nodes took clients at once.
    DualActive,
    /// The cluster did not settle after the final heal.
    Convergence,
    /// An upgrade neither finished nor stopped with a reason.
    Upgrade,
    /// A panic, or a node failed without a reason.
    Logs,
}

impl fmt::Display for Checker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Checker::Lost => "lost",
            Checker::DualActive => "dual_active",
            Checker::Convergence => "convergence",
            Checker::Upgrade => "upgrade",
            Checker::Logs => "logs",
        })
    }
}

/// A broken promise: the checker, and the first thing that broke it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// The checker.
    pub checker: Checker,
    /// The first operation or observation that broke it, in words.
    pub first: String,
}

impl Violation {
    fn new(checker: Checker, first: String) -> Violation {
        Violation { checker, first }
    }
}

/// What the [`lost`] checker counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deliveries {
    /// Operations answered 250.
    pub acknowledged: u64,
    /// Distinct acknowledged ids that reached the sink.
    pub delivered: u64,
    /// Acknowledged ids that never did.
    pub lost: u64,
    /// Copies beyond the first, of any id.
    pub duplicates: u64,
}

/// Checker 1: every id answered 250 reached the sink at least once.
/// Duplicates are counted, not failed. The violation names the earliest
/// acknowledged operation whose message never arrived.
pub fn lost(h: &History) -> (Deliveries, Option<Violation>) {
    let mut copies: BTreeMap<&str, u64> = BTreeMap::new();
    for e in &h.entries {
        if let Event::Delivered { id } = &e.event {
            *copies.entry(id.as_str()).or_default() += 1;
        }
    }
    let mut d = Deliveries {
        duplicates: copies.values().map(|c| c - 1).sum(),
        ..Deliveries::default()
    };
    let mut first = None;
    let mut seen = BTreeSet::new();
    for e in &h.entries {
        let Event::Op {
            id,
            outcome: Outcome::Acked,
            node,
            start_ms,
            ..
        } = &e.event
        else {
            continue;
        };
        if !seen.insert(id.as_str()) {
            continue;
        }
        d.acknowledged += 1;
        if copies.contains_key(id.as_str()) {
            d.delivered += 1;
        } else {
            d.lost += 1;
            let at = (e.t_ms, *start_ms);
            if first.as_ref().is_none_or(|(t, _)| at < *t) {
                let by = node.as_deref().unwrap_or("an unknown node");
                first = Some((
                    at,
                    format!(
                        "message {id}, acknowledged by {by} at {} ms, was never delivered",
                        e.t_ms
                    ),
                ));
            }
        }
    }
    let violation = first.map(|(_, what)| Violation::new(Checker::Lost, what));
    (d, violation)
}

/// One stretch during which a node certainly took clients.
#[derive(Debug, Clone)]
struct Serving<'a> {
    node: &'a str,
    group: u8,
    epoch: u64,
    from: u64,
    to: u64,
}

/// One observation of a node: when, whether it took clients, its epoch.
type Seen = (u64, bool, u64);

/// The stretches, per node and group, between two observations that both
/// saw it accepting (the last observation stands until the history ends).
fn serving_stretches(h: &History) -> Vec<Serving<'_>> {
    let end = h.end_ms();
    let mut seen: BTreeMap<(&str, u8), Vec<Seen>> = BTreeMap::new();
    for e in &h.entries {
        if let Event::Role {
            node,
            group,
            epoch,
            accepting,
            ..
        } = &e.event
        {
            seen.entry((node.as_str(), *group))
                .or_default()
                .push((e.t_ms, *accepting, *epoch));
        }
    }
    let mut out = Vec::new();
    for ((node, group), mut obs) in seen {
        obs.sort_by_key(|o| o.0);
        for (i, &(t, accepting, epoch)) in obs.iter().enumerate() {
            if !accepting {
                continue;
            }
            let to = match obs.get(i + 1) {
                Some(&(next, true, _)) => next,
                Some(_) => continue,
                None => end,
            };
            if to > t {
                out.push(Serving {
                    node,
                    group,
                    epoch,
                    from: t,
                    to,
                });
            }
        }
    }
    out
}

/// Checker 2: milliseconds during which two or more nodes certainly took
/// clients for the same group. With `must_be_zero` (a coordination store
/// fences the old active) any such time is a violation, naming the first
/// overlap; without one (peers mode, where a partition can split a pair)
/// it is only measured.
pub fn dual_active(h: &History, must_be_zero: bool) -> (u64, Option<Violation>) {
    let stretches = serving_stretches(h);
    let groups: BTreeSet<u8> = stretches.iter().map(|s| s.group).collect();
    let mut total = 0;
    let mut first: Option<(u64, String)> = None;
    for g in groups {
        let mine: Vec<&Serving> = stretches.iter().filter(|s| s.group == g).collect();
        // Sweep the boundaries: between two of them the set of serving
        // nodes is fixed.
        let mut cuts: Vec<u64> = mine.iter().flat_map(|s| [s.from, s.to]).collect();
        cuts.sort_unstable();
        cuts.dedup();
        for w in cuts.windows(2) {
            let (a, b) = (w[0], w[1]);
            let here: Vec<&&Serving> = mine.iter().filter(|s| s.from <= a && s.to >= b).collect();
            let nodes: BTreeSet<&str> = here.iter().map(|s| s.node).collect();
            if nodes.len() < 2 {
                continue;
            }
            total += b - a;
            if first.as_ref().is_none_or(|(t, _)| a < *t) {
                let who: Vec<String> = here
                    .iter()
                    .map(|s| format!("{} (epoch {})", s.node, s.epoch))
                    .collect();
                first = Some((
                    a,
                    format!(
                        "group {g}: {} took clients at once from {a} ms",
                        who.join(" and ")
                    ),
                ));
            }
        }
    }
    let violation = match first {
        Some((_, what)) if must_be_zero => Some(Violation::new(Checker::DualActive, what)),
        _ => None,
    };
    (total, violation)
}

/// Checker 3: after the last [`Event::Heal`], some [`Event::Cluster`]
/// snapshot no later than `bound_ms` shows exactly one active per group,
/// every node in sync and a clean sync report.
pub fn convergence(h: &History, bound_ms: u64) -> Option<Violation> {
    let Some(healed) = h
        .entries
        .iter()
        .filter(|e| e.event == Event::Heal)
        .map(|e| e.t_ms)
        .max()
    else {
        return Some(Violation::new(
            Checker::Convergence,
            "the history has no final heal".into(),
        ));
    };
    let mut last = None;
    for e in &h.entries {
        let Event::Cluster {
            actives,
            in_sync,
            report_clean,
        } = &e.event
        else {
            continue;
        };
        if e.t_ms < healed || e.t_ms > healed + bound_ms {
            continue;
        }
        let one_each = !actives.is_empty() && actives.values().all(|a| a.len() == 1);
        if one_each && *in_sync && *report_clean {
            return None;
        }
        last = Some(format!(
            "at {} ms: actives {actives:?}, in sync {in_sync}, report clean {report_clean}",
            e.t_ms
        ));
    }
    let seen = last.unwrap_or_else(|| "no snapshot was taken".into());
    Some(Violation::new(
        Checker::Convergence,
        format!(
            "not settled within {bound_ms} ms of the final heal ({healed} ms); last seen {seen}"
        ),
    ))
}

/// Checker 4: every upgrade that started either finished or stopped with
/// a reason.
pub fn upgrades(h: &History) -> Option<Violation> {
    let mut open: Option<(u64, &str)> = None;
    for e in &h.entries {
        let Event::Upgrade {
            phase,
            target,
            reason,
        } = &e.event
        else {
            continue;
        };
        match phase {
            UpgradePhase::Started => {
                if let Some((t, to)) = open {
                    return Some(Violation::new(
                        Checker::Upgrade,
                        format!(
                            "the upgrade to {to} started at {t} ms never ended before another began"
                        ),
                    ));
                }
                open = Some((e.t_ms, target));
            }
            UpgradePhase::Finished => open = None,
            UpgradePhase::Stopped => {
                if reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
                    return Some(Violation::new(
                        Checker::Upgrade,
                        format!(
                            "the upgrade to {target} stopped at {} ms without a reason",
                            e.t_ms
                        ),
                    ));
                }
                open = None;
            }
        }
    }
    open.map(|(t, to)| {
        Violation::new(
            Checker::Upgrade,
            format!("the upgrade to {to} started at {t} ms neither finished nor stopped"),
        )
    })
}

/// Checker 5: no panic in any node's log, and no node ended `failed`
/// without a reason in its status.
pub fn logs(h: &History) -> Option<Violation> {
    h.entries.iter().find_map(|e| match &e.event {
        Event::NodeEnd { node, panics, .. } if *panics > 0 => Some(Violation::new(
            Checker::Logs,
            format!("{node}'s log has {panics} panic(s)"),
        )),
        Event::NodeEnd {
            node,
            failed: true,
            reason,
            ..
        } if reason.as_deref().is_none_or(|r| r.trim().is_empty()) => Some(Violation::new(
            Checker::Logs,
            format!("{node} ended failed and its status gives no reason"),
        )),
        _ => None,
    })
}

/// One fault kind's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultFigures {
    /// How many times it was injected.
    pub count: u64,
    /// The longest time, from its start until `tail_ms` after its end,
    /// during which no client got a 250.
    pub max_unavailable_ms: u64,
}

/// Checker 6 (a figure): for each fault kind, its count and the longest
/// window without an acknowledgement that began (or was under way) while
/// it was in force, up to `tail_ms` after it ended. A window is measured
/// from the fault's start at the earliest, to the next 250 (or the end of
/// the history).
pub fn availability(h: &History, tail_ms: u64) -> BTreeMap<String, FaultFigures> {
    let mut acks: Vec<u64> = h
        .entries
        .iter()
        .filter(|e| {
            matches!(
                e.event,
                Event::Op {
                    outcome: Outcome::Acked,
                    ..
                }
            )
        })
        .map(|e| e.t_ms)
        .collect();
    acks.sort_unstable();
    let end = h.end_ms();
    let mut figures: BTreeMap<String, FaultFigures> = BTreeMap::new();
    let mut open: BTreeMap<(&str, &str), Vec<u64>> = BTreeMap::new();
    let mut spans = Vec::new();
    for e in &h.entries {
        if let Event::Fault {
            kind,
            target,
            phase,
        } = &e.event
        {
            match phase {
                Phase::Start => {
                    figures.entry(kind.clone()).or_default().count += 1;
                    open.entry((kind, target)).or_default().push(e.t_ms);
                }
                Phase::End => {
                    if let Some(start) = open
                        .get_mut(&(kind.as_str(), target.as_str()))
                        .and_then(Vec::pop)
                    {
                        spans.push((kind.as_str(), start, e.t_ms));
                    }
                }
            }
        }
    }
    for ((kind, _), starts) in open {
        spans.extend(starts.into_iter().map(|s| (kind, s, end)));
    }
    for (kind, start, stop) in spans {
        let until = stop.saturating_add(tail_ms).min(end);
        // The last 250 at or before the start, then every 250 up to the
        // window's end: the longest gap between them, from the start on.
        let mut prev = start;
        let mut longest = 0;
        for &a in acks.iter().filter(|&&a| a > start) {
            longest = longest.max(a - prev);
            prev = a;
            if a >= until {
                break;
            }
        }
        if prev < until {
            longest = longest.max(end - prev);
        }
        let f = figures.entry(kind.to_owned()).or_default();
        f.max_unavailable_ms = f.max_unavailable_ms.max(longest);
    }
    figures
}
