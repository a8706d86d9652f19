//! Durations as people write them in tandem's files and on its command
//! line: `"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"1.5s"`, or a bare number of
//! seconds.
//!
//! A hand-written parser rather than `humantime`: the files accept bare
//! seconds (`timeout = 30`, as the relay always has) and decimal values,
//! which `humantime` refuses, and the whole grammar fits in one function.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The longest duration any setting takes (about 31 years): beyond it a
/// value is a typo, and `Duration::from_secs_f64` would panic on overflow.
const MAX_SECS: f64 = 1e9;

/// Parses `"250ms"`, `"30s"`, `"5m"`, `"1h"`, `"1.5s"` or a bare number of
/// seconds. The error says what was wrong and how to write it.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().map_err(|_| {
        format!("{text:?} is not a duration: write e.g. \"500ms\", \"10s\", \"2m\" or \"1h\"")
    })?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "{text:?} is not a duration: unknown unit {other:?} (use ms, s, m or h)"
            ));
        }
    };
    if !secs.is_finite() || !(0.0..=MAX_SECS).contains(&secs) {
        return Err(format!("duration {text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A serde field written as text (`"30s"`) or as a whole number of seconds
/// (`30`): `#[serde(deserialize_with = "tandem_toml::duration::field")]`.
pub fn field<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Secs(u64),
    }
    match Raw::deserialize(d)? {
        Raw::Text(text) => parse_duration(&text).map_err(serde::de::Error::custom),
        Raw::Secs(n) => Ok(Duration::from_secs(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_unit_and_bare_seconds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration(" 30s "), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn errors_say_how_to_write_it() {
        for bad in ["", "ten", "5 days", "-1s", "1e99h", "s"] {
            let error = parse_duration(bad).expect_err(bad);
            assert!(error.contains(bad.trim()), "{bad:?}: {error}");
        }
        assert!(
            parse_duration("3d")
                .expect_err("parse 3d")
                .contains("use ms, s, m or h")
        );
    }

    proptest! {
        /// Every whole number of milliseconds round-trips through its text.
        #[test]
        fn milliseconds_round_trip(ms in 0u64..1_000_000_000) {
            prop_assert_eq!(parse_duration(&format!("{ms}ms")), Ok(Duration::from_millis(ms)));
        }
    }
}
