//! A small network in network namespaces, for partitions that loopback
//! cannot make: the partition tests (`tests/netns_partition.rs`) and the
//! `partition` fault of `tandem bench failover --coordination etcd`.
//!
//! On loopback every node reaches every other; cutting one off needs a
//! network of its own. Here each node gets a namespace, joined to the
//! others through a bridge in a namespace of its own, with a third
//! namespace `c` for whatever stands outside the pair (an etcd witness, a
//! next hop, clients):
//!
//! ```text
//!   n1 198.18.0.1  ─┐
//!   n2 198.18.0.2  ─┼─ br0 (bridge namespace)      VIP 198.18.0.100/24
//!   c  198.18.0.10 ─┘  (the etcd witness on :2379)
//! ```
//!
//! A cut is a pair of blackhole routes, one at each end, so neither side
//! can even answer the other: [`Lab::partition`] cuts n1 from n2,
//! [`Lab::isolate`] also cuts one of them from `c`, and [`Lab::heal`]
//! removes every route it added. The kernel's own TCP, ARP and address
//! moves are what the agents meet, as on real hosts.
//!
//! - [`Lab::new`] builds it; it needs root and `ip netns`, and says which
//!   is missing (callers skip with that reason).
//! - [`Lab::command`] runs a program inside a namespace (`ip netns exec`);
//!   [`in_netns`] runs a closure on a thread moved into one (`setns(2)`),
//!   so its sockets live there.
//! - [`Lab::start_etcd`] starts a one-member etcd in `c`, the pair's
//!   witness.
//! - Dropping the [`Lab`] stops the witness, removes the routes and
//!   deletes the namespaces. Processes started with [`Lab::command`] are
//!   the caller's to stop first.
//!
//! 198.18.0.0/24 is a benchmarking range that is never routed, and the
//! namespaces have no link to the host's network: nothing here can reach,
//! or be reached from, anything outside. Namespaces are named
//! `tdmTAG-PID-NAME`, so labs of tests running side by side, or of two
//! benchmarks, stay apart.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::localetcd::LocalEtcd;

/// At most this many nodes (n1 .. n9) beside `c`.
pub const MAX_NODES: usize = 9;

/// The namespace outside the pair: the etcd witness, a next hop, clients.
pub const WITNESS: &str = "c";

/// `c`'s address.
pub const WITNESS_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);

/// The address the pair's VIP should use (`[vip] address`, with `/24`):
/// on the bridge's network, held by no namespace until an agent adds it.
pub const VIP_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);

/// The client URL of the witness started by [`Lab::start_etcd`].
pub const ETCD_ENDPOINT: &str = "http://198.18.0.10:2379";

/// How long [`Lab::start_etcd`] waits for the witness to be healthy.
const ETCD_START_LIMIT: Duration = Duration::from_secs(20);

/// Node `n`'s address (n1 is 198.18.0.1, n2 198.18.0.2).
pub fn node_address(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, n)
}

/// Store host `e`'s address (e1 is 198.18.0.21).
pub fn store_address(e: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 20 + e)
}

/// Why a lab cannot be built here, if it cannot: not root, or no working
/// `ip netns`. [`Lab::new`] asks this first.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces need root)".into());
    }
    ip(&["netns", "list"])
        .err()
        .map(|e| format!("ip netns unavailable: {e:#}"))
}

/// Moves the calling thread into network namespace `ns` (a name under
/// `/run/netns`), for good: threads and processes it starts later are
/// born there too.
pub fn enter(ns: &str) -> anyhow::Result<()> {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path)
        .with_context(|| format!("cannot open {path}: is namespace {ns} still there?"))?;
    // SAFETY: setns(2) with a namespace fd we hold open; it moves only
    // this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        let error = std::io::Error::last_os_error();
        bail!("cannot enter {path} (setns: {error}); it needs root");
    }
    Ok(())
}

/// Runs `f` on a thread moved into network namespace `ns` (a name under
/// `/run/netns`): every socket it creates lives there, and stays there
/// whichever thread uses it later. A panic in `f` goes on in the caller.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path)
        .with_context(|| format!("cannot open {path}: is namespace {ns} still there?"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns(2) with a namespace fd we hold open; it moves
            // only this thread, which ends when `f` returns.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                let error = std::io::Error::last_os_error();
                bail!("cannot enter {path} (setns: {error}); it needs root");
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The namespaces, the routes cut between them and the etcd witness;
/// all gone when it is dropped.
pub struct Lab {
    /// `tdmTAG-PID`: the namespaces are `PREFIX-n1`, `PREFIX-n2`,
    /// `PREFIX-c` and `PREFIX-br`.
    prefix: String,
    /// The namespaces made so far, deleted on drop (a half-built lab
    /// too).
    made: Vec<String>,
    /// Blackhole routes in force, as (namespace, destination).
    blackholes: Vec<(String, String)>,
    /// The etcd witness in `c`, while it runs.
    etcd: Option<Child>,
    /// How many nodes (n1 .. nN).
    nodes: usize,
    /// How many store hosts (e1 .. eS), each an etcd member's own.
    stores: usize,
}

impl Lab {
    /// Builds the bridge and the namespaces n1, n2 and c. `tag` (1 to 4
    /// letters or digits) keeps labs that exist at once apart; it is part
    /// of every namespace's and interface's name.
    ///
    /// In n1 and n2 a silently cut TCP connection breaks after 3
    /// retransmissions (seconds) instead of the default 15 (minutes), so a
    /// cut shows within a test's time.
    pub fn new(tag: &str) -> anyhow::Result<Lab> {
        Lab::with_nodes(tag, 2)
    }

    /// [`Lab::new`] with `nodes` nodes, n1 .. nN (at most [`MAX_NODES`]),
    /// beside `c`.
    pub fn with_nodes(tag: &str, nodes: usize) -> anyhow::Result<Lab> {
        Lab::with_hosts(tag, nodes, 0)
    }

    /// [`Lab::with_nodes`] plus `stores` namespaces e1 .. eS
    /// ([`store_address`]), one for each etcd member, so that one member
    /// can be cut off from the others and from the nodes.
    pub fn with_hosts(tag: &str, nodes: usize, stores: usize) -> anyhow::Result<Lab> {
        if !(1..=MAX_NODES).contains(&nodes) || stores > MAX_NODES {
            bail!(
                "a lab has 1 to {MAX_NODES} nodes and at most {MAX_NODES} store hosts, not {nodes} and {stores}"
            );
        }
        if let Some(reason) = unavailable() {
            bail!(reason);
        }
        if tag.is_empty() || tag.len() > 4 || !tag.chars().all(|c| c.is_ascii_alphanumeric()) {
            bail!(
                "lab tag {tag:?} must be 1 to 4 letters or digits (it goes into interface names)"
            );
        }
        let pid = std::process::id();
        let mut lab = Lab {
            prefix: format!("tdm{tag}-{pid}"),
            made: Vec::new(),
            blackholes: Vec::new(),
            etcd: None,
            nodes,
            stores,
        };
        let bridge = lab.ns("br");
        lab.add_namespace(&bridge)?;
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &bridge, "link", "set", "br0", "up"])?;
        let mut hosts: Vec<(String, Ipv4Addr)> = (1..=nodes)
            .map(|n| (format!("n{n}"), node_address(n as u8)))
            .collect();
        hosts.push((WITNESS.to_owned(), WITNESS_ADDRESS));
        hosts.extend((1..=stores).map(|e| (format!("e{e}"), store_address(e as u8))));
        for (name, address) in &hosts {
            let name = name.as_str();
            let ns = lab.ns(name);
            lab.add_namespace(&ns)?;
            // The bridge's end of the cable; at most 15 characters.
            let bridge_end = format!("{tag}{}{name}", pid % 100_000);
            ip(&[
                "-n",
                &bridge,
                "link",
                "add",
                &bridge_end,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &ns,
            ])?;
            ip(&[
                "-n",
                &bridge,
                "link",
                "set",
                &bridge_end,
                "master",
                "br0",
                "up",
            ])?;
            let with_length = format!("{address}/24");
            ip(&["-n", &ns, "addr", "add", &with_length, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        // /proc/sys/net is the namespace's own, and `sh` is everywhere
        // `sysctl` may not be.
        for n in 1..=nodes {
            let ns = lab.ns(&format!("n{n}"));
            let retries = "/proc/sys/net/ipv4/tcp_retries2";
            ip(&[
                "netns",
                "exec",
                &ns,
                "sh",
                "-c",
                &format!("echo 3 > {retries}"),
            ])?;
            let now = ip(&["netns", "exec", &ns, "cat", retries])?;
            if now.trim() != "3" {
                bail!(
                    "tcp_retries2 in {ns} is {} after setting it to 3",
                    now.trim()
                );
            }
        }
        Ok(lab)
    }

    /// The full name of namespace `name` (`n1`, `n2`, `c` or `br`), as
    /// `ip netns` and [`in_netns`] want it.
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn add_namespace(&mut self, ns: &str) -> anyhow::Result<()> {
        ip(&["netns", "add", ns])?;
        self.made.push(ns.to_string());
        Ok(())
    }

    /// `program` to be run inside namespace `name` (`ip netns exec`, which
    /// execs it: the child's pid is the program's). Add its arguments and
    /// spawn it; stopping it is the caller's job.
    pub fn command(&self, name: &str, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns(name)]).arg(program);
        command
    }

    /// How many nodes it has.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// The address of namespace `name` (`nN` or `c`) on the bridge.
    pub fn address(&self, name: &str) -> anyhow::Result<Ipv4Addr> {
        if name == WITNESS {
            return Ok(WITNESS_ADDRESS);
        }
        let number = |prefix| {
            name.strip_prefix(prefix)
                .and_then(|n: &str| n.parse::<usize>().ok())
        };
        match (number('n'), number('e')) {
            (Some(n), _) if (1..=self.nodes).contains(&n) => Ok(node_address(n as u8)),
            (_, Some(e)) if (1..=self.stores).contains(&e) => Ok(store_address(e as u8)),
            _ => bail!(
                "no namespace {name} in the lab (n1 .. n{}, e1 .. e{}, c)",
                self.nodes,
                self.stores
            ),
        }
    }

    /// Drops what `from` sends to `to`, and nothing the other way (a
    /// one-way failure: `to`'s datagrams still arrive, TCP to `to` breaks).
    pub fn cut_one_way(&mut self, from: &str, to: &str) -> anyhow::Result<()> {
        let address = self.address(to)?;
        self.blackhole(from, &format!("{address}/32"))
    }

    /// Cuts `a` and `b` (`nN` or `c`) from each other, both ways.
    pub fn cut(&mut self, a: &str, b: &str) -> anyhow::Result<()> {
        self.cut_one_way(a, b)?;
        self.cut_one_way(b, a)
    }

    /// Runs `tc ARGS` inside namespace `name` (netem faults on its `eth0`).
    pub fn tc(&self, name: &str, args: &[&str]) -> anyhow::Result<String> {
        let ns = self.ns(name);
        let mut all = vec!["netns", "exec", ns.as_str(), "tc"];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Cuts n1 and n2 from each other; `c` keeps reaching both.
    pub fn partition(&mut self) -> anyhow::Result<()> {
        self.blackhole("n1", &format!("{}/32", node_address(2)))?;
        self.blackhole("n2", &format!("{}/32", node_address(1)))
    }

    /// Cuts node `n` (1 or 2) from the other and from `c` (the etcd
    /// witness, the next hop, the clients there).
    pub fn isolate(&mut self, n: u8) -> anyhow::Result<()> {
        if !(1..=2).contains(&n) {
            bail!("isolate: node {n} is not in the lab (1 or 2)");
        }
        self.partition()?;
        self.blackhole(&format!("n{n}"), &format!("{WITNESS_ADDRESS}/32"))?;
        self.blackhole(WITNESS, &format!("{}/32", node_address(n)))
    }

    /// A blackhole route in namespace `name` to `to` (an address with its
    /// length): nothing sent from there to there leaves, answers included.
    pub fn blackhole(&mut self, name: &str, to: &str) -> anyhow::Result<()> {
        let ns = self.ns(name);
        ip(&["-n", &ns, "route", "add", "blackhole", to])?;
        self.blackholes.push((ns, to.to_string()));
        Ok(())
    }

    /// Removes every blackhole route; stops at the first that cannot be
    /// removed (the rest are tried again on drop).
    pub fn heal(&mut self) -> anyhow::Result<()> {
        while let Some((ns, to)) = self.blackholes.pop() {
            if let Err(e) = ip(&["-n", &ns, "route", "del", "blackhole", &to]) {
                self.blackholes.push((ns, to));
                return Err(e);
            }
        }
        Ok(())
    }

    /// Whether namespace `name` holds `address` on its `eth0` (an agent in
    /// `ip` VIP mode adds the VIP there while it serves).
    pub fn has_address(&self, name: &str, address: Ipv4Addr) -> bool {
        ip(&["-n", &self.ns(name), "-4", "addr", "show", "dev", "eth0"])
            .is_ok_and(|shown| shown.contains(&format!("{address}/")))
    }

    /// Starts one etcd member in `c` ([`ETCD_ENDPOINT`]), the pair's
    /// witness, with a LAN's election timings; its data and log
    /// (`etcd.log`) go under `dir`. Waits until n1 finds it healthy.
    pub fn start_etcd(&mut self, dir: &Path) -> anyhow::Result<()> {
        let Some(etcd) = LocalEtcd::binary() else {
            bail!("no `etcd` on PATH (Debian package etcd-server)");
        };
        let log_path = dir.join("etcd.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let client = ETCD_ENDPOINT;
        let peer = format!("http://{WITNESS_ADDRESS}:2380");
        let child = self
            .command(WITNESS, &etcd)
            .args(["--name", "w", "--data-dir"])
            .arg(dir.join("etcd"))
            .args(["--listen-client-urls", client])
            .args(["--advertise-client-urls", client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("w={peer}")])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {} in {}", etcd.display(), self.ns(WITNESS)))?;
        self.etcd = Some(child);
        let health = SocketAddr::from((WITNESS_ADDRESS, 2379));
        let n1 = self.ns("n1");
        let started = Instant::now();
        while !in_netns(&n1, || etcd_healthy(health))? {
            if started.elapsed() > ETCD_START_LIMIT {
                bail!(
                    "the etcd witness at {health} is not healthy after {ETCD_START_LIMIT:?}; see {}",
                    log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Every node namespace's name (`n1` .. `nN`).
    pub fn node_names(&self) -> Vec<String> {
        (1..=self.nodes).map(|n| format!("n{n}")).collect()
    }

    /// Every store host's name (`e1` .. `eS`).
    pub fn store_names(&self) -> Vec<String> {
        (1..=self.stores).map(|e| format!("e{e}")).collect()
    }

    /// Removes the routes, ignoring failures (for drop).
    fn heal_quietly(&mut self) {
        for (ns, to) in std::mem::take(&mut self.blackholes) {
            let _ = ip(&["-n", &ns, "route", "del", "blackhole", &to]);
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut etcd) = self.etcd.take() {
            let _ = etcd.kill();
            let _ = etcd.wait();
        }
        self.heal_quietly();
        // Nodes first, the bridge last: deleting a namespace deletes its
        // end of each cable, and the other end with it.
        for ns in self.made.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Runs `ip ARGS`; its stdout, or what failed with `ip`'s own words.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run `ip` (package iproute2)")?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    }
}

/// `GET /health` on an etcd member: `{"health":"true"}` once it has a
/// leader. Plain HTTP/1.0 over a socket: no client needed for one line.
fn etcd_healthy(client: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&client, Duration::from_secs(2))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.contains("\"health\":\"true\"")
}
