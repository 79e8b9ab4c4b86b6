//! Amazon's answers to typed errors: transport failures, `Retry-After`, request ids, the several
//! error-body shapes, and the status → [`AmazonError`] mapping (with the account context that
//! turns 401/403/404 into "account not found").

use super::request::AccountCtx;
use crate::amazon::error::AmazonError;
use reqwest::header::HeaderMap;
use std::time::Duration;

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

pub(super) fn header_request_id(headers: &HeaderMap) -> Option<String> {
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
