//! Signed images on a running pair: push, install, boot with a health check,
//! `failover reload-standby`, a switchover onto the new release, unsigned
//! images refused, and an image whose health check fails rolled back by
//! itself.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::Duration;

use tandem::localcluster::{ClusterSpec, LocalCluster};
use tandem_agent::api::{StatusReport, UploadAnswer};
use tandem_core::EffectiveRole;

const EXE: &str = env!("CARGO_BIN_EXE_tandem");

fn tandem(cluster: &LocalCluster, node: usize, args: &[&str]) -> (i32, String, String) {
    cluster.cli(node, args)
}

fn plain(args: &[&str]) {
    let out = Process::new(EXE).args(args).output().expect("run tandem");
    assert!(
        out.status.success(),
        "tandem {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds (and signs, with `key`) an image whose service is the benchmark's
/// name service and whose health check is `health` (TOML).
fn image(dir: &Path, version: &str, health: &str, key: Option<&Path>) -> PathBuf {
    image_with(dir, version, health, key, false)
}

/// As [`image`]; with `agent`, the image also carries its own agent (a
/// wrapper around this build's binary).
fn image_with(dir: &Path, version: &str, health: &str, key: Option<&Path>, agent: bool) -> PathBuf {
    let files = dir.join(format!("files-{version}"));
    std::fs::create_dir_all(files.join("bin")).expect("create the image's bin dir");
    let script = files.join("bin/service");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nexec {EXE} bench name-service\n"),
    )
    .expect("write the service script");
    let _ = Process::new("chmod").arg("755").arg(&script).status();
    let agent_line = if agent {
        let wrapper = files.join("bin/tandem");
        std::fs::write(&wrapper, format!("#!/bin/sh\nexec {EXE} \"$@\"\n"))
            .expect("write the agent wrapper");
        let _ = Process::new("chmod").arg("755").arg(&wrapper).status();
        "agent = \"bin/tandem\"\n"
    } else {
        ""
    };
    let manifest = dir.join(format!("manifest-{version}.toml"));
    std::fs::write(
        &manifest,
        format!("name = \"relay\"\nversion = \"{version}\"\nentrypoint = [\"bin/service\"]\ndata_format = 1\nprotocol = [2]\n{agent_line}[health]\n{health}\ntimeout = \"500ms\"\n"),
    )
    .expect("write the manifest");
    let out = dir.join(format!("relay-{version}.tandem"));
    let (m, f, o) = (
        manifest.display().to_string(),
        files.display().to_string(),
        out.display().to_string(),
    );
    plain(&["image", "build", "--manifest", &m, "--files", &f, "-o", &o]);
    if let Some(key) = key {
        plain(&["image", "sign", "--secret", &key.display().to_string(), &o]);
    }
    out
}

fn vip_answer(vip: SocketAddr) -> Option<String> {
    let stream = TcpStream::connect_timeout(&vip, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    Some(line.trim().to_string())
}

/// Node `node`'s status report; `None` while its agent does not answer.
fn status(
    rt: &tokio::runtime::Runtime,
    cluster: &LocalCluster,
    node: usize,
) -> Option<StatusReport> {
    rt.block_on(cluster.status(node))
}

/// Node `node`'s release, as its status reports it.
fn version(rt: &tokio::runtime::Runtime, cluster: &LocalCluster, node: usize) -> Option<String> {
    status(rt, cluster, node).map(|s| s.node.version)
}

/// Node `node`'s effective role, as its status reports it.
fn role(
    rt: &tokio::runtime::Runtime,
    cluster: &LocalCluster,
    node: usize,
) -> Option<EffectiveRole> {
    status(rt, cluster, node).map(|s| s.node.effective_role)
}

/// Polls until `check` holds for node `node`'s status (`None` while its
/// agent does not answer); bounded.
fn wait_until(
    rt: &tokio::runtime::Runtime,
    cluster: &LocalCluster,
    node: usize,
    what: &str,
    check: impl Fn(Option<&StatusReport>) -> bool,
) {
    for _ in 0..200 {
        if check(status(rt, cluster, node).as_ref()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: {:?}", status(rt, cluster, node));
}

/// A signing key pair in `dir`: (secret, public).
fn release_key(dir: &Path) -> (PathBuf, PathBuf) {
    let (secret, public) = (dir.join("release.key"), dir.join("release.pub"));
    plain(&[
        "image",
        "keygen",
        "--secret",
        &secret.display().to_string(),
        "--public",
        &public.display().to_string(),
    ]);
    (secret, public)
}

/// `[images]` trusting one public key.
fn trusting(public: &Path) -> String {
    format!(
        "\n[images]\ntrusted_keys = [{:?}]\n",
        public.display().to_string()
    )
}

/// `[images]` taking unsigned images.
const UNSIGNED: &str = "\n[images]\nallow_unsigned = true\n";

/// A pair running the name service with `images` as its `[images]`
/// section and `version` as its release, started, alpha active.
fn started_pair(rt: &tokio::runtime::Runtime, images: &str, version: &str) -> LocalCluster {
    let spec = ClusterSpec {
        extra_toml: images.into(),
        version: version.into(),
        exe: Some(EXE.into()),
        ..ClusterSpec::new(
            &["alpha", "beta"],
            vec![EXE.into(), "bench".into(), "name-service".into()],
        )
    };
    let mut cluster = LocalCluster::create(&spec).expect("create the cluster");
    cluster.start_all().expect("start the pair");
    rt.block_on(cluster.wait_for_active(0, Duration::from_secs(15)))
        .expect("wait for alpha to be active");
    cluster
}

fn slots(cluster: &LocalCluster, node: usize) -> serde_json::Value {
    let (code, out, err) = tandem(cluster, node, &["--json", "image", "list"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap_or_else(|e| panic!("parse the image list as JSON: {e:#}\n{out}"))["slots"]
        .clone()
}

#[test]
fn images_boot_reload_the_standby_switch_over_and_roll_back_a_bad_one() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build the runtime");
    let work = tempfile::tempdir().expect("create a temp dir");
    let (secret, public) = release_key(work.path());

    let mut cluster = started_pair(&rt, &trusting(&public), "unset");
    let vip = cluster.vip;
    let healthy = format!("tcp = \"{vip}\"");

    // 6.2.0 everywhere: push, install, boot the standby then the active.
    let first = image(work.path(), "6.2.0", &healthy, Some(&secret));
    let first_name = "relay-6.2.0.tandem";
    // An earlier push to beta was cut after 100 bytes: this one resumes.
    let bytes = std::fs::read(&first).expect("read the image");
    assert!(bytes.len() > 100);
    let beta = cluster.client(1).expect("connect to beta's API");
    let _: UploadAnswer = rt
        .block_on(beta.put_bytes(
            &format!("/v1/images/{first_name}?offset=0"),
            bytes[..100].to_vec(),
            None,
        ))
        .expect("push the first 100 bytes");
    let (code, out, err) = tandem(
        &cluster,
        0,
        &["image", "push", "--all", &first.display().to_string()],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("with its signature"), "{out}");
    assert!(
        out.contains("beta: resumed a cut upload at byte 100"),
        "{out}"
    );
    assert!(!out.contains("alpha: resumed"), "{out}");
    let (code, _, err) = tandem(&cluster, 0, &["image", "install", "--all", first_name]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = tandem(&cluster, 0, &["image", "boot", "--node", "beta"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("standby ready"),
        "a standby checks its service when it next serves: {out}"
    );
    let (code, out, err) = tandem(&cluster, 0, &["image", "boot"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("checking"), "{out}");
    // The active restarted its service from the slot; the check passes.
    wait_until(&rt, &cluster, 0, "alpha marks its slot good", |_| {
        slots(&cluster, 0)["a"]["state"] == "good"
    });
    assert_eq!(version(&rt, &cluster, 0).as_deref(), Some("6.2.0"));
    assert_eq!(vip_answer(vip).as_deref(), Some("alpha"));

    // An unsigned image is refused at install, and nothing changes.
    let unsigned = image(work.path(), "6.2.1", &healthy, None);
    let (code, _, _) = tandem(
        &cluster,
        1,
        &["image", "push", &unsigned.display().to_string()],
    );
    assert_eq!(code, 0, "storing is fine");
    let (code, _, err) = tandem(&cluster, 1, &["image", "install", "relay-6.2.1.tandem"]);
    assert_eq!(code, 1);
    assert!(err.contains("no signature"), "{err}");

    // 6.2.5: ASA's reload-standby, then a switchover onto it.
    let second = image(work.path(), "6.2.5", &healthy, Some(&secret));
    let (code, _, err) = tandem(
        &cluster,
        0,
        &["image", "push", "--all", &second.display().to_string()],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = tandem(
        &cluster,
        0,
        &["image", "install", "--all", "relay-6.2.5.tandem"],
    );
    assert_eq!(code, 0, "{err}");
    // A client keeps connecting to the VIP while the standby reloads.
    let probing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let prober = {
        let probing = probing.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, 0u32);
            for _ in 0..2000 {
                if !probing.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                match vip_answer(vip) {
                    Some(_) => ok += 1,
                    None => failed += 1,
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (ok, failed)
        })
    };
    let (code, out, err) = tandem(&cluster, 0, &["failover", "reload-standby"]);
    probing.store(false, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = prober.join().unwrap_or((0, 1));
    assert_eq!(
        failed,
        0,
        "reload-standby failed {failed} of {} client connects",
        ok + failed
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("beta: Standby Ready on 6.2.5"), "{out}");
    let (code, _, err) = tandem(&cluster, 0, &["failover", "standby"]);
    assert_eq!(code, 0, "{err}");
    rt.block_on(cluster.wait_for_active(1, Duration::from_secs(15)))
        .expect("wait for beta to be active");
    wait_until(
        &rt,
        &cluster,
        1,
        "beta's 6.2.5 slot passes its check once it serves",
        |_| slots(&cluster, 1)["b"]["state"] == "good",
    );

    // A release whose health check fails: three tries, then back to 6.2.5.
    let broken = image(
        work.path(),
        "6.2.9",
        "command = [\"sh\", \"-c\", \"exit 1\"]",
        Some(&secret),
    );
    let (code, _, err) = tandem(
        &cluster,
        1,
        &["image", "push", &broken.display().to_string()],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = tandem(&cluster, 1, &["image", "install", "relay-6.2.9.tandem"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = tandem(&cluster, 1, &["image", "boot"]);
    assert_eq!(code, 0, "{err}");
    wait_until(
        &rt,
        &cluster,
        1,
        "beta rolls the broken release back",
        |s| {
            s.is_some_and(|s| s.node.version == "6.2.5")
                && slots(&cluster, 1)["a"]["state"] == "bad"
        },
    );
    assert_eq!(slots(&cluster, 1)["current"], "b");
    let mut answered = None;
    for _ in 0..100 {
        answered = vip_answer(vip);
        if answered.as_deref() == Some("beta") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        answered.as_deref(),
        Some("beta"),
        "the rolled-back service answers"
    );
    cluster.kill(0);
    cluster.kill(1);
}

/// A standby's boot passes only the checks that need no service; its
/// service is checked the first time it serves. A kill -9 of its agent in
/// between must not forget that check (it was once kept only in memory):
/// the restarted agent runs it when the node takes over, and a release
/// that fails it goes back to the previous slot.
#[test]
fn a_kill_between_a_standby_boot_and_its_first_serve_keeps_the_service_check() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build the runtime");
    let work = tempfile::tempdir().expect("create a temp dir");
    let (secret, public) = release_key(work.path());
    let mut cluster = started_pair(&rt, &trusting(&public), "unset");
    let vip = cluster.vip;

    // 6.2.0 on both, checked on the VIP.
    let first = image(
        work.path(),
        "6.2.0",
        &format!("tcp = \"{vip}\""),
        Some(&secret),
    );
    let (code, _, err) = tandem(
        &cluster,
        0,
        &["image", "push", "--all", &first.display().to_string()],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = tandem(
        &cluster,
        0,
        &["image", "install", "--all", "relay-6.2.0.tandem"],
    );
    assert_eq!(code, 0, "{err}");
    for node in ["beta", "alpha"] {
        let (code, _, err) = tandem(&cluster, 0, &["image", "boot", "--node", node]);
        assert_eq!(code, 0, "{node}: {err}");
    }
    wait_until(&rt, &cluster, 1, "beta on 6.2.0", |s| {
        s.is_some_and(|s| s.node.version == "6.2.0")
    });

    // 6.2.5 probes a port nobody listens on: it can never pass a service
    // check, and a standby never runs one.
    let nobody = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port");
    let bad = image(
        work.path(),
        "6.2.5",
        &format!("tcp = \"{nobody}\""),
        Some(&secret),
    );
    let (code, _, err) = tandem(&cluster, 1, &["image", "push", &bad.display().to_string()]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = tandem(&cluster, 1, &["image", "install", "relay-6.2.5.tandem"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = tandem(&cluster, 1, &["image", "boot"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("standby ready"), "{out}");

    // kill -9 of beta's agent before it ever serves 6.2.5; back a moment later.
    cluster.kill(1);
    cluster.start(1).expect("restart beta");
    wait_until(&rt, &cluster, 1, "beta back as standby", |s| {
        s.is_some_and(|s| s.node.effective_role == EffectiveRole::Standby)
    });
    assert_eq!(version(&rt, &cluster, 1).as_deref(), Some("6.2.5"));

    // It takes over: the check it owes runs, fails, and 6.2.0 comes back.
    let (code, _, err) = tandem(&cluster, 0, &["failover", "standby"]);
    assert_eq!(code, 0, "{err}");
    wait_until(
        &rt,
        &cluster,
        1,
        "beta checks 6.2.5 on its first serve and goes back to 6.2.0",
        |s| s.is_some_and(|s| s.node.version == "6.2.0"),
    );
    assert_eq!(slots(&cluster, 1)["current"], "a");
    cluster.kill(0);
    cluster.kill(1);
}

#[test]
fn an_image_with_its_own_agent_reexecutes_the_agent_in_place() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build the runtime");
    let work = tempfile::tempdir().expect("create a temp dir");
    let mut cluster = started_pair(&rt, UNSIGNED, "6.2.0");
    let with_agent = image_with(
        work.path(),
        "6.2.5",
        &format!("tcp = \"{}\"", cluster.vip),
        None,
        true,
    );
    let (code, _, err) = tandem(
        &cluster,
        1,
        &["image", "push", &with_agent.display().to_string()],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = tandem(&cluster, 1, &["image", "install", "relay-6.2.5.tandem"]);
    assert_eq!(code, 0, "{err}");
    let before = status(&rt, &cluster, 1).expect("read beta's status");
    let (pid, epoch) = (before.agent.pid, before.agent.epoch);

    let (code, out, err) = tandem(&cluster, 1, &["image", "boot"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("the agent restarts from the slot"), "{out}");
    // The same process (pid), a new run (epoch), the new release, and the
    // slot confirmed as Standby Ready by the new agent.
    wait_until(
        &rt,
        &cluster,
        1,
        "beta runs its slot's agent and confirms the boot",
        |s| {
            s.is_some_and(|s| {
                s.agent.pid == pid
                    && s.agent.epoch != epoch
                    && s.node.version == "6.2.5"
                    && s.node.effective_role == EffectiveRole::Standby
            }) && {
                let slots = slots(&cluster, 1);
                let current = slots["current"].as_str().unwrap_or("?").to_string();
                slots[current.as_str()]["state"] == "good"
            }
        },
    );
    let history = std::fs::read_to_string(cluster.dir.join("state/beta/slots/history.jsonl"))
        .unwrap_or_default();
    assert!(
        history.contains("re-executed itself from the slot"),
        "{history}"
    );
    assert!(
        !history.contains("died during a boot try"),
        "the re-execution used up no try: {history}"
    );
    assert_eq!(
        role(&rt, &cluster, 0),
        Some(EffectiveRole::Active),
        "alpha kept serving"
    );
    cluster.kill(0);
    cluster.kill(1);
}

/// kill -9 of the agent at every durable step of an install and a slot
/// switch (the agent aborts there, armed by TANDEM_FAULT_SLOT_STEPS): after
/// a restart the node runs a good slot, on the old or the new release, and
/// its slot history says what happened.
#[test]
fn a_kill_at_every_step_of_a_slot_switch_leaves_the_agent_on_a_good_slot() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build the runtime");
    let work = tempfile::tempdir().expect("create a temp dir");
    let mut crashed_at = Vec::new();
    for steps in 0..8u32 {
        let mut cluster = started_pair(&rt, UNSIGNED, "unset");
        let health = format!("tcp = \"{}\"", cluster.vip);
        let old = image(work.path(), &format!("6.2.{}", steps * 2), &health, None);
        let new = image(
            work.path(),
            &format!("6.2.{}", steps * 2 + 1),
            &health,
            None,
        );
        let (old_name, new_name) = (file(&old), file(&new));
        for (path, boot) in [(&old, true), (&new, false)] {
            let (code, _, err) =
                tandem(&cluster, 1, &["image", "push", &path.display().to_string()]);
            assert_eq!(code, 0, "{err}");
            if boot {
                assert_eq!(tandem(&cluster, 1, &["image", "install", &old_name]).0, 0);
                assert_eq!(tandem(&cluster, 1, &["image", "boot"]).0, 0);
            }
        }
        let old_version = format!("6.2.{}", steps * 2);
        wait_until(&rt, &cluster, 1, "beta runs the old release", |s| {
            s.is_some_and(|s| s.node.version == old_version)
        });

        // Restart beta armed to die after `steps` durable slot steps, then
        // install and boot the new release.
        cluster.kill(1);
        let armed = steps.to_string();
        cluster
            .start_with_env(1, &[("TANDEM_FAULT_SLOT_STEPS", armed.as_str())])
            .expect("restart beta with faults armed");
        wait_until(&rt, &cluster, 1, "beta is back", |s| {
            s.is_some_and(|s| s.node.effective_role == EffectiveRole::Standby)
        });
        let _ = tandem(&cluster, 1, &["image", "install", &new_name]);
        let _ = tandem(&cluster, 1, &["image", "boot"]);
        // Whatever the step, beta ends on a good slot (after the start-up
        // check of a boot left in flight); an agent that died is restarted,
        // as systemd would.
        let mut settled = false;
        for _ in 0..300 {
            if cluster.exited(1) {
                crashed_at.push(steps);
                cluster.start(1).expect("restart beta");
            }
            let (code, out, _) = tandem(&cluster, 1, &["--json", "image", "list"]);
            let listing: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            let slots = &listing["slots"];
            let current = slots["current"].as_str().unwrap_or("none").to_string();
            let role = role(&rt, &cluster, 1);
            if code == 0
                && role == Some(EffectiveRole::Standby)
                && slots["boot"].is_null()
                && slots[current.as_str()]["state"] == "good"
            {
                settled = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            settled,
            "step {steps}: beta did not settle on a good slot: {}",
            slots(&cluster, 1)
        );
        let history = std::fs::read_to_string(cluster.dir.join("state/beta/slots/history.jsonl"))
            .unwrap_or_default();
        assert!(
            !history.is_empty(),
            "step {steps}: the slot history says what happened"
        );
        cluster.kill(0);
        cluster.kill(1);
    }
    // The fault fired at the durable steps of install and boot, and not
    // beyond them (the rest completed normally).
    assert!(crashed_at.len() >= 5, "crashed at {crashed_at:?}");
}

fn file(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
