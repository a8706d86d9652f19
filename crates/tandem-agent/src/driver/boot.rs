//! Firmware under the driver: booting an image slot (re-executing the
//! agent from it, or checking a standby's boot when it next serves),
//! rolling back, and acting on a boot's health verdict.
//!
//! The slots themselves are [`crate::firmware`]'s; what is here needs the
//! loop's state (the role, the service, the version the core reports).

use tandem_core::Input;
use tandem_image::slots::SlotName;
use tokio::time::Instant;

use super::{Agent, EXEC_DELAY};
use crate::Error;
use crate::api;
use crate::firmware::BootVerdict;

impl Agent {
    /// Boots an image slot: journal the switch, then restart the service
    /// from it when this node serves (its health check follows). A standby
    /// has no service to check: its boot stays open until it next serves.
    pub(super) async fn boot(&mut self, slot: Option<SlotName>) -> Result<api::BootAnswer, Error> {
        let slot = self.firmware.begin_boot(slot).await?;
        self.report_version().await;
        let version = self.node.config().version.clone();
        let booted = |health| api::BootAnswer {
            booted: slot,
            health,
            version: version.clone(),
        };
        // An image with its own agent: this process hands over to it (same
        // pid) once the answer is out; the new agent finishes the boot.
        if let Some((_, manifest, root)) = self.firmware.current().await
            && let Some(agent) = manifest.agent
        {
            self.exec_after = Some((Instant::now() + EXEC_DELAY, root.join(agent)));
            return Ok(booted(api::BootHealth::AgentRestarts));
        }
        if self.service_running {
            self.restart_service().await;
            return Ok(booted(api::BootHealth::Checking));
        }
        // A standby: back as a healthy standby on the new slot is its boot
        // check (Standby Ready); the service is checked when it next serves.
        // With no service to restart between tries, spend them all now: a
        // failing slot must end rolled back (marked bad, the previous one
        // current), never left pending, or an upgrade waits on it forever.
        let mut verdict = self.firmware.check_boot(true).await;
        for _ in 0..4 {
            if !matches!(verdict, BootVerdict::Retry { .. }) {
                break;
            }
            verdict = self.firmware.check_boot(true).await;
        }
        match verdict {
            BootVerdict::Good { .. } => {
                self.firmware.mark_unchecked(slot).await;
                Ok(booted(api::BootHealth::StandbyReady))
            }
            verdict => {
                self.report_version().await;
                Err(Error::refused(format!(
                    "the boot of slot {slot} failed: {verdict:?}"
                )))
            }
        }
    }

    /// Leaves the cluster cleanly (goodbye, VIP released, service stopped)
    /// and replaces this process with the slot's agent, keeping the pid.
    pub(super) async fn exec_into(&mut self, agent: &std::path::Path) {
        self.step(Input::Shutdown).await;
        self.supervisor.stop().await;
        if let Err(e) = self.firmware.prepare_agent_exec().await {
            tracing::error!(error = %e, "cannot journal the agent's re-execution; exiting so the supervisor restarts it");
            std::process::exit(1);
        }
        self.replication.checkpoint_standby_log().await;
        let error = crate::firmware::exec_agent(agent);
        // exec only returns on failure: the boot try failed; a restart
        // (systemd) counts it and, after the last try, rolls back.
        tracing::error!(agent = %agent.display(), error = %error, "cannot execute the slot's agent");
        std::process::exit(1);
    }

    /// On-demand rollback to the other slot.
    pub(super) async fn rollback(&mut self) -> Result<api::RollbackAnswer, Error> {
        let slot = self.firmware.rollback().await?;
        self.report_version().await;
        if self.service_running {
            self.restart_service().await;
        }
        Ok(api::RollbackAnswer {
            running: slot,
            version: self.node.config().version.clone(),
        })
    }

    /// Carries the current slot's version into the heartbeats.
    pub(super) async fn report_version(&mut self) {
        if let Some(version) = self.firmware.version().await
            && let Err(e) = self.node.set_version(&version)
        {
            tracing::warn!(error = %e, "cannot report the new version");
        }
    }

    pub(super) async fn boot_verdict(&mut self, verdict: BootVerdict) {
        match verdict {
            BootVerdict::Good { slot, version } if !self.service_running => {
                tracing::info!(%slot, version, "image slot is Standby Ready; its service is checked when this node next serves");
                self.firmware.mark_unchecked(slot).await;
            }
            BootVerdict::Good { slot, version } => {
                tracing::info!(%slot, version, "image slot passed its health check: marked good");
            }
            BootVerdict::Retry { reason } => {
                tracing::warn!(reason, "image slot failed its health check; trying again");
                if self.service_running {
                    self.restart_service().await;
                }
            }
            BootVerdict::RolledBack { from, reason } => {
                tracing::error!(%from, reason, "image slot failed every boot try: rolled back");
                self.report_version().await;
                if self.service_running {
                    self.restart_service().await;
                }
            }
            BootVerdict::Failed(reason) => tracing::error!(reason, "image slot check failed"),
        }
    }
}
