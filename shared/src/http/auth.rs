//! Caller authentication for API routes: `Authorization: Bearer <key>`.
//!
//! Keys live in the `API_KEYS_SECRET` secret as lowercase hex SHA-256 digests
//! (`{"keys":[{"name","sha256","scopes"?,"accounts"?}]}`); the presented key is hashed and compared
//! with every digest in constant time (`subtle`). The digests are cached in memory and re-read at
//! most every five minutes, so a rotated key takes effect within that time without a redeploy.
//!
//! `scopes` and `accounts` restrict what a key may do (see [`super::scopes`]); absent means all.
//! The accepting key's *name* is recorded for the request's log line ([`audit_scope`]).

use super::scopes::Scope;
use super::{HttpRequest, HttpResponse};
use crate::store::secrets::SecretsStore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::time::Instant;

/// How long the digests are trusted before the secret is read again.
pub const KEYS_TTL: Duration = Duration::from_secs(300);

/// The API keys secret.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ApiKeysSecret {
    #[serde(default)]
    pub keys: Vec<ApiKeyEntry>,
}

/// One key: a name (for logs) and the lowercase hex SHA-256 of the key, optionally restricted
/// to some scopes and some accounts (advertiser ids). Absent = all.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ApiKeyEntry {
    pub name: String,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accounts: Option<Vec<String>>,
}

/// The key a request was accepted with: its name and what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    /// `None`: every scope.
    pub scopes: Option<BTreeSet<Scope>>,
    /// `None`: every account.
    pub accounts: Option<Vec<String>>,
}

impl Caller {
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.as_ref().is_none_or(|s| s.contains(&scope))
    }

    /// Whether the key may use `account_id`.
    pub fn may_use(&self, account_id: &str) -> bool {
        self.accounts
            .as_ref()
            .is_none_or(|a| a.iter().any(|x| x == account_id))
    }
}

tokio::task_local! {
    static AUDIT_KEY: RefCell<Option<String>>;
}

/// Runs `f` with a slot for the name of the key that authenticates during it; returns `f`'s
/// output and that name (the runtime logs it on the request's line).
pub async fn audit_scope<F: std::future::Future>(f: F) -> (F::Output, Option<String>) {
    AUDIT_KEY
        .scope(RefCell::new(None), async move {
            let out = f.await;
            let key = AUDIT_KEY.with(|k| k.borrow().clone());
            (out, key)
        })
        .await
}

/// Records `name` as the accepting key of the current request (the console records its
/// session's key this way).
pub fn record_key(name: &str) {
    // Outside `audit_scope` (direct handler calls in tests) there is nothing to record into.
    let _ = AUDIT_KEY.try_with(|k| *k.borrow_mut() = Some(name.to_string()));
}

#[derive(Clone)]
pub struct ApiKeyAuth {
    inner: Arc<Inner>,
}

struct Inner {
    secrets: SecretsStore,
    secret_name: String,
    ttl: Duration,
    cache: tokio::sync::Mutex<Option<Loaded>>,
}

struct Loaded {
    at: Instant,
    keys: Vec<Key>,
}

/// A parsed entry of the secret.
struct Key {
    digest: [u8; 32],
    caller: Caller,
}

impl ApiKeyAuth {
    /// Loads lazily (first `check`) and re-reads every [`KEYS_TTL`].
    pub fn new(secrets: SecretsStore, secret_name: String) -> Self {
        Self::with_ttl(secrets, secret_name, KEYS_TTL)
    }

    /// As `new`, with another re-read interval (tests).
    pub fn with_ttl(secrets: SecretsStore, secret_name: String, ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                secrets,
                secret_name,
                ttl,
                cache: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// `Ok` for a known key; otherwise the response to send: 401 `unauthorized` for a missing or
    /// wrong key, 503 `unavailable` when the keys cannot be read at all.
    pub async fn check(&self, req: &HttpRequest) -> Result<(), HttpResponse> {
        self.authenticate(req).await.map(|_| ())
    }

    /// As [`check`](Self::check), returning the accepted key's name, scopes and accounts.
    pub async fn authenticate(&self, req: &HttpRequest) -> Result<Caller, HttpResponse> {
        let Some(key) = bearer(req) else {
            return Err(unauthorized(
                "missing API key: send the header `Authorization: Bearer <key>`",
            ));
        };
        let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut cache = self.inner.cache.lock().await;
        let stale = cache
            .as_ref()
            .is_none_or(|l| l.at.elapsed() >= self.inner.ttl);
        if stale {
            match self.load().await {
                Ok(keys) => {
                    *cache = Some(Loaded {
                        at: Instant::now(),
                        keys,
                    })
                }
                // Keep serving with the digests we have; retry the read on the next request.
                Err(e) if cache.is_some() => {
                    tracing::warn!(secret = %self.inner.secret_name, error = %e, "could not re-read the API keys; using the cached ones");
                }
                Err(e) => {
                    tracing::error!(secret = %self.inner.secret_name, error = %e, "could not read the API keys");
                    return Err(HttpResponse::error(
                        503,
                        "unavailable",
                        "the API keys could not be read; try again shortly",
                    ));
                }
            }
        }
        let keys = cache.as_ref().map(|l| l.keys.as_slice()).unwrap_or(&[]);
        // Compare with every digest, without stopping early, so timing says nothing about which
        // (or whether a) key matched.
        let mut matched: Option<&Caller> = None;
        for k in keys {
            let eq = bool::from(presented.ct_eq(&k.digest));
            if eq && matched.is_none() {
                matched = Some(&k.caller);
            }
        }
        match matched {
            Some(c) => {
                tracing::debug!(key = %c.name, "API key accepted");
                record_key(&c.name);
                Ok(c.clone())
            }
            None => Err(unauthorized("invalid API key")),
        }
    }

    /// The lowercase hex SHA-256 of a key, as stored in the secret.
    pub fn digest(key: &str) -> String {
        hex::encode(Sha256::digest(key.as_bytes()))
    }

    async fn load(&self) -> Result<Vec<Key>, crate::store::StoreError> {
        let secret: Option<ApiKeysSecret> =
            self.inner.secrets.get_json(&self.inner.secret_name).await?;
        let Some(secret) = secret else {
            tracing::error!(secret = %self.inner.secret_name, "the API keys secret does not exist: every call is refused");
            return Ok(Vec::new());
        };
        Ok(parse_entries(&secret))
    }
}

/// Decodes the digests, skipping (and naming) malformed entries. An unknown scope name is
/// ignored with a warning (the key simply lacks it: a typo never grants more).
fn parse_entries(secret: &ApiKeysSecret) -> Vec<Key> {
    let mut out = Vec::with_capacity(secret.keys.len());
    for (i, k) in secret.keys.iter().enumerate() {
        let mut d = [0u8; 32];
        if hex::decode_to_slice(k.sha256.trim(), &mut d).is_err() {
            tracing::warn!(
                index = i,
                name = %k.name,
                "API key entry ignored: sha256 must be 64 hex characters"
            );
            continue;
        }
        let scopes = k.scopes.as_ref().map(|list| {
            list.iter()
                .filter_map(|s| {
                    let parsed = Scope::parse(s.trim());
                    if parsed.is_none() {
                        tracing::warn!(index = i, name = %k.name, scope = %s, "unknown scope ignored");
                    }
                    parsed
                })
                .collect()
        });
        let accounts = k
            .accounts
            .as_ref()
            .map(|a| a.iter().map(|x| x.trim().to_string()).collect());
        out.push(Key {
            digest: d,
            caller: Caller {
                name: k.name.clone(),
                scopes,
                accounts,
            },
        });
    }
    out
}

/// The key from `Authorization: Bearer <key>` (scheme case-insensitive).
fn bearer(req: &HttpRequest) -> Option<&str> {
    let v = req.header("authorization")?.trim();
    let (scheme, rest) = v.split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let key = rest.trim();
    (!key.is_empty()).then_some(key)
}

fn unauthorized(message: &str) -> HttpResponse {
    HttpResponse::error(401, "unauthorized", message).with_header("www-authenticate", "Bearer")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_lowercase_hex_sha256() {
        assert_eq!(
            ApiKeyAuth::digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn bearer_parsing() {
        let r = |v: &str| HttpRequest::new("GET", "/").with_header("Authorization", v);
        assert_eq!(bearer(&r("Bearer k1")), Some("k1"));
        assert_eq!(bearer(&r("bearer   k1 ")), Some("k1"));
        assert_eq!(bearer(&r("BEARER k1")), Some("k1"));
        assert_eq!(bearer(&r("Basic k1")), None);
        assert_eq!(bearer(&r("Bearer")), None);
        assert_eq!(bearer(&r("Bearer   ")), None);
        assert_eq!(bearer(&r("k1")), None);
        assert_eq!(bearer(&HttpRequest::new("GET", "/")), None);
    }

    #[test]
    fn malformed_entries_are_skipped() {
        let s = ApiKeysSecret {
            keys: vec![
                ApiKeyEntry {
                    name: "good".into(),
                    sha256: ApiKeyAuth::digest("k"),
                    ..Default::default()
                },
                ApiKeyEntry {
                    name: "upper".into(),
                    sha256: ApiKeyAuth::digest("u").to_uppercase(),
                    scopes: Some(vec!["read".into(), "admin".into()]),
                    accounts: Some(vec![" 12 ".into()]),
                },
                ApiKeyEntry {
                    name: "short".into(),
                    sha256: "abcd".into(),
                    ..Default::default()
                },
                ApiKeyEntry {
                    name: "nothex".into(),
                    sha256: "z".repeat(64),
                    ..Default::default()
                },
            ],
        };
        let e = parse_entries(&s);
        assert_eq!(
            e.iter().map(|k| k.caller.name.as_str()).collect::<Vec<_>>(),
            ["good", "upper"]
        );
        assert_eq!(e[0].caller.scopes, None);
        assert_eq!(e[0].caller.accounts, None);
        // The unknown scope is dropped, not widened.
        assert_eq!(e[1].caller.scopes, Some(BTreeSet::from([Scope::Read])));
        assert_eq!(e[1].caller.accounts, Some(vec!["12".to_string()]));
        assert!(e[1].caller.may_use("12") && !e[1].caller.may_use("13"));
        assert!(!e[1].caller.has_scope(Scope::AccountsAdmin));
    }

    #[tokio::test]
    async fn the_audit_scope_sees_the_recorded_key_name() {
        let ((), none) = audit_scope(async {}).await;
        assert_eq!(none, None);
        let ((), name) = audit_scope(async { record_key("ci-writer") }).await;
        assert_eq!(name.as_deref(), Some("ci-writer"));
        // Outside a scope, recording is a no-op (no panic).
        record_key("x");
    }
}
