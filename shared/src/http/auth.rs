//! Caller authentication for API routes: `Authorization: Bearer <key>`.
//!
//! Keys live in the `API_KEYS_SECRET` secret as lowercase hex SHA-256 digests
//! (`{"keys":[{"name","sha256"}]}`); the presented key is hashed and compared with every digest in
//! constant time (`subtle`). The digests are cached in memory and re-read at most every five
//! minutes, so a rotated key takes effect within that time without a redeploy.

use super::{HttpRequest, HttpResponse};
use crate::store::secrets::SecretsStore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
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

/// One key: a name (for logs) and the lowercase hex SHA-256 of the key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiKeyEntry {
    pub name: String,
    pub sha256: String,
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
    keys: Vec<(String, [u8; 32])>,
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
        let mut matched: Option<&str> = None;
        let mut any = subtle::Choice::from(0u8);
        for (name, digest) in keys {
            let eq = presented.ct_eq(digest);
            if bool::from(eq) && matched.is_none() {
                matched = Some(name);
            }
            any |= eq;
        }
        if bool::from(any) {
            tracing::debug!(key = matched.unwrap_or(""), "API key accepted");
            Ok(())
        } else {
            Err(unauthorized("invalid API key"))
        }
    }

    /// The lowercase hex SHA-256 of a key, as stored in the secret.
    pub fn digest(key: &str) -> String {
        hex::encode(Sha256::digest(key.as_bytes()))
    }

    async fn load(&self) -> Result<Vec<(String, [u8; 32])>, crate::store::StoreError> {
        let secret: Option<ApiKeysSecret> =
            self.inner.secrets.get_json(&self.inner.secret_name).await?;
        let Some(secret) = secret else {
            tracing::error!(secret = %self.inner.secret_name, "the API keys secret does not exist: every call is refused");
            return Ok(Vec::new());
        };
        Ok(parse_entries(&secret))
    }
}

/// Decodes the digests, skipping (and naming) malformed entries.
fn parse_entries(secret: &ApiKeysSecret) -> Vec<(String, [u8; 32])> {
    let mut out = Vec::with_capacity(secret.keys.len());
    for (i, k) in secret.keys.iter().enumerate() {
        let mut d = [0u8; 32];
        match hex::decode_to_slice(k.sha256.trim(), &mut d) {
            Ok(()) => out.push((k.name.clone(), d)),
            Err(_) => tracing::warn!(
                index = i,
                name = %k.name,
                "API key entry ignored: sha256 must be 64 hex characters"
            ),
        }
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
                },
                ApiKeyEntry {
                    name: "upper".into(),
                    sha256: ApiKeyAuth::digest("u").to_uppercase(),
                },
                ApiKeyEntry {
                    name: "short".into(),
                    sha256: "abcd".into(),
                },
                ApiKeyEntry {
                    name: "nothex".into(),
                    sha256: "z".repeat(64),
                },
            ],
        };
        let e = parse_entries(&s);
        assert_eq!(
            e.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["good", "upper"]
        );
    }
}
