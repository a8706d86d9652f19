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
//! Progress and the outcome are read with `GET /v1/upgrade`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::Value;
use tandem_core::{ConfiguredRole, EffectiveRole, GroupId, Mode};
use tandem_upgrade::cluster::{ConfigLink, ImageFile, Listener, SlotStatus, SlotView};
use tandem_upgrade::{
    Action, ClusterState, NodeState, Observation, PlanOptions, Strategy, UpgradePlan, UpgradeRun,
};
use tandem_version::{Catalog, Version};
use tokio::sync::Mutex;

/// How often the coordinator observes the cluster.
const POLL: Duration = Duration::from_millis(200);
/// How a call's error starts when the node never answered (as opposed to
/// answering with a refusal).
const UNREACHABLE: &str = "no answer from ";
/// How often every node checks whether it should take over coordination.
const WATCH: Duration = Duration::from_millis(500);

/// The body of `POST /v1/upgrade` (and `/v1/upgrade/plan`).
#[derive(Debug, Clone, Deserialize)]
pub struct UpgradeRequest {
    /// The target release.
    pub to: String,
    /// The release catalog, as TOML text.
    pub catalog: String,
    /// Where the catalog came from, for error messages.
    #[serde(default)]
    pub catalog_origin: Option<String>,
    /// The strategy; the mode's default when absent.
    #[serde(default)]
    pub strategy: Option<String>,
    /// Nodes upgraded at once (rolling).
    #[serde(default)]
    pub batch: Option<usize>,
    /// Roll back to this release instead of upgrading.
    #[serde(default)]
    pub rollback: bool,
}

/// This node's side of upgrades.
#[derive(Clone)]
pub struct Upgrades {
    state_dir: PathBuf,
    /// `(name, API address)` of every node, this one first.
    nodes: Vec<(String, SocketAddr)>,
    token: String,
    client: reqwest::Client,
    journal: Arc<Mutex<Option<UpgradeRun>>>,
    coordinating: Arc<AtomicBool>,
    abort: Arc<AtomicBool>,
}

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
    ) -> Result<Upgrades, String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| e.to_string())?;
        let path = state_dir.join("upgrade.json");
        let journal = match std::fs::read(&path) {
            Ok(bytes) => Some(serde_json::from_slice::<UpgradeRun>(&bytes).map_err(|e| {
                format!(
                    "{} is corrupt ({e}); move it away to forget the upgrade",
                    path.display()
                )
            })?),
            Err(_) => None,
        };
        let upgrades = Upgrades {
            state_dir: state_dir.to_path_buf(),
            nodes,
            token,
            client,
            journal: Arc::new(Mutex::new(journal)),
            coordinating: Arc::new(AtomicBool::new(false)),
            abort: Arc::new(AtomicBool::new(false)),
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

    /// A peer's copy of the journal arrives. Around a failover two nodes
    /// may coordinate for a moment (the old one has not yet seen that it
    /// lost the role); the copy that is further on wins, whoever sent it
    /// last, so a stale push never rewinds the journal. A coordinator
    /// takes only a copy strictly ahead of its own, and then stops (see
    /// `coordinate`).
    pub async fn store_replica(&self, run: UpgradeRun) -> Result<(), String> {
        let mut journal = self.journal.lock().await;
        let take = match journal.as_ref() {
            None => true,
            Some(mine) if self.coordinating() => mine.superseded_by(&run),
            Some(mine) => !run.superseded_by(mine),
        };
        if take {
            self.persist(&run)?;
            *journal = Some(run);
        }
        Ok(())
    }

    /// Asks the coordinator to stop at the next safe point.
    pub async fn abort(&self) -> Result<(), String> {
        match self.journal().await {
            Some(run) if !run.status.is_finished() => {
                self.abort.store(true, Ordering::Relaxed);
                Ok(())
            }
            _ => Err("no upgrade is running".into()),
        }
    }

    /// The plan for a request, against the cluster as it is now.
    pub async fn plan(&self, request: &UpgradeRequest) -> Result<UpgradePlan, String> {
        let state = self.observe().await?;
        let target: Version = request
            .to
            .parse()
            .map_err(|e: tandem_version::Error| e.to_string())?;
        let strategy = match &request.strategy {
            Some(name) => {
                let strategy: Strategy = name.parse()?;
                match (strategy, request.batch) {
                    (Strategy::Rolling { .. }, Some(batch)) => Strategy::Rolling { batch },
                    (s, _) => s,
                }
            }
            None => Strategy::default_for(state.mode),
        };
        let options = PlanOptions {
            restart_estimate_ms: 5_000,
            holdoff_secs: 60,
            boot_timeout_ms: 60_000,
            ready_timeout_ms: 120_000,
            step_timeout_ms: 60_000,
        };
        if request.rollback {
            return tandem_upgrade::plan_rollback(&state, &target, strategy, options)
                .map_err(|e| e.to_string());
        }
        let origin = request.catalog_origin.as_deref().unwrap_or("catalog");
        let catalog = Catalog::parse(&request.catalog, origin).map_err(|e| e.to_string())?;
        tandem_upgrade::plan(&state, &target, &catalog, strategy, options)
            .map_err(|e| e.to_string())
    }

    /// Plans and starts an upgrade coordinated by this node.
    pub async fn begin(&self, request: &UpgradeRequest) -> Result<UpgradePlan, String> {
        if let Some(run) = self.journal().await
            && !run.status.is_finished()
        {
            return Err("an upgrade is already running: see `tandem upgrade status`, or `tandem upgrade abort`".into());
        }
        if !self.only_active().await {
            return Err("only the active node (in config-only and active-active mode: the active node of highest priority) coordinates an upgrade: ask it (tandem upgrade run --node ACTIVE)".into());
        }
        let plan = self.plan(request).await?;
        let state = self.observe().await?;
        let mut run = UpgradeRun::new(plan.clone(), state);
        // Newer than any run a peer still holds a copy of.
        run.id = now_ms().max(self.journal().await.map_or(0, |r| r.id + 1));
        self.abort.store(false, Ordering::Relaxed);
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

    /// Pulls every peer's copy of the journal and keeps one strictly
    /// further on than this node's. The coordinator pushes each copy once,
    /// best effort: a node whose agent was down at that moment (killed,
    /// restarting) missed it, and the last push of a run (done, stopped)
    /// is never followed by another. Without this the node would report
    /// the run as unfinished for ever, and resume it from a stale step if
    /// it became the active one. Only a node holding an unfinished copy
    /// asks, so an idle cluster makes no calls.
    async fn catch_up(&self) {
        for (name, addr) in self.nodes.iter().skip(1) {
            let answer = match self.get(*addr, "/v1/upgrade").await {
                Ok(answer) => answer,
                Err(e) => {
                    tracing::debug!(peer = %name, error = %e, "cannot read the peer's journal");
                    continue;
                }
            };
            let Ok(theirs) = serde_json::from_value::<UpgradeRun>(answer["run"].clone()) else {
                continue;
            };
            let mut journal = self.journal.lock().await;
            // Checked under the lock: a coordinator started meanwhile
            // takes copies only through `store_replica`'s rule.
            if self.coordinating_or_ahead(journal.as_ref(), &theirs) {
                continue;
            }
            if let Err(e) = self.persist(&theirs) {
                tracing::error!(error = %e, "cannot write the upgrade journal");
                continue;
            }
            tracing::info!(peer = %name, status = ?theirs.status, "took the peer's newer copy of the upgrade journal");
            *journal = Some(theirs);
        }
    }

    /// Whether a peer's copy must be left alone: this node coordinates,
    /// or its own copy is not strictly behind the peer's.
    fn coordinating_or_ahead(&self, mine: Option<&UpgradeRun>, theirs: &UpgradeRun) -> bool {
        self.coordinating() || mine.is_some_and(|m| !m.superseded_by(theirs))
    }

    async fn coordinate(&self) -> Result<(), String> {
        let Some(journal) = self.journal().await else {
            return Ok(());
        };
        let state = self.observe_since(&journal.view).await?;
        let mut run = UpgradeRun::resume(journal, state, now_ms()).map_err(|e| e.to_string())?;
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
                match self.act(&action, &mut run).await {
                    Ok(Some(observation)) => run.observe(now_ms(), observation),
                    Ok(None) => {}
                    Err((node, reason)) => {
                        if let Some(step) = run.running_step() {
                            // A node that did not answer (its agent killed
                            // and restarting) refused nothing: ask again
                            // when it is back, within the step's timeout.
                            let observation = if reason.starts_with(UNREACHABLE) {
                                Observation::ActionUndelivered { step, node, reason }
                            } else {
                                Observation::ActionFailed { step, node, reason }
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

    /// Writes the journal here and pushes it to every peer (best effort:
    /// a peer that misses one gets the next). `false`, writing nothing,
    /// when the copy here is already further on (another coordinator's).
    async fn record(&self, run: &UpgradeRun) -> bool {
        {
            let mut journal = self.journal.lock().await;
            if journal.as_ref().is_some_and(|j| run.superseded_by(j)) {
                return false;
            }
            if let Err(e) = self.persist(run) {
                tracing::error!(error = %e, "cannot write the upgrade journal");
            }
            *journal = Some(run.clone());
        }
        for (name, addr) in self.nodes.iter().skip(1) {
            let sent = self
                .client
                .put(format!("http://{addr}/v1/upgrade/journal"))
                .bearer_auth(&self.token)
                .timeout(Duration::from_secs(2))
                .json(run)
                .send()
                .await;
            if let Err(e) = sent {
                tracing::debug!(peer = %name, error = %e, "journal not replicated");
            }
        }
        true
    }

    fn persist(&self, run: &UpgradeRun) -> Result<(), String> {
        let path = self.state_dir.join("upgrade.json");
        let tmp = self.state_dir.join("upgrade.json.tmp");
        let bytes = serde_json::to_vec_pretty(run).map_err(|e| e.to_string())?;
        let write = || -> std::io::Result<()> {
            let file = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut &file, &bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.state_dir)?.sync_all()
        };
        write().map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Carries out one action; `Err((node, reason))` when a node refused.
    async fn act(
        &self,
        action: &Action,
        run: &mut UpgradeRun,
    ) -> Result<Option<Observation>, (String, String)> {
        let post = |node: &str, path: &str, body: Value| {
            let node = node.to_string();
            let path = path.to_string();
            async move { self.call(&node, &path, body).await.map_err(|e| (node, e)) }
        };
        match action {
            Action::Command { node, command } => {
                let answer =
                    post(node, "/v1/command", serde_json::json!({"command": command})).await?;
                if answer["outcome"] == "refused" {
                    // Already so (a resumed step asking again) is not a failure.
                    let reason = answer["reason"].as_str().unwrap_or("").to_string();
                    if !reason.contains("already") {
                        return Err((node.clone(), reason));
                    }
                }
                Ok(None)
            }
            Action::InstallImage { node, version } => {
                post(
                    node,
                    "/v1/images/install",
                    serde_json::json!({"version": version.to_string()}),
                )
                .await?;
                Ok(None)
            }
            Action::BootPending { node, version } => {
                match post(node, "/v1/images/boot", serde_json::json!({})).await {
                    Ok(_) => Ok(None),
                    // A boot whose health check failed has fallen back to
                    // the previous slot and marked the new one bad: the
                    // next observation shows it and the step machine rolls
                    // the upgrade back. It is not a refusal to stop on.
                    Err(failed) if self.fell_back(node, version).await => {
                        tracing::warn!(node = %failed.0, reason = %failed.1, "the boot failed its health check and fell back");
                        Ok(None)
                    }
                    Err(failed) => Err(failed),
                }
            }
            Action::BootPrevious { node, .. } => {
                post(node, "/v1/images/rollback", serde_json::json!({})).await?;
                Ok(None)
            }
            Action::SuspendListener { node } => {
                post(
                    node,
                    "/v1/listener",
                    serde_json::json!({"action": "suspend", "drain_timeout_ms": 10_000}),
                )
                .await?;
                Ok(None)
            }
            Action::ResumeListener { node } => {
                post(
                    node,
                    "/v1/listener",
                    serde_json::json!({"action": "resume"}),
                )
                .await?;
                Ok(None)
            }
            Action::DisconnectConfig { node } => {
                post(
                    node,
                    "/v1/config-link",
                    serde_json::json!({"connected": false}),
                )
                .await?;
                Ok(None)
            }
            Action::ReconnectConfig { node } => {
                post(
                    node,
                    "/v1/config-link",
                    serde_json::json!({"connected": true}),
                )
                .await?;
                Ok(None)
            }
            Action::TakeBackup { node } => {
                post(node, "/v1/backup", serde_json::json!({})).await?;
                Ok(Some(Observation::BackupTaken { node: node.clone() }))
            }
            Action::RunSyncReport => {
                // Without data sync configured there is nothing to compare:
                // the report is clean by definition. (The sync engine's own
                // report takes over when data sync is wired in.)
                let _ = run;
                Ok(Some(Observation::SyncReport { clean: true }))
            }
            Action::Wait { .. }
            | Action::Done { .. }
            | Action::RolledBack { .. }
            | Action::Stopped { .. } => Ok(None),
        }
    }

    /// Whether `node` holds `version` in a slot marked bad: a boot of it
    /// failed its health check and the node went back to its previous
    /// release.
    async fn fell_back(&self, node: &str, version: &Version) -> bool {
        let Some(addr) = self.addr(node) else {
            return false;
        };
        let Ok(images) = self.get(addr, "/v1/images").await else {
            return false;
        };
        ["a", "b"].into_iter().any(|s| {
            let slot = &images["slots"][s];
            slot["state"] == "bad"
                && slot["version"]
                    .as_str()
                    .and_then(|v| v.parse::<Version>().ok())
                    .is_some_and(|v| v == *version)
        })
    }

    fn addr(&self, node: &str) -> Option<SocketAddr> {
        self.nodes
            .iter()
            .find(|(name, _)| name == node)
            .map(|(_, a)| *a)
    }

    async fn call(&self, node: &str, path: &str, body: Value) -> Result<Value, String> {
        let addr = self
            .nodes
            .iter()
            .find(|(name, _)| name == node)
            .map(|(_, a)| *a)
            .ok_or_else(|| format!("{node:?} is not a node of this cluster"))?;
        let response = self
            .client
            .post(format!("http://{addr}{path}"))
            .bearer_auth(&self.token)
            .header("x-tandem-user", "upgrade-coordinator")
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("{UNREACHABLE}{node}: {e}"))?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success()
            || status == reqwest::StatusCode::CONFLICT && answer["outcome"] == "refused"
        {
            Ok(answer)
        } else {
            Err(answer["error"]
                .as_str()
                .map_or_else(|| format!("{node} answered {status}"), str::to_string))
        }
    }

    async fn get(&self, addr: SocketAddr, path: &str) -> Result<Value, String> {
        let response = self
            .client
            .get(format!("http://{addr}{path}"))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        response.json().await.map_err(|e| e.to_string())
    }

    /// Whether this node should coordinate now. Every node answers from
    /// the same statuses, so at most one says yes once they agree:
    ///
    /// - `active-passive`: this node is active and no other node is. While
    ///   a switchover has two actives for a moment, nobody coordinates; the
    ///   one left active resumes from the journal.
    /// - `config-only` and `active-active`: several nodes are active by
    ///   design (every node serves; each holds a group), so "the only
    ///   active" would never hold and the upgrade would stall. The active
    ///   node that ranks first (highest priority, then name) coordinates;
    ///   when the plan moves every group away from it, it is no longer
    ///   active and the next one resumes.
    async fn only_active(&self) -> bool {
        let mut actives = Vec::new();
        let mut mode = None;
        for (i, (name, addr)) in self.nodes.iter().enumerate() {
            let Ok(status) = self.get(*addr, "/v1/status").await else {
                continue;
            };
            let node = &status["node"];
            if mode.is_none() {
                mode = serde_json::from_value::<Mode>(node["mode"].clone()).ok();
            }
            if node["effective_role"] == "active" {
                let priority = node["priority"].as_u64().unwrap_or(0);
                actives.push((i == 0, priority, name.clone()));
            }
        }
        match mode {
            Some(Mode::ConfigOnly | Mode::ActiveActive) => {
                let first = actives
                    .iter()
                    .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.2.cmp(&a.2)));
                first.is_some_and(|(me, _, _)| *me)
            }
            _ => actives.len() == 1 && actives[0].0,
        }
    }

    /// The whole cluster, from every node's own API.
    async fn observe(&self) -> Result<ClusterState, String> {
        self.observe_with_gaps().await.map(|(state, _)| state)
    }

    /// The cluster as observed now, with what was last known (`before`)
    /// of each node that did not answer: its release, images and slots
    /// (only that it is off is new). Without this a node whose agent is
    /// restarting would look like it runs whatever the first node runs,
    /// and a step could count it as done, or issue nothing for it and then
    /// wait for it forever.
    async fn observe_since(&self, before: &ClusterState) -> Result<ClusterState, String> {
        let (mut state, gaps) = self.observe_with_gaps().await?;
        for name in gaps {
            if let (Some(node), Some(known)) = (state.node_mut(&name), before.node(&name)) {
                node.running = known.running;
                node.images = known.images.clone();
                node.other_slot = known.other_slot;
                node.configured = known.configured;
                node.priority = known.priority;
            }
        }
        Ok(state)
    }

    /// The whole cluster, and the nodes that did not answer.
    async fn observe_with_gaps(&self) -> Result<(ClusterState, Vec<String>), String> {
        let mut gaps = Vec::new();
        let mut nodes = Vec::new();
        let mut mode = Mode::ActivePassive;
        let mut groups = Vec::new();
        for (name, addr) in &self.nodes {
            let status = self.get(*addr, "/v1/status").await;
            let images = self.get(*addr, "/v1/images").await;
            match (status, images) {
                (Ok(status), Ok(images)) => {
                    let node = node_state(name, &status, &images)?;
                    if let Ok(m) = serde_json::from_value(status["node"]["mode"].clone()) {
                        mode = m;
                    }
                    for g in status["node"]["groups"].as_array().into_iter().flatten() {
                        if let Ok(id) = serde_json::from_value::<GroupId>(g["group"].clone())
                            && !groups.contains(&id)
                        {
                            groups.push(id);
                        }
                    }
                    nodes.push(node);
                }
                _ => {
                    gaps.push(name.clone());
                    nodes.push(unreachable_node(name, nodes.first()));
                }
            }
        }
        let state = ClusterState {
            mode,
            groups,
            nodes,
            sync_clean: None,
        };
        Ok((state, gaps))
    }
}

fn last_step(run: &UpgradeRun) -> Option<tandem_upgrade::StepId> {
    run.current().plan.steps.last().map(|s| s.id)
}

/// A node that does not answer: `off`, on the release last seen cluster-wide.
fn unreachable_node(name: &str, like: Option<&NodeState>) -> NodeState {
    NodeState {
        name: name.to_string(),
        configured: ConfiguredRole::Secondary,
        effective: EffectiveRole::Off,
        priority: 0,
        running: like.map_or_else(
            || Version {
                major: 0,
                minor: 0,
                maint: 0,
                build: None,
                spelling: tandem_version::Spelling::Dotted { v_prefix: false },
            },
            |n| n.running,
        ),
        healthy: false,
        in_sync: false,
        preempt: false,
        groups: vec![],
        images: vec![],
        other_slot: None,
        listener: Listener::Accepting,
        config_link: ConfigLink::Connected,
    }
}

fn node_state(name: &str, status: &Value, images: &Value) -> Result<NodeState, String> {
    let node = &status["node"];
    fn from<T: serde::de::DeserializeOwned>(name: &str, v: &Value) -> Result<T, String> {
        serde_json::from_value(v.clone()).map_err(|e| format!("{name}: {e}"))
    }
    let version_text = node["version"].as_str().unwrap_or("");
    let running: Version = version_text.parse().map_err(|e: tandem_version::Error| {
        format!("{name} reports version {version_text:?}, which is not a release ({e}): boot an image first")
    })?;
    let current = images["slots"]["current"].as_str();
    let other_slot = ["a", "b"]
        .into_iter()
        .filter(|s| Some(*s) != current)
        .find_map(|s| {
            let info = &images["slots"][s];
            let version = info["version"].as_str()?.parse().ok()?;
            let state = match info["state"].as_str()? {
                "pending" => SlotStatus::Pending,
                "good" => SlotStatus::Good,
                "bad" => SlotStatus::Bad,
                _ => return None,
            };
            Some(SlotView { version, state })
        });
    let files = images["images"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| {
            Some(ImageFile {
                version: i["version"].as_str()?.parse().ok()?,
                verified: i["verified"] == true,
            })
        })
        .collect();
    let groups = node["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| g["role"] == "active")
        .filter_map(|g| serde_json::from_value(g["group"].clone()).ok())
        .collect();
    Ok(NodeState {
        name: name.to_string(),
        configured: from(name, &node["configured_role"])?,
        effective: from(name, &node["effective_role"])?,
        priority: node["priority"].as_u64().unwrap_or(0) as u8,
        running,
        healthy: node["healthy"] != false,
        in_sync: true,
        preempt: node["preempt"] == true,
        groups,
        images: files,
        other_slot,
        listener: if status["agent"]["listener"] == "suspended" {
            Listener::Suspended
        } else {
            Listener::Accepting
        },
        config_link: if status["agent"]["config_link"] == "disconnected" {
            ConfigLink::Disconnected
        } else {
            ConfigLink::Connected
        },
    })
}

/// The flag file whose presence disconnects this node from cluster
/// configuration (ESA's `clusterconfig disconnect`): a file, so it
/// survives restarts, and the sync receiver checks it before taking a
/// config push.
pub fn config_disconnected_flag(state_dir: &Path) -> PathBuf {
    state_dir.join("config-disconnected")
}

/// Whether this node takes part in cluster configuration (ESA's
/// `clusterconfig disconnect|reconnect`).
pub fn config_link(state_dir: &Path) -> &'static str {
    if config_disconnected_flag(state_dir).exists() {
        "disconnected"
    } else {
        "connected"
    }
}

/// `POST /v1/config-link`.
pub fn set_config_link(state_dir: &Path, connected: bool) -> Result<Value, String> {
    let flag = config_disconnected_flag(state_dir);
    let done = if connected {
        std::fs::remove_file(&flag).or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(e)
            }
        })
    } else {
        std::fs::write(&flag, b"disconnected for an upgrade\n")
    };
    done.map_err(|e| format!("{}: {e}", flag.display()))?;
    Ok(serde_json::json!({"config_link": config_link(state_dir)}))
}
