//! Real clients and servers: Python's smtplib, swaks, postfix's smtp-source
//! and smtp-sink. Each test is skipped, saying why, when its tool is missing.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_sends_through_the_relay() {
    let Some(python) = tool("python3", "python_smtplib_sends_through_the_relay") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = sink().await;
    let relay = relay(dir.path(), sink.local_addr().await, test_config()).await;
    let a = addr(&relay).await;
    let script = r#"
import smtplib, sys
host, port = sys.argv[1], int(sys.argv[2])
with smtplib.SMTP(host, port, timeout=20) as s:
    code, _ = s.ehlo("python.test")
    assert code == 250
    assert s.has_extn("pipelining") and s.has_extn("size") and s.has_extn("8bitmime")
    for i in range(3):
        msg = "X-Tandem-Id: py-%d\r\nSubject: smtplib %d\r\n\r\nline\r\n.\r\n..two dots\r\n" % (i, i)
        refused = s.sendmail("py@client.test", ["a@dest.test", "b@dest.test"], msg)
        assert refused == {}, refused
    code, _ = s.verify("someone")
    assert code == 252, code
print("ok")
"#;
    let out = Command::new(python)
        .args(["-c", script, &a.ip().to_string(), &a.port().to_string()])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = sink.run_until(Some(3), Duration::from_secs(20), None).await;
    assert_eq!(report.distinct_ids, 3, "{report:?}");
    assert_eq!(report.duplicates, 0, "{report:?}");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_sends_through_the_relay() {
    let Some(swaks) = tool("swaks", "swaks_sends_through_the_relay") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = sink().await;
    let relay = relay(dir.path(), sink.local_addr().await, test_config()).await;
    let a = addr(&relay).await;
    for (i, extra) in [(0, vec!["--pipeline"]), (1, vec![])] {
        let out = Command::new(&swaks)
            .args([
                "--server",
                &a.to_string(),
                "--helo",
                "swaks.test",
                "--from",
                "s@client.test",
                "--to",
            ])
            .arg(format!("swaks{i}@dest.test"))
            .args([
                "--add-header",
                &format!("X-Tandem-Id: swaks-{i}"),
                "--timeout",
                "20",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("run swaks");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "swaks failed: {text}");
        assert!(text.contains("250 2.0.0 Ok: queued as"), "{text}");
    }
    let report = sink.run_until(Some(2), Duration::from_secs(20), None).await;
    assert_eq!(report.distinct_ids, 2, "{report:?}");
    assert_eq!(report.duplicates, 0, "{report:?}");
    relay.shutdown().await;
}

/// Runs smtp-source against `relay`: `sessions` × `messages` total, -N for
/// unique recipients. True if every message was accepted (exit 0).
fn smtp_source(
    bin: &std::path::Path,
    relay: std::net::SocketAddr,
    sessions: u32,
    messages: u32,
) -> bool {
    let out = Command::new(bin)
        .args([
            "-s",
            &sessions.to_string(),
            "-m",
            &messages.to_string(),
            "-l",
            "2048",
            "-N",
        ])
        .args([
            "-f",
            "src@client.test",
            "-t",
            "rcpt@dest.test",
            &relay.to_string(),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run smtp-source");
    if !out.status.success() {
        eprintln!("smtp-source: {}", String::from_utf8_lossy(&out.stderr));
    }
    out.status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_source_to_relay_to_own_sink_exactly_once() {
    let Some(src) = tool(
        "smtp-source",
        "smtp_source_to_relay_to_own_sink_exactly_once",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = sink().await;
    let relay = relay(dir.path(), sink.local_addr().await, test_config()).await;
    let a = addr(&relay).await;
    let ok = tokio::task::spawn_blocking(move || smtp_source(&src, a, 5, 300))
        .await
        .expect("join");
    assert!(ok, "smtp-source saw a refusal");
    let report = sink
        .run_until(Some(300), Duration::from_secs(30), None)
        .await;
    // Without X-Tandem-Id the sink counts recipients, which -N makes unique.
    assert_eq!(report.distinct_ids, 300, "{report:?}");
    assert_eq!(report.messages, 300, "{report:?}");
    assert_eq!(report.duplicates, 0, "{report:?}");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_source_to_relay_to_postfix_smtp_sink_exactly_once() {
    let name = "smtp_source_to_relay_to_postfix_smtp_sink_exactly_once";
    let (Some(src), Some(snk)) = (tool("smtp-source", name), tool("smtp-sink", name)) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // smtp-sink drops privileges to nobody and writes its dumps as nobody.
    let dump = dir.path().join("dump");
    std::fs::create_dir(&dump).expect("mkdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&dump, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let sink_addr = free_port();
    let mut sink_proc = Command::new(snk)
        .args(["-u", "nobody", "-d"])
        .arg(dump.join("%M."))
        .arg(sink_addr.to_string())
        .arg("100")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn smtp-sink");
    let relay = relay(&dir.path().join("spool"), sink_addr, test_config()).await;
    let a = addr(&relay).await;
    let ok = tokio::task::spawn_blocking(move || smtp_source(&src, a, 5, 200))
        .await
        .expect("join");
    assert!(ok, "smtp-source saw a refusal");
    let delivered = eventually(
        || relay.queue_stats().delivered >= 200,
        Duration::from_secs(30),
    )
    .await;
    let stats = relay.queue_stats();
    relay.shutdown().await;
    let _ = sink_proc.kill();
    let _ = sink_proc.wait();
    assert!(delivered, "{stats:?}");
    // Every dump file holds one transaction; X-Rcpt-Args names its recipient.
    let mut per_rcpt: HashMap<String, u32> = HashMap::new();
    for entry in std::fs::read_dir(&dump).expect("dump dir") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read dump");
        for line in text.lines().filter(|l| l.starts_with("X-Rcpt-Args:")) {
            *per_rcpt.entry(line.to_string()).or_insert(0) += 1;
        }
    }
    let dups: Vec<_> = per_rcpt.iter().filter(|(_, n)| **n > 1).collect();
    assert_eq!(per_rcpt.len(), 200, "distinct recipients at smtp-sink");
    assert!(dups.is_empty(), "duplicates: {dups:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_relay_runs_both_sides_with_nothing_lost() {
    let postfix = tool(
        "postfix",
        "bench_relay_runs_both_sides_with_nothing_lost (postfix side)",
    )
    .is_some();
    let report = tandem_mta::bench::bench_relay(tandem_mta::bench::BenchOptions {
        sessions: 4,
        messages: 200,
        size: 1024,
        postfix,
        relay_command: None,
    })
    .await
    .expect("bench");
    eprintln!(
        "bench (smoke size, not a measurement): {}",
        serde_json::to_string(&report).unwrap_or_default()
    );
    assert_eq!(report.tandem.acknowledged, 200);
    assert_eq!(report.tandem.missing, 0);
    if postfix {
        match &report.postfix {
            Some(p) => assert_eq!((p.acknowledged, p.missing), (200, 0), "{p:?}"),
            None => eprintln!("SKIPPED postfix side: {:?}", report.postfix_skipped),
        }
    }
}
