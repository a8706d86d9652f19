//! A throwaway etcd on loopback: one or three members, each with its own
//! data directory and free ports, for tests, `tandem demo --coordination
//! etcd` and `tandem bench failover --coordination etcd`. Members can be
//! killed and started again (same data) to play an etcd outage.
//!
//! It runs Debian's `etcd` binary (`etcd-server`); [`LocalEtcd::binary`]
//! says whether there is one, so a caller can skip with a reason.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::localcluster::free_port;

/// One member.
struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
    /// The network namespace it runs in, if not this process's.
    netns: Option<String>,
    process: Option<Child>,
}

/// A running local etcd cluster; dropping it stops every member.
pub struct LocalEtcd {
    members: Vec<Member>,
    binary: PathBuf,
    initial_cluster: String,
}

impl LocalEtcd {
    /// The `etcd` binary on `PATH`, if any.
    pub fn binary() -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join("etcd"))
            .find(|p| p.is_file())
    }

    /// Starts `members` members under `dir` and waits until each answers
    /// its health check.
    pub fn start(dir: &Path, members: usize) -> anyhow::Result<LocalEtcd> {
        LocalEtcd::start_on(dir, members, "127.0.0.1")
    }

    /// [`LocalEtcd::start`] on address `ip` (one of this network
    /// namespace's, e.g. a lab's `c`), each member on ports of its own.
    pub fn start_on(dir: &Path, members: usize, ip: &str) -> anyhow::Result<LocalEtcd> {
        let here = vec![(None, ip.to_owned()); members];
        LocalEtcd::start_placed(dir, &here)
    }

    /// A member for each `(namespace, address)`: run inside that network
    /// namespace (its ports 2379 and 2380, the namespace's own) or, with
    /// none, in this one on free ports of the address.
    pub fn start_placed(
        dir: &Path,
        placement: &[(Option<String>, String)],
    ) -> anyhow::Result<LocalEtcd> {
        let Some(binary) = LocalEtcd::binary() else {
            bail!("no `etcd` binary on PATH: install Debian's etcd-server");
        };
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut list = Vec::new();
        for (i, (netns, ip)) in placement.iter().enumerate() {
            let name = format!("etcd{i}");
            let (client, peer) = match netns {
                Some(_) => (2379, 2380),
                None => (free_port(ip)?, free_port(ip)?),
            };
            list.push(Member {
                client: format!("{ip}:{client}").parse()?,
                peer: format!("{ip}:{peer}").parse()?,
                data_dir: dir.join(&name),
                log: dir.join(format!("{name}.log")),
                netns: netns.clone(),
                name,
                process: None,
            });
        }
        let members = list.len();
        let initial_cluster = list
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = LocalEtcd {
            members: list,
            binary,
            initial_cluster,
        };
        for i in 0..members {
            etcd.spawn(i)?;
        }
        for i in 0..members {
            etcd.wait_healthy(i, Duration::from_secs(20))?;
        }
        Ok(etcd)
    }

    /// The client URLs.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://{}", m.client))
            .collect()
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let m = &mut self.members[i];
        let log = std::fs::File::create(&m.log)
            .with_context(|| format!("cannot create {}", m.log.display()))?;
        let client = format!("http://{}", m.client);
        let peer = format!("http://{}", m.peer);
        let mut command = match &m.netns {
            // `ip netns exec` execs etcd: the child's pid is etcd's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        let child = command
            .args(["--name", &m.name, "--data-dir"])
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            // A LAN's timings, as docs/coordination.md advises: a lost
            // leader is replaced within about a second, inside the time a
            // tandem session stays good after its last renewal (1.5 s of
            // a 2 s TTL), so losing one member of three changes nothing.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        m.process = Some(child);
        Ok(())
    }

    /// Waits until member `i` says it is healthy (it has a leader).
    fn wait_healthy(&self, i: usize, within: Duration) -> anyhow::Result<()> {
        let m = &self.members[i];
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if health(m.client) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "etcd member {} at {} is not healthy after {within:?}; see {}",
            m.name,
            m.client,
            m.log.display()
        )
    }

    /// kill -9 of member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` to member `i` (SIGSTOP cuts it off without closing
    /// its connections, as a partition would; SIGCONT undoes it).
    pub fn signal(&self, i: usize, signal: libc::c_int) {
        if let Some(child) = &self.members[i].process {
            // SAFETY: kill(2) on a pid this process spawned and still owns.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
    }

    /// How many members it has.
    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        self.spawn(i)
    }

    /// The value at `key`, if any (for tests that look at what the agents
    /// wrote).
    pub async fn value(&self, key: &str) -> anyhow::Result<Option<String>> {
        let mut client = self.client().await?;
        let answer = client.get(key, None).await?;
        Ok(answer
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Writes `value` at `key`, as an operator with etcdctl would.
    pub async fn put(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.client().await?.put(key, value, None).await?;
        Ok(())
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.client().await?.delete(key, None).await?;
        Ok(())
    }

    /// A running member that is not etcd's leader: losing it pauses no
    /// write (losing the leader does, for an election).
    pub async fn follower(&self) -> anyhow::Result<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if m.process.is_none() {
                continue;
            }
            let mut client = etcd_client::Client::connect([format!("http://{}", m.client)], None)
                .await
                .with_context(|| format!("cannot connect to etcd member {}", m.name))?;
            let status = client.status().await?;
            let member = status.header().map(|h| h.member_id());
            if member.is_some_and(|id| id != status.leader()) {
                return Ok(i);
            }
        }
        bail!("no running etcd member is a follower")
    }

    async fn client(&self) -> anyhow::Result<etcd_client::Client> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5));
        etcd_client::Client::connect(self.endpoints(), Some(options))
            .await
            .with_context(|| format!("cannot connect to etcd at {}", self.endpoints().join(", ")))
    }

    /// Waits until every running member is healthy again.
    pub fn wait_all_healthy(&self, within: Duration) -> anyhow::Result<()> {
        for (i, m) in self.members.iter().enumerate() {
            if m.process.is_some() {
                self.wait_healthy(i, within)?;
            }
        }
        Ok(())
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// `GET /health` on a member's client port: `{"health":"true"}` when it
/// has a leader. Plain HTTP/1.0 over a socket: no client needed for one
/// line.
fn health(client: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&client, Duration::from_millis(200))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.contains("\"health\":\"true\"")
}
