//! The one authentication and authorization layer in front of every HTTP
//! route. A request's credentials (a bearer token from `[[http.tokens]]`, or
//! none: `[http] anonymous_role`) give it a [`Principal`]; [`policy`] says
//! which role its route needs; a request without enough is refused before
//! any handler runs (401 without valid credentials, 403 with too little
//! role), so a refused request changes nothing. Refusals are counted by
//! route and reason. Handlers that record who changed something read the
//! caller as `Extension<Principal>`.
//!
//! `Authenticator` is a manager: `apply_config` reads the token files (at
//! start and on SIGHUP; a reload that fails keeps the tokens in use), and
//! the middleware reads its current credentials. Tokens are kept only as
//! SHA-256 digests, compared in constant time, and never logged.
//!
//! A client certificate is the other credential: the HTTP listener (which
//! verified it against the fleet CA during the TLS handshake) puts a
//! [`ClientCertificate`] in the request's extensions; a client certificate
//! (`herd://client/NAME`, never an agent's) named in
//! `[[http.client_certificates]]` gets that entry's role, unless it is
//! revoked. A bearer token, when present, is what counts.
//!
//! Browsers log in once with a token and then carry a session cookie
//! instead (`session`); a browser asking for a page without credentials is
//! sent to the login form rather than given a JSON 401.

pub mod policy;
pub mod session;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use herd_common::config::http::{HttpConfig, MIN_TOKEN_BYTES, Role};
use sha2::{Digest, Sha256};

pub use policy::Access;

/// The verified client certificate of the request's connection.
#[derive(Debug, Clone)]
pub struct ClientCertificate(pub herd_common::identity::CertInfo);

/// Whether a certificate is revoked (the identity inventory answers it).
pub type RevocationCheck = Arc<dyn Fn(&herd_common::identity::CertInfo) -> bool + Send + Sync>;

/// Credentials valid on one route only, with the `editor` role there:
/// `[remote_write_receiver]`'s bearer tokens and basic-auth pairs, which may
/// write samples and nothing else.
#[derive(Default)]
struct RouteCredentials {
    route: &'static str,
    /// Digests of bearer tokens, and of `user:password` for basic auth.
    bearer: Vec<[u8; 32]>,
    basic: Vec<[u8; 32]>,
    /// `allow_unauthenticated`: requests without credentials may use the route.
    anonymous: bool,
}

/// The principal of requests without credentials.
const ANONYMOUS: &str = "anonymous";

/// Who is calling, as established by the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name, or `"anonymous"`.
    pub name: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("http.tokens[{index}] ({name}): cannot read {path}: {source}")]
    Read { index: usize, name: String, path: PathBuf, source: std::io::Error },
    #[error(
        "http.tokens[{index}] ({name}): {path} holds {bytes} bytes; a token needs at least {MIN_TOKEN_BYTES} (e.g. `openssl rand -hex 32 > {path}`)"
    )]
    TooShort { index: usize, name: String, path: PathBuf, bytes: usize },
    #[error("http.tokens[{index}] ({name}): {path} is readable by others: chmod 600 it")]
    Readable { index: usize, name: String, path: PathBuf },
    #[error("http.tokens[{index}] ({name}) holds the same token as http.tokens[{other}]")]
    Duplicate { index: usize, name: String, other: usize },
}

/// Why a request was refused: the `reason` label of the refusal counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// No credentials, and anonymous callers are not allowed this route.
    MissingCredentials,
    /// Credentials that match no token.
    InvalidCredentials,
    /// Valid credentials with a role below the route's.
    InsufficientRole,
    /// A state-changing request carried by the session cookie from a page of another origin.
    CrossSite,
}

impl Refusal {
    pub fn reason_code(self) -> &'static str {
        match self {
            Refusal::MissingCredentials => "missing_credentials",
            Refusal::InvalidCredentials => "invalid_credentials",
            Refusal::InsufficientRole => "insufficient_role",
            Refusal::CrossSite => "cross_site",
        }
    }
}

struct LoadedToken {
    name: String,
    role: Role,
    digest: [u8; 32],
}

struct Credentials {
    anonymous_role: Option<Role>,
    tokens: Vec<LoadedToken>,
    client_certificates: Vec<(String, Role)>,
}

pub struct Authenticator {
    credentials: RwLock<Credentials>,
    /// The web UI's logged-in browsers.
    sessions: session::Sessions,
    /// Refused requests by (route pattern, reason).
    refused: Mutex<BTreeMap<(String, &'static str), u64>>,
    revocation: RwLock<Option<RevocationCheck>>,
    route_credentials: RwLock<Vec<RouteCredentials>>,
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Equal-length comparison whose time does not depend on where the bytes differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn load(config: &HttpConfig) -> Result<Credentials, AuthError> {
    use std::os::unix::fs::PermissionsExt;
    let mut tokens: Vec<LoadedToken> = Vec::with_capacity(config.tokens.len());
    for (index, entry) in config.tokens.iter().enumerate() {
        let (name, path) = (entry.name.clone(), entry.token_file.clone());
        let text = std::fs::read(&path).map_err(|source| AuthError::Read {
            index,
            name: name.clone(),
            path: path.clone(),
            source,
        })?;
        let mode = std::fs::metadata(&path).map_or(0, |m| m.permissions().mode());
        if mode & 0o004 != 0 {
            return Err(AuthError::Readable { index, name, path });
        }
        let token = text.trim_ascii();
        if token.len() < MIN_TOKEN_BYTES {
            return Err(AuthError::TooShort { index, name, path, bytes: token.len() });
        }
        let digest = digest(token);
        if let Some(other) = tokens.iter().position(|t| same(&t.digest, &digest)) {
            return Err(AuthError::Duplicate { index, name, other });
        }
        tokens.push(LoadedToken { name, role: entry.role, digest });
    }
    Ok(Credentials {
        anonymous_role: config.anonymous_role,
        tokens,
        client_certificates: config.client_certificates.clone(),
    })
}

impl Authenticator {
    /// Reads every token file; any problem is an error naming the entry.
    pub fn new(config: &HttpConfig) -> Result<Self, AuthError> {
        Ok(Self {
            credentials: RwLock::new(load(config)?),
            sessions: session::Sessions::default(),
            refused: Mutex::new(BTreeMap::new()),
            revocation: RwLock::new(None),
            route_credentials: RwLock::new(Vec::new()),
        })
    }

    /// `[remote_write_receiver]`'s credentials, valid on `POST /api/v1/write` only.
    pub fn set_remote_write_credentials(&self, receiver: &herd_common::config::remote_write::ReceiverConfig) {
        let credentials = RouteCredentials {
            route: "/api/v1/write",
            bearer: receiver.bearer_tokens.iter().map(|t| digest(t.expose().as_bytes())).collect(),
            basic: receiver.basic_auth.iter().map(|(u, p)| digest(format!("{u}:{}", p.expose()).as_bytes())).collect(),
            anonymous: receiver.allow_unauthenticated,
        };
        let mut all = self.route_credentials.write().expect("route credentials lock is never poisoned");
        all.retain(|c| c.route != credentials.route);
        all.push(credentials);
    }

    /// A principal from credentials scoped to `route`, if the request has them.
    fn route_principal(&self, route: &str, headers: &HeaderMap) -> Option<Principal> {
        use base64::Engine as _;
        let all = self.route_credentials.read().expect("route credentials lock is never poisoned");
        let scoped = all.iter().find(|c| c.route == route)?;
        let principal = |name: &str| Some(Principal { name: name.to_owned(), role: Role::Editor });
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return if scoped.anonymous { principal(ANONYMOUS) } else { None };
        };
        let value = value.as_bytes();
        let presented = if let Some(token) = value.strip_prefix(b"Bearer ").or_else(|| value.strip_prefix(b"bearer ")) {
            (digest(token.trim_ascii()), &scoped.bearer)
        } else if let Some(encoded) = value.strip_prefix(b"Basic ") {
            let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim_ascii()).ok()?;
            (digest(&decoded), &scoped.basic)
        } else {
            return None;
        };
        let mut found = false;
        for candidate in presented.1 {
            found |= same(candidate, &presented.0);
        }
        if found { principal("remote_write_receiver") } else { None }
    }

    /// How to tell a revoked client certificate.
    pub fn set_revocation_check(&self, check: RevocationCheck) {
        *self.revocation.write().expect("revocation lock is never poisoned") = Some(check);
    }

    /// The caller of a request with these headers on a connection with this
    /// client certificate: the bearer token if there is one, else the
    /// certificate if `[[http.client_certificates]]` names it, else anonymous.
    pub fn authenticate_request(
        &self,
        headers: &HeaderMap,
        client: Option<&ClientCertificate>,
    ) -> Result<Principal, Refusal> {
        let Some(ClientCertificate(info)) = client.filter(|_| !headers.contains_key(header::AUTHORIZATION)) else {
            return self.authenticate(headers);
        };
        if info.kind != herd_common::identity::CertKind::Client {
            return self.authenticate(headers);
        }
        let role = {
            let credentials = self.credentials.read().expect("credentials lock is never poisoned");
            credentials.client_certificates.iter().find(|(name, _)| *name == info.name).map(|(_, role)| *role)
        };
        let Some(role) = role else { return self.authenticate(headers) };
        let revoked = self
            .revocation
            .read()
            .expect("revocation lock is never poisoned")
            .as_ref()
            .is_some_and(|check| check(info));
        if revoked {
            return Err(Refusal::InvalidCredentials);
        }
        Ok(Principal { name: format!("cert:{}", info.name), role })
    }

    /// Replaces the credentials; on error the ones in use stay.
    pub fn apply_config(&self, config: &HttpConfig) -> Result<(), AuthError> {
        let loaded = load(config)?;
        *self.credentials.write().expect("credentials lock is never poisoned") = loaded;
        Ok(())
    }

    /// The caller of a request with these headers: its bearer token, else
    /// its session cookie, else anonymous.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, Refusal> {
        let credentials = self.credentials.read().expect("credentials lock is never poisoned");
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            if let Some((_, digest)) = self.session(headers)
                && let Some(token) = credentials.tokens.iter().find(|t| same(&t.digest, &digest))
            {
                return Ok(Principal { name: token.name.clone(), role: token.role });
            }
            return credentials
                .anonymous_role
                .map(|role| Principal { name: ANONYMOUS.to_owned(), role })
                .ok_or(Refusal::MissingCredentials);
        };
        let token = value
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .or_else(|| value.as_bytes().strip_prefix(b"bearer "))
            .ok_or(Refusal::InvalidCredentials)?
            .trim_ascii();
        let presented = digest(token);
        // Every token is compared, so timing does not tell which one came close.
        let mut found: Option<&LoadedToken> = None;
        for candidate in &credentials.tokens {
            if same(&candidate.digest, &presented) {
                found = Some(candidate);
            }
        }
        found.map(|t| Principal { name: t.name.clone(), role: t.role }).ok_or(Refusal::InvalidCredentials)
    }

    /// The live session a request's cookie names, with its token's digest.
    fn session(&self, headers: &HeaderMap) -> Option<(session::Session, [u8; 32])> {
        self.sessions.get(session::cookie(headers)?)
    }

    /// Starts a browser session for `token` (from the login form).
    pub fn login(&self, token: &str) -> Result<(session::Session, Principal), Refusal> {
        let presented = digest(token.trim().as_bytes());
        let principal = {
            let credentials = self.credentials.read().expect("credentials lock is never poisoned");
            let mut found = None;
            for candidate in &credentials.tokens {
                if same(&candidate.digest, &presented) {
                    found = Some(Principal { name: candidate.name.clone(), role: candidate.role });
                }
            }
            found.ok_or(Refusal::InvalidCredentials)?
        };
        let session = self.sessions.create(presented).map_err(|err| {
            tracing::error!(error = %err, "no randomness for a session id");
            Refusal::InvalidCredentials
        })?;
        Ok((session, principal))
    }

    /// Ends the session a request's cookie names, if any.
    pub fn logout(&self, headers: &HeaderMap) {
        if let Some(id) = session::cookie(headers) {
            self.sessions.remove(id);
        }
    }

    /// Decides a request to `route` (the router's pattern, e.g.
    /// `/api/v2/silence/{id}`): its principal, or why it is refused. A
    /// refusal is counted here.
    pub fn check(
        &self,
        method: &axum::http::Method,
        route: &str,
        headers: &HeaderMap,
        client: Option<&ClientCertificate>,
    ) -> Result<Principal, Refused> {
        let access = policy::required(method, route);
        let refused = |refusal: Refusal, message: String| {
            *self
                .refused
                .lock()
                .expect("refusal counter lock is never poisoned")
                .entry((route.to_owned(), refusal.reason_code()))
                .or_default() += 1;
            tracing::debug!(route, reason = refusal.reason_code(), "HTTP request refused");
            Refused { refusal, message }
        };
        // A browser's cookie goes with every request to this host, whichever
        // site's page sends it: a change it carries must come from this origin.
        let unsafe_method = !matches!(*method, axum::http::Method::GET | axum::http::Method::HEAD);
        if unsafe_method
            && headers.get(header::AUTHORIZATION).is_none()
            && self.session(headers).is_some()
            && !session::same_origin(headers)
        {
            return Err(refused(Refusal::CrossSite, "refused: a change sent from another site's page".to_owned()));
        }
        if let Some(principal) = self.route_principal(route, headers) {
            return Ok(principal);
        }
        let principal = match (self.authenticate_request(headers, client), access) {
            (Ok(principal), _) => principal,
            // An open route works with no or broken credentials alike.
            (Err(_), Access::Open | Access::Own) => Principal { name: ANONYMOUS.to_owned(), role: Role::Viewer },
            (Err(refusal @ Refusal::InvalidCredentials), Access::Needs(_)) => {
                return Err(refused(refusal, "the bearer token is not valid".to_owned()));
            }
            (Err(refusal), Access::Needs(_)) => {
                return Err(refused(refusal, "this needs a bearer token (Authorization: Bearer ...)".to_owned()));
            }
        };
        match access {
            // Without credentials, too little role means: authenticate (401).
            Access::Needs(needed) if principal.role < needed && principal.name == ANONYMOUS => Err(refused(
                Refusal::MissingCredentials,
                format!("this needs a bearer token with role {needed} or above"),
            )),
            Access::Needs(needed) if principal.role < needed => Err(refused(
                Refusal::InsufficientRole,
                format!("{} has role {}; this needs {needed}", principal.name, principal.role),
            )),
            _ => Ok(principal),
        }
    }

    /// Refused requests so far, by (route, reason).
    pub fn refusals(&self) -> Vec<((String, &'static str), u64)> {
        self.refused
            .lock()
            .expect("refusal counter lock is never poisoned")
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// `herd_http_refused_requests_total` in Prometheus text format.
    pub fn write_metrics(&self, out: &mut String) {
        let name = "herd_http_refused_requests_total";
        let _ = writeln!(out, "# HELP {name} HTTP requests refused by authentication or authorization.");
        let _ = writeln!(out, "# TYPE {name} counter");
        for ((route, reason), count) in self.refusals() {
            let _ = writeln!(out, "{name}{{route=\"{route}\",reason=\"{reason}\"}} {count}");
        }
    }
}

/// A refused request: why, and what to tell the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub refusal: Refusal,
    pub message: String,
}

impl IntoResponse for Refused {
    /// 401 (with `WWW-Authenticate: Bearer`) or 403, in Prometheus's error shape.
    fn into_response(self) -> Response {
        let (status, error_type) = match self.refusal {
            Refusal::InsufficientRole | Refusal::CrossSite => (StatusCode::FORBIDDEN, "forbidden"),
            Refusal::MissingCredentials | Refusal::InvalidCredentials => (StatusCode::UNAUTHORIZED, "unauthorized"),
        };
        let body = serde_json::json!({"status": "error", "errorType": error_type, "error": self.message});
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// axum middleware: authenticates and authorizes, then runs the handler
/// with the caller in the request's extensions.
pub async fn middleware(State(auth): State<Arc<Authenticator>>, mut request: Request, next: Next) -> Response {
    // Installed as a route layer, so the matched route's pattern is known:
    // a bounded label, and what the policy table is written in.
    let route = match request.extensions().get::<axum::extract::MatchedPath>() {
        Some(matched) => matched.as_str().to_owned(),
        None => request.uri().path().to_owned(),
    };
    let client = request.extensions().get::<ClientCertificate>();
    match auth.check(request.method(), &route, request.headers(), client) {
        Ok(principal) => {
            if request.headers().get(header::AUTHORIZATION).is_none()
                && let Some((session, _)) = auth.session(request.headers())
            {
                request.extensions_mut().insert(session);
            }
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        // A browser asking for a page without (valid) credentials gets the login form.
        Err(refused)
            if matches!(refused.refusal, Refusal::MissingCredentials | Refusal::InvalidCredentials)
                && wants_page(&request) =>
        {
            let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
            let next: String = form_urlencoded::byte_serialize(path.as_bytes()).collect();
            axum::response::Redirect::to(&format!("/login?next={next}")).into_response()
        }
        Err(refused) => refused.into_response(),
    }
}

/// A browser navigating to a UI page (not an API call).
fn wants_page(request: &Request) -> bool {
    let path = request.uri().path();
    let accepts_html =
        request.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/html"));
    *request.method() == axum::http::Method::GET
        && accepts_html
        && !path.starts_with("/api/")
        && !path.starts_with("/-/")
        && path != "/metrics"
}

/// Puts every route of `router` behind the layer; call it on the router
/// with all routes merged. Requests that match no route get the router's
/// fallback (a 404) without reaching any handler.
pub fn layer(router: axum::Router, auth: Arc<Authenticator>) -> axum::Router {
    router.route_layer(axum::middleware::from_fn_with_state(auth, middleware))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Method;
    use axum::routing::{get, post};
    use herd_common::config::http::TokenConfig;
    use tower::ServiceExt;

    struct Fixture {
        _dir: tempfile::TempDir,
        router: axum::Router,
        auth: Arc<Authenticator>,
    }

    fn token_file(dir: &std::path::Path, name: &str, token: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, format!("{token}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    fn fixture(anonymous_role: Option<Role>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let tokens =
            [("ana", Role::Viewer, "viewer-token-0123456789"), ("eve", Role::Editor, "editor-token-0123456789")]
                .into_iter()
                .map(|(name, role, token)| TokenConfig {
                    name: name.into(),
                    role,
                    token_file: token_file(dir.path(), name, token),
                })
                .collect();
        let auth =
            Arc::new(Authenticator::new(&HttpConfig { anonymous_role, tokens, client_certificates: vec![] }).unwrap());
        let inner =
            axum::Router::new()
                .route("/api/v1/query", get(|| async { "read" }))
                .route(
                    "/api/v2/silences",
                    post(|axum::Extension(who): axum::Extension<Principal>| async move {
                        format!("created by {}", who.name)
                    }),
                )
                .route("/-/healthy", get(|| async { "ok" }));
        Fixture { _dir: dir, router: layer(inner, Arc::clone(&auth)), auth }
    }

    async fn call(router: &axum::Router, method: Method, path: &str, token: Option<&str>) -> (StatusCode, String) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let response = router.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn refusals_are_401_or_403_and_counted() {
        let f = fixture(None);
        assert_eq!(call(&f.router, Method::GET, "/api/v1/query", None).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(
            call(&f.router, Method::GET, "/api/v1/query", Some("wrong-token-0123456789")).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            call(&f.router, Method::GET, "/api/v1/query", Some("viewer-token-0123456789")).await,
            (StatusCode::OK, "read".into())
        );
        let (status, body) = call(&f.router, Method::POST, "/api/v2/silences", Some("viewer-token-0123456789")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body.contains("ana has role viewer; this needs editor"), "{body}");
        assert_eq!(
            call(&f.router, Method::POST, "/api/v2/silences", Some("editor-token-0123456789")).await,
            (StatusCode::OK, "created by eve".into())
        );
        assert_eq!(call(&f.router, Method::GET, "/-/healthy", Some("garbage")).await.0, StatusCode::OK);
        assert_eq!(
            f.auth.refusals(),
            vec![
                (("/api/v1/query".to_owned(), "invalid_credentials"), 1),
                (("/api/v1/query".to_owned(), "missing_credentials"), 1),
                (("/api/v2/silences".to_owned(), "insufficient_role"), 1),
            ]
        );
    }

    #[tokio::test]
    async fn anonymous_callers_get_the_configured_role_only() {
        let f = fixture(Some(Role::Viewer));
        assert_eq!(call(&f.router, Method::GET, "/api/v1/query", None).await.0, StatusCode::OK);
        let (status, body) = call(&f.router, Method::POST, "/api/v2/silences", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "no credentials: authenticate first");
        assert!(body.contains("needs a bearer token with role editor"), "{body}");
        // A wrong token is not quietly downgraded to anonymous.
        assert_eq!(
            call(&f.router, Method::GET, "/api/v1/query", Some("wrong-token-0123456789")).await.0,
            StatusCode::UNAUTHORIZED
        );
    }

    async fn send(router: &axum::Router, request: axum::http::request::Builder) -> axum::http::Response<Body> {
        router.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap()
    }

    #[tokio::test]
    async fn a_login_cookie_stands_for_its_token_and_changes_must_be_same_origin() {
        let f = fixture(None);
        // A browser asking for a page without credentials is sent to the login form.
        let page = send(&f.router, Request::get("/api/v1/query").header("Accept", "text/html")).await;
        assert_eq!(page.status(), StatusCode::UNAUTHORIZED, "API routes answer 401 even to browsers");
        let f_page = axum::Router::new().route("/fleet", get(|| async { "fleet" }));
        let pages = layer(f_page, Arc::clone(&f.auth));
        let redirect = send(&pages, Request::get("/fleet?sort=host").header("Accept", "text/html")).await;
        assert_eq!(redirect.status(), StatusCode::SEE_OTHER);
        assert_eq!(redirect.headers()["location"], "/login?next=%2Ffleet%3Fsort%3Dhost");

        assert!(f.auth.login("wrong-token-0123456789").is_err());
        let (session, principal) = f.auth.login("editor-token-0123456789").unwrap();
        assert_eq!(principal.name, "eve");
        let cookie = format!("{}={}", session::COOKIE_NAME, session.id);
        let read = send(&f.router, Request::get("/api/v1/query").header("Cookie", &cookie)).await;
        assert_eq!(read.status(), StatusCode::OK);
        let post = |origin: &'static str| {
            Request::post("/api/v2/silences")
                .header("Cookie", &cookie)
                .header("Host", "agg:7401")
                .header("Origin", origin)
        };
        let foreign = send(&f.router, post("http://evil.example")).await;
        assert_eq!(foreign.status(), StatusCode::FORBIDDEN, "a change from another site's page");
        let own = send(&f.router, post("http://agg:7401")).await;
        assert_eq!(own.status(), StatusCode::OK);
        let body = axum::body::to_bytes(own.into_body(), 1 << 20).await.unwrap();
        assert_eq!(&body[..], b"created by eve");
        // Logging out ends the session: the cookie is then no credential at all.
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, cookie.parse().unwrap());
        f.auth.logout(&headers);
        let after = send(&f.router, Request::get("/api/v1/query").header("Cookie", &cookie)).await;
        assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
        assert!(f.auth.refusals().iter().any(|((_, reason), _)| *reason == "cross_site"));
    }

    #[test]
    fn bad_token_files_are_refused_with_their_entry() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let short = token_file(dir.path(), "short", "abc");
        let entry = |path: PathBuf| HttpConfig {
            anonymous_role: None,
            client_certificates: vec![],
            tokens: vec![TokenConfig { name: "ops".into(), role: Role::Admin, token_file: path }],
        };
        let err = Authenticator::new(&entry(short)).err().unwrap().to_string();
        assert!(err.contains("http.tokens[0] (ops)") && err.contains("at least 16"), "{err}");
        let open = token_file(dir.path(), "open", "0123456789abcdef0123");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Authenticator::new(&entry(open)).err().unwrap().to_string().contains("readable by others"));
        let missing = Authenticator::new(&entry(dir.path().join("nope"))).err().unwrap().to_string();
        assert!(missing.contains("cannot read"), "{missing}");
        // A reload that fails keeps the credentials in use.
        let good = token_file(dir.path(), "good", "0123456789abcdef0123");
        let auth = Authenticator::new(&entry(good)).unwrap();
        assert!(auth.apply_config(&entry(dir.path().join("nope"))).is_err());
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer 0123456789abcdef0123".parse().unwrap());
        assert_eq!(auth.authenticate(&headers).unwrap().name, "ops");
    }
}
