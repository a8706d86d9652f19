//! A whole tandem cluster on one machine, on loopback: the ground the
//! failover benchmark, the demo and the end-to-end tests stand on.
//!
//! Each node is a real `tandem agent` process with its own loopback address
//! (127.0.0.2, 127.0.0.3, ...) for its heartbeat link, crash-detection port
//! and API, and every node shares the VIP on 127.0.0.1 in `bind` mode —
//! only the active one binds it. Configs, keys and state live in one
//! directory that is removed when the cluster is dropped, and every agent
//! is killed then too: nothing outlives the command that made it.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use tandem_agent::api::{ApiClient, StatusReport};
use tandem_core::EffectiveRole;

/// What to build.
pub struct ClusterSpec {
    /// Node names, in priority order: the first is the primary.
    pub nodes: Vec<String>,
    /// The service each agent runs while active.
    pub service: Vec<String>,
    /// TOML appended after the `[service]` table: more service keys
    /// (`cwd = "."`), then other tables (`[monitor]`).
    pub extra_toml: String,
    /// Heartbeat interval in milliseconds.
    pub interval_ms: u64,
    /// Missed heartbeats before a peer is dead.
    pub lost_threshold: u32,
    /// The version each node reports.
    pub version: String,
    /// Where agent logs go (one file per node); discarded when `None`.
    pub log_dir: Option<PathBuf>,
    /// The tandem binary to run; this process's own when `None`.
    pub exe: Option<PathBuf>,
    /// Count the peers' service (the shared VIP) as a heartbeat link.
    pub remote_as_heartbeat: bool,
    /// The VIP of group 0; a free loopback port when `None`.
    pub vip: Option<SocketAddr>,
    /// Failover groups: 0 or 1 for active-passive; 2 or more for
    /// active-active, group N preferring node N modulo the node count and
    /// served on its own VIP.
    pub groups: usize,
    /// `config-only` mode (FortiMail config-only, ESA clusters): every node
    /// serves at once, only configuration is synced. On loopback every node
    /// binds the one VIP with `SO_REUSEPORT` and the kernel spreads the
    /// connections over them. Ignored when `groups` is 2 or more.
    pub config_only: bool,
    /// `coordination = "etcd"` with these client URLs; peers when empty.
    pub etcd: Vec<String>,
    /// One network namespace per node (a [`crate::netns::Lab`]'s `nN`,
    /// by full name), or none for loopback. In namespaces node N has the
    /// lab's address `198.18.0.N` with fixed ports, the VIP is
    /// [`crate::netns::VIP_ADDRESS`] in `ip` mode on `eth0`, and agents
    /// and CLI calls run inside the node's namespace.
    pub netns: Vec<String>,
}

impl ClusterSpec {
    /// An active-passive cluster of `nodes` (the first is the primary)
    /// running `service`, with the default timing (200 ms × 3), release
    /// 6.2.0, this process's binary and no logs; change fields as needed.
    pub fn new(nodes: &[&str], service: Vec<String>) -> ClusterSpec {
        ClusterSpec {
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            service,
            extra_toml: String::new(),
            interval_ms: 200,
            lost_threshold: 3,
            version: "6.2.0".into(),
            log_dir: None,
            exe: None,
            remote_as_heartbeat: false,
            groups: 1,
            vip: None,
            config_only: false,
            etcd: Vec::new(),
            netns: Vec::new(),
        }
    }
}

/// One node of a [`LocalCluster`].
pub struct LocalNode {
    /// Its name.
    pub name: String,
    /// Its config file.
    pub config: PathBuf,
    /// Its API address.
    pub api: SocketAddr,
    /// Its heartbeat link address (UDP).
    pub link: SocketAddr,
    /// Its sync (and crash-detection) address, where its peers connect.
    pub sync: SocketAddr,
    /// Its network namespace, if it has one.
    pub netns: Option<String>,
    process: Option<Child>,
}

impl LocalNode {
    /// The agent's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Child::id)
    }
}

/// A running local cluster.
pub struct LocalCluster {
    /// The cluster's directory (configs, keys, state).
    pub dir: PathBuf,
    /// The nodes, primary first.
    pub nodes: Vec<LocalNode>,
    /// The service address every node binds while active (group 0's).
    pub vip: SocketAddr,
    /// Every group's service address (one in active-passive).
    pub vips: Vec<SocketAddr>,
    token: String,
    exe: PathBuf,
    log_dir: Option<PathBuf>,
}

/// A free port on `ip`, for TCP and UDP both; the small race between
/// releasing and reusing it is acceptable for local clusters.
pub(crate) fn free_port(ip: &str) -> anyhow::Result<u16> {
    for _ in 0..50 {
        let tcp = TcpListener::bind((ip, 0)).with_context(|| format!("cannot bind {ip}"))?;
        let port = tcp.local_addr()?.port();
        if UdpSocket::bind((ip, port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port free for both TCP and UDP on {ip}")
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    // SAFETY: getrandom(2) writes at most bytes.len() bytes into bytes.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (t >> (i % 16 * 8)) as u8 ^ i as u8);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut file, text.as_bytes())?;
    Ok(())
}

impl LocalCluster {
    /// Writes the configs into a new temporary directory; starts nothing.
    pub fn create(spec: &ClusterSpec) -> anyhow::Result<LocalCluster> {
        let dir = std::env::temp_dir().join(format!(
            "tandem-cluster-{}-{}",
            std::process::id(),
            &random_token()[..8]
        ));
        std::fs::create_dir_all(&dir)?;
        let token = random_token();
        write_private(&dir.join("api.token"), &token)?;
        write_private(&dir.join("cluster.key"), &random_token())?;
        let in_netns = !spec.netns.is_empty();
        if in_netns && spec.netns.len() != spec.nodes.len() {
            bail!(
                "{} namespaces for {} nodes",
                spec.netns.len(),
                spec.nodes.len()
            );
        }
        let vips = (0..spec.groups.max(1))
            .map(|g| match (g, spec.vip) {
                (0, Some(vip)) => Ok(vip),
                (0, None) if in_netns => Ok(SocketAddr::from((crate::netns::VIP_ADDRESS, 2525))),
                _ => free_port("127.0.0.1").map(|port| SocketAddr::from(([127, 0, 0, 1], port))),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let vip = vips[0];
        let active_active = spec.groups >= 2;
        let groups_toml: String = if active_active {
            (0..spec.groups)
                .map(|g| {
                    format!(
                        "[[cluster.groups]]\npreferred = {:?}\n",
                        spec.nodes[g % spec.nodes.len()]
                    )
                })
                .collect()
        } else {
            String::new()
        };

        struct Ports {
            ip: String,
            link: u16,
            sync: u16,
            api: u16,
        }
        let mut ports = Vec::new();
        for i in 0..spec.nodes.len() {
            if in_netns {
                // A namespace of its own: nothing else there takes ports.
                ports.push(Ports {
                    ip: crate::netns::node_address(i as u8 + 1).to_string(),
                    link: 7501,
                    sync: 7601,
                    api: 7401,
                });
                continue;
            }
            let ip = format!("127.0.0.{}", i + 2);
            ports.push(Ports {
                link: free_port(&ip)?,
                sync: free_port(&ip)?,
                api: free_port(&ip)?,
                ip,
            });
        }
        let quote = |argv: &[String]| {
            argv.iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (coordination, etcd_toml) = if spec.etcd.is_empty() {
            (String::new(), String::new())
        } else {
            (
                "coordination = \"etcd\"\n".to_string(),
                format!("\n[etcd]\nendpoints = [{}]\n", quote(&spec.etcd)),
            )
        };
        let mut nodes = Vec::new();
        for (i, name) in spec.nodes.iter().enumerate() {
            let me = &ports[i];
            let mut text = format!(
                "[node]\nname = {name:?}\npriority = {}\nrole = {:?}\nstate_dir = \"state/{name}\"\napi = \"{}:{}\"\nsync = \"{}:{}\"\ntoken_file = \"api.token\"\nversion = {:?}\n\n\
                 [cluster]\nname = \"local\"\nkey_file = \"cluster.key\"\nmode = \"{}\"\ninterval = \"{}ms\"\nlost_threshold = {}\npreempt = true\nremote_as_heartbeat = {}\n{}{coordination}\n\
                 [[link]]\nname = \"lo\"\nlisten = \"{}:{}\"\n\n",
                200usize.saturating_sub(i * 10),
                if i == 0 { "primary" } else { "secondary" },
                me.ip,
                me.api,
                me.ip,
                me.sync,
                spec.version,
                if active_active {
                    "active-active"
                } else if spec.config_only {
                    "config-only"
                } else {
                    "active-passive"
                },
                spec.interval_ms,
                spec.lost_threshold,
                spec.remote_as_heartbeat,
                groups_toml,
                me.ip,
                me.link,
            );
            for (j, peer) in spec.nodes.iter().enumerate().filter(|(j, _)| *j != i) {
                let p = &ports[j];
                text.push_str(&format!(
                    "[[peer]]\nname = {peer:?}\nlinks = [\"{}:{}\"]\nsync = \"{}:{}\"\napi = \"{}:{}\"\n",
                    p.ip, p.link, p.ip, p.sync, p.ip, p.api
                ));
                if spec.remote_as_heartbeat {
                    // On loopback every node serves on the shared VIP.
                    text.push_str(&format!("service = \"{vip}\"\n"));
                }
                text.push('\n');
            }
            let vip_mode = if in_netns {
                format!(
                    "mode = \"ip\"\ninterface = \"eth0\"\naddress = \"{}/24\"",
                    crate::netns::VIP_ADDRESS
                )
            } else {
                "mode = \"bind\"".to_owned()
            };
            text.push_str(&format!(
                "[vip]\n{vip_mode}\nlisten = [{}]\n\n[service]\ncommand = [{}]\ngrace = \"10s\"\n{}\n",
                vips.iter().map(|v| format!("\"{v}\"")).collect::<Vec<_>>().join(", "),
                quote(&spec.service),
                spec.extra_toml
            ));
            text.push_str(&etcd_toml);
            let config = dir.join(format!("{name}.toml"));
            std::fs::write(&config, text)?;
            nodes.push(LocalNode {
                name: name.clone(),
                config,
                api: format!("{}:{}", me.ip, me.api).parse()?,
                sync: format!("{}:{}", me.ip, me.sync).parse()?,
                link: format!("{}:{}", me.ip, me.link).parse()?,
                netns: spec.netns.get(i).cloned(),
                process: None,
            });
        }
        Ok(LocalCluster {
            dir,
            nodes,
            vip,
            vips,
            token,
            exe: match &spec.exe {
                Some(exe) => exe.clone(),
                None => std::env::current_exe().context("cannot find the tandem binary")?,
            },
            log_dir: spec.log_dir.clone(),
        })
    }

    /// Turns on config and data sync (issue 6) before the agents start: a
    /// cluster CA and every node's certificate in `certs/`, and a `[sync]`
    /// table in every config with `data_dir = "data/NAME"` plus `keys`
    /// (e.g. `data_sync = "semi"`). A service run with `cwd = "."` finds its
    /// data dir at `data/$TANDEM_NODE`.
    pub fn enable_sync(&self, keys: &str) -> anyhow::Result<()> {
        let ca = self.dir.join("ca");
        let certs = self.dir.join("certs");
        tandem_sync::cert::init(&ca).context("cluster CA")?;
        for node in &self.nodes {
            tandem_sync::cert::issue(&ca, &node.name, &certs)
                .with_context(|| format!("certificate of {}", node.name))?;
            let mut text = std::fs::read_to_string(&node.config)?;
            text.push_str(&format!(
                "\n[sync]\ncert_dir = \"certs\"\ndata_dir = \"data/{}\"\n{keys}\n",
                node.name
            ));
            std::fs::write(&node.config, text)?;
        }
        Ok(())
    }

    /// Makes node `i` reach peer `j`'s sync port at `via` (a proxy in
    /// between) instead of directly; before the agents start.
    pub fn route_peer_sync(&self, i: usize, j: usize, via: SocketAddr) -> anyhow::Result<()> {
        let path = &self.nodes[i].config;
        let text = std::fs::read_to_string(path)?;
        // Node i's own `sync` is its own address: only the peer entry
        // names j's.
        let from = format!("sync = \"{}\"", self.nodes[j].sync);
        if !text.contains(&from) {
            bail!(
                "{} names no peer sync address {}",
                path.display(),
                self.nodes[j].sync
            );
        }
        std::fs::write(path, text.replace(&from, &format!("sync = \"{via}\"")))?;
        Ok(())
    }

    /// Node `i`'s replicated data dir (with [`LocalCluster::enable_sync`]).
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join("data").join(&self.nodes[i].name)
    }

    /// Starts node `i`'s agent (no-op if it runs).
    pub fn start(&mut self, i: usize) -> anyhow::Result<()> {
        self.start_with_env(i, &[])
    }

    /// Starts node `i`'s agent with extra environment (fault injection in
    /// tests).
    pub fn start_with_env(&mut self, i: usize, env: &[(&str, &str)]) -> anyhow::Result<()> {
        if self.nodes[i].process.is_some() {
            return Ok(());
        }
        let mut command = self.command(i);
        let node = &mut self.nodes[i];
        let log = match &self.log_dir {
            // Appended to: a node restarted after a kill keeps the log of
            // its first life, which is what explains the kill's effects.
            Some(dir) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join(format!("{}.log", node.name)))?,
            ),
            None => Stdio::null(),
        };
        let child = command
            .arg("-v")
            .arg("--log-format")
            .arg("json")
            .arg("agent")
            .arg("--config")
            .arg(&node.config)
            .env_remove("TANDEM_CONFIG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start the agent of {}", node.name))?;
        node.process = Some(child);
        Ok(())
    }

    /// The tandem binary, to be run as node `i` would: inside its
    /// namespace (`ip netns exec` execs it, so the child's pid is
    /// tandem's), or as it is on loopback.
    fn command(&self, i: usize) -> Command {
        match &self.nodes[i].netns {
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns]).arg(&self.exe);
                command
            }
            None => Command::new(&self.exe),
        }
    }

    /// Starts every node.
    pub fn start_all(&mut self) -> anyhow::Result<()> {
        (0..self.nodes.len()).try_for_each(|i| self.start(i))
    }

    /// Sends `signal` to node `i`'s agent.
    pub fn signal(&self, i: usize, signal: libc::c_int) {
        if let Some(pid) = self.nodes[i]
            .pid()
            .and_then(|p| libc::pid_t::try_from(p).ok())
        {
            // SAFETY: kill(2) on a child we spawned and have not reaped.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Whether node `i`'s agent has exited by itself (reaped if so).
    pub fn exited(&mut self, i: usize) -> bool {
        let gone = match self.nodes[i].process.as_mut().map(Child::try_wait) {
            Some(Ok(Some(_))) => true,
            Some(Ok(None)) => false,
            Some(Err(_)) | None => true,
        };
        if gone {
            self.nodes[i].process = None;
        }
        gone
    }

    /// kill -9 of node `i`'s agent, reaped.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM to node `i`'s agent, waiting up to `timeout` before SIGKILL.
    pub fn stop(&mut self, i: usize, timeout: Duration) {
        self.signal(i, libc::SIGTERM);
        if let Some(mut child) = self.nodes[i].process.take() {
            let deadline = std::time::Instant::now() + timeout;
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs `tandem ARGS` against node `i`'s API, as an operator would;
    /// returns the exit code, stdout and stderr.
    pub fn cli(&self, i: usize, args: &[&str]) -> (i32, String, String) {
        let out = self
            .command(i)
            .args(args)
            .arg("--api")
            .arg(self.nodes[i].api.to_string())
            .arg("--token-file")
            .arg(self.dir.join("api.token"))
            .env_remove("TANDEM_CONFIG")
            .output();
        match out {
            Ok(out) => (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ),
            Err(e) => (
                -1,
                String::new(),
                format!("cannot run {}: {e}", self.exe.display()),
            ),
        }
    }

    /// The API token every node accepts.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// An API client for node `i`.
    pub fn client(&self, i: usize) -> anyhow::Result<ApiClient> {
        Ok(ApiClient::new(self.nodes[i].api, self.token.clone())?)
    }

    /// Node `i`'s own status report, if its agent answers.
    pub async fn status(&self, i: usize) -> Option<StatusReport> {
        self.client(i).ok()?.status().await.ok()
    }

    /// Waits until every running node reports itself active (config-only
    /// mode, where every node serves; active-active, where each holds a
    /// group); fails after `timeout`.
    pub async fn wait_for_all_active(&self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_for_roles(|_| EffectiveRole::Active, timeout)
            .await
            .with_context(|| {
                format!(
                    "not every node became active within {} s",
                    timeout.as_secs()
                )
            })
    }

    /// Waits until node `active` is active and every other running node is
    /// standby, as each reports itself; fails after `timeout`.
    pub async fn wait_for_active(&self, active: usize, timeout: Duration) -> anyhow::Result<()> {
        let want = |i| {
            if i == active {
                EffectiveRole::Active
            } else {
                EffectiveRole::Standby
            }
        };
        self.wait_for_roles(want, timeout).await.with_context(|| {
            format!(
                "the cluster did not settle with {} active within {} s",
                self.nodes[active].name,
                timeout.as_secs()
            )
        })
    }

    /// Waits until every running node `i` reports the role `want(i)`.
    async fn wait_for_roles(
        &self,
        want: impl Fn(usize) -> EffectiveRole,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut settled = true;
            for (i, node) in self.nodes.iter().enumerate() {
                if node.process.is_some()
                    && self.status(i).await.map(|s| s.node.effective_role) != Some(want(i))
                {
                    settled = false;
                }
            }
            if settled {
                return Ok(());
            }
            anyhow::ensure!(tokio::time::Instant::now() <= deadline, "timed out");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.signal(i, libc::SIGCONT);
            self.stop(i, Duration::from_secs(3));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
