//! Browser sessions for the web UI. A browser cannot send a bearer token by
//! itself, so the login form takes one once; a valid token becomes a random
//! session id in an `HttpOnly`, `SameSite=Strict` cookie, which the layer
//! then accepts in place of the token. The session remembers the token's
//! digest, not a role: every request is checked against the tokens in force,
//! so a token removed on SIGHUP ends its sessions too.
//!
//! State-changing requests carried by the cookie must come from this origin
//! (`Origin`, or `Sec-Fetch-Site: same-origin`), and the UI's forms also
//! carry the session's CSRF token, which their handlers compare. Sessions
//! live in memory: a restart logs everyone out. Session ids are kept only as
//! SHA-256 digests.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, header};
use sha2::{Digest, Sha256};

pub const COOKIE_NAME: &str = "herd_session";
/// A session ends this long after login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; past it the one closest to expiry goes first.
const MAX_SESSIONS: usize = 10_000;

/// A logged-in browser: its session id (the cookie) and its CSRF token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub csrf: String,
}

struct Entry {
    token_digest: [u8; 32],
    csrf: String,
    expires: Instant,
}

#[derive(Default)]
pub struct Sessions {
    /// By the hex SHA-256 of the session id.
    entries: Mutex<HashMap<String, Entry>>,
}

fn key(id: &str) -> String {
    hex(&Sha256::digest(id.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(hex(&bytes))
}

impl Sessions {
    /// A new session for the token with `token_digest`.
    pub fn create(&self, token_digest: [u8; 32]) -> Result<Session, getrandom::Error> {
        let session = Session { id: random_hex()?, csrf: random_hex()? };
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("sessions lock is never poisoned");
        entries.retain(|_, e| e.expires > now);
        if entries.len() >= MAX_SESSIONS
            && let Some(oldest) = entries.iter().min_by_key(|(_, e)| e.expires).map(|(k, _)| k.clone())
        {
            entries.remove(&oldest);
        }
        entries
            .insert(key(&session.id), Entry { token_digest, csrf: session.csrf.clone(), expires: now + SESSION_TTL });
        Ok(session)
    }

    /// The live session `id` names, with its token's digest.
    pub fn get(&self, id: &str) -> Option<(Session, [u8; 32])> {
        let entries = self.entries.lock().expect("sessions lock is never poisoned");
        let entry = entries.get(&key(id)).filter(|e| e.expires > Instant::now())?;
        Some((Session { id: id.to_owned(), csrf: entry.csrf.clone() }, entry.token_digest))
    }

    pub fn remove(&self, id: &str) {
        self.entries.lock().expect("sessions lock is never poisoned").remove(&key(id));
    }
}

/// The session cookie's value in a request, if any.
pub fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE_NAME)?.strip_prefix('='))
        .filter(|value| !value.is_empty())
}

/// `Set-Cookie` for a new session.
pub fn set_cookie(session: &Session) -> HeaderValue {
    let value =
        format!("{COOKIE_NAME}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}", session.id, SESSION_TTL.as_secs());
    HeaderValue::from_str(&value).expect("hex session ids are valid header text")
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("herd_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Whether a browser request comes from a page of this origin: `Origin`
/// names this host, or else `Sec-Fetch-Site` says `same-origin`. Browsers
/// send at least one of them with every form post and `fetch`.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let origin_host = origin.split_once("://").map(|(_, rest)| rest);
        return origin_host.is_some() && origin_host == host;
    }
    headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) == Some("same-origin")
}

/// Equal strings, compared in time independent of where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_found_by_their_cookie_until_removed() {
        let sessions = Sessions::default();
        let session = sessions.create([7; 32]).unwrap();
        assert_eq!(session.id.len(), 64);
        assert_ne!(session.id, session.csrf);
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, format!("a=b; {COOKIE_NAME}={}; c=d", session.id).parse().unwrap());
        let id = cookie(&headers).unwrap();
        assert_eq!(sessions.get(id), Some((session.clone(), [7; 32])));
        assert!(sessions.get("0123").is_none());
        sessions.remove(id);
        assert!(sessions.get(&session.id).is_none());
        let set = set_cookie(&session);
        let set = set.to_str().unwrap();
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    }

    #[test]
    fn only_requests_from_this_origin_count_as_same_origin() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
            }
            map
        };
        assert!(same_origin(&headers(&[("host", "agg:7401"), ("origin", "http://agg:7401")])));
        assert!(!same_origin(&headers(&[("host", "agg:7401"), ("origin", "http://evil.example")])));
        assert!(!same_origin(&headers(&[("host", "agg:7401"), ("origin", "null")])));
        assert!(same_origin(&headers(&[("host", "agg:7401"), ("sec-fetch-site", "same-origin")])));
        assert!(!same_origin(&headers(&[("host", "agg:7401"), ("sec-fetch-site", "cross-site")])));
        assert!(!same_origin(&headers(&[("host", "agg:7401")])));
        assert!(same_token("abc", "abc") && !same_token("abc", "abd") && !same_token("abc", "ab"));
    }
}
