//! The nemesis: the fault kinds a campaign can inject, and how each is
//! injected and removed on a local cluster.
//!
//! Each fault is recorded as a start and an end ([`Event::Fault`]); the
//! nemesis injects one at a time, holds it for a seeded while, removes it
//! and leaves the cluster a moment to recover before the next. Which kind,
//! which target and how long all come from the campaign's seeded [`Rng`],
//! so a seed names the same sequence of faults again (the cluster's
//! answers, being real processes, are not replayed).

use std::time::Duration;

use anyhow::bail;
use tandem_chaos::{Event, Phase};
use tandem_core::EffectiveRole;

use super::record::Recorder;
use crate::localcluster::LocalCluster;
use crate::localetcd::LocalEtcd;

/// What a fault kind needs from the ground it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Nothing but the cluster.
    Nothing,
    /// `coordination = "etcd"`.
    Etcd,
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
}

/// Every kind, in the order `--faults` lists them.
pub const ALL: [Kind; 10] = [
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
            _ => Needs::Nothing,
        }
    }
}

/// A small seeded generator (splitmix64): the campaign's only source of
/// choices, so that a seed replays the same faults.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// A duration between `lo` and `hi`.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_millis() as u64;
        lo + Duration::from_millis(self.below(span + 1))
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
}

/// How long a fault is held, at least and at most.
const HOLD: (Duration, Duration) = (Duration::from_millis(1000), Duration::from_millis(4000));

impl Ground<'_> {
    fn fault(&self, kind: Kind, target: &str, phase: Phase) {
        self.rec.push(Event::Fault {
            kind: kind.name().into(),
            target: target.into(),
            phase,
        });
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
    fn pick(&self, rng: &mut Rng, want_active: bool) -> usize {
        let n = self.cluster.nodes.len();
        match self.active() {
            Some(a) if want_active => a,
            Some(a) => (a + 1 + rng.below(n as u64 - 1) as usize) % n,
            None => rng.below(n as u64) as usize,
        }
    }

    fn name(&self, i: usize) -> String {
        self.cluster.nodes[i].name.clone()
    }

    /// Injects one fault of `kind`, holds it, removes it.
    pub fn inject(&mut self, kind: Kind, rng: &mut Rng) -> anyhow::Result<()> {
        let hold = rng.between(HOLD.0, HOLD.1);
        match kind {
            Kind::KillAgent | Kind::StopAgent => {
                let at_active = rng.below(2) == 0;
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
            Kind::Switchover => {
                let i = self.pick(rng, false);
                let target = self.name(i);
                self.fault(kind, &target, Phase::Start);
                // A refusal (the standby is not in sync yet) is an answer
                // too: the operation ran during whatever else went on.
                let _ = self.cluster.cli(i, &["failover", "active"]);
                self.fault(kind, &target, Phase::End);
            }
            Kind::ConfigPush => {
                let i = self.pick(rng, true);
                let target = self.name(i);
                self.fault(kind, &target, Phase::Start);
                let _ = self.cluster.cli(i, &["config", "push"]);
                self.fault(kind, &target, Phase::End);
            }
            Kind::EtcdKillOne | Kind::EtcdKillTwo | Kind::EtcdKillAll | Kind::EtcdPauseOne => {
                self.etcd_fault(kind, rng, hold)?;
            }
        }
        Ok(())
    }

    fn etcd_fault(&mut self, kind: Kind, rng: &mut Rng, hold: Duration) -> anyhow::Result<()> {
        let Some(etcd) = self.etcd.as_deref_mut() else {
            bail!("{} needs coordination = etcd", kind.name());
        };
        let members = etcd.members();
        let first = rng.below(members as u64) as usize;
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
        let mark = |phase| {
            rec.push(Event::Fault {
                kind: kind.name().into(),
                target: target.clone(),
                phase,
            })
        };
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
