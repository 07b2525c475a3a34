//! Alertmanager's configuration file (`alertmanager.yml`), read unchanged:
//! `global`, the `route` tree, `inhibit_rules` and `receivers` with webhook,
//! Slack, PagerDuty and email integrations. Keys Herd does not implement are
//! refused by name rather than ignored, templates are parsed at load, and
//! every problem is reported at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::matcher::{MatchOp, Matcher, display_list, parse_matchers, valid_label_name};
use crate::rules::template::Template;

const DEFAULT_RESOLVE_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_GROUP_WAIT: Duration = Duration::from_secs(30);
const DEFAULT_GROUP_INTERVAL: Duration = Duration::from_secs(300);
const DEFAULT_REPEAT_INTERVAL: Duration = Duration::from_secs(4 * 3600);
const DEFAULT_PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";

#[derive(Debug, thiserror::Error)]
pub enum RouterConfigError {
    #[error("cannot read the router configuration {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Yaml { path: String, message: String },
    #[error("{path} is not a valid Alertmanager configuration:\n  {}", problems.join("\n  "))]
    Invalid { path: String, problems: Vec<String> },
}

// ---- the file as written ----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    global: RawGlobal,
    route: Option<RawRoute>,
    #[serde(default)]
    inhibit_rules: Vec<RawInhibitRule>,
    #[serde(default)]
    receivers: Vec<RawReceiver>,
    #[serde(default)]
    templates: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGlobal {
    resolve_timeout: Option<String>,
    smtp_from: Option<String>,
    smtp_hello: Option<String>,
    smtp_smarthost: Option<String>,
    smtp_auth_username: Option<String>,
    smtp_auth_password: Option<String>,
    smtp_auth_identity: Option<String>,
    smtp_auth_secret: Option<String>,
    smtp_require_tls: Option<bool>,
    slack_api_url: Option<String>,
    pagerduty_url: Option<String>,
    http_config: Option<RawHttpConfig>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpConfig {
    basic_auth: Option<RawBasicAuth>,
    authorization: Option<RawAuthorization>,
    bearer_token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasicAuth {
    username: String,
    #[serde(default)]
    password: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthorization {
    #[serde(rename = "type")]
    kind: Option<String>,
    credentials: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    receiver: Option<String>,
    group_by: Option<Vec<String>>,
    #[serde(default, rename = "continue")]
    continue_matching: bool,
    #[serde(default, rename = "match")]
    match_equal: BTreeMap<String, String>,
    #[serde(default)]
    match_re: BTreeMap<String, String>,
    #[serde(default)]
    matchers: Vec<String>,
    group_wait: Option<String>,
    group_interval: Option<String>,
    repeat_interval: Option<String>,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInhibitRule {
    #[serde(default)]
    source_match: BTreeMap<String, String>,
    #[serde(default)]
    source_match_re: BTreeMap<String, String>,
    #[serde(default)]
    source_matchers: Vec<String>,
    #[serde(default)]
    target_match: BTreeMap<String, String>,
    #[serde(default)]
    target_match_re: BTreeMap<String, String>,
    #[serde(default)]
    target_matchers: Vec<String>,
    #[serde(default)]
    equal: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReceiver {
    name: String,
    #[serde(default)]
    webhook_configs: Vec<RawWebhook>,
    #[serde(default)]
    slack_configs: Vec<RawSlack>,
    #[serde(default)]
    pagerduty_configs: Vec<RawPagerduty>,
    #[serde(default)]
    email_configs: Vec<RawEmail>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    send_resolved: Option<bool>,
    url: String,
    #[serde(default)]
    max_alerts: u64,
    http_config: Option<RawHttpConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlack {
    send_resolved: Option<bool>,
    api_url: Option<String>,
    channel: Option<String>,
    username: Option<String>,
    color: Option<String>,
    title: Option<String>,
    title_link: Option<String>,
    pretext: Option<String>,
    text: Option<String>,
    fallback: Option<String>,
    icon_emoji: Option<String>,
    icon_url: Option<String>,
    http_config: Option<RawHttpConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPagerduty {
    send_resolved: Option<bool>,
    routing_key: Option<String>,
    service_key: Option<String>,
    url: Option<String>,
    client: Option<String>,
    client_url: Option<String>,
    description: Option<String>,
    severity: Option<String>,
    class: Option<String>,
    component: Option<String>,
    group: Option<String>,
    #[serde(default)]
    details: BTreeMap<String, String>,
    http_config: Option<RawHttpConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmail {
    send_resolved: Option<bool>,
    to: String,
    from: Option<String>,
    smarthost: Option<String>,
    hello: Option<String>,
    auth_username: Option<String>,
    auth_password: Option<String>,
    auth_identity: Option<String>,
    auth_secret: Option<String>,
    require_tls: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    html: Option<String>,
    text: Option<String>,
    tls_config: Option<RawTlsConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTlsConfig {
    ca_file: Option<PathBuf>,
    server_name: Option<String>,
    #[serde(default)]
    insecure_skip_verify: bool,
}

// ---- the validated form ----

/// A loaded, checked router configuration.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// The file's text, served by `/api/v2/status`.
    pub original: String,
    pub resolve_timeout: Duration,
    pub route: Route,
    pub inhibit_rules: Vec<InhibitRule>,
    pub receivers: Vec<Receiver>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GroupBy {
    /// `group_by: ['...']`: every label, i.e. no aggregation.
    All,
    Labels(Vec<String>),
}

/// A node of the route tree, with what it inherits from its parents filled in.
#[derive(Debug, Clone)]
pub struct Route {
    /// Alertmanager's route key: the parent's key, `/`, this route's matchers, `/`, its index.
    pub key: String,
    pub receiver: String,
    pub group_by: GroupBy,
    pub continue_matching: bool,
    pub matchers: Vec<Matcher>,
    pub group_wait: Duration,
    pub group_interval: Duration,
    pub repeat_interval: Duration,
    pub routes: Vec<Route>,
}

impl Route {
    /// The routes an alert with `labels` goes to, as Alertmanager matches them:
    /// depth first; a matching child stops the search among its siblings unless
    /// it has `continue: true`; a node none of whose children matched is itself the match.
    pub fn matching(&self, labels: &BTreeMap<String, String>) -> Vec<&Route> {
        let mut out = Vec::new();
        self.collect_matching(labels, &mut out);
        out
    }

    fn collect_matching<'a>(&'a self, labels: &BTreeMap<String, String>, out: &mut Vec<&'a Route>) -> bool {
        if !super::matcher::all_match(&self.matchers, labels) {
            return false;
        }
        let before = out.len();
        for child in &self.routes {
            if child.collect_matching(labels, out) && !child.continue_matching {
                break;
            }
        }
        if out.len() == before {
            out.push(self);
        }
        true
    }

    /// Every route in the tree, depth first.
    pub fn walk<'a>(&'a self, out: &mut Vec<&'a Route>) {
        out.push(self);
        for child in &self.routes {
            child.walk(out);
        }
    }
}

#[derive(Debug, Clone)]
pub struct InhibitRule {
    pub source_matchers: Vec<Matcher>,
    pub target_matchers: Vec<Matcher>,
    pub equal: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Receiver {
    pub name: String,
    pub integrations: Vec<Integration>,
}

#[derive(Debug, Clone, Default)]
pub struct HttpAuth {
    /// Value of the `Authorization` header, if any.
    pub authorization: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Integration {
    Webhook(WebhookConfig),
    Slack(SlackConfig),
    Pagerduty(PagerdutyConfig),
    Email(EmailConfig),
}

impl Integration {
    /// The integration's name as Alertmanager labels its metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Integration::Webhook(_) => "webhook",
            Integration::Slack(_) => "slack",
            Integration::Pagerduty(_) => "pagerduty",
            Integration::Email(_) => "email",
        }
    }

    pub fn send_resolved(&self) -> bool {
        match self {
            Integration::Webhook(c) => c.send_resolved,
            Integration::Slack(c) => c.send_resolved,
            Integration::Pagerduty(c) => c.send_resolved,
            Integration::Email(c) => c.send_resolved,
        }
    }
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub send_resolved: bool,
    pub url: String,
    pub max_alerts: u64,
    pub auth: HttpAuth,
}

#[derive(Debug, Clone)]
pub struct SlackConfig {
    pub send_resolved: bool,
    pub api_url: String,
    pub channel: Template,
    pub username: Template,
    pub color: Template,
    pub title: Template,
    pub title_link: Template,
    pub pretext: Template,
    pub text: Template,
    pub fallback: Template,
    pub icon_emoji: Template,
    pub icon_url: Template,
    pub auth: HttpAuth,
}

#[derive(Debug, Clone)]
pub struct PagerdutyConfig {
    pub send_resolved: bool,
    /// `routing_key`, or the older `service_key`, both sent as Events API v2's routing key.
    pub routing_key: String,
    pub url: String,
    pub client: Template,
    pub client_url: Template,
    pub description: Template,
    pub severity: Template,
    pub class: Template,
    pub component: Template,
    pub group: Template,
    pub details: Vec<(String, Template)>,
    pub auth: HttpAuth,
}

#[derive(Debug, Clone)]
pub struct EmailConfig {
    pub send_resolved: bool,
    pub to: Template,
    pub from: Template,
    pub smarthost: String,
    pub hello: String,
    pub auth_username: Option<String>,
    pub auth_password: Option<String>,
    pub require_tls: bool,
    pub headers: Vec<(String, Template)>,
    pub text: Template,
    pub html: Option<Template>,
    /// PEM of extra CAs to trust (`tls_config.ca_file`), besides the system's.
    pub ca_pem: Option<Vec<u8>>,
    /// The name the server's certificate must have (`tls_config.server_name`); default: the smarthost's host.
    pub server_name: Option<String>,
    pub insecure_skip_verify: bool,
}

/// Parses a Prometheus duration: `30s`, `5m`, `12h`, `1d`, `1w`, `1y`, `100ms`, `1h30m`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut total_ms: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "y" => 365 * 86_400_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total_ms = total_ms.checked_add(number.checked_mul(unit_ms)?)?;
    }
    Some(Duration::from_millis(total_ms))
}

/// Reads and checks an Alertmanager configuration file.
pub fn load(path: &Path) -> Result<RouterConfig, RouterConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| RouterConfigError::Read { path: path.to_owned(), source })?;
    parse(&path.display().to_string(), &text)
}

/// Parses and checks configuration text; `source` names it in errors.
pub fn parse(source: &str, text: &str) -> Result<RouterConfig, RouterConfigError> {
    // serde_norway's messages carry the line and column.
    let raw: RawConfig = serde_norway::from_str(text)
        .map_err(|err| RouterConfigError::Yaml { path: source.to_owned(), message: err.to_string() })?;
    let mut problems = Vec::new();
    let config = build(raw, text, &mut problems);
    if problems.is_empty() { Ok(config) } else { Err(RouterConfigError::Invalid { path: source.to_owned(), problems }) }
}

fn duration(text: &Option<String>, key: &str, default: Duration, problems: &mut Vec<String>) -> Duration {
    match text {
        None => default,
        Some(text) => parse_duration(text).unwrap_or_else(|| {
            problems.push(format!("{key}: {text:?} is not a duration (expected e.g. \"30s\", \"5m\", \"4h\")"));
            default
        }),
    }
}

fn template(text: Option<&str>, default: &str, key: &str, problems: &mut Vec<String>) -> Template {
    let text = text.unwrap_or(default);
    Template::parse_notification(text).unwrap_or_else(|err| {
        problems.push(format!("{key}: template {text:?}: {err}"));
        Template::parse_notification("").expect("the empty template parses")
    })
}

fn http_auth(raw: Option<&RawHttpConfig>) -> HttpAuth {
    let Some(raw) = raw else { return HttpAuth::default() };
    let authorization = if let Some(basic) = &raw.basic_auth {
        Some(format!("Basic {}", base64(format!("{}:{}", basic.username, basic.password).as_bytes())))
    } else if let Some(auth) = &raw.authorization {
        Some(format!("{} {}", auth.kind.as_deref().unwrap_or("Bearer"), auth.credentials))
    } else {
        raw.bearer_token.as_ref().map(|token| format!("Bearer {token}"))
    };
    HttpAuth { authorization }
}

pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn matchers_from(
    equal: &BTreeMap<String, String>,
    regex: &BTreeMap<String, String>,
    strings: &[String],
    key: &str,
    problems: &mut Vec<String>,
) -> Vec<Matcher> {
    let mut out = Vec::new();
    let maps =
        equal.iter().map(|(n, v)| (n, v, MatchOp::Equal)).chain(regex.iter().map(|(n, v)| (n, v, MatchOp::Regex)));
    for (name, value, op) in maps {
        match Matcher::new(name, op, value) {
            Ok(m) => out.push(m),
            Err(err) => problems.push(format!("{key}: {err}")),
        }
    }
    for text in strings {
        match parse_matchers(text) {
            Ok(m) => out.extend(m),
            Err(err) => problems.push(format!("{key}: {err}")),
        }
    }
    out
}

struct Inherited {
    receiver: Option<String>,
    group_by: GroupBy,
    group_wait: Duration,
    group_interval: Duration,
    repeat_interval: Duration,
}

fn build_route(raw: &RawRoute, parent: &Inherited, key: String, path: &str, problems: &mut Vec<String>) -> Route {
    let group_by = match &raw.group_by {
        None => parent.group_by.clone(),
        Some(names) if names.iter().any(|n| n == "...") => {
            if names.len() > 1 {
                problems.push(format!("{path}.group_by: '...' must be the only entry"));
            }
            GroupBy::All
        }
        Some(names) => {
            for name in names {
                if !valid_label_name(name) {
                    problems.push(format!("{path}.group_by: {name:?} is not a valid label name"));
                }
            }
            GroupBy::Labels(names.clone())
        }
    };
    let inherited = Inherited {
        receiver: raw.receiver.clone().or_else(|| parent.receiver.clone()),
        group_by,
        group_wait: duration(&raw.group_wait, &format!("{path}.group_wait"), parent.group_wait, problems),
        group_interval: duration(
            &raw.group_interval,
            &format!("{path}.group_interval"),
            parent.group_interval,
            problems,
        ),
        repeat_interval: duration(
            &raw.repeat_interval,
            &format!("{path}.repeat_interval"),
            parent.repeat_interval,
            problems,
        ),
    };
    if inherited.group_interval.is_zero() || inherited.repeat_interval.is_zero() {
        problems.push(format!("{path}: group_interval and repeat_interval must be above zero"));
    }
    let routes = raw
        .routes
        .iter()
        .enumerate()
        .map(|(i, child)| {
            let child_matchers = matchers_from(
                &child.match_equal,
                &child.match_re,
                &child.matchers,
                &format!("{path}.routes[{i}]"),
                &mut Vec::new(),
            );
            let child_key = format!("{key}/{}/{i}", display_list(&child_matchers));
            build_route(child, &inherited, child_key, &format!("{path}.routes[{i}]"), problems)
        })
        .collect();
    Route {
        key,
        receiver: inherited.receiver.clone().unwrap_or_default(),
        group_by: inherited.group_by.clone(),
        continue_matching: raw.continue_matching,
        matchers: matchers_from(&raw.match_equal, &raw.match_re, &raw.matchers, path, problems),
        group_wait: inherited.group_wait,
        group_interval: inherited.group_interval,
        repeat_interval: inherited.repeat_interval,
        routes,
    }
}

fn build(raw: RawConfig, text: &str, problems: &mut Vec<String>) -> RouterConfig {
    let global = raw.global;
    let resolve_timeout =
        duration(&global.resolve_timeout, "global.resolve_timeout", DEFAULT_RESOLVE_TIMEOUT, problems);
    if !raw.templates.is_empty() {
        problems.push(
            "templates: template files ({{ define }}) are not supported by Herd's router; write the templates inline"
                .to_owned(),
        );
    }
    let raw_route = raw.route.unwrap_or_else(|| {
        problems.push("route: missing (the root route and its receiver are required)".to_owned());
        RawRoute::default()
    });
    if raw_route.receiver.is_none() {
        problems.push("route.receiver: the root route must name a receiver".to_owned());
    }
    if !raw_route.match_equal.is_empty() || !raw_route.match_re.is_empty() || !raw_route.matchers.is_empty() {
        problems.push("route: the root route must not have any matchers".to_owned());
    }
    let root_defaults = Inherited {
        receiver: None,
        group_by: GroupBy::Labels(Vec::new()),
        group_wait: DEFAULT_GROUP_WAIT,
        group_interval: DEFAULT_GROUP_INTERVAL,
        repeat_interval: DEFAULT_REPEAT_INTERVAL,
    };
    let route = build_route(&raw_route, &root_defaults, "{}".to_owned(), "route", problems);

    let inhibit_rules = raw
        .inhibit_rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let key = format!("inhibit_rules[{i}]");
            InhibitRule {
                source_matchers: matchers_from(
                    &rule.source_match,
                    &rule.source_match_re,
                    &rule.source_matchers,
                    &format!("{key}.source"),
                    problems,
                ),
                target_matchers: matchers_from(
                    &rule.target_match,
                    &rule.target_match_re,
                    &rule.target_matchers,
                    &format!("{key}.target"),
                    problems,
                ),
                equal: rule.equal.clone(),
            }
        })
        .collect();

    let global_auth = global.http_config.as_ref();
    let mut receivers = Vec::new();
    for raw_receiver in &raw.receivers {
        if receivers.iter().any(|r: &Receiver| r.name == raw_receiver.name) {
            problems.push(format!("receivers: {:?} is defined twice", raw_receiver.name));
        }
        let name = &raw_receiver.name;
        let mut integrations = Vec::new();
        for (i, c) in raw_receiver.webhook_configs.iter().enumerate() {
            if !(c.url.starts_with("http://") || c.url.starts_with("https://")) {
                problems.push(format!("receiver {name:?} webhook_configs[{i}].url: {:?} is not an http(s) URL", c.url));
            }
            integrations.push(Integration::Webhook(WebhookConfig {
                send_resolved: c.send_resolved.unwrap_or(true),
                url: c.url.clone(),
                max_alerts: c.max_alerts,
                auth: http_auth(c.http_config.as_ref().or(global_auth)),
            }));
        }
        for (i, c) in raw_receiver.slack_configs.iter().enumerate() {
            let key = |field: &str| format!("receiver {name:?} slack_configs[{i}].{field}");
            let api_url = c.api_url.clone().or_else(|| global.slack_api_url.clone()).unwrap_or_else(|| {
                problems.push(format!("{}: missing (and no global.slack_api_url)", key("api_url")));
                String::new()
            });
            let mut t = |value: &Option<String>, default: &str, field: &str| {
                template(value.as_deref(), default, &key(field), problems)
            };
            integrations.push(Integration::Slack(SlackConfig {
                send_resolved: c.send_resolved.unwrap_or(false),
                api_url,
                channel: t(&c.channel, "", "channel"),
                username: t(&c.username, "Alertmanager", "username"),
                color: t(&c.color, r#"{{ if eq .Status "firing" }}danger{{ else }}good{{ end }}"#, "color"),
                title: t(&c.title, DEFAULT_TITLE, "title"),
                title_link: t(&c.title_link, "{{ .ExternalURL }}", "title_link"),
                pretext: t(&c.pretext, "", "pretext"),
                text: t(&c.text, "", "text"),
                fallback: t(&c.fallback, DEFAULT_TITLE, "fallback"),
                icon_emoji: t(&c.icon_emoji, "", "icon_emoji"),
                icon_url: t(&c.icon_url, "", "icon_url"),
                auth: http_auth(c.http_config.as_ref().or(global_auth)),
            }));
        }
        for (i, c) in raw_receiver.pagerduty_configs.iter().enumerate() {
            let key = |field: &str| format!("receiver {name:?} pagerduty_configs[{i}].{field}");
            let routing_key = c.routing_key.clone().or_else(|| c.service_key.clone()).unwrap_or_else(|| {
                problems.push(format!("{}: one of routing_key or service_key is required", key("routing_key")));
                String::new()
            });
            let mut t = |value: &Option<String>, default: &str, field: &str| {
                template(value.as_deref(), default, &key(field), problems)
            };
            let details_defaults = [
                ("firing", "{{ range .Alerts.Firing }}{{ .Labels }} {{ end }}"),
                ("resolved", "{{ range .Alerts.Resolved }}{{ .Labels }} {{ end }}"),
                ("num_firing", "{{ len .Alerts.Firing }}"),
                ("num_resolved", "{{ len .Alerts.Resolved }}"),
            ];
            let mut details: Vec<(String, Template)> = Vec::new();
            let source: Vec<(String, String)> = if c.details.is_empty() {
                details_defaults.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
            } else {
                c.details.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
            };
            for (k, v) in source {
                let parsed = t(&Some(v), "", &format!("details.{k}"));
                details.push((k, parsed));
            }
            integrations.push(Integration::Pagerduty(PagerdutyConfig {
                send_resolved: c.send_resolved.unwrap_or(true),
                routing_key,
                url: c
                    .url
                    .clone()
                    .or_else(|| global.pagerduty_url.clone())
                    .unwrap_or_else(|| DEFAULT_PAGERDUTY_URL.to_owned()),
                client: t(&c.client, "Herd", "client"),
                client_url: t(&c.client_url, "{{ .ExternalURL }}", "client_url"),
                description: t(&c.description, DEFAULT_TITLE, "description"),
                severity: t(&c.severity, "error", "severity"),
                class: t(&c.class, "", "class"),
                component: t(&c.component, "", "component"),
                group: t(&c.group, "", "group"),
                details,
                auth: http_auth(c.http_config.as_ref().or(global_auth)),
            }));
        }
        for (i, c) in raw_receiver.email_configs.iter().enumerate() {
            let key = |field: &str| format!("receiver {name:?} email_configs[{i}].{field}");
            let smarthost = c.smarthost.clone().or_else(|| global.smtp_smarthost.clone()).unwrap_or_else(|| {
                problems.push(format!("{}: missing (and no global.smtp_smarthost)", key("smarthost")));
                String::new()
            });
            if !smarthost.is_empty() && !smarthost.contains(':') {
                problems.push(format!("{}: {smarthost:?} needs a port (host:port)", key("smarthost")));
            }
            let from = c.from.clone().or_else(|| global.smtp_from.clone()).unwrap_or_else(|| {
                problems.push(format!("{}: missing (and no global.smtp_from)", key("from")));
                String::new()
            });
            let mut t = |value: &Option<String>, default: &str, field: &str| {
                template(value.as_deref(), default, &key(field), problems)
            };
            let to = t(&Some(c.to.clone()), "", "to");
            let from = t(&Some(from), "", "from");
            let text = t(&c.text, DEFAULT_EMAIL_TEXT, "text");
            let html = c.html.as_ref().map(|h| t(&Some(h.clone()), "", "html"));
            let mut headers: Vec<(String, Template)> = Vec::new();
            let mut header_source: BTreeMap<String, String> = c.headers.clone();
            header_source.entry("Subject".to_owned()).or_insert_with(|| DEFAULT_TITLE.to_owned());
            for (k, v) in header_source {
                let parsed = t(&Some(v), "", &format!("headers.{k}"));
                headers.push((k, parsed));
            }
            let tls = c.tls_config.as_ref();
            let ca_pem = tls.and_then(|t| t.ca_file.as_ref()).and_then(|path| match std::fs::read(path) {
                Ok(pem) => Some(pem),
                Err(err) => {
                    problems.push(format!("{}: cannot read {}: {err}", key("tls_config.ca_file"), path.display()));
                    None
                }
            });
            integrations.push(Integration::Email(EmailConfig {
                send_resolved: c.send_resolved.unwrap_or(false),
                to,
                from,
                smarthost,
                hello: c.hello.clone().or_else(|| global.smtp_hello.clone()).unwrap_or_else(|| "localhost".to_owned()),
                auth_username: c.auth_username.clone().or_else(|| global.smtp_auth_username.clone()),
                auth_password: c.auth_password.clone().or_else(|| global.smtp_auth_password.clone()),
                require_tls: c.require_tls.or(global.smtp_require_tls).unwrap_or(true),
                headers,
                text,
                html,
                ca_pem,
                server_name: tls.and_then(|t| t.server_name.clone()),
                insecure_skip_verify: tls.is_some_and(|t| t.insecure_skip_verify),
            }));
        }
        let _ = (&global.smtp_auth_identity, &global.smtp_auth_secret);
        for c in &raw_receiver.email_configs {
            let _ = (&c.auth_identity, &c.auth_secret);
        }
        receivers.push(Receiver { name: name.clone(), integrations });
    }
    let mut routes = Vec::new();
    route.walk(&mut routes);
    for r in routes {
        if !receivers.iter().any(|rc| rc.name == r.receiver) && !r.receiver.is_empty() {
            problems.push(format!("route {}: receiver {:?} is not defined in receivers", r.key, r.receiver));
        }
    }
    RouterConfig { original: text.to_owned(), resolve_timeout, route, inhibit_rules, receivers }
}

/// Alertmanager's default titles come from its `default.tmpl`; this is their gist inline.
const DEFAULT_TITLE: &str = r#"[{{ .Status | toUpper }}{{ if eq .Status "firing" }}:{{ .Alerts.Firing | len }}{{ end }}] {{ .GroupLabels.SortedPairs.Values | join " " }}"#;
const DEFAULT_EMAIL_TEXT: &str =
    "{{ range .Alerts }}[{{ .Status }}] {{ .Labels }}\n{{ range .Annotations }}{{ . }}\n{{ end }}{{ end }}";

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn receivers_for(config: &RouterConfig, pairs: &[(&str, &str)]) -> Vec<String> {
        config.route.matching(&labels(pairs)).iter().map(|r| r.receiver.clone()).collect()
    }

    #[test]
    fn the_seed_configuration_loads() {
        // The seed's alertmanager.yml, copied unchanged.
        let config = parse("seed.yml", include_str!("testdata/seed.yml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.resolve_timeout, Duration::from_secs(300));
        assert_eq!(config.receivers.len(), 5);
        assert_eq!(config.route.group_by, GroupBy::Labels(vec!["alertname".into(), "severity".into(), "team".into()]));
        assert_eq!(receivers_for(&config, &[("severity", "critical"), ("team", "devops")]), ["pagerduty"]);
        assert_eq!(receivers_for(&config, &[("severity", "warning"), ("team", "database")]), ["database-slack"]);
        assert_eq!(receivers_for(&config, &[("severity", "warning"), ("team", "web")]), ["default"]);
        // Children inherit the root's timing.
        let db = &config.route.routes[2];
        assert_eq!(
            (db.group_wait, db.group_interval, db.repeat_interval),
            (Duration::from_secs(30), Duration::from_secs(300), Duration::from_secs(12 * 3600))
        );
        assert_eq!(config.inhibit_rules.len(), 1);
        assert_eq!(config.inhibit_rules[0].equal, ["alertname", "instance"]);
        let Integration::Email(email) = &config.receivers[0].integrations[0] else { panic!("email") };
        assert_eq!(email.smarthost, "smtp.sendgrid.net:587");
        assert_eq!(email.auth_username.as_deref(), Some("apikey"));
        assert!(email.require_tls);
        let Integration::Pagerduty(pd) = &config.receivers[1].integrations[0] else { panic!("pagerduty") };
        assert_eq!(pd.routing_key, "PAGERDUTY_SERVICE_KEY");
    }

    #[test]
    fn continue_nesting_and_matcher_forms() {
        let config = parse(
            "t.yml",
            r#"
route:
  receiver: root
  group_by: [alertname]
  group_wait: 10s
  routes:
    - matchers: ['team=~"db|ops"', 'env!="dev"']
      receiver: db
      continue: true
      group_by: ['...']
      routes:
        - match_re: {severity: "crit.*"}
          receiver: db-pager
          repeat_interval: 1h
    - match: {team: db}
      receiver: db-archive
    - matchers: ['{team="db", severity="info"}']
      receiver: unreachable
receivers: [{name: root}, {name: db}, {name: db-pager}, {name: db-archive}, {name: unreachable}]
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(receivers_for(&config, &[("team", "db"), ("severity", "critical")]), ["db-pager", "db-archive"]);
        assert_eq!(receivers_for(&config, &[("team", "ops"), ("severity", "warning")]), ["db"]);
        assert_eq!(receivers_for(&config, &[("team", "db"), ("env", "dev")]), ["db-archive"]);
        assert_eq!(receivers_for(&config, &[("team", "web")]), ["root"]);
        let pager = &config.route.routes[0].routes[0];
        assert_eq!(pager.group_wait, Duration::from_secs(10), "inherited from the root");
        assert_eq!(pager.repeat_interval, Duration::from_secs(3600));
        assert_eq!(pager.group_by, GroupBy::All, "inherited from its parent");
        assert_eq!(pager.key, r#"{}/{team=~"db|ops",env!="dev"}/0/{severity=~"crit.*"}/0"#);
    }

    #[test]
    fn broken_configurations_are_refused_clearly() {
        let err = parse("bad.yml", "route:\n  receiver: x\n  group_wait: [\nreceivers: []\n").unwrap_err().to_string();
        assert!(err.contains("bad.yml") && err.contains("line"), "{err}");
        let err = parse("bad.yml", "route:\n  receiver: nowhere\n  group_wait: soon\nreceivers: [{name: a}]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"nowhere\" is not defined") && err.contains("\"soon\" is not a duration"), "{err}");
        let err = parse("bad.yml", "route: {receiver: a}\nreceivers: [{name: a, opsgenie_configs: [{}]}]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("opsgenie_configs"), "{err}");
        let err = parse(
            "bad.yml",
            "route: {receiver: a}\nreceivers: [{name: a, slack_configs: [{api_url: 'http://x', title: '{{ .X '}]}]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("slack_configs[0].title"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("100ms"), Some(Duration::from_millis(100)));
        assert_eq!(parse_duration("1d"), Some(Duration::from_secs(86400)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("m"), None);
    }

    #[test]
    fn basic_auth_header() {
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"a"), "YQ==");
    }
}
