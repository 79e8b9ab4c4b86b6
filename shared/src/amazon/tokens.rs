//! Linked logins and their access tokens.
//!
//! Each linked login has one secret (`${TOKEN_SECRET_PREFIX}<connectionId>`) holding
//! `{"region","refresh_token","access_token"?,"access_token_expires_at"?}` (epoch seconds).
//! Access tokens are reused across warm invocations through a process-wide cache keyed by the
//! secret name; when the cache is cold the secret's copy is used; a token with less than five
//! minutes left (or one Amazon just answered 401 to) is refreshed and the new one written back to
//! the secret. A per-login async lock makes concurrent callers of one process refresh once.
//!
//! Across processes (several Lambda instances), two guards keep one working token:
//! - the write-back is conditional on the secret version that was read
//!   ([`TokenVault::write_if_current`](super::vault::TokenVault::write_if_current)),
//!   so a stale writer never overwrites a newer (possibly rotated) refresh token;
//! - `invalid_grant` on a refresh re-reads the secret (briefly waiting for the other process's
//!   write-back): when another process rotated the refresh token meanwhile, its access token is
//!   used, or the new refresh token is tried once; only an unchanged secret means the consent
//!   was revoked.

use super::client::AmazonClient;
use super::error::AmazonError;
use super::lwa::{LwaError, TokenGrant};
use super::region::Region;
use super::secret::SecretString;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

pub use crate::domain::account::LoginRef;

/// Refresh when less than this many seconds remain (the contract's five minutes).
pub const REFRESH_MARGIN_SECS: i64 = 300;

/// The per-login secret.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenSecret {
    pub region: Region,
    pub refresh_token: SecretString,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<SecretString>,
    /// Epoch seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token_expires_at: Option<i64>,
}

#[derive(Clone)]
struct CachedToken {
    token: SecretString,
    expires_at: i64,
}

impl CachedToken {
    /// Usable: enough time left, and not the token Amazon just refused.
    fn usable(&self, now: i64, refused: Option<&SecretString>) -> bool {
        self.expires_at - now >= REFRESH_MARGIN_SECS && refused != Some(&self.token)
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<CachedToken>>>;

/// How long `invalid_grant` waits for another process's write-back of a rotated refresh token,
/// re-reading the secret after each step.
const REREAD_WAITS_MS: [u64; 3] = [0, 250, 750];

/// What a re-read after `invalid_grant` found.
enum Reread {
    /// Another process stored a usable access token.
    Token(CachedToken),
    /// Another process rotated the refresh token; try it (secret and its version).
    Rotated(Box<TokenSecret>, String),
    /// The same refresh token: the consent was revoked.
    Unchanged,
}

/// The process-wide cache: one slot (and lock) per token secret.
fn slot(secret_name: &str) -> Slot {
    static CACHE: OnceLock<Mutex<HashMap<String, Slot>>> = OnceLock::new();
    let mut map = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    map.entry(secret_name.to_string()).or_default().clone()
}

fn now_epoch() -> i64 {
    chrono::Utc::now().timestamp()
}

impl AmazonClient {
    /// Stores a fresh grant for a login (creating or overwriting its secret) and caches the
    /// access token. The grant must carry a refresh token (a code exchange always does).
    pub async fn save_login(
        &self,
        login: &LoginRef,
        grant: &TokenGrant,
    ) -> Result<(), AmazonError> {
        let refresh_token = grant.refresh_token.clone().ok_or_else(|| {
            AmazonError::Lwa(LwaError::Other {
                error: "missing_refresh_token".into(),
                description: "the token answer carried no refresh token".into(),
                status: 200,
            })
        })?;
        let slot = slot(&self.cache_key(login));
        let mut cached = slot.lock().await;
        let expires_at = now_epoch() + grant.expires_in as i64;
        let secret = TokenSecret {
            region: login.region,
            refresh_token,
            access_token: Some(grant.access_token.clone()),
            access_token_expires_at: Some(expires_at),
        };
        // Drop the old cache entry first so a failed write never leaves a stale token in use.
        *cached = None;
        self.inner.vault.write(&login.secret_name, &secret).await?;
        *cached = Some(CachedToken {
            token: grant.access_token.clone(),
            expires_at,
        });
        Ok(())
    }

    /// Deletes a login's secret (no recovery window) and forgets its cached token.
    pub async fn delete_login(&self, login: &LoginRef) -> Result<(), AmazonError> {
        let slot = slot(&self.cache_key(login));
        let mut cached = slot.lock().await;
        *cached = None;
        self.inner.vault.delete(&login.secret_name).await?;
        Ok(())
    }

    /// A usable access token for the login: from memory, else from its secret, else refreshed
    /// (and written back). A revoked login is [`AmazonError::ReauthorizationRequired`].
    pub async fn access_token(&self, login: &LoginRef) -> Result<SecretString, AmazonError> {
        self.token_for(login, None).await
    }

    /// A token other than `refused` (which Amazon just answered 401 to). When another caller
    /// already refreshed, its token is reused rather than refreshing again.
    pub(crate) async fn token_after_unauthorized(
        &self,
        login: &LoginRef,
        refused: &SecretString,
    ) -> Result<SecretString, AmazonError> {
        self.token_for(login, Some(refused)).await
    }

    fn cache_key(&self, login: &LoginRef) -> String {
        format!("{}\u{0}{}", self.cache_ns, login.secret_name)
    }

    async fn token_for(
        &self,
        login: &LoginRef,
        refused: Option<&SecretString>,
    ) -> Result<SecretString, AmazonError> {
        let slot = slot(&self.cache_key(login));
        let mut cached = slot.lock().await;
        if let Some(c) = cached.as_ref()
            && c.usable(now_epoch(), refused)
        {
            return Ok(c.token.clone());
        }

        let Some((mut secret, mut version)) = self.inner.vault.read(&login.secret_name).await?
        else {
            // The login was deleted (or never saved): only relinking helps.
            tracing::warn!(secret = %login.secret_name, "token secret not found");
            *cached = None;
            return Err(AmazonError::ReauthorizationRequired);
        };
        if let Some(c) = stored_token(&secret, refused) {
            *cached = Some(c.clone());
            return Ok(c.token);
        }

        let mut retried = false;
        let grant = loop {
            match self
                .refresh_grant(login.region, secret.refresh_token.expose())
                .await
            {
                Ok(g) => break g,
                Err(AmazonError::ReauthorizationRequired) if !retried => {
                    retried = true;
                    match self.reread(login, &secret.refresh_token, refused).await? {
                        Reread::Token(c) => {
                            tracing::info!(secret = %login.secret_name, "another process refreshed the token: using its token");
                            *cached = Some(c.clone());
                            return Ok(c.token);
                        }
                        Reread::Rotated(newer, v) => {
                            tracing::info!(secret = %login.secret_name, "another process rotated the refresh token: retrying once");
                            (secret, version) = (*newer, v);
                        }
                        Reread::Unchanged => {
                            *cached = None;
                            tracing::warn!(secret = %login.secret_name, "refresh token refused (invalid_grant): reauthorization required");
                            return Err(AmazonError::ReauthorizationRequired);
                        }
                    }
                }
                Err(e) => {
                    *cached = None;
                    if e == AmazonError::ReauthorizationRequired {
                        tracing::warn!(secret = %login.secret_name, "refresh token refused (invalid_grant): reauthorization required");
                    }
                    return Err(e);
                }
            }
        };
        let expires_at = now_epoch() + grant.expires_in as i64;
        self.write_back(login, &secret, &version, &grant, expires_at)
            .await?;
        tracing::info!(secret = %login.secret_name, expires_at, "access token refreshed");
        *cached = Some(CachedToken {
            token: grant.access_token.clone(),
            expires_at,
        });
        Ok(grant.access_token)
    }

    /// Stores a refreshed grant, only over the version it was refreshed from (a newer version
    /// written by another process meanwhile is kept: it is at least as fresh).
    async fn write_back(
        &self,
        login: &LoginRef,
        secret: &TokenSecret,
        version: &str,
        grant: &TokenGrant,
        expires_at: i64,
    ) -> Result<(), AmazonError> {
        let rotated = grant
            .refresh_token
            .as_ref()
            .is_some_and(|r| r != &secret.refresh_token);
        let updated = TokenSecret {
            region: secret.region,
            refresh_token: grant
                .refresh_token
                .clone()
                .unwrap_or_else(|| secret.refresh_token.clone()),
            access_token: Some(grant.access_token.clone()),
            access_token_expires_at: Some(expires_at),
        };
        match self
            .inner
            .vault
            .write_if_current(&login.secret_name, &updated, version)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => {
                tracing::info!(secret = %login.secret_name, rotated, "a newer token version was stored meanwhile: kept");
                Ok(())
            }
            // The new token is good; without the write-back another process refreshes again.
            // A rotated refresh token must not be lost, though.
            Err(e) if rotated => Err(e.into()),
            Err(e) => {
                tracing::warn!(secret = %login.secret_name, error = %e, "could not write the refreshed access token back");
                Ok(())
            }
        }
    }

    /// After `invalid_grant` for `used`: re-reads the secret, waiting briefly for another
    /// process's write-back, to tell a rotation from a revocation.
    async fn reread(
        &self,
        login: &LoginRef,
        used: &SecretString,
        refused: Option<&SecretString>,
    ) -> Result<Reread, AmazonError> {
        for wait in REREAD_WAITS_MS {
            tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
            let Some((now, v)) = self.inner.vault.read(&login.secret_name).await? else {
                return Ok(Reread::Unchanged);
            };
            if &now.refresh_token == used {
                continue;
            }
            return Ok(match stored_token(&now, refused) {
                Some(c) => Reread::Token(c),
                None => Reread::Rotated(Box::new(now), v),
            });
        }
        Ok(Reread::Unchanged)
    }
}

/// The secret's access token, when it is usable.
fn stored_token(secret: &TokenSecret, refused: Option<&SecretString>) -> Option<CachedToken> {
    let c = CachedToken {
        token: secret.access_token.clone()?,
        expires_at: secret.access_token_expires_at?,
    };
    c.usable(now_epoch(), refused).then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_secret_layout() {
        let s = TokenSecret {
            region: Region::EU,
            refresh_token: "Atzr|r".into(),
            access_token: Some("Atza|a".into()),
            access_token_expires_at: Some(1_700_000_000),
        };
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            serde_json::json!({"region":"EU","refresh_token":"Atzr|r","access_token":"Atza|a","access_token_expires_at":1_700_000_000})
        );
        let d = format!("{s:?}");
        assert!(!d.contains("Atzr") && !d.contains("Atza"), "{d}");
        let minimal: TokenSecret =
            serde_json::from_str(r#"{"region":"NA","refresh_token":"x"}"#).unwrap();
        assert!(minimal.access_token.is_none());
    }

    #[test]
    fn usable_needs_five_minutes_and_not_the_refused_token() {
        let c = CachedToken {
            token: "a".into(),
            expires_at: 1000,
        };
        assert!(c.usable(1000 - 300, None));
        assert!(!c.usable(1000 - 299, None));
        assert!(!c.usable(0, Some(&"a".into())));
        assert!(c.usable(0, Some(&"b".into())));
    }
}
