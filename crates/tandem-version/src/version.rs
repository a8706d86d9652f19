//! Firmware version numbers, in the two spellings vendors use.
//!
//! Cisco ASA writes `MAJOR.MINOR(MAINT)` and `MAJOR.MINOR(MAINT.INTERIM)`
//! (`7.0(4)`, `9.8(2.20)`); FortiMail and most software write dotted
//! `MAJOR.MINOR.PATCH[.BUILD]`, sometimes with a leading `v` (`6.2.5`,
//! `v7.0.1`). Both describe the same thing — a minor release line and a
//! maintenance release within it — so one [`Version`] type holds both and the
//! upgrade rules never need to know which spelling a catalog used.
//!
//! Printing is lossless: a version prints exactly as it was written. That is
//! why leading zeros are refused — `6.02.5` could not be printed back from
//! its numbers, and two spellings of one release invite mistakes.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use crate::Error;

/// How a version was written, so it prints back the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Spelling {
    /// `7.0(4)` or `9.8(2.20)`.
    Asa,
    /// `6.2.5` or `6.2.5.1234`; `v_prefix` remembers a leading `v`.
    Dotted {
        /// Whether the text began with `v`.
        v_prefix: bool,
    },
}

/// One release number.
///
/// Equality and ordering look only at the numbers, compared component by
/// component (`9.10(1)` > `9.9(2)`, `9.8(2.20)` < `9.8(4)`); the spelling is
/// presentation, so `v6.2.5 == 6.2.5`. An interim or build number sorts after
/// the same release without one (`9.8(2)` < `9.8(2.20)`), since interim
/// builds follow the maintenance release they extend.
#[derive(Debug, Clone, Copy)]
pub struct Version {
    /// The major release (`7` in `7.0(4)`).
    pub major: u32,
    /// The minor release line within the major (`0` in `7.0(4)`).
    pub minor: u32,
    /// The maintenance release (ASA) or patch (dotted) within the minor.
    pub maint: u32,
    /// The ASA interim build or the dotted fourth component, if written.
    pub build: Option<u32>,
    /// How the version was written.
    pub spelling: Spelling,
}

/// Which part of a version string a parse error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionPart {
    /// The first number.
    Major,
    /// The second number.
    Minor,
    /// The maintenance release (ASA) or patch (dotted).
    Maint,
    /// The ASA interim number or the dotted build number.
    Build,
    /// Text after the version, or a missing `)`.
    Trailer,
}

impl fmt::Display for VersionPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VersionPart::Major => "major",
            VersionPart::Minor => "minor",
            VersionPart::Maint => "maintenance",
            VersionPart::Build => "interim/build",
            VersionPart::Trailer => "end",
        })
    }
}

impl Version {
    /// The numbers that identify the release, in comparison order.
    fn key(&self) -> (u32, u32, u32, Option<u32>) {
        (self.major, self.minor, self.maint, self.build)
    }

    /// The minor release line this version belongs to, `(major, minor)`.
    pub fn line(&self) -> (u32, u32) {
        (self.major, self.minor)
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Version {}

impl Hash for Version {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.spelling {
            Spelling::Asa => {
                write!(f, "{}.{}({}", self.major, self.minor, self.maint)?;
                if let Some(interim) = self.build {
                    write!(f, ".{interim}")?;
                }
                f.write_str(")")
            }
            Spelling::Dotted { v_prefix } => {
                if v_prefix {
                    f.write_str("v")?;
                }
                write!(f, "{}.{}.{}", self.major, self.minor, self.maint)?;
                if let Some(build) = self.build {
                    write!(f, ".{build}")?;
                }
                Ok(())
            }
        }
    }
}

/// Reads one decimal component, refusing empty text, signs, leading zeros and
/// overflow, and says which part was wrong.
fn number(input: &str, text: &str, part: VersionPart) -> Result<u32, Error> {
    let bad = |reason: String| Error::BadVersion {
        input: input.to_string(),
        part,
        reason,
    };
    if text.is_empty() {
        return Err(bad("is missing".into()));
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(format!("{text:?} is not a number")));
    }
    if text.len() > 1 && text.starts_with('0') {
        return Err(bad(format!("{text:?} has a leading zero")));
    }
    text.parse()
        .map_err(|_| bad(format!("{text:?} is too large")))
}

impl FromStr for Version {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let trailer = |reason: &str| Error::BadVersion {
            input: input.to_string(),
            part: VersionPart::Trailer,
            reason: reason.to_string(),
        };
        let (major_text, rest) = input.split_once('.').ok_or_else(|| Error::BadVersion {
            input: input.to_string(),
            part: VersionPart::Minor,
            reason: "is missing (expected MAJOR.MINOR(MAINT) or MAJOR.MINOR.PATCH)".into(),
        })?;

        if let Some(open) = rest.find('(') {
            // ASA: MAJOR.MINOR(MAINT[.INTERIM])
            let major = number(input, major_text, VersionPart::Major)?;
            let minor = number(input, &rest[..open], VersionPart::Minor)?;
            let inner = rest[open + 1..]
                .strip_suffix(')')
                .ok_or_else(|| trailer("must be a closing ')' with nothing after it"))?;
            let (maint_text, interim_text) = match inner.split_once('.') {
                Some((m, i)) => (m, Some(i)),
                None => (inner, None),
            };
            let maint = number(input, maint_text, VersionPart::Maint)?;
            let build = interim_text
                .map(|t| number(input, t, VersionPart::Build))
                .transpose()?;
            return Ok(Version {
                major,
                minor,
                maint,
                build,
                spelling: Spelling::Asa,
            });
        }

        // Dotted: [v]MAJOR.MINOR.PATCH[.BUILD]
        let (v_prefix, major_text) = match major_text.strip_prefix('v') {
            Some(stripped) => (true, stripped),
            None => (false, major_text),
        };
        let major = number(input, major_text, VersionPart::Major)?;
        let mut parts = rest.split('.');
        let minor = number(input, parts.next().unwrap_or(""), VersionPart::Minor)?;
        let maint = number(input, parts.next().unwrap_or(""), VersionPart::Maint)?;
        let build = parts
            .next()
            .map(|t| number(input, t, VersionPart::Build))
            .transpose()?;
        if parts.next().is_some() {
            return Err(trailer("has more than four dotted numbers"));
        }
        Ok(Version {
            major,
            minor,
            maint,
            build,
            spelling: Spelling::Dotted { v_prefix },
        })
    }
}

impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        text.parse().expect("parse the version")
    }

    #[test]
    fn parses_every_form_losslessly() {
        for text in [
            "7.0(4)",
            "9.8(2.20)",
            "0.0(0)",
            "6.2.5",
            "v7.0.1",
            "6.2.5.1234",
            "v10.20.30.40",
        ] {
            assert_eq!(v(text).to_string(), text);
        }
        let asa = v("9.8(2.20)");
        assert_eq!(
            (asa.major, asa.minor, asa.maint, asa.build),
            (9, 8, 2, Some(20))
        );
        assert_eq!(asa.spelling, Spelling::Asa);
        let dotted = v("v7.0.1");
        assert_eq!(dotted.spelling, Spelling::Dotted { v_prefix: true });
        assert_eq!(dotted.line(), (7, 0));
    }

    #[test]
    fn orders_numerically_per_component() {
        assert!(v("9.10(1)") > v("9.9(2)"));
        assert!(v("9.8(2.20)") < v("9.8(4)"));
        assert!(v("9.8(2)") < v("9.8(2.20)"));
        assert!(v("9.8(2.3)") < v("9.8(2.20)"));
        assert!(v("6.2.10") > v("6.2.9"));
        assert!(v("10.0.0") > v("9.99.99"));
        assert_eq!(v("v6.2.5"), v("6.2.5"));
        assert_eq!(v("7.0(1)"), v("7.0.1"));
    }

    fn error_of(text: &str) -> (VersionPart, String) {
        match text.parse::<Version>() {
            Err(Error::BadVersion { part, reason, .. }) => (part, reason),
            other => panic!("{text}: expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_wrong_part() {
        assert_eq!(error_of("7").0, VersionPart::Minor);
        assert_eq!(
            error_of("x.0(1)"),
            (VersionPart::Major, "\"x\" is not a number".into())
        );
        assert_eq!(error_of("7.x(1)").0, VersionPart::Minor);
        assert_eq!(error_of("7.0()"), (VersionPart::Maint, "is missing".into()));
        assert_eq!(error_of("7.0(1.x)").0, VersionPart::Build);
        assert_eq!(error_of("7.0(1").0, VersionPart::Trailer);
        assert_eq!(error_of("7.0(1)a").0, VersionPart::Trailer);
        assert_eq!(error_of("6.2").0, VersionPart::Maint);
        assert_eq!(error_of("6.2.").0, VersionPart::Maint);
        assert_eq!(error_of("6.2.5.1.2").0, VersionPart::Trailer);
        assert_eq!(
            error_of("6.02.5"),
            (VersionPart::Minor, "\"02\" has a leading zero".into())
        );
        assert_eq!(error_of("V6.2.5").0, VersionPart::Major);
        assert_eq!(error_of("6.2.-5").0, VersionPart::Maint);
        assert_eq!(error_of("6.2.+5").0, VersionPart::Maint);
        assert_eq!(
            error_of("6.2.99999999999").1,
            "\"99999999999\" is too large"
        );
        assert_eq!(error_of("").0, VersionPart::Minor);
    }

    #[test]
    fn error_message_reads_well() {
        let err = "7.x(1)".parse::<Version>().err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("bad version \"7.x(1)\": minor \"x\" is not a number")
        );
    }
}
