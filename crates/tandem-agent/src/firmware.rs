//! This node's "firmware": the images it holds and the A/B slots the
//! service runs from (the mechanics are `tandem-image`'s; this module is
//! the agent's side of them).
//!
//! - Images arrive over the API (`PUT /v1/images/NAME`, with
//!   `NAME.minisig` beside it) into `state_dir/images`, checked against the
//!   sha256 the sender declares. Large images come in chunks
//!   (`?offset=N`, the last with `&done=true`), appended to a partial file
//!   the sender can resume after a cut (`GET /v1/images/NAME/upload` says
//!   how much arrived): the agent never holds an image in memory, and a
//!   broken transfer does not start over.
//! - Installing verifies again against this node's trust policy
//!   (`[images] trusted_keys`, `allow_unsigned`) and unpacks into the slot
//!   that is not running.
//! - Booting switches the slot pointer (journaled by the slot store). On an
//!   active node the service restarts from the new slot and its health
//!   check decides: good, another try, or — with no try left — back to the
//!   previous slot. A standby has no service to check: its boot is good once
//!   the node is back as a healthy standby (ASA's "Standby Ready"), after a
//!   `command` health check if the manifest has one; the service-level
//!   check then runs the first time the node serves from that slot (a
//!   file remembers it is owed, so a restart of the agent does not skip
//!   it), and a failure there rolls the slot back too.
//!
//! All slot I/O is blocking (unpacking, fsync) and runs on the blocking
//! pool, never in the driver loop.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tandem_image::archive::Limits;
use tandem_image::health;
use tandem_image::manifest::{HealthProbe, Manifest};
use tandem_image::signing::{self, TrustPolicy};
use tandem_image::slots::{BootAttempt, SlotName, SlotState, SlotStore, SlotTable};
use tokio::sync::Mutex;

use crate::Error;
use crate::api::{
    ChunkReceived, ImageEntry, ImageList, InstallAnswer, PartialUpload, StoredImage, UploadAnswer,
};
use crate::config::ImagesSection;

/// The node's images and slots.
#[derive(Clone)]
pub struct Firmware {
    images: PathBuf,
    /// The flag file naming a slot booted while standby whose service has
    /// not been checked yet (see [`Firmware::mark_unchecked`]).
    unchecked: PathBuf,
    store: Arc<Mutex<SlotStore>>,
    trust: Arc<TrustPolicy>,
    /// Key files, for listing.
    allow_unsigned: bool,
}

impl Firmware {
    /// Opens (creating) `state_dir/images` and `state_dir/slots`, repairing
    /// what an interrupted slot operation left; returns what was repaired.
    pub fn open(
        state_dir: &Path,
        section: &ImagesSection,
    ) -> Result<(Firmware, Vec<String>), Error> {
        let images = state_dir.join("images");
        std::fs::create_dir_all(&images).map_err(Error::io(&images))?;
        let (mut store, notes) = SlotStore::open(&state_dir.join("slots"))?;
        // Fault tests: die (as kill -9 would) after this many durable slot
        // steps. Never set outside tests.
        if let Some(steps) = std::env::var(FAULT_ENV).ok().and_then(|v| v.parse().ok()) {
            tracing::warn!(steps, "slot fault injection armed ({FAULT_ENV})");
            store.crash_after(steps);
        }
        let mut trusted_keys = Vec::new();
        for path in &section.trusted_keys {
            trusted_keys.push(signing::read_public_key(path)?);
        }
        let trust = TrustPolicy {
            trusted_keys,
            allow_unsigned: section.allow_unsigned,
            limits: Limits::default(),
        };
        Ok((
            Firmware {
                images,
                unchecked: state_dir.join("first-serve-unchecked"),
                store: Arc::new(Mutex::new(store)),
                trust: Arc::new(trust),
                allow_unsigned: section.allow_unsigned,
            },
            notes,
        ))
    }

    /// The slot table as it is now.
    pub async fn table(&self) -> SlotTable {
        self.store.lock().await.table().clone()
    }

    /// Where an uploaded file is kept; refuses names that are not plain
    /// file names.
    pub fn upload_path(&self, name: &str) -> Result<PathBuf, Error> {
        let plain = !name.is_empty()
            && name != "."
            && name != ".."
            && !name.contains('/')
            && !name.starts_with('.')
            && name.len() <= 200;
        if plain {
            Ok(self.images.join(name))
        } else {
            Err(Error::refused(format!(
                "{name:?} is not a plain file name: name the image without a directory or a leading dot"
            )))
        }
    }

    /// Stores an uploaded file atomically, checking its sha256 when the
    /// sender declared one: a chunked upload in one chunk.
    pub async fn store_upload(
        &self,
        name: &str,
        bytes: Vec<u8>,
        sha256: Option<String>,
    ) -> Result<UploadAnswer, Error> {
        self.store_chunk(name, 0, bytes, true, sha256).await
    }

    /// Where a chunked upload of `name` accumulates until it is complete.
    fn partial_path(&self, name: &str) -> Result<PathBuf, Error> {
        self.upload_path(name)?;
        Ok(self.images.join(format!(".{name}.partial")))
    }

    /// How many bytes of a chunked upload of `name` have arrived.
    pub async fn partial_size(&self, name: &str) -> Result<PartialUpload, Error> {
        let partial = self.partial_path(name)?;
        let have = tokio::fs::metadata(&partial).await.map_or(0, |m| m.len());
        Ok(PartialUpload {
            name: name.to_string(),
            have,
        })
    }

    /// Appends one chunk of a chunked upload at `offset` (0 starts over).
    /// With `done`, the whole is checked against `sha256`, made durable
    /// and renamed to its name. A chunk that does not continue what
    /// arrived is refused, saying where to resume.
    pub async fn store_chunk(
        &self,
        name: &str,
        offset: u64,
        chunk: Vec<u8>,
        done: bool,
        sha256: Option<String>,
    ) -> Result<UploadAnswer, Error> {
        let path = self.upload_path(name)?;
        let partial = self.partial_path(name)?;
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let have = std::fs::metadata(&partial).map_or(0, |m| m.len());
            if offset != 0 && offset != have {
                return Err(Error::refused(format!(
                    "the partial upload has {have} bytes, not {offset}: resume at offset {have}"
                )));
            }
            let io = |e| Error::Io {
                path: partial.clone(),
                source: e,
            };
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(offset != 0)
                .write(true)
                .truncate(offset == 0)
                .open(&partial)
                .map_err(io)?;
            file.write_all(&chunk).map_err(io)?;
            let have = offset + chunk.len() as u64;
            if !done {
                return Ok(UploadAnswer::Received(ChunkReceived { have }));
            }
            let digest = signing::sha256_file(&partial)?;
            if let Some(want) = sha256
                && !want.eq_ignore_ascii_case(&digest)
            {
                let _ = std::fs::remove_file(&partial);
                return Err(Error::refused(format!(
                    "sha256 mismatch: sent {want}, arrived {digest}; send it again"
                )));
            }
            file.sync_all()
                .and_then(|()| std::fs::rename(&partial, &path))
                .map_err(Error::io(&path))?;
            Ok(UploadAnswer::Stored(StoredImage {
                stored: path,
                sha256: digest,
                size: have,
            }))
        })
        .await
        .map_err(Error::task("storing an uploaded image"))?
    }

    /// Every stored image with what verification says of it, and the slots.
    pub async fn list(&self) -> Result<ImageList, Error> {
        let images = self.images.clone();
        let trust = self.trust.clone();
        let table = self.table().await;
        let allow_unsigned = self.allow_unsigned;
        tokio::task::spawn_blocking(move || {
            let mut names: Vec<PathBuf> = std::fs::read_dir(&images)
                .map_err(Error::io(&images))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .is_none_or(|x| x != "minisig" && x != "upload")
                })
                // Uploads in progress (`.NAME.partial`) are not images yet.
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
                })
                .collect();
            names.sort();
            let images = names
                .iter()
                .map(|path| {
                    let image = name_of(path);
                    match trust.verify(path) {
                        Ok(v) => {
                            let slot = [SlotName::A, SlotName::B].into_iter().find(|s| {
                                table.slot(*s).sha256.as_deref() == Some(v.sha256.as_str())
                            });
                            ImageEntry {
                                image,
                                verified: true,
                                version: Some(v.contents.manifest.version),
                                name: Some(v.contents.manifest.name),
                                signer: v.signer.map(|k| k.to_string()),
                                size: Some(v.size),
                                slot,
                                sha256: Some(v.sha256),
                                error: None,
                            }
                        }
                        Err(e) => ImageEntry {
                            image,
                            verified: false,
                            version: None,
                            name: None,
                            signer: None,
                            size: None,
                            slot: None,
                            sha256: None,
                            error: Some(e.to_string()),
                        },
                    }
                })
                .collect();
            Ok(ImageList {
                images,
                slots: table,
                allow_unsigned,
            })
        })
        .await
        .map_err(Error::task("listing the images"))?
    }

    /// Verifies a stored image and installs it into the inactive slot.
    pub async fn install(&self, name: &str) -> Result<InstallAnswer, Error> {
        let path = self.upload_path(name)?;
        let trust = self.trust.clone();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let verified = trust.verify(&path)?;
            let mut store = store.blocking_lock();
            let slot = store.install(&verified, trust.limits).map_err(slot_error)?;
            Ok(InstallAnswer {
                installed: name_of(&path),
                slot,
                version: verified.contents.manifest.version,
                signer: verified.signer.map(|k| k.to_string()),
            })
        })
        .await
        .map_err(Error::task("installing an image"))?
    }

    /// Installs the verified image of `version` that this node holds.
    pub async fn install_version(&self, version: &str) -> Result<InstallAnswer, Error> {
        let listing = self.list().await?;
        let name = listing
            .images
            .into_iter()
            .find(|i| i.verified && i.version.is_some_and(|v| v.to_string() == version))
            .map(|i| i.image)
            .ok_or_else(|| {
                Error::refused(format!(
                    "no verified image of {version} on this node: push one first"
                ))
            })?;
        self.install(&name).await
    }

    /// Journals a boot of `slot` (default: the pending one) and points the
    /// service at it. The caller restarts the service if it runs.
    pub async fn begin_boot(&self, slot: Option<SlotName>) -> Result<SlotName, Error> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            store.blocking_lock().begin_boot(slot).map_err(slot_error)
        })
        .await
        .map_err(Error::task("booting a slot"))?
    }

    /// Journals that the agent re-executes itself from the slot being
    /// booted, so the restart does not count as a failed try.
    pub async fn prepare_agent_exec(&self) -> Result<(), Error> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            store
                .blocking_lock()
                .prepare_agent_exec()
                .map_err(slot_error)
        })
        .await
        .map_err(Error::task("journaling the agent's re-execution"))?
    }

    /// On-demand rollback to the other (good) slot.
    pub async fn rollback(&self) -> Result<SlotName, Error> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.blocking_lock().rollback().map_err(slot_error))
            .await
            .map_err(Error::task("rolling the slots back"))?
    }

    /// The slot the service runs from, with its manifest and root.
    pub async fn current(&self) -> Option<(SlotName, Manifest, PathBuf)> {
        let store = self.store.lock().await;
        let slot = store.table().current?;
        let manifest = store.manifest(slot).ok()?;
        Some((slot, manifest, store.root(slot)))
    }

    /// The boot waiting for a health check, if any.
    pub async fn boot_in_progress(&self) -> Option<BootAttempt> {
        self.store.lock().await.table().boot
    }

    /// Runs the current slot's health check; `standby` keeps only the
    /// checks that need no running service (a `command`). The `Err` is what
    /// the check saw, not a failure of the agent: a description the slot
    /// table records as the try's reason and the boot verdict reports.
    async fn run_health(&self, standby: bool) -> Result<(), String> {
        let Some((_, manifest, root)) = self.current().await else {
            return Err("no current slot".into());
        };
        match manifest.health.clone() {
            Some(check) if !standby || matches!(check.probe, HealthProbe::Command(_)) => {
                tokio::task::spawn_blocking(move || health::wait_healthy(&check, &root))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
            }
            _ => Ok(()),
        }
    }

    /// Remembers that `slot` was booted while standby and passed only the
    /// checks that need no service: its service is checked the first time
    /// this node serves from it (`take_unchecked`). Kept in a file, not in
    /// memory: an agent killed (kill -9, a crash) between the boot and that
    /// first serve would otherwise come back with the slot good and the
    /// check forgotten, and serve an image nobody ever checked.
    pub async fn mark_unchecked(&self, slot: SlotName) {
        let path = self.unchecked.clone();
        let written = tokio::task::spawn_blocking(move || {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, slot.to_string())
                .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| format!("{}: {e}", path.display()))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        if let Err(e) = written {
            tracing::error!(error = %e, "cannot record that the slot's service is still to be checked");
        }
    }

    /// Whether the current slot still awaits its first-serve check (see
    /// `mark_unchecked`); forgets it either way, so the check runs once.
    pub async fn take_unchecked(&self) -> bool {
        let current = self.table().await.current.map(|s| s.to_string());
        let path = self.unchecked.clone();
        tokio::task::spawn_blocking(move || {
            let Ok(marked) = std::fs::read_to_string(&path) else {
                return false;
            };
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::error!(path = %path.display(), error = %e, "cannot clear the first-serve check mark");
            }
            // A mark for the other slot is stale: that slot was left (a
            // rollback, another boot) before it ever served.
            current.is_some_and(|c| c == marked.trim())
        })
        .await
        .unwrap_or(false)
    }

    /// The service runs from a slot already marked good (booted while this
    /// node was standby) for the first time: check it; on failure, go back
    /// to the other slot.
    pub async fn check_first_serve(&self) -> BootVerdict {
        let Some((slot, _, _)) = self.current().await else {
            return BootVerdict::Failed("no current slot".into());
        };
        match self.run_health(false).await {
            Ok(()) => BootVerdict::Good {
                slot,
                version: self.version().await.unwrap_or_default(),
            },
            Err(reason) => match self.rollback().await {
                Ok(_) => BootVerdict::RolledBack { from: slot, reason },
                Err(e) => BootVerdict::Failed(format!("{reason}; and the rollback failed: {e}")),
            },
        }
    }

    /// Closes the boot in flight with the current slot's health check:
    /// good, another try, or rolled back. On a standby only the checks
    /// that need no service run.
    pub async fn check_boot(&self, standby: bool) -> BootVerdict {
        let Some((slot, manifest, _)) = self.current().await else {
            return BootVerdict::Failed("no current slot".into());
        };
        let checked = self.run_health(standby).await;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut store = store.blocking_lock();
            match checked {
                Ok(()) => match store.mark_good() {
                    Ok(_) => BootVerdict::Good {
                        slot,
                        version: manifest.version.to_string(),
                    },
                    Err(e) => BootVerdict::Failed(slot_error(e).to_string()),
                },
                Err(reason) => match store.fail_try(&reason) {
                    Ok(Some(_)) => BootVerdict::Retry { reason },
                    Ok(None) => BootVerdict::RolledBack { from: slot, reason },
                    Err(e) => BootVerdict::Failed(slot_error(e).to_string()),
                },
            }
        })
        .await
        .unwrap_or_else(|e| BootVerdict::Failed(e.to_string()))
    }

    /// The release the node runs: the current slot's version, if any.
    pub async fn version(&self) -> Option<String> {
        let table = self.table().await;
        let slot = table.current?;
        table.slot(slot).version.map(|v| v.to_string())
    }

    /// Whether a slot holds a release that can boot.
    pub async fn bootable(&self, slot: SlotName) -> bool {
        matches!(
            self.table().await.slot(slot).state,
            SlotState::Pending | SlotState::Good
        )
    }
}

/// The agent binary this node must run, when its current slot carries one
/// (`agent` in the manifest) and this process is not it: the agent always
/// runs from the slot it boots, like a device running its firmware. A boot
/// in flight is marked so the re-execution does not count as a crash.
/// Blocking; call before starting the runtime.
pub fn agent_to_exec(state_dir: &Path) -> Result<Option<PathBuf>, Error> {
    // Already the slot's agent: the slot store's repair (which clears the
    // re-execution mark without counting a try) is the agent's own, once.
    if std::env::var_os(EXEC_MARK).is_some() {
        return Ok(None);
    }
    let (mut store, _) = SlotStore::open(&state_dir.join("slots"))?;
    let Some(slot) = store.table().current else {
        return Ok(None);
    };
    let Ok(manifest) = store.manifest(slot) else {
        return Ok(None);
    };
    let Some(agent) = manifest.agent else {
        return Ok(None);
    };
    let wanted = store.root(slot).join(agent);
    let running = std::env::current_exe().map_err(Error::io("/proc/self/exe"))?;
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same(&wanted, &running) {
        return Ok(None);
    }
    if store.table().boot.is_some() {
        store.prepare_agent_exec()?;
    }
    Ok(Some(wanted))
}

/// Set in the environment of an agent exec'd from a slot, so the slot's
/// agent (which may be a wrapper that execs another binary) is not exec'd
/// again in a loop.
pub const EXEC_MARK: &str = "TANDEM_AGENT_FROM_SLOT";

/// Replaces this process with `agent`, same arguments, same pid.
pub fn exec_agent(agent: &Path) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    tracing::warn!(agent = %agent.display(), "re-executing the agent from its image slot");
    std::process::Command::new(agent)
        .args(std::env::args_os().skip(1))
        .env(EXEC_MARK, agent)
        .exec()
}

/// The environment variable that arms slot fault injection (tests only):
/// the agent aborts after that many durable slot steps, as a kill -9 there
/// would leave it.
pub const FAULT_ENV: &str = "TANDEM_FAULT_SLOT_STEPS";

/// A slot store error as the agent's; an injected crash ends the process
/// on the spot, with no cleanup, like the kill -9 it stands for.
fn slot_error(e: tandem_image::Error) -> Error {
    if matches!(e, tandem_image::Error::InjectedCrash) {
        tracing::error!("injected slot fault: aborting");
        std::process::abort();
    }
    Error::Image(e)
}

/// How a health-checked boot ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootVerdict {
    /// The slot passed and is marked good.
    Good {
        /// The slot.
        slot: SlotName,
        /// Its release.
        version: String,
    },
    /// It failed; a try is left: restart the service and check again.
    Retry {
        /// What the check saw.
        reason: String,
    },
    /// No try left: the slot is marked bad and the pointer is back on the
    /// previous slot; restart the service from there.
    RolledBack {
        /// The slot that failed.
        from: SlotName,
        /// What the check saw.
        reason: String,
    },
    /// The slot store itself failed.
    Failed(String),
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
