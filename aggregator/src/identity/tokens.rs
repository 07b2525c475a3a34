//! Enrollment tokens: random, printed once by `token create`, kept only as
//! SHA-256 hashes in `state_dir/identity/tokens.json` (replaced atomically
//! on every change). A token is `<id>.<secret>`: the id names it in `token
//! list` and `token revoke`, the secret is what is hashed. A use is counted
//! (and persisted) before the certificate it pays for is signed, so a crash
//! can waste a use but never grant one more.

use std::path::{Path, PathBuf};

use base64::Engine;
use herd_common::protocol::enroll::RefusalReason;
use serde::{Deserialize, Serialize};

use super::PersistError;

/// Tokens that can no longer be used are dropped this long after.
const KEEP_SPENT_MS: i64 = 7 * 24 * 3600 * 1000;
/// Names of agents enrolled with one token, kept for `token list`.
const MAX_NAMES_PER_TOKEN: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    secret_sha256: String,
    /// Bound to every identity enrolled with the token.
    pub labels: Vec<(String, String)>,
    pub created_ms: i64,
    pub expires_ms: i64,
    /// `None`: any number of agents until it expires.
    pub max_uses: Option<u32>,
    pub uses: u32,
    pub revoked_ms: Option<i64>,
    /// The credential that created it (an HTTP token's name).
    pub created_by: String,
    /// Agents enrolled with it, newest last.
    pub enrolled: Vec<String>,
}

impl TokenRecord {
    /// Why this token cannot be used at `now_ms`, if it cannot.
    pub fn refusal(&self, now_ms: i64) -> Option<RefusalReason> {
        if self.revoked_ms.is_some() {
            Some(RefusalReason::TokenRevoked)
        } else if now_ms >= self.expires_ms {
            Some(RefusalReason::TokenExpired)
        } else if self.max_uses.is_some_and(|max| self.uses >= max) {
            Some(RefusalReason::TokenUsedUp)
        } else {
            None
        }
    }

    /// `active`, `revoked`, `expired` or `used_up`.
    pub fn state(&self, now_ms: i64) -> &'static str {
        match self.refusal(now_ms) {
            None => "active",
            Some(RefusalReason::TokenRevoked) => "revoked",
            Some(RefusalReason::TokenExpired) => "expired",
            Some(_) => "used_up",
        }
    }

    /// Unusable for more than a week: `token list` need not show it any more.
    fn forgettable(&self, now_ms: i64) -> bool {
        let ended = self.revoked_ms.map_or(self.expires_ms, |revoked| revoked.min(self.expires_ms));
        self.refusal(now_ms).is_some() && now_ms.saturating_sub(ended) >= KEEP_SPENT_MS
    }
}

/// What a new token allows.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    pub labels: Vec<(String, String)>,
    pub ttl_ms: i64,
    pub max_uses: Option<u32>,
    pub created_by: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokenFile {
    tokens: Vec<TokenRecord>,
}

pub struct TokenStore {
    path: PathBuf,
    records: Vec<TokenRecord>,
}

fn sha256_hex(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares without an early exit, so timing says nothing about where two hashes differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_bytes<const N: usize>() -> Result<[u8; N], PersistError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| PersistError::Random)?;
    Ok(bytes)
}

impl TokenStore {
    /// Reads `path`; a missing file is an empty store.
    pub fn open(path: &Path) -> Result<Self, PersistError> {
        let file: TokenFile = super::read_json(path)?.unwrap_or_default();
        Ok(Self { path: path.to_owned(), records: file.tokens })
    }

    fn save(&self) -> Result<(), PersistError> {
        let file = TokenFile { tokens: self.records.clone() };
        super::write_json(&self.path, &file)
    }

    /// Creates a token; returns its text (shown once, never stored) and record.
    pub fn create(&mut self, spec: TokenSpec, now_ms: i64) -> Result<(String, TokenRecord), PersistError> {
        let id: String = random_bytes::<8>()?.iter().map(|b| format!("{b:02x}")).collect();
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>()?);
        let token = format!("{id}.{secret}");
        let record = TokenRecord {
            id,
            secret_sha256: sha256_hex(&token),
            labels: spec.labels,
            created_ms: now_ms,
            expires_ms: now_ms.saturating_add(spec.ttl_ms),
            max_uses: spec.max_uses,
            uses: 0,
            revoked_ms: None,
            created_by: spec.created_by,
            enrolled: Vec::new(),
        };
        self.prune(now_ms);
        self.records.push(record.clone());
        self.save()?;
        Ok((token, record))
    }

    pub fn list(&self) -> &[TokenRecord] {
        &self.records
    }

    /// Revokes token `id`; `false` if there is no such token.
    pub fn revoke(&mut self, id: &str, now_ms: i64) -> Result<bool, PersistError> {
        let Some(record) = self.records.iter_mut().find(|r| r.id == id) else { return Ok(false) };
        record.revoked_ms.get_or_insert(now_ms);
        self.save()?;
        Ok(true)
    }

    /// The usable token `token`, or why it is refused.
    pub fn check(&self, token: &str, now_ms: i64) -> Result<&TokenRecord, RefusalReason> {
        let id = token.split_once('.').map_or("", |(id, _)| id);
        let hash = sha256_hex(token);
        let record = self
            .records
            .iter()
            .find(|r| r.id == id && same(&r.secret_sha256, &hash))
            .ok_or(RefusalReason::TokenUnknown)?;
        match record.refusal(now_ms) {
            Some(reason) => Err(reason),
            None => Ok(record),
        }
    }

    /// Counts one use of token `id` by agent `name`, durably.
    pub fn consume(&mut self, id: &str, name: &str) -> Result<(), PersistError> {
        if let Some(record) = self.records.iter_mut().find(|r| r.id == id) {
            record.uses = record.uses.saturating_add(1);
            record.enrolled.push(name.to_owned());
            if record.enrolled.len() > MAX_NAMES_PER_TOKEN {
                record.enrolled.remove(0);
            }
        }
        self.save()
    }

    /// Forgets tokens unusable for more than a week.
    fn prune(&mut self, now_ms: i64) {
        self.records.retain(|r| !r.forgettable(now_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(uses: Option<u32>) -> TokenSpec {
        TokenSpec { labels: vec![("role".into(), "db".into())], ttl_ms: 1000, max_uses: uses, created_by: "t".into() }
    }

    #[test]
    fn tokens_are_stored_as_hashes_and_refused_when_spent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let mut store = TokenStore::open(&path).unwrap();
        let (token, record) = store.create(spec(Some(1)), 0).unwrap();
        let on_disk = std::fs::read_to_string(&path).unwrap();
        let secret = token.split_once('.').unwrap().1;
        assert!(!on_disk.contains(secret), "only the hash is stored");
        assert_eq!(store.check(&token, 10).unwrap().id, record.id);
        store.consume(&record.id, "db-1").unwrap();
        assert_eq!(store.check(&token, 10).unwrap_err(), RefusalReason::TokenUsedUp);

        let (unlimited, record) = store.create(spec(None), 0).unwrap();
        for n in 0..3 {
            store.consume(&record.id, &format!("db-{n}")).unwrap();
        }
        assert!(store.check(&unlimited, 999).is_ok());
        assert_eq!(store.check(&unlimited, 1000).unwrap_err(), RefusalReason::TokenExpired);
        let (revoked, record) = store.create(spec(None), 0).unwrap();
        assert!(store.revoke(&record.id, 5).unwrap());
        assert_eq!(store.check(&revoked, 10).unwrap_err(), RefusalReason::TokenRevoked);
        assert!(!store.revoke("nope", 5).unwrap());

        let forged = format!("{}.{}", record.id, "x".repeat(43));
        assert_eq!(TokenStore::open(&path).unwrap().check(&forged, 10).unwrap_err(), RefusalReason::TokenUnknown);
        let reopened = TokenStore::open(&path).unwrap();
        assert_eq!(reopened.check(&token, 10).unwrap_err(), RefusalReason::TokenUsedUp, "uses persist");
        assert_eq!(reopened.check("", 10).unwrap_err(), RefusalReason::TokenUnknown);
    }
}
