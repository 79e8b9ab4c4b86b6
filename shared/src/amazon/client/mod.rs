//! [`AmazonClient`]: the one request path every Ads API call goes through.
//!
//! Each call: take the login's access token (see `tokens.rs`), wait for the client-side rate
//! limit when the endpoint has one, send with the contract's headers and a per-request timeout,
//! and map the answer to a typed [`AmazonError`](crate::amazon::AmazonError) carrying Amazon's
//! message and request id. 429, 5xx, timeouts and connection errors are retried with exponential
//! backoff and full jitter (`backon`), honouring `Retry-After`; other 4xx are never retried. A
//! 401 refreshes the token once and resends. Nothing here logs or returns a token, code or client
//! secret.
//!
//! Split by job: `request` (one call: headers, token, rate limit), `retry` (policy, backoff,
//! attempt timeout), `login` (code exchange and refresh at the token endpoint), `mapping`
//! (answers to typed errors). Tokens are kept through the [`TokenVault`] the client is built with.

mod creds;
mod login;
mod mapping;
mod request;
mod retry;
#[cfg(test)]
mod tests;

pub use creds::CredentialSource;
pub(crate) use mapping::{map_status, transport_error, truncate};
pub(crate) use request::{AccountCtx, ApiRequest, HeaderStyle};
pub use retry::{RETRY_AFTER_CAP, RetryPolicy};

use super::error::AmazonError;
use super::lwa::LwaCredentials;
use super::region::{Endpoints, Region};
use super::vault::TokenVault;
use creds::Credentials;
use std::sync::Arc;
use std::time::Duration;

pub use super::accounts::{Advertiser, Profile};
pub use super::audiences::{
    Audience, AudienceFee, AudienceSize, AudienceUpdate, NewAudience, PatchAck,
};
pub use super::events::{EventError, EventsOutcome};

/// The consent scopes when `LWA_SCOPES` is not set.
pub const DEFAULT_SCOPES: &str = "advertising::audiences advertising::campaign_management";

pub use crate::domain::account::AccountScope;

/// The Amazon client. Cheap to clone (an `Arc` inside); build it once per process.
#[derive(Clone)]
pub struct AmazonClient {
    pub(crate) inner: Arc<Inner>,
    pub(crate) policy: RetryPolicy,
    /// Namespace of the process-wide access-token cache (empty: shared by every client of the
    /// process); [`AmazonClient::with_private_token_cache`] gives a client its own, as another
    /// process would have.
    pub(crate) cache_ns: Arc<str>,
}

pub(crate) struct Inner {
    pub(crate) http: Http,
    pub(crate) endpoints: Endpoints,
    pub(crate) creds: Credentials,
    pub(crate) vault: Arc<dyn TokenVault>,
    pub(crate) scopes: String,
}

impl std::fmt::Debug for AmazonClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmazonClient")
            .field(
                "client_id",
                &self.inner.creds.loaded().map(|c| c.client_id.as_str()),
            )
            .field("endpoints", &self.inner.endpoints)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// The HTTP client adsync uses for Amazon: rustls, no redirects (an API answer is never a
/// redirect, and following one could carry the bearer token elsewhere), bounded connect time.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("adsync/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// The HTTP client of an [`AmazonClient`]: given, or built on first use ([`Http::lazy`]):
/// building one loads the system's root certificates, milliseconds of a cold start that the
/// first Amazon call can pay instead.
#[derive(Debug, Default)]
pub struct Http(std::sync::OnceLock<reqwest::Client>);

impl Http {
    /// [`http_client`], built on first use.
    pub fn lazy() -> Self {
        Self::default()
    }

    pub(crate) fn get(&self) -> &reqwest::Client {
        self.0.get_or_init(http_client)
    }
}

impl From<reqwest::Client> for Http {
    fn from(c: reqwest::Client) -> Self {
        Self(std::sync::OnceLock::from(c))
    }
}

impl AmazonClient {
    /// Builds the client with known credentials (`AmazonClient::from_env` builds it from the
    /// environment, with Secrets Manager as the token vault). `vault` keeps each linked login's
    /// token secret.
    pub fn new(
        http: impl Into<Http>,
        endpoints: Endpoints,
        creds: LwaCredentials,
        vault: impl TokenVault,
        scopes: String,
    ) -> Self {
        Self::with_credentials(http, endpoints, Credentials::known(creds), vault, scopes)
    }

    /// [`AmazonClient::new`] with credentials read from `source` on first use, once per client
    /// (see `creds.rs`): building the client reads nothing.
    pub fn with_credential_source(
        http: impl Into<Http>,
        endpoints: Endpoints,
        source: impl CredentialSource,
        vault: impl TokenVault,
        scopes: String,
    ) -> Self {
        Self::with_credentials(http, endpoints, Credentials::lazy(source), vault, scopes)
    }

    fn with_credentials(
        http: impl Into<Http>,
        endpoints: Endpoints,
        creds: Credentials,
        vault: impl TokenVault,
        scopes: String,
    ) -> Self {
        // One space between scopes, whatever the configuration looked like.
        let scopes = scopes.split_whitespace().collect::<Vec<_>>().join(" ");
        Self {
            inner: Arc::new(Inner {
                http: http.into(),
                endpoints,
                creds,
                vault: Arc::new(vault),
                scopes,
            }),
            policy: RetryPolicy::default(),
            cache_ns: Arc::from(""),
        }
    }

    /// This client with a token cache of its own (tests play two processes with it).
    pub fn with_private_token_cache(mut self) -> Self {
        self.cache_ns = Arc::from(uuid::Uuid::new_v4().simple().to_string());
        self
    }

    pub fn with_retry_policy(mut self, p: RetryPolicy) -> Self {
        self.policy = p;
        self
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The LwA client id (reads the credentials on first use).
    pub async fn client_id(&self) -> Result<&str, AmazonError> {
        Ok(&self.inner.creds.get().await?.client_id)
    }

    /// The LwA credentials (read on first use).
    pub(crate) async fn credentials(&self) -> Result<&LwaCredentials, AmazonError> {
        self.inner.creds.get().await
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.inner.endpoints
    }

    pub fn scopes(&self) -> &str {
        &self.inner.scopes
    }

    /// The consent-page URL for `region` (send the user's browser there); reads the credentials
    /// on first use.
    pub async fn authorize_url(
        &self,
        region: Region,
        redirect_uri: &str,
        state: &str,
    ) -> Result<String, AmazonError> {
        Ok(super::lwa::authorize_url(
            self.inner.endpoints.consent_url(region),
            self.client_id().await?,
            &self.inner.scopes,
            redirect_uri,
            state,
        ))
    }
}
