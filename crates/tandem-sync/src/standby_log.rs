//! The standby's write-ahead log: an acknowledged batch costs one flush,
//! and a file that is written and deleted soon after never reaches the
//! standby's data dir at all.
//!
//! Applying a batch in place is durable only after two flushes (content,
//! then names; see [`DataDir::apply`]) plus a create, rename and unlink per
//! file. On the standby of a mail relay most of that is wasted: a message
//! is put, then deleted a few milliseconds later when the active delivers
//! it. So the receiver appends each batch to this log, flushes it once
//! (`fdatasync`) and acks; the batch's operations wait in memory, the last
//! one per path, and reach the data dir together a little later
//! ([`StandbyLog::materialize`]): then a put followed by its delete costs
//! nothing, and one `syncfs` makes the lot durable before the log that held
//! them is deleted.
//!
//! **Recovery.** Opening the log replays every log file left by a crash,
//! oldest first, applying each batch durably, and deletes them. A torn
//! last record (a crash during its append) was never acked: the replay
//! stops there.
//!
//! **Who sees what.** The data dir lags the acks by up to the
//! materialization delay. Whatever reads it must materialize first: the
//! manifest (catch-up, sync report), the end of a connection, and the
//! agent before its service starts here ([`crate::receiver::Receiver::checkpoint`]).
//! A log left behind after the node served would replay old batches over
//! newer files, which is why the service must never start before that.
//!
//! Log files are `NNNNNNNNNNNNNNNNNNNN.log` (generation, zero-padded) in the
//! log dir; a materialization starts the next generation, so acks never
//! wait for it.
//!
//! Record: `TSL1`, payload length (u32 LE), SHA-256 of the payload, the
//! payload: the op count (u32 LE), then per op its kind (0 put, 1 delete),
//! path length (u16 LE) and path, and for a put its mode (u32 LE), content
//! length (u32 LE) and content. Hand-written rather than serde: it is a
//! few lines, and binary content needs no escaping.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use sha2::{Digest, Sha256};

use crate::store::{DataDir, Op};
use crate::{Error, Result, io_err};

const MAGIC: &[u8; 4] = b"TSL1";
/// Magic, payload length, SHA-256.
const HEADER: usize = 4 + 4 + 32;

/// Pending operations past which a commit materializes at once rather
/// than wait for the timer: bounds the memory and the replay.
const MAX_PENDING_OPS: usize = 4096;
const MAX_PENDING_BYTES: u64 = 16 << 20;

/// See the module documentation.
#[derive(Debug)]
pub struct StandbyLog {
    dir: PathBuf,
    data: DataDir,
    state: Mutex<LogState>,
    /// Held for a whole materialization, so two never interleave.
    materializing: Mutex<()>,
}

#[derive(Debug)]
struct LogState {
    /// The log appends go to.
    file: File,
    path: PathBuf,
    generation: u64,
    /// The last operation per path of every acked batch not yet in the
    /// data dir.
    pending: BTreeMap<String, Op>,
    pending_bytes: u64,
    /// Older log files whose operations are not all in the data dir yet
    /// (their materialization failed): deleted by the next one that
    /// succeeds.
    retired: Vec<PathBuf>,
}

impl StandbyLog {
    /// Opens the log in `dir` (creating it): replays and deletes what an
    /// earlier run left, then starts a new generation.
    pub fn open(dir: &Path, data: DataDir) -> Result<StandbyLog> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut generation = 0;
        for (number, path) in log_files(dir)? {
            generation = generation.max(number);
            let batches = read_log(&path)?;
            if !batches.is_empty() {
                tracing::info!(log = %path.display(), batches = batches.len(), "replaying the standby log");
            }
            for ops in batches {
                data.apply(&ops)?;
            }
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
        let (file, path) = create_log(dir, generation + 1)?;
        Ok(StandbyLog {
            dir: dir.to_path_buf(),
            data,
            state: Mutex::new(LogState {
                file,
                path,
                generation: generation + 1,
                pending: BTreeMap::new(),
                pending_bytes: 0,
                retired: Vec::new(),
            }),
            materializing: Mutex::new(()),
        })
    }

    fn state(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a batch durable here: checked as an in-place apply would
    /// check it (a bad path refuses the whole batch, nothing logged), then
    /// appended and flushed. Returns whether enough is pending that the
    /// caller should materialize now. Blocking.
    pub fn append(&self, ops: Vec<Op>) -> Result<bool> {
        self.data.check(&ops)?;
        let record = encode(&ops);
        let mut state = self.state();
        let path = state.path.clone();
        state
            .file
            .write_all(&record)
            .and_then(|()| state.file.sync_data())
            .map_err(io_err(&path))?;
        for op in ops {
            state.pending_bytes += op.bytes();
            state.pending.insert(op.path().to_string(), op);
        }
        Ok(state.pending.len() >= MAX_PENDING_OPS || state.pending_bytes >= MAX_PENDING_BYTES)
    }

    /// Puts every pending operation into the data dir and makes it
    /// durable there (one `syncfs`), then deletes the log files that held
    /// them. Appends go on meanwhile, to the next generation. Blocking.
    pub fn materialize(&self) -> Result<()> {
        let _one = self.materializing.lock().unwrap_or_else(|p| p.into_inner());
        let (ops, mut done) = {
            let mut state = self.state();
            if state.pending.is_empty() && state.retired.is_empty() {
                return Ok(());
            }
            let (file, path) = create_log(&self.dir, state.generation + 1)?;
            state.generation += 1;
            state.file = file;
            let old = std::mem::replace(&mut state.path, path);
            state.pending_bytes = 0;
            let mut done = std::mem::take(&mut state.retired);
            done.push(old);
            (std::mem::take(&mut state.pending), done)
        };
        let ordered: Vec<&Op> = ops.values().collect();
        let applied = self
            .data
            .apply_unflushed(&ordered)
            .and_then(|()| self.data.sync_filesystem());
        if let Err(e) = applied {
            // Still durable in the old logs: keep them, and the operations
            // for the next try, behind anything newer for the same path.
            let mut state = self.state();
            for (path, op) in ops {
                if !state.pending.contains_key(&path) {
                    state.pending_bytes += op.bytes();
                    state.pending.insert(path, op);
                }
            }
            state.retired.append(&mut done);
            return Err(e);
        }
        for path in done {
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
        Ok(())
    }
}

/// The log files in `dir`, oldest first.
fn log_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        let number = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(number) = number {
            files.push((number, path));
        }
    }
    files.sort();
    Ok(files)
}

/// Creates generation `generation`'s log file, and makes its name durable:
/// a record flushed into a file whose name a crash loses would be lost.
fn create_log(dir: &Path, generation: u64) -> Result<(File, PathBuf)> {
    let path = dir.join(format!("{generation:020}.log"));
    let file = fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(io_err(&path))?;
    crate::store::fsync_dir(dir)?;
    Ok((file, path))
}

fn encode(ops: &[Op]) -> Vec<u8> {
    let mut payload =
        Vec::with_capacity(4 + ops.iter().map(|op| op.bytes() as usize + 64).sum::<usize>());
    payload.extend_from_slice(&(ops.len() as u32).to_le_bytes());
    for op in ops {
        let (kind, path) = match op {
            Op::Put { path, .. } => (0u8, path),
            Op::Delete { path } => (1u8, path),
        };
        payload.push(kind);
        // Checked paths are at most 4096 bytes.
        payload.extend_from_slice(&(path.len() as u16).to_le_bytes());
        payload.extend_from_slice(path.as_bytes());
        if let Op::Put { mode, content, .. } = op {
            payload.extend_from_slice(&mode.to_le_bytes());
            payload.extend_from_slice(&(content.len() as u32).to_le_bytes());
            payload.extend_from_slice(content);
        }
    }
    let mut record = Vec::with_capacity(HEADER + payload.len());
    record.extend_from_slice(MAGIC);
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    record.extend_from_slice(&Sha256::digest(&payload));
    record.extend_from_slice(&payload);
    record
}

/// Every whole record of a log file, in order. A record that is cut short
/// or does not match its hash ends the log: it is the append a crash
/// interrupted, which was never acked.
fn read_log(path: &Path) -> Result<Vec<Vec<Op>>> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_err(path))?;
    let mut batches = Vec::new();
    let mut rest = bytes.as_slice();
    while rest.len() >= HEADER && &rest[..4] == MAGIC {
        let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let Some(payload) = rest.get(HEADER..HEADER + len) else {
            break;
        };
        if Sha256::digest(payload).as_slice() != &rest[8..HEADER] {
            break;
        }
        match decode(payload) {
            Some(ops) => batches.push(ops),
            None => {
                return Err(Error::Io {
                    path: path.to_path_buf(),
                    source: std::io::Error::other("a record matches its hash but does not parse"),
                });
            }
        }
        rest = &rest[HEADER + len..];
    }
    if !rest.is_empty() {
        tracing::warn!(log = %path.display(), bytes = rest.len(), "a torn record ends the standby log (an append a crash cut short: never acked)");
    }
    Ok(batches)
}

fn decode(mut payload: &[u8]) -> Option<Vec<Op>> {
    fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = buf.split_at_checked(n)?;
        *buf = tail;
        Some(head)
    }
    fn u32_le(buf: &mut &[u8]) -> Option<u32> {
        take(buf, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    let count = u32_le(&mut payload)?;
    let mut ops = Vec::new();
    for _ in 0..count {
        let kind = take(&mut payload, 1)?[0];
        let len = take(&mut payload, 2).map(|b| u16::from_le_bytes([b[0], b[1]]))?;
        let path = String::from_utf8(take(&mut payload, len as usize)?.to_vec()).ok()?;
        ops.push(match kind {
            0 => {
                let mode = u32_le(&mut payload)?;
                let size = u32_le(&mut payload)? as usize;
                let content = take(&mut payload, size)?.to_vec();
                Op::Put {
                    path,
                    mode,
                    content,
                }
            }
            1 => Op::Delete { path },
            _ => return None,
        });
    }
    payload.is_empty().then_some(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(path: &str, content: &[u8]) -> Op {
        Op::Put {
            path: path.into(),
            mode: 0o640,
            content: content.to_vec(),
        }
    }

    fn delete(path: &str) -> Op {
        Op::Delete { path: path.into() }
    }

    struct Dirs {
        _tmp: tempfile::TempDir,
        data: PathBuf,
        log: PathBuf,
    }

    fn dirs() -> Dirs {
        let tmp = tempfile::tempdir().expect("tempdir");
        Dirs {
            data: tmp.path().join("data"),
            log: tmp.path().join("log"),
            _tmp: tmp,
        }
    }

    impl StandbyLog {
        /// Whether acked operations are waiting to reach the data dir.
        fn has_pending(&self) -> bool {
            let state = self.state();
            !state.pending.is_empty() || !state.retired.is_empty()
        }
    }

    fn open(dirs: &Dirs) -> StandbyLog {
        StandbyLog::open(&dirs.log, DataDir::open(&dirs.data).expect("data dir")).expect("log")
    }

    #[test]
    fn records_round_trip() {
        let ops = vec![put("q/a", b"\0binary\xff"), delete("q/b"), put("c", b"")];
        let record = encode(&ops);
        assert_eq!(decode(&record[HEADER..]), Some(ops));
    }

    #[test]
    fn a_put_deleted_before_materializing_never_reaches_the_data_dir() {
        let dirs = dirs();
        let log = open(&dirs);
        log.append(vec![put("q/1", b"one"), put("q/2", b"two")])
            .expect("append");
        log.append(vec![delete("q/1")]).expect("append");
        // Acked, not yet in the data dir.
        assert!(!dirs.data.join("q/2").exists());
        assert!(log.has_pending());
        log.materialize().expect("materialize");
        assert!(!log.has_pending());
        assert_eq!(fs::read(dirs.data.join("q/2")).expect("q/2"), b"two");
        assert!(!dirs.data.join("q/1").exists());
        // Only the new generation's (empty) log is left.
        let left = log_files(&dirs.log).expect("list");
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(fs::metadata(&left[0].1).expect("log").len(), 0);
    }

    #[test]
    fn a_crash_before_materializing_is_replayed_at_open_and_a_torn_tail_ignored() {
        let dirs = dirs();
        {
            let log = open(&dirs);
            log.append(vec![put("q/1", b"one"), put("q/2", b"two")])
                .expect("append");
            log.append(vec![delete("q/2"), put("q/3", b"three")])
                .expect("append");
            // Dropped without materializing: the process died.
        }
        // And a third append was cut short by the crash.
        let (_, last) = log_files(&dirs.log).expect("list").pop().expect("a log");
        let mut torn = encode(&[put("q/4", b"four")]);
        torn.truncate(torn.len() - 2);
        fs::OpenOptions::new()
            .append(true)
            .open(&last)
            .and_then(|mut f| f.write_all(&torn))
            .expect("torn append");

        let log = open(&dirs);
        assert!(!log.has_pending());
        assert_eq!(fs::read(dirs.data.join("q/1")).expect("q/1"), b"one");
        assert!(!dirs.data.join("q/2").exists());
        assert_eq!(fs::read(dirs.data.join("q/3")).expect("q/3"), b"three");
        assert!(!dirs.data.join("q/4").exists(), "never acked");
        assert_eq!(log_files(&dirs.log).expect("list").len(), 1);
    }

    #[test]
    fn a_bad_path_refuses_the_batch_and_logs_nothing() {
        let dirs = dirs();
        let log = open(&dirs);
        assert!(
            log.append(vec![put("q/ok", b"x"), put("../escape", b"x")])
                .is_err()
        );
        assert!(!log.has_pending());
        let (_, current) = log_files(&dirs.log).expect("list").pop().expect("a log");
        assert_eq!(fs::metadata(current).expect("log").len(), 0);
    }
}
