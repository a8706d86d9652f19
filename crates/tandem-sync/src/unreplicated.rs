//! The unreplicated record: per peer, the files this node committed as the
//! active that the peer did not acknowledge.
//!
//! Why it exists (issue 14): a catch-up deletes on the standby every file
//! the active does not have. That is right for mail the active delivered,
//! and wrong for mail the standby itself acknowledged while it was active
//! too (a partition with `sync_mode = "degrade"` on both sides): the
//! winner never saw those files, and its catch-up would delete them. This
//! record is how the receiving side tells the two apart: a path in
//! `record(P)` may be mail this node acked and P never saw, so before P
//! catches this node up, those files are moved to quarantine
//! ([`crate::quarantine`]).
//!
//! One file per peer, `DIR/<peer>`, one JSON string per line (a path can
//! hold any byte but NUL, newlines included). Appends are flushed
//! (`fdatasync`) before [`Unreplicated::record`] returns, because the
//! relay answers 250 right after the commit: an acked message missing from
//! the record after a crash is exactly the loss this prevents. It only
//! happens on the degraded path, so its cost does not matter. A line torn
//! by a crash belongs to a commit that was never acknowledged: it is
//! skipped when read.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::store::{Op, fsync_dir, write_atomic};
use crate::{Error, Result, check_name, io_err};

/// Serializes every change to every record in this process: the replicator
/// appends while the receiver may be rewriting the same file, and the two
/// hold separate [`Unreplicated`] values for the same directory.
static RECORDS: Mutex<()> = Mutex::new(());

/// See the module documentation. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Unreplicated {
    dir: PathBuf,
}

impl Unreplicated {
    /// Opens the record directory `dir`, creating it if needed.
    pub fn open(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        Ok(Unreplicated {
            dir: dir.to_path_buf(),
        })
    }

    /// The record directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds `paths` (relative to the data dir) to `peer`'s record, durably:
    /// when this returns, a crash cannot lose them.
    pub fn record(&self, peer: &str, paths: &[String]) -> Result<()> {
        let file_path = self.file(peer)?;
        if paths.is_empty() {
            return Ok(());
        }
        let mut lines = encode(&file_path, paths)?;
        let _one = lock();
        let (mut file, created) = match OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&file_path)
        {
            Ok(file) => (file, true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => (
                OpenOptions::new()
                    .read(true)
                    .append(true)
                    .open(&file_path)
                    .map_err(io_err(&file_path))?,
                false,
            ),
            Err(e) => {
                return Err(Error::Io {
                    path: file_path,
                    source: e,
                });
            }
        };
        // A crash mid-append leaves a line without its newline; end it, or
        // the first path appended now would be glued to it and unreadable.
        let len = file.metadata().map_err(io_err(&file_path))?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            file.read_exact_at(&mut last, len - 1)
                .map_err(io_err(&file_path))?;
            if last[0] != b'\n' {
                lines.insert(0, b'\n');
            }
        }
        file.write_all(&lines)
            .and_then(|()| file.sync_data())
            .map_err(io_err(&file_path))?;
        if created {
            // The new file's name must survive a crash too.
            fsync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Every path in `peer`'s record.
    pub fn paths(&self, peer: &str) -> Result<BTreeSet<String>> {
        let file_path = self.file(peer)?;
        let _one = lock();
        read_record(&file_path)
    }

    /// Empties `peer`'s record.
    pub fn clear(&self, peer: &str) -> Result<()> {
        let file_path = self.file(peer)?;
        let _one = lock();
        self.remove(&file_path)
    }

    /// Removes `done` from `peer`'s record, keeping any path recorded
    /// since they were read (a [`clear`](Self::clear) would lose those).
    pub fn forget(&self, peer: &str, done: &BTreeSet<String>) -> Result<()> {
        let file_path = self.file(peer)?;
        let _one = lock();
        let left: Vec<String> = read_record(&file_path)?
            .into_iter()
            .filter(|path| !done.contains(path))
            .collect();
        if left.is_empty() {
            return self.remove(&file_path);
        }
        write_atomic(&file_path, &encode(&file_path, &left)?, 0o600)
    }

    /// The record file of `peer`, whose name is checked first.
    fn file(&self, peer: &str) -> Result<PathBuf> {
        check_name("peer name", peer)?;
        Ok(self.dir.join(peer))
    }

    fn remove(&self, file_path: &Path) -> Result<()> {
        match fs::remove_file(file_path) {
            Ok(()) => fsync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Io {
                path: file_path.to_path_buf(),
                source: e,
            }),
        }
    }
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    RECORDS.lock().unwrap_or_else(|p| p.into_inner())
}

/// One JSON string and a newline per path.
fn encode(file_path: &Path, paths: &[String]) -> Result<Vec<u8>> {
    let mut lines = Vec::new();
    for path in paths {
        serde_json::to_writer(&mut lines, path).map_err(|e| Error::Io {
            path: file_path.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        lines.push(b'\n');
    }
    Ok(lines)
}

/// The paths of a record file; none when it does not exist. A line that
/// does not parse is the torn end of an append that was never acked.
fn read_record(file_path: &Path) -> Result<BTreeSet<String>> {
    let text = match fs::read(file_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => {
            return Err(Error::Io {
                path: file_path.to_path_buf(),
                source: e,
            });
        }
    };
    Ok(text
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .filter_map(|line| serde_json::from_slice::<String>(line).ok())
        .collect())
}

/// Records the files of a degraded batch (its puts: the files that exist;
/// a delete needs no protection) for every peer that did not ack it.
/// Runs off the async threads.
pub(crate) async fn record_missed(
    record: &Unreplicated,
    ops: &[Op],
    peers: Vec<String>,
) -> Result<()> {
    let paths: Vec<String> = ops
        .iter()
        .filter(|op| matches!(op, Op::Put { .. }))
        .map(|op| op.path().to_string())
        .collect();
    if paths.is_empty() || peers.is_empty() {
        return Ok(());
    }
    let record = record.clone();
    crate::blocking(move || {
        for peer in &peers {
            record.record(peer, &paths)?;
        }
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(paths: &[&str]) -> BTreeSet<String> {
        paths.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn the_record_survives_reopening_and_clears() {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let record = Unreplicated::open(&dir.path().join("unreplicated")).expect("open the record");
        assert!(
            record
                .paths("node-b")
                .expect("read node-b's paths")
                .is_empty()
        );
        record
            .record("node-b", &["queue/a".into(), "queue/b".into()])
            .expect("record two paths for node-b");
        record
            .record("node-b", &["queue/a".into(), "odd\nname".into()])
            .expect("record two more paths for node-b");
        record
            .record("node-c", &["queue/c".into()])
            .expect("record a path for node-c");

        let reopened =
            Unreplicated::open(&dir.path().join("unreplicated")).expect("reopen the record");
        assert_eq!(
            reopened.paths("node-b").expect("read node-b's paths"),
            set(&["queue/a", "queue/b", "odd\nname"])
        );
        assert_eq!(
            reopened.paths("node-c").expect("read node-c's paths"),
            set(&["queue/c"])
        );

        reopened.clear("node-b").expect("clear node-b");
        assert!(
            reopened
                .paths("node-b")
                .expect("read node-b's paths")
                .is_empty()
        );
        assert_eq!(
            record.paths("node-c").expect("read node-c's paths"),
            set(&["queue/c"])
        );
        reopened.clear("node-b").expect("clear node-b again");
    }

    #[test]
    fn forget_keeps_what_was_recorded_since() {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let record = Unreplicated::open(dir.path()).expect("open the record");
        record
            .record("node-b", &["a".into(), "b".into()])
            .expect("record two paths");
        let seen = record.paths("node-b").expect("read the paths");
        record
            .record("node-b", &["c".into()])
            .expect("record another path");
        record
            .forget("node-b", &seen)
            .expect("forget the paths seen");
        assert_eq!(record.paths("node-b").expect("read the paths"), set(&["c"]));
        record
            .forget("node-b", &set(&["c"]))
            .expect("forget the last path");
        assert!(!dir.path().join("node-b").exists());
    }

    #[test]
    fn a_torn_line_is_skipped_and_does_not_swallow_the_next() {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let record = Unreplicated::open(dir.path()).expect("open the record");
        record
            .record("node-b", &["a".into()])
            .expect("record a path");
        // A crash in the middle of an append.
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join("node-b"))
            .expect("open the record file");
        file.write_all(b"\"tor").expect("write a torn line");
        record
            .record("node-b", &["b".into()])
            .expect("record another path");
        assert_eq!(
            record.paths("node-b").expect("read the paths"),
            set(&["a", "b"])
        );
    }

    #[test]
    fn bad_peer_names_are_refused() {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let record = Unreplicated::open(dir.path()).expect("open the record");
        for bad in ["", "../x", "a/b", "..", ".hidden", "a b", "a\0b"] {
            let error = record.record(bad, &["q".into()]).unwrap_err();
            assert!(matches!(error, Error::BadName { .. }), "{bad:?}: {error}");
            assert!(record.paths(bad).is_err(), "{bad:?}");
            assert!(record.clear(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            fs::read_dir(dir.path())
                .expect("read the record directory")
                .count(),
            0
        );
    }
}
