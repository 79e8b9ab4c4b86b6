//! The membership side of segment export: qualifications into the ledger, audience patches for
//! live deltas, historical backfill jobs (sharded, checkpointed, leased), the dirty-set drain,
//! and the redrive of parked patches.
//!
//! # Why Amazon ends with the ledger's state
//!
//! The ledger (`store::ledger`) is the truth: every row carries its version (the update's
//! timestamp) and a write never replaces a newer version. Every path that sends membership to
//! Amazon follows two rules:
//!
//! 1. **Send, then verify** (deltas, redrive, dirty drain): after Amazon acknowledges a batch, the
//!    rows it carried are read again (consistent `BatchGetItem`); a row whose version changed in
//!    the meantime is sent again from its current state (up to [`VERIFY_ROUNDS`] rounds, then
//!    parked). So for every device, the last acknowledged send is the ledger's latest state:
//!    whoever sent a stale state finds out at its verify, which happens after its own ack and
//!    therefore after the newer write.
//! 2. **Deltas mark the backfill's dirty set before sending.** A backfill does not verify each
//!    of its (many) rows; instead a delta for a mapping whose job is still scanning records the
//!    device in the job's dirty set (`store::jobs`) *after* its ledger write and *before* its own
//!    send. Once every shard is done (every scan batch acknowledged), the job turns `draining`,
//!    makes one pass over the dirty set re-sending each device from the ledger's current state
//!    (send-then-verify), and only then finishes. For a stale scan send S of device X and a
//!    delta D on X: if D's send is acknowledged after S, D wins; otherwise D's mark (made before
//!    D's send, so before S's ack, so before the drain began) is seen by the drain pass, whose
//!    send comes after S. A delta that reads the job as `draining` or done needs no mark: its
//!    send follows every scan batch. Drain entries are deleted only if their nonce is unchanged.
//!    The pass never restarts from the beginning, so a steady stream of deltas cannot keep a job
//!    from finishing.
//!
//! A mapping that becomes active after a delta read the mapping list is covered by the backfill
//! it starts (the scan reads the ledger after the delta's write).
//!
//! # Backfill
//!
//! A job per mapping (`start_backfill`), one shard per ledger shard (16). `run_backfill` leases
//! shards (conditional writes with an expiry, so two invocations never work the same shard and a
//! dead one's shard is taken over), streams the shard page by page (≤ 2 000 rows per page, the
//! next page prefetched while the current one is sent; never the whole segment),
//! packs patches (2 000 / 1 MB), sends, and saves a checkpoint (the last device of the
//! acknowledged batch) after every acknowledged batch. It stops before the deadline minus a
//! safety margin and resumes from the checkpoint: nobody is skipped, and at most the one batch in
//! flight when an invocation died is sent twice.
//!
//! Rate: the `AmazonClient` spaces `PATCH` calls to ≤ 100/s per process. Across processes, at
//! most `BACKFILL_MAX_INVOCATIONS` (default 2) invocations run backfills at once (slot leases in
//! `store::jobs`, held until the invocation's deadline), and each paces its backfill requests to
//! 100 / that number per second, so backfills together stay ≤ 100 requests/s. An invocation works
//! at most `BACKFILL_PARALLEL_SHARDS` (default 4) shards at once. Live deltas come on top; Amazon's
//! 429s are honoured by the client's retry path.
//!
//! # Errors from Amazon
//!
//! - 413: the body is split in halves and resent.
//! - 429 / 5xx / timeouts: retried by the client; if they persist, a backfill shard keeps its
//!   checkpoint, records the error (job and mapping) and resumes on a later run; a delta parks
//!   its devices on `PARKED_PATCHES_QUEUE_URL` for `run_redrive`.
//! - other 4xx: the mapping's last error says why; a backfill job moves to `failed` (re-armed by
//!   `start_backfill`), a delta is not retried.
//! - account not found / reauthorization required: the mapping's last error uses the contract's
//!   wording; reauthorization marks every account on the login. Deltas are parked.
//!
//! Parked messages carry device keys and mapping references, never bodies: the redrive
//! recomputes each patch from the ledger's current state, so a late redrive cannot undo a newer
//! change.

mod redrive;

pub use redrive::{run_redrive, run_redrive_with};

use super::ExportCtx;
use crate::amazon::AmazonError;
use crate::domain::audience::{
    Batch, Batcher, Change, IdType, MAX_BODY_BYTES, MAX_PATCHES, Patch, PatchOp, group, split_body,
    validate_consent, validate_device_id,
};
use crate::domain::segment::check_segment_id;
use crate::http::{HttpRequest, HttpResponse, parse_json_body};
use crate::runtime::{Invocation, now_ms};
use crate::store::StoreError;
use crate::store::accounts::{AccountStatus, IntegratedAccount};
use crate::store::destinations::{MappingStatus, SegmentMapping};
use crate::store::erased_rows::drop_erased;
use crate::store::jobs::{BackfillJob, JobPurpose, JobState};
use crate::store::ledger::{LEDGER_SHARDS, LedgerRow, Upsert};
use crate::store::parked_counts::{Counter, ParkedCounts};
use crate::store::parked_retry::RetryState;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Most qualifications per request.
pub const MAX_QUALIFICATIONS: usize = 10_000;
/// Largest request body (Lambda's synchronous payload limit).
pub const MAX_REQUEST_BYTES: usize = 6 * 1024 * 1024;
/// Rounds of send-then-verify before the still-changing devices are parked.
pub const VERIFY_ROUNDS: usize = 3;
/// How far in the future a timestamp may be (clock skew); later ones would freeze a row.
const MAX_FUTURE_MS: i64 = 5 * 60 * 1000;
/// Concurrent conditional ledger writes per request.
const LEDGER_WRITE_CONCURRENCY: usize = 32;
/// Concurrent PATCH requests of one delta delivery.
const SEND_CONCURRENCY: usize = 4;
/// Device keys per parked message (each ≤ ~400 bytes: ≤ 140 KB, ≤ 190 KB once sealed with the
/// KMS key (base64), under SQS's 256 KB).
const PARK_CHUNK: usize = 350;

// ------------------------------------------------------------------------------------------
// Qualifications: parsing and validation

/// `qualified` / `unqualified`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Qualified,
    Unqualified,
}

/// A validated qualification.
#[derive(Clone, Debug)]
struct Qualification {
    row: LedgerRow,
}

#[derive(Debug, Serialize)]
struct FieldError {
    field: &'static str,
    message: String,
}

/// RFC 3339, or epoch milliseconds (an integer below 10^11 is taken as epoch seconds).
fn parse_timestamp(v: &Value, now: i64) -> Result<i64, String> {
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

fn validate_item(v: &Value, now: i64) -> Result<Qualification, Vec<FieldError>> {
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

// ------------------------------------------------------------------------------------------
// Targets: where a segment's membership goes

/// One active mapping, resolved to its audience and account.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    pub destination_id: String,
    pub segment_id: String,
}

#[derive(Clone, Debug)]
struct Target {
    r: TargetRef,
    audience_id: i64,
    account_id: String,
}

/// Per-call caches of destinations' accounts.
#[derive(Default)]
struct Lookups {
    account_of_destination: HashMap<String, Option<String>>,
    accounts: HashMap<String, Option<IntegratedAccount>>,
}

impl Lookups {
    async fn account_id(
        &mut self,
        ctx: &ExportCtx,
        destination_id: &str,
    ) -> Result<Option<String>, StoreError> {
        if let Some(a) = self.account_of_destination.get(destination_id) {
            return Ok(a.clone());
        }
        let a = ctx
            .destinations
            .get_destination(destination_id)
            .await?
            .map(|d| d.account_id);
        self.account_of_destination
            .insert(destination_id.to_string(), a.clone());
        Ok(a)
    }

    async fn account(
        &mut self,
        ctx: &ExportCtx,
        account_id: &str,
    ) -> Result<Option<IntegratedAccount>, StoreError> {
        if let Some(a) = self.accounts.get(account_id) {
            return Ok(a.clone());
        }
        let a = ctx.accounts.get_account(account_id).await?;
        self.accounts.insert(account_id.to_string(), a.clone());
        Ok(a)
    }

    /// Resolves a mapping (re-read consistently: the segment index may lag) to a target when it
    /// is active.
    async fn target(
        &mut self,
        ctx: &ExportCtx,
        m: &SegmentMapping,
    ) -> Result<Option<Target>, StoreError> {
        let Some(m) = ctx
            .destinations
            .get_mapping(&m.destination_id, &m.segment_id)
            .await?
        else {
            return Ok(None);
        };
        let (MappingStatus::Active, Some(audience_id)) = (m.status, m.audience_id) else {
            return Ok(None);
        };
        let Some(account_id) = self.account_id(ctx, &m.destination_id).await? else {
            return Ok(None);
        };
        Ok(Some(Target {
            r: TargetRef {
                destination_id: m.destination_id,
                segment_id: m.segment_id,
            },
            audience_id,
            account_id,
        }))
    }
}

// ------------------------------------------------------------------------------------------
// Sending

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

const PARKED_KIND: &str = "segment_patch_v1";

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
    failed: Vec<ParkedPatch>,
}

/// A batch and what sending it gave.
type SentBatch = (Batch<Vec<usize>>, Result<u64, AmazonError>);

/// Sends one body; a 413 splits it and sends the halves. Returns the requests made.
fn send_body<'a>(
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
async fn record_amazon_error(
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
async fn deliver(
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

fn push_parked(
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
type ParkGroup = (BTreeSet<TargetRef>, BTreeSet<(String, String)>);

fn park_rows(
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

// ------------------------------------------------------------------------------------------
// POST /qualifications

#[derive(Serialize)]
struct ItemResult {
    index: usize,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<FieldError>,
}

const OUT_OF_TIME: &str = "not stored: the request's time budget ran out";

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
            (i, super::privacy::upsert_unless_erased(ctx, &row).await)
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

// ------------------------------------------------------------------------------------------
// Backfill

/// Knobs of a backfill run (defaults from the environment).
#[derive(Clone, Debug)]
pub struct BackfillOptions {
    /// Stop starting work when less than this is left before the deadline.
    pub safety_margin: Duration,
    /// Shards worked at once by one invocation.
    pub parallel_shards: usize,
    /// Patches per body (≤ 2 000; tests lower it to get more checkpoints).
    pub max_patches: usize,
    /// Shard lease length; renewed at every checkpoint. A body's send is cut at the lease's
    /// end minus [`CHECKPOINT_ALLOWANCE`], so no send outlives the lease.
    pub lease: Duration,
    /// Invocations allowed to run backfills at once, across all processes (slot leases).
    pub max_invocations: u16,
    /// Amazon's PATCH budget for the client, shared by those invocations: each paces its
    /// backfill requests to `patch_rps / max_invocations`.
    pub patch_rps: f64,
}

impl Default for BackfillOptions {
    fn default() -> Self {
        Self {
            safety_margin: Duration::from_secs(20),
            parallel_shards: 4,
            max_patches: MAX_PATCHES,
            lease: default_lease(),
            max_invocations: 2,
            patch_rps: 100.0,
        }
    }
}

/// Time kept for the checkpoint write after a body's send: one DynamoDB operation with its
/// retries (`aws::SdkTimeouts`), and slack.
pub const CHECKPOINT_ALLOWANCE: Duration = Duration::from_secs(15);

/// The shard lease: longer than the worst-case send of one body under the default retry policy
/// (every attempt timing out, the longest waits between them: 210 s) plus the checkpoint write,
/// so a live invocation never loses its shard mid-send (225 s).
pub fn default_lease() -> Duration {
    crate::amazon::RetryPolicy::default().worst_case() + CHECKPOINT_ALLOWANCE
}

impl BackfillOptions {
    /// `BACKFILL_SAFETY_MARGIN_MS`, `BACKFILL_PARALLEL_SHARDS`, `BACKFILL_BATCH_PATCHES`,
    /// `BACKFILL_MAX_INVOCATIONS`.
    pub fn from_env() -> Self {
        let d = Self::default();
        let num =
            |k: &'static str, def: u64| crate::config::parsed_or::<u64>(k, def).unwrap_or(def);
        Self {
            safety_margin: Duration::from_millis(num(
                "BACKFILL_SAFETY_MARGIN_MS",
                d.safety_margin.as_millis() as u64,
            )),
            parallel_shards: num("BACKFILL_PARALLEL_SHARDS", d.parallel_shards as u64).clamp(1, 16)
                as usize,
            max_patches: num("BACKFILL_BATCH_PATCHES", d.max_patches as u64)
                .clamp(1, MAX_PATCHES as u64) as usize,
            lease: d.lease,
            max_invocations: num("BACKFILL_MAX_INVOCATIONS", u64::from(d.max_invocations))
                .clamp(1, 100) as u16,
            patch_rps: d.patch_rps,
        }
    }
}

/// Called once a mapping's audience exists (status Active): queue the historical backfill.
/// Idempotent: a running job for the same audience is left alone, a failed one is re-armed
/// (keeping its checkpoints), a finished one restarts (sending removals too).
pub async fn start_backfill(ctx: &ExportCtx, mapping: &SegmentMapping) -> Result<(), StoreError> {
    queue_backfill(ctx, mapping, false).await
}

/// Like [`start_backfill`], but a job that is still running is started over (new generation,
/// removals included). For a mapping that was not delivered to for a while (unblocked, revived):
/// rows the running scan already passed may have changed meanwhile without being marked dirty.
pub async fn restart_backfill(ctx: &ExportCtx, mapping: &SegmentMapping) -> Result<(), StoreError> {
    queue_backfill(ctx, mapping, true).await
}

async fn queue_backfill(
    ctx: &ExportCtx,
    mapping: &SegmentMapping,
    restart_running: bool,
) -> Result<(), StoreError> {
    let Some(audience_id) = mapping.audience_id else {
        return Ok(());
    };
    if mapping.status != MappingStatus::Active {
        return Ok(());
    }
    let Some(dest) = ctx
        .destinations
        .get_destination(&mapping.destination_id)
        .await?
    else {
        return Err(StoreError::Corrupt(format!(
            "destination {} of the mapping does not exist",
            mapping.destination_id
        )));
    };
    super::refresh::register(ctx, mapping, &dest, None).await?;
    let outcome = ctx
        .jobs
        .ensure_job(
            &mapping.destination_id,
            &mapping.segment_id,
            &dest.account_id,
            audience_id,
            LEDGER_SHARDS,
            restart_running,
        )
        .await?;
    tracing::info!(
        destination_id = %mapping.destination_id,
        segment_id = %mapping.segment_id,
        outcome = ?outcome,
        "backfill queued"
    );
    Ok(())
}

/// Spaces an invocation's backfill requests to its share of Amazon's PATCH budget.
struct Pacer {
    interval: Duration,
    next: tokio::sync::Mutex<tokio::time::Instant>,
}

impl Pacer {
    fn new(per_sec: f64) -> Self {
        Self {
            interval: Duration::from_secs_f64(1.0 / per_sec.max(0.1)),
            next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    async fn wait(&self) {
        let at = {
            let mut next = self.next.lock().await;
            let at = (*next).max(tokio::time::Instant::now());
            *next = at + self.interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// A page read running in the background; aborted if the shard stops before needing it.
struct Prefetch(tokio::task::JoinHandle<Result<crate::store::ledger::LedgerPage, StoreError>>);

impl Prefetch {
    async fn join(mut self) -> Result<crate::store::ledger::LedgerPage, StoreError> {
        match (&mut self.0).await {
            Ok(r) => r,
            Err(e) => Err(StoreError::Aws(format!("ledger page task: {e}"))),
        }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a shard's work ended in this invocation.
#[derive(Debug)]
enum ShardEnd {
    Finished,
    /// Deadline close: stopped after a checkpoint.
    Deadline,
    /// Someone else holds it (or the lease was lost).
    NotOurs,
    /// Amazon failed in a way that needs a later run (checkpoint kept).
    Paused(String),
    /// Needs a person: the job is failed.
    Fatal(String),
    Store(String),
}

#[derive(Default)]
struct RunStats {
    devices: AtomicU64,
    requests: AtomicU64,
    batches: AtomicU64,
}

struct JobRun {
    job: BackfillJob,
    account: IntegratedAccount,
    stop: AtomicBool,
    pacer: Arc<Pacer>,
}

/// Scheduled `{"task":"backfill"}`: continue backfill jobs until the deadline margin. Returns a
/// JSON summary.
pub async fn run_backfill(ctx: &ExportCtx, inv: &Invocation) -> Result<Value, String> {
    run_backfill_with(ctx, inv, &BackfillOptions::from_env()).await
}

/// [`run_backfill`] with explicit options (tests, the benchmark).
pub async fn run_backfill_with(
    ctx: &ExportCtx,
    inv: &Invocation,
    opts: &BackfillOptions,
) -> Result<Value, String> {
    run_jobs(ctx, inv, opts, None).await
}

/// The creating request's part (`export::destinations`): continues only the backfill jobs of
/// `mappings` (`(destinationId, segmentId)`), through exactly the scheduled run's path (a backfill
/// slot, shard leases, a checkpoint after each acknowledged batch, the drain), until `inv`'s
/// deadline minus `opts.safety_margin`; the caller shortens `inv` to its slice. Jobs are read
/// by key (consistent), not from the eventually consistent index of active jobs, since they were
/// queued a moment ago. What is left is resumed by the scheduled run from the checkpoints.
pub async fn run_backfill_for(
    ctx: &ExportCtx,
    inv: &Invocation,
    opts: &BackfillOptions,
    mappings: &[(String, String)],
) -> Result<Value, String> {
    run_jobs(ctx, inv, opts, Some(mappings)).await
}

async fn run_jobs(
    ctx: &ExportCtx,
    inv: &Invocation,
    opts: &BackfillOptions,
    only: Option<&[(String, String)]>,
) -> Result<Value, String> {
    let started = std::time::Instant::now();
    let owner = format!("bf-{}", uuid::Uuid::new_v4().simple());
    // A slot until our deadline: a crashed invocation's slot frees itself when it would have
    // been killed anyway.
    let slot = ctx
        .jobs
        .lease_slot(opts.max_invocations, &owner, now_ms(), inv.deadline_ms)
        .await
        .map_err(|e| e.to_string())?;
    let Some(slot) = slot else {
        return Ok(
            json!({"jobs": 0, "skipped": "every backfill slot is held by a running invocation"}),
        );
    };
    let out = backfill_in_slot(ctx, inv, opts, &owner, started, only).await;
    if let Err(e) = ctx.jobs.release_slot(slot, &owner).await {
        tracing::warn!(error = %e, "could not release the backfill slot");
    }
    out
}

async fn backfill_in_slot(
    ctx: &ExportCtx,
    inv: &Invocation,
    opts: &BackfillOptions,
    owner: &str,
    started: std::time::Instant,
    only: Option<&[(String, String)]>,
) -> Result<Value, String> {
    let owner = owner.to_string();
    let pacer = Arc::new(Pacer::new(
        opts.patch_rps / f64::from(opts.max_invocations.max(1)),
    ));
    let jobs = match only {
        None => ctx.jobs.active_jobs().await.map_err(|e| e.to_string())?,
        Some(keys) => {
            let mut jobs = Vec::with_capacity(keys.len());
            for (dest, seg) in keys {
                if let Some(j) = ctx
                    .jobs
                    .get_job(dest, seg)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    jobs.push(j);
                }
            }
            jobs
        }
    };
    let stats = Arc::new(RunStats::default());
    let mut skipped: Vec<Value> = Vec::new();
    let mut runs: Vec<Arc<JobRun>> = Vec::new();
    let mut lookups = Lookups::default();
    for job in jobs.into_iter().filter(|j| j.state == JobState::Running) {
        // The mapping must still be active with the job's audience.
        let mapping = ctx
            .destinations
            .get_mapping(&job.destination_id, &job.segment_id)
            .await
            .map_err(|e| e.to_string())?;
        let live = super::purge::job_is_live(&job, mapping.as_ref());
        if !live {
            let gone = mapping.as_ref().is_none_or(|m| {
                m.status == MappingStatus::Removed || m.audience_id != Some(job.audience_id)
            });
            if gone {
                ctx.jobs
                    .set_job_error(
                        &job.destination_id,
                        &job.segment_id,
                        job.generation,
                        "the mapping was removed or changed audience",
                        true,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
            }
            skipped.push(json!({"destinationId": job.destination_id, "segmentId": job.segment_id, "reason": "mapping not active"}));
            continue;
        }
        let account = match lookups
            .account(ctx, &job.account_id)
            .await
            .map_err(|e| e.to_string())?
        {
            Some(a) if a.status == AccountStatus::Active => a,
            Some(_) => {
                let msg = AmazonError::ReauthorizationRequired.user_message();
                let _ = ctx
                    .jobs
                    .set_job_error(
                        &job.destination_id,
                        &job.segment_id,
                        job.generation,
                        &msg,
                        false,
                    )
                    .await;
                skipped.push(json!({"destinationId": job.destination_id, "segmentId": job.segment_id, "reason": "account needs reauthorization"}));
                continue;
            }
            None => {
                let msg = format!("account {} is not linked", job.account_id);
                let _ = ctx
                    .jobs
                    .set_job_error(
                        &job.destination_id,
                        &job.segment_id,
                        job.generation,
                        &msg,
                        true,
                    )
                    .await;
                let _ = ctx
                    .destinations
                    .set_mapping_error(&job.destination_id, &job.segment_id, &msg)
                    .await;
                skipped.push(json!({"destinationId": job.destination_id, "segmentId": job.segment_id, "reason": "account not linked"}));
                continue;
            }
        };
        runs.push(Arc::new(JobRun {
            job,
            account,
            stop: AtomicBool::new(false),
            pacer: pacer.clone(),
        }));
    }

    // Shards to try, job by job (oldest job first), skipping ones visibly done or leased.
    let mut tasks: Vec<(Arc<JobRun>, u16)> = Vec::new();
    for run in &runs {
        let shards = ctx
            .jobs
            .shards(&run.job.destination_id, &run.job.segment_id)
            .await
            .map_err(|e| e.to_string())?;
        let now = now_ms();
        for s in shards {
            if !s.done && s.generation == run.job.generation && s.lease_until_ms < now {
                tasks.push((run.clone(), s.shard));
            }
        }
    }
    let ends: Vec<(Arc<JobRun>, u16, ShardEnd)> = futures::stream::iter(tasks)
        .map(|(run, shard)| {
            let stats = stats.clone();
            let owner = owner.as_str();
            async move {
                let end = work_shard(ctx, inv, opts, &run, shard, owner, &stats).await;
                (run, shard, end)
            }
        })
        .buffer_unordered(opts.parallel_shards.max(1))
        .collect()
        .await;

    let mut deadline_hit = false;
    let mut errors: Vec<String> = Vec::new();
    for (_, shard, end) in &ends {
        match end {
            ShardEnd::Deadline => deadline_hit = true,
            ShardEnd::Paused(m) | ShardEnd::Fatal(m) | ShardEnd::Store(m) => {
                errors.push(format!("shard {shard}: {m}"));
            }
            _ => {}
        }
    }

    // Jobs whose shards are all done: drain the dirty set, then finish.
    let mut finished = 0;
    for run in &runs {
        if run.stop.load(Ordering::Relaxed) || inv.remaining() < opts.safety_margin {
            continue;
        }
        let shards = ctx
            .jobs
            .shards(&run.job.destination_id, &run.job.segment_id)
            .await
            .map_err(|e| e.to_string())?;
        if shards.iter().any(|s| !s.done) {
            continue;
        }
        match drain_and_finish(ctx, inv, opts, run, &owner, &stats).await {
            Ok(true) => finished += 1,
            Ok(false) => deadline_hit |= inv.remaining() < opts.safety_margin,
            Err(e) => errors.push(e),
        }
    }

    let mut m = crate::telemetry::Metrics::new(ctx.metrics_fn);
    m.count("BackfillDevicesSent", stats.devices.load(Ordering::Relaxed))
        .count("BackfillRequests", stats.requests.load(Ordering::Relaxed))
        .millis("BackfillRunMs", started.elapsed().as_millis() as f64);
    m.emit();
    Ok(json!({
        "jobs": runs.len(),
        "shardsWorked": ends.iter().filter(|e| !matches!(e.2, ShardEnd::NotOurs)).count(),
        "shardsFinished": ends.iter().filter(|e| matches!(e.2, ShardEnd::Finished)).count(),
        "jobsFinished": finished,
        "devicesSent": stats.devices.load(Ordering::Relaxed),
        "batches": stats.batches.load(Ordering::Relaxed),
        "requests": stats.requests.load(Ordering::Relaxed),
        "stoppedForDeadline": deadline_hit,
        "skipped": skipped,
        "errors": errors,
        "ms": started.elapsed().as_millis() as u64,
    }))
}

/// Works one shard: lease, stream pages, batch, send, checkpoint; until done, the deadline, or
/// an error.
async fn work_shard(
    ctx: &ExportCtx,
    inv: &Invocation,
    opts: &BackfillOptions,
    run: &JobRun,
    shard: u16,
    owner: &str,
    stats: &RunStats,
) -> ShardEnd {
    let job = &run.job;
    let (dest, seg) = (job.destination_id.as_str(), job.segment_id.as_str());
    if run.stop.load(Ordering::Relaxed) || inv.remaining() < opts.safety_margin {
        return ShardEnd::Deadline;
    }
    let lease_ms = opts.lease.as_millis() as u64;
    let st = match ctx
        .jobs
        .lease_shard(dest, seg, shard, job.generation, owner, now_ms(), lease_ms)
        .await
    {
        Ok(Some(s)) => s,
        Ok(None) => return ShardEnd::NotOurs,
        Err(e) => return ShardEnd::Store(e.to_string()),
    };
    let mut lease_until = now_ms() + lease_ms;
    // Pages of at most one body's worth of rows: memory stays the same whatever the segment's
    // size (DynamoDB's own 1 MB pages would hold ~16 000 rows).
    let page_limit = Some(opts.max_patches.max(100) as i32);
    let only_qualified = !job.include_removals;
    let fetch = |after: Option<String>| {
        let ledger = ctx.ledger.clone();
        let seg = seg.to_string();
        Prefetch(tokio::spawn(async move {
            ledger
                .page(&seg, shard, after.as_deref(), only_qualified, page_limit)
                .await
        }))
    };
    let mut next = Some(fetch(st.last_key.clone()));
    let mut batcher: Batcher<String> = Batcher::new(opts.max_patches, MAX_BODY_BYTES);
    let mut had_error = st.last_error.is_some();

    // Sends one batch and saves the checkpoint; Err = how the shard ends.
    macro_rules! flush {
        ($batch:expr) => {{
            let batch: Batch<String> = $batch;
            let n = batch.len() as u64;
            let last = batch.tags.last().cloned().unwrap_or_default();
            run.pacer.wait().await;
            // Never past the lease (a 413 split, a token refresh and retries included).
            let left = Duration::from_millis(lease_until.saturating_sub(now_ms()));
            let cap = left.saturating_sub(CHECKPOINT_ALLOWANCE).max(left / 2);
            let sent = tokio::time::timeout(cap, send_body(ctx, &run.account, batch.body))
                .await
                .unwrap_or(Err(AmazonError::Timeout));
            match sent {
                Ok(reqs) => {
                    stats.devices.fetch_add(n, Ordering::Relaxed);
                    stats.requests.fetch_add(reqs, Ordering::Relaxed);
                    stats.batches.fetch_add(1, Ordering::Relaxed);
                    lease_until = now_ms() + lease_ms;
                    if let Err(e) = ctx
                        .jobs
                        .checkpoint(dest, seg, shard, owner, &last, n, 1, lease_until)
                        .await
                    {
                        return match e {
                            StoreError::Conflict(_) => ShardEnd::NotOurs,
                            other => ShardEnd::Store(other.to_string()),
                        };
                    }
                    if had_error {
                        had_error = false;
                        let _ = ctx.jobs.clear_job_error(dest, seg, job.generation).await;
                        let _ = ctx.destinations.clear_mapping_error(dest, seg).await;
                    }
                }
                Err(e) => return shard_failed(ctx, run, shard, owner, e).await,
            }
        }};
    }

    loop {
        if run.stop.load(Ordering::Relaxed) || inv.remaining() < opts.safety_margin {
            let _ = ctx.jobs.release_shard(dest, seg, shard, owner, None).await;
            return ShardEnd::Deadline;
        }
        // Renew the lease well before it runs out (long stretches of filtered rows).
        if now_ms() + lease_ms / 2 > lease_until {
            match ctx
                .jobs
                .lease_shard(dest, seg, shard, job.generation, owner, now_ms(), lease_ms)
                .await
            {
                Ok(Some(_)) => lease_until = now_ms() + lease_ms,
                Ok(None) => return ShardEnd::NotOurs,
                Err(e) => return ShardEnd::Store(e.to_string()),
            }
        }
        // The next page is read while this one is packed and sent.
        let Some(pending) = next.take() else {
            break;
        };
        let page = match pending.join().await {
            Ok(p) => p,
            Err(e) => {
                let _ = ctx
                    .jobs
                    .release_shard(dest, seg, shard, owner, Some(&e.to_string()))
                    .await;
                return ShardEnd::Store(e.to_string());
            }
        };
        next = page.last_key.clone().map(|k| fetch(Some(k)));
        // The page may predate an erasure's ledger step: no add of an erased device.
        let rows = match job.purpose {
            JobPurpose::Purge => page.rows,
            _ => match drop_erased(ctx.ledger.client(), ctx.ledger.table(), page.rows).await {
                Ok((rows, _)) => rows,
                Err(e) => {
                    let msg = e.to_string();
                    let _ = ctx
                        .jobs
                        .release_shard(dest, seg, shard, owner, Some(&msg))
                        .await;
                    return ShardEnd::Store(msg);
                }
            },
        };
        for row in rows {
            let patch = Patch {
                // A purge removes every member the ledger knows of, whatever their state.
                op: PatchOp::for_status(row.qualified && job.purpose != JobPurpose::Purge),
                audience_ids: vec![job.audience_id],
                consent: row.consent,
                device: row.device,
            };
            let device = patch.device.clone();
            match batcher.push(&patch, device) {
                Ok(Some(full)) => {
                    flush!(full);
                    if run.stop.load(Ordering::Relaxed) || inv.remaining() < opts.safety_margin {
                        // Rows after the checkpoint (in the batcher) are read again on resume.
                        let _ = ctx.jobs.release_shard(dest, seg, shard, owner, None).await;
                        return ShardEnd::Deadline;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    // Cannot happen with validated ids; never let one row stall the shard.
                    tracing::error!(error = %e, "a ledger row does not fit in a patch body; skipped");
                }
            }
        }
    }
    if let Some(rest) = batcher.take() {
        flush!(rest);
    }
    let _ = had_error;
    match ctx.jobs.finish_shard(dest, seg, shard, owner).await {
        Ok(()) => ShardEnd::Finished,
        Err(StoreError::Conflict(_)) => ShardEnd::NotOurs,
        Err(e) => ShardEnd::Store(e.to_string()),
    }
}

/// Reacts to an Amazon error during a backfill batch (the checkpoint stays where it was).
async fn shard_failed(
    ctx: &ExportCtx,
    run: &JobRun,
    shard: u16,
    owner: &str,
    e: AmazonError,
) -> ShardEnd {
    let job = &run.job;
    let (dest, seg) = (job.destination_id.as_str(), job.segment_id.as_str());
    let msg = e.user_message();
    let target = TargetRef {
        destination_id: dest.to_string(),
        segment_id: seg.to_string(),
    };
    record_amazon_error(ctx, &run.account, std::slice::from_ref(&target), &e).await;
    let _ = ctx
        .jobs
        .release_shard(dest, seg, shard, owner, Some(&msg))
        .await;
    let fatal = matches!(
        e,
        AmazonError::Rejected { .. } | AmazonError::AccountNotFound { .. } | AmazonError::Lwa(_)
    );
    let stop_job = fatal || matches!(e, AmazonError::ReauthorizationRequired);
    if stop_job {
        run.stop.store(true, Ordering::Relaxed);
    }
    let _ = ctx
        .jobs
        .set_job_error(dest, seg, job.generation, &msg, fatal)
        .await;
    tracing::warn!(destination_id = %dest, segment_id = %seg, shard, error = %msg, "backfill batch failed");
    if fatal {
        ShardEnd::Fatal(msg)
    } else {
        ShardEnd::Paused(msg)
    }
}

/// Re-sends the job's dirty devices from the ledger's current state, then finishes the job.
/// `Ok(false)` when it could not finish now (lease held elsewhere, deadline, send failure).
async fn drain_and_finish(
    ctx: &ExportCtx,
    inv: &Invocation,
    opts: &BackfillOptions,
    run: &JobRun,
    owner: &str,
    stats: &RunStats,
) -> Result<bool, String> {
    let job = &run.job;
    let (dest, seg) = (job.destination_id.as_str(), job.segment_id.as_str());
    let lease_ms = opts.lease.as_millis() as u64;
    if !ctx
        .jobs
        .lease_job(dest, seg, job.generation, owner, now_ms(), lease_ms)
        .await
        .map_err(|e| e.to_string())?
    {
        return Ok(false);
    }
    let target = Target {
        r: TargetRef {
            destination_id: dest.to_string(),
            segment_id: seg.to_string(),
        },
        audience_id: job.audience_id,
        account_id: job.account_id.clone(),
    };
    let targets: BTreeMap<String, Vec<Target>> = BTreeMap::from([(seg.to_string(), vec![target])]);
    let mut lookups = Lookups::default();
    lookups
        .accounts
        .insert(job.account_id.clone(), Some(run.account.clone()));
    // From here on, deltas stop marking devices dirty: every scan batch was acknowledged, so
    // their own sends come later and win. One pass over the dirty set (a cursor, never back to
    // the start) therefore covers every mark that matters, and a steady stream of deltas cannot
    // keep the job from finishing.
    if !job.draining {
        match ctx.jobs.set_draining(dest, seg, owner).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => return Ok(false),
            Err(e) => return Err(e.to_string()),
        }
    }
    let mut cursor: Option<String> = None;
    loop {
        // A purge re-sends nothing: its mapping is removed, and a dirty entry left by an
        // earlier pass would send an add.
        if job.purpose == JobPurpose::Purge {
            break;
        }
        if inv.remaining() < opts.safety_margin {
            let _ = ctx.jobs.release_job(dest, seg, owner).await;
            return Ok(false);
        }
        let (dirty, next) = ctx
            .jobs
            .dirty_page(dest, seg, cursor.as_deref(), 500)
            .await
            .map_err(|e| e.to_string())?;
        if dirty.is_empty() && next.is_none() {
            break;
        }
        cursor = next.or_else(|| dirty.last().map(|d| d.device.clone()));
        if dirty.is_empty() {
            continue;
        }
        // Renew the job lease for this round.
        if !ctx
            .jobs
            .lease_job(dest, seg, job.generation, owner, now_ms(), lease_ms)
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(false);
        }
        let keys: Vec<(String, String)> = dirty
            .iter()
            .map(|d| (d.segment_id.clone(), d.device.clone()))
            .collect();
        let rows = ctx
            .ledger
            .get_many(&keys)
            .await
            .map_err(|e| e.to_string())?;
        let (rows, _) = drop_erased(ctx.ledger.client(), ctx.ledger.table(), rows)
            .await
            .map_err(|e| e.to_string())?;
        let report = deliver(ctx, &mut lookups, &targets, rows).await;
        stats.devices.fetch_add(report.patches, Ordering::Relaxed);
        stats.requests.fetch_add(report.requests, Ordering::Relaxed);
        if !report.failed.is_empty() || !report.errors.is_empty() {
            // Keep the dirty entries; a later run drains them again.
            let msg = report
                .errors
                .first()
                .cloned()
                .unwrap_or_else(|| "dirty devices could not be sent".into());
            let _ = ctx
                .jobs
                .set_job_error(dest, seg, job.generation, &msg, false)
                .await;
            let _ = ctx.jobs.release_job(dest, seg, owner).await;
            return Err(format!("drain of {dest}/{seg}: {msg}"));
        }
        // Owned items: a closure over borrowed ones trips the Send check of the task's future.
        let cleared: Vec<Result<(), StoreError>> = futures::stream::iter(dirty.clone())
            .map(|d| async move { ctx.jobs.clear_dirty(dest, seg, &d).await })
            .buffer_unordered(LEDGER_WRITE_CONCURRENCY)
            .collect()
            .await;
        cleared
            .into_iter()
            .collect::<Result<(), _>>()
            .map_err(|e| e.to_string())?;
        ctx.jobs
            .add_drained(dest, seg, owner, dirty.len() as u64)
            .await
            .map_err(|e| e.to_string())?;
    }
    match ctx.jobs.finish_job(dest, seg, job.generation, owner).await {
        Ok(()) => {
            tracing::info!(destination_id = %dest, segment_id = %seg, "backfill finished");
            Ok(true)
        }
        Err(StoreError::Conflict(_)) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

// ------------------------------------------------------------------------------------------
// Redrive

// ------------------------------------------------------------------------------------------
// Progress

/// Backfill progress of one mapping, for `GET /destinations/{id}`:
/// `{"state","devicesSent","batches","shards","shardsDone","dirtyResent","lastError",…}`;
/// `{"state":"none"}` when no job exists.
pub async fn backfill_progress(
    ctx: &ExportCtx,
    destination_id: &str,
    segment_id: &str,
) -> Result<Value, StoreError> {
    let Some(job) = ctx.jobs.get_job(destination_id, segment_id).await? else {
        return Ok(json!({"state": "none"}));
    };
    let shards = ctx.jobs.shards(destination_id, segment_id).await?;
    let shards: Vec<_> = shards
        .into_iter()
        .filter(|s| s.generation == job.generation)
        .collect();
    let sent: u64 = shards.iter().map(|s| s.sent).sum();
    let batches: u64 = shards.iter().map(|s| s.batches).sum();
    let done = shards.iter().filter(|s| s.done).count();
    let shard_error = shards.iter().find_map(|s| s.last_error.clone());
    let phase = match job.state {
        JobState::Done => "done",
        JobState::Failed => "failed",
        JobState::Running if job.draining => "draining",
        JobState::Running if done == shards.len() => "finishing",
        JobState::Running => "scanning",
    };
    Ok(json!({
        "state": job.state.as_str(),
        "purpose": job.purpose,
        "phase": phase,
        "audienceId": job.audience_id,
        "devicesSent": sent,
        "batches": batches,
        "shards": job.shards,
        "shardsDone": done,
        "dirtyResent": job.drained,
        "includeRemovals": job.include_removals,
        "lastError": job.last_error.or(shard_error),
        "startedAt": job.created_at,
        "updatedAt": job.updated_at,
        "finishedAt": job.finished_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

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
