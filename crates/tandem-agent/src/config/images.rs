//! `[images]`: which signatures a node trusts for its firmware images. Read
//! here with the other sections; [`crate::firmware`] acts on it.

use std::path::PathBuf;

use serde::Deserialize;

/// `[images]` in the config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesSection {
    /// Public keys (minisign format) whose signatures this node accepts.
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
    /// Accept images without a signature (status warns).
    #[serde(default)]
    pub allow_unsigned: bool,
}
