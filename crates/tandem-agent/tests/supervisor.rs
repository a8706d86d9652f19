//! The supervisor with real processes: socket activation, stop escalation,
//! crash restarts with backoff and crash-loop detection.

use std::io::Read;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Duration;

use tandem_agent::supervisor::{self, ServiceEvent, ServiceSpec};
use tandem_agent::vip;
use tokio::sync::mpsc;
use tokio::time::timeout;

fn spec(argv: &[&str], grace_ms: u64) -> ServiceSpec {
    ServiceSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        cwd: None,
        env: vec![],
        grace: Duration::from_millis(grace_ms),
    }
}

async fn next(events: &mut mpsc::Receiver<ServiceEvent>) -> ServiceEvent {
    match timeout(Duration::from_secs(10), events.recv()).await {
        Ok(Some(e)) => e,
        other => panic!("no service event: {other:?}"),
    }
}

fn alive(pid: u32) -> bool {
    // A zombie still has /proc/PID; check its state too.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// A service that accepts on fd 3 and answers with what socket activation
/// told it.
const ACTIVATED: &str = r#"
import os, socket
s = socket.socket(fileno=3)
while True:
    c, _ = s.accept()
    c.sendall(("fds=%s pid_ok=%s\n" % (os.environ.get("LISTEN_FDS"), os.environ.get("LISTEN_PID") == str(os.getpid()))).encode())
    c.close()
"#;

#[tokio::test]
async fn hands_the_vip_socket_over_by_socket_activation() {
    if std::process::Command::new("python3")
        .arg("-c")
        .arg("1")
        .status()
        .is_err()
    {
        eprintln!("SKIP: python3 is not installed");
        return;
    }
    let socket =
        vip::bind("127.0.0.1:0".parse().expect("parse the address")).expect("bind the socket");
    let addr = std::net::TcpListener::from(socket.try_clone().expect("clone the socket"))
        .local_addr()
        .expect("read the local address");
    assert!(socket.as_raw_fd() > 2);
    let (tx, mut events) = mpsc::channel(16);
    let service = supervisor::spawn(tx);
    service
        .start(spec(&["python3", "-c", ACTIVATED], 2000), vec![socket])
        .await;
    let ServiceEvent::Started { pid } = next(&mut events).await else {
        panic!("not started")
    };

    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).expect("connect to the service");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("read the answer");
        text
    })
    .await
    .expect("join the client task");
    assert_eq!(answer, "fds=1 pid_ok=True\n");

    service.stop().await;
    assert_eq!(next(&mut events).await, ServiceEvent::Stopped);
    assert!(!alive(pid), "the service is gone after stop");
}

#[tokio::test]
async fn stop_escalates_to_sigkill_after_the_grace_period() {
    let (tx, mut events) = mpsc::channel(16);
    let service = supervisor::spawn(tx);
    service
        .start(
            spec(
                &["sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"],
                300,
            ),
            vec![],
        )
        .await;
    let ServiceEvent::Started { pid } = next(&mut events).await else {
        panic!("not started")
    };
    tokio::time::sleep(Duration::from_millis(100)).await; // let the shell install its trap
    service.stop().await;
    assert_eq!(next(&mut events).await, ServiceEvent::Stopped);
    assert!(!alive(pid), "SIGKILL followed the ignored SIGTERM");
    assert_eq!(service.pid().await, None);
}

#[tokio::test]
async fn crashes_restart_with_backoff_then_report_a_loop() {
    let (tx, mut events) = mpsc::channel(64);
    let service = supervisor::spawn(tx);
    service
        .start(spec(&["sh", "-c", "exit 3"], 100), vec![])
        .await;
    let mut delays = Vec::new();
    loop {
        match next(&mut events).await {
            ServiceEvent::Started { .. } => {}
            ServiceEvent::Crashed { status, restart_in } => {
                assert!(status.contains('3'), "{status}");
                delays.push(restart_in.as_millis());
            }
            ServiceEvent::CrashLoop => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(delays, [100, 200, 400, 800, 1600]);
    service.stop().await;
}

#[tokio::test]
async fn a_missing_program_is_reported() {
    let (tx, mut events) = mpsc::channel(16);
    let service = supervisor::spawn(tx);
    service
        .start(spec(&["/nonexistent/service"], 100), vec![])
        .await;
    match next(&mut events).await {
        ServiceEvent::SpawnFailed { error } => {
            assert!(error.contains("/nonexistent/service"), "{error}")
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// An agent started with SIGHUP ignored (under nohup, say) must not pass
/// that on: the service starts with default signal handling, so its reload
/// signal (`on_config_change = "signal:HUP"`) reaches it.
#[tokio::test]
async fn the_service_gets_default_signal_handling_whatever_the_agent_ignores() {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let heard = dir.path().join("heard");
    // SAFETY: sets this test process's disposition of one signal; no
    // test here sends SIGHUP to itself.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    let (tx, mut events) = mpsc::channel(16);
    let service = supervisor::spawn(tx);
    let script = format!(
        "trap 'echo hup > {}' HUP; while :; do sleep 0.05 & wait $!; done",
        heard.display()
    );
    service
        .start(spec(&["sh", "-c", &script], 300), vec![])
        .await;
    let ServiceEvent::Started { pid } = next(&mut events).await else {
        panic!("not started")
    };
    tokio::time::sleep(Duration::from_millis(200)).await; // let the shell install its trap
    let pid = libc::pid_t::try_from(pid).expect("convert the pid");
    // SAFETY: kill(2) on the service's pid, which the supervisor started.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !heard.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    service.stop().await;
    assert!(heard.exists(), "the service's SIGHUP trap never ran");
}
