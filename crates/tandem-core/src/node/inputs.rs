//! How each input other than an operator command changes the node:
//! received messages, peer departures, monitor verdicts, a finished drain,
//! shutdown.
//!
//! The handlers record what happened. They claim or release a group
//! themselves only where a peer is waiting on this node's answer (a
//! handover asked of it, a takeover by a peer); timeouts, elections, split
//! brain and preemption are left to `reconcile`, which runs after every
//! input, so that those rules hold whatever woke the node.

use crate::config::{GroupId, LinkId, OnFailure};
use crate::role::HandoverCause;
use crate::wire::{Envelope, Message, RejectReason};
use std::time::Duration;

use super::commands::Origin;
use super::peer::{Departure, ReceivedHoldoff};
use super::{Ctx, DataState, Destination, Event, LossCause, Node, Output, Reason};

impl Node {
    pub(super) fn on_received(&mut self, cx: &mut Ctx, link: LinkId, env: Envelope) {
        let now = cx.now;
        let interval = self.config.interval;
        if !self.peers.contains_key(&env.sender) {
            self.counters.reject(RejectReason::UnknownPeer);
            return;
        }
        if env.message == Message::Goodbye {
            return self.depart(cx, &env.sender, LossCause::Goodbye, Some(env.epoch));
        }
        let Some(peer) = self.peers.get_mut(&env.sender) else {
            return;
        };
        if let Some(d) = &peer.departed
            && d.epoch == Some(env.epoch)
            && (d.cause == LossCause::Goodbye || now.since(d.at) < interval)
        {
            // A datagram of the run that said goodbye, or one in flight when
            // its connection closed: the peer is not back.
            return;
        }
        if let Some(slot) = peer.links.get_mut(usize::from(link.0)) {
            *slot = Some(now);
        }
        peer.protocol = Some(env.version);
        let new_epoch = peer.epoch != Some(env.epoch);
        peer.epoch = Some(env.epoch);
        if !peer.alive {
            peer.alive = true;
            peer.departed = None;
            cx.emit(Event::PeerFound {
                peer: env.sender.clone(),
            });
        }
        if new_epoch
            && let Some(h) = &self.holdoff
            && h.from == env.sender
            && h.epoch.is_some_and(|e| e != env.epoch)
        {
            cx.emit(Event::HoldoffCleared {
                from: h.from.clone(),
            });
            cx.cause = Some(Reason::HoldoffEnded {
                from: h.from.clone(),
            });
            self.holdoff = None;
        }
        let from = env.sender;
        match env.message {
            Message::Heartbeat(h) => {
                self.counters.heartbeats_received += 1;
                self.on_peer_fencing(&from, &h.fencing);
                if let Some(p) = self.peers.get_mut(&from) {
                    p.info = Some(h);
                }
            }
            Message::Holdoff { duration } => self.on_holdoff(cx, from, env.epoch, duration),
            Message::Goodbye => {}
            Message::Takeover { group } => self.on_takeover(cx, &from, group),
            Message::Handover { group, to, cause } => {
                if to == self.config.name {
                    self.on_handover(cx, &from, group, cause);
                }
            }
            Message::Command { id, command } => {
                // Sent once per link: run each command once.
                let key = (env.epoch, id);
                let Some(p) = self.peers.get_mut(&from) else {
                    return;
                };
                if p.commands_seen.contains(&key) {
                    return;
                }
                if p.commands_seen.len() >= 32 {
                    p.commands_seen.pop_front();
                }
                p.commands_seen.push_back(key);
                self.execute(cx, command, Origin::Forwarded(from));
            }
        }
    }

    pub(super) fn depart(
        &mut self,
        cx: &mut Ctx,
        name: &str,
        cause: LossCause,
        epoch: Option<u64>,
    ) {
        let Some(p) = self.peers.get_mut(name) else {
            return;
        };
        p.departed = Some(Departure {
            at: cx.now,
            epoch,
            cause,
        });
        if p.alive {
            p.alive = false;
            cx.emit(Event::PeerLost {
                peer: name.to_owned(),
                cause,
            });
        }
    }

    fn on_holdoff(&mut self, cx: &mut Ctx, from: String, epoch: u64, asked: Duration) {
        let duration = asked.min(self.config.holdoff_max);
        let until = cx.now.plus(duration);
        match &mut self.holdoff {
            // A repeat of the holdoff already running: keep the later end.
            Some(h) if h.from == from && h.epoch == Some(epoch) && h.until > cx.now => {
                h.until = h.until.max(until);
            }
            _ => {
                cx.emit(Event::HoldoffReceived {
                    from: from.clone(),
                    duration,
                });
                cx.cause = Some(Reason::HoldoffReceived { from: from.clone() });
                self.holdoff = Some(ReceivedHoldoff {
                    from,
                    epoch: Some(epoch),
                    until,
                });
            }
        }
    }

    fn on_takeover(&mut self, cx: &mut Ctx, from: &str, group: GroupId) {
        let Some(gi) = self.group_index(group) else {
            return;
        };
        let g = &mut self.groups[gi];
        g.last_active = Some(from.to_owned());
        g.grace_until = None;
        if g.active {
            // Only the node that gives the group up yields it; a standby
            // that merely hears of the takeover keeps its preemption.
            g.yielded_to = Some(from.to_owned());
            g.yield_guard_until = Some(cx.now.plus(self.hold));
            let reason = match g.handover.take() {
                Some(h) if h.to == from => Reason::HandedOver {
                    to: from.to_owned(),
                    cause: h.cause,
                },
                _ => Reason::TakenOver {
                    by: from.to_owned(),
                },
            };
            self.set_active(cx, gi, false, reason);
        }
    }

    fn on_handover(&mut self, cx: &mut Ctx, from: &str, group: GroupId, cause: HandoverCause) {
        let Some(gi) = self.group_index(group) else {
            return;
        };
        if !self.self_eligible() || self.data == DataState::Unverified {
            // The sender's handover times out and it keeps the group. Data
            // not yet compared with the sender's (the sender is active)
            // must be caught up first (issue 14).
            return;
        }
        if !self.groups[gi].active {
            let reason = Reason::HandoverAccepted {
                from: from.to_owned(),
                cause,
            };
            self.claim_on_request(cx, gi, reason, Some(from));
        } else {
            cx.out.push(Output::Send {
                to: Destination::All,
                message: Message::Takeover { group },
            });
        }
    }

    pub(super) fn on_local_monitor(&mut self, cx: &mut Ctx, healthy: bool, detail: String) {
        if healthy == self.local_healthy {
            return;
        }
        self.local_healthy = healthy;
        if healthy {
            self.local_detail.clear();
            cx.cause = Some(Reason::LocalMonitorRecovered);
            match self.config.on_failure {
                OnFailure::Restore => self.reclaim_until = Some(cx.now.plus(self.hold * 3)),
                OnFailure::BecomeSecondary => self.demoted = true,
                OnFailure::Off => {}
            }
        } else {
            self.local_detail = detail.clone();
            cx.cause = Some(Reason::LocalMonitorFailed { detail });
            if self.config.on_failure == OnFailure::Off && !self.ha_stopped {
                self.ha_stopped = true;
                cx.out.push(Output::Persist(self.persistent_state()));
            }
        }
    }

    pub(super) fn on_remote_monitor(
        &mut self,
        cx: &mut Ctx,
        peer: String,
        healthy: bool,
        detail: String,
    ) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.remote_ok == healthy {
            return;
        }
        p.remote_ok = healthy;
        cx.emit(if healthy {
            Event::RemoteMonitorRecovered { peer }
        } else {
            Event::RemoteMonitorFailed { peer, detail }
        });
    }

    /// The service drained for a preemption: hand over if the same peer
    /// is still the one to preempt (else the agent resumes the listener).
    pub(super) fn on_drained(
        &mut self,
        cx: &mut Ctx,
        group: GroupId,
        to: &str,
        cause: HandoverCause,
    ) {
        let Some(gi) = self.group_index(group) else {
            return;
        };
        let g = &mut self.groups[gi];
        g.drain_asked_until = None;
        if !g.active || g.handover.is_some() {
            return;
        }
        if self.preemption_target(gi).as_deref() == Some(to) {
            self.start_handover(cx, gi, to.to_owned(), cause);
        }
    }

    pub(super) fn shutdown(&mut self, cx: &mut Ctx) {
        for gi in 0..self.groups.len() {
            if self.groups[gi].active {
                self.set_active(cx, gi, false, Reason::ShuttingDown);
            }
        }
        self.shut_down = true;
        cx.cause = Some(Reason::ShuttingDown);
    }
}
