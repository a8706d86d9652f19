//! What one seed means: the cluster (coordination, node count) and the
//! faults, each with a start and an end, drawn from a small PRNG so that
//! the seed alone is the whole recipe. Nothing here touches the sim: a
//! plan can be printed, compared and replayed.

pub use tandem_chaos::SplitMix;

/// How the nodes decide who serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A simulated etcd with leases and leader keys: never two actives.
    Store,
    /// Heartbeats alone: a partition may split a pair (measured only).
    Peers,
}

impl Mode {
    /// The name the judge knows it by.
    pub fn coordination(self) -> &'static str {
        match self {
            Mode::Store => "etcd",
            Mode::Peers => "peers",
        }
    }
}

/// The kinds of fault a seed can draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// kill -9; the end restarts it.
    Crash,
    /// SIGSTOP; the end resumes it.
    Hang,
    /// Every heartbeat link to and from the node cut.
    Isolate,
    /// Cut from its peers and from the store.
    IsolateWithStore,
    /// Cut from the store only.
    CutStore,
    /// The node's datagrams to one peer dropped; the way back works.
    OneWay,
    /// A share of every datagram dropped.
    Loss,
    /// `failover standby` on the node serving (or `failover active` on
    /// another): a planned handover.
    Switchover,
    /// The node serving crashes and comes back while the others are still
    /// taking over from it.
    RestartInRecovery,
    /// Never drawn: a deliberate bug for the tests that prove the
    /// checkers can fail — a standby is handed the VIP and the service
    /// without the key (no fencing).
    RogueVip,
}

impl Kind {
    /// The name in the history.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Crash => "crash",
            Kind::Hang => "hang",
            Kind::Isolate => "isolate",
            Kind::IsolateWithStore => "isolate-with-store",
            Kind::CutStore => "cut-store",
            Kind::OneWay => "one-way",
            Kind::Loss => "loss",
            Kind::Switchover => "switchover",
            Kind::RestartInRecovery => "restart-in-recovery",
            Kind::RogueVip => "rogue-vip",
        }
    }
}

/// Which node a fault hits, decided when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Whoever serves the group then (the interesting case), or node 0
    /// when nobody does.
    Serving,
    /// A fixed node, by index.
    Node(usize),
    /// The whole network (loss).
    Network,
}

/// One fault of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub kind: Kind,
    pub target: Target,
    /// For a one-way cut: which other node (an offset from the target, so
    /// that it never names the target itself).
    pub other: usize,
    /// For loss: the share dropped, per mille.
    pub loss_permille: u32,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// A whole run: the cluster and its faults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub seed: u64,
    pub mode: Mode,
    pub nodes: usize,
    pub faults: Vec<Fault>,
}

/// Before the first fault: the first election (at once with a store;
/// with peers alone a fault may land in the start-up wait, which is a
/// case worth having too).
pub const WARM_UP_MS: u64 = 400;
/// No fault starts later than this after the warm-up.
const FAULT_WINDOW_MS: u64 = 3_000;
const MAX_FAULTS: u64 = 3;

impl Plan {
    /// The plan of `seed`: a quarter of the seeds are peers-mode pairs, the
    /// rest store-coordinated clusters of 2 to 5 nodes.
    pub fn from_seed(seed: u64) -> Plan {
        let mut rng = SplitMix::new(seed);
        let mode = if rng.chance(250) {
            Mode::Peers
        } else {
            Mode::Store
        };
        // Heartbeats grow with the square of the cluster, and they are
        // most of a run's cost: small clusters are drawn more often.
        let nodes = match (mode, rng.range(0, 100)) {
            (Mode::Peers, _) => 2,
            (Mode::Store, 0..55) => 2,
            (Mode::Store, 55..85) => 3,
            (Mode::Store, 85..94) => 4,
            (Mode::Store, _) => 5,
        };
        let count = rng.range(1, MAX_FAULTS + 1);
        let mut faults = Vec::new();
        let mut cursor = WARM_UP_MS;
        for _ in 0..count {
            let start_ms = cursor + rng.range(0, 400);
            if start_ms > WARM_UP_MS + FAULT_WINDOW_MS {
                break;
            }
            let kind = draw_kind(&mut rng, mode);
            let length = match kind {
                // Back before the takeover it provoked has finished.
                Kind::RestartInRecovery => rng.range(5, 400),
                // Nothing to undo: the end only marks the handover's span.
                Kind::Switchover => rng.range(100, 1_000),
                // Half shorter than the hold time (600 ms), half up to
                // past the TTL (2 s) and its renewal period.
                _ if rng.chance(500) => rng.range(50, 600),
                _ => rng.range(600, 2_600),
            };
            let target = if kind == Kind::Loss {
                Target::Network
            } else if rng.chance(600) || kind == Kind::RestartInRecovery {
                Target::Serving
            } else {
                Target::Node(rng.index(nodes))
            };
            faults.push(Fault {
                kind,
                target,
                other: rng.range(1, nodes as u64) as usize,
                loss_permille: rng.range(100, 700) as u32,
                start_ms,
                end_ms: start_ms + length,
            });
            // The next fault may start while this one is still on.
            cursor = start_ms + rng.range(0, length + 1);
        }
        Plan {
            seed,
            mode,
            nodes,
            faults,
        }
    }

    /// When the last fault ends: the final heal.
    pub fn heal_ms(&self) -> u64 {
        self.faults
            .iter()
            .map(|f| f.end_ms)
            .max()
            .unwrap_or(WARM_UP_MS)
            .max(WARM_UP_MS)
    }
}

fn draw_kind(rng: &mut SplitMix, mode: Mode) -> Kind {
    // The store faults mean nothing without a store.
    let kinds: &[Kind] = match mode {
        Mode::Store => &[
            Kind::Crash,
            Kind::Hang,
            Kind::Isolate,
            Kind::IsolateWithStore,
            Kind::CutStore,
            Kind::OneWay,
            Kind::Loss,
            Kind::Switchover,
            Kind::RestartInRecovery,
        ],
        Mode::Peers => &[
            Kind::Crash,
            Kind::Hang,
            Kind::Isolate,
            Kind::OneWay,
            Kind::Loss,
            Kind::Switchover,
            Kind::RestartInRecovery,
        ],
    };
    kinds[rng.index(kinds.len())]
}
