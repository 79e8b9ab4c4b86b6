//! `POST /qualifications`: the request body and the validation of its items.
//!
//! The body and each item are serde structs; the checks that must name every wrong field of an
//! item at once (serde stops at the first) with their own messages stay hand-written.

use crate::domain::audience::{IdType, device_key, validate_consent, validate_device_id};
use crate::domain::segment::check_segment_id;
use crate::http::{ApiError, ApiResult, HttpRequest, Kind, parse_json_body};
use crate::store::ledger::LedgerRow;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most qualifications per request.
pub const MAX_QUALIFICATIONS: usize = 10_000;
/// Largest request body (Lambda's synchronous payload limit).
pub const MAX_REQUEST_BYTES: usize = 6 * 1024 * 1024;
/// How far in the future a timestamp may be (clock skew); later ones would freeze a row.
pub(super) const MAX_FUTURE_MS: i64 = 5 * 60 * 1000;

/// `{"qualifications": [...]}`; items stay JSON values so that one bad item is answered on its
/// own (`rejected`) instead of failing the request.
#[derive(Deserialize)]
struct QualificationsBody {
    qualifications: Vec<Value>,
}

/// One item as sent. Every field defaults to `null` (answered "is required" where required).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QualificationIn {
    #[serde(default)]
    segment_id: Value,
    #[serde(default)]
    device_id: Value,
    #[serde(default)]
    id_type: Value,
    #[serde(default)]
    status: Value,
    #[serde(default)]
    timestamp: Value,
    #[serde(default)]
    consent: Value,
}

/// A validated qualification.
#[derive(Clone, Debug)]
pub(super) struct Qualification {
    pub(super) row: LedgerRow,
}

#[derive(Debug, Serialize)]
pub(super) struct FieldError {
    pub(super) field: &'static str,
    pub(super) message: String,
}

/// One item's line of the answer.
#[derive(Serialize)]
pub(super) struct ItemResult {
    pub(super) index: usize,
    pub(super) status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) message: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) errors: Vec<FieldError>,
}

/// The body's items: 415/413/400 for a body that is not acceptable JSON, 400 without a
/// non-empty `qualifications` array, 413 above [`MAX_QUALIFICATIONS`].
pub(super) fn parse_body(req: &HttpRequest) -> ApiResult<Vec<Value>> {
    let body: Value = parse_json_body(req, MAX_REQUEST_BYTES)?;
    // Hand check: serde would also fill the struct from a JSON array, by position.
    let parsed = match body.is_object() {
        true => serde_json::from_value::<QualificationsBody>(body).ok(),
        false => None,
    };
    let Some(QualificationsBody { qualifications }) = parsed else {
        return Err(ApiError::invalid(
            "qualifications",
            "the body must be an object with a \"qualifications\" array",
        ));
    };
    if qualifications.is_empty() {
        return Err(ApiError::invalid(
            "qualifications",
            "qualifications must not be empty",
        ));
    }
    if qualifications.len() > MAX_QUALIFICATIONS {
        let message = format!(
            "at most {MAX_QUALIFICATIONS} qualifications per request (got {})",
            qualifications.len()
        );
        return Err(
            ApiError::new(Kind::PayloadTooLarge, "payload_too_large", message).at("qualifications"),
        );
    }
    Ok(qualifications)
}

/// Validates every item: the answer's lines (`pending` or `rejected`) and the valid items.
pub(super) fn validate_items(
    items: &[Value],
    now: i64,
) -> (Vec<ItemResult>, Vec<(usize, Qualification)>) {
    let mut results: Vec<ItemResult> = Vec::with_capacity(items.len());
    let mut valid: Vec<(usize, Qualification)> = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let (status, errors) = match validate_item(it, now) {
            Ok(q) => {
                valid.push((i, q));
                ("pending", Vec::new())
            }
            Err(errors) => ("rejected", errors),
        };
        results.push(ItemResult {
            index: i,
            status,
            message: None,
            errors,
        });
    }
    (results, valid)
}

/// RFC 3339, or epoch milliseconds (an integer below 10^11 is taken as epoch seconds).
pub(super) fn parse_timestamp(v: &Value, now: i64) -> Result<i64, String> {
    let ms = match v {
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map_err(|_| {
                "must be an RFC 3339 date-time (e.g. 2026-01-31T12:00:00Z) or epoch milliseconds"
                    .to_string()
            })?
            .timestamp_millis(),
        Value::Number(n) => {
            let i = n
                .as_i64()
                .ok_or("must be an integer number of epoch milliseconds")?;
            if i <= 0 {
                return Err("must be a positive epoch time".into());
            }
            if i < 100_000_000_000 { i * 1000 } else { i }
        }
        Value::Null => return Err("is required".into()),
        _ => return Err("must be an RFC 3339 string or epoch milliseconds".into()),
    };
    if ms <= 0 {
        return Err("must be after 1970-01-01".into());
    }
    if ms > now + MAX_FUTURE_MS {
        return Err("is more than 5 minutes in the future".into());
    }
    Ok(ms)
}

/// One item, every wrong field reported (in the order segmentId, deviceId, idType, status,
/// timestamp, consent).
pub(super) fn validate_item(v: &Value, now: i64) -> Result<Qualification, Vec<FieldError>> {
    // Hand check: serde would also fill the struct from a JSON array, by position.
    let item = match v.is_object() {
        true => QualificationIn::deserialize(v).ok(),
        false => None,
    };
    let Some(q) = item else {
        return Err(vec![FieldError {
            field: "qualification",
            message: "must be an object".into(),
        }]);
    };
    let mut errs = Vec::new();
    let segment_id = check(
        &mut errs,
        "segmentId",
        text(&q.segment_id).and_then(|s| check_segment_id(&s).map(|()| s)),
    );
    let device_id = check(
        &mut errs,
        "deviceId",
        text(&q.device_id).and_then(|s| validate_device_id(&s).map(|()| s)),
    );
    let id_type = check(
        &mut errs,
        "idType",
        text(&q.id_type).and_then(|s| id_type(&s)),
    );
    let qualified = check(
        &mut errs,
        "status",
        text(&q.status).and_then(|s| qualified(&s)),
    );
    let ts = check(&mut errs, "timestamp", parse_timestamp(&q.timestamp, now));
    let consent = check(&mut errs, "consent", consent(&q.consent));
    match (segment_id, device_id, id_type, qualified, ts, consent) {
        (
            Some(segment_id),
            Some(device_id),
            Some(id_type),
            Some(qualified),
            Some(ts_ms),
            Some(consent),
        ) if errs.is_empty() => Ok(Qualification {
            row: LedgerRow {
                segment_id,
                device: device_key(id_type, &device_id),
                qualified,
                ts_ms,
                consent,
            },
        }),
        _ => Err(errs),
    }
}

/// `r`'s value, or `None` with its message recorded against `field`.
fn check<T>(errs: &mut Vec<FieldError>, field: &'static str, r: Result<T, String>) -> Option<T> {
    r.map_err(|message| errs.push(FieldError { field, message }))
        .ok()
}

/// A required string field.
fn text(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Err("is required".into()),
        _ => Err("must be a string".into()),
    }
}

fn id_type(s: &str) -> Result<IdType, String> {
    IdType::parse(s).ok_or_else(|| "must be one of COOKIE, MAID, EXTERNAL_USER_ID".into())
}

/// `qualified` / `unqualified`.
fn qualified(s: &str) -> Result<bool, String> {
    match s {
        "qualified" => Ok(true),
        "unqualified" => Ok(false),
        _ => Err("must be \"qualified\" or \"unqualified\"".into()),
    }
}

/// Optional consent.
fn consent(v: &Value) -> Result<Option<String>, String> {
    match v {
        Value::Null => Ok(None),
        c => validate_consent(c).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::HttpResponse;
    use serde_json::json;

    #[test]
    fn body_refusals_keep_their_answers() {
        let req = |ct: &str, b: &str| {
            HttpRequest::new("POST", "/qualifications")
                .with_header("content-type", ct)
                .with_body(b.as_bytes().to_vec())
        };
        // Refusals of the JSON layer are answered byte for byte as `parse_json_body` gives them.
        for (ct, b) in [
            ("application/json", "{"),
            ("application/json", ""),
            ("text/plain", "{}"),
        ] {
            let r = req(ct, b);
            let want = parse_json_body::<Value>(&r, MAX_REQUEST_BYTES).unwrap_err();
            assert_eq!(parse_body(&r).unwrap_err(), want, "{ct} {b}");
        }
        let shape = "the body must be an object with a \"qualifications\" array";
        for b in [
            "[[{}]]",
            "{}",
            "{\"qualifications\": {}}",
            "5",
            "{\"qualifications\": null}",
        ] {
            let r: HttpResponse = parse_body(&req("application/json", b)).unwrap_err().into();
            let want = HttpResponse::field_error(400, "invalid_request", "qualifications", shape);
            assert_eq!(r, want, "{b}");
        }
        let r: HttpResponse = parse_body(&req("application/json", "{\"qualifications\": []}"))
            .unwrap_err()
            .into();
        assert_eq!(
            r.json_body()["error"]["message"],
            "qualifications must not be empty"
        );
        let many = format!(
            "{{\"qualifications\": [{}1]}}",
            "1,".repeat(MAX_QUALIFICATIONS)
        );
        let r: HttpResponse = parse_body(&req("application/json", &many))
            .unwrap_err()
            .into();
        let want = HttpResponse::field_error(
            413,
            "payload_too_large",
            "qualifications",
            "at most 10000 qualifications per request (got 10001)",
        );
        assert_eq!(r, want);
    }

    #[test]
    fn items_are_validated_field_by_field() {
        let now = chrono::Utc::now().timestamp_millis();
        let ok = json!({"segmentId":"s1","deviceId":"abc","idType":"COOKIE","status":"qualified","timestamp":"2026-01-01T00:00:00Z"});
        let q = validate_item(&ok, now).unwrap();
        assert_eq!(q.row.device, "COOKIE-abc");
        assert!(q.row.qualified);
        assert_eq!(q.row.ts_ms, 1_767_225_600_000);
        let bad = json!({"segmentId":"","deviceId":"a/b","idType":"EMAIL","status":"maybe","timestamp":now + 3_600_000});
        let errs = validate_item(&bad, now).unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            ["segmentId", "deviceId", "idType", "status", "timestamp"]
        );
        let errs = validate_item(&json!({"deviceId": 5}), now).unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.field == "deviceId" && e.message == "must be a string")
        );
        assert!(
            errs.iter()
                .any(|e| e.field == "timestamp" && e.message == "is required")
        );
        assert!(validate_item(&json!([1]), now).is_err());
    }

    #[test]
    fn timestamps_accept_rfc3339_millis_and_seconds() {
        let now = 1_800_000_000_000;
        assert_eq!(
            parse_timestamp(&json!(1_700_000_000_123_i64), now),
            Ok(1_700_000_000_123)
        );
        assert_eq!(
            parse_timestamp(&json!(1_700_000_000), now),
            Ok(1_700_000_000_000)
        );
        assert_eq!(
            parse_timestamp(&json!("2023-11-14T22:13:20.5+00:00"), now),
            Ok(1_700_000_000_500)
        );
        assert!(parse_timestamp(&json!(-5), now).is_err());
        assert!(parse_timestamp(&json!("yesterday"), now).is_err());
        assert!(parse_timestamp(&json!(now + MAX_FUTURE_MS + 1), now).is_err());
        assert!(parse_timestamp(&json!(1.5), now).is_err());
    }
}
