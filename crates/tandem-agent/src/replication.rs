//! Config and data sync in the agent (issue 6): the `[sync]` section, the
//! sync receiver every node runs, the replicator the active node runs, and
//! the API routes of cluster fsync, resync and the sync report. Config
//! files follow the active through the `config_sync` submodule.
//!
//! ```text
//!   relay ─ POST /v1/sync/commit ─► commit() ─► Replicator ══TLS══► Receiver ─► data dir
//!   CLI ─── POST /v1/sync/resync ─► resync()     (active only)       (every node)
//!   CLI ─── GET  /v1/sync/report ─► report()                            │
//!                                                                       ▼ events
//!   driver ◄── next_input(): PeerConnectionClosed, DataSync{in_sync} ◄──┘
//!   driver ──► after_step(): start / drop the Replicator on role change
//! ```
//!
//! The driver keeps its narrow interface: one [`Replication`] field, one
//! `select!` branch on [`Replication::next_input`], one call to
//! [`Replication::after_step`] after every core step. Commits do not go
//! through the driver loop: the API handlers hold the replicator directly,
//! so a burst of commits never delays a heartbeat.
//!
//! **Crash detection.** With `[sync]`, the TLS receiver owns `node.sync`
//! and replaces the HMAC crash detector of [`crate::crash_link`]: the active
//! dials every standby, and the standby's receiver reports the close of
//! that connection the moment the active's process dies; it becomes
//! [`Input::PeerConnectionClosed`] at once. One connection, one port, one
//! authentication (the cluster CA) instead of two. What is lost: the active
//! no longer learns of a *standby's* crash instantly (heartbeat timeout
//! instead), which changes nothing it does.
//!
//! **Stale standbys.** The core gets [`Input::DataSync`]: `false` while
//! the receiver catches this node up, `true` once caught up. A close of the
//! connection leaves the value as it was: a standby in sync when the active
//! crashed holds every acknowledged commit (`semi`), one caught mid-catch-up
//! does not. A node that boots while a peer is active counts as stale until
//! that active has caught it up, so it cannot preempt with old data. The
//! stale state is also a marker file in the state dir, so a node that stops
//! mid-catch-up and restarts alone does not serve what it has.
//! `allow_stale_takeover = true` always reports `true`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use tandem_core::{EffectiveRole, Input, Node};
use tandem_sync::fencing::Fencing;
use tandem_sync::receiver::{Receiver, ReceiverConfig, ReceiverEvent};
use tandem_sync::replicator::{
    DataSync, DegradeGate, PeerAddr, PeerState, Replicator, ReplicatorConfig,
};
use tandem_sync::tls::TlsIdentity;
use tokio::sync::mpsc;

use crate::Error;
use crate::api::{ApiClient, SyncDetail, SyncStatus};
use crate::config::AgentConfig;

mod config_sync;
mod quarantine;
mod routes;

use crate::config::{ConfigChangeAction, SyncSettings};

/// See [`Replication::config_changes`].
pub struct ConfigChanges {
    shared: Option<Arc<Shared>>,
}

impl ConfigChanges {
    /// Resolves when a cluster config file changed on this node, with what
    /// `on_config_change` says to do about it; never without `[sync]`.
    /// Cancel-safe (for `select!`).
    pub async fn next(&self) -> ConfigChangeAction {
        let Some(shared) = &self.shared else {
            return std::future::pending().await;
        };
        shared.config_changed.notified().await;
        shared.settings.on_config_change
    }
}

/// The agent's sync machinery; a no-op when the config has no `[sync]`.
pub struct Replication {
    inner: Option<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    events: mpsc::Receiver<ReceiverEvent>,
    /// Peers the replicator heard on the sync channel (keepalive answers).
    heard: mpsc::Receiver<String>,
    /// Inputs for the core, handed out by `next_input`.
    queue: VecDeque<Input>,
    /// What this node's data is, as last told to the core.
    in_sync: bool,
    /// An active has connected to this node's receiver since boot.
    connected_since_boot: bool,
    /// The stale marker is on disk.
    marked_stale: bool,
    /// This node is active (as of the last step).
    active: bool,
    /// The service's process runs here (it may still be draining after
    /// the node stopped being active).
    service_alive: bool,
}

/// What the API handlers and the driver share.
struct Shared {
    node: String,
    settings: SyncSettings,
    identity: TlsIdentity,
    peers: Vec<PeerAddr>,
    /// `(name, API address)` of each peer: where to send a caller who asked
    /// a standby for what only the active can do.
    peer_apis: Vec<(String, SocketAddr)>,
    receiver: Receiver,
    /// Plain std mutex: held to clone or swap the handle, never across await.
    state: Mutex<RoleState>,
    /// The node's state dir: the config-disconnected flag, the stale marker.
    state_dir: PathBuf,
    /// Peers' APIs (whether they are disconnected from cluster config,
    /// where to merge quarantined files), aimed with [`ApiClient::at`].
    api: ApiClient,
    /// What config sync has done. Plain std mutex, never held across await.
    config_sync: Mutex<config_sync::ConfigSyncState>,
    /// Wakes the driver when a config file changed on this node, for
    /// `on_config_change`; a permit is kept, so none is lost.
    config_changed: tokio::sync::Notify,
    /// What this node committed as active that a peer never acked: read
    /// back by this node's receiver when that peer next connects.
    unreplicated: tandem_sync::unreplicated::Unreplicated,
    /// Where each replicator reports peers heard on the sync channel.
    heard: mpsc::Sender<String>,
    /// The fencing epochs commits carry and the receiver checks.
    fencing: Arc<Fencing>,
    /// etcd's `sync` key, asked before a degraded commit is acknowledged.
    degrade_gate: Option<Arc<dyn DegradeGate>>,
    /// The sync channel's keepalive: the heartbeat interval.
    keepalive: Duration,
    /// Wakes the quarantine merge (a batch was just quarantined).
    quarantine_wake: tokio::sync::Notify,
    /// What merging quarantined files has done. Never held across await.
    merges: Mutex<crate::api::MergeCounters>,
}

#[derive(Default)]
struct RoleState {
    /// Running while this node is active; dropped (tasks stop) when not.
    replicator: Option<Replicator>,
    /// The peer holding the service, when it is not this node.
    active_peer: Option<String>,
    /// Last `in_sync` told to the core, for status.
    data_in_sync: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, RoleState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn replicator(&self) -> Option<Replicator> {
        self.state().replicator.clone()
    }

    /// The peer holding the service, when it is not this node, and its API.
    fn active_peer(&self) -> Option<(String, Option<SocketAddr>)> {
        let name = self.state().active_peer.clone()?;
        let api = self
            .peer_apis
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, addr)| *addr);
        Some((name, api))
    }

    fn config_state(&self) -> MutexGuard<'_, config_sync::ConfigSyncState> {
        self.config_sync.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn merges(&self) -> MutexGuard<'_, crate::api::MergeCounters> {
        self.merges.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stale marker: present while this node's data is known to be
    /// behind the active's (see [`Inner::tell_core`]).
    fn stale_marker(&self) -> PathBuf {
        self.state_dir.join("data-stale")
    }
}

/// Whether this node is disconnected from cluster config (during an
/// upgrade): it neither takes nor refuses config changes then.
fn config_disconnected(shared: &Shared) -> bool {
    crate::upgrade::config_disconnected_flag(&shared.state_dir).exists()
}

impl Replication {
    /// With `[sync]`: loads this node's certificates and serves the
    /// receiver on `node.sync`. Without: a no-op.
    pub async fn start(
        config: &AgentConfig,
        degrade_gate: Option<Arc<dyn DegradeGate>>,
        fencing: Arc<Fencing>,
    ) -> Result<Replication, Error> {
        let Some(settings) = config.sync.clone() else {
            return Ok(Replication { inner: None });
        };
        let sync_error = |e: tandem_sync::Error| Error::Config {
            origin: config.origin.display().to_string(),
            line: 0,
            key: "sync".into(),
            message: e.to_string(),
        };
        let identity =
            TlsIdentity::load(&settings.cert_dir, &config.node.name).map_err(sync_error)?;
        let (events_tx, events) = mpsc::channel(64);
        let (heard_tx, heard) = mpsc::channel(16);
        let state_dir = &config.node.state_dir;
        let unreplicated =
            tandem_sync::unreplicated::Unreplicated::open(&state_dir.join("unreplicated"))
                .map_err(sync_error)?;
        let receiver = Receiver::new(ReceiverConfig {
            fencing: fencing.clone(),
            unreplicated: Some(unreplicated.clone()),
            quarantine_dir: Some(quarantine::quarantine_dir(state_dir)),
            identity: identity.clone(),
            data_dir: settings.data_dir.clone(),
            config_dir: settings.config_dir.clone(),
            config_files: settings.config.clone(),
            config_hold: Some(crate::upgrade::config_disconnected_flag(
                &config.node.state_dir,
            )),
            expected_peers: config.peers.iter().map(|p| p.name.clone()).collect(),
            events: Some(events_tx),
            handshake_timeout: Duration::from_secs(5),
            log_dir: Some(config.node.state_dir.join("sync-log")),
        })
        .map_err(sync_error)?;
        let addr = config.node.sync;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind {
                what: "sync (TLS) listener".into(),
                addr,
                source,
            })?;
        let serving = receiver.clone();
        tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
        tracing::info!(
            %addr,
            data_sync = ?settings.data_sync,
            sync_mode = ?settings.sync_mode,
            data_dir = %settings.data_dir.display(),
            "sync receiver listening"
        );
        let shared = Arc::new(Shared {
            node: config.node.name.clone(),
            peers: config
                .peers
                .iter()
                .map(|p| PeerAddr {
                    name: p.name.clone(),
                    addr: p.sync,
                })
                .collect(),
            peer_apis: config
                .peers
                .iter()
                .map(|p| (p.name.clone(), p.api))
                .collect(),
            settings,
            identity,
            receiver,
            state: Mutex::new(RoleState {
                data_in_sync: true,
                ..RoleState::default()
            }),
            state_dir: config.node.state_dir.clone(),
            // A peer slower than this counts as away: config sync must not
            // stall on it.
            api: ApiClient::new(config.node.api, config.secrets.api_token.clone())?
                .with_timeout(Duration::from_secs(2))
                .on_behalf_of(format!("agent {}", config.node.name))
                .with_fencing(fencing.clone()),
            config_sync: Mutex::default(),
            config_changed: tokio::sync::Notify::new(),
            unreplicated,
            heard: heard_tx,
            fencing,
            degrade_gate,
            keepalive: config.cluster.interval,
            quarantine_wake: tokio::sync::Notify::new(),
            merges: Mutex::default(),
        });
        config_sync::start(shared.clone());
        quarantine::start(shared.clone());
        let mut inner = Inner {
            shared,
            events,
            heard,
            queue: VecDeque::new(),
            in_sync: true,
            connected_since_boot: false,
            marked_stale: false,
            active: false,
            service_alive: false,
        };
        if inner.shared.stale_marker().exists() {
            // It stopped while behind the active: until an active has
            // caught it up, it must not serve alone with what it has.
            tracing::warn!(
                marker = %inner.shared.stale_marker().display(),
                "data marked stale: this node stopped while catching up; it will not take over until an active has caught it up (allow_stale_takeover overrides)"
            );
            inner.tell_core(false);
        }
        Ok(Replication { inner: Some(inner) })
    }

    /// Whether `[sync]` is configured (then the TLS receiver owns
    /// `node.sync` and the HMAC crash detector must not run).
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Puts every file acked to this node's receiver in the data dir,
    /// durably (see [`Receiver::checkpoint`]): before the service starts
    /// here, and before this agent stops or execs another (which may be an
    /// older release that would not replay the log). A failure is logged:
    /// the files stay in the standby log and are retried, but the service
    /// may start without some of them.
    pub async fn checkpoint_standby_log(&self) {
        let Some(inner) = self.inner.as_ref() else {
            return;
        };
        if let Err(e) = inner.shared.receiver.checkpoint().await {
            tracing::error!(error = %e, "cannot put the standby log into the data dir; acknowledged files are missing from it until that succeeds");
        }
    }

    /// Where the driver hears that a cluster config file changed on this
    /// node (apart from `self`, which `next_input` borrows meanwhile).
    pub fn config_changes(&self) -> ConfigChanges {
        ConfigChanges {
            shared: self.inner.as_ref().map(|inner| inner.shared.clone()),
        }
    }

    /// The next input for the core: a crash seen by the sync channel, or a
    /// change of this node's data-sync state. Never resolves when sync is
    /// off. Cancel-safe (for `select!`).
    pub async fn next_input(&mut self) -> Option<Input> {
        let Some(inner) = self.inner.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            if let Some(input) = inner.queue.pop_front() {
                return Some(input);
            }
            tokio::select! {
                event = inner.events.recv() => inner.on_event(event?),
                Some(peer) = inner.heard.recv() => return Some(Input::ChannelHeard { peer }),
            }
        }
    }

    /// Called after every core step: starts the replicator when this node
    /// became active, drops it when it stopped being active, and works out
    /// whether a freshly booted standby must count as stale.
    pub fn after_step(&mut self, node: &Node, now: tandem_core::Millis) {
        let Some(inner) = self.inner.as_mut() else {
            return;
        };
        let status = node.status(now);
        let active = status.effective_role == EffectiveRole::Active;
        inner.active = active;
        inner.update_serving();
        let active_peer = status
            .groups
            .iter()
            .filter_map(|g| g.holder.clone())
            .find(|holder| *holder != inner.shared.node);
        {
            let mut state = inner.shared.state();
            state.active_peer = active_peer.clone();
            match (active, state.replicator.is_some()) {
                (true, false) => match start_replicator(&inner.shared) {
                    Ok(replicator) => {
                        tracing::info!(data_sync = ?inner.shared.settings.data_sync, "active: replicating to the standbys");
                        state.replicator = Some(replicator);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start replicating; commits will fail")
                    }
                },
                (false, true) => {
                    tracing::info!("no longer active: replication stopped");
                    state.replicator = None;
                }
                _ => {}
            }
        }
        if active {
            // This node's data is the reference now.
            inner.tell_core(true);
        } else if !inner.connected_since_boot && active_peer.is_some() {
            // Booted while another node serves: whatever this node has is
            // older than the active's until the active has caught it up.
            inner.tell_core(false);
        }
    }

    /// The service's process started (`true`) or is gone (`false`). Until
    /// it is gone, a node that stopped being active takes no catch-up: its
    /// draining service may still deliver (and delete) files that a
    /// catch-up would otherwise quarantine and merge too — delivered twice.
    pub fn service_alive(&mut self, alive: bool) {
        if let Some(inner) = self.inner.as_mut() {
            inner.service_alive = alive;
            inner.update_serving();
        }
    }

    /// A forced takeover (`failover active --force`) of a node whose data
    /// is not in sync: from now on the core counts its data as in sync.
    /// Returns the input for the core and, in words, what serving this data
    /// may lose; `None` when the data is in sync (nothing to force). The
    /// stale marker stays until the node serves: its data is then the
    /// reference.
    pub fn accept_stale(&mut self) -> Option<(Input, String)> {
        let inner = self.inner.as_mut()?;
        if inner.in_sync {
            return None;
        }
        let receiver = inner.shared.receiver.status();
        let may_lose = match &receiver.progress {
            Some(p) => format!(
                "the rest of the catch-up from {}: {} of {} files ({} of {} bytes) not received, and whatever {} acknowledged since",
                p.peer,
                p.files_total.saturating_sub(p.files_done),
                p.files_total,
                p.bytes_total.saturating_sub(p.bytes_done),
                p.bytes_total,
                p.peer
            ),
            None => {
                let last = match receiver.last_applied_unix_ms {
                    Some(ms) => format!(
                        "{} s ago",
                        crate::upgrade::now_ms().saturating_sub(ms) / 1000
                    ),
                    None => "never since this agent started".into(),
                };
                format!(
                    "whatever the last active acknowledged that never reached this node (it was not caught up; last batch applied here: {last})"
                )
            }
        };
        inner.in_sync = true;
        inner.shared.state().data_in_sync = true;
        Some((Input::DataSync { in_sync: true }, may_lose))
    }

    /// Environment for the service: where the agent's API is and the token
    /// file, so the relay can call `POST /v1/sync/commit`. Empty without
    /// `[sync]`: then the relay has no reason to call.
    pub fn service_env(&self, config: &AgentConfig) -> Vec<(String, String)> {
        if self.inner.is_none() {
            return Vec::new();
        }
        vec![
            ("TANDEM_API".into(), config.node.api.to_string()),
            (
                "TANDEM_TOKEN_FILE".into(),
                config.node.token_file.display().to_string(),
            ),
        ]
    }

    /// Quarantine metrics `(name, kind, help, value)`; none without `[sync]`.
    pub fn metrics(&self) -> Vec<(&'static str, &'static str, &'static str, u64)> {
        let Some(inner) = &self.inner else {
            return Vec::new();
        };
        let files: usize = quarantine::batches(&inner.shared)
            .iter()
            .map(|b| b.paths.len())
            .sum();
        let merges = inner.shared.merges().clone();
        vec![
            (
                "tandem_quarantined_files",
                "gauge",
                "Files in this node's quarantine: acknowledged here, never seen by the active that caught it up.",
                files as u64,
            ),
            (
                "tandem_quarantine_merged_total",
                "counter",
                "Quarantined files merged back into the active.",
                merges.merged,
            ),
            (
                "tandem_quarantine_duplicates_total",
                "counter",
                "Quarantined files the active already had (duplicates, not losses).",
                merges.duplicates,
            ),
            (
                "tandem_quarantine_conflicts_total",
                "counter",
                "Quarantined files the active has with other content (kept for the operator).",
                merges.conflicts,
            ),
        ]
    }

    /// The standbys in sync with this node's replicator (`None` while it
    /// does not replicate).
    pub fn in_sync_standbys(&self) -> Option<Vec<String>> {
        let state = self.inner.as_ref()?.shared.state();
        let status = state.replicator.as_ref()?.status();
        Some(
            status
                .peers
                .into_iter()
                .filter(|p| p.state == PeerState::InSync)
                .map(|p| p.name)
                .collect(),
        )
    }

    /// The `sync` part of `/v1/status`.
    pub fn status(&self) -> SyncStatus {
        let Some(inner) = &self.inner else {
            return SyncStatus {
                enabled: false,
                detail: None,
            };
        };
        let shared = &inner.shared;
        let state = shared.state();
        let settings = &shared.settings;
        SyncStatus {
            enabled: true,
            detail: Some(SyncDetail {
                data_sync: settings.data_sync,
                sync_mode: settings.sync_mode,
                data_dir: settings.data_dir.clone(),
                allow_stale_takeover: settings.allow_stale_takeover,
                data_in_sync: state.data_in_sync,
                quarantine: quarantine::status(shared),
                receiver: shared.receiver.status(),
                replicator: state.replicator.as_ref().map(Replicator::status),
                config: config_sync::status(shared),
            }),
        }
    }

    /// The sync routes, to merge into the API: `POST /v1/sync/commit`,
    /// `POST /v1/sync/resync` and `GET /v1/sync/report`. Empty without
    /// `[sync]` (the routes then answer 404).
    pub fn router(&self) -> Router {
        let Some(inner) = &self.inner else {
            return Router::new();
        };
        Router::new()
            .route("/v1/sync/commit", post(routes::commit))
            .route("/v1/sync/resync", post(routes::resync))
            .route("/v1/sync/report", get(routes::report))
            .route(
                "/v1/sync/merge/{*path}",
                axum::routing::put(quarantine::merge)
                    .layer(axum::extract::DefaultBodyLimit::max(MAX_MERGED_FILE)),
            )
            .route("/v1/sync/quarantine", get(quarantine::list))
            .route(
                "/v1/sync/quarantine/{id}",
                axum::routing::delete(quarantine::drop_batch),
            )
            .route(
                "/v1/sync/quarantine/{id}/restore",
                post(quarantine::restore),
            )
            .merge(config_sync::routes())
            .with_state(inner.shared.clone())
    }
}

impl Inner {
    fn on_event(&mut self, event: ReceiverEvent) {
        match event {
            ReceiverEvent::Connected { peer } => {
                tracing::info!(%peer, "sync connection from the active: catching up");
                self.connected_since_boot = true;
                self.tell_core(false);
                self.queue.push_back(Input::ChannelHeard { peer });
            }
            ReceiverEvent::Heard { peer } => {
                self.queue.push_back(Input::ChannelHeard { peer });
            }
            ReceiverEvent::Quarantined { .. } => {
                // The receiver logged it (count, batch, dir); merge it soon.
                self.shared.quarantine_wake.notify_one();
            }
            ReceiverEvent::CaughtUp { peer } => {
                tracing::info!(%peer, "data in sync with the active");
                self.tell_core(true);
            }
            ReceiverEvent::Closed {
                peer,
                error,
                peer_hung_up,
            } => {
                // The data state stays what it was: in sync means every
                // acknowledged commit is here.
                tracing::info!(%peer, error = ?error, peer_hung_up, "sync connection closed");
                // Only the peer's own hang-up may be its process dying;
                // this end giving up on a corrupt stream is no proof, and
                // the heartbeats decide as for any silence.
                if peer_hung_up {
                    self.queue.push_back(Input::PeerConnectionClosed { peer });
                }
            }
            ReceiverEvent::Refused { from, reason } => {
                tracing::warn!(%from, %reason, "sync connection refused");
            }
            ReceiverEvent::ConfigUpdated { name, path } => {
                tracing::info!(%name, path = %path.display(), "config file updated by the active");
                self.shared.config_changed.notify_one();
            }
            ReceiverEvent::Journal { ack, .. } => {
                // Upgrade journals are another issue; say so rather than
                // leave the active waiting.
                let _ = ack.send(Err("this agent does not keep an upgrade journal yet".into()));
            }
        }
    }

    /// An active's data is the reference: it takes no replication from
    /// another active (a split brain resolves first), nor while its
    /// service still runs here.
    fn update_serving(&self) {
        if self.shared.settings.data_sync != DataSync::Off {
            self.shared
                .receiver
                .set_serving(self.active || self.service_alive);
        }
    }

    /// Tells the core whether this node's data is in sync, and keeps the
    /// stale marker on disk in step: a node that restarts while behind
    /// (its peer took mail meanwhile) must come back stale, not fresh.
    fn tell_core(&mut self, in_sync: bool) {
        // The marker mirrors the raw state: written or removed only when
        // it changes, not at every step of an active node.
        if self.marked_stale != in_sync {
            return self.tell_core_unmarked(in_sync);
        }
        self.marked_stale = !in_sync;
        let marker = self.shared.stale_marker();
        let written = if in_sync {
            std::fs::remove_file(&marker).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })
        } else {
            tandem_sync::store::write_atomic(
                &marker,
                b"this node's data is behind the active's until it is caught up\n",
                0o644,
            )
            .map_err(std::io::Error::other)
        };
        if let Err(e) = written {
            tracing::warn!(marker = %marker.display(), error = %e, "cannot update the stale marker");
        }
        self.tell_core_unmarked(in_sync);
    }

    fn tell_core_unmarked(&mut self, in_sync: bool) {
        let in_sync = in_sync || self.shared.settings.allow_stale_takeover;
        if in_sync != self.in_sync {
            self.in_sync = in_sync;
            self.shared.state().data_in_sync = in_sync;
            self.queue.push_back(Input::DataSync { in_sync });
        }
    }
}

/// The largest file a peer may merge into this node (a quarantined spool
/// file is one message).
const MAX_MERGED_FILE: usize = 256 << 20;

fn start_replicator(shared: &Shared) -> Result<Replicator, tandem_sync::Error> {
    let settings = &shared.settings;
    let mut config = ReplicatorConfig::new(
        shared.identity.clone(),
        settings.data_dir.clone(),
        shared.peers.clone(),
    );
    config.data_sync = settings.data_sync;
    config.sync_mode = settings.sync_mode;
    config.sync_timeout = settings.sync_timeout;
    config.config_files = settings.config.clone();
    config.unreplicated = Some(shared.unreplicated.clone());
    config.keepalive = Some(shared.keepalive);
    config.heard = Some(shared.heard.clone());
    config.fencing = shared.fencing.clone();
    config.degrade_gate = shared.degrade_gate.clone();
    Replicator::start(config)
}
