//! Crash detection: a TCP connection to each peer that closes the moment the
//! peer's process dies.
//!
//! Heartbeat timeouts catch a hung or unreachable peer, but they cost
//! `interval × lost_threshold`. When the peer *process* dies, its kernel
//! closes its sockets at once, so a connection kept open to it tells us in
//! well under a millisecond on loopback. A close that was not preceded by a
//! goodbye (the core tracks that) means takeover now. With `[sync]` the
//! TLS data channel does this job instead (see [`crate::replication`]).
//!
//! The connection is authenticated — otherwise anyone able to connect and
//! hang up could trigger a failover: the accepting side sends a random
//! nonce, the dialer answers with its name, boot epoch and
//! HMAC-SHA256(cluster key, cluster ‖ nonce ‖ name ‖ epoch).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::Error;

const GREETING: &str = "TANDEM-SYNC1";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
const REDIAL_EVERY: Duration = Duration::from_millis(200);

/// What the crash detector saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerLinkEvent {
    /// An authenticated peer connected (after a restart: a new epoch).
    Connected {
        /// The peer.
        peer: String,
        /// Its boot epoch.
        epoch: u64,
    },
    /// Its connection closed: the peer process is gone (or the network cut).
    Closed {
        /// The peer.
        peer: String,
    },
}

/// The shared secret and identities the handshake needs.
#[derive(Clone)]
pub struct Identity {
    /// The cluster's name.
    pub cluster: String,
    /// This node's name.
    pub name: String,
    /// This node's boot epoch.
    pub epoch: u64,
    /// The cluster HMAC key.
    pub key: Vec<u8>,
}

fn mac(identity_key: &[u8], cluster: &str, nonce: &str, name: &str, epoch: u64) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(identity_key) else {
        return String::new(); // HMAC accepts keys of any length
    };
    for part in [
        cluster.as_bytes(),
        b"\0",
        nonce.as_bytes(),
        b"\0",
        name.as_bytes(),
        b"\0",
    ] {
        mac.update(part);
    }
    mac.update(&epoch.to_be_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Listens on `addr` for peers' connections and dials every peer in
/// `peers`; reports on `events`.
pub async fn start(
    addr: SocketAddr,
    identity: Identity,
    peers: Vec<(String, SocketAddr)>,
    events: mpsc::Sender<PeerLinkEvent>,
) -> Result<(), Error> {
    let listener = TcpListener::bind(addr).await.map_err(|e| Error::Bind {
        what: "crash-detection (sync) listener".into(),
        addr,
        source: e,
    })?;
    let known: HashMap<String, ()> = peers.iter().map(|(n, _)| (n.clone(), ())).collect();
    tokio::spawn(accept_loop(listener, identity.clone(), known, events));
    for (_, peer_addr) in peers {
        tokio::spawn(dial_loop(peer_addr, identity.clone()));
    }
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    identity: Identity,
    known: HashMap<String, ()>,
    events: mpsc::Sender<PeerLinkEvent>,
) {
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            continue;
        };
        let identity = identity.clone();
        let known = known.clone();
        let events = events.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(stream, &identity, &known))
                .await
            {
                Ok(Ok((peer, epoch, mut reader))) => {
                    let _ = events
                        .send(PeerLinkEvent::Connected {
                            peer: peer.clone(),
                            epoch,
                        })
                        .await;
                    // Nothing is expected on the connection yet; read until
                    // it closes, which is the signal.
                    let mut sink = [0u8; 256];
                    while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
                    let _ = events.send(PeerLinkEvent::Closed { peer }).await;
                }
                Ok(Err(reason)) => {
                    tracing::warn!(%from, reason, "refused a crash-detection connection")
                }
                Err(_) => tracing::warn!(%from, "crash-detection handshake timed out"),
            }
        });
    }
}

async fn handshake(
    mut stream: TcpStream,
    identity: &Identity,
    known: &HashMap<String, ()>,
) -> Result<(String, u64, BufReader<TcpStream>), String> {
    let mut nonce_bytes = [0u8; 16];
    getrandom(&mut nonce_bytes);
    let nonce: String = nonce_bytes.iter().map(|b| format!("{b:02x}")).collect();
    stream
        .write_all(format!("{GREETING} {nonce}\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .await
        .map_err(|e| e.to_string())?;
    let mut parts = line.split_whitespace();
    let (Some(name), Some(epoch), Some(answer)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("malformed hello".into());
    };
    let epoch: u64 = epoch.parse().map_err(|_| "malformed epoch".to_string())?;
    if !known.contains_key(name) {
        return Err(format!("unknown peer {name:?}"));
    }
    if mac(&identity.key, &identity.cluster, &nonce, name, epoch) != answer {
        return Err(format!("bad MAC from {name:?}: cluster key mismatch?"));
    }
    Ok((name.to_string(), epoch, reader))
}

/// Keeps one authenticated connection to a peer open, redialling while the
/// peer is away. The connection itself is the message: we never write more.
async fn dial_loop(addr: SocketAddr, identity: Identity) {
    loop {
        if let Ok(stream) = TcpStream::connect(addr).await {
            let _ = stream.set_nodelay(true);
            let mut reader = BufReader::new(stream);
            let mut greeting = String::new();
            let answered = async {
                reader.read_line(&mut greeting).await.ok()?;
                let nonce = greeting.strip_prefix(GREETING)?.trim().to_string();
                let hello = format!(
                    "{} {} {}\n",
                    identity.name,
                    identity.epoch,
                    mac(
                        &identity.key,
                        &identity.cluster,
                        &nonce,
                        &identity.name,
                        identity.epoch
                    )
                );
                reader.get_mut().write_all(hello.as_bytes()).await.ok()
            };
            if tokio::time::timeout(HANDSHAKE_TIMEOUT, answered)
                .await
                .ok()
                .flatten()
                .is_some()
            {
                let mut sink = [0u8; 256];
                while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
            }
        }
        tokio::time::sleep(REDIAL_EVERY).await;
    }
}

/// Random bytes from the kernel; the nonce only has to be unpredictable.
fn getrandom(buf: &mut [u8]) {
    // SAFETY: getrandom(2) writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        // Fall back to time: still unique per connection.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (t >> ((i % 16) * 8)) as u8;
        }
    }
}
