//! Helpers shared by the agent's integration tests: free ports, child
//! processes killed on drop, captured logs, and reading Prometheus text
//! exposition from a real exporter to compare with what Herd reports.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an exporter may take to answer its first scrape.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Collects what the agent logs, to check what a failure prints.
#[derive(Clone, Default)]
pub struct LogSink(pub Arc<Mutex<Vec<u8>>>);

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One exposition-format series: name and labels (sorted, empty values and
/// the given `drop` names left out), as text, with its value.
pub fn parse_series(line: &str, drop: &[&str]) -> Option<(String, String, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, rest) = match line.find('{') {
        Some(open) => (&line[..open], &line[open + 1..]),
        None => {
            let (name, value) = line.split_once(' ')?;
            return Some((name.to_owned(), String::new(), value.trim().parse().ok()?));
        }
    };
    let mut labels = Vec::new();
    let mut chars = rest.char_indices().peekable();
    let value_start = loop {
        while chars.peek().is_some_and(|&(_, c)| c == ',' || c == ' ') {
            chars.next();
        }
        let &(start, c) = chars.peek()?;
        if c == '}' {
            break start + 1;
        }
        let eq = rest[start..].find('=')? + start;
        let key = rest[start..eq].to_owned();
        while chars.peek().is_some_and(|&(i, _)| i <= eq + 1) {
            chars.next(); // up to and including the opening quote
        }
        let mut text = String::new();
        while let Some((_, c)) = chars.next() {
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => text.push('\n'),
                    other => text.push(other),
                },
                '"' => break,
                other => text.push(other),
            }
        }
        if !text.is_empty() && !drop.contains(&key.as_str()) {
            labels.push(format!("{key}={text:?}"));
        }
    };
    labels.sort();
    let value = rest[value_start..].trim().split(' ').next()?.parse().ok()?;
    Some((name.to_owned(), labels.join(","), value))
}

/// Families: name → (label set → value).
pub type Families = BTreeMap<String, BTreeMap<String, f64>>;

pub fn families<'a>(lines: impl Iterator<Item = &'a str>, drop: &[&str]) -> Families {
    let mut out = Families::new();
    for (name, labels, value) in lines.filter_map(|line| parse_series(line, drop)) {
        out.entry(name).or_default().insert(labels, value);
    }
    out
}

pub fn scrape(port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}/metrics");
    ureq::get(&url).call().unwrap().into_body().read_to_string().unwrap()
}

/// Starts an exporter binary and waits for its /metrics to answer.
pub fn start_exporter(binary: &str, args: &[String], env: &[(&str, String)], port: u16) -> Child {
    let child = Command::new(binary)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run {binary}: {err}"));
    let deadline = Instant::now() + STARTUP_DEADLINE;
    while ureq::get(&format!("http://127.0.0.1:{port}/metrics")).call().is_err() {
        assert!(Instant::now() < deadline, "{binary} did not answer on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}
