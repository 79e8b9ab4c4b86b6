//! `POST /connections`: a pending connection and its consent link.

use super::{Linking, NewConnection, STATE_TTL, binding, now_secs, random_token, rfc3339};
use crate::amazon::Region;
use crate::http::error::{ApiError, ApiResult, respond};
use crate::http::{HttpRequest, HttpResponse, Kind};
use serde::Deserialize;

#[derive(Deserialize)]
struct CreateConnectionBody {
    region: Option<serde_json::Value>,
}

impl Linking {
    /// The redirect URI of a new connection (see [`binding::redirect_uri_for`]).
    pub(super) fn redirect_uri_for(&self, req: &HttpRequest) -> ApiResult<String> {
        binding::redirect_uri_for(&self.config.redirect_uri, req)
            .map_err(|m| ApiError::new(Kind::Internal, "configuration", m))
    }

    /// Starts a linking attempt: a pending connection and a single-use state for `region`,
    /// with the configured redirect URI.
    pub async fn create_connection(&self, region: Region) -> ApiResult<NewConnection> {
        let redirect_uri = self.config.redirect_uri.clone();
        self.create_connection_with(region, &redirect_uri).await
    }

    pub(super) async fn create_connection_with(
        &self,
        region: Region,
        redirect_uri: &str,
    ) -> ApiResult<NewConnection> {
        let connection_id = uuid::Uuid::new_v4().simple().to_string();
        let unavailable = || {
            ApiError::unavailable(
                "unavailable",
                "the server's random generator did not answer; try again",
            )
        };
        let state = random_token().map_err(|_| unavailable())?;
        let verifier = match self.pkce {
            true => Some(crate::amazon::pkce::new_verifier().map_err(|_| unavailable())?),
            false => None,
        };
        // The consent URL first: it needs the LwA client id (read on first use), and a
        // connection is only stored when its link can be answered.
        let mut authorize_url = self
            .amazon
            .authorize_url(region, redirect_uri, &state)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "no consent URL: the LwA client credentials");
                ApiError::unavailable(
                    "store_unavailable",
                    "adsync could not read its Login with Amazon client credentials; try again",
                )
            })?;
        if let Some(v) = &verifier {
            authorize_url = crate::amazon::pkce::with_challenge(&authorize_url, v);
        }
        let expires = now_secs() + STATE_TTL.as_secs() as i64;
        // The binding first: a connection never exists without its redirect URI and verifier.
        let stored = self
            .bindings
            .put(&connection_id, redirect_uri, verifier.as_deref(), expires)
            .await;
        let stored = match stored {
            Ok(()) => {
                self.accounts
                    .create_connection(&connection_id, region, &state, expires, expires)
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = stored {
            tracing::error!(error = %e, "could not store the new connection");
            return Err(ApiError::unavailable(
                "store_unavailable",
                "adsync could not store the connection; try again",
            ));
        }
        tracing::info!(connection_id = %connection_id, region = %region, pkce = self.pkce, "connection created");
        Ok(NewConnection {
            authorize_url,
            connection_id,
            expires_at: rfc3339(expires),
        })
    }

    pub(super) async fn post_connections(&self, req: &HttpRequest) -> HttpResponse {
        let body: CreateConnectionBody = match crate::http::parse_json_body(req, 4096) {
            Ok(b) => b,
            Err(e) => return e.into(),
        };
        respond(self.connect(req, body).await)
    }

    async fn connect(
        &self,
        req: &HttpRequest,
        body: CreateConnectionBody,
    ) -> ApiResult<HttpResponse> {
        let region = parse_region(body.region)?;
        let redirect_uri = self.redirect_uri_for(req)?;
        let c = self.create_connection_with(region, &redirect_uri).await?;
        Ok(HttpResponse::json(201, &c))
    }
}

/// The `region` field: one of [`Region::ALL`], named in every error.
fn parse_region(region: Option<serde_json::Value>) -> ApiResult<Region> {
    let allowed = Region::ALL
        .map(|r| format!("\"{}\"", r.as_str()))
        .join(", ");
    let invalid = |what: &str| {
        ApiError::new(
            Kind::BadRequest,
            "invalid_field",
            format!("{what}; allowed values: {allowed}"),
        )
        .at("region")
    };
    match region {
        None | Some(serde_json::Value::Null) => Err(invalid("region is required")),
        Some(serde_json::Value::String(s)) => {
            Region::parse(&s).ok_or_else(|| invalid("unknown region"))
        }
        Some(_) => Err(invalid("region must be a string")),
    }
}
