//! The demo's traffic and its watchers: mail sent through the VIPs while
//! the cluster upgrades, a prober timing every gap in service, and a
//! watcher counting failovers from each node's own status.
//!
//! Each loop is bounded in count and in time, so a demo that goes wrong
//! ends instead of hanging the tests that run it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::bail;
use tandem_agent::api::ApiClient;
use tandem_core::{EffectiveRole, GroupId, Mode};
use tandem_mta::load::{LoadOptions, LoadReport, load};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Waits until the relay greets on the VIP.
pub(super) async fn wait_serving(vip: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if greets(vip).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the relay never greeted on the VIP {vip}")
}

async fn greets(vip: SocketAddr) -> bool {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(vip).await.ok()?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await.ok()?;
        line.starts_with("220").then_some(())
    };
    tokio::time::timeout(Duration::from_millis(500), attempt)
        .await
        .ok()
        .flatten()
        .is_some()
}

/// Sends mail in small batches until told to stop or the budget is spent,
/// turn about to each VIP (one per failover group): bounded in count
/// (`budget`) and in time (each batch has a timeout).
pub(super) async fn load_loop(
    vips: Vec<SocketAddr>,
    budget: u64,
    running: Arc<AtomicBool>,
    reports: Arc<Mutex<Vec<LoadReport>>>,
) {
    const BATCH: u64 = 50;
    let mut sent = 0;
    let mut turn = 0usize;
    while running.load(Ordering::Relaxed) && sent < budget {
        let options = LoadOptions {
            to: vips[turn % vips.len()],
            messages: BATCH.min(budget - sent),
            concurrency: 4,
            size: 2048,
            timeout: Duration::from_secs(20),
        };
        turn += 1;
        match load(options).await {
            Ok(report) => {
                sent += report.sent.max(1);
                reports.lock().await.push(report);
            }
            Err(e) => {
                tracing::warn!(error = %e, "load batch failed");
                sent += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Probes every VIP every 20 ms and the cluster every 200 ms: the longest
/// gap between two greetings on any VIP, and how often a failover group
/// changed hands. The two run apart: a node whose API is slow to answer
/// (busy with a health check) must not look like a service gap.
pub(super) async fn probe_loop(
    vips: Vec<SocketAddr>,
    apis: Vec<ApiClient>,
    running: Arc<AtomicBool>,
) -> (f64, u64) {
    let roles = tokio::spawn(failover_loop(apis, running.clone()));
    let mut last_ok = vec![Instant::now(); vips.len()];
    let mut max_gap = 0f64;
    let stop_at = Instant::now() + Duration::from_secs(600);
    while running.load(Ordering::Relaxed) && Instant::now() < stop_at {
        for (vip, last) in vips.iter().zip(last_ok.iter_mut()) {
            if greets(*vip).await {
                max_gap = max_gap.max(last.elapsed().as_secs_f64() * 1000.0);
                *last = Instant::now();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (max_gap, roles.await.unwrap_or(0))
}

/// Counts how often a failover group changed hands, from every node's own
/// status every 200 ms.
async fn failover_loop(apis: Vec<ApiClient>, running: Arc<AtomicBool>) -> u64 {
    // Group → the node that last reported itself active in it.
    let mut holders = BTreeMap::<GroupId, String>::new();
    let mut failovers = 0;
    let stop_at = Instant::now() + Duration::from_secs(600);
    while running.load(Ordering::Relaxed) && Instant::now() < stop_at {
        for api in &apis {
            let Ok(status) = api.status().await else {
                continue;
            };
            // In config-only mode every node is active in the one group
            // at once: nothing changes hands there.
            if status.node.mode == Mode::ConfigOnly {
                continue;
            }
            let name = status.node.node;
            for group in status.node.groups {
                if group.role != EffectiveRole::Active {
                    continue;
                }
                let before = holders.insert(group.group, name.clone());
                if before.is_some_and(|b| b != name) {
                    failovers += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    failovers
}
