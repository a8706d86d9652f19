//! Operator commands (`failover active|standby|group`, `ha restore`,
//! `ha restart`, `ha preempt`, `ha holdoff`), typed here or forwarded by a
//! peer, and the forwarding of commands meant for another node.
//!
//! A command checks first and changes after: a refusal leaves the node as
//! it was and comes back as [`Output::Refused`], so the operator learns why
//! nothing happened instead of finding a half-done switchover.

use crate::config::{GroupId, Mode};
use crate::role::{Command, HandoverCause, Refusal};
use crate::wire::Message;
use std::time::Duration;

use super::peer::PeerState;
use super::{Ctx, Destination, Event, Node, Output, Reason};

/// Who issued a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Origin {
    Operator,
    Forwarded(String),
}

impl Node {
    pub(super) fn execute(&mut self, cx: &mut Ctx, command: Command, origin: Origin) {
        let result = match &command {
            Command::FailoverActive => self.cmd_takeover(cx, None),
            Command::FailoverGroup {
                group,
                active: true,
            } => self.cmd_takeover(cx, Some(*group)),
            Command::FailoverStandby => self.cmd_standby(cx, None),
            Command::FailoverGroup {
                group,
                active: false,
            } => self.cmd_standby(cx, Some(*group)),
            Command::HaRestore => self.cmd_restore(cx, &origin),
            Command::HaRestart => self.cmd_restart(cx),
            Command::HaPreempt(on) => {
                if self.preempt != *on {
                    self.preempt = *on;
                    cx.out.push(Output::Persist(self.persistent_state()));
                }
                cx.emit(Event::PreemptChanged { enabled: *on });
                Ok(())
            }
            Command::HaHoldoff(d) => self.cmd_holdoff(cx, *d),
        };
        match result {
            Ok(()) => {
                cx.heartbeat_now = true;
                cx.emit(Event::CommandExecuted {
                    command,
                    forwarded_by: match origin {
                        Origin::Operator => None,
                        Origin::Forwarded(p) => Some(p),
                    },
                });
            }
            Err(reason) => cx.out.push(Output::Refused { command, reason }),
        }
    }

    /// Group indexes a failover command concerns, or why it cannot apply.
    fn command_groups(&self, group: Option<GroupId>) -> Result<Vec<usize>, Refusal> {
        if self.shut_down {
            return Err(Refusal::ShuttingDown);
        }
        if self.config.mode == Mode::ConfigOnly {
            return Err(Refusal::ConfigOnlyMode);
        }
        match group {
            None => Ok((0..self.groups.len()).collect()),
            Some(id) => self
                .group_index(id)
                .map(|gi| vec![gi])
                .ok_or(Refusal::UnknownGroup(id)),
        }
    }

    fn cmd_takeover(&mut self, cx: &mut Ctx, group: Option<GroupId>) -> Result<(), Refusal> {
        let now = cx.now;
        let targets = self.command_groups(group)?;
        if self.ha_stopped {
            return Err(Refusal::HaStopped);
        }
        if !self.config.role.serves_groups() {
            return Err(Refusal::NotServing(self.config.role));
        }
        if !self.local_healthy {
            return Err(Refusal::LocalUnhealthy);
        }
        if !self.data_ok() {
            return Err(Refusal::DataNotInSync);
        }
        if let Some(h) = self.holdoff.as_ref().filter(|h| h.until > now) {
            return Err(Refusal::HoldoffActive {
                from: h.from.clone(),
                remaining: now.until(h.until),
            });
        }
        if let Some(since) = self.eligible_since {
            let ready = since.plus(self.config.preempt_delay);
            if now < ready {
                return Err(Refusal::PreemptDelayRunning {
                    remaining: now.until(ready),
                });
            }
        }
        let todo: Vec<usize> = targets
            .into_iter()
            .filter(|&gi| !self.groups[gi].active)
            .collect();
        if todo.is_empty() {
            return Err(Refusal::AlreadyActive);
        }
        self.demoted = false;
        for gi in todo {
            self.claim_on_request(cx, gi, Reason::OperatorTakeover, None);
        }
        Ok(())
    }

    fn cmd_standby(&mut self, cx: &mut Ctx, group: Option<GroupId>) -> Result<(), Refusal> {
        let targets: Vec<usize> = self
            .command_groups(group)?
            .into_iter()
            .filter(|&gi| self.groups[gi].active)
            .collect();
        if targets.is_empty() {
            return Err(Refusal::NotActive);
        }
        // Check every group first: hand over all or nothing.
        let mut plan = Vec::new();
        for &gi in &targets {
            match self.best_eligible_peer(gi) {
                Some((to, _)) => plan.push((gi, to.to_owned())),
                None => {
                    let reachable = self
                        .peers
                        .iter()
                        .filter(|(_, p)| p.alive)
                        .filter_map(|(n, p)| self.peer_rank(gi, n, p).map(|r| (n, r)))
                        .max_by(|a, b| a.1.cmp(&b.1));
                    return Err(match reachable {
                        Some((n, _)) => Refusal::PeerUnhealthy(n.clone()),
                        None => Refusal::NoPeerReachable,
                    });
                }
            }
        }
        for (gi, to) in plan {
            self.start_handover(cx, gi, to, HandoverCause::Operator);
        }
        Ok(())
    }

    fn cmd_restore(&mut self, cx: &mut Ctx, origin: &Origin) -> Result<(), Refusal> {
        if self.shut_down {
            return Err(Refusal::ShuttingDown);
        }
        if *origin == Origin::Operator && self.config.mode != Mode::ConfigOnly {
            // Refuse up front if the node that should end up active cannot.
            for gi in 0..self.groups.len() {
                let mut owner = (self.self_rank(gi), None::<&PeerState>);
                for (n, p) in &self.peers {
                    if let Some(r) = self.peer_rank(gi, n, p)
                        && p.info
                            .as_ref()
                            .is_some_and(|h| h.configured_role.serves_groups())
                        && r > owner.0
                    {
                        owner = (r, Some(p));
                    }
                }
                match owner {
                    (r, Some(p)) if !p.alive => {
                        return Err(Refusal::PeerUnreachable(r.name.to_owned()));
                    }
                    (r, Some(p)) if !p.eligible() => {
                        return Err(Refusal::PeerUnhealthy(r.name.to_owned()));
                    }
                    (_, None) if self.config.role.serves_groups() && !self.self_eligible() => {
                        return Err(if self.ha_stopped {
                            Refusal::HaStopped
                        } else {
                            Refusal::LocalUnhealthy
                        });
                    }
                    _ => {}
                }
            }
            let message = self.command_message(Command::HaRestore);
            cx.out.push(Output::Send {
                to: Destination::All,
                message,
            });
        }
        let window = cx.now.plus(self.hold * 3);
        for g in &mut self.groups {
            g.yielded_to = None;
        }
        self.demoted = false;
        self.restore_until = Some(window);
        if self.self_eligible() {
            self.reclaim_until = Some(window);
        }
        Ok(())
    }

    fn cmd_restart(&mut self, cx: &mut Ctx) -> Result<(), Refusal> {
        if self.shut_down {
            return Err(Refusal::ShuttingDown);
        }
        for gi in 0..self.groups.len() {
            if self.groups[gi].active {
                self.set_active(cx, gi, false, Reason::HaRestarted);
            }
            let g = &mut self.groups[gi];
            g.yielded_to = None;
            g.handover = None;
            g.grace_until = None;
        }
        if self.ha_stopped {
            self.ha_stopped = false;
            cx.out.push(Output::Persist(self.persistent_state()));
        }
        self.demoted = false;
        self.eligible_since = None;
        self.started_at = cx.now;
        self.startup_until = cx.now.plus(self.hold);
        for p in self.peers.values_mut() {
            // Re-learn the peers before claiming anything, as at boot.
            if !p.alive {
                p.info = None;
            }
        }
        cx.cause = Some(Reason::HaRestarted);
        Ok(())
    }

    fn cmd_holdoff(&mut self, cx: &mut Ctx, d: Duration) -> Result<(), Refusal> {
        if self.shut_down {
            return Err(Refusal::ShuttingDown);
        }
        if d > self.config.holdoff_max {
            return Err(Refusal::HoldoffTooLong {
                requested: d,
                max: self.config.holdoff_max,
            });
        }
        self.announce_holdoff_until = Some(cx.now.plus(d));
        cx.out.push(Output::Send {
            to: Destination::All,
            message: Message::Holdoff { duration: d },
        });
        cx.emit(Event::HoldoffSent { duration: d });
        Ok(())
    }

    pub(super) fn forward(&mut self, cx: &mut Ctx, to: String, command: Command) {
        if to == self.config.name {
            return self.execute(cx, command, Origin::Operator);
        }
        match self.peers.get(&to) {
            Some(p) if p.alive => {
                let message = self.command_message(command.clone());
                cx.out.push(Output::Send {
                    to: Destination::Peer(to.clone()),
                    message,
                });
                cx.emit(Event::CommandForwarded { to, command });
            }
            _ => cx.out.push(Output::Refused {
                command,
                reason: Refusal::PeerUnreachable(to),
            }),
        }
    }

    fn command_message(&mut self, command: Command) -> Message {
        let id = self.next_command_id;
        self.next_command_id = self.next_command_id.wrapping_add(1);
        Message::Command { id, command }
    }
}
