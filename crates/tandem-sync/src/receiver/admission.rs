//! Who may replicate to this node, decided after TLS and before the
//! welcome: nobody while it serves (two actives must not overwrite each
//! other), and a peer only once the files its catch-up would delete, that
//! this node acknowledged and the peer never saw, are in quarantine
//! ([`crate::quarantine`]). Also the end of an open connection when this
//! node starts serving.

use std::sync::Arc;

use tokio::sync::watch;

use super::{ReceiverEvent, Shared, materialize};
use crate::blocking;
use crate::quarantine::quarantine_unreplicated;

/// Decides whether `peer` may replicate to this node: not while it
/// serves; and only once the files it would delete that this node
/// acknowledged and it never saw are in quarantine. `Err` is the reason
/// given to the peer.
pub(super) async fn admit(shared: &Arc<Shared>, peer: &str) -> std::result::Result<(), String> {
    if *shared.serving.borrow() {
        return Err(shared.serving_refusal(peer));
    }
    let (Some(record), Some(dir)) = (&shared.config.unreplicated, &shared.config.quarantine_dir)
    else {
        return Ok(());
    };
    let node = shared.config.identity.node().to_string();
    let put_aside = async {
        let _quarantining = shared.quarantining.lock().await;
        // Checked again under the lock: the service may have started while
        // we waited, and it must not see files leave.
        if *shared.serving.borrow() {
            return Ok(Err(shared.serving_refusal(peer)));
        }
        // The record's files may still be in the standby log.
        materialize(shared).await?;
        let (data, record, dir, from) = (
            shared.data.clone(),
            record.clone(),
            dir.clone(),
            peer.to_string(),
        );
        blocking(move || quarantine_unreplicated(&data, &record, &dir, &from))
            .await
            .map(Ok)
    };
    // The lock is released before the event is sent: the agent reading
    // events may be waiting for it in `checkpoint`.
    match put_aside.await {
        Ok(Err(refusal)) => Err(refusal),
        Ok(Ok(None)) => Ok(()),
        Ok(Ok(Some(batch))) => {
            tracing::warn!(
                %peer,
                id = %batch.id,
                files = batch.files,
                bytes = batch.bytes,
                dir = %dir.join(&batch.id).display(),
                "files this node acknowledged that the connecting active never saw were moved to \
                 quarantine before its catch-up, not deleted (`tandem sync quarantine list`)"
            );
            shared
                .event(ReceiverEvent::Quarantined {
                    peer: peer.to_string(),
                    id: batch.id,
                    files: batch.files,
                })
                .await;
            Ok(())
        }
        Err(e) => {
            tracing::error!(%peer, error = %e, "cannot quarantine the files only this node has");
            Err(format!(
                "{node} cannot move aside the files it acknowledged that {peer} never saw ({e}), \
                 so it takes no catch-up that would delete them; fix that on {node}"
            ))
        }
    }
}

/// Completes when this node starts serving.
pub(super) async fn until_serving(serving: &mut watch::Receiver<bool>) {
    if serving.wait_for(|&serving| serving).await.is_err() {
        // The receiver is going away: nothing will ever say so.
        std::future::pending::<()>().await;
    }
}
