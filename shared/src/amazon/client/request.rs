//! One Ads API call: its description ([`ApiRequest`]), the token and the one refresh after a 401,
//! the client-side rate limit, the contract's headers, and the 2xx answer ([`ApiResponse`]).

use super::AmazonClient;
use super::mapping::{header_request_id, map_error, transport_error};
use crate::amazon::error::AmazonError;
use crate::amazon::ratelimit::{Limit, spacer_for};
use crate::amazon::region::Region;
use crate::amazon::tokens::LoginRef;
use bytes::Bytes;
use reqwest::header::CONTENT_TYPE;

impl AmazonClient {
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
        let client_id = self.client_id().await?;
        let spacer = req.limit.map(|l| spacer_for(client_id, l));
        let attempt = || async {
            if let Some(s) = &spacer {
                s.wait().await;
            }
            self.attempt(&url, req, token, client_id).await
        };
        self.retrying(attempt, req.method.as_str(), &req.path).await
    }

    async fn attempt(
        &self,
        url: &str,
        req: &ApiRequest,
        token: &str,
        client_id: &str,
    ) -> Result<ApiResponse, AmazonError> {
        let timeout = self.attempt_timeout()?;
        let mut rb = self
            .inner
            .http
            .get()
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
