//! The leader keys: the core's requests to take (create-if-absent, or a
//! compare-and-swap from a holder whose death is proven) and to release a
//! group's key, each answered with the key as the request left it.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse};
use tandem_core::{GroupId, LeaderKey, StoreRequest};
use tokio::sync::{mpsc, watch};

use super::{Keys, StoreNews, holder_of, revision};

/// Carries out the core's requests, one at a time, and reports the leader
/// key each one leaves.
///
/// Each call is bounded by `limit`: an etcd member that stops answering
/// without closing its connection (stopped, or cut off) would otherwise
/// hold every later request behind it. A request that timed out may still
/// have been carried out; the leader watch reports the key either way,
/// and the core asks again if it still wants it. Requests that queued up
/// meanwhile are merged, the latest per group kept, so that a slow etcd
/// is not answered a backlog of stale asks.
pub(super) async fn serve_requests(
    mut client: Client,
    keys: Keys,
    lease: watch::Receiver<Option<i64>>,
    mut requests: mpsc::UnboundedReceiver<StoreRequest>,
    news: mpsc::Sender<StoreNews>,
    limit: Duration,
) {
    while let Some(first) = requests.recv().await {
        let mut latest: BTreeMap<GroupId, StoreRequest> = BTreeMap::new();
        latest.insert(group_of(&first), first);
        while let Ok(more) = requests.try_recv() {
            latest.insert(group_of(&more), more);
        }
        for request in latest.into_values() {
            let Some(id) = *lease.borrow() else {
                tracing::warn!(
                    ?request,
                    "etcd: no session yet; the request waits for the next one"
                );
                continue;
            };
            let call = async {
                match &request {
                    StoreRequest::Acquire { group, evict } => {
                        acquire(&mut client, &keys, id, *group, evict.as_deref()).await
                    }
                    StoreRequest::Release { group } => {
                        release(&mut client, &keys, id, *group).await
                    }
                }
            };
            match tokio::time::timeout(limit, call).await {
                Ok(Ok(report)) => {
                    if news.send(report).await.is_err() {
                        return;
                    }
                }
                Ok(Err(e)) => tracing::warn!(?request, error = %e, "etcd: request failed"),
                Err(_) => tracing::warn!(
                    ?request,
                    "etcd: no answer within {limit:?}; the core asks again if it still wants to"
                ),
            }
        }
    }
}

fn group_of(request: &StoreRequest) -> GroupId {
    match request {
        StoreRequest::Acquire { group, .. } | StoreRequest::Release { group } => *group,
    }
}

pub(super) fn own_value(keys: &Keys, lease: i64) -> String {
    serde_json::json!({ "node": keys.node, "session": u64::try_from(lease).unwrap_or(0) })
        .to_string()
}

/// Create-if-absent; when `evict` holds the key, take it over from that
/// very version of it (compare-and-swap on its mod revision), so that a
/// newer write by anyone makes the swap fail rather than be overwritten.
async fn acquire(
    client: &mut Client,
    keys: &Keys,
    lease: i64,
    group: GroupId,
    evict: Option<&str>,
) -> Result<StoreNews, etcd_client::Error> {
    let (first, seen) = create_if_absent(client, keys, lease, group).await?;
    let StoreNews::Leader {
        holder: Some(holder),
        ..
    } = &first
    else {
        return Ok(first);
    };
    let own = u64::try_from(lease).unwrap_or(0);
    if Some(holder.node.as_str()) != evict || holder.session == own || holder.session == 0 {
        return Ok(first);
    }
    tracing::info!(group = group.0, ?holder, "etcd: taking the leader key over");
    let key = keys.leader(group);
    let txn = Txn::new()
        .when([Compare::mod_revision(key.clone(), CompareOp::Equal, seen)])
        .and_then([TxnOp::put(
            key.clone(),
            own_value(keys, lease),
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(key, None)]);
    Ok(leader_after(client.txn(txn).await?, keys, lease, group))
}

/// One create-if-absent transaction: the key as it leaves it, and the mod
/// revision it had when it was already there.
async fn create_if_absent(
    client: &mut Client,
    keys: &Keys,
    lease: i64,
    group: GroupId,
) -> Result<(StoreNews, i64), etcd_client::Error> {
    let key = keys.leader(group);
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key.clone(),
            own_value(keys, lease),
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(key, None)]);
    let answer = client.txn(txn).await?;
    let seen = current(&answer).map_or(0, |kv| kv.mod_revision());
    Ok((leader_after(answer, keys, lease, group), seen))
}

/// The key a transaction found, when its comparison failed.
fn current(answer: &etcd_client::TxnResponse) -> Option<KeyValue> {
    if answer.succeeded() {
        return None;
    }
    answer.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(get) => get.kvs().first().cloned(),
        _ => None,
    })
}

/// The leader key as a write-or-read transaction leaves it: ours at the
/// transaction's revision when it succeeded, else what it read.
fn leader_after(
    answer: etcd_client::TxnResponse,
    keys: &Keys,
    lease: i64,
    group: GroupId,
) -> StoreNews {
    let at = revision(answer.header());
    let holder = if answer.succeeded() {
        Some(LeaderKey {
            node: keys.node.clone(),
            session: u64::try_from(lease).unwrap_or(0),
            epoch: at,
        })
    } else {
        current(&answer).as_ref().map(holder_of)
    };
    StoreNews::Leader {
        group,
        revision: at,
        holder,
    }
}

/// Deletes the leader key if this session wrote it.
async fn release(
    client: &mut Client,
    keys: &Keys,
    lease: i64,
    group: GroupId,
) -> Result<StoreNews, etcd_client::Error> {
    let key = keys.leader(group);
    let txn = Txn::new()
        .when([Compare::value(
            key.clone(),
            CompareOp::Equal,
            own_value(keys, lease),
        )])
        .and_then([TxnOp::delete(key.clone(), None)])
        .or_else([TxnOp::get(key, None)]);
    let answer = client.txn(txn).await?;
    Ok(StoreNews::Leader {
        group,
        revision: revision(answer.header()),
        holder: current(&answer).as_ref().map(holder_of),
    })
}
