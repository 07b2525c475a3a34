//! The UI's pages: each handler gathers what its page shows from the
//! aggregator's parts into a plain view struct, and an askama template
//! (under `templates/`, HTML-escaped by default) renders it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use herd_common::metric::{Labels, METRIC_NAME};
use serde::Deserialize;

use super::chart::{Chart, Line};
use super::format::{self, Unit, ago, now_ms, short_duration, unix_ms, utc};
use super::{Ui, assets, locate};
use crate::alertmanager::matcher::{self, Matcher};
use crate::alertmanager::silence::{SilenceMatcher, SilenceRequest, SilenceState};
use crate::auth::Principal;
use crate::auth::session::{self, Session};
use crate::configs::{AgentConfigStatus, ConfigState};
use crate::promql::{QueryRange, Value};
use crate::rules::{AlertState, Health, Rule};
use herd_common::config::http::Role;

// ---- shared ----

/// Who is looking: the caller the authentication layer established (none
/// when the UI runs without it, as in unit tests) and their browser session.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub principal: Option<Principal>,
    pub session: Option<Session>,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            principal: parts.extensions.get::<Principal>().cloned(),
            session: parts.extensions.get::<Session>().cloned(),
        })
    }
}

impl Caller {
    /// Whether the caller may create and expire silences.
    fn can_edit(&self) -> bool {
        self.principal.as_ref().is_none_or(|p| p.role >= Role::Editor)
    }

    /// Whether a form's CSRF token is the session's (forms sent without a
    /// session cookie carry none and need none: see `auth::session`).
    fn csrf_ok(&self, token: &str) -> bool {
        self.session.as_ref().is_none_or(|s| session::same_token(&s.csrf, token))
    }
}

/// What every page's frame (`base.html`) shows.
pub struct Shell {
    pub page: &'static str,
    pub title: String,
    pub now: String,
    pub asset_version: &'static str,
    /// `ana (editor)`, `anonymous (viewer)`; empty without authentication.
    pub user: String,
    pub signed_in: bool,
    pub csrf: String,
    pub can_edit: bool,
}

impl Shell {
    fn new(page: &'static str, title: impl Into<String>, caller: &Caller) -> Self {
        Self {
            page,
            title: title.into(),
            now: utc(now_ms()),
            asset_version: assets::version(),
            user: caller.principal.as_ref().map_or(String::new(), |p| format!("{} ({})", p.name, p.role)),
            signed_in: caller.session.is_some(),
            csrf: caller.session.as_ref().map_or(String::new(), |s| s.csrf.clone()),
            can_edit: caller.can_edit(),
        }
    }
}

fn render(template: &impl Template, status: StatusCode) -> Response {
    match template.render() {
        Ok(html) => (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "UI page failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page failed to render; see the aggregator's log\n").into_response()
        }
    }
}

fn page(template: &impl Template) -> Response {
    render(template, StatusCode::OK)
}

/// `name{a="b", c="d"}` as Prometheus prints a series.
pub fn series_name(labels: &Labels) -> String {
    let name = labels.metric_name().unwrap_or("");
    let pairs: Vec<String> =
        labels.iter().filter(|(n, _)| *n != METRIC_NAME).map(|(n, v)| format!("{n}={}", quoted(v))).collect();
    if pairs.is_empty() && !name.is_empty() { name.to_owned() } else { format!("{name}{{{}}}", pairs.join(", ")) }
}

/// A PromQL (and Alertmanager matcher) string literal of `value`.
pub fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn url_encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// The chart step for a range: about 240 points, at least a second.
fn step_for(range_ms: i64) -> i64 {
    ((range_ms / 240) / 1000).max(1) * 1000
}

#[derive(Debug, Clone)]
pub struct Pair {
    pub name: String,
    pub value: String,
}

fn pairs<'a>(labels: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<Pair> {
    labels.map(|(n, v)| Pair { name: n.to_owned(), value: v.to_owned() }).collect()
}

// ---- overview ----

pub struct Figure {
    pub label: &'static str,
    pub value: String,
    pub detail: String,
    pub href: String,
    pub alarm: bool,
}

pub struct SlowRule {
    pub group: String,
    pub name: String,
    pub duration: String,
}

#[derive(Template)]
#[template(path = "overview.html")]
pub struct OverviewPage {
    pub shell: Shell,
    pub figures: Vec<Figure>,
    pub severities: Vec<Pair>,
    pub slow_rules: Vec<SlowRule>,
    pub charts: Vec<Chart>,
}

pub async fn overview(State(ui): State<Arc<Ui>>, caller: Caller) -> Response {
    let now = now_ms();
    let agents = ui.sources.fleet.list();
    let connected = agents.iter().filter(|a| a.connected).count();
    let groups = ui.sources.rules.groups().await;
    let mut by_severity: BTreeMap<String, usize> = BTreeMap::new();
    let (mut firing, mut pending) = (0, 0);
    let mut slow: Vec<(Duration, SlowRule)> = Vec::new();
    for group in &groups {
        for rule in &group.rules {
            for alert in rule.active.values() {
                match alert.state {
                    AlertState::Firing => {
                        firing += 1;
                        let severity = alert.labels.get("severity").unwrap_or("none").to_owned();
                        *by_severity.entry(severity).or_default() += 1;
                    }
                    AlertState::Pending => pending += 1,
                    AlertState::Inactive => {}
                }
            }
            slow.push((
                rule.last_eval_duration,
                SlowRule {
                    group: group.name.clone(),
                    name: rule.rule.name().to_owned(),
                    duration: format::seconds(rule.last_eval_duration.as_secs_f64()),
                },
            ));
        }
    }
    slow.sort_by_key(|(duration, _)| std::cmp::Reverse(*duration));
    let ingest_rate = ui.scalar("sum(rate(herd_ingest_samples_total[1m]))", now).await;
    let stats = ui.sources.store.stats();
    let wal_bytes = ui.sources.wal.bytes.load(std::sync::atomic::Ordering::Relaxed);
    let (storage_used, retention) = match &ui.sources.db {
        Some(db) => {
            let (_, block_bytes) = db.block_stats();
            let options = db.options();
            let mut retention =
                format!("retention {}", short_duration(Duration::from_millis(options.retention_ms.max(0) as u64)));
            if let Some(bytes) = options.retention_bytes {
                retention.push_str(&format!(" or {}", format::bytes(bytes as f64)));
            }
            (block_bytes + wal_bytes + db.head.chunk_bytes() as u64, retention)
        }
        None => (wal_bytes, "in memory".to_owned()),
    };
    let severity_text = if by_severity.is_empty() {
        "none firing".to_owned()
    } else {
        by_severity.iter().map(|(s, n)| format!("{n} {s}")).collect::<Vec<_>>().join(", ")
    };
    let figures = vec![
        Figure {
            label: "Agents connected",
            value: format!("{connected} / {}", agents.len()),
            detail: if connected < agents.len() {
                format!("{} disconnected", agents.len() - connected)
            } else {
                "all connected".to_owned()
            },
            href: "/fleet".into(),
            alarm: connected < agents.len(),
        },
        Figure {
            label: "Alerts firing",
            value: firing.to_string(),
            detail: format!("{severity_text}; {pending} pending"),
            href: "/alerts".into(),
            alarm: firing > 0,
        },
        Figure {
            label: "Ingest rate",
            value: ingest_rate.map_or("-".to_owned(), |r| Unit::PerSecond.format(r)),
            detail: "samples from agents, last minute".into(),
            href: format!("/graph?expr={}", url_encode("sum(rate(herd_ingest_samples_total[1m]))")),
            alarm: false,
        },
        Figure {
            label: "Series",
            value: format::number(stats.series as f64),
            detail: format!("{} samples appended", format::number(stats.samples as f64)),
            href: "/status#cardinality".into(),
            alarm: false,
        },
        Figure {
            label: "Storage used",
            value: format::bytes(storage_used as f64),
            detail: format!("head, blocks and WAL; {retention}"),
            href: "/status#store".into(),
            alarm: false,
        },
    ];
    let severities = by_severity.into_iter().map(|(s, n)| Pair { name: s, value: n.to_string() }).collect();
    let (start, step) = (now - 3_600_000, 30_000);
    let ingest = ui.lines("sum(rate(herd_ingest_samples_total[1m]))", start, now, step, Some("samples/s")).await;
    let connected_line = ui.lines("sum(herd_fleet_agents_connected)", start, now, step, Some("agents")).await;
    let charts = vec![
        Chart::new(
            "Samples ingested per second, last hour",
            "chart-ingest",
            Unit::PerSecond,
            &ingest,
            start,
            now,
            step,
        ),
        Chart::new("Agents connected, last hour", "chart-agents", Unit::Plain, &connected_line, start, now, step),
    ];
    page(&OverviewPage {
        shell: Shell::new("overview", "Overview", &caller),
        figures,
        severities,
        slow_rules: slow.into_iter().take(5).map(|(_, r)| r).collect(),
        charts,
    })
}

// ---- fleet ----

pub struct AgentRow {
    pub id: String,
    pub href: String,
    pub claimed_id: String,
    pub hostname: String,
    /// Bound to the agent's certificate at enrollment: what selectors and `up` use.
    pub trusted_labels: Vec<Pair>,
    /// What the agent's hello claims: informational.
    pub labels: Vec<Pair>,
    pub version: String,
    pub connected: bool,
    pub connected_since: String,
    pub last_seen: String,
    pub last_seen_ago: String,
    pub backlog: u64,
    pub clock_offset: String,
    pub config_version: u64,
    /// Remote configuration: `applied`, `refused`, ... (empty without it).
    pub config_state: &'static str,
    pub config_desired: String,
    pub config_applied: String,
    pub config_error: String,
    pub config_bad: bool,
    pub remote_addr: String,
}

pub struct SortLink {
    pub label: &'static str,
    pub href: String,
    /// `ascending`, `descending` or `none`, for `aria-sort`.
    pub aria: &'static str,
}

#[derive(Template)]
#[template(path = "fleet.html")]
pub struct FleetPage {
    pub shell: Shell,
    pub agents: Vec<AgentRow>,
    pub total: usize,
    pub filter: String,
    pub filter_error: String,
    pub columns: Vec<SortLink>,
}

#[derive(Debug, Default, Deserialize)]
pub struct FleetParams {
    #[serde(default, rename = "match")]
    filter: String,
    #[serde(default)]
    sort: String,
    #[serde(default)]
    order: String,
}

const FLEET_COLUMNS: &[(&str, &str)] = &[
    ("agent", "Agent"),
    ("host", "Host"),
    ("version", "Version"),
    ("status", "Status"),
    ("since", "Connected since"),
    ("seen", "Last seen"),
    ("backlog", "Backlog"),
    ("offset", "Clock offset"),
];

fn agent_row(
    record: &crate::fleet::AgentRecord,
    clock_offset_ms: Option<i64>,
    config: Option<&AgentConfigStatus>,
    now: i64,
) -> AgentRow {
    let version = |profile: &str, version: u64| {
        if version == 0 { "local file".to_owned() } else { format!("{profile} v{version}") }
    };
    AgentRow {
        id: record.id.clone(),
        href: format!("/fleet/{}", url_encode(&record.id)),
        claimed_id: if record.claimed_id == record.id { String::new() } else { record.claimed_id.clone() },
        hostname: record.hostname.clone(),
        trusted_labels: pairs(record.trusted_labels.iter().map(|(n, v)| (n.as_str(), v.as_str()))),
        labels: pairs(record.labels.iter().map(|(n, v)| (n.as_str(), v.as_str()))),
        version: if record.version.is_empty() { "-".into() } else { record.version.clone() },
        connected: record.connected,
        connected_since: if record.connected { utc(unix_ms(record.connected_since)) } else { "-".into() },
        last_seen: utc(unix_ms(record.last_seen)),
        last_seen_ago: ago(unix_ms(record.last_seen), now),
        backlog: record.backlog_batches,
        clock_offset: clock_offset_ms.map_or("-".to_owned(), |ms| {
            let sign = if ms < 0 { "-" } else { "+" };
            format!("{sign}{}", short_duration(Duration::from_millis(ms.unsigned_abs())))
        }),
        config_version: record.config_version,
        config_state: config.map_or("", |c| c.state.as_str()),
        config_desired: config.map_or(String::new(), |c| match &c.desired {
            Some((profile, v)) => version(profile, *v),
            None => "local file".to_owned(),
        }),
        config_applied: config.map_or(String::new(), |c| version(&c.applied_profile, c.applied_version)),
        config_error: config.and_then(|c| c.last_error.clone()).unwrap_or_default(),
        config_bad: config
            .is_some_and(|c| matches!(c.state, ConfigState::Refused | ConfigState::RolledBack | ConfigState::Conflict)),
        remote_addr: if record.connected { record.remote_addr.to_string() } else { "-".into() },
    }
}

/// Each agent's remote configuration status, by agent.
fn config_statuses(ui: &Ui) -> HashMap<String, AgentConfigStatus> {
    let statuses = ui.sources.configs.as_ref().and_then(|c| c.status(None).ok()).unwrap_or_default();
    statuses.into_iter().map(|s| (s.agent.clone(), s)).collect()
}

/// The labels a fleet filter matches against: the agent's claimed labels
/// overlaid by its trusted ones (a trusted label wins, as in remote-config
/// selectors), plus `agent`, `host`, `version`, `status` (`connected` or
/// `disconnected`) and `config_state` (`applied`, `refused`, ...).
fn filter_labels(record: &crate::fleet::AgentRecord, config: Option<&AgentConfigStatus>) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = record.labels.iter().cloned().collect();
    labels.extend(record.trusted_labels.iter().cloned());
    labels.insert("agent".into(), record.id.clone());
    labels.insert("host".into(), record.hostname.clone());
    labels.insert("version".into(), record.version.clone());
    labels.insert("status".into(), if record.connected { "connected" } else { "disconnected" }.into());
    if let Some(config) = config {
        labels.insert("config_state".into(), config.state.as_str().into());
    }
    labels
}

pub async fn fleet(State(ui): State<Arc<Ui>>, caller: Caller, Query(params): Query<FleetParams>) -> Response {
    let now = now_ms();
    let mut records = ui.sources.fleet.list();
    let total = records.len();
    let mut filter_error = String::new();
    let configs = config_statuses(&ui);
    if !params.filter.trim().is_empty() {
        match matcher::parse_matchers(&params.filter) {
            Ok(matchers) => records.retain(|r| matcher::all_match(&matchers, &filter_labels(r, configs.get(&r.id)))),
            Err(err) => filter_error = err.to_string(),
        }
    }
    let offsets = ui.sources.fleet.clock_offsets();
    let offset = |id: &str| offsets.get(id).copied();
    let sort = if FLEET_COLUMNS.iter().any(|(key, _)| *key == params.sort) { params.sort.as_str() } else { "agent" };
    records.sort_by(|a, b| {
        match sort {
            "host" => a.hostname.cmp(&b.hostname),
            "version" => a.version.cmp(&b.version),
            // Disconnected first: they are what an operator looks for.
            "status" => a.connected.cmp(&b.connected),
            "since" => a.connected_since.cmp(&b.connected_since),
            "seen" => a.last_seen.cmp(&b.last_seen),
            "backlog" => a.backlog_batches.cmp(&b.backlog_batches),
            "offset" => offset(&a.id).map(i64::abs).cmp(&offset(&b.id).map(i64::abs)),
            _ => a.id.cmp(&b.id),
        }
        .then_with(|| a.id.cmp(&b.id))
    });
    let descending = params.order == "desc";
    if descending {
        records.reverse();
    }
    let columns = FLEET_COLUMNS
        .iter()
        .map(|&(key, label)| {
            let active = key == sort;
            let next = if active && !descending { "desc" } else { "asc" };
            SortLink {
                label,
                href: format!("/fleet?match={}&sort={key}&order={next}", url_encode(&params.filter)),
                aria: match (active, descending) {
                    (false, _) => "none",
                    (true, false) => "ascending",
                    (true, true) => "descending",
                },
            }
        })
        .collect();
    let agents = records.iter().map(|r| agent_row(r, offset(&r.id), configs.get(&r.id), now)).collect();
    page(&FleetPage {
        shell: Shell::new("fleet", "Fleet", &caller),
        agents,
        total,
        filter: params.filter,
        filter_error,
        columns,
    })
}

// ---- one agent ----

pub struct TargetRow {
    pub job: String,
    pub instance: String,
    pub up: String,
    pub healthy: bool,
}

pub struct CollectorRow {
    pub job: String,
    pub collector: String,
    pub success: bool,
    pub duration: String,
}

#[derive(Template)]
#[template(path = "agent.html")]
pub struct AgentPage {
    pub shell: Shell,
    pub agent: AgentRow,
    pub instance: String,
    pub batches: String,
    pub samples: String,
    pub series: u64,
    pub targets: Vec<TargetRow>,
    pub collectors: Vec<CollectorRow>,
    pub resources: Vec<Pair>,
    pub charts: Vec<Chart>,
    pub range: String,
    pub ranges: Vec<RangeLink>,
}

pub struct RangeLink {
    pub label: &'static str,
    pub href: String,
    pub current: bool,
}

const RANGES: &[&str] = &["15m", "1h", "6h", "1d", "7d"];

#[derive(Debug, Default, Deserialize)]
pub struct RangeParams {
    #[serde(default)]
    range: String,
}

#[derive(Template)]
#[template(path = "not_found.html")]
pub struct NotFoundPage {
    pub shell: Shell,
    pub message: String,
}

fn not_found(caller: &Caller, page_name: &'static str, message: String) -> Response {
    render(&NotFoundPage { shell: Shell::new(page_name, "Not found", caller), message }, StatusCode::NOT_FOUND)
}

pub async fn agent(
    State(ui): State<Arc<Ui>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(params): Query<RangeParams>,
) -> Response {
    let now = now_ms();
    let Some(record) = ui.sources.fleet.list().into_iter().find(|r| r.id == id) else {
        return not_found(&caller, "fleet", format!("No agent {id:?} is known to this aggregator."));
    };
    // The agent's own series carry the `instance` of its `herd` job; host series that of `node`.
    let instance_of = |job: &str| record.targets.iter().find(|t| t.job == job).map(|t| t.instance.clone());
    let instance = instance_of("herd").or_else(|| instance_of("node")).unwrap_or_else(|| record.id.clone());
    let host = instance_of("node").unwrap_or_else(|| instance.clone());
    let (i, h) = (quoted(&instance), quoted(&host));

    let mut targets = Vec::new();
    for target in &record.targets {
        let expr = format!("up{{job={},instance={}}}", quoted(&target.job), quoted(&target.instance));
        let up = ui.scalar(&expr, now).await;
        targets.push(TargetRow {
            job: target.job.clone(),
            instance: target.instance.clone(),
            up: up.map_or("-".to_owned(), format::format_float),
            healthy: up == Some(1.0),
        });
    }
    let durations: HashMap<(String, String), f64> = ui
        .vector(&format!("herd_collector_duration_seconds{{instance={i}}}"), now)
        .await
        .into_iter()
        .map(|(l, v)| ((l.get("job").unwrap_or("").to_owned(), l.get("collector").unwrap_or("").to_owned()), v))
        .collect();
    let mut collectors: Vec<CollectorRow> = ui
        .vector(&format!("herd_collector_success{{instance={i}}}"), now)
        .await
        .into_iter()
        .map(|(labels, value)| {
            let key = (labels.get("job").unwrap_or("").to_owned(), labels.get("collector").unwrap_or("").to_owned());
            CollectorRow {
                duration: durations.get(&key).map_or("-".to_owned(), |d| format::seconds(*d)),
                job: key.0,
                collector: key.1,
                success: value == 1.0,
            }
        })
        .collect();
    collectors.sort_by(|a, b| (&a.job, &a.collector).cmp(&(&b.job, &b.collector)));
    let mut resources = Vec::new();
    for (label, expr, unit) in [
        ("Resident memory", format!("process_resident_memory_bytes{{job=\"herd\",instance={i}}}"), Unit::Bytes),
        ("CPU (cores)", format!("rate(process_cpu_seconds_total{{job=\"herd\",instance={i}}}[1m])"), Unit::Plain),
        ("Buffer on disk", format!("herd_agent_buffer_bytes{{instance={i}}}"), Unit::Bytes),
        ("Buffered batches", format!("herd_agent_buffer_batches{{instance={i}}}"), Unit::Plain),
        ("Oldest unsent batch", format!("herd_agent_buffer_oldest_unsent_age_seconds{{instance={i}}}"), Unit::Seconds),
        ("Uplink sent", format!("rate(herd_agent_uplink_sent_bytes_total{{instance={i}}}[1m])"), Unit::BytesPerSecond),
        ("Dropped samples", format!("herd_agent_buffer_dropped_samples_total{{instance={i}}}"), Unit::Plain),
    ] {
        let value = ui.scalar(&expr, now).await.map_or("-".to_owned(), |v| unit.format(v));
        resources.push(Pair { name: label.to_owned(), value });
    }
    let range = if RANGES.contains(&params.range.as_str()) { params.range.clone() } else { "1h".to_owned() };
    let range_ms = crate::promql::parse_duration_ms(&range).unwrap_or(3_600_000);
    let (start, step) = (now - range_ms, step_for(range_ms));
    let window = format!("[{}s]", (step / 1000 * 4).max(60));
    let specs = [
        (
            "CPU busy",
            format!("1 - avg by (instance) (rate(node_cpu_seconds_total{{mode=\"idle\",instance={h}}}{window}))"),
            Unit::Ratio,
            Some("busy"),
        ),
        (
            "Memory used",
            format!("1 - node_memory_MemAvailable_bytes{{instance={h}}} / node_memory_MemTotal_bytes{{instance={h}}}"),
            Unit::Ratio,
            Some("used"),
        ),
        (
            "Filesystem used",
            format!(
                "max by (mountpoint) (1 - node_filesystem_avail_bytes{{instance={h}}} / node_filesystem_size_bytes{{instance={h}}})"
            ),
            Unit::Ratio,
            None,
        ),
        (
            "Disk I/O",
            format!(
                "label_replace(sum(rate(node_disk_read_bytes_total{{instance={h}}}{window})), \"io\", \"read\", \"\", \"\") \
                 or label_replace(sum(rate(node_disk_written_bytes_total{{instance={h}}}{window})), \"io\", \"written\", \"\", \"\")"
            ),
            Unit::BytesPerSecond,
            None,
        ),
        (
            "Network",
            format!(
                "label_replace(sum(rate(node_network_receive_bytes_total{{instance={h},device!=\"lo\"}}{window})), \"direction\", \"received\", \"\", \"\") \
                 or label_replace(sum(rate(node_network_transmit_bytes_total{{instance={h},device!=\"lo\"}}{window})), \"direction\", \"sent\", \"\", \"\")"
            ),
            Unit::BytesPerSecond,
            None,
        ),
    ];
    let mut charts = Vec::new();
    for (n, (title, expr, unit, name)) in specs.iter().enumerate() {
        let lines = ui.lines(expr, start, now, step, *name).await;
        charts.push(Chart::new(title, &format!("chart-{n}"), *unit, &lines, start, now, step));
    }
    let ranges = RANGES
        .iter()
        .map(|r| RangeLink {
            label: r,
            href: format!("/fleet/{}?range={r}", url_encode(&record.id)),
            current: *r == range,
        })
        .collect();
    let offset = ui.sources.fleet.clock_offsets().get(&record.id).copied();
    let config = ui.sources.configs.as_ref().and_then(|c| c.agent_status(&record.id));
    page(&AgentPage {
        shell: Shell::new("fleet", format!("Agent {}", record.id), &caller),
        batches: format::number(record.batches_received as f64),
        samples: format::number(record.samples_received as f64),
        series: record.series_defined,
        agent: agent_row(&record, offset, config.as_ref(), now),
        instance,
        targets,
        collectors,
        resources,
        charts,
        range,
        ranges,
    })
}

// ---- alerts and silences ----

#[derive(Clone)]
pub struct AlertView {
    pub name: String,
    pub state: &'static str,
    pub severity: String,
    pub labels: Vec<Pair>,
    pub annotations: Vec<Pair>,
    pub active_since: String,
    pub active_ago: String,
    pub value: String,
    pub silence_href: String,
    pub silenced_by: Vec<String>,
}

pub struct AlertGroupView {
    pub receiver: String,
    pub labels: String,
    pub alerts: Vec<AlertView>,
}

pub struct SilenceView {
    pub id: String,
    pub state: &'static str,
    pub matchers: String,
    pub starts: String,
    pub ends: String,
    pub ends_ago: String,
    pub created_by: String,
    pub comment: String,
    pub expirable: bool,
}

#[derive(Template)]
#[template(path = "alerts.html")]
pub struct AlertsPage {
    pub shell: Shell,
    pub groups: Vec<AlertGroupView>,
    pub firing: usize,
    pub pending: usize,
    pub router: bool,
    pub silences: Vec<SilenceView>,
    pub notice: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct AlertsParams {
    #[serde(default)]
    created: String,
    #[serde(default)]
    expired: String,
}

/// `{a="b", c="d"}` for a silence form, every label of an alert.
fn matchers_text(labels: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = labels.iter().map(|(n, v)| format!("{n}={}", quoted(v))).collect();
    format!("{{{}}}", parts.join(", "))
}

pub async fn alerts(State(ui): State<Arc<Ui>>, caller: Caller, Query(params): Query<AlertsParams>) -> Response {
    let now = now_ms();
    let groups = ui.sources.rules.groups().await;
    let router = ui.sources.router.as_ref();
    let config = router.map(|r| r.config());
    // Silences and inhibitions per alert, as the router sees them now.
    let muted: HashMap<u64, Vec<String>> = router.map_or_else(HashMap::new, |router| {
        router.with_state(|dispatcher, silences| {
            let config = router.config();
            let index = dispatcher.inhibition_index(&config, now);
            dispatcher
                .alerts()
                .map(|alert| {
                    let status = dispatcher.status_with(&config, silences, &index, alert, now);
                    let mut by = status.silenced_by.clone();
                    by.extend(status.inhibited_by.iter().map(|f| format!("inhibited by {f}")));
                    (alert.fingerprint, by)
                })
                .collect()
        })
    });
    let mut grouped: BTreeMap<(String, String), Vec<AlertView>> = BTreeMap::new();
    let (mut firing, mut pending) = (0, 0);
    for group in &groups {
        for rule in &group.rules {
            for alert in rule.active.values() {
                let state = match alert.state {
                    AlertState::Firing => {
                        firing += 1;
                        "firing"
                    }
                    AlertState::Pending => {
                        pending += 1;
                        "pending"
                    }
                    AlertState::Inactive => continue,
                };
                let labels: BTreeMap<String, String> =
                    alert.labels.iter().map(|(n, v)| (n.to_owned(), v.to_owned())).collect();
                let fingerprint = crate::alertmanager::dispatch::fingerprint(&labels);
                let view = AlertView {
                    name: rule.rule.name().to_owned(),
                    state,
                    severity: alert.labels.get("severity").unwrap_or("").to_owned(),
                    labels: pairs(alert.labels.iter().filter(|(n, _)| *n != "alertname")),
                    annotations: pairs(alert.annotations.iter().map(|(n, v)| (n.as_str(), v.as_str()))),
                    active_since: utc(alert.active_at_ms),
                    active_ago: ago(alert.active_at_ms, now),
                    value: format::format_float(alert.value),
                    silence_href: format!("/alerts/silence?matchers={}", url_encode(&matchers_text(&labels))),
                    silenced_by: muted.get(&fingerprint).cloned().unwrap_or_default(),
                };
                // Grouped as the router groups them: by route and its group_by labels.
                let keys: Vec<(String, String)> = match &config {
                    Some(config) => config
                        .route
                        .matching(&labels)
                        .iter()
                        .map(|route| {
                            let group_labels = crate::alertmanager::dispatch::group_labels(&route.group_by, &labels);
                            (route.receiver.clone(), matchers_text(&group_labels))
                        })
                        .collect(),
                    None => vec![(
                        String::new(),
                        matchers_text(&BTreeMap::from([("alertname".to_owned(), view.name.clone())])),
                    )],
                };
                // An alert several routes match is in each of their groups.
                for key in keys {
                    grouped.entry(key).or_default().push(view.clone());
                }
            }
        }
    }
    let groups = grouped
        .into_iter()
        .map(|((receiver, labels), mut alerts)| {
            // Firing before pending, then by name.
            alerts.sort_by(|a, b| (a.state != "firing", &a.name).cmp(&(b.state != "firing", &b.name)));
            AlertGroupView { receiver, labels, alerts }
        })
        .collect();
    let silences = router.map_or_else(Vec::new, |router| {
        router.with_state(|_, silences| {
            let mut list: Vec<_> = silences.all().iter().collect();
            list.sort_by_key(|s| (s.state(now) as u8, std::cmp::Reverse(s.ends_at_ms)));
            list.into_iter()
                .map(|s| {
                    let state = s.state(now);
                    let compiled: Vec<Matcher> = s.matchers.iter().filter_map(|m| m.compile().ok()).collect();
                    SilenceView {
                        id: s.id.clone(),
                        state: state.as_str(),
                        matchers: matcher::display_list(&compiled),
                        starts: utc(s.starts_at_ms),
                        ends: utc(s.ends_at_ms),
                        ends_ago: ago(s.ends_at_ms, now),
                        created_by: s.created_by.clone(),
                        comment: s.comment.clone(),
                        expirable: state != SilenceState::Expired,
                    }
                })
                .collect()
        })
    });
    let notice = if !params.created.is_empty() {
        format!("Silence {} created.", params.created)
    } else if !params.expired.is_empty() {
        format!("Silence {} expired.", params.expired)
    } else {
        String::new()
    };
    page(&AlertsPage {
        shell: Shell::new("alerts", "Alerts", &caller),
        groups,
        firing,
        pending,
        router: router.is_some(),
        silences,
        notice,
    })
}

#[derive(Template)]
#[template(path = "silence.html")]
pub struct SilencePage {
    pub shell: Shell,
    pub router: bool,
    pub matchers: String,
    pub duration: String,
    pub created_by: String,
    pub comment: String,
    pub error: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct SilenceParams {
    #[serde(default)]
    matchers: String,
}

pub async fn new_silence(State(ui): State<Arc<Ui>>, caller: Caller, Query(params): Query<SilenceParams>) -> Response {
    page(&SilencePage {
        shell: Shell::new("alerts", "New silence", &caller),
        router: ui.sources.router.is_some(),
        matchers: params.matchers,
        duration: "2h".into(),
        created_by: caller
            .principal
            .as_ref()
            .filter(|p| p.name != "anonymous")
            .map_or(String::new(), |p| p.name.clone()),
        comment: String::new(),
        error: String::new(),
    })
}

#[derive(Debug, Default, Deserialize)]
pub struct SilenceForm {
    #[serde(default)]
    matchers: String,
    #[serde(default)]
    duration: String,
    #[serde(default)]
    created_by: String,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    csrf: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// Refuses a state-changing request a browser sent on another site's behalf:
/// browsers name the page's origin in `Origin` (and `Sec-Fetch-Site`) on
/// every form POST, so a mismatch means the form was not this UI's.
fn cross_site(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
        if origin == "null" || origin_host != host {
            return true;
        }
    }
    matches!(headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()), Some("cross-site" | "same-site"))
}

fn forbidden_cross_site() -> Response {
    (StatusCode::FORBIDDEN, "refused: this form was sent from another site (or from an older page: reload it)\n")
        .into_response()
}

pub async fn create_silence(
    State(ui): State<Arc<Ui>>,
    caller: Caller,
    headers: HeaderMap,
    Form(form): Form<SilenceForm>,
) -> Response {
    if cross_site(&headers) || !caller.csrf_ok(&form.csrf) {
        return forbidden_cross_site();
    }
    let failed = |error: String, form: SilenceForm| {
        render(
            &SilencePage {
                shell: Shell::new("alerts", "New silence", &caller),
                router: true,
                matchers: form.matchers,
                duration: form.duration,
                created_by: form.created_by,
                comment: form.comment,
                error,
            },
            StatusCode::BAD_REQUEST,
        )
    };
    let Some(router) = ui.sources.router.as_ref() else {
        return not_found(&caller, "alerts", "The built-in alert router is not configured ([alerting] router_config): silences belong to your Alertmanager.".into());
    };
    let matchers = match matcher::parse_matchers(&form.matchers) {
        Ok(matchers) if !matchers.is_empty() => matchers,
        Ok(_) => return failed("Give at least one matcher, e.g. alertname=\"DiskFull\".".into(), form),
        Err(err) => return failed(format!("Matchers: {err}"), form),
    };
    let Some(duration_ms) = crate::promql::parse_duration_ms(form.duration.trim()).filter(|ms| *ms > 0) else {
        return failed(format!("Duration {:?} is not a duration such as 2h or 30m.", form.duration), form);
    };
    if form.created_by.trim().is_empty() || form.comment.trim().is_empty() {
        return failed("Say who creates the silence and why (both fields are required).".into(), form);
    }
    let now = now_ms();
    let request = SilenceRequest {
        id: None,
        matchers: matchers
            .iter()
            .map(|m| SilenceMatcher {
                name: m.name.clone(),
                value: m.value.clone(),
                is_regex: m.is_regex(),
                is_equal: m.is_equal(),
            })
            .collect(),
        starts_at_ms: now,
        ends_at_ms: now.saturating_add(duration_ms),
        created_by: form.created_by.trim().to_owned(),
        comment: form.comment.trim().to_owned(),
    };
    match router.with_silences(|silences| silences.set(request, now)) {
        Ok(id) => {
            tracing::info!(silence = %id, "silence created from the web UI");
            Redirect::to(&format!("/alerts?created={}#silences", url_encode(&id))).into_response()
        }
        Err(err) => failed(err.to_string(), form),
    }
}

pub async fn expire_silence(
    State(ui): State<Arc<Ui>>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if cross_site(&headers) || !caller.csrf_ok(&form.csrf) {
        return forbidden_cross_site();
    }
    let Some(router) = ui.sources.router.as_ref() else {
        return not_found(&caller, "alerts", "The built-in alert router is not configured.".into());
    };
    match router.with_silences(|silences| silences.expire(&id, now_ms())) {
        Ok(()) => {
            tracing::info!(silence = %id, "silence expired from the web UI");
            Redirect::to(&format!("/alerts?expired={}#silences", url_encode(&id))).into_response()
        }
        Err(crate::alertmanager::silence::SilenceError::NotFound(_)) => {
            not_found(&caller, "alerts", format!("No silence {id:?}."))
        }
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")).into_response(),
    }
}

// ---- login ----

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub shell: Shell,
    pub next: String,
    pub error: String,
    pub available: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct LoginParams {
    #[serde(default)]
    next: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: String,
}

/// Where to go after logging in: a path on this site, else the overview.
fn safe_next(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') { next } else { "/" }
}

pub async fn login_form(State(ui): State<Arc<Ui>>, caller: Caller, Query(params): Query<LoginParams>) -> Response {
    // The login form is open to all: its caller is no one until logged in.
    let caller = if caller.session.is_some() { caller } else { Caller::default() };
    page(&LoginPage {
        shell: Shell::new("login", "Log in", &caller),
        next: safe_next(&params.next).to_owned(),
        error: String::new(),
        available: ui.sources.auth.is_some(),
    })
}

pub async fn login(
    State(ui): State<Arc<Ui>>,
    caller: Caller,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if cross_site(&headers) {
        return forbidden_cross_site();
    }
    let next = safe_next(&form.next).to_owned();
    let caller = if caller.session.is_some() { caller } else { Caller::default() };
    let Some(auth) = ui.sources.auth.as_ref() else {
        return Redirect::to(&next).into_response();
    };
    match auth.login(&form.token) {
        Ok((session, principal)) => {
            tracing::info!(name = %principal.name, role = %principal.role, "web UI login");
            let mut response = Redirect::to(&next).into_response();
            response.headers_mut().insert(header::SET_COOKIE, session::set_cookie(&session));
            response
        }
        Err(_) => render(
            &LoginPage {
                shell: Shell::new("login", "Log in", &caller),
                next,
                error: "That token is not valid: use the contents of a token file from [[http.tokens]].".into(),
                available: true,
            },
            StatusCode::UNAUTHORIZED,
        ),
    }
}

pub async fn logout(
    State(ui): State<Arc<Ui>>,
    caller: Caller,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if cross_site(&headers) || !caller.csrf_ok(&form.csrf) {
        return forbidden_cross_site();
    }
    if let Some(auth) = ui.sources.auth.as_ref() {
        auth.logout(&headers);
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(header::SET_COOKIE, session::clear_cookie());
    response
}

// ---- graph ----

pub struct ResultRow {
    pub series: String,
    pub value: String,
}

#[derive(Template)]
#[template(path = "graph.html")]
pub struct GraphPage {
    pub shell: Shell,
    pub expr: String,
    pub range: String,
    pub end: String,
    pub step: String,
    pub ranges: Vec<&'static str>,
    pub error: String,
    /// The query split around the parse error's position, when it is known.
    pub error_before: String,
    pub error_at: String,
    pub error_after: String,
    pub error_column: String,
    pub chart: Option<Chart>,
    pub rows: Vec<ResultRow>,
    pub result_type: &'static str,
    pub live: bool,
    pub elapsed: String,
}

const GRAPH_RANGES: &[&str] = &["5m", "15m", "30m", "1h", "3h", "6h", "12h", "1d", "2d", "7d"];
/// Rows of the table at most.
const MAX_ROWS: usize = 500;

#[derive(Debug, Default, Deserialize)]
pub struct GraphParams {
    #[serde(default)]
    expr: String,
    #[serde(default)]
    range: String,
    #[serde(default)]
    end: String,
    #[serde(default)]
    step: String,
}

pub async fn graph(State(ui): State<Arc<Ui>>, caller: Caller, Query(params): Query<GraphParams>) -> Response {
    let range = if params.range.is_empty() { "1h".to_owned() } else { params.range.clone() };
    let mut view = GraphPage {
        shell: Shell::new("graph", "Graph", &caller),
        expr: params.expr.clone(),
        range: range.clone(),
        end: params.end.clone(),
        step: params.step.clone(),
        ranges: GRAPH_RANGES.to_vec(),
        error: String::new(),
        error_before: String::new(),
        error_at: String::new(),
        error_after: String::new(),
        error_column: String::new(),
        chart: None,
        rows: Vec::new(),
        result_type: "",
        live: params.end.trim().is_empty(),
        elapsed: String::new(),
    };
    let expr = params.expr.trim();
    if expr.is_empty() {
        return page(&view);
    }
    let Some(range_ms) = crate::promql::parse_duration_ms(&range).filter(|ms| *ms > 0) else {
        view.error = format!("Range {range:?} is not a duration such as 1h or 30m.");
        return page(&view);
    };
    let end_ms = if params.end.trim().is_empty() {
        now_ms()
    } else {
        match crate::api::parse_time(params.end.trim()) {
            Ok(ms) => ms,
            Err(message) => {
                view.error =
                    format!("End: {message} (give Unix seconds or an RFC 3339 time, or leave it empty for now)");
                return page(&view);
            }
        }
    };
    let step_ms = if params.step.trim().is_empty() {
        step_for(range_ms)
    } else {
        match crate::api::parse_duration(params.step.trim()) {
            Ok(ms) if ms > 0 => ms.max(range_ms / 11_000),
            _ => {
                view.error = format!("Step {:?} is not a positive duration such as 15s.", params.step);
                return page(&view);
            }
        }
    };
    if let Err(err) = crate::promql::Engine::parse(expr) {
        let message = err.to_string();
        if let Some(position) = locate::error_position(expr) {
            view.error_before = expr[..position].to_owned();
            let at_len = expr[position..].chars().next().map_or(0, char::len_utf8);
            view.error_at = expr[position..position + at_len].to_owned();
            view.error_after = expr[position + at_len..].to_owned();
            view.error_column = (expr[..position].chars().count() + 1).to_string();
            view.error = format!("parse error at character {}: {message}", view.error_column);
        } else {
            view.error = format!("parse error: {message}");
        }
        // The page itself loaded fine: the error is its content.
        return page(&view);
    }
    let started = Instant::now();
    let start_ms = end_ms - range_ms;
    let instant = ui.query(expr.to_owned(), QueryRange::Instant { time_ms: end_ms }).await;
    match instant {
        Ok(value) => {
            view.result_type = value.type_name();
            view.rows = result_rows(&value);
            // A range vector has no chart (it is already a range).
            if !matches!(value, Value::Matrix(_) | Value::String { .. }) {
                match ui.query(expr.to_owned(), QueryRange::Range { start_ms, end_ms, step_ms }).await {
                    Ok(Value::Matrix(matrix)) => {
                        let lines: Vec<Line> = matrix
                            .iter()
                            .map(|(labels, samples)| Line {
                                name: series_name(labels),
                                points: samples.iter().map(|s| (s.timestamp_ms, s.value)).collect(),
                            })
                            .collect();
                        view.chart =
                            Some(Chart::new(expr, "graph-chart", Unit::Plain, &lines, start_ms, end_ms, step_ms));
                    }
                    Ok(_) => {}
                    Err(message) => view.error = message,
                }
            }
        }
        Err(message) => view.error = message,
    }
    view.elapsed = format::seconds(started.elapsed().as_secs_f64());
    page(&view)
}

fn result_rows(value: &Value) -> Vec<ResultRow> {
    match value {
        Value::Vector(vector) => vector
            .iter()
            .take(MAX_ROWS)
            .map(|(labels, sample)| ResultRow {
                series: series_name(labels),
                value: format::format_float(sample.value),
            })
            .collect(),
        Value::Matrix(matrix) => matrix
            .iter()
            .take(MAX_ROWS)
            .map(|(labels, samples)| ResultRow {
                series: series_name(labels),
                value: samples
                    .iter()
                    .map(|s| {
                        format!(
                            "{} @{}",
                            format::format_float(s.value),
                            format::format_float(s.timestamp_ms as f64 / 1000.0)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
            })
            .collect(),
        Value::Scalar(sample) => vec![ResultRow { series: "scalar".into(), value: format::format_float(sample.value) }],
        Value::String { value, .. } => vec![ResultRow { series: "string".into(), value: value.clone() }],
    }
}

// ---- rules ----

pub struct RuleRow {
    pub name: String,
    pub kind: &'static str,
    pub query: String,
    pub health: &'static str,
    pub state: &'static str,
    pub last_error: String,
    pub last_evaluation: String,
    pub duration: String,
}

pub struct RuleGroupView {
    pub name: String,
    pub file: String,
    pub interval: String,
    pub last_evaluation: String,
    pub duration: String,
    pub rules: Vec<RuleRow>,
}

#[derive(Template)]
#[template(path = "rules.html")]
pub struct RulesPage {
    pub shell: Shell,
    pub groups: Vec<RuleGroupView>,
    pub unhealthy: usize,
}

pub async fn rules(State(ui): State<Arc<Ui>>, caller: Caller) -> Response {
    let now = now_ms();
    let groups = ui.sources.rules.groups().await;
    let mut unhealthy = 0;
    let views = groups
        .iter()
        .map(|group| RuleGroupView {
            name: group.name.clone(),
            file: group.file.display().to_string(),
            interval: short_duration(group.interval),
            last_evaluation: group.last_eval_ms.map_or("never".to_owned(), |ms| ago(ms, now)),
            duration: format::seconds(group.last_eval_duration.as_secs_f64()),
            rules: group
                .rules
                .iter()
                .map(|state| {
                    let health = match state.health {
                        Health::Ok => "ok",
                        Health::Err => {
                            unhealthy += 1;
                            "err"
                        }
                        Health::Unknown => "unknown",
                    };
                    let (kind, query, rule_state) = match &state.rule {
                        Rule::Alerting(rule) => {
                            let alert_state = if state.active.values().any(|a| a.state == AlertState::Firing) {
                                "firing"
                            } else if state.active.values().any(|a| a.state == AlertState::Pending) {
                                "pending"
                            } else {
                                "inactive"
                            };
                            ("alert", rule.expr_text.clone(), alert_state)
                        }
                        Rule::Recording(rule) => ("record", rule.expr_text.clone(), ""),
                    };
                    RuleRow {
                        name: state.rule.name().to_owned(),
                        kind,
                        query,
                        health,
                        state: rule_state,
                        last_error: state.last_error.clone().unwrap_or_default(),
                        last_evaluation: state.last_eval_ms.map_or("never".to_owned(), |ms| ago(ms, now)),
                        duration: format::seconds(state.last_eval_duration.as_secs_f64()),
                    }
                })
                .collect(),
        })
        .collect();
    page(&RulesPage { shell: Shell::new("rules", "Rules", &caller), groups: views, unhealthy })
}

// ---- targets ----

pub struct TargetView {
    pub agent: String,
    pub agent_href: String,
    pub job: String,
    pub instance: String,
    pub kind: &'static str,
    pub up: String,
    pub healthy: bool,
    pub last_scrape: String,
    pub duration: String,
    pub last_error: String,
}

#[derive(Template)]
#[template(path = "targets.html")]
pub struct TargetsPage {
    pub shell: Shell,
    pub targets: Vec<TargetView>,
    pub down: usize,
}

type ByTarget = HashMap<(String, String), f64>;

async fn by_target(ui: &Ui, expr: &str, now: i64) -> ByTarget {
    ui.vector(expr, now)
        .await
        .into_iter()
        .map(|(l, v)| ((l.get("job").unwrap_or("").to_owned(), l.get("instance").unwrap_or("").to_owned()), v))
        .collect()
}

pub async fn targets(State(ui): State<Arc<Ui>>, caller: Caller) -> Response {
    let now = now_ms();
    let up = by_target(&ui, "up", now).await;
    let up_at = by_target(&ui, "timestamp(up)", now).await;
    let duration = by_target(&ui, "scrape_duration_seconds", now).await;
    let malformed = by_target(&ui, "herd_scrape_malformed_lines > 0", now).await;
    let truncated = by_target(&ui, "herd_scrape_body_truncated > 0", now).await;
    let probe_ok = by_target(&ui, "probe_success", now).await;
    let probe_at = by_target(&ui, "timestamp(probe_success)", now).await;
    let probe_duration = by_target(&ui, "probe_duration_seconds", now).await;
    let probe_status = by_target(&ui, "probe_http_status_code", now).await;
    let mut rows = Vec::new();
    for agent in ui.sources.fleet.list() {
        for target in &agent.targets {
            let key = (target.job.clone(), target.instance.clone());
            let value = up.get(&key).copied();
            let mut problems = Vec::new();
            if let Some(n) = malformed.get(&key) {
                problems.push(format!("{} malformed lines", format::number(*n)));
            }
            if truncated.contains_key(&key) {
                problems.push("body truncated at the size limit".to_owned());
            }
            if value == Some(0.0) && problems.is_empty() {
                problems.push(if agent.connected {
                    "down (the agent's log says why)".to_owned()
                } else {
                    "agent disconnected".to_owned()
                });
            }
            rows.push(TargetView {
                agent: agent.id.clone(),
                agent_href: format!("/fleet/{}", url_encode(&agent.id)),
                job: target.job.clone(),
                instance: target.instance.clone(),
                kind: if target.reports_up { "scrape" } else { "collector" },
                up: value.map_or("-".to_owned(), format::format_float),
                healthy: value == Some(1.0),
                last_scrape: up_at.get(&key).map_or("-".to_owned(), |s| ago((s * 1000.0) as i64, now)),
                duration: duration.get(&key).map_or("-".to_owned(), |d| format::seconds(*d)),
                last_error: problems.join("; "),
            });
        }
    }
    // Probes report `probe_success` per target rather than `up`.
    let agent_of_instance: HashMap<String, String> = ui
        .sources
        .fleet
        .list()
        .into_iter()
        .flat_map(|a| {
            a.targets.iter().map(|t| t.instance.clone()).collect::<Vec<_>>().into_iter().map(move |i| (i, a.id.clone()))
        })
        .collect();
    let mut probes: Vec<_> = probe_ok.iter().collect();
    probes.sort_by(|a, b| a.0.cmp(b.0));
    for ((job, instance), ok) in probes {
        let key = (job.clone(), instance.clone());
        let status = probe_status.get(&key).copied();
        let last_error = match (*ok == 1.0, status) {
            (true, _) => String::new(),
            (false, Some(code)) if code > 0.0 => format!("HTTP status {code}"),
            (false, _) => "probe failed (no response)".to_owned(),
        };
        let agent = agent_of_instance.get(instance).cloned().unwrap_or_default();
        rows.push(TargetView {
            agent_href: format!("/fleet/{}", url_encode(&agent)),
            agent,
            job: job.clone(),
            instance: instance.clone(),
            kind: "probe",
            up: format::format_float(*ok),
            healthy: *ok == 1.0,
            last_scrape: probe_at.get(&key).map_or("-".to_owned(), |s| ago((s * 1000.0) as i64, now)),
            duration: probe_duration.get(&key).map_or("-".to_owned(), |d| format::seconds(*d)),
            last_error,
        });
    }
    rows.sort_by(|a, b| (a.healthy, &a.job, &a.instance).cmp(&(b.healthy, &b.job, &b.instance)));
    let down = rows.iter().filter(|r| !r.healthy).count();
    page(&TargetsPage { shell: Shell::new("targets", "Targets", &caller), targets: rows, down })
}

// ---- status ----

/// Head series counted by metric, label name and label pair (the Status page's cardinality).
pub struct Cardinality {
    pub series: usize,
    pub metrics: Vec<Pair>,
    pub label_names: Vec<Pair>,
    pub label_pairs: Vec<Pair>,
}

const TOP: usize = 10;
/// Cardinality is recounted at most this often.
const CARDINALITY_TTL: Duration = Duration::from_secs(15);

fn count_cardinality(store: &dyn crate::store::Storage) -> Cardinality {
    let all = store.select(&[]);
    let mut metrics: HashMap<&str, usize> = HashMap::new();
    let mut values: HashMap<&str, std::collections::HashSet<&str>> = HashMap::new();
    let mut label_pairs: HashMap<(&str, &str), usize> = HashMap::new();
    for (_, labels) in &all {
        for (name, value) in labels.iter() {
            if name == METRIC_NAME {
                *metrics.entry(value).or_default() += 1;
            } else {
                values.entry(name).or_default().insert(value);
            }
            *label_pairs.entry((name, value)).or_default() += 1;
        }
    }
    fn top<K: Ord>(counts: impl Iterator<Item = (K, usize)>, name: impl Fn(K) -> String) -> Vec<Pair> {
        let mut list: Vec<(K, usize)> = counts.collect();
        list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        list.into_iter().take(TOP).map(|(k, n)| Pair { name: name(k), value: n.to_string() }).collect()
    }
    Cardinality {
        series: all.len(),
        metrics: top(metrics.into_iter(), str::to_owned),
        label_names: top(values.into_iter().map(|(n, v)| (n, v.len())), str::to_owned),
        label_pairs: top(label_pairs.into_iter(), |(n, v)| format!("{n}={}", quoted(v))),
    }
}

#[derive(Template)]
#[template(path = "status.html")]
pub struct StatusPage {
    pub shell: Shell,
    pub build: Vec<Pair>,
    pub store: Vec<Pair>,
    pub cardinality: Arc<Cardinality>,
    pub config: String,
}

pub async fn status(State(ui): State<Arc<Ui>>, caller: Caller) -> Response {
    let now = now_ms();
    let cached = ui.cardinality.lock().expect("cardinality lock is never poisoned").clone();
    let cardinality = match cached {
        Some((at, counted)) if at.elapsed() < CARDINALITY_TTL => counted,
        _ => {
            let store = Arc::clone(&ui.sources.store);
            let counted = match tokio::task::spawn_blocking(move || count_cardinality(store.as_ref())).await {
                Ok(counted) => Arc::new(counted),
                Err(_) => {
                    Arc::new(Cardinality { series: 0, metrics: vec![], label_names: vec![], label_pairs: vec![] })
                }
            };
            *ui.cardinality.lock().expect("cardinality lock is never poisoned") =
                Some((Instant::now(), Arc::clone(&counted)));
            counted
        }
    };
    let started_ms = unix_ms(ui.started_at);
    let pair = |name: &str, value: String| Pair { name: name.to_owned(), value };
    let build = vec![
        pair("Version", format!("herd-aggregator {}", env!("CARGO_PKG_VERSION"))),
        pair("Started", utc(started_ms)),
        pair("Uptime", short_duration(Duration::from_millis((now - started_ms).max(0) as u64))),
        pair("Agents known", ui.sources.fleet.list().len().to_string()),
        pair("Alert router", if ui.sources.router.is_some() { "built in" } else { "not configured" }.to_owned()),
    ];
    let load = |v: &std::sync::atomic::AtomicU64| v.load(std::sync::atomic::Ordering::Relaxed);
    let stats = ui.sources.store.stats();
    let mut store = vec![
        pair("Series", format::number(stats.series as f64)),
        pair("Samples appended", format::number(stats.samples as f64)),
        pair("Samples from agents", format::number(load(&ui.sources.ingest.samples) as f64)),
        pair("WAL size", format::bytes(load(&ui.sources.wal.bytes) as f64)),
    ];
    if let Some(db) = &ui.sources.db {
        let (blocks, block_bytes) = db.block_stats();
        let options = db.options();
        store.extend([
            pair("Head series", format::number(db.head.series_count() as f64)),
            pair("Head chunks", format::bytes(db.head.chunk_bytes() as f64)),
            pair("Blocks", format!("{blocks} ({})", format::bytes(block_bytes as f64))),
            pair("Block span", short_duration(Duration::from_millis(options.block_duration_ms.max(0) as u64))),
            pair(
                "Retention",
                match options.retention_bytes {
                    Some(bytes) => format!(
                        "{} or {}",
                        short_duration(Duration::from_millis(options.retention_ms.max(0) as u64)),
                        format::bytes(bytes as f64)
                    ),
                    None => short_duration(Duration::from_millis(options.retention_ms.max(0) as u64)),
                },
            ),
            pair("Out-of-order samples", format::number(load(&db.head.counters.out_of_order_samples) as f64)),
        ]);
    }
    page(&StatusPage {
        shell: Shell::new("status", "Status", &caller),
        build,
        store,
        cardinality,
        config: ui.sources.config_text.clone(),
    })
}
