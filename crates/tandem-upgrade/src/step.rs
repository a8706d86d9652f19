//! One step of a plan, and the three rules every step follows: when it may
//! start, what it asks the agent to do, and when its effect is visible.
//!
//! A step's completion is read from the observed cluster state, never from
//! "I sent the command": a coordinator that dies after acting but before
//! writing the journal comes back, sees the effect (standby already on the
//! new release, preemption already off) and marks the step done without
//! doing it again. Steps whose effect the cluster does not show (a backup,
//! a sync report) keep acknowledgements in the journal and are safe to
//! repeat. Every action is idempotent for the agent too (see
//! [`Action`]).

use serde::{Deserialize, Serialize};
use tandem_core::{Command, EffectiveRole, GroupId, Mode};
use tandem_version::Version;

use crate::cluster::{ClusterState, ConfigLink, Listener, NodeState};

/// A step's number in its plan, from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StepId(pub u32);

impl std::fmt::Display for StepId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Its number in the plan, from 1, in execution order.
    pub id: StepId,
    /// The index in [`crate::UpgradePlan::hops`] of the hop it belongs to;
    /// `None` for the steps around the hops (preflight, preemption).
    pub hop: Option<usize>,
    /// What it does.
    pub kind: StepKind,
    /// The nodes it concerns, in the order it acts on them.
    pub nodes: Vec<String>,
    /// What must hold before it acts, for the operator to read (the step
    /// machine checks the same rule against the observed state).
    pub precondition: String,
    /// What clients should notice while it runs.
    pub impact: ClientImpact,
    /// Whether the cluster is in a state fit to be left after this step:
    /// every node serving or ready in its role, nothing half done. `abort`
    /// stops at the first such point.
    pub safe_point: bool,
    /// Whether the step runs even when the run is aborted (restoring
    /// preemption): it puts back what the run changed.
    pub finally: bool,
    /// How long it may take, in milliseconds, before it counts as failed.
    pub timeout_ms: u64,
    /// Anything else the operator should know about it.
    pub note: Option<String>,
}

/// What a step does. The nodes are the step's [`Step::nodes`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum StepKind {
    /// Run `sync report`; done when it comes back clean (Huawei steps 2, 8).
    SyncReport,
    /// Check that every node is healthy and has a verified image for each
    /// release it will install.
    Preflight {
        /// The releases to be installed, one per hop.
        versions: Vec<Version>,
    },
    /// Back up each node's configuration (Huawei step 3).
    Backup,
    /// Turn preemption on or off on each node (Huawei steps 4, 10).
    SetPreempt {
        /// The setting wanted.
        on: bool,
    },
    /// Install the image into each node's inactive slot (ASA step 1:
    /// download the software and set the boot image); nothing restarts.
    Install {
        /// The release installed.
        version: Version,
    },
    /// Restart each node into another slot: its pending slot for an
    /// upgrade (ASA's `failover reload-standby`), its previous slot for a
    /// rollback.
    Boot {
        /// The release the node runs afterwards.
        version: Version,
        /// Boot the previous slot (a rollback) instead of the pending one.
        rollback: bool,
        /// Before booting, the node sends `ha holdoff SECS` so the peers
        /// do not take over while it restarts (FortiMail, seed 000).
        holdoff_secs: Option<u64>,
    },
    /// Wait until each node runs the release, healthy, ready in its role
    /// (ASA's "Standby Ready") and with its data in sync.
    WaitReady {
        /// The release.
        version: Version,
    },
    /// `failover standby` on the active (first node): a ready standby on
    /// `version` takes over (ASA step 3, Huawei step 6).
    Switchover {
        /// The release the new active must run.
        version: Version,
    },
    /// Check the service on the active node(s): healthy, on `version`.
    CheckService {
        /// The release the active must run.
        version: Version,
    },
    /// Disconnect each node from cluster configuration (ESA step 1).
    Disconnect,
    /// Suspend each node's listener and let its sessions drain (ESA step 2).
    Suspend,
    /// Resume each node's listener (ESA step 5).
    Resume,
    /// Reconnect each node to cluster configuration (ESA step 7); only
    /// possible once every node runs `version`.
    Reconnect {
        /// The release the whole cluster must run first.
        version: Version,
    },
    /// `failover active` on the node: it takes every failover group.
    MoveGroups,
    /// Give each group back to the node that held it before the hop.
    RestoreGroups {
        /// Each group and its holder.
        holders: Vec<(GroupId, String)>,
    },
}

/// What clients should notice while a step runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "impact")]
pub enum ClientImpact {
    /// Nothing: the step does not touch a serving node.
    None,
    /// Fewer nodes take connections; none is cut (listeners drain first).
    ReducedCapacity {
        /// Nodes still serving.
        serving: usize,
        /// Nodes in the cluster.
        of: usize,
    },
    /// A planned failover: the VIP(s) move to an in-sync node. New
    /// connections see at most the VIP move; sessions the standby had not
    /// synchronized may need to reconnect (seed 003, step 6).
    Failover {
        /// The node giving up the VIP(s).
        from: String,
    },
    /// The service is down while a node restarts (FortiMail holdoff).
    Outage {
        /// The restarting node.
        node: String,
        /// Expected duration, milliseconds.
        estimate_ms: u64,
    },
}

impl std::fmt::Display for ClientImpact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientImpact::None => f.write_str("none"),
            ClientImpact::ReducedCapacity { serving, of } => {
                write!(f, "capacity {serving} of {of} nodes; no connection cut")
            }
            ClientImpact::Failover { from } => write!(
                f,
                "planned failover from {from}: the VIP moves to an in-sync node; unsynchronized sessions may reconnect"
            ),
            ClientImpact::Outage { node, estimate_ms } => write!(
                f,
                "service down while {node} restarts (about {} s)",
                estimate_ms.div_ceil(1000)
            ),
        }
    }
}

/// What the agent must do. Every action is idempotent: the agent does
/// nothing when its effect is already there (a node already booting or
/// running the slot, a listener already suspended), because a resumed
/// coordinator may ask again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "action")]
pub enum Action {
    /// Give an HA command to the node's core, as `tandem ha …` would.
    Command {
        /// The node.
        node: String,
        /// The command.
        command: Command,
    },
    /// Install the node's verified image of `version` into its inactive slot.
    InstallImage {
        /// The node.
        node: String,
        /// The release.
        version: Version,
    },
    /// Restart the node into its pending slot (`version`).
    BootPending {
        /// The node.
        node: String,
        /// The release in the pending slot.
        version: Version,
    },
    /// Restart the node into its previous slot (`version`): a rollback.
    BootPrevious {
        /// The node.
        node: String,
        /// The release in the previous slot.
        version: Version,
    },
    /// Suspend the node's client listener and drain its sessions.
    SuspendListener {
        /// The node.
        node: String,
    },
    /// Resume the node's client listener.
    ResumeListener {
        /// The node.
        node: String,
    },
    /// Disconnect the node from cluster configuration.
    DisconnectConfig {
        /// The node.
        node: String,
    },
    /// Reconnect the node to cluster configuration.
    ReconnectConfig {
        /// The node.
        node: String,
    },
    /// Back up the node's configuration; report with
    /// [`crate::Observation::BackupTaken`].
    TakeBackup {
        /// The node.
        node: String,
    },
    /// Run the sync report; report with [`crate::Observation::SyncReport`].
    RunSyncReport,
    /// Nothing to do until an observation arrives or `until_ms` passes
    /// (then call [`crate::UpgradeRun::next`] again).
    Wait {
        /// The step waiting.
        step: StepId,
        /// When the step times out, in the coordinator's clock.
        until_ms: u64,
        /// What it waits for, for the progress display.
        waiting_for: String,
    },
    /// The run is over: every node runs the target.
    Done {
        /// What was done.
        summary: String,
    },
    /// The run failed on an unhealthy image and rolled the cluster back.
    RolledBack {
        /// What failed, where the cluster is now.
        message: String,
    },
    /// The run stopped (aborted, or a step failed) at a safe point.
    Stopped {
        /// Where it stopped, why, and what the operator can do.
        message: String,
    },
}

/// How a step failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// An image failed its health check: roll back.
    Health(String),
    /// Anything else: stop.
    Other(String),
    /// A node the step would restart serves now: a failover the plan did
    /// not make moved the service to it. The run plans the rest of the
    /// upgrade again from the cluster as it is, or stops saying so.
    RolesMoved(String),
}

impl Step {
    /// Why the step may not act yet, against the observed state; `None`
    /// when it may.
    pub(crate) fn blocked(&self, cluster: &ClusterState) -> Option<String> {
        let nodes = || self.nodes.iter().filter_map(|n| cluster.node(n));
        match &self.kind {
            StepKind::Boot {
                version,
                rollback,
                holdoff_secs,
            } => {
                for node in nodes() {
                    if node.running == *version {
                        continue;
                    }
                    if holdoff_secs.is_none() && serves_a_group(cluster, node) {
                        return Some(format!(
                            "{} still holds a VIP; it must not restart while serving",
                            node.name
                        ));
                    }
                    if cluster.mode == Mode::ConfigOnly && node.listener == Listener::Accepting {
                        return Some(format!("{}'s listener is not suspended", node.name));
                    }
                    if !rollback && !node.has_pending(version) {
                        return Some(format!("{} has no pending {version} slot", node.name));
                    }
                }
                if holdoff_secs.is_some() {
                    let unready: Vec<&str> = cluster
                        .nodes
                        .iter()
                        .filter(|n| !self.nodes.contains(&n.name) && !ready_standby(n))
                        .map(|n| n.name.as_str())
                        .collect();
                    if !unready.is_empty() {
                        return Some(format!(
                            "waiting for {} to be ready before the restart",
                            unready.join(", ")
                        ));
                    }
                }
                None
            }
            StepKind::Switchover { version } => {
                let ready = cluster.nodes.iter().any(|n| {
                    n.running == *version
                        && n.effective == EffectiveRole::Standby
                        && n.healthy
                        && n.in_sync
                        && n.configured.serves_groups()
                });
                (!ready).then(|| format!("no standby on {version} is ready and in sync"))
            }
            StepKind::Suspend => {
                let others = cluster
                    .nodes
                    .iter()
                    .filter(|n| !self.nodes.contains(&n.name) && n.is_serving(cluster.mode))
                    .count();
                (others == 0).then(|| "no other node would be left serving".to_string())
            }
            StepKind::Reconnect { version } => {
                let behind: Vec<&str> = cluster
                    .nodes
                    .iter()
                    .filter(|n| n.running != *version)
                    .map(|n| n.name.as_str())
                    .collect();
                (!behind.is_empty()).then(|| {
                    format!(
                        "a node reconnects only to a cluster on its own release; {} not on {version} yet",
                        behind.join(", ")
                    )
                })
            }
            StepKind::MoveGroups | StepKind::RestoreGroups { .. } => {
                let targets: Vec<&String> = match &self.kind {
                    StepKind::RestoreGroups { holders } => holders.iter().map(|(_, n)| n).collect(),
                    _ => self.nodes.iter().collect(),
                };
                targets
                    .into_iter()
                    .filter_map(|n| cluster.node(n))
                    .find(|n| !n.healthy || n.effective == EffectiveRole::Off)
                    .map(|n| format!("{} is not healthy", n.name))
            }
            _ => None,
        }
    }

    /// Whether the step's effect is visible in the observed state.
    /// `acks` are the nodes that acknowledged the step's action (backups),
    /// `issued` whether this coordinator asked for it.
    pub(crate) fn done(&self, cluster: &ClusterState, acks: &[String], issued: bool) -> bool {
        let mut nodes = self.nodes.iter().map(|n| cluster.node(n));
        let all = |f: &dyn Fn(&NodeState) -> bool| {
            self.nodes.iter().all(|n| cluster.node(n).is_some_and(f))
        };
        match &self.kind {
            // A report from before this step started says nothing about now.
            StepKind::SyncReport => issued && cluster.sync_clean == Some(true),
            StepKind::Preflight { versions } => {
                cluster.nodes.iter().all(|n| n.healthy)
                    && missing_image(cluster, versions).is_none()
            }
            StepKind::Backup => self.nodes.iter().all(|n| acks.contains(n)),
            StepKind::SetPreempt { on } => all(&|n| n.preempt == *on),
            StepKind::Install { version } => {
                all(&|n| n.has_pending(version) || n.running == *version)
            }
            StepKind::Boot { version, .. } => all(&|n| n.runs(version)),
            StepKind::WaitReady { version } => {
                let mode = cluster.mode;
                all(&|n| {
                    n.runs(version)
                        && (mode == Mode::ConfigOnly
                            || (n.in_sync
                                && matches!(
                                    n.effective,
                                    EffectiveRole::Standby
                                        | EffectiveRole::HeldOff
                                        | EffectiveRole::Active
                                )))
                })
            }
            StepKind::Switchover { version } => {
                let was_active = nodes.next().flatten();
                let actives = cluster.actives();
                // Done once the old active stepped down, or, for a
                // coordinator resuming from a journal that lagged behind
                // (its predecessor died after acting, before replicating),
                // once the old active itself already runs the release: the
                // switchover's purpose, an active on the new release, holds
                // either way, and asking it to step down again would only
                // move the service for nothing.
                was_active
                    .is_some_and(|n| n.effective != EffectiveRole::Active || n.running == *version)
                    && actives.len() == 1
                    && actives.iter().all(|a| a.running == *version)
            }
            StepKind::CheckService { version } => match cluster.mode {
                Mode::ActiveActive => cluster.groups.iter().all(|g| {
                    cluster
                        .holder(*g)
                        .is_some_and(|n| n.runs(version) || n.is_serving(cluster.mode))
                }),
                _ => {
                    let actives = cluster.actives();
                    actives.len() == 1
                        && actives
                            .iter()
                            .all(|a| a.runs(version) && a.is_serving(cluster.mode))
                }
            },
            StepKind::Disconnect => all(&|n| n.config_link == ConfigLink::Disconnected),
            StepKind::Suspend => all(&|n| n.listener == Listener::Suspended),
            StepKind::Resume => all(&|n| n.listener == Listener::Accepting),
            StepKind::Reconnect { .. } => all(&|n| n.config_link == ConfigLink::Connected),
            StepKind::MoveGroups => {
                let target = self.nodes.first();
                cluster
                    .groups
                    .iter()
                    .all(|g| cluster.holder(*g).is_some_and(|h| Some(&h.name) == target))
            }
            StepKind::RestoreGroups { holders } => holders
                .iter()
                .all(|(g, n)| cluster.holder(*g).is_some_and(|h| &h.name == n)),
        }
    }

    /// Whether the step has failed in a way waiting will not mend.
    pub(crate) fn failed(&self, cluster: &ClusterState) -> Option<Failure> {
        // A node about to restart serves: the plan had it off the service
        // (a standby, or its groups moved away; preemption is off), so a
        // failover put it there — the node serving before died. Waiting
        // would only run into the step's timeout: the run plans the rest
        // again from here (see `UpgradeRun::next`), or, when that cannot
        // be done, stops at this safe point with the service up on the
        // old release and says what to do.
        if let StepKind::Boot {
            version,
            rollback: false,
            holdoff_secs: None,
        } = &self.kind
            && cluster.mode != Mode::ConfigOnly
            && let Some(node) = self
                .nodes
                .iter()
                .filter_map(|n| cluster.node(n))
                .find(|n| n.running != *version && serves_a_group(cluster, n))
        {
            return Some(Failure::RolesMoved(format!(
                "{} (still on {}) serves now: a failover moved the service to it (the node \
                 serving before failed), so it may not restart; the service runs on {}",
                node.name, node.running, node.running
            )));
        }
        match &self.kind {
            StepKind::Boot {
                version,
                rollback: false,
                ..
            }
            | StepKind::WaitReady { version } => {
                let nodes: Vec<&NodeState> =
                    self.nodes.iter().filter_map(|n| cluster.node(n)).collect();
                // Roll back only once every boot of the step has ended one
                // way or the other: a rollback planned while a batch-mate
                // is still coming up could not know which release it will
                // run, and would leave it behind.
                let settled = nodes.iter().all(|n| {
                    n.boot_failed(version) || (n.healthy && n.effective != EffectiveRole::Off)
                });
                nodes
                    .iter()
                    .find(|n| settled && n.boot_failed(version))
                    .map(|n| {
                        Failure::Health(format!(
                            "{} failed its health check on {version} and fell back to {}",
                            n.name, n.running
                        ))
                    })
            }
            StepKind::Preflight { versions } => {
                missing_image(cluster, versions).map(Failure::Other)
            }
            StepKind::SyncReport if cluster.sync_clean == Some(false) => Some(Failure::Other(
                "the sync report shows configuration differences: run `tandem sync` to resynchronize, then check `tandem sync report`".to_string(),
            )),
            _ => None,
        }
    }

    /// Why a timeout of this step is an image health failure (a node runs
    /// the new release but never became healthy), if it is one.
    pub(crate) fn timeout_is_health(&self, cluster: &ClusterState) -> Option<String> {
        let version = match &self.kind {
            StepKind::Boot {
                version,
                rollback: false,
                ..
            }
            | StepKind::WaitReady { version }
            | StepKind::CheckService { version } => version,
            _ => return None,
        };
        cluster
            .nodes
            .iter()
            .find(|n| n.running == *version && !n.healthy)
            .map(|n| {
                format!(
                    "{} runs {version} but its service never became healthy",
                    n.name
                )
            })
    }

    /// The actions that bring the step's effect about, skipping nodes that
    /// already show it.
    pub(crate) fn actions(&self, cluster: &ClusterState, acks: &[String]) -> Vec<Action> {
        let nodes = || self.nodes.iter().filter_map(|n| cluster.node(n));
        let node = |n: &NodeState| n.name.clone();
        match &self.kind {
            StepKind::SyncReport => vec![Action::RunSyncReport],
            StepKind::Preflight { .. } | StepKind::WaitReady { .. } => vec![],
            StepKind::CheckService { .. } => vec![],
            StepKind::Backup => self
                .nodes
                .iter()
                .filter(|n| !acks.contains(n))
                .map(|n| Action::TakeBackup { node: n.clone() })
                .collect(),
            StepKind::SetPreempt { on } => nodes()
                .filter(|n| n.preempt != *on)
                .map(|n| Action::Command {
                    node: node(n),
                    command: Command::HaPreempt(*on),
                })
                .collect(),
            StepKind::Install { version } => nodes()
                .filter(|n| !n.has_pending(version) && n.running != *version)
                .map(|n| Action::InstallImage {
                    node: node(n),
                    version: *version,
                })
                .collect(),
            StepKind::Boot {
                version,
                rollback,
                holdoff_secs,
            } => {
                let mut actions = Vec::new();
                for n in nodes().filter(|n| n.running != *version) {
                    if let Some(secs) = holdoff_secs {
                        actions.push(Action::Command {
                            node: node(n),
                            command: Command::HaHoldoff(std::time::Duration::from_secs(*secs)),
                        });
                    }
                    actions.push(if *rollback {
                        Action::BootPrevious {
                            node: node(n),
                            version: *version,
                        }
                    } else {
                        Action::BootPending {
                            node: node(n),
                            version: *version,
                        }
                    });
                }
                actions
            }
            StepKind::Switchover { .. } => nodes()
                .take(1)
                .filter(|n| n.effective == EffectiveRole::Active)
                .map(|n| Action::Command {
                    node: node(n),
                    command: Command::FailoverStandby,
                })
                .collect(),
            StepKind::Disconnect => nodes()
                .filter(|n| n.config_link == ConfigLink::Connected)
                .map(|n| Action::DisconnectConfig { node: node(n) })
                .collect(),
            StepKind::Suspend => nodes()
                .filter(|n| n.listener == Listener::Accepting)
                .map(|n| Action::SuspendListener { node: node(n) })
                .collect(),
            StepKind::Resume => nodes()
                .filter(|n| n.listener == Listener::Suspended)
                .map(|n| Action::ResumeListener { node: node(n) })
                .collect(),
            StepKind::Reconnect { .. } => nodes()
                .filter(|n| n.config_link == ConfigLink::Disconnected)
                .map(|n| Action::ReconnectConfig { node: node(n) })
                .collect(),
            StepKind::MoveGroups => nodes()
                .take(1)
                .map(|n| Action::Command {
                    node: node(n),
                    command: Command::FailoverActive,
                })
                .collect(),
            StepKind::RestoreGroups { holders } => holders
                .iter()
                .filter(|(g, n)| cluster.holder(*g).is_none_or(|h| &h.name != n))
                .map(|(g, n)| Action::Command {
                    node: n.clone(),
                    command: Command::FailoverGroup {
                        group: *g,
                        active: true,
                    },
                })
                .collect(),
        }
    }

    /// What a waiting step waits for, for the progress display.
    pub(crate) fn waiting_for(&self) -> String {
        let nodes = self.nodes.join(", ");
        match &self.kind {
            StepKind::SyncReport => "a clean sync report".to_string(),
            StepKind::Preflight { .. } => "every node healthy".to_string(),
            StepKind::Backup => format!("backups from {nodes}"),
            StepKind::SetPreempt { on } => {
                format!("preemption {} on {nodes}", if *on { "on" } else { "off" })
            }
            StepKind::Install { version } => format!("{version} installed on {nodes}"),
            StepKind::Boot { version, .. } => format!("{nodes} up and healthy on {version}"),
            StepKind::WaitReady { version } => {
                format!("{nodes} ready and in sync on {version}")
            }
            StepKind::Switchover { version } => format!("a node on {version} active"),
            StepKind::CheckService { version } => {
                format!("the service healthy on {version} on the active node")
            }
            StepKind::Disconnect => format!("{nodes} disconnected from cluster config"),
            StepKind::Suspend => format!("{nodes} drained"),
            StepKind::Resume => format!("{nodes} accepting connections"),
            StepKind::Reconnect { .. } => format!("{nodes} reconnected"),
            StepKind::MoveGroups => format!("every group active on {nodes}"),
            StepKind::RestoreGroups { .. } => "every group back on its node".to_string(),
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes = self.nodes.join(", ");
        let first = self.nodes.first().map(String::as_str).unwrap_or("");
        match &self.kind {
            StepKind::SyncReport => write!(f, "run the sync report; continue only if it is clean"),
            StepKind::Preflight { versions } => write!(
                f,
                "preflight: every node healthy, verified images for {} where needed",
                versions
                    .iter()
                    .map(Version::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            StepKind::Backup => write!(f, "back up the configuration of {nodes}"),
            StepKind::SetPreempt { on: false } => write!(f, "disable preemption on {nodes}"),
            StepKind::SetPreempt { on: true } => {
                write!(f, "restore preemption (on) on {nodes}")
            }
            StepKind::Install { version } => {
                write!(f, "install {version} into the inactive slot of {nodes}")
            }
            StepKind::Boot {
                version,
                rollback: false,
                holdoff_secs: None,
            } => write!(f, "reload {nodes} into {version} (boot the pending slot)"),
            StepKind::Boot {
                version,
                rollback: true,
                holdoff_secs: None,
            } => write!(f, "roll {nodes} back to {version} (boot the previous slot)"),
            StepKind::Boot {
                version,
                rollback,
                holdoff_secs: Some(secs),
            } => write!(
                f,
                "{first} sends `ha holdoff {secs}` to its peers, then {} {version}",
                if *rollback { "rolls back to" } else { "boots" }
            ),
            StepKind::WaitReady { version } => {
                write!(f, "wait for {nodes} to be ready on {version}, data in sync")
            }
            StepKind::Switchover { version } => write!(
                f,
                "switch over: `failover standby` on {first}; a standby on {version} takes over"
            ),
            StepKind::CheckService { version } => {
                write!(
                    f,
                    "check the service on the active node ({nodes}) on {version}"
                )
            }
            StepKind::Disconnect => write!(f, "disconnect {nodes} from cluster config"),
            StepKind::Suspend => write!(f, "suspend the listener of {nodes} and drain"),
            StepKind::Resume => write!(f, "resume the listener of {nodes}"),
            StepKind::Reconnect { version } => {
                write!(f, "reconnect {nodes} to cluster config (all on {version})")
            }
            StepKind::MoveGroups => write!(f, "move every failover group to {first}"),
            StepKind::RestoreGroups { holders } => write!(
                f,
                "move the groups back: {}",
                holders
                    .iter()
                    .map(|(g, n)| format!("{g} to {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// Whether `node` holds a VIP (in the modes that have VIPs).
fn serves_a_group(cluster: &ClusterState, node: &NodeState) -> bool {
    match cluster.mode {
        Mode::ConfigOnly => false,
        Mode::ActivePassive => node.effective == EffectiveRole::Active,
        Mode::ActiveActive => !node.groups.is_empty() || node.effective == EffectiveRole::Active,
    }
}

/// A non-active node ready to serve: healthy, standby (or held off), in sync.
fn ready_standby(node: &NodeState) -> bool {
    node.healthy
        && node.in_sync
        && matches!(
            node.effective,
            EffectiveRole::Standby | EffectiveRole::HeldOff
        )
}

/// The first node that lacks a verified image of a release it will install.
pub(crate) fn missing_image(cluster: &ClusterState, versions: &[Version]) -> Option<String> {
    for version in versions {
        for node in cluster.nodes.iter().filter(|n| n.running < *version) {
            match node.image(version) {
                None => {
                    return Some(format!("node {} has no image for {version}", node.name));
                }
                Some(image) if !image.verified => {
                    return Some(format!(
                        "the image for {version} on node {} is not verified",
                        node.name
                    ));
                }
                Some(_) => {}
            }
        }
    }
    None
}
