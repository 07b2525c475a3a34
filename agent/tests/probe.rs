//! HTTP and TCP probes against real sockets on loopback: an HTTP server that
//! answers 200 or 503 by path, a port nobody listens on, and a server that
//! accepts but never answers (down within the probe's timeout). The probes
//! run in-process through the library's scheduler, built from `agent.toml`.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herd_agent::collect::probe::ProbeCollector;
use herd_agent::collect::{Collector, Scheduler, SharedSeriesTable};
use herd_common::config::agent::AgentConfig;
use herd_common::metric::is_stale;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Answers `GET /ok` with 200 and anything else with 503.
async fn http_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let status = if request.starts_with("GET /ok ") { "200 OK" } else { "503 Service Unavailable" };
                let _ = socket.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
            });
        }
    });
    port
}

/// Accepts connections and never says anything.
async fn silent_server(held: Arc<Mutex<Vec<tokio::net::TcpStream>>>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            held.lock().unwrap().push(socket);
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_tcp_probes_report_like_blackbox_exporter() {
    let http = http_server().await;
    let held = Arc::default();
    let silent = silent_server(Arc::clone(&held)).await;
    let closed = closed_port();
    let targets = [
        format!("http://127.0.0.1:{http}/ok"),
        format!("http://127.0.0.1:{http}/broken"),
        format!("tcp://127.0.0.1:{http}"),
        format!("tcp://127.0.0.1:{closed}"),
        format!("http://127.0.0.1:{silent}/"),
    ];
    let mut text = String::from(
        "[uplink]\nendpoints = [\"agg:7400\"]\nca_file = \"ca\"\ncert_file = \"c\"\nkey_file = \"k\"\n\
         [collect]\ninterval = \"10s\"\ntimeout = \"5s\"\n[collect.host]\nenabled = false\n",
    );
    for target in &targets {
        text.push_str(&format!("[[collect.probe]]\ntarget = \"{target}\"\ntimeout = \"1s\"\n"));
    }
    let config = AgentConfig::from_toml("agent.toml", &text, None, "web-1").unwrap();
    let collectors: Vec<Arc<dyn Collector>> =
        config.collect.probe.iter().map(|p| Arc::new(ProbeCollector::from_config(p)) as Arc<dyn Collector>).collect();
    let table: SharedSeriesTable = Arc::default();
    let (tx, _rx) = tokio::sync::mpsc::channel(4);
    let mut scheduler = Scheduler::new(
        collectors,
        Duration::from_secs(10),
        Duration::from_secs(5),
        Arc::clone(&table),
        vec![("instance".into(), "web-1".into())],
        1,
        tx,
    );
    let started = Instant::now();
    let batch = scheduler.cycle().await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(3), "probes run in parallel, each under 1s: {elapsed:?}");
    let series: BTreeMap<String, f64> = {
        let table = table.lock().unwrap();
        batch
            .samples
            .iter()
            .filter(|(_, v)| !is_stale(*v))
            .map(|(id, v)| (table.labels(*id).unwrap().to_string(), *v))
            .collect()
    };
    let get = |name: &str, target: &str| -> Option<f64> {
        series.get(&format!("{name}{{instance=\"web-1\", job=\"blackbox\", target=\"{target}\"}}")).copied()
    };
    let expected = [
        (&targets[0], 1.0, Some(200.0)),
        (&targets[1], 0.0, Some(503.0)),
        (&targets[2], 1.0, None),
        (&targets[3], 0.0, None),
        (&targets[4], 0.0, Some(0.0)),
    ];
    for (target, success, status) in expected {
        assert_eq!(get("probe_success", target), Some(success), "{target}");
        assert_eq!(get("probe_http_status_code", target), status, "{target}");
        let duration = get("probe_duration_seconds", target).unwrap();
        assert!((0.0..1.5).contains(&duration), "{target}: {duration}");
    }
    let silent_duration = get("probe_duration_seconds", &targets[4]).unwrap();
    assert!(silent_duration >= 0.9, "the silent target is given up on at its timeout: {silent_duration}");
}

#[test]
fn probe_targets_are_checked_with_their_keys() {
    let text = "[uplink]\nendpoints = [\"agg:7400\"]\nca_file = \"ca\"\ncert_file = \"c\"\nkey_file = \"k\"\n\
                [[collect.probe]]\ntarget = \"https://example.com/\"\ntls = { cert_file = \"c.pem\" }\n[[collect.probe]]\ntarget = \"example.com\"\n\
                [[collect.probe]]\n[[collect.probe]]\ntarget = \"http://example.com/health\"\n";
    let err = AgentConfig::from_toml("agent.toml", text, None, "web-1").unwrap_err().to_string();
    for needle in [
        "collect.probe[0].tls.key_file: is missing",
        "collect.probe[1].target: \"example.com\" has no scheme",
        "collect.probe[2].target: is missing",
    ] {
        assert!(err.contains(needle), "{needle:?} in:\n{err}");
    }
    assert!(!err.contains("collect.probe[3]"), "{err}");
}
