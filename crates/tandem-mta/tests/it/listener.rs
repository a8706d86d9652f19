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
