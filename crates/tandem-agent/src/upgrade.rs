//! Cluster upgrades, coordinated inside the cluster.
//!
//! The plan and the step machine are `tandem-upgrade`'s (pure); this module
//! observes the cluster, carries out the actions and keeps the journal:
//!
//! - The **active node coordinates** (in config-only and active-active
//!   mode, where several nodes are active by design, the active one of
//!   highest priority). It polls every node's API (its own
//!   too) into a `ClusterState`, feeds it to the `UpgradeRun`, and carries
//!   out the actions by calling the nodes' APIs: HA commands, image
//!   install and boot, listener suspend/resume, backups.
//! - The **journal** (the whole `UpgradeRun`, JSON, `state_dir/upgrade.json`,
//!   replaced atomically) is written before each batch of actions and pushed
//!   to every peer (`PUT /v1/upgrade/journal`), so the switchover the plan
//!   itself causes does not lose it: the old active stops coordinating the
//!   moment it is no longer the only active node, and the new active finds
//!   the journal and resumes (`UpgradeRun::resume` re-derives each step from
//!   the fresh cluster state, so nothing is done twice).
//! - A kill -9 of the coordinator is the same case: the peer that takes over
//!   resumes from its copy of the journal.
//! - A push is best effort, once: a node that was down when it came (the
//!   killed coordinator, restarting) would keep an unfinished copy for
//!   ever. So a node holding an unfinished copy, and not coordinating,
//!   pulls its peers' copies every watch turn and keeps one further on.
//! - Around a failover two nodes may coordinate for a moment. Each copy of
//!   the journal carries the run's id and its progress; the copy further
//!   on wins wherever it lands, and a coordinator that finds a copy ahead
//!   of its own stops, so a stale push never rewinds the run.
//! - An action that never reached its node (its agent restarting) is asked
//!   again within the step's timeout; a refusal stops the run at a safe
//!   point with what to do; a boot that failed its health check (the node
//!   fell back, the slot marked bad) makes the step machine roll back.
//!
//! - A run in waves (`tandem upgrade run --canary 1 --batch 10% …`, the
//!   rolling strategy): the journal carries the fleet rollout with the
//!   run, so a pause after the canaries outlives a coordinator restart;
//!   `POST /v1/upgrade/resume` sets a flag the coordinator's loop turns
//!   into `Observation::Resume`, as it does for an abort. The loop polls
//!   the cluster every turn and passes its clock to the run, which is how
//!   a rollout's `Wait { until_ms }` (auto-promotion) comes due.
//!
//! Progress and the outcome are read with `GET /v1/upgrade`.
//!
//! # Layout
//! - this file: the node's side of upgrades (submit, plan, abort) and the
//!   watch that decides when this node takes over coordination;
//! - [`steps`]: the coordinator's loop and the actions it carries out on
//!   the nodes' APIs;
//! - [`observe`]: the cluster as the step machine sees it, read from every
//!   node's API, and who coordinates;
//! - [`journal`]: the journal on disk and its copies on the peers;
//! - [`config_link`]: ESA's cluster config disconnect/reconnect flag.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tandem_upgrade::{PlanOptions, Strategy, UpgradePlan, UpgradeRun};
use tandem_version::{Catalog, Version};
use tokio::sync::Mutex;

use crate::Error;
use crate::api::{ApiClient, ResumeAnswer, RolloutUpgradeRequest, UpgradeStatus};

mod config_link;
mod journal;
mod observe;
mod steps;

pub use crate::api::UpgradeRequest;
pub use config_link::{config_disconnected_flag, config_link, set_config_link};

/// How often every node checks whether it should take over coordination.
const WATCH: Duration = Duration::from_millis(500);
/// How long an action on a node may take: an install unpacks an image, a
/// boot may wait for a health check.
const ACTION_TIMEOUT: Duration = Duration::from_secs(120);

/// This node's side of upgrades.
#[derive(Clone)]
pub struct Upgrades {
    state_dir: PathBuf,
    /// `(name, API address)` of every node, this one first.
    nodes: Vec<(String, SocketAddr)>,
    /// Every call to a node (this one too) goes through it, naming the
    /// coordinator as the caller in the nodes' logs.
    client: ApiClient,
    journal: Arc<Mutex<Option<UpgradeRun>>>,
    coordinating: Arc<AtomicBool>,
    abort: Arc<AtomicBool>,
    /// `upgrade resume` was asked for; the coordinator's loop takes it.
    resume: Arc<AtomicBool>,
}

/// The timeouts of the plans this agent makes: short, because the steps
/// of a local service restart in seconds. A rollout in waves takes its
/// `--health-deadline` for boots and readiness instead.
const PLAN_OPTIONS: PlanOptions = PlanOptions {
    restart_estimate_ms: 5_000,
    holdoff_secs: 60,
    boot_timeout_ms: 60_000,
    ready_timeout_ms: 120_000,
    step_timeout_ms: 60_000,
};

/// Milliseconds since the Unix epoch: journal and status timestamps.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Upgrades {
    /// Loads the journal, if any, and starts the watch that resumes an
    /// unfinished upgrade when this node is the only active one.
    pub fn start(
        state_dir: &Path,
        nodes: Vec<(String, SocketAddr)>,
        token: String,
        fencing: Arc<tandem_sync::fencing::Fencing>,
    ) -> Result<Upgrades, Error> {
        let (_, me) = nodes.first().ok_or_else(|| {
            Error::State("an upgrade needs this node's API address (a bug: report it)".into())
        })?;
        let client = ApiClient::new(*me, token)?
            .with_timeout(ACTION_TIMEOUT)
            .on_behalf_of("upgrade-coordinator")
            .with_fencing(fencing);
        let path = state_dir.join("upgrade.json");
        let journal = match std::fs::read(&path) {
            Ok(bytes) => Some(
                serde_json::from_slice::<UpgradeRun>(&bytes)
                    .map_err(|source| Error::CorruptJournal { path, source })?,
            ),
            Err(_) => None,
        };
        let upgrades = Upgrades {
            state_dir: state_dir.to_path_buf(),
            nodes,
            client,
            journal: Arc::new(Mutex::new(journal)),
            coordinating: Arc::new(AtomicBool::new(false)),
            abort: Arc::new(AtomicBool::new(false)),
            resume: Arc::new(AtomicBool::new(false)),
        };
        let watcher = upgrades.clone();
        tokio::spawn(async move { watcher.watch().await });
        Ok(upgrades)
    }

    /// The journal as this node has it.
    pub async fn journal(&self) -> Option<UpgradeRun> {
        self.journal.lock().await.clone()
    }

    /// Whether this node coordinates now.
    pub fn coordinating(&self) -> bool {
        self.coordinating.load(Ordering::Relaxed)
    }

    /// Asks the coordinator to stop at the next safe point.
    pub async fn abort(&self) -> Result<(), Error> {
        match self.journal().await {
            Some(run) if !run.status.is_finished() => {
                self.abort.store(true, Ordering::Relaxed);
                Ok(())
            }
            _ => Err(Error::refused("no upgrade is running")),
        }
    }

    /// `upgrade resume`: a rollout paused after its canaries goes on. The
    /// coordinator takes it; a node that does not coordinate hands it to
    /// the one that does.
    pub async fn resume(&self) -> Result<(), Error> {
        let run = self.journal().await;
        let resumable = run.as_ref().is_some_and(UpgradeRun::resumable);
        if !resumable {
            return Err(Error::refused(match run.as_ref().and_then(|r| {
                r.rollout()
                    .filter(|_| !r.status.is_finished())
                    .map(|o| o.status())
            }) {
                Some(status) => format!(
                    "the rollout is not paused (it is {status:?}): `tandem upgrade resume` goes on after the canaries; see `tandem upgrade status`"
                ),
                None => "no rollout is paused: `tandem upgrade resume` goes on after the canaries of `tandem upgrade run --canary K`; see `tandem upgrade status`".to_string(),
            }));
        }
        if !self.coordinating() {
            for (name, addr) in self.nodes.iter().skip(1) {
                let peer = self.client.at(*addr);
                if let Ok(UpgradeStatus {
                    coordinating: true, ..
                }) = peer.get::<UpgradeStatus>("/v1/upgrade").await
                {
                    tracing::info!(coordinator = %name, "handing the resume to the coordinator");
                    let _: ResumeAnswer = peer.post("/v1/upgrade/resume", &()).await?;
                    return Ok(());
                }
            }
            // Nobody coordinates this moment (a coordinator restarting):
            // the flag waits here for whichever turn this node takes.
        }
        self.resume.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// The plan for a request, against the cluster as it is now.
    pub async fn plan(&self, request: &RolloutUpgradeRequest) -> Result<UpgradePlan, Error> {
        let rollout = request.rollout;
        let request = &request.upgrade;
        let state = self.observe().await?;
        let target: Version = request.to.parse()?;
        let strategy = match &request.strategy {
            Some(name) => {
                let strategy: Strategy = name.parse().map_err(Error::refused)?;
                match (strategy, request.batch) {
                    (Strategy::Rolling { .. }, Some(batch)) => Strategy::Rolling { batch },
                    (s, _) => s,
                }
            }
            None => Strategy::default_for(state.mode),
        };
        if rollout.is_some() && (request.rollback || !matches!(strategy, Strategy::Rolling { .. }))
        {
            return Err(tandem_upgrade::PlanError::RolloutNeedsRolling { strategy }.into());
        }
        if let Some(policy) = &rollout {
            policy.check()?;
        }
        let options = PLAN_OPTIONS;
        if request.rollback {
            return Ok(tandem_upgrade::plan_rollback(
                &state, &target, strategy, options,
            )?);
        }
        let origin = request.catalog_origin.as_deref().unwrap_or("catalog");
        let catalog = Catalog::parse(&request.catalog, origin)?;
        Ok(tandem_upgrade::plan(
            &state, &target, &catalog, strategy, options,
        )?)
    }

    /// Plans and starts an upgrade coordinated by this node.
    pub async fn begin(&self, request: &RolloutUpgradeRequest) -> Result<UpgradePlan, Error> {
        if let Some(run) = self.journal().await
            && !run.status.is_finished()
        {
            return Err(Error::refused(
                "an upgrade is already running: see `tandem upgrade status`, or `tandem upgrade abort`",
            ));
        }
        if !self.only_active().await {
            return Err(Error::refused(
                "only the active node (in config-only and active-active mode: the active node of highest priority) coordinates an upgrade: ask it (tandem upgrade run --node ACTIVE)",
            ));
        }
        let plan = self.plan(request).await?;
        let state = self.observe().await?;
        let mut run = match request.rollout {
            Some(policy) => UpgradeRun::in_waves(plan.clone(), state, policy, PLAN_OPTIONS)?,
            None => UpgradeRun::new(plan.clone(), state),
        };
        // Newer than any run a peer still holds a copy of.
        run.id = now_ms().max(self.journal().await.map_or(0, |r| r.id + 1));
        self.abort.store(false, Ordering::Relaxed);
        self.resume.store(false, Ordering::Relaxed);
        self.record(&run).await;
        self.spawn_coordinator();
        Ok(plan)
    }

    fn spawn_coordinator(&self) {
        if self.coordinating.swap(true, Ordering::SeqCst) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.coordinate().await {
                tracing::error!(error = %e, "upgrade coordination stopped");
            }
            me.coordinating.store(false, Ordering::SeqCst);
        });
    }

    /// Every node checks, now and then, whether it must carry on an
    /// unfinished upgrade: when it is the only active node. A node whose
    /// copy is unfinished first asks its peers for theirs (see
    /// `catch_up`), so it neither reports nor resumes a run that already
    /// ended elsewhere.
    async fn watch(self) {
        loop {
            tokio::time::sleep(WATCH).await;
            let unfinished = || async {
                self.journal()
                    .await
                    .is_some_and(|r| !r.status.is_finished())
            };
            if unfinished().await && !self.coordinating() {
                self.catch_up().await;
            }
            if unfinished().await && !self.coordinating() && self.only_active().await {
                tracing::warn!(
                    "resuming the upgrade from the journal (this node is now the active one)"
                );
                self.spawn_coordinator();
            }
        }
    }

    /// The API of the node of that name.
    fn node_api(&self, node: &str) -> Option<ApiClient> {
        self.nodes
            .iter()
            .find(|(name, _)| name == node)
            .map(|(_, addr)| self.client.at(*addr))
    }
}
