//! The SMTP dialogue against a real relay: limits, bad input, pipelining.

use std::time::Duration;

use crate::common::*;

async fn relay_with(
    toml: &str,
) -> (
    tempfile::TempDir,
    tandem_mta::RelayHandle,
    tandem_mta::sink::Sink,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = sink().await;
    let mut config =
        tandem_mta::config::Config::from_toml(&format!("{TEST_TOML}{toml}")).expect("config");
    config.hostname = "relay.test".into();
    let relay = relay(dir.path(), sink.local_addr().await, config).await;
    (dir, relay, sink)
}

#[tokio::test]
async fn ehlo_lists_extensions_and_basic_commands_work() {
    let (_d, relay, _s) = relay_with("").await;
    let mut c = Raw::connect(addr(&relay).await).await;
    let (code, text) = c.cmd("EHLO client.test").await;
    assert_eq!(code, 250);
    for ext in ["PIPELINING", "8BITMIME", "SIZE ", "ENHANCEDSTATUSCODES"] {
        assert!(text.contains(ext), "{ext} missing from {text}");
    }
    assert_eq!(c.cmd("NOOP").await.0, 250);
    assert_eq!(c.cmd("VRFY postmaster").await.0, 252);
    assert_eq!(c.cmd("RSET").await.0, 250);
    assert_eq!(c.cmd("EXPN list").await.0, 502);
    let (code, text) = c
        .mail(
            "a@client.test",
            &["b@dest.test"],
            "Subject: x\r\n\r\nhello\r\n",
        )
        .await;
    assert_eq!(code, 250, "{text}");
    assert!(text.starts_with("250 2.0.0 Ok: queued as "), "{text}");
    assert_eq!(c.cmd("QUIT").await.0, 221);
    relay.shutdown().await;
}

#[tokio::test]
async fn malformed_commands_get_500_501_503_and_session_goes_on() {
    let (_d, relay, _s) = relay_with("").await;
    let mut c = Raw::connect(addr(&relay).await).await;
    assert_eq!(c.cmd("MAIL FROM:<a@b>").await.0, 503, "MAIL before EHLO");
    assert_eq!(c.cmd("EHLO").await.0, 501, "EHLO without a domain");
    assert_eq!(c.cmd("EHLO client.test").await.0, 250);
    assert_eq!(c.cmd("FROBNICATE now").await.0, 500);
    assert_eq!(c.cmd("MAIL FROM:a@b").await.0, 501);
    assert_eq!(c.cmd("MAIL FROM:<a@b> FOO=BAR").await.0, 555);
    assert_eq!(c.cmd("RCPT TO:<x@y>").await.0, 503, "RCPT before MAIL");
    assert_eq!(c.cmd("DATA").await.0, 503, "DATA before MAIL");
    c.send(b"\x00\xff\xfe garbage\r\n").await;
    assert_eq!(c.reply().await.0, 501);
    assert_eq!(c.cmd("MAIL FROM:<a@b>").await.0, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@b>").await.0, 503, "nested MAIL");
    assert_eq!(c.cmd("DATA").await.0, 554, "DATA without recipients");
    assert_eq!(c.cmd("RCPT TO:<>").await.0, 501);
    assert_eq!(c.cmd("RCPT TO:<x@y>").await.0, 250);
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(b"Subject: still fine\r\n\r\nok\r\n.\r\n").await;
    assert_eq!(c.reply().await.0, 250);
    relay.shutdown().await;
}

#[tokio::test]
async fn overlong_lines_get_500_5_5_2_and_session_stays_usable() {
    let (_d, relay, _s) = relay_with("").await;
    let mut c = Raw::connect(addr(&relay).await).await;
    assert_eq!(c.cmd("EHLO client.test").await.0, 250);
    let long = format!("NOOP {}", "x".repeat(1200));
    let (code, text) = c.cmd(&long).await;
    assert_eq!(code, 500);
    assert!(text.contains("5.5.2"), "{text}");
    assert_eq!(c.cmd("NOOP").await.0, 250);
    // In DATA: the whole message is refused after the dot, not cut in two.
    assert_eq!(c.cmd("MAIL FROM:<a@b>").await.0, 250);
    assert_eq!(c.cmd("RCPT TO:<c@d>").await.0, 250);
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(format!("Subject: x\r\n\r\n{}\r\nshort\r\n.\r\n", "y".repeat(5000)).as_bytes())
        .await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 500, "{text}");
    assert!(text.contains("5.5.2"), "{text}");
    let (code, _) = c.mail("a@b", &["c@d"], "Subject: fine\r\n\r\nok\r\n").await;
    assert_eq!(code, 250);
    relay.shutdown().await;
}

#[tokio::test]
async fn oversize_message_gets_552_5_3_4() {
    let (_d, relay, _s) = relay_with("[limits]\nmax_message_size = 10000\n").await;
    let mut c = Raw::connect(addr(&relay).await).await;
    let (_, ehlo) = c.cmd("EHLO client.test").await;
    assert!(ehlo.contains("SIZE 10000"), "{ehlo}");
    let (code, text) = c.cmd("MAIL FROM:<a@b> SIZE=20000").await;
    assert_eq!(code, 552);
    assert!(text.contains("5.3.4"), "{text}");
    assert_eq!(c.cmd("MAIL FROM:<a@b> SIZE=2000").await.0, 250);
    assert_eq!(c.cmd("RCPT TO:<c@d>").await.0, 250);
    assert_eq!(c.cmd("DATA").await.0, 354);
    let line = format!("{}\r\n", "z".repeat(98));
    c.send(line.repeat(300).as_bytes()).await;
    c.send(b".\r\n").await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 552, "{text}");
    assert!(text.contains("5.3.4"), "{text}");
    assert_eq!(c.mail("a@b", &["c@d"], "small\r\n").await.0, 250);
    relay.shutdown().await;
}

#[tokio::test]
async fn too_many_recipients_get_452_4_5_3() {
    let (_d, relay, _s) = relay_with("[limits]\nmax_recipients = 3\n").await;
    let mut c = Raw::connect(addr(&relay).await).await;
    assert_eq!(c.cmd("EHLO client.test").await.0, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@b>").await.0, 250);
    for i in 0..3 {
        assert_eq!(c.cmd(&format!("RCPT TO:<r{i}@d>")).await.0, 250);
    }
    let (code, text) = c.cmd("RCPT TO:<r3@d>").await;
    assert_eq!(code, 452);
    assert!(text.contains("4.5.3"), "{text}");
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(b"x\r\n.\r\n").await;
    assert_eq!(c.reply().await.0, 250);
    relay.shutdown().await;
}

#[tokio::test]
async fn pipelined_batch_is_answered_in_order_and_dots_are_unstuffed() {
    // The next hop is down, so the spooled file can be read back as stored.
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(dir.path(), free_port(), test_config()).await;
    let mut c = Raw::connect(addr(&relay).await).await;
    c.send(b"EHLO client.test\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\nDATA\r\n")
        .await;
    let codes = [
        c.reply().await.0,
        c.reply().await.0,
        c.reply().await.0,
        c.reply().await.0,
        c.reply().await.0,
    ];
    assert_eq!(codes, [250, 250, 250, 250, 354]);
    // The end of data, a second transaction and QUIT in one write.
    c.send(b"Subject: dots\r\n\r\n..leading dot\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<g@h>\r\nDATA\r\n")
        .await;
    let codes = [
        c.reply().await.0,
        c.reply().await.0,
        c.reply().await.0,
        c.reply().await.0,
    ];
    assert_eq!(codes, [250, 250, 250, 354]);
    c.send(b"second\r\n.\r\nQUIT\r\n").await;
    assert_eq!(c.reply().await.0, 250);
    assert_eq!(c.reply().await.0, 221);
    let ids = relay.spool().recover().expect("recover");
    assert_eq!(ids.len(), 2);
    let mut found = false;
    for id in ids {
        let m = relay.spool().load(&id).await.expect("load");
        if m.envelope.rcpts == ["c@d", "e@f"] {
            let body = String::from_utf8_lossy(&m.body).to_string();
            assert!(body.contains("\r\n\r\n.leading dot\r\n"), "{body:?}");
            assert!(body.starts_with("Received: from client.test"), "{body:?}");
            assert_eq!(m.envelope.from, "a@b");
            found = true;
        } else {
            assert_eq!(m.envelope.from, "");
            assert_eq!(m.envelope.rcpts, ["g@h"]);
        }
    }
    assert!(found);
    relay.shutdown().await;
}

#[tokio::test]
async fn idle_session_times_out_with_421() {
    let (_d, relay, _s) = relay_with("[limits]\ncommand_timeout = \"200ms\"\n").await;
    let mut c = Raw::connect(addr(&relay).await).await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 421, "{text}");
    assert!(text.contains("4.4.2"), "{text}");
    relay.shutdown().await;
}

#[tokio::test]
async fn sessions_over_the_limit_get_421() {
    let (_d, relay, _s) = relay_with("[limits]\nmax_sessions = 2\n").await;
    let a = addr(&relay).await;
    let _c1 = Raw::connect(a).await;
    let _c2 = Raw::connect(a).await;
    let mut s = tokio::net::TcpStream::connect(a).await.expect("connect");
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut s, &mut buf),
    )
    .await
    .expect("in time")
    .expect("read");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("421 4.3.2"), "{text}");
    relay.shutdown().await;
}
