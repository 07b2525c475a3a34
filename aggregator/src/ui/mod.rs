//! The built-in web UI, served on the aggregator's HTTP port: Overview,
//! Fleet (and a page per agent), Alerts (with silences), Graph, Rules,
//! Targets and Status. Pages are HTML rendered on the server from askama
//! templates (HTML-escaped by default) with charts drawn as SVG on the server;
//! one small script of Herd's own (`assets/herd.js`) refreshes the live parts
//! of a page every few seconds and completes metric and label names on the
//! Graph page. Everything a page loads comes from this binary, and the
//! Content-Security-Policy sent with every page says so to the browser.
//!
//! - `pages`: the handlers and the data each page shows.
//! - `chart`: SVG line charts; `format`: times, sizes, units.
//! - `locate`: where a query's parse error is, for the Graph page.
//! - `assets`: the stylesheet, the script and the icon, embedded.
//!
//! The UI reads the same parts the HTTP API reads (fleet, store, rule
//! manager, alert router) and writes nothing but silences, through the
//! router's own `Silences`.

mod assets;
mod chart;
mod format;
mod locate;
mod pages;

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use axum::routing::{get, post};
use herd_common::metric::Labels;
use tokio::sync::Semaphore;

use crate::alertmanager::Router as AlertRouter;
use crate::fleet::Fleet;
use crate::ingest::IngestStats;
use crate::promql::{Engine, QueryRange, Value};
use crate::rules::RuleManager;
use crate::store::Storage;
use crate::store::db::Db;
use crate::wal::WalStats;

/// UI queries evaluated at once; more wait (they are small, fixed queries
/// besides the Graph page's).
const MAX_CONCURRENT_QUERIES: usize = 4;

/// The parts of a running aggregator the UI shows.
pub struct UiSources {
    pub fleet: Arc<Fleet>,
    pub store: Arc<dyn Storage>,
    /// The durable store's own figures; `None` for a memory store.
    pub db: Option<Arc<Db>>,
    /// The engine for the UI's queries (its own limits, like the API's).
    pub engine: Arc<Engine>,
    pub rules: Arc<RuleManager>,
    /// The built-in alert router, when `alerting.router_config` is set.
    pub router: Option<Arc<AlertRouter>>,
    pub ingest: Arc<IngestStats>,
    pub wal: Arc<WalStats>,
    /// The loaded configuration as text, secrets already masked.
    pub config_text: String,
    /// The HTTP authentication layer, for the login form's sessions.
    pub auth: Option<Arc<crate::auth::Authenticator>>,
    /// Remote configuration: each agent's desired and applied versions.
    pub configs: Option<Arc<crate::configs::ConfigManager>>,
}

/// The UI's state: its sources and a cache of the Status page's cardinality figures.
pub struct Ui {
    sources: UiSources,
    started_at: SystemTime,
    query_slots: Arc<Semaphore>,
    cardinality: Mutex<Option<(Instant, Arc<pages::Cardinality>)>>,
}

impl Ui {
    pub fn new(sources: UiSources) -> Arc<Self> {
        Arc::new(Self {
            sources,
            started_at: SystemTime::now(),
            query_slots: Arc::new(Semaphore::new(MAX_CONCURRENT_QUERIES)),
            cardinality: Mutex::new(None),
        })
    }

    /// Evaluates `expr`; the parser's or the engine's message on failure.
    async fn query(&self, expr: String, range: QueryRange) -> Result<Value, String> {
        let permit = Arc::clone(&self.query_slots)
            .acquire_owned()
            .await
            .map_err(|_| "the aggregator is shutting down".to_owned())?;
        let engine = Arc::clone(&self.sources.engine);
        let evaluated = crate::api::on_query_thread(move || {
            let _permit = permit;
            let parsed = Engine::parse(&expr)?;
            engine.query(&parsed, range).map(|output| output.value)
        })
        .await
        .map_err(|err| err.message)?;
        evaluated.map_err(|err| err.to_string())
    }

    /// The series of an instant query at `time_ms` with their values; empty
    /// when the query fails (for the UI's own, fixed queries).
    async fn vector(&self, expr: &str, time_ms: i64) -> Vec<(Arc<Labels>, f64)> {
        match self.query(expr.to_owned(), QueryRange::Instant { time_ms }).await {
            Ok(Value::Vector(vector)) => vector.into_iter().map(|(labels, sample)| (labels, sample.value)).collect(),
            Ok(Value::Scalar(sample)) => vec![(Arc::new(Labels::default()), sample.value)],
            Ok(_) => Vec::new(),
            Err(error) => {
                tracing::debug!(%error, expr, "UI query failed");
                Vec::new()
            }
        }
    }

    /// The first value of an instant query, if any.
    async fn scalar(&self, expr: &str, time_ms: i64) -> Option<f64> {
        self.vector(expr, time_ms).await.first().map(|(_, v)| *v)
    }

    /// A range query's series as chart lines, named by `name` (or by their labels).
    async fn lines(
        &self,
        expr: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
        name: Option<&str>,
    ) -> Vec<chart::Line> {
        let range = QueryRange::Range { start_ms, end_ms, step_ms };
        match self.query(expr.to_owned(), range).await {
            Ok(Value::Matrix(matrix)) => matrix
                .into_iter()
                .map(|(labels, samples)| chart::Line {
                    name: name.map_or_else(|| pages::series_name(&labels), str::to_owned),
                    points: samples.iter().map(|s| (s.timestamp_ms, s.value)).collect(),
                })
                .collect(),
            Ok(_) => Vec::new(),
            Err(error) => {
                tracing::debug!(%error, expr, "UI range query failed");
                Vec::new()
            }
        }
    }
}

/// The UI's routes, with their own state: merge them into the HTTP router.
pub fn routes(ui: Arc<Ui>) -> Router {
    Router::new()
        .route("/", get(pages::overview))
        .route("/fleet", get(pages::fleet))
        .route("/fleet/{id}", get(pages::agent))
        .route("/alerts", get(pages::alerts))
        .route("/alerts/silence", get(pages::new_silence))
        .route("/alerts/silences", post(pages::create_silence))
        .route("/alerts/silences/{id}/expire", post(pages::expire_silence))
        .route("/graph", get(pages::graph))
        .route("/rules", get(pages::rules))
        .route("/targets", get(pages::targets))
        .route("/status", get(pages::status))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/ui/assets/{file}", get(assets::serve))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(ui)
}

/// Nothing from elsewhere: scripts, styles, images and requests only from
/// this origin, no inline script or style, no framing, forms only to here.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}
