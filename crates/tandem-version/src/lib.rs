//! Versions, release catalogs and upgrade paths for tandem's "firmware".
//!
//! An HA appliance cannot jump from any release to any other without
//! downtime: Cisco ASA allows a zero-downtime upgrade only one minor release
//! at a time (seed 004), FortiMail only along the path its release notes list
//! (seed 000). This crate answers "which releases must the cluster pass
//! through, and why is each step allowed?" — and nothing else. It is pure: no
//! files, no clock; the caller reads the catalog and passes its text.
//!
//! # Layout
//! - [`version`]: [`Version`], parsing and printing `7.0(4)`, `9.8(2.20)`,
//!   `6.2.5`, `v7.0.1` losslessly, ordered numerically.
//! - [`catalog`]: [`Catalog`], the TOML list of releases and (for the
//!   `edges` rules) the supported hops, with errors that name file, line and
//!   key.
//! - [`rules`]: whether one hop is supported ([`Catalog::check_hop`]), and
//!   the reason it is or is not ([`HopRule`], [`HopRefusal`]).
//! - [`plan`]: the fewest-hop path ([`Catalog::plan`]) from the running
//!   release to a target.
//!
//! ```
//! use tandem_version::Catalog;
//!
//! let catalog = Catalog::parse(r#"
//!     rules = "minor-step"
//!     [[release]]
//!     version = "7.0(1)"
//!     [[release]]
//!     version = "7.1(1)"
//!     [[release]]
//!     version = "7.2(1)"
//! "#, "asa.toml")?;
//! let path = catalog.plan(&"7.0(1)".parse()?, &"7.2(1)".parse()?)?;
//! let hops: Vec<String> = path.hops.iter().map(|h| h.to.to_string()).collect();
//! assert_eq!(hops, ["7.1(1)", "7.2(1)"]);
//! # Ok::<(), tandem_version::Error>(())
//! ```

#![deny(missing_docs)]

pub mod catalog;
pub mod plan;
pub mod rules;
pub mod version;

pub use catalog::{Catalog, Edge, Release, ReleaseDate, Rules, VersionPattern};
pub use plan::{Hop, UpgradePath};
pub use rules::{HopRefusal, HopRule};
pub use version::{Spelling, Version, VersionPart};

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A version string does not parse; `part` says which component is wrong.
    #[error("bad version {input:?}: {part} {reason}")]
    BadVersion {
        /// The text as given.
        input: String,
        /// The component that is wrong.
        part: VersionPart,
        /// What is wrong with it.
        reason: String,
    },

    /// A catalog file is not valid; the position points at the offending key.
    #[error("{origin}:{line}:{column}: {key}: {message}")]
    Catalog {
        /// Where the catalog came from (usually its path).
        origin: String,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column of the problem.
        column: usize,
        /// The key (or table) the problem is in.
        key: String,
        /// What is wrong and what to do.
        message: String,
    },

    /// A version asked for is not a release in the catalog.
    #[error("{version} is not a release in the catalog{}", nearest(.below, .above))]
    UnknownVersion {
        /// The version asked for.
        version: Version,
        /// The closest catalog release below it, if any.
        below: Option<Version>,
        /// The closest catalog release above it, if any.
        above: Option<Version>,
    },

    /// The target is older than the running release; tandem has no downgrade
    /// path (a rollback restores the previous slot instead).
    #[error(
        "{to} is older than {from}: there is no downgrade path (to go back, roll back to the previous image)"
    )]
    Downgrade {
        /// The running release.
        from: Version,
        /// The older target.
        to: Version,
    },

    /// Both releases are known but the rules connect them by no chain of hops.
    #[error(
        "no supported upgrade path from {from} to {to}: the direct hop is refused ({refusal}); from {from} the rules reach no further toward {to} than {highest_reachable}"
    )]
    NoPath {
        /// The running release.
        from: Version,
        /// The target.
        to: Version,
        /// Why the direct hop is refused.
        refusal: HopRefusal,
        /// The highest release not above `to` that the rules do reach, so
        /// the operator sees where the path ends.
        highest_reachable: Version,
    },
}

fn nearest(below: &Option<Version>, above: &Option<Version>) -> String {
    match (below, above) {
        (Some(b), Some(a)) => format!(" (nearest known releases: {b} and {a})"),
        (Some(b), None) => format!(" (the newest known release is {b})"),
        (None, Some(a)) => format!(" (the oldest known release is {a})"),
        (None, None) => " (the catalog lists no releases)".to_string(),
    }
}
