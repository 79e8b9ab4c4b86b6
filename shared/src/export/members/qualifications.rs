//! `POST /qualifications`: ledger writes, dirty marks, delivery, the answer.

use super::LEDGER_WRITE_CONCURRENCY;
use super::delivery::{DeliveryReport, deliver, park_rows};
use super::request::{FieldError, Qualification, validate_item};
use super::targets::{Lookups, Target, TargetRef};
use crate::export::ExportCtx;
use crate::http::{HttpRequest, HttpResponse, parse_json_body};
use crate::runtime::{Invocation, now_ms};
use crate::store::StoreError;
use crate::store::destinations::MappingStatus;
use crate::store::jobs::JobState;
use crate::store::ledger::{LedgerRow, Upsert};
use crate::store::parked_counts::{Counter, ParkedCounts};
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// Most qualifications per request.
pub const MAX_QUALIFICATIONS: usize = 10_000;
/// Largest request body (Lambda's synchronous payload limit).
pub const MAX_REQUEST_BYTES: usize = 6 * 1024 * 1024;

#[derive(Serialize)]
pub(super) struct ItemResult {
    pub(super) index: usize,
    pub(super) status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) message: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) errors: Vec<FieldError>,
}

pub(super) const OUT_OF_TIME: &str = "not stored: the request's time budget ran out";

/// `POST /qualifications` (the router checks the API key first). It answers within the request
/// budget: ledger writes stop 10 s before it (a third of the time left, if shorter), and device updates Amazon cannot take before the
/// budget's Amazon deadline are parked (`delivery.parked`) and redriven.
pub async fn handle_qualifications(
    ctx: &ExportCtx,
    req: &HttpRequest,
    inv: &Invocation,
) -> HttpResponse {
    let body: Value = match parse_json_body(req, MAX_REQUEST_BYTES) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(items) = body.get("qualifications").and_then(Value::as_array) else {
        return HttpResponse::field_error(
            400,
            "invalid_request",
            "qualifications",
            "the body must be an object with a \"qualifications\" array",
        );
    };
    if items.is_empty() {
        return HttpResponse::field_error(
            400,
            "invalid_request",
            "qualifications",
            "qualifications must not be empty",
        );
    }
    if items.len() > MAX_QUALIFICATIONS {
        return HttpResponse::field_error(
            413,
            "payload_too_large",
            "qualifications",
            format!(
                "at most {MAX_QUALIFICATIONS} qualifications per request (got {})",
                items.len()
            ),
        );
    }
    let now = chrono::Utc::now().timestamp_millis();
    let mut results: Vec<ItemResult> = Vec::with_capacity(items.len());
    let mut valid: Vec<(usize, Qualification)> = Vec::new();
    for (i, it) in items.iter().enumerate() {
        match validate_item(it, now) {
            Ok(q) => {
                valid.push((i, q));
                results.push(ItemResult {
                    index: i,
                    status: "pending",
                    message: None,
                    errors: Vec::new(),
                });
            }
            Err(errors) => results.push(ItemResult {
                index: i,
                status: "rejected",
                message: None,
                errors,
            }),
        }
    }

    // 1. The ledger: conditional writes, an older update never wins.
    // Owned inputs: closures over borrowed tuples trip the Send check of the handler's future.
    let writes: Vec<(usize, LedgerRow)> = valid.iter().map(|(i, q)| (*i, q.row.clone())).collect();
    // The request budget: no ledger write starts in the last 10 s (a third of a shorter
    // invocation): sending and parking need them. Items not stored are answered `failed`.
    let keep = Duration::from_secs(10).min(inv.remaining() / 3);
    let stop_writes_at = inv.deadline_ms.saturating_sub(keep.as_millis() as u64);
    let outcomes: Vec<(usize, Result<Upsert, StoreError>)> = futures::stream::iter(writes)
        .map(|(i, row)| async move {
            if now_ms() >= stop_writes_at {
                return (i, Err(StoreError::Conflict(OUT_OF_TIME.into())));
            }
            (
                i,
                crate::export::privacy::upsert_unless_erased(ctx, &row).await,
            )
        })
        .buffer_unordered(LEDGER_WRITE_CONCURRENCY)
        .collect()
        .await;
    let by_index: HashMap<usize, &Qualification> = valid.iter().map(|(i, q)| (*i, q)).collect();
    // The newest applied version per (segment, device) in this request.
    let mut applied: HashMap<(String, String), LedgerRow> = HashMap::new();
    let mut store_failed = false;
    for (i, res) in outcomes {
        let r = &mut results[i];
        match res {
            Ok(Upsert::Applied) => {
                r.status = "applied";
                let row = &by_index[&i].row;
                let k = (row.segment_id.clone(), row.device.clone());
                if applied.get(&k).is_none_or(|old| old.ts_ms < row.ts_ms) {
                    applied.insert(k, row.clone());
                }
            }
            Ok(Upsert::Stale) => {
                r.status = "stale";
                r.message = Some(
                    "not applied: the ledger already holds an update for this segment and device at the same or a later timestamp",
                );
            }
            Err(StoreError::Conflict(m)) if m == OUT_OF_TIME => {
                store_failed = true;
                r.status = "failed";
                r.errors.push(FieldError {
                    field: "qualification",
                    message: format!("{OUT_OF_TIME}; send it again"),
                });
            }
            Err(e) => {
                store_failed = true;
                tracing::error!(error = %e, "ledger write failed");
                r.status = "failed";
                r.errors.push(FieldError {
                    field: "qualification",
                    message: "could not be stored; send it again".into(),
                });
            }
        }
    }
    let _ = store_failed;

    // 2. Targets per segment, and the dirty sets of unfinished backfills (before any send).
    let rows: Vec<LedgerRow> = applied.into_values().collect();
    let mut lookups = Lookups::default();
    let mut targets: BTreeMap<String, Vec<Target>> = BTreeMap::new();
    let mut errors: Vec<String> = Vec::new();
    let segments: BTreeSet<String> = rows.iter().map(|r| r.segment_id.clone()).collect();
    let mut dirty_jobs: Vec<TargetRef> = Vec::new();
    for seg in &segments {
        let mappings = match ctx.destinations.mappings_for_segment(seg).await {
            Ok(m) => m,
            Err(e) => {
                errors.push(format!("mapping lookup failed: {e}"));
                Vec::new()
            }
        };
        for m in mappings {
            if matches!(m.status, MappingStatus::Removed | MappingStatus::Failed) {
                continue;
            }
            match lookups.target(ctx, &m).await {
                Ok(Some(t)) => {
                    match ctx.jobs.get_job(&t.r.destination_id, &t.r.segment_id).await {
                        // Until the job's drain begins, its scan may still send a stale state
                        // after ours: leave a mark for the drain.
                        Ok(Some(j)) if j.state != JobState::Done && !j.draining => {
                            dirty_jobs.push(t.r.clone())
                        }
                        Ok(_) => {}
                        Err(e) => {
                            // Unknown job state: mark dirty anyway (harmless extra resend).
                            tracing::warn!(error = %e, "job lookup failed");
                            dirty_jobs.push(t.r.clone());
                        }
                    }
                    targets.entry(seg.clone()).or_default().push(t);
                }
                Ok(None) => {}
                Err(e) => errors.push(format!("mapping lookup failed: {e}")),
            }
        }
    }
    let mut parked_rows: Vec<LedgerRow> = Vec::new();
    if !dirty_jobs.is_empty() {
        let marks: Vec<(String, String, usize)> = dirty_jobs
            .iter()
            .flat_map(|t| {
                rows.iter()
                    .enumerate()
                    .filter(move |(_, r)| r.segment_id == t.segment_id)
                    .map(move |(i, _)| (t.destination_id.clone(), t.segment_id.clone(), i))
            })
            .collect();
        let rows_ref = &rows;
        let failed: Vec<usize> = futures::stream::iter(marks)
            .map(|(dest, seg, i)| async move {
                match ctx.jobs.mark_dirty(&dest, &seg, &rows_ref[i].device).await {
                    Ok(()) => None,
                    Err(e) => {
                        tracing::error!(error = %e, "could not mark a device dirty");
                        Some(i)
                    }
                }
            })
            .buffer_unordered(LEDGER_WRITE_CONCURRENCY)
            .filter_map(|x| async move { x })
            .collect()
            .await;
        // Without its dirty mark, a send could race the backfill's scan: park the device instead
        // (the redrive sends the ledger's state later, after the scan).
        let failed: BTreeSet<usize> = failed.into_iter().collect();
        let failed: Vec<LedgerRow> = failed.into_iter().map(|i| rows[i].clone()).collect();
        parked_rows = failed;
    }

    // 3. Send, verify, park what fails.
    let to_send: Vec<LedgerRow> = rows
        .into_iter()
        .filter(|r| targets.contains_key(&r.segment_id))
        .collect();
    // Amazon calls end `reserve` before the budget (`crate::budget`); with under a second left
    // nothing is sent: the rows are parked for the redrive at once.
    let mut report =
        if crate::budget::amazon_time_left().is_some_and(|l| l < Duration::from_secs(1)) {
            let mut r = DeliveryReport::default();
            park_rows(
                &targets,
                to_send,
                "the request's time budget ran out before sending",
                &mut r,
            );
            r
        } else {
            deliver(ctx, &mut lookups, &targets, to_send).await
        };
    if !parked_rows.is_empty() {
        park_rows(&targets, parked_rows, "dirty mark failed", &mut report);
    }
    let mut park_errors = 0u64;
    for p in std::mem::take(&mut report.failed) {
        match ctx.parked.park(&p).await {
            Ok(()) => {
                ParkedCounts::new(&ctx.accounts)
                    .add_logged(&p.account_id, &[(Counter::Patches, p.devices.len() as i64)])
                    .await
            }
            Err(e) => {
                // The ledger still holds the truth; a restarted backfill resends it.
                tracing::error!(error = %e, "could not park a patch");
                park_errors += p.devices.len() as u64;
            }
        }
    }
    report.errors.extend(errors);
    if park_errors > 0 {
        report.errors.push(format!(
            "{park_errors} device updates could not be parked; they stay in the ledger"
        ));
    }

    let count = |s: &str| results.iter().filter(|r| r.status == s).count();
    let (applied_n, stale_n, rejected_n, failed_n) = (
        count("applied"),
        count("stale"),
        count("rejected"),
        count("failed"),
    );
    let mut m = crate::telemetry::Metrics::new(ctx.metrics_fn);
    m.count("QualificationsApplied", applied_n as u64)
        .count("QualificationsStale", stale_n as u64)
        .count("QualificationsRejected", (rejected_n + failed_n) as u64)
        .count("AudiencePatchesSent", report.patches)
        .count("AudiencePatchesParked", report.parked);
    m.emit();
    let status = if rejected_n + failed_n == 0 { 200 } else { 207 };
    HttpResponse::json(
        status,
        &json!({
            "results": results,
            "totals": {
                "received": items.len(),
                "applied": applied_n,
                "stale": stale_n,
                "rejected": rejected_n,
                "failed": failed_n,
            },
            "delivery": report,
        }),
    )
}
