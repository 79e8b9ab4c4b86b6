//! Console sessions and the sign-in rate limit, kept server-side in `ACCOUNTS_TABLE`:
//! - a session: pk `CONSOLE#SESSION#<sha256(session id)>`, sk `SESSION`, with the signed-in key's
//!   name, scopes and accounts (never the key), the session's CSRF token and `expiresAt` (TTL).
//!   The browser holds only the opaque id, in an HttpOnly, Secure, SameSite=Strict cookie; a
//!   stolen table row cannot be turned back into a cookie. Sign-out deletes the item.
//! - failed sign-ins per source IP and window: pk `CONSOLE#SIGNIN#<sha256(ip)>`, sk the window's
//!   start, `failures` (ADD), `expiresAt`.
//!
//! DynamoDB deletes expired items lazily (DynamoDB Local never), so every read checks `expiresAt`.

use crate::http::HttpRequest;
use crate::http::auth::Caller;
use crate::http::scopes::Scope;
use crate::store::StoreError;
use crate::store::accounts::digest;
use crate::store::dynamo::{aws_error, n, s};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;
use subtle::ConstantTimeEq;

/// How long a session lives (8 hours).
pub const SESSION_SECS: i64 = 8 * 3600;
/// The session cookie's name.
pub const COOKIE: &str = "adsync_console";
/// The sign-in form's double-submit cookie (a CSRF token before there is a session).
pub const PRE_COOKIE: &str = "adsync_console_signin";

/// A signed-in browser.
#[derive(Clone, Debug)]
pub struct Session {
    pub caller: Caller,
    pub csrf: String,
    pub expires_at: i64,
}

impl Session {
    /// Whether `presented` is this session's CSRF token (constant time).
    pub fn csrf_ok(&self, presented: Option<&str>) -> bool {
        presented.is_some_and(|p| same(p, &self.csrf))
    }
}

/// Constant-time equality of two tokens.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The value of cookie `name` in the request's `Cookie` header.
pub fn cookie<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.header("cookie")?
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// `Set-Cookie` for `name=value` (HttpOnly, Secure, SameSite=Strict); `max_age` 0 clears it.
pub fn set_cookie(name: &str, value: &str, max_age: i64) -> String {
    format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict")
}

fn session_key(id: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        (
            "pk".to_string(),
            s(format!("CONSOLE#SESSION#{}", digest(id))),
        ),
        ("sk".to_string(), s("SESSION")),
    ])
}

fn list(v: &[String]) -> AttributeValue {
    AttributeValue::L(v.iter().map(s).collect())
}

fn strings(item: &HashMap<String, AttributeValue>, k: &str) -> Option<Vec<String>> {
    match item.get(k) {
        Some(AttributeValue::L(l)) => {
            Some(l.iter().filter_map(|v| v.as_s().ok().cloned()).collect())
        }
        _ => None,
    }
}

/// Sessions and sign-in failures. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SessionStore {
    client: Client,
    table: String,
}

impl SessionStore {
    pub fn new(client: Client, table: String) -> Self {
        Self { client, table }
    }

    /// Starts a session for `caller`; returns the opaque id to put in the cookie.
    pub async fn create(&self, caller: &Caller, now: i64) -> Result<(String, Session), StoreError> {
        let id = crate::random::token().map_err(|e| StoreError::Aws(e.to_string()))?;
        let csrf = crate::random::token().map_err(|e| StoreError::Aws(e.to_string()))?;
        let session = Session {
            caller: caller.clone(),
            csrf,
            expires_at: now + SESSION_SECS,
        };
        let mut item = session_key(&id);
        item.insert("keyName".into(), s(&caller.name));
        if let Some(scopes) = &caller.scopes {
            let names: Vec<String> = scopes.iter().map(|x| x.as_str().to_string()).collect();
            item.insert("scopes".into(), list(&names));
        }
        if let Some(accounts) = &caller.accounts {
            item.insert("accounts".into(), list(accounts));
        }
        item.insert("csrf".into(), s(&session.csrf));
        item.insert("expiresAt".into(), n(session.expires_at));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(|e| aws_error("create console session", e))?;
        Ok((id, session))
    }

    /// The live session of `id`, if any.
    pub async fn get(&self, id: &str, now: i64) -> Result<Option<Session>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(session_key(id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws_error("read console session", e))?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        let expires_at = item
            .get("expiresAt")
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0);
        if expires_at <= now {
            return Ok(None);
        }
        let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
        let scopes =
            strings(&item, "scopes").map(|l| l.iter().filter_map(|x| Scope::parse(x)).collect());
        Ok(Some(Session {
            caller: Caller {
                name: text("keyName").unwrap_or_default(),
                scopes,
                accounts: strings(&item, "accounts"),
            },
            csrf: text("csrf").unwrap_or_default(),
            expires_at,
        }))
    }

    /// Ends a session (sign-out): its id stops working at once.
    pub async fn revoke(&self, id: &str) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(session_key(id)))
            .send()
            .await
            .map_err(|e| aws_error("delete console session", e))?;
        Ok(())
    }

    fn failures_key(ip: &str, window_start: i64) -> HashMap<String, AttributeValue> {
        HashMap::from([
            (
                "pk".to_string(),
                s(format!("CONSOLE#SIGNIN#{}", digest(ip))),
            ),
            ("sk".to_string(), s(window_start.to_string())),
        ])
    }

    /// Failed sign-ins from `ip` in the window that contains `now`.
    pub async fn failures(
        &self,
        ip: &str,
        limit: &SignInLimit,
        now: i64,
    ) -> Result<u64, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::failures_key(ip, limit.window_start(now))))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws_error("read sign-in failures", e))?;
        Ok(out
            .item
            .and_then(|i| i.get("failures").and_then(|v| v.as_n().ok()).cloned())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Counts one failed sign-in from `ip`.
    pub async fn add_failure(
        &self,
        ip: &str,
        limit: &SignInLimit,
        now: i64,
    ) -> Result<(), StoreError> {
        let start = limit.window_start(now);
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::failures_key(ip, start)))
            .update_expression("ADD failures :one SET expiresAt = :exp")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":exp", n(start + limit.window_secs))
            .send()
            .await
            .map_err(|e| aws_error("count a sign-in failure", e))?;
        Ok(())
    }
}

pub use crate::settings::options::SignInLimit;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_parse_and_are_strict() {
        let req =
            HttpRequest::new("GET", "/").with_header("cookie", "a=1; adsync_console=xyz ; b=");
        assert_eq!(cookie(&req, COOKIE), Some("xyz"));
        assert_eq!(cookie(&req, "b"), None);
        assert_eq!(cookie(&req, "adsync"), None);
        let c = set_cookie(COOKIE, "v", SESSION_SECS);
        for part in [
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Max-Age=28800",
            "Path=/",
        ] {
            assert!(c.contains(part), "{c}");
        }
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd") && !same("abc", "ab") && !same("", "a"));
        let s = Session {
            caller: Caller {
                name: "k".into(),
                scopes: None,
                accounts: None,
            },
            csrf: "t0k".into(),
            expires_at: 0,
        };
        assert!(s.csrf_ok(Some("t0k")));
        assert!(!s.csrf_ok(Some("t0K")) && !s.csrf_ok(None));
    }

    #[test]
    fn windows_are_aligned() {
        let l = SignInLimit::default();
        assert_eq!(l.window_start(1000), 900);
        assert_eq!(l.window_start(1799), 900);
    }
}
