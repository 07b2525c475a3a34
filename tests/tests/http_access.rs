//! Every HTTP route that changes state, through the one auth layer: without
//! credentials 401, with a viewer's token 403, and in both cases nothing
//! changed (checked through the read API); with the right role it works.
//! Then the tools that speak to Herd with a bearer token: amtool adds and
//! expires a silence, a real Prometheus remote-writes.

use std::net::SocketAddr;
use std::time::Duration;

use herd_aggregator::remote::proto;
use herd_tests::peers::{peer_available, start_prometheus};
use herd_tests::router::{WebhookRecorder, amtool_available};
use herd_tests::{
    Aggregator, HttpToken, Pki, agent_config, free_tcp_port, free_udp_port, http_call, start_agent, vector_result,
    wait_for,
};
use serde_json::Value as Json;

struct Access {
    aggregator: Aggregator,
    viewer: HttpToken,
    editor: HttpToken,
    admin: HttpToken,
}

impl Access {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.aggregator.http)
    }

    fn call(&self, method: &str, path: &str, token: Option<&HttpToken>, body: &str) -> (u16, String) {
        let content_type = if path == "/api/v1/write" { "application/x-protobuf" } else { "application/json" };
        self.call_bytes(method, path, token, content_type, body.as_bytes())
    }

    fn call_bytes(
        &self,
        method: &str,
        path: &str,
        token: Option<&HttpToken>,
        content_type: &str,
        body: &[u8],
    ) -> (u16, String) {
        http_call(method, &self.url(path), token.map(|t| t.token.as_str()), content_type, body)
            .unwrap_or_else(|| panic!("{method} {path}: aggregator unreachable"))
    }

    fn read(&self, path: &str) -> Json {
        let (status, body) = self.call("GET", path, Some(&self.admin), "");
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// No credentials: 401; a viewer: 403; for admin routes an editor: 403 too.
    fn refused(&self, method: &str, path: &str, body: &[u8], needs_admin: bool) {
        let content_type = if path == "/api/v1/write" { "application/x-protobuf" } else { "application/json" };
        let (status, text) = self.call_bytes(method, path, None, content_type, body);
        assert_eq!(status, 401, "{method} {path} without credentials: {text}");
        let (status, text) = self.call_bytes(method, path, Some(&self.viewer), content_type, body);
        assert_eq!(status, 403, "{method} {path} as a viewer: {text}");
        if needs_admin {
            let (status, text) = self.call_bytes(method, path, Some(&self.editor), content_type, body);
            assert_eq!(status, 403, "{method} {path} as an editor: {text}");
        }
    }
}

fn rfc3339(offset: Duration) -> String {
    (time::OffsetDateTime::now_utc() + offset).format(&time::format_description::well_known::Rfc3339).unwrap()
}

const RULES_BEFORE: &str =
    "groups:\n  - name: before\n    rules:\n      - record: herd_test_before\n        expr: vector(1)\n";
const RULES_AFTER: &str =
    "groups:\n  - name: after\n    rules:\n      - record: herd_test_after\n        expr: vector(2)\n";

fn start(work: &std::path::Path, pki: &Pki) -> Access {
    let (viewer, viewer_toml) = HttpToken::create(work, "vera", "viewer");
    let (editor, editor_toml) = HttpToken::create(work, "eddie", "editor");
    let (admin, admin_toml) = HttpToken::create(work, "ada", "admin");
    let hook = WebhookRecorder::start();
    let rules = work.join("rules.yml");
    std::fs::write(&rules, RULES_BEFORE).unwrap();
    let router = work.join("alertmanager.yml");
    std::fs::write(
        &router,
        format!(
            "route:\n  receiver: hook\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: {}\n",
            hook.url
        ),
    )
    .unwrap();
    let receiver_token = work.join("rw.token");
    std::fs::write(&receiver_token, "receiver-only-token-0123").unwrap();
    let extra = format!(
        "[http]\nanonymous_role = \"viewer\"\n{viewer_toml}{editor_toml}{admin_toml}\
         [rules]\nfiles = [\"{rules}\"]\nevaluation_interval = \"1s\"\n\
         [alerting]\nrouter_config = \"{router}\"\n\
         [remote_write_receiver]\nenabled = true\nbearer_token_files = [\"{receiver}\"]\n",
        rules = rules.display(),
        router = router.display(),
        receiver = receiver_token.display(),
    );
    let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let quic: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let aggregator = Aggregator::start_configured(pki, work, "aggregator", http, quic, &extra);
    std::mem::forget(hook);
    Access { aggregator, viewer, editor, admin }
}

fn write_request(name: &str) -> Vec<u8> {
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let request = proto::WriteRequest {
        timeseries: vec![proto::TimeSeries {
            labels: vec![
                proto::Label { name: "__name__".into(), value: name.into() },
                proto::Label { name: "job".into(), value: "pushed".into() },
            ],
            samples: vec![proto::Sample { value: 1.0, timestamp: now_ms }],
        }],
    };
    let (mut scratch, mut out) = (Vec::new(), Vec::new());
    proto::encode(&request, &mut scratch, &mut out);
    out
}

#[test]
fn every_state_changing_route_needs_its_role_and_a_refusal_changes_nothing() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(work.path().join("pki"));
    pki.issue_agent("a1");
    let s = start(work.path(), &pki);
    let config = agent_config(work.path(), &pki, "a1", s.aggregator.quic, "500ms");
    let _agent = start_agent(work.path(), "a1", &config);

    // Silences.
    let silence = format!(
        r#"{{"matchers":[{{"name":"alertname","value":"Quiet","isRegex":false,"isEqual":true}}],"startsAt":"{}","endsAt":"{}","createdBy":"test","comment":"access"}}"#,
        rfc3339(Duration::ZERO),
        rfc3339(Duration::from_secs(3600))
    );
    s.refused("POST", "/api/v2/silences", silence.as_bytes(), false);
    assert_eq!(s.read("/api/v2/silences"), Json::Array(vec![]), "no silence was made");
    let (status, body) = s.call("POST", "/api/v2/silences", Some(&s.editor), &silence);
    assert_eq!(status, 200, "{body}");
    let id = serde_json::from_str::<Json>(&body).unwrap()["silenceID"].as_str().unwrap().to_owned();
    s.refused("DELETE", &format!("/api/v2/silence/{id}"), b"", false);
    assert_eq!(s.read(&format!("/api/v2/silence/{id}"))["status"]["state"], "active", "still active");
    assert_eq!(s.call("DELETE", &format!("/api/v2/silence/{id}"), Some(&s.editor), "").0, 200);
    assert_eq!(s.read(&format!("/api/v2/silence/{id}"))["status"]["state"], "expired");

    // The web UI's silence forms: the same roles as the API.
    let form = "matchers=alertname%3D%22FromTheUi%22&duration=1h&created_by=test&comment=ui+access&csrf=";
    let ui_silences = |s: &Access| {
        s.read("/api/v2/silences")
            .as_array()
            .unwrap()
            .iter()
            .filter(|silence| silence["matchers"][0]["value"] == "FromTheUi" && silence["status"]["state"] == "active")
            .map(|silence| silence["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    s.refused("POST", "/alerts/silences", form.as_bytes(), false);
    assert!(ui_silences(&s).is_empty(), "no silence was made from the UI");
    let (status, body) =
        s.call_bytes("POST", "/alerts/silences", Some(&s.editor), "application/x-www-form-urlencoded", form.as_bytes());
    // The form answers with a redirect to the Alerts page, which the client follows.
    assert_eq!(status, 200, "{body}");
    let made = ui_silences(&s);
    assert_eq!(made.len(), 1, "{made:?}");
    let expire = format!("/alerts/silences/{}/expire", made[0]);
    s.refused("POST", &expire, b"csrf=", false);
    assert_eq!(ui_silences(&s), made, "still active");
    let (status, body) = s.call_bytes("POST", &expire, Some(&s.editor), "application/x-www-form-urlencoded", b"csrf=");
    assert_eq!(status, 200, "{body}");
    assert!(ui_silences(&s).is_empty(), "expired from the UI");

    // Alert posts.
    let alerts = r#"[{"labels":{"alertname":"Posted","severity":"warning"}}]"#;
    s.refused("POST", "/api/v2/alerts", alerts.as_bytes(), false);
    let posted =
        |s: &Access| s.read("/api/v2/alerts").as_array().unwrap().iter().any(|a| a["labels"]["alertname"] == "Posted");
    assert!(!posted(&s), "no alert was posted");
    assert_eq!(s.call("POST", "/api/v2/alerts", Some(&s.editor), alerts).0, 200);
    assert!(wait_for(Duration::from_secs(5), || posted(&s).then_some(())).is_some());

    // Rule reload.
    std::fs::write(work.path().join("rules.yml"), RULES_AFTER).unwrap();
    s.refused("POST", "/-/reload", b"", false);
    let groups = |s: &Access| s.read("/api/v1/rules")["data"]["groups"].to_string();
    assert!(groups(&s).contains("\"before\"") && !groups(&s).contains("\"after\""), "not reloaded");
    assert_eq!(s.call("POST", "/-/reload", Some(&s.editor), "").0, 200);
    assert!(groups(&s).contains("\"after\""), "{}", groups(&s));

    // remote_write: an editor's token or the receiver's own; the receiver's works nowhere else.
    s.refused("POST", "/api/v1/write", &write_request("herd_test_pushed"), false);
    let pushed = |s: &Access, name: &str| !vector_result(&s.aggregator.query(name)).is_empty();
    assert!(!pushed(&s, "herd_test_pushed"), "nothing was written");
    let (status, body) = s.call_bytes(
        "POST",
        "/api/v1/write",
        Some(&s.editor),
        "application/x-protobuf",
        &write_request("herd_test_pushed"),
    );
    assert_eq!(status, 204, "{body}");
    assert!(pushed(&s, "herd_test_pushed"));
    let receiver =
        HttpToken { name: "rw".into(), file: work.path().join("rw.token"), token: "receiver-only-token-0123".into() };
    let (status, _) = s.call_bytes(
        "POST",
        "/api/v1/write",
        Some(&receiver),
        "application/x-protobuf",
        &write_request("herd_test_rw"),
    );
    assert_eq!(status, 204);
    assert_eq!(
        s.call("POST", "/api/v2/alerts", Some(&receiver), alerts).0,
        401,
        "the receiver's token is for writes only"
    );

    // Enrollment tokens (admin only).
    let token = r#"{"labels":{"role":"db"},"ttl":"1h","uses":1}"#;
    s.refused("POST", "/api/v1/identity/tokens", token.as_bytes(), true);
    assert_eq!(s.read("/api/v1/identity/tokens")["data"], Json::Array(vec![]), "no token was made");
    let (status, body) = s.call("GET", "/api/v1/identity/tokens", Some(&s.editor), "");
    assert_eq!(status, 403, "token lists are for admins: {body}");
    let (status, body) = s.call("POST", "/api/v1/identity/tokens", Some(&s.admin), token);
    assert_eq!(status, 201, "{body}");
    let created: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(created["data"]["createdBy"], "ada");
    let token_id = created["data"]["id"].as_str().unwrap().to_owned();
    s.refused("DELETE", &format!("/api/v1/identity/tokens/{token_id}"), b"", true);
    assert_eq!(s.read("/api/v1/identity/tokens")["data"][0]["state"], "active");
    assert_eq!(s.call("DELETE", &format!("/api/v1/identity/tokens/{token_id}"), Some(&s.admin), "").0, 200);
    assert_eq!(s.read("/api/v1/identity/tokens")["data"][0]["state"], "revoked");

    // Revocation (admin only): the agent stays connected through refused attempts.
    let connected = |s: &Access| {
        s.read("/api/v1/agents")["data"].as_array().unwrap().iter().any(|a| a["id"] == "a1" && a["connected"] == true)
    };
    assert!(wait_for(Duration::from_secs(20), || connected(&s).then_some(())).is_some());
    s.refused("POST", "/api/v1/identity/revocations", br#"{"name":"a1"}"#, true);
    std::thread::sleep(Duration::from_millis(500));
    assert!(connected(&s), "a refused revocation revoked nothing");
    assert_eq!(s.call("POST", "/api/v1/identity/revocations", Some(&s.admin), r#"{"name":"a1"}"#).0, 200);
    assert!(wait_for(Duration::from_secs(3), || (!connected(&s)).then_some(())).is_some());

    // Remote configuration's write routes are the admin's too.
    let profiles = s.read("/api/v1/configs").to_string();
    for path in
        ["/api/v1/configs", "/api/v1/configs/web/rollback", "/api/v1/configs/web/resume", "/api/v1/configs/web/abort"]
    {
        s.refused("POST", path, b"{}", true);
    }
    assert_eq!(s.read("/api/v1/configs").to_string(), profiles, "no profile changed");

    // Every refusal was counted, by route and reason.
    let missing = r#"herd_http_refused_requests_total{route="/api/v2/silences",reason="missing_credentials"}"#;
    let forbidden = r#"herd_http_refused_requests_total{route="/api/v1/identity/tokens",reason="insufficient_role"}"#;
    assert_eq!(s.aggregator.self_metric(missing), 1.0);
    assert_eq!(s.aggregator.self_metric(forbidden), 3.0);
}

#[test]
fn amtool_and_prometheus_work_with_bearer_tokens() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(work.path().join("pki"));
    let s = start(work.path(), &pki);
    if amtool_available() {
        let http_config = work.path().join("amtool-http.yml");
        std::fs::write(&http_config, format!("authorization:\n  credentials_file: {}\n", s.editor.file.display()))
            .unwrap();
        let amtool = |args: &[&str], with_token: bool| {
            let mut command = std::process::Command::new("amtool");
            command.arg(format!("--alertmanager.url=http://{}", s.aggregator.http));
            if with_token {
                command.arg(format!("--http.config.file={}", http_config.display()));
            }
            let output = command.args(args).output().expect("run amtool");
            (
                output.status.success(),
                String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr),
            )
        };
        let add = ["silence", "add", "alertname=Maintenance", "--comment=window", "--author=ops", "--duration=1h"];
        let (ok, out) = amtool(&add, false);
        assert!(!ok, "amtool without a token is refused: {out}");
        let (ok, out) = amtool(&add, true);
        assert!(ok, "amtool silence add: {out}");
        let id = out.trim().to_owned();
        let (ok, out) = amtool(&["silence", "query", "-q"], true);
        assert!(ok && out.contains(&id), "{out}");
        let (ok, out) = amtool(&["silence", "expire", &id], true);
        assert!(ok, "amtool silence expire: {out}");
        let (ok, out) = amtool(&["silence", "query", "-q"], true);
        assert!(ok && !out.contains(&id), "expired: {out}");
    }
    if peer_available("prometheus") {
        let node = herd_tests::serve_text(|_| Some("herd_test_scraped 42\n".to_owned()));
        let config = format!(
            "global:\n  scrape_interval: 1s\n\
             scrape_configs:\n  - job_name: app\n    static_configs:\n      - targets: ['{node}']\n\
             remote_write:\n  - url: http://{}/api/v1/write\n    authorization:\n      credentials_file: {}\n\
             \x20   queue_config:\n      batch_send_deadline: 1s\n      min_backoff: 50ms\n      max_backoff: 1s\n",
            s.aggregator.http,
            s.editor.file.display(),
        );
        let _prometheus = start_prometheus(work.path(), &work.path().join("prom"), &config, 0);
        let arrived = wait_for(Duration::from_secs(30), || {
            let result = vector_result(&s.aggregator.query(r#"herd_test_scraped{job="app"}"#));
            (!result.is_empty()).then_some(result)
        });
        assert!(arrived.is_some(), "Prometheus's samples did not arrive:\n{}", s.aggregator.process.log());
    }
}
