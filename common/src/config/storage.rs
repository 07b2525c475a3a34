//! `[storage]` of `/etc/herd/aggregator.toml`: how long the aggregator keeps
//! samples and how it lays them out on disk.

use std::time::Duration;

use serde::Deserialize;

use super::Problems;

const DEFAULT_RETENTION_TIME: Duration = Duration::from_secs(30 * 24 * 3600);
const DEFAULT_BLOCK_DURATION: Duration = Duration::from_secs(2 * 3600);
const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    #[serde(default, with = "humantime_serde")]
    pub retention_time: Option<Duration>,
    /// e.g. "10GB"; units B, KB, MB, GB, TB are powers of 1024, as in Prometheus.
    pub retention_size: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub block_duration: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub check_interval: Option<Duration>,
}

/// Validated `[storage]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// Blocks whose newest sample is older than this (counted back from the newest sample stored) are deleted.
    pub retention_time: Duration,
    /// If set, the oldest blocks are deleted while blocks take more bytes.
    pub retention_size_bytes: Option<u64>,
    /// Span of head data cut into one block.
    pub block_duration: Duration,
    /// How often the head is checked for a cut, and retention and compaction run.
    pub check_interval: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        RawStorage::default().validate(&mut Problems::default())
    }
}

/// Parses "512MB", "10GB", "1TB", "123B" (powers of 1024).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let number: u64 = text[..digits].parse().ok()?;
    let multiplier: u64 = match text[digits..].trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" | "KIB" => 1 << 10,
        "MB" | "MIB" => 1 << 20,
        "GB" | "GIB" => 1 << 30,
        "TB" | "TIB" => 1 << 40,
        "PB" | "PIB" => 1 << 50,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

impl RawStorage {
    pub(crate) fn validate(self, problems: &mut Problems) -> StorageConfig {
        let retention_time = self.retention_time.unwrap_or(DEFAULT_RETENTION_TIME);
        if retention_time.is_zero() {
            problems.push("storage.retention_time", "must be above zero");
        }
        let retention_size_bytes = self.retention_size.as_deref().and_then(|text| {
            let parsed = parse_size(text);
            if parsed.is_none_or(|b| b == 0) {
                problems.push("storage.retention_size", format!("{text:?} is not a size (expected e.g. \"10GB\")"));
            }
            parsed
        });
        let block_duration = self.block_duration.unwrap_or(DEFAULT_BLOCK_DURATION);
        if block_duration < Duration::from_secs(1) {
            problems.push("storage.block_duration", "must be at least 1s");
        } else if block_duration > retention_time {
            problems.push("storage.block_duration", "must not exceed storage.retention_time");
        }
        let check_interval = self.check_interval.unwrap_or(DEFAULT_CHECK_INTERVAL);
        if check_interval < Duration::from_millis(100) {
            problems.push("storage.check_interval", "must be at least 100ms");
        }
        StorageConfig { retention_time, retention_size_bytes, block_duration, check_interval }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_defaults() {
        assert_eq!(parse_size("10GB"), Some(10 << 30));
        assert_eq!(parse_size("512 MB"), Some(512 << 20));
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("ten GB"), None);
        assert_eq!(parse_size("1XB"), None);
        let config = StorageConfig::default();
        assert_eq!(config.block_duration, Duration::from_secs(7200));
        assert_eq!(config.retention_time, Duration::from_secs(30 * 86400));
        let mut problems = Problems::default();
        RawStorage { retention_size: Some("lots".into()), block_duration: Some(Duration::ZERO), ..Default::default() }
            .validate(&mut problems);
        assert!(problems.finish("a.toml", ()).unwrap_err().to_string().contains("storage.retention_size"));
    }
}
