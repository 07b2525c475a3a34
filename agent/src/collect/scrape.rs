//! Scrape jobs: Prometheus text-format endpoints on this host (an
//! application's /metrics, an exporter Herd does not replace), one job per
//! collector, each under its own timeout. Every scraped series gets the
//! job's name as `job` and the agent's `instance`; a series' own `job` and
//! `instance` become `exported_job` and `exported_instance`, as Prometheus
//! does without `honor_labels`.
//!
//! The parser reads the text format (0.0.4): comments and `# HELP`/`# TYPE`
//! are skipped, histograms and summaries arrive as their plain series,
//! timestamps are ignored (the cycle's time is used). A malformed line is
//! skipped and counted in `herd_scrape_malformed_lines` (per scrape, with the
//! first one logged at debug level); the rest of the body is kept.
//!
//! A body longer than the job's `max_body_bytes` is cut at the last whole
//! line before the limit (`herd_scrape_body_truncated` says so).
//!
//! Every scrape also reports, as Prometheus does for each target, `up` (1
//! when the body was fetched with a 2xx status, 0 on a refused connection,
//! a timeout, a non-2xx status or a TLS error), `scrape_duration_seconds`,
//! `scrape_samples_scraped` and `scrape_samples_post_metric_relabeling`,
//! with the job's `job`, the agent's `instance` and the job's static labels.
//!
//! https URLs are fetched over rustls, verified against the job's
//! `tls.ca_file` (default: the system's CAs) unless `insecure_skip_verify`,
//! with a client certificate when one is configured.
//!
//! Must not: follow the target's `job`/`instance` over Herd's, read more
//! than `max_body_bytes` or keep more than `MAX_SAMPLES` from one scrape.

use std::time::Duration;

use async_trait::async_trait;
use herd_common::config::agent::ScrapeConfig;
use herd_common::config::client_tls::ClientTls;
use tokio::time::Instant;

use super::{Batch, CollectError, Collector};

/// Prometheus's `sample_limit`, fixed: a runaway target cannot flood the agent's buffer.
const MAX_SAMPLES: usize = 50_000;

/// One series read from a target.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrapedSample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Why a body is not the text format.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("line {line}: {detail}")]
pub struct ParseError {
    pub line: usize,
    pub detail: &'static str,
}

/// Parses exposition text into samples, renaming `job` and `instance`.
/// Malformed lines are skipped; their errors are returned. Past
/// `MAX_SAMPLES` the rest of the body is cut, reported as one more error.
pub fn parse_text(text: &str, out: &mut Vec<ScrapedSample>) -> Vec<ParseError> {
    let mut skipped = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        match parse_line(raw, index + 1) {
            Ok(None) => {}
            Ok(Some(sample)) => {
                if out.len() == MAX_SAMPLES {
                    skipped.push(ParseError { line: index + 1, detail: "more samples than the limit of 50000" });
                    break;
                }
                out.push(sample);
            }
            Err(err) => skipped.push(err),
        }
    }
    skipped
}

/// One line: `Ok(None)` for blanks and comments.
fn parse_line(raw: &str, line_number: usize) -> Result<Option<ScrapedSample>, ParseError> {
    let line = raw.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let error = |detail| ParseError { line: line_number, detail };
    let name_end = line.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(error("no metric name"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = parse_labels(after_brace, &mut labels).ok_or_else(|| error("malformed labels"))?;
    }
    let value_text = rest.split_whitespace().next().ok_or_else(|| error("no value"))?;
    let value = parse_value(value_text).ok_or_else(|| error("value is not a number"))?;
    for (key, _) in &mut labels {
        if key == "job" || key == "instance" {
            key.insert_str(0, "exported_");
        }
    }
    Ok(Some(ScrapedSample { name: name.to_owned(), labels, value }))
}

/// Parses `k="v",...}` and returns what follows the closing brace.
fn parse_labels<'a>(mut rest: &'a str, labels: &mut Vec<(String, String)>) -> Option<&'a str> {
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Some(after);
        }
        let eq = rest.find('=')?;
        let key = rest[..eq].trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return None;
        }
        rest = rest[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                other => value.push(other),
            }
        };
        labels.push((key.to_owned(), value));
        rest = rest[end + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Go's ParseFloat forms the format uses: decimals, exponents, NaN, ±Inf.
fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok().filter(|v: &f64| v.is_finite()),
    }
}

pub struct ScrapeCollector {
    /// `herd_collector_success{collector=...}`: "scrape:" and the job.
    collector_name: String,
    job: String,
    url: String,
    timeout: Duration,
    labels: Vec<(String, String)>,
    max_body_bytes: u64,
    interval: Duration,
    /// Set for https URLs.
    tls: Option<ClientTls>,
    /// Kept between scrapes (keep-alive, TLS settings read once) and
    /// dropped after a failed one, so the next reads the CA files again.
    http: std::sync::Mutex<Option<ureq::Agent>>,
}

/// A fetched body, and whether it was cut at `max_body_bytes`.
struct Body {
    text: String,
    truncated: bool,
}

/// Keeps whole lines of `bytes` if the body was cut at the limit.
fn cut_body(mut bytes: Vec<u8>, truncated: bool) -> Body {
    if truncated {
        let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        bytes.truncate(end);
    }
    Body { text: String::from_utf8_lossy(&bytes).into_owned(), truncated }
}

impl ScrapeCollector {
    pub fn from_config(config: &ScrapeConfig) -> Self {
        Self {
            collector_name: format!("scrape:{}", config.job),
            job: config.job.clone(),
            url: config.url.clone(),
            timeout: config.timeout,
            labels: config.labels.clone(),
            max_body_bytes: config.max_body_bytes,
            interval: config.interval,
            tls: config.tls.clone(),
            http: std::sync::Mutex::new(None),
        }
    }

    fn error(&self, detail: impl Into<String>) -> CollectError {
        CollectError::Server { server: self.url.clone(), detail: detail.into() }
    }

    /// The HTTP client, built on first use or after a failure.
    fn http_agent(&self) -> Result<ureq::Agent, CollectError> {
        let mut slot = self.http.lock().expect("http agent lock is never poisoned");
        if let Some(agent) = slot.as_ref() {
            return Ok(agent.clone());
        }
        let mut config = ureq::Agent::config_builder().timeout_global(Some(self.timeout)).http_status_as_error(false);
        if let Some(tls) = &self.tls {
            config = config.tls_config(super::tls::ureq_tls(tls).map_err(|detail| self.error(detail))?);
        }
        let agent: ureq::Agent = config.build().into();
        *slot = Some(agent.clone());
        Ok(agent)
    }

    /// ureq is blocking: the fetch runs on the blocking pool, bounded by its own timeout.
    async fn fetch(&self) -> Result<Body, CollectError> {
        let (url, limit) = (self.url.clone(), self.max_body_bytes);
        let agent = self.http_agent()?;
        let fetched = tokio::task::spawn_blocking(move || -> Result<Body, String> {
            let mut response = agent
                .get(&url)
                .header("Accept", "text/plain;version=0.0.4")
                .header("User-Agent", "herd-agent")
                .call()
                .map_err(|err| err.to_string())?;
            let status = response.status().as_u16();
            if !(200..300).contains(&status) {
                return Err(format!("HTTP status {status}"));
            }
            // Read one byte past the limit to know whether the body was cut.
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(
                &mut std::io::Read::take(response.body_mut().with_config().limit(u64::MAX).reader(), limit + 1),
                &mut bytes,
            )
            .map_err(|err| err.to_string())?;
            let truncated = bytes.len() as u64 > limit;
            bytes.truncate(limit as usize);
            Ok(cut_body(bytes, truncated))
        })
        .await
        .map_err(|_| self.error("the fetch task panicked"))?;
        if fetched.is_err() {
            *self.http.lock().expect("http agent lock is never poisoned") = None;
        }
        fetched.map_err(|detail| self.error(detail))
    }
}

#[async_trait]
impl Collector for ScrapeCollector {
    fn name(&self) -> &str {
        &self.collector_name
    }

    fn job(&self) -> &str {
        &self.job
    }

    fn interval(&self) -> Option<Duration> {
        Some(self.interval)
    }

    async fn collect(&self, out: &mut Batch) -> Result<(), CollectError> {
        let started = Instant::now();
        let fetched = match tokio::time::timeout(self.timeout, self.fetch()).await {
            Ok(fetched) => fetched,
            Err(_) => {
                *self.http.lock().expect("http agent lock is never poisoned") = None;
                Err(self.error(format!("no answer within {} ms", self.timeout.as_millis())))
            }
        };
        let statics: Vec<(&str, &str)> = self.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let body = match fetched {
            Ok(body) => body,
            Err(err) => {
                out.push("up", &statics, 0.0);
                out.push("scrape_duration_seconds", &statics, started.elapsed().as_secs_f64());
                out.push("scrape_samples_scraped", &statics, 0.0);
                out.push("scrape_samples_post_metric_relabeling", &statics, 0.0);
                return Err(err);
            }
        };
        let mut samples = Vec::new();
        let skipped = parse_text(&body.text, &mut samples);
        out.push("up", &statics, 1.0);
        out.push("scrape_duration_seconds", &statics, started.elapsed().as_secs_f64());
        out.push("scrape_samples_scraped", &statics, samples.len() as f64);
        out.push("scrape_samples_post_metric_relabeling", &statics, samples.len() as f64);
        if let Some(first) = skipped.first() {
            tracing::debug!(job = %self.job, lines = skipped.len(), first = %first, "skipped malformed lines");
        }
        out.push("herd_scrape_malformed_lines", &[], skipped.len() as f64);
        out.push("herd_scrape_body_truncated", &[], if body.truncated { 1.0 } else { 0.0 });
        let mut labels: Vec<(&str, &str)> = Vec::new();
        let is_static = |name: &str| self.labels.iter().any(|(k, _)| k == name);
        let statics = || self.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        for sample in &samples {
            if sample.labels.iter().any(|(k, _)| is_static(k)) {
                // The job's static labels win; a target's own label of that
                // name is kept as `exported_<name>`, as Prometheus does. Rare.
                let renamed: Vec<(String, &str)> = sample
                    .labels
                    .iter()
                    .map(|(k, v)| (if is_static(k) { format!("exported_{k}") } else { k.clone() }, v.as_str()))
                    .collect();
                let mut owned: Vec<(&str, &str)> = renamed.iter().map(|(k, v)| (k.as_str(), *v)).collect();
                owned.extend(self.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                out.push(&sample.name, &owned, sample.value);
                continue;
            }
            labels.clear();
            labels.extend(sample.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            labels.extend(statics());
            out.push(&sample.name, &labels, sample.value);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample as the tests write it: name, labels, value.
    type Expected<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

    /// Parses `text` and compares the samples kept and the lines skipped.
    fn check(text: &str, expected: Vec<Expected<'_>>, skipped: Vec<ParseError>) {
        let mut out = Vec::new();
        let got_skipped = parse_text(text, &mut out);
        let expected: Vec<ScrapedSample> = expected
            .into_iter()
            .map(|(name, labels, value)| ScrapedSample {
                name: name.to_owned(),
                labels: labels.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
                value,
            })
            .collect();
        assert_eq!(out, expected, "{text}");
        assert_eq!(got_skipped, skipped, "{text}");
    }

    #[test]
    fn text_format() {
        check(
            "# HELP x a thing\n# TYPE x counter\nx 1\nx_total{a=\"b\",c=\"d,e\"} 2.5e3 1700000000000\n\n",
            vec![("x", vec![], 1.0), ("x_total", vec![("a", "b"), ("c", "d,e")], 2500.0)],
            vec![],
        );
        check(
            "h_bucket{le=\"+Inf\",} +Inf\nq{v=\"a\\\"b\\\\c\\nd\"} -Inf\n",
            vec![
                ("h_bucket", vec![("le", "+Inf")], f64::INFINITY),
                ("q", vec![("v", "a\"b\\c\nd")], f64::NEG_INFINITY),
            ],
            vec![],
        );
        check(
            "up{job=\"app\",instance=\"x:1\"} 1\n",
            vec![("up", vec![("exported_job", "app"), ("exported_instance", "x:1")], 1.0)],
            vec![],
        );
        // Malformed lines are skipped and reported; the good ones around them are kept.
        check(
            "ok 1\n{a=\"b\"} 1\nok2 2\n",
            vec![("ok", vec![], 1.0), ("ok2", vec![], 2.0)],
            vec![ParseError { line: 2, detail: "no metric name" }],
        );
        check("x{a=\"b} 1\n", vec![], vec![ParseError { line: 1, detail: "malformed labels" }]);
        check("x 1\nx abc\n", vec![("x", vec![], 1.0)], vec![ParseError { line: 2, detail: "value is not a number" }]);
        check("x\n", vec![], vec![ParseError { line: 1, detail: "no value" }]);
    }

    #[test]
    fn a_cut_body_keeps_whole_lines() {
        let body = cut_body(b"a 1\nb 2\nc 3".to_vec(), true);
        assert_eq!((body.text.as_str(), body.truncated), ("a 1\nb 2\n", true));
        let body = cut_body(b"a 1\nb 2".to_vec(), false);
        assert_eq!((body.text.as_str(), body.truncated), ("a 1\nb 2", false));
    }

    #[test]
    fn nan_is_kept() {
        let mut out = Vec::new();
        assert!(parse_text("x NaN\n", &mut out).is_empty());
        assert!(out[0].value.is_nan());
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_text_parses_without_panicking(text in ".{0,400}") {
                let mut out = Vec::new();
                let skipped = parse_text(&text, &mut out);
                prop_assert!(out.len() + skipped.len() <= text.lines().count());
            }

            #[test]
            fn well_formed_lines_round_trip(
                name in "[a-zA-Z_:][a-zA-Z0-9_:]{0,20}",
                labels in prop::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,10}", "[ -~]{0,12}", 0..4),
                value in any::<f64>().prop_filter("finite", |v| v.is_finite()),
            ) {
                let labels: Vec<(String, String)> = labels
                    .into_iter()
                    .filter(|(k, _)| k != "job" && k != "instance")
                    .collect();
                let rendered: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                    .collect();
                let line = if rendered.is_empty() {
                    format!("{name} {value:?}\n")
                } else {
                    format!("{name}{{{}}} {value:?}\n", rendered.join(","))
                };
                let mut out = Vec::new();
                prop_assert!(parse_text(&line, &mut out).is_empty(), "{}", line);
                prop_assert_eq!(out, vec![ScrapedSample { name, labels, value }]);
            }
        }
    }
}
