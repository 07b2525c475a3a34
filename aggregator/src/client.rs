//! The CLI's HTTP client of a running aggregator: base URL plus an optional
//! bearer token (read from `--token-file`, `HERD_TOKEN_FILE` or
//! `HERD_TOKEN`). Answers come back as status and body; what they mean is
//! each command's business.

use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {url}: {message} (is the aggregator running there? --url or HERD_URL names it)")]
    Http { url: String, message: String },
    #[error("cannot read the token file {path}: {source}")]
    TokenFile { path: String, source: std::io::Error },
    #[error("cannot trust the aggregator's HTTPS certificate: {0}")]
    Tls(String),
}

pub struct ApiClient {
    base_url: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl ApiClient {
    /// `token_file` wins over a `token` given directly (e.g. from `HERD_TOKEN`).
    pub fn new(base_url: &str, token_file: Option<&Path>, token: Option<String>) -> Result<Self, ClientError> {
        let token = match token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| ClientError::TokenFile { path: path.display().to_string(), source })?
                    .trim()
                    .to_owned(),
            ),
            None => token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()),
        };
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Self { base_url: base_url.trim_end_matches('/').to_owned(), token, agent })
    }

    /// For an `https://` URL: trust `ca_file` (the CA of the aggregator's
    /// HTTPS certificate) instead of the system's bundle.
    pub fn with_ca_file(mut self, ca_file: Option<&Path>) -> Result<Self, ClientError> {
        if !self.base_url.starts_with("https://") {
            return Ok(self);
        }
        let mut tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()));
        if let Some(path) = ca_file {
            let pem =
                std::fs::read(path).map_err(|e| ClientError::Tls(format!("cannot read {}: {e}", path.display())))?;
            let roots: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert.to_owned()),
                    _ => None,
                })
                .collect();
            if roots.is_empty() {
                return Err(ClientError::Tls(format!("{} holds no certificate", path.display())));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&roots));
        }
        self.agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false)
            .tls_config(tls.build())
            .build()
            .into();
        Ok(self)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Sends `method path` with an optional JSON body; returns the status and body text.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, String), ClientError> {
        let url = self.url(path);
        let http = |e: ureq::Error| ClientError::Http { url: url.clone(), message: e.to_string() };
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let response = match method {
            "POST" | "PUT" => {
                let mut request = if method == "POST" { self.agent.post(&url) } else { self.agent.put(&url) };
                if let Some(auth) = &auth {
                    request = request.header("Authorization", auth);
                }
                let bytes = body.map(|b| serde_json::to_vec(b).expect("JSON serializes")).unwrap_or_default();
                request.header("Content-Type", "application/json").send(&bytes[..]).map_err(http)?
            }
            "DELETE" => {
                let mut request = self.agent.delete(&url);
                if let Some(auth) = &auth {
                    request = request.header("Authorization", auth);
                }
                request.call().map_err(http)?
            }
            _ => {
                let mut request = self.agent.get(&url);
                if let Some(auth) = &auth {
                    request = request.header("Authorization", auth);
                }
                request.call().map_err(http)?
            }
        };
        let status = response.status().as_u16();
        let text = response.into_body().read_to_string().unwrap_or_default();
        Ok((status, text))
    }
}
