//! A/B slots: where images are installed and booted, and how a bad boot is
//! undone.
//!
//! Each node keeps two slots, `a` and `b`, under its state directory. The
//! running release lives in one; an upgrade unpacks into the other, so the
//! running release is never touched and is always there to fall back to:
//!
//! ```text
//!  install ─► inactive slot: Empty ─► (unpack, rename) ─► Pending
//!  boot    ─► current := target, tries_left = 2 ─► start, health check
//!               ├─ healthy ─────────────────────► target Good, boot done
//!               └─ unhealthy / crashed / agent died:
//!                    tries_left > 0 ─► try again (tries_left - 1)
//!                    tries_left = 0 ─► current := previous, target Bad
//! ```
//!
//! The slot table (`slots.json`) is the journal: every transition is one
//! atomic replace of that file (write, fsync, rename, fsync the directory),
//! so a kill -9 at any instant leaves either the state before or the state
//! after. On open, leftovers of an interrupted step are cleaned and a boot
//! that was in flight counts as a failed try — the boot counter survives
//! restarts, like systemd's boot assessment, so an image that kills the
//! agent cannot keep a node in a boot loop. What happened is appended to
//! `history.jsonl`, so the operator can read it afterwards.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tandem_version::Version;

use crate::Error;
use crate::archive::{self, Limits, MANIFEST_NAME, sync_dir};
use crate::health;
use crate::manifest::Manifest;
use crate::signing::VerifiedImage;

/// Boot attempts an image gets before the node rolls back.
pub const BOOT_TRIES: u8 = 3;

/// One of the two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotName {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

impl SlotName {
    /// The other slot.
    pub fn other(self) -> SlotName {
        match self {
            SlotName::A => SlotName::B,
            SlotName::B => SlotName::A,
        }
    }
}

impl fmt::Display for SlotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SlotName::A => "a",
            SlotName::B => "b",
        })
    }
}

/// What a slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    /// Nothing installed (or an install was interrupted and cleaned up).
    #[default]
    Empty,
    /// Installed and verified, never booted to a good health check.
    Pending,
    /// Booted and passed its health check.
    Good,
    /// Failed to boot; kept for inspection, never booted again by itself.
    Bad,
}

/// One slot's entry in the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SlotInfo {
    /// What the slot holds.
    pub state: SlotState,
    /// The installed release, if any.
    pub version: Option<Version>,
    /// The installed image's sha256.
    pub sha256: Option<String>,
    /// The key that signed it (None: unsigned).
    pub signer: Option<String>,
}

/// A boot in flight: written before the service starts from `target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootAttempt {
    /// The slot being booted.
    pub target: SlotName,
    /// The slot to fall back to.
    pub previous: Option<SlotName>,
    /// Tries left after the current one.
    pub tries_left: u8,
    /// The agent is about to re-execute itself from the target slot (the
    /// image carries its own agent): the restart that follows is part of
    /// the boot, not a crash, and does not use up a try.
    #[serde(default)]
    pub agent_exec: bool,
}

/// The journal: the whole slot state, replaced atomically on every change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SlotTable {
    /// The slot the service runs from.
    pub current: Option<SlotName>,
    /// Slot A.
    pub a: SlotInfo,
    /// Slot B.
    pub b: SlotInfo,
    /// The boot in flight, if any.
    pub boot: Option<BootAttempt>,
}

impl SlotTable {
    /// One slot's entry.
    pub fn slot(&self, name: SlotName) -> &SlotInfo {
        match name {
            SlotName::A => &self.a,
            SlotName::B => &self.b,
        }
    }

    fn slot_mut(&mut self, name: SlotName) -> &mut SlotInfo {
        match name {
            SlotName::A => &mut self.a,
            SlotName::B => &mut self.b,
        }
    }
}

/// The slots of one node, on disk.
pub struct SlotStore {
    dir: PathBuf,
    table: SlotTable,
    /// Test fault injection: durable steps left before a simulated kill -9.
    crash_after: Option<u32>,
}

/// How a boot ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootOutcome {
    /// The target passed its health check and is marked good.
    Good {
        /// The slot now running.
        slot: SlotName,
        /// Its release.
        version: Option<Version>,
    },
    /// Every try failed; the node is back on `to` (if there was one).
    RolledBack {
        /// The slot that failed, now marked bad.
        from: SlotName,
        /// The slot now running again.
        to: Option<SlotName>,
        /// What the last try saw.
        reason: String,
    },
}

/// The agent's service supervisor, as the boot procedure needs it.
pub trait SlotService {
    /// Stops the service (SIGTERM, grace, SIGKILL); Ok if it was not running.
    fn stop(&mut self) -> Result<(), String>;
    /// Starts the service from an unpacked image root.
    fn start(&mut self, image_root: &Path, manifest: &Manifest) -> Result<(), String>;
}

impl SlotStore {
    /// Opens (creating if needed) the slot store in `dir`, repairs whatever
    /// an interrupted step left, and returns what it repaired.
    pub fn open(dir: &Path) -> Result<(SlotStore, Vec<String>), Error> {
        fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let path = dir.join("slots.json");
        let table = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::Slot(format!(
                    "{} is corrupt ({e}); restore it from a backup or remove it to start with empty slots",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SlotTable::default(),
            Err(e) => return Err(Error::io(&path)(e)),
        };
        let mut store = SlotStore {
            dir: dir.to_path_buf(),
            table,
            crash_after: None,
        };
        let notes = store.repair()?;
        for note in &notes {
            store.record("repair", None, note);
        }
        Ok((store, notes))
    }

    /// The slot table as it is on disk.
    pub fn table(&self) -> &SlotTable {
        &self.table
    }

    /// Where a slot's files are.
    pub fn root(&self, slot: SlotName) -> PathBuf {
        self.dir.join(slot.to_string())
    }

    /// The slot the next install goes into: the one not running.
    pub fn inactive(&self) -> SlotName {
        self.table.current.map_or(SlotName::A, SlotName::other)
    }

    /// Test fault injection: after `steps` more durable steps, every step
    /// fails with [`Error::InjectedCrash`], as if the process were killed.
    #[doc(hidden)]
    pub fn crash_after(&mut self, steps: u32) {
        self.crash_after = Some(steps);
    }

    fn step(&mut self) -> Result<(), Error> {
        match &mut self.crash_after {
            Some(0) => Err(Error::InjectedCrash),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Replaces the journal with `table`: the one commit point of every
    /// transition.
    fn commit(&mut self, table: SlotTable) -> Result<(), Error> {
        self.step()?;
        let path = self.dir.join("slots.json");
        let tmp = self.dir.join("slots.json.tmp");
        let bytes = serde_json::to_vec_pretty(&table).map_err(|e| Error::Slot(e.to_string()))?;
        let mut file = fs::File::create(&tmp).map_err(Error::io(&tmp))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(Error::io(&tmp))?;
        fs::rename(&tmp, &path).map_err(Error::io(&path))?;
        sync_dir(&self.dir)?;
        self.table = table;
        Ok(())
    }

    /// Appends to `history.jsonl`. Best effort: the journal, not the
    /// history, is what recovery trusts, so a full disk here only logs.
    fn record(&self, event: &str, slot: Option<SlotName>, detail: &str) {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let line = serde_json::json!({"at": at, "event": event, "slot": slot, "detail": detail});
        let path = self.dir.join("history.jsonl");
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot append slot history");
        }
        tracing::info!(event, slot = ?slot, detail, "slot transition");
    }

    /// The last `n` history records, oldest first.
    pub fn history(&self, n: usize) -> Vec<serde_json::Value> {
        let text = fs::read_to_string(self.dir.join("history.jsonl")).unwrap_or_default();
        let all: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        all[all.len().saturating_sub(n)..].to_vec()
    }

    fn repair(&mut self) -> Result<Vec<String>, Error> {
        let mut notes = Vec::new();
        let staging = self.dir.join("staging");
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(Error::io(&staging))?;
            notes.push("removed a half-unpacked image left by an interrupted install".to_string());
        }
        let mut table = self.table.clone();
        for slot in [SlotName::A, SlotName::B] {
            let root = self.root(slot);
            let info = table.slot_mut(slot);
            if info.state == SlotState::Empty && root.exists() {
                fs::remove_dir_all(&root).map_err(Error::io(&root))?;
                notes.push(format!(
                    "slot {slot}: removed files of an interrupted install"
                ));
            } else if info.state != SlotState::Empty && !root.join(MANIFEST_NAME).exists() {
                *info = SlotInfo::default();
                notes.push(format!("slot {slot}: its files are missing; marked empty"));
            }
        }
        if let Some(boot) = table.boot.filter(|b| b.agent_exec) {
            table.boot = Some(BootAttempt {
                agent_exec: false,
                ..boot
            });
            notes.push(format!(
                "slot {}: the agent re-executed itself from the slot to boot it",
                boot.target
            ));
        } else if let Some(boot) = table.boot {
            // The agent died during a boot: that try failed.
            if boot.tries_left == 0 {
                notes.push(format!(
                    "slot {}: the agent died during its last boot try; rolled back to {}",
                    boot.target,
                    boot.previous
                        .map_or("nothing".into(), |s| format!("slot {s}"))
                ));
                Self::roll_back_table(&mut table, boot);
            } else {
                table.boot = Some(BootAttempt {
                    tries_left: boot.tries_left - 1,
                    ..boot
                });
                notes.push(format!(
                    "slot {}: the agent died during a boot try; {} tries left",
                    boot.target, boot.tries_left
                ));
            }
        }
        if table != self.table {
            self.commit(table)?;
        }
        Ok(notes)
    }

    fn roll_back_table(table: &mut SlotTable, boot: BootAttempt) {
        table.slot_mut(boot.target).state = SlotState::Bad;
        table.current = boot.previous;
        table.boot = None;
    }

    /// Installs a verified image into the inactive slot and marks it
    /// pending. The running slot is never touched.
    pub fn install(&mut self, image: &VerifiedImage, limits: Limits) -> Result<SlotName, Error> {
        if let Some(boot) = self.table.boot {
            return Err(Error::Slot(format!(
                "slot {} is booting; wait for it to finish or roll back before installing",
                boot.target
            )));
        }
        let slot = self.inactive();
        let root = self.root(slot);
        let mut table = self.table.clone();
        *table.slot_mut(slot) = SlotInfo::default();
        self.commit(table)?;

        self.step()?;
        if root.exists() {
            fs::remove_dir_all(&root).map_err(Error::io(&root))?;
        }
        let staging = self.dir.join("staging");
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(Error::io(&staging))?;
        }
        self.step()?;
        let contents = archive::unpack(&image.path, &staging, limits)?;
        if contents.manifest != image.contents.manifest {
            return Err(Error::Slot(format!(
                "{} changed since it was verified; verify it again",
                image.path.display()
            )));
        }
        self.step()?;
        fs::rename(&staging, &root).map_err(Error::io(&root))?;
        sync_dir(&self.dir)?;

        let mut table = self.table.clone();
        *table.slot_mut(slot) = SlotInfo {
            state: SlotState::Pending,
            version: Some(contents.manifest.version),
            sha256: Some(image.sha256.clone()),
            signer: image.signer.map(|k| k.to_string()),
        };
        self.commit(table)?;
        self.record(
            "installed",
            Some(slot),
            &format!("{} {}", contents.manifest.name, contents.manifest.version),
        );
        Ok(slot)
    }

    /// The manifest of an installed slot.
    pub fn manifest(&self, slot: SlotName) -> Result<Manifest, Error> {
        let path = self.root(slot).join(MANIFEST_NAME);
        let text = fs::read_to_string(&path).map_err(Error::io(&path))?;
        Manifest::parse(&text, &path.display().to_string())
    }

    /// Journals the start of a boot of `target` (default: the pending slot)
    /// and points `current` at it. The service must already be stopped.
    pub fn begin_boot(&mut self, target: Option<SlotName>) -> Result<SlotName, Error> {
        if let Some(boot) = self.table.boot {
            return Err(Error::Slot(format!(
                "slot {} is already booting",
                boot.target
            )));
        }
        let target = match target {
            Some(t) => t,
            None => [SlotName::A, SlotName::B]
                .into_iter()
                .find(|s| self.table.slot(*s).state == SlotState::Pending)
                .ok_or_else(|| Error::Slot("no slot is pending: install an image first".into()))?,
        };
        let state = self.table.slot(target).state;
        if !matches!(state, SlotState::Pending | SlotState::Good) {
            return Err(Error::Slot(format!(
                "slot {target} is {state:?}; only a pending or good slot can boot"
            )));
        }
        let mut table = self.table.clone();
        table.boot = Some(BootAttempt {
            target,
            previous: table.current.filter(|c| *c != target),
            tries_left: BOOT_TRIES - 1,
            agent_exec: false,
        });
        table.current = Some(target);
        self.commit(table)?;
        self.record(
            "boot",
            Some(target),
            "switched to this slot; waiting for its health check",
        );
        Ok(target)
    }

    /// Journals that the agent is about to re-execute itself from the slot
    /// being booted, so the restart does not count as a failed try.
    pub fn prepare_agent_exec(&mut self) -> Result<(), Error> {
        let boot = self
            .table
            .boot
            .ok_or_else(|| Error::Slot("no boot in progress".into()))?;
        let mut table = self.table.clone();
        table.boot = Some(BootAttempt {
            agent_exec: true,
            ..boot
        });
        self.commit(table)
    }

    /// The boot in flight passed its health check.
    pub fn mark_good(&mut self) -> Result<SlotName, Error> {
        let boot = self
            .table
            .boot
            .ok_or_else(|| Error::Slot("no boot in progress".into()))?;
        let mut table = self.table.clone();
        table.slot_mut(boot.target).state = SlotState::Good;
        table.boot = None;
        self.commit(table)?;
        self.record("good", Some(boot.target), "health check passed");
        Ok(boot.target)
    }

    /// A boot try failed: use up a try, or roll back when none is left.
    /// Returns the boot still in flight, or `None` after a rollback.
    pub fn fail_try(&mut self, reason: &str) -> Result<Option<BootAttempt>, Error> {
        let boot = self
            .table
            .boot
            .ok_or_else(|| Error::Slot("no boot in progress".into()))?;
        let mut table = self.table.clone();
        if boot.tries_left == 0 {
            Self::roll_back_table(&mut table, boot);
            self.commit(table)?;
            self.record("rolled-back", Some(boot.target), reason);
            return Ok(None);
        }
        let next = BootAttempt {
            tries_left: boot.tries_left - 1,
            ..boot
        };
        table.boot = Some(next);
        self.commit(table)?;
        self.record("boot-try-failed", Some(boot.target), reason);
        Ok(Some(next))
    }

    /// On-demand rollback (`tandem image rollback`): go back to the other
    /// slot, which must hold a good release. A boot in flight is abandoned
    /// and its slot marked bad.
    pub fn rollback(&mut self) -> Result<SlotName, Error> {
        let mut table = self.table.clone();
        if let Some(boot) = table.boot {
            let previous = boot.previous.ok_or_else(|| {
                Error::Slot(format!(
                    "slot {} is booting and there is no slot to go back to",
                    boot.target
                ))
            })?;
            Self::roll_back_table(&mut table, boot);
            self.commit(table)?;
            self.record(
                "rolled-back",
                Some(boot.target),
                "rollback requested during boot",
            );
            return Ok(previous);
        }
        let current = table
            .current
            .ok_or_else(|| Error::Slot("no slot is running".into()))?;
        let other = current.other();
        if table.slot(other).state != SlotState::Good {
            return Err(Error::Slot(format!(
                "slot {other} is {:?}; rollback needs a good release to go back to",
                table.slot(other).state
            )));
        }
        table.current = Some(other);
        self.commit(table)?;
        self.record(
            "rolled-back",
            Some(current),
            &format!("rollback requested; running slot {other}"),
        );
        Ok(other)
    }
}

/// Boots `target` (default: the pending slot): stops the service, switches,
/// starts it from the new slot and waits for its health check, retrying up
/// to the boot counter and rolling back when it runs out.
pub fn boot(
    store: &mut SlotStore,
    service: &mut dyn SlotService,
    target: Option<SlotName>,
) -> Result<BootOutcome, Error> {
    service
        .stop()
        .map_err(|e| Error::Slot(format!("cannot stop the service before switching: {e}")))?;
    store.begin_boot(target)?;
    resume(store, service)
}

/// Finishes the boot in flight (after [`boot`] began it, or after a restart
/// found one in the journal); with none in flight, starts the current slot.
pub fn resume(store: &mut SlotStore, service: &mut dyn SlotService) -> Result<BootOutcome, Error> {
    loop {
        let Some(attempt) = store.table().boot else {
            let current = store.table().current;
            if let Some(slot) = current {
                let manifest = store.manifest(slot)?;
                service
                    .start(&store.root(slot), &manifest)
                    .map_err(|e| Error::Slot(format!("cannot start slot {slot}: {e}")))?;
                return Ok(BootOutcome::Good {
                    slot,
                    version: store.table().slot(slot).version,
                });
            }
            return Err(Error::Slot(
                "no slot to run: install and boot an image".into(),
            ));
        };
        let slot = attempt.target;
        let tried = store
            .manifest(slot)
            .map_err(|e| e.to_string())
            .and_then(|manifest| {
                service.start(&store.root(slot), &manifest)?;
                match &manifest.health {
                    Some(check) => health::wait_healthy(check, &store.root(slot)),
                    None => Ok(()),
                }
            });
        match tried {
            Ok(()) => {
                store.mark_good()?;
                return Ok(BootOutcome::Good {
                    slot,
                    version: store.table().slot(slot).version,
                });
            }
            Err(reason) => {
                service
                    .stop()
                    .map_err(|e| Error::Slot(format!("cannot stop a failed boot: {e}")))?;
                if store.fail_try(&reason)?.is_none() {
                    let to = store.table().current;
                    if let Some(previous) = to {
                        let manifest = store.manifest(previous)?;
                        service
                            .start(&store.root(previous), &manifest)
                            .map_err(|e| {
                                Error::Slot(format!(
                                    "rolled back, but slot {previous} does not start: {e}"
                                ))
                            })?;
                    }
                    return Ok(BootOutcome::RolledBack {
                        from: slot,
                        to,
                        reason,
                    });
                }
            }
        }
    }
}

/// Where a node keeps its slots, given its state directory.
pub fn slots_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("slots")
}
