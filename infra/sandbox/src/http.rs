//! The outer layer every request goes through: request id, body buffering, fault injection, the
//! request log and the stderr access log; plus the error bodies Amazon's services answer with.

use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::faults::{self, FaultAction, RequestFacts};
use crate::state::{RequestRecord, Sandbox};

/// Bodies above this are refused before any handler sees them (PATCH's own limit is 1 MB).
pub const MAX_BUFFERED_BODY: usize = 16 * 1024 * 1024;

pub const REQUEST_ID_HEADER: &str = "x-amzn-RequestId";

/// The id of this request (also sent as `x-amzn-RequestId`).
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// Marker on a response: close the connection instead of answering.
#[derive(Clone, Copy, Debug)]
pub struct DropConnection;

pub fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// `Amazon-Advertising-API-ClientId` (v2, dsp) or `Amazon-Ads-ClientId` (Events API).
pub fn client_id_header(h: &HeaderMap) -> Option<&str> {
    header_str(h, "amazon-advertising-api-clientid")
        .or_else(|| header_str(h, "amazon-ads-clientid"))
}

pub fn account_id_header(h: &HeaderMap) -> Option<&str> {
    header_str(h, "amazon-ads-accountid").or_else(|| header_str(h, "amazon-advertising-api-scope"))
}

pub fn json_response(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// The generic Ads API error `{"code","details","requestId"}`.
pub fn ads_error(status: StatusCode, code: &str, details: &str, rid: &RequestId) -> Response {
    json_response(
        status,
        json!({"code": code, "details": details, "requestId": rid.0}),
    )
}

/// The Events API error `{"code","message"}`.
pub fn events_error(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(status, json!({"code": code, "message": message}))
}

/// One entry of a Data Provider error.
pub struct DpErr {
    pub error_type: &'static str,
    pub message: String,
    pub field_name: Option<String>,
}

impl DpErr {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error_type: "INVALID_INPUT",
            message: message.into(),
            field_name: Some(field.into()),
        }
    }
}

/// The Data Provider error `{"requestId","error":{"httpStatusCode","description","errors":[…]}}`.
pub fn dp_error(
    status: StatusCode,
    rid: &RequestId,
    description: &str,
    errors: Vec<DpErr>,
) -> Response {
    let errors: Vec<Value> = errors
        .into_iter()
        .map(|e| {
            let mut o = json!({"errorType": e.error_type, "message": e.message});
            if let Some(f) = e.field_name {
                o["fieldName"] = Value::from(f);
            }
            o
        })
        .collect();
    json_response(
        status,
        json!({
            "requestId": rid.0,
            "error": {
                "httpStatusCode": status.as_u16().to_string(),
                "description": description,
                "errors": errors,
            }
        }),
    )
}

pub fn with_retry_after(mut resp: Response, secs: u64) -> Response {
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

pub fn code_for_status(status: u16) -> &'static str {
    match status {
        400 => "BAD_REQUEST",
        401 => "UNAUTHORIZED",
        403 => "FORBIDDEN",
        404 => "NOT_FOUND",
        413 => "CONTENT_TOO_LARGE",
        415 => "UNSUPPORTED_MEDIA_TYPE",
        429 => "TOO_MANY_REQUESTS",
        500 => "INTERNAL_ERROR",
        502 => "BAD_GATEWAY",
        503 => "SERVICE_UNAVAILABLE",
        504 => "GATEWAY_TIMEOUT",
        _ => "ERROR",
    }
}

/// The body a status fault answers with when the fault gives none: the shape the real service
/// at that path would use.
fn default_fault_body(path: &str, status: u16, rid: &RequestId) -> Value {
    let code = code_for_status(status);
    if path.starts_with("/v2/dp/") {
        let error_type = match status {
            400 => "INVALID_INPUT",
            413 => "INPUT_TOO_LARGE",
            429 => "TOO_MANY_REQUESTS",
            503 => "SERVICE_UNAVAILABLE",
            s if s >= 500 => "INTERNAL_ERROR",
            _ => code,
        };
        json!({"requestId": rid.0, "error": {"httpStatusCode": status.to_string(),
            "description": "Injected fault", "errors": [{"errorType": error_type, "message": "Injected fault"}]}})
    } else if path.starts_with("/adsApi/") {
        json!({"code": code, "message": "Injected fault"})
    } else if path.starts_with("/auth/o2/") {
        let error = match status {
            400 => "invalid_request",
            401 => "invalid_client",
            429 => "slow_down",
            503 => "temporarily_unavailable",
            _ => "server_error",
        };
        json!({"error": error, "error_description": "Injected fault"})
    } else {
        json!({"code": code, "details": "Injected fault", "requestId": rid.0})
    }
}

fn fault_response(action: &FaultAction, status: u16, path: &str, rid: &RequestId) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = match &action.body {
        Some(Value::String(s)) => (status, s.clone()).into_response(),
        Some(v) => json_response(status, v.clone()),
        None => json_response(status, default_fault_body(path, status.as_u16(), rid)),
    };
    if let Some(secs) = action.retry_after {
        resp = with_retry_after(resp, secs);
    }
    resp
}

/// `client_id` from a form body (the LwA token call), without keeping anything else.
fn form_client_id(body: &[u8]) -> Option<String> {
    url::form_urlencoded::parse(body)
        .find(|(k, _)| k == "client_id")
        .map(|(_, v)| v.into_owned())
}

fn query_client_id(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "client_id")
        .map(|(_, v)| v.into_owned())
}

/// The middleware around every route.
pub async fn track(State(sb): State<Sandbox>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let rid = RequestId(uuid::Uuid::new_v4().to_string());
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let quiet = sb.lock().quiet;

    if path.starts_with("/admin/") || path == "/admin" {
        let mut req = req;
        req.extensions_mut().insert(rid.clone());
        let mut resp = next.run(req).await;
        stamp(&mut resp, &rid);
        if !quiet {
            eprintln!(
                "{method} {path} {} {}ms",
                resp.status().as_u16(),
                started.elapsed().as_millis()
            );
        }
        return resp;
    }

    let (mut parts, body) = req.into_parts();
    let bytes: Bytes = match axum::body::to_bytes(body, MAX_BUFFERED_BODY).await {
        Ok(b) => b,
        Err(_) => {
            let mut resp = ads_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "CONTENT_TOO_LARGE",
                "Request body too large",
                &rid,
            );
            stamp(&mut resp, &rid);
            return resp;
        }
    };
    let client_id = match path.as_str() {
        "/auth/o2/token" => form_client_id(&bytes),
        "/ap/oa" => query_client_id(parts.uri.query()),
        _ => client_id_header(&parts.headers).map(str::to_string),
    };
    let account_id = account_id_header(&parts.headers).map(str::to_string);

    let fault = {
        let mut g = sb.lock();
        faults::take(
            &mut g.faults,
            &RequestFacts {
                method: &method,
                path: &path,
                client_id: client_id.as_deref(),
                account_id: account_id.as_deref(),
            },
        )
    };

    let mut resp = None;
    if let Some(action) = &fault {
        if let Some(ms) = action.delay_ms {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        if action.drop {
            let mut r = Response::new(Body::empty());
            r.extensions_mut().insert(DropConnection);
            resp = Some(r);
        } else if let Some(status) = action.status {
            resp = Some(fault_response(action, status, &path, &rid));
        }
    }
    let mut resp = match resp {
        Some(r) => r,
        None => {
            parts.extensions.insert(rid.clone());
            next.run(Request::from_parts(parts, Body::from(bytes.clone())))
                .await
        }
    };
    stamp(&mut resp, &rid);
    let dropped = resp.extensions().get::<DropConnection>().is_some();
    let status = if dropped { 0 } else { resp.status().as_u16() };
    {
        let mut g = sb.lock();
        g.log_request(RequestRecord {
            at_ms: chrono::Utc::now().timestamp_millis(),
            method: method.clone(),
            path: path.clone(),
            status,
            client_id,
            account_id,
            bytes: bytes.len(),
        });
    }
    if !quiet {
        let shown = if dropped {
            "dropped".to_string()
        } else {
            status.to_string()
        };
        eprintln!(
            "{method} {path} {shown} {}ms",
            started.elapsed().as_millis()
        );
    }
    resp
}

fn stamp(resp: &mut Response, rid: &RequestId) {
    if let Ok(v) = HeaderValue::from_str(&rid.0) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
}

/// True when the request declares a JSON body (`application/json`, parameters allowed).
pub fn is_json(h: &HeaderMap) -> bool {
    header_str(h, "content-type").is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    })
}
