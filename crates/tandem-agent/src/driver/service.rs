//! The service under the driver: starting it on the VIP's sockets,
//! restarting and signalling it, what its exits mean, and the listener
//! suspend/resume and drain that let a handover lose no session.
//!
//! These are the driver's effects on the service; the decisions (when to
//! start, stop or hand over) stay in the loop and the core.

use std::os::fd::AsRawFd;
use std::time::Duration;

use tandem_core::{Command, Event, GroupId, HandoverCause, Input, Output};
use tokio::time::Instant;

use super::{Agent, DRAIN_MARGIN, DRAINED_MARKER, HANDOVER_DRAIN, HeldCommand, RECOVERY_QUIET};
use crate::api::{CommandOutcome, CommandReply, ListenerAction};
use crate::config::{ConfigChangeAction, SuspendMethod};
use crate::supervisor::{ServiceEvent, ServiceSpec};

impl Agent {
    /// Starts the service (from the current image slot, if one is booted)
    /// and, when that slot's boot awaits its health check, runs the check.
    pub(super) async fn start_service(&mut self) {
        self.replication.checkpoint_standby_log().await;
        let spec = self.service_spec().await;
        self.supervisor.start(spec, self.vip_sockets()).await;
        let firmware = self.firmware.clone();
        let verdicts = self.boot_verdicts.clone();
        if firmware.boot_in_progress().await.is_some() {
            tokio::spawn(async move {
                let _ = verdicts.send(firmware.check_boot(false).await).await;
            });
        } else if firmware.take_unchecked().await {
            tokio::spawn(async move {
                let _ = verdicts.send(firmware.check_first_serve().await).await;
            });
        }
    }

    /// A cluster config file changed on this node: tell the running
    /// service as `[sync] on_config_change` says. One not running reads
    /// the new file when it starts.
    pub(super) async fn on_config_change(&mut self, action: ConfigChangeAction) {
        if !self.service_running {
            return;
        }
        match action {
            ConfigChangeAction::None => {}
            ConfigChangeAction::Signal(signal) => {
                if self.signal_service(signal) {
                    tracing::info!(signal, "config changed: signalled the service to reload");
                }
            }
            ConfigChangeAction::Restart => {
                tracing::info!("config changed: restarting the service");
                self.restart_service().await;
            }
        }
    }

    /// Sends `signal` to the service's main process; false when it has
    /// none running.
    pub(super) fn signal_service(&self, signal: libc::c_int) -> bool {
        let Some(pid) = self.service_pid.and_then(|p| libc::pid_t::try_from(p).ok()) else {
            return false;
        };
        // SAFETY: kill(2) with a pid the supervisor reported as running.
        unsafe { libc::kill(pid, signal) == 0 }
    }

    pub(super) async fn restart_service(&mut self) {
        self.supervisor.request_stop().await;
        self.start_service().await;
    }

    /// The service command: the current slot's entrypoint (resolved in the
    /// slot) followed by `[service] args`, or `[service] command` when no
    /// image has been booted.
    pub(super) async fn service_spec(&self) -> ServiceSpec {
        let mut env = vec![
            ("TANDEM_NODE".into(), self.config.node.name.clone()),
            (
                "TANDEM_CONTROL_DIR".into(),
                self.control_dir().display().to_string(),
            ),
        ];
        let argv = match self.firmware.current().await {
            Some((_, manifest, root)) => {
                env.push(("TANDEM_IMAGE_ROOT".into(), root.display().to_string()));
                env.push(("TANDEM_IMAGE_VERSION".into(), manifest.version.to_string()));
                let mut argv: Vec<String> = manifest.entrypoint.clone();
                if let Some(program) = argv.first_mut() {
                    *program = root.join(&*program).display().to_string();
                }
                argv.extend(self.config.service.args.iter().cloned());
                argv
            }
            None => self.config.service.command.clone(),
        };
        env.extend(self.replication.service_env(&self.config));
        ServiceSpec {
            argv,
            cwd: self.config.service.cwd.clone(),
            env,
            grace: self.config.service.grace,
        }
    }

    pub(super) async fn service_event(&mut self, event: ServiceEvent) {
        match event {
            ServiceEvent::Started { pid } => {
                self.counters.service_starts += 1;
                self.service_pid = Some(pid);
                self.replication.service_alive(true);
                tracing::info!(pid, "service running");
            }
            ServiceEvent::Crashed { status, restart_in } => {
                self.counters.service_crashes += 1;
                self.service_pid = None;
                self.replication.service_alive(false);
                tracing::warn!(%status, restart_in_ms = restart_in.as_millis() as u64, "service crashed");
            }
            ServiceEvent::CrashLoop | ServiceEvent::SpawnFailed { .. } => {
                let detail = match event {
                    ServiceEvent::SpawnFailed { error } => error,
                    _ => "the service is crash-looping".to_string(),
                };
                self.recover_at = Some(Instant::now() + RECOVERY_QUIET);
                self.step(Input::LocalMonitor {
                    healthy: false,
                    detail,
                })
                .await;
            }
            ServiceEvent::Stopped => {
                self.service_pid = None;
                self.replication.service_alive(false);
                tracing::info!("service stopped");
            }
        }
    }

    /// Whether `handover` is a planned handover of this active node that
    /// must drain first (module doc): data sync on, the service running
    /// and draining itself, its listener not already suspended.
    pub(super) fn drains_before(&self, handover: &HeldCommand) -> bool {
        let here = handover
            .node
            .as_ref()
            .is_none_or(|n| *n == self.config.node.name);
        here && handover.command == Command::FailoverStandby && self.service_drains()
    }

    /// Whether the running service can drain its sessions before a planned
    /// handover: data sync on, the service running and draining itself,
    /// its listener not already suspended.
    pub(super) fn service_drains(&self) -> bool {
        self.replication.enabled()
            && self.service_running
            && self.service_pid.is_some()
            && self.config.service.suspend == SuspendMethod::Signal
            && !self.listener_suspended
    }

    /// Suspends the listener and clears the drained marker; `None` when the
    /// service cannot drain now (the handover goes on without).
    pub(super) async fn start_drain(&mut self) -> Option<std::path::PathBuf> {
        if !self.service_drains() {
            return None;
        }
        let marker = self.control_dir().join(DRAINED_MARKER);
        if let Err(e) = std::fs::remove_file(&marker)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, "cannot clear the drained marker; handing over without a drain");
            return None;
        }
        let suspended = self.listener(ListenerAction::Suspend, HANDOVER_DRAIN).await;
        (suspended.outcome == CommandOutcome::Done).then_some(marker)
    }

    /// A preemption is due (the core asks, issue 14): drain the service's
    /// sessions as a planned handover does, then give the core
    /// [`Input::Drained`] from the loop.
    pub(super) async fn drain_for_preemption(
        &mut self,
        group: GroupId,
        to: String,
        cause: HandoverCause,
    ) {
        let back = self.preemption_drained_tx.clone();
        let Some(marker) = self.start_drain().await else {
            let _ = back.try_send((group, to, cause));
            return;
        };
        self.suspended_for_preemption = true;
        tracing::info!(%to, "preemption: draining the service's sessions before handing over");
        tokio::spawn(async move {
            wait_for_drain(&marker).await;
            let _ = back.send((group, to, cause)).await;
        });
    }

    /// The drain for a preemption is over: the core hands over if that is
    /// still right; if it did not, this node still serves and its listener
    /// is resumed.
    pub(super) async fn hand_over_drained(
        &mut self,
        group: GroupId,
        to: String,
        cause: HandoverCause,
    ) {
        let outputs = self.step(Input::Drained { group, to, cause }).await;
        let handing_over = outputs
            .iter()
            .any(|o| matches!(o, Output::Event(Event::HandoverStarted { .. })));
        let suspended_here = std::mem::take(&mut self.suspended_for_preemption);
        if suspended_here && !handing_over && self.listener_suspended && self.service_running {
            self.listener(ListenerAction::Resume, HANDOVER_DRAIN).await;
        }
    }

    /// Suspends the listener and hands `handover` to a task that waits
    /// (bounded) for the service's drained marker, then gives it back to
    /// the loop ([`Agent::answer_command`]).
    pub(super) async fn drain_then_hand_over(&mut self, mut handover: HeldCommand) {
        let Some(marker) = self.start_drain().await else {
            return self.answer_command(handover).await;
        };
        tracing::info!("planned handover: draining the service's sessions first");
        handover.drained = true;
        let back = self.drained_tx.clone();
        tokio::spawn(async move {
            wait_for_drain(&marker).await;
            let _ = back.send(handover).await;
        });
    }

    /// `tandem listener suspend|resume` on this node.
    pub(super) async fn listener(
        &mut self,
        action: ListenerAction,
        drain_timeout: Duration,
    ) -> CommandReply {
        let mut reply = CommandReply {
            node: self.config.node.name.clone(),
            outcome: CommandOutcome::Done,
            reason: None,
            events: vec![],
            warning: None,
        };
        if !self.service_running {
            reply.outcome = CommandOutcome::Refused;
            reply.reason = Some("this node does not run the service now (not active)".into());
            return reply;
        }
        let suspend = action == ListenerAction::Suspend;
        match self.config.service.suspend {
            SuspendMethod::Signal => {
                if self.service_pid.is_none() {
                    reply.outcome = CommandOutcome::Refused;
                    reply.reason = Some("the service is not running".into());
                    return reply;
                }
                if suspend {
                    let control = self.control_dir();
                    let written = std::fs::create_dir_all(&control).and_then(|()| {
                        std::fs::write(
                            control.join("drain-timeout-ms"),
                            drain_timeout.as_millis().to_string(),
                        )
                    });
                    if let Err(e) = written {
                        tracing::warn!(error = %e, "cannot pass the drain timeout; the service uses its own");
                    }
                }
                self.signal_service(if suspend {
                    libc::SIGUSR1
                } else {
                    libc::SIGUSR2
                });
            }
            SuspendMethod::Socket if suspend => {
                for (_, fd) in self.vip.values().flatten() {
                    // SAFETY: shutdown(2) on a socket this agent owns. On a
                    // listening socket it stops accepting for every process
                    // sharing it; established sessions are separate sockets.
                    unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RD) };
                }
            }
            SuspendMethod::Socket => {
                // A shut-down listener cannot listen again: bind fresh
                // sockets and restart the service on them.
                let groups: Vec<GroupId> = self.vip.keys().copied().collect();
                for group in groups {
                    self.vip.remove(&group);
                    self.bind_vip(group);
                }
                self.restart_service().await;
            }
        }
        self.listener_suspended = suspend;
        let change = ListenerChange {
            listener: if suspend { "suspended" } else { "resumed" },
            method: format!("{:?}", self.config.service.suspend).to_lowercase(),
            drain_timeout_ms: drain_timeout.as_millis() as u64,
        };
        if let Ok(event) = serde_json::to_value(change) {
            reply.events.push(event);
        }
        reply
    }

    /// Where the agent leaves instructions for the service.
    pub(super) fn control_dir(&self) -> std::path::PathBuf {
        self.config.node.state_dir.join("control")
    }
}

/// Waits (bounded) for the service's drained marker.
async fn wait_for_drain(marker: &std::path::Path) {
    let started = Instant::now();
    let deadline = started + HANDOVER_DRAIN + DRAIN_MARGIN;
    while !marker.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if marker.exists() {
        tracing::info!(
            drain_ms = started.elapsed().as_millis() as u64,
            "service drained; handing over"
        );
    } else {
        tracing::warn!("the service did not report its drain in time; handing over anyway");
    }
}

/// A listener suspended or resumed, as the event a command reply lists.
#[derive(serde::Serialize)]
struct ListenerChange {
    /// `suspended` or `resumed`.
    listener: &'static str,
    /// How: `signal` or `socket`.
    method: String,
    /// How long sessions in progress were given.
    drain_timeout_ms: u64,
}
