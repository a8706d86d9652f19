//! tandem's "firmware": signed release images and the A/B slots they boot
//! from.
//!
//! An appliance upgrade installs a vendor-signed image, reboots into it, and
//! falls back if it does not come up. tandem gives a service's release the
//! same safety, in the manner of RAUC, Mender and OSTree/greenboot: an image
//! is verified before anything on the node changes, unpacked into the slot
//! that is not running, booted with a bounded number of tries, and kept only
//! once its health check passes; otherwise the node returns to the slot it
//! came from.
//!
//! # Layout
//! - [`manifest`]: `manifest.toml`, what an image says about itself.
//! - [`archive`]: building the tar (zstd or gzip) and reading it back with
//!   every safety check: no absolute paths, no `..`, no links or devices
//!   escaping the root, size and entry-count limits.
//! - [`signing`]: minisign keys and signatures (interoperable with the
//!   `minisign` tool both ways) and the node's [`TrustPolicy`].
//! - [`slots`]: the A/B slot store, its journal, boot counting and rollback.
//! - [`health`]: the health checks a manifest can ask for.
//!
//! Nothing here runs the service: [`slots::SlotService`] is the seam where
//! the agent's supervisor plugs in.

#![deny(missing_docs)]

pub mod archive;
pub mod health;
pub mod manifest;
pub mod signing;
pub mod slots;

use std::path::PathBuf;

pub use archive::{Compression, Limits};
pub use manifest::Manifest;
pub use signing::{KeyId, TrustPolicy, VerifiedImage};
pub use slots::{SlotName, SlotState, SlotStore};

/// Everything that can go wrong with images and slots.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// The manifest is not valid; the position points at the offending key.
    #[error("{origin}:{line}:{column}: {key}: {message}")]
    Manifest {
        /// Where the manifest came from (a file, or `IMAGE!manifest.toml`).
        origin: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The key the problem is in.
        key: String,
        /// What is wrong and what to do.
        message: String,
    },

    /// The archive is not a valid image or would escape its root.
    #[error("unsafe or invalid image {image}: {reason}")]
    Archive {
        /// The image file.
        image: PathBuf,
        /// What is wrong, naming the entry when there is one.
        reason: String,
    },

    /// The signature is missing, malformed, or does not match.
    #[error("signature check failed for {image}: {reason}")]
    Signature {
        /// The image file.
        image: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },

    /// A key file is unreadable, malformed or encrypted without a password.
    #[error("key {path}: {reason}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },

    /// A slot operation is not possible in the slots' current state.
    #[error("slots: {0}")]
    Slot(String),

    /// A test asked the slot store to stop here, as if the process were
    /// killed; everything after it is left undone on disk.
    #[error("injected crash (test fault)")]
    InjectedCrash,
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
