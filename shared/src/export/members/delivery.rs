//! Sending membership to Amazon: patches, send-then-verify, parking what fails.

use super::parking::{ParkedPatch, park_failed_rows, park_rows};
use super::targets::{Lookups, Target, TargetRef};
use crate::amazon::AmazonError;
use crate::domain::audience::{Batch, Batcher, Change, PatchOp, group, split_body};
use crate::export::ExportCtx;
use crate::store::accounts::{AccountStatus, IntegratedAccount};
use crate::store::ledger::LedgerRow;
use futures::StreamExt;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// Rounds of send-then-verify before the still-changing devices are parked.
pub const VERIFY_ROUNDS: usize = 3;
/// Concurrent PATCH requests of one delta delivery.
const SEND_CONCURRENCY: usize = 4;
/// Counters of one delivery.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryReport {
    pub patches: u64,
    pub requests: u64,
    pub resent: u64,
    pub parked: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    #[serde(skip)]
    pub(super) failed: Vec<ParkedPatch>,
}

/// A store failure as a line of `errors`: the store's own words (tables, endpoints, request
/// ids) go to the log, the caller of `POST /qualifications` reads what failed.
pub(super) fn store_failed(what: &str, e: &dyn std::fmt::Display) -> String {
    tracing::error!(error = %e, "{what}");
    format!("{what} (details in the function's log)")
}

/// A batch and what sending it gave.
pub(super) type SentBatch = (Batch<Vec<usize>>, Result<u64, AmazonError>);

/// Sends one body; a 413 splits it and sends the halves. Returns the requests made.
pub(super) fn send_body<'a>(
    ctx: &'a ExportCtx,
    account: &'a IntegratedAccount,
    body: Vec<u8>,
) -> futures::future::BoxFuture<'a, Result<u64, AmazonError>> {
    Box::pin(async move {
        let halves = match ctx
            .amazon
            .patch_audiences(&account.login(), account.scope(), body.clone())
            .await
        {
            Ok(_) => return Ok(1),
            Err(AmazonError::PayloadTooLarge {
                message,
                request_id,
            }) => match split_body(&body) {
                Some(h) => h,
                None => {
                    return Err(AmazonError::Rejected {
                        status: 413,
                        message: format!("a single patch is too large: {message}"),
                        request_id,
                    });
                }
            },
            Err(e) => return Err(e),
        };
        drop(body);
        let a = send_body(ctx, account, halves.0).await?;
        let b = send_body(ctx, account, halves.1).await?;
        Ok(1 + a + b)
    })
}

/// Records an Amazon error where the user sees it and reacts to it (reauthorization).
pub(super) async fn record_amazon_error(
    ctx: &ExportCtx,
    account: &IntegratedAccount,
    targets: &[TargetRef],
    e: &AmazonError,
) {
    if matches!(e, AmazonError::ReauthorizationRequired)
        && let Err(se) = ctx
            .accounts
            .mark_reauthorization_required(&account.token_secret)
            .await
    {
        tracing::error!(error = %se, "could not mark the accounts for reauthorization");
    }
    let msg = e.user_message();
    for t in targets {
        if let Err(se) = ctx
            .destinations
            .set_mapping_error(&t.destination_id, &t.segment_id, &msg)
            .await
        {
            tracing::error!(error = %se, "could not record a mapping error");
        }
    }
}

/// Rows (by index) that failed towards an account, and why.
pub(super) type FailedRows = BTreeMap<String, (Vec<usize>, String)>;

/// One round's outcome: the rows acknowledged, and the rows failed per account.
#[derive(Default)]
struct Round {
    acked: Vec<usize>,
    failed: FailedRows,
}

/// Sends the current state of `rows` to every target of their segment, then verifies and resends
/// rows that changed meanwhile. Rows that cannot be delivered are returned in
/// `report.failed` (grouped per account) for the caller to park or leave on the queue.
pub(super) async fn deliver(
    ctx: &ExportCtx,
    lookups: &mut Lookups,
    targets: &BTreeMap<String, Vec<Target>>,
    mut rows: Vec<LedgerRow>,
) -> DeliveryReport {
    let mut report = DeliveryReport::default();
    let mut round = 0;
    while !rows.is_empty() {
        if round == VERIFY_ROUNDS {
            // Still changing under us: let the redrive take them from the ledger later.
            park_rows(targets, rows, "kept changing during delivery", &mut report);
            break;
        }
        round += 1;
        if round > 1 {
            report.resent += rows.len() as u64;
        }
        let mut out = Round::default();
        for (account_id, idxs) in rows_per_account(&rows, targets) {
            send_to_account(
                ctx,
                lookups,
                targets,
                &rows,
                account_id,
                idxs,
                &mut report,
                &mut out,
            )
            .await;
        }
        park_failed_rows(targets, &rows, out.failed, &mut report);
        match verify(ctx, targets, &rows, out.acked, &mut report).await {
            Some(changed) => rows = changed,
            None => break,
        }
    }
    report
}

/// account id → rows (by index) to send there.
fn rows_per_account(
    rows: &[LedgerRow],
    targets: &BTreeMap<String, Vec<Target>>,
) -> BTreeMap<String, Vec<usize>> {
    let mut per_account: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        for t in targets.get(&r.segment_id).into_iter().flatten() {
            let v = per_account.entry(t.account_id.clone()).or_default();
            if v.last() != Some(&i) {
                v.push(i);
            }
        }
    }
    per_account
}

/// The mappings of one account.
pub(super) fn targets_of_account(
    targets: &BTreeMap<String, Vec<Target>>,
    account_id: &str,
) -> Vec<TargetRef> {
    targets
        .values()
        .flatten()
        .filter(|t| t.account_id == account_id)
        .map(|t| t.r.clone())
        .collect()
}

/// Sends one account's rows; records what was acknowledged and what failed in `out`.
#[allow(clippy::too_many_arguments)]
async fn send_to_account(
    ctx: &ExportCtx,
    lookups: &mut Lookups,
    targets: &BTreeMap<String, Vec<Target>>,
    rows: &[LedgerRow],
    account_id: String,
    idxs: Vec<usize>,
    report: &mut DeliveryReport,
    out: &mut Round,
) {
    let account = match active_account(ctx, lookups, &account_id, report).await {
        Ok(a) => a,
        Err(reason) => {
            out.failed.insert(account_id, (idxs, reason));
            return;
        }
    };
    let batches = account_batches(rows, &idxs, targets, &account_id, report);
    let account_ref = &account;
    let results: Vec<SentBatch> = futures::stream::iter(batches)
        .map(|mut b| async move {
            let body = std::mem::take(&mut b.body);
            let res = send_body(ctx, account_ref, body).await;
            (b, res)
        })
        .buffer_unordered(SEND_CONCURRENCY)
        .collect()
        .await;
    let account_targets = targets_of_account(targets, &account_id);
    let mut first_error: Option<AmazonError> = None;
    for (b, res) in results {
        match res {
            Ok(n) => {
                report.requests += n;
                report.patches += b.len() as u64;
                out.acked.extend(b.tags.into_iter().flatten());
            }
            Err(e) => {
                let entry = out
                    .failed
                    .entry(account_id.clone())
                    .or_insert_with(|| (Vec::new(), e.user_message()));
                if matches!(e, AmazonError::Rejected { .. }) {
                    // Never retried blindly: recorded on the mapping; the ledger keeps
                    // the truth for a later backfill.
                    report.errors.push(e.user_message());
                } else {
                    entry.0.extend(b.tags.into_iter().flatten());
                }
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        record_amazon_error(ctx, &account, &account_targets, &e).await;
        if !matches!(e, AmazonError::Rejected { .. }) {
            report.errors.push(e.user_message());
        }
    }
}

/// The account when it is linked and active; otherwise the error is reported and the reason
/// its rows are parked returned.
async fn active_account(
    ctx: &ExportCtx,
    lookups: &mut Lookups,
    account_id: &str,
    report: &mut DeliveryReport,
) -> Result<IntegratedAccount, String> {
    let account = match lookups.account(ctx, account_id).await {
        Ok(Some(a)) => a,
        Ok(None) => {
            report
                .errors
                .push(format!("account {account_id} is not linked"));
            return Err("account not linked".into());
        }
        Err(e) => {
            let what = format!("account {account_id}: lookup failed");
            report.errors.push(store_failed(&what, &e));
            return Err("account lookup failed".into());
        }
    };
    if account.status != AccountStatus::Active {
        let msg = AmazonError::ReauthorizationRequired.user_message();
        report.errors.push(format!("account {account_id}: {msg}"));
        return Err(format!("account {}", account.status.as_str()));
    }
    Ok(account)
}

/// One account's changes → one patch per device and op, tagged with the rows it carries,
/// packed into bodies.
fn account_batches(
    rows: &[LedgerRow],
    idxs: &[usize],
    targets: &BTreeMap<String, Vec<Target>>,
    account_id: &str,
    report: &mut DeliveryReport,
) -> Vec<Batch<Vec<usize>>> {
    let mut changes = Vec::new();
    let mut rows_of_device: HashMap<(&str, PatchOp), Vec<usize>> = HashMap::new();
    for &i in idxs {
        let r = &rows[i];
        let op = PatchOp::for_status(r.qualified);
        for t in targets.get(&r.segment_id).into_iter().flatten() {
            if t.account_id == account_id {
                changes.push(Change {
                    device: r.device.clone(),
                    op,
                    audience_id: t.audience_id,
                    consent: r.consent.clone(),
                });
            }
        }
        rows_of_device
            .entry((r.device.as_str(), op))
            .or_default()
            .push(i);
    }
    let mut batcher: Batcher<Vec<usize>> = Batcher::default();
    let mut batches: Vec<Batch<Vec<usize>>> = Vec::new();
    for p in group(changes) {
        let tag = rows_of_device
            .get(&(p.device.as_str(), p.op))
            .cloned()
            .unwrap_or_default();
        match batcher.push(&p, tag) {
            Ok(Some(b)) => batches.push(b),
            Ok(None) => {}
            Err(e) => report.errors.push(format!("a patch was dropped: {e}")),
        }
    }
    batches.extend(batcher.take());
    batches
}

/// Verify: the acknowledged rows whose version moved since they were read, to send again.
/// `None` ends the delivery: nothing was acknowledged, or the verify read failed (the rows are
/// then parked: the redrive recomputes them from the ledger).
async fn verify(
    ctx: &ExportCtx,
    targets: &BTreeMap<String, Vec<Target>>,
    rows: &[LedgerRow],
    mut acked: Vec<usize>,
    report: &mut DeliveryReport,
) -> Option<Vec<LedgerRow>> {
    acked.sort_unstable();
    acked.dedup();
    if acked.is_empty() {
        return None;
    }
    let keys: Vec<(String, String)> = acked
        .iter()
        .map(|&i| (rows[i].segment_id.clone(), rows[i].device.clone()))
        .collect();
    let sent: HashMap<(String, String), i64> = acked
        .iter()
        .map(|&i| {
            (
                (rows[i].segment_id.clone(), rows[i].device.clone()),
                rows[i].ts_ms,
            )
        })
        .collect();
    match ctx.ledger.get_many(&keys).await {
        Ok(now) => Some(
            now.into_iter()
                .filter(|r| sent.get(&(r.segment_id.clone(), r.device.clone())) != Some(&r.ts_ms))
                .collect(),
        ),
        Err(e) => {
            report.errors.push(store_failed("verify read failed", &e));
            let stale: Vec<LedgerRow> = acked.iter().map(|&i| rows[i].clone()).collect();
            park_rows(targets, stale, "verify read failed", report);
            None
        }
    }
}
