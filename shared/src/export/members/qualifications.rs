//! `POST /qualifications`: ledger writes, dirty marks, delivery, the answer.

use super::delivery::{DeliveryReport, deliver};
use super::dirty_marks::mark_dirty;
use super::ledger_writes::{OUT_OF_TIME, write_all};
use super::parking::{park_rows, park_unrouted};
use super::request::{FieldError, ItemResult, parse_body, validate_items};
use super::targets::{Lookups, Target, route};
use crate::export::ExportCtx;
use crate::http::error::respond;
use crate::http::{ApiResult, HttpRequest, HttpResponse};
use crate::runtime::Invocation;
use crate::store::StoreError;
use crate::store::ledger::{LedgerRow, Upsert};
use crate::store::parked_counts::{Counter, ParkedCounts};
use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Why rows were parked unrouted when the lookups or the marks ran out of time.
const LOOKUPS_OUT_OF_TIME: &str = "the request's time budget ran out before its mappings were read";
const MARKS_OUT_OF_TIME: &str =
    "the request's time budget ran out before its dirty marks were written";

/// `POST /qualifications` (the router checks the API key first). It answers within the request
/// budget: ledger writes stop 10 s before it (a third of the time left, if shorter), and device
/// updates Amazon cannot take before the budget's Amazon deadline are parked
/// (`delivery.parked`) and redriven.
pub async fn handle_qualifications(
    ctx: &ExportCtx,
    req: &HttpRequest,
    inv: &Invocation,
) -> HttpResponse {
    respond(qualifications(ctx, req, inv).await)
}

async fn qualifications(
    ctx: &ExportCtx,
    req: &HttpRequest,
    inv: &Invocation,
) -> ApiResult<HttpResponse> {
    let items = parse_body(req)?;
    let now = chrono::Utc::now().timestamp_millis();
    let (mut results, valid) = validate_items(&items, now);
    // 1. The ledger (conditional writes, an older update never wins), in waves; each wave's
    //    applied rows are delivered while the next waves are written.
    let (waves_tx, waves_rx) = futures::channel::mpsc::unbounded();
    let (outcomes, (mut report, routing_errors)) = futures::join!(
        write_all(ctx, inv, &valid, waves_tx),
        deliver_waves(ctx, waves_rx)
    );
    for ((i, _), res) in valid.iter().zip(outcomes) {
        record_write(&mut results[*i], res);
    }
    let park_errors = park_failed(ctx, &mut report).await;
    report.errors.extend(routing_errors);
    if park_errors > 0 {
        report.errors.push(format!(
            "{park_errors} device updates could not be parked; they stay in the ledger"
        ));
    }
    Ok(answer(ctx, &results, items.len(), &report))
}

/// Delivers each wave of applied rows as it comes: 2. its targets (read after its writes) and
/// the dirty sets of unfinished backfills (before any send); 3. send, verify, park what fails.
/// Returns the merged report and the lookup errors (each once).
async fn deliver_waves(
    ctx: &ExportCtx,
    mut waves: UnboundedReceiver<Vec<LedgerRow>>,
) -> (DeliveryReport, Vec<String>) {
    let mut lookups = Lookups::default();
    let (mut report, mut errors) = (DeliveryReport::default(), Vec::<String>::new());
    while let Some(rows) = waves.next().await {
        let wave = deliver_wave(ctx, &mut lookups, rows, &mut errors).await;
        merge(&mut report, wave);
    }
    (report, errors)
}

/// One wave of applied rows: its targets and dirty marks within the Amazon window, then the
/// send. Rows whose targets or marks are missing are parked unrouted (the redrive looks their
/// targets up and marks them before it sends): a segment with an unknown target is still sent to
/// the known ones, and a row without its mark is not sent (a stale scan send could follow).
async fn deliver_wave(
    ctx: &ExportCtx,
    lookups: &mut Lookups,
    rows: Vec<LedgerRow>,
    errors: &mut Vec<String>,
) -> DeliveryReport {
    let mut wave = DeliveryReport::default();
    let Some(routing) =
        within_window(route(ctx, lookups, rows.iter().map(|r| &r.segment_id))).await
    else {
        park_unrouted(&rows, LOOKUPS_OUT_OF_TIME, &mut wave);
        extend_once(errors, vec![LOOKUPS_OUT_OF_TIME.to_string()]);
        return wave;
    };
    extend_once(errors, routing.errors);
    let (rows, unmarked, why) = match within_window(mark_dirty(ctx, &routing.dirty_jobs, &rows))
        .await
    {
        Some(failed) => {
            let failed: BTreeSet<(String, String)> = failed.iter().map(row_key).collect();
            let (unmarked, marked) = rows.into_iter().partition(|r| failed.contains(&row_key(r)));
            (marked, unmarked, "dirty mark failed")
        }
        None => (Vec::new(), rows, MARKS_OUT_OF_TIME),
    };
    let unrouted: Vec<LedgerRow> = rows
        .iter()
        .filter(|r| routing.unrouted.contains(&r.segment_id))
        .cloned()
        .collect();
    wave = send(ctx, lookups, &routing.targets, rows).await;
    if !unmarked.is_empty() {
        park_unrouted(&unmarked, why, &mut wave);
    }
    if !unrouted.is_empty() {
        park_unrouted(&unrouted, "mapping lookup failed", &mut wave);
    }
    wave
}

fn row_key(r: &LedgerRow) -> (String, String) {
    (r.segment_id.clone(), r.device.clone())
}

/// `work` within the request's Amazon window (`crate::budget`), so that applied rows are parked,
/// not lost to the budget's hard answer, when the lookups or marks after the ledger writes are
/// slow; `None` when the window closed first.
async fn within_window<F: std::future::Future>(work: F) -> Option<F::Output> {
    match crate::budget::amazon_time_left() {
        Some(left) => tokio::time::timeout(left, work).await.ok(),
        None => Some(work.await),
    }
}

/// Adds one wave's delivery to the request's.
fn merge(into: &mut DeliveryReport, wave: DeliveryReport) {
    into.patches += wave.patches;
    into.requests += wave.requests;
    into.resent += wave.resent;
    into.parked += wave.parked;
    extend_once(&mut into.errors, wave.errors);
    into.failed.extend(wave.failed);
}

/// Appends a wave's errors, leaving out those an earlier wave already reported.
fn extend_once(errors: &mut Vec<String>, wave: Vec<String>) {
    let earlier = errors.len();
    for e in wave {
        if !errors[..earlier].contains(&e) {
            errors.push(e);
        }
    }
}

/// Sets an item's line from its ledger write.
fn record_write(r: &mut ItemResult, res: Result<Upsert, StoreError>) {
    match res {
        Ok(Upsert::Applied) => r.status = "applied",
        Ok(Upsert::Stale) => {
            r.status = "stale";
            r.message = Some(
                "not applied: the ledger already holds an update for this segment and device at the same or a later timestamp",
            );
        }
        Err(StoreError::Conflict(m)) if m == OUT_OF_TIME => {
            r.status = "failed";
            r.errors.push(FieldError {
                field: "qualification",
                message: format!("{OUT_OF_TIME}; send it again"),
            });
        }
        Err(e) => {
            tracing::error!(error = %e, "ledger write failed");
            r.status = "failed";
            r.errors.push(FieldError {
                field: "qualification",
                message: "could not be stored; send it again".into(),
            });
        }
    }
}

/// Sends the rows that have targets (send, verify, park what fails). Amazon calls end `reserve`
/// before the budget (`crate::budget`); with under a second left nothing is sent: the rows are
/// parked for the redrive at once.
async fn send(
    ctx: &ExportCtx,
    lookups: &mut Lookups,
    targets: &BTreeMap<String, Vec<Target>>,
    rows: Vec<LedgerRow>,
) -> DeliveryReport {
    let to_send: Vec<LedgerRow> = rows
        .into_iter()
        .filter(|r| targets.contains_key(&r.segment_id))
        .collect();
    if crate::budget::amazon_time_left().is_some_and(|l| l < Duration::from_secs(1)) {
        let mut r = DeliveryReport::default();
        park_rows(
            targets,
            to_send,
            "the request's time budget ran out before sending",
            &mut r,
        );
        r
    } else {
        deliver(ctx, lookups, targets, to_send).await
    }
}

/// Parks what could not be delivered; returns the device updates that could not be parked.
async fn park_failed(ctx: &ExportCtx, report: &mut DeliveryReport) -> u64 {
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
    park_errors
}

/// The 200 (or 207 when an item was rejected or failed) answer, and its metrics.
fn answer(
    ctx: &ExportCtx,
    results: &[ItemResult],
    received: usize,
    report: &DeliveryReport,
) -> HttpResponse {
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
                "received": received,
                "applied": applied_n,
                "stale": stale_n,
                "rejected": rejected_n,
                "failed": failed_n,
            },
            "delivery": report,
        }),
    )
}
