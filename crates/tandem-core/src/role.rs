//! Roles a node reports, and the states and commands around them.
//!
//! [`EffectiveRole`] is what a node does now (as opposed to the
//! [`crate::ConfiguredRole`] the operator set). [`DataState`], how its
//! replicated data compares with the active's, decides whether it may
//! serve or is `syncing`; the node keeps it and status shows it, so it is
//! defined here with the other role vocabulary rather than in the node
//! (where it made `node` and `status` import each other). [`Command`] is
//! an operator command (the CLI's `ha …` and `failover …`); [`Refusal`] is
//! why one was not carried out — the operator is always told.

use crate::config::{ConfiguredRole, GroupId};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What a node (or a node within one failover group) does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EffectiveRole {
    /// Holds the VIP and runs the service.
    Active,
    /// Ready to take over.
    Standby,
    /// Standby that a peer's holdoff forbids to take over for now.
    HeldOff,
    /// The local monitor reports the service unhealthy; cannot serve.
    Failed,
    /// Not taking part in HA (configured off, stopped by `on_failure = off`,
    /// or shut down).
    Off,
    /// Standby whose replicated data is not in step with the active's
    /// (catching up, or stale since it was away): it does not take over.
    Syncing,
    /// Reserved: disconnected from cluster config during a rolling upgrade
    /// (later issue).
    Disconnected,
}

impl std::fmt::Display for EffectiveRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EffectiveRole::Active => "active",
            EffectiveRole::Standby => "standby",
            EffectiveRole::HeldOff => "held-off",
            EffectiveRole::Failed => "failed",
            EffectiveRole::Off => "off",
            EffectiveRole::Syncing => "syncing",
            EffectiveRole::Disconnected => "disconnected",
        })
    }
}

/// This node's replicated data compared with the active's.
///
/// Unless [`DataState::InSync`] (or no active is reachable to be behind
/// of), a node does not serve: it reports [`EffectiveRole::Syncing`]. The
/// rules that move it are in the node (`node::data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataState {
    /// Caught up by the active (or nothing is replicated, or this node is
    /// the active: its data is the reference).
    InSync,
    /// Not compared with an active since the node started or stepped down
    /// unplanned: `syncing` while a peer is active, fine when none is.
    Unverified,
    /// Known to lack what the active has: never serves unless forced.
    Behind,
}

/// A node's readiness to preempt, as carried in its heartbeat.
///
/// The *active* node reads it: when a better-ranked peer is `Ready`, the
/// active hands the group over (make-before-break), so preemption never
/// makes two actives and never leaves none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PreemptState {
    /// Preemption off (or this node yielded to an operator's choice).
    Disabled,
    /// Preemption on, but `preempt_delay` since the node became eligible
    /// has not elapsed yet.
    Delaying,
    /// Would take back a group it ranks best for.
    Ready,
}

/// Why a planned handover of a group was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HandoverCause {
    /// `failover standby` / `failover group N standby` on the active.
    Operator,
    /// A better-ranked peer with preemption on is ready.
    Preemption,
    /// `ha restore`, or a node recovering with `on_failure = restore`.
    Restore,
}

/// An operator command (the CLI's `ha …` and `failover …`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Command {
    /// `failover active`: take every failover group over here (FortiMail's
    /// takeover). The current active releases when it hears of it.
    FailoverActive,
    /// `failover standby`: hand every group this node holds to the
    /// best-ranked healthy peer (ASA's `no failover active`).
    FailoverStandby,
    /// `failover group N active|standby`: the same for one group.
    FailoverGroup {
        /// The group.
        group: GroupId,
        /// `true` for `active`, `false` for `standby`.
        active: bool,
    },
    /// `ha restore`: every node back to its configured role. Forwarded to
    /// every reachable peer.
    HaRestore,
    /// `ha restart`: restart HA on this node (the way back from
    /// `on_failure = off`).
    HaRestart,
    /// `ha preempt on|off` on this node.
    HaPreempt(bool),
    /// `ha holdoff SECS`: tell the peers not to take over for this long
    /// (sent before a planned reboot).
    HaHoldoff(Duration),
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::FailoverActive => f.write_str("failover active"),
            Command::FailoverStandby => f.write_str("failover standby"),
            Command::FailoverGroup { group, active } => write!(
                f,
                "failover group {} {}",
                group.0,
                if *active { "active" } else { "standby" }
            ),
            Command::HaRestore => f.write_str("ha restore"),
            Command::HaRestart => f.write_str("ha restart"),
            Command::HaPreempt(on) => write!(f, "ha preempt {}", if *on { "on" } else { "off" }),
            Command::HaHoldoff(d) => write!(f, "ha holdoff {}", d.as_secs()),
        }
    }
}

/// Why a command was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refusal {
    /// HA is stopped on this node (`on_failure = off`); `ha restart` first.
    HaStopped,
    /// The node is shutting down.
    ShuttingDown,
    /// This node's configured role never serves a failover group.
    NotServing(ConfiguredRole),
    /// The command has no meaning in `config-only` mode (every node serves).
    ConfigOnlyMode,
    /// No such failover group.
    UnknownGroup(GroupId),
    /// This node's local monitor reports its service unhealthy.
    LocalUnhealthy,
    /// This node's data is not in step with the active's (`syncing`);
    /// `allow_stale_takeover = true` in `[sync]` overrides.
    DataNotInSync,
    /// A peer's holdoff forbids taking over for this much longer.
    HoldoffActive {
        /// Who sent the holdoff.
        from: String,
        /// Time left.
        remaining: Duration,
    },
    /// This node became eligible too recently (`preempt_delay`).
    PreemptDelayRunning {
        /// Time left.
        remaining: Duration,
    },
    /// Already active in the group(s) concerned.
    AlreadyActive,
    /// Not active in the group(s) concerned, so nothing to hand over.
    NotActive,
    /// The peer that would have to take over is reachable but unhealthy.
    PeerUnhealthy(String),
    /// The peer concerned cannot be reached (every link silent).
    PeerUnreachable(String),
    /// No peer can be reached at all.
    NoPeerReachable,
    /// The requested holdoff is longer than `holdoff_max`.
    HoldoffTooLong {
        /// Asked for.
        requested: Duration,
        /// The limit.
        max: Duration,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::HaStopped => f.write_str("HA is stopped on this node (run `ha restart`)"),
            Refusal::ShuttingDown => f.write_str("node is shutting down"),
            Refusal::NotServing(r) => write!(f, "configured role {r:?} never serves"),
            Refusal::ConfigOnlyMode => f.write_str("not applicable in config-only mode"),
            Refusal::UnknownGroup(g) => write!(f, "no such failover {g}"),
            Refusal::LocalUnhealthy => f.write_str("local service is unhealthy"),
            Refusal::DataNotInSync => f.write_str(
                "this node's data is not in sync with the active's (it would serve stale data; wait for `syncing` to end, or set allow_stale_takeover = true in [sync])",
            ),
            Refusal::HoldoffActive { from, remaining } => write!(
                f,
                "holdoff from {from} active ({} s left)",
                remaining.as_secs_f32().ceil()
            ),
            Refusal::PreemptDelayRunning { remaining } => write!(
                f,
                "preemption delay running ({} s left)",
                remaining.as_secs_f32().ceil()
            ),
            Refusal::AlreadyActive => f.write_str("already active"),
            Refusal::NotActive => f.write_str("not active"),
            Refusal::PeerUnhealthy(p) => write!(f, "peer {p} is unhealthy"),
            Refusal::PeerUnreachable(p) => write!(f, "peer {p} is unreachable"),
            Refusal::NoPeerReachable => f.write_str("no peer is reachable"),
            Refusal::HoldoffTooLong { requested, max } => write!(
                f,
                "holdoff {} s exceeds holdoff_max {} s",
                requested.as_secs(),
                max.as_secs()
            ),
        }
    }
}
