//! Commits per second through the sync engine on loopback, for
//! `data_sync` = off, async and semi: a local pair (receiver + replicator)
//! over real TLS in temporary directories, with writers that do what the
//! relay does per message — write a spool file, fsync it, commit its path,
//! later delete it and commit again.
//!
//! ```text
//! cargo run --release -p tandem-sync --example commit_rate [writers] [seconds] [bytes]
//! ```
//!
//! It prints figures; it asserts nothing (loopback on a shared machine is
//! no benchmark of a real network).

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tandem_sync::cert;
use tandem_sync::receiver::{Receiver, ReceiverConfig};
use tandem_sync::replicator::{DataSync, PeerAddr, Replicator, ReplicatorConfig};
use tandem_sync::tls::TlsIdentity;

type Failure = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let mut args = std::env::args().skip(1);
    let writers: usize = args.next().map_or(Ok(64), |a| a.parse())?;
    let seconds: u64 = args.next().map_or(Ok(3), |a| a.parse())?;
    let size: usize = args.next().map_or(Ok(4096), |a| a.parse())?;
    println!("{writers} writers, {seconds} s per mode, {size}-byte files, loopback TLS");
    for mode in [DataSync::Off, DataSync::Async, DataSync::Semi] {
        run(mode, writers, Duration::from_secs(seconds), size).await?;
    }
    Ok(())
}

async fn run(mode: DataSync, writers: usize, span: Duration, size: usize) -> Result<(), Failure> {
    let dir = tempfile::tempdir()?;
    cert::init(&dir.path().join("ca"))?;
    for node in ["node-a", "node-b"] {
        cert::issue(&dir.path().join("ca"), node, &dir.path().join("certs"))?;
    }
    let receiver = Receiver::new(ReceiverConfig {
        identity: TlsIdentity::load(&dir.path().join("certs"), "node-b")?,
        data_dir: dir.path().join("b/data"),
        config_dir: dir.path().join("b/config"),
        config_files: Vec::new(),
        config_hold: None,
        expected_peers: vec!["node-a".into()],
        events: None,
        handshake_timeout: Duration::from_secs(5),
        log_dir: Some(dir.path().join("b/log")),
        unreplicated: None,
        quarantine_dir: None,
        fencing: Default::default(),
    })?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let serving = receiver.clone();
    let server = tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });

    let data_dir = dir.path().join("a/data");
    let mut config = ReplicatorConfig::new(
        TlsIdentity::load(&dir.path().join("certs"), "node-a")?,
        data_dir.clone(),
        vec![PeerAddr {
            name: "node-b".into(),
            addr,
        }],
    );
    config.data_sync = mode;
    let replicator = Replicator::start(config)?;
    tokio::time::timeout(Duration::from_secs(10), replicator.wait_all_in_sync()).await?;

    let deadline = Instant::now() + span;
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let replicator = replicator.clone();
        let queue = data_dir.join("queue");
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let path = queue.join(format!("w{writer}-{n}"));
                n += 1;
                let spool = path.clone();
                tokio::task::spawn_blocking(move || write_fsynced(&spool, size)).await??;
                let started = Instant::now();
                replicator.commit(std::slice::from_ref(&path)).await?;
                latencies.push(started.elapsed());
                // Delivery happens later and apart from the SMTP session, as
                // in the relay: remove and replicate the delete in the
                // background, off the writer's path.
                let deliverer = replicator.clone();
                tokio::spawn(async move {
                    let _ = std::fs::remove_file(&path);
                    let _ = deliverer.commit(&[path]).await;
                });
            }
            Ok::<_, Failure>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let status = replicator.status();
    latencies.sort();
    let p99 = latencies
        .get(latencies.len().saturating_mul(99) / 100)
        .copied()
        .unwrap_or_default();
    println!(
        "{:>6}: {:>8.0} messages/s  commit p99 {:>7.2} ms  ({} commits in {} batches)",
        format!("{mode:?}").to_lowercase(),
        latencies.len() as f64 / span.as_secs_f64(),
        p99.as_secs_f64() * 1000.0,
        status.commits,
        status.batches,
    );
    drop(replicator);
    server.abort();
    Ok(())
}

/// Writes a file and fsyncs it, as the relay's spool does before commit.
fn write_fsynced(path: &PathBuf, size: usize) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::File::create(path)?;
    file.write_all(&vec![b'x'; size])?;
    file.sync_all()
}
