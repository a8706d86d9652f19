//! The release catalog: which releases exist and, for vendors that publish
//! explicit upgrade paths, which hops between them are supported.
//!
//! A catalog is a TOML file written by whoever packages the service:
//!
//! ```toml
//! rules = "edges"              # or "minor-step"
//! [[release]]
//! version = "6.2.0"
//! released = 2019-12-17        # optional, shown in output
//! notes = "first 6.2 release"  # optional
//! [[edge]]                     # only with rules = "edges"
//! from = "6.2.*"               # a release, or every release of a minor line
//! to = "6.2.*"
//! ```
//!
//! Loading checks everything a planner would later trip over — unparsable or
//! duplicate versions, edges that match no release, edges under rules that
//! ignore them — and reports it with the file, line, column and key, so a
//! mistake in a catalog is found when it is loaded, not in the middle of an
//! upgrade.

use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use crate::{Error, Version};

/// Which rule decides whether a single hop is supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rules {
    /// Cisco ASA's table (seed 004): any later maintenance release within a
    /// minor; the next minor present, never skipping one; a new major only
    /// from the last minor of the previous major to the first of the next.
    MinorStep,
    /// Only the hops the catalog lists, like an upgrade path printed in
    /// release notes (seed 000).
    Edges,
}

impl fmt::Display for Rules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rules::MinorStep => "minor-step",
            Rules::Edges => "edges",
        })
    }
}

/// A calendar date, as written in the catalog (`released = 2005-06-01`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReleaseDate {
    /// Year, e.g. 2005.
    pub year: u16,
    /// Month, 1–12.
    pub month: u8,
    /// Day of the month, 1–31.
    pub day: u8,
}

impl fmt::Display for ReleaseDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// One release the catalog knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// Its version.
    pub version: Version,
    /// When it was released, if the catalog says.
    pub released: Option<ReleaseDate>,
    /// Free text for operators, if any.
    pub notes: Option<String>,
}

impl Release {
    /// A release with no date and no notes.
    pub fn new(version: Version) -> Self {
        Release {
            version,
            released: None,
            notes: None,
        }
    }
}

/// One end of an [`Edge`]: a single release, or every release of a minor line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionPattern {
    /// Exactly this release.
    Exact(Version),
    /// Every release whose major and minor are these (`6.2.*` or `6.2(*)`).
    Line {
        /// The major release.
        major: u32,
        /// The minor release.
        minor: u32,
    },
}

impl VersionPattern {
    /// Whether `version` is one of the releases this pattern names.
    pub fn matches(&self, version: &Version) -> bool {
        match self {
            VersionPattern::Exact(exact) => exact == version,
            VersionPattern::Line { major, minor } => version.line() == (*major, *minor),
        }
    }
}

impl std::str::FromStr for VersionPattern {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let line = text
            .strip_suffix(".*")
            .or_else(|| text.strip_suffix("(*)"))
            .map(|head| head.strip_prefix('v').unwrap_or(head));
        if let Some(head) = line {
            // Parse the line through Version so the same digit rules apply.
            let probe: Version = format!("{head}.0").parse()?;
            return Ok(VersionPattern::Line {
                major: probe.major,
                minor: probe.minor,
            });
        }
        text.parse().map(VersionPattern::Exact)
    }
}

impl fmt::Display for VersionPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionPattern::Exact(version) => write!(f, "{version}"),
            VersionPattern::Line { major, minor } => write!(f, "{major}.{minor}.*"),
        }
    }
}

/// A supported hop listed in the catalog (used when [`Rules::Edges`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// The releases the hop may start from.
    pub from: VersionPattern,
    /// The releases the hop may end at.
    pub to: VersionPattern,
}

/// The releases and the rules that connect them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    rules: Rules,
    /// Sorted ascending, no two equal: the planner relies on both.
    releases: Vec<Release>,
    edges: Vec<Edge>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    rules: Spanned<String>,
    #[serde(default)]
    release: Vec<RawRelease>,
    #[serde(default)]
    edge: Vec<RawEdge>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelease {
    version: Spanned<String>,
    released: Option<Spanned<toml::value::Datetime>>,
    notes: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEdge {
    from: Spanned<String>,
    to: Spanned<String>,
}

/// Turns byte offsets into the "file:line:column: key: message" errors.
struct Locator<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Locator<'_> {
    /// 1-based line and column of a byte offset.
    fn position(&self, offset: usize) -> (usize, usize) {
        tandem_toml::location::position(self.text, offset)
    }

    fn error(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Error {
        let (line, column) = self.position(span.start);
        Error::Catalog {
            origin: self.origin.to_string(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        }
    }

    /// The key a TOML parse error is about: the key on its line, or the
    /// table header when the error points at one.
    fn key_at(&self, start: usize) -> String {
        tandem_toml::location::key_on_line(self.text, start, "catalog")
    }
}

impl Catalog {
    /// A catalog from parts already in memory; releases are sorted and
    /// duplicates dropped, since the planner depends on a strict order.
    pub fn from_parts(rules: Rules, mut releases: Vec<Release>, edges: Vec<Edge>) -> Self {
        releases.sort_by_key(|r| r.version);
        releases.dedup_by(|a, b| a.version == b.version);
        Catalog {
            rules,
            releases,
            edges,
        }
    }

    /// Parses a catalog from TOML text; `origin` (usually the file's path)
    /// is named in every error.
    pub fn parse(text: &str, origin: &str) -> Result<Self, Error> {
        let locate = Locator { text, origin };
        let raw: RawCatalog = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            locate.error(span.clone(), locate.key_at(span.start), e.message().trim())
        })?;

        let rules = match raw.rules.get_ref().as_str() {
            "minor-step" => Rules::MinorStep,
            "edges" => Rules::Edges,
            other => {
                return Err(locate.error(
                    raw.rules.span(),
                    "rules",
                    format!("unknown rules {other:?}: use \"minor-step\" or \"edges\""),
                ));
            }
        };

        let mut releases: Vec<(Release, Range<usize>)> = Vec::new();
        for (index, entry) in raw.release.into_iter().enumerate() {
            let key = format!("release[{index}].version");
            let span = entry.version.span();
            let version: Version = entry
                .version
                .get_ref()
                .parse()
                .map_err(|e: Error| locate.error(span.clone(), &key, e.to_string()))?;
            if let Some((_, first)) = releases.iter().find(|(r, _)| r.version == version) {
                let (line, _) = locate.position(first.start);
                return Err(locate.error(
                    span,
                    key,
                    format!("{version} is listed twice (first on line {line}): remove one"),
                ));
            }
            let released = entry
                .released
                .map(|date| release_date(&locate, index, date))
                .transpose()?;
            releases.push((
                Release {
                    version,
                    released,
                    notes: entry.notes,
                },
                span,
            ));
        }
        if releases.is_empty() {
            return Err(locate.error(
                0..0,
                "release",
                "the catalog lists no releases: add [[release]] tables with a version each",
            ));
        }

        let mut edges = Vec::new();
        for (index, entry) in raw.edge.into_iter().enumerate() {
            if rules != Rules::Edges {
                return Err(locate.error(
                    entry.from.span(),
                    format!("edge[{index}]"),
                    format!(
                        "edges are only used with rules = \"edges\", but this catalog has rules = \"{rules}\": remove the edges or change the rules"
                    ),
                ));
            }
            let end = |field: &str, value: Spanned<String>| -> Result<VersionPattern, Error> {
                let key = format!("edge[{index}].{field}");
                let span = value.span();
                let pattern: VersionPattern = value
                    .get_ref()
                    .parse()
                    .map_err(|e: Error| locate.error(span.clone(), &key, e.to_string()))?;
                if !releases.iter().any(|(r, _)| pattern.matches(&r.version)) {
                    return Err(locate.error(
                        span,
                        key,
                        format!("{pattern} matches no release in the catalog: add the release or fix the edge"),
                    ));
                }
                Ok(pattern)
            };
            let from = end("from", entry.from)?;
            let to = end("to", entry.to)?;
            edges.push(Edge { from, to });
        }

        Ok(Catalog::from_parts(
            rules,
            releases.into_iter().map(|(r, _)| r).collect(),
            edges,
        ))
    }

    /// The rules this catalog uses.
    pub fn rules(&self) -> Rules {
        self.rules
    }

    /// Every release, oldest first.
    pub fn releases(&self) -> &[Release] {
        &self.releases
    }

    /// The listed hops (empty unless the rules are [`Rules::Edges`]).
    pub fn edges(&self) -> &[Edge] {
        &self.edges
    }

    /// The catalog's entry for `version`, if it is a release.
    pub fn release(&self, version: &Version) -> Option<&Release> {
        self.index_of(version).map(|i| &self.releases[i])
    }

    pub(crate) fn index_of(&self, version: &Version) -> Option<usize> {
        self.releases
            .binary_search_by(|r| r.version.cmp(version))
            .ok()
    }

    /// The error for a version that is not a release, naming its neighbours.
    pub(crate) fn unknown(&self, version: &Version) -> Error {
        let split = self.releases.partition_point(|r| r.version < *version);
        Error::UnknownVersion {
            version: *version,
            below: split
                .checked_sub(1)
                .and_then(|i| self.releases.get(i))
                .map(|r| r.version),
            above: self.releases.get(split).map(|r| r.version),
        }
    }
}

fn release_date(
    locate: &Locator<'_>,
    index: usize,
    value: Spanned<toml::value::Datetime>,
) -> Result<ReleaseDate, Error> {
    let span = value.span();
    match value.get_ref() {
        toml::value::Datetime {
            date: Some(date),
            time: None,
            offset: None,
        } => Ok(ReleaseDate {
            year: date.year,
            month: date.month,
            day: date.day,
        }),
        other => Err(locate.error(
            span,
            format!("release[{index}].released"),
            format!("{other} is not a plain date: write it as YYYY-MM-DD"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog_error(text: &str) -> String {
        match Catalog::parse(text, "cat.toml") {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_releases_dates_and_edges() {
        let catalog = Catalog::parse(
            r#"
rules = "edges"
[[release]]
version = "6.2.5"
released = 2020-08-01
notes = "latest"
[[release]]
version = "6.2.0"
[[edge]]
from = "6.2.*"
to = "6.2.5"
"#,
            "cat.toml",
        )
        .expect("parse the catalog");
        assert_eq!(catalog.rules(), Rules::Edges);
        let versions: Vec<String> = catalog
            .releases()
            .iter()
            .map(|r| r.version.to_string())
            .collect();
        assert_eq!(versions, ["6.2.0", "6.2.5"], "sorted oldest first");
        let latest = &catalog.releases()[1];
        assert_eq!(
            latest.released.map(|d| d.to_string()).as_deref(),
            Some("2020-08-01")
        );
        assert_eq!(latest.notes.as_deref(), Some("latest"));
        assert_eq!(
            catalog.edges(),
            [Edge {
                from: VersionPattern::Line { major: 6, minor: 2 },
                to: VersionPattern::Exact(latest.version),
            }]
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let text = "rules = \"minor-step\"\n[[release]]\nversion = \"7.x(1)\"\n";
        assert_eq!(
            catalog_error(text),
            "cat.toml:3:11: release[0].version: bad version \"7.x(1)\": minor \"x\" is not a number"
        );
        let text = "rules = \"fastest\"\n";
        assert_eq!(
            catalog_error(text),
            "cat.toml:1:9: rules: unknown rules \"fastest\": use \"minor-step\" or \"edges\""
        );
        let text = "rules = \"minor-step\"\n[[release]]\nversoin = \"7.0(1)\"\n";
        let message = catalog_error(text);
        assert!(
            message.starts_with("cat.toml:3:1: versoin: unknown field `versoin`"),
            "{message}"
        );
        let text = "rules = \"minor-step\"\n[[release]]\nversion = 7\n";
        let message = catalog_error(text);
        assert!(
            message.starts_with("cat.toml:3:11: version: invalid type"),
            "{message}"
        );
    }

    #[test]
    fn refuses_duplicates_dates_with_times_and_stray_edges() {
        let text = "rules = \"minor-step\"\n[[release]]\nversion = \"7.0(1)\"\n[[release]]\nversion = \"7.0.1\"\n";
        assert_eq!(
            catalog_error(text),
            "cat.toml:5:11: release[1].version: 7.0.1 is listed twice (first on line 3): remove one"
        );
        let text = "rules = \"minor-step\"\n[[release]]\nversion = \"7.0(1)\"\nreleased = 2005-06-01T10:00:00\n";
        assert!(catalog_error(text).contains("cat.toml:4:12: release[0].released: "));
        let text = "rules = \"minor-step\"\n[[release]]\nversion = \"7.0(1)\"\n[[edge]]\nfrom = \"7.0(1)\"\nto = \"7.0(1)\"\n";
        assert!(catalog_error(text).contains("cat.toml:5:8: edge[0]: edges are only used"));
        let text = "rules = \"edges\"\n[[release]]\nversion = \"6.2.0\"\n[[edge]]\nfrom = \"6.2.0\"\nto = \"6.4.*\"\n";
        assert_eq!(
            catalog_error(text),
            "cat.toml:6:6: edge[0].to: 6.4.* matches no release in the catalog: add the release or fix the edge"
        );
        assert!(catalog_error("rules = \"edges\"\n").contains("lists no releases"));
        assert!(catalog_error("").contains("missing field `rules`"));
    }

    #[test]
    fn patterns_parse_both_spellings() {
        let line = |text: &str| text.parse::<VersionPattern>().ok();
        assert_eq!(
            line("6.2.*"),
            Some(VersionPattern::Line { major: 6, minor: 2 })
        );
        assert_eq!(
            line("v6.2.*"),
            Some(VersionPattern::Line { major: 6, minor: 2 })
        );
        assert_eq!(
            line("9.8(*)"),
            Some(VersionPattern::Line { major: 9, minor: 8 })
        );
        assert!(line("6.*").is_none());
        assert!(line("6.x.*").is_none());
    }
}
