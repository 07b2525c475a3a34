//! Herd as Grafana's Prometheus data source.
//!
//! `grafana_requests_get_the_shapes_grafana_parses` replays the HTTP requests
//! Grafana's Prometheus data source sends (its backend's health check,
//! buildinfo heuristics, instant, range and exemplar queries with form
//! bodies, and its frontend's resource calls for metric names, label names
//! and values with `match[]`, series, metadata, rules and alerts, with
//! Grafana's parameters: float seconds, millisecond `start`/`end` for the
//! exemplar probe, `limit`) against a real aggregator fed by a real agent,
//! and checks each answer has the shape Grafana parses.
//!
//! `every_dashboard_expr_evaluates_on_live_data` takes every `expr` of every
//! dashboard under `packaging/grafana/dashboards/` (and the templating
//! variables' `label_values`), substitutes Grafana's variables, and runs it
//! through `query_range` against an aggregator fed by an agent that collects
//! its host, a real PostgreSQL, a real Redis and an application's metrics:
//! each must answer without error and with data, and each metric name it
//! uses must be one Herd writes (seen from jobs other than the application's
//! own) or one of the application's own names, listed below.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herd_tests::servers::{PASSWORD, Postgres, Redis, secret_file, servers_available};
use herd_tests::*;
use promql_parser::parser::{self, Expr};
use serde_json::Value as Json;

/// The application's own metrics, named as the monitoring setup guide's code
/// names them (sections 4.2.1 and 6.1.1): not Herd's to produce.
const APPLICATION_METRICS: &[&str] = &[
    "http_requests_total",
    "http_request_duration_seconds_bucket",
    "http_request_duration_seconds_sum",
    "http_request_duration_seconds_count",
    "smart_dairy_orders_total",
    "smart_dairy_order_value_bdt_bucket",
    "smart_dairy_order_value_bdt_sum",
    "smart_dairy_order_value_bdt_count",
    "smart_dairy_active_users",
    "smart_dairy_payments_total",
    "smart_dairy_conversion_funnel",
];

/// The application's `/metrics`: counters growing with time since `start`.
fn application_metrics(start: Instant) -> String {
    let t = start.elapsed().as_secs_f64() + 1.0;
    let c = |per_second: f64| format!("{:.3}", t * per_second);
    let mut out = String::new();
    out.push_str("# TYPE http_requests_total counter\n");
    for (route, status, rate) in [("/orders", "200", 40.0), ("/orders", "500", 1.0), ("/login", "200", 10.0)] {
        out.push_str(&format!(
            "http_requests_total{{method=\"GET\",route=\"{route}\",status_code=\"{status}\"}} {}\n",
            c(rate)
        ));
    }
    out.push_str("# TYPE http_request_duration_seconds histogram\n");
    for (le, rate) in [("0.1", 30.0), ("0.5", 45.0), ("2.5", 50.0), ("+Inf", 51.0)] {
        out.push_str(&format!("http_request_duration_seconds_bucket{{method=\"GET\",le=\"{le}\"}} {}\n", c(rate)));
    }
    out.push_str(&format!("http_request_duration_seconds_sum{{method=\"GET\"}} {}\n", c(9.0)));
    out.push_str(&format!("http_request_duration_seconds_count{{method=\"GET\"}} {}\n", c(51.0)));
    out.push_str("# TYPE smart_dairy_orders_total counter\n");
    for (kind, rate) in [("b2c", 2.0), ("b2b", 0.5)] {
        out.push_str(&format!(
            "smart_dairy_orders_total{{order_type=\"{kind}\",payment_method=\"bkash\",status=\"created\"}} {}\n",
            c(rate)
        ));
    }
    out.push_str("# TYPE smart_dairy_order_value_bdt histogram\n");
    for (kind, rate) in [("b2c", 2.0), ("b2b", 0.5)] {
        for (le, share) in [("1000", 0.6), ("10000", 0.95), ("+Inf", 1.0)] {
            out.push_str(&format!(
                "smart_dairy_order_value_bdt_bucket{{order_type=\"{kind}\",le=\"{le}\"}} {}\n",
                c(rate * share)
            ));
        }
        out.push_str(&format!("smart_dairy_order_value_bdt_sum{{order_type=\"{kind}\"}} {}\n", c(rate * 1800.0)));
        out.push_str(&format!("smart_dairy_order_value_bdt_count{{order_type=\"{kind}\"}} {}\n", c(rate)));
    }
    out.push_str("# TYPE smart_dairy_active_users gauge\n");
    out.push_str("smart_dairy_active_users{user_type=\"customer\",time_window=\"24h\"} 1234\n");
    out.push_str("# TYPE smart_dairy_payments_total counter\n");
    for (gateway, status, rate) in [("bkash", "success", 2.0), ("nagad", "success", 1.0), ("bkash", "failed", 0.05)] {
        out.push_str(&format!(
            "smart_dairy_payments_total{{gateway=\"{gateway}\",status=\"{status}\",amount_range=\"1000-5000\"}} {}\n",
            c(rate)
        ));
    }
    out.push_str("# TYPE smart_dairy_conversion_funnel gauge\n");
    for (stage, users) in [("homepage", 5200), ("product_view", 2100), ("checkout", 400), ("order_complete", 310)] {
        out.push_str(&format!("smart_dairy_conversion_funnel{{stage=\"{stage}\"}} {users}\n"));
    }
    out
}

const RULES: &str = r#"
groups:
  - name: grafana-test
    rules:
      - record: instance:node_cpu:rate1m
        expr: sum by (instance) (rate(node_cpu_seconds_total[1m]))
      - alert: GrafanaTestAlert
        expr: vector(1)
        labels: {severity: info}
        annotations: {summary: "always firing"}
"#;

struct Fixture {
    aggregator: Aggregator,
    _agent: Process,
    _work: tempfile::TempDir,
    _servers: Option<(Postgres, Redis)>,
}

/// An aggregator with a rule file and one agent (`web-1`) collecting its
/// host and the application's endpoint, and, with `servers`, a real
/// PostgreSQL and Redis; returns once each source's data is queryable.
fn start(servers: bool) -> Fixture {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(work.path().join("pki"));
    pki.issue_agent("web-1");
    let rules = work.path().join("rules.yml");
    std::fs::write(&rules, RULES).unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let quic: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let extra = format!("[rules]\nfiles = [\"{}\"]\nevaluation_interval = \"1s\"\n", rules.display());
    let aggregator = Aggregator::start_configured(&pki, work.path(), "aggregator", http, quic, &extra);
    let started = Instant::now();
    let app = serve_text(move |_| Some(application_metrics(started)));
    let mut tail = format!("[[collect.scrape]]\njob = \"app\"\nurl = \"http://{app}/metrics\"\n");
    let servers = servers.then(|| {
        let (postgres, redis) = (Postgres::start(), Redis::start());
        let password = secret_file(&work.path().join("servers.password"), PASSWORD);
        tail.push_str(&format!(
            "[[collect.postgres]]\ndsn = \"{}\"\npassword_file = \"{}\"\nname = \"main\"\n",
            postgres.dsn("postgres"),
            password.display()
        ));
        tail.push_str(&format!(
            "[[collect.redis]]\naddress = \"{}\"\npassword_file = \"{}\"\nname = \"cache\"\n",
            redis.address(),
            password.display()
        ));
        (postgres, redis)
    });
    let config = agent_config_with(work.path(), &pki, "web-1", &[quic], "1s", "", &tail);
    let agent = start_agent(work.path(), "web-1", &config);
    // The aggregator's own figures are written every 5 s: a rate needs two.
    let mut needed = vec![
        "rate(node_cpu_seconds_total[1m])",
        "rate(http_requests_total[1m])",
        "ALERTS",
        "rate(herd_ingest_samples_total[1m])",
    ];
    if servers.is_some() {
        needed.extend(["pg_up == 1", "redis_up == 1", "pg_stat_database_numbackends"]);
    }
    for expr in needed {
        wait_for(Duration::from_secs(30), || (!vector_result(&aggregator.query(expr)).is_empty()).then_some(()))
            .unwrap_or_else(|| panic!("no data for {expr}:\n{}", agent.log()));
    }
    Fixture { aggregator, _agent: agent, _work: work, _servers: servers }
}

fn now_seconds() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// A successful answer's `data`, with the status and body in the message otherwise.
fn data(answer: Option<(u16, String)>, what: &str) -> Json {
    let (status, body) = answer.unwrap_or_else(|| panic!("{what}: aggregator unreachable"));
    assert_eq!(status, 200, "{what}: {body}");
    let json: Json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"));
    assert_eq!(json["status"], "success", "{what}: {body}");
    json["data"].clone()
}

fn strings(value: &Json, what: &str) -> Vec<String> {
    let list = value.as_array().unwrap_or_else(|| panic!("{what}: not a list: {value}"));
    list.iter().map(|v| v.as_str().unwrap_or_else(|| panic!("{what}: not a string: {v}")).to_owned()).collect()
}

/// A sample as Grafana's parser reads it: `[float seconds, "value"]`.
fn check_sample(sample: &Json, what: &str) {
    assert!(sample[0].is_f64() || sample[0].is_u64(), "{what}: timestamp {sample}");
    let text = sample[1].as_str().unwrap_or_else(|| panic!("{what}: value not a string: {sample}"));
    assert!(text.parse::<f64>().is_ok() || ["NaN", "+Inf", "-Inf"].contains(&text), "{what}: {sample}");
}

#[test]
fn grafana_requests_get_the_shapes_grafana_parses() {
    let fixture = start(false);
    let base = format!("http://{}", fixture.aggregator.http);
    let url = |path: &str| format!("{base}{path}");
    let now = now_seconds();
    let (start, end) = (format!("{:.3}", now - 600.0), format!("{now:.3}"));

    // Save & test: the backend runs `1+1` as an instant query at t=4, form-encoded.
    let health = data(http_post_form(&url("/api/v1/query"), &[("query", "1+1"), ("time", "4")]), "health check");
    assert_eq!(health["resultType"], "scalar", "{health}");
    assert_eq!(health["result"][1], "2", "{health}");

    // Heuristics: buildinfo's version (semver, >= 2.24 for the labels match API) and no `features` (Prometheus, not Mimir).
    let build = data(http_get(&url("/api/v1/status/buildinfo")), "buildinfo");
    let version: Vec<u64> = build["version"].as_str().unwrap().split('.').map(|p| p.parse().unwrap()).collect();
    assert!(version.len() == 3 && (version[0], version[1]) >= (2, 24), "{build}");
    assert!(build["features"].as_object().is_none_or(|f| f.is_empty()), "{build}");

    // The frontend's exemplar probe: GET with start and end in milliseconds; then the backend's POST.
    let probe = format!(
        "/api/v1/query_exemplars?query=test&start={}&end={}",
        ((now - 1800.0) * 1000.0) as i64,
        (now * 1000.0) as i64
    );
    assert_eq!(data(http_get(&url(&probe)), "exemplar probe"), serde_json::json!([]));
    let exemplars = data(
        http_post_form(
            &url("/api/v1/query_exemplars"),
            &[("query", "rate(node_cpu_seconds_total[1m])"), ("start", &start), ("end", &end)],
        ),
        "exemplar query",
    );
    assert!(exemplars.as_array().is_some_and(|e| e.is_empty()), "{exemplars}");

    // Instant and range queries as the backend sends them: form POSTs, float seconds, a timeout.
    let instant = data(
        http_post_form(&url("/api/v1/query"), &[("query", "node_load1"), ("time", &end), ("timeout", "30s")]),
        "instant query",
    );
    assert_eq!(instant["resultType"], "vector");
    let series = instant["result"].as_array().unwrap();
    assert!(!series.is_empty(), "{instant}");
    for s in series {
        assert_eq!(s["metric"]["__name__"], "node_load1", "{s}");
        check_sample(&s["value"], "instant query");
    }
    let range = data(
        http_post_form(
            &url("/api/v1/query_range"),
            &[
                ("query", "rate(node_cpu_seconds_total{mode=\"idle\"}[1m])"),
                ("start", &start),
                ("end", &end),
                ("step", "2.5"),
            ],
        ),
        "range query",
    );
    assert_eq!(range["resultType"], "matrix");
    let matrix = range["result"].as_array().unwrap();
    assert!(!matrix.is_empty(), "{range}");
    for s in matrix {
        assert!(s["metric"].is_object(), "{s}");
        let values = s["values"].as_array().unwrap();
        assert!(!values.is_empty(), "{s}");
        values.iter().for_each(|v| check_sample(v, "range query"));
    }
    // A query error is an error envelope with the message Grafana shows.
    let (status, body) = http_post_form(&url("/api/v1/query"), &[("query", "sum("), ("time", &end)]).unwrap();
    assert_eq!(status, 400, "{body}");
    let error: Json = serde_json::from_str(&body).unwrap();
    assert_eq!((error["status"].as_str(), error["errorType"].as_str()), (Some("error"), Some("bad_data")), "{body}");
    assert!(error["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");

    // Code completion and the metrics browser: names, label keys, values with match[], series.
    let limit = "40000";
    let names = strings(
        &data(
            http_get(&url(&format!("/api/v1/label/__name__/values?start={start}&end={end}&limit={limit}"))),
            "metric names",
        ),
        "metric names",
    );
    assert!(names.contains(&"node_load1".to_owned()) && names.contains(&"http_requests_total".to_owned()), "{names:?}");
    let keys = strings(
        &data(
            http_post_form(&url("/api/v1/labels"), &[("start", &start), ("end", &end), ("limit", limit)]),
            "label names",
        ),
        "label names",
    );
    assert!(keys.contains(&"instance".to_owned()) && keys.contains(&"job".to_owned()), "{keys:?}");
    let matched = strings(
        &data(
            http_post_form(
                &url("/api/v1/labels"),
                &[("match[]", "node_cpu_seconds_total"), ("start", &start), ("end", &end), ("limit", limit)],
            ),
            "label names with match[]",
        ),
        "label names with match[]",
    );
    assert!(matched.contains(&"mode".to_owned()) && !matched.contains(&"status_code".to_owned()), "{matched:?}");
    let values = strings(
        &data(
            http_get(&url(&format!(
                "/api/v1/label/instance/values?match[]={}&start={start}&end={end}&limit={limit}",
                encode("node_load1")
            ))),
            "label values with match[]",
        ),
        "label values",
    );
    assert_eq!(values, ["web-1"]);
    let found = data(
        http_post_form(
            &url("/api/v1/series"),
            &[("match[]", "{__name__!=\"\"}"), ("start", &start), ("end", &end), ("limit", limit)],
        ),
        "series",
    );
    let found = found.as_array().unwrap();
    assert!(found.iter().all(|s| s["__name__"].is_string()), "every series has a name");
    assert!(found.iter().any(|s| s["__name__"] == "node_load1" && s["instance"] == "web-1"));
    let by_get = data(
        http_get(&url(&format!("/api/v1/series?match[]={}&start={start}&end={end}", encode("up{job=\"node\"}")))),
        "series by GET",
    );
    assert_eq!(by_get.as_array().map(Vec::len), Some(1), "{by_get}");
    let metadata = data(http_get(&url("/api/v1/metadata?limit=10000")), "metadata");
    assert!(metadata.is_object(), "{metadata}");

    // Recording rules for the query editor's expansion, and alerts.
    let rules = data(http_get(&url("/api/v1/rules")), "rules");
    let groups = rules["groups"].as_array().unwrap();
    let recorded: Vec<&Json> =
        groups.iter().flat_map(|g| g["rules"].as_array().unwrap()).filter(|r| r["type"] == "recording").collect();
    assert_eq!(recorded.len(), 1, "{rules}");
    assert_eq!(recorded[0]["name"], "instance:node_cpu:rate1m");
    assert!(recorded[0]["query"].as_str().unwrap().contains("node_cpu_seconds_total"));
    let alerting =
        groups.iter().flat_map(|g| g["rules"].as_array().unwrap()).find(|r| r["type"] == "alerting").unwrap();
    for field in ["name", "query", "state", "health", "alerts", "labels", "annotations"] {
        assert!(!alerting[field].is_null(), "alerting rule without {field}: {alerting}");
    }
    let alerts = wait_for(Duration::from_secs(10), || {
        let alerts = data(http_get(&url("/api/v1/alerts")), "alerts");
        alerts["alerts"].as_array().filter(|a| !a.is_empty()).cloned()
    })
    .expect("the always-firing alert");
    assert_eq!(alerts[0]["labels"]["alertname"], "GrafanaTestAlert");
    assert!(alerts[0]["activeAt"].is_string() && alerts[0]["state"].is_string() && alerts[0]["value"].is_string());

    // The query editor's "format query".
    let formatted =
        data(http_post_form(&url("/api/v1/format_query"), &[("query", "sum(rate(up[5m]))by(job)")]), "format_query");
    assert_eq!(formatted, "sum by (job) (rate(up[5m]))");
}

// ---- dashboards ----

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/grafana/dashboards")
}

/// Every `expr` of every panel (rows' panels included) of one dashboard.
fn panel_exprs(panels: &Json, out: &mut Vec<String>) {
    for panel in panels.as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push(expr.to_owned());
            }
        }
        panel_exprs(&panel["panels"], out);
    }
}

/// What Grafana puts in place of its variables for a range of a few minutes.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("${__rate_interval}", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m")
        .replace("${host}", ".*")
        .replace("$host", ".*")
}

/// The metric names an expression selects.
fn metric_names(expr: &Expr, out: &mut BTreeSet<String>) {
    let selector = |vs: &promql_parser::parser::VectorSelector, out: &mut BTreeSet<String>| match &vs.name {
        Some(name) => {
            out.insert(name.clone());
        }
        None => panic!("a selector without a metric name: {vs}"),
    };
    match expr {
        Expr::VectorSelector(vs) => selector(vs, out),
        Expr::MatrixSelector(ms) => selector(&ms.vs, out),
        Expr::Aggregate(a) => {
            metric_names(&a.expr, out);
            if let Some(param) = &a.param {
                metric_names(param, out);
            }
        }
        Expr::Unary(u) => metric_names(&u.expr, out),
        Expr::Binary(b) => {
            metric_names(&b.lhs, out);
            metric_names(&b.rhs, out);
        }
        Expr::Paren(p) => metric_names(&p.expr, out),
        Expr::Subquery(s) => metric_names(&s.expr, out),
        Expr::Call(c) => c.args.args.iter().for_each(|a| metric_names(a, out)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

#[test]
fn every_dashboard_expr_evaluates_on_live_data() {
    if !servers_available() {
        return;
    }
    let mut dashboards: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
    for entry in std::fs::read_dir(dashboards_dir()).expect("packaging/grafana/dashboards") {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let dashboard: Json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(dashboard["uid"].is_string() && dashboard["title"].is_string(), "{name}: uid and title");
        let mut exprs = Vec::new();
        panel_exprs(&dashboard["panels"], &mut exprs);
        let variables: Vec<String> = dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["query"]["query"].as_str().or(v["query"].as_str()).map(str::to_owned))
            .collect();
        dashboards.push((name, exprs, variables));
    }
    let total: usize = dashboards.iter().map(|d| d.1.len()).sum();
    assert!(dashboards.len() >= 3 && total >= 25, "{} dashboards, {total} exprs", dashboards.len());

    let fixture = start(true);
    let aggregator = &fixture.aggregator;
    let base = format!("http://{}", aggregator.http);
    // What Herd writes: every name seen outside the application's own scrape job.
    let herd_names: BTreeSet<String> = strings(
        &data(
            http_get(&format!(
                "{base}/api/v1/label/__name__/values?match[]={}",
                encode("{__name__=~\".+\",job!=\"app\"}")
            )),
            "Herd's metric names",
        ),
        "names",
    )
    .into_iter()
    .collect();
    let now = now_seconds();
    let (start, end) = (format!("{:.3}", now - 300.0), format!("{now:.3}"));
    let mut problems = Vec::new();
    for (dashboard, exprs, variables) in &dashboards {
        for expr in exprs {
            let query = substitute(expr);
            let parsed = parser::parse(&query).unwrap_or_else(|e| panic!("{dashboard}: {expr:?} does not parse: {e}"));
            let mut names = BTreeSet::new();
            metric_names(&parsed, &mut names);
            for name in names {
                if !herd_names.contains(&name) && !APPLICATION_METRICS.contains(&name.as_str()) {
                    problems.push(format!(
                        "{dashboard}: {expr:?} uses {name}, which neither Herd nor the application writes"
                    ));
                }
            }
            let answer = http_post_form(
                &format!("{base}/api/v1/query_range"),
                &[("query", &query), ("start", &start), ("end", &end), ("step", "5")],
            );
            match answer {
                Some((200, body)) => {
                    let json: Json = serde_json::from_str(&body).unwrap();
                    if json["data"]["result"].as_array().is_none_or(|r| r.is_empty()) {
                        problems.push(format!("{dashboard}: {expr:?} returned no data"));
                    }
                }
                other => problems.push(format!("{dashboard}: {expr:?} failed: {other:?}")),
            }
        }
        for variable in variables {
            let inner = variable.strip_prefix("label_values(").and_then(|v| v.strip_suffix(')'));
            let (metric, label) =
                inner.and_then(|i| i.split_once(',')).map(|(m, l)| (m.trim(), l.trim())).unwrap_or_else(|| {
                    panic!("{dashboard}: variable query {variable:?} is not label_values(metric, label)")
                });
            if !herd_names.contains(metric) {
                problems.push(format!("{dashboard}: variable {variable:?} uses {metric}, which Herd does not write"));
            }
            let values = strings(
                &data(
                    http_get(&format!("{base}/api/v1/label/{label}/values?match[]={}", encode(metric))),
                    "variable values",
                ),
                "variable values",
            );
            if values.is_empty() {
                problems.push(format!("{dashboard}: variable {variable:?} has no values"));
            }
        }
    }
    assert!(problems.is_empty(), "{} of {total} dashboard exprs:\n{}", problems.len(), problems.join("\n"));
}
