//! A pair of real agents in `ip` VIP mode, each in its own network
//! namespace on one bridge, with a client in a third: the address moves on
//! kill -9, and a partition heals with exactly one node holding it.
//!
//! ```text
//!   n1 198.18.0.1 ─┐
//!   n2 198.18.0.2 ─┼─ br0 (bridge namespace)      VIP 198.18.0.100/24
//!   c  198.18.0.10 ┘
//! ```
//!
//! Needs root and `ip netns`; prints `SKIP: <reason>` and passes otherwise.
//! Namespaces are named `tdmp-<pid>-*` and deleted by a guard's `Drop`.
//! 198.18.0.0/24 is a benchmarking range that is never routed, and the
//! namespaces have no link to the host's network.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_tandem");

fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespaces; deleted on drop, agents killed first.
struct Lab {
    prefix: String,
    agents: Vec<Option<Child>>,
}

impl Lab {
    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn new() -> Result<Lab, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        run(&["ip", "netns", "list"]).map_err(|e| format!("ip netns unavailable: {e}"))?;
        let lab = Lab {
            prefix: format!("tdmp-{}", std::process::id()),
            agents: vec![None, None],
        };
        let br = lab.ns("br");
        run(&["ip", "netns", "add", &br])?;
        run(&["ip", "-n", &br, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &br, "link", "set", "br0", "up"])?;
        for (name, addr) in [
            ("n1", "198.18.0.1/24"),
            ("n2", "198.18.0.2/24"),
            ("c", "198.18.0.10/24"),
        ] {
            let ns = lab.ns(name);
            run(&["ip", "netns", "add", &ns])?;
            let host_end = format!("v{}{name}", std::process::id() % 100_000);
            run(&[
                "ip", "-n", &br, "link", "add", &host_end, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            run(&[
                "ip", "-n", &br, "link", "set", &host_end, "master", "br0", "up",
            ])?;
            run(&["ip", "-n", &ns, "addr", "add", addr, "dev", "eth0"])?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    fn start(&mut self, i: usize, dir: &Path) {
        let ns = self.ns(&format!("n{}", i + 1));
        let config = dir.join(format!("n{}.toml", i + 1));
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, EXE, "agent", "--config"])
            .arg(&config)
            .env_remove("TANDEM_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the agent");
        self.agents[i] = Some(child);
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.agents[i].take() {
            // `ip netns exec` execs the agent, so this pid is the agent's.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Who answers on the VIP, asked from the client namespace.
    fn client_asks(&self) -> Option<String> {
        let script = "exec 3<>/dev/tcp/198.18.0.100/2525 && read -t 1 name <&3 && echo \"$name\"";
        run(&[
            "ip",
            "netns",
            "exec",
            &self.ns("c"),
            "timeout",
            "2",
            "bash",
            "-c",
            script,
        ])
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
    }

    fn wait_answer(&self, name: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.client_asks().as_deref() == Some(name) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn holds_vip(&self, node: &str) -> bool {
        run(&[
            "ip",
            "-n",
            &self.ns(node),
            "-4",
            "addr",
            "show",
            "dev",
            "eth0",
        ])
        .map(|s| s.contains("198.18.0.100/"))
        .unwrap_or(false)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 0..self.agents.len() {
            self.kill(i);
        }
        for name in ["n1", "n2", "c", "br"] {
            let _ = run(&["ip", "netns", "del", &self.ns(name)]);
        }
    }
}

fn write_configs(dir: &Path) {
    std::fs::write(dir.join("cluster.key"), "netns-pair-test-key-0123456789")
        .expect("write cluster.key");
    std::fs::write(dir.join("api.token"), "netns-pair-test-token-0123456789")
        .expect("write api.token");
    for (me, peer, prio, role) in [(1, 2, 200, "primary"), (2, 1, 100, "secondary")] {
        let text = format!(
            r#"[node]
name = "n{me}"
priority = {prio}
role = "{role}"
state_dir = "state-n{me}"
api = "198.18.0.{me}:7401"
sync = "198.18.0.{me}:7601"
token_file = "api.token"

[cluster]
name = "netns"
key_file = "cluster.key"

[[link]]
name = "eth0"
listen = "198.18.0.{me}:7501"

[[peer]]
name = "n{peer}"
links = ["198.18.0.{peer}:7501"]
sync = "198.18.0.{peer}:7601"
api = "198.18.0.{peer}:7401"

[vip]
mode = "ip"
interface = "eth0"
address = "198.18.0.100/24"
listen = ["198.18.0.100:2525"]

[service]
command = ["{EXE}", "bench", "name-service"]
grace = "1s"
"#
        );
        std::fs::write(dir.join(format!("n{me}.toml")), text).expect("write the node config");
    }
}

#[test]
fn ip_mode_pair_fails_over_and_heals_a_partition_with_one_owner() {
    let mut lab = match Lab::new() {
        Ok(lab) => lab,
        Err(reason) => {
            eprintln!("SKIP: {reason}");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("create a temp dir");
    write_configs(dir.path());
    lab.start(0, dir.path());
    lab.start(1, dir.path());
    assert!(
        lab.wait_answer("n1", Duration::from_secs(10)),
        "n1 serves the VIP"
    );
    assert!(lab.holds_vip("n1") && !lab.holds_vip("n2"));

    // kill -9 of the active agent: n2 adds the address, announces it, and
    // the client follows.
    lab.kill(0);
    assert!(
        lab.wait_answer("n2", Duration::from_secs(10)),
        "n2 took the VIP after kill -9 of n1"
    );
    assert!(lab.holds_vip("n2"));

    // n1 comes back and, as primary with preemption, takes the VIP back;
    // n2 removes the address.
    lab.start(0, dir.path());
    assert!(
        lab.wait_answer("n1", Duration::from_secs(10)),
        "n1 took the VIP back"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab.holds_vip("n2") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!lab.holds_vip("n2"), "n2 released the address");

    // Partition n1 away: n2 takes over; on heal, exactly one keeps it.
    run(&["ip", "-n", &lab.ns("n1"), "link", "set", "eth0", "down"]).expect("cut n1's link");
    assert!(
        lab.wait_answer("n2", Duration::from_secs(10)),
        "n2 took over during the partition"
    );
    run(&["ip", "-n", &lab.ns("n1"), "link", "set", "eth0", "up"]).expect("restore n1's link");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut owners = (true, true);
    while Instant::now() < deadline {
        owners = (lab.holds_vip("n1"), lab.holds_vip("n2"));
        if owners.0 ^ owners.1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        owners.0 ^ owners.1,
        "exactly one node holds the VIP after the heal: {owners:?}"
    );
    let owner = if owners.0 { "n1" } else { "n2" };
    assert!(
        lab.wait_answer(owner, Duration::from_secs(5)),
        "the client reaches {owner}"
    );
}
