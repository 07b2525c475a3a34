//! `[storage]` of `/etc/herd/aggregator.toml`: how long the aggregator keeps
//! samples and how it lays them out on disk, including the
//! `[[storage.retention]]` rules that keep some series longer or shorter
//! than `retention_time` (their selectors are parsed and checked here; the
//! store turns them into its own matchers).

use std::time::Duration;

use serde::Deserialize;

use super::Problems;

const DEFAULT_RETENTION_TIME: Duration = Duration::from_secs(30 * 24 * 3600);
const DEFAULT_BLOCK_DURATION: Duration = Duration::from_secs(2 * 3600);
const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_BLOCK_CACHE_BYTES: u64 = 64 << 20;

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
    /// Decompressed block data kept in memory for reads, e.g. "128MB".
    pub block_cache_size: Option<String>,
    /// `[[storage.retention]]`: per-selector retention, first match wins.
    #[serde(default)]
    pub retention: Vec<RawRetentionRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetentionRule {
    /// A series selector, e.g. `{__name__=~"smart_dairy_.*"}`.
    #[serde(rename = "match")]
    pub selector: String,
    #[serde(with = "humantime_serde")]
    pub time: Duration,
}

/// How a selector's matcher compares a label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectorOp {
    Equal,
    NotEqual,
    RegexMatch,
    RegexNoMatch,
}

/// One `name op "value"` of a selector; regexes are checked to compile
/// (anchored, as in PromQL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorMatcher {
    pub name: String,
    pub op: SelectorOp,
    pub value: String,
}

/// A validated `[[storage.retention]]` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRule {
    /// The selector as written, for logs and the status page.
    pub selector: String,
    pub matchers: Vec<SelectorMatcher>,
    /// Data of matching series is deleted once older than this.
    pub time: Duration,
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
    /// Bytes of decompressed block data kept in memory for reads.
    pub block_cache_bytes: u64,
    /// Per-selector retention over `retention_time`, in file order; the first
    /// rule whose selector matches a series sets its retention.
    pub retention_rules: Vec<RetentionRule>,
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
        let block_cache_bytes = match self.block_cache_size.as_deref() {
            None => DEFAULT_BLOCK_CACHE_BYTES,
            Some(text) => parse_size(text).unwrap_or_else(|| {
                problems.push("storage.block_cache_size", format!("{text:?} is not a size (expected e.g. \"128MB\")"));
                DEFAULT_BLOCK_CACHE_BYTES
            }),
        };
        let mut retention_rules = Vec::new();
        for (i, rule) in self.retention.into_iter().enumerate() {
            if rule.time.is_zero() {
                problems.push(&format!("storage.retention[{i}].time"), "must be above zero");
            }
            match parse_selector(&rule.selector) {
                Ok(matchers) => {
                    retention_rules.push(RetentionRule { selector: rule.selector, matchers, time: rule.time })
                }
                Err(problem) => problems.push(&format!("storage.retention[{i}].match"), problem),
            }
        }
        StorageConfig {
            retention_time,
            retention_size_bytes,
            block_duration,
            check_interval,
            block_cache_bytes,
            retention_rules,
        }
    }
}

/// Parses a PromQL series selector: `metric`, `metric{...}` or `{...}` with
/// matchers `name="v"`, `!=`, `=~`, `!~`, values in double or single quotes
/// (backslash escapes). At least one matcher must not match the empty
/// string, as in PromQL, so a rule cannot select every series by accident.
pub fn parse_selector(text: &str) -> Result<Vec<SelectorMatcher>, String> {
    let mut chars = text.trim().chars().peekable();
    let mut matchers = Vec::new();
    let name_char =
        |c: char, first: bool| c == '_' || c == ':' || c.is_ascii_alphabetic() || (!first && c.is_ascii_digit());
    let mut metric = String::new();
    while let Some(&c) = chars.peek() {
        if !name_char(c, metric.is_empty()) {
            break;
        }
        metric.push(c);
        chars.next();
    }
    if !metric.is_empty() {
        matchers.push(SelectorMatcher { name: "__name__".into(), op: SelectorOp::Equal, value: metric });
    }
    let skip_spaces = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
    };
    skip_spaces(&mut chars);
    if chars.peek() == Some(&'{') {
        chars.next();
        loop {
            skip_spaces(&mut chars);
            if chars.peek() == Some(&'}') {
                chars.next();
                break;
            }
            let mut name = String::new();
            while let Some(&c) = chars.peek() {
                if !name_char(c, name.is_empty()) || c == ':' {
                    break;
                }
                name.push(c);
                chars.next();
            }
            if name.is_empty() {
                return Err(format!("{text:?}: expected a label name"));
            }
            skip_spaces(&mut chars);
            let op = match (chars.next(), chars.peek().copied()) {
                (Some('='), Some('~')) => SelectorOp::RegexMatch,
                (Some('='), _) => SelectorOp::Equal,
                (Some('!'), Some('=')) => SelectorOp::NotEqual,
                (Some('!'), Some('~')) => SelectorOp::RegexNoMatch,
                _ => return Err(format!("{text:?}: expected =, !=, =~ or !~ after {name}")),
            };
            if op != SelectorOp::Equal {
                chars.next();
            }
            skip_spaces(&mut chars);
            let quote = match chars.next() {
                Some(q @ ('"' | '\'')) => q,
                _ => return Err(format!("{text:?}: expected a quoted value for {name}")),
            };
            let mut value = String::new();
            loop {
                match chars.next() {
                    None => return Err(format!("{text:?}: unterminated value for {name}")),
                    Some('\\') => match chars.next() {
                        Some('n') => value.push('\n'),
                        Some('t') => value.push('\t'),
                        Some(c @ ('\\' | '"' | '\'')) => value.push(c),
                        // Regex escapes such as \. pass through.
                        Some(c) => {
                            value.push('\\');
                            value.push(c);
                        }
                        None => return Err(format!("{text:?}: unterminated value for {name}")),
                    },
                    Some(c) if c == quote => break,
                    Some(c) => value.push(c),
                }
            }
            if matches!(op, SelectorOp::RegexMatch | SelectorOp::RegexNoMatch)
                && let Err(error) = regex::Regex::new(&format!("^(?s:{value})$"))
            {
                return Err(format!("{text:?}: bad regex for {name}: {error}"));
            }
            matchers.push(SelectorMatcher { name, op, value });
            skip_spaces(&mut chars);
            match chars.next() {
                Some(',') => continue,
                Some('}') => break,
                _ => return Err(format!("{text:?}: expected , or }} after a matcher")),
            }
        }
    }
    skip_spaces(&mut chars);
    if chars.next().is_some() {
        return Err(format!(
            "{text:?}: unexpected text after the selector (expected e.g. '{{__name__=~\"smart_dairy_.*\"}}')"
        ));
    }
    let narrows = matchers.iter().any(|m| match m.op {
        SelectorOp::Equal => !m.value.is_empty(),
        SelectorOp::RegexMatch => !regex::Regex::new(&format!("^(?s:{})$", m.value)).is_ok_and(|re| re.is_match("")),
        SelectorOp::NotEqual | SelectorOp::RegexNoMatch => false,
    });
    if !narrows {
        return Err(format!("{text:?}: needs a matcher that does not match the empty string (e.g. a metric name)"));
    }
    Ok(matchers)
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

    fn check(selector: &str, expected: Result<Vec<(&str, SelectorOp, &str)>, &str>) {
        let parsed = parse_selector(selector);
        match expected {
            Ok(matchers) => {
                let matchers: Vec<SelectorMatcher> = matchers
                    .into_iter()
                    .map(|(name, op, value)| SelectorMatcher { name: name.into(), op, value: value.into() })
                    .collect();
                assert_eq!(parsed, Ok(matchers), "{selector}");
            }
            Err(part) => {
                let error = parsed.expect_err(selector);
                assert!(error.contains(part), "{selector}: {error}");
            }
        }
    }

    #[test]
    fn retention_selectors() {
        use SelectorOp::*;
        check(r#"{__name__=~"smart_dairy_.*"}"#, Ok(vec![("__name__", RegexMatch, "smart_dairy_.*")]));
        check(
            r#"up{job = 'node', instance!~"a\.b|c"}"#,
            Ok(vec![("__name__", Equal, "up"), ("job", Equal, "node"), ("instance", RegexNoMatch, r"a\.b|c")]),
        );
        check("node_load1", Ok(vec![("__name__", Equal, "node_load1")]));
        check(r#"{job!="x"}"#, Err("does not match the empty string"));
        check(r#"{__name__=~"(unclosed"}"#, Err("bad regex"));
        check(r#"{job="x""#, Err("expected , or }"));
        check(r#"{job=x}"#, Err("quoted value"));
        check(r#"{job="x"} extra"#, Err("unexpected text"));
        let raw: RawStorage = toml::from_str(
            "[[retention]]\nmatch = '{__name__=~\"smart_dairy_.*\"}'\ntime = \"365d\"\n\
             [[retention]]\nmatch = '{job=~\"[\"}'\ntime = \"1d\"\n",
        )
        .unwrap();
        let mut problems = Problems::default();
        let config = raw.validate(&mut problems);
        assert_eq!(config.retention_rules.len(), 1);
        assert_eq!(config.retention_rules[0].time, Duration::from_secs(365 * 86400));
        let error = problems.finish("aggregator.toml", ()).unwrap_err().to_string();
        assert!(error.contains("storage.retention[1].match") && error.contains("bad regex"), "{error}");
    }
}
