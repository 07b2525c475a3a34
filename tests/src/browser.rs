//! Headless Chromium for the web UI's tests: Debian's `chromium` driven by
//! its `chromedriver` (started on a free port, killed on drop) through
//! fantoccini. Console messages come from chromedriver's browser log;
//! screenshots go to `target/ui-screenshots/`. Without the two binaries the
//! tests say so and pass, unless `HERD_REQUIRE_PEERS=1`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value as Json, json};

use crate::{free_tcp_port, http_get, wait_for};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Whether Chromium and chromedriver are installed; without them, fails under `HERD_REQUIRE_PEERS=1`.
pub fn browser_available() -> bool {
    let found = std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists();
    if !found {
        assert!(
            std::env::var("HERD_REQUIRE_PEERS").as_deref() != Ok("1"),
            "chromium or chromedriver is missing: apt-get install chromium chromium-driver"
        );
        eprintln!("skipped: chromium or chromedriver is not installed (apt-get install chromium chromium-driver)");
    }
    found
}

/// Where screenshots go: `target/ui-screenshots/` of the running test's target directory.
pub fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe.parent().expect("executable has a directory").to_path_buf();
    // target/<profile>/deps -> target
    while dir.file_name().is_some_and(|n| n != "target") && dir.parent().is_some() {
        dir = dir.parent().expect("checked").to_path_buf();
    }
    let dir = dir.join("ui-screenshots");
    std::fs::create_dir_all(&dir).expect("create target/ui-screenshots");
    dir
}

/// A chromedriver process and one browser session on it.
pub struct Browser {
    pub client: Client,
    driver: Child,
}

/// chromedriver's `POST /session/{id}/se/log`: console messages since the last call.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({"type": "browser"}).to_string()))
    }
}

/// chromedriver's `POST /session/{id}/goog/cdp/execute`: one DevTools command.
#[derive(Debug)]
struct Cdp {
    command: &'static str,
    params: Json,
}

impl WebDriverCompatibleCommand for Cdp {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/goog/cdp/execute", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({"cmd": self.command, "params": self.params}).to_string()))
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium of `width` x `height`.
    pub async fn start(width: u32, height: u32) -> Self {
        let port = free_tcp_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let status = format!("http://127.0.0.1:{port}/status");
        let ready = wait_for(Duration::from_secs(10), || {
            http_get(&status).filter(|(code, body)| *code == 200 && body.contains("\"ready\":true"))
        });
        assert!(ready.is_some(), "chromedriver did not become ready on port {port}");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-extensions", "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                ],
            }),
        );
        capabilities.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a chromedriver session");
        Self { client, driver }
    }

    /// Console messages of level SEVERE (errors, failed loads, CSP refusals) since the last call.
    pub async fn console_errors(&self) -> Vec<String> {
        let entries = self.client.issue_cmd(BrowserLog).await.expect("chromedriver browser log");
        entries
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Makes pages see `prefers-color-scheme: SCHEME` (`light` or `dark`).
    pub async fn color_scheme(&self, scheme: &str) {
        let params = json!({"features": [{"name": "prefers-color-scheme", "value": scheme}]});
        self.client.issue_cmd(Cdp { command: "Emulation.setEmulatedMedia", params }).await.expect("emulate media");
    }

    /// Saves a PNG of the viewport as `target/ui-screenshots/NAME.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns its value.
    pub async fn js(&self, script: &str, args: Vec<Json>) -> Json {
        self.client.execute(script, args).await.unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Polls `script` until it returns a truthy value or `limit` passes; the last value.
    pub async fn wait_js(&self, limit: Duration, script: &str) -> Json {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let value = self.js(script, vec![]).await;
            let truthy = !matches!(value, Json::Null | Json::Bool(false)) && value != json!(0) && value != json!("");
            if truthy || std::time::Instant::now() >= deadline {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        let element = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}"));
        element.text().await.expect("element text")
    }

    /// Ends the browser session; chromedriver is killed on drop.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
