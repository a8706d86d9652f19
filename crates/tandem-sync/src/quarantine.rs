//! Quarantine: files this node acknowledged that the connecting active
//! never saw, moved out of the data dir before its catch-up can delete
//! them (issue 14, "nothing acknowledged is ever lost").
//!
//! When a peer P connects to the receiver, the paths of this node's
//! unreplicated record for P ([`crate::unreplicated`]) that still exist
//! are moved to `QUARANTINE_DIR/<unix_ms>-<P>/<path>`, with a
//! `quarantine.json` beside them ({id, from, at_unix_ms, files, bytes}),
//! all durably, and only then is the record cleared. A catch-up cannot
//! touch them there; the operator (or the agent) reads them back with
//! [`restore_paths`], merges them into the serving node's spool, and
//! drops them with [`remove_path`] or [`drop_batch`].
//!
//! `quarantine.json` is written before any file is moved, so a crash in
//! the middle leaves a batch that [`list`] shows with the files that did
//! move; the record is still whole, and the next connection moves the
//! rest into a new batch.
//!
//! Everything here is blocking file I/O: the receiver runs it in
//! `spawn_blocking`, the operator's functions are for the CLI.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::store::{DataDir, TMP_SUFFIX, check_relative, fsync_dir, write_atomic};
use crate::unreplicated::Unreplicated;
use crate::{Error, Result, check_name, io_err, unix_ms};

/// The description of a batch, in its directory.
pub const METADATA: &str = "quarantine.json";

/// One quarantined batch, as [`list`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineBatch {
    /// Its directory name under the quarantine dir: `<unix_ms>-<peer>`.
    pub id: String,
    /// The peer whose catch-up would have deleted the files.
    pub from: String,
    /// When the files were moved (Unix ms).
    pub at_unix_ms: u64,
    /// Files still in the batch.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Their paths, relative to the data dir.
    pub paths: Vec<String>,
}

/// `quarantine.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Metadata {
    id: String,
    from: String,
    at_unix_ms: u64,
    /// Paths relative to the data dir.
    files: Vec<String>,
    bytes: u64,
}

/// Moves the paths of `record`'s entry for `peer` that exist under `data`
/// into a new batch under `dir`, then removes them from the record.
/// `None` when there was nothing to move (the record is emptied all the
/// same).
pub(crate) fn quarantine_unreplicated(
    data: &DataDir,
    record: &Unreplicated,
    dir: &Path,
    peer: &str,
) -> Result<Option<QuarantineBatch>> {
    let paths = record.paths(peer)?;
    if paths.is_empty() {
        return Ok(None);
    }
    let batch = quarantine(data, dir, peer, &paths)?;
    record.forget(peer, &paths)?;
    Ok(batch)
}

/// Moves those of `paths` that are regular files under `data` into a new
/// batch under `dir`, durably. `None` when none exists.
pub(crate) fn quarantine(
    data: &DataDir,
    dir: &Path,
    peer: &str,
    paths: &BTreeSet<String>,
) -> Result<Option<QuarantineBatch>> {
    check_name("peer name", peer)?;
    let mut present = Vec::new();
    let mut bytes = 0;
    for relative in paths {
        let source = match data.full_path(relative) {
            Ok(source) => source,
            Err(e) => {
                // Only our own commits write the record; a path it holds
                // was checked then. Moving nothing is the safe side.
                tracing::warn!(path = %relative, error = %e, "unreplicated record: path skipped");
                continue;
            }
        };
        match fs::symlink_metadata(&source) {
            Ok(meta) if meta.is_file() => {
                bytes += meta.len();
                present.push((relative.clone(), source));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::Io {
                    path: source,
                    source: e,
                });
            }
        }
    }
    if present.is_empty() {
        return Ok(None);
    }

    if !dir.is_dir() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsync_dir(parent)?;
        }
    }
    let at_unix_ms = unix_ms(SystemTime::now());
    let (id, batch) = new_batch_dir(dir, &format!("{at_unix_ms}-{peer}"))?;
    fsync_dir(dir)?;
    let metadata = Metadata {
        id: id.clone(),
        from: peer.to_string(),
        at_unix_ms,
        files: present
            .iter()
            .map(|(relative, _)| relative.clone())
            .collect(),
        bytes,
    };
    write_metadata(&batch, &metadata)?;

    // Every directory whose entries change: the sources' (a name leaves),
    // and the targets' up to the batch (names arrive, directories are made).
    let mut touched = BTreeSet::new();
    for (relative, source) in &present {
        let target = stored_path(&batch, relative);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
            touched.extend(
                parent
                    .ancestors()
                    .take_while(|d| d.starts_with(&batch))
                    .map(Path::to_path_buf),
            );
        }
        move_file(source, &target)?;
        if let Some(parent) = source.parent() {
            touched.insert(parent.to_path_buf());
        }
    }
    for directory in &touched {
        fsync_dir(directory)?;
    }
    tracing::debug!(%id, files = present.len(), bytes, "files quarantined");
    Ok(Some(QuarantineBatch {
        id,
        from: metadata.from,
        at_unix_ms,
        files: metadata.files.len() as u64,
        bytes,
        paths: metadata.files,
    }))
}

/// Creates the batch directory `<base>`, or `<base>-2`, `-3`, ... if a
/// batch of the same millisecond exists.
fn new_batch_dir(dir: &Path, base: &str) -> Result<(String, PathBuf)> {
    let mut n = 1u32;
    loop {
        let id = match n {
            1 => base.to_string(),
            n => format!("{base}-{n}"),
        };
        check_name("quarantine batch id", &id)?;
        let batch = dir.join(&id);
        match fs::create_dir(&batch) {
            Ok(()) => return Ok((id, batch)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
            Err(e) => {
                return Err(Error::Io {
                    path: batch,
                    source: e,
                });
            }
        }
    }
}

/// Renames `source` to `target`; across filesystems (the quarantine dir
/// under the state dir, the data dir elsewhere) copies, flushes the copy,
/// then removes the source.
fn move_file(source: &Path, target: &Path) -> Result<()> {
    match fs::rename(source, target) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            fs::copy(source, target).map_err(io_err(target))?;
            fs::File::open(target)
                .and_then(|f| f.sync_all())
                .map_err(io_err(target))?;
            fs::remove_file(source).map_err(io_err(source))
        }
        Err(e) => Err(Error::Io {
            path: source.to_path_buf(),
            source: e,
        }),
    }
}

/// Where a quarantined file is kept: its path under the batch — except a
/// file named like the batch's own description, kept under a name no data
/// path can have (paths ending in the temporary suffix are refused).
fn stored_path(batch: &Path, relative: &str) -> PathBuf {
    if relative == METADATA {
        batch.join(format!("{METADATA}.file{TMP_SUFFIX}"))
    } else {
        batch.join(relative)
    }
}

fn write_metadata(batch: &Path, metadata: &Metadata) -> Result<()> {
    let path = batch.join(METADATA);
    let json = serde_json::to_vec_pretty(metadata).map_err(|e| Error::Io {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    write_atomic(&path, &json, 0o600)
}

/// The batch `id` under `dir` and its description, or an error that says
/// how to find the right id.
fn open_batch(dir: &Path, id: &str) -> Result<(PathBuf, Metadata)> {
    check_name("quarantine batch id", id)?;
    let batch = dir.join(id);
    let path = batch.join(METADATA);
    let text = match fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::MissingFile {
                path,
                hint: format!(
                    "there is no quarantine batch {id:?} in {}; list the batches to see their ids",
                    dir.display()
                ),
            });
        }
        Err(e) => return Err(Error::Io { path, source: e }),
    };
    let metadata = serde_json::from_slice(&text).map_err(|e| Error::BadFile {
        path: path.clone(),
        message: format!(
            "not a quarantine batch description ({e}); the quarantined files are the others in {}: \
             save them by hand, then remove that directory",
            batch.display()
        ),
    })?;
    Ok((batch, metadata))
}

/// The files of a batch still there: relative path, stored file, size.
fn present_files(batch: &Path, metadata: &Metadata) -> Result<Vec<(String, PathBuf, u64)>> {
    let mut files = Vec::new();
    for relative in &metadata.files {
        let stored = stored_path(batch, relative);
        match fs::symlink_metadata(&stored) {
            Ok(meta) if meta.is_file() => files.push((relative.clone(), stored, meta.len())),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::Io {
                    path: stored,
                    source: e,
                });
            }
        }
    }
    Ok(files)
}

/// Every batch under the quarantine dir, oldest first, with the files
/// still in it. A missing quarantine dir has none.
pub fn list(dir: &Path) -> Result<Vec<QuarantineBatch>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::Io {
                path: dir.to_path_buf(),
                source: e,
            });
        }
    };
    let mut batches = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let Some(id) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        // Not ours (a temporary file, something an operator put there), or
        // a batch a crash interrupted before it described it: nothing of
        // it had moved yet.
        if check_name("quarantine batch id", &id).is_err() || !entry.path().join(METADATA).is_file()
        {
            continue;
        }
        let (batch, metadata) = open_batch(dir, &id)?;
        let files = present_files(&batch, &metadata)?;
        batches.push(QuarantineBatch {
            id,
            from: metadata.from,
            at_unix_ms: metadata.at_unix_ms,
            files: files.len() as u64,
            bytes: files.iter().map(|(_, _, size)| size).sum(),
            paths: files.into_iter().map(|(relative, _, _)| relative).collect(),
        });
    }
    batches.sort_by(|a, b| (a.at_unix_ms, &a.id).cmp(&(b.at_unix_ms, &b.id)));
    Ok(batches)
}

/// The files of batch `id` to restore: each one's path relative to the
/// data dir, and the quarantined file to read it from. The caller merges
/// them into the serving node's data (skipping what is already there with
/// the same content), then calls [`remove_path`] for each.
pub fn restore_paths(dir: &Path, id: &str) -> Result<Vec<(String, PathBuf)>> {
    let (batch, metadata) = open_batch(dir, id)?;
    Ok(present_files(&batch, &metadata)?
        .into_iter()
        .map(|(relative, stored, _)| (relative, stored))
        .collect())
}

/// Removes one file from batch `id` (restored, or judged not worth
/// keeping); the batch goes when it has no file left.
pub fn remove_path(dir: &Path, id: &str, relative: &str) -> Result<()> {
    check_relative(relative)?;
    let (batch, mut metadata) = open_batch(dir, id)?;
    if !metadata.files.iter().any(|f| f == relative) {
        return Err(Error::BadPath {
            path: relative.to_string(),
            reason: format!("not in quarantine batch {id}; restore_paths lists the paths it holds"),
        });
    }
    let stored = stored_path(&batch, relative);
    match fs::remove_file(&stored) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::Io {
                path: stored,
                source: e,
            });
        }
    }
    // Directories the file leaves empty; a non-empty one stops the walk.
    for parent in stored.ancestors().skip(1) {
        if parent == batch || !parent.starts_with(&batch) || fs::remove_dir(parent).is_err() {
            break;
        }
    }
    metadata.files.retain(|f| f != relative);
    let left = present_files(&batch, &metadata)?;
    if left.is_empty() {
        return drop_batch(dir, id);
    }
    metadata.bytes = left.iter().map(|(_, _, size)| size).sum();
    write_metadata(&batch, &metadata)
}

/// Deletes batch `id` and every file in it: for files restored elsewhere,
/// or judged not worth keeping. There is no undo.
pub fn drop_batch(dir: &Path, id: &str) -> Result<()> {
    check_name("quarantine batch id", id)?;
    let batch = dir.join(id);
    if !batch.join(METADATA).is_file() {
        return Err(Error::MissingFile {
            path: batch,
            hint: format!(
                "there is no quarantine batch {id:?} in {}; list the batches to see their ids",
                dir.display()
            ),
        });
    }
    fs::remove_dir_all(&batch).map_err(io_err(&batch))?;
    fsync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, DataDir, PathBuf) {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let data = DataDir::open(&dir.path().join("data")).expect("open the data directory");
        let quarantine_dir = dir.path().join("quarantine");
        (dir, data, quarantine_dir)
    }

    fn put(data: &DataDir, relative: &str, content: &[u8]) {
        let path = data.root().join(relative);
        fs::create_dir_all(path.parent().expect("find the parent directory"))
            .expect("create the parent directory");
        fs::write(path, content).expect("write the file");
    }

    fn paths(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn files_move_with_a_description_and_list_restore_remove_drop() {
        let (_dir, data, qdir) = setup();
        put(&data, "queue/a", b"aaa");
        put(&data, "queue/deep/b", b"bb");
        put(&data, "quarantine.json", b"a data file with that name");
        put(&data, "queue/other", b"not recorded");
        let batch = quarantine(
            &data,
            &qdir,
            "node-a",
            &paths(&["queue/a", "queue/deep/b", "quarantine.json", "queue/gone"]),
        )
        .expect("quarantine the files")
        .expect("make a batch");
        assert_eq!(batch.files, 3);
        assert_eq!(batch.bytes, 3 + 2 + 26);
        assert!(batch.id.ends_with("-node-a"), "{}", batch.id);
        assert!(!data.root().join("queue/a").exists());
        assert!(data.root().join("queue/other").exists());
        assert_eq!(
            fs::read(qdir.join(&batch.id).join("queue/deep/b")).expect("read a quarantined file"),
            b"bb"
        );
        let description: serde_json::Value = serde_json::from_slice(
            &fs::read(qdir.join(&batch.id).join(METADATA)).expect("read the batch description"),
        )
        .expect("parse the batch description");
        assert_eq!(description["from"], "node-a");
        assert_eq!(
            description["files"]
                .as_array()
                .expect("list the described files")
                .len(),
            3
        );

        let listed = list(&qdir).expect("list the batches");
        assert_eq!(listed, vec![batch.clone()]);

        let restore = restore_paths(&qdir, &batch.id).expect("read the restore paths");
        assert_eq!(restore.len(), 3);
        for (relative, stored) in &restore {
            let expected: &[u8] = match relative.as_str() {
                "queue/a" => b"aaa",
                "queue/deep/b" => b"bb",
                "quarantine.json" => b"a data file with that name",
                other => panic!("unexpected {other}"),
            };
            assert_eq!(
                fs::read(stored).expect("read a restored file"),
                expected,
                "{relative}"
            );
        }

        remove_path(&qdir, &batch.id, "queue/deep/b").expect("remove a path from the batch");
        assert!(!qdir.join(&batch.id).join("queue/deep").exists());
        let listed = list(&qdir).expect("list the batches");
        assert_eq!(listed[0].paths, ["quarantine.json", "queue/a"]);
        assert_eq!(listed[0].bytes, 3 + 26);
        assert!(remove_path(&qdir, &batch.id, "queue/deep/b").is_err());
        remove_path(&qdir, &batch.id, "quarantine.json").expect("remove a path from the batch");
        remove_path(&qdir, &batch.id, "queue/a").expect("remove the last path from the batch");
        // Empty: the batch is gone.
        assert!(!qdir.join(&batch.id).exists());
        assert!(list(&qdir).expect("list the batches").is_empty());

        put(&data, "queue/c", b"c");
        let second = quarantine(&data, &qdir, "node-a", &paths(&["queue/c"]))
            .expect("quarantine the file")
            .expect("make a batch");
        drop_batch(&qdir, &second.id).expect("drop the batch");
        assert!(list(&qdir).expect("list the batches").is_empty());
        let error = drop_batch(&qdir, &second.id).unwrap_err();
        assert!(error.to_string().contains("list the batches"), "{error}");
    }

    #[test]
    fn nothing_to_move_makes_no_batch() {
        let (_dir, data, qdir) = setup();
        assert!(
            quarantine(&data, &qdir, "node-a", &paths(&["queue/gone"]))
                .expect("quarantine nothing")
                .is_none()
        );
        assert!(!qdir.exists());
        assert!(list(&qdir).expect("list the batches").is_empty());
    }

    #[test]
    fn bad_ids_are_refused() {
        let (dir, data, qdir) = setup();
        put(&data, "queue/a", b"a");
        quarantine(&data, &qdir, "node-a", &paths(&["queue/a"])).expect("quarantine the file");
        // Something an attacker or a slip would point at.
        fs::write(dir.path().join(METADATA), b"{}").expect("write a decoy description");
        for bad in ["..", "../quarantine", "a/b", "", ".", ".hidden", "/etc"] {
            for result in [
                drop_batch(&qdir, bad),
                restore_paths(&qdir, bad).map(|_| ()),
                remove_path(&qdir, bad, "queue/a"),
            ] {
                let error = result.unwrap_err();
                assert!(matches!(error, Error::BadName { .. }), "{bad:?}: {error}");
            }
        }
        let id = list(&qdir).expect("list the batches")[0].id.clone();
        assert!(matches!(
            remove_path(&qdir, &id, "../x"),
            Err(Error::BadPath { .. })
        ));
        assert!(matches!(
            restore_paths(&qdir, "12-node-z"),
            Err(Error::MissingFile { .. })
        ));
        assert!(matches!(
            quarantine(&data, &qdir, "../node", &paths(&["queue/a"])),
            Err(Error::BadName { .. })
        ));
        assert_eq!(list(&qdir).expect("list the batches").len(), 1);
    }

    #[test]
    fn the_record_is_emptied_once_its_files_are_safe() {
        let (dir, data, qdir) = setup();
        let record = Unreplicated::open(&dir.path().join("unreplicated")).expect("open the record");
        put(&data, "queue/mine", b"acked here");
        record
            .record("node-a", &["queue/mine".into(), "queue/delivered".into()])
            .expect("record the unreplicated paths");
        let batch = quarantine_unreplicated(&data, &record, &qdir, "node-a")
            .expect("quarantine the unreplicated files")
            .expect("make a batch");
        assert_eq!(batch.paths, ["queue/mine"]);
        assert!(record.paths("node-a").expect("read the record").is_empty());
        assert!(
            quarantine_unreplicated(&data, &record, &qdir, "node-a")
                .expect("quarantine the unreplicated files again")
                .is_none()
        );
    }
}
