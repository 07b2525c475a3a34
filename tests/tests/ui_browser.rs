//! The web UI in a real browser: headless Chromium (Debian's `chromium`
//! and `chromium-driver`) against a real aggregator with two live agents,
//! a rule file and the built-in alert router sending to a recording webhook.
//!
//! Checked: every page loads with no console error (a script error, a
//! failed load or a Content-Security-Policy refusal would be one); the Fleet
//! page lists both agents and marks one disconnected after it is killed;
//! pages refresh their live parts without reloading; the Graph page draws
//! `rate(node_cpu_seconds_total[1m])`, completes a metric name, and shows
//! the parser's error for `sum(` at its position; a silence created on the
//! Alerts page (after logging in with an editor's token, prefilled from the
//! alert) appears in `/api/v2/silences` and stops the webhook's
//! notifications for that alert while another alert keeps being notified,
//! and is expired from the page; dark mode follows the system; a sort link
//! works from the keyboard; at a phone's width no page scrolls sideways.
//! Screenshots of every page are written to `target/ui-screenshots/`.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use fantoccini::Locator;
use fantoccini::key::Key;
use herd_tests::browser::{Browser, browser_available, screenshot_dir};
use herd_tests::router::WebhookRecorder;
use herd_tests::*;
use serde_json::{Value as Json, json};

const RULES: &str = r#"
groups:
  - name: ui-browser
    rules:
      - alert: UiSilenced
        expr: vector(1)
        labels: {severity: warning, team: ui}
        annotations: {summary: "to be silenced from the browser"}
      - alert: UiControl
        expr: vector(1)
        labels: {severity: critical}
        annotations: {summary: "never silenced"}
"#;

const EDITOR_TOKEN: &str = "editor-token-for-the-browser-test";
const VIEWER_TOKEN: &str = "viewer-token-for-the-browser-test";

fn token_file(dir: &std::path::Path, name: &str, token: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("{name}.token"));
    std::fs::write(&path, token).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn alert_names(notification: &Json) -> Vec<String> {
    notification["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["status"] == "firing")
        .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_owned))
        .collect()
}

fn agents_connected(aggregator: &Aggregator) -> Vec<(String, bool)> {
    let (_, body) = aggregator.get("/api/v1/agents").expect("aggregator reachable");
    let json: Json = serde_json::from_str(&body).expect("agents JSON");
    json["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| (a["id"].as_str().unwrap_or_default().to_owned(), a["connected"] == true))
        .collect()
}

/// A remote_write bearer token in the aggregator's configuration: never shown on the Status page.
const RW_SECRET: &str = "rw-secret-never-shown";

fn key(key: Key) -> String {
    char::from(key).to_string()
}

#[test]
fn every_page_works_in_a_real_browser() {
    if !browser_available() {
        return;
    }
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::create(work.path().join("pki"));
    let hook = WebhookRecorder::start();
    let rules = work.path().join("rules.yml");
    std::fs::write(&rules, RULES).unwrap();
    let router_config = work.path().join("alertmanager.yml");
    std::fs::write(&router_config, hook.route_by_alertname("1s", "1s", "2s")).unwrap();
    let extra = format!(
        "[http]\nanonymous_role = \"viewer\"\n\
         [[http.tokens]]\nname = \"ana\"\nrole = \"viewer\"\ntoken_file = \"{viewer}\"\n\
         [[http.tokens]]\nname = \"eve\"\nrole = \"editor\"\ntoken_file = \"{editor}\"\n\
         [rules]\nfiles = [\"{rules}\"]\nevaluation_interval = \"1s\"\n\
         [alerting]\nresend_delay = \"1s\"\nrouter_config = \"{router}\"\n\
         [[remote_write]]\nurl = \"http://127.0.0.1:1/api/v1/write\"\nbearer_token = \"{RW_SECRET}\"\n",
        viewer = token_file(work.path(), "viewer", VIEWER_TOKEN).display(),
        editor = token_file(work.path(), "editor", EDITOR_TOKEN).display(),
        rules = rules.display(),
        router = router_config.display(),
    );
    let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let quic: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let aggregator = Aggregator::start_configured(&pki, work.path(), "aggregator", http, quic, &extra);
    let mut agents = Vec::new();
    for name in ["web-1", "web-2"] {
        pki.issue_agent(name);
        let config = agent_config(work.path(), &pki, name, quic, "1s");
        agents.push(start_agent(work.path(), name, &config));
    }
    wait_for(Duration::from_secs(20), || {
        let connected = agents_connected(&aggregator).iter().filter(|(_, up)| *up).count() == 2;
        let rates = vector_result(&aggregator.query("count by (instance) (rate(node_cpu_seconds_total[1m]))")).len();
        (connected && rates == 2).then_some(())
    })
    .expect("both agents connected with CPU rates");

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let base = format!("http://{http}");
        let browser = Browser::start(1280, 900).await;
        let client = &browser.client;

        // Every page, anonymously (the configured anonymous role is viewer).
        let pages = [
            ("overview", "/"),
            ("fleet", "/fleet"),
            ("agent", "/fleet/web-1"),
            ("alerts", "/alerts"),
            ("graph", "/graph?expr=rate(node_cpu_seconds_total%5B1m%5D)"),
            ("rules", "/rules"),
            ("targets", "/targets"),
            ("status", "/status"),
            ("login", "/login"),
            ("silence", "/alerts/silence"),
        ];
        for (name, path) in pages {
            client.goto(&format!("{base}{path}")).await.unwrap();
            client.find(Locator::Css("main h1")).await.unwrap_or_else(|e| panic!("{path}: no heading: {e}"));
            let errors = browser.console_errors().await;
            assert!(errors.is_empty(), "{path}: console errors: {errors:?}");
            browser.screenshot(name).await;
        }

        // What the agent and status pages say, read as plain HTML.
        let (_, agent_page) = aggregator.get("/fleet/web-1").unwrap();
        let targets = agent_page.split("id=\"agent-targets\"").nth(1).unwrap_or_default();
        assert!(targets.contains("<td>node</td><td>web-1</td>") && targets.contains("badge ok\">1<"), "{agent_page}");
        let collectors = agent_page.split("id=\"agent-collectors\"").nth(1).unwrap_or_default();
        assert!(collectors.contains("badge ok\">ok<"), "collectors' success: {agent_page}");
        let resources = agent_page.split("id=\"agent-resources\"").nth(1).unwrap_or_default();
        assert!(resources.contains("<dt>") && !resources.starts_with("></dl>"), "its own resources: {agent_page}");
        let charts = agent_page.split("id=\"charts-heading\"").nth(1).unwrap_or_default();
        assert!(charts.matches("<svg").count() >= 4, "CPU, memory, disk and network charts: {charts}");
        let (_, status) = aggregator.get("/status").unwrap();
        let cardinality = status.split("id=\"cardinality\"").nth(1).unwrap_or_default();
        assert!(cardinality.contains("<td>node_cpu_seconds_total</td>"), "top metrics: {status}");
        assert!(cardinality.contains("<td>instance=&#34;web-1&#34;</td>") || cardinality.contains("instance=\"web-1\""), "{status}");
        assert!(!status.contains(RW_SECRET) && status.contains("***"), "secrets are masked: {status}");

        client.goto(&format!("{base}/fleet")).await.unwrap();
        let fleet = browser.text("table.fleet").await;
        assert!(fleet.contains("web-1") && fleet.contains("web-2"), "{fleet}");
        assert_eq!(fleet.matches("applied").count(), 2, "both run their local configuration: {fleet}");
        assert_eq!(client.find_all(Locator::Css("table.fleet tbody tr.up")).await.unwrap().len(), 2, "{fleet}");
        agents[1].kill();
        let killed = Instant::now();

        // The graph of a rate, drawn.
        client.goto(&format!("{base}/graph?expr=rate(node_cpu_seconds_total%5B1m%5D)&range=5m")).await.unwrap();
        let drawn = browser
            .js("return [...document.querySelectorAll('#graph-chart svg path.line')].filter(p => p.getAttribute('d').length > 20).length", vec![])
            .await;
        assert!(drawn.as_u64().unwrap_or(0) >= 2, "chart lines drawn: {drawn}");
        let legend = browser.text("#graph-chart .legend").await;
        assert!(legend.contains("node_cpu") || legend.contains("mode="), "{legend}");

        // Completion of a metric name, from the keyboard.
        client.goto(&format!("{base}/graph")).await.unwrap();
        let field = client.find(Locator::Css("#expr")).await.unwrap();
        field.send_keys("node_cpu_sec").await.unwrap();
        let suggestion = browser
            .wait_js(Duration::from_secs(5), "const li = document.querySelector('#expr-suggestions li'); return li && !document.querySelector('#expr-suggestions').hidden ? li.firstChild.textContent : null")
            .await;
        assert_eq!(suggestion, json!("node_cpu_seconds_total"), "first suggestion");
        field.send_keys(&key(Key::Tab)).await.unwrap();
        assert_eq!(field.prop("value").await.unwrap().as_deref(), Some("node_cpu_seconds_total"));

        // The parser's error for `sum(`, at its position.
        field.clear().await.unwrap();
        field.send_keys("sum(").await.unwrap();
        field.send_keys(&key(Key::Enter)).await.unwrap();
        let error = browser.wait_js(Duration::from_secs(5), "const e = document.querySelector('#query-error'); return e && e.textContent").await;
        let error = error.as_str().unwrap_or_default().to_owned();
        assert!(error.contains("parse error at character 4"), "{error}");
        assert_eq!(browser.text("#query-error mark").await, "(");
        assert_eq!(browser.text("#query-error pre span").await, "sum");
        let errors = browser.console_errors().await;
        assert!(errors.is_empty(), "graph error page: console errors: {errors:?}");
        browser.screenshot("graph-parse-error").await;

        // A silence from the Alerts page. First the alert is notified as usual.
        wait_for(Duration::from_secs(15), || {
            hook.bodies().iter().any(|n| alert_names(n).contains(&"UiSilenced".to_owned())).then_some(())
        })
        .expect("UiSilenced was never notified");
        client.goto(&format!("{base}/alerts")).await.unwrap();
        assert!(
            client.find_all(Locator::Css("li.alert a.button")).await.unwrap().is_empty(),
            "an anonymous viewer gets no silence buttons"
        );
        client.goto(&format!("{base}/login?next=%2Falerts")).await.unwrap();
        client.find(Locator::Css("#token")).await.unwrap().send_keys(EDITOR_TOKEN).await.unwrap();
        client.find(Locator::Css("form.silence-form button[type=submit]")).await.unwrap().click().await.unwrap();
        let who = browser.wait_js(Duration::from_secs(5), "const w = document.querySelector('.who'); return location.pathname === '/alerts' && w && w.textContent.includes('eve (editor)')").await;
        assert_eq!(who, json!(true), "logged in as eve and back on /alerts");
        let cookie = client.get_named_cookie("herd_session").await.expect("session cookie");
        assert_eq!(cookie.http_only(), Some(true));
        assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
        client
            .find(Locator::XPath("//li[contains(@class,'alert')][.//strong[text()='UiSilenced']]//a[contains(@class,'button')]"))
            .await
            .expect("a Silence button for UiSilenced")
            .click()
            .await
            .unwrap();
        let matchers = client.find(Locator::Css("#matchers")).await.unwrap().prop("value").await.unwrap().unwrap_or_default();
        assert!(matchers.contains("alertname=\"UiSilenced\"") && matchers.contains("team=\"ui\""), "prefilled: {matchers}");
        let author = client.find(Locator::Css("#created_by")).await.unwrap().prop("value").await.unwrap();
        assert_eq!(author.as_deref(), Some("eve"), "the author is prefilled with the token's name");
        client.find(Locator::Css("#comment")).await.unwrap().send_keys("silenced from the browser test").await.unwrap();
        client.find(Locator::Css("form.silence-form button[type=submit]")).await.unwrap().click().await.unwrap();
        let created = browser.wait_js(Duration::from_secs(5), "return new URLSearchParams(location.search).get('created')").await;
        let silence_id = created.as_str().expect("redirected with the new silence's id").to_owned();
        let silenced_at = SystemTime::now();
        let errors = browser.console_errors().await;
        assert!(errors.is_empty(), "alerts pages: console errors: {errors:?}");
        let (_, body) = aggregator.get("/api/v2/silences").unwrap();
        let silences: Json = serde_json::from_str(&body).unwrap();
        let silence = silences.as_array().into_iter().flatten().find(|s| s["id"] == silence_id.as_str()).cloned();
        let silence = silence.unwrap_or_else(|| panic!("silence {silence_id} not in /api/v2/silences: {body}"));
        assert_eq!(silence["status"]["state"], "active", "{silence}");
        assert_eq!(silence["createdBy"], "eve", "{silence}");
        assert!(silence["matchers"].as_array().unwrap().iter().any(|m| m["name"] == "alertname" && m["value"] == "UiSilenced"));

        // The control alert keeps being notified (repeat_interval 2s); the silenced one no longer.
        let grace = silenced_at + Duration::from_secs(1);
        let after = |name: &str| {
            hook.received().iter().filter(|(at, n)| *at > grace && alert_names(n).contains(&name.to_owned())).count()
        };
        wait_for(Duration::from_secs(15), || (after("UiControl") >= 2).then_some(())).expect("UiControl stopped being notified");
        assert_eq!(after("UiSilenced"), 0, "UiSilenced was notified while silenced");
        client.goto(&format!("{base}/alerts")).await.unwrap();
        let muted = browser.text("#alert-groups").await;
        assert!(muted.contains(&format!("Muted: {silence_id}")), "{muted}");
        browser.screenshot("alerts-silenced").await;

        // Expired from the page.
        client
            .find(Locator::Css(&format!("tr[data-silence-id='{silence_id}'] button")))
            .await
            .expect("an Expire button")
            .click()
            .await
            .unwrap();
        browser.wait_js(Duration::from_secs(5), "return new URLSearchParams(location.search).get('expired')").await;
        let (_, body) = aggregator.get(&format!("/api/v2/silence/{silence_id}")).unwrap();
        let silence: Json = serde_json::from_str(&body).unwrap();
        assert_eq!(silence["status"]["state"], "expired", "{body}");

        // The stopped agent stands out.
        wait_for(Duration::from_secs(15), || {
            agents_connected(&aggregator).contains(&("web-2".to_owned(), false)).then_some(())
        })
        .unwrap_or_else(|| panic!("web-2 not disconnected {:?} after it was killed", killed.elapsed()));
        client.goto(&format!("{base}/fleet")).await.unwrap();
        let down = browser.js("return [...document.querySelectorAll('table.fleet tbody tr.down')].map(r => r.cells[0].textContent.trim())", vec![]).await;
        assert_eq!(down, json!(["web-2"]), "disconnected rows");
        assert!(browser.text("table.fleet tr.down").await.contains("disconnected"));
        browser.screenshot("fleet").await;

        // Live parts refresh without a reload: a mark left on the page survives a refresh.
        browser.js("window.herdTestMark = 42; document.documentElement.removeAttribute('data-refreshed'); return true", vec![]).await;
        let refreshed = browser
            .wait_js(Duration::from_secs(8), "return document.documentElement.hasAttribute('data-refreshed') && window.herdTestMark === 42")
            .await;
        assert_eq!(refreshed, json!(true), "the page refreshed in place");

        // Keyboard: the first stop is the skip link; Enter on a focused sort link sorts.
        let first = browser
            .js("return document.querySelector('a[href], button, input, select, textarea').className", vec![])
            .await;
        assert_eq!(first, json!("skip"));
        browser.js("document.querySelector('th a[href*=\"sort=host\"]').focus(); return true", vec![]).await;
        let host_link = client.find(Locator::Css("th a[href*='sort=host']")).await.unwrap();
        host_link.send_keys(&key(Key::Enter)).await.unwrap();
        let sorted = browser.wait_js(Duration::from_secs(5), "return location.search.includes('sort=host')").await;
        assert_eq!(sorted, json!(true), "Enter on the sort link sorted by host");

        // Dark and light themes follow the system.
        client.goto(&format!("{base}/")).await.unwrap();
        let light = browser.js("return getComputedStyle(document.body).backgroundColor", vec![]).await;
        browser.color_scheme("dark").await;
        client.goto(&format!("{base}/")).await.unwrap();
        let dark = browser.js("return getComputedStyle(document.body).backgroundColor", vec![]).await;
        assert_ne!(light, dark, "the dark scheme changes the page");
        browser.screenshot("overview-dark").await;
        browser.color_scheme("light").await;

        // A phone's width: nothing scrolls sideways.
        client.set_window_size(390, 844).await.unwrap();
        for (name, path) in pages {
            client.goto(&format!("{base}{path}")).await.unwrap();
            let widths = browser.js("return [document.documentElement.scrollWidth, window.innerWidth]", vec![]).await;
            let (scroll, inner) = (widths[0].as_u64().unwrap_or(0), widths[1].as_u64().unwrap_or(0));
            assert!(inner <= 420, "the window did not shrink to a phone's width: {widths}");
            if scroll > inner {
                let wide = browser
                    .js(
                        "const clipped = e => { for (let n = e.parentElement; n; n = n.parentElement) if (getComputedStyle(n).overflowX !== 'visible') return true; return false; };
                         return [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > window.innerWidth + 1 && !clipped(e))
                            .slice(0, 8).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))",
                        vec![],
                    )
                    .await;
                panic!("{path} scrolls sideways at {inner}px: {scroll}px wide; past the edge: {wide}");
            }
            if matches!(name, "overview" | "fleet" | "graph" | "alerts") {
                browser.screenshot(&format!("{name}-phone")).await;
            }
        }
        let errors = browser.console_errors().await;
        assert!(errors.is_empty(), "console errors: {errors:?}");
        browser.close().await;
    });
    eprintln!("browser test took {:?}; screenshots in {}", started.elapsed(), screenshot_dir().display());
}
