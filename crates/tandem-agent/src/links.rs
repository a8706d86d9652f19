//! Heartbeat links: one UDP socket per configured link.
//!
//! Every link is an independent path (a second NIC, a crossover cable), and
//! a peer is dead only when all of them are silent — that is how a pair
//! survives losing one cable without a split brain. Each datagram is sealed
//! separately per link and per peer (its own sequence number), so the
//! receiver's replay window accepts the copy from each link and can tell
//! which links still carry traffic.
//!
//! **Floods.** Anyone on the link can send garbage, fast (issue 14 found
//! 350k datagrams/s enough to make the kernel drop the real heartbeats).
//! Each receive task authenticates on its own — length, magic, cluster id,
//! then the MAC, no state needed — and only datagrams that pass reach the
//! agent's loop (which then checks replays). Rejections are counted here
//! and reported at most every [`REJECT_REPORT_EVERY`] as one
//! [`LinkEvent::Rejected`] per reason, so a flood costs the loop nothing.
//!
//! **Simulation.** [`HeartbeatLinks::simulated`] sends into a simulated
//! network instead of sockets ([`crate::sim`]), which delivers through the
//! same [`authenticate`] a receive task uses.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tandem_core::LinkId;
use tandem_core::wire::RejectReason;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::Error;
use crate::config::AgentConfig;

/// The largest heartbeat datagram we accept.
const MAX_DATAGRAM: usize = 2048;

/// How often a receive task reports what it rejected.
const REJECT_REPORT_EVERY: Duration = Duration::from_millis(100);

/// What a receive task hands the agent.
pub enum LinkEvent {
    /// A datagram whose MAC checks out (replays not yet checked).
    Datagram(Datagram),
    /// Datagrams dropped since the last report, for one reason.
    Rejected {
        /// The link they came in on.
        link: LinkId,
        /// Why.
        reason: RejectReason,
        /// The sender a bad-MAC datagram named, if any.
        claimed_sender: Option<String>,
        /// How many.
        count: u64,
    },
}

/// A datagram that arrived on a link.
pub struct Datagram {
    /// The link it came in on.
    pub link: LinkId,
    /// Who sent it (for logs; the MAC, not the address, identifies a peer).
    pub from: SocketAddr,
    /// The message, authenticated (its replay check is the agent's:
    /// [`tandem_core::Codec::admit`]).
    pub envelope: tandem_core::Envelope,
}

/// The link sockets and where each peer listens on each link.
pub struct HeartbeatLinks {
    transport: Transport,
    /// `(peer name, its address on each link)`.
    peers: Vec<(String, Vec<SocketAddr>)>,
}

/// How datagrams leave: real UDP sockets, or a simulated network
/// ([`crate::sim`]) that can cut, delay and heal them on a paused clock.
enum Transport {
    Udp(Vec<Arc<UdpSocket>>),
    Simulated(mpsc::UnboundedSender<SimDatagram>),
}

/// A datagram on a simulated network: what a UDP socket would have sent.
#[derive(Debug, Clone)]
pub struct SimDatagram {
    /// The link it goes out on.
    pub link: LinkId,
    /// The address it is sent to (the peer's address on that link).
    pub to: SocketAddr,
    /// The sealed bytes.
    pub bytes: Vec<u8>,
}

impl HeartbeatLinks {
    /// Binds every link and starts a receive task per link feeding `inbox`.
    pub async fn bind(
        config: &AgentConfig,
        inbox: mpsc::Sender<LinkEvent>,
    ) -> Result<HeartbeatLinks, Error> {
        let filter = Arc::new(Filter {
            key: config.secrets.cluster_key.clone(),
            cluster: config.cluster.name.clone(),
        });
        let mut sockets = Vec::new();
        for (index, link) in config.links.iter().enumerate() {
            let socket = UdpSocket::bind(link.listen)
                .await
                .map_err(|e| Error::Bind {
                    what: format!("heartbeat link {:?}", link.name),
                    addr: link.listen,
                    source: e,
                })?;
            let socket = Arc::new(socket);
            let id = LinkId(u8::try_from(index).unwrap_or(u8::MAX));
            tokio::spawn(receive(socket.clone(), id, inbox.clone(), filter.clone()));
            sockets.push(socket);
        }
        let peers = config
            .peers
            .iter()
            .map(|p| (p.name.clone(), p.links.clone()))
            .collect();
        Ok(HeartbeatLinks {
            transport: Transport::Udp(sockets),
            peers,
        })
    }

    /// Links whose datagrams go to `wire` instead of sockets; what comes in
    /// is delivered by the simulated network with [`authenticate`].
    pub fn simulated(
        config: &AgentConfig,
        wire: mpsc::UnboundedSender<SimDatagram>,
    ) -> HeartbeatLinks {
        HeartbeatLinks {
            transport: Transport::Simulated(wire),
            peers: config
                .peers
                .iter()
                .map(|p| (p.name.clone(), p.links.clone()))
                .collect(),
        }
    }

    /// Every peer's name.
    pub fn peer_names(&self) -> impl Iterator<Item = &str> {
        self.peers.iter().map(|(name, _)| name.as_str())
    }

    /// Sends to `peer` over every link; `seal` makes one datagram per link.
    /// A failed send is logged and otherwise ignored: a dead link is what
    /// the other links are for.
    pub async fn send(&self, peer: &str, mut seal: impl FnMut() -> Option<Vec<u8>>) {
        let Some((_, addrs)) = self.peers.iter().find(|(name, _)| name == peer) else {
            return;
        };
        match &self.transport {
            Transport::Udp(sockets) => {
                for (socket, addr) in sockets.iter().zip(addrs) {
                    let Some(bytes) = seal() else { return };
                    if let Err(e) = socket.send_to(&bytes, addr).await {
                        tracing::debug!(peer, %addr, error = %e, "heartbeat send failed");
                    }
                }
            }
            Transport::Simulated(wire) => {
                for (index, to) in addrs.iter().enumerate() {
                    let Some(bytes) = seal() else { return };
                    let link = LinkId(u8::try_from(index).unwrap_or(u8::MAX));
                    // A closed wire is a simulation that ended: nothing to
                    // send to.
                    let _ = wire.send(SimDatagram {
                        link,
                        to: *to,
                        bytes,
                    });
                }
            }
        }
    }
}

/// What a receive task needs to authenticate a datagram.
struct Filter {
    key: Vec<u8>,
    cluster: String,
}

/// Authenticates one datagram that came in on `link`: the datagram, or why
/// it was rejected (with the sender a bad MAC claimed), or `None` for an
/// error that is not about the datagram. The real links and the simulated
/// network both decide here, so a simulation rejects what a link would.
pub fn authenticate(
    key: &[u8],
    cluster: &str,
    link: LinkId,
    from: SocketAddr,
    bytes: &[u8],
) -> Result<Datagram, Option<(RejectReason, Option<String>)>> {
    match tandem_core::wire::decode(key, cluster, bytes) {
        Ok(envelope) => Ok(Datagram {
            link,
            from,
            envelope,
        }),
        Err(e) => Err(e.reject_reason().map(|reason| {
            let claimed_sender = match e {
                tandem_core::Error::BadMac { claimed_sender } => Some(claimed_sender),
                _ => None,
            };
            (reason, claimed_sender)
        })),
    }
}

async fn receive(
    socket: Arc<UdpSocket>,
    link: LinkId,
    inbox: mpsc::Sender<LinkEvent>,
    filter: Arc<Filter>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut rejected: BTreeMap<(RejectReason, Option<String>), u64> = BTreeMap::new();
    let mut reported = tokio::time::Instant::now();
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                tracing::debug!(link = link.0, error = %e, "heartbeat receive failed");
                continue;
            }
        };
        match authenticate(&filter.key, &filter.cluster, link, from, &buf[..n]) {
            Ok(datagram) => {
                if inbox.send(LinkEvent::Datagram(datagram)).await.is_err() {
                    return; // the agent is shutting down
                }
            }
            Err(Some((reason, claimed_sender))) => {
                // Bounded: a forger can name many senders.
                if rejected.len() < 64 || rejected.contains_key(&(reason, claimed_sender.clone())) {
                    *rejected.entry((reason, claimed_sender)).or_default() += 1;
                }
            }
            Err(None) => {}
        }
        if !rejected.is_empty() && reported.elapsed() >= REJECT_REPORT_EVERY {
            reported = tokio::time::Instant::now();
            for ((reason, claimed_sender), count) in std::mem::take(&mut rejected) {
                let event = LinkEvent::Rejected {
                    link,
                    reason,
                    claimed_sender,
                    count,
                };
                if inbox.send(event).await.is_err() {
                    return;
                }
            }
        }
    }
}
