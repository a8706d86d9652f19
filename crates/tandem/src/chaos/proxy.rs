//! The `sync-byte-flip` fault: a TCP proxy on every node's way to each
//! peer's sync port, which, when armed, flips one bit of the next chunk
//! it forwards from the node to the peer.
//!
//! The sync channel is TLS, so a flipped bit must end in a record that
//! fails its MAC and a connection torn down, never in corrupt data. What
//! the fault probes is everything after that: the replicator reconnects,
//! the standby is caught up, nothing acknowledged is lost, and a
//! connection ended by corruption is not taken for proof that the peer's
//! process died (which would move the service).
//!
//! Each node's proxies listen on that node's own address (inside its
//! namespace, when it has one), so every cut of the network still
//! applies to them. A close on either side is passed on to the other,
//! so a crash still shows as a closed connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One proxy: from node `from` to peer `to`'s sync port.
pub struct Proxy {
    /// The node whose connections it carries.
    pub from: usize,
    /// The peer they go to.
    pub to: usize,
    /// Where the node connects instead of the peer.
    pub listen: SocketAddr,
    armed: Arc<AtomicBool>,
}

impl Proxy {
    /// Flips one bit of the next chunk the node sends through it.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }
}

/// Starts a proxy for each `(from, to, listen, target)`, on a thread of
/// its own moved into `netns` when given; they run until `stop`.
pub fn start(
    routes: Vec<(usize, usize, SocketAddr, SocketAddr)>,
    netns: Option<String>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Vec<Proxy>> {
    let proxies: Vec<(Proxy, SocketAddr)> = routes
        .into_iter()
        .map(|(from, to, listen, target)| {
            let armed = Arc::new(AtomicBool::new(false));
            let proxy = Proxy {
                from,
                to,
                listen,
                armed,
            };
            (proxy, target)
        })
        .collect();
    let jobs: Vec<(SocketAddr, SocketAddr, Arc<AtomicBool>)> = proxies
        .iter()
        .map(|(p, target)| (p.listen, *target, p.armed.clone()))
        .collect();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let bound = (|| -> anyhow::Result<_> {
            if let Some(ns) = &netns {
                crate::netns::enter(ns)?;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let listeners = jobs
                .iter()
                .map(|(listen, _, _)| {
                    let l = std::net::TcpListener::bind(listen)?;
                    l.set_nonblocking(true)?;
                    Ok(l)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok((rt, listeners))
        })();
        let (rt, listeners) = match bound {
            Ok(ok) => {
                let _ = ready_tx.send(Ok(()));
                ok
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        rt.block_on(async move {
            for (listener, (_, target, armed)) in listeners.into_iter().zip(jobs) {
                let Ok(listener) = TcpListener::from_std(listener) else {
                    continue;
                };
                tokio::spawn(serve(listener, target, armed));
            }
            let mut stop = stop;
            while !*stop.borrow() {
                if stop.changed().await.is_err() {
                    break;
                }
            }
        });
    });
    ready_rx.recv()??;
    Ok(proxies.into_iter().map(|(p, _)| p).collect())
}

async fn serve(listener: TcpListener, target: SocketAddr, armed: Arc<AtomicBool>) {
    while let Ok((inbound, _)) = listener.accept().await {
        tokio::spawn(pipe(inbound, target, armed.clone()));
    }
}

/// Carries one connection both ways until either side closes it.
async fn pipe(inbound: TcpStream, target: SocketAddr, armed: Arc<AtomicBool>) {
    let Ok(outbound) = TcpStream::connect(target).await else {
        return;
    };
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    let back = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut out_read, &mut in_write).await;
        let _ = in_write.shutdown().await;
    });
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match in_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if armed.swap(false, Ordering::SeqCst) {
            buf[n / 2] ^= 0x10;
        }
        if out_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = out_write.shutdown().await;
    back.abort();
}
