//! Catch-up and resync of one standby: compare manifests (path, size,
//! SHA-256), send what differs — everything, for a resync — and delete what
//! the active no longer has, in bounded chunks with progress. Every
//! (re)connection starts with one, which is what lets a peer that was away
//! keep no backlog and still become `InSync`; it runs on the peer's task,
//! over its connection.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use super::config::DataSync;
use super::peer::{Peer, fetch_manifest, net_error, read_ops, request, send_batch};
use super::{ProgressFn, Shared};
use crate::blocking;
use crate::frame::{ManifestSet, Message, write_frame};
use crate::store::{ManifestEntry, Op};
use crate::tls::Channel;
use crate::{Progress, Result};

/// Catch-up (`full = false`) or resync (`full = true`): compare manifests,
/// send what differs (everything, for a resync), delete what this node does
/// not have. Files are read at send time, so a file changed meanwhile goes
/// in its newest state.
pub(super) async fn sync_peer(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    channel: &mut Channel,
    seq: &mut u64,
    full: bool,
    callback: Option<ProgressFn>,
) -> Result<Progress> {
    // Whatever the peer missed so far is covered by the manifests taken
    // below; only changes after this point need to stay dirty.
    peer.lock().dirty.clear();
    // `off`: the data stays on the node that wrote it (in multi-active
    // modes every node serves its own, and a catch-up would delete the
    // peer's). The empty catch-up still tells the peer it is in sync.
    let (remote, local) = if shared.config.data_sync == DataSync::Off {
        (Vec::new(), Vec::new())
    } else {
        let remote = fetch_manifest(shared, channel, seq, ManifestSet::Data).await?;
        let data = shared.data.clone();
        (remote, blocking(move || data.manifest()).await?)
    };
    // What this node recorded as never seen by the peer, read before the
    // local manifest: once this catch-up ends, the peer has each of these
    // files (or deleted it with this node), so they leave the record —
    // else the peer's next catch-up of this node would quarantine files
    // both have, and their merge would deliver them twice.
    let recorded = match (&shared.config.unreplicated, shared.config.data_sync) {
        (Some(record), DataSync::Semi | DataSync::Async) => {
            let record = record.clone();
            let name = peer.name.clone();
            Some((record.clone(), blocking(move || record.paths(&name)).await?))
        }
        _ => None,
    };

    let remote_by_path: BTreeMap<&str, &ManifestEntry> =
        remote.iter().map(|e| (e.path.as_str(), e)).collect();
    let local_paths: BTreeSet<&str> = local.iter().map(|e| e.path.as_str()).collect();
    let to_put: Vec<&ManifestEntry> = local
        .iter()
        .filter(|entry| full || remote_by_path.get(entry.path.as_str()) != Some(entry))
        .collect();
    let to_delete: Vec<String> = remote
        .iter()
        .filter(|entry| !local_paths.contains(entry.path.as_str()))
        .map(|entry| entry.path.clone())
        .collect();

    let mut progress = Progress {
        peer: peer.name.clone(),
        files_total: (to_put.len() + to_delete.len()) as u64,
        bytes_total: to_put.iter().map(|e| e.size).sum(),
        ..Progress::default()
    };
    let report = |progress: &Progress| {
        peer.lock().progress = Some(progress.clone());
        if let Some(callback) = &callback {
            callback(progress);
        }
    };
    report(&progress);
    write_frame(
        &mut channel.stream,
        &Message::CatchUpBegin {
            files: progress.files_total,
            bytes: progress.bytes_total,
            full,
        },
        b"",
    )
    .await
    .map_err(net_error(channel.peer.clone()))?;

    // Chunks of at most 256 files or 4 MiB: one ack per chunk keeps the
    // standby's memory bounded and the progress bar moving.
    let mut chunks: Vec<Vec<String>> = Vec::new();
    let mut chunk: Vec<String> = Vec::new();
    let mut chunk_bytes = 0u64;
    for entry in &to_put {
        if !chunk.is_empty() && (chunk.len() >= 256 || chunk_bytes + entry.size > 4 << 20) {
            chunks.push(std::mem::take(&mut chunk));
            chunk_bytes = 0;
        }
        chunk_bytes += entry.size;
        chunk.push(entry.path.clone());
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks.extend(to_delete.chunks(1024).map(<[String]>::to_vec));

    for paths in chunks {
        let count = paths.len() as u64;
        let ops = read_ops(shared, paths).await?;
        send_batch(shared, peer, channel, seq, &ops).await?;
        progress.files_done += count;
        progress.bytes_done += ops.iter().map(Op::bytes).sum::<u64>();
        report(&progress);
    }
    *seq += 1;
    request(
        shared,
        channel,
        *seq,
        &Message::CatchUpEnd { seq: *seq },
        b"",
    )
    .await?;
    {
        let mut inner = peer.lock();
        let now = SystemTime::now();
        inner.last_sync = Some(now);
        if full {
            inner.last_full_sync = Some(now);
        }
    }
    if let Some((record, seen)) = recorded.filter(|(_, seen)| !seen.is_empty()) {
        let name = peer.name.clone();
        if let Err(e) = blocking(move || record.forget(&name, &seen)).await {
            // Kept: at worst a duplicate delivery later, never a loss.
            tracing::warn!(peer = %peer.name, error = %e, "cannot update the unreplicated record");
        }
    }
    tracing::info!(
        peer = %peer.name,
        full,
        files = progress.files_done,
        bytes = progress.bytes_done,
        "standby caught up"
    );
    Ok(progress)
}
