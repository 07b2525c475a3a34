//! Harness for Herd's end-to-end tests: runs the real `herd-aggregator` and
//! `herd-agent` binaries on loopback with certificates made by the CLI, and
//! talks to them over their real interfaces (HTTP API, QUIC).
//!
//! Binaries are taken from the cargo target directory this test was built
//! in; `cargo build --workspace --bins` (which the test script runs) puts
//! them there.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod browser;
pub mod identity;
pub mod loadgen;
pub mod peers;
pub mod prompb;
pub mod relay;
pub mod router;
pub mod servers;
pub mod store;

use serde_json::Value as Json;

/// Prints a benchmark's markdown section (a `## Title` line, the command,
/// tables, a paragraph) and, when `HERD_BENCH_REPORT` names a file, appends
/// it there too (creating the file), so `scripts/bench.sh` can rebuild
/// docs/benchmarks.md from one run.
pub fn bench_report(section: &str) {
    use std::io::Write as _;
    let section = section.trim_end();
    println!("\n{section}");
    let Some(path) = std::env::var_os("HERD_BENCH_REPORT") else { return };
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| write!(file, "{section}\n\n"));
    if let Err(err) = written {
        eprintln!("cannot append the report to {}: {err}", PathBuf::from(&path).display());
    }
}

/// Path of a workspace binary next to the running test's target directory.
///
/// `HERD_AGENT_BIN` names another `herd-agent` (e.g. the `agent` profile's,
/// the one packages ship) for benchmarks.
pub fn bin(name: &str) -> PathBuf {
    if name == "herd-agent"
        && let Some(path) = std::env::var_os("HERD_AGENT_BIN")
    {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // Tests run from target/<profile>/deps/, benchmark binaries from target/<profile>/.
    let dir = exe.parent().expect("executable has a directory");
    let profile_dir = if dir.ends_with("deps") { dir.parent().expect("deps has a parent") } else { dir };
    let path = profile_dir.join(name);
    assert!(path.exists(), "{} not found: run `cargo build --workspace --bins` first", path.display());
    path
}

/// Runs `herd-aggregator` with `args` to completion, panicking with its output on failure.
pub fn aggregator_cli(args: &[&str]) -> String {
    let output = Command::new(bin("herd-aggregator")).args(args).output().expect("run herd-aggregator");
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "herd-aggregator {args:?} failed:\n{text}");
    text
}

/// A free loopback port for TCP (the OS picks; released before returning).
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind loopback").port()
}

/// A free loopback port for UDP.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("bind loopback").port()
}

/// Free loopback addresses for an aggregator: HTTP (TCP) and QUIC (UDP).
pub fn loopback_addresses() -> (SocketAddr, SocketAddr) {
    (SocketAddr::from(([127, 0, 0, 1], free_tcp_port())), SocketAddr::from(([127, 0, 0, 1], free_udp_port())))
}

/// Polls `check` every 25 ms until it yields a value or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A CA made with `herd-aggregator ca init`, and pairs issued from it.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn create(dir: PathBuf) -> Self {
        let dir_text = dir.to_str().expect("utf-8 temp path").to_owned();
        aggregator_cli(&["ca", "init", "--dir", &dir_text, "--name", "test fleet"]);
        Self { dir }
    }

    pub fn issue_server(&self, name: &str) {
        let dir = self.dir.to_str().expect("utf-8 temp path");
        aggregator_cli(&["cert", "issue", "--server", name, "--san", "127.0.0.1", "--ca-dir", dir]);
    }

    pub fn issue_agent(&self, name: &str) {
        let dir = self.dir.to_str().expect("utf-8 temp path");
        aggregator_cli(&["cert", "issue", "--agent", name, "--ca-dir", dir]);
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.path(file)).expect("read PKI file")
    }
}

/// A child process killed (SIGKILL) when dropped; prints its log if the test is failing.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    pub fn spawn(name: &str, binary: &str, args: &[&str], log_dir: &Path) -> Self {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        let child = Command::new(bin(binary))
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        Self { name: name.to_owned(), child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Resident memory in bytes, from /proc.
    pub fn rss_bytes(&self) -> Option<u64> {
        rss_of(self.pid())
    }
}

/// Serves `handler(path)` over HTTP on a loopback port, one connection at a
/// time: `Some(body)` is a 200 with that body, `None` a 500. For the
/// applications whose metrics the agent scrapes in tests and benchmarks.
pub fn serve_text(handler: impl Fn(&str) -> Option<String> + Send + 'static) -> SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request = String::new();
            let _ = BufReader::new(&stream).read_line(&mut request);
            let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let response = match handler(&path) {
                Some(body) => {
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                }
                None => {
                    "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
                }
            };
            let _ = stream.write_all(response.as_bytes());
        }
    });
    addr
}

/// Resident memory of process `pid` (`VmRSS`).
pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

/// Bytes of every file under `dir`, recursively (0 if it does not exist).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- {} log -----\n{}", self.name, self.log());
        }
    }
}

/// A running aggregator with its addresses.
pub struct Aggregator {
    pub process: Process,
    pub http: SocketAddr,
    pub quic: SocketAddr,
}

impl Aggregator {
    /// Starts `herd-aggregator serve` with a server certificate named `localhost` from `pki`.
    pub fn start(pki: &Pki, work: &Path) -> Self {
        let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().expect("address");
        let quic: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().expect("address");
        Self::start_at(pki, work, "aggregator", http, quic)
    }

    /// Starts (or restarts) aggregator `name` with state under `work/name-state`.
    pub fn start_at(pki: &Pki, work: &Path, name: &str, http: SocketAddr, quic: SocketAddr) -> Self {
        Self::start_configured(pki, work, name, http, quic, "")
    }

    /// Like [`Aggregator::start_at`], with `extra` TOML appended to the config
    /// (whole sections other than `[server]` and `[tls]`).
    pub fn start_configured(
        pki: &Pki,
        work: &Path,
        name: &str,
        http: SocketAddr,
        quic: SocketAddr,
        extra: &str,
    ) -> Self {
        Self::start_full(pki, work, name, http, quic, extra, "heartbeat_interval = \"1s\"\n")
    }

    /// Like [`Aggregator::start`], with the production heartbeat interval
    /// (the default) rather than the tests' 1 s: for benchmarks of what
    /// an idle connection costs.
    pub fn start_with_default_heartbeat(pki: &Pki, work: &Path) -> Self {
        let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().expect("address");
        let quic: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().expect("address");
        Self::start_full(pki, work, "aggregator", http, quic, "", "")
    }

    /// Starts (or restarts) aggregator `name` with `extra` config sections
    /// and `heartbeat` lines for `[server]` ("" keeps the production default),
    /// waiting up to 20 s for it to be ready.
    fn start_full(
        pki: &Pki,
        work: &Path,
        name: &str,
        http: SocketAddr,
        quic: SocketAddr,
        extra: &str,
        heartbeat: &str,
    ) -> Self {
        Self::start_within(pki, work, name, http, quic, extra, heartbeat, Duration::from_secs(20))
    }

    /// Like [`Aggregator::start_configured`] with `heartbeat` lines for
    /// `[server]` ("" keeps the production default), waiting up to `ready_within` (a restart
    /// replays its WAL first, which takes longer at a benchmark's scale).
    #[allow(clippy::too_many_arguments)]
    pub fn start_within(
        pki: &Pki,
        work: &Path,
        name: &str,
        http: SocketAddr,
        quic: SocketAddr,
        extra: &str,
        heartbeat: &str,
        ready_within: Duration,
    ) -> Self {
        if !pki.path("localhost.pem").exists() {
            pki.issue_server("localhost");
        }
        let config = work.join(format!("{name}.toml"));
        // Tests that are not about access control call the API without
        // credentials, as an admin; those that are set their own `[http]`.
        let http_section = if extra.contains("[http]") { "" } else { "[http]\nanonymous_role = \"admin\"\n" };
        std::fs::write(
            &config,
            format!(
                "{http_section}[server]\nquic_listen = \"{quic}\"\nhttp_listen = \"{http}\"\nstate_dir = \"{state}\"\n{heartbeat}\
                 [tls]\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n{extra}",
                state = work.join(format!("{name}-state")).display(),
                ca = pki.path("ca.pem").display(),
                cert = pki.path("localhost.pem").display(),
                key = pki.path("localhost-key.pem").display(),
            ),
        )
        .expect("write aggregator config");
        let process = Process::spawn(
            "aggregator",
            "herd-aggregator",
            &["serve", "--config", config.to_str().expect("utf-8")],
            work,
        );
        let aggregator = Self { process, http, quic };
        let ready = wait_for(ready_within, || aggregator.get("/-/ready").filter(|(status, _)| *status == 200));
        assert!(ready.is_some(), "aggregator not ready within {ready_within:?}:\n{}", aggregator.process.log());
        aggregator
    }

    /// GET `path`; `None` if the server cannot be reached.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&format!("http://{}{path}", self.http))
    }

    /// Runs an instant query and returns the parsed JSON response.
    pub fn query(&self, expr: &str) -> Json {
        let (status, body) = self.get(&format!("/api/v1/query?query={}", encode(expr))).expect("aggregator reachable");
        let json: Json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("bad JSON ({e}): {body}"));
        assert_eq!(status, 200, "{body}");
        json
    }

    /// The aggregator's own metric `name` (with an optional `{labels}` suffix), 0 if absent.
    pub fn self_metric(&self, series: &str) -> f64 {
        let (_, body) = self.get("/metrics").expect("aggregator reachable");
        body.lines()
            .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

/// Writes an agent config for `name` (cert `NAME.pem` from `pki`) sending to `quic`.
pub fn agent_config(work: &Path, pki: &Pki, name: &str, quic: SocketAddr, interval: &str) -> PathBuf {
    agent_config_with(work, pki, name, &[quic], interval, "", "")
}

/// Like [`agent_config`] with several endpoints, extra `[uplink]` keys and extra trailing sections.
pub fn agent_config_with(
    work: &Path,
    pki: &Pki,
    name: &str,
    endpoints: &[SocketAddr],
    interval: &str,
    uplink_extra: &str,
    tail: &str,
) -> PathBuf {
    let config = work.join(format!("agent-{name}.toml"));
    let endpoints: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    std::fs::write(
        &config,
        format!(
            "[agent]\nid = \"{name}\"\nstate_dir = \"{state}\"\n\
             [uplink]\nendpoints = [{endpoints}]\nserver_name = \"localhost\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"1s\"\n\
             ca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n{uplink_extra}\n\
             [collect]\ninterval = \"{interval}\"\n{tail}\n",
            endpoints = endpoints.join(", "),
            state = work.join(format!("agent-{name}-state")).display(),
            ca = pki.path("ca.pem").display(),
            cert = pki.path(&format!("{name}.pem")).display(),
            key = pki.path(&format!("{name}-key.pem")).display(),
        ),
    )
    .expect("write agent config");
    config
}

pub fn start_agent(work: &Path, name: &str, config: &Path) -> Process {
    Process::spawn(&format!("agent-{name}"), "herd-agent", &["--config", config.to_str().expect("utf-8")], work)
}

fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into()
}

/// GET `url`; `None` on a connection error.
pub fn http_get(url: &str) -> Option<(u16, String)> {
    let mut response = http_agent().get(url).call().ok()?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().ok()?;
    Some((status, body))
}

/// Percent-encodes a query parameter value.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Sample timestamps (ms) of the series selected by `selector` over the last `range`,
/// as one list per series (by its `instance` label).
pub fn sample_times(aggregator: &Aggregator, selector: &str, range: &str) -> Vec<i64> {
    let response = aggregator.query(&format!("{selector}[{range}]"));
    assert_eq!(response["data"]["resultType"], "matrix", "{response}");
    let result = response["data"]["result"].as_array().cloned().unwrap_or_default();
    assert!(result.len() <= 1, "expected one series: {response}");
    result
        .first()
        .and_then(|series| series["values"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|pair| pair[0].as_f64())
        .map(|seconds| (seconds * 1000.0).round() as i64)
        .collect()
}

/// (timestamp ms, value) of every sample of one series over the last 30 minutes.
pub fn series_samples(aggregator: &Aggregator, selector: &str) -> Vec<(i64, f64)> {
    let response = aggregator.query(&format!("{selector}[30m]"));
    let result = response["data"]["result"].as_array().cloned().unwrap_or_default();
    result
        .first()
        .and_then(|series| series["values"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|pair| Some(((pair[0].as_f64()? * 1000.0).round() as i64, pair[1].as_str()?.parse().ok()?)))
        .collect()
}

/// Whether `times` covers `from..=to` with no gap larger than `max_gap_ms`,
/// including at both ends (a missing head or tail is a gap too).
pub fn covers(times: &[i64], from: i64, to: i64, max_gap_ms: i64) -> bool {
    let window: Vec<i64> = times.iter().copied().filter(|&t| t >= from && t <= to).collect();
    match (window.first(), window.last()) {
        (Some(&first), Some(&last)) => {
            first - from <= max_gap_ms && to - last <= max_gap_ms && gaps(&window, max_gap_ms).is_empty()
        }
        _ => false,
    }
}

/// Gaps between consecutive timestamps larger than `max_gap_ms`, as (before, after).
pub fn gaps(times: &[i64], max_gap_ms: i64) -> Vec<(i64, i64)> {
    times.windows(2).filter(|w| w[1] - w[0] > max_gap_ms).map(|w| (w[0], w[1])).collect()
}

/// The `result` array of a successful vector query.
pub fn vector_result(response: &Json) -> Vec<Json> {
    assert_eq!(response["status"], "success", "{response}");
    assert_eq!(response["data"]["resultType"], "vector", "{response}");
    response["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// A tmpfs of `size` (e.g. "3m") mounted at `path`, unmounted on drop. Needs root.
pub struct TmpfsMount {
    path: PathBuf,
}

impl TmpfsMount {
    pub fn new(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).expect("create mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs at {} failed: this test needs root", path.display());
        Self { path: path.to_owned() }
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// The latest value of `selector` (a single series), if any.
pub fn latest_value(aggregator: &Aggregator, selector: &str) -> Option<f64> {
    vector_result(&aggregator.query(selector)).first().and_then(|s| s["value"][1].as_str()?.parse().ok())
}

/// A bearer token in a file (mode 0600) and the `[[http.tokens]]` entry
/// naming it, for an aggregator's config.
pub struct HttpToken {
    pub name: String,
    pub file: PathBuf,
    pub token: String,
}

impl HttpToken {
    pub fn create(work: &Path, name: &str, role: &str) -> (Self, String) {
        use std::os::unix::fs::PermissionsExt;
        let token = format!("{name}-{role}-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let file = work.join(format!("{name}.token"));
        std::fs::write(&file, &token).expect("write token file");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod token file");
        let toml =
            format!("[[http.tokens]]\nname = \"{name}\"\nrole = \"{role}\"\ntoken_file = \"{}\"\n", file.display());
        (Self { name: name.to_owned(), file, token }, toml)
    }

    pub fn file_arg(&self) -> &str {
        self.file.to_str().expect("utf-8 temp path")
    }
}

/// Runs `binary` with `args`; returns (success, stdout, stderr).
pub fn run_cli(binary: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(bin(binary)).args(args).output().unwrap_or_else(|e| panic!("run {binary}: {e}"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Sends `method url` with an optional bearer token and body; `None` on a connection error.
pub fn http_call(
    method: &str,
    url: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> Option<(u16, String)> {
    let agent = http_agent();
    let authorization = token.map(|t| format!("Bearer {t}"));
    let mut response = match method {
        "GET" => {
            let mut request = agent.get(url);
            if let Some(value) = &authorization {
                request = request.header("Authorization", value);
            }
            request.call().ok()?
        }
        "DELETE" => {
            let mut request = agent.delete(url);
            if let Some(value) = &authorization {
                request = request.header("Authorization", value);
            }
            request.call().ok()?
        }
        _ => {
            let mut request = agent.post(url).header("Content-Type", content_type);
            if let Some(value) = &authorization {
                request = request.header("Authorization", value);
            }
            request.send(body).ok()?
        }
    };
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    Some((status, text))
}

/// An HTTPS client trusting `ca_file`, presenting `client` (certificate and key files) if given.
pub fn https_agent(ca_file: &Path, client: Option<(&Path, &Path)>) -> ureq::Agent {
    let pem = std::fs::read(ca_file).expect("read CA file");
    let roots: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert.to_owned()),
            _ => None,
        })
        .collect();
    let mut tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .root_certs(ureq::tls::RootCerts::new_with_certs(&roots));
    if let Some((cert_file, key_file)) = client {
        let chain: Vec<ureq::tls::Certificate<'static>> =
            ureq::tls::parse_pem(&std::fs::read(cert_file).expect("read client certificate"))
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert.to_owned()),
                    _ => None,
                })
                .collect();
        let key = ureq::tls::PrivateKey::from_pem(&std::fs::read(key_file).expect("read client key"))
            .expect("client key")
            .to_owned();
        tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)));
    }
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .tls_config(tls.build())
        .build()
        .into()
}

/// GET `url` with `agent`, with an optional bearer token; `None` if it cannot connect (or TLS fails).
pub fn get_with(agent: &ureq::Agent, url: &str, token: Option<&str>) -> Option<(u16, String)> {
    let mut request = agent.get(url);
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let mut response = request.call().ok()?;
    let status = response.status().as_u16();
    Some((status, response.body_mut().read_to_string().unwrap_or_default()))
}

/// POST `fields` as an `application/x-www-form-urlencoded` body to `url`, as
/// Grafana and Prometheus clients send queries; `None` on a connection error.
pub fn http_post_form(url: &str, fields: &[(&str, &str)]) -> Option<(u16, String)> {
    let mut response = http_agent().post(url).send_form(fields.iter().copied()).ok()?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().ok()?;
    Some((status, body))
}
