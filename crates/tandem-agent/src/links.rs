//! Heartbeat links: one UDP socket per configured link.
//!
//! Every link is an independent path (a second NIC, a crossover cable), and
//! a peer is dead only when all of them are silent — that is how a pair
//! survives losing one cable without a split brain. Each datagram is sealed
//! separately per link and per peer (its own sequence number), so the
//! receiver's replay window accepts the copy from each link and can tell
//! which links still carry traffic.

use std::net::SocketAddr;
use std::sync::Arc;

use tandem_core::LinkId;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::Error;
use crate::config::AgentConfig;

/// The largest heartbeat datagram we accept.
const MAX_DATAGRAM: usize = 2048;

/// A datagram that arrived on a link.
pub struct Datagram {
    /// The link it came in on.
    pub link: LinkId,
    /// Who sent it (for logs; the MAC, not the address, identifies a peer).
    pub from: SocketAddr,
    /// Its bytes, not yet authenticated.
    pub bytes: Vec<u8>,
}

/// The bound link sockets and where each peer listens on each link.
pub struct HeartbeatLinks {
    sockets: Vec<Arc<UdpSocket>>,
    /// `(peer name, its address on each link)`.
    peers: Vec<(String, Vec<SocketAddr>)>,
}

impl HeartbeatLinks {
    /// Binds every link and starts a receive task per link feeding `inbox`.
    pub async fn bind(
        config: &AgentConfig,
        inbox: mpsc::Sender<Datagram>,
    ) -> Result<HeartbeatLinks, Error> {
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
            tokio::spawn(receive(socket.clone(), id, inbox.clone()));
            sockets.push(socket);
        }
        let peers = config
            .peers
            .iter()
            .map(|p| (p.name.clone(), p.links.clone()))
            .collect();
        Ok(HeartbeatLinks { sockets, peers })
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
        for (socket, addr) in self.sockets.iter().zip(addrs) {
            let Some(bytes) = seal() else { return };
            if let Err(e) = socket.send_to(&bytes, addr).await {
                tracing::debug!(peer, %addr, error = %e, "heartbeat send failed");
            }
        }
    }
}

async fn receive(socket: Arc<UdpSocket>, link: LinkId, inbox: mpsc::Sender<Datagram>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => {
                let datagram = Datagram {
                    link,
                    from,
                    bytes: buf[..n].to_vec(),
                };
                if inbox.send(datagram).await.is_err() {
                    return; // the agent is shutting down
                }
            }
            Err(e) => tracing::debug!(link = link.0, error = %e, "heartbeat receive failed"),
        }
    }
}
