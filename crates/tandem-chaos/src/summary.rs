//! One campaign judged: the figures and violations `tandem chaos` prints,
//! as a table or as the one JSON object of `--json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

pub use crate::check::FaultFigures;
use crate::check::{self, Violation};
use crate::history::{Event, History};

/// How the campaign ran, and the bounds its checkers hold it to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The seed that chose the faults (replays the run).
    pub seed: u64,
    /// Nodes in the cluster.
    pub nodes: usize,
    /// `peers` or `etcd`.
    pub coordination: String,
    /// How long after the final heal the cluster may take to settle.
    pub convergence_bound_ms: u64,
    /// How long after a fault ends its unavailability is still its own.
    pub tail_ms: u64,
}

/// The figures of one campaign and what broke.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The seed.
    pub seed: u64,
    /// Nodes.
    pub nodes: usize,
    /// `peers` or `etcd`.
    pub coordination: String,
    /// Length of the history.
    pub duration_s: f64,
    /// Client operations, whatever their outcome.
    pub operations: u64,
    /// Operations answered 250.
    pub acknowledged: u64,
    /// Acknowledged messages that reached the sink.
    pub delivered: u64,
    /// Acknowledged messages that never did.
    pub lost: u64,
    /// Extra copies delivered.
    pub duplicates: u64,
    /// Time during which two nodes took clients for the same group.
    pub dual_active_ms: u64,
    /// Each fault kind that was injected.
    pub faults: BTreeMap<String, FaultFigures>,
    /// Every broken promise; empty on a clean run.
    pub violations: Vec<Violation>,
}

/// Runs every checker over `h`.
pub fn judge(h: &History, s: &Settings) -> Summary {
    let (deliveries, lost) = check::lost(h);
    let (dual_active_ms, dual) = check::dual_active(h, s.coordination == "etcd");
    let violations = [
        lost,
        dual,
        check::convergence(h, s.convergence_bound_ms),
        check::upgrades(h),
        check::logs(h),
    ]
    .into_iter()
    .flatten()
    .collect();
    Summary {
        seed: s.seed,
        nodes: s.nodes,
        coordination: s.coordination.clone(),
        duration_s: h.end_ms() as f64 / 1000.0,
        operations: h
            .entries
            .iter()
            .filter(|e| matches!(e.event, Event::Op { .. }))
            .count() as u64,
        acknowledged: deliveries.acknowledged,
        delivered: deliveries.delivered,
        lost: deliveries.lost,
        duplicates: deliveries.duplicates,
        dual_active_ms,
        faults: check::availability(h, s.tail_ms),
        violations,
    }
}

impl Summary {
    /// Whether every promise held.
    pub fn clean(&self) -> bool {
        self.violations.is_empty()
    }

    /// The human report: totals, a row per fault kind, the violations.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "seed {} · {} nodes · {} · {:.1} s",
            self.seed, self.nodes, self.coordination, self.duration_s
        );
        let _ = writeln!(
            out,
            "operations {} · acknowledged {} · delivered {} · lost {} · duplicates {} · dual active {} ms",
            self.operations,
            self.acknowledged,
            self.delivered,
            self.lost,
            self.duplicates,
            self.dual_active_ms
        );
        let _ = writeln!(
            out,
            "\n{:<24} {:>6} {:>20}",
            "FAULT", "COUNT", "MAX UNAVAILABLE ms"
        );
        for (kind, f) in &self.faults {
            let _ = writeln!(
                out,
                "{kind:<24} {:>6} {:>20}",
                f.count, f.max_unavailable_ms
            );
        }
        if self.violations.is_empty() {
            let _ = writeln!(out, "\nno violations");
        } else {
            let _ = writeln!(out, "\nVIOLATIONS");
            for v in &self.violations {
                let _ = writeln!(out, "  {}: {}", v.checker, v.first);
            }
        }
        let _ = writeln!(out, "replay with --seed {}", self.seed);
        out
    }
}
