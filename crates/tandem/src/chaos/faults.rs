//! The nemesis: the fault kinds a campaign can inject, and how each is
//! injected and removed on a local cluster.
//!
//! Each fault is recorded as a start and an end ([`Event::Fault`]); the
//! nemesis injects one at a time, holds it for a seeded while, removes it
//! and leaves the cluster a moment to recover before the next. Which kind,
//! which target and how long all come from the campaign's seeded [`SplitMix`],
//! so a seed names the same sequence of faults again (the cluster's
//! answers, being real processes, are not replayed).

use std::time::Duration;

use anyhow::bail;
use tandem_chaos::{Event, Phase, SplitMix};
use tandem_core::EffectiveRole;

use super::disk::Spools;
use super::proxy::Proxy;
use super::record::Recorder;
use crate::localcluster::LocalCluster;
use crate::localetcd::LocalEtcd;
use crate::netns::{Lab, WITNESS};

/// What a fault kind needs from the ground it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Nothing but the cluster.
    Nothing,
    /// `coordination = "etcd"`.
    Etcd,
    /// Network namespaces (root).
    Netns,
    /// Network namespaces and the kernel's `sch_netem`.
    Netem,
    /// Network namespaces and `coordination = "etcd"`.
    EtcdNetns,
    /// Root (mounts).
    Root,
}

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// kill -9 of an agent (the active or a standby), then a restart.
    KillAgent,
    /// kill -9 of the active's service.
    KillService,
    /// SIGSTOP of an agent, then SIGCONT.
    StopAgent,
    /// A standby killed, restarted while it catches up, killed again and
    /// restarted.
    RestartMidCatchUp,
    /// A planned switchover to a standby.
    Switchover,
    /// A config push from the primary.
    ConfigPush,
    /// kill -9 of one etcd member, then a restart.
    EtcdKillOne,
    /// kill -9 of two of three etcd members: no quorum.
    EtcdKillTwo,
    /// Every etcd member killed.
    EtcdKillAll,
    /// One etcd member stopped (SIGSTOP): silent, as if cut off.
    EtcdPauseOne,
    /// One etcd member cut off by the network from the other members, the
    /// nodes and `c`.
    EtcdIsolateOne,
    /// The active's spool filesystem filled up.
    DiskFull,
    /// One bit flipped in what the active sends each standby on the sync
    /// channel.
    SyncByteFlip,
    /// The active cut from every node and from `c` (etcd, clients, the
    /// next hop).
    PartitionActive,
    /// A standby cut from every node and from `c`.
    PartitionStandby,
    /// The active and the fewest others it takes to be a minority, cut
    /// from the rest and from `c`.
    PartitionMinority,
    /// A minority of standbys cut from the rest (the active among them)
    /// and from `c`: the active keeps the majority.
    PartitionMajority,
    /// What the active sends to the standbys is dropped; what they send
    /// arrives.
    PartitionOneWay,
    /// The link between the active and a standby cut and healed every
    /// 300 ms.
    LinkFlap,
    /// 30 % of the active's packets dropped (`tc netem`).
    NetemLoss,
    /// The active's packets delayed 100 ms ± 50 ms.
    NetemDelay,
    /// The active's packets delayed 20 ms, a quarter of them sent at once
    /// (reordered).
    NetemReorder,
}

/// Every kind, in the order `--faults` lists them.
pub const ALL: [Kind; 22] = [
    Kind::KillAgent,
    Kind::KillService,
    Kind::StopAgent,
    Kind::RestartMidCatchUp,
    Kind::Switchover,
    Kind::ConfigPush,
    Kind::EtcdKillOne,
    Kind::EtcdKillTwo,
    Kind::EtcdKillAll,
    Kind::EtcdPauseOne,
    Kind::PartitionActive,
    Kind::PartitionStandby,
    Kind::PartitionMinority,
    Kind::PartitionMajority,
    Kind::PartitionOneWay,
    Kind::LinkFlap,
    Kind::NetemLoss,
    Kind::NetemDelay,
    Kind::NetemReorder,
    Kind::EtcdIsolateOne,
    Kind::DiskFull,
    Kind::SyncByteFlip,
];

impl Kind {
    /// Its name in `--faults`, the history and the report.
    pub fn name(self) -> &'static str {
        match self {
            Kind::KillAgent => "kill-agent",
            Kind::KillService => "kill-service",
            Kind::StopAgent => "sigstop-agent",
            Kind::RestartMidCatchUp => "restart-mid-catch-up",
            Kind::Switchover => "switchover",
            Kind::ConfigPush => "config-push",
            Kind::EtcdKillOne => "etcd-kill-one",
            Kind::EtcdKillTwo => "etcd-kill-two",
            Kind::EtcdKillAll => "etcd-kill-all",
            Kind::EtcdPauseOne => "etcd-pause-one",
            Kind::PartitionActive => "partition-active",
            Kind::PartitionStandby => "partition-standby",
            Kind::PartitionMinority => "partition-minority",
            Kind::PartitionMajority => "partition-majority",
            Kind::PartitionOneWay => "partition-one-way",
            Kind::LinkFlap => "link-flap",
            Kind::NetemLoss => "netem-loss",
            Kind::NetemDelay => "netem-delay",
            Kind::NetemReorder => "netem-reorder",
            Kind::EtcdIsolateOne => "etcd-isolate-one",
            Kind::DiskFull => "disk-full",
            Kind::SyncByteFlip => "sync-byte-flip",
        }
    }

    /// The kind called `name`.
    pub fn from_name(name: &str) -> anyhow::Result<Kind> {
        match ALL.iter().find(|k| k.name() == name) {
            Some(k) => Ok(*k),
            None => bail!(
                "no fault kind `{name}`; the kinds are: {}",
                ALL.map(Kind::name).join(", ")
            ),
        }
    }

    /// What it needs.
    pub fn needs(self) -> Needs {
        match self {
            Kind::EtcdKillOne | Kind::EtcdKillTwo | Kind::EtcdKillAll | Kind::EtcdPauseOne => {
                Needs::Etcd
            }
            Kind::PartitionActive
            | Kind::PartitionStandby
            | Kind::PartitionMinority
            | Kind::PartitionMajority
            | Kind::PartitionOneWay
            | Kind::LinkFlap => Needs::Netns,
            Kind::NetemLoss | Kind::NetemDelay | Kind::NetemReorder => Needs::Netem,
            Kind::EtcdIsolateOne => Needs::EtcdNetns,
            Kind::DiskFull => Needs::Root,
            _ => Needs::Nothing,
        }
    }
}

/// What the nemesis acts on.
pub struct Ground<'a> {
    /// The cluster.
    pub cluster: &'a mut LocalCluster,
    /// Its etcd, in etcd mode.
    pub etcd: Option<&'a mut LocalEtcd>,
    /// To ask the nodes for their status.
    pub rt: &'a tokio::runtime::Runtime,
    /// The history.
    pub rec: &'a Recorder,
    /// The namespaces, when the cluster runs in them.
    pub lab: Option<&'a mut Lab>,
    /// The nodes' spool filesystems, when `disk-full` may be drawn.
    pub spools: Option<&'a Spools>,
    /// The proxies on the sync channel, when `sync-byte-flip` may be drawn.
    pub proxies: &'a [Proxy],
}

/// Records a fault's start or end.
fn record(rec: &Recorder, kind: Kind, target: &str, phase: Phase) {
    rec.push(Event::Fault {
        kind: kind.name().into(),
        target: target.into(),
        phase,
    });
}

/// How long a fault is held, at least and at most.
const HOLD: (Duration, Duration) = (Duration::from_millis(1000), Duration::from_millis(4000));

impl Ground<'_> {
    fn fault(&self, kind: Kind, target: &str, phase: Phase) {
        record(self.rec, kind, target, phase);
    }

    /// The node that says it is active for group 0, if one does.
    fn active(&self) -> Option<usize> {
        (0..self.cluster.nodes.len()).find(|&i| {
            self.rt.block_on(self.cluster.status(i)).is_some_and(|s| {
                s.node
                    .groups
                    .first()
                    .is_some_and(|g| g.role == EffectiveRole::Active)
            })
        })
    }

    /// The active (or, with none, any node) when `want_active`; else a
    /// node other than the active.
    fn pick(&self, rng: &mut SplitMix, want_active: bool) -> usize {
        let n = self.cluster.nodes.len();
        match self.active() {
            Some(a) if want_active => a,
            Some(a) => (a + 1 + rng.index(n - 1)) % n,
            None => rng.index(n),
        }
    }

    fn name(&self, i: usize) -> String {
        self.cluster.nodes[i].name.clone()
    }

    /// Injects one fault of `kind`, holds it, removes it.
    pub fn inject(&mut self, kind: Kind, rng: &mut SplitMix) -> anyhow::Result<()> {
        let hold = rng.between(HOLD.0, HOLD.1);
        match kind {
            Kind::KillAgent | Kind::StopAgent => {
                let at_active = rng.index(2) == 0;
                let i = self.pick(rng, at_active);
                let target = self.name(i);
                self.fault(kind, &target, Phase::Start);
                if kind == Kind::KillAgent {
                    self.cluster.kill(i);
                    std::thread::sleep(hold);
                    self.cluster.start(i)?;
                } else {
                    self.cluster.signal(i, libc::SIGSTOP);
                    std::thread::sleep(hold);
                    self.cluster.signal(i, libc::SIGCONT);
                }
                self.fault(kind, &target, Phase::End);
            }
            Kind::KillService => {
                let i = self.pick(rng, true);
                let target = self.name(i);
                let pid = self
                    .rt
                    .block_on(self.cluster.status(i))
                    .and_then(|s| s.agent.service_pid);
                self.fault(kind, &target, Phase::Start);
                if let Some(pid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()) {
                    // SAFETY: kill(2) on the service the agent reported
                    // running; at worst the pid is gone (ESRCH).
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                std::thread::sleep(hold);
                self.fault(kind, &target, Phase::End);
            }
            Kind::RestartMidCatchUp => {
                let i = self.pick(rng, false);
                let target = self.name(i);
                self.fault(kind, &target, Phase::Start);
                self.cluster.kill(i);
                // Away long enough to fall behind the load.
                std::thread::sleep(hold);
                self.cluster.start(i)?;
                std::thread::sleep(
                    rng.between(Duration::from_millis(100), Duration::from_millis(400)),
                );
                self.cluster.kill(i);
                self.cluster.start(i)?;
                self.fault(kind, &target, Phase::End);
            }
            Kind::Switchover | Kind::ConfigPush => {
                // An operation, not a fault: run during whatever else goes
                // on. A refusal (a standby not in sync yet) is an answer too.
                let (at_active, args): (bool, &[&str]) = match kind {
                    Kind::Switchover => (false, &["failover", "active"]),
                    _ => (true, &["config", "push"]),
                };
                let i = self.pick(rng, at_active);
                let target = self.name(i);
                self.fault(kind, &target, Phase::Start);
                let _ = self.cluster.cli(i, args);
                self.fault(kind, &target, Phase::End);
            }
            Kind::EtcdKillOne | Kind::EtcdKillTwo | Kind::EtcdKillAll | Kind::EtcdPauseOne => {
                self.etcd_fault(kind, rng, hold)?;
            }
            Kind::SyncByteFlip => {
                if self.proxies.is_empty() {
                    bail!("sync-byte-flip needs the proxies on the sync channel");
                }
                let i = self.pick(rng, true);
                let target = self.name(i);
                self.fault(kind, &target, Phase::Start);
                self.proxies
                    .iter()
                    .filter(|p| p.from == i)
                    .for_each(Proxy::arm);
                std::thread::sleep(hold);
                self.fault(kind, &target, Phase::End);
            }
            Kind::DiskFull => {
                let Some(spools) = self.spools else {
                    bail!("disk-full needs the spools on filesystems of their own (root)");
                };
                let i = self.pick(rng, true);
                let target = self.name(i);
                self.fault(kind, &target, Phase::Start);
                let filled = spools.fill(i);
                std::thread::sleep(hold);
                spools.drain(i);
                self.fault(kind, &target, Phase::End);
                filled?;
            }
            _ => self.network_fault(kind, rng, hold)?,
        }
        Ok(())
    }

    /// The sides of a partition: (the side cut off, the rest), as node
    /// names, the side cut off losing `c` too.
    fn sides(&self, kind: Kind, rng: &mut SplitMix) -> (Vec<String>, Vec<String>) {
        let n = self.cluster.nodes.len();
        let active = self.pick(rng, true);
        let minority = ((n - 1) / 2).max(1);
        let mut order: Vec<usize> = (0..n).filter(|&i| i != active).collect();
        // A seeded shuffle of the others.
        for i in (1..order.len()).rev() {
            order.swap(i, rng.index(i + 1));
        }
        let cut: Vec<usize> = match kind {
            Kind::PartitionActive => vec![active],
            Kind::PartitionStandby => order.iter().take(1).copied().collect(),
            Kind::PartitionMinority => std::iter::once(active)
                .chain(order.iter().take(minority - 1).copied())
                .collect(),
            _ => order.iter().take(minority.min(n - 1)).copied().collect(),
        };
        let names = |keep: bool| -> Vec<String> {
            (0..n)
                .filter(|i| cut.contains(i) != keep)
                .map(|i| self.name(i))
                .collect()
        };
        (names(false), names(true))
    }

    fn network_fault(
        &mut self,
        kind: Kind,
        rng: &mut SplitMix,
        hold: Duration,
    ) -> anyhow::Result<()> {
        if self.lab.is_none() {
            bail!("{} needs network namespaces", kind.name());
        }
        let active = self.pick(rng, true);
        let mut standby = self.pick(rng, false);
        if standby == active {
            // No node says it is active: any other node will do.
            standby = (active + 1) % self.cluster.nodes.len();
        }
        let (active, standby) = (self.name(active), self.name(standby));
        let stores = self
            .lab
            .as_deref()
            .map(Lab::store_names)
            .unwrap_or_default();
        if kind == Kind::EtcdIsolateOne && stores.is_empty() {
            bail!("etcd-isolate-one needs etcd members in namespaces of their own");
        }
        let target = match kind {
            Kind::PartitionActive
            | Kind::PartitionStandby
            | Kind::PartitionMinority
            | Kind::PartitionMajority => self.sides(kind, rng).0.join(","),
            Kind::LinkFlap => format!("{active}-{standby}"),
            Kind::EtcdIsolateOne => stores[rng.index(stores.len())].clone(),
            _ => active.clone(),
        };
        let others: Vec<String> = (0..self.cluster.nodes.len())
            .map(|i| self.name(i))
            .filter(|n| !target.split(',').any(|t| t == n))
            .collect();
        let Some(lab) = self.lab.as_deref_mut() else {
            return Ok(());
        };
        let rec = self.rec;
        let mark = |phase| record(rec, kind, &target, phase);
        let netem: &[&str] = match kind {
            Kind::NetemLoss => &["loss", "30%"],
            Kind::NetemDelay => &["delay", "100ms", "50ms"],
            Kind::NetemReorder => &["delay", "20ms", "reorder", "25%", "50%"],
            _ => &[],
        };
        mark(Phase::Start);
        let result = (|| -> anyhow::Result<()> {
            match kind {
                Kind::PartitionOneWay => {
                    for o in &others {
                        lab.cut_one_way(&active, o)?;
                    }
                    std::thread::sleep(hold);
                }
                Kind::LinkFlap => {
                    let until = std::time::Instant::now() + hold;
                    while std::time::Instant::now() < until {
                        lab.cut(&active, &standby)?;
                        std::thread::sleep(Duration::from_millis(300));
                        lab.heal()?;
                        std::thread::sleep(Duration::from_millis(300));
                    }
                }
                Kind::NetemLoss | Kind::NetemDelay | Kind::NetemReorder => {
                    let mut args = vec!["qdisc", "add", "dev", "eth0", "root", "netem"];
                    args.extend_from_slice(netem);
                    lab.tc(&active, &args)?;
                    std::thread::sleep(hold);
                    lab.tc(&active, &["qdisc", "del", "dev", "eth0", "root"])?;
                }
                _ => {
                    // The side cut off loses `c` and etcd too; an etcd
                    // member cut off loses everyone.
                    let mut outside = vec![WITNESS.to_owned()];
                    outside.extend(lab.store_names().into_iter().filter(|e| *e != target));
                    for t in target.split(',') {
                        for o in others.iter().chain(&outside) {
                            lab.cut(t, o)?;
                        }
                    }
                    std::thread::sleep(hold);
                }
            }
            Ok(())
        })();
        lab.heal()?;
        mark(Phase::End);
        result
    }

    fn etcd_fault(&mut self, kind: Kind, rng: &mut SplitMix, hold: Duration) -> anyhow::Result<()> {
        let Some(etcd) = self.etcd.as_deref_mut() else {
            bail!("{} needs coordination = etcd", kind.name());
        };
        let members = etcd.members();
        let first = rng.index(members);
        let hit: Vec<usize> = match kind {
            Kind::EtcdKillTwo => vec![first, (first + 1) % members],
            Kind::EtcdKillAll => (0..members).collect(),
            _ => vec![first],
        };
        let target = hit
            .iter()
            .map(|m| format!("etcd{m}"))
            .collect::<Vec<_>>()
            .join(",");
        let rec = self.rec;
        let mark = |phase| record(rec, kind, &target, phase);
        mark(Phase::Start);
        if kind == Kind::EtcdPauseOne {
            etcd.signal(first, libc::SIGSTOP);
            std::thread::sleep(hold);
            etcd.signal(first, libc::SIGCONT);
        } else {
            hit.iter().for_each(|&m| etcd.kill(m));
            std::thread::sleep(hold);
            for &m in &hit {
                etcd.restart(m)?;
            }
        }
        mark(Phase::End);
        Ok(())
    }
}
