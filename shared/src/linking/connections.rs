//! `POST /connections`: a pending connection and its consent link.

use super::*;

#[derive(Deserialize)]
struct CreateConnectionBody {
    region: Option<serde_json::Value>,
}

impl Linking {
    /// The redirect URI of a new connection (see [`binding::redirect_uri_for`]).
    pub(super) fn redirect_uri_for(&self, req: &HttpRequest) -> Result<String, HttpResponse> {
        binding::redirect_uri_for(&self.config.redirect_uri, req)
            .map_err(|m| HttpResponse::error(500, "configuration", m))
    }

    /// Starts a linking attempt: a pending connection and a single-use state for `region`,
    /// with the configured redirect URI.
    pub async fn create_connection(&self, region: Region) -> Result<NewConnection, HttpResponse> {
        let redirect_uri = self.config.redirect_uri.clone();
        self.create_connection_with(region, &redirect_uri).await
    }

    pub(super) async fn create_connection_with(
        &self,
        region: Region,
        redirect_uri: &str,
    ) -> Result<NewConnection, HttpResponse> {
        let connection_id = uuid::Uuid::new_v4().simple().to_string();
        let unavailable = || {
            HttpResponse::error(
                503,
                "unavailable",
                "the server's random generator did not answer; try again",
            )
        };
        let state = random_token().map_err(|_| unavailable())?;
        let verifier = match self.pkce {
            true => Some(crate::amazon::pkce::new_verifier().map_err(|_| unavailable())?),
            false => None,
        };
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
            return Err(HttpResponse::error(
                503,
                "store_unavailable",
                "adsync could not store the connection; try again",
            ));
        }
        tracing::info!(connection_id = %connection_id, region = %region, pkce = self.pkce, "connection created");
        let mut authorize_url = self.amazon.authorize_url(region, redirect_uri, &state);
        if let Some(v) = &verifier {
            authorize_url = crate::amazon::pkce::with_challenge(&authorize_url, v);
        }
        Ok(NewConnection {
            authorize_url,
            connection_id,
            expires_at: rfc3339(expires),
        })
    }

    pub(super) async fn post_connections(&self, req: &HttpRequest) -> HttpResponse {
        let body: CreateConnectionBody = match crate::http::parse_json_body(req, 4096) {
            Ok(b) => b,
            Err(r) => return r,
        };
        let allowed = Region::ALL
            .map(|r| format!("\"{}\"", r.as_str()))
            .join(", ");
        let region = match body.region {
            None | Some(serde_json::Value::Null) => {
                return HttpResponse::field_error(
                    400,
                    "invalid_field",
                    "region",
                    format!("region is required; allowed values: {allowed}"),
                );
            }
            Some(serde_json::Value::String(s)) => match Region::parse(&s) {
                Some(r) => r,
                None => {
                    return HttpResponse::field_error(
                        400,
                        "invalid_field",
                        "region",
                        format!("unknown region; allowed values: {allowed}"),
                    );
                }
            },
            Some(_) => {
                return HttpResponse::field_error(
                    400,
                    "invalid_field",
                    "region",
                    format!("region must be a string; allowed values: {allowed}"),
                );
            }
        };
        let redirect_uri = match self.redirect_uri_for(req) {
            Ok(u) => u,
            Err(r) => return r,
        };
        match self.create_connection_with(region, &redirect_uri).await {
            Ok(c) => HttpResponse::json(201, &c),
            Err(r) => r,
        }
    }
}
