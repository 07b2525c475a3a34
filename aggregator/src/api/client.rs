//! The CLI side of the admin HTTP API: `herd-aggregator token ...` and
//! `cert list|revoke` call `/api/v1/identity/...` with a bearer token read
//! from a file (never from the command line, where `ps` would show it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read the token file {path}: {source}")]
    TokenFile { path: PathBuf, source: std::io::Error },
    #[error("cannot reach {url}: {message} (is the aggregator running? --url sets its address)")]
    Http { url: String, message: String },
    #[error("{url} answered HTTP {status}: {message}")]
    Status { url: String, status: u16, message: String },
    #[error("{url} answered something that is not the API's JSON: {detail}")]
    Body { url: String, detail: String },
    #[error("{0}")]
    Tls(String),
}

/// Where the API is and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base_url: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl AdminClient {
    /// `ca_file`: the CA of the aggregator's HTTPS certificate, for `https://` URLs.
    pub fn new(base_url: &str, token_file: Option<&Path>, ca_file: Option<&Path>) -> Result<Self, ClientError> {
        let token = match token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| ClientError::TokenFile { path: path.to_owned(), source })?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let mut config =
            ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(15))).http_status_as_error(false);
        if base_url.starts_with("https://") {
            config = config.tls_config(client_tls(ca_file)?);
        }
        Ok(Self { base_url: base_url.trim_end_matches('/').to_owned(), token, agent: config.build().into() })
    }

    /// Calls `method path` with an optional JSON body; returns the `data` field.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base_url);
        let http = |e: ureq::Error| ClientError::Http { url: url.clone(), message: e.to_string() };
        let authorization = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let response = match method {
            "POST" => {
                let mut request = self.agent.post(&url).header("Content-Type", "application/json");
                if let Some(value) = &authorization {
                    request = request.header("Authorization", value);
                }
                let bytes = serde_json::to_vec(body.unwrap_or(&json!({}))).expect("JSON serialises");
                request.send(&bytes[..]).map_err(http)?
            }
            "DELETE" => {
                let mut request = self.agent.delete(&url);
                if let Some(value) = &authorization {
                    request = request.header("Authorization", value);
                }
                request.call().map_err(http)?
            }
            _ => {
                let mut request = self.agent.get(&url);
                if let Some(value) = &authorization {
                    request = request.header("Authorization", value);
                }
                request.call().map_err(http)?
            }
        };
        let status = response.status().as_u16();
        let text = response.into_body().read_to_string().unwrap_or_default();
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        if !(200..300).contains(&status) {
            let message = parsed
                .as_ref()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| text.trim().to_owned());
            let hint = match status {
                401 => " (pass an admin token with --token-file)",
                403 => " (this needs a token with the admin role)",
                _ => "",
            };
            return Err(ClientError::Status { url, status, message: format!("{message}{hint}") });
        }
        let parsed = parsed.ok_or_else(|| ClientError::Body { url: url.clone(), detail: text.clone() })?;
        Ok(parsed.get("data").cloned().unwrap_or(Value::Null))
    }
}

/// Trust for an `https://` aggregator: `ca_file` if given, else the system's bundle.
fn client_tls(ca_file: Option<&Path>) -> Result<ureq::tls::TlsConfig, ClientError> {
    let mut builder = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| ClientError::Tls(format!("cannot read {}: {e}", path.display())))?;
        let roots: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert.to_owned()),
                _ => None,
            })
            .collect();
        if roots.is_empty() {
            return Err(ClientError::Tls(format!("{} holds no certificate", path.display())));
        }
        builder = builder.root_certs(ureq::tls::RootCerts::new_with_certs(&roots));
    }
    Ok(builder.build())
}

fn labels_text(labels: &Value) -> String {
    let pairs: Vec<String> = labels
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect())
        .unwrap_or_default();
    if pairs.is_empty() { "-".into() } else { pairs.join(",") }
}

/// `token list` as a table.
pub fn format_tokens(tokens: &Value) -> String {
    let mut out =
        format!("{:<17} {:<8} {:<7} {:<25} {:<12} {}\n", "ID", "STATE", "USES", "EXPIRES", "CREATED_BY", "LABELS");
    for token in tokens.as_array().into_iter().flatten() {
        let uses = match token["maxUses"].as_u64() {
            Some(max) => format!("{}/{max}", token["uses"]),
            None => format!("{}/-", token["uses"]),
        };
        out.push_str(&format!(
            "{:<17} {:<8} {:<7} {:<25} {:<12} {}\n",
            token["id"].as_str().unwrap_or_default(),
            token["state"].as_str().unwrap_or_default(),
            uses,
            token["expires"].as_str().unwrap_or_default(),
            token["createdBy"].as_str().unwrap_or_default(),
            labels_text(&token["labels"]),
        ));
    }
    out
}

/// `cert list` as a table.
pub fn format_certificates(certificates: &Value) -> String {
    let mut out =
        format!("{:<20} {:<33} {:<8} {:<25} {:<9} {}\n", "NAME", "SERIAL", "STATE", "EXPIRES", "SOURCE", "LABELS");
    for cert in certificates.as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<20} {:<33} {:<8} {:<25} {:<9} {}\n",
            cert["name"].as_str().unwrap_or_default(),
            cert["serial"].as_str().unwrap_or_default(),
            cert["state"].as_str().unwrap_or_default(),
            cert["expires"].as_str().unwrap_or_default(),
            cert["source"].as_str().unwrap_or_default(),
            labels_text(&cert["labels"]),
        ));
    }
    out
}
