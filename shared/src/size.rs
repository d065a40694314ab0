//! The one grammar for sizes in bytes, used by every size flag (`--shard-size`,
//! `--max-record-bytes`, `--cache-bytes`), `MASKRATE_CACHE_BYTES` and the Python keywords.
//!
//! A number (fractions allowed) and an optional unit, case-insensitive, spaces allowed between:
//! - none or `B`: bytes;
//! - decimal, powers of 1000: `KB`, `MB`, `GB`, `TB`;
//! - binary, powers of 1024: `KiB`, `MiB`, `GiB`, `TiB`, and the one-letter `K`, `M`, `G`, `T`
//!   (as `sort -S`, `truncate -s` and `dd` read them).
//!
//! The result is rounded down to whole bytes.

use crate::error::{Error, Result};
use serde::Deserialize;

/// The units and their sizes in bytes (lower case).
const UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("k", 1 << 10),
    ("kib", 1 << 10),
    ("m", 1 << 20),
    ("mib", 1 << 20),
    ("g", 1 << 30),
    ("gib", 1 << 30),
    ("t", 1 << 40),
    ("tib", 1 << 40),
];

/// What the grammar says, for error messages and `--help`.
pub const SIZE_HELP: &str =
    "a size in bytes: 1000000, 64KB, 1GB (powers of 1000), 512MiB, 1GiB, 4G (powers of 1024)";

fn bad(s: &str, why: &str) -> Error {
    Error::Config(format!("size {s:?}: {why}; expected {SIZE_HELP}"))
}

/// Parses a size (see the module docs): `1GB` = 10^9, `1GiB` = `1G` = 2^30.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(bad(s, "no number"));
    }
    let n: f64 = num.parse().map_err(|_| bad(s, "not a number"))?;
    let unit = unit.trim().to_ascii_lowercase();
    let scale = UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|&(_, scale)| scale)
        .ok_or_else(|| bad(s, &format!("unknown unit {unit:?}")))?;
    let bytes = n * scale as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad(s, "too large"));
    }
    // Whole numbers of bytes stay exact (no float rounding for plain integers).
    if !num.contains('.') {
        let whole: u64 = num.parse().map_err(|_| bad(s, "too large"))?;
        return whole.checked_mul(scale).ok_or_else(|| bad(s, "too large"));
    }
    Ok(bytes as u64)
}

/// [`parse_size`] for clap's `value_parser`.
pub fn parse_size_arg(s: &str) -> std::result::Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

/// A byte count as configs and Python keywords write it: a number, or a size string.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum SizeSpec {
    Bytes(u64),
    Text(String),
}

impl SizeSpec {
    fn bytes<E: serde::de::Error>(self) -> std::result::Result<u64, E> {
        match self {
            SizeSpec::Bytes(n) => Ok(n),
            SizeSpec::Text(t) => parse_size(&t).map_err(E::custom),
        }
    }
}

/// Deserializes an optional byte count written as a number or a size string (`"4GiB"`), so saved
/// configs and the Python keywords take what the command line takes.
pub fn deserialize_opt<'de, D: serde::Deserializer<'de>>(
    de: D,
) -> std::result::Result<Option<u64>, D::Error> {
    Option::<SizeSpec>::deserialize(de)?
        .map(SizeSpec::bytes)
        .transpose()
}

/// [`deserialize_opt`] for a byte count that is always present.
pub fn deserialize<'de, D: serde::Deserializer<'de>>(de: D) -> std::result::Result<u64, D::Error> {
    SizeSpec::deserialize(de)?.bytes()
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn each_suffix_means_what_it_says() {
        for (text, bytes) in [
            ("1", 1),
            ("4096", 4096),
            ("12B", 12),
            ("1GB", 1_000_000_000),
            ("1gb", 1_000_000_000),
            ("1GiB", 1 << 30),
            ("1G", 1 << 30),
            ("4g", 4 << 30),
            ("512MiB", 512 << 20),
            ("512M", 512 << 20),
            ("256MB", 256_000_000),
            ("64KB", 64_000),
            ("64KiB", 64 << 10),
            ("64K", 64 << 10),
            ("2TB", 2_000_000_000_000),
            ("2TiB", 2 << 40),
            ("1.5GiB", 3 << 29),
            ("0.5KB", 500),
            (" 40 KiB ", 40 << 10),
            ("0", 0),
        ] {
            assert_eq!(parse_size(text).unwrap(), bytes, "{text}");
        }
    }

    #[test]
    fn bad_sizes_say_what_is_wrong() {
        for (text, why) in [
            ("", "no number"),
            ("GB", "no number"),
            ("-1G", "no number"),
            ("4X", "unknown unit \"x\""),
            ("1.2.3M", "not a number"),
            ("1 GBs", "unknown unit \"gbs\""),
            ("99999999999TB", "too large"),
            ("18446744073709551615K", "too large"),
        ] {
            let err = parse_size(text).unwrap_err().to_string();
            assert!(err.contains(why), "{text}: {err}");
            assert!(err.contains(&format!("{text:?}")), "names the input: {err}");
        }
    }
}
