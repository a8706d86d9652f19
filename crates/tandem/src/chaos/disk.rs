//! Small spool filesystems, for the `disk-full` fault: each node's relay
//! spool (`data/NODE/spool`) on a tmpfs of its own, which the fault fills.
//!
//! The filler must use the spool's filesystem without being in the data
//! dir the nodes replicate (a catch-up would copy it, and the sync report
//! would show it). So the tmpfs is mounted at `fs/NODE`, its `spool`
//! directory bind-mounted onto `data/NODE/spool`, and the filler written
//! at `fs/NODE/.fill`: same space, outside the data dir. Mounts are made
//! before the agents start (an agent run with `ip netns exec` gets a copy
//! of the mount table then) and removed when this is dropped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// Each spool's size: room for tens of thousands of small messages.
const SIZE: &str = "size=64m";
/// The filler is written in chunks of this size, at most [`MAX_CHUNKS`].
const CHUNK: usize = 1 << 20;
const MAX_CHUNKS: usize = 80;

/// The mounted spools; unmounted on drop.
pub struct Spools {
    /// Each node's tmpfs root (`fs/NODE`).
    roots: Vec<PathBuf>,
    /// Every mount point, in the order mounted.
    mounts: Vec<PathBuf>,
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Spools {
    /// Mounts a spool for each of `nodes` under the cluster's `dir`.
    /// Needs root.
    pub fn mount(dir: &Path, nodes: &[String]) -> anyhow::Result<Spools> {
        let mut spools = Spools {
            roots: Vec::new(),
            mounts: Vec::new(),
        };
        for node in nodes {
            let root = dir.join("fs").join(node);
            let spool = dir.join("data").join(node).join("spool");
            std::fs::create_dir_all(&root)?;
            std::fs::create_dir_all(&spool)?;
            let root_text = root.to_string_lossy().into_owned();
            run("mount", &["-t", "tmpfs", "-o", SIZE, "tmpfs", &root_text])?;
            spools.mounts.push(root.clone());
            let inner = root.join("spool");
            std::fs::create_dir_all(&inner)?;
            let spool_text = spool.to_string_lossy().into_owned();
            run("mount", &["--bind", &inner.to_string_lossy(), &spool_text])?;
            spools.mounts.push(spool);
            spools.roots.push(root);
        }
        Ok(spools)
    }

    /// Fills node `i`'s spool filesystem; returns the bytes written.
    pub fn fill(&self, i: usize) -> anyhow::Result<u64> {
        let path = self.roots[i].join(".fill");
        let mut file = std::fs::File::create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let chunk = vec![0u8; CHUNK];
        let mut written = 0u64;
        for _ in 0..MAX_CHUNKS {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                // ENOSPC: full, which is the point.
                Err(_) => break,
            }
        }
        let _ = file.sync_all();
        Ok(written)
    }

    /// Frees node `i`'s spool filesystem again.
    pub fn drain(&self, i: usize) {
        let _ = std::fs::remove_file(self.roots[i].join(".fill"));
    }
}

impl Drop for Spools {
    fn drop(&mut self) {
        // Lazily: a relay killed a moment ago may still hold a file open.
        for m in self.mounts.iter().rev() {
            let _ = run("umount", &["-l", &m.to_string_lossy()]);
        }
    }
}
