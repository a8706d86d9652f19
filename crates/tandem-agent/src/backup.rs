//! Backups of a node's configuration and HA state (Huawei's upgrade step 3:
//! "back up the active and standby device configuration").
//!
//! A backup is a folder `state_dir/backups/ID` (ID: milliseconds since the
//! epoch, so they sort by age) holding the node's config file, its HA state
//! and its slot table. Restoring copies them back — after saving what is
//! there now as a backup of its own, so a restore can be undone — and
//! refuses a backup made on another node unless forced: a primary's config
//! restored onto its secondary would give the cluster two nodes of one name.
//! The restored config takes effect when the agent restarts.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::Error;
use crate::api::{BackupAnswer, BackupList, BackupSummary, RestoreAnswer};

const CONFIG: &str = "config.toml";
const FILES: [(&str, &str); 2] = [
    ("ha-state.json", "ha-state.json"),
    ("slots/slots.json", "slots.json"),
];

fn backups_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("backups")
}

/// Copies the config and HA state into a new backup; returns its id.
pub fn create(state_dir: &Path, config: &Path) -> Result<BackupAnswer, Error> {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut id = millis.to_string();
    let mut dir = backups_dir(state_dir).join(&id);
    // Two backups in one millisecond (an upgrade's preflight on a fast
    // machine) must not overwrite each other.
    let mut n = 1;
    while dir.exists() {
        id = format!("{millis}-{n}");
        dir = backups_dir(state_dir).join(&id);
        n += 1;
    }
    std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
    let mut saved = vec![CONFIG.to_string()];
    std::fs::copy(config, dir.join(CONFIG)).map_err(Error::io(config))?;
    for (source, name) in FILES {
        let source = state_dir.join(source);
        if source.exists() {
            std::fs::copy(&source, dir.join(name)).map_err(Error::io(&source))?;
            saved.push(name.to_string());
        }
    }
    let node = node_of(&dir);
    Ok(BackupAnswer {
        backup: id,
        dir,
        files: saved,
        node,
    })
}

/// The node a backup was made on, from the `[node] name` of its config.
fn node_of(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(CONFIG)).ok()?;
    let doc: toml::Table = toml::from_str(&text).ok()?;
    doc.get("node")?.get("name")?.as_str().map(str::to_string)
}

/// Every backup of this node, oldest first.
pub fn list(state_dir: &Path) -> Result<BackupList, Error> {
    let dir = backups_dir(state_dir);
    let mut ids: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(Error::Io { path: dir, source }),
    };
    ids.sort();
    let backups = ids
        .into_iter()
        .map(|id| {
            let path = dir.join(&id);
            let files: Vec<String> = std::fs::read_dir(&path)
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            BackupSummary {
                node: node_of(&path),
                backup: id,
                files,
            }
        })
        .collect();
    Ok(BackupList { backups })
}

/// Restores backup `id` onto this node (`me`, whose config file is
/// `config`); a backup of another node needs `force`.
pub fn restore(
    state_dir: &Path,
    config: &Path,
    me: &str,
    id: &str,
    force: bool,
) -> Result<RestoreAnswer, Error> {
    if id.is_empty() || id.contains('/') || id.starts_with('.') {
        return Err(Error::refused(format!(
            "{id:?} is not a backup id (see tandem backup list)"
        )));
    }
    let dir = backups_dir(state_dir).join(id);
    if !dir.join(CONFIG).exists() {
        return Err(Error::refused(format!(
            "no backup {id} on {me} (see tandem backup list)"
        )));
    }
    let made_on = node_of(&dir);
    if made_on.as_deref() != Some(me) && !force {
        return Err(Error::refused(format!(
            "backup {id} was made on {}, not on {me}: restoring it would give this node another node's identity; pass --force if that is what you want",
            made_on.as_deref().unwrap_or("an unknown node")
        )));
    }
    // What is there now becomes a backup first, so the restore can be undone.
    let before = create(state_dir, config)?;
    std::fs::copy(dir.join(CONFIG), config).map_err(Error::io(config))?;
    for (target, name) in FILES {
        let source = dir.join(name);
        if source.exists() {
            let target = state_dir.join(target);
            std::fs::copy(&source, &target).map_err(Error::io(&target))?;
        }
    }
    Ok(RestoreAnswer {
        restored: id.to_string(),
        previous_state_saved_as: before.backup,
        note: "restart the agent to run with the restored configuration".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_list_restore_and_refuse_another_nodes_backup() {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).expect("create the state directory");
        let config = dir.path().join("node.toml");
        std::fs::write(&config, "[node]\nname = \"beta\"\npriority = 1\n")
            .expect("write the config");
        std::fs::write(state.join("ha-state.json"), "{\"epoch\": 1}").expect("write the state");

        let made = create(&state, &config).expect("create a backup");
        let id = made.backup.clone();
        assert_eq!(made.node.as_deref(), Some("beta"));
        assert_eq!(made.files, ["config.toml", "ha-state.json"]);

        std::fs::write(&config, "[node]\nname = \"beta\"\npriority = 99\n")
            .expect("change the config");
        let restored = restore(&state, &config, "beta", &id, false).expect("restore the backup");
        assert!(
            std::fs::read_to_string(&config)
                .unwrap_or_default()
                .contains("priority = 1")
        );
        let listed = list(&state).expect("list the backups");
        assert_eq!(
            listed.backups.len(),
            2,
            "the pre-restore state was saved: {restored:?}"
        );

        // A backup of alpha's config on beta: refused unless forced.
        let foreign = state.join("backups/1");
        std::fs::create_dir_all(&foreign).expect("create the foreign backup");
        std::fs::write(foreign.join("config.toml"), "[node]\nname = \"alpha\"\n")
            .expect("write the foreign config");
        let refused = restore(&state, &config, "beta", "1", false)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(refused.contains("made on alpha, not on beta"), "{refused}");
        assert!(restore(&state, &config, "beta", "1", true).is_ok());
        assert!(restore(&state, &config, "beta", "../x", false).is_err());
        assert!(
            restore(&state, &config, "beta", "42", false)
                .is_err_and(|e| e.to_string().contains("no backup 42"))
        );
    }
}
