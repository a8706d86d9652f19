//! The image file: a tar archive, zstd- or gzip-compressed, holding
//! `manifest.toml` and the release's files.
//!
//! Reading is the dangerous half. An image comes from outside the node and is
//! unpacked by a process running as root, so every entry is checked before a
//! byte of it is written: its path must be relative with no `..`, it must be a
//! plain file, directory or a symlink that cannot leave the root, it may
//! appear only once, and the entry count and unpacked size stay under
//! [`Limits`]. The same walk serves `tandem image verify` (nothing written)
//! and installation (written into a fresh directory), so what verify accepts
//! is exactly what install would write.
//!
//! Building is deterministic — sorted entries, zero timestamps and owners —
//! so the same files and manifest give the same image bytes, and a signature
//! can be reproduced.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::Error;
use crate::manifest::{MAX_MANIFEST_BYTES, Manifest};

/// The manifest's path inside an image.
pub const MANIFEST_NAME: &str = "manifest.toml";

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
const GZIP_MAGIC: [u8; 2] = [0x1F, 0x8B];

/// The compression of an image file, told apart by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Zstandard (`.tar.zst`): the default, fast to unpack.
    Zstd,
    /// gzip (`.tar.gz`): for tools that only know gzip.
    Gzip,
}

/// Bounds on what an image may unpack to, so that a hostile or broken image
/// cannot fill the disk or the inode table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes all files together may hold once unpacked.
    pub max_unpacked_bytes: u64,
    /// The most entries (files, directories, links) the archive may hold.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_unpacked_bytes: 4 << 30,
            max_entries: 100_000,
        }
    }
}

/// What a checked image holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImageContents {
    /// The image's manifest.
    pub manifest: Manifest,
    /// How the archive is compressed.
    pub compression: Compression,
    /// Entries in the archive, the manifest included.
    pub entries: u64,
    /// Bytes of file data once unpacked.
    pub unpacked_bytes: u64,
}

/// Builds an image from a manifest file and a directory of files; writes to
/// a temporary name beside `out` and renames, so `out` is never half-written.
pub fn build(
    manifest_path: &Path,
    files: &Path,
    out: &Path,
    compression: Compression,
) -> Result<Manifest, Error> {
    let text = fs::read_to_string(manifest_path).map_err(Error::io(manifest_path))?;
    let manifest = Manifest::parse(&text, &manifest_path.display().to_string())?;
    let bad = |reason: String| Error::Archive {
        image: out.to_path_buf(),
        reason,
    };

    let mut entries = Vec::new();
    collect(files, Path::new(""), &mut entries)?;
    if entries
        .iter()
        .any(|(rel, _)| rel == Path::new(MANIFEST_NAME))
    {
        return Err(bad(format!(
            "{} holds a {MANIFEST_NAME} of its own; the manifest comes from --manifest",
            files.display()
        )));
    }
    for (key, wanted) in [
        ("entrypoint", manifest.entrypoint.first()),
        ("agent", manifest.agent.as_ref()),
    ] {
        if let Some(program) = wanted {
            let present = fs::metadata(files.join(program))
                .map(|m| m.is_file())
                .unwrap_or(false);
            if !present {
                return Err(bad(format!(
                    "the manifest's {key} {program:?} is not a file under {}",
                    files.display()
                )));
            }
        }
    }

    let tmp = out.with_extension("partial");
    let file = File::create(&tmp).map_err(Error::io(&tmp))?;
    let write = || -> io::Result<()> {
        let encoder: Box<dyn Write> = match compression {
            Compression::Zstd => Box::new(zstd::Encoder::new(&file, 9)?.auto_finish()),
            Compression::Gzip => Box::new(flate2::write::GzEncoder::new(
                &file,
                flate2::Compression::default(),
            )),
        };
        let mut tar = tar::Builder::new(encoder);
        tar.mode(tar::HeaderMode::Deterministic);
        append_bytes(&mut tar, Path::new(MANIFEST_NAME), text.as_bytes(), 0o644)?;
        for (rel, kind) in &entries {
            let full = files.join(rel);
            match kind {
                Kind::Dir => {
                    let mut header = header(tar::EntryType::Directory, 0o755);
                    tar.append_data(&mut header, rel, io::empty())?;
                }
                Kind::File(mode) => {
                    let mut source = File::open(&full)?;
                    let mut header = header(tar::EntryType::Regular, *mode);
                    header.set_size(source.metadata()?.len());
                    tar.append_data(&mut header, rel, &mut source)?;
                }
                Kind::Symlink(target) => {
                    let mut header = header(tar::EntryType::Symlink, 0o777);
                    tar.append_link(&mut header, rel, target)?;
                }
            }
        }
        tar.into_inner()?.flush()
    };
    write().map_err(Error::io(&tmp))?;
    file.sync_all().map_err(Error::io(&tmp))?;
    fs::rename(&tmp, out).map_err(Error::io(out))?;
    Ok(manifest)
}

enum Kind {
    Dir,
    File(u32),
    Symlink(PathBuf),
}

/// Every entry under `root`, sorted so builds are reproducible.
fn collect(root: &Path, rel: &Path, out: &mut Vec<(PathBuf, Kind)>) -> Result<(), Error> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .map_err(Error::io(&dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(Error::io(&dir))?;
    names.sort();
    for name in names {
        let rel = rel.join(name);
        let full = root.join(&rel);
        let meta = fs::symlink_metadata(&full).map_err(Error::io(&full))?;
        if meta.is_dir() {
            out.push((rel.clone(), Kind::Dir));
            collect(root, &rel, out)?;
        } else if meta.is_file() {
            let exec = meta.permissions().mode() & 0o111 != 0;
            out.push((rel, Kind::File(if exec { 0o755 } else { 0o644 })));
        } else if meta.file_type().is_symlink() {
            let target = fs::read_link(&full).map_err(Error::io(&full))?;
            check_link_target(&target).map_err(|reason| Error::Archive {
                image: full.clone(),
                reason,
            })?;
            out.push((rel, Kind::Symlink(target)));
        } else {
            return Err(Error::Archive {
                image: full,
                reason: "only files, directories and symlinks can go into an image".into(),
            });
        }
    }
    Ok(())
}

fn header(kind: tar::EntryType, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(0);
    header
}

fn append_bytes<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &Path,
    data: &[u8],
    mode: u32,
) -> io::Result<()> {
    let mut header = header(tar::EntryType::Regular, mode);
    header.set_size(data.len() as u64);
    tar.append_data(&mut header, path, data)
}

/// Checks every entry of an image without writing anything.
pub fn inspect(image: &Path, limits: Limits) -> Result<ImageContents, Error> {
    walk(image, limits, None)
}

/// Unpacks an image into `dest`, which must not exist yet, checking every
/// entry first; files and directories are fsync'd before returning.
pub fn unpack(image: &Path, dest: &Path, limits: Limits) -> Result<ImageContents, Error> {
    fs::create_dir(dest).map_err(Error::io(dest))?;
    let contents = walk(image, limits, Some(dest))?;
    sync_tree(dest)?;
    Ok(contents)
}

/// Reads the compression from the first bytes of the file.
pub fn detect(image: &Path) -> Result<Compression, Error> {
    let mut magic = [0u8; 4];
    let mut file = File::open(image).map_err(Error::io(image))?;
    let n = read_up_to(&mut file, &mut magic).map_err(Error::io(image))?;
    if n == 4 && magic == ZSTD_MAGIC {
        Ok(Compression::Zstd)
    } else if n >= 2 && magic[..2] == GZIP_MAGIC {
        Ok(Compression::Gzip)
    } else {
        Err(Error::Archive {
            image: image.to_path_buf(),
            reason: "not a zstd or gzip compressed tar archive".into(),
        })
    }
}

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn walk(image: &Path, limits: Limits, dest: Option<&Path>) -> Result<ImageContents, Error> {
    let compression = detect(image)?;
    let file = BufReader::new(File::open(image).map_err(Error::io(image))?);
    let decoder: Box<dyn Read> = match compression {
        Compression::Zstd => Box::new(zstd::Decoder::with_buffer(file).map_err(Error::io(image))?),
        Compression::Gzip => Box::new(flate2::bufread::GzDecoder::new(file)),
    };
    let bad = |reason: String| Error::Archive {
        image: image.to_path_buf(),
        reason,
    };
    // Errors from the tar reader are format errors of the image, not of the disk.
    let corrupt = |e: io::Error| bad(format!("corrupt archive: {e}"));

    let mut archive = tar::Archive::new(decoder);
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut links: HashSet<PathBuf> = HashSet::new();
    let mut manifest = None;
    let (mut entries, mut unpacked_bytes) = (0u64, 0u64);

    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            continue;
        }
        entries += 1;
        if entries > limits.max_entries {
            return Err(bad(format!(
                "more than {} entries (the limit)",
                limits.max_entries
            )));
        }
        let raw_path = entry.path().map_err(corrupt)?.into_owned();
        let shown = raw_path.display().to_string();
        let rel =
            safe_relative(&raw_path).map_err(|reason| bad(format!("entry {shown:?}: {reason}")))?;
        if !seen.insert(rel.clone()) {
            return Err(bad(format!("entry {shown:?} appears twice")));
        }
        if rel.ancestors().skip(1).any(|a| links.contains(a)) {
            return Err(bad(format!("entry {shown:?} lies under a symlink")));
        }
        let size = entry.header().size().map_err(corrupt)?;
        unpacked_bytes = unpacked_bytes.saturating_add(size);
        if unpacked_bytes > limits.max_unpacked_bytes {
            return Err(bad(format!(
                "unpacks to more than {} bytes (the limit)",
                limits.max_unpacked_bytes
            )));
        }
        let target = dest.map(|d| d.join(&rel));

        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous
                if rel == Path::new(MANIFEST_NAME) =>
            {
                if size > MAX_MANIFEST_BYTES {
                    return Err(bad(format!(
                        "{MANIFEST_NAME} is larger than {MAX_MANIFEST_BYTES} bytes"
                    )));
                }
                let mut text = String::new();
                entry
                    .read_to_string(&mut text)
                    .map_err(|e| bad(format!("{MANIFEST_NAME} is not UTF-8 text: {e}")))?;
                let origin = format!("{}!{MANIFEST_NAME}", image.display());
                manifest = Some(Manifest::parse(&text, &origin)?);
                if let Some(target) = target {
                    write_file(&target, text.as_bytes(), 0o644)?;
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mode = entry.header().mode().map_err(corrupt)? & 0o755;
                match target {
                    Some(target) => {
                        ensure_parent(&target)?;
                        let mut out = create_new(&target, mode)?;
                        let copied =
                            io::copy(&mut (&mut entry).take(size), &mut out).map_err(corrupt)?;
                        if copied != size {
                            return Err(bad(format!("entry {shown:?} is truncated")));
                        }
                        out.sync_all().map_err(Error::io(&target))?;
                    }
                    None => {
                        io::copy(&mut entry, &mut io::sink()).map_err(corrupt)?;
                    }
                }
            }
            tar::EntryType::Directory => {
                if let Some(target) = target {
                    fs::create_dir_all(&target).map_err(Error::io(&target))?;
                }
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(corrupt)?
                    .ok_or_else(|| bad(format!("symlink {shown:?} has no target")))?
                    .into_owned();
                check_link_target(&link)
                    .map_err(|reason| bad(format!("symlink {shown:?}: {reason}")))?;
                links.insert(rel.clone());
                if let Some(target) = target {
                    ensure_parent(&target)?;
                    std::os::unix::fs::symlink(&link, &target).map_err(Error::io(&target))?;
                }
            }
            other => {
                return Err(bad(format!(
                    "entry {shown:?} is a {other:?}; only files, directories and symlinks are allowed"
                )));
            }
        }
    }

    let manifest = manifest.ok_or_else(|| bad(format!("no {MANIFEST_NAME} in the archive")))?;
    for (key, wanted) in [
        ("entrypoint", manifest.entrypoint.first()),
        ("agent", manifest.agent.as_ref()),
    ] {
        if let Some(program) = wanted {
            let rel = safe_relative(Path::new(program)).map_err(|r| bad(format!("{key}: {r}")))?;
            if !seen.contains(&rel) {
                return Err(bad(format!(
                    "the manifest's {key} {program:?} is not in the archive"
                )));
            }
        }
    }
    Ok(ImageContents {
        manifest,
        compression,
        entries,
        unpacked_bytes,
    })
}

/// The entry path with `.` removed, or why it is refused.
fn safe_relative(path: &Path) -> Result<PathBuf, String> {
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("contains '..'".into()),
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path".into()),
        }
    }
    if clean.as_os_str().is_empty() {
        return Err("has an empty path".into());
    }
    Ok(clean)
}

/// A symlink may point only to a relative path without `..`: resolved from
/// its own directory it then stays inside the root, whatever other links the
/// image holds, since none of them can climb either.
fn check_link_target(target: &Path) -> Result<(), String> {
    if target.is_absolute() {
        return Err(format!("points to the absolute path {}", target.display()));
    }
    if target
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(format!(
            "points outside its directory ({})",
            target.display()
        ));
    }
    Ok(())
}

fn ensure_parent(target: &Path) -> Result<(), Error> {
    match target.parent() {
        Some(parent) => fs::create_dir_all(parent).map_err(Error::io(parent)),
        None => Ok(()),
    }
}

fn create_new(path: &Path, mode: u32) -> Result<File, Error> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(Error::io(path))
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), Error> {
    let mut file = create_new(path, mode)?;
    file.write_all(data).map_err(Error::io(path))?;
    file.sync_all().map_err(Error::io(path))
}

/// fsyncs every directory under `root` (files were synced as written), so a
/// crash after install cannot leave an entry that vanishes on reboot.
pub(crate) fn sync_tree(root: &Path) -> Result<(), Error> {
    for entry in fs::read_dir(root).map_err(Error::io(root))? {
        let entry = entry.map_err(Error::io(root))?;
        if entry.file_type().map_err(Error::io(entry.path()))?.is_dir() {
            sync_tree(&entry.path())?;
        }
    }
    sync_dir(root)
}

/// fsyncs one directory, making renames and creations in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(dir))
}
