//! Health checks: how a booted release proves it came up.
//!
//! A slot is marked good only after its health check passes within the
//! manifest's timeout; until then a rollback is one crash away. The checks
//! are deliberately plain — a TCP connect, an HTTP GET answering 2xx, or a
//! command exiting 0 — so any service can offer one. They block (std only):
//! the agent runs them on a blocking thread, and tests call them directly.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::manifest::{HealthCheck, HealthProbe};

/// How often a failing probe is retried before the deadline.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// Probes until the check passes or its timeout ends; the error says what the
/// last attempt saw.
pub fn wait_healthy(check: &HealthCheck, image_root: &Path) -> Result<(), String> {
    let deadline = Instant::now() + check.timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = probe_once(
            &check.probe,
            image_root,
            left.max(Duration::from_millis(50)),
        );
        match attempt {
            Ok(()) => return Ok(()),
            Err(last) if Instant::now() + RETRY_EVERY >= deadline => {
                return Err(format!(
                    "not healthy within {} ms: {last}",
                    check.timeout.as_millis()
                ));
            }
            Err(_) => sleep(RETRY_EVERY),
        }
    }
}

/// One probe, bounded by `budget`.
pub fn probe_once(probe: &HealthProbe, image_root: &Path, budget: Duration) -> Result<(), String> {
    let per_try = budget.min(Duration::from_secs(2));
    match probe {
        HealthProbe::Tcp(addr) => connect(addr, per_try).map(drop),
        HealthProbe::Http(url) => http_get(url, per_try),
        HealthProbe::Command(argv) => run_command(argv, image_root, budget),
    }
}

fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, String> {
    let resolved = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} resolves to no address"))?;
    TcpStream::connect_timeout(&resolved, timeout).map_err(|e| format!("connect {addr}: {e}"))
}

fn http_get(url: &str, timeout: Duration) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    let mut stream = connect(&addr, timeout)?;
    let io = |e: std::io::Error| format!("GET {url}: {e}");
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).map_err(io)?;
    let status_line = String::from_utf8_lossy(&head[..n]);
    let code = status_line.split_whitespace().nth(1).unwrap_or("");
    if code.starts_with('2') && code.len() == 3 {
        Ok(())
    } else {
        Err(format!(
            "GET {url} answered {:?}",
            status_line.lines().next().unwrap_or("")
        ))
    }
}

fn run_command(argv: &[String], image_root: &Path, budget: Duration) -> Result<(), String> {
    let (program, args) = argv.split_first().ok_or("empty health command")?;
    let mut child = Command::new(program)
        .args(args)
        .current_dir(image_root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let deadline = Instant::now() + budget;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("{program} exited with {status}")),
            Ok(None) if Instant::now() >= deadline => {
                // The check is over either way; a kill or reap failure changes nothing.
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{program} did not finish in {} ms",
                    budget.as_millis()
                ));
            }
            Ok(None) => sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for {program}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn check(probe: HealthProbe, ms: u64) -> HealthCheck {
        HealthCheck {
            probe,
            timeout: Duration::from_millis(ms),
        }
    }

    #[test]
    fn tcp_passes_when_listening_and_fails_when_not() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local listener");
        let addr = listener
            .local_addr()
            .expect("read the listener's address")
            .to_string();
        assert_eq!(
            wait_healthy(&check(HealthProbe::Tcp(addr.clone()), 1000), Path::new("/")),
            Ok(())
        );
        drop(listener);
        let failed = wait_healthy(&check(HealthProbe::Tcp(addr), 300), Path::new("/"));
        assert!(failed.is_err_and(|e| e.starts_with("not healthy within 300 ms: connect")));
    }

    #[test]
    fn http_wants_2xx() {
        for (answer, healthy) in [
            ("HTTP/1.0 200 OK\r\n\r\n", true),
            ("HTTP/1.0 503 Busy\r\n\r\n", false),
        ] {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local listener");
            let url = format!(
                "http://{}/health",
                listener.local_addr().expect("read the listener's address")
            );
            let server = std::thread::spawn(move || {
                if let Ok((mut s, _)) = listener.accept() {
                    let mut buf = [0u8; 512];
                    let _ = s.read(&mut buf);
                    let _ = s.write_all(answer.as_bytes());
                }
            });
            let result = probe_once(
                &HealthProbe::Http(url),
                Path::new("/"),
                Duration::from_secs(2),
            );
            assert_eq!(result.is_ok(), healthy, "{answer}: {result:?}");
            let _ = server.join();
        }
    }

    #[test]
    fn command_exit_status_and_timeout() {
        let sh = |script: &str| HealthProbe::Command(vec!["sh".into(), "-c".into(), script.into()]);
        assert_eq!(
            probe_once(&sh("exit 0"), Path::new("/"), Duration::from_secs(2)),
            Ok(())
        );
        assert!(probe_once(&sh("exit 3"), Path::new("/"), Duration::from_secs(2)).is_err());
        let slow = probe_once(&sh("sleep 5"), Path::new("/"), Duration::from_millis(200));
        assert!(slow.is_err_and(|e| e.contains("did not finish")));
    }
}
