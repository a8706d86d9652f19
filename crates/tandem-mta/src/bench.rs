//! `tandem bench relay`: tandem's relay against postfix, same machine, same load.
//!
//! ```text
//!   load (N sessions × M messages)  ─►  relay under test  ─►  counting sink
//!        acknowledged msgs/s, p99          tandem | postfix       end-to-end, exactly-once check
//! ```
//!
//! Both relays fsync before their `250` (postfix's cleanup does by default),
//! both relay to the same next hop (our counting sink, so each side is also
//! checked for lost and duplicated messages), both listen on 127.0.0.1. The
//! postfix side is a throwaway instance in a temporary directory (its own
//! `main.cf`, `master.cf`, queue), started with `postfix -c DIR start` and
//! stopped afterwards (see shared/notes/postfix-as-a-baseline.md). It needs
//! root and the postfix package; without them it is skipped with the reason.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::load::{LoadOptions, LoadReport, load};
use crate::relay::RelayOptions;
use crate::server::Listen;
use crate::sink::Sink;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Parallel client sessions.
    pub sessions: usize,
    /// Messages in total (per relay).
    pub messages: u64,
    /// Message size in octets.
    pub size: usize,
    /// Also measure postfix.
    pub postfix: bool,
    /// How to start tandem's relay as its own process (e.g. `[tandem, mta,
    /// serve]`); `--listen`, `--spool`, `--relay-to` are appended. None: run
    /// it inside this process (then no RSS figure of its own).
    pub relay_command: Option<Vec<OsString>>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            sessions: 20,
            messages: 5000,
            size: 4096,
            postfix: true,
            relay_command: None,
        }
    }
}

/// One relay's figures.
#[derive(Debug, Clone, Serialize)]
pub struct BenchSide {
    /// Messages acknowledged per second, as seen by the load generator.
    pub msgs_per_s: f64,
    /// 99th percentile of MAIL-to-250 latency, milliseconds.
    pub p99_ms: f64,
    /// Peak resident memory of the relay process (tandem in its own process only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_kib: Option<u64>,
    /// Messages per second from the first MAIL to the last arrival at the next hop.
    pub end_to_end_msgs_per_s: f64,
    /// Acknowledged messages.
    pub acknowledged: u64,
    /// Acknowledged messages that never reached the next hop (must be 0).
    pub missing: u64,
    /// Messages that reached the next hop more than once.
    pub duplicates: u64,
}

/// The comparison.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// tandem's relay.
    pub tandem: BenchSide,
    /// postfix, if it could be run.
    pub postfix: Option<BenchSide>,
    /// Why postfix was not measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postfix_skipped: Option<String>,
}

/// Runs the load against tandem, then against postfix.
pub async fn bench_relay(opts: BenchOptions) -> Result<BenchReport> {
    let work = TempDir::new()?;
    let tandem = bench_tandem(&opts, &work.0.join("tandem")).await?;
    let (postfix, postfix_skipped) = if opts.postfix {
        match bench_postfix(&opts, &work.0.join("postfix")).await {
            Ok(side) => (Some(side), None),
            Err(e) => (None, Some(e.to_string())),
        }
    } else {
        (None, Some("not requested".to_string()))
    };
    Ok(BenchReport {
        tandem,
        postfix,
        postfix_skipped,
    })
}

async fn bench_tandem(opts: &BenchOptions, dir: &Path) -> Result<BenchSide> {
    let sink = Sink::bind(Listen::Bind(vec![loopback(0)]), 0).await?;
    let next_hop = sink.local_addr().await;
    let spool = dir.join("spool");
    match &opts.relay_command {
        None => {
            let mut o = RelayOptions::new(
                Listen::Bind(vec![loopback(0)]),
                &spool,
                next_hop.to_string(),
            );
            o.config.hostname = "tandem-bench.localdomain".into();
            let relay = crate::relay::start(o).await?;
            let Some(addr) = relay.listener().local_addrs().await.first().copied() else {
                relay.shutdown().await;
                return Err(Error::Invalid("relay has no listening address".into()));
            };
            let side = measure(opts, addr, sink, None).await;
            relay.shutdown().await;
            side
        }
        Some(cmd) => {
            let addr = free_port()?;
            let (program, args) = cmd
                .split_first()
                .ok_or_else(|| Error::Invalid("empty relay command".into()))?;
            let child = Command::new(program)
                .args(args)
                .arg("--listen")
                .arg(addr.to_string())
                .arg("--spool")
                .arg(&spool)
                .arg("--relay-to")
                .arg(next_hop.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| Error::path(program, e))?;
            let child = KillOnDrop(child);
            wait_listening(addr).await?;
            measure(opts, addr, sink, Some(child.0.id())).await
        }
    }
}

async fn bench_postfix(opts: &BenchOptions, dir: &Path) -> Result<BenchSide> {
    let sink = Sink::bind(Listen::Bind(vec![loopback(0)]), 0).await?;
    let next_hop = sink.local_addr().await;
    let addr = free_port()?;
    let instance = Postfix::start(dir, addr, next_hop)?;
    wait_listening(addr).await?;
    let side = measure(opts, addr, sink, None).await;
    instance.stop();
    side
}

/// Loads `addr`, then waits for the sink to have every acknowledged message.
async fn measure(
    opts: &BenchOptions,
    addr: SocketAddr,
    sink: Sink,
    pid: Option<u32>,
) -> Result<BenchSide> {
    let started = Instant::now();
    let report: LoadReport = load(LoadOptions {
        to: addr,
        messages: opts.messages,
        concurrency: opts.sessions,
        size: opts.size,
        timeout: Duration::from_secs(300),
    })
    .await?;
    let got = sink
        .run_until(None, Duration::from_secs(300), Some(&report.acked_ids))
        .await;
    let end_to_end = started.elapsed().as_secs_f64();
    Ok(BenchSide {
        msgs_per_s: report.msgs_per_s,
        p99_ms: report.latency.p99_ms,
        rss_kib: pid.and_then(peak_rss_kib),
        end_to_end_msgs_per_s: if end_to_end > 0.0 {
            report.acknowledged as f64 / end_to_end
        } else {
            0.0
        },
        acknowledged: report.acknowledged,
        missing: got.missing.unwrap_or(0),
        duplicates: got.duplicates,
    })
}

/// `VmHWM` of a process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A loopback port nothing listens on right now.
fn free_port() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind(loopback(0)).map_err(|e| Error::Socket {
        what: "bind",
        addr: "127.0.0.1:0".into(),
        source: e,
    })?;
    Ok(l.local_addr()?)
}

/// Polls until something accepts on `addr` (bounded: 20 s).
async fn wait_listening(addr: SocketAddr) -> Result<()> {
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(Error::Timeout(format!(
        "nothing listening on {addr} after 20 s"
    )))
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A temporary directory removed on drop (tempfile is only a dev-dependency).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!("tandem-bench-{}-{nanos:x}", std::process::id()));
        std::fs::create_dir_all(&p).map_err(|e| Error::path(&p, e))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A throwaway postfix instance relaying everything to one next hop.
struct Postfix {
    conf: PathBuf,
}

impl Postfix {
    fn start(dir: &Path, listen: SocketAddr, next_hop: SocketAddr) -> Result<Postfix> {
        use std::os::unix::fs::PermissionsExt;
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e| Error::path(p, e)
        };
        if !Path::new("/usr/sbin/postfix").exists() {
            return Err(Error::Invalid(
                "postfix is not installed (apt-get install postfix)".into(),
            ));
        }
        let (uid, gid) =
            user_ids("postfix").ok_or_else(|| Error::Invalid("no `postfix` user".into()))?;
        let conf = dir.join("conf");
        let queue = dir.join("queue");
        let data = dir.join("data");
        for d in [&conf, &queue, &data] {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        // The postfix user must traverse every folder above its queue.
        let mut p = Some(dir);
        while let Some(d) = p {
            if d.starts_with(std::env::temp_dir()) && d != std::env::temp_dir() {
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
                    .map_err(io(d))?;
            }
            p = d.parent();
        }
        std::os::unix::fs::chown(&data, Some(uid), Some(gid)).map_err(|e| {
            Error::Invalid(format!(
                "chown {} to postfix (needs root): {e}",
                data.display()
            ))
        })?;
        let main_cf = format!(
            "compatibility_level = 3.6\nqueue_directory = {q}\ndata_directory = {d}\nmeta_directory = /etc/postfix\n\
             command_directory = /usr/sbin\ndaemon_directory = /usr/lib/postfix/sbin\nshlib_directory = /usr/lib/postfix\n\
             mail_owner = postfix\nmaillog_file = {dir}/maillog\nmaillog_file_prefixes = {dir}\n\
             inet_interfaces = 127.0.0.1\ninet_protocols = ipv4\nmynetworks = 127.0.0.0/8\nmydestination =\n\
             relayhost = [127.0.0.1]:{hop}\nsmtp_dns_support_level = disabled\n\
             smtpd_relay_restrictions = permit_mynetworks, reject\nmyhostname = postfix-bench.localdomain\n\
             alias_maps =\nalias_database =\n",
            q = queue.display(),
            d = data.display(),
            dir = dir.display(),
            hop = next_hop.port(),
        );
        std::fs::write(conf.join("main.cf"), main_cf).map_err(io(&conf))?;
        let master = std::fs::read_to_string("/etc/postfix/master.cf")
            .map_err(io(Path::new("/etc/postfix/master.cf")))?;
        std::fs::write(conf.join("master.cf"), rewrite_master_cf(&master, listen))
            .map_err(io(&conf))?;
        let me = Postfix { conf };
        me.run("set-permissions")?;
        me.run("start")?;
        Ok(me)
    }

    /// `postfix -c CONF VERB`, under `script` so a failure says why (postfix
    /// prints its errors only to a terminal or syslog).
    fn run(&self, verb: &str) -> Result<()> {
        let cmd = format!("postfix -c {} {verb}", self.conf.display());
        let out = Command::new("script")
            .args(["-qc", &cmd, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::Invalid(format!("cannot run `{cmd}`: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "`{cmd}` failed: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            )))
        }
    }

    fn stop(self) {
        if let Err(e) = self.run("stop") {
            tracing::warn!(error = %e, "postfix did not stop cleanly");
        }
    }
}

/// Debian's master.cf with no chroot and the smtp listener on `listen`.
fn rewrite_master_cf(master: &str, listen: SocketAddr) -> String {
    let mut out = String::new();
    for line in master.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with(|c: char| c == '#' || c.is_whitespace()) || fields.len() < 8 {
            out.push_str(line);
        } else {
            let mut f: Vec<String> = fields.iter().map(|s| s.to_string()).collect();
            if f[0] == "smtp" && f[1] == "inet" {
                f[0] = listen.to_string();
            }
            f[4] = "n".to_string();
            out.push_str(&f.join("  "));
        }
        out.push('\n');
    }
    out
}

/// uid and gid of a user, from /etc/passwd.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_cf_rewrite() {
        let m = "# comment\nsmtp      inet  n       -       y       -       -       smtpd\n  -o x=y\npickup    unix  n       -       y       60      1       pickup\n";
        let out = rewrite_master_cf(m, loopback(2500));
        assert!(
            out.contains("127.0.0.1:2500  inet  n  -  n  -  -  smtpd"),
            "{out}"
        );
        assert!(
            out.contains("pickup  unix  n  -  n  60  1  pickup"),
            "{out}"
        );
        assert!(out.contains("# comment\n") && out.contains("  -o x=y\n"));
    }
}
