//! Privacy routes of segment export: `POST /privacy/deletions`, `GET /privacy/deletions/{id}`
//! (the job itself is `erasure.rs`; the routes are in the table of `super::router`), and the
//! erasure check of the qualification path ([`upsert_unless_erased`]).

use super::ExportCtx;
use super::erasure::{self, ErasureDoc, ErasureOptions, RawDevices};
use crate::domain::audience::{IdType, device_key, validate_device_id};
use crate::http::error::respond;
use crate::http::{ApiError, ApiResult, HttpRequest, HttpResponse, Kind, parse_json_body};
use crate::runtime::Invocation;
use crate::store::StoreError;
use crate::store::erasures::{ErasureStore, device_hash};
use crate::store::ledger::{LedgerRow, Upsert};
use serde_json::Value;
use std::collections::BTreeSet;

/// Most devices per deletion request (`PATCH /v2/dp/users` takes 1 000 users).
pub const MAX_DEVICES: usize = 1000;
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The ledger write of a qualification, unless the device was erased at or after the
/// qualification's time: written first, then the tombstone is read (consistently) and a write
/// it covers is taken back and answered `stale`. Write-then-check leaves no gap with the erasure
/// job, which writes its tombstones before it scans the ledger. A write taken back is recorded
/// as *found* for the tombstone's erasure first: it may have replaced an older row the erasure's
/// scan would otherwise have found, and whose device the erasure must still remove from the
/// segment's audiences.
pub async fn upsert_unless_erased(ctx: &ExportCtx, row: &LedgerRow) -> Result<Upsert, StoreError> {
    let up = ctx.ledger.upsert(row).await?;
    if up == Upsert::Stale {
        return Ok(up);
    }
    let st = erasure::store(ctx);
    let hash = device_hash(&row.device);
    match st.tombstone_entry(&hash).await? {
        Some((erased_at, deletion_id)) if erased_at >= row.ts_ms => {
            // The write may have replaced a row the erasure's scan has not reached yet: record it
            // as found first, so the erasure still removes the device from the segment's
            // audiences (idempotent; the scan records the same key when it finds a row).
            if !deletion_id.is_empty() {
                st.put_found(&deletion_id, &[(row.segment_id.clone(), hash)])
                    .await?;
            }
            st.delete_ledger_row(&row.segment_id, &row.device, "ts = :t", row.ts_ms)
                .await?;
            Ok(Upsert::Stale)
        }
        _ => Ok(Upsert::Applied),
    }
}

/// Validates `{"devices":[{"idType","deviceId"}]}`: the devices (deduplicated, in order) or the
/// first problem, naming `devices[i].field`.
fn parse_devices(body: &Value) -> ApiResult<RawDevices> {
    let Some(list) = body.get("devices").and_then(Value::as_array) else {
        return Err(ApiError::invalid(
            "devices",
            "the body must be an object with a \"devices\" array",
        ));
    };
    if list.is_empty() || list.len() > MAX_DEVICES {
        return Err(ApiError::invalid(
            "devices",
            format!(
                "devices must hold 1 to {MAX_DEVICES} entries (got {})",
                list.len()
            ),
        ));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(list.len());
    for (i, d) in list.iter().enumerate() {
        let f = |k: &str| format!("devices[{i}].{k}");
        let id_type = match d.get("idType").and_then(Value::as_str) {
            Some(t) => IdType::parse(t).ok_or_else(|| {
                ApiError::invalid(f("idType"), "must be one of COOKIE, MAID, EXTERNAL_USER_ID")
            })?,
            None => return Err(ApiError::invalid(f("idType"), "is required (a string)")),
        };
        let Some(id) = d.get("deviceId").and_then(Value::as_str) else {
            return Err(ApiError::invalid(f("deviceId"), "is required (a string)"));
        };
        validate_device_id(id).map_err(|m| ApiError::invalid(f("deviceId"), m))?;
        if seen.insert(device_key(id_type, id)) {
            out.push((id_type, id.to_string()));
        }
    }
    Ok(out)
}

/// The job's public view: its progress without the internal scan cursor.
fn view(doc: &ErasureDoc) -> Value {
    let mut v = serde_json::to_value(doc).unwrap_or(Value::Null);
    if let Some(l) = v
        .pointer_mut("/steps/ledger")
        .and_then(Value::as_object_mut)
    {
        l.remove("cursor");
    }
    v
}

/// `POST /privacy/deletions` → 202 with the job as of the answer.
pub async fn create_deletion(ctx: &ExportCtx, req: &HttpRequest, inv: &Invocation) -> HttpResponse {
    respond(create(ctx, req, inv).await)
}

async fn create(ctx: &ExportCtx, req: &HttpRequest, inv: &Invocation) -> ApiResult<HttpResponse> {
    let body: Value = parse_json_body(req, MAX_BODY_BYTES)?;
    let devices = parse_devices(&body)?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let requested_at_ms = chrono::Utc::now().timestamp_millis();
    let doc = ErasureDoc::new(id.clone(), requested_at_ms, &devices);
    let st = erasure::store(ctx);
    let stored = serde_json::to_string(&doc)
        .and_then(|d| Ok((d, serde_json::to_string(&devices)?)))
        .map_err(|e| StoreError::Corrupt(e.to_string()));
    let created = match stored {
        Ok((d, raw)) => st.create_job(&id, &doc.created_at, &d, &raw).await,
        Err(e) => Err(e),
    };
    if let Err(e) = created {
        tracing::error!(error = %e, "could not store an erasure job");
        return Err(ApiError::unavailable(
            "store_unavailable",
            "the erasure could not be stored; send it again",
        ));
    }
    tracing::info!(deletion_id = %id, devices = devices.len(), "erasure requested");
    if ctx.inline.enabled() {
        work_inline(ctx, &st, &id, inv).await;
    }
    let doc = match st.get_job(&id).await {
        Ok(Some(j)) => serde_json::from_str(&j.doc).unwrap_or(doc),
        _ => doc,
    };
    let location = format!("/privacy/deletions/{id}");
    Ok(HttpResponse::json(202, &view(&doc)).with_header("location", &location))
}

/// The request's slice of the erasure, with the inline retry policy; the schedule finishes the
/// rest.
async fn work_inline(ctx: &ExportCtx, st: &ErasureStore, id: &str, inv: &Invocation) {
    let mut ictx = ctx.clone();
    ictx.amazon = ctx
        .amazon
        .clone()
        .with_retry_policy(ctx.inline.retry.clone());
    let slice = Invocation {
        request_id: inv.request_id.clone(),
        deadline_ms: inv
            .deadline_ms
            .min(crate::runtime::now_ms() + ctx.inline.budget.as_millis() as u64),
    };
    let opts = ErasureOptions {
        safety_margin: std::time::Duration::ZERO,
        ..ErasureOptions::default()
    };
    if let Err(e) = erasure::run_job(&ictx, st, id, &slice, &opts).await {
        tracing::warn!(deletion_id = %id, error = %e, "erasure left to the schedule");
    }
}

/// `GET /privacy/deletions/{deletionId}`.
pub async fn get_deletion(ctx: &ExportCtx, id: &str) -> HttpResponse {
    respond(match erasure::store(ctx).get_job(id).await {
        Ok(Some(j)) => match serde_json::from_str::<ErasureDoc>(&j.doc) {
            Ok(doc) => Ok(HttpResponse::json(200, &view(&doc))),
            Err(e) => Err(ApiError::new(
                Kind::Internal,
                "internal",
                format!("unreadable erasure job: {e}"),
            )),
        },
        Ok(None) => Err(ApiError::not_found(
            "not_found",
            format!("no deletion {id}"),
        )),
        Err(e) => {
            tracing::error!(error = %e, "erasure job read failed");
            Err(ApiError::unavailable("store_unavailable", "try again"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn devices_are_validated_per_index_and_deduplicated() {
        let ok = parse_devices(&json!({"devices":[
            {"idType":"MAID","deviceId":"a"},{"idType":"MAID","deviceId":"a"},{"idType":"COOKIE","deviceId":"a"}]}))
        .unwrap();
        assert_eq!(ok.len(), 2);
        let bad = |v: Value| {
            HttpResponse::from(parse_devices(&v).unwrap_err()).json_body()["error"]["field"].clone()
        };
        assert_eq!(
            bad(
                json!({"devices":[{"idType":"MAID","deviceId":"a"},{"idType":"IDFA","deviceId":"b"}]})
            ),
            "devices[1].idType"
        );
        assert_eq!(
            bad(json!({"devices":[{"idType":"MAID","deviceId":"a b"}]})),
            "devices[0].deviceId"
        );
        assert_eq!(bad(json!({"devices":[]})), "devices");
        assert_eq!(bad(json!({})), "devices");
    }
}
