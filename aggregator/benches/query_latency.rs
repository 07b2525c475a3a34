//! Query latency of the seed's dashboard expressions, Herd next to a real
//! Prometheus (Debian's `prometheus` 2.42) holding the same data, in one run.
//!
//! ```text
//! cargo bench -p herd-aggregator --bench query_latency -- [SERIES...]
//! ```
//!
//! For each size (default 10000 and 100000 series) it generates 24 hours of
//! samples every 60 s for hosts of 100 series each (node, application,
//! PostgreSQL and business families, the label sets Herd's agent produces),
//! appends them to Herd's durable store (cut into 2-hour blocks and
//! compacted, as the aggregator does) and backfills them into a fresh Prometheus
//! with `promtool tsdb create-blocks-from openmetrics`. Then both answer the
//! same `query_range` requests over HTTP (1 h at a 15 s step, 24 h at 120 s,
//! as Grafana asks for them), one warm-up and then the median of five runs
//! each, alternating; it prints a line per query and the geometric mean of
//! the ratios. Herd's API runs in this process on a loopback port.

use std::io::{BufWriter, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herd_aggregator::api::{ApiState, router};
use herd_aggregator::fleet::Fleet;
use herd_aggregator::ingest::IngestStats;
use herd_aggregator::promql::Engine;
use herd_aggregator::store::db::{Db, DbOptions};
use herd_aggregator::store::{Sample, SeriesRef, Storage};
use herd_common::metric::Labels;

const SERIES_PER_HOST: usize = 100;
const SPAN_MS: i64 = 24 * 3600 * 1000;
const INTERVAL_MS: i64 = 60_000;
const RUNS: usize = 5;

/// The seed's dashboard expressions (../shared/seed/monitoring-setup-guide.md).
const EXPRESSIONS: &[&str] = &[
    "100 - (avg by(instance) (rate(node_cpu_seconds_total{mode='idle'}[5m])) * 100)",
    "(1 - (node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes)) * 100",
    "sum(rate(http_requests_total[5m])) by (service)",
    "sum(rate(http_requests_total{status=~'5..'}[5m])) by (service) / sum(rate(http_requests_total[5m])) by (service) * 100",
    "histogram_quantile(0.95, rate(http_request_duration_seconds_bucket[5m]))",
    "pg_stat_database_numbackends",
    "sum(rate(smart_dairy_orders_total[5m])) by (order_type)",
    "sum(rate(smart_dairy_orders_total{status='created'}[5m])) by (order_type)",
    "sum(increase(smart_dairy_orders_total{status='created'}[24h]))",
    "sum(increase(smart_dairy_payments_total[24h])) by (gateway)",
    "sum(increase(smart_dairy_payments_total{status='success'}[1h])) / sum(increase(smart_dairy_payments_total[1h])) * 100",
    "topk(10, sum(increase(smart_dairy_product_views_total[24h])) by (product_id))",
];

/// How one series' value moves.
#[derive(Clone, Copy)]
enum Shape {
    /// Grows by up to `step` per interval.
    Counter {
        step: f64,
    },
    /// Wanders around `base` by up to `spread`.
    Gauge {
        base: f64,
        spread: f64,
    },
    Constant(f64),
}

struct Series {
    name: &'static str,
    labels: Vec<(&'static str, String)>,
    shape: Shape,
}

/// The 100 series of one host.
fn host_series(host: usize, out: &mut Vec<Series>) {
    let instance = format!("host-{host:05}:9100");
    let series = |name: &'static str, extra: &[(&'static str, String)], shape: Shape| {
        let mut labels = vec![("job", "node".to_owned()), ("instance", instance.clone())];
        labels.extend_from_slice(extra);
        Series { name, labels, shape }
    };
    let start = out.len();
    for cpu in 0..4 {
        for (mode, step) in [
            ("idle", 50.0),
            ("user", 6.0),
            ("system", 3.0),
            ("iowait", 1.0),
            ("irq", 0.1),
            ("softirq", 0.2),
            ("nice", 0.05),
            ("steal", 0.01),
        ] {
            let labels = [("cpu", cpu.to_string()), ("mode", mode.to_owned())];
            out.push(series("node_cpu_seconds_total", &labels, Shape::Counter { step }));
        }
    }
    out.push(series("node_memory_MemTotal_bytes", &[], Shape::Constant(8.0e9)));
    out.push(series("node_memory_MemAvailable_bytes", &[], Shape::Gauge { base: 3.0e9, spread: 1.0e9 }));
    for mountpoint in ["/", "/var", "/data"] {
        let labels = [("mountpoint", mountpoint.to_owned()), ("fstype", "ext4".to_owned())];
        out.push(series("node_filesystem_size_bytes", &labels, Shape::Constant(1.0e11)));
        out.push(series("node_filesystem_avail_bytes", &labels, Shape::Gauge { base: 4.0e10, spread: 1.0e10 }));
    }
    for device in ["vda", "vdb"] {
        out.push(series(
            "node_disk_io_time_seconds_total",
            &[("device", device.to_owned())],
            Shape::Counter { step: 20.0 },
        ));
    }
    out.push(series("up", &[], Shape::Constant(1.0)));
    for service in ["api", "web", "worker"] {
        for (status, step) in [("200", 900.0), ("404", 20.0), ("500", 10.0), ("503", 5.0)] {
            let labels = [("service", service.to_owned()), ("status", status.to_owned())];
            out.push(series("http_requests_total", &labels, Shape::Counter { step }));
        }
        for (i, le) in ["0.05", "0.1", "0.25", "0.5", "1", "2", "5", "+Inf"].iter().enumerate() {
            let labels = [("service", service.to_owned()), ("le", (*le).to_owned())];
            out.push(series(
                "http_request_duration_seconds_bucket",
                &labels,
                Shape::Counter { step: 100.0 * (i + 1) as f64 },
            ));
        }
    }
    for datname in ["smart_dairy", "postgres", "analytics"] {
        let labels = [("datname", datname.to_owned())];
        out.push(series("pg_stat_database_numbackends", &labels, Shape::Gauge { base: 40.0, spread: 30.0 }));
    }
    for order_type in ["subscription", "one_time"] {
        for status in ["created", "delivered", "cancelled"] {
            let labels = [("order_type", order_type.to_owned()), ("status", status.to_owned())];
            out.push(series("smart_dairy_orders_total", &labels, Shape::Counter { step: 6.0 }));
        }
    }
    for gateway in ["bkash", "nagad", "card"] {
        for status in ["success", "failed"] {
            let labels = [("gateway", gateway.to_owned()), ("status", status.to_owned())];
            out.push(series("smart_dairy_payments_total", &labels, Shape::Counter { step: 8.0 }));
        }
    }
    // Fill up to 100 with product views.
    let mut product = 0;
    while out.len() - start < SERIES_PER_HOST {
        product += 1;
        let labels = [("product_id", product.to_string())];
        out.push(series("smart_dairy_product_views_total", &labels, Shape::Counter { step: 30.0 }));
    }
}

/// A deterministic generator so that both sides get the same values.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Writes every sample both into Herd's store and, as OpenMetrics, to
/// `text`. The store cuts its head into blocks as the aggregator's
/// maintenance does (every block span), and compacts them at the end.
fn generate(series: &[Series], end_ms: i64, store: &Db, text: &mut impl Write) -> std::io::Result<u64> {
    let refs: Vec<SeriesRef> = series
        .iter()
        .map(|s| {
            let pairs = std::iter::once(("__name__", s.name)).chain(s.labels.iter().map(|(n, v)| (*n, v.as_str())));
            store.series_ref(&Labels::from_pairs(pairs))
        })
        .collect();
    let rendered: Vec<String> = series
        .iter()
        .map(|s| {
            let labels: Vec<String> = s.labels.iter().map(|(n, v)| format!("{n}=\"{v}\"")).collect();
            format!("{}{{{}}}", s.name, labels.join(","))
        })
        .collect();
    let mut values: Vec<f64> = vec![0.0; series.len()];
    let mut rng = Rng(7);
    let mut samples = 0;
    let mut t = end_ms - SPAN_MS;
    while t <= end_ms {
        for (i, s) in series.iter().enumerate() {
            let value = match s.shape {
                Shape::Counter { step } => values[i] + step * rng.unit(),
                Shape::Gauge { base, spread } => base + spread * (2.0 * rng.unit() - 1.0),
                Shape::Constant(value) => value,
            };
            values[i] = value;
            store.append(refs[i], Sample { timestamp_ms: t, value }).expect("in order");
            writeln!(text, "{} {value} {}.{:03}", rendered[i], t / 1000, t % 1000)?;
            samples += 1;
        }
        if let Some(before) = store.due_cut() {
            store.cut(before).expect("block written");
        }
        t += INTERVAL_MS;
    }
    while store.compact().expect("compaction") > 0 {}
    writeln!(text, "# EOF")?;
    Ok(samples)
}

struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn start_prometheus(dir: &std::path::Path, openmetrics: &std::path::Path) -> Prometheus {
    let data = dir.join("data");
    let started = Instant::now();
    let status = Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(openmetrics)
        .arg(&data)
        .stdout(Stdio::null())
        .status()
        .expect("promtool runs (apt-get install prometheus)");
    assert!(status.success(), "promtool failed");
    eprintln!("  promtool backfill: {:.1} s", started.elapsed().as_secs_f64());
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 1m\n").expect("write config");
    let port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg("--storage.tsdb.retention.time=30d")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("prometheus runs (apt-get install prometheus)");
    let prometheus = Prometheus { child, url: format!("http://127.0.0.1:{port}") };
    let deadline = Instant::now() + Duration::from_secs(300);
    while get(&format!("{}/-/ready", prometheus.url)).map(|(s, _)| s) != Some(200) {
        assert!(Instant::now() < deadline, "prometheus not ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    prometheus
}

fn get(url: &str) -> Option<(u16, String)> {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build();
    let agent: ureq::Agent = config.into();
    let mut response = agent.get(url).call().ok()?;
    let status = response.status().as_u16();
    let body = response.body_mut().with_config().limit(1 << 30).read_to_string().ok()?;
    Some((status, body))
}

/// Runs one request; returns its duration and a short description of the answer.
fn timed(url: &str) -> (Duration, String) {
    let started = Instant::now();
    let (status, body) = get(url).unwrap_or((0, String::new()));
    let elapsed = started.elapsed();
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let summary = if status == 200 {
        let result = json["data"]["result"].as_array().map_or(0, Vec::len);
        format!("{result} series")
    } else {
        format!("HTTP {status} {}", json["error"].as_str().unwrap_or(""))
    };
    (elapsed, summary)
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![10_000, 100_000] } else { sizes };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as i64;
    let end_ms = now_ms - now_ms % INTERVAL_MS;
    for size in sizes {
        let hosts = size.div_ceil(SERIES_PER_HOST);
        let mut series = Vec::with_capacity(hosts * SERIES_PER_HOST);
        for host in 0..hosts {
            host_series(host, &mut series);
        }
        let dir = tempfile::Builder::new().prefix("herd-bench-query").tempdir_in("/var/tmp").expect("temp dir");
        let openmetrics = dir.path().join("data.om");
        let store = Arc::new(
            Db::open(&dir.path().join("herd-blocks"), DbOptions::new(2 * 3600 * 1000, 30 * 86_400_000, None))
                .expect("store opens"),
        );
        let started = Instant::now();
        let samples = {
            let mut text = BufWriter::with_capacity(1 << 20, std::fs::File::create(&openmetrics).expect("create"));
            let samples = generate(&series, end_ms, &store, &mut text).expect("write");
            text.flush().expect("flush");
            samples
        };
        eprintln!(
            "{} series, {samples} samples over 24 h generated in {:.1} s",
            series.len(),
            started.elapsed().as_secs_f64()
        );
        let prometheus = start_prometheus(dir.path(), &openmetrics);
        let _ = std::fs::remove_file(&openmetrics);

        let engine = Engine::new(Arc::clone(&store) as Arc<dyn Storage>, Duration::from_secs(300), usize::MAX);
        let state = Arc::new(ApiState::new(
            engine,
            store,
            Arc::new(Fleet::new()),
            Arc::new(IngestStats::default()),
            Arc::new(AtomicBool::new(true)),
        ));
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
        let herd_url = format!("http://{}", listener.local_addr().expect("address"));
        runtime.spawn(async move { axum::serve(listener, router(state)).await });

        println!("\n{} series ({hosts} hosts), 24 h every 60 s", series.len());
        println!("| range | expression | herd | prometheus | ratio | answers |");
        println!("| --- | --- | --- | --- | --- | --- |");
        for (range_s, step_s, label) in [(3_600, 15, "1 h"), (86_400, 120, "24 h")] {
            let mut log_ratio_sum = 0.0;
            for expr in EXPRESSIONS {
                let end = end_ms / 1000;
                let path = format!(
                    "/api/v1/query_range?query={}&start={}&end={end}&step={step_s}",
                    encode(expr),
                    end - range_s
                );
                let (herd, prom) = (format!("{herd_url}{path}"), format!("{}{path}", prometheus.url));
                let (_, herd_answer) = timed(&herd);
                let (_, prom_answer) = timed(&prom);
                let (mut herd_times, mut prom_times) = (Vec::new(), Vec::new());
                for _ in 0..RUNS {
                    herd_times.push(timed(&herd).0);
                    prom_times.push(timed(&prom).0);
                }
                let (h, p) = (median(herd_times), median(prom_times));
                let ratio = h.as_secs_f64() / p.as_secs_f64();
                log_ratio_sum += ratio.ln();
                let answers = if herd_answer == prom_answer {
                    herd_answer
                } else {
                    format!("herd {herd_answer} / prometheus {prom_answer}")
                };
                println!(
                    "| {label} | `{expr}` | {:.1} ms | {:.1} ms | {ratio:.2} | {answers} |",
                    h.as_secs_f64() * 1e3,
                    p.as_secs_f64() * 1e3
                );
            }
            println!(
                "| {label} | geometric mean of ratios | | | {:.2} | |",
                (log_ratio_sum / EXPRESSIONS.len() as f64).exp()
            );
        }
    }
}
