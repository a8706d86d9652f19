//! Fixtures (nodes, clusters, catalogs) and a simulated cluster that
//! carries out the run's actions, for the tests of every other module.
//!
//! The model is deliberately small but keeps the properties the run must
//! not break: a node that boots stops serving until the boot completes; an
//! active node that stops serving is replaced by a standby unless a holdoff
//! holds it back (an unplanned failover, counted); a boot of an image the
//! test marked bad falls back to the previous slot, as `tandem-image` does.

use tandem_core::{Command, ConfiguredRole, EffectiveRole, GroupId, Mode};
use tandem_upgrade::{
    Action, ClusterState, ConfigLink, ImageFile, Listener, NodeState, Observation, SlotStatus,
    SlotView,
};
use tandem_version::{Catalog, Version};

/// A version from text the test wrote.
pub fn v(text: &str) -> Version {
    text.parse().expect("parse the test version")
}

/// FortiMail-like catalog: 6.2.0 → 6.2.5 → 6.4.0, only along the edges.
pub fn fortimail_catalog() -> Catalog {
    let text = r#"
        rules = "edges"
        [[release]]
        version = "6.2.0"
        [[release]]
        version = "6.2.5"
        [[release]]
        version = "6.4.0"
        [[edge]]
        from = "6.2.0"
        to = "6.2.5"
        [[edge]]
        from = "6.2.5"
        to = "6.4.0"
    "#;
    Catalog::parse(text, "fortimail.toml").expect("parse the test catalog")
}

/// A healthy, in-sync node with the given images, nothing installed.
pub fn node(
    name: &str,
    configured: ConfiguredRole,
    effective: EffectiveRole,
    priority: u8,
    running: &str,
    images: &[&str],
) -> NodeState {
    NodeState {
        name: name.to_string(),
        configured,
        effective,
        priority,
        running: v(running),
        healthy: true,
        in_sync: true,
        preempt: false,
        groups: vec![],
        images: images
            .iter()
            .map(|i| ImageFile {
                version: v(i),
                verified: true,
            })
            .collect(),
        other_slot: None,
        listener: Listener::Accepting,
        config_link: ConfigLink::Connected,
    }
}

/// An active-passive cluster: `a` primary active, the rest secondary standby.
pub fn active_passive(names: &[&str], running: &str, images: &[&str]) -> ClusterState {
    let nodes = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            if i == 0 {
                node(
                    name,
                    ConfiguredRole::Primary,
                    EffectiveRole::Active,
                    200,
                    running,
                    images,
                )
            } else {
                let priority = 100u8.saturating_sub(u8::try_from(i).unwrap_or(0));
                node(
                    name,
                    ConfiguredRole::Secondary,
                    EffectiveRole::Standby,
                    priority,
                    running,
                    images,
                )
            }
        })
        .collect();
    ClusterState {
        mode: Mode::ActivePassive,
        groups: vec![GroupId(0)],
        nodes,
        sync_clean: Some(true),
    }
}

/// A config-only cluster: every node active on its own address, the first
/// one configured primary.
pub fn config_only(names: &[&str], running: &str, images: &[&str]) -> ClusterState {
    let mut cluster = active_passive(names, running, images);
    cluster.mode = Mode::ConfigOnly;
    cluster.groups = vec![];
    for n in &mut cluster.nodes {
        n.effective = EffectiveRole::Active;
    }
    cluster
}

/// An ASA active/active pair: `a` holds group 1, `b` group 2.
pub fn active_active(running: &str, images: &[&str]) -> ClusterState {
    let mut cluster = active_passive(&["a", "b"], running, images);
    cluster.mode = Mode::ActiveActive;
    cluster.groups = vec![GroupId(1), GroupId(2)];
    for (n, g) in cluster.nodes.iter_mut().zip([1u8, 2]) {
        n.effective = EffectiveRole::Active;
        n.groups = vec![GroupId(g)];
    }
    cluster
}

/// The simulated cluster.
#[derive(Debug, Clone)]
pub struct Model {
    /// What the nodes report.
    pub state: ClusterState,
    /// Boots in flight: node, release it comes up on, whether a rollback.
    pub booting: Vec<(String, Version, bool)>,
    /// A boot of this release on this node fails its health check.
    pub fail_on: Option<(String, Version)>,
    /// The node whose holdoff holds the others back.
    pub holdoff_from: Option<String>,
    /// Times a VIP moved because its holder went down, not by command.
    pub unplanned_failovers: u32,
    /// Most releases running at once, over the whole run.
    pub max_versions: usize,
    /// Whether the service was ever unreachable.
    pub ever_unreachable: bool,
    /// Every action carried out, in order.
    pub log: Vec<Action>,
}

impl Model {
    /// A model of `state`.
    pub fn new(state: ClusterState) -> Self {
        let max_versions = state.versions().len();
        Model {
            state,
            booting: vec![],
            fail_on: None,
            holdoff_from: None,
            unplanned_failovers: 0,
            max_versions,
            ever_unreachable: false,
            log: vec![],
        }
    }

    fn node(&mut self, name: &str) -> &mut NodeState {
        match self.state.node_mut(name) {
            Some(n) => n,
            None => panic!("the run named unknown node {name}"),
        }
    }

    /// Records the invariants of the current state.
    fn check(&mut self) {
        self.max_versions = self.max_versions.max(self.state.versions().len());
        if !self.state.service_reachable() {
            self.ever_unreachable = true;
        }
    }

    /// The best-ranked node that can take a VIP, other than `not`.
    fn successor(&self, not: &str) -> Option<String> {
        self.state
            .nodes
            .iter()
            .filter(|n| {
                n.name != not
                    && n.configured.serves_groups()
                    && n.healthy
                    && n.effective == EffectiveRole::Standby
            })
            .max_by_key(|n| {
                (
                    n.configured == ConfiguredRole::Primary,
                    n.priority,
                    n.name.clone(),
                )
            })
            .map(|n| n.name.clone())
    }

    fn set_groups(&mut self, name: &str, groups: Vec<GroupId>) {
        let n = self.node(name);
        n.effective = if groups.is_empty() {
            EffectiveRole::Standby
        } else {
            EffectiveRole::Active
        };
        n.groups = groups;
    }

    /// Carries out one action; returns what the agent would observe.
    pub fn apply(&mut self, action: &Action) -> Vec<Observation> {
        self.log.push(action.clone());
        let mut out = vec![];
        match action {
            Action::Command { node, command } => self.command(node, command),
            Action::InstallImage { node, version } => {
                self.node(node).other_slot = Some(SlotView {
                    version: *version,
                    state: SlotStatus::Pending,
                });
            }
            Action::BootPending { node, version } => self.boot(node, *version, false),
            Action::BootPrevious { node, version } => self.boot(node, *version, true),
            Action::SuspendListener { node } => self.node(node).listener = Listener::Suspended,
            Action::ResumeListener { node } => self.node(node).listener = Listener::Accepting,
            Action::DisconnectConfig { node } => {
                self.node(node).config_link = ConfigLink::Disconnected;
            }
            Action::ReconnectConfig { node } => {
                self.node(node).config_link = ConfigLink::Connected;
            }
            Action::TakeBackup { node } => {
                out.push(Observation::BackupTaken { node: node.clone() })
            }
            Action::RunSyncReport => out.push(Observation::SyncReport { clean: true }),
            Action::Wait { .. }
            | Action::Done { .. }
            | Action::RolledBack { .. }
            | Action::Stopped { .. } => {}
        }
        self.check();
        out
    }

    fn command(&mut self, node: &str, command: &Command) {
        match command {
            Command::HaPreempt(on) => self.node(node).preempt = *on,
            Command::FailoverStandby => {
                if self
                    .state
                    .node(node)
                    .is_some_and(|n| n.effective == EffectiveRole::Active)
                    && let Some(next) = self.successor(node)
                {
                    let n = self.node(node);
                    n.effective = EffectiveRole::Standby;
                    n.in_sync = true;
                    self.node(&next).effective = EffectiveRole::Active;
                }
            }
            Command::FailoverActive => {
                let all = self.state.groups.clone();
                let names: Vec<String> = self.state.nodes.iter().map(|n| n.name.clone()).collect();
                for other in names.iter().filter(|n| *n != node) {
                    if self
                        .state
                        .node(other)
                        .is_some_and(|n| n.effective != EffectiveRole::Off)
                    {
                        self.set_groups(other, vec![]);
                    }
                }
                self.set_groups(node, all);
            }
            Command::FailoverGroup {
                group,
                active: true,
            } => {
                let holder = self.state.holder(*group).map(|n| n.name.clone());
                if let Some(holder) = holder {
                    let mut groups = self.node(&holder).groups.clone();
                    groups.retain(|g| g != group);
                    self.set_groups(&holder, groups);
                }
                let mut groups = self.node(node).groups.clone();
                groups.push(*group);
                self.set_groups(node, groups);
            }
            Command::HaHoldoff(_) => {
                for n in self.state.nodes.iter_mut().filter(|n| n.name != node) {
                    if n.effective == EffectiveRole::Standby {
                        n.effective = EffectiveRole::HeldOff;
                    }
                }
                self.holdoff_from = Some(node.to_string());
            }
            other => panic!("the run sent an unexpected command: {other}"),
        }
    }

    fn boot(&mut self, name: &str, version: Version, rollback: bool) {
        if self.booting.iter().any(|(n, _, _)| n == name) || self.node(name).running == version {
            return; // idempotent, as the agent must be
        }
        self.booting.push((name.to_string(), version, rollback));
        let mode = self.state.mode;
        let n = self.node(name);
        let was_active = n.effective == EffectiveRole::Active;
        let held = std::mem::take(&mut n.groups);
        n.effective = EffectiveRole::Off;
        n.healthy = false;
        n.in_sync = false;
        if was_active && mode != Mode::ConfigOnly {
            // The VIP(s) it held: a standby takes over unless held off.
            if let Some(next) = self.successor(name) {
                self.unplanned_failovers += 1;
                if mode == Mode::ActiveActive {
                    let mut groups = self.node(&next).groups.clone();
                    groups.extend(held);
                    self.set_groups(&next, groups);
                } else {
                    self.node(&next).effective = EffectiveRole::Active;
                }
            } else if mode == Mode::ActiveActive {
                self.node(name).groups = held; // nobody to take them: they wait
            }
        }
    }

    /// Things that would happen by themselves: boots completing, standbys
    /// catching up. Returns how many are possible now.
    pub fn events(&self) -> usize {
        self.booting.len()
            + self
                .state
                .nodes
                .iter()
                .filter(|n| !n.in_sync && n.effective != EffectiveRole::Off)
                .count()
    }

    /// Lets event number `pick` (modulo [`Model::events`]) happen.
    pub fn progress(&mut self, pick: usize) {
        let events = self.events();
        if events == 0 {
            return;
        }
        let pick = pick % events;
        if pick < self.booting.len() {
            let (name, version, rollback) = self.booting.remove(pick);
            self.finish_boot(&name, version, rollback);
        } else {
            let name = self
                .state
                .nodes
                .iter()
                .filter(|n| !n.in_sync && n.effective != EffectiveRole::Off)
                .nth(pick - self.booting.len())
                .map(|n| n.name.clone());
            if let Some(name) = name {
                self.node(&name).in_sync = true;
            }
        }
        self.check();
    }

    fn finish_boot(&mut self, name: &str, version: Version, rollback: bool) {
        let fails = !rollback
            && self
                .fail_on
                .as_ref()
                .is_some_and(|(n, v)| n == name && *v == version);
        let mode = self.state.mode;
        let someone_active = self
            .state
            .nodes
            .iter()
            .any(|n| n.name != name && n.effective == EffectiveRole::Active);
        let n = self.node(name);
        if fails {
            // tandem-image: no mark-good, back to the previous slot.
            n.other_slot = Some(SlotView {
                version,
                state: SlotStatus::Bad,
            });
        } else {
            let old = n.running;
            n.running = version;
            n.other_slot = Some(SlotView {
                version: old,
                state: SlotStatus::Good,
            });
        }
        n.healthy = true;
        match mode {
            Mode::ConfigOnly => {
                n.effective = EffectiveRole::Active;
                n.in_sync = true;
            }
            Mode::ActivePassive if !someone_active => {
                n.effective = EffectiveRole::Active;
                n.in_sync = true;
            }
            _ => n.effective = EffectiveRole::Standby,
        }
        if mode == Mode::ActiveActive {
            let orphans: Vec<GroupId> = self
                .state
                .groups
                .iter()
                .copied()
                .filter(|g| self.state.holder(*g).is_none())
                .collect();
            if !orphans.is_empty() {
                self.set_groups(name, orphans);
            }
        }
        if self.holdoff_from.as_deref() == Some(name) {
            self.holdoff_from = None;
            for n in &mut self.state.nodes {
                if n.effective == EffectiveRole::HeldOff {
                    n.effective = EffectiveRole::Standby;
                }
            }
        }
    }
}

/// A small deterministic random source (xorshift), seeded by proptest.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            usize::try_from(self.next() % n as u64).unwrap_or(0)
        }
    }
}

/// How a simulated run ended.
#[derive(Debug)]
pub struct Outcome {
    /// The run's last action (`Done`, `RolledBack` or `Stopped`).
    pub last: Action,
    /// The run as it ended.
    pub run: tandem_upgrade::UpgradeRun,
    /// Coordinator crashes survived.
    pub crashes: u32,
}

/// Drives `run` against `model` until it finishes. With probability
/// `crash_percent` per round the coordinator dies after persisting the
/// journal and carrying out only some of the actions; a new one resumes from
/// the serialized journal with its own clock starting at zero.
pub fn drive(
    mut run: tandem_upgrade::UpgradeRun,
    model: &mut Model,
    rng: &mut Rng,
    crash_percent: u64,
) -> Outcome {
    let mut now = 0u64;
    let mut crashes = 0;
    for _ in 0..5_000 {
        let actions = run.next(now);
        let journal = serde_json::to_string(&run).expect("serialize the journal");
        if let Some(last) = actions.iter().find(|a| {
            matches!(
                a,
                Action::Done { .. } | Action::RolledBack { .. } | Action::Stopped { .. }
            )
        }) {
            return Outcome {
                last: last.clone(),
                run,
                crashes,
            };
        }
        let crash = rng.next() % 100 < crash_percent;
        let carried = if crash {
            rng.below(actions.len() + 1)
        } else {
            actions.len()
        };
        let mut waited_until = None;
        for action in actions.iter().take(carried) {
            if let Action::Wait { until_ms, .. } = action {
                waited_until = Some(*until_ms);
            }
            for observation in model.apply(action) {
                run.observe(now, observation);
            }
        }
        if crash {
            crashes += 1;
            let journal: tandem_upgrade::UpgradeRun =
                serde_json::from_str(&journal).expect("deserialize the journal");
            now = 0;
            run = tandem_upgrade::UpgradeRun::resume(journal, model.state.clone(), now)
                .expect("resume the run");
            continue;
        }
        if let Some(until) = waited_until {
            if model.events() > 0 {
                model.progress(rng.below(64));
                now += 1_000;
            } else {
                now = now.max(until);
            }
        }
        run.observe(now, Observation::Cluster(model.state.clone()));
    }
    panic!("the run did not finish in 5000 rounds: {:?}", run.status);
}
