//! How the replicator is set up: the `data_sync` and `sync_mode` settings
//! and the standbys it replicates to. Kept apart from the replicator's
//! machinery because the agent's config loader reads these types too and
//! has no business with the tasks.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::fencing::Fencing;
use crate::tls::TlsIdentity;
use crate::unreplicated::Unreplicated;

/// `data_sync`: how far a commit goes before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataSync {
    /// Local only: nothing is replicated.
    Off,
    /// Return at once; the files are streamed to the standbys behind.
    Async,
    /// Return once every in-sync standby has the files fsync'd (RPO 0).
    Semi,
}

impl FromStr for DataSync {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(DataSync::Off),
            "async" => Ok(DataSync::Async),
            "semi" => Ok(DataSync::Semi),
            other => Err(format!(
                "data_sync = {other:?}: expected \"off\", \"async\" or \"semi\""
            )),
        }
    }
}

/// `sync_mode`: what a commit does about a standby that does not confirm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Mark it out of sync and succeed: availability first.
    Degrade,
    /// Fail the commit (the relay answers 451): durability first.
    Strict,
}

impl FromStr for SyncMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "degrade" => Ok(SyncMode::Degrade),
            "strict" => Ok(SyncMode::Strict),
            other => Err(format!(
                "sync_mode = {other:?}: expected \"degrade\" or \"strict\""
            )),
        }
    }
}

/// A standby to replicate to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    /// Its node name (as in its certificate).
    pub name: String,
    /// Its sync address (where its [`crate::receiver::Receiver`] listens).
    pub addr: SocketAddr,
}

/// Asked before a `semi` commit is acknowledged without some standbys
/// (`degrade`). Under `coordination = "etcd"` the agent removes them from
/// the etcd `sync` key first, so that none of them can take the service
/// over with this commit missing (Patroni's `/sync`).
pub trait DegradeGate: Send + Sync + std::fmt::Debug {
    /// Removes `standbys` from those allowed to take over; an error fails
    /// the commit instead, as `strict` would.
    fn drop_standbys(
        &self,
        standbys: Vec<String>,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// How the replicator is set up; [`ReplicatorConfig::new`] gives defaults.
#[derive(Debug, Clone)]
pub struct ReplicatorConfig {
    /// This node's TLS identity.
    pub identity: TlsIdentity,
    /// The service's data dir; committed paths must be under it.
    pub data_dir: PathBuf,
    /// The standbys.
    pub peers: Vec<PeerAddr>,
    /// This node's cluster config files, compared in the sync report.
    pub config_files: Vec<PathBuf>,
    /// `data_sync`.
    pub data_sync: DataSync,
    /// `sync_mode`.
    pub sync_mode: SyncMode,
    /// `sync_timeout`: how long a commit waits for a standby's ack.
    pub sync_timeout: Duration,
    /// Time allowed to connect and complete the handshake.
    pub connect_timeout: Duration,
    /// Pause between attempts to reach a standby that is away.
    pub redial_every: Duration,
    /// A connected standby silent for this long (mid-request) is dropped
    /// and redialed; that brings a stalled peer back through catch-up.
    pub io_timeout: Duration,
    /// This node's unreplicated record: the paths of every batch a standby
    /// did not ack (`degrade`) are added to its entry, durably, before the
    /// commit returns. `None`: not recorded (a split brain may then lose
    /// mail).
    pub unreplicated: Option<Unreplicated>,
    /// Ping a standby after this long without an answer from it, so that
    /// liveness keeps being heard on an idle channel. `None`: no pings
    /// (receivers older than the ping drop the connection on one).
    pub keepalive: Option<Duration>,
    /// Where to report that a standby answered (its name): proof of life
    /// over the authenticated channel. At most one per standby per
    /// `keepalive` (1 s without), dropped when full: never waited for.
    pub heard: Option<mpsc::Sender<String>>,
    /// The epoch each commit carries ([`crate::fencing`]).
    pub fencing: Arc<Fencing>,
    /// Asked before a degraded `semi` commit is acknowledged.
    pub degrade_gate: Option<Arc<dyn DegradeGate>>,
}

impl ReplicatorConfig {
    /// `semi` + `degrade`, `sync_timeout` 2 s, redial every 500 ms.
    pub fn new(identity: TlsIdentity, data_dir: PathBuf, peers: Vec<PeerAddr>) -> Self {
        ReplicatorConfig {
            identity,
            data_dir,
            peers,
            config_files: Vec::new(),
            data_sync: DataSync::Semi,
            sync_mode: SyncMode::Degrade,
            sync_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            redial_every: Duration::from_millis(500),
            io_timeout: Duration::from_secs(30),
            unreplicated: None,
            keepalive: None,
            heard: None,
            fencing: Arc::default(),
            degrade_gate: None,
        }
    }
}
