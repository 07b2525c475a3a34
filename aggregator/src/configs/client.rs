//! The `herd-aggregator config` commands: a client of `/api/v1/configs`
//! that prints what an operator reads. Each returns the text to print and
//! whether the command succeeded.

use serde_json::{Value as Json, json};

use crate::client::{ApiClient, ClientError};

/// What a command prints, and whether it succeeded (the exit status).
pub struct Printed {
    pub text: String,
    pub ok: bool,
}

fn call(client: &ApiClient, method: &str, path: &str, body: Option<&Json>) -> Result<(bool, Json), ClientError> {
    let (status, text) = client.call(method, path, body)?;
    let json: Json = serde_json::from_str(&text).unwrap_or_else(|_| json!({"status": "error", "error": text.trim()}));
    let ok = (200..300).contains(&status) && json["status"] == "success";
    if !ok && json["error"].as_str().is_none_or(str::is_empty) {
        return Ok((false, json!({"error": format!("HTTP {status}")})));
    }
    Ok((ok, json))
}

fn error_text(json: &Json) -> String {
    let mut text = String::new();
    match json["problems"].as_array().filter(|p| !p.is_empty()) {
        Some(problems) => {
            for problem in problems {
                text.push_str(&format!("error: {}\n", problem.as_str().unwrap_or_default()));
            }
        }
        None => text.push_str(&format!("error: {}\n", json["error"].as_str().unwrap_or("unknown error"))),
    }
    text
}

fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// The options of `config push`.
pub struct PushArgs {
    pub profile: String,
    pub selector: String,
    pub priority: i64,
    pub body: String,
    pub message: String,
    pub dry_run: bool,
    pub canary: Option<String>,
    pub wave_size: usize,
    pub wait: Option<String>,
    pub max_failures: usize,
}

pub fn push(client: &ApiClient, args: &PushArgs) -> Result<Printed, ClientError> {
    let request = json!({
        "profile": args.profile,
        "selector": args.selector,
        "priority": args.priority,
        "body": args.body,
        "message": args.message,
        "dryRun": args.dry_run,
        "canary": args.canary,
        "waveSize": args.wave_size,
        "wait": args.wait,
        "maxFailures": args.max_failures,
    });
    let (ok, json) = call(client, "POST", "/api/v1/configs", Some(&request))?;
    if !ok {
        return Ok(Printed { text: error_text(&json), ok: false });
    }
    let data = &json["data"];
    let agents = |value: &Json| -> String {
        let names: Vec<&str> =
            value.as_array().map(|a| a.iter().filter_map(Json::as_str).collect()).unwrap_or_default();
        if names.is_empty() { "no agent yet".to_owned() } else { names.join(", ") }
    };
    let text = match data["result"].as_str() {
        Some("dry_run") => {
            let mut text = String::new();
            let list = data["agents"].as_array().cloned().unwrap_or_default();
            text.push_str(&format!("dry run: {} would match {} agent(s)\n", args.profile, list.len()));
            for agent in &list {
                let current = match agent["currentProfile"].as_str() {
                    Some(profile) => format!("{profile}@{}", agent["currentVersion"]),
                    None => "its local file".to_owned(),
                };
                text.push_str(&format!("\n== {} (runs {current})\n", agent["agent"].as_str().unwrap_or_default()));
                match agent["error"].as_str() {
                    Some(error) => text.push_str(&format!("error: {error}\n")),
                    None if agent["diff"].as_str().is_some_and(str::is_empty) => text.push_str("no change\n"),
                    None => text.push_str(agent["diff"].as_str().unwrap_or_default()),
                }
            }
            let problems = data["problems"].as_array().cloned().unwrap_or_default();
            for problem in &problems {
                text.push_str(&format!("error: {}\n", problem.as_str().unwrap_or_default()));
            }
            return Ok(Printed { text, ok: problems.is_empty() });
        }
        Some("unchanged") => format!(
            "{}@{} already has this body, selector and priority: nothing pushed (agents: {})\n",
            args.profile,
            data["version"],
            agents(&data["agents"])
        ),
        _ => {
            let rollout = match data["rollout"].as_u64() {
                Some(id) => format!("; staged rollout {id} started (config status shows it)"),
                None => String::new(),
            };
            format!(
                "pushed {}@{} ({}) to {}{rollout}\n",
                args.profile,
                data["version"],
                data["hash"].as_str().unwrap_or_default(),
                agents(&data["agents"])
            )
        }
    };
    Ok(Printed { text, ok: true })
}

pub fn list(client: &ApiClient) -> Result<Printed, ClientError> {
    let (ok, json) = call(client, "GET", "/api/v1/configs", None)?;
    if !ok {
        return Ok(Printed { text: error_text(&json), ok: false });
    }
    let mut text = format!("{:<24} {:>8} {:>9} {:>7}  {}\n", "PROFILE", "ACTIVE", "PRIORITY", "AGENTS", "SELECTOR");
    for profile in json["data"].as_array().cloned().unwrap_or_default() {
        text.push_str(&format!(
            "{:<24} {:>8} {:>9} {:>7}  {}\n",
            profile["name"].as_str().unwrap_or_default(),
            profile["activeVersion"],
            profile["priority"],
            profile["agents"],
            profile["selector"].as_str().unwrap_or_default()
        ));
    }
    Ok(Printed { text, ok: true })
}

/// `NAME` or `NAME@VERSION`.
fn split_ref(text: &str) -> (String, Option<String>) {
    match text.rsplit_once('@') {
        Some((name, version)) => (name.to_owned(), Some(version.to_owned())),
        None => (text.to_owned(), None),
    }
}

pub fn show(client: &ApiClient, reference: &str) -> Result<Printed, ClientError> {
    let (name, version) = split_ref(reference);
    let path = format!("/api/v1/configs/{}/versions/{}", encode(&name), encode(version.as_deref().unwrap_or("active")));
    let (ok, json) = call(client, "GET", &path, None)?;
    if !ok {
        return Ok(Printed { text: error_text(&json), ok: false });
    }
    let v = &json["data"];
    let text = format!(
        "# {name}@{} {} by {} at {}\n# selector {} priority {}\n# {}\n{}",
        v["version"],
        v["hash"].as_str().unwrap_or_default(),
        v["author"].as_str().unwrap_or_default(),
        v["created"].as_str().unwrap_or_default(),
        v["selector"].as_str().unwrap_or_default(),
        v["priority"],
        v["message"].as_str().unwrap_or_default(),
        v["body"].as_str().unwrap_or_default()
    );
    Ok(Printed { text, ok: true })
}

pub fn diff(client: &ApiClient, from: &str, to: &str) -> Result<Printed, ClientError> {
    let ((name, a), (other, b)) = (split_ref(from), split_ref(to));
    let (Some(a), Some(b)) = (a, b) else {
        return Ok(Printed { text: "error: give two versions, e.g. config diff web@3 web@5\n".into(), ok: false });
    };
    if name != other {
        return Ok(Printed { text: "error: both versions must be of the same profile\n".into(), ok: false });
    }
    let path = format!("/api/v1/configs/{}/diff?from={}&to={}", encode(&name), encode(&a), encode(&b));
    let (ok, json) = call(client, "GET", &path, None)?;
    if !ok {
        return Ok(Printed { text: error_text(&json), ok: false });
    }
    Ok(Printed { text: json["data"]["diff"].as_str().unwrap_or_default().to_owned(), ok: true })
}

pub fn status(client: &ApiClient, selector: Option<&str>) -> Result<Printed, ClientError> {
    let path = match selector {
        Some(selector) => format!("/api/v1/configs/status?selector={}", encode(selector)),
        None => "/api/v1/configs/status".to_owned(),
    };
    let (ok, json) = call(client, "GET", &path, None)?;
    if !ok {
        return Ok(Printed { text: error_text(&json), ok: false });
    }
    let mut text = format!(
        "{:<20} {:<12} {:<20} {:<20} {:<20} {}\n",
        "AGENT", "STATE", "DESIRED", "APPLIED", "HASH", "LAST ERROR"
    );
    for agent in json["data"].as_array().cloned().unwrap_or_default() {
        let version = |profile: &Json, version: &Json| match (profile.as_str(), version.as_u64()) {
            (Some(p), Some(v)) if !p.is_empty() && v != 0 => format!("{p}@{v}"),
            _ => "local file".to_owned(),
        };
        let hash = agent["appliedHash"].as_str().unwrap_or_default();
        let hash = hash.strip_prefix("sha256:").map_or(hash, |h| &h[..h.len().min(12)]);
        let mut state = agent["state"].as_str().unwrap_or_default().to_owned();
        if let Some(rollout) = agent["heldByRollout"].as_u64() {
            state.push_str(&format!(" (held by rollout {rollout})"));
        }
        text.push_str(&format!(
            "{:<20} {:<12} {:<20} {:<20} {:<20} {}\n",
            agent["agent"].as_str().unwrap_or_default(),
            state,
            version(&agent["desiredProfile"], &agent["desiredVersion"]),
            version(&agent["appliedProfile"], &agent["appliedVersion"]),
            hash,
            agent["lastError"].as_str().unwrap_or("").replace('\n', "; ")
        ));
        for collector in agent["collectors"].as_array().cloned().unwrap_or_default() {
            let health = match collector["error"].as_str() {
                Some(error) => format!("failing: {error}"),
                None => "ok".to_owned(),
            };
            text.push_str(&format!("    collector {}: {health}\n", collector["name"].as_str().unwrap_or_default()));
        }
    }
    let (ok, rollouts) = call(client, "GET", "/api/v1/configs/rollouts", None)?;
    if ok {
        for rollout in rollouts["data"].as_array().cloned().unwrap_or_default() {
            if matches!(rollout["state"].as_str(), Some("running" | "halted")) {
                text.push_str(&format!(
                    "rollout {} of {}@{}: {} ({} of {} agents released) {}\n",
                    rollout["id"],
                    rollout["profile"].as_str().unwrap_or_default(),
                    rollout["version"],
                    rollout["state"].as_str().unwrap_or_default(),
                    rollout["released"],
                    rollout["agents"].as_array().map_or(0, Vec::len),
                    rollout["reason"].as_str().unwrap_or_default()
                ));
            }
        }
    }
    Ok(Printed { text, ok: true })
}

/// `rollback`, `resume` or `abort` of profile `name`.
pub fn action(client: &ApiClient, name: &str, action: &str, to: Option<u64>) -> Result<Printed, ClientError> {
    let body = to.map(|to| json!({"to": to}));
    let (ok, json) = call(client, "POST", &format!("/api/v1/configs/{}/{action}", encode(name)), body.as_ref())?;
    if !ok {
        return Ok(Printed { text: error_text(&json), ok: false });
    }
    let data = &json["data"];
    let text = match action {
        "rollback" => format!("{name} is back on version {}\n", data["activeVersion"]),
        "resume" => format!("rollout {} of {name} resumed\n", data["rollout"]),
        _ => format!("rollout {} of {name} aborted; its agents return to the version before it\n", data["rollout"]),
    };
    Ok(Printed { text, ok: true })
}
