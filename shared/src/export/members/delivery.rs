//! Sending membership to Amazon: patches, send-then-verify, parking what fails.

use super::targets::{Lookups, Target, TargetRef};
use crate::amazon::AmazonError;
use crate::domain::audience::{Batch, Batcher, Change, PatchOp, group, split_body};
use crate::export::ExportCtx;
use crate::runtime::now_ms;
use crate::store::accounts::{AccountStatus, IntegratedAccount};
use crate::store::ledger::LedgerRow;
use crate::store::parked_retry::RetryState;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Rounds of send-then-verify before the still-changing devices are parked.
pub const VERIFY_ROUNDS: usize = 3;
/// Concurrent PATCH requests of one delta delivery.
const SEND_CONCURRENCY: usize = 4;
/// Device keys per parked message (each ≤ ~400 bytes: ≤ 140 KB, ≤ 190 KB once sealed with the
/// KMS key (base64), under SQS's 256 KB).
const PARK_CHUNK: usize = 350;

/// A patch job that could not be delivered now; redriven by `run_redrive`. Device keys and
/// mapping references only: the patch is recomputed from the ledger when redriven.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParkedPatch {
    /// Marks the message kind (the queue is ours alone, but be explicit).
    pub kind: String,
    pub account_id: String,
    pub targets: Vec<TargetRef>,
    /// `(segmentId, deviceKey)` pairs.
    pub devices: Vec<(String, String)>,
    /// Why it was parked (no personal data).
    pub reason: String,
    /// Redrive attempts, age and delay (`store::parked_retry`).
    #[serde(default)]
    pub retry: RetryState,
}

pub(super) const PARKED_KIND: &str = "segment_patch_v1";

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
        // account id → rows (by index) to send there.
        let mut per_account: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, r) in rows.iter().enumerate() {
            for t in targets.get(&r.segment_id).into_iter().flatten() {
                let v = per_account.entry(t.account_id.clone()).or_default();
                if v.last() != Some(&i) {
                    v.push(i);
                }
            }
        }
        let mut acked: Vec<usize> = Vec::new();
        let mut failed_rows: BTreeMap<String, (Vec<usize>, String)> = BTreeMap::new();
        for (account_id, idxs) in per_account {
            let account = match lookups.account(ctx, &account_id).await {
                Ok(Some(a)) => a,
                Ok(None) => {
                    report
                        .errors
                        .push(format!("account {account_id} is not linked"));
                    failed_rows.insert(account_id, (idxs, "account not linked".into()));
                    continue;
                }
                Err(e) => {
                    report.errors.push(format!("account lookup failed: {e}"));
                    failed_rows.insert(account_id, (idxs, "account lookup failed".into()));
                    continue;
                }
            };
            if account.status != AccountStatus::Active {
                let msg = AmazonError::ReauthorizationRequired.user_message();
                report.errors.push(format!("account {account_id}: {msg}"));
                failed_rows.insert(
                    account_id,
                    (idxs, format!("account {}", account.status.as_str())),
                );
                continue;
            }
            // Changes → one patch per device and op, tagged with the rows it carries.
            let mut changes = Vec::new();
            let mut rows_of_device: HashMap<(&str, PatchOp), Vec<usize>> = HashMap::new();
            for &i in &idxs {
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
            let account_targets: Vec<TargetRef> = targets
                .values()
                .flatten()
                .filter(|t| t.account_id == account_id)
                .map(|t| t.r.clone())
                .collect();
            let mut first_error: Option<AmazonError> = None;
            for (b, res) in results {
                match res {
                    Ok(n) => {
                        report.requests += n;
                        report.patches += b.len() as u64;
                        acked.extend(b.tags.into_iter().flatten());
                    }
                    Err(e) => {
                        let entry = failed_rows
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
        // Park what failed (by account, only towards that account's targets).
        for (account_id, (idxs, reason)) in failed_rows {
            if idxs.is_empty() {
                continue;
            }
            let devices: Vec<(String, String)> = idxs
                .iter()
                .map(|&i| (rows[i].segment_id.clone(), rows[i].device.clone()))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let account_targets: Vec<TargetRef> = targets
                .values()
                .flatten()
                .filter(|t| t.account_id == account_id)
                .map(|t| t.r.clone())
                .collect();
            push_parked(&mut report, &account_id, account_targets, devices, &reason);
        }
        // Verify: rows whose version moved since we read them are sent again.
        acked.sort_unstable();
        acked.dedup();
        if acked.is_empty() {
            break;
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
            Ok(now) => {
                rows = now
                    .into_iter()
                    .filter(|r| {
                        sent.get(&(r.segment_id.clone(), r.device.clone())) != Some(&r.ts_ms)
                    })
                    .collect();
            }
            Err(e) => {
                // Could not verify: park them, the redrive recomputes from the ledger.
                report.errors.push(format!("verify read failed: {e}"));
                let stale: Vec<LedgerRow> = acked.iter().map(|&i| rows[i].clone()).collect();
                park_rows(targets, stale, "verify read failed", &mut report);
                break;
            }
        }
    }
    report
}

pub(super) fn push_parked(
    report: &mut DeliveryReport,
    account_id: &str,
    targets: Vec<TargetRef>,
    devices: Vec<(String, String)>,
    reason: &str,
) {
    for chunk in devices.chunks(PARK_CHUNK) {
        report.parked += chunk.len() as u64;
        report.failed.push(ParkedPatch {
            kind: PARKED_KIND.into(),
            account_id: account_id.to_string(),
            targets: targets.clone(),
            devices: chunk.to_vec(),
            reason: reason.to_string(),
            retry: RetryState::parked_at(now_ms()),
        });
    }
}

/// Per account: the targets and the `(segment, device)` keys to park.
pub(super) type ParkGroup = (BTreeSet<TargetRef>, BTreeSet<(String, String)>);

pub(super) fn park_rows(
    targets: &BTreeMap<String, Vec<Target>>,
    rows: Vec<LedgerRow>,
    reason: &str,
    report: &mut DeliveryReport,
) {
    let mut per_account: BTreeMap<String, ParkGroup> = BTreeMap::new();
    for r in rows {
        for t in targets.get(&r.segment_id).into_iter().flatten() {
            let e = per_account.entry(t.account_id.clone()).or_default();
            e.0.insert(t.r.clone());
            e.1.insert((r.segment_id.clone(), r.device.clone()));
        }
    }
    for (account_id, (ts, devs)) in per_account {
        push_parked(
            report,
            &account_id,
            ts.into_iter().collect(),
            devs.into_iter().collect(),
            reason,
        );
    }
}
