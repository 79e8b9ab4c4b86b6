//! Login with Amazon (OAuth 2 authorization code grant): the consent URL, the code exchange and
//! the refresh, per docs/amazon-contract.md. Token requests are form-encoded POSTs with
//! `client_id` and `client_secret` in the body and no `Authorization` header.
//!
//! This module does one attempt per call; [`super::AmazonClient`] wraps it with the retry policy
//! and owns the token cache.

use super::error::AmazonError;
use super::secret::SecretString;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The LwA client (security profile) credentials, as stored in `LWA_CREDENTIALS_SECRET`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LwaCredentials {
    pub client_id: String,
    pub client_secret: SecretString,
}

/// A token endpoint answer. `Debug` shows `[redacted]` for the tokens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenGrant {
    pub access_token: SecretString,
    #[serde(default)]
    pub refresh_token: Option<SecretString>,
    #[serde(default = "default_expires_in")]
    pub expires_in: u64,
}

fn default_expires_in() -> u64 {
    3600
}

/// A token endpoint error (OAuth `error` + `error_description`, both Amazon's words; they never
/// echo the code or the secret).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LwaError {
    /// The code or refresh token is invalid, expired, already used or revoked.
    #[error("invalid_grant: {description}")]
    InvalidGrant { description: String },
    /// The client id or secret is wrong.
    #[error("invalid_client: {description}")]
    InvalidClient { description: String },
    #[error("invalid_request: {description}")]
    InvalidRequest { description: String },
    #[error("{error} (HTTP {status}): {description}")]
    Other {
        error: String,
        description: String,
        status: u16,
    },
    #[error("transport: {0}")]
    Transport(String),
}

/// The OAuth error body.
#[derive(Deserialize)]
struct OAuthErrorBody {
    error: Option<String>,
    error_description: Option<String>,
}

/// The consent-page URL the user's browser is sent to. Every parameter is percent-encoded
/// (spaces as `%20`, so the scope list survives any decoder).
pub fn authorize_url(
    consent_url: &str,
    client_id: &str,
    scopes: &str,
    redirect_uri: &str,
    state: &str,
) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("client_id", client_id)
        .append_pair("scope", scopes)
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("state", state)
        .finish()
        // form_urlencoded writes a space as `+` and a literal `+` as `%2B`, so this is exact.
        .replace('+', "%20");
    let sep = if consent_url.contains('?') { '&' } else { '?' };
    format!("{consent_url}{sep}{query}")
}

/// The grant being exchanged.
pub(crate) enum Grant<'a> {
    Code {
        code: &'a str,
        redirect_uri: &'a str,
        /// The PKCE verifier, when the consent carried its challenge.
        code_verifier: Option<&'a str>,
    },
    Refresh {
        refresh_token: &'a str,
    },
}

/// One POST to the token endpoint. Transient failures (transport, timeouts, 429, 5xx) come back
/// as the retryable [`AmazonError`] variants; OAuth errors as [`AmazonError::Lwa`].
pub(crate) async fn token_request(
    http: &reqwest::Client,
    token_url: &str,
    creds: &LwaCredentials,
    grant: &Grant<'_>,
    timeout: Duration,
) -> Result<TokenGrant, AmazonError> {
    let mut form: Vec<(&str, &str)> = Vec::with_capacity(6);
    match grant {
        Grant::Code {
            code,
            redirect_uri,
            code_verifier,
        } => {
            form.push(("grant_type", "authorization_code"));
            form.push(("code", code));
            form.push(("redirect_uri", redirect_uri));
            if let Some(v) = code_verifier {
                form.push(("code_verifier", v));
            }
        }
        Grant::Refresh { refresh_token } => {
            form.push(("grant_type", "refresh_token"));
            form.push(("refresh_token", refresh_token));
        }
    }
    form.push(("client_id", &creds.client_id));
    form.push(("client_secret", creds.client_secret.expose()));

    let resp = http
        .post(token_url)
        .timeout(timeout)
        .header(reqwest::header::ACCEPT, "application/json")
        .form(&form)
        .send()
        .await
        .map_err(super::client::transport_error)?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.map_err(super::client::transport_error)?;
    if (200..300).contains(&status) {
        return serde_json::from_slice::<TokenGrant>(&body).map_err(|e| {
            // The serde error names the field, never the value.
            AmazonError::Lwa(LwaError::Other {
                error: "invalid_response".into(),
                description: format!("unexpected token endpoint answer: {e}"),
                status,
            })
        });
    }
    Err(map_token_error(status, &headers, &body))
}

/// Maps a non-2xx token endpoint answer.
pub(crate) fn map_token_error(
    status: u16,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
) -> AmazonError {
    if status == 429 || status >= 500 {
        return super::client::map_status(status, headers, body, None);
    }
    let parsed: Option<OAuthErrorBody> = serde_json::from_slice(body).ok();
    let (error, description) = match parsed {
        Some(b) => (
            b.error.unwrap_or_default(),
            b.error_description.unwrap_or_default(),
        ),
        None => (String::new(), String::new()),
    };
    let description = super::client::truncate(&description);
    AmazonError::Lwa(match error.as_str() {
        "invalid_grant" => LwaError::InvalidGrant { description },
        "invalid_client" => LwaError::InvalidClient { description },
        "invalid_request" => LwaError::InvalidRequest { description },
        _ => LwaError::Other {
            error: if error.is_empty() {
                "unknown_error".into()
            } else {
                super::client::truncate(&error)
            },
            description,
            status,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorize_url_encodes_every_parameter() {
        let u = authorize_url(
            "https://www.amazon.com/ap/oa",
            "amzn1.application-oa2-client.abc",
            "advertising::audiences advertising::campaign_management",
            "https://x.example/cb?a=1&b=2",
            "st+at/e=",
        );
        assert_eq!(
            u,
            "https://www.amazon.com/ap/oa?client_id=amzn1.application-oa2-client.abc\
             &scope=advertising%3A%3Aaudiences%20advertising%3A%3Acampaign_management\
             &response_type=code\
             &redirect_uri=https%3A%2F%2Fx.example%2Fcb%3Fa%3D1%26b%3D2\
             &state=st%2Bat%2Fe%3D"
        );
        // Round-trips through a standard parser.
        let parsed = url::Url::parse(&u).unwrap();
        let q: std::collections::HashMap<_, _> = parsed.query_pairs().into_owned().collect();
        assert_eq!(
            q["scope"],
            "advertising::audiences advertising::campaign_management"
        );
        assert_eq!(q["redirect_uri"], "https://x.example/cb?a=1&b=2");
        assert_eq!(q["state"], "st+at/e=");
        assert_eq!(q["response_type"], "code");
    }

    #[test]
    fn authorize_url_appends_to_an_existing_query() {
        let u = authorize_url("http://127.0.0.1:9400/ap/oa?x=1", "c", "s", "r", "t");
        assert!(
            u.starts_with("http://127.0.0.1:9400/ap/oa?x=1&client_id=c&"),
            "{u}"
        );
    }

    fn err(status: u16, body: &str) -> AmazonError {
        map_token_error(status, &reqwest::header::HeaderMap::new(), body.as_bytes())
    }

    #[test]
    fn token_errors_map_to_lwa_errors() {
        assert_eq!(
            err(
                400,
                r#"{"error":"invalid_grant","error_description":"The request has an invalid grant parameter : code"}"#
            ),
            AmazonError::Lwa(LwaError::InvalidGrant {
                description: "The request has an invalid grant parameter : code".into()
            })
        );
        assert_eq!(
            err(
                401,
                r#"{"error":"invalid_client","error_description":"Client authentication failed"}"#
            ),
            AmazonError::Lwa(LwaError::InvalidClient {
                description: "Client authentication failed".into()
            })
        );
        assert_eq!(
            err(
                400,
                r#"{"error":"invalid_request","error_description":"missing redirect_uri"}"#
            ),
            AmazonError::Lwa(LwaError::InvalidRequest {
                description: "missing redirect_uri".into()
            })
        );
        assert_eq!(
            err(400, r#"{"error":"unsupported_grant_type"}"#),
            AmazonError::Lwa(LwaError::Other {
                error: "unsupported_grant_type".into(),
                description: String::new(),
                status: 400
            })
        );
        assert!(matches!(
            err(400, "<html>"),
            AmazonError::Lwa(LwaError::Other { status: 400, .. })
        ));
        assert!(matches!(
            err(503, "{}"),
            AmazonError::Server { status: 503, .. }
        ));
        assert!(matches!(err(429, "{}"), AmazonError::Throttled { .. }));
    }

    #[test]
    fn token_grant_debug_is_redacted() {
        let g: TokenGrant = serde_json::from_str(
            r#"{"access_token":"Atza|AAA","refresh_token":"Atzr|BBB","token_type":"bearer","expires_in":3600}"#,
        )
        .unwrap();
        let d = format!("{g:?}");
        assert!(!d.contains("Atza") && !d.contains("Atzr"), "{d}");
        assert_eq!(g.expires_in, 3600);
        let c = LwaCredentials {
            client_id: "id".into(),
            client_secret: "s3cr3t".into(),
        };
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }
}
