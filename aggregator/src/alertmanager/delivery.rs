//! Turns notifications into what each integration expects and sends them:
//! Alertmanager's webhook JSON (version "4"), Slack incoming-webhook JSON,
//! PagerDuty Events API v2. Templates are rendered over Alertmanager's
//! notification data (`.Receiver`, `.Status`, `.Alerts`, `.GroupLabels`,
//! `.CommonLabels`, `.CommonAnnotations`, `.ExternalURL`). Email goes over
//! SMTP with STARTTLS (or TLS on port 465) through lettre and rustls. All
//! I/O is blocking (ureq, lettre): call `deliver` on a blocking thread.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value as Json, json};

use super::config::{HttpAuth, Integration, PagerdutyConfig, SlackConfig, WebhookConfig};
use super::dispatch::{Alert, Notification};
use crate::rules::template::{Template, TemplateError, TemplateValue};

const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// PagerDuty refuses longer summaries.
const MAX_PAGERDUTY_SUMMARY_CHARS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("{url} answered HTTP {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("cannot reach {url}: {source}")]
    Http { url: String, source: Box<ureq::Error> },
    #[error("template: {0}")]
    Template(#[from] TemplateError),
    #[error("email: {message}")]
    Email { message: String, transient: bool },
}

impl DeliveryError {
    /// Whether trying again may help (a 4xx other than 429 will not).
    pub fn retryable(&self) -> bool {
        match self {
            DeliveryError::Status { status, .. } => *status == 429 || *status >= 500,
            DeliveryError::Http { .. } => true,
            DeliveryError::Email { transient, .. } => *transient,
            DeliveryError::Template(_) => false,
        }
    }
}

/// Go's zero time, which Alertmanager sends as the `endsAt` of firing alerts.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

pub fn rfc3339(ms: i64) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ZERO_TIME.to_owned())
}

fn alert_status(alert: &Alert, notification: &Notification) -> &'static str {
    if notification.firing.contains(&alert.fingerprint) { "firing" } else { "resolved" }
}

fn ends_at(alert: &Alert, notification: &Notification) -> String {
    if notification.firing.contains(&alert.fingerprint) { ZERO_TIME.to_owned() } else { rfc3339(alert.ends_at_ms) }
}

/// Labels (or annotations) every alert has with the same value.
fn common(alerts: &[Alert], pick: impl Fn(&Alert) -> &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let Some((first, rest)) = alerts.split_first() else { return BTreeMap::new() };
    let mut out = pick(first).clone();
    for alert in rest {
        let map = pick(alert);
        out.retain(|k, v| map.get(k) == Some(v));
    }
    out
}

/// Alertmanager's `template.Data` for a notification.
pub fn template_data(notification: &Notification, external_url: &str) -> TemplateValue {
    let string_map =
        |m: &BTreeMap<String, String>| TemplateValue::string_map(m.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let str = |s: &str| TemplateValue::Str(s.to_owned());
    let alerts = notification
        .alerts
        .iter()
        .map(|alert| {
            TemplateValue::Map(BTreeMap::from([
                ("Status".to_owned(), str(alert_status(alert, notification))),
                ("Labels".to_owned(), string_map(&alert.labels)),
                ("Annotations".to_owned(), string_map(&alert.annotations)),
                ("StartsAt".to_owned(), str(&rfc3339(alert.starts_at_ms))),
                ("EndsAt".to_owned(), str(&ends_at(alert, notification))),
                ("GeneratorURL".to_owned(), str(&alert.generator_url)),
                ("Fingerprint".to_owned(), str(&format!("{:016x}", alert.fingerprint))),
            ]))
        })
        .collect();
    TemplateValue::Map(BTreeMap::from([
        ("Receiver".to_owned(), str(&notification.receiver)),
        ("Status".to_owned(), str(notification.status())),
        ("Alerts".to_owned(), TemplateValue::List(alerts)),
        ("GroupLabels".to_owned(), string_map(&notification.group_labels)),
        ("CommonLabels".to_owned(), string_map(&common(&notification.alerts, |a| &a.labels))),
        ("CommonAnnotations".to_owned(), string_map(&common(&notification.alerts, |a| &a.annotations))),
        ("ExternalURL".to_owned(), str(external_url)),
    ]))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WebhookAlert<'a> {
    status: &'a str,
    labels: &'a BTreeMap<String, String>,
    annotations: &'a BTreeMap<String, String>,
    starts_at: String,
    ends_at: String,
    #[serde(rename = "generatorURL")]
    generator_url: &'a str,
    fingerprint: String,
}

/// Alertmanager's webhook payload, version 4.
pub fn webhook_payload(config: &WebhookConfig, notification: &Notification, external_url: &str) -> Json {
    let limit = if config.max_alerts == 0 { usize::MAX } else { config.max_alerts as usize };
    let alerts: Vec<WebhookAlert<'_>> = notification
        .alerts
        .iter()
        .take(limit)
        .map(|alert| WebhookAlert {
            status: alert_status(alert, notification),
            labels: &alert.labels,
            annotations: &alert.annotations,
            starts_at: rfc3339(alert.starts_at_ms),
            ends_at: ends_at(alert, notification),
            generator_url: &alert.generator_url,
            fingerprint: format!("{:016x}", alert.fingerprint),
        })
        .collect();
    json!({
        "receiver": notification.receiver,
        "status": notification.status(),
        "alerts": alerts,
        "groupLabels": notification.group_labels,
        "commonLabels": common(&notification.alerts, |a| &a.labels),
        "commonAnnotations": common(&notification.alerts, |a| &a.annotations),
        "externalURL": external_url,
        "version": "4",
        "groupKey": notification.group_key,
        "truncatedAlerts": notification.alerts.len().saturating_sub(limit),
    })
}

fn render(template: &Template, data: &TemplateValue) -> Result<String, DeliveryError> {
    Ok(template.render_value(data)?)
}

/// A Slack incoming-webhook message with one attachment; empty fields are left out, as Alertmanager does.
pub fn slack_payload(config: &SlackConfig, data: &TemplateValue) -> Result<Json, DeliveryError> {
    let mut attachment = serde_json::Map::new();
    for (key, template) in [
        ("title", &config.title),
        ("title_link", &config.title_link),
        ("pretext", &config.pretext),
        ("text", &config.text),
        ("fallback", &config.fallback),
        ("color", &config.color),
    ] {
        let value = render(template, data)?;
        if !value.is_empty() {
            attachment.insert(key.to_owned(), Json::String(value));
        }
    }
    attachment.insert("mrkdwn_in".to_owned(), json!(["fallback", "pretext", "text"]));
    let mut message = serde_json::Map::new();
    for (key, template) in [
        ("channel", &config.channel),
        ("username", &config.username),
        ("icon_emoji", &config.icon_emoji),
        ("icon_url", &config.icon_url),
    ] {
        let value = render(template, data)?;
        if !value.is_empty() {
            message.insert(key.to_owned(), Json::String(value));
        }
    }
    message.insert("attachments".to_owned(), Json::Array(vec![Json::Object(attachment)]));
    Ok(Json::Object(message))
}

/// A PagerDuty Events API v2 event: `trigger` while anything fires, else `resolve`
/// (which carries no payload). The dedup key is derived from the group key, so
/// the resolve closes the incident the trigger opened.
pub fn pagerduty_payload(
    config: &PagerdutyConfig,
    notification: &Notification,
    data: &TemplateValue,
) -> Result<Json, DeliveryError> {
    let resolve = notification.firing.is_empty();
    let dedup_key = format!(
        "{:016x}",
        super::dispatch::fingerprint(&BTreeMap::from([("group_key".to_owned(), notification.group_key.clone(),)]))
    );
    let mut event = json!({
        "routing_key": config.routing_key,
        "event_action": if resolve { "resolve" } else { "trigger" },
        "dedup_key": dedup_key,
        "client": render(&config.client, data)?,
        "client_url": render(&config.client_url, data)?,
    });
    if !resolve {
        let mut summary = render(&config.description, data)?;
        if summary.chars().count() > MAX_PAGERDUTY_SUMMARY_CHARS {
            summary = summary.chars().take(MAX_PAGERDUTY_SUMMARY_CHARS - 1).collect::<String>() + "…";
        }
        let client = render(&config.client, data)?;
        let mut details = serde_json::Map::new();
        for (key, template) in &config.details {
            details.insert(key.clone(), Json::String(render(template, data)?));
        }
        let mut payload = json!({
            "summary": summary,
            "source": client,
            "severity": render(&config.severity, data)?,
            "custom_details": details,
        });
        for (key, template) in [("class", &config.class), ("component", &config.component), ("group", &config.group)] {
            let value = render(template, data)?;
            if !value.is_empty() {
                payload[key] = Json::String(value);
            }
        }
        event["payload"] = payload;
    }
    Ok(event)
}

/// Sends one notification through one integration; blocking.
pub fn deliver(
    integration: &Integration,
    notification: &Notification,
    external_url: &str,
) -> Result<(), DeliveryError> {
    match integration {
        Integration::Webhook(config) => {
            post_json(&config.url, &config.auth, &webhook_payload(config, notification, external_url))
        }
        Integration::Slack(config) => {
            let data = template_data(notification, external_url);
            post_json(&config.api_url, &config.auth, &slack_payload(config, &data)?)
        }
        Integration::Pagerduty(config) => {
            let data = template_data(notification, external_url);
            post_json(&config.url, &config.auth, &pagerduty_payload(config, notification, &data)?)
        }
        Integration::Email(config) => send_email(config, &template_data(notification, external_url)),
    }
}

fn post_json(url: &str, auth: &HttpAuth, body: &Json) -> Result<(), DeliveryError> {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(HTTP_TIMEOUT)).http_status_as_error(false).build().into();
    let mut request = agent.post(url).header("Content-Type", "application/json").header("User-Agent", "Herd");
    if let Some(authorization) = &auth.authorization {
        request = request.header("Authorization", authorization);
    }
    let bytes = serde_json::to_vec(body).expect("notification JSON serializes");
    let response = request
        .send(&bytes[..])
        .map_err(|source| DeliveryError::Http { url: url.to_owned(), source: Box::new(source) })?;
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(());
    }
    let text = response.into_body().read_to_string().unwrap_or_default();
    Err(DeliveryError::Status { url: url.to_owned(), status, body: text.chars().take(200).collect() })
}

fn email_error(message: impl std::fmt::Display, transient: bool) -> DeliveryError {
    DeliveryError::Email { message: message.to_string(), transient }
}

/// Sends one notification as a mail. `require_tls` (the default) insists on
/// STARTTLS, as Alertmanager does; port 465 speaks TLS from the start.
fn send_email(config: &super::config::EmailConfig, data: &TemplateValue) -> Result<(), DeliveryError> {
    use lettre::message::header::{ContentType, HeaderName, HeaderValue};
    use lettre::message::{Mailbox, MultiPart, SinglePart};
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::transport::smtp::extension::ClientId;
    use lettre::{SmtpTransport, Transport};

    let from: Mailbox = render(&config.from, data)?.parse().map_err(|e| email_error(format!("from: {e}"), false))?;
    let mut builder = lettre::Message::builder().from(from);
    let to = render(&config.to, data)?;
    for address in to.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        builder = builder.to(address.parse().map_err(|e| email_error(format!("to {address:?}: {e}"), false))?);
    }
    for (name, template) in &config.headers {
        let value = render(template, data)?;
        match name.to_ascii_lowercase().as_str() {
            "subject" => builder = builder.subject(value),
            "to" | "from" => {}
            _ => {
                let name = HeaderName::new_from_ascii(name.clone())
                    .map_err(|e| email_error(format!("header {name:?}: {e}"), false))?;
                builder = builder.raw_header(HeaderValue::new(name, value));
            }
        }
    }
    let text = render(&config.text, data)?;
    let message = match &config.html {
        Some(html) => builder.multipart(MultiPart::alternative_plain_html(text, render(html, data)?)),
        None => builder.singlepart(SinglePart::builder().header(ContentType::TEXT_PLAIN).body(text)),
    }
    .map_err(|e| email_error(e, false))?;

    let (host, port) = config
        .smarthost
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host.trim_matches(['[', ']']), port.parse::<u16>().ok()?)))
        .ok_or_else(|| email_error(format!("smarthost {:?} is not host:port", config.smarthost), false))?;
    let mut tls = TlsParameters::builder(config.server_name.clone().unwrap_or_else(|| host.to_owned()))
        .dangerous_accept_invalid_certs(config.insecure_skip_verify);
    if let Some(pem) = &config.ca_pem {
        tls = tls.add_root_certificate(Certificate::from_pem(pem).map_err(|e| email_error(e, false))?);
    }
    let tls = tls.build_rustls().map_err(|e| email_error(e, false))?;
    let tls = if port == 465 {
        Tls::Wrapper(tls)
    } else if config.require_tls {
        Tls::Required(tls)
    } else {
        Tls::Opportunistic(tls)
    };
    let mut transport = SmtpTransport::builder_dangerous(host)
        .port(port)
        .tls(tls)
        .hello_name(ClientId::Domain(config.hello.clone()))
        .timeout(Some(HTTP_TIMEOUT));
    if let Some(username) = &config.auth_username {
        transport =
            transport.credentials(Credentials::new(username.clone(), config.auth_password.clone().unwrap_or_default()));
    }
    transport.build().send(&message).map(|_| ()).map_err(|e| {
        let transient = !e.is_permanent();
        email_error(e, transient)
    })
}
