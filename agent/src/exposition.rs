//! The agent's optional local Prometheus endpoint (`agent.metrics_listen`,
//! off by default): the latest cycle's samples in the text exposition
//! format, so an existing Prometheus can scrape one Herd agent instead of
//! node_exporter and cAdvisor. Reads a snapshot; never blocks collection.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use herd_common::metric::{METRIC_NAME, SeriesId, format_value, is_stale};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::collect::SharedSeriesTable;

/// The latest cycle's samples, replaced by the scheduler every cycle.
pub type Latest = Arc<Mutex<Vec<(SeriesId, f64)>>>;

#[derive(Clone)]
struct Shared {
    latest: Latest,
    table: SharedSeriesTable,
}

/// Serves `/metrics` on `addr` until `shutdown`.
pub async fn serve(addr: SocketAddr, latest: Latest, table: SharedSeriesTable, shutdown: CancellationToken) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(err) => {
            warn!(%addr, error = %err, "cannot serve the local metrics endpoint; collection continues without it");
            return;
        }
    };
    info!(%addr, "serving local metrics endpoint");
    let app = Router::new().route("/metrics", get(metrics)).with_state(Shared { latest, table });
    let served = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await });
    if let Err(err) = served.await {
        warn!(error = %err, "local metrics endpoint failed");
    }
}

async fn metrics(State(shared): State<Shared>) -> impl IntoResponse {
    let samples = shared.latest.lock().expect("latest lock is never poisoned").clone();
    let table = shared.table.lock().expect("series table lock is never poisoned");
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], render(&samples, &table))
}

/// Renders samples grouped by metric name, with a TYPE line per family.
pub fn render(samples: &[(SeriesId, f64)], table: &herd_common::metric::SeriesTable) -> String {
    let mut lines: Vec<(&str, String)> = Vec::with_capacity(samples.len());
    for &(id, value) in samples {
        if is_stale(value) {
            continue;
        }
        let Some(labels) = table.labels(id) else { continue };
        let Some(name) = labels.metric_name() else { continue };
        let mut line = String::with_capacity(64);
        line.push_str(name);
        let mut first = true;
        for (label, label_value) in labels.iter().filter(|(n, _)| *n != METRIC_NAME) {
            line.push(if first { '{' } else { ',' });
            first = false;
            let _ = write!(line, "{label}=\"{}\"", escape(label_value));
        }
        if !first {
            line.push('}');
        }
        let _ = write!(line, " {}", format_value(value));
        lines.push((name, line));
    }
    lines.sort();
    let mut out = String::with_capacity(lines.iter().map(|(_, l)| l.len() + 1).sum::<usize>() * 2);
    let mut family = "";
    for (name, line) in &lines {
        if *name != family {
            family = name;
            let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
            let _ = writeln!(out, "# TYPE {name} {kind}");
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_common::metric::{SeriesTable, stale_nan};

    #[test]
    fn renders_families_with_types_escapes_and_skips_stale() {
        let mut table = SeriesTable::new();
        let mut scratch = String::new();
        let load = table.intern("node_load1", &[("job", "node")], &mut scratch);
        let cpu = table.intern("node_cpu_seconds_total", &[("cpu", "0"), ("mode", "idle")], &mut scratch);
        let odd = table.intern("thing", &[("path", "a\"b\\c")], &mut scratch);
        let gone = table.intern("gone", &[], &mut scratch);
        let text = render(&[(load, 0.5), (cpu, 12.25), (odd, f64::INFINITY), (gone, stale_nan())], &table);
        assert_eq!(
            text,
            "# TYPE node_cpu_seconds_total counter\nnode_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} 12.25\n\
             # TYPE node_load1 gauge\nnode_load1{job=\"node\"} 0.5\n\
             # TYPE thing gauge\nthing{path=\"a\\\"b\\\\c\"} +Inf\n"
        );
    }
}
