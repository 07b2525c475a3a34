//! Which role each HTTP route needs: one table for the whole API, so the
//! question "who may change what" has one answer. Routes not in the table
//! fall back to the safe default: reads (GET, HEAD) need `viewer`, anything
//! else `admin`.

use axum::http::Method;
use herd_common::config::http::Role;

/// What a request needs before its handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credentials needed (liveness and readiness probes).
    Open,
    /// At least this role.
    Needs(Role),
    /// The handler checks credentials of its own. No route does today: the
    /// remote_write receiver's credentials are the layer's too.
    Own,
}

/// One entry: methods, a path pattern (`{name}` matches one segment, a
/// trailing `{*rest}` matches the rest), and the access it needs.
struct Rule {
    methods: &'static [Method],
    pattern: &'static str,
    access: Access,
}

const GET_HEAD: &[Method] = &[Method::GET, Method::HEAD];
const POST: &[Method] = &[Method::POST];
const DELETE: &[Method] = &[Method::DELETE];
const ANY_WRITE: &[Method] = &[Method::POST, Method::PUT, Method::PATCH, Method::DELETE];

const fn rule(methods: &'static [Method], pattern: &'static str, access: Access) -> Rule {
    Rule { methods, pattern, access }
}

const VIEWER: Access = Access::Needs(Role::Viewer);
const EDITOR: Access = Access::Needs(Role::Editor);
const ADMIN: Access = Access::Needs(Role::Admin);

/// The first matching rule wins.
const RULES: &[Rule] = &[
    rule(GET_HEAD, "/-/healthy", Access::Open),
    rule(GET_HEAD, "/-/ready", Access::Open),
    // Prometheus's read endpoints also take form POSTs (Grafana sends them).
    rule(POST, "/api/v1/query", VIEWER),
    rule(POST, "/api/v1/query_range", VIEWER),
    rule(POST, "/api/v1/query_exemplars", VIEWER),
    rule(POST, "/api/v1/series", VIEWER),
    rule(POST, "/api/v1/labels", VIEWER),
    rule(POST, "/api/v1/format_query", VIEWER),
    rule(POST, "/api/v1/parse_query", VIEWER),
    // Alertmanager's v2 write endpoints and rule reloads.
    rule(POST, "/api/v2/alerts", EDITOR),
    rule(POST, "/api/v2/silences", EDITOR),
    rule(DELETE, "/api/v2/silence/{id}", EDITOR),
    rule(POST, "/-/reload", EDITOR),
    // remote_write: an editor token, or the receiver's own credentials (valid there only, see `Authenticator`).
    rule(POST, "/api/v1/write", EDITOR),
    // Enrollment tokens and certificates: reads too, since they show who may join.
    rule(GET_HEAD, "/api/v1/identity/{*rest}", ADMIN),
    rule(ANY_WRITE, "/api/v1/identity/{*rest}", ADMIN),
    // The web UI: its login form and assets are open; silences need an editor.
    rule(GET_HEAD, "/login", Access::Open),
    rule(POST, "/login", Access::Open),
    rule(POST, "/logout", Access::Open),
    rule(GET_HEAD, "/ui/assets/{file}", Access::Open),
    rule(POST, "/alerts/silences", EDITOR),
    rule(POST, "/alerts/silences/{id}/expire", EDITOR),
    // Remote configuration: every change is an admin's.
    rule(ANY_WRITE, "/api/v1/configs", ADMIN),
    rule(ANY_WRITE, "/api/v1/configs/{*rest}", ADMIN),
];

/// The access `method route` needs; `route` is a router pattern such as
/// `/api/v2/silence/{id}` or a concrete path.
pub fn required(method: &Method, route: &str) -> Access {
    for rule in RULES {
        if rule.methods.contains(method) && matches(rule.pattern, route) {
            return rule.access;
        }
    }
    if *method == Method::GET || *method == Method::HEAD { VIEWER } else { ADMIN }
}

fn matches(pattern: &str, path: &str) -> bool {
    let mut path_segments = path.split('/');
    for expected in pattern.split('/') {
        if expected.starts_with("{*") {
            return path_segments.next().is_some_and(|s| !s.is_empty());
        }
        match path_segments.next() {
            Some(segment) if expected.starts_with('{') => {
                if segment.is_empty() {
                    return false;
                }
            }
            Some(segment) if segment == expected => {}
            _ => return false,
        }
    }
    path_segments.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(method: Method, path: &str, expected: Access) {
        assert_eq!(required(&method, path), expected, "{method} {path}");
    }

    #[test]
    fn reads_are_for_viewers_and_changes_need_their_role() {
        check(Method::GET, "/-/healthy", Access::Open);
        check(Method::GET, "/api/v1/query", VIEWER);
        check(Method::POST, "/api/v1/query", VIEWER);
        check(Method::GET, "/api/v2/silences", VIEWER);
        check(Method::POST, "/api/v2/silences", EDITOR);
        check(Method::DELETE, "/api/v2/silence/1234", EDITOR);
        check(Method::POST, "/api/v2/alerts", EDITOR);
        check(Method::POST, "/-/reload", EDITOR);
        check(Method::POST, "/api/v1/configs", ADMIN);
        check(Method::POST, "/api/v1/configs/web/rollback", ADMIN);
        check(Method::GET, "/api/v1/configs/web", VIEWER);
        check(Method::GET, "/api/v1/identity/tokens", ADMIN);
        check(Method::POST, "/api/v1/identity/revocations", ADMIN);
        check(Method::DELETE, "/api/v1/identity/tokens/{id}", ADMIN);
        check(Method::GET, "/", VIEWER);
        check(Method::GET, "/fleet/web-1", VIEWER);
        check(Method::POST, "/login", Access::Open);
        check(Method::POST, "/alerts/silences", EDITOR);
        check(Method::POST, "/alerts/silences/abc/expire", EDITOR);
    }

    #[test]
    fn anything_unlisted_defaults_to_the_safe_side() {
        check(Method::POST, "/api/v1/something/new", ADMIN);
        check(Method::PUT, "/api/v1/query", ADMIN);
        check(Method::GET, "/anything", VIEWER);
        // A second slash or a trailing segment does not slip past a pattern.
        check(Method::DELETE, "/api/v2/silence/", ADMIN);
        check(Method::DELETE, "/api/v2/silence/1/x", ADMIN);
        check(Method::DELETE, "/api/v2/silence/{id}", EDITOR);
    }
}
