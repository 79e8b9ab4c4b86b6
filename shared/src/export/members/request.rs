//! `POST /qualifications`: one item's parsing and validation.

use crate::domain::audience::{IdType, validate_consent, validate_device_id};
use crate::domain::segment::check_segment_id;
use crate::store::ledger::LedgerRow;
use serde::Serialize;
use serde_json::Value;

/// How far in the future a timestamp may be (clock skew); later ones would freeze a row.
pub(super) const MAX_FUTURE_MS: i64 = 5 * 60 * 1000;

/// `qualified` / `unqualified`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Status {
    Qualified,
    Unqualified,
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

pub(super) fn validate_item(v: &Value, now: i64) -> Result<Qualification, Vec<FieldError>> {
    let mut errs = Vec::new();
    let Some(obj) = v.as_object() else {
        return Err(vec![FieldError {
            field: "qualification",
            message: "must be an object".into(),
        }]);
    };
    let text = |k: &'static str, errs: &mut Vec<FieldError>| -> Option<String> {
        match obj.get(k) {
            Some(Value::String(s)) => Some(s.clone()),
            None | Some(Value::Null) => {
                errs.push(FieldError {
                    field: k,
                    message: "is required".into(),
                });
                None
            }
            Some(_) => {
                errs.push(FieldError {
                    field: k,
                    message: "must be a string".into(),
                });
                None
            }
        }
    };
    let segment_id = text("segmentId", &mut errs).and_then(|s| match check_segment_id(&s) {
        Ok(()) => Some(s),
        Err(m) => {
            errs.push(FieldError {
                field: "segmentId",
                message: m,
            });
            None
        }
    });
    let device_id = text("deviceId", &mut errs).and_then(|s| match validate_device_id(&s) {
        Ok(()) => Some(s),
        Err(m) => {
            errs.push(FieldError {
                field: "deviceId",
                message: m,
            });
            None
        }
    });
    let id_type = text("idType", &mut errs).and_then(|s| match IdType::parse(&s) {
        Some(t) => Some(t),
        None => {
            errs.push(FieldError {
                field: "idType",
                message: "must be one of COOKIE, MAID, EXTERNAL_USER_ID".into(),
            });
            None
        }
    });
    let status = text("status", &mut errs).and_then(|s| match s.as_str() {
        "qualified" => Some(Status::Qualified),
        "unqualified" => Some(Status::Unqualified),
        _ => {
            errs.push(FieldError {
                field: "status",
                message: "must be \"qualified\" or \"unqualified\"".into(),
            });
            None
        }
    });
    let ts = match parse_timestamp(obj.get("timestamp").unwrap_or(&Value::Null), now) {
        Ok(t) => Some(t),
        Err(m) => {
            errs.push(FieldError {
                field: "timestamp",
                message: m,
            });
            None
        }
    };
    let consent = match obj.get("consent") {
        None | Some(Value::Null) => Some(None),
        Some(c) => match validate_consent(c) {
            Ok(s) => Some(Some(s)),
            Err(m) => {
                errs.push(FieldError {
                    field: "consent",
                    message: m,
                });
                None
            }
        },
    };
    match (segment_id, device_id, id_type, status, ts, consent) {
        (
            Some(segment_id),
            Some(device_id),
            Some(id_type),
            Some(status),
            Some(ts_ms),
            Some(consent),
        ) if errs.is_empty() => Ok(Qualification {
            row: LedgerRow {
                segment_id,
                device: crate::domain::audience::device_key(id_type, &device_id),
                qualified: status == Status::Qualified,
                ts_ms,
                consent,
            },
        }),
        _ => Err(errs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
