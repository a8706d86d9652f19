//! Listener suspend (with drain) and resume; socket activation.

use std::time::Duration;

use tandem_mta::ListenerState;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_drains_then_closes_and_resume_reopens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = sink().await;
    let relay = relay(dir.path(), sink.local_addr().await, test_config()).await;
    let a = addr(&relay).await;
    let mut busy = Raw::connect(a).await;
    let mut polite = Raw::connect(a).await;
    assert_eq!(busy.cmd("EHLO t").await.0, 250);
    assert_eq!(polite.cmd("EHLO t").await.0, 250);
    let control = relay.listener().clone();
    let suspend = tokio::spawn(async move { control.suspend(Duration::from_millis(500)).await });
    let l = relay.listener().clone();
    let mut suspended = false;
    for _ in 0..500 {
        if l.state().await == ListenerState::Suspended {
            suspended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(suspended);
    // New clients are refused; sessions in progress go on.
    assert!(
        tokio::net::TcpStream::connect(a).await.is_err(),
        "a suspended listener accepted"
    );
    let (code, text) = busy
        .mail("a@b", &["c@d"], "X-Tandem-Id: during-drain\r\n\r\nx\r\n")
        .await;
    assert_eq!(code, 250, "{text}");
    assert_eq!(polite.cmd("QUIT").await.0, 221);
    // `busy` stays idle past the drain timeout: it is told 421 4.3.2.
    let (code, text) = busy.reply().await;
    assert_eq!(code, 421, "{text}");
    assert!(text.contains("4.3.2"), "{text}");
    let report = suspend.await.expect("join");
    assert_eq!(report.sessions_at_suspend, 2, "{report:?}");
    assert_eq!(report.sessions_closed, 1, "{report:?}");
    assert_eq!(relay.listener().sessions(), 0);
    // Delivery went on while suspended; resume reopens the same address.
    relay.listener().resume().await.expect("resume");
    assert_eq!(relay.listener().state().await, ListenerState::Running);
    let mut again = Raw::connect(a).await;
    assert_eq!(again.cmd("EHLO t").await.0, 250);
    let (code, _) = again
        .mail("a@b", &["c@d"], "X-Tandem-Id: after-resume\r\n\r\nx\r\n")
        .await;
    assert_eq!(code, 250);
    let got = sink.run_until(Some(2), Duration::from_secs(20), None).await;
    assert_eq!(got.distinct_ids, 2, "{got:?}");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_with_no_session_returns_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(dir.path(), free_port(), test_config()).await;
    let report = relay.listener().suspend(Duration::from_secs(30)).await;
    assert_eq!(report.sessions_at_suspend, 0);
    assert_eq!(report.sessions_closed, 0);
    relay.listener().resume().await.expect("resume");
    relay
        .listener()
        .resume()
        .await
        .expect("resume twice is harmless");
    let mut c = Raw::connect(addr(&relay).await).await;
    assert_eq!(c.cmd("QUIT").await.0, 221);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_serves_the_inherited_socket() {
    let name = "socket_activation_serves_the_inherited_socket";
    let Some(activate) = tool("systemd-socket-activate", name) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("relay.toml");
    std::fs::write(&cfg, TEST_TOML).expect("config");
    let sink = sink().await;
    let port = free_port();
    // `--listen` names another address: the inherited socket must win.
    let args = serde_json::json!([
        "serve",
        "--listen",
        "127.0.0.1:1",
        "--spool",
        dir.path().join("spool"),
        "--relay-to",
        sink.local_addr().await.to_string(),
        "--config",
        cfg
    ]);
    let mut child = std::process::Command::new(activate)
        .arg("-l")
        .arg(port.to_string())
        .arg("-E")
        .arg(format!("TANDEM_MTA_CHILD_ARGS={args}"))
        .arg(std::env::current_exe().expect("exe"))
        .args([
            "child_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn systemd-socket-activate");
    // The socket exists once systemd-socket-activate listens; the first
    // connection starts the relay, which accepts it from the inherited socket.
    let mut connected = None;
    for _ in 0..500 {
        if let Ok(s) = tokio::net::TcpStream::connect(port).await {
            connected = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(connected);
    let mut c = Raw::connect(port).await;
    assert_eq!(c.cmd("EHLO t").await.0, 250);
    let (code, text) = c
        .mail("a@b", &["c@d"], "X-Tandem-Id: activated\r\n\r\nx\r\n")
        .await;
    let got = sink.run_until(Some(1), Duration::from_secs(20), None).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(code, 250, "{text}");
    assert_eq!(got.distinct_ids, 1, "{got:?}");
}
