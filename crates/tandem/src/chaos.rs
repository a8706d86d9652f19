//! `tandem chaos`: a seeded fault campaign against a local cluster, with
//! every client operation, delivery, role and fault recorded into one
//! history, and the checkers of [`tandem_chaos`] judging that history.
//!
//! The ground is the relay on a local cluster (real agents, real relay
//! processes with `data_sync = "semi"`, a counting sink as the next hop,
//! and in etcd mode a 3-member etcd of its own): as root in network
//! namespaces made for it ([`crate::netns::Lab`]: a node in each, an etcd
//! member in each, clients and sink in `c`), elsewhere on loopback.
//! - [`client`]: a few SMTP clients at a steady pace, bounded in count;
//! - [`observer`]: every node's status every 50 ms, asked from inside its
//!   own namespace, and the sink's counts;
//! - [`faults`]: the nemesis, one seeded fault at a time;
//! - [`record`]: the one clock and history they all write to;
//! - [`disk`]: the spools on small filesystems, for `disk-full` (root);
//! - [`proxy`]: a proxy on each node's way to each peer's sync port, for
//!   `sync-byte-flip`.
//!
//! After the last fault the campaign heals: the clients stop, the cluster
//! must settle (one active, every standby in sync, a clean sync report)
//! and every acknowledged message must reach the sink. Then the nodes'
//! logs are read for panics, the history is judged, and the cluster and
//! etcd are stopped and removed: nothing outlives the command.
//!
//! An upgrade during the campaign is not implemented yet; the report
//! lists it, with every kind this ground cannot run, as left out, and why.

pub mod client;
pub mod disk;
pub mod faults;
pub mod observer;
pub mod proxy;
pub mod record;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tandem_chaos::{Event, History, Settings, Summary};
use tandem_mta::Listen;
use tandem_mta::sink::Sink;
use tokio::sync::watch;

use crate::localcluster::{ClusterSpec, LocalCluster};
use crate::localetcd::LocalEtcd;
use crate::netns::{Lab, WITNESS, WITNESS_ADDRESS};
use faults::{Ground, Kind, Needs};
use observer::Watched;
use record::Recorder;

/// After the final heal, how long the cluster may take to settle: a
/// restarted node's catch-up of a few thousand messages, plus an etcd
/// lease (2 s) and a preemption, with room for a loaded machine.
pub const CONVERGENCE_BOUND: Duration = Duration::from_secs(30);
/// Members of the campaign's etcd.
const ETCD_MEMBERS: usize = 3;
/// How long after a fault ends an outage is still charged to it.
pub const TAIL: Duration = Duration::from_secs(2);
/// Between two faults, the cluster's time to recover.
const RECOVERY: (Duration, Duration) = (Duration::from_millis(1500), Duration::from_millis(3000));
/// How long every acknowledged message may take to reach the sink after
/// the heal.
const DELIVERY_LIMIT: Duration = Duration::from_secs(60);

/// How the nodes coordinate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coordination {
    /// Heartbeats between the nodes only.
    Peers,
    /// A 3-member etcd of the campaign's own.
    Etcd,
}

/// A campaign.
#[derive(Debug, Clone)]
pub struct Options {
    /// Nodes (2 or more).
    pub nodes: usize,
    /// Peers or etcd.
    pub coordination: Coordination,
    /// How long faults are injected for (the heal comes after).
    pub duration: Duration,
    /// The seed.
    pub seed: u64,
    /// The kinds to draw from; every kind the ground allows when empty.
    pub faults: Vec<Kind>,
    /// The `tandem` binary that runs the agents and the relay.
    pub exe: PathBuf,
    /// Where agent logs go; a temporary directory (removed) when `None`.
    pub log_dir: Option<PathBuf>,
    /// Stay on loopback even where network namespaces could be made.
    pub loopback: bool,
}

/// A campaign's result.
pub struct Report {
    /// The judged figures.
    pub summary: Summary,
    /// The history itself.
    pub history: History,
    /// Kinds that were asked for (or would be drawn) but cannot run here.
    pub left_out: Vec<LeftOut>,
}

/// A fault kind that did not run, and why.
pub type LeftOut = (String, String);

/// Kinds that need what this ground does not have, and why; kinds for
/// which no code exists yet are listed too, so the report is honest
/// about what was not tried.
fn choose_kinds(
    opts: &Options,
    netns: Result<(), String>,
    netem: Result<(), String>,
) -> anyhow::Result<(Vec<Kind>, Vec<LeftOut>)> {
    let asked: Vec<Kind> = if opts.faults.is_empty() {
        faults::ALL.to_vec()
    } else {
        opts.faults.clone()
    };
    let mut left_out = Vec::new();
    let mut kinds = Vec::new();
    for k in asked {
        let missing = match k.needs() {
            Needs::Nothing => None,
            Needs::Etcd => (opts.coordination != Coordination::Etcd)
                .then(|| "needs --coordination etcd".to_owned()),
            Needs::Netns => netns.clone().err(),
            Needs::Netem => netns.clone().and(netem.clone()).err(),
            // SAFETY: geteuid has no preconditions.
            Needs::Root => (unsafe { libc::geteuid() } != 0)
                .then(|| "needs root (it mounts a small filesystem for each spool)".to_owned()),
            Needs::EtcdNetns => match opts.coordination {
                Coordination::Etcd => netns.clone().err(),
                Coordination::Peers => Some("needs --coordination etcd".to_owned()),
            },
        };
        match missing {
            Some(why) if !opts.faults.is_empty() => bail!("fault {} {why}", k.name()),
            Some(why) => left_out.push((k.name().to_owned(), why)),
            None => kinds.push(k),
        }
    }
    left_out.push(("upgrade".to_owned(), "not implemented yet".to_owned()));
    if kinds.is_empty() {
        bail!("no fault kind can run here");
    }
    Ok((kinds, left_out))
}

/// Runs a campaign; `progress` hears of each fault as it starts.
///
/// As root (and unless `loopback`), the cluster runs in network
/// namespaces made for it: each node in its own, etcd, the clients and
/// the sink in `c`. The campaign itself then runs on a thread moved into
/// `c`, so that everything it starts is born there.
pub fn run(opts: &Options, progress: &(dyn Fn(&str) + Sync)) -> anyhow::Result<Report> {
    if !(2..=crate::netns::MAX_NODES).contains(&opts.nodes) {
        bail!(
            "a campaign has 2 to {} nodes, not {}",
            crate::netns::MAX_NODES,
            opts.nodes
        );
    }
    let netns = match (opts.loopback, crate::netns::unavailable()) {
        (true, _) => Err("needs network namespaces (not with --loopback)".to_owned()),
        (false, Some(why)) => Err(format!("needs network namespaces: {why}")),
        (false, None) => Ok(()),
    };
    let mut lab = match netns {
        // With etcd, each member gets a namespace of its own, so that one
        // can be cut off.
        Ok(()) => Some(Lab::with_hosts(
            "ch",
            opts.nodes,
            match opts.coordination {
                Coordination::Etcd => ETCD_MEMBERS,
                Coordination::Peers => 0,
            },
        )?),
        Err(_) => None,
    };
    let netem = lab.as_ref().map_or(Ok(()), netem_works);
    let (kinds, left_out) = choose_kinds(opts, netns, netem)?;
    let work = tempdir("tandem-chaos")?;
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(lab) = &lab {
                crate::netns::enter(&lab.ns(WITNESS))?;
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("cannot start the runtime")?;
            campaign(opts, &kinds, &rt, lab.as_mut(), &work, progress)
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    });
    drop(lab);
    let _ = std::fs::remove_dir_all(&work);
    let (history, settings) = result?;
    Ok(Report {
        summary: tandem_chaos::judge(&history, &settings),
        history,
        left_out,
    })
}

/// Whether `tc netem` works here (the `sch_netem` module), tried on the
/// lab's `c` and undone at once.
fn netem_works(lab: &Lab) -> Result<(), String> {
    lab.tc(
        WITNESS,
        &[
            "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "1ms",
        ],
    )
    .map_err(|e| format!("needs tc netem (the sch_netem module): {e:#}"))?;
    lab.tc(WITNESS, &["qdisc", "del", "dev", "eth0", "root"])
        .map(|_| ())
        .map_err(|e| format!("{e:#}"))
}

fn tempdir(prefix: &str) -> anyhow::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn campaign(
    opts: &Options,
    kinds: &[Kind],
    rt: &tokio::runtime::Runtime,
    mut lab: Option<&mut Lab>,
    work: &std::path::Path,
    progress: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<(History, Settings)> {
    // In namespaces this thread is in `c`: etcd and the sink live there.
    let host = if lab.is_some() {
        WITNESS_ADDRESS.to_string()
    } else {
        "127.0.0.1".to_owned()
    };
    let mut etcd = match (opts.coordination, &lab) {
        (Coordination::Peers, _) => None,
        (Coordination::Etcd, None) => Some(LocalEtcd::start_on(
            &work.join("etcd"),
            ETCD_MEMBERS,
            &host,
        )?),
        (Coordination::Etcd, Some(lab)) => {
            let placement: Vec<(Option<String>, String)> = (1..=ETCD_MEMBERS)
                .map(|e| {
                    (
                        Some(lab.ns(&format!("e{e}"))),
                        crate::netns::store_address(e as u8).to_string(),
                    )
                })
                .collect();
            Some(LocalEtcd::start_placed(&work.join("etcd"), &placement)?)
        }
    };
    let listener = std::net::TcpListener::bind((host.as_str(), 0))
        .with_context(|| format!("cannot bind the sink on {host}"))?;
    listener.set_nonblocking(true)?;
    let next_hop = listener.local_addr()?;
    let sink = Arc::new(rt.block_on(Sink::bind(Listen::Inherited(vec![listener]), 0))?);
    let log_dir = opts.log_dir.clone().unwrap_or_else(|| work.join("logs"));
    std::fs::create_dir_all(&log_dir)?;
    let names: Vec<String> = (1..=opts.nodes).map(|i| format!("n{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let script = format!(
        "exec {:?} mta serve --spool \"data/$TANDEM_NODE/spool\" --relay-to {next_hop} --hostname \"$TANDEM_NODE\"",
        opts.exe
    );
    let spec = ClusterSpec {
        extra_toml: "cwd = \".\"\n".into(),
        log_dir: Some(log_dir.clone()),
        exe: Some(opts.exe.clone()),
        etcd: etcd.as_ref().map(LocalEtcd::endpoints).unwrap_or_default(),
        netns: lab
            .as_ref()
            .map(|lab| lab.node_names().iter().map(|n| lab.ns(n)).collect())
            .unwrap_or_default(),
        ..ClusterSpec::new(&names, vec!["sh".into(), "-c".into(), script])
    };
    let mut cluster = LocalCluster::create(&spec)?;
    cluster.enable_sync("data_sync = \"semi\"")?;
    let spools = if kinds.contains(&Kind::DiskFull) {
        let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
        Some(disk::Spools::mount(&cluster.dir, &names)?)
    } else {
        None
    };
    let (stop_proxies, proxies_stop) = watch::channel(false);
    let proxies = if kinds.contains(&Kind::SyncByteFlip) {
        sync_proxies(&cluster, proxies_stop)?
    } else {
        Vec::new()
    };
    cluster.start_all()?;
    rt.block_on(cluster.wait_for_active(0, Duration::from_secs(60)))?;

    let rec = Recorder::new();
    let watched: Vec<Watched> = (0..cluster.nodes.len())
        .map(|i| {
            Ok(Watched {
                name: cluster.nodes[i].name.clone(),
                api: cluster.client(i)?,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let (stop_clients, clients_stop) = watch::channel(false);
    let (stop_watch, watch_stop) = watch::channel(false);
    let netns: Vec<Option<String>> = cluster.nodes.iter().map(|n| n.netns.clone()).collect();
    let observers = observer::start(&watched, &netns, sink.clone(), &rec, &watch_stop);
    let pace = Duration::from_millis(20);
    let load = client::Load {
        to: cluster.vip,
        clients: 4,
        pace,
        // Every client at full pace for the campaign and a minute more.
        budget: 4 * (opts.duration.as_millis() as u64 + 60_000) / pace.as_millis() as u64,
        prefix: format!("{:x}", opts.seed),
    };
    let clients = {
        let _guard = rt.enter();
        client::start(load, rec.clone(), clients_stop)
    };

    let mut rng = tandem_chaos::SplitMix::new(opts.seed);
    let until = Instant::now() + opts.duration;
    // Let the clients find the service before the first fault.
    std::thread::sleep(Duration::from_secs(1));
    while Instant::now() < until {
        let kind = kinds[rng.index(kinds.len())];
        progress(&format!(
            "{:>6.1} s  {}",
            rec.now_ms() as f64 / 1000.0,
            kind.name()
        ));
        let mut ground = Ground {
            cluster: &mut cluster,
            etcd: etcd.as_mut(),
            rt,
            rec: &rec,
            lab: lab.as_deref_mut(),
            spools: spools.as_ref(),
            proxies: &proxies,
        };
        // A fault that cannot be injected is the harness's failure, not
        // the cluster's: said, and the campaign goes on.
        if let Err(e) = ground.inject(kind, &mut rng) {
            progress(&format!(
                "        {} could not be injected: {e:#}",
                kind.name()
            ));
        }
        std::thread::sleep(rng.between(RECOVERY.0, RECOVERY.1));
    }

    // The heal: every fault is over; the clients stop so that the spools
    // can drain and the nodes agree.
    rec.push(Event::Heal);
    progress(&format!("{:>6.1} s  heal", rec.now_ms() as f64 / 1000.0));
    let _ = stop_clients.send(true);
    for c in clients {
        let _ = rt.block_on(c);
    }
    let healed = Instant::now();
    loop {
        let clean = cluster.cli(0, &["sync", "report"]).0 == 0;
        let snapshot = rt.block_on(observer::cluster(&watched, clean));
        let settled = matches!(&snapshot, Event::Cluster { actives, in_sync: true, report_clean: true }
            if actives.values().all(|a| a.len() == 1));
        rec.push(snapshot);
        if settled || healed.elapsed() > CONVERGENCE_BOUND {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    wait_for_deliveries(&rec, &sink);
    let _ = stop_watch.send(true);
    for o in observers {
        let _ = o.join();
    }
    for (i, w) in watched.iter().enumerate() {
        let status = rt.block_on(cluster.status(i));
        let failed = status
            .as_ref()
            .is_some_and(|s| s.node.effective_role == tandem_core::EffectiveRole::Failed);
        let reason = status.as_ref().and_then(|s| {
            (!s.node.healthy)
                .then(|| "the service's health monitor reports it unhealthy".to_owned())
        });
        rec.push(Event::NodeEnd {
            node: w.name.clone(),
            panics: panics_in(&log_dir.join(format!("{}.log", w.name))),
            failed,
            reason,
        });
    }
    // The agents stop first, then the spools are unmounted, then what is
    // left of the cluster's directory goes.
    let dir = cluster.dir.clone();
    drop(cluster);
    let _ = stop_proxies.send(true);
    drop(spools);
    let _ = std::fs::remove_dir_all(dir);
    drop(etcd.take());
    let settings = Settings {
        seed: opts.seed,
        nodes: opts.nodes,
        coordination: match opts.coordination {
            Coordination::Peers => "peers".into(),
            Coordination::Etcd => "etcd".into(),
        },
        convergence_bound_ms: CONVERGENCE_BOUND.as_millis() as u64,
        tail_ms: TAIL.as_millis() as u64,
    };
    Ok((rec.snapshot(), settings))
}

/// A proxy on each node's way to each peer's sync port, listening on the
/// node's own address (in its namespace, when it has one), and the
/// configs pointed at them; before the agents start.
fn sync_proxies(
    cluster: &LocalCluster,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Vec<proxy::Proxy>> {
    let mut all = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let ip = node.sync.ip();
        let mut routes = Vec::new();
        for (j, peer) in cluster.nodes.iter().enumerate().filter(|(j, _)| *j != i) {
            let port = match node.netns {
                // A namespace of its own: fixed ports are free there.
                Some(_) => 7700 + j as u16,
                None => crate::localcluster::free_port(&ip.to_string())?,
            };
            let listen = std::net::SocketAddr::new(ip, port);
            cluster.route_peer_sync(i, j, listen)?;
            routes.push((i, j, listen, peer.sync));
        }
        all.extend(proxy::start(routes, node.netns.clone(), stop.clone())?);
    }
    Ok(all)
}

/// Waits until every acknowledged id has reached the sink, or
/// [`DELIVERY_LIMIT`] passed (the lost checker then names what is missing).
fn wait_for_deliveries(rec: &Recorder, sink: &Sink) {
    let acked: Vec<String> = rec
        .snapshot()
        .entries
        .into_iter()
        .filter_map(|e| match e.event {
            Event::Op {
                id,
                outcome: tandem_chaos::Outcome::Acked,
                ..
            } => Some(id),
            _ => None,
        })
        .collect();
    let deadline = Instant::now() + DELIVERY_LIMIT;
    while Instant::now() < deadline && sink.report(Some(&acked)).missing != Some(0) {
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Panics recorded in an agent's log (the agent and its service write
/// there).
fn panics_in(log: &std::path::Path) -> u64 {
    std::fs::read_to_string(log)
        .map(|text| text.matches("panicked at").count() as u64)
        .unwrap_or(0)
}
