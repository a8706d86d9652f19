//! Images end to end: build, sign, verify (also against the real `minisign`
//! tool), hostile archives refused with nothing changed, and slots booting,
//! rolling back, and surviving a kill at every step.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use tandem_image::archive::{self, Compression, Limits};
use tandem_image::signing::{self, TrustPolicy};
use tandem_image::slots::{self, BootOutcome, SlotService};
use tandem_image::{Error, Manifest, SlotName, SlotState, SlotStore};
use tempfile::TempDir;

fn tmp() -> TempDir {
    tempfile::tempdir().expect("create a temporary directory")
}

/// A release directory and manifest whose health command is `health`.
fn release(dir: &Path, version: &str, health: &str) -> (PathBuf, PathBuf) {
    let files = dir.join(format!("files-{version}"));
    fs::create_dir_all(files.join("bin")).expect("create the directory");
    fs::write(files.join("bin/service"), "#!/bin/sh\nexec sleep 60\n").expect("write the file");
    Command::new("chmod")
        .arg("755")
        .arg(files.join("bin/service"))
        .status()
        .expect("run chmod");
    fs::write(files.join("README"), format!("release {version}\n")).expect("write the file");
    std::os::unix::fs::symlink("bin/service", files.join("run")).expect("create the symlink");
    let manifest = dir.join(format!("manifest-{version}.toml"));
    fs::write(
        &manifest,
        format!(
            "name = \"demo\"\nversion = \"{version}\"\nentrypoint = [\"bin/service\"]\ndata_format = 1\nprotocol = [1, 2]\n[health]\ncommand = [\"sh\", \"-c\", \"{health}\"]\ntimeout = \"300ms\"\n"
        ),
    ).expect("write the file");
    (manifest, files)
}

fn build(dir: &Path, version: &str, health: &str, compression: Compression) -> PathBuf {
    let (manifest, files) = release(dir, version, health);
    let image = dir.join(format!("demo-{version}.tandem"));
    archive::build(&manifest, &files, &image, compression).expect("build the image");
    image
}

struct Keys {
    secret: PathBuf,
    public: PathBuf,
}

fn make_keys(dir: &Path, name: &str) -> Keys {
    let keys = Keys {
        secret: dir.join(format!("{name}.key")),
        public: dir.join(format!("{name}.pub")),
    };
    signing::keygen(&keys.secret, &keys.public, None).expect("generate the keys");
    keys
}

fn sign(image: &Path, keys: &Keys) {
    signing::sign(
        image,
        &signing::read_secret_key(&keys.secret, None).expect("read the secret key"),
    )
    .expect("sign the image");
}

fn policy(keys: &Keys) -> TrustPolicy {
    TrustPolicy {
        trusted_keys: vec![signing::read_public_key(&keys.public).expect("read the public key")],
        ..TrustPolicy::default()
    }
}

#[test]
fn build_sign_verify_both_compressions() {
    let dir = tmp();
    let keys = make_keys(dir.path(), "release");
    for (version, compression) in [("6.2.0", Compression::Zstd), ("6.2.5", Compression::Gzip)] {
        let image = build(dir.path(), version, "true", compression);
        sign(&image, &keys);
        let verified = policy(&keys).verify(&image).expect("verify the image");
        assert_eq!(verified.contents.manifest.version.to_string(), version);
        assert_eq!(verified.contents.compression, compression);
        assert_eq!(
            verified.contents.entries, 5,
            "manifest, bin/, bin/service, README, run"
        );
        assert_eq!(
            verified.signer.map(|k| k.to_string()),
            Some(
                signing::key_id(
                    &signing::read_public_key(&keys.public).expect("read the public key")
                )
                .to_string()
            )
        );
        assert_eq!(
            verified.sha256,
            signing::sha256_file(&image).expect("hash the image")
        );
    }
}

#[test]
fn builds_are_reproducible() {
    let dir = tmp();
    let (manifest, files) = release(dir.path(), "6.2.0", "true");
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    archive::build(&manifest, &files, &one, Compression::Zstd).expect("build the image");
    archive::build(&manifest, &files, &two, Compression::Zstd).expect("build the image");
    assert_eq!(
        fs::read(&one).expect("read the file"),
        fs::read(&two).expect("read the file")
    );
}

#[test]
fn secret_key_is_private_and_never_overwritten() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmp();
    let keys = make_keys(dir.path(), "k");
    let mode = fs::metadata(&keys.secret)
        .expect("read the file's metadata")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert!(signing::keygen(&keys.secret, &keys.public, None).is_err());
    // An encrypted key needs its password.
    let (secret, public) = (dir.path().join("enc.key"), dir.path().join("enc.pub"));
    signing::keygen(&secret, &public, Some("hunter2".into())).expect("generate the keys");
    let refused = signing::read_secret_key(&secret, None)
        .err()
        .map(|e| e.to_string());
    assert!(refused.is_some_and(|e| e.contains("--password-env")));
    signing::read_secret_key(&secret, Some("hunter2".into())).expect("read the secret key");
}

fn refusal(policy: &TrustPolicy, image: &Path) -> String {
    match policy.verify(image) {
        Ok(v) => panic!("{} was accepted: {v:?}", image.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn tampered_unsigned_and_foreign_images_are_refused() {
    let dir = tmp();
    let keys = make_keys(dir.path(), "release");
    let stranger = make_keys(dir.path(), "stranger");
    let image = build(dir.path(), "6.2.5", "true", Compression::Zstd);

    // Missing signature: refused, unless the node allows unsigned images.
    assert!(refusal(&policy(&keys), &image).contains("no signature"));
    let lenient = TrustPolicy {
        allow_unsigned: true,
        ..policy(&keys)
    };
    assert_eq!(
        lenient.verify(&image).expect("verify the image").signer,
        None
    );

    // Signed by a key the node does not trust.
    sign(&image, &stranger);
    assert!(refusal(&policy(&keys), &image).contains("not in this node's trusted_keys"));
    assert!(
        refusal(&lenient, &image).contains("not in this node's trusted_keys"),
        "a bad signature is never 'unsigned'"
    );

    // One flipped byte anywhere.
    sign(&image, &keys);
    policy(&keys).verify(&image).expect("verify the image");
    let mut bytes = fs::read(&image).expect("read the file");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(&image, &bytes).expect("write the file");
    assert!(refusal(&policy(&keys), &image).contains("does not match its signature"));

    // A garbled signature file.
    fs::write(signing::signature_path(&image), "not a signature").expect("write the file");
    assert!(refusal(&policy(&keys), &image).contains("malformed signature"));
}

/// Writes a raw tar entry, bypassing the tar crate's own path checks, so
/// hostile archives can be made.
fn raw_entry(out: &mut Vec<u8>, name: &str, kind: tar::EntryType, data: &[u8], link: &str) {
    let mut header = tar::Header::new_old();
    {
        let old = header.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

const MANIFEST: &str =
    "name = \"x\"\nversion = \"1.0.0\"\nentrypoint = [\"run\"]\ndata_format = 1\nprotocol = [1]\n";

/// One raw archive entry: path, type, data, link target.
type RawEntry<'a> = (&'a str, tar::EntryType, &'a [u8], &'a str);

fn hostile(dir: &Path, name: &str, extra: &[RawEntry]) -> PathBuf {
    let mut tar = Vec::new();
    raw_entry(
        &mut tar,
        "manifest.toml",
        tar::EntryType::Regular,
        MANIFEST.as_bytes(),
        "",
    );
    raw_entry(&mut tar, "run", tar::EntryType::Regular, b"#!/bin/sh\n", "");
    for (path, kind, data, link) in extra {
        raw_entry(&mut tar, path, *kind, data, link);
    }
    tar.extend_from_slice(&[0u8; 1024]);
    let path = dir.join(name);
    fs::write(
        &path,
        zstd::encode_all(&tar[..], 3).expect("compress the archive"),
    )
    .expect("write the file");
    path
}

#[test]
fn hostile_archives_are_refused_with_the_reason() {
    use tar::EntryType::{Block, Char, Directory, Link, Regular, Symlink};
    let dir = tmp();
    let lenient = TrustPolicy {
        allow_unsigned: true,
        ..TrustPolicy::default()
    };
    let control = hostile(
        dir.path(),
        "fine",
        &[("docs/", Directory, b"", ""), ("docs/a", Regular, b"a", "")],
    );
    lenient.verify(&control).expect("verify the image");

    let cases: &[(&str, &[RawEntry], &str)] = &[
        (
            "absolute",
            &[("/etc/passwd", Regular, b"x", "")],
            "is an absolute path",
        ),
        (
            "dotdot",
            &[("a/../../evil", Regular, b"x", "")],
            "contains '..'",
        ),
        (
            "abs-link",
            &[("l", Symlink, b"", "/etc")],
            "points to the absolute path /etc",
        ),
        (
            "up-link",
            &[("l", Symlink, b"", "../../etc")],
            "points outside its directory",
        ),
        (
            "through-link",
            &[("l", Symlink, b"", "sub"), ("l/x", Regular, b"x", "")],
            "lies under a symlink",
        ),
        (
            "hardlink",
            &[("h", Link, b"", "run")],
            "only files, directories and symlinks",
        ),
        (
            "char-device",
            &[("tty", Char, b"", "")],
            "only files, directories and symlinks",
        ),
        (
            "block-device",
            &[("sda", Block, b"", "")],
            "only files, directories and symlinks",
        ),
        (
            "duplicate",
            &[("run", Regular, b"evil", "")],
            "appears twice",
        ),
        (
            "second-manifest",
            &[("./manifest.toml", Regular, MANIFEST.as_bytes(), "")],
            "appears twice",
        ),
    ];
    for (name, entries, expected) in cases {
        let image = hostile(dir.path(), name, entries);
        let message = refusal(&lenient, &image);
        assert!(message.contains(expected), "{name}: {message}");
    }

    // Size and entry limits.
    let big = hostile(dir.path(), "big", &[("blob", Regular, &[0u8; 4096], "")]);
    let tight = TrustPolicy {
        allow_unsigned: true,
        limits: Limits {
            max_unpacked_bytes: 1024,
            max_entries: 100,
        },
        ..TrustPolicy::default()
    };
    assert!(refusal(&tight, &big).contains("unpacks to more than 1024 bytes"));
    let few = TrustPolicy {
        allow_unsigned: true,
        limits: Limits {
            max_unpacked_bytes: 1 << 20,
            max_entries: 2,
        },
        ..TrustPolicy::default()
    };
    assert!(refusal(&few, &control).contains("more than 2 entries"));

    // Not an archive at all, and an archive without its entrypoint.
    let junk = dir.path().join("junk");
    fs::write(&junk, b"MZ not a tar").expect("write the file");
    assert!(refusal(&lenient, &junk).contains("not a zstd or gzip"));
    let mut tar = Vec::new();
    raw_entry(&mut tar, "manifest.toml", Regular, MANIFEST.as_bytes(), "");
    tar.extend_from_slice(&[0u8; 1024]);
    let headless = dir.path().join("headless");
    fs::write(
        &headless,
        zstd::encode_all(&tar[..], 3).expect("compress the archive"),
    )
    .expect("write the file");
    assert!(refusal(&lenient, &headless).contains("entrypoint \"run\" is not in the archive"));
}

// ---- minisign interop -----------------------------------------------------

fn minisign_tool() -> Option<PathBuf> {
    let found = Command::new("minisign").arg("-v").output().is_ok();
    if !found {
        eprintln!("SKIP: the minisign tool is not installed (apt-get install minisign)");
    }
    found.then(|| PathBuf::from("minisign"))
}

#[test]
fn minisign_tool_verifies_our_signatures() {
    let Some(tool) = minisign_tool() else { return };
    let dir = tmp();
    let keys = make_keys(dir.path(), "ours");
    let image = build(dir.path(), "6.2.5", "true", Compression::Zstd);
    sign(&image, &keys);
    let status = Command::new(&tool)
        .arg("-Vq")
        .arg("-p")
        .arg(&keys.public)
        .arg("-m")
        .arg(&image)
        .status();
    assert!(
        status.expect("run minisign").success(),
        "minisign -V refused our signature"
    );
    // And notices tampering.
    let mut bytes = fs::read(&image).expect("read the file");
    bytes[10] ^= 0xFF;
    fs::write(&image, bytes).expect("write the file");
    let status = Command::new(&tool)
        .arg("-Vq")
        .arg("-p")
        .arg(&keys.public)
        .arg("-m")
        .arg(&image)
        .status();
    assert!(
        !status.expect("run minisign").success(),
        "minisign -V accepted a tampered image"
    );
}

#[test]
fn we_verify_minisign_tool_signatures() {
    let Some(tool) = minisign_tool() else { return };
    let dir = tmp();
    let (public, secret) = (dir.path().join("tool.pub"), dir.path().join("tool.key"));
    let generated = Command::new(&tool)
        .arg("-GW")
        .arg("-p")
        .arg(&public)
        .arg("-s")
        .arg(&secret)
        .output();
    assert!(
        generated.expect("run minisign -G").status.success(),
        "minisign -G failed"
    );
    let image = build(dir.path(), "6.2.5", "true", Compression::Gzip);
    let signed = Command::new(&tool)
        .arg("-S")
        .arg("-s")
        .arg(&secret)
        .arg("-m")
        .arg(&image)
        .output();
    assert!(
        signed.expect("run minisign -S").status.success(),
        "minisign -S failed"
    );
    let trust = TrustPolicy {
        trusted_keys: vec![signing::read_public_key(&public).expect("read the public key")],
        ..TrustPolicy::default()
    };
    assert_eq!(
        trust
            .verify(&image)
            .expect("verify the image")
            .contents
            .manifest
            .version
            .to_string(),
        "6.2.5"
    );
    // A tool signature over other bytes is refused.
    fs::write(&image, b"replaced").expect("write the file");
    assert!(trust.verify(&image).is_err());
}

// ---- slots ----------------------------------------------------------------

/// A stand-in supervisor: records what ran; health is the manifest's command.
#[derive(Default)]
struct FakeService {
    running: Option<PathBuf>,
    starts: Vec<String>,
}

impl SlotService for FakeService {
    fn stop(&mut self) -> Result<(), String> {
        self.running = None;
        Ok(())
    }
    fn start(&mut self, root: &Path, manifest: &Manifest) -> Result<(), String> {
        self.running = Some(root.to_path_buf());
        self.starts.push(manifest.version.to_string());
        Ok(())
    }
}

struct Node {
    _dir: TempDir,
    slots: PathBuf,
    good: PathBuf,
    bad: PathBuf,
    base: PathBuf,
    trust: TrustPolicy,
}

fn node() -> Node {
    let dir = tmp();
    let base = build(dir.path(), "6.2.0", "true", Compression::Zstd);
    let good = build(dir.path(), "6.2.5", "true", Compression::Zstd);
    let bad = build(dir.path(), "6.2.9", "exit 1", Compression::Zstd);
    Node {
        slots: dir.path().join("state/slots"),
        good,
        bad,
        base,
        trust: TrustPolicy {
            allow_unsigned: true,
            ..TrustPolicy::default()
        },
        _dir: dir,
    }
}

fn open(path: &Path) -> (SlotStore, Vec<String>) {
    SlotStore::open(path).expect("open the slot store")
}

/// A node running 6.2.0 from slot a.
fn running_base(node: &Node) -> (SlotStore, FakeService) {
    let (mut store, _) = open(&node.slots);
    let mut service = FakeService::default();
    let slot = store
        .install(
            &node.trust.verify(&node.base).expect("verify the image"),
            Limits::default(),
        )
        .expect("install the image");
    assert_eq!(slot, SlotName::A);
    let outcome = slots::boot(&mut store, &mut service, None).expect("boot the slot");
    assert_eq!(
        outcome,
        BootOutcome::Good {
            slot: SlotName::A,
            version: Some("6.2.0".parse().expect("parse the version"))
        }
    );
    (store, service)
}

#[test]
fn healthy_image_boots_and_is_marked_good() {
    let node = node();
    let (mut store, mut service) = running_base(&node);
    assert_eq!(
        store
            .install(
                &node.trust.verify(&node.good).expect("verify the image"),
                Limits::default()
            )
            .expect("install the image"),
        SlotName::B
    );
    assert_eq!(store.table().b.state, SlotState::Pending);
    let outcome = slots::boot(&mut store, &mut service, None).expect("boot the slot");
    assert_eq!(
        outcome,
        BootOutcome::Good {
            slot: SlotName::B,
            version: Some("6.2.5".parse().expect("parse the version"))
        }
    );
    assert_eq!(store.table().current, Some(SlotName::B));
    assert_eq!(
        (store.table().a.state, store.table().b.state),
        (SlotState::Good, SlotState::Good)
    );
    assert_eq!(service.running, Some(store.root(SlotName::B)));
    assert_eq!(
        fs::read_to_string(store.root(SlotName::B).join("README")).expect("read the file"),
        "release 6.2.5\n"
    );

    // On-demand rollback goes back to a, and the history says what happened.
    assert_eq!(store.rollback().expect("roll back"), SlotName::A);
    assert_eq!(store.table().current, Some(SlotName::A));
    let events: Vec<String> = store
        .history(10)
        .iter()
        .map(|r| r["event"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        events,
        [
            "installed",
            "boot",
            "good",
            "installed",
            "boot",
            "good",
            "rolled-back"
        ]
    );
}

#[test]
fn unhealthy_image_rolls_back_after_three_tries() {
    let node = node();
    let (mut store, mut service) = running_base(&node);
    store
        .install(
            &node.trust.verify(&node.bad).expect("verify the image"),
            Limits::default(),
        )
        .expect("install the image");
    let outcome = slots::boot(&mut store, &mut service, None).expect("boot the slot");
    match outcome {
        BootOutcome::RolledBack { from, to, reason } => {
            assert_eq!((from, to), (SlotName::B, Some(SlotName::A)));
            assert!(reason.contains("exited with"), "{reason}");
        }
        other => panic!("expected a rollback, got {other:?}"),
    }
    assert_eq!(
        service.starts,
        ["6.2.0", "6.2.9", "6.2.9", "6.2.9", "6.2.0"],
        "three tries, then back"
    );
    assert_eq!(service.running, Some(store.root(SlotName::A)));
    assert_eq!(
        (store.table().current, store.table().b.state),
        (Some(SlotName::A), SlotState::Bad)
    );
    let bad_boot = store
        .begin_boot(Some(SlotName::B))
        .err()
        .map(|e| e.to_string());
    assert!(bad_boot.is_some_and(|e| e.contains("slot b is Bad")));
}

#[test]
fn refused_image_changes_nothing() {
    let node = node();
    let (store, _) = running_base(&node);
    let before = store.table().clone();
    let listing = |p: &Path| -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(p)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    let files_before = listing(&node.slots);
    let mut bytes = fs::read(&node.good).expect("read the file");
    let last = bytes.len() - 5;
    bytes[last] ^= 0xFF;
    fs::write(&node.good, bytes).expect("write the file");
    assert!(
        node.trust.verify(&node.good).is_err(),
        "a corrupted archive fails verification"
    );
    drop(store);
    let (store, notes) = open(&node.slots);
    assert_eq!((store.table(), notes.len()), (&before, 0));
    assert_eq!(listing(&node.slots), files_before);
}

/// kill -9 at every durable step of an install and a boot: after reopening,
/// the node runs a good slot, says what it repaired, and can finish.
#[test]
fn a_kill_at_any_step_leaves_a_consistent_node() {
    for (image_name, healthy) in [("good", true), ("bad", false)] {
        let mut step = 0;
        loop {
            let node = node();
            let image = if healthy { &node.good } else { &node.bad };
            let (mut store, mut service) = running_base(&node);
            store.crash_after(step);
            let verified = node.trust.verify(image).expect("verify the image");
            let crashed = match store.install(&verified, Limits::default()) {
                Err(Error::InjectedCrash) => true,
                Err(e) => panic!("{image_name} step {step}: {e}"),
                Ok(_) => match slots::boot(&mut store, &mut service, None) {
                    Err(Error::InjectedCrash) => true,
                    Err(e) => panic!("{image_name} step {step}: {e}"),
                    Ok(_) => false,
                },
            };
            drop(store);

            // The agent restarts.
            let (mut store, _notes) = open(&node.slots);
            let table = store.table().clone();
            assert!(
                !node.slots.join("staging").exists(),
                "{image_name} step {step}: staging left behind"
            );
            for slot in [SlotName::A, SlotName::B] {
                let has_files = store.root(slot).join("manifest.toml").exists();
                assert_eq!(
                    has_files,
                    table.slot(slot).state != SlotState::Empty,
                    "{image_name} step {step}: slot {slot}"
                );
            }
            let mut service = FakeService::default();
            let outcome = slots::resume(&mut store, &mut service).expect("resume the boot");
            let running = store.table().current;
            let running_state = running.map(|s| store.table().slot(s).state);
            assert_eq!(
                running_state,
                Some(SlotState::Good),
                "{image_name} step {step}: {outcome:?}"
            );
            if !healthy {
                assert_eq!(
                    running,
                    Some(SlotName::A),
                    "{image_name} step {step}: a bad image never stays"
                );
            }
            if !crashed {
                break;
            }
            step += 1;
            assert!(step < 50, "the procedure should have fewer steps");
        }
        assert!(
            step >= 5,
            "{image_name}: only {step} crash points exercised"
        );
    }
}
