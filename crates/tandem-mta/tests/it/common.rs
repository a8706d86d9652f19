//! Helpers shared by the integration tests.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Parser;
use tandem_mta::Listen;
use tandem_mta::cli::MtaCommand;
use tandem_mta::config::Config;
use tandem_mta::relay::{RelayHandle, RelayOptions};
use tandem_mta::sink::Sink;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// A test configuration: fast retries, everything else default.
pub fn test_config() -> Config {
    let mut c = Config::from_toml(TEST_TOML).expect("test config");
    c.hostname = "relay.test".into();
    c
}

pub const TEST_TOML: &str = "[delivery]\nretry_base = \"50ms\"\nretry_max = \"400ms\"\nconnect_timeout = \"1s\"\nconcurrency = 4\n";

pub fn loopback0() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A port on 127.0.0.1 nothing listens on (bound, then released).
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind(loopback0()).expect("bind");
    l.local_addr().expect("addr")
}

pub async fn sink() -> Sink {
    Sink::bind(Listen::Bind(vec![loopback0()]), 0)
        .await
        .expect("sink")
}

pub async fn relay(spool: &Path, next_hop: SocketAddr, config: Config) -> RelayHandle {
    let mut o = RelayOptions::new(Listen::Bind(vec![loopback0()]), spool, next_hop.to_string());
    o.config = config;
    tandem_mta::relay::start(o).await.expect("relay")
}

pub async fn addr(relay: &RelayHandle) -> SocketAddr {
    relay.listener().local_addrs().await[0]
}

/// Waits (bounded) until `f` is true; false if it never became true.
pub async fn eventually(mut f: impl FnMut() -> bool, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

/// A hand-driven SMTP client, for saying exactly the bytes a test wants.
pub struct Raw {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
}

impl Raw {
    /// Connects and reads the greeting.
    pub async fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).await.expect("connect");
        let (r, w) = s.into_split();
        let mut raw = Raw {
            r: BufReader::new(r),
            w,
        };
        let (code, _) = raw.reply().await;
        assert_eq!(code, 220);
        raw
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).await.expect("write");
    }

    /// One reply (multi-line joined); (0, "") on EOF.
    pub async fn reply(&mut self) -> (u16, String) {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.r.read_line(&mut line))
                .await
                .expect("reply in time")
                .expect("read");
            if n == 0 {
                return (0, all);
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                return (code, all);
            }
        }
    }

    /// Sends a command line and returns the reply code and text.
    pub async fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// EHLO + one whole transaction; returns the final reply.
    pub async fn mail(&mut self, from: &str, to: &[&str], body: &str) -> (u16, String) {
        assert_eq!(self.cmd(&format!("MAIL FROM:<{from}>")).await.0, 250);
        for t in to {
            assert_eq!(self.cmd(&format!("RCPT TO:<{t}>")).await.0, 250);
        }
        assert_eq!(self.cmd("DATA").await.0, 354);
        self.send(body.as_bytes()).await;
        self.send(b".\r\n").await;
        self.reply().await
    }
}

/// Finds a tool on PATH or in /usr/sbin; prints why a test is skipped if not.
pub fn tool(name: &str, test: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/sbin".into());
    let found = dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file());
    if found.is_none() {
        eprintln!("SKIPPED {test}: `{name}` is not installed");
    }
    found
}

/// Body of the child process (see `child_process` in main.rs).
pub fn run_child(args_json: &str) {
    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: MtaCommand,
    }
    let args: Vec<String> = serde_json::from_str(args_json).expect("child args");
    let cli = Cli::parse_from(std::iter::once("mta".to_string()).chain(args));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(tandem_mta::cli::run(cli.cmd, false))
        .expect("child run");
}

/// A relay in its own process (so it can be killed with SIGKILL).
pub struct ChildRelay {
    pub child: Child,
    pub addr: SocketAddr,
}

impl ChildRelay {
    pub fn spawn(spool: &Path, next_hop: SocketAddr, config_file: &Path) -> ChildRelay {
        let args = serde_json::json!([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--spool",
            spool,
            "--relay-to",
            next_hop.to_string(),
            "--config",
            config_file
        ]);
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .args([
                "child_process",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("TANDEM_MTA_CHILD_ARGS", args.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child relay");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        // The reader thread ends when the child's stdout closes.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The test harness may print "test child_process ... " first.
                if let Some(i) = line.find("tandem-mta: listening on ") {
                    let _ = tx.send(line[i + 25..].trim().to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .ok()
            .and_then(|a| a.parse().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child relay did not start in 20 s");
        };
        ChildRelay { child, addr }
    }

    pub fn kill9(mut self) {
        // Child::kill sends SIGKILL on Unix: no chance to flush or clean up.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
