//! What each API route requires of the calling key: the ONE table of routes, scopes and account
//! rules ([`POLICY`]), and [`authorize`], which every function calls before it routes.
//!
//! A key in the keys secret may carry `scopes` (absent = all) and `accounts` (advertiser ids it may
//! use; absent = all). A route needs one scope and follows one account rule:
//! - [`Accounts::Path`]: the account id is a path segment; a key restricted to other accounts gets
//!   403 before anything is looked up (so the answer is the same whether the account exists);
//! - [`Accounts::Filtered`]: a list; the handler shows only the key's accounts;
//! - [`Accounts::Unrestricted`]: the route is not per account (segments, destinations,
//!   qualifications, new connections): only a key without an `accounts` restriction may call it.
//!
//! Routes that are not in the table need a key with `accounts:admin` and no account restriction,
//! so a route added without a line here is closed rather than open. Authentication comes before
//! routing: a request without a valid key is 401 whatever its path (except the open routes).

use super::auth::{ApiKeyAuth, Caller};
use super::{HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

/// A permission a key may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// Every GET.
    #[serde(rename = "read")]
    Read,
    /// `POST /accounts/{id}/conversions`.
    #[serde(rename = "conversions:write")]
    ConversionsWrite,
    /// Segments, destinations, mappings, fees, qualifications.
    #[serde(rename = "segments:write")]
    SegmentsWrite,
    /// Linking and unlinking accounts.
    #[serde(rename = "accounts:admin")]
    AccountsAdmin,
    /// Deleting a person's data (privacy requests).
    #[serde(rename = "privacy:write")]
    PrivacyWrite,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::Read,
        Scope::ConversionsWrite,
        Scope::SegmentsWrite,
        Scope::AccountsAdmin,
        Scope::PrivacyWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::ConversionsWrite => "conversions:write",
            Scope::SegmentsWrite => "segments:write",
            Scope::AccountsAdmin => "accounts:admin",
            Scope::PrivacyWrite => "privacy:write",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// How a route relates to the key's `accounts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accounts {
    /// The path segment captured by `{account}` is the account id.
    Path,
    /// A list: the handler filters it with [`Caller::may_use`].
    Filtered,
    /// Not per account: needs a key without an `accounts` restriction.
    Unrestricted,
}

/// What a route requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No API key (the browser steps of account linking).
    Open,
    /// A key with `scope`, under the account rule.
    Key(Scope, Accounts),
}

use Accounts::*;
use Scope::*;

/// Every route of every function: method, path pattern, what it requires. In a pattern, `*`
/// matches one segment and `{account}` one segment that is the account id. The first match wins.
/// A new route adds one line here.
pub const POLICY: &[(&str, &str, Access)] = &[
    // oauth-callback
    // (any method: the handler answers 405 for the wrong one)
    ("*", "/oauth/callback", Access::Open),
    ("*", "/oauth/confirm", Access::Open),
    (
        "POST",
        "/connections",
        Access::Key(AccountsAdmin, Unrestricted),
    ),
    ("GET", "/accounts", Access::Key(Read, Filtered)),
    (
        "DELETE",
        "/accounts/{account}",
        Access::Key(AccountsAdmin, Path),
    ),
    // conversion-ingest
    (
        "POST",
        "/accounts/{account}/conversions",
        Access::Key(ConversionsWrite, Path),
    ),
    // segment-export
    ("GET", "/segments", Access::Key(Read, Unrestricted)),
    ("GET", "/segments/*", Access::Key(Read, Unrestricted)),
    (
        "DELETE",
        "/segments/*",
        Access::Key(SegmentsWrite, Unrestricted),
    ),
    (
        "PUT",
        "/segments/*",
        Access::Key(SegmentsWrite, Unrestricted),
    ),
    ("GET", "/destinations", Access::Key(Read, Unrestricted)),
    (
        "POST",
        "/destinations",
        Access::Key(SegmentsWrite, Unrestricted),
    ),
    ("GET", "/destinations/*", Access::Key(Read, Unrestricted)),
    (
        "PATCH",
        "/destinations/*",
        Access::Key(SegmentsWrite, Unrestricted),
    ),
    (
        "DELETE",
        "/destinations/*",
        Access::Key(SegmentsWrite, Unrestricted),
    ),
    (
        "POST",
        "/destinations/*/mappings",
        Access::Key(SegmentsWrite, Unrestricted),
    ),
    (
        "DELETE",
        "/destinations/*/mappings/*",
        Access::Key(SegmentsWrite, Unrestricted),
    ),
    (
        "PUT",
        "/destinations/*/mappings/*/fees",
        Access::Key(SegmentsWrite, Unrestricted),
    ),
    (
        "POST",
        "/qualifications",
        Access::Key(SegmentsWrite, Unrestricted),
    ),
    // segment-export: privacy and identity
    (
        "POST",
        "/privacy/deletions",
        Access::Key(PrivacyWrite, Unrestricted),
    ),
    (
        "GET",
        "/privacy/deletions/*",
        Access::Key(Read, Unrestricted),
    ),
    (
        "POST",
        "/accounts/{account}/identities",
        Access::Key(SegmentsWrite, Path),
    ),
];

/// What a route missing from [`POLICY`] requires: the most restrictive rule.
pub const DEFAULT_ACCESS: Access = Access::Key(AccountsAdmin, Unrestricted);

/// The path's segments without the `cargo lambda watch` prefix (`/lambda-url/<function>/…`).
pub fn route_segments(path: &str) -> Vec<&str> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segs.first() == Some(&"lambda-url") && segs.len() >= 2 {
        segs[2..].to_vec()
    } else {
        segs
    }
}

/// The access rule of `method` + `segs`, and the account id the path names (for `{account}`).
pub fn access_for<'a>(method: &str, segs: &[&'a str]) -> (Access, Option<&'a str>) {
    for (m, pattern, access) in POLICY {
        if *m != "*" && !m.eq_ignore_ascii_case(method) {
            continue;
        }
        let pat: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
        if pat.len() != segs.len() {
            continue;
        }
        let mut account = None;
        let matched = pat.iter().zip(segs).all(|(p, s)| match *p {
            "*" => true,
            "{account}" => {
                account = Some(*s);
                true
            }
            lit => lit == *s,
        });
        if matched {
            return (*access, account);
        }
    }
    (DEFAULT_ACCESS, None)
}

/// Whether `method` + `segs` has a line of its own in [`POLICY`] (rather than [`DEFAULT_ACCESS`]).
pub fn is_declared(method: &str, segs: &[&str]) -> bool {
    POLICY.iter().any(|(m, pattern, _)| {
        let pat: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
        (*m == "*" || m.eq_ignore_ascii_case(method))
            && pat.len() == segs.len()
            && pat
                .iter()
                .zip(segs)
                .all(|(p, s)| matches!(*p, "*" | "{account}") || p == s)
    })
}

/// Authenticates and authorizes a request before it is routed. `Ok(None)` for an open route,
/// `Ok(Some(caller))` for an accepted key, otherwise the answer to send: 401 (no or unknown key),
/// 403 naming the missing scope or the refused account (never the key's other accounts), 503
/// (keys unreadable).
pub async fn authorize(
    auth: &ApiKeyAuth,
    req: &HttpRequest,
) -> Result<Option<Caller>, HttpResponse> {
    let segs = route_segments(&req.path);
    let (access, account) = access_for(&req.method, &segs);
    let Access::Key(scope, rule) = access else {
        return Ok(None);
    };
    let caller = auth.authenticate(req).await?;
    check(&caller, scope, rule, account)?;
    Ok(Some(caller))
}

/// The scope and account checks of an authenticated caller.
pub fn check(
    caller: &Caller,
    scope: Scope,
    rule: Accounts,
    account: Option<&str>,
) -> Result<(), HttpResponse> {
    if !caller.has_scope(scope) {
        tracing::warn!(key = %caller.name, scope = scope.as_str(), "API key lacks the scope");
        return Err(HttpResponse::error(
            403,
            "forbidden",
            format!(
                "this API key lacks the scope {:?} that this route needs",
                scope.as_str()
            ),
        ));
    }
    match rule {
        Filtered => Ok(()),
        Path => match account {
            Some(a) if caller.may_use(a) => Ok(()),
            Some(a) => {
                tracing::warn!(key = %caller.name, account_id = %short(a), "API key not allowed for the account");
                Err(HttpResponse::error(
                    403,
                    "forbidden",
                    format!("this API key may not use account {}", short(a)),
                ))
            }
            None => Ok(()),
        },
        Unrestricted if caller.accounts.is_none() => Ok(()),
        Unrestricted => Err(HttpResponse::error(
            403,
            "forbidden",
            "this route is not per account: it needs an API key without an `accounts` restriction",
        )),
    }
}

/// An account id as echoed in an answer: at most 20 characters of digits (what the caller sent,
/// never anything looked up).
fn short(a: &str) -> String {
    a.chars().take(20).filter(char::is_ascii_digit).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(scopes: Option<&[Scope]>, accounts: Option<&[&str]>) -> Caller {
        Caller {
            name: "k".into(),
            scopes: scopes.map(|s| s.iter().copied().collect()),
            accounts: accounts.map(|a| a.iter().map(|x| x.to_string()).collect()),
        }
    }

    #[test]
    fn every_route_has_one_rule_and_unknown_routes_are_closed() {
        fn a<'a>(m: &str, p: &'a str) -> (Access, Option<&'a str>) {
            access_for(m, &route_segments(p))
        }
        assert_eq!(a("GET", "/oauth/callback").0, Access::Open);
        assert_eq!(
            a("GET", "/lambda-url/oauth-callback/oauth/callback").0,
            Access::Open
        );
        assert_eq!(
            a("POST", "/accounts/12/conversions"),
            (Access::Key(ConversionsWrite, Path), Some("12"))
        );
        assert_eq!(
            a("DELETE", "/accounts/7"),
            (Access::Key(AccountsAdmin, Path), Some("7"))
        );
        assert_eq!(a("GET", "/accounts").0, Access::Key(Read, Filtered));
        assert_eq!(
            a("PUT", "/destinations/d/mappings/s/fees").0,
            Access::Key(SegmentsWrite, Unrestricted)
        );
        assert_eq!(a("GET", "/nope").0, DEFAULT_ACCESS);
        // The open browser steps stay open for any method (the handler answers 405).
        assert_eq!(a("HEAD", "/oauth/callback").0, Access::Open);
        // A known path with another method is closed.
        assert_eq!(a("POST", "/accounts").0, DEFAULT_ACCESS);
        // Every pattern's method is a real method and every path starts with '/'.
        for (m, p, _) in POLICY {
            assert!(
                ["*", "GET", "POST", "PUT", "PATCH", "DELETE"].contains(m),
                "{m}"
            );
            assert!(p.starts_with('/'), "{p}");
        }
    }

    #[test]
    fn scopes_parse_and_print() {
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
        assert_eq!(Scope::parse("admin"), None);
    }

    #[test]
    fn checks_name_the_scope_and_hide_other_accounts() {
        let ro = caller(Some(&[Read]), None);
        let e = check(&ro, ConversionsWrite, Path, Some("1")).unwrap_err();
        assert_eq!(e.status, 403);
        assert!(e.body.contains("conversions:write"), "{}", e.body);
        check(&ro, Read, Filtered, None).unwrap();

        let one = caller(None, Some(&["111"]));
        check(&one, ConversionsWrite, Path, Some("111")).unwrap();
        let e = check(&one, ConversionsWrite, Path, Some("222")).unwrap_err();
        assert_eq!(e.status, 403);
        assert!(
            e.body.contains("222") && !e.body.contains("111"),
            "{}",
            e.body
        );
        let e = check(&one, Read, Unrestricted, None).unwrap_err();
        assert_eq!(e.status, 403);
        assert!(!e.body.contains("111"), "{}", e.body);

        let all = caller(None, None);
        check(&all, PrivacyWrite, Unrestricted, None).unwrap();
    }
}
