//! What the agent keeps across restarts: the boot epoch and the core's
//! persistent state (`ha preempt` setting, HA stopped by a monitor).
//!
//! The epoch must grow with every start, or peers would take the restarted
//! node's heartbeats for replays; wall-clock milliseconds alone could go
//! backwards with the clock, so it is max(last + 1, now).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tandem_core::PersistentState;

use crate::Error;

/// The file's contents.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SavedState {
    /// The epoch of the last start.
    pub epoch: u64,
    /// The core's state, if it ever asked to persist any.
    pub core: Option<PersistentState>,
}

const FILE: &str = "ha-state.json";

/// Loads the saved state (empty if none) and records a new, larger epoch.
pub fn start(state_dir: &Path) -> Result<SavedState, Error> {
    std::fs::create_dir_all(state_dir).map_err(Error::io(state_dir))?;
    let path = state_dir.join(FILE);
    let mut saved: SavedState = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            Error::State(format!(
                "{} is corrupt ({e}); move it away to start with default HA state",
                path.display()
            ))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => SavedState::default(),
        Err(e) => return Err(Error::io(&path)(e)),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    saved.epoch = now.max(saved.epoch + 1);
    save(state_dir, &saved)?;
    Ok(saved)
}

/// Writes the state atomically (temporary file, fsync, rename).
pub fn save(state_dir: &Path, state: &SavedState) -> Result<(), Error> {
    let path = state_dir.join(FILE);
    let tmp = state_dir.join(format!("{FILE}.tmp"));
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| Error::State(e.to_string()))?;
    let write = || -> std::io::Result<()> {
        let file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut &file, &bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(state_dir)?.sync_all()
    };
    write().map_err(Error::io(&path))
}
