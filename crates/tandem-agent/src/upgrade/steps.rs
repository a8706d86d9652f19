//! The coordinator: the loop that feeds the cluster to the step machine,
//! and the actions it carries out on the nodes' APIs (HA commands, image
//! install and boot, listener, config link, backups).
//!
//! Apart from the journal and the observation because this is the only
//! part that changes the cluster: how an action's failure is read (never
//! delivered, so ask again; or refused, so stop safely) is decided here.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tandem_upgrade::{Action, Observation, UpgradeRun};

use super::{Upgrades, now_ms};
use crate::Error;
use crate::api::{
    ApiClient, BackupAnswer, BootAnswer, BootRequest, CommandOutcome, CommandRequest,
    ConfigLinkAnswer, ConfigLinkRequest, InstallAnswer, InstallRequest, ListenerAction,
    ListenerRequest, RollbackAnswer,
};

/// How often the coordinator observes the cluster.
const POLL: Duration = Duration::from_millis(200);

/// How long a suspended listener lets sessions in progress finish.
const LISTENER_DRAIN_MS: u64 = 10_000;

/// Why an action did not happen on its node.
#[derive(Debug)]
enum ActionFailure {
    /// It never reached the node (its agent killed and restarting): the
    /// node refused nothing, so the step asks again once it is back.
    Undelivered {
        /// The node.
        node: String,
        /// What the call saw.
        reason: String,
    },
    /// The node answered no: the run stops at a safe point, saying why.
    Refused {
        /// The node.
        node: String,
        /// Its reason.
        reason: String,
    },
}

impl ActionFailure {
    /// A failed call to `node`'s API, by what the client saw.
    fn of_call(node: &str, error: Error) -> ActionFailure {
        let node = node.to_string();
        match error {
            Error::ApiUnreachable { source, .. } => ActionFailure::Undelivered {
                reason: format!("no answer from {node}: {source}"),
                node,
            },
            Error::ApiRefused { status, body, .. } => ActionFailure::Refused {
                reason: if body.error.is_empty() {
                    format!("{node} answered {status}")
                } else {
                    body.error
                },
                node,
            },
            other => ActionFailure::Refused {
                reason: format!("{node}: {other}"),
                node,
            },
        }
    }
}

impl Upgrades {
    /// Runs the upgrade in the journal to its end, or until another node
    /// carries it on.
    pub(super) async fn coordinate(&self) -> Result<(), Error> {
        let Some(journal) = self.journal().await else {
            return Ok(());
        };
        let state = self.observe_since(&journal.view).await?;
        let mut run = UpgradeRun::resume(journal, state, now_ms())?;
        loop {
            if !self.only_active().await {
                // No last push: the node that coordinates now may already
                // be further on, and the journal is recorded before every
                // batch of actions anyway.
                tracing::warn!("no longer the coordinator: handing the upgrade coordination over");
                return Ok(());
            }
            if self.abort.swap(false, Ordering::Relaxed) {
                run.observe(now_ms(), Observation::Abort);
            }
            if self.resume.swap(false, Ordering::Relaxed) {
                run.observe(now_ms(), Observation::Resume);
            }
            let actions = run.next(now_ms());
            if !self.record(&run).await {
                tracing::warn!(
                    "another node carried the upgrade further: handing the coordination over"
                );
                return Ok(());
            }
            for action in actions {
                if let Some(step) = run.running_step().or_else(|| last_step(&run)) {
                    tracing::info!(step = step.0, action = ?action, "upgrade action");
                }
                match self.act(&action).await {
                    Ok(Some(observation)) => run.observe(now_ms(), observation),
                    Ok(None) => {}
                    Err(failure) => {
                        if let Some(step) = run.running_step() {
                            let observation = match failure {
                                ActionFailure::Undelivered { node, reason } => {
                                    Observation::ActionUndelivered { step, node, reason }
                                }
                                ActionFailure::Refused { node, reason } => {
                                    Observation::ActionFailed { step, node, reason }
                                }
                            };
                            run.observe(now_ms(), observation);
                        }
                    }
                }
            }
            if run.status.is_finished() {
                let _ = self.record(&run).await;
                tracing::info!(status = ?run.status, "upgrade finished");
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
            match self.observe_since(&run.view).await {
                Ok(mut state) => {
                    // The sync report is not part of a node's status: carry
                    // the last one forward.
                    state.sync_clean = run.view.sync_clean;
                    run.observe(now_ms(), Observation::Cluster(state))
                }
                Err(e) => tracing::warn!(error = %e, "cannot observe the cluster"),
            }
        }
    }

    /// Carries out one action on its node; what it observed, if the step
    /// machine needs to know.
    async fn act(&self, action: &Action) -> Result<Option<Observation>, ActionFailure> {
        match action {
            Action::Command { node, command } => {
                let request = CommandRequest {
                    command: command.clone(),
                    node: None,
                    force: false,
                };
                let reply = self
                    .api_of(node)?
                    .command(&request)
                    .await
                    .map_err(failed(node))?;
                if reply.outcome == CommandOutcome::Refused {
                    // Already so (a resumed step asking again) is not a failure.
                    let reason = reply.reason.unwrap_or_default();
                    if !reason.contains("already") {
                        return Err(ActionFailure::Refused {
                            node: node.clone(),
                            reason,
                        });
                    }
                }
                Ok(None)
            }
            Action::InstallImage { node, version } => {
                let request = InstallRequest {
                    image: None,
                    version: Some(version.to_string()),
                };
                let _: InstallAnswer = self
                    .api_of(node)?
                    .post("/v1/images/install", &request)
                    .await
                    .map_err(failed(node))?;
                Ok(None)
            }
            Action::BootPending { node, version } => {
                let booted: Result<BootAnswer, _> = self
                    .api_of(node)?
                    .post("/v1/images/boot", &BootRequest::default())
                    .await;
                match booted {
                    Ok(_) => Ok(None),
                    // A boot whose health check failed has fallen back to
                    // the previous slot and marked the new one bad: the
                    // next observation shows it and the step machine rolls
                    // the upgrade back. It is not a refusal to stop on.
                    Err(error) if self.fell_back(node, version).await => {
                        tracing::warn!(node = %node, error = %error, "the boot failed its health check and fell back");
                        Ok(None)
                    }
                    Err(error) => Err(failed(node)(error)),
                }
            }
            Action::BootPrevious { node, .. } => {
                // The rollback takes no body.
                let _: RollbackAnswer = self
                    .api_of(node)?
                    .post("/v1/images/rollback", &())
                    .await
                    .map_err(failed(node))?;
                Ok(None)
            }
            Action::SuspendListener { node } => {
                let request = ListenerRequest {
                    action: ListenerAction::Suspend,
                    drain_timeout_ms: Some(LISTENER_DRAIN_MS),
                    node: None,
                };
                self.listener(node, &request).await?;
                Ok(None)
            }
            Action::ResumeListener { node } => {
                let request = ListenerRequest {
                    action: ListenerAction::Resume,
                    drain_timeout_ms: None,
                    node: None,
                };
                self.listener(node, &request).await?;
                Ok(None)
            }
            Action::DisconnectConfig { node } => {
                self.config_link(node, false).await?;
                Ok(None)
            }
            Action::ReconnectConfig { node } => {
                self.config_link(node, true).await?;
                Ok(None)
            }
            Action::TakeBackup { node } => {
                // A backup takes no body.
                let _: BackupAnswer = self
                    .api_of(node)?
                    .post("/v1/backup", &())
                    .await
                    .map_err(failed(node))?;
                Ok(Some(Observation::BackupTaken { node: node.clone() }))
            }
            Action::RunSyncReport => {
                // Without data sync configured there is nothing to compare:
                // the report is clean by definition. (The sync engine's own
                // report takes over when data sync is wired in.)
                Ok(Some(Observation::SyncReport { clean: true }))
            }
            Action::Wait { .. }
            | Action::Done { .. }
            | Action::RolledBack { .. }
            | Action::Stopped { .. } => Ok(None),
        }
    }

    /// Suspends or resumes `node`'s listener. Its refusal (the node does
    /// not serve now) leaves nothing to suspend or resume, so only a call
    /// that failed is a failure.
    async fn listener(&self, node: &str, request: &ListenerRequest) -> Result<(), ActionFailure> {
        self.api_of(node)?
            .listener(request)
            .await
            .map_err(failed(node))?;
        Ok(())
    }

    /// Connects `node` to the cluster's config, or disconnects it.
    async fn config_link(&self, node: &str, connected: bool) -> Result<(), ActionFailure> {
        let _: ConfigLinkAnswer = self
            .api_of(node)?
            .post("/v1/config-link", &ConfigLinkRequest { connected })
            .await
            .map_err(failed(node))?;
        Ok(())
    }

    /// The API of `node`; a node the plan names but this cluster does not
    /// have is a refusal, not something to ask again.
    fn api_of(&self, node: &str) -> Result<ApiClient, ActionFailure> {
        self.node_api(node).ok_or_else(|| ActionFailure::Refused {
            node: node.to_string(),
            reason: format!("{node:?} is not a node of this cluster"),
        })
    }
}

/// Reads a failed call to `node`'s API as an [`ActionFailure`].
fn failed(node: &str) -> impl FnOnce(Error) -> ActionFailure + '_ {
    move |error| ActionFailure::of_call(node, error)
}

fn last_step(run: &UpgradeRun) -> Option<tandem_upgrade::StepId> {
    run.current().plan.steps.last().map(|s| s.id)
}
