//! What binds a linking attempt to its redirect and to its browser, kept with the connection in
//! the accounts table (item `BIND#<connectionId>` / `BIND`, TTL `expiresAt`):
//! - `redirectUri`: chosen once at `POST /connections` and reused at the code exchange (never
//!   recomputed from the callback's headers);
//! - `codeVerifier`: the PKCE verifier of the consent, removed once the code is exchanged;
//! - `browserDigest`: the SHA-256 of the cookie the callback sets; the account list and the
//!   confirm step require that cookie, so a leaked view URL is useless in another browser.
//!
//! Also the cookie itself and the redirect-URI rule of `POST /connections`.

use crate::http::HttpRequest;
use crate::store::StoreError;
use crate::store::accounts::digest;
use crate::store::dynamo::{aws_error, n, s};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

/// A connection's binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub redirect_uri: String,
    pub code_verifier: Option<String>,
    pub browser_digest: Option<String>,
}

/// The binding records, in the accounts table.
#[derive(Clone, Debug)]
pub struct BindingStore {
    client: Client,
    table: String,
}

fn key(connection_id: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_string(), s(format!("BIND#{connection_id}"))),
        ("sk".to_string(), s("BIND")),
    ])
}

fn opt_s(item: &HashMap<String, AttributeValue>, k: &str) -> Option<String> {
    match item.get(k) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    }
}

impl BindingStore {
    pub fn new(client: Client, table: String) -> Self {
        Self { client, table }
    }

    /// Records the redirect URI (and PKCE verifier) of a new connection.
    pub async fn put(
        &self,
        connection_id: &str,
        redirect_uri: &str,
        code_verifier: Option<&str>,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let mut item = key(connection_id);
        item.insert("redirectUri".into(), s(redirect_uri));
        if let Some(v) = code_verifier {
            item.insert("codeVerifier".into(), s(v));
        }
        item.insert("expiresAt".into(), n(expires_at));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(|e| aws_error("put link binding", e))?;
        Ok(())
    }

    pub async fn get(&self, connection_id: &str) -> Result<Option<Binding>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(connection_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws_error("get link binding", e))?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        let redirect_uri = opt_s(&item, "redirectUri")
            .ok_or_else(|| StoreError::Corrupt("link binding without redirectUri".into()))?;
        Ok(Some(Binding {
            redirect_uri,
            code_verifier: opt_s(&item, "codeVerifier"),
            browser_digest: opt_s(&item, "browserDigest"),
        }))
    }

    /// After the exchange: binds the browser (the cookie's digest), forgets the PKCE verifier
    /// and keeps the record as long as the account list.
    pub async fn bind_browser(
        &self,
        connection_id: &str,
        cookie: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(connection_id)))
            .update_expression("SET browserDigest = :d, expiresAt = :e REMOVE codeVerifier")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":d", s(digest(cookie)))
            .expression_attribute_values(":e", n(expires_at))
            .send()
            .await
            .map_err(|e| aws_error("bind the browser", e))?;
        Ok(())
    }
}

/// The cookie of one connection (one per connection, so two consents in one browser coexist).
pub fn cookie_name(connection_id: &str) -> String {
    format!("adsync_link_{connection_id}")
}

/// The `Set-Cookie` value: HttpOnly (no script reads it), Secure (HTTPS only; browsers treat
/// `http://localhost` and `127.0.0.1` as secure), SameSite=Lax (sent on the top-level navigation
/// back from Amazon and on the same-site confirm form, not on cross-site posts).
pub fn set_cookie(connection_id: &str, value: &str, max_age_secs: u64) -> String {
    format!(
        "{}={value}; Path=/; Max-Age={max_age_secs}; HttpOnly; Secure; SameSite=Lax",
        cookie_name(connection_id)
    )
}

/// The connection's cookie value from the request's `Cookie` header.
pub fn cookie_value<'a>(req: &'a HttpRequest, connection_id: &str) -> Option<&'a str> {
    let name = cookie_name(connection_id);
    req.header("cookie")?
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// Whether the request carries the cookie bound to the connection (constant-time compare of the
/// digests).
pub fn browser_matches(req: &HttpRequest, connection_id: &str, binding: &Binding) -> bool {
    use subtle::ConstantTimeEq;
    match (cookie_value(req, connection_id), &binding.browser_digest) {
        (Some(v), Some(d)) => bool::from(digest(v).as_bytes().ct_eq(d.as_bytes())),
        _ => false,
    }
}

/// The redirect URI of a new connection: `OAUTH_REDIRECT_URI` when set (every header ignored);
/// otherwise the API's own host (API Gateway's `requestContext.domainName`, else `Host`).
/// `X-Forwarded-Host` is honoured only when it names that same host, and `X-Forwarded-Proto:
/// http` only for a loopback host (local runs), so a forged header cannot send the code
/// elsewhere.
pub fn redirect_uri_for(configured: &str, req: &HttpRequest) -> Result<String, String> {
    if !configured.is_empty() {
        return Ok(configured.to_string());
    }
    let valid = |h: &&str| !h.is_empty() && !h.contains(['/', ' ', '?', '#', '@', '\\']);
    let own = req
        .domain_name
        .as_deref()
        .filter(valid)
        .or_else(|| req.header("host").filter(valid))
        .ok_or("OAUTH_REDIRECT_URI is not set and the request names no host to derive it from")?;
    if let Some(fwd) = req.header("x-forwarded-host")
        && !fwd.eq_ignore_ascii_case(own)
    {
        tracing::warn!("X-Forwarded-Host differs from the API's own host: ignored");
    }
    let name = own.rsplit_once(':').map_or(own, |(h, _)| h);
    let loopback = matches!(name, "127.0.0.1" | "localhost" | "[::1]");
    let proto = match req.header("x-forwarded-proto") {
        Some("http") if loopback => "http",
        None if loopback && req.domain_name.is_none() => "http",
        _ => "https",
    };
    Ok(format!("{proto}://{own}/oauth/callback"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_round_trip_and_attributes() {
        let c = set_cookie("abc", "v1", 1800);
        assert_eq!(
            c,
            "adsync_link_abc=v1; Path=/; Max-Age=1800; HttpOnly; Secure; SameSite=Lax"
        );
        let req = HttpRequest::new("GET", "/")
            .with_header("cookie", "x=1; adsync_link_abc=v1 ; adsync_link_def=v2");
        assert_eq!(cookie_value(&req, "abc"), Some("v1"));
        assert_eq!(cookie_value(&req, "def"), Some("v2"));
        assert_eq!(cookie_value(&req, "zzz"), None);
        let b = Binding {
            redirect_uri: "r".into(),
            code_verifier: None,
            browser_digest: Some(digest("v1")),
        };
        assert!(browser_matches(&req, "abc", &b));
        assert!(!browser_matches(&req, "def", &b));
        assert!(!browser_matches(&HttpRequest::new("GET", "/"), "abc", &b));
    }

    #[test]
    fn forged_forwarded_headers_do_not_move_the_redirect() {
        let mut req = HttpRequest::new("POST", "/connections")
            .with_header("host", "abc.execute-api.eu-west-1.amazonaws.com")
            .with_header("x-forwarded-host", "evil.example")
            .with_header("x-forwarded-proto", "http");
        req.domain_name = Some("abc.execute-api.eu-west-1.amazonaws.com".into());
        assert_eq!(
            redirect_uri_for("", &req).unwrap(),
            "https://abc.execute-api.eu-west-1.amazonaws.com/oauth/callback"
        );
        assert_eq!(
            redirect_uri_for("https://link.example/oauth/callback", &req).unwrap(),
            "https://link.example/oauth/callback"
        );
        // A forged Host does not win over API Gateway's own domain name either.
        let mut req = HttpRequest::new("POST", "/connections").with_header("host", "evil.example");
        req.domain_name = Some("api.example".into());
        assert_eq!(
            redirect_uri_for("", &req).unwrap(),
            "https://api.example/oauth/callback"
        );
        // Local runs (no API Gateway): the loopback host over http.
        let req = HttpRequest::new("POST", "/connections").with_header("host", "127.0.0.1:9000");
        assert_eq!(
            redirect_uri_for("", &req).unwrap(),
            "http://127.0.0.1:9000/oauth/callback"
        );
        assert!(redirect_uri_for("", &HttpRequest::new("POST", "/connections")).is_err());
    }
}
