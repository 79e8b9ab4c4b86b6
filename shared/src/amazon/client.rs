//! [`AmazonClient`]: the one request path every Ads API call goes through.
//!
//! Each call: take the login's access token (see `tokens.rs`), wait for the client-side rate
//! limit when the endpoint has one, send with the contract's headers and a per-request timeout,
//! and map the answer to a typed [`AmazonError`] carrying Amazon's message and request id.
//! 429, 5xx, timeouts and connection errors are retried with exponential backoff and full jitter
//! (`backon`), honouring `Retry-After`; other 4xx are never retried. A 401 refreshes the token
//! once and resends. Nothing here logs or returns a token, code or client secret.

use super::error::AmazonError;
use super::lwa::{Grant, LwaCredentials, LwaError, TokenGrant};
use super::ratelimit::{Limit, spacer_for};
use super::region::{Endpoints, Region};
use super::tokens::LoginRef;
use crate::aws::AwsClients;
use crate::store::secrets::SecretsStore;
use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use std::sync::Arc;
use std::time::Duration;

pub use super::accounts::{Advertiser, Profile};
pub use super::audiences::{
    Audience, AudienceFee, AudienceSize, AudienceUpdate, NewAudience, PatchAck,
};
pub use super::events::{EventError, EventsOutcome};

/// The consent scopes when `LWA_SCOPES` is not set.
pub const DEFAULT_SCOPES: &str = "advertising::audiences advertising::campaign_management";

/// The longest `Retry-After` we honour: a longer wait is better left to the caller's own retry
/// (parking, the scheduler) than spent inside one Lambda invocation.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(30);

/// Retries and timeouts. `max_attempts` counts every request sent (1 = no retry); the n-th retry
/// waits a uniformly random time in `[0, min(max_delay, base_delay · 2ⁿ⁻¹)]` (full jitter), or
/// `Retry-After` (capped at [`RETRY_AFTER_CAP`]) when a 429 carries one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    /// 4 attempts, 200 ms base, 20 s cap, 30 s per request.
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(20),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The longest one call can take under this policy: every attempt timing out, and the
    /// longest wait between attempts (the backoff cap, or a capped `Retry-After`).
    pub fn worst_case(&self) -> Duration {
        let waits = self.max_attempts.saturating_sub(1);
        self.request_timeout * self.max_attempts + self.max_delay.max(RETRY_AFTER_CAP) * waits
    }
}

/// The DSP account a call acts for: the agency profile (sent as `Amazon-Advertising-API-Scope`)
/// and the advertiser.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AccountScope {
    pub profile_id: i64,
    pub advertiser_id: i64,
}

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
    pub(crate) http: reqwest::Client,
    pub(crate) endpoints: Endpoints,
    pub(crate) creds: LwaCredentials,
    pub(crate) secrets: SecretsStore,
    pub(crate) scopes: String,
}

impl std::fmt::Debug for AmazonClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmazonClient")
            .field("client_id", &self.inner.creds.client_id)
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

impl AmazonClient {
    /// Builds the client from the environment: the LwA credentials from the
    /// `LWA_CREDENTIALS_SECRET` secret, the endpoint overrides, `LWA_SCOPES`.
    pub async fn from_env(aws: &AwsClients) -> Result<Self, AmazonError> {
        let settings =
            crate::config::Settings::from_env().map_err(|e| AmazonError::Store(e.to_string()))?;
        Self::from_settings(aws, &settings).await
    }

    /// [`AmazonClient::from_env`] with the settings read at cold start.
    pub async fn from_settings(
        aws: &AwsClients,
        settings: &crate::config::Settings,
    ) -> Result<Self, AmazonError> {
        let name = settings
            .lwa_credentials_secret
            .get()
            .map_err(|e| AmazonError::Store(e.to_string()))?;
        let secrets = SecretsStore::new(aws.secrets.clone());
        let creds: LwaCredentials = secrets
            .get_json(&name)
            .await?
            .ok_or_else(|| AmazonError::Store(format!("secret {name} does not exist")))?;
        Ok(Self::new(
            http_client(),
            settings.amazon_endpoints.clone(),
            creds,
            secrets,
            settings.lwa_scopes.clone(),
        ))
    }

    pub fn new(
        http: reqwest::Client,
        endpoints: Endpoints,
        creds: LwaCredentials,
        secrets: SecretsStore,
        scopes: String,
    ) -> Self {
        // One space between scopes, whatever the configuration looked like.
        let scopes = scopes.split_whitespace().collect::<Vec<_>>().join(" ");
        Self {
            inner: Arc::new(Inner {
                http,
                endpoints,
                creds,
                secrets,
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

    pub fn client_id(&self) -> &str {
        &self.inner.creds.client_id
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.inner.endpoints
    }

    pub fn scopes(&self) -> &str {
        &self.inner.scopes
    }

    /// The consent-page URL for `region` (send the user's browser there).
    pub fn authorize_url(&self, region: Region, redirect_uri: &str, state: &str) -> String {
        super::lwa::authorize_url(
            self.inner.endpoints.consent_url(region),
            &self.inner.creds.client_id,
            &self.inner.scopes,
            redirect_uri,
            state,
        )
    }

    /// Exchanges an authorization code for tokens at `region`'s token endpoint. An unusable code
    /// is `AmazonError::Lwa(LwaError::InvalidGrant {..})`.
    pub async fn exchange_code(
        &self,
        region: Region,
        code: &str,
        redirect_uri: &str,
    ) -> Result<TokenGrant, AmazonError> {
        self.exchange_code_pkce(region, code, redirect_uri, None)
            .await
    }

    /// [`exchange_code`](Self::exchange_code) with the PKCE verifier of the consent (when it
    /// carried a challenge).
    pub async fn exchange_code_pkce(
        &self,
        region: Region,
        code: &str,
        redirect_uri: &str,
        code_verifier: Option<&str>,
    ) -> Result<TokenGrant, AmazonError> {
        let grant = Grant::Code {
            code,
            redirect_uri,
            code_verifier,
        };
        self.token_call(region, &grant).await
    }

    /// Refreshes an access token. `invalid_grant` (consent revoked) becomes
    /// [`AmazonError::ReauthorizationRequired`].
    pub(crate) async fn refresh_grant(
        &self,
        region: Region,
        refresh_token: &str,
    ) -> Result<TokenGrant, AmazonError> {
        match self
            .token_call(region, &Grant::Refresh { refresh_token })
            .await
        {
            Err(AmazonError::Lwa(LwaError::InvalidGrant { .. })) => {
                Err(AmazonError::ReauthorizationRequired)
            }
            other => other,
        }
    }

    async fn token_call(
        &self,
        region: Region,
        grant: &Grant<'_>,
    ) -> Result<TokenGrant, AmazonError> {
        let url = self.inner.endpoints.token_url(region);
        let call = || async {
            let timeout = self.attempt_timeout()?;
            super::lwa::token_request(&self.inner.http, url, &self.inner.creds, grant, timeout)
                .await
        };
        self.retrying(call, "POST", "/auth/o2/token").await
    }

    /// Runs `f` under the retry policy: transient failures (429, 5xx, timeouts, network) are
    /// retried with exponential backoff and full jitter, honouring `Retry-After`.
    pub(crate) async fn retrying<T, F, Fut>(
        &self,
        f: F,
        method: &str,
        path: &str,
    ) -> Result<T, AmazonError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, AmazonError>>,
    {
        let p = &self.policy;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(p.base_delay)
            .with_max_delay(p.max_delay.max(p.base_delay))
            .with_factor(2.0)
            .with_max_times(p.max_attempts.saturating_sub(1) as usize);
        f.retry(backoff)
            .sleep(tokio::time::sleep)
            .when(is_transient)
            .adjust(|e, d| d.map(|d| retry_delay(e, d)).filter(|d| fits_budget(*d)))
            .notify(|e, d| {
                tracing::warn!(
                    method,
                    path,
                    error = %e,
                    delay_ms = d.as_millis() as u64,
                    "Amazon call failed; retrying"
                );
            })
            .await
    }

    /// One attempt's timeout: the policy's, clipped to the request budget's Amazon deadline
    /// (`crate::budget`); no attempt starts with less than [`crate::budget::MIN_ATTEMPT`] left.
    pub(crate) fn attempt_timeout(&self) -> Result<Duration, AmazonError> {
        match crate::budget::amazon_time_left() {
            None => Ok(self.policy.request_timeout),
            Some(left) if left < crate::budget::MIN_ATTEMPT => Err(AmazonError::Timeout),
            Some(left) => Ok(self.policy.request_timeout.min(left)),
        }
    }

    /// Sends one Ads API call for `login`: token, headers, rate limit, retries, and one token
    /// refresh after a 401.
    pub(crate) async fn send(
        &self,
        login: &LoginRef,
        req: &ApiRequest,
    ) -> Result<ApiResponse, AmazonError> {
        let token = self.access_token(login).await?;
        match self
            .send_with_token(login.region, req, token.expose())
            .await
        {
            Err(AmazonError::Rejected { status: 401, .. }) => {
                // The token may have been revoked or expired early: refresh once and resend.
                tracing::info!(
                    method = %req.method,
                    path = %req.path,
                    "Amazon answered 401; refreshing the access token once"
                );
                let fresh = self.token_after_unauthorized(login, &token).await?;
                self.send_with_token(login.region, req, fresh.expose())
                    .await
            }
            other => other,
        }
    }

    async fn send_with_token(
        &self,
        region: Region,
        req: &ApiRequest,
        token: &str,
    ) -> Result<ApiResponse, AmazonError> {
        let url = format!("{}{}", self.inner.endpoints.ads_api(region), req.path);
        let spacer = req.limit.map(|l| spacer_for(self.client_id(), l));
        let attempt = || async {
            if let Some(s) = &spacer {
                s.wait().await;
            }
            self.attempt(&url, req, token).await
        };
        self.retrying(attempt, req.method.as_str(), &req.path).await
    }

    async fn attempt(
        &self,
        url: &str,
        req: &ApiRequest,
        token: &str,
    ) -> Result<ApiResponse, AmazonError> {
        let client_id = self.client_id();
        let timeout = self.attempt_timeout()?;
        let mut rb = self
            .inner
            .http
            .request(req.method.clone(), url)
            .timeout(timeout)
            .bearer_auth(token)
            .header(reqwest::header::ACCEPT, req.headers.media_type());
        rb = match req.headers {
            HeaderStyle::Advertising { profile_id } | HeaderStyle::Versioned { profile_id, .. } => {
                let rb = rb.header("Amazon-Advertising-API-ClientId", client_id);
                match profile_id {
                    Some(p) => rb.header("Amazon-Advertising-API-Scope", p.to_string()),
                    None => rb,
                }
            }
            HeaderStyle::AdsAccount { account_id } => rb
                .header("Amazon-Ads-ClientId", client_id)
                .header("Amazon-Ads-AccountId", account_id.to_string()),
        };
        if let Some(body) = &req.body {
            rb = rb
                .header(CONTENT_TYPE, req.headers.media_type())
                .body(body.clone());
        }
        let resp = rb.send().await.map_err(transport_error)?;
        let status = resp.status().as_u16();
        crate::telemetry::record_amazon_status(status);
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(transport_error)?;
        if (200..300).contains(&status) {
            let request_id = header_request_id(&headers);
            return Ok(ApiResponse {
                status,
                body,
                request_id,
            });
        }
        let err = map_error(status, &headers, &body, req.account);
        tracing::debug!(status, path = %req.path, error = %err, "Amazon answered an error");
        Err(err)
    }
}

/// How a call identifies itself.
#[derive(Clone, Copy, Debug)]
pub(crate) enum HeaderStyle {
    /// `/v2/…`, `/dsp/…`, `/v2/dp/…`: `Amazon-Advertising-API-ClientId`, and
    /// `Amazon-Advertising-API-Scope` when a profile is given.
    Advertising { profile_id: Option<i64> },
    /// The Events API: `Amazon-Ads-ClientId`, `Amazon-Ads-AccountId`.
    AdsAccount { account_id: i64 },
    /// Like `Advertising`, with a versioned media type as `Content-Type` and `Accept`
    /// (`POST /dp/records/hashed/`).
    Versioned {
        profile_id: Option<i64>,
        media_type: &'static str,
    },
}

impl HeaderStyle {
    /// The `Content-Type` (and `Accept`) of the call.
    fn media_type(&self) -> &'static str {
        match self {
            HeaderStyle::Versioned { media_type, .. } => media_type,
            _ => "application/json",
        }
    }
}

/// Which advertiser a call is about, so an authorisation failure can name it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AccountCtx {
    pub advertiser_id: i64,
    /// A 404 means the account is unknown (true for calls whose path names no other object).
    pub not_found_is_account: bool,
}

/// One Ads API call.
#[derive(Clone, Debug)]
pub(crate) struct ApiRequest {
    pub method: reqwest::Method,
    /// Path and query, appended to the region's Ads API base URL.
    pub path: String,
    pub headers: HeaderStyle,
    pub body: Option<Bytes>,
    pub account: Option<AccountCtx>,
    pub limit: Option<Limit>,
}

/// A 2xx answer.
#[derive(Debug)]
pub(crate) struct ApiResponse {
    #[allow(dead_code)]
    pub status: u16,
    pub body: Bytes,
    pub request_id: Option<String>,
}

impl ApiResponse {
    /// Parses the body, naming the call in the error.
    pub(crate) fn json<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
    ) -> Result<T, AmazonError> {
        serde_json::from_slice(&self.body).map_err(|e| AmazonError::Server {
            status: self.status,
            message: format!("unexpected {what} answer: {e}"),
            request_id: self.request_id.clone(),
        })
    }
}

fn is_transient(e: &AmazonError) -> bool {
    matches!(
        e,
        AmazonError::Throttled { .. }
            | AmazonError::Server { .. }
            | AmazonError::Timeout
            | AmazonError::Network(_)
    )
}

/// Inside a request (`crate::budget`), a retry is only started when its wait and a minimal
/// attempt end before the request's Amazon deadline; outside one, always.
fn fits_budget(wait: Duration) -> bool {
    crate::budget::amazon_time_left().is_none_or(|left| left > wait + crate::budget::MIN_ATTEMPT)
}

/// The wait before the next attempt: `Retry-After` (capped) on a 429 that carries one, else a
/// uniformly random time in `[0, backoff]` (full jitter).
fn retry_delay(e: &AmazonError, backoff: Duration) -> Duration {
    match e {
        AmazonError::Throttled {
            retry_after: Some(ra),
            ..
        } => (*ra).min(RETRY_AFTER_CAP),
        _ => backoff.mul_f64(rand::random::<f64>()),
    }
}

pub(crate) fn transport_error(e: reqwest::Error) -> AmazonError {
    if e.is_timeout() {
        AmazonError::Timeout
    } else {
        // without_url: the URL is ours and harmless, but keep errors free of anything passed in.
        let e = e.without_url();
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        AmazonError::Network(truncate(&msg))
    }
}

/// Keeps Amazon's messages to a sensible length in errors and logs.
pub(crate) fn truncate(s: &str) -> String {
    const MAX: usize = 500;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// `Retry-After` as seconds (integer or decimal) or an HTTP date.
pub(crate) fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when.signed_duration_since(chrono::Utc::now());
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

fn header_request_id(headers: &HeaderMap) -> Option<String> {
    ["x-amzn-requestid", "x-amzn-request-id", "x-amz-request-id"]
        .iter()
        .find_map(|h| headers.get(*h))
        .and_then(|v| v.to_str().ok())
        .map(|s| truncate(s.trim()))
        .filter(|s| !s.is_empty())
}

/// Amazon's message and request id from an error body. Amazon uses several shapes:
/// `{"code","details","requestId"}`, `{"message","requestId","errors":[{"message"}]}`,
/// `{"requestId","error":{"description","errors":[{"message","fieldName"}]}}` (Data Provider),
/// `{"error","error_description"}` (LwA).
pub(crate) fn parse_error_body(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        // Plain-text answers (gateways) are short; HTML pages are noise.
        let msg = (!text.is_empty() && !text.starts_with('<')).then(|| truncate(text));
        return (msg, None);
    };
    let s = |v: Option<&serde_json::Value>| {
        v.and_then(|v| match v {
            serde_json::Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    };
    let err_obj = v.get("error").filter(|e| e.is_object());
    let primary = s(v.get("message"))
        .or_else(|| s(v.get("errorMessage")))
        .or_else(|| s(v.get("details")))
        .or_else(|| err_obj.and_then(|e| s(e.get("description")).or_else(|| s(e.get("message")))))
        .or_else(|| s(v.get("description")))
        .or_else(|| s(v.get("error_description")))
        .or_else(|| s(v.get("error")))
        .or_else(|| s(v.get("code")));
    let first_detail = |list: Option<&serde_json::Value>| {
        let item = list?.as_array()?.first()?;
        let msg = s(item.get("message")).or_else(|| s(item.get("errorMessage")))?;
        Some(
            match s(item.get("fieldName")).or_else(|| s(item.get("field"))) {
                Some(f) => format!("{msg} (field {f})"),
                None => msg,
            },
        )
    };
    let detail = first_detail(v.get("errors"))
        .or_else(|| first_detail(err_obj.and_then(|e| e.get("errors"))));
    let message = match (primary, detail) {
        (Some(p), Some(d)) if p != d => Some(format!("{p}: {d}")),
        (Some(p), _) => Some(p),
        (None, d) => d,
    };
    let request_id = s(v.get("requestId"))
        .or_else(|| s(v.get("request_id")))
        .map(|r| truncate(&r));
    (message.map(|m| truncate(&m)), request_id)
}

/// Maps a non-2xx answer without account context (used by the token endpoint).
pub(crate) fn map_status(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    advertiser_id: Option<i64>,
) -> AmazonError {
    map_error(
        status,
        headers,
        body,
        advertiser_id.map(|a| AccountCtx {
            advertiser_id: a,
            not_found_is_account: true,
        }),
    )
}

/// Maps a non-2xx Ads API answer to a typed error.
pub(crate) fn map_error(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    account: Option<AccountCtx>,
) -> AmazonError {
    let (message, body_rid) = parse_error_body(body);
    let request_id = header_request_id(headers).or(body_rid);
    let message = message.unwrap_or_else(|| format!("HTTP {status}"));
    if let Some(acc) = account {
        let no_advertiser = status == 401
            && message
                .to_ascii_lowercase()
                .contains("no matching advertiser found");
        if no_advertiser || status == 403 || (status == 404 && acc.not_found_is_account) {
            return AmazonError::AccountNotFound {
                advertiser_id: acc.advertiser_id,
                status,
                message,
                request_id,
            };
        }
    }
    match status {
        413 => AmazonError::PayloadTooLarge {
            message,
            request_id,
        },
        429 => AmazonError::Throttled {
            retry_after: parse_retry_after(headers),
            request_id,
        },
        500..=599 => AmazonError::Server {
            status,
            message,
            request_id,
        },
        _ => AmazonError::Rejected {
            status,
            message,
            request_id,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn hm(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn acct(id: i64) -> Option<AccountCtx> {
        Some(AccountCtx {
            advertiser_id: id,
            not_found_is_account: true,
        })
    }

    #[test]
    fn retry_after_parsing() {
        assert_eq!(
            parse_retry_after(&hm(&[("retry-after", "2")])),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            parse_retry_after(&hm(&[("retry-after", " 0 ")])),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after(&hm(&[("retry-after", "1.5")])),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_retry_after(&hm(&[("retry-after", "-1")])), None);
        assert_eq!(parse_retry_after(&hm(&[("retry-after", "soon")])), None);
        assert_eq!(parse_retry_after(&HeaderMap::new()), None);
        // An HTTP date in the past means "now".
        assert_eq!(
            parse_retry_after(&hm(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")])),
            Some(Duration::ZERO)
        );
        let future = (chrono::Utc::now() + chrono::Duration::seconds(60)).to_rfc2822();
        let d = parse_retry_after(&hm(&[("retry-after", &future)])).unwrap();
        assert!(
            d > Duration::from_secs(55) && d <= Duration::from_secs(60),
            "{d:?}"
        );
    }

    #[test]
    fn retry_delay_honours_retry_after_with_a_cap_and_jitters_otherwise() {
        let throttled = |s| AmazonError::Throttled {
            retry_after: Some(Duration::from_secs(s)),
            request_id: None,
        };
        assert_eq!(
            retry_delay(&throttled(2), Duration::from_millis(1)),
            Duration::from_secs(2)
        );
        assert_eq!(
            retry_delay(&throttled(3600), Duration::from_millis(1)),
            RETRY_AFTER_CAP
        );
        let backoff = Duration::from_millis(800);
        let mut seen_low = false;
        for _ in 0..200 {
            let d = retry_delay(&AmazonError::Timeout, backoff);
            assert!(d <= backoff);
            seen_low |= d < backoff / 2;
        }
        assert!(seen_low, "full jitter spreads delays over [0, backoff]");
    }

    #[test]
    fn error_mapping_from_canned_answers() {
        let e = map_error(
            401,
            &hm(&[("x-amzn-RequestId", "RID-1")]),
            br#"{"code":"UNAUTHORIZED","details":"No matching advertiser found for scope"}"#,
            acct(42),
        );
        assert_eq!(
            e,
            AmazonError::AccountNotFound {
                advertiser_id: 42,
                status: 401,
                message: "No matching advertiser found for scope".into(),
                request_id: Some("RID-1".into())
            }
        );
        assert!(
            e.user_message()
                .starts_with("Amazon Error: Account 42 was not found")
        );

        // A plain 401 is a token problem (the caller refreshes), even on an account call.
        let e = map_error(
            401,
            &HeaderMap::new(),
            br#"{"code":"401","details":"Authentication failed"}"#,
            acct(42),
        );
        assert!(
            matches!(e, AmazonError::Rejected { status: 401, .. }),
            "{e:?}"
        );

        let e = map_error(
            403,
            &HeaderMap::new(),
            br#"{"message":"Forbidden","requestId":"B-RID"}"#,
            acct(7),
        );
        assert_eq!(
            e,
            AmazonError::AccountNotFound {
                advertiser_id: 7,
                status: 403,
                message: "Forbidden".into(),
                request_id: Some("B-RID".into())
            }
        );
        let e = map_error(404, &HeaderMap::new(), b"{}", acct(7));
        assert!(matches!(
            e,
            AmazonError::AccountNotFound { status: 404, .. }
        ));
        // A 404 naming another object (an audience) is not about the account.
        let e = map_error(
            404,
            &HeaderMap::new(),
            b"{}",
            Some(AccountCtx {
                advertiser_id: 7,
                not_found_is_account: false,
            }),
        );
        assert!(matches!(e, AmazonError::Rejected { status: 404, .. }));
        // Without account context a 403 is just rejected.
        assert!(matches!(
            map_error(403, &HeaderMap::new(), b"", None),
            AmazonError::Rejected { status: 403, .. }
        ));

        let e = map_error(
            413,
            &HeaderMap::new(),
            br#"{"requestId":"F8","error":{"httpStatusCode":"413","description":"Payload Too Large","errors":[{"errorType":"INPUT_TOO_LARGE","message":"The input payload exceeds 1MB limit."}]}}"#,
            acct(1),
        );
        assert_eq!(
            e,
            AmazonError::PayloadTooLarge {
                message: "Payload Too Large: The input payload exceeds 1MB limit.".into(),
                request_id: Some("F8".into())
            }
        );

        let e = map_error(429, &hm(&[("retry-after", "3")]), b"", acct(1));
        assert_eq!(
            e,
            AmazonError::Throttled {
                retry_after: Some(Duration::from_secs(3)),
                request_id: None
            }
        );
        let e = map_error(503, &HeaderMap::new(), b"Service Unavailable", None);
        assert_eq!(
            e,
            AmazonError::Server {
                status: 503,
                message: "Service Unavailable".into(),
                request_id: None
            }
        );
        let e = map_error(
            400,
            &HeaderMap::new(),
            br#"{"requestId":"F88","error":{"httpStatusCode":"400","description":"Bad Request","errors":[{"errorType":"INVALID_INPUT","message":"The input field 'name' cannot be updated","fieldName":"name"}]}}"#,
            acct(1),
        );
        assert_eq!(
            e,
            AmazonError::Rejected {
                status: 400,
                message: "Bad Request: The input field 'name' cannot be updated (field name)"
                    .into(),
                request_id: Some("F88".into())
            }
        );
        // HTML error pages are not copied into messages.
        let e = map_error(
            502,
            &HeaderMap::new(),
            b"<html><body>Bad gateway</body></html>",
            None,
        );
        assert_eq!(
            e,
            AmazonError::Server {
                status: 502,
                message: "HTTP 502".into(),
                request_id: None
            }
        );
    }

    /// Callers run these futures inside `Send` handlers and spawned tasks; this fails to compile
    /// if any of them stops being `Send`.
    #[allow(dead_code)]
    fn futures_are_send(c: AmazonClient, l: LoginRef, s: AccountScope) {
        fn spawnable<F: Future + Send + 'static>(_: F) {}
        spawnable(async move {
            let _ = c.list_profiles(&l).await;
            let _ = c.list_advertisers(&l, s.profile_id).await;
            let _ = c.create_audience(&l, s, &new_audience()).await;
            let _ = c.get_audience(&l, s, 1).await;
            let _ = c.patch_audiences(&l, s, Vec::new()).await;
            let _ = c.create_events(&l, s.advertiser_id, Vec::new(), 0).await;
            let _ = c.access_token(&l).await;
            let _ = c.exchange_code(l.region, "c", "r").await;
            let _ = c.delete_login(&l).await;
        });
    }

    fn new_audience() -> super::NewAudience {
        super::NewAudience {
            name: String::new(),
            description: String::new(),
            advertiser_id: 1,
            external_audience_id: String::new(),
            ttl: 0,
            data_source_country: Vec::new(),
            audience_fees: None,
        }
    }

    #[test]
    fn the_worst_case_of_a_call_counts_every_attempt_and_wait() {
        // 4 × 30 s + 3 × 30 s (Retry-After cap over the 20 s backoff cap).
        assert_eq!(
            RetryPolicy::default().worst_case(),
            Duration::from_secs(210)
        );
        let one = RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        };
        assert_eq!(one.worst_case(), Duration::from_secs(30));
    }

    #[test]
    fn long_messages_are_truncated_on_a_char_boundary() {
        let long = "é".repeat(600);
        let t = truncate(&long);
        assert!(t.len() <= 504 && t.ends_with('…'));
    }

    #[test]
    fn scopes_are_normalised_and_debug_hides_the_secret() {
        let aws_conf = aws_sdk_secretsmanager::Config::builder()
            .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
            .region(aws_sdk_secretsmanager::config::Region::new("us-east-1"))
            .build();
        let c = AmazonClient::new(
            reqwest::Client::new(),
            Endpoints::amazon(),
            LwaCredentials {
                client_id: "amzn1.application-oa2-client.x".into(),
                client_secret: "very-secret-value".into(),
            },
            SecretsStore::new(aws_sdk_secretsmanager::Client::from_conf(aws_conf)),
            "  advertising::audiences \n advertising::campaign_management ".into(),
        );
        assert_eq!(c.scopes(), DEFAULT_SCOPES);
        assert!(!format!("{c:?}").contains("very-secret-value"));
        let u = c.authorize_url(Region::EU, "https://h/cb", "s1");
        assert!(u.starts_with("https://eu.account.amazon.com/ap/oa?client_id=amzn1.application-oa2-client.x&scope=advertising%3A%3Aaudiences%20advertising%3A%3Acampaign_management&response_type=code&redirect_uri=https%3A%2F%2Fh%2Fcb&state=s1"), "{u}");
        assert!(!u.contains("very-secret-value"));
    }
}
