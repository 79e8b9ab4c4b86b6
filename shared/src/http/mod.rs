//! Transport-neutral HTTP request/response types and the JSON error shape.
//!
//! [`HttpRequest`] is parsed from the API Gateway HTTP API payload 2.0 (the Lambda function-URL
//! payload is the same shape, which is what `cargo lambda watch` sends), so routing works the
//! same behind API Gateway and locally; [`HttpResponse::to_apigw_v2`] writes the payload 2.0
//! answer. Both use `aws_lambda_events`' types, except for the request body (read as bytes, see
//! `ApiGwV2Event`). Handlers return [`HttpResponse`]; expected failures are
//! responses, never `Err`.

pub mod accounts;
pub mod auth;
pub mod error;
pub mod html;
pub mod router;
pub mod scopes;

pub use error::{ApiError, ApiResult, Kind};

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::{HeaderMap, HeaderName, HeaderValue};
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
        let ev =
            ApiGwV2Event::deserialize(event).map_err(|e| format!("not an HTTP API event: {e}"))?;
        Self::from_event(ev)
    }

    /// The same from the event's JSON text, as Lambda hands it over. A body that is not UTF-8
    /// survives either way it can come: base64-encoded (`isBase64Encoded`), or as a JSON string
    /// with lone UTF-16 surrogate escapes (`"\udcff"`, which no Rust string can hold: the body is
    /// read as bytes, WTF-8). The route then answers 400 naming the problem, instead of the event
    /// failing to deserialise (a 500 before any adsync code runs).
    pub fn from_apigw_v2_json(event: &str) -> Result<Self, String> {
        let ev: ApiGwV2Event =
            serde_json::from_str(event).map_err(|e| format!("not an HTTP API event: {e}"))?;
        Self::from_event(ev)
    }

    fn from_event(ev: ApiGwV2Event) -> Result<Self, String> {
        let ApiGwV2Event { event, body } = ev;
        let mut headers = BTreeMap::new();
        for (name, value) in &event.headers {
            // Header values are kept as sent (bytes beyond ASCII included).
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            headers
                .entry(name.as_str().to_string())
                .and_modify(|v: &mut String| {
                    v.push(',');
                    v.push_str(&value)
                })
                .or_insert(value);
        }
        if let Some(cookies) = event.cookies.filter(|c| !c.is_empty()) {
            headers.insert("cookie".into(), cookies.join("; "));
        }
        let body = match body {
            None => Vec::new(),
            Some(RawBody(b)) if event.is_base64_encoded => {
                base64::engine::general_purpose::STANDARD
                    .decode(&b)
                    .map_err(|e| format!("body is not valid base64: {e}"))?
            }
            Some(RawBody(b)) => b,
        };
        let context = event.request_context;
        Ok(Self {
            method: context.http.method.as_str().to_ascii_uppercase(),
            path: event
                .raw_path
                .unwrap_or(context.http.path.unwrap_or_default()),
            raw_query: event.raw_query_string.unwrap_or_default(),
            headers,
            body,
            request_id: context.request_id.unwrap_or_default(),
            source_ip: context.http.source_ip,
            domain_name: context.domain_name,
        })
    }
}

/// The API Gateway HTTP API (payload 2.0) request: `aws_lambda_events`' type for everything but
/// the body. The crate reads `body` as a `String`, so a body with lone surrogate escapes (not
/// UTF-8) would fail the whole event (a 500 before any route runs); this struct takes `body`
/// first, as bytes ([`RawBody`]), and hands the other fields to the crate's type.
#[derive(Deserialize)]
struct ApiGwV2Event {
    #[serde(flatten)]
    event: ApiGatewayV2httpRequest,
    #[serde(default)]
    body: Option<RawBody>,
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

    /// The API Gateway HTTP API (payload 2.0) response document (`aws_lambda_events`' type).
    /// A `set-cookie` header goes into payload 2.0's `cookies` list, where API Gateway expects it.
    pub fn to_apigw_v2(&self) -> serde_json::Value {
        let mut headers = HeaderMap::new();
        let mut cookies = Vec::new();
        for (name, value) in &self.headers {
            if name == "set-cookie" {
                cookies.push(value.clone());
                continue;
            }
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                (Ok(n), Ok(v)) => {
                    headers.insert(n, v);
                }
                // adsync's own headers are always valid; one that is not is left out rather
                // than making API Gateway refuse the whole answer.
                _ => tracing::warn!(header = %name, "not a valid HTTP header; left out"),
            }
        }
        let mut resp = ApiGatewayV2httpResponse::default();
        resp.status_code = i64::from(self.status);
        resp.headers = headers;
        resp.body = Some(Body::Text(self.body.clone()));
        resp.is_base64_encoded = false;
        // `cargo lambda watch` rejects a function-URL answer without this field.
        resp.cookies = cookies;
        let mut doc = serde_json::to_value(&resp).unwrap_or_default();
        // Payload 2.0 has no multi-value headers (the crate's type always writes an empty map).
        if let Some(fields) = doc.as_object_mut() {
            fields.remove("multiValueHeaders");
        }
        doc
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

/// Parses a JSON body, refusing a wrong content type (415), a body above `max_bytes` (413) and
/// malformed JSON (400, with line and column).
pub fn parse_json_body<T: serde::de::DeserializeOwned>(
    req: &HttpRequest,
    max_bytes: usize,
) -> ApiResult<T> {
    require_json(req)?;
    if req.body.len() > max_bytes {
        return Err(ApiError::new(
            Kind::PayloadTooLarge,
            "payload_too_large",
            format!(
                "the body is {} bytes; the limit is {max_bytes}",
                req.body.len()
            ),
        ));
    }
    if req.body.is_empty() {
        return Err(ApiError::new(
            Kind::BadRequest,
            "invalid_json",
            "the body is empty",
        ));
    }
    if let Err(e) = std::str::from_utf8(&req.body) {
        return Err(not_utf8(&e));
    }
    serde_json::from_slice(&req.body).map_err(|e| {
        ApiError::new(
            Kind::BadRequest,
            "invalid_json",
            format!("malformed JSON: {e}"),
        )
    })
}

/// 415 unless the body is declared JSON (`application/json` or a `+json` type).
pub fn require_json(req: &HttpRequest) -> ApiResult<()> {
    match req.content_type().as_deref() {
        Some("application/json") => Ok(()),
        Some(other) if other.ends_with("+json") => Ok(()),
        other => Err(ApiError::new(
            Kind::UnsupportedMediaType,
            "unsupported_media_type",
            format!(
                "Content-Type must be application/json (got {})",
                other.unwrap_or("none")
            ),
        )),
    }
}

/// 400 for a body that is not UTF-8 (JSON must be), saying where the first bad byte is.
pub fn not_utf8(e: &std::str::Utf8Error) -> ApiError {
    ApiError::new(
        Kind::BadRequest,
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
    fn the_response_document_is_payload_2_0() {
        let resp = HttpResponse::json(201, &serde_json::json!({"a": "é"}))
            .with_header("Set-Cookie", "s=1; HttpOnly")
            .with_header("location", "/x/1");
        assert_eq!(
            resp.to_apigw_v2(),
            serde_json::json!({
                "statusCode": 201,
                "headers": {"content-type": "application/json", "cache-control": "no-store",
                            "location": "/x/1"},
                "body": r#"{"a":"é"}"#,
                "isBase64Encoded": false,
                "cookies": ["s=1; HttpOnly"],
            })
        );
        let empty = HttpResponse::new(204).to_apigw_v2();
        assert_eq!(empty["body"], "");
        assert_eq!(empty["cookies"], serde_json::json!([]));
    }

    #[test]
    fn cookies_and_headers_are_read_as_sent() {
        let ev = r#"{"rawPath":"/p","cookies":["a=1","b=2"],"headers":{"X-Name":"Zoë, 1"},
            "requestContext":{"domainName":"api.example","http":{"method":"GET","sourceIp":"10.0.0.1"}}}"#;
        let req = HttpRequest::from_apigw_v2_json(ev).unwrap();
        assert_eq!(req.header("cookie"), Some("a=1; b=2"));
        assert_eq!(req.header("x-name"), Some("Zoë, 1"));
        assert_eq!(req.domain_name.as_deref(), Some("api.example"));
        assert_eq!(req.source_ip.as_deref(), Some("10.0.0.1"));
        assert!(req.body.is_empty());
        assert!(HttpRequest::from_apigw_v2_json(r#"{"rawPath":"/p"}"#).is_err());
    }

    #[test]
    fn json_body_errors_say_what_is_wrong() {
        let req = HttpRequest::new("POST", "/x").with_body("{}");
        let r = parse_json_body::<serde_json::Value>(&req, 10).unwrap_err();
        assert_eq!(r.status(), 415);
        let req = req.with_header("content-type", "application/json; charset=utf-8");
        assert!(parse_json_body::<serde_json::Value>(&req, 10).is_ok());
        let big = req.clone().with_body(vec![b' '; 11]);
        assert_eq!(
            parse_json_body::<serde_json::Value>(&big, 10)
                .unwrap_err()
                .status(),
            413
        );
        let bad = req.with_body("{\"a\":");
        let r = parse_json_body::<serde_json::Value>(&bad, 10).unwrap_err();
        assert_eq!(r.status(), 400);
        assert!(r.message.contains("malformed JSON"), "{}", r.message);
    }
}
