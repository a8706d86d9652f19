//! The data dir: which paths may be touched, how a file is made durable,
//! and the manifest that catch-up and the sync report compare.
//!
//! Everything here is blocking file I/O on purpose: callers run it in
//! `spawn_blocking`, one batch at a time, so one thread does all of a
//! batch's writes and fsyncs in a row.
//!
//! Durability of a put follows the usual recipe, because a crash at any
//! point must leave either the old file or the new one, never a torn one:
//! write a temporary file in the same directory, make it durable, rename it
//! over the target, and make the directory durable. "Make durable" is done
//! once per batch, not once per file (see [`DataDir::apply`]): that is the
//! group-commit saving on the standby side.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result, io_err};

/// Suffix of the temporary files of atomic writes; never replicated and
/// never accepted as a path from a peer.
pub const TMP_SUFFIX: &str = ".tandem-tmp";

/// One file of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Relative to the data dir, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
}

/// One change to replicate, read from the active's disk at send time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The file exists: its content and mode.
    Put {
        /// Relative path.
        path: String,
        /// Permission bits.
        mode: u32,
        /// The content.
        content: Vec<u8>,
    },
    /// The file no longer exists.
    Delete {
        /// Relative path.
        path: String,
    },
}

impl Op {
    /// The path the change is about.
    pub fn path(&self) -> &str {
        match self {
            Op::Put { path, .. } | Op::Delete { path } => path,
        }
    }

    /// Bytes of content it carries.
    pub fn bytes(&self) -> u64 {
        match self {
            Op::Put { content, .. } => content.len() as u64,
            Op::Delete { .. } => 0,
        }
    }
}

/// A data dir (or a config dir: same rules) rooted at one directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    /// The root as configured; paths handed to `commit` are usually under
    /// this spelling.
    root: PathBuf,
    /// The root with symlinks resolved, to check that nothing written
    /// lands outside it.
    canonical: PathBuf,
}

impl DataDir {
    /// Opens (creating it if needed) the directory `root`.
    pub fn open(root: &Path) -> Result<Self> {
        fs::create_dir_all(root).map_err(io_err(root))?;
        let canonical = root.canonicalize().map_err(io_err(root))?;
        Ok(DataDir {
            root: root.to_path_buf(),
            canonical,
        })
    }

    /// The root directory as configured.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Turns a path given by the local service — absolute under the root,
    /// or relative to it — into the relative form sent on the wire.
    pub fn relative(&self, path: &Path) -> Result<String> {
        let relative = if path.is_absolute() {
            path.strip_prefix(&self.root)
                .or_else(|_| path.strip_prefix(&self.canonical))
                .map_err(|_| Error::BadPath {
                    path: path.display().to_string(),
                    reason: format!("not under the data dir {}", self.root.display()),
                })?
        } else {
            path
        };
        let text = relative.to_str().ok_or_else(|| Error::BadPath {
            path: path.display().to_string(),
            reason: "not valid UTF-8".into(),
        })?;
        check_relative(text)?;
        Ok(text.to_string())
    }

    /// The full path of a checked relative path.
    pub fn full_path(&self, relative: &str) -> Result<PathBuf> {
        check_relative(relative)?;
        Ok(self.canonical.join(relative))
    }

    /// Reads the current state of `relative` as the change to send: its
    /// content if it exists, a delete if it does not.
    pub fn read_op(&self, relative: &str) -> Result<Op> {
        let full = self.full_path(relative)?;
        match fs::File::open(&full) {
            Ok(mut file) => {
                let meta = file.metadata().map_err(io_err(&full))?;
                if !meta.is_file() {
                    return Err(Error::BadPath {
                        path: relative.into(),
                        reason: "not a regular file".into(),
                    });
                }
                let mut content = Vec::with_capacity(meta.len() as usize);
                file.read_to_end(&mut content).map_err(io_err(&full))?;
                Ok(Op::Put {
                    path: relative.to_string(),
                    mode: meta.permissions().mode() & 0o7777,
                    content,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Op::Delete {
                path: relative.to_string(),
            }),
            Err(e) => Err(Error::Io {
                path: full,
                source: e,
            }),
        }
    }

    /// Applies a batch durably: every path is checked first, so a batch
    /// with one bad path changes nothing; then each put is written to a
    /// temporary file, fsync'd and renamed, each delete unlinked, and every
    /// directory touched is fsync'd once.
    pub fn apply(&self, ops: &[Op]) -> Result<()> {
        let ops: Vec<&Op> = ops.iter().collect();
        let (targets, touched_dirs) = self.targets(&ops)?;
        // Two disk flushes per batch, whatever its size — group commit one
        // level down. One fsync per file would cost one flush each (3–4 ms
        // on our VMs), which made the standby, not the network, the limit.
        // syncfs(2) flushes the whole filesystem once instead; the order is
        // what per-file fsync gives: content durable before any rename
        // makes it visible (so no torn file can ever carry a real name),
        // and names durable before the ack.
        let renames = write_tmps(&targets)?;
        if !renames.is_empty() {
            self.sync_filesystem()?;
        }
        rename_and_delete(&targets, renames)?;
        if touched_dirs.len() == 1 {
            // One directory (the usual spool batch): its fsync is enough.
            for dir in &touched_dirs {
                fsync_dir(dir)?;
            }
        } else if !touched_dirs.is_empty() {
            self.sync_filesystem()?;
        }
        Ok(())
    }

    /// Checks a batch as [`apply`](Self::apply) would (creating parent
    /// directories), without writing it.
    pub fn check(&self, ops: &[Op]) -> Result<()> {
        let ops: Vec<&Op> = ops.iter().collect();
        self.targets(&ops).map(|_| ())
    }

    /// Applies a batch with nothing flushed: for changes already durable
    /// elsewhere (the standby log), made durable later by
    /// [`sync_filesystem`](Self::sync_filesystem). A crash before that
    /// may leave any of them torn; replaying the log repairs them.
    pub(crate) fn apply_unflushed(&self, ops: &[&Op]) -> Result<()> {
        let (targets, _) = self.targets(ops)?;
        let renames = write_tmps(&targets)?;
        rename_and_delete(&targets, renames)
    }

    /// Every op's target, checked (a plain relative path, resolving inside
    /// the root), with the parent directories of puts created; and the
    /// directories touched. A delete in a directory that does not exist
    /// has nothing to do and is left out.
    fn targets<'a>(&self, ops: &[&'a Op]) -> Result<(Targets<'a>, BTreeSet<PathBuf>)> {
        for op in ops {
            check_relative(op.path())?;
        }
        let mut targets = Vec::with_capacity(ops.len());
        let mut touched_dirs = BTreeSet::new();
        for &op in ops {
            let target = self.canonical.join(op.path());
            let parent = target
                .parent()
                .map(Path::to_path_buf)
                .ok_or_else(|| Error::BadPath {
                    path: op.path().into(),
                    reason: "has no parent directory".into(),
                })?;
            // Each directory once: a batch of spool files shares one.
            if !touched_dirs.contains(&parent) {
                match op {
                    Op::Put { .. } => fs::create_dir_all(&parent).map_err(io_err(&parent))?,
                    Op::Delete { .. } if !parent.exists() => continue,
                    Op::Delete { .. } => {}
                }
                self.check_inside(&parent, op.path())?;
                touched_dirs.insert(parent);
            }
            targets.push((op, target));
        }
        Ok((targets, touched_dirs))
    }

    /// Flushes the filesystem holding the root (syncfs(2)): everything
    /// written to it so far is on disk when this returns.
    pub(crate) fn sync_filesystem(&self) -> Result<()> {
        let root = fs::File::open(&self.canonical).map_err(io_err(&self.canonical))?;
        // SAFETY: syncfs takes a file descriptor, which `root` keeps open
        // for the duration of the call; it touches no memory of ours.
        let status = unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&root)) };
        if status == 0 {
            Ok(())
        } else {
            Err(Error::Io {
                path: self.canonical.clone(),
                source: std::io::Error::last_os_error(),
            })
        }
    }

    /// Checks that `dir` (which exists) resolves inside the root: a
    /// lexically clean path could still leave it through a symlink.
    fn check_inside(&self, dir: &Path, relative: &str) -> Result<()> {
        let resolved = dir.canonicalize().map_err(io_err(dir))?;
        if resolved.starts_with(&self.canonical) {
            Ok(())
        } else {
            Err(Error::BadPath {
                path: relative.into(),
                reason: format!(
                    "resolves through a symlink to {}, outside {}",
                    resolved.display(),
                    self.canonical.display()
                ),
            })
        }
    }

    /// The manifest: every regular file under the root, sorted by path.
    /// Symlinks are not followed and temporary files are left out.
    pub fn manifest(&self) -> Result<Vec<ManifestEntry>> {
        let mut entries = Vec::new();
        let mut pending = vec![self.canonical.clone()];
        while let Some(dir) = pending.pop() {
            for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
                let entry = entry.map_err(io_err(&dir))?;
                let path = entry.path();
                let kind = entry.file_type().map_err(io_err(&path))?;
                if kind.is_dir() {
                    pending.push(path);
                    continue;
                }
                if !kind.is_file() {
                    continue;
                }
                let Some(relative) = path
                    .strip_prefix(&self.canonical)
                    .ok()
                    .and_then(Path::to_str)
                    .map(str::to_string)
                else {
                    tracing::warn!(path = %path.display(), "file name is not UTF-8; not replicated");
                    continue;
                };
                if relative.ends_with(TMP_SUFFIX) {
                    continue;
                }
                match hash_file(&path) {
                    Ok((size, sha256)) => entries.push(ManifestEntry {
                        path: relative,
                        size,
                        sha256,
                    }),
                    // Deleted between readdir and open: it is simply not there.
                    Err(Error::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        entries.sort();
        Ok(entries)
    }
}

/// Refuses anything but a plain relative path of normal components: no
/// `..`, no root, no `.`, no empty component, no NUL, no temporary name.
/// This is the check on every path a peer sends.
pub fn check_relative(path: &str) -> Result<()> {
    let refuse = |reason: &str| {
        Err(Error::BadPath {
            path: path.into(),
            reason: reason.into(),
        })
    };
    if path.is_empty() {
        return refuse("empty");
    }
    if path.len() > 4096 {
        return refuse("longer than 4096 bytes");
    }
    if path.contains('\0') {
        return refuse("contains NUL");
    }
    if path.starts_with('/') {
        return refuse("absolute; must be relative to the data dir");
    }
    if path.ends_with(TMP_SUFFIX) {
        return refuse("is a temporary file name");
    }
    for part in path.split('/') {
        if part.is_empty() || part == "." {
            return refuse("has an empty or '.' component");
        }
        if part == ".." {
            return refuse("escapes the data dir with '..'");
        }
    }
    // Belt and braces: what std makes of it must be normal components only.
    if Path::new(path)
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return refuse("is not a plain relative path");
    }
    Ok(())
}

/// Size and SHA-256 (hex) of a file, read in chunks.
pub fn hash_file(path: &Path) -> Result<(u64, String)> {
    let mut file = fs::File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hex(&hasher.finalize())))
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `content` to a temporary file beside `target`, not yet synced;
/// returns the temporary path.
fn write_tmp(target: &Path, content: &[u8], mode: u32) -> Result<PathBuf> {
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file");
    let tmp = target.with_file_name(format!(".{name}{TMP_SUFFIX}"));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode & 0o7777)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    // The mode given at creation is masked by the umask; set it exactly.
    file.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
        .map_err(io_err(&tmp))?;
    file.write_all(content).map_err(io_err(&tmp))?;
    Ok(tmp)
}

/// Each op of a batch with the full path it changes.
type Targets<'a> = Vec<(&'a Op, PathBuf)>;

/// Writes the content of every put to its temporary file; returns the
/// renames to make, in batch order.
fn write_tmps(targets: &[(&Op, PathBuf)]) -> Result<Vec<(PathBuf, PathBuf)>> {
    let mut renames = Vec::new();
    for (op, target) in targets {
        if let Op::Put { mode, content, .. } = op {
            renames.push((write_tmp(target, content, *mode)?, target.clone()));
        }
    }
    Ok(renames)
}

/// Renames and unlinks in batch order, so a path put then deleted (or the
/// reverse) in one batch ends as its last operation says.
fn rename_and_delete(targets: &[(&Op, PathBuf)], renames: Vec<(PathBuf, PathBuf)>) -> Result<()> {
    let mut renames = renames.into_iter();
    for (op, target) in targets {
        match op {
            Op::Put { .. } => {
                if let Some((tmp, target)) = renames.next() {
                    fs::rename(&tmp, &target).map_err(io_err(&target))?;
                }
            }
            Op::Delete { .. } => match fs::remove_file(target) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::Io {
                        path: target.clone(),
                        source: e,
                    });
                }
            },
        }
    }
    Ok(())
}

/// Replaces `target` atomically and durably: a temporary file beside it,
/// fsync'd, renamed over it, and the directory fsync'd. A reader sees the
/// old content or the new, never a torn file — which matters for config
/// files a service may re-read at any moment.
pub fn write_atomic(target: &Path, content: &[u8], mode: u32) -> Result<()> {
    let tmp = write_tmp(target, content, mode)?;
    fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io_err(&tmp))?;
    fs::rename(&tmp, target).map_err(io_err(target))?;
    match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => fsync_dir(dir),
        _ => fsync_dir(Path::new(".")),
    }
}

/// The manifest of named files (config files): one entry per file that
/// exists, named by its file name, sorted. A missing file is left out, so
/// the report shows it as absent on that node.
pub fn files_manifest(files: &[PathBuf]) -> Result<Vec<ManifestEntry>> {
    let mut entries = Vec::new();
    for file in files {
        let Some(name) = file.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        match hash_file(file) {
            Ok((size, sha256)) => entries.push(ManifestEntry {
                path: name.to_string(),
                size,
                sha256,
            }),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    entries.sort();
    Ok(entries)
}

/// fsync a directory, so the names created or removed in it are durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_checked() {
        for good in ["a", "queue/msg-1", "a/b/c.eml"] {
            assert!(check_relative(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a/.",
            "a\0b",
            "x.tandem-tmp",
        ] {
            assert!(check_relative(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn apply_writes_deletes_and_manifest_sees_it() {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let data = DataDir::open(dir.path()).expect("open the data directory");
        data.apply(&[
            Op::Put {
                path: "q/a".into(),
                mode: 0o600,
                content: b"hello".to_vec(),
            },
            Op::Put {
                path: "b".into(),
                mode: 0o644,
                content: b"".to_vec(),
            },
        ])
        .expect("apply two puts");
        let manifest = data.manifest().expect("read the manifest");
        assert_eq!(
            manifest.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
            ["b", "q/a"]
        );
        assert_eq!(manifest[1].size, 5);
        let mode = fs::metadata(dir.path().join("q/a"))
            .expect("read the file's metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        data.apply(&[Op::Delete { path: "q/a".into() }])
            .expect("apply a delete");
        assert_eq!(data.manifest().expect("read the manifest").len(), 1);
    }

    #[test]
    fn a_batch_with_a_bad_path_changes_nothing() {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let data = DataDir::open(&dir.path().join("data")).expect("open the data directory");
        let result = data.apply(&[
            Op::Put {
                path: "fine".into(),
                mode: 0o644,
                content: b"x".to_vec(),
            },
            Op::Put {
                path: "../evil".into(),
                mode: 0o644,
                content: b"x".to_vec(),
            },
        ]);
        assert!(matches!(result, Err(Error::BadPath { .. })));
        assert!(!dir.path().join("evil").exists());
        assert!(data.manifest().expect("read the manifest").is_empty());
    }

    #[test]
    fn a_symlink_out_of_the_data_dir_is_refused() {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).expect("create the outside directory");
        let data = DataDir::open(&dir.path().join("data")).expect("open the data directory");
        std::os::unix::fs::symlink(&outside, dir.path().join("data/link"))
            .expect("make the symlink");
        let result = data.apply(&[Op::Put {
            path: "link/evil".into(),
            mode: 0o644,
            content: b"x".to_vec(),
        }]);
        assert!(matches!(result, Err(Error::BadPath { .. })));
        assert!(!outside.join("evil").exists());
    }

    #[test]
    fn commit_paths_are_made_relative() {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let data = DataDir::open(dir.path()).expect("open the data directory");
        assert_eq!(
            data.relative(&dir.path().join("q/a"))
                .expect("make an absolute path relative"),
            "q/a"
        );
        assert_eq!(
            data.relative(Path::new("q/a"))
                .expect("keep a relative path"),
            "q/a"
        );
        assert!(data.relative(Path::new("/elsewhere/a")).is_err());
    }
}
