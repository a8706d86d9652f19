//! The campaign's clients: a few SMTP connections to the VIP, each
//! sending one message at a time at a steady pace, each operation
//! recorded with its start, the node whose banner greeted it (the relay
//! runs with `--hostname $TANDEM_NODE`), and what it came to.
//!
//! A connection that breaks is opened again; a refused connect waits a
//! little before the next try. The number of operations is bounded by a
//! budget shared by all clients, and each one stops when told to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tandem_chaos::{Event, Outcome};
use tandem_mta::client::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::record::Recorder;

/// How long a connect, and a whole transaction, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// A message's size.
const SIZE: usize = 512;

/// What the clients do.
#[derive(Debug, Clone)]
pub struct Load {
    /// The VIP.
    pub to: SocketAddr,
    /// Concurrent clients.
    pub clients: u32,
    /// Each client's pause between operations.
    pub pace: Duration,
    /// At most this many operations in all.
    pub budget: u64,
    /// Prefix of every message id (the seed), so two campaigns' ids differ.
    pub prefix: String,
}

/// Starts the clients; they run until `stop` says true or the budget is
/// spent.
pub fn start(load: Load, rec: Recorder, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let next = Arc::new(AtomicU64::new(0));
    (0..load.clients)
        .map(|n| {
            tokio::spawn(client(
                n,
                load.clone(),
                rec.clone(),
                stop.clone(),
                next.clone(),
            ))
        })
        .collect()
}

async fn client(
    n: u32,
    load: Load,
    rec: Recorder,
    stop: watch::Receiver<bool>,
    next: Arc<AtomicU64>,
) {
    let mut conn: Option<(Client, String)> = None;
    while !*stop.borrow() {
        let seq = next.fetch_add(1, Ordering::Relaxed);
        if seq >= load.budget {
            break;
        }
        let id = format!("{}-{seq:07}", load.prefix);
        let start_ms = rec.now_ms();
        let op = |node: Option<String>, outcome, reply: String| Event::Op {
            client: n,
            id: id.clone(),
            start_ms,
            node,
            outcome,
            reply,
        };
        if conn.is_none() {
            match Client::connect(
                load.to,
                "chaos.tandem.invalid",
                CONNECT_TIMEOUT,
                SEND_TIMEOUT,
            )
            .await
            {
                Ok(c) => {
                    let node = c
                        .greeting()
                        .split(' ')
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    conn = Some((c, node));
                }
                Err(e) => {
                    rec.push(op(None, Outcome::ConnectFailed, e.to_string()));
                    tokio::time::sleep(load.pace.max(Duration::from_millis(20))).await;
                    continue;
                }
            }
        }
        let Some((c, node)) = conn.as_mut() else {
            continue;
        };
        let body = tandem_mta::load::message(&id, SIZE);
        let rcpt = vec![format!("{id}@chaos.tandem.invalid")];
        let sent =
            tokio::time::timeout(SEND_TIMEOUT, c.send("chaos@tandem.invalid", &rcpt, &body)).await;
        let node = Some(node.clone());
        match sent {
            Ok(Ok(tx)) => {
                let refusal = std::iter::once(&tx.mail)
                    .chain(&tx.rcpts)
                    .find(|r| !r.is_ok());
                match (refusal, &tx.data) {
                    (None, Some(r)) if r.is_ok() => {
                        rec.push(op(node, Outcome::Acked, r.to_string()))
                    }
                    (Some(r), _) | (None, Some(r)) => {
                        rec.push(op(node, Outcome::Refused, r.to_string()))
                    }
                    (None, None) => {
                        rec.push(op(node, Outcome::Refused, "no answer to DATA".into()))
                    }
                }
            }
            Ok(Err(e)) => {
                rec.push(op(node, Outcome::Broken, e.to_string()));
                conn = None;
            }
            Err(_) => {
                rec.push(op(
                    node,
                    Outcome::Broken,
                    format!("no answer within {SEND_TIMEOUT:?}"),
                ));
                conn = None;
            }
        }
        tokio::time::sleep(load.pace).await;
    }
    if let Some((c, _)) = conn {
        c.quit().await;
    }
}
