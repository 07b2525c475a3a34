//! Differential test against a real Prometheus 2.42 (Debian's `prometheus`
//! package): the same generated samples are backfilled into Prometheus with
//! `promtool tsdb create-blocks-from openmetrics` and loaded into a
//! `MemStore`; then the same HTTP API requests go to both, and the JSON
//! results must agree (label sets, timestamps, values within 1e-9 relative).
//! The data holds the seed's metric families (host, PostgreSQL, application,
//! business) with realistic values, counter resets, histograms and targets
//! that go away, and the expressions include every one of the seed's rules
//! and dashboards.
//!
//! Needs `prometheus` and `promtool` on PATH (`apt-get install prometheus`).
//! Without them the test says so and passes, unless `HERD_REQUIRE_PEERS=1`.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use herd_aggregator::api::{ApiState, router};
use herd_aggregator::fleet::Fleet;
use herd_aggregator::ingest::IngestStats;
use herd_aggregator::promql::Engine;
use herd_aggregator::store::{MemStore, Sample, Storage};
use herd_common::metric::Labels;
use serde_json::Value as Json;
use tower::ServiceExt;

/// Three hours of data, scraped every 15 s with jitter.
const SPAN_MS: i64 = 3 * 3600 * 1000;
const SCRAPE_MS: i64 = 15_000;

type SeriesData = (Vec<(String, String)>, Vec<(i64, f64)>);

/// A small deterministic generator (PCG-style LCG), so both sides get the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

/// Scrape times of a target: every 15 s with up to ±375 ms of jitter, within
/// `[from, to)`. The jitter is a multiple of 125 ms: promtool reads OpenMetrics
/// timestamps as float seconds, and only binary fractions convert to exact milliseconds.
fn scrape_times(rng: &mut Rng, from: i64, to: i64) -> Vec<i64> {
    (0..SPAN_MS / SCRAPE_MS)
        .map(|i| i * SCRAPE_MS + (rng.below(7) as i64 - 3) * 125)
        .filter(|&t| t >= from.max(0) && t < to)
        .collect()
}

fn generate() -> Vec<SeriesData> {
    let mut rng = Rng(42);
    let mut out = Vec::new();
    for instance in ["i0", "i1", "i2", "i3"] {
        // i3 comes up after an hour and goes away after two.
        let (from, to) = if instance == "i3" { (3_600_000, 7_200_000) } else { (0, SPAN_MS) };
        let times = scrape_times(&mut rng, from, to);
        for code in ["200", "500"] {
            let mut value = rng.below(100) as f64;
            let reset_at = rng.below(times.len() as u64 * 2) as usize; // half of the series reset once
            let points = times
                .iter()
                .enumerate()
                .map(|(i, &t)| {
                    value = if i == reset_at { rng.below(3) as f64 } else { value + rng.below(25) as f64 };
                    (t, value)
                })
                .collect();
            out.push((
                labels(&[("__name__", "http_requests_total"), ("job", "api"), ("instance", instance), ("code", code)]),
                points,
            ));
        }
        let mut load = 1.0;
        let points = times
            .iter()
            // i1 misses scrapes for 20 minutes in the middle.
            .filter(|&&t| instance != "i1" || !(5_000_000..6_200_000).contains(&t))
            .map(|&t| {
                load += (rng.below(200) as f64 - 100.0) / 100.0;
                (t, load)
            })
            .collect();
        out.push((labels(&[("__name__", "node_load1"), ("job", "node"), ("instance", instance)]), points));
        let version = format!("1.{}.0", rng.below(3));
        out.push((
            labels(&[("__name__", "build_info"), ("job", "api"), ("instance", instance), ("version", &version)]),
            times.iter().map(|&t| (t, 1.0)).collect(),
        ));
    }
    // A classic histogram per instance: consistent cumulative buckets, sum and count.
    for instance in ["i0", "i1"] {
        let times = scrape_times(&mut rng, 0, SPAN_MS);
        let bounds = ["0.05", "0.1", "0.25", "1", "+Inf"];
        let mut counts = [0.0; 5];
        let mut sum = 0.0;
        let mut series: Vec<Vec<(i64, f64)>> = vec![Vec::new(); bounds.len() + 2];
        for &t in &times {
            for _ in 0..rng.below(20) {
                let bucket = rng.below(5) as usize;
                for count in &mut counts[bucket..] {
                    *count += 1.0;
                }
                sum += [0.03, 0.07, 0.2, 0.6, 3.0][bucket];
            }
            for (i, count) in counts.iter().enumerate() {
                series[i].push((t, *count));
            }
            series[bounds.len()].push((t, sum));
            series[bounds.len() + 1].push((t, counts[4]));
        }
        let mut series = series.into_iter();
        for le in bounds {
            let points = series.next().unwrap_or_default();
            out.push((
                labels(&[("__name__", "request_duration_seconds_bucket"), ("instance", instance), ("le", le)]),
                points,
            ));
        }
        out.push((
            labels(&[("__name__", "request_duration_seconds_sum"), ("instance", instance)]),
            series.next().unwrap_or_default(),
        ));
        out.push((
            labels(&[("__name__", "request_duration_seconds_count"), ("instance", instance)]),
            series.next().unwrap_or_default(),
        ));
    }
    // Odd values: NaN and infinities.
    let times = scrape_times(&mut rng, 0, SPAN_MS);
    let odd = times
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let value = match i % 97 {
                13 => f64::NAN,
                41 => f64::INFINITY,
                71 => f64::NEG_INFINITY,
                _ => (i % 11) as f64 - 5.0,
            };
            (t, value)
        })
        .collect();
    out.push((labels(&[("__name__", "odd_values"), ("instance", "i0")]), odd));
    seed_families(&mut rng, &mut out);
    out
}

/// A counter over `times`: increments below `step`, and a reset to a small
/// value at `reset_at` (an index past the end means none).
fn counter(rng: &mut Rng, times: &[i64], step: u64, reset_at: usize) -> Vec<(i64, f64)> {
    let mut value = rng.below(1000) as f64;
    let mut points = Vec::with_capacity(times.len());
    for (i, &t) in times.iter().enumerate() {
        value = if i == reset_at { rng.below(step) as f64 } else { value + rng.below(step) as f64 };
        points.push((t, value));
    }
    points
}

/// A gauge over `times` wandering around `base` by up to `spread`.
fn gauge(rng: &mut Rng, times: &[i64], base: f64, spread: f64) -> Vec<(i64, f64)> {
    times.iter().map(|&t| (t, base + spread * (rng.below(2001) as f64 - 1000.0) / 1000.0)).collect()
}

/// The metric families the seed's rules and dashboards use, with the label
/// sets Herd's agent and the seed's applications produce.
fn seed_families(rng: &mut Rng, out: &mut Vec<SeriesData>) {
    let no_reset = usize::MAX;
    for host in ["web-1", "db-1"] {
        // db-1 is down (no samples, up 0) from 1 h 40 min to 2 h.
        let times: Vec<i64> = scrape_times(rng, 0, SPAN_MS)
            .into_iter()
            .filter(|&t| host != "db-1" || !(6_000_000..7_200_000).contains(&t))
            .collect();
        let all = scrape_times(rng, 0, SPAN_MS);
        let node = |name: &str, extra: &[(&str, &str)]| {
            let mut pairs = vec![("__name__", name), ("job", "node"), ("instance", host)];
            pairs.extend_from_slice(extra);
            labels(&pairs)
        };
        for cpu in ["0", "1"] {
            for (mode, step) in [("idle", 15), ("user", 6), ("system", 3)] {
                let points = counter(rng, &times, step, no_reset);
                out.push((node("node_cpu_seconds_total", &[("cpu", cpu), ("mode", mode)]), points));
            }
        }
        let total = 8.0e9;
        out.push((node("node_memory_MemTotal_bytes", &[]), times.iter().map(|&t| (t, total)).collect()));
        out.push((node("node_memory_MemAvailable_bytes", &[]), gauge(rng, &times, 0.2 * total, 0.15 * total)));
        for (mountpoint, device, size) in [("/", "/dev/vda1", 1.0e11), ("/var/lib/postgresql", "/dev/vdb1", 5.0e11)] {
            let fs = [("device", device), ("fstype", "ext4"), ("mountpoint", mountpoint)];
            out.push((node("node_filesystem_size_bytes", &fs), times.iter().map(|&t| (t, size)).collect()));
            out.push((node("node_filesystem_avail_bytes", &fs), gauge(rng, &times, 0.1 * size, 0.08 * size)));
        }
        for device in ["vda", "vdb"] {
            // Seconds of I/O per second of wall time: 0.4 to 1.0 busy.
            let mut busy = 0.0;
            let points = times
                .iter()
                .map(|&t| {
                    busy += 15.0 * (0.4 + rng.below(600) as f64 / 1000.0);
                    (t, busy)
                })
                .collect();
            out.push((node("node_disk_io_time_seconds_total", &[("device", device)]), points));
        }
        let down = |t: i64| host == "db-1" && (6_000_000..7_200_000).contains(&t);
        out.push((
            labels(&[("__name__", "up"), ("job", "node-exporter"), ("instance", host)]),
            all.iter().map(|&t| (t, if down(t) { 0.0 } else { 1.0 })).collect(),
        ));
    }

    // PostgreSQL, with postgres_exporter's label sets.
    let times = scrape_times(rng, 0, SPAN_MS);
    let pg = |name: &str, extra: &[(&str, &str)]| {
        let mut pairs = vec![("__name__", name), ("job", "postgres"), ("instance", "db-1")];
        pairs.extend_from_slice(extra);
        labels(&pairs)
    };
    out.push((pg("pg_settings_max_connections", &[]), times.iter().map(|&t| (t, 100.0)).collect()));
    for (datid, datname) in [("16384", "smart_dairy"), ("5", "postgres")] {
        let db = [("datid", datid), ("datname", datname)];
        out.push((pg("pg_stat_database_numbackends", &db), gauge(rng, &times, 60.0, 35.0)));
        let reset = rng.below(times.len() as u64 * 2) as usize;
        out.push((pg("pg_stat_database_blks_hit", &db), counter(rng, &times, 900, reset)));
        out.push((pg("pg_stat_database_blks_read", &db), counter(rng, &times, 120, no_reset)));
    }
    out.push((pg("pg_replication_lag_seconds", &[]), gauge(rng, &times, 25.0, 20.0)));
    for queryid in ["101", "202", "303"] {
        let statement = [("datname", "smart_dairy"), ("queryid", queryid), ("user", "app")];
        out.push((pg("pg_stat_statements_calls_total", &statement), counter(rng, &times, 3000, no_reset)));
        out.push((pg("pg_stat_statements_mean_exec_time_ms", &statement), gauge(rng, &times, 450.0, 300.0)));
    }

    // The application: requests, latency histogram, business and security counters.
    for (service, instance) in [("api", "app-1:8000"), ("web", "app-2:8000")] {
        let times = scrape_times(rng, 0, SPAN_MS);
        let app = |name: &str, extra: &[(&str, &str)]| {
            let mut pairs = vec![("__name__", name), ("job", "smart-dairy-api"), ("instance", instance)];
            pairs.extend_from_slice(extra);
            labels(&pairs)
        };
        out.push((
            app("up", &[]),
            times.iter().map(|&t| (t, if t > 9_000_000 && service == "web" { 0.0 } else { 1.0 })).collect(),
        ));
        for (status, step) in [("200", 400), ("404", 20), ("500", 30), ("503", 10)] {
            let reset = if status == "200" { times.len() / 2 } else { no_reset };
            let points = counter(rng, &times, step, reset);
            out.push((app("http_requests_total", &[("service", service), ("status", status)]), points));
        }
        let bounds = ["0.1", "0.5", "1", "2", "5", "+Inf"];
        let mut counts = [0.0; 6];
        let mut buckets: Vec<Vec<(i64, f64)>> = vec![Vec::new(); bounds.len()];
        for &t in &times {
            for _ in 0..rng.below(40) {
                let bucket = rng.below(6) as usize;
                for count in &mut counts[bucket..] {
                    *count += 1.0;
                }
            }
            for (i, count) in counts.iter().enumerate() {
                buckets[i].push((t, *count));
            }
        }
        for (le, points) in bounds.iter().zip(buckets) {
            out.push((app("http_request_duration_seconds_bucket", &[("service", service), ("le", le)]), points));
        }
        for (name, step) in [
            ("auth_login_failures_total", 400),
            ("auth_account_lockouts_total", 150),
            ("authz_access_denied_total", 700),
        ] {
            out.push((app(name, &[]), counter(rng, &times, step, no_reset)));
        }
    }
    let times = scrape_times(rng, 0, SPAN_MS);
    let business = |name: &str, extra: &[(&str, &str)]| {
        let mut pairs = vec![("__name__", name), ("job", "smart-dairy-business"), ("instance", "app-1:8000")];
        pairs.extend_from_slice(extra);
        labels(&pairs)
    };
    for order_type in ["subscription", "one_time"] {
        for (status, step) in [("created", 12), ("cancelled", 2)] {
            let points = counter(rng, &times, step, no_reset);
            out.push((business("smart_dairy_orders_total", &[("order_type", order_type), ("status", status)]), points));
        }
        out.push((
            business("smart_dairy_order_value_bdt_sum", &[("order_type", order_type)]),
            counter(rng, &times, 9000, no_reset),
        ));
    }
    for gateway in ["bkash", "nagad", "card"] {
        for (status, step) in [("success", 30), ("failed", 5)] {
            let points = counter(rng, &times, step, no_reset);
            out.push((business("smart_dairy_payments_total", &[("gateway", gateway), ("status", status)]), points));
        }
    }
    for window in ["1h", "24h"] {
        out.push((business("smart_dairy_active_users", &[("time_window", window)]), gauge(rng, &times, 1500.0, 500.0)));
    }
    for stage in ["visit", "cart", "checkout", "paid"] {
        out.push((business("smart_dairy_conversion_funnel", &[("stage", stage)]), gauge(rng, &times, 400.0, 300.0)));
    }
    for product_id in 1..=14 {
        // A product-specific fraction per scrape: no two products tie, since
        // among exact ties Prometheus's topk in range queries picks by map order.
        let fraction = 0.37 * product_id as f64;
        let points = counter(rng, &times, 50, no_reset).into_iter().enumerate();
        let points = points.map(|(i, (t, v))| (t, v + fraction * i as f64)).collect();
        let product_id = product_id.to_string();
        out.push((business("smart_dairy_product_views_total", &[("product_id", &product_id)]), points));
    }
}

fn openmetrics(series: &[SeriesData]) -> String {
    let mut lines: Vec<(i64, String)> = Vec::new();
    for (labels, points) in series {
        let name = &labels.iter().find(|(n, _)| n == "__name__").expect("every series has a name").1;
        let rest: Vec<String> = labels
            .iter()
            .filter(|(n, _)| n != "__name__")
            .map(|(n, v)| format!("{n}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect();
        for &(t, value) in points {
            let value = if value.is_nan() {
                "NaN".to_owned()
            } else if value.is_infinite() {
                if value > 0.0 { "+Inf".to_owned() } else { "-Inf".to_owned() }
            } else {
                value.to_string()
            };
            lines.push((t, format!("{name}{{{}}} {value} {}.{:03}", rest.join(","), t / 1000, t % 1000)));
        }
    }
    lines.sort_by_key(|(t, _)| *t);
    let mut text: String = lines.into_iter().map(|(_, line)| line + "\n").collect();
    text.push_str("# EOF\n");
    text
}

/// A Prometheus 2.42 serving the generated data; killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn on_path(binary: &str) -> bool {
    Command::new(binary).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

fn start_prometheus(series: &[SeriesData]) -> Prometheus {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("data.om");
    std::fs::write(&input, openmetrics(series)).expect("write OpenMetrics");
    let data = dir.path().join("data");
    let backfill = Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(&data)
        .output()
        .expect("run promtool");
    assert!(backfill.status.success(), "promtool failed: {}", String::from_utf8_lossy(&backfill.stderr));
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, "global: {}\n").expect("write config");
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--storage.tsdb.retention.time=100y")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    let prometheus = Prometheus { child, url: format!("http://127.0.0.1:{port}"), _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(30);
    while ureq::get(&format!("{}/-/ready", prometheus.url)).call().is_err() {
        assert!(Instant::now() < deadline, "prometheus not ready within 30 s: {}", log_of(&prometheus));
        std::thread::sleep(Duration::from_millis(100));
    }
    prometheus
}

fn log_of(prometheus: &Prometheus) -> String {
    std::fs::read_to_string(prometheus._dir.path().join("prometheus.log")).unwrap_or_default()
}

fn herd_state(series: &[SeriesData]) -> Arc<ApiState> {
    let store = Arc::new(MemStore::new());
    for (pairs, points) in series {
        let series = store.series_ref(&Labels::from_pairs(pairs.iter().cloned()));
        for &(timestamp_ms, value) in points {
            store.append(series, Sample { timestamp_ms, value }).expect("generated samples are in order");
        }
    }
    let engine = Engine::new(Arc::clone(&store) as Arc<dyn Storage>, Duration::from_secs(300), usize::MAX);
    Arc::new(ApiState::new(
        engine,
        store,
        Arc::new(Fleet::new()),
        Arc::new(IngestStats::default()),
        Arc::new(AtomicBool::new(true)),
    ))
}

fn get_prometheus(prometheus: &Prometheus, path_and_query: &str) -> (u16, Json) {
    let url = format!("{}{path_and_query}", prometheus.url);
    let config = ureq::Agent::config_builder().http_status_as_error(false).build();
    let agent: ureq::Agent = config.into();
    let mut response = agent.get(&url).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&body).unwrap_or(Json::String(body)))
}

fn get_herd(runtime: &tokio::runtime::Runtime, state: &Arc<ApiState>, path_and_query: &str) -> (u16, Json) {
    runtime.block_on(async {
        let request = Request::get(path_and_query).body(Body::empty()).expect("valid request");
        let response = router(Arc::clone(state)).oneshot(request).await.expect("router answers");
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 64 << 20).await.expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Json::Null))
    })
}

fn value_of(text: &Json) -> f64 {
    match text.as_str().unwrap_or("") {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().unwrap_or(f64::NAN),
    }
}

fn almost_equal(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() / (a.abs() + b.abs()) < 1e-9 || (a - b).abs() < 1e-12
}

fn points(json: &Json) -> Vec<(f64, f64)> {
    let pairs = match json.get("values") {
        Some(values) => values.as_array().cloned().unwrap_or_default(),
        None => json.get("value").map(|v| vec![v.clone()]).unwrap_or_default(),
    };
    pairs.iter().map(|p| (p[0].as_f64().unwrap_or(f64::NAN), value_of(&p[1]))).collect()
}

/// Describes how Herd's answer differs from Prometheus's, if it does.
fn difference(prometheus: &(u16, Json), herd: &(u16, Json)) -> Option<String> {
    let ((p_status, p), (h_status, h)) = (prometheus, herd);
    if p_status != h_status {
        return Some(format!("status {h_status} instead of {p_status}: herd {h} / prometheus {p}"));
    }
    if p["status"] == "error" {
        return (p["errorType"] != h["errorType"])
            .then(|| format!("errorType {} instead of {}", h["errorType"], p["errorType"]));
    }
    let (p, h) = (&p["data"], &h["data"]);
    if let (Some(p_list), Some(h_list)) = (p.as_array(), h.as_array()) {
        // series, labels, label values: same members, in the same order.
        return (p_list != h_list).then(|| format!("{h} instead of {p}"));
    }
    if p["resultType"] != h["resultType"] {
        return Some(format!("resultType {} instead of {}", h["resultType"], p["resultType"]));
    }
    match p["resultType"].as_str() {
        Some("scalar" | "string") => {
            let (pv, hv) = (&p["result"], &h["result"]);
            let same = pv[0] == hv[0] && (pv[1] == hv[1] || almost_equal(value_of(&pv[1]), value_of(&hv[1])));
            (!same).then(|| format!("{hv} instead of {pv}"))
        }
        _ => {
            let by_labels = |result: &Json| -> BTreeMap<String, Vec<(f64, f64)>> {
                result
                    .as_array()
                    .map(|series| series.iter().map(|s| (s["metric"].to_string(), points(s))).collect())
                    .unwrap_or_default()
            };
            let (p_series, h_series) = (by_labels(&p["result"]), by_labels(&h["result"]));
            let p_keys: Vec<&String> = p_series.keys().collect();
            let h_keys: Vec<&String> = h_series.keys().collect();
            if p_keys != h_keys {
                return Some(format!("series {h_keys:?} instead of {p_keys:?}"));
            }
            for (key, p_points) in &p_series {
                let h_points = &h_series[key];
                let same = p_points.len() == h_points.len()
                    && p_points.iter().zip(h_points).all(|(a, b)| a.0 == b.0 && almost_equal(a.1, b.1));
                if !same {
                    let first = p_points.iter().zip(h_points).find(|(a, b)| !(a.0 == b.0 && almost_equal(a.1, b.1)));
                    return Some(format!(
                        "{key}: {} points instead of {}; first difference (t, herd) vs (t, prometheus): {:?}",
                        h_points.len(),
                        p_points.len(),
                        first.map(|(p, h)| (h, p))
                    ));
                }
            }
            None
        }
    }
}

const EXPRESSIONS: &[&str] = &[
    // Selectors, matchers, offset, @.
    "http_requests_total",
    r#"http_requests_total{code!="200",instance=~"i[01]"}"#,
    r#"{__name__=~"node_.*|build_info",instance!~"i3"}"#,
    "node_load1 offset 10m",
    "node_load1 offset -5m",
    "node_load1 @ 3600",
    "node_load1 @ end() - node_load1 @ start()",
    "odd_values",
    // Range functions.
    "rate(http_requests_total[5m])",
    "rate(http_requests_total[1m])",
    "irate(http_requests_total[5m])",
    "increase(http_requests_total[10m] offset 3m)",
    "delta(node_load1[10m])",
    "idelta(node_load1[2m])",
    "deriv(node_load1[10m])",
    "predict_linear(node_load1[15m], 600)",
    "holt_winters(node_load1[10m], 0.3, 0.6)",
    "changes(node_load1[10m])",
    "resets(http_requests_total[30m])",
    "avg_over_time(node_load1[7m])",
    "min_over_time(odd_values[10m])",
    "max_over_time(odd_values[10m])",
    "sum_over_time(odd_values[3m])",
    "count_over_time(node_load1[5m])",
    "last_over_time(node_load1[5m])",
    "present_over_time(node_load1[1m])",
    "stddev_over_time(node_load1[10m])",
    "stdvar_over_time(node_load1[10m])",
    "quantile_over_time(0.9, node_load1[10m])",
    r#"absent_over_time(node_load1{instance="i1"}[1m])"#,
    r#"absent(node_load1{instance="i9",job="node"})"#,
    r#"absent(node_load1{instance="i0"})"#,
    // Aggregations.
    "sum by (code) (rate(http_requests_total[5m]))",
    "sum without (instance) (rate(http_requests_total[5m]))",
    "avg(node_load1)",
    "min by (job) (node_load1)",
    "max(odd_values)",
    "count by (version) (build_info)",
    "group by (instance) (build_info)",
    "stddev(node_load1)",
    "stdvar by (job) (node_load1)",
    "topk(2, node_load1)",
    "bottomk by (code) (1, rate(http_requests_total[5m]))",
    "quantile(0.75, node_load1)",
    r#"count_values("value", round(node_load1))"#,
    // Binary operators and vector matching.
    "node_load1 * 2 - 1",
    "2 ^ node_load1",
    "node_load1 % 0.7",
    "node_load1 > 1",
    "node_load1 > bool 1",
    "1 < node_load1",
    "rate(http_requests_total[5m]) / on(instance) group_left sum by (instance) (rate(http_requests_total[5m]))",
    "build_info * on(instance) group_right(version) node_load1",
    r#"rate(http_requests_total{code="500"}[5m]) / ignoring(code) rate(http_requests_total{code="200"}[5m])"#,
    "node_load1 and on(instance) build_info",
    r#"node_load1 unless on(instance) build_info{version="1.0.0"}"#,
    r#"node_load1 or on(instance) http_requests_total{code="200"}"#,
    "node_load1 atan2 2",
    "(1 + 2) * 3 - time() / 1000",
    // Subqueries.
    "max_over_time(rate(http_requests_total[5m])[30m:1m])",
    "avg_over_time(node_load1[10m:])",
    "min_over_time(node_load1[20m:2m] offset 5m)",
    "sum_over_time(vector(time())[5m:1m] @ 3600)",
    // Histograms.
    "histogram_quantile(0.9, rate(request_duration_seconds_bucket[5m]))",
    "histogram_quantile(0.5, sum by (le) (rate(request_duration_seconds_bucket[10m])))",
    "rate(request_duration_seconds_sum[5m]) / rate(request_duration_seconds_count[5m])",
    // Other functions.
    r#"label_replace(node_load1, "host", "$1-x", "instance", "i(.*)")"#,
    r#"label_join(build_info, "id", "/", "instance", "version")"#,
    "abs(node_load1)",
    "ceil(node_load1)",
    "floor(node_load1)",
    "round(node_load1, 0.5)",
    "clamp(node_load1, 0, 2)",
    "clamp_min(node_load1, 1)",
    "clamp_max(node_load1, 1)",
    "exp(node_load1)",
    "ln(abs(node_load1))",
    "log2(abs(node_load1))",
    "log10(abs(node_load1))",
    "sqrt(abs(node_load1))",
    "sgn(odd_values)",
    "sin(node_load1) + cos(node_load1) - tan(node_load1)",
    "deg(node_load1) + rad(node_load1)",
    "scalar(sum(node_load1))",
    "vector(scalar(node_load1))",
    "timestamp(node_load1)",
    "hour(timestamp(node_load1)) + minute() + day_of_week() + day_of_month() + days_in_month() + month() + year() + day_of_year()",
    "sort(node_load1)",
    "sort_desc(node_load1)",
    // Edge cases: NaN and infinities, @ in range queries, nesting.
    "-node_load1",
    "node_load1 != node_load1",
    "sum(odd_values)",
    "avg(odd_values)",
    "stddev(odd_values)",
    "quantile(0.5, odd_values)",
    "topk(2, odd_values)",
    "odd_values > bool 0",
    "changes(odd_values[10m])",
    "resets(odd_values[10m])",
    "avg_over_time(odd_values[10m])",
    "delta(odd_values[5m])",
    "deriv(odd_values[10m])",
    "holt_winters(odd_values[10m], 0.5, 0.5)",
    r#"count_values without (instance) ("v", build_info)"#,
    "topk without (code) (1, http_requests_total)",
    "quantile by (job) (0.5, rate(http_requests_total[5m]))",
    "http_requests_total offset 1h @ 5400",
    "rate(http_requests_total[5m] @ 3600)",
    "sum_over_time(node_load1[1h:5m] @ end())",
    "timestamp(node_load1 offset 5m)",
    "absent_over_time(nonexistent[5m])",
    "scalar(node_load1)",
    "predict_linear(node_load1[10m] offset 1h, 3600)",
    "increase(http_requests_total[90s])",
    "rate(http_requests_total[5m:30s])",
    "sort_desc(sum by (instance) (rate(http_requests_total[5m])))",
    "round(rate(http_requests_total[5m]), 0.1)",
    r#"label_replace(node_load1, "x", "$1", "instance", "nomatch(.*)")"#,
    "sum by (le) (request_duration_seconds_bucket)",
    "count(http_requests_total) by (instance) > 1",
    "max_over_time((node_load1 > 1)[10m:1m])",
    "avg_over_time(max_over_time(node_load1[5m:1m])[20m:5m])",
    "histogram_quantile(0.99, rate(request_duration_seconds_bucket[1m]))",
    // Every expression of the seed's rule files (../shared/rules/seed/) and of its
    // dashboards and guide (../shared/seed/monitoring-setup-guide.md), verbatim.
    r#"(1 - (node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes)) * 100"#,
    r#"(1 - (node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes)) * 100 > 90"#,
    r#"100 - (avg by(instance) (rate(node_cpu_seconds_total{mode='idle'}[5m])) * 100)"#,
    r#"100 - (avg by(instance) (rate(node_cpu_seconds_total{mode="idle"}[5m])) * 100)"#,
    r#"100 - (avg by(instance) (rate(node_cpu_seconds_total{mode="idle"}[5m])) * 100) > 90"#,
    r#"(node_filesystem_avail_bytes / node_filesystem_size_bytes) * 100 < 10"#,
    r#"rate(node_disk_io_time_seconds_total[5m]) > 0.8"#,
    r#"up{job="node-exporter"} == 0"#,
    r#"up{job="smart-dairy-api"} == 0"#,
    r#"pg_stat_database_numbackends"#,
    r#"(pg_stat_database_numbackends / pg_settings_max_connections) * 100 > 90"#,
    r#"pg_replication_lag_seconds > 30"#,
    r#"pg_stat_database_blks_hit / (pg_stat_database_blks_hit + pg_stat_database_blks_read) * 100 < 90"#,
    r#"rate(pg_stat_statements_calls_total[5m]) > 100 and pg_stat_statements_mean_exec_time_ms > 500"#,
    r#"histogram_quantile(0.95, rate(http_request_duration_seconds_bucket[5m]))"#,
    r#"histogram_quantile(0.95, rate(http_request_duration_seconds_bucket[5m])) > 2"#,
    r#"sum(rate(http_requests_total[5m])) by (service)"#,
    r#"sum(rate(http_requests_total[5m])) by (service) < 10"#,
    r#"sum(rate(http_requests_total{status=~'5..'}[5m])) by (service) / sum(rate(http_requests_total[5m])) by (service) * 100"#,
    r#"sum(rate(http_requests_total{status=~"5.."}[5m])) by (service) / sum(rate(http_requests_total[5m])) by (service) * 100 > 5"#,
    r#"rate(auth_login_failures_total[5m]) > 10"#,
    r#"rate(auth_account_lockouts_total[5m]) > 5"#,
    r#"rate(authz_access_denied_total[5m]) > 20"#,
    r#"rate(smart_dairy_orders_total[10m]) < 0.5"#,
    r#"sum(rate(smart_dairy_orders_total[5m])) by (order_type)"#,
    r#"sum(rate(smart_dairy_orders_total{status='created'}[5m])) by (order_type)"#,
    r#"sum(increase(smart_dairy_orders_total{status='created'}[24h]))"#,
    r#"sum(rate(smart_dairy_order_value_bdt_sum[5m])) by (order_type)"#,
    r#"sum(increase(smart_dairy_order_value_bdt_sum[24h]))"#,
    r#"sum(increase(smart_dairy_payments_total[24h])) by (gateway)"#,
    r#"sum(increase(smart_dairy_payments_total{status='success'}[1h])) / sum(increase(smart_dairy_payments_total[1h])) * 100"#,
    r#"sum(increase(smart_dairy_payments_total{status='success'}[10m])) / sum(increase(smart_dairy_payments_total[10m])) * 100 < 95"#,
    r#"sum(increase(smart_dairy_payments_total{status='failed'}[5m])) by (gateway) / sum(increase(smart_dairy_payments_total[5m])) by (gateway) * 100 > 10"#,
    r#"smart_dairy_active_users{time_window='24h'}"#,
    r#"smart_dairy_conversion_funnel"#,
    r#"topk(10, sum(increase(smart_dairy_product_views_total[24h])) by (product_id))"#,
    // The seed's connection ratio as it works with postgres_exporter's labels.
    r#"max by (instance) (pg_stat_database_numbackends) / ignoring(datid, datname) group_left sum by (instance) (pg_settings_max_connections) * 100"#,
    r#"sum by (instance) (pg_stat_database_numbackends) / on(instance) pg_settings_max_connections * 100 > 90"#,
    // Range vectors (instant queries only; as range queries they are errors on both sides).
    "node_load1[2m]",
    "http_requests_total[1m] offset 30s",
    "rate(http_requests_total[5m])[10m:1m]",
    "node_load1[5m:2m] @ 3600",
    // Errors must have the same type.
    "rate(node_load1)",
    "holt_winters(node_load1[10m], 2, 0.5)",
    "topk(NaN, node_load1)",
    "node_load1 + on() node_load1",
    "sum(",
    r#"label_replace(node_load1, "1x", "", "", "")"#,
];

#[test]
fn herd_answers_like_prometheus_2_42() {
    if !(on_path("prometheus") && on_path("promtool")) {
        let message = "prometheus and promtool are not on PATH (apt-get install prometheus): differential test not run";
        assert!(std::env::var("HERD_REQUIRE_PEERS").is_err(), "{message}");
        eprintln!("{message}");
        return;
    }
    let series = generate();
    let prometheus = start_prometheus(&series);
    let herd = herd_state(&series);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let encode = |text: &str| form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
    let mut requests = Vec::new();
    for expr in EXPRESSIONS {
        for time in ["1800", "3600.5", "5432.123", "7199", "10799", "11050"] {
            requests.push(format!("/api/v1/query?query={}&time={time}", encode(expr)));
        }
        for (start, end, step) in [("0", "10800", "60"), ("123.4", "9000", "37"), ("3000", "8000", "900")] {
            requests.push(format!("/api/v1/query_range?query={}&start={start}&end={end}&step={step}", encode(expr)));
        }
    }
    for selector in [r#"node_load1{instance=~"i[12]"}"#, "build_info", r#"{job="api"}"#] {
        requests.push(format!("/api/v1/series?match[]={}", encode(selector)));
        requests.push(format!("/api/v1/labels?match[]={}", encode(selector)));
        requests.push(format!("/api/v1/label/instance/values?match[]={}", encode(selector)));
    }
    requests.extend(["/api/v1/labels".to_owned(), "/api/v1/label/__name__/values".to_owned()]);
    let mut differences = Vec::new();
    let (mut non_empty, mut errors) = (0, 0);
    for request in &requests {
        let expected = get_prometheus(&prometheus, request);
        let got = get_herd(&runtime, &herd, request);
        match &expected.1["data"] {
            data if data["result"].as_array().is_some_and(|r| !r.is_empty()) => non_empty += 1,
            data if data.as_array().is_some_and(|r| !r.is_empty()) => non_empty += 1,
            data if data["resultType"] == "scalar" => non_empty += 1,
            _ if expected.0 != 200 => errors += 1,
            _ => {}
        }
        if let Some(difference) = difference(&expected, &got) {
            differences.push(format!("{request}\n    {difference}"));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} requests differ from Prometheus:\n{}",
        differences.len(),
        requests.len(),
        differences.join("\n")
    );
    // The comparison means something only if most answers have data.
    assert!(non_empty * 10 > requests.len() * 8, "only {non_empty} of {} answers have data", requests.len());
    assert!(errors >= 6, "only {errors} error answers compared");
}

/// The comparison above covers every alert expression of the seed's rule files.
#[test]
fn every_seed_rule_expression_is_compared() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/rules/seed");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let file: serde_norway::Value = serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for group in file["groups"].as_sequence().unwrap() {
            for rule in group["rules"].as_sequence().unwrap() {
                let expr = rule["expr"].as_str().unwrap().trim();
                assert!(EXPRESSIONS.contains(&expr), "{}: {expr:?} is not in EXPRESSIONS", path.display());
                checked += 1;
            }
        }
    }
    assert!(checked >= 19, "only {checked} seed rules found in {}", dir.display());
}
