//! Helpers for the built-in alert router's end-to-end tests: an aggregator
//! started with rule files and `alerting.router_config`, a webhook receiver
//! that records what it is sent, and Debian's `amtool`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::Value as Json;

use crate::{Aggregator, Pki};

/// Starts (or restarts) aggregator `name` (state under `work/name-state`) with
/// `[rules] files = [rules]` evaluated every second and the router configured by `router_config`.
pub fn start_aggregator_with_router(
    pki: &Pki,
    work: &Path,
    name: &str,
    http: SocketAddr,
    quic: SocketAddr,
    rules: &Path,
    router_config: &Path,
) -> Aggregator {
    let extra = format!(
        "[rules]\nfiles = [\"{rules}\"]\nevaluation_interval = \"1s\"\n\
         [alerting]\nresend_delay = \"1s\"\nrouter_config = \"{router}\"\n",
        rules = rules.display(),
        router = router_config.display(),
    );
    Aggregator::start_configured(pki, work, name, http, quic, &extra)
}

/// An HTTP server on loopback that answers every request 200 and keeps the JSON bodies it got.
pub struct WebhookRecorder {
    pub url: String,
    bodies: Arc<Mutex<Vec<(SystemTime, Json)>>>,
}

impl WebhookRecorder {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let url = format!("http://{}/hook", listener.local_addr().expect("address"));
        let bodies: Arc<Mutex<Vec<(SystemTime, Json)>>> = Arc::default();
        let recorded = Arc::clone(&bodies);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let recorded = Arc::clone(&recorded);
                std::thread::spawn(move || {
                    let _ = serve_one(stream, &recorded);
                });
            }
        });
        Self { url, bodies }
    }

    /// A router configuration (Alertmanager's format) sending every alert
    /// here, grouped by `alertname`, with these timings.
    pub fn route_by_alertname(&self, group_wait: &str, group_interval: &str, repeat_interval: &str) -> String {
        format!(
            "route:\n  receiver: hook\n  group_by: [alertname]\n  group_wait: {group_wait}\n  \
             group_interval: {group_interval}\n  repeat_interval: {repeat_interval}\n\
             receivers:\n  - name: hook\n    webhook_configs: [{{url: '{}'}}]\n",
            self.url
        )
    }

    /// The bodies received so far.
    pub fn bodies(&self) -> Vec<Json> {
        self.received().into_iter().map(|(_, body)| body).collect()
    }

    /// The bodies received so far, with the time each arrived.
    pub fn received(&self) -> Vec<(SystemTime, Json)> {
        self.bodies.lock().expect("recorder lock").clone()
    }
}

fn serve_one(stream: std::net::TcpStream, recorded: &Mutex<Vec<(SystemTime, Json)>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut length = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length.min(16 << 20)];
    reader.read_exact(&mut body)?;
    if let Ok(json) = serde_json::from_slice(&body) {
        recorded.lock().expect("recorder lock").push((SystemTime::now(), json));
    }
    let mut stream = stream;
    stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
}

/// Whether Debian's `amtool` is installed; without it, fails under `HERD_REQUIRE_PEERS=1`.
pub fn amtool_available() -> bool {
    let found = Command::new("amtool").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("HERD_REQUIRE_PEERS").as_deref() != Ok("1"),
            "amtool is missing: apt-get install prometheus-alertmanager"
        );
        eprintln!("skipped: amtool is not installed (apt-get install prometheus-alertmanager)");
    }
    found
}

/// Runs `amtool --alertmanager.url=http://ADDR ARGS`; returns success and stdout (plus stderr on failure).
pub fn amtool(http: SocketAddr, args: &[&str]) -> (bool, String) {
    let output = Command::new("amtool")
        .arg(format!("--alertmanager.url=http://{http}"))
        .args(args)
        .output()
        .expect("run amtool");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() { (true, stdout) } else { (false, stdout + &String::from_utf8_lossy(&output.stderr)) }
}
