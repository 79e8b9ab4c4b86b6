//! Transport-neutral HTTP request/response types and the JSON error shape.
//!
//! [`HttpRequest`] is parsed from the API Gateway HTTP API payload 2.0 (the Lambda function-URL
//! payload is the same shape, which is what `cargo lambda watch` sends), so routing works the
//! same behind API Gateway and locally. Handlers return [`HttpResponse`]; expected failures are
//! responses, never `Err`.

pub mod accounts;
pub mod auth;
pub mod error;
pub mod html;
pub mod router;
pub mod scopes;

pub use error::{ApiError, ApiResult, Kind};

use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An incoming HTTP request.
#[derive(Debug, Clone, Default)]
pub struct HttpRequest {
    pub method: String,
    /// The raw path, e.g. `/accounts/123/conversions`.
    pub path: String,
    pub raw_query: String,
    /// Header names lower-cased.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub request_id: String,
    pub source_ip: Option<String>,
    /// API Gateway's `requestContext.domainName`: the host the API was called on, set by API
    /// Gateway (not a client header).
    pub domain_name: Option<String>,
}

impl HttpRequest {
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.to_ascii_uppercase(),
            path: path.to_string(),
            ..Default::default()
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .insert(name.to_ascii_lowercase(), value.to_string());
        self
    }

    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    pub fn with_query(mut self, q: &str) -> Self {
        self.raw_query = q.to_string();
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// Query parameters, decoded. Repeated names keep the first value.
    pub fn query(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (k, v) in url::form_urlencoded::parse(self.raw_query.as_bytes()) {
            out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
        out
    }

    /// The path split into non-empty segments.
    pub fn segments(&self) -> Vec<&str> {
        self.path.split('/').filter(|s| !s.is_empty()).collect()
    }

    /// The media type of the body (`application/json`, …), lower-cased, without parameters.
    pub fn content_type(&self) -> Option<String> {
        self.header("content-type").map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
    }

    /// Parses the API Gateway HTTP API (payload 2.0) / function-URL event.
    pub fn from_apigw_v2(event: &serde_json::Value) -> Result<Self, String> {
        let ev = ApiGwV2Request::deserialize(event)
            .map_err(|e| format!("not an HTTP API event: {e}"))?;
        Self::from_event(ev)
    }

    /// The same from the event's JSON text, as Lambda hands it over. A body that is not UTF-8
    /// survives either way it can come: base64-encoded (`isBase64Encoded`), or as a JSON string
    /// with lone UTF-16 surrogate escapes (`"\udcff"`, which no Rust string can hold: the body is
    /// read as bytes, WTF-8). The route then answers 400 naming the problem, instead of the event
    /// failing to deserialise (a 500 before any adsync code runs).
    pub fn from_apigw_v2_json(event: &str) -> Result<Self, String> {
        let ev: ApiGwV2Request =
            serde_json::from_str(event).map_err(|e| format!("not an HTTP API event: {e}"))?;
        Self::from_event(ev)
    }

    fn from_event(ev: ApiGwV2Request) -> Result<Self, String> {
        let mut headers = BTreeMap::new();
        for (k, v) in ev.headers {
            headers.insert(k.to_ascii_lowercase(), v);
        }
        if !ev.cookies.is_empty() {
            headers.insert("cookie".into(), ev.cookies.join("; "));
        }
        let body = match ev.body {
            None => Vec::new(),
            Some(RawBody(b)) if ev.is_base64_encoded => base64::engine::general_purpose::STANDARD
                .decode(&b)
                .map_err(|e| format!("body is not valid base64: {e}"))?,
            Some(RawBody(b)) => b,
        };
        Ok(Self {
            method: ev.request_context.http.method.to_ascii_uppercase(),
            path: ev
                .raw_path
                .unwrap_or(ev.request_context.http.path.unwrap_or_default()),
            raw_query: ev.raw_query_string.unwrap_or_default(),
            headers,
            body,
            request_id: ev.request_context.request_id.unwrap_or_default(),
            source_ip: ev.request_context.http.source_ip,
            domain_name: ev.request_context.domain_name,
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiGwV2Request {
    raw_path: Option<String>,
    raw_query_string: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    cookies: Vec<String>,
    body: Option<RawBody>,
    #[serde(default)]
    is_base64_encoded: bool,
    request_context: ApiGwV2Context,
}

/// A request body read as bytes, so that a string that is not UTF-8 (lone surrogate escapes)
/// is kept rather than refused.
struct RawBody(Vec<u8>);

impl<'de> Deserialize<'de> for RawBody {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RawBody;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E>(self, v: &str) -> Result<RawBody, E> {
                Ok(RawBody(v.as_bytes().to_vec()))
            }
            fn visit_string<E>(self, v: String) -> Result<RawBody, E> {
                Ok(RawBody(v.into_bytes()))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<RawBody, E> {
                Ok(RawBody(v.to_vec()))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<RawBody, E> {
                Ok(RawBody(v))
            }
        }
        d.deserialize_bytes(V)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiGwV2Context {
    request_id: Option<String>,
    domain_name: Option<String>,
    http: ApiGwV2Http,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiGwV2Http {
    method: String,
    path: Option<String>,
    source_ip: Option<String>,
}

/// An HTTP response.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl HttpResponse {
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: BTreeMap::new(),
            body: String::new(),
        }
    }

    /// A JSON response.
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Self {
        let body = serde_json::to_string(value).unwrap_or_else(|_| "{}".into());
        let mut r = Self::new(status);
        r.headers
            .insert("content-type".into(), "application/json".into());
        r.headers.insert("cache-control".into(), "no-store".into());
        r.body = body;
        r
    }

    /// The JSON error shape: `{"error":{"code","message","field"?}}`.
    pub fn error(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self::json(status, &ErrorBody::new(code, message, None))
    }

    /// The JSON error shape naming the field at fault.
    pub fn field_error(status: u16, code: &str, field: &str, message: impl Into<String>) -> Self {
        Self::json(
            status,
            &ErrorBody::new(code, message, Some(field.to_string())),
        )
    }

    pub fn not_found() -> Self {
        Self::error(404, "not_found", "no such route")
    }

    pub fn method_not_allowed(allowed: &str) -> Self {
        let mut r = Self::error(
            405,
            "method_not_allowed",
            format!("allowed methods: {allowed}"),
        );
        r.headers.insert("allow".into(), allowed.into());
        r
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .insert(name.to_ascii_lowercase(), value.to_string());
        self
    }

    /// The API Gateway HTTP API (payload 2.0) response document.
    /// A `set-cookie` header goes into payload 2.0's `cookies` list, where API Gateway expects it.
    pub fn to_apigw_v2(&self) -> serde_json::Value {
        let mut headers = self.headers.clone();
        let cookies: Vec<String> = headers.remove("set-cookie").into_iter().collect();
        serde_json::json!({
            "statusCode": self.status,
            "headers": headers,
            "body": self.body,
            "isBase64Encoded": false,
            // `cargo lambda watch` rejects a function-URL answer without this field.
            "cookies": cookies,
        })
    }

    /// Parses the body as JSON (handy in tests).
    pub fn json_body(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// `{"error":{"code","message","field"?}}`
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ErrorBody {
    pub fn new(code: &str, message: impl Into<String>, field: Option<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.to_string(),
                message: message.into(),
                field,
            },
        }
    }
}

/// Parses a JSON body, answering 415 for a wrong content type, 413 above `max_bytes` and 400 for
/// malformed JSON (with line and column).
pub fn parse_json_body<T: serde::de::DeserializeOwned>(
    req: &HttpRequest,
    max_bytes: usize,
) -> Result<T, HttpResponse> {
    match req.content_type().as_deref() {
        Some("application/json") => {}
        Some(other) if other.ends_with("+json") => {}
        other => {
            return Err(HttpResponse::error(
                415,
                "unsupported_media_type",
                format!(
                    "Content-Type must be application/json (got {})",
                    other.unwrap_or("none")
                ),
            ));
        }
    }
    if req.body.len() > max_bytes {
        return Err(HttpResponse::error(
            413,
            "payload_too_large",
            format!(
                "the body is {} bytes; the limit is {max_bytes}",
                req.body.len()
            ),
        ));
    }
    if req.body.is_empty() {
        return Err(HttpResponse::error(
            400,
            "invalid_json",
            "the body is empty",
        ));
    }
    if let Err(e) = std::str::from_utf8(&req.body) {
        return Err(not_utf8(&e));
    }
    serde_json::from_slice(&req.body)
        .map_err(|e| HttpResponse::error(400, "invalid_json", format!("malformed JSON: {e}")))
}

/// 400 for a body that is not UTF-8 (JSON must be), saying where the first bad byte is.
pub fn not_utf8(e: &std::str::Utf8Error) -> HttpResponse {
    HttpResponse::error(
        400,
        "invalid_json",
        format!(
            "the body is not UTF-8 (invalid byte at offset {}); JSON must be UTF-8",
            e.valid_up_to()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_function_url_event_with_base64_body() {
        let ev = serde_json::json!({
            "version": "2.0", "routeKey": "$default", "rawPath": "/accounts/1/conversions",
            "rawQueryString": "a=1&b=x%20y", "headers": {"Content-Type": "application/json"},
            "body": "eyJ4IjoxfQ==", "isBase64Encoded": true,
            "requestContext": {"requestId": "r1", "http": {"method": "post", "path": "/accounts/1/conversions", "sourceIp": "127.0.0.1"}}
        });
        let req = HttpRequest::from_apigw_v2(&ev).unwrap();
        assert_eq!(req.method, "POST");
        assert_eq!(req.segments(), ["accounts", "1", "conversions"]);
        assert_eq!(req.body, br#"{"x":1}"#);
        assert_eq!(req.query()["b"], "x y");
        assert_eq!(req.content_type().as_deref(), Some("application/json"));
    }

    #[test]
    fn json_body_errors_say_what_is_wrong() {
        let req = HttpRequest::new("POST", "/x").with_body("{}");
        let r = parse_json_body::<serde_json::Value>(&req, 10).unwrap_err();
        assert_eq!(r.status, 415);
        let req = req.with_header("content-type", "application/json; charset=utf-8");
        assert!(parse_json_body::<serde_json::Value>(&req, 10).is_ok());
        let big = req.clone().with_body(vec![b' '; 11]);
        assert_eq!(
            parse_json_body::<serde_json::Value>(&big, 10)
                .unwrap_err()
                .status,
            413
        );
        let bad = req.with_body("{\"a\":");
        let r = parse_json_body::<serde_json::Value>(&bad, 10).unwrap_err();
        assert_eq!(r.status, 400);
        assert!(r.body.contains("malformed JSON"), "{}", r.body);
    }
}
