//! Go-style durations (`200ms`, `1.5s`, `1m30s`), the format of GIE's `metav1.Duration` fields.
//!
//! Hand-written because humantime's grammar differs from Go's (no fractions, other unit names)
//! and configs written for GIE must parse unchanged.
use serde::{Deserialize, Deserializer};

use crate::clock::Micros;

/// A duration in microseconds, parsed from a Go duration string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GoDuration(pub Micros);

/// Parses `[0-9.]+(ns|us|µs|ms|s|m|h)` repeated, e.g. `1h2m3.5s`; `0` alone is zero.
pub fn parse_go_duration(text: &str) -> Result<Micros, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(0);
    }
    if text.is_empty() {
        return Err("empty duration".to_owned());
    }
    if text.starts_with('-') {
        return Err(format!("negative duration `{text}`"));
    }
    let mut rest = text;
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let value: f64 = number.parse().map_err(|_| {
            format!("`{text}` is not a duration (expected e.g. 200ms, 1.5s, 1m30s)")
        })?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let micros_per_unit = match unit {
            "ns" => 0.001,
            "us" | "µs" | "μs" => 1.0,
            "ms" => 1_000.0,
            "s" => 1_000_000.0,
            "m" => 60_000_000.0,
            "h" => 3_600_000_000.0,
            "" => {
                return Err(format!(
                    "duration `{text}` lacks a unit (ns, us, ms, s, m, h)"
                ));
            }
            other => return Err(format!("unknown unit `{other}` in duration `{text}`")),
        };
        total += value * micros_per_unit;
        rest = after;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(format!("duration `{text}` is too large"));
    }
    Ok(total.round() as Micros)
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_go_duration(&text)
            .map(GoDuration)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_go_duration("200ms"), Ok(200_000));
        assert_eq!(parse_go_duration("1.5s"), Ok(1_500_000));
        assert_eq!(parse_go_duration("1m30s"), Ok(90_000_000));
        assert_eq!(parse_go_duration("250us"), Ok(250));
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert!(parse_go_duration("5").unwrap_err().contains("lacks a unit"));
        assert!(parse_go_duration("5 parsecs").is_err());
        assert!(parse_go_duration("-1s").unwrap_err().contains("negative"));
        assert!(parse_go_duration("").is_err());
    }
}
