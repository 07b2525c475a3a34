//! What the CLI's `token` and `cert list|revoke` commands make of the
//! admin API's answers (`/api/v1/identity/...`, called through
//! `crate::client::ApiClient`): the envelope's `data`, or the error with a
//! hint, and the tables they print.

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("HTTP {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the answer is not the API's JSON: {0}")]
    Body(String),
}

/// The `data` of a successful answer, or what went wrong.
pub fn data(status: u16, body: &str) -> Result<Value, AnswerError> {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    if !(200..300).contains(&status) {
        let message = parsed
            .as_ref()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| body.trim().to_owned());
        let hint = match status {
            401 => " (pass an admin token with --token-file)",
            403 => " (this needs a token with the admin role)",
            _ => "",
        };
        return Err(AnswerError::Status { status, message: format!("{message}{hint}") });
    }
    let parsed = parsed.ok_or_else(|| AnswerError::Body(body.to_owned()))?;
    Ok(parsed.get("data").cloned().unwrap_or(Value::Null))
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
