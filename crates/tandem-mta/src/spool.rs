//! The durable spool: a message is acknowledged only once it is on disk.
//!
//! Layout under the spool directory:
//!
//! ```text
//! tmp/     files being written; anything here after a crash is garbage and is
//!          removed at start (a half-written message is never delivered)
//! queue/   complete, fsync'd messages waiting for delivery
//! failed/  messages the next hop refused for good (5xx), with a `.reason` file
//! ```
//!
//! Storing a message: write `tmp/ID`, fsync it, rename it to `queue/ID`, fsync
//! `queue/` (so the rename itself survives a power cut), then run the
//! [`CommitHook`] (the cluster fsync of the HA layer) — and only then may the
//! session answer `250`. The rename is the commit point: `queue/` never holds
//! a partial file, so recovery is "deliver everything in `queue/`".
//!
//! A spool file is a small text header followed by the message:
//!
//! ```text
//! TANDEM-SPOOL 1
//! size 1234            <- length of the message, checked on load
//! from sender@example  <- empty after "from " for the null sender
//! rcpt a@example
//! rcpt b@example
//!                      <- empty line
//! <message, CRLF line endings, not dot-stuffed>
//! ```
//!
//! # Files written by another process
//!
//! The HA agent merges quarantined messages back on the active node by
//! writing spool files ([`encode`]) straight into `queue/`: complete files,
//! renamed into place and fsync'd. The delivery queue picks them up without
//! a restart by calling [`Spool::adopt_new`] periodically. To tell such files
//! from its own, the spool keeps the set of ids it *knows*: stored by this
//! process, recovered at start, or adopted; an id is forgotten when its
//! message leaves `queue/` for good (delivered, quarantined, or vanished).
//! `store` marks its id known *before* the rename, so a message renamed into
//! `queue/` whose commit hook has not returned yet is never adopted (it would
//! be delivered unacknowledged, and queued twice). Names starting with `.`
//! are ignored (writers' temporary files); files that do not parse are left
//! where they are, with one warning per version of the file.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::future::Future;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

const MAGIC: &str = "TANDEM-SPOOL 1";
/// The longest header [`Spool::adopt_new`] reads looking for its end; a file
/// without one in this many bytes is not a spool file.
const MAX_HEADER: usize = 1 << 20;

/// The future a [`CommitHook`] returns.
pub type HookFuture<'a> = Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;

/// Called after a message is durable on the local disk and before the client
/// gets its `250`. This is where the HA layer makes the message durable on
/// the standby too (`POST /v1/sync/commit`, DESIGN.md "Data durability").
///
/// An error makes the session answer `451 4.3.0` and the local copy is
/// removed, so the client's retry cannot cause a duplicate.
pub trait CommitHook: Send + Sync + 'static {
    /// `paths` are the files that were just made durable (the queue file).
    fn commit<'a>(&'a self, paths: &'a [PathBuf]) -> HookFuture<'a>;
}

/// The default hook: local durability only.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopHook;

impl CommitHook for NoopHook {
    fn commit<'a>(&'a self, _paths: &'a [PathBuf]) -> HookFuture<'a> {
        Box::pin(async { Ok(()) })
    }
}

/// Sender and recipients of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Reverse path; empty for the null sender.
    pub from: String,
    /// Forward paths, at least one.
    pub rcpts: Vec<String>,
}

/// A message read back from `queue/`.
#[derive(Debug, Clone)]
pub struct SpooledMessage {
    /// Spool id (also the file name).
    pub id: String,
    /// Envelope as received.
    pub envelope: Envelope,
    /// The message, CRLF line endings, not dot-stuffed.
    pub body: Vec<u8>,
}

/// A handle on a spool directory. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    tmp: PathBuf,
    queue: PathBuf,
    failed: PathBuf,
    hook: Arc<dyn CommitHook>,
    /// Random per process: ids stay unique across restarts even if the clock
    /// goes back, because a rename onto an existing id would lose a message.
    nonce: u32,
    /// Per-process sequence number, part of every id.
    counter: AtomicU64,
    /// Ids of `queue/` this process already handles (see the module docs):
    /// [`Spool::adopt_new`] takes only the others. A std mutex: held for a
    /// set operation, never across an await.
    known: Mutex<HashSet<String>>,
    /// Files of `queue/` that did not parse, as last seen: warned about once
    /// and probed again only when they change.
    unparsable: Mutex<HashMap<String, Stamp>>,
}

/// What identifies one version of a file cheaply (without reading it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

/// What [`probe`] found.
enum Probe {
    /// A complete spool file.
    Valid,
    /// No longer there (delivered or moved meanwhile).
    Gone,
    /// Not a (complete) spool file: why.
    Invalid(String),
}

/// Locks `m`, ignoring poisoning: the sets stay consistent whatever panicked.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Spool {
    /// Opens (creating if needed) the spool at `root` and empties `tmp/`.
    pub fn open(root: &Path, hook: Arc<dyn CommitHook>) -> Result<Spool> {
        let tmp = root.join("tmp");
        let queue = root.join("queue");
        let failed = root.join("failed");
        for d in [root, &tmp, &queue, &failed] {
            fs::create_dir_all(d).map_err(|e| Error::path(d, e))?;
        }
        // Whatever is in tmp/ was never acknowledged: drop it.
        for entry in fs::read_dir(&tmp).map_err(|e| Error::path(&tmp, e))? {
            let path = entry.map_err(|e| Error::path(&tmp, e))?.path();
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove stale tmp file");
            }
        }
        Ok(Spool {
            inner: Arc::new(Inner {
                tmp,
                queue,
                failed,
                hook,
                nonce: random_u32(),
                counter: AtomicU64::new(0),
                known: Mutex::new(HashSet::new()),
                unparsable: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The `queue/` directory.
    pub fn queue_dir(&self) -> &Path {
        &self.inner.queue
    }

    /// The `failed/` directory.
    pub fn failed_dir(&self) -> &Path {
        &self.inner.failed
    }

    /// A fresh, unique message id (hex: time, process nonce, sequence).
    pub fn new_id(&self) -> String {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let seq = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        format!(
            "{micros:013X}{:08X}{:05X}",
            self.inner.nonce,
            seq & 0xF_FFFF
        )
    }

    /// Makes a message durable under `id` and runs the commit hook.
    /// Returns only once it is safe to answer `250`.
    pub async fn store(&self, id: &str, envelope: &Envelope, body: Vec<u8>) -> Result<()> {
        // Known before the rename into queue/: a rescan running meanwhile
        // must not adopt (and deliver) a message not yet acknowledged.
        let fresh = lock(&self.inner.known).insert(id.to_string());
        let forget = |inner: &Inner| {
            if fresh {
                lock(&inner.known).remove(id);
            }
        };
        let inner = self.inner.clone();
        let id2 = id.to_string();
        let env = envelope.clone();
        let final_path = match spawn_blocking(move || inner.write_durable(&id2, &env, &body)).await
        {
            Ok(path) => path,
            Err(e) => {
                // write_durable removed whatever it wrote.
                forget(&self.inner);
                return Err(e);
            }
        };
        let paths = [final_path];
        if let Err(e) = self.inner.hook.commit(&paths).await {
            // Not acknowledged: remove it so the client's retry is the only
            // copy — here and on the standbys, which may have received the
            // file anyway (a commit that timed out, a catch-up that read the
            // queue meanwhile). Telling them is best effort and not awaited,
            // like a delivery's: a copy left behind is delivered again after
            // a failover (a duplicate), never a loss.
            match tokio::fs::remove_file(&paths[0]).await {
                // Forgotten only once gone: a rescan must not adopt it.
                Ok(()) => forget(&self.inner),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => forget(&self.inner),
                // Left known: delivered after a restart, like before.
                Err(_) => {}
            }
            let hook = self.inner.hook.clone();
            tokio::spawn(async move {
                if let Err(e) = hook.commit(&paths).await {
                    tracing::debug!(error = %e, "removal of a refused message not replicated");
                }
            });
            return Err(e);
        }
        Ok(())
    }

    /// Ids of every message in `queue/`, oldest first (ids start with the time).
    /// Names starting with `.` (writers' temporary files) are skipped. A
    /// plain listing: the ids are not marked known (see [`Spool::adopt_new`]).
    pub fn recover(&self) -> Result<Vec<String>> {
        queue_ids(&self.inner.queue)
    }

    /// Marks `ids` known: the delivery queue has them (recovered at start).
    pub(crate) fn track(&self, ids: &[String]) {
        lock(&self.inner.known).extend(ids.iter().cloned());
    }

    /// Forgets `id`: its message left `queue/` (gone when the worker looked).
    pub(crate) fn forget(&self, id: &str) {
        lock(&self.inner.known).remove(id);
    }

    /// Adopts the complete spool files in `queue/` this process does not
    /// know (written there by another process, see the module docs): marks
    /// them known and returns their ids, oldest first, for delivery.
    ///
    /// Reads at most `max_probes` files (their header only), so one call's
    /// work is bounded however many files landed; the rest waits for the
    /// next call. A file that does not parse is left alone, warned about
    /// once, and read again only once it changed (a writer that finished it
    /// in place).
    pub async fn adopt_new(&self, max_probes: usize) -> Result<Vec<String>> {
        let inner = self.inner.clone();
        spawn_blocking(move || inner.adopt_new(max_probes)).await
    }

    /// Reads a queued message back.
    pub async fn load(&self, id: &str) -> Result<SpooledMessage> {
        let path = self.inner.queue.join(id);
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| Error::path(&path, e))?;
        let (envelope, body) = decode(&bytes).map_err(|message| Error::CorruptSpool {
            path: path.clone(),
            message,
        })?;
        Ok(SpooledMessage {
            id: id.to_string(),
            envelope,
            body,
        })
    }

    /// Delivery finished for some recipients. `remaining` still need a retry
    /// (empty: the message is done and its file removed); `refused` were
    /// refused for good and a copy goes to `failed/` with the reasons.
    pub async fn finish(
        &self,
        msg: &SpooledMessage,
        remaining: Vec<String>,
        refused: Vec<(String, String)>,
    ) -> Result<()> {
        let inner = self.inner.clone();
        let done = msg.clone();
        let mut changed = vec![self.inner.queue.join(&msg.id)];
        if !refused.is_empty() {
            changed.push(self.inner.failed.join(&msg.id));
            changed.push(self.inner.failed.join(format!("{}.reason", msg.id)));
        }
        spawn_blocking(move || inner.finish(&done, remaining, refused)).await?;
        // Tell the HA layer too, so the standbys drop (or update) their
        // copy. Not awaited, and a failure only logged: a standby that
        // missed it delivers the message again after a failover
        // (at-least-once), it never loses one.
        let hook = self.inner.hook.clone();
        tokio::spawn(async move {
            if let Err(e) = hook.commit(&changed).await {
                tracing::debug!(error = %e, "delivered message not replicated; a standby may deliver it again");
            }
        });
        Ok(())
    }

    /// Moves an unreadable queue file to `failed/` so it stops being retried.
    pub fn quarantine(&self, id: &str, reason: &str) -> Result<()> {
        let from = self.inner.queue.join(id);
        let to = self.inner.failed.join(id);
        fs::rename(&from, &to).map_err(|e| Error::path(&from, e))?;
        self.forget(id);
        let reason_path = self.inner.failed.join(format!("{id}.reason"));
        fs::write(&reason_path, format!("{reason}\n")).map_err(|e| Error::path(&reason_path, e))
    }
}

impl Inner {
    fn adopt_new(&self, max_probes: usize) -> Result<Vec<String>> {
        let q = &self.queue;
        let names = queue_ids(q)?;
        let mut unparsable = lock(&self.unparsable);
        // Files gone since: stop remembering them (the map stays small).
        unparsable.retain(|name, _| names.binary_search(name).is_ok());
        let mut adopted = Vec::new();
        let mut probes = 0;
        for name in names {
            if lock(&self.known).contains(&name) {
                continue;
            }
            let path = q.join(&name);
            let stamp = match fs::metadata(&path) {
                Ok(m) => Stamp {
                    len: m.len(),
                    modified: m.modified().ok(),
                },
                Err(_) => continue, // gone meanwhile, or unreadable: next scan
            };
            if unparsable.get(&name) == Some(&stamp) {
                continue;
            }
            if probes >= max_probes {
                break;
            }
            probes += 1;
            match probe(&path) {
                Probe::Valid => {
                    unparsable.remove(&name);
                    // insert() is false if store() or recovery took it
                    // since the check above.
                    if lock(&self.known).insert(name.clone()) {
                        adopted.push(name);
                    }
                }
                Probe::Gone => {}
                Probe::Invalid(why) => {
                    tracing::warn!(path = %path.display(), error = %why, "not a spool file; left in queue/ and not delivered");
                    unparsable.insert(name, stamp);
                }
            }
        }
        Ok(adopted)
    }

    fn write_durable(&self, id: &str, env: &Envelope, body: &[u8]) -> Result<PathBuf> {
        let tmp = self.tmp.join(id);
        let dst = self.queue.join(id);
        let result = (|| {
            write_synced(&tmp, &encode_header(env, body.len()), body)?;
            fs::rename(&tmp, &dst).map_err(|e| Error::path(&dst, e))?;
            sync_dir(&self.queue)
        })();
        if result.is_err() {
            // Disk full or similar: leave nothing behind that could be delivered.
            let _ = fs::remove_file(&tmp);
            let _ = fs::remove_file(&dst);
        }
        result.map(|()| dst)
    }

    fn finish(
        &self,
        msg: &SpooledMessage,
        remaining: Vec<String>,
        refused: Vec<(String, String)>,
    ) -> Result<()> {
        let src = self.queue.join(&msg.id);
        if !refused.is_empty() {
            let failed_env = Envelope {
                from: msg.envelope.from.clone(),
                rcpts: refused.iter().map(|(r, _)| r.clone()).collect(),
            };
            let dst = self.failed.join(&msg.id);
            write_synced(&dst, &encode_header(&failed_env, msg.body.len()), &msg.body)?;
            let reason = self.failed.join(format!("{}.reason", msg.id));
            let text: String = refused
                .iter()
                .map(|(r, why)| format!("{r}: {why}\n"))
                .collect();
            write_synced(&reason, text.as_bytes(), b"")?;
            sync_dir(&self.failed)?;
        }
        if remaining.is_empty() {
            // After the next hop's 250: removing is safe. Not fsyncing the
            // directory here means a crash may resurrect the file and deliver
            // it twice — at-least-once, never lost.
            fs::remove_file(&src).map_err(|e| Error::path(&src, e))?;
            lock(&self.known).remove(&msg.id);
            Ok(())
        } else if remaining.len() != msg.envelope.rcpts.len() {
            let env = Envelope {
                from: msg.envelope.from.clone(),
                rcpts: remaining,
            };
            self.write_durable(&msg.id, &env, &msg.body).map(|_| ())
        } else {
            Ok(())
        }
    }
}

/// Writes header + body to `path` (created or truncated) and fsyncs it.
fn write_synced(path: &Path, header: &[u8], body: &[u8]) -> Result<()> {
    let err = |e| Error::path(path, e);
    let mut f = File::create(path).map_err(err)?;
    f.write_all(header).map_err(err)?;
    f.write_all(body).map_err(err)?;
    f.sync_all().map_err(err)
}

/// fsyncs a directory, making renames and creations in it durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::path(dir, e))
}

/// A whole spool file for `envelope` and `body` (CRLF line endings, not
/// dot-stuffed): what another process writes into `queue/` to have the
/// relay deliver a message (see the module docs).
pub fn encode(envelope: &Envelope, body: &[u8]) -> Vec<u8> {
    let mut file = encode_header(envelope, body.len());
    file.extend_from_slice(body);
    file
}

fn encode_header(env: &Envelope, size: usize) -> Vec<u8> {
    let mut h = format!("{MAGIC}\nsize {size}\nfrom {}\n", env.from);
    for r in &env.rcpts {
        h.push_str("rcpt ");
        h.push_str(r);
        h.push('\n');
    }
    h.push('\n');
    h.into_bytes()
}

/// Parses a spool file; the error says what is wrong.
pub(crate) fn decode(bytes: &[u8]) -> std::result::Result<(Envelope, Vec<u8>), String> {
    let end = header_end(bytes).ok_or("no end of header")?;
    let (envelope, size) = parse_header(&bytes[..end])?;
    let body = &bytes[end + 2..];
    check_size(size, body.len() as u64)?;
    Ok((envelope, body.to_vec()))
}

/// Where the header ends (the first empty line).
fn header_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\n\n")
}

fn check_size(size: usize, body_len: u64) -> std::result::Result<(), String> {
    if size as u64 == body_len {
        Ok(())
    } else {
        Err(format!(
            "truncated: header says {size} octets, file has {body_len}"
        ))
    }
}

/// Reads `path`'s header only (up to [`MAX_HEADER`] bytes) and checks it
/// against the file's length: as good as [`decode`] for telling a complete
/// spool file, without reading a large body.
fn probe(path: &Path) -> Probe {
    let invalid = |e: std::io::Error| Probe::Invalid(e.to_string());
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Probe::Gone,
        Err(e) => return invalid(e),
    };
    // The open file's length: a rename over the path cannot change it.
    let len = match file.metadata() {
        Ok(m) => m.len(),
        Err(e) => return invalid(e),
    };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = match file.read(&mut chunk) {
            Ok(0) => return Probe::Invalid("no end of header".into()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return invalid(e),
        };
        // An empty line may straddle two chunks: look from one byte back.
        let from = buf.len().saturating_sub(1);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = header_end(&buf[from..]).map(|i| i + from) {
            let body_len = len.saturating_sub(end as u64 + 2);
            return match parse_header(&buf[..end]).and_then(|(_, size)| check_size(size, body_len))
            {
                Ok(()) => Probe::Valid,
                Err(why) => Probe::Invalid(why),
            };
        }
        if buf.len() > MAX_HEADER {
            return Probe::Invalid(format!("no end of header in the first {MAX_HEADER} bytes"));
        }
    }
}

/// Parses a header (without its final empty line): the envelope and the
/// body size it announces.
fn parse_header(header: &[u8]) -> std::result::Result<(Envelope, usize), String> {
    let header = std::str::from_utf8(header).map_err(|_| "header is not UTF-8")?;
    let mut lines = header.lines();
    if lines.next() != Some(MAGIC) {
        return Err("bad magic line".into());
    }
    let size: usize = lines
        .next()
        .and_then(|l| l.strip_prefix("size "))
        .and_then(|s| s.parse().ok())
        .ok_or("bad size line")?;
    let from = lines
        .next()
        .and_then(|l| l.strip_prefix("from "))
        .ok_or("bad from line")?;
    let rcpts: Vec<String> = lines
        .map(|l| {
            l.strip_prefix("rcpt ")
                .map(str::to_string)
                .ok_or("bad rcpt line")
        })
        .collect::<std::result::Result<_, _>>()?;
    if rcpts.is_empty() {
        return Err("no recipient".into());
    }
    Ok((
        Envelope {
            from: from.to_string(),
            rcpts,
        },
        size,
    ))
}

async fn spawn_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?
}

/// A random number from the kernel, falling back to time and pid (only
/// uniqueness matters, not unpredictability).
fn random_u32() -> u32 {
    let mut buf = [0u8; 4];
    if fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .is_ok()
    {
        return u32::from_le_bytes(buf);
    }
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    t ^ std::process::id().rotate_left(16)
}

/// The ids in the queue directory `q`, oldest first (ids start with the
/// time); names starting with `.` (writers' temporary files) are skipped.
fn queue_ids(q: &Path) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(q).map_err(|e| Error::path(q, e))? {
        let entry = entry.map_err(|e| Error::path(q, e))?;
        if let Some(name) = entry.file_name().to_str()
            && !name.starts_with('.')
        {
            ids.push(name.to_string());
        }
    }
    ids.sort();
    Ok(ids)
}

#[cfg(test)]
mod tests;
