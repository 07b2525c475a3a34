//! How the UI writes times, durations, sizes and values. Times are shown in
//! UTC (the server renders pages and does not know the viewer's zone).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

/// `2024-05-01 12:34:56 UTC`; `-` for times before 1970 or unrepresentable.
pub fn utc(ms: i64) -> String {
    if ms <= 0 {
        return "-".to_owned();
    }
    let Ok(time) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
        return "-".to_owned();
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second()
    )
}

/// `12:34` or `12:34:56` (UTC), for chart axes; with the date when `with_date`.
pub fn clock(ms: i64, with_seconds: bool, with_date: bool) -> String {
    let Ok(time) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
        return String::new();
    };
    let mut out = String::new();
    if with_date {
        out.push_str(&format!("{:02}-{:02} ", u8::from(time.month()), time.day()));
    }
    out.push_str(&format!("{:02}:{:02}", time.hour(), time.minute()));
    if with_seconds {
        out.push_str(&format!(":{:02}", time.second()));
    }
    out
}

/// `3m 20s ago`, `just now`, `in 2h 5m`.
pub fn ago(ms: i64, now_ms: i64) -> String {
    if ms <= 0 {
        return "never".to_owned();
    }
    let delta = now_ms - ms;
    if delta.abs() < 1000 {
        return "just now".to_owned();
    }
    let text = short_duration(Duration::from_millis(delta.unsigned_abs()));
    if delta > 0 { format!("{text} ago") } else { format!("in {text}") }
}

/// Two units at most: `2d 3h`, `5m 10s`, `12s`, `350ms`.
pub fn short_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    let (days, hours, minutes, seconds) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, _) if seconds > 0 => format!("{minutes}m {seconds}s"),
        (0, 0, _) => format!("{minutes}m"),
        (0, _, 0) => format!("{hours}h"),
        (0, _, _) => format!("{hours}h {minutes}m"),
        (_, 0, _) => format!("{days}d"),
        _ => format!("{days}d {hours}h"),
    }
}

/// Seconds with a sensible unit: `1.2ms`, `350ms`, `2.5s`, `3m 5s`.
pub fn seconds(value: f64) -> String {
    if !value.is_finite() {
        return format_float(value);
    }
    let abs = value.abs();
    if abs == 0.0 {
        "0s".to_owned()
    } else if abs < 0.001 {
        format!("{}µs", significant(value * 1e6))
    } else if abs < 1.0 {
        format!("{}ms", significant(value * 1e3))
    } else if abs < 60.0 {
        format!("{}s", significant(value))
    } else {
        let sign = if value < 0.0 { "-" } else { "" };
        format!("{sign}{}", short_duration(Duration::from_secs_f64(abs)))
    }
}

/// Binary sizes: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn bytes(value: f64) -> String {
    if !value.is_finite() {
        return format_float(value);
    }
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut scaled = value.abs();
    let mut unit = 0;
    while scaled >= 1024.0 && unit < UNITS.len() - 1 {
        scaled /= 1024.0;
        unit += 1;
    }
    let sign = if value < 0.0 { "-" } else { "" };
    if unit == 0 {
        format!("{sign}{} B", significant(scaled))
    } else {
        format!("{sign}{} {}", significant(scaled), UNITS[unit])
    }
}

/// Decimal prefixes for counts and rates: `950`, `1.2k`, `3.4M`.
pub fn number(value: f64) -> String {
    if !value.is_finite() {
        return format_float(value);
    }
    let abs = value.abs();
    let (scaled, suffix) = if abs >= 1e12 {
        (value / 1e12, "T")
    } else if abs >= 1e9 {
        (value / 1e9, "G")
    } else if abs >= 1e6 {
        (value / 1e6, "M")
    } else if abs >= 1e4 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    format!("{}{suffix}", significant(scaled))
}

/// Three significant digits at most, no trailing zeros: `1.23`, `12.3`, `123`, `0.00123`.
pub fn significant(value: f64) -> String {
    if value == 0.0 || !value.is_finite() {
        return format_float(value);
    }
    let digits = value.abs().log10().floor() as i32;
    let decimals = (2 - digits).clamp(0, 12) as usize;
    let text = format!("{value:.decimals$}");
    if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.').to_owned() } else { text }
}

/// A sample value as Prometheus writes it (`NaN`, `+Inf`, shortest round-trip form).
pub fn format_float(value: f64) -> String {
    herd_common::metric::format_value(value)
}

/// How the values of a chart or figure are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Plain,
    /// 0 to 1, shown as a percentage.
    Ratio,
    Bytes,
    BytesPerSecond,
    Seconds,
    PerSecond,
}

impl Unit {
    pub fn format(self, value: f64) -> String {
        match self {
            Unit::Plain => number(value),
            Unit::Ratio if value.is_finite() => format!("{}%", significant(value * 100.0)),
            Unit::Ratio => format_float(value),
            Unit::Bytes => bytes(value),
            Unit::BytesPerSecond => format!("{}/s", bytes(value)),
            Unit::Seconds => seconds(value),
            Unit::PerSecond => format!("{}/s", number(value)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_as_an_operator_expects() {
        assert_eq!(significant(1.23456), "1.23");
        assert_eq!(significant(123.456), "123");
        assert_eq!(significant(0.00123456), "0.00123");
        assert_eq!(significant(1500.0), "1500");
        assert_eq!(number(15_300.0), "15.3k");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(100.0), "100 B");
        assert_eq!(seconds(0.35), "350ms");
        assert_eq!(seconds(125.0), "2m 5s");
        assert_eq!(Unit::Ratio.format(0.4567), "45.7%");
        assert_eq!(short_duration(Duration::from_secs(90_000)), "1d 1h");
        assert_eq!(ago(1_000, 61_000), "1m ago");
        assert_eq!(utc(1_700_000_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(format_float(f64::NAN), "NaN");
    }
}
