//! Config sync: the files under `[sync] config` stay the same on every node
//! (FortiMail's config sync, seed 000; ESA's cluster config, seed 002).
//!
//! The active node owns the cluster's config. It pushes each file over the
//! sync channel the moment it changes (inotify, through `notify`) and all
//! of them every `config_sync_interval`, so a node that missed a push
//! catches up without anyone noticing. A standby installs what it gets at
//! the path its own `[sync] config` lists under that file name, so each
//! node keeps its files where its service reads them; node-local settings
//! (the agent's own config, `[node]`) are never in that list.
//!
//! **The reference copy.** Every node keeps, under `config_dir`, the last
//! content the cluster agreed on for each file: written by the receiver on
//! a push, and by the active once it has pushed. A file that differs from
//! its reference copy is a *change*, whoever made it:
//! - on the active, a change is pushed — unless some node is disconnected
//!   from cluster config for an upgrade (ESA's rule: changes are refused
//!   cluster-wide until every node reconnects). Then it is held, with a
//!   warning saying how to go on, until the lock lifts or an operator
//!   pushes with `--force`;
//! - on a standby, a change is refused: the agent puts the reference copy
//!   back and logs a warning naming the primary, where the change belongs.
//!   A standby disconnected from cluster config keeps its own edits (that
//!   is what disconnecting is for); it takes the cluster's config again
//!   when it reconnects.
//!
//! A file edited by hand cannot be refused before it is written; the API
//! can: `PUT /v1/config/NAME` (`tandem config put`) answers 409 on a
//! standby, naming the primary, and 423 while a node is disconnected.
//!
//! Every comparison is by content, so the agent's own writes (which the
//! watcher also sees) settle after one pass instead of looping.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use notify::Watcher;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tandem_sync::replicator::Replicator;
use tandem_sync::store::{hex, write_atomic};
use tokio::sync::mpsc;

use super::Shared;
use crate::api::{
    ClusterConfigFile, ClusterConfigReport, ConfigLink, ConfigLocked, ConfigPushOutcome,
    ConfigPushReport, ConfigPushResult, ConfigSyncStatus, PeerConfigLink,
};
use crate::server::error_answer;

/// What config sync has done, for status and the log.
#[derive(Debug, Default, Clone)]
pub(super) struct ConfigSyncState {
    /// Changes on the active not pushed because a node is disconnected:
    /// file name → why.
    held: BTreeMap<String, String>,
    /// Local edits a standby refused (and undid).
    refused_local_edits: u64,
    /// The last such refusal, as logged.
    last_refused: Option<String>,
    /// When the active last pushed (Unix ms).
    last_push_unix_ms: Option<u64>,
    /// Peers that did not take the last push, and why.
    last_push_errors: Vec<String>,
}

/// Starts watching the config files and the periodic push. Does nothing
/// when `[sync] config` is empty.
pub(super) fn start(shared: Arc<Shared>) {
    if shared.settings.config.is_empty() {
        return;
    }
    let (changed_tx, changed) = mpsc::channel(1);
    let watcher = match watch(&shared.settings.config, changed_tx) {
        Ok(watcher) => Some(watcher),
        Err(e) => {
            // The periodic pass still catches every change, only later.
            tracing::warn!(error = %e, "cannot watch the config files; changes are noticed every config_sync_interval only");
            None
        }
    };
    tokio::spawn(async move {
        let _watcher = watcher;
        run(shared, changed).await;
    });
}

/// Watches the directories of the config files (editors replace a file by
/// renaming a new one over it, which a watch on the file itself would
/// miss) and signals when one of the files is touched.
fn watch(
    files: &[PathBuf],
    changed: mpsc::Sender<()>,
) -> Result<notify::RecommendedWatcher, notify::Error> {
    let wanted: Vec<PathBuf> = files.to_vec();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.paths.iter().any(|p| wanted.contains(p)) {
            // A full channel already holds a wake-up: one pass reads all.
            let _ = changed.try_send(());
        }
    })?;
    let mut dirs: Vec<&Path> = files.iter().filter_map(|f| f.parent()).collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}

async fn run(shared: Arc<Shared>, mut changed: mpsc::Receiver<()>) {
    let mut every = tokio::time::interval(shared.settings.config_sync_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let periodic = tokio::select! {
            _ = every.tick() => true,
            Some(()) = changed.recv() => {
                // An editor's save is several events; let them settle.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while changed.try_recv().is_ok() {}
                false
            }
        };
        match shared.replicator() {
            Some(replicator) => {
                push(&shared, &replicator, periodic, false).await;
            }
            None => refuse_local_edits(&shared).await,
        }
    }
}

/// One config file as this node has it now.
struct ConfigFile {
    name: String,
    path: PathBuf,
    /// `None`: the file does not exist (or cannot be read).
    content: Option<Vec<u8>>,
    mode: u32,
    /// The cluster's agreed content; `None` before the first push.
    reference: Option<Vec<u8>>,
}

impl ConfigFile {
    fn changed(&self) -> bool {
        self.reference.is_some() && self.content != self.reference
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// Permission bits, kept across a push; 0644 for a file not there yet.
async fn file_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    tokio::fs::metadata(path)
        .await
        .map_or(0o644, |m| m.permissions().mode() & 0o777)
}

fn sha256(content: &[u8]) -> String {
    hex(&Sha256::digest(content))
}

/// Reads every config file and its reference copy. Callers hold the
/// receiver's config guard meanwhile: a push landing between the two reads
/// would make the old content look like a local edit, and be pushed back
/// or restored over the new.
async fn read_files(shared: &Shared) -> Vec<ConfigFile> {
    let mut files = Vec::new();
    for path in &shared.settings.config {
        let name = file_name(path);
        let content = tokio::fs::read(path).await.ok();
        let mode = file_mode(path).await;
        let reference = tokio::fs::read(shared.settings.config_dir.join(&name))
            .await
            .ok();
        files.push(ConfigFile {
            name,
            path: path.clone(),
            content,
            mode,
            reference,
        });
    }
    files
}

/// The active's pass: pushes what changed (or everything, when
/// `periodic`), holding changes while a node is disconnected unless
/// `force`. Returns one outcome per file pushed or held.
pub(super) async fn push(
    shared: &Shared,
    replicator: &Replicator,
    periodic: bool,
    force: bool,
) -> Vec<ConfigPushOutcome> {
    let files = {
        let _pushes_wait = shared.receiver.config_guard().await;
        read_files(shared).await
    };
    let any_change = files.iter().any(ConfigFile::changed);
    let blockers = if any_change && !force {
        disconnected_nodes(shared).await
    } else {
        Vec::new()
    };
    let mut outcomes = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        let Some(content) = &file.content else {
            continue;
        };
        let changed = file.changed();
        // A file never pushed is the cluster's starting config, not a change.
        let first = file.reference.is_none();
        if changed && !blockers.is_empty() {
            let why = format!(
                "{} is disconnected from cluster config (an upgrade is under way): cluster config changes are refused until every node reconnects; revert the edit, or push it anyway with `tandem config push --force`",
                blockers.join(", ")
            );
            let mut state = shared.config_state();
            if state.held.get(&file.name) != Some(&why) {
                tracing::warn!(file = %file.path.display(), reason = %why, "config change held, not pushed");
                state.held.insert(file.name.clone(), why.clone());
            }
            outcomes.push(ConfigPushOutcome {
                file: file.name,
                result: ConfigPushResult::Held { held: why },
            });
            continue;
        }
        if !(periodic || changed || first) {
            continue;
        }
        let peers = match replicator.push_config(&file.name, content, file.mode).await {
            Ok(peers) => peers,
            Err(e) => {
                errors.push(format!("{}: {e}", file.name));
                outcomes.push(ConfigPushOutcome {
                    file: file.name,
                    result: ConfigPushResult::Failed {
                        error: e.to_string(),
                    },
                });
                continue;
            }
        };
        for peer in &peers {
            if let Some(error) = &peer.error {
                errors.push(format!("{}: {}: {error}", file.name, peer.peer));
            }
        }
        // Now the cluster's config, whichever peers took it: the others
        // get it at the next periodic push.
        let reference = shared.settings.config_dir.join(&file.name);
        if file.reference.as_ref() != Some(content)
            && let Err(e) = write_atomic(&reference, content, file.mode)
        {
            tracing::warn!(error = %e, "cannot keep the reference copy of a config file");
        }
        if changed {
            tracing::info!(file = %file.path.display(), sha256 = %sha256(content), "config change pushed to the cluster");
            // Changed here too, so this node's service is told as well.
            shared.config_changed.notify_one();
        }
        shared.config_state().held.remove(&file.name);
        outcomes.push(ConfigPushOutcome {
            result: ConfigPushResult::Pushed {
                sha256: sha256(content),
                peers,
            },
            file: file.name,
        });
    }
    let mut state = shared.config_state();
    state.last_push_unix_ms = Some(crate::upgrade::now_ms());
    state.last_push_errors = errors;
    outcomes
}

/// The standby's pass: a config file that differs from the cluster's copy
/// was edited here; put the cluster's copy back and say where edits go.
async fn refuse_local_edits(shared: &Shared) {
    if super::config_disconnected(shared) {
        return;
    }
    let _pushes_wait = shared.receiver.config_guard().await;
    for file in read_files(shared).await {
        let Some(reference) = &file.reference else {
            continue;
        };
        if file.content.as_ref() == Some(reference) {
            continue;
        }
        let primary = primary(shared);
        let message = format!(
            "config change to {} refused: {} is a standby, and cluster config is changed on the primary ({primary}); the primary's copy is back in place",
            file.path.display(),
            shared.node,
        );
        tracing::warn!(file = %file.path.display(), %primary, "{message}");
        if let Err(e) = write_atomic(&file.path, reference, file.mode) {
            tracing::error!(error = %e, "cannot restore the cluster's copy of a config file");
            continue;
        }
        // A service that read the edit (every node serves in multi-active
        // modes) must read the cluster's copy again.
        shared.config_changed.notify_one();
        let mut state = shared.config_state();
        state.refused_local_edits += 1;
        state.last_refused = Some(message);
    }
}

/// "node-a, API at 127.0.0.1:9101", or a note that none is known.
fn primary(shared: &Shared) -> String {
    match shared.active_peer() {
        Some((name, Some(api))) => format!("{name}, API at {api}"),
        Some((name, None)) => name,
        None => "no primary is known right now".into(),
    }
}

/// The nodes disconnected from cluster config: this one by its flag file,
/// the peers as their status says. A peer that cannot be asked is not
/// counted: it is away, not disconnected, and takes the config when back.
async fn disconnected_nodes(shared: &Shared) -> Vec<String> {
    let mut nodes = Vec::new();
    if super::config_disconnected(shared) {
        nodes.push(shared.node.clone());
    }
    for (name, api) in &shared.peer_apis {
        let Ok(status) = shared
            .api
            .at(*api)
            .get::<PeerConfigLink>("/v1/status")
            .await
        else {
            continue;
        };
        if status.agent.config_link == ConfigLink::Disconnected {
            nodes.push(name.clone());
        }
    }
    nodes
}

/// The `config` part of the sync status.
pub(super) fn status(shared: &Shared) -> ConfigSyncStatus {
    let state = shared.config_state().clone();
    ConfigSyncStatus {
        files: shared.settings.config.clone(),
        interval_ms: shared.settings.config_sync_interval.as_millis() as u64,
        disconnected: super::config_disconnected(shared),
        held: state.held,
        refused_local_edits: state.refused_local_edits,
        last_refused: state.last_refused,
        last_push_unix_ms: state.last_push_unix_ms,
        last_push_errors: state.last_push_errors,
    }
}

// ------------------------------------------------------------------ routes

/// `GET /v1/config`, `PUT /v1/config/NAME`, `POST /v1/config/push`.
pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1/config", get(list))
        .route("/v1/config/push", post(push_now))
        .route("/v1/config/{name}", axum::routing::put(put_file))
}

/// `?force=true` overrides the lock of a disconnected node.
#[derive(Debug, Default, Deserialize)]
struct Force {
    #[serde(default)]
    force: bool,
}

/// 409 for a change asked of a standby: names the primary.
fn not_primary(shared: &Shared) -> Response {
    error_answer(
        StatusCode::CONFLICT,
        format!(
            "{} is a standby: cluster config is changed on the primary ({}), which pushes it to every node",
            shared.node,
            primary(shared)
        ),
    )
}

async fn list(State(shared): State<Arc<Shared>>) -> Response {
    let files = read_files(&shared)
        .await
        .into_iter()
        .map(|f| ClusterConfigFile {
            sha256: f.content.as_deref().map(sha256),
            agreed_sha256: f.reference.as_deref().map(sha256),
            changed: f.changed(),
            name: f.name,
            path: f.path,
        })
        .collect();
    Json(ClusterConfigReport {
        node: shared.node.clone(),
        files,
        sync: status(&shared),
    })
    .into_response()
}

/// Pushes every config file now; with `force`, held changes too.
async fn push_now(State(shared): State<Arc<Shared>>, Query(force): Query<Force>) -> Response {
    let Some(replicator) = shared.replicator() else {
        return not_primary(&shared);
    };
    let outcomes = push(&shared, &replicator, true, force.force).await;
    Json(ConfigPushReport { pushed: outcomes }).into_response()
}

/// A cluster config change through the API: refused on a standby (naming
/// the primary) and while a node is disconnected (unless `force`);
/// otherwise written here and pushed at once.
async fn put_file(
    State(shared): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
    Query(force): Query<Force>,
    body: axum::body::Bytes,
) -> Response {
    let Some(path) = shared
        .settings
        .config
        .iter()
        .find(|p| file_name(p) == name)
        .cloned()
    else {
        let names: Vec<String> = shared
            .settings
            .config
            .iter()
            .map(|p| file_name(p))
            .collect();
        return error_answer(
            StatusCode::NOT_FOUND,
            format!(
                "{name} is not a cluster config file of {} (its [sync] config lists: {})",
                shared.node,
                if names.is_empty() {
                    "nothing".into()
                } else {
                    names.join(", ")
                }
            ),
        );
    };
    let Some(replicator) = shared.replicator() else {
        return not_primary(&shared);
    };
    if !force.force {
        let blockers = disconnected_nodes(&shared).await;
        if !blockers.is_empty() {
            let locked = ConfigLocked {
                error: format!(
                    "cluster config changes are refused while {} is disconnected from cluster config (an upgrade is under way); retry once every node has reconnected, or use --force to change the connected nodes now",
                    blockers.join(", ")
                ),
                disconnected: blockers,
            };
            return (StatusCode::LOCKED, Json(locked)).into_response();
        }
    }
    let mode = file_mode(&path).await;
    let content = body.to_vec();
    let written = {
        let path = path.clone();
        let content = content.clone();
        tokio::task::spawn_blocking(move || write_atomic(&path, &content, mode))
            .await
            .map_err(|e| e.to_string())
            .and_then(|done| done.map_err(|e| e.to_string()))
    };
    if let Err(error) = written {
        return error_answer(StatusCode::INTERNAL_SERVER_ERROR, error);
    }
    tracing::info!(file = %path.display(), force = force.force, "config change made through the API");
    let outcomes = push(&shared, &replicator, false, true).await;
    let outcome = outcomes
        .into_iter()
        .find(|o| o.file == name)
        .unwrap_or_else(|| ConfigPushOutcome {
            result: ConfigPushResult::Pushed {
                sha256: sha256(&content),
                peers: Vec::new(),
            },
            file: name,
        });
    Json(outcome).into_response()
}
