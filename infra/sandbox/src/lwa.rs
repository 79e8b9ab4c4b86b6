//! Login with Amazon: the consent page (`GET /ap/oa`, auto-approving a sandbox user) and the token
//! endpoint (`POST /auth/o2/token`, authorization_code and refresh_token grants).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;

use crate::http::{header_str, json_response};
use crate::state::{AuthCode, CODE_TTL, SEED_USER, Sandbox, random_token};

pub const SCOPES: [&str; 2] = ["advertising::audiences", "advertising::campaign_management"];

fn error_page(message: &str) -> Response {
    // Only our own fixed wording goes into the page: nothing from the request is echoed.
    let body = format!(
        "<!doctype html><html><head><title>Amazon sandbox: sign-in error</title></head>\
         <body><h1>We cannot process this request</h1><p>{message}</p></body></html>"
    );
    (StatusCode::BAD_REQUEST, Html(body)).into_response()
}

fn redirect(to: &str) -> Response {
    (
        StatusCode::FOUND,
        [
            (header::LOCATION, to.to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
    )
        .into_response()
}

/// `redirect_uri` with extra query parameters appended (keeping its own).
fn with_params(redirect_uri: &str, params: &[(&str, &str)]) -> Option<String> {
    let mut u = url::Url::parse(redirect_uri).ok()?;
    {
        let mut q = u.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
    }
    Some(u.to_string())
}

/// `GET /ap/oa`
pub async fn consent(
    State(sb): State<Sandbox>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let Some(client_id) = get("client_id") else {
        return error_page("The client_id parameter is missing.");
    };
    let Some(redirect_uri) = get("redirect_uri") else {
        return error_page("The redirect_uri parameter is missing.");
    };
    let user_id = get("sandbox_user").unwrap_or(SEED_USER).to_string();
    let mut g = sb.lock();
    let Some(client) = g.clients.get(client_id) else {
        return error_page("An unknown client_id was given.");
    };
    if !client.redirect_uris.is_empty() && !client.redirect_uris.iter().any(|u| u == redirect_uri) {
        return error_page("The redirect_uri is not allowed for this client.");
    }
    if url::Url::parse(redirect_uri).is_err() {
        return error_page("The redirect_uri is not an absolute URL.");
    }
    // From here errors go back to the (trusted) redirect URI, as OAuth 2 prescribes.
    let state = get("state");
    let fail = |error: &str, description: &str| {
        let mut p = vec![("error", error), ("error_description", description)];
        if let Some(s) = state {
            p.push(("state", s));
        }
        match with_params(redirect_uri, &p) {
            Some(u) => redirect(&u),
            None => error_page("The redirect_uri is not an absolute URL."),
        }
    };
    if get("response_type") != Some("code") {
        return fail("unsupported_response_type", "response_type must be code");
    }
    let Some(scope) = get("scope") else {
        return fail("invalid_scope", "An unknown scope was requested");
    };
    if scope.split_whitespace().next().is_none()
        || scope.split_whitespace().any(|s| !SCOPES.contains(&s))
    {
        return fail("invalid_scope", "An unknown scope was requested");
    }
    let Some(state) = state else {
        return fail("invalid_request", "The state parameter is missing");
    };
    if !g.users.contains_key(&user_id) {
        drop(g);
        return error_page("The sandbox_user does not exist.");
    }
    // PKCE (RFC 7636): only S256 is accepted, as adsync sends it.
    let code_challenge = match (get("code_challenge"), get("code_challenge_method")) {
        (None, None) => None,
        (Some(c), Some("S256")) if c.len() == 43 && c.bytes().all(is_b64url) => Some(c.to_string()),
        (Some(_), Some("S256")) => {
            return fail("invalid_request", "The code_challenge is malformed");
        }
        _ => {
            return fail(
                "invalid_request",
                "code_challenge_method must be S256 and come with a code_challenge",
            );
        }
    };
    if get("sandbox_deny") == Some("1") {
        return fail("access_denied", "The user denied the request");
    }
    let code = random_token(20);
    let issued = g.now();
    g.codes.insert(
        code.clone(),
        AuthCode {
            client_id: client_id.to_string(),
            redirect_uri: redirect_uri.to_string(),
            code_challenge,
            user_id,
            issued,
            used: false,
        },
    );
    drop(g);
    match with_params(
        redirect_uri,
        &[("code", &code), ("scope", scope), ("state", state)],
    ) {
        Some(u) => redirect(&u),
        None => error_page("The redirect_uri is not an absolute URL."),
    }
}

fn token_error(status: StatusCode, error: &str, description: &str) -> Response {
    json_response(
        status,
        json!({"error": error, "error_description": description}),
    )
}

/// `POST /auth/o2/token`
pub async fn token(State(sb): State<Sandbox>, headers: HeaderMap, body: Bytes) -> Response {
    if headers.contains_key(header::AUTHORIZATION) {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The Authorization header is not allowed on this endpoint",
        );
    }
    let form_ct = header_str(&headers, "content-type").is_some_and(|ct| {
        ct.split(';').next().is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
    });
    if !form_ct || std::str::from_utf8(&body).is_err() {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Malformed request",
        );
    }
    let mut form: HashMap<String, String> = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(&body) {
        if form.insert(k.into_owned(), v.into_owned()).is_some() {
            return token_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Malformed request",
            );
        }
    }
    let get = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let grant_type = get("grant_type");
    if !matches!(
        grant_type,
        Some("authorization_code") | Some("refresh_token")
    ) {
        return token_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "The grant_type is missing or not supported",
        );
    }
    let mut g = sb.lock();
    let client_ok = match (get("client_id"), get("client_secret")) {
        (Some(id), Some(secret)) => g.clients.get(id).is_some_and(|c| c.client_secret == secret),
        _ => false,
    };
    if !client_ok {
        return token_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed",
        );
    }
    let client_id = get("client_id").unwrap_or_default().to_string();
    let ttl = g.config.access_token_ttl_secs;
    if grant_type == Some("authorization_code") {
        let (Some(code), Some(redirect_uri)) = (get("code"), get("redirect_uri")) else {
            return token_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "The code and redirect_uri parameters are required",
            );
        };
        let now = g.now();
        let verifier = get("code_verifier");
        let user_id = match g.codes.get_mut(code) {
            Some(c)
                if !c.used
                    && now.duration_since(c.issued) < CODE_TTL
                    && c.client_id == client_id
                    && c.redirect_uri == redirect_uri
                    && pkce_ok(c.code_challenge.as_deref(), verifier) =>
            {
                c.used = true;
                c.user_id.clone()
            }
            _ => {
                return token_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "The request has an invalid grant parameter : code",
                );
            }
        };
        let access = g.issue_access_token(&client_id, &user_id);
        let refresh = g.issue_refresh_token(&client_id, &user_id);
        drop(g);
        return grant(&access, &refresh, ttl);
    }
    let Some(refresh) = get("refresh_token") else {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The refresh_token parameter is required",
        );
    };
    let rotate = g
        .clients
        .get(&client_id)
        .is_some_and(|c| c.rotate_refresh_tokens);
    let user_id = match g.refresh_tokens.get_mut(refresh) {
        Some(r) if !r.revoked && r.client_id == client_id => {
            // Rotation: the token used is spent; a new one comes with the answer.
            r.revoked |= rotate;
            r.user_id.clone()
        }
        _ => {
            return token_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "The request has an invalid grant parameter : refresh_token. User may have revoked or didn't grant the permission.",
            );
        }
    };
    let access = g.issue_access_token(&client_id, &user_id);
    let next = if rotate {
        g.issue_refresh_token(&client_id, &user_id)
    } else {
        refresh.to_string()
    };
    drop(g);
    grant(&access, &next, ttl)
}

fn grant(access: &str, refresh: &str, ttl: u64) -> Response {
    let mut resp = json_response(
        StatusCode::OK,
        json!({"access_token": access, "token_type": "bearer", "expires_in": ttl, "refresh_token": refresh}),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    resp
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// RFC 7636 §4.6: a code issued with a challenge needs the verifier whose S256 is that challenge
/// (43–128 unreserved characters); a code issued without one must not be given a verifier.
fn pkce_ok(challenge: Option<&str>, verifier: Option<&str>) -> bool {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    match (challenge, verifier) {
        (None, None) => true,
        (Some(c), Some(v)) => {
            (43..=128).contains(&v.len())
                && v.bytes().all(|b| is_b64url(b) || b == b'.' || b == b'~')
                && base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(Sha256::digest(v.as_bytes()))
                    == c
        }
        _ => false,
    }
}

#[cfg(test)]
mod pkce_tests {
    #[test]
    fn pkce_check_follows_rfc7636() {
        let v = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let c = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(super::pkce_ok(Some(c), Some(v)));
        assert!(!super::pkce_ok(Some(c), None), "the verifier is required");
        assert!(!super::pkce_ok(Some(c), Some(&v.replace('d', "e"))));
        assert!(!super::pkce_ok(None, Some(v)), "no challenge, no verifier");
        assert!(super::pkce_ok(None, None));
    }
}
