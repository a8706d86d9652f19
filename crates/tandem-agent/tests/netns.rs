//! The `ip` VIP mode in real network namespaces: the address moves between
//! two nodes on one Ethernet segment and a client on that segment follows
//! it thanks to the gratuitous ARP.
//!
//! Each test builds its own throw-away topology, named `tdm-<pid>-<test>-*`
//! so that parallel tests and other users of the machine never collide:
//!
//! ```text
//!   n1 (198.18.0.1, eth0 02:74:64:6d:00:01) ─┐
//!   n2 (198.18.0.2, eth0 02:74:64:6d:00:02) ─┼─ br0 in the bridge namespace
//!   c  (198.18.0.10, the client)            ─┘
//! ```
//!
//! 198.18.0.0/24 is a benchmarking range (RFC 2544) that is never routed,
//! and the namespaces have no link to the host's network, so no frame
//! leaves them. The namespaces are deleted by a guard's `Drop`, also when a
//! test fails.
//!
//! The tests need root and `ip netns`; without them each prints
//! `SKIP: <reason>` and passes. Code runs inside a namespace on a fresh
//! thread that has called setns(2) (which moves only the calling thread),
//! with its own current-thread tokio runtime.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use tandem_agent::vip_ip::{Announce, GarpPlan, IpVip, VipIpError};

const VIP: &str = "198.18.0.100/24";
const VIP_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const N1_MAC: &str = "02:74:64:6d:00:01";
const N2_MAC: &str = "02:74:64:6d:00:02";
const CLIENT_MAC: &str = "02:74:64:6d:00:0a";
/// Bound on any single `ip` command.
const IP_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- helpers

/// Runs `ip ARGS`, bounded by [`IP_TIMEOUT`]; stdout on success, a message
/// with stderr otherwise.
fn ip(args: &[&str]) -> Result<String, String> {
    let mut child = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    let deadline = Instant::now() + IP_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("ip {}: timed out", args.join(" ")));
            }
            Err(e) => return Err(format!("ip {}: {e}", args.join(" "))),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip_ok(args: &[&str]) -> String {
    ip(args).expect("run ip")
}

/// The namespaces a test created; deleted on drop, in reverse order.
struct Namespaces {
    prefix: String,
    names: Vec<String>,
}

impl Namespaces {
    /// `None` (after printing `SKIP: …`) when this machine cannot run the
    /// test: not root, no `ip`, or network namespaces not allowed.
    fn new(test: &str) -> Option<Self> {
        // SAFETY: geteuid(2) cannot fail and touches no memory.
        if unsafe { libc::geteuid() } != 0 {
            println!("SKIP: {test}: needs root to create network namespaces");
            return None;
        }
        let ns = Namespaces {
            prefix: format!("tdm-{}-{test}", std::process::id()),
            names: Vec::new(),
        };
        if let Err(e) = ip(&["netns", "list"]) {
            println!("SKIP: {test}: `ip netns` unavailable: {e}");
            return None;
        }
        Some(ns)
    }

    /// Creates namespace `<prefix>-<suffix>` and brings its loopback up.
    /// `Err` only for the first one, so that a machine without netns
    /// support skips; later failures are real failures.
    fn add(&mut self, suffix: &str) -> Result<String, String> {
        let name = format!("{}-{suffix}", self.prefix);
        ip(&["netns", "add", &name])?;
        self.names.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(name)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in self.names.iter().rev() {
            if let Err(e) = ip(&["netns", "del", name]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Two nodes and a client on one bridge.
struct Topology {
    n1: String,
    n2: String,
    client: String,
    // Last: dropped after the names above are no longer needed.
    _ns: Namespaces,
}

impl Topology {
    fn new(test: &str) -> Option<Self> {
        let mut ns = Namespaces::new(test)?;
        let bridge = match ns.add("br") {
            Ok(b) => b,
            Err(e) => {
                println!("SKIP: {test}: cannot create a network namespace: {e}");
                return None;
            }
        };
        if let Err(e) = ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"]) {
            println!("SKIP: {test}: cannot create a bridge: {e}");
            return None;
        }
        ip_ok(&["-n", &bridge, "link", "set", "br0", "up"]);
        let mut node = |suffix: &str, addr: &str, mac: &str| -> String {
            let name = ns.add(suffix).expect("add a node namespace");
            let port = format!("p-{suffix}");
            // Created inside the bridge namespace with its peer moved at
            // once into the node's, so no interface ever appears in the
            // host's namespace (where names could clash).
            ip_ok(&[
                "-n", &bridge, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &name,
            ]);
            ip_ok(&["-n", &bridge, "link", "set", &port, "master", "br0"]);
            ip_ok(&["-n", &bridge, "link", "set", &port, "up"]);
            ip_ok(&["-n", &name, "link", "set", "eth0", "address", mac]);
            ip_ok(&["-n", &name, "addr", "add", addr, "dev", "eth0"]);
            ip_ok(&["-n", &name, "link", "set", "eth0", "up"]);
            name
        };
        let n1 = node("n1", "198.18.0.1/24", N1_MAC);
        let n2 = node("n2", "198.18.0.2/24", N2_MAC);
        let client = node("c", "198.18.0.10/24", CLIENT_MAC);
        Some(Topology {
            n1,
            n2,
            client,
            _ns: ns,
        })
    }
}

/// Runs `f` on a fresh thread inside network namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    let thread = std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        setns(&file, CloneFlags::CLONE_NEWNET).expect("enter the network namespace");
        f()
    });
    match thread.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs the future made by `f` inside `ns` on a current-thread runtime.
fn block_in_ns<F, T>(ns: &str, f: impl FnOnce() -> F + Send + 'static) -> T
where
    F: Future<Output = T>,
    T: Send + 'static,
{
    in_ns(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build the tokio runtime");
        rt.block_on(f())
    })
}

/// Claims `vip` inside `ns`, then keeps the runtime alive until the
/// follow-up gratuitous ARPs are out (they run on that runtime, which ends
/// with this call; the agent's runtime lives on, so it has no such wait).
fn claim(ns: &str, vip: &Arc<IpVip>, plan: GarpPlan) -> tandem_agent::vip_ip::ClaimReport {
    let vip = vip.clone();
    block_in_ns(ns, move || async move {
        let report = vip.claim().await.expect("claim the vip");
        tokio::time::sleep(plan.spacing * plan.count + Duration::from_millis(10)).await;
        report
    })
}

fn release(ns: &str, vip: &Arc<IpVip>) -> bool {
    let vip = vip.clone();
    block_in_ns(ns, move || async move {
        vip.release().await.expect("release the vip").was_present
    })
}

fn is_present(ns: &str, vip: &Arc<IpVip>) -> bool {
    let vip = vip.clone();
    block_in_ns(ns, move || async move {
        vip.is_present()
            .await
            .expect("check whether the vip is present")
    })
}

fn vip(plan: GarpPlan) -> Arc<IpVip> {
    Arc::new(
        IpVip::parse("eth0", VIP)
            .expect("parse the vip")
            .with_garp(plan),
    )
}

/// The addresses on `ns`'s eth0 as `ip` shows them (`198.18.0.100/24`).
fn addresses(ns: &str) -> Vec<String> {
    ip_ok(&["-n", ns, "-4", "-o", "addr", "show", "dev", "eth0"])
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next().map(str::to_string)
        })
        .collect()
}

/// The MAC the client's neighbour table holds for the VIP, if any.
fn client_neighbour(client: &str) -> Option<String> {
    let out = ip_ok(&[
        "-n",
        client,
        "neigh",
        "show",
        &VIP_ADDR.to_string(),
        "dev",
        "eth0",
    ]);
    let mut words = out.split_whitespace();
    words.find(|w| *w == "lladdr")?;
    words.next().map(str::to_string)
}

/// Polls the client's neighbour entry until it is `mac`, for at most
/// `within`; the time it took, or `None`.
fn wait_neighbour(client: &str, mac: &str, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if client_neighbour(client).as_deref() == Some(mac) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// A TCP connect from the client to the VIP, so that the client resolves
/// the VIP's MAC. Refused is as good as accepted for that.
fn client_touch(client: &str) {
    in_ns(client, || {
        let addr = SocketAddr::from((VIP_ADDR, 9));
        let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
    });
}

/// Asks the service on the VIP for its name from the client.
fn client_fetch(client: &str, port: u16) -> std::io::Result<String> {
    in_ns(client, move || {
        let addr = SocketAddr::from((VIP_ADDR, port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut name = String::new();
        stream.read_to_string(&mut name)?;
        Ok(name)
    })
}

/// A tiny service: answers every connection with `name` and closes, until
/// stopped (or 20 s, whichever is first).
struct NameServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NameServer {
    /// Binds `VIP:port` inside `ns` (the VIP must be there already).
    fn start(ns: &str, port: u16, name: &'static str) -> Self {
        // The socket belongs to the namespace it was created in, whichever
        // thread uses it afterwards.
        let listener = in_ns(ns, move || TcpListener::bind((VIP_ADDR, port)))
            .unwrap_or_else(|e| panic!("bind {VIP_ADDR}:{port} in {ns}: {e}"));
        listener
            .set_nonblocking(true)
            .expect("make the listener nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.write_all(name.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        NameServer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ------------------------------------------------------------------ tests

#[test]
fn claim_puts_the_vip_on_n1_and_the_client_resolves_n1() {
    let Some(t) = Topology::new("claim") else {
        return;
    };
    let v = vip(GarpPlan::default());
    let report = claim(&t.n1, &v, GarpPlan::default());
    assert!(!report.already_present);
    assert_eq!(report.announce, Announce::Sent { follow_ups: 2 });
    assert_eq!(report.mac, Some([0x02, 0x74, 0x64, 0x6d, 0x00, 0x01]));
    assert!(addresses(&t.n1).contains(&VIP.to_string()));
    assert!(!addresses(&t.n2).contains(&VIP.to_string()));
    client_touch(&t.client);
    assert_eq!(client_neighbour(&t.client).as_deref(), Some(N1_MAC));
}

#[test]
fn after_a_move_the_client_neighbour_entry_follows_the_garp() {
    let Some(t) = Topology::new("follow") else {
        return;
    };
    let plan = GarpPlan::default();
    let (v1, v2) = (vip(plan), vip(plan));
    claim(&t.n1, &v1, plan);
    client_touch(&t.client);
    assert_eq!(client_neighbour(&t.client).as_deref(), Some(N1_MAC));

    assert!(release(&t.n1, &v1));
    assert!(!addresses(&t.n1).contains(&VIP.to_string()));
    // Claim from another thread and watch the client meanwhile, so the
    // time measured is claim start to client updated.
    let claimer = {
        let (n2, v2) = (t.n2.clone(), v2.clone());
        std::thread::spawn(move || claim(&n2, &v2, plan))
    };
    // No client traffic since the move: only the gratuitous ARP can have
    // told the client. Its entry for the VIP exists (REACHABLE), and Linux
    // overrides an existing entry on a gratuitous ARP even with the default
    // arp_accept = 0, so the sysctl is left alone. Without the GARP the
    // client would keep n1's MAC for at least delay_first_probe_time (5 s);
    // see the test below.
    let waited = wait_neighbour(&t.client, N2_MAC, Duration::from_secs(2));
    let report = match claimer.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    assert_eq!(report.mac, Some([0x02, 0x74, 0x64, 0x6d, 0x00, 0x02]));
    match waited {
        Some(w) => eprintln!("the client followed the VIP to n2 {w:?} after the claim began"),
        None => panic!(
            "the client still has {:?} for the VIP 2 s after n2's claim",
            client_neighbour(&t.client)
        ),
    }
}

#[test]
fn without_garp_the_client_keeps_the_old_mac() {
    // The control for the test above: the same move with no announcement
    // leaves the client pointing at n1, so it is the GARP that moves it.
    let Some(t) = Topology::new("nogarp") else {
        return;
    };
    let silent = GarpPlan {
        count: 0,
        spacing: Duration::ZERO,
    };
    let (v1, v2) = (vip(GarpPlan::default()), vip(silent));
    claim(&t.n1, &v1, GarpPlan::default());
    client_touch(&t.client);
    assert_eq!(client_neighbour(&t.client).as_deref(), Some(N1_MAC));
    release(&t.n1, &v1);
    let report = claim(&t.n2, &v2, silent);
    assert_eq!(report.announce, Announce::Disabled);
    assert_eq!(
        wait_neighbour(&t.client, N2_MAC, Duration::from_millis(300)),
        None,
        "the client learnt n2's MAC without any announcement"
    );
    assert_eq!(client_neighbour(&t.client).as_deref(), Some(N1_MAC));
}

#[test]
fn a_service_on_n2_is_reachable_from_the_client_after_the_move() {
    let Some(t) = Topology::new("tcp") else {
        return;
    };
    let plan = GarpPlan::default();
    let (v1, v2) = (vip(plan), vip(plan));
    claim(&t.n1, &v1, plan);
    let s1 = NameServer::start(&t.n1, 2525, "n1");
    assert_eq!(client_fetch(&t.client, 2525).expect("fetch from n1"), "n1");

    release(&t.n1, &v1);
    claim(&t.n2, &v2, plan);
    let _s2 = NameServer::start(&t.n2, 2525, "n2");
    // n1's listener stays open on purpose: with the address gone from n1,
    // nothing may reach it any more.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut failures = Vec::new();
    let answer = loop {
        match client_fetch(&t.client, 2525) {
            Ok(name) => break name,
            Err(e) if Instant::now() < deadline => failures.push(e.to_string()),
            Err(e) => {
                panic!("the client cannot reach the VIP after the move: {e} (before: {failures:?})")
            }
        }
    };
    assert_eq!(answer, "n2");
    assert!(
        failures.is_empty(),
        "connects failed after the claim returned: {failures:?}"
    );
    drop(s1);
}

#[test]
fn claim_and_release_are_idempotent() {
    let Some(t) = Topology::new("idem") else {
        return;
    };
    let plan = GarpPlan::default();
    let v = vip(plan);
    assert!(!is_present(&t.n1, &v));
    assert!(!claim(&t.n1, &v, plan).already_present);
    let again = claim(&t.n1, &v, plan);
    assert!(again.already_present);
    // A repeated claim still announces: an agent restarted on a node that
    // kept the address must tell the segment again.
    assert_eq!(again.announce, Announce::Sent { follow_ups: 2 });
    assert!(is_present(&t.n1, &v));
    let vips = addresses(&t.n1).into_iter().filter(|a| a == VIP).count();
    assert_eq!(vips, 1);

    assert!(release(&t.n1, &v));
    assert!(!release(&t.n1, &v));
    assert!(!is_present(&t.n1, &v));
    assert!(!addresses(&t.n1).contains(&VIP.to_string()));
    // The node's own address is untouched.
    assert!(addresses(&t.n1).contains(&"198.18.0.1/24".to_string()));
    // Releasing where it never was is fine too.
    assert!(!release(&t.n2, &v));
}

#[test]
fn interfaces_that_are_missing_down_or_without_arp() {
    let Some(mut ns) = Namespaces::new("odd") else {
        return;
    };
    let name = match ns.add("x") {
        Ok(n) => n,
        Err(e) => {
            println!("SKIP: odd: cannot create a network namespace: {e}");
            return;
        }
    };
    // A veth pair left down: the address can be added, the frame cannot
    // be sent.
    ip_ok(&[
        "-n", &name, "link", "add", "a0", "type", "veth", "peer", "name", "b0",
    ]);

    let results = block_in_ns(&name, || async {
        let missing = IpVip::parse("nosuch0", VIP).expect("parse the vip on nosuch0");
        let down = IpVip::parse("a0", VIP).expect("parse the vip on a0");
        let lo = IpVip::parse("lo", "198.18.0.100/32").expect("parse the vip on lo");
        (
            missing.claim().await,
            missing.release().await.map(|r| r.was_present),
            missing.is_present().await,
            down.claim().await,
            down.is_present().await,
            lo.claim().await,
            lo.release().await.map(|r| r.was_present),
        )
    });
    let (
        missing_claim,
        missing_release,
        missing_present,
        down_claim,
        down_present,
        lo_claim,
        lo_release,
    ) = results;
    assert!(
        matches!(missing_claim, Err(VipIpError::NoSuchInterface(ref i)) if i == "nosuch0"),
        "{missing_claim:?}"
    );
    assert!(matches!(missing_release, Ok(false)), "{missing_release:?}");
    assert!(matches!(missing_present, Ok(false)), "{missing_present:?}");

    let down_claim = down_claim.expect("claim on a down interface");
    assert!(
        matches!(down_claim.announce, Announce::Failed(_)),
        "{down_claim:?}"
    );
    assert!(matches!(down_present, Ok(true)), "{down_present:?}");

    let lo_claim = lo_claim.expect("claim on lo");
    assert_eq!(lo_claim.announce, Announce::NotApplicable);
    assert_eq!(lo_claim.mac, None);
    assert!(matches!(lo_release, Ok(true)), "{lo_release:?}");
}

#[test]
fn the_old_owner_stops_announcing_once_the_address_is_gone() {
    // n1 claims with a long announcement plan and its runtime stays up, so
    // its follow-ups would go on; the address is then released through a
    // *different* `IpVip` value (as a restarted driver would), and n2
    // claims. n1's later frames would pull the client back to n1, which no
    // longer holds the address; they must not be sent.
    let Some(t) = Topology::new("stale") else {
        return;
    };
    let long = GarpPlan {
        count: 6,
        spacing: Duration::from_millis(100),
    };
    let a = vip(long);
    let n1_claim = {
        let (n1, a) = (t.n1.clone(), a.clone());
        std::thread::spawn(move || claim(&n1, &a, long))
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while !addresses(&t.n1).contains(&VIP.to_string()) {
        assert!(Instant::now() < deadline, "n1 never got the VIP");
        std::thread::sleep(Duration::from_millis(5));
    }
    client_touch(&t.client);
    assert_eq!(client_neighbour(&t.client).as_deref(), Some(N1_MAC));

    let once = GarpPlan {
        count: 1,
        spacing: Duration::ZERO,
    };
    assert!(release(&t.n1, &vip(once)));
    claim(&t.n2, &vip(once), once);
    assert!(
        wait_neighbour(&t.client, N2_MAC, Duration::from_secs(1)).is_some(),
        "the client did not follow the VIP to n2"
    );
    // n1's plan runs until about 500 ms after its claim; watch past that.
    let watch_until = Instant::now() + Duration::from_millis(600);
    while Instant::now() < watch_until {
        let mac = client_neighbour(&t.client);
        assert_eq!(
            mac.as_deref(),
            Some(N2_MAC),
            "the client was pulled back by the old owner"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Err(panic) = n1_claim.join() {
        std::panic::resume_unwind(panic);
    }
}
