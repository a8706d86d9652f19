//! What the campaign sees of the cluster while faults come and go: each
//! node asked for its status every [`PERIOD`] (an [`Event::Role`] per
//! answer, or `unreachable`), and the sink's count of copies per id (an
//! [`Event::Delivered`] per new copy).
//!
//! Polling, not an event stream, because a node that is stopped, killed
//! or cut off streams nothing: its silence is exactly what must show. The
//! dual-active checker counts only what two successive answers agree on,
//! so the poll period is a resolution, never a false alarm.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tandem_agent::api::{ApiClient, ListenerState, StatusReport};
use tandem_chaos::Event;
use tandem_core::EffectiveRole;
use tandem_mta::sink::Sink;
use tandem_sync::replicator::PeerState;
use tokio::sync::watch;

use super::record::Recorder;

/// How often each node is asked.
pub const PERIOD: Duration = Duration::from_millis(50);
/// How long an answer may take before the node counts as unreachable.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(250);
/// How often the sink's counts are read.
const SINK_PERIOD: Duration = Duration::from_millis(200);

/// One node as the observer reaches it.
#[derive(Clone)]
pub struct Watched {
    /// Its name.
    pub name: String,
    /// Its API.
    pub api: ApiClient,
}

/// A role's name as the status spells it.
fn role_name(role: EffectiveRole) -> String {
    serde_json::to_value(role)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| role.to_string())
}

/// The [`Event::Role`]s one answer (or its absence) stands for: one per
/// failover group.
pub fn roles(name: &str, status: Option<&StatusReport>) -> Vec<Event> {
    let Some(s) = status else {
        return vec![Event::Role {
            node: name.to_owned(),
            group: 0,
            role: "unreachable".into(),
            epoch: 0,
            accepting: false,
        }];
    };
    let open = s.agent.listener == ListenerState::Open
        && s.agent.service_running
        && !s.agent.vip_bound.is_empty();
    s.node
        .groups
        .iter()
        .map(|g| Event::Role {
            node: name.to_owned(),
            group: g.group.0,
            role: role_name(g.role),
            epoch: g.epoch.unwrap_or(0),
            accepting: g.role == EffectiveRole::Active && open,
        })
        .collect()
}

/// Starts one poller per node and the sink's counter, each on a thread of
/// its own; with `netns`, each node's poller lives in that node's
/// namespace (`netns[i]`), so that a node cut off from the rest is still
/// seen, and seen serving if it does.
pub fn start(
    nodes: &[Watched],
    netns: &[Option<String>],
    sink: Arc<Sink>,
    rec: &Recorder,
    stop: &watch::Receiver<bool>,
) -> Vec<std::thread::JoinHandle<()>> {
    let mut threads: Vec<std::thread::JoinHandle<()>> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let (n, rec, stop) = (n.clone(), rec.clone(), stop.clone());
            let ns = netns.get(i).cloned().flatten();
            std::thread::spawn(move || {
                if let Some(ns) = &ns
                    && let Err(e) = crate::netns::enter(ns)
                {
                    tracing::error!(error = %e, "chaos: the observer of {} cannot run", n.name);
                    return;
                }
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(poll(n, rec, stop));
            })
        })
        .collect();
    let (rec, stop) = (rec.clone(), stop.clone());
    threads.push(std::thread::spawn(move || {
        let mut counted: HashMap<String, u32> = HashMap::new();
        loop {
            let done = *stop.borrow();
            record_deliveries(&sink, &mut counted, &rec);
            if done {
                break;
            }
            std::thread::sleep(SINK_PERIOD);
        }
    }));
    threads
}

/// Asks node `n` for its status every [`PERIOD`] until `stop`.
async fn poll(n: Watched, rec: Recorder, stop: watch::Receiver<bool>) {
    let api = n.api.clone().with_timeout(ANSWER_TIMEOUT);
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*stop.borrow() {
        tick.tick().await;
        let asked = rec.now_ms();
        let status = api.status().await.ok();
        for e in roles(&n.name, status.as_ref()) {
            rec.push_at(asked, e);
        }
    }
}

/// An [`Event::Delivered`] for each copy the sink got since `counted`.
fn record_deliveries(sink: &Sink, counted: &mut HashMap<String, u32>, rec: &Recorder) {
    for (id, copies) in sink.copies() {
        let before = counted.insert(id.clone(), copies).unwrap_or(0);
        for _ in before..copies {
            rec.push(Event::Delivered { id: id.clone() });
        }
    }
}

/// The cluster as a whole after the heal: who is active per group,
/// whether every node answered with the active's replicator holding
/// every standby in sync, and whether the sync report is clean.
pub async fn cluster(nodes: &[Watched], report_clean: bool) -> Event {
    let mut actives: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut answered = 0;
    let mut in_sync = true;
    for n in nodes {
        let Ok(s) = n.api.clone().with_timeout(ANSWER_TIMEOUT).status().await else {
            continue;
        };
        answered += 1;
        for g in &s.node.groups {
            let list = actives.entry(g.group.0.to_string()).or_default();
            if g.role == EffectiveRole::Active {
                list.push(n.name.clone());
            }
        }
        if let Some(r) = s.replicator() {
            in_sync &= r.peers.len() + 1 >= nodes.len()
                && r.peers.iter().all(|p| p.state == PeerState::InSync);
        }
    }
    Event::Cluster {
        actives,
        in_sync: in_sync && answered == nodes.len(),
        report_clean,
    }
}
