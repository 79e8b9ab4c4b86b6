//! The Data Provider's privacy and identity calls, strictly (docs/amazon-contract.md):
//!
//! - `PATCH /v2/dp/users`: `{"operation":"DELETE","users":[{"userId":{"type","value"},
//!   "advertiserId":"<string>","consentTime":<epoch ms>}]}`, 1–1000 users, JSON only, sharing the
//!   100 requests/s of `PATCH /v2/dp/audience`. Each user is removed from every audience of that
//!   advertiser (the caller's client); the request is kept for `GET /admin/user-deletions`.
//!   → 202 `{"requestId"}`.
//! - `POST /dp/records/hashed/`: `Content-Type` and `Accept`
//!   `application/vnd.dpuploadhashedrecordsrequest.v3+json`, ≤ 5 MB, 10 requests/s per client,
//!   `{"records":[{"externalId":"[0-9A-Za-z_-]{1,128}","hashedRecords":[{…}]}]}` with only the
//!   eight PII fields, each a lowercase 64-hex SHA-256. The latest records per external id are kept
//!   for `GET /admin/hashed-records`. → 200 `{"requestId"}`; errors `{"errorMessage"}` (400, 413,
//!   415, 429).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value, json};

use crate::accounts::{Api, authenticate, scope_profile};
use crate::http::{
    DpErr, RequestId, dp_error, header_str, is_json, json_response, with_retry_after,
};
use crate::state::Sandbox;

pub const MAX_USERS: usize = 1000;
pub const MAX_RECORDS_BYTES: usize = 5_000_000;
pub const RECORDS_TPS: usize = 10;
pub const RECORDS_MEDIA_TYPE: &str = "application/vnd.dpuploadhashedrecordsrequest.v3+json";
const PII_FIELDS: [&str; 8] = [
    "email",
    "phone",
    "firstName",
    "lastName",
    "address",
    "city",
    "state",
    "postalCode",
];
const RECORD_TYPES: [&str; 3] = ["COOKIE", "MAID", "EXTERNAL_USER_ID"];

/// What the privacy calls keep (inside the sandbox's one lock).
#[derive(Default)]
pub struct PrivacyState {
    records_windows: HashMap<String, VecDeque<Instant>>,
    /// Accepted user deletions, in arrival order.
    deletions: Vec<Value>,
    /// client → externalId → latest hashedRecords.
    records: HashMap<String, BTreeMap<String, Value>>,
    /// client → accepted uploads (records, bytes), in order.
    uploads: HashMap<String, Vec<Value>>,
}

fn bad(rid: &RequestId, field: &str, message: String) -> Response {
    dp_error(
        StatusCode::BAD_REQUEST,
        rid,
        "Bad Request",
        vec![DpErr::invalid(field, message)],
    )
}

/// `PATCH /v2/dp/users`.
pub async fn delete_users(
    State(sb): State<Sandbox>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut g = sb.lock();
    let caller = match authenticate(&g, &headers, Api::Classic, &rid) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let profile_id = match scope_profile(&g, &headers, &caller, &rid) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if !g.take_rate(true, &caller.client_id) {
        let tps = g.config.patch_tps;
        let r = dp_error(
            StatusCode::TOO_MANY_REQUESTS,
            &rid,
            "Too Many Requests",
            vec![DpErr {
                error_type: "TOO_MANY_REQUESTS",
                message: format!("The request rate exceeded {tps} TPS for this client"),
                field_name: None,
            }],
        );
        return with_retry_after(r, 1);
    }
    if !is_json(&headers) {
        return dp_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &rid,
            "Unsupported Media Type",
            vec![DpErr {
                error_type: "UNSUPPORTED_MEDIA_TYPE",
                message: "Content-Type must be application/json".into(),
                field_name: None,
            }],
        );
    }
    let scope_advertisers: Vec<i64> = g
        .profiles
        .get(&profile_id)
        .map(|p| p.advertiser_ids.clone())
        .unwrap_or_default();
    let users = match parse_deletion(&body, &scope_advertisers, &rid) {
        Ok(u) => u,
        Err(r) => return r,
    };
    for (record, advertiser) in &users {
        for a in g.audiences.values_mut() {
            if a.advertiser_id == *advertiser && a.client_id == caller.client_id {
                a.members.remove(record.as_str());
            }
        }
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    g.privacy.deletions.push(json!({
        "requestId": rid.0, "clientId": caller.client_id, "profileId": profile_id, "body": body,
    }));
    json_response(StatusCode::ACCEPTED, json!({"requestId": rid.0}))
}

/// Validates a deletion body; returns `(<TYPE>-<value>, advertiserId)` per user.
fn parse_deletion(
    body: &[u8],
    scope_advertisers: &[i64],
    rid: &RequestId,
) -> Result<Vec<(String, i64)>, Response> {
    let m: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => m,
        _ => return Err(bad(rid, "body", "The body must be a JSON object".into())),
    };
    if let Some(k) = m
        .keys()
        .find(|k| !["operation", "users"].contains(&k.as_str()))
    {
        return Err(bad(
            rid,
            k,
            format!("The input field '{k}' is not supported"),
        ));
    }
    if m.get("operation").and_then(Value::as_str) != Some("DELETE") {
        return Err(bad(rid, "operation", "operation must be \"DELETE\"".into()));
    }
    let Some(list) = m.get("users").and_then(Value::as_array) else {
        return Err(bad(rid, "users", "users must be a list".into()));
    };
    if list.is_empty() || list.len() > MAX_USERS {
        return Err(bad(
            rid,
            "users",
            format!("users must hold 1 to {MAX_USERS} entries"),
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, u) in list.iter().enumerate() {
        let f = |k: &str| format!("users[{i}].{k}");
        let Some(u) = u.as_object() else {
            return Err(bad(rid, &format!("users[{i}]"), "must be an object".into()));
        };
        if let Some(k) = u
            .keys()
            .find(|k| !["userId", "advertiserId", "consentTime"].contains(&k.as_str()))
        {
            return Err(bad(rid, &f(k), format!("unsupported field '{k}'")));
        }
        let uid = u.get("userId").and_then(Value::as_object);
        let kind = uid.and_then(|o| o.get("type")).and_then(Value::as_str);
        let value = uid.and_then(|o| o.get("value")).and_then(Value::as_str);
        let (Some(kind), Some(value)) = (kind, value) else {
            return Err(bad(
                rid,
                &f("userId"),
                "userId must be {\"type\",\"value\"}".into(),
            ));
        };
        if uid.is_some_and(|o| o.len() != 2) || !RECORD_TYPES.contains(&kind) {
            return Err(bad(
                rid,
                &f("userId.type"),
                "type must be COOKIE, MAID or EXTERNAL_USER_ID".into(),
            ));
        }
        if value.is_empty() || value.len() > 512 || value.chars().any(char::is_whitespace) {
            return Err(bad(
                rid,
                &f("userId.value"),
                "value must be 1-512 characters without white space".into(),
            ));
        }
        let advertiser = match u.get("advertiserId") {
            Some(Value::String(s)) => s.parse::<i64>().ok(),
            _ => None,
        };
        let Some(advertiser) = advertiser else {
            return Err(bad(
                rid,
                &f("advertiserId"),
                "advertiserId must be the advertiser id as a string of digits".into(),
            ));
        };
        if !scope_advertisers.contains(&advertiser) {
            return Err(bad(
                rid,
                &f("advertiserId"),
                format!("advertiser {advertiser} does not belong to the scope profile"),
            ));
        }
        match u.get("consentTime") {
            Some(Value::Number(n)) if n.as_i64().is_some_and(|t| t >= 1_000_000_000_000) => {}
            _ => {
                return Err(bad(
                    rid,
                    &f("consentTime"),
                    "consentTime must be an integer epoch time in milliseconds".into(),
                ));
            }
        }
        out.push((format!("{kind}-{value}"), advertiser));
    }
    Ok(out)
}

fn records_error(status: StatusCode, message: impl Into<String>) -> Response {
    json_response(status, json!({"errorMessage": message.into()}))
}

fn media_type_is(h: &HeaderMap, name: &str) -> bool {
    header_str(h, name).is_some_and(|v| {
        v.split(',').any(|m| {
            m.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case(RECORDS_MEDIA_TYPE))
        })
    })
}

/// `POST /dp/records/hashed/`.
pub async fn upload_records(
    State(sb): State<Sandbox>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut g = sb.lock();
    let caller = match authenticate(&g, &headers, Api::Classic, &rid) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Err(r) = scope_profile(&g, &headers, &caller, &rid) {
        return r;
    }
    let now = g.now();
    let window = g
        .privacy
        .records_windows
        .entry(caller.client_id.clone())
        .or_default();
    while window
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_millis(975))
    {
        window.pop_front();
    }
    if window.len() >= RECORDS_TPS {
        let r = records_error(
            StatusCode::TOO_MANY_REQUESTS,
            format!("The request rate exceeded {RECORDS_TPS} TPS for this client"),
        );
        return with_retry_after(r, 1);
    }
    window.push_back(now);
    if !media_type_is(&headers, "content-type") || !media_type_is(&headers, "accept") {
        return records_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type and Accept must be {RECORDS_MEDIA_TYPE}"),
        );
    }
    if body.len() > MAX_RECORDS_BYTES {
        return records_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "The request body is {} bytes; the limit is 5 MB",
                body.len()
            ),
        );
    }
    let records = match parse_records(&body) {
        Ok(r) => r,
        Err(m) => return records_error(StatusCode::BAD_REQUEST, m),
    };
    let n = records.len();
    let kept = g
        .privacy
        .records
        .entry(caller.client_id.clone())
        .or_default();
    for (id, recs) in records {
        kept.insert(id, recs);
    }
    g.privacy
        .uploads
        .entry(caller.client_id)
        .or_default()
        .push(json!({"requestId": rid.0, "records": n, "bytes": body.len()}));
    json_response(StatusCode::OK, json!({"requestId": rid.0}))
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn parse_records(body: &[u8]) -> Result<Vec<(String, Value)>, String> {
    let m: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err("The body must be a JSON object".into()),
        Err(e) => return Err(format!("Malformed JSON: {e}")),
    };
    if m.len() != 1 {
        return Err("The body must hold exactly one field, 'records'".into());
    }
    let list = match m.get("records") {
        Some(Value::Array(l)) if !l.is_empty() => l,
        _ => return Err("records must be a non-empty list".into()),
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, r) in list.iter().enumerate() {
        let Some(r) = r.as_object().filter(|r| r.len() == 2) else {
            return Err(format!(
                "records[{i}] must be an object with externalId and hashedRecords"
            ));
        };
        let id = r.get("externalId").and_then(Value::as_str).unwrap_or("");
        let id_ok = (1..=128).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !id_ok {
            return Err(format!(
                "records[{i}].externalId must match [0-9A-Za-z_-]{{1,128}}"
            ));
        }
        let Some(Value::Array(hashed)) = r
            .get("hashedRecords")
            .filter(|h| h.as_array().is_some_and(|a| !a.is_empty()))
        else {
            return Err(format!(
                "records[{i}].hashedRecords must be a non-empty list"
            ));
        };
        for (j, h) in hashed.iter().enumerate() {
            let Some(h) = h.as_object().filter(|h| !h.is_empty()) else {
                return Err(format!(
                    "records[{i}].hashedRecords[{j}] must be a non-empty object"
                ));
            };
            for (k, v) in h {
                if !PII_FIELDS.contains(&k.as_str()) {
                    return Err(format!(
                        "records[{i}].hashedRecords[{j}].{k} is not a supported field"
                    ));
                }
                if !v.as_str().is_some_and(is_sha256_hex) {
                    return Err(format!(
                        "records[{i}].hashedRecords[{j}].{k} must be a lowercase hex SHA-256"
                    ));
                }
            }
        }
        out.push((id.to_string(), Value::Array(hashed.clone())));
    }
    Ok(out)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientQuery {
    client_id: Option<String>,
}

/// `GET /admin/user-deletions?clientId=`: accepted deletions, oldest first.
pub async fn admin_deletions(State(sb): State<Sandbox>, Query(q): Query<ClientQuery>) -> Response {
    let g = sb.lock();
    let list: Vec<&Value> = g
        .privacy
        .deletions
        .iter()
        .filter(|d| q.client_id.as_deref().is_none_or(|c| d["clientId"] == c))
        .collect();
    json_response(StatusCode::OK, json!({ "deletions": list }))
}

/// `GET /admin/hashed-records?clientId=`: the latest records per external id and the uploads.
pub async fn admin_records(State(sb): State<Sandbox>, Query(q): Query<ClientQuery>) -> Response {
    let g = sb.lock();
    let c = q.client_id.unwrap_or_default();
    json_response(
        StatusCode::OK,
        json!({
            "records": g.privacy.records.get(&c).cloned().unwrap_or_default(),
            "uploads": g.privacy.uploads.get(&c).cloned().unwrap_or_default(),
        }),
    )
}
