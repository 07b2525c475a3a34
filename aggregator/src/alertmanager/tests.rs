//! The router end to end in one process: real HTTP receivers (small axum
//! servers recording what they get), real timers, real state files.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use serde_json::Value as Json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::dispatch::Alert;
use super::{Router, config, now_ms};

#[derive(Debug, Clone)]
struct Received {
    path: String,
    authorization: Option<String>,
    body: Json,
    at: Instant,
}

type Log = Arc<Mutex<Vec<Received>>>;

/// An HTTP server that records every POST; `/fail` answers 500, others 200.
async fn recorder() -> (String, Log) {
    let log: Log = Arc::default();
    async fn record(State(log): State<Log>, uri: Uri, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
        let body = serde_json::from_slice(&body).unwrap_or(Json::Null);
        let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
        log.lock().unwrap().push(Received { path: uri.path().to_owned(), authorization, body, at: Instant::now() });
        if uri.path() == "/fail" { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK }
    }
    let app = axum::Router::new().fallback(axum::routing::post(record)).with_state(Arc::clone(&log));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), log)
}

fn config_text(base: &str) -> String {
    format!(
        r#"
global:
  resolve_timeout: 5m
route:
  receiver: hook
  group_by: [alertname]
  group_wait: 300ms
  group_interval: 1s
  repeat_interval: 1h
  routes:
    - {{matchers: ['severity=~".+"'], receiver: hook, continue: true}}
    - {{matchers: ['severity=~".+"'], receiver: slack, continue: true}}
    - {{matchers: ['severity=~".+"'], receiver: pager, continue: true}}
    - {{matchers: ['severity=~".+"'], receiver: broken, continue: true}}
receivers:
  - name: hook
    webhook_configs:
      - url: {base}/hook
        http_config: {{basic_auth: {{username: herd, password: secret}}}}
  - name: slack
    slack_configs:
      - api_url: {base}/slack
        channel: '#database-alerts'
        title: '{{{{ .GroupLabels.alertname }}}}'
        text: '{{{{ range .Alerts }}}}{{{{ .Annotations.description }}}}{{{{ end }}}}'
        color: '{{{{ if eq .Status "firing" }}}}danger{{{{ else }}}}good{{{{ end }}}}'
  - name: pager
    pagerduty_configs:
      - routing_key: R0UT1NG
        url: {base}/pagerduty
        severity: '{{{{ .CommonLabels.severity }}}}'
  - name: broken
    webhook_configs:
      - url: {base}/fail
"#
    )
}

fn alert(ends_at_ms: i64) -> Alert {
    let labels = BTreeMap::from([
        ("alertname".to_owned(), "PostgresDown".to_owned()),
        ("instance".to_owned(), "db-1:5432".to_owned()),
        ("severity".to_owned(), "critical".to_owned()),
    ]);
    let annotations = BTreeMap::from([("description".to_owned(), "db-1 is down".to_owned())]);
    Alert::new(labels, annotations, 1_700_000_000_000, ends_at_ms, "http://herd.test/graph?g0.expr=pg_up".to_owned())
}

fn received(log: &Log, path: &str) -> Vec<Received> {
    log.lock().unwrap().iter().filter(|r| r.path == path).cloned().collect()
}

async fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

fn stat(router: &Router, receiver: &str) -> (u64, u64) {
    let stats = router.stats();
    let s = stats.iter().find(|s| s.receiver == receiver).unwrap();
    (s.notifications.load(std::sync::atomic::Ordering::Relaxed), s.failed.load(std::sync::atomic::Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_get_exact_payloads_and_a_failing_one_delays_nobody() {
    let (base, log) = recorder().await;
    let state = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let config = config::parse("test.yml", &config_text(&base)).unwrap();
    let router = Router::start(config, Some(state.path()), "http://herd.test".into(), &shutdown, &mut tasks);
    let sent_at = Instant::now();
    router.receive(vec![alert(i64::MAX)]);

    assert!(wait_until(Duration::from_secs(5), || !received(&log, "/hook").is_empty()).await, "webhook not notified");
    let hook = received(&log, "/hook").remove(0);
    // group_wait is 300 ms; the broken receiver's retries must not hold the webhook up.
    let delay = hook.at - sent_at;
    assert!(delay >= Duration::from_millis(250) && delay < Duration::from_millis(1500), "webhook after {delay:?}");
    assert_eq!(hook.authorization.as_deref(), Some("Basic aGVyZDpzZWNyZXQ="));
    let body = &hook.body;
    assert_eq!(body["version"], "4");
    assert_eq!(body["receiver"], "hook");
    assert_eq!(body["status"], "firing");
    assert_eq!(body["groupKey"], r#"{}/{severity=~".+"}/0:{alertname="PostgresDown"}"#);
    assert_eq!(body["truncatedAlerts"], 0);
    assert_eq!(body["externalURL"], "http://herd.test");
    assert_eq!(body["groupLabels"], serde_json::json!({"alertname": "PostgresDown"}));
    assert_eq!(body["commonLabels"]["instance"], "db-1:5432");
    assert_eq!(body["commonAnnotations"], serde_json::json!({"description": "db-1 is down"}));
    let first = &body["alerts"][0];
    assert_eq!(first["status"], "firing");
    assert_eq!(first["startsAt"], "2023-11-14T22:13:20Z");
    assert_eq!(first["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(first["generatorURL"], "http://herd.test/graph?g0.expr=pg_up");
    assert_eq!(first["fingerprint"].as_str().unwrap().len(), 16);
    let keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 10, "{keys:?}");

    assert!(wait_until(Duration::from_secs(2), || !received(&log, "/slack").is_empty()).await);
    let slack = received(&log, "/slack").remove(0).body;
    assert_eq!(slack["channel"], "#database-alerts");
    assert_eq!(slack["username"], "Alertmanager");
    assert_eq!(slack["attachments"][0]["title"], "PostgresDown");
    assert_eq!(slack["attachments"][0]["text"], "db-1 is down");
    assert_eq!(slack["attachments"][0]["color"], "danger");
    assert_eq!(slack["attachments"][0]["title_link"], "http://herd.test");

    assert!(wait_until(Duration::from_secs(2), || !received(&log, "/pagerduty").is_empty()).await);
    let trigger = received(&log, "/pagerduty").remove(0).body;
    assert_eq!(trigger["routing_key"], "R0UT1NG");
    assert_eq!(trigger["event_action"], "trigger");
    assert_eq!(trigger["payload"]["severity"], "critical");
    assert_eq!(trigger["payload"]["summary"], "[FIRING:1] PostgresDown");
    assert_eq!(trigger["payload"]["source"], "Herd");
    assert_eq!(trigger["payload"]["custom_details"]["num_firing"], "1");
    let dedup_key = trigger["dedup_key"].as_str().unwrap().to_owned();

    // The broken receiver is retried with backoff and every failure counted.
    assert!(
        wait_until(Duration::from_secs(5), || stat(&router, "broken").1 >= 3).await,
        "{:?}",
        stat(&router, "broken")
    );
    assert!(received(&log, "/fail").len() >= 3);
    assert_eq!(stat(&router, "hook"), (1, 0));

    // Resolved: the webhook and PagerDuty (send_resolved by default) hear of it, Slack does not.
    router.receive(vec![alert(now_ms())]);
    assert!(wait_until(Duration::from_secs(3), || received(&log, "/hook").len() == 2).await);
    let resolved = received(&log, "/hook").remove(1).body;
    assert_eq!(resolved["status"], "resolved");
    assert_eq!(resolved["alerts"][0]["status"], "resolved");
    assert_ne!(resolved["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    assert!(wait_until(Duration::from_secs(2), || received(&log, "/pagerduty").len() == 2).await);
    let resolve = received(&log, "/pagerduty").remove(1).body;
    assert_eq!(resolve["event_action"], "resolve");
    assert_eq!(resolve["dedup_key"], dedup_key.as_str());
    assert!(resolve.get("payload").is_none());
    assert_eq!(received(&log, "/slack").len(), 1);

    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_does_not_notify_again_within_repeat_interval() {
    let (base, log) = recorder().await;
    let state = tempfile::tempdir().unwrap();
    let text = config_text(&base);
    for round in 0..2 {
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let config = config::parse("test.yml", &text).unwrap();
        let router = Router::start(config, Some(state.path()), "http://herd.test".into(), &shutdown, &mut tasks);
        router.receive(vec![alert(i64::MAX)]);
        if round == 0 {
            assert!(wait_until(Duration::from_secs(5), || received(&log, "/hook").len() == 1).await);
            // The log is written after each delivery; wait until it holds the
            // webhook's (another receiver's delivery may have written it first).
            let nflog = state.path().join("router/nflog.json");
            assert!(
                wait_until(Duration::from_secs(10), || std::fs::read_to_string(&nflog)
                    .is_ok_and(|text| text.contains("\\u001fhook\\u001f")))
                .await
            );
        } else {
            // group_wait (300 ms) passes, the group flushes, the log says it was told.
            assert!(
                wait_until(Duration::from_secs(10), || router
                    .with_state(|d, _| d.next_flush_ms().is_some_and(|t| t > now_ms() + 500)))
                .await
            );
            // Give a wrongly queued notification time to be attempted before looking.
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(stat(&router, "hook"), (0, 0), "a notification was queued after the restart");
            assert_eq!(received(&log, "/hook").len(), 1, "notified again after a restart");
        }
        shutdown.cancel();
        while tasks.join_next().await.is_some() {}
    }
}

/// One mail as the test SMTP server received it.
#[derive(Debug, Clone, Default)]
struct Mail {
    /// Whether the envelope and message came after STARTTLS.
    over_tls: bool,
    auth_plain: Option<String>,
    from: String,
    to: Vec<String>,
    data: String,
}

/// A small SMTP server on loopback speaking enough ESMTP for a client to
/// deliver one mail: EHLO, STARTTLS (with a certificate for `localhost`),
/// AUTH PLAIN, MAIL, RCPT, DATA, QUIT. With `offer_starttls` false it never offers TLS.
fn smtp_server(offer_starttls: bool) -> (u16, String, Arc<Mutex<Vec<Mail>>>) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_pem = cert.pem();
    let key_der = rustls::pki_types::PrivateKeyDer::try_from(signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key_der)
            .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mails: Arc<Mutex<Vec<Mail>>> = Arc::default();
    let recorded = Arc::clone(&mails);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (tls_config, recorded) = (Arc::clone(&tls_config), Arc::clone(&recorded));
            std::thread::spawn(move || {
                let _ = smtp_session(stream, tls_config, offer_starttls, &recorded);
            });
        }
    });
    (port, cert_pem, mails)
}

fn read_line(stream: &mut impl std::io::Read) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        line.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&line[..line.len() - 2]).into_owned())
}

enum SmtpStep {
    StartTls,
    Done,
}

/// Runs commands until QUIT or STARTTLS.
fn smtp_commands(
    stream: &mut (impl std::io::Read + std::io::Write),
    over_tls: bool,
    offer_starttls: bool,
    mail: &mut Mail,
    recorded: &Mutex<Vec<Mail>>,
) -> std::io::Result<SmtpStep> {
    loop {
        let line = read_line(stream)?;
        let verb = line.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
        let reply: String = match verb.as_str() {
            "EHLO" | "HELO" if over_tls || !offer_starttls => "250-herd-test\r\n250 AUTH PLAIN LOGIN\r\n".into(),
            "EHLO" | "HELO" => "250-herd-test\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n".into(),
            "STARTTLS" if offer_starttls && !over_tls => {
                stream.write_all(b"220 ready to start TLS\r\n")?;
                return Ok(SmtpStep::StartTls);
            }
            "AUTH" => {
                mail.auth_plain = line.split_whitespace().nth(2).map(str::to_owned);
                "235 2.7.0 accepted\r\n".into()
            }
            "MAIL" => {
                mail.over_tls = over_tls;
                mail.from = line.split_once(':').map(|(_, a)| a.trim().to_owned()).unwrap_or_default();
                "250 ok\r\n".into()
            }
            "RCPT" => {
                mail.to.push(line.split_once(':').map(|(_, a)| a.trim().to_owned()).unwrap_or_default());
                "250 ok\r\n".into()
            }
            "DATA" => {
                stream.write_all(b"354 go ahead\r\n")?;
                let mut data = String::new();
                loop {
                    let line = read_line(stream)?;
                    if line == "." {
                        break;
                    }
                    data.push_str(&line);
                    data.push('\n');
                }
                mail.data = data;
                recorded.lock().unwrap().push(std::mem::take(mail));
                "250 queued\r\n".into()
            }
            "QUIT" => {
                stream.write_all(b"221 bye\r\n")?;
                return Ok(SmtpStep::Done);
            }
            "RSET" | "NOOP" => "250 ok\r\n".into(),
            _ => "502 not implemented\r\n".into(),
        };
        stream.write_all(reply.as_bytes())?;
    }
}

fn smtp_session(
    mut tcp: std::net::TcpStream,
    tls_config: Arc<rustls::ServerConfig>,
    offer_starttls: bool,
    recorded: &Mutex<Vec<Mail>>,
) -> std::io::Result<()> {
    use std::io::Write as _;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.write_all(b"220 herd-test ESMTP\r\n")?;
    let mut mail = Mail::default();
    if let SmtpStep::StartTls = smtp_commands(&mut tcp, false, offer_starttls, &mut mail, recorded)? {
        let connection = rustls::ServerConnection::new(tls_config).map_err(std::io::Error::other)?;
        let mut tls = rustls::StreamOwned::new(connection, tcp);
        smtp_commands(&mut tls, true, offer_starttls, &mut mail, recorded)?;
    }
    Ok(())
}

fn email_config(port: u16, ca_file: &std::path::Path, require_tls: bool) -> String {
    format!(
        r#"
global:
  smtp_smarthost: 'localhost:{port}'
  smtp_from: 'alerts@herd.test'
  smtp_auth_username: 'apikey'
  smtp_auth_password: 'secret'
route:
  receiver: default
  group_by: [alertname]
  group_wait: 100ms
receivers:
  - name: default
    email_configs:
      - to: 'oncall@herd.test'
        require_tls: {require_tls}
        tls_config: {{ca_file: '{ca}'}}
        headers:
          Subject: '[Alert] {{{{ .GroupLabels.alertname }}}}'
"#,
        ca = ca_file.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_is_sent_over_starttls_with_the_templated_subject() {
    let (port, cert_pem, mails) = smtp_server(true);
    let state = tempfile::tempdir().unwrap();
    let ca_file = state.path().join("smtp-ca.pem");
    std::fs::write(&ca_file, &cert_pem).unwrap();
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let config = config::parse("test.yml", &email_config(port, &ca_file, true)).unwrap();
    let router = Router::start(config, Some(state.path()), "http://herd.test".into(), &shutdown, &mut tasks);
    router.receive(vec![alert(i64::MAX)]);
    assert!(
        wait_until(Duration::from_secs(10), || !mails.lock().unwrap().is_empty()).await,
        "no mail; stats {:?}",
        stat(&router, "default")
    );
    let mail = mails.lock().unwrap()[0].clone();
    assert!(mail.over_tls, "mail sent before STARTTLS");
    assert_eq!(mail.auth_plain.as_deref(), Some(super::config::base64(b"\0apikey\0secret").as_str()));
    assert_eq!(mail.from, "<alerts@herd.test>");
    assert_eq!(mail.to, ["<oncall@herd.test>"]);
    assert!(mail.data.contains("Subject: [Alert] PostgresDown\n"), "{}", mail.data);
    assert!(mail.data.contains("db-1 is down"), "{}", mail.data);
    assert_eq!(stat(&router, "default"), (1, 0));
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_tls_refuses_a_server_without_starttls() {
    let (port, cert_pem, mails) = smtp_server(false);
    let state = tempfile::tempdir().unwrap();
    let ca_file = state.path().join("smtp-ca.pem");
    std::fs::write(&ca_file, &cert_pem).unwrap();
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let config = config::parse("test.yml", &email_config(port, &ca_file, true)).unwrap();
    let router = Router::start(config, Some(state.path()), "http://herd.test".into(), &shutdown, &mut tasks);
    router.receive(vec![alert(i64::MAX)]);
    assert!(wait_until(Duration::from_secs(10), || stat(&router, "default").1 >= 1).await);
    assert!(mails.lock().unwrap().is_empty(), "mail sent in the clear");
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_reroutes_and_a_broken_file_keeps_the_running_configuration() {
    let (base, log) = recorder().await;
    let state = tempfile::tempdir().unwrap();
    let path = state.path().join("alertmanager.yml");
    let write = |hook: &str| {
        std::fs::write(
            &path,
            format!(
                "route:\n  receiver: r\n  group_wait: 100ms\n  group_interval: 300ms\nreceivers:\n  - name: r\n    webhook_configs: [{{url: '{base}/{hook}'}}]\n"
            ),
        )
        .unwrap()
    };
    write("before");
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let router = Router::start(
        config::load(&path).unwrap(),
        Some(state.path()),
        "http://herd.test".into(),
        &shutdown,
        &mut tasks,
    );
    router.receive(vec![alert(i64::MAX)]);
    assert!(wait_until(Duration::from_secs(5), || received(&log, "/before").len() == 1).await);

    std::fs::write(&path, "route: [\n").unwrap();
    let err = router.reload(&path).unwrap_err().to_string();
    assert!(err.contains("alertmanager.yml") && err.contains("line"), "{err}");
    assert!(router.config().original.contains("/before"), "the running configuration was kept");

    // The webhook's URL changes under the same receiver: a new alert in the group goes to the new URL.
    write("after");
    router.reload(&path).unwrap();
    let mut second = alert(i64::MAX);
    second.labels.insert("instance".into(), "db-2:5432".into());
    second.fingerprint = super::dispatch::fingerprint(&second.labels);
    router.receive(vec![second]);
    assert!(wait_until(Duration::from_secs(5), || received(&log, "/after").len() == 1).await);
    assert_eq!(received(&log, "/after")[0].body["alerts"].as_array().unwrap().len(), 2);
    assert_eq!(received(&log, "/before").len(), 1);
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
}

async fn call(app: &axum::Router, method: &str, uri: &str, body: &str) -> (StatusCode, Json) {
    use tower::ServiceExt;
    let request = axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_owned()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Json::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_v2_api_refuses_bad_input_clearly_and_keeps_serving() {
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let config = config::parse(
        "t.yml",
        "route: {receiver: r, group_wait: 1h}\ninhibit_rules: [{source_matchers: ['severity=\"critical\"'], target_matchers: ['severity=\"warning\"'], equal: [instance]}]\nreceivers: [{name: r}]\n",
    )
    .unwrap();
    let router = Router::start(config, None, "http://herd.test".into(), &shutdown, &mut tasks);
    let app = super::api::routes(Arc::clone(&router));

    let (status, body) = call(&app, "POST", "/api/v2/alerts", "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.as_str().unwrap().contains("not valid JSON"), "{body}");
    let (status, body) =
        call(&app, "POST", "/api/v2/alerts", r#"[{"labels":{}}, {"labels":{"a":"b"},"startsAt":"yesterday"}]"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = body.as_str().unwrap();
    assert!(message.contains("alert 0: at least one label") && message.contains("alert 1: startsAt"), "{message}");

    let alerts = r#"[
        {"labels":{"alertname":"HostDown","instance":"a","severity":"critical"}},
        {"labels":{"alertname":"DiskFull","instance":"a","severity":"warning"},"annotations":{"summary":"full"}},
        {"labels":{"alertname":"DiskFull","instance":"b","severity":"warning"}}
    ]"#;
    assert_eq!(call(&app, "POST", "/api/v2/alerts", alerts).await.0, StatusCode::OK);
    let (_, all) = call(&app, "GET", "/api/v2/alerts", "").await;
    assert_eq!(all.as_array().unwrap().len(), 3);
    let inhibited: Vec<&Json> =
        all.as_array().unwrap().iter().filter(|a| a["status"]["state"] == "suppressed").collect();
    assert_eq!(inhibited.len(), 1);
    assert_eq!(inhibited[0]["labels"]["instance"], "a");
    assert_eq!(inhibited[0]["status"]["inhibitedBy"].as_array().unwrap().len(), 1);
    let (_, filtered) = call(&app, "GET", "/api/v2/alerts?filter=alertname%3D%22DiskFull%22&inhibited=false", "").await;
    assert_eq!(filtered.as_array().unwrap().len(), 1);
    assert_eq!(filtered[0]["labels"]["instance"], "b");
    let (status, _) = call(&app, "GET", "/api/v2/alerts?filter=%7Bbroken", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, groups) = call(&app, "GET", "/api/v2/alerts/groups", "").await;
    assert_eq!(groups[0]["receiver"]["name"], "r");
    assert_eq!(groups[0]["alerts"].as_array().unwrap().len(), 3);

    let silence = |matchers: &str| {
        format!(
            r#"{{"matchers":{matchers},"startsAt":"2020-01-01T00:00:00Z","endsAt":"2999-01-01T00:00:00Z","createdBy":"ops","comment":"c"}}"#
        )
    };
    let (status, body) =
        call(&app, "POST", "/api/v2/silences", &silence(r#"[{"name":"a","value":"(","isRegex":true}]"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.as_str().unwrap().contains("regex"), "{body}");
    let (status, body) =
        call(&app, "POST", "/api/v2/silences", &silence(r#"[{"name":"a","value":".*","isRegex":true}]"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) =
        call(&app, "POST", "/api/v2/silences", &silence(r#"[{"name":"instance","value":"b","isRegex":false}]"#)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["silenceID"].as_str().unwrap().to_owned();
    let (_, got) = call(&app, "GET", &format!("/api/v2/silence/{id}"), "").await;
    assert_eq!(got["status"]["state"], "active");
    assert_eq!(got["matchers"][0], serde_json::json!({"name":"instance","value":"b","isRegex":false,"isEqual":true}));
    let (_, silenced) = call(&app, "GET", "/api/v2/alerts?silenced=false&inhibited=false", "").await;
    assert_eq!(silenced.as_array().unwrap().len(), 1, "only HostDown is neither silenced nor inhibited");
    assert_eq!(call(&app, "GET", "/api/v2/silence/nope", "").await.0, StatusCode::NOT_FOUND);
    assert_eq!(call(&app, "DELETE", &format!("/api/v2/silence/{id}"), "").await.0, StatusCode::OK);
    let (_, got) = call(&app, "GET", &format!("/api/v2/silence/{id}"), "").await;
    assert_eq!(got["status"]["state"], "expired");
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_are_written_to_the_store() {
    use crate::store::{LabelMatcher, MatchOp, MemStore, Storage};
    let (base, log) = recorder().await;
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let config = config::parse("test.yml", &config_text(&base)).unwrap();
    let router = Router::start(config, None, "http://herd.test".into(), &shutdown, &mut tasks);
    router.receive(vec![alert(i64::MAX)]);
    assert!(
        wait_until(Duration::from_secs(5), || stat(&router, "broken").1 >= 1 && !received(&log, "/hook").is_empty())
            .await
    );
    let store = MemStore::new();
    router.record_metrics(&store, "agg:7401", now_ms());
    let read = |name: &str, receiver: &str| {
        let matchers = [
            LabelMatcher::new(MatchOp::Equal, herd_common::metric::METRIC_NAME, name).unwrap(),
            LabelMatcher::new(MatchOp::Equal, "receiver", receiver).unwrap(),
        ];
        let found = store.select(&matchers);
        assert_eq!(found.len(), 1, "{name}{{receiver={receiver}}}");
        assert_eq!(found[0].1.get("job"), Some("herd-aggregator"));
        let mut samples = Vec::new();
        store.read(found[0].0, i64::MIN, i64::MAX, &mut samples);
        (found[0].1.get("integration").map(str::to_owned), samples[0].value)
    };
    assert_eq!(read("herd_router_notifications_total", "hook"), (Some("webhook".into()), 1.0));
    assert_eq!(read("herd_router_notifications_failed_total", "hook"), (Some("webhook".into()), 0.0));
    let (integration, failed) = read("herd_router_notifications_failed_total", "broken");
    assert_eq!(integration.as_deref(), Some("webhook"));
    assert!(failed >= 1.0);
    assert_eq!(read("herd_router_notifications_total", "pager").0.as_deref(), Some("pagerduty"));
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
}
