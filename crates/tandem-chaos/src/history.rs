//! A campaign's history: every client operation, every delivery at the
//! sink, every role the nodes were seen in, every fault, as one JSON
//! object per line (JSONL), in the order they were recorded.
//!
//! Times are milliseconds since the campaign started, on one clock (the
//! campaign's own, or the simulation's). An operation is recorded when it
//! ends, with its start: a checker needs both ends of it, and an operation
//! that never ended (its client was cut off) has no outcome to judge.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use crate::Error;

/// One line of a history: when, and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Milliseconds since the campaign started.
    pub t_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

/// What a client's operation came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Accepted (SMTP 250 to DATA): the cluster owes a delivery.
    Acked,
    /// Refused with a reply code (4xx or 5xx): the client keeps the
    /// message, nothing is owed.
    Refused,
    /// No connection, or no greeting.
    ConnectFailed,
    /// The connection broke or timed out before the answer: the client
    /// does not know, so nothing is owed (a delivery is a duplicate at worst).
    Broken,
}

/// A fault's beginning or end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Injected.
    Start,
    /// Removed (healed, resumed, restarted).
    End,
}

/// Where an upgrade started during the campaign went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpgradePhase {
    /// The run began.
    Started,
    /// Every node runs the target.
    Finished,
    /// It stopped at a safe point; the entry's `reason` says why.
    Stopped,
}

/// Something the campaign saw or did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A client operation, recorded when it ended (`t_ms`).
    Op {
        /// Which client (load connection) ran it.
        client: u32,
        /// The message id the client put in the message.
        id: String,
        /// When the client began (connect, or the transaction on an open
        /// connection).
        start_ms: u64,
        /// The node whose banner greeted the client, when one did.
        node: Option<String>,
        /// What it came to.
        outcome: Outcome,
        /// The server's answer, or the client's error.
        reply: String,
    },
    /// The sink received message `id` (once per copy).
    Delivered {
        /// The message id.
        id: String,
    },
    /// What a node said of itself when asked (or that it did not answer).
    Role {
        /// The node.
        node: String,
        /// The failover group.
        group: u8,
        /// Its effective role (`active`, `standby`, `failed`, ...), or
        /// `unreachable` when it did not answer.
        role: String,
        /// The fencing epoch it serves under (0 without coordination).
        epoch: u64,
        /// Whether it takes clients: active with its listener accepting.
        accepting: bool,
    },
    /// A fault was injected or removed.
    Fault {
        /// The fault's kind (`kill-agent`, `partition-active`, ...).
        kind: String,
        /// What it hit (a node, a link, an etcd member).
        target: String,
        /// Its beginning or end.
        phase: Phase,
    },
    /// Every fault is over: the convergence clock starts.
    Heal,
    /// The cluster as a whole, seen after the final heal.
    Cluster {
        /// For each group (its number, as a string: JSON keys are
        /// strings), the nodes that called themselves active.
        actives: BTreeMap<String, Vec<String>>,
        /// Every node answered and every standby is in sync.
        in_sync: bool,
        /// The sync report found no difference between nodes.
        report_clean: bool,
    },
    /// An upgrade run began, ended, or stopped.
    Upgrade {
        /// Which.
        phase: UpgradePhase,
        /// The version it upgrades to.
        target: String,
        /// Why it stopped (the journal's words).
        reason: Option<String>,
    },
    /// A node's last word, after the campaign.
    NodeEnd {
        /// The node.
        node: String,
        /// Panics found in its log.
        panics: u64,
        /// It ended in `failed`.
        failed: bool,
        /// The reason its status gave for that, if any.
        reason: Option<String>,
    },
}

/// A whole history, in recording order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// The entries.
    pub entries: Vec<Entry>,
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    /// Records `event` at `t_ms`.
    pub fn push(&mut self, t_ms: u64, event: Event) {
        self.entries.push(Entry { t_ms, event });
    }

    /// The time of the last entry (0 when empty).
    pub fn end_ms(&self) -> u64 {
        self.entries.iter().map(|e| e.t_ms).max().unwrap_or(0)
    }

    /// Reads a JSONL history; blank lines are skipped.
    pub fn read(reader: impl BufRead) -> Result<History, Error> {
        let mut entries = Vec::new();
        for (i, line) in reader.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let entry = serde_json::from_str(&line).map_err(|source| Error::Parse {
                line: i + 1,
                source,
            })?;
            entries.push(entry);
        }
        Ok(History { entries })
    }

    /// Writes the history as JSONL.
    pub fn write(&self, mut writer: impl Write) -> Result<(), Error> {
        for e in &self.entries {
            writeln!(writer, "{}", entry_line(e))?;
        }
        writer.flush()?;
        Ok(())
    }
}

/// One entry as its JSONL line (without the newline).
pub fn entry_line(entry: &Entry) -> String {
    // Every field is a string, a number, a bool or a map with string
    // keys: serializing cannot fail.
    serde_json::to_string(entry).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_reads_back_what_was_written() {
        let mut h = History::new();
        h.push(
            5,
            Event::Op {
                client: 1,
                id: "m1".into(),
                start_ms: 2,
                node: Some("alpha".into()),
                outcome: Outcome::Acked,
                reply: "250 ok".into(),
            },
        );
        h.push(
            7,
            Event::Fault {
                kind: "kill-agent".into(),
                target: "alpha".into(),
                phase: Phase::Start,
            },
        );
        h.push(9, Event::Heal);
        // A map inside a flattened event: its keys must read back too.
        h.push(
            10,
            Event::Cluster {
                actives: BTreeMap::from([("0".into(), vec!["alpha".into()])]),
                in_sync: true,
                report_clean: true,
            },
        );
        let mut bytes = Vec::new();
        h.write(&mut bytes).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with("{\"t_ms\":5,\"type\":\"op\""), "{text}");
        assert_eq!(History::read(&bytes[..]).unwrap(), h);
    }

    #[test]
    fn a_bad_line_is_named() {
        let text = "{\"t_ms\":1,\"type\":\"heal\"}\n\nnot json\n";
        let e = History::read(text.as_bytes()).unwrap_err();
        assert!(e.to_string().starts_with("history line 3:"), "{e}");
    }
}
