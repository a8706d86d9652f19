//! The etcd adapter (`coordination = "etcd"`): carries the core's
//! [`StoreRequest`]s to etcd and etcd's answers back as [`StoreNews`].
//! The rules stay in `tandem_core::node` (its `store` module); this
//! module only speaks etcd, the way Patroni's `dcs/etcd3.py` does:
//!
//! - **Session:** one lease per agent run, granted at start and kept alive
//!   every eighth of the TTL. Each renewal that etcd confirms tells the core the
//!   session is surely alive until the renewal's *send* time plus the TTL
//!   minus a quarter TTL: etcd counts its TTL from when it received the
//!   renewal, so the node gives up first. A renewal etcd refuses (the
//!   lease expired) is [`StoreNews::Lost`], and a new lease is granted.
//! - **Keys** under the prefix: `leader/GROUP` (JSON `{node, session}`,
//!   attached to the holder's lease; its mod revision is the group's
//!   fencing epoch) and `members/NODE` (this node's name, version, role and
//!   data state, on its lease, rewritten when one of them changes).
//! - **Take over:** a transaction that writes `leader/GROUP` only if it
//!   does not exist (`create_revision == 0`), else reads it. With `evict`
//!   and the key held by that node (its death is proven, or it handed the
//!   group over), a second transaction swaps the key to this node only if
//!   it is still the version just read: the old holder's session stays
//!   (a planned handover costs it nothing) and the key moves atomically.
//! - **Watch:** a linearizable read of every leader key, then a watch from
//!   the next revision; on any error, both again. A key tandem did not
//!   write is reported as held by nobody tandem knows, so nobody serves
//!   until an operator removes it, and the log says how.
//!
//! Every etcd call is bounded (the client's own timeout did not end a call
//! to a member stopped with SIGSTOP: `tandem chaos`, seed 1, held a
//! takeover for 35 s), so a dead or partitioned etcd shows up as renewals
//! that do not come back, which is what fences, and a member that goes
//! silent is left for another: a renewal stream, a request or a watch
//! that hears nothing is opened again, and the client may place it on
//! another member.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, Txn,
    TxnOp, WatchOptions,
};
use serde::{Deserialize, Serialize};
use tandem_core::{GroupId, LeaderKey, StoreRequest};
use tandem_sync::replicator::DegradeGate;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::Error;
use crate::config::EtcdSettings;

mod leader;

use leader::own_value;

/// How long a write of the `sync` key may take: a degraded commit waits
/// on it, and a standby that cannot be dropped from `sync` in time keeps
/// the commit failing rather than acknowledged without it.
const WRITE_LIMIT: Duration = Duration::from_secs(1);

/// What etcd said, for the driver to hand to the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreNews {
    /// The session is surely alive until `valid_until`.
    Renewed {
        /// The lease id.
        session: u64,
        /// Until then.
        valid_until: Instant,
    },
    /// The lease is gone (expired or revoked).
    Lost,
    /// The `sync` key, as of `revision`: the leader and the standbys in
    /// sync with it (`None`: no key).
    Sync {
        /// The store revision of this report.
        revision: u64,
        /// Its members.
        members: Option<Vec<String>>,
    },
    /// A leader key, as of `revision`.
    Leader {
        /// The group.
        group: GroupId,
        /// The store revision of this report.
        revision: u64,
        /// Its holder, if any.
        holder: Option<LeaderKey>,
    },
}

/// The driver's ends of the adapter.
pub struct StoreLink {
    /// What etcd said.
    pub news: mpsc::Receiver<StoreNews>,
    /// What the core asks.
    pub requests: mpsc::UnboundedSender<StoreRequest>,
    /// What `members/NODE` says of this node.
    pub member: watch::Sender<MemberState>,
    /// The `sync` key, written while this node serves (`None` without etcd).
    pub sync_key: Option<Arc<SyncKey>>,
}

/// This node as its `members/NODE` key shows it (Patroni's member keys).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MemberState {
    /// Its effective role.
    pub role: String,
    /// Where its replicated data stands (`in-sync`, `behind`, ...).
    pub data: String,
}

impl StoreLink {
    /// No store (`coordination = "peers"`): nothing ever arrives.
    pub fn none() -> StoreLink {
        let (_, news) = mpsc::channel(1);
        let (requests, _) = mpsc::unbounded_channel();
        let (member, _) = watch::channel(MemberState::default());
        StoreLink {
            news,
            requests,
            member,
            sync_key: None,
        }
    }

    /// Records this node's role and data state for its member key.
    pub fn set_member(&self, state: MemberState) {
        self.member.send_if_modified(|now| {
            let changed = *now != state;
            *now = state;
            changed
        });
    }
}

/// The value of a leader key.
#[derive(Debug, Serialize, Deserialize)]
struct LeaderValue {
    node: String,
    session: u64,
}

/// The holder's name reported for a leader key tandem cannot read.
pub const UNREADABLE_HOLDER: &str = "(unreadable leader key)";

/// Connects to etcd, checks it answers, and starts the adapter's tasks.
/// An etcd that does not answer at start is an error naming its endpoints.
pub async fn start(
    settings: &EtcdSettings,
    node: &str,
    version: &str,
    groups: Vec<GroupId>,
) -> Result<StoreLink, Error> {
    let endpoints = settings.endpoints.join(", ");
    let fail = |message: String| Error::Etcd {
        endpoints: endpoints.clone(),
        message,
    };
    let mut options = ConnectOptions::new()
        .with_connect_timeout(settings.dial_timeout)
        .with_timeout(settings.ttl)
        .with_keep_alive(Duration::from_millis(500), settings.ttl)
        // A member cut from its quorum refuses rather than answers stale.
        .with_require_leader(true);
    if let Some(tls) = tls(settings).map_err(&fail)? {
        options = options.with_tls(tls);
    }
    let mut client = Client::connect(&settings.endpoints, Some(options))
        .await
        .map_err(|e| fail(format!("cannot connect: {e} ({})", hint(&e, settings))))?;
    client
        .status()
        .await
        .map_err(|e| fail(format!("does not answer: {e} ({})", hint(&e, settings))))?;
    let (news_tx, news) = mpsc::channel(64);
    let (requests, requests_rx) = mpsc::unbounded_channel();
    let (lease_tx, lease_rx) = watch::channel(None);
    let keys = Keys {
        prefix: settings.prefix.clone(),
        node: node.to_owned(),
    };
    let (member, member_rx) = watch::channel(MemberState::default());
    tokio::spawn(publish_member(
        client.clone(),
        keys.clone(),
        version.to_owned(),
        lease_rx.clone(),
        member_rx,
    ));
    tokio::spawn(keep_session(
        client.clone(),
        settings.ttl,
        news_tx.clone(),
        lease_tx,
    ));
    tokio::spawn(watch_leaders(
        client.clone(),
        keys.clone(),
        groups,
        news_tx.clone(),
        settings.ttl,
    ));
    let sync_key = Arc::new(SyncKey {
        client: client.clone(),
        keys: keys.clone(),
        lease: lease_rx.clone(),
        written: tokio::sync::Mutex::new(None),
        drops: AtomicU64::new(0),
    });
    tokio::spawn(leader::serve_requests(
        client,
        keys,
        lease_rx,
        requests_rx,
        news_tx,
        settings.ttl / 2,
    ));
    Ok(StoreLink {
        news,
        requests,
        member,
        sync_key: Some(sync_key),
    })
}

/// What to check, for an error at start: with TLS in play (an https://
/// endpoint, or a CA or certificate given), its settings first.
fn hint(e: &etcd_client::Error, settings: &EtcdSettings) -> &'static str {
    let text = e.to_string().to_ascii_lowercase();
    let tls = text.contains("tls")
        || text.contains("certificate")
        || settings.ca.is_some()
        || settings.cert.is_some()
        || settings.endpoints.iter().any(|e| e.starts_with("https://"));
    if tls {
        "check [etcd] ca, cert and key, and use https:// only where etcd serves TLS; then that etcd runs and a quorum of its members is up"
    } else {
        "check [etcd] endpoints, that etcd runs and is reachable from here, and that a quorum of its members is up"
    }
}

fn tls(settings: &EtcdSettings) -> Result<Option<etcd_client::TlsOptions>, String> {
    if settings.ca.is_none() && settings.cert.is_none() {
        return Ok(None);
    }
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let mut tls = etcd_client::TlsOptions::new();
    if let Some(ca) = &settings.ca {
        tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
    }
    if let (Some(cert), Some(key)) = (&settings.cert, &settings.key) {
        tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(tls))
}

/// Where this cluster's keys live.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
    node: String,
}

impl Keys {
    fn leader(&self, group: GroupId) -> String {
        format!("{}/leader/{}", self.prefix, group.0)
    }
    fn leaders(&self) -> String {
        format!("{}/leader/", self.prefix)
    }
    fn member(&self) -> String {
        format!("{}/members/{}", self.prefix, self.node)
    }
    fn sync(&self) -> String {
        format!("{}/sync", self.prefix)
    }
    fn all(&self) -> String {
        format!("{}/", self.prefix)
    }
    fn group_of(&self, key: &[u8]) -> Option<GroupId> {
        let key = std::str::from_utf8(key).ok()?;
        key.strip_prefix(&self.leaders())?.parse().ok().map(GroupId)
    }
}

/// The holder a leader key names, with its epoch (the key's mod revision).
fn holder_of(kv: &KeyValue) -> LeaderKey {
    let epoch = u64::try_from(kv.mod_revision()).unwrap_or(0);
    match serde_json::from_slice::<LeaderValue>(kv.value()) {
        Ok(v) => LeaderKey {
            node: v.node,
            session: v.session,
            epoch,
        },
        Err(_) => {
            let key = String::from_utf8_lossy(kv.key());
            tracing::error!(
                key = %key,
                value = %String::from_utf8_lossy(kv.value()),
                "the leader key holds a value tandem did not write: no node serves its group while it is there; remove it with `etcdctl del {key}`"
            );
            LeaderKey {
                node: UNREADABLE_HOLDER.into(),
                session: 0,
                epoch,
            }
        }
    }
}

fn revision(header: Option<&etcd_client::ResponseHeader>) -> u64 {
    header.map_or(0, |h| u64::try_from(h.revision()).unwrap_or(0))
}

/// Grants a lease and keeps it alive; reports each confirmed renewal.
async fn keep_session(
    mut client: Client,
    ttl: Duration,
    news: mpsc::Sender<StoreNews>,
    lease: watch::Sender<Option<i64>>,
) {
    // Renewing often keeps the good time close to a full TTL − margin
    // when etcd pauses (a new leader being elected).
    let every = ttl / 8;
    let margin = ttl / 4;
    // How long one call may go unanswered before the next is tried: two
    // renewal intervals, so that a silent member leaves time to renew
    // through another before the session's good time (TTL − margin) ends.
    let patience = every * 2;
    let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    loop {
        if news.is_closed() {
            return;
        }
        let sent_at = Instant::now();
        let granted = tokio::time::timeout(patience, client.lease_grant(ttl_secs, None)).await;
        let id = match granted {
            Ok(Ok(granted)) => granted.id(),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "etcd: cannot grant a session lease; retrying");
                tokio::time::sleep(every).await;
                continue;
            }
            Err(_) => {
                tracing::warn!("etcd: no answer to a session lease grant; retrying");
                tokio::time::sleep(every).await;
                continue;
            }
        };
        let session = u64::try_from(id).unwrap_or(0);
        let _ = lease.send(Some(id));
        let renewed = StoreNews::Renewed {
            session,
            valid_until: sent_at + ttl - margin,
        };
        if news.send(renewed).await.is_err() {
            return;
        }
        tracing::info!(session, "etcd session started");
        let Ok(Ok((mut keeper, mut answers))) =
            tokio::time::timeout(patience, client.lease_keep_alive(id)).await
        else {
            continue;
        };
        let mut again_at_once = false;
        loop {
            if !again_at_once {
                tokio::time::sleep(every).await;
            }
            let sent_at = Instant::now();
            let answer = async {
                keeper.keep_alive().await?;
                answers.message().await
            };
            again_at_once = false;
            let expired = match tokio::time::timeout(patience, answer).await {
                Ok(Ok(Some(a))) if a.ttl() > 0 => {
                    let renewed = StoreNews::Renewed {
                        session,
                        valid_until: sent_at + ttl - margin,
                    };
                    if news.send(renewed).await.is_err() {
                        return;
                    }
                    false
                }
                Ok(Ok(Some(_))) => true,
                Ok(Ok(None) | Err(_)) | Err(_) => {
                    // The stream broke, or its member went silent (stopped,
                    // or cut off, with the connection still open). Ask
                    // whether the lease still exists (after a partition it
                    // may have expired: every renewal on it then fails with
                    // "lease not found"), else open a new stream, which the
                    // client may place on another member, and renew on it
                    // at once. No renewal is reported meanwhile, so the core
                    // fences when its time runs out.
                    tracing::warn!(session, "etcd: no answer to a session renewal");
                    let left = tokio::time::timeout(patience, client.lease_time_to_live(id, None));
                    match left.await {
                        Ok(Ok(left)) if left.ttl() < 0 => true,
                        Ok(Err(e)) if e.to_string().contains("lease not found") => true,
                        _ => {
                            match tokio::time::timeout(patience, client.lease_keep_alive(id)).await
                            {
                                Ok(Ok((k, a))) => {
                                    (keeper, answers) = (k, a);
                                    again_at_once = true;
                                }
                                Ok(Err(e)) => {
                                    tracing::warn!(error = %e, "etcd: cannot renew the session")
                                }
                                Err(_) => {
                                    tracing::warn!("etcd: cannot renew the session: no answer")
                                }
                            }
                            false
                        }
                    }
                }
            };
            if expired {
                tracing::warn!(
                    session,
                    "etcd: the session lease expired; starting a new one"
                );
                let _ = lease.send(None);
                let _ = news.send(StoreNews::Lost).await;
                break;
            }
        }
    }
}

/// Writes `members/NODE` on the current session whenever the session or
/// this node's role or data state changes.
async fn publish_member(
    mut client: Client,
    keys: Keys,
    version: String,
    mut lease: watch::Receiver<Option<i64>>,
    mut member: watch::Receiver<MemberState>,
) {
    loop {
        let id = *lease.borrow_and_update();
        let state = member.borrow_and_update().clone();
        if let Some(id) = id {
            let value = serde_json::json!({
                "node": keys.node,
                "version": version,
                "session": u64::try_from(id).unwrap_or(0),
                "role": state.role,
                "data": state.data,
            });
            let put = client.put(
                keys.member(),
                value.to_string(),
                Some(PutOptions::new().with_lease(id)),
            );
            match tokio::time::timeout(WRITE_LIMIT, put).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "etcd: cannot write this node's member key")
                }
                Err(_) => tracing::warn!("etcd: cannot write this node's member key: no answer"),
            }
        }
        tokio::select! {
            changed = lease.changed() => if changed.is_err() { return },
            changed = member.changed() => if changed.is_err() { return },
        }
    }
}

/// Reports every leader key: a linearizable read, then a watch from the
/// next revision; both again after any error.
async fn watch_leaders(
    mut client: Client,
    keys: Keys,
    groups: Vec<GroupId>,
    news: mpsc::Sender<StoreNews>,
    quiet: Duration,
) {
    loop {
        if news.is_closed() {
            return;
        }
        if let Err(e) = read_then_watch(&mut client, &keys, &groups, &news, quiet).await {
            tracing::warn!(error = %e, "etcd: the leader watch ended; reading again");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn read_then_watch(
    client: &mut Client,
    keys: &Keys,
    groups: &[GroupId],
    news: &mpsc::Sender<StoreNews>,
    quiet: Duration,
) -> Result<(), String> {
    let read = tokio::time::timeout(
        quiet,
        client.get(keys.all(), Some(GetOptions::new().with_prefix())),
    )
    .await
    .map_err(|_| format!("no answer to a read within {quiet:?}"))?
    .map_err(|e| e.to_string())?;
    let at = revision(read.header());
    let sync = read
        .kvs()
        .iter()
        .find(|kv| kv.key() == keys.sync().as_bytes())
        .map(sync_members);
    let report = StoreNews::Sync {
        revision: at,
        members: sync,
    };
    if news.send(report).await.is_err() {
        return Ok(());
    }
    for group in groups {
        let holder = read
            .kvs()
            .iter()
            .find(|kv| keys.group_of(kv.key()) == Some(*group))
            .map(holder_of);
        let report = StoreNews::Leader {
            group: *group,
            revision: at,
            holder,
        };
        if news.send(report).await.is_err() {
            return Ok(());
        }
    }
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(i64::try_from(at + 1).unwrap_or(i64::MAX));
    let mut stream = tokio::time::timeout(quiet, client.watch(keys.all(), Some(options)))
        .await
        .map_err(|_| format!("no answer to a watch within {quiet:?}"))?
        .map_err(|e| e.to_string())?;
    // A member that goes silent (stopped, or cut off with its connection
    // open) ends no stream: after `quiet` without news, read again (and
    // watch anew, perhaps through another member) rather than trust it.
    while let Ok(answer) = tokio::time::timeout(quiet, stream.message()).await {
        let Some(answer) = answer.map_err(|e| e.to_string())? else {
            break;
        };
        if answer.canceled() {
            break;
        }
        for event in answer.events() {
            let Some(kv) = event.kv() else { continue };
            if kv.key() == keys.sync().as_bytes() {
                let report = StoreNews::Sync {
                    revision: u64::try_from(kv.mod_revision()).unwrap_or(0),
                    members: match event.event_type() {
                        EventType::Put => Some(sync_members(kv)),
                        EventType::Delete => None,
                    },
                };
                if news.send(report).await.is_err() {
                    return Ok(());
                }
                continue;
            }
            let Some(group) = keys.group_of(kv.key()) else {
                continue;
            };
            let holder = match event.event_type() {
                EventType::Put => Some(holder_of(kv)),
                EventType::Delete => None,
            };
            let report = StoreNews::Leader {
                group,
                revision: u64::try_from(kv.mod_revision()).unwrap_or(0),
                holder,
            };
            if news.send(report).await.is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The `sync` key's value: `{"members": [...]}`. A value tandem cannot
/// read names nobody, so no standby takes over on its strength.
fn sync_members(kv: &KeyValue) -> Vec<String> {
    #[derive(Deserialize)]
    struct SyncValue {
        members: Vec<String>,
    }
    serde_json::from_slice::<SyncValue>(kv.value())
        .map(|v| v.members)
        .unwrap_or_default()
}

/// The `sync` key (Patroni's `/sync`), written by the node that serves:
/// itself and the standbys in sync with it. With `data_sync = "semi"` only
/// the nodes it names may take the service over, so a standby is taken
/// out of it before a commit is acknowledged without it.
pub struct SyncKey {
    client: Client,
    keys: Keys,
    lease: watch::Receiver<Option<i64>>,
    /// What this node last wrote; every write holds the lock.
    written: tokio::sync::Mutex<Option<Vec<String>>>,
    /// Standbys dropped so far: a publication sampled before a drop is
    /// stale and skipped.
    drops: AtomicU64,
}

impl std::fmt::Debug for SyncKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncKey")
            .field("key", &self.keys.sync())
            .finish_non_exhaustive()
    }
}

impl SyncKey {
    /// How many drops happened so far; sample it before the in-sync set.
    pub fn drops(&self) -> u64 {
        self.drops.load(Ordering::SeqCst)
    }

    /// Writes this node and `standbys` (in sync as of `drops_seen`), unless
    /// a drop came since or nothing changed.
    pub async fn publish(&self, mut standbys: Vec<String>, drops_seen: u64) {
        let mut written = self.written.lock().await;
        if self.drops() != drops_seen {
            return;
        }
        standbys.sort();
        let members: Vec<String> = std::iter::once(self.keys.node.clone())
            .chain(standbys)
            .collect();
        if written.as_ref() == Some(&members) {
            return;
        }
        match self.write(&members).await {
            Ok(()) => *written = Some(members),
            Err(e) => tracing::warn!(error = %e, "etcd: cannot write the sync key"),
        }
    }

    /// The key, written only while this session holds group 0's leader key.
    async fn write(&self, members: &[String]) -> Result<(), String> {
        let Some(lease) = *self.lease.borrow() else {
            return Err("no etcd session".into());
        };
        let value = serde_json::json!({ "members": members }).to_string();
        let txn = Txn::new()
            .when([Compare::value(
                self.keys.leader(GroupId(0)),
                CompareOp::Equal,
                own_value(&self.keys, lease),
            )])
            .and_then([TxnOp::put(self.keys.sync(), value, None)]);
        let mut client = self.client.clone();
        // Bounded like every call: a commit waits on this write.
        match tokio::time::timeout(WRITE_LIMIT, client.txn(txn)).await {
            Ok(Ok(answer)) if answer.succeeded() => Ok(()),
            Ok(Ok(_)) => Err("this node does not hold the leader key".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("etcd did not answer within {WRITE_LIMIT:?}")),
        }
    }
}

impl DegradeGate for SyncKey {
    fn drop_standbys(
        &self,
        standbys: Vec<String>,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            let mut written = self.written.lock().await;
            self.drops.fetch_add(1, Ordering::SeqCst);
            let members: Vec<String> = match written.as_ref() {
                Some(members) => members
                    .iter()
                    .filter(|m| !standbys.contains(m))
                    .cloned()
                    .collect(),
                None => vec![self.keys.node.clone()],
            };
            if written.as_ref() == Some(&members) {
                return Ok(());
            }
            self.write(&members).await?;
            tracing::warn!(
                ?standbys,
                "etcd: standbys out of the sync key: they may not take over until caught up"
            );
            *written = Some(members);
            Ok(())
        })
    }
}
