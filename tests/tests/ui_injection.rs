//! Markup in data stays text on every page of the web UI: `<script>` and
//! `"><img onerror=...>` arrive through an agent's labels, scraped label
//! values, an alert's labels and annotations, a rule's query, a silence's
//! matcher, author and comment, and the Graph page's query text (valid and
//! invalid) and the Fleet page's filter. Every page's HTML must carry them
//! escaped and never raw; in Chromium (when installed) the payloads show in
//! the page's text (or its form fields' values), no `<img onerror>` exists
//! and no injected script ran.

use std::net::SocketAddr;
use std::time::Duration;

use herd_tests::browser::{Browser, browser_available};
use herd_tests::router::WebhookRecorder;
use herd_tests::*;

const SCRIPT: &str = "<script>window.herdInjected=1</script>";
const IMG: &str = "\"><img src=x onerror=window.herdInjected=2>";

/// HTML with its character references replaced by the characters (those an escaper writes).
fn unescape(html: &str) -> String {
    [("&#60;", "<"), ("&lt;", "<"), ("&#62;", ">"), ("&gt;", ">"), ("&#34;", "\""), ("&quot;", "\""), ("&#39;", "'")]
        .iter()
        .fold(html.to_owned(), |text, (entity, c)| text.replace(entity, c))
        .replace("&amp;", "&")
}

/// A TOML basic string.
fn toml(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A label value in Prometheus's text format.
fn exposition(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

#[test]
fn markup_in_data_is_shown_as_text_on_every_page() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(work.path().join("pki"));
    pki.issue_agent("web-1");
    let hook = WebhookRecorder::start();
    let rules = work.path().join("rules.yml");
    std::fs::write(
        &rules,
        format!(
            "groups:\n  - name: injection\n    rules:\n      - alert: Injected\n        expr: 'injected_metric{{evil!=\"not {SCRIPT}\"}}'\n\
             \x20       labels: {{severity: '{IMG}'}}\n\
             \x20       annotations: {{summary: 'label {{{{ $labels.evil }}}} and {SCRIPT}', description: '{IMG}'}}\n"
        ),
    )
    .unwrap();
    let router_config = work.path().join("alertmanager.yml");
    std::fs::write(
        &router_config,
        format!(
            "route:\n  receiver: hook\nreceivers:\n  - name: hook\n    webhook_configs: [{{url: '{}'}}]\n",
            hook.url
        ),
    )
    .unwrap();
    let extra = format!(
        "[rules]\nfiles = [\"{}\"]\nevaluation_interval = \"1s\"\n[alerting]\nrouter_config = \"{}\"\n",
        rules.display(),
        router_config.display()
    );
    let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let quic: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let aggregator = Aggregator::start_configured(&pki, work.path(), "aggregator", http, quic, &extra);
    let app = serve_text(|_| {
        Some(format!(
            "# TYPE injected_metric gauge\ninjected_metric{{evil=\"{}\",other=\"{}\"}} 1\n",
            exposition(SCRIPT),
            exposition(IMG)
        ))
    });
    let tail = format!("[[collect.scrape]]\njob = \"app\"\nurl = \"http://{app}/metrics\"\n");
    let config = agent_config_with(work.path(), &pki, "web-1", &[quic], "1s", "", &tail);
    // The agent's own labels, shown on the Fleet pages.
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "[agent]\n",
        &format!("[agent]\nlabels = {{ note = {}, owner = {} }}\n", toml(SCRIPT), toml(IMG)),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let _agent = start_agent(work.path(), "web-1", &config);
    wait_for(Duration::from_secs(20), || {
        let firing = vector_result(&aggregator.query("ALERTS{alertname=\"Injected\",alertstate=\"firing\"}"));
        (!firing.is_empty()).then_some(())
    })
    .expect("the Injected alert fires");
    // A silence whose matcher, author and comment carry the payloads.
    let now = std::time::SystemTime::now();
    let rfc3339 = |t: std::time::SystemTime| {
        let seconds = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        time::OffsetDateTime::from_unix_timestamp(seconds)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let silence = serde_json::json!({
        "matchers": [{"name": "evil", "value": SCRIPT, "isRegex": false, "isEqual": true}],
        "startsAt": rfc3339(now),
        "endsAt": rfc3339(now + Duration::from_secs(3600)),
        "createdBy": IMG,
        "comment": format!("{SCRIPT} {IMG}"),
    });
    let mut response = ureq::post(&format!("http://{http}/api/v2/silences"))
        .header("Content-Type", "application/json")
        .send(silence.to_string())
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "{}", response.body_mut().read_to_string().unwrap());

    // (path, what it must show escaped)
    let pages: Vec<(String, Vec<&str>)> = vec![
        ("/".into(), vec![IMG]),
        ("/fleet".into(), vec![SCRIPT, IMG]),
        ("/fleet/web-1".into(), vec![SCRIPT, IMG]),
        (format!("/fleet?match={}", encode(IMG)), vec![IMG]),
        ("/alerts".into(), vec![SCRIPT, IMG]),
        (format!("/alerts/silence?matchers={}", encode(IMG)), vec![IMG]),
        (format!("/graph?expr={}", encode("injected_metric")), vec![SCRIPT, IMG]),
        (format!("/graph?expr={}", encode(&format!("injected_metric{{evil={:?}}}", SCRIPT))), vec![SCRIPT]),
        (format!("/graph?expr={}", encode(&format!("sum({IMG}"))), vec![IMG]),
        ("/rules".into(), vec![SCRIPT]),
        ("/targets".into(), vec![]),
        ("/status".into(), vec![]),
        (format!("/login?next={}", encode(&format!("/{IMG}"))), vec![IMG]),
    ];
    for (path, expected) in &pages {
        let (status, html) = aggregator.get(path).expect("aggregator reachable");
        assert_eq!(status, 200, "{path}");
        for raw in [SCRIPT, "<img src=x onerror"] {
            assert!(!html.contains(raw), "{path} carries {raw:?} raw");
        }
        let text = unescape(&html);
        for payload in expected {
            assert!(text.contains(payload), "{path} does not show {payload:?}:\n{html}");
        }
    }

    if !browser_available() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let browser = Browser::start(1280, 900).await;
        for (path, expected) in &pages {
            browser.client.goto(&format!("http://{http}{path}")).await.unwrap();
            let state = browser
                .js(
                    "return [window.herdInjected === undefined, document.querySelectorAll('img[onerror], script:not([src])').length, document.body.innerText + [...document.querySelectorAll('input, textarea')].map(e => e.value).join('\\n')]",
                    vec![],
                )
                .await;
            assert_eq!(state[0], true, "{path}: an injected script ran");
            assert_eq!(state[1], 0, "{path}: injected elements exist");
            let text = state[2].as_str().unwrap_or_default();
            for payload in expected {
                assert!(text.contains(payload), "{path}: {payload:?} is not shown as text");
            }
            let errors = browser.console_errors().await;
            assert!(errors.is_empty(), "{path}: console errors: {errors:?}");
        }
        browser.close().await;
    });
}
