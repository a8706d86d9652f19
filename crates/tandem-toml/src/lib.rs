//! How tandem reads its TOML files, in one place for every loader.
//!
//! Release catalogs, image manifests, agent configs and relay configs are
//! all TOML written by hand. An operator should meet one spelling of a
//! duration in all of them, and one shape of error that leads straight to
//! the line at fault. Both used to be written out per crate (three
//! duration parsers that disagreed on `1h` and `1.5s`); this crate is the
//! lowest in the workspace so each loader can share them.
//!
//! # Layout
//! - [`location`]: line, column and key of a TOML error.
//! - [`duration`]: `"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"1.5s"` or bare
//!   seconds, as text for the CLI and as a serde field for the files.

#![deny(missing_docs)]

pub mod duration;
pub mod location;

pub use duration::parse_duration;
