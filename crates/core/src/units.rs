//! Human-friendly sizes (`10GiB`, `500MB`), durations (`30m`, `24h`, `7d`) and times
//! (`2026-12-03T16:20:05.123Z`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitError {
    #[error("'{0}' is not a size: use a number with an optional unit, e.g. 512MiB, 10GB, 1T")]
    Size(String),
    #[error("'{0}' is not a duration: use a number with a unit, e.g. 500ms, 30s, 30m, 24h, 7d")]
    Duration(String),
}

fn split_number(s: &str) -> Option<(f64, &str)> {
    let s = s.trim();
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let n: f64 = s[..end].parse().ok()?;
    Some((n, s[end..].trim()))
}

/// Parses a byte size. Decimal (`KB`, `MB`, `GB`, `TB`) and binary (`KiB`, `MiB`, `G`, …)
/// units are accepted; a bare letter (`G`) is binary.
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let err = || UnitError::Size(s.to_string());
    let (n, unit) = split_number(s).ok_or_else(err)?;
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" => 1024.0f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => return Err(err()),
    };
    let v = n * mult;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(err());
    }
    Ok(v as u64)
}

/// Formats a byte count with a binary unit and one decimal (`1.5 GiB`).
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[i]) }
}

/// Parses a duration such as `500ms`, `30s`, `30m`, `24h` or `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let err = || UnitError::Duration(s.to_string());
    let (n, unit) = split_number(s).ok_or_else(err)?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        "w" => n * 7.0 * 86400.0,
        _ => return Err(err()),
    };
    if !secs.is_finite() || !(0.0..=1e11).contains(&secs) {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats milliseconds since the Unix epoch as a UTC time for people and JSON:
/// RFC 3339 with exactly three fractional digits (`2026-12-03T16:20:05.123Z`), so every
/// time has the same width and times sort as text. Falls back to the bare number outside
/// the years 0000–9999.
pub fn format_time_ms(ms: i64) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000) else {
        return ms.to_string();
    };
    if !(0..=9999).contains(&t.year()) {
        return ms.to_string();
    }
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes_and_durations() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1.5MB"), Ok(1_500_000));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("7").is_err());
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn times_always_have_three_fractional_digits() {
        assert_eq!(format_time_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time_ms(1_796_314_805_000), "2026-12-03T16:20:05.000Z");
        assert_eq!(format_time_ms(1_796_314_805_100), "2026-12-03T16:20:05.100Z");
        assert_eq!(format_time_ms(1_796_314_805_123), "2026-12-03T16:20:05.123Z");
        assert_eq!(format_time_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(format_time_ms(i64::MAX), i64::MAX.to_string());
        // Still RFC 3339, and one width for all.
        for ms in [1, 999, 1_000, 1_796_314_805_120, 4_102_444_799_999] {
            let s = format_time_ms(ms);
            assert_eq!(s.len(), "2026-12-03T16:20:05.123Z".len(), "{s}");
            let t = time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339).unwrap();
            assert_eq!((t.unix_timestamp_nanos() / 1_000_000) as i64, ms, "{s}");
        }
    }
}
