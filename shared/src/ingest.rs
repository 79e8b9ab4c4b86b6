//! Conversion ingest: the use case behind `POST /accounts/{accountId}/conversions` and the
//! scheduled `{"task":"redrive"}` of parked conversions.
//!
//! Ports in ([`IngestCtx`]: Amazon client, account store, dedupe store, parked queue), results
//! out ([`IngestReport`], [`RedriveSummary`]). A request goes through these steps:
//!
//! 1. Parse and validate every event (`domain::conversion`); a bad event is `rejected` with its
//!    field errors and never sinks the batch.
//! 2. Deduplicate, latest wins as at Amazon: copies of a `clientDedupeId` inside the request
//!    settle without a claim (same content → `duplicate`; other content later in the request
//!    replaces the earlier copy); every other id is claimed in the dedupe store
//!    (`store::dedupe`) with the fingerprint of its content. Remembered with the same
//!    fingerprint: completed → `duplicate`, parked → `parked`. Remembered with another
//!    fingerprint: a correction, claimed and sent like a new event. Held by a live request →
//!    wait for it (poll with backoff, bounded by the deadline): it completes → `duplicate` (or a
//!    correction, if its content differs), it releases → we claim and send, time runs out →
//!    `parked` (the redrive settles it). Events without an id get a generated `eventId`
//!    (`adsync-<32 hex>`) and are not deduplicated.
//! 3. Send to Amazon in batches of ≤ 500 (and ≤ 1 MB) with bounded concurrency; the 207 answer is
//!    mapped back to each input index. `AmazonClient` already refreshed on 401 and retried
//!    429/5xx/timeouts; 413 → split in halves; a whole-batch 400 → bisect to find the bad events;
//!    an index missing from the answer → resent once, then parked; a retryable error → parked;
//!    `ReauthorizationRequired` → the account is marked and the events parked.
//! 4. Accepted → claim completed; rejected by Amazon → claim released (a corrected resend may go
//!    through); parked → one SQS message per ≤ 500 events (normalised, hashed outbound JSON only:
//!    no raw personal data), then the claim is kept as `PARKED` (events without an id get a park
//!    id), so a webhook retry is answered `parked`, never sent twice.
//!
//! The request plans against its budget (`crate::budget`: the invocation's deadline is the
//! request's arrival + `ADSYNC_HTTP_BUDGET_MS`, and Amazon calls end before its reserve), so what
//! Amazon does not answer in time is parked and the answer still comes within the budget.
//!
//! The redrive (`ingest/redrive.rs`) takes each parked event's claim (`PARKED` →
//! `IN_PROGRESS`, only while the stored fingerprint is the parked copy's), sends, completes, and re-enqueues what still fails with a growing delay
//! (`store::parked_retry`). A second redrive of the same message finds the events `COMPLETED`
//! and only acknowledges it.
//! A copy a correction replaced meanwhile is acknowledged without being sent (`superseded`), so
//! old content never follows new content to Amazon.
//!
//! Delivery to Amazon is at least once at the network boundary (a request that timed out may
//! still have arrived); every event carries an `eventId` (the `clientDedupeId`, or the generated
//! one, kept in the parked copy) so Amazon dedupes that case.

mod redrive;

use crate::amazon::{AmazonClient, AmazonError, EventError, EventsOutcome};
use crate::aws::AwsClients;
use crate::config::Settings;
use crate::domain::conversion::{self, Arena, FieldError, Prepared, Processor, Reason, batch_body};
use crate::http::accounts::require_active;
use crate::http::auth::ApiKeyAuth;
use crate::http::{HttpRequest, HttpResponse};
use crate::runtime::{Handler, Invocation, now_ms};
use crate::store::StoreError;
use crate::store::accounts::{AccountStore, IntegratedAccount};
use crate::store::dedupe::{Claim, ClaimOutcome, DedupeKey, DedupeStore, TakeOutcome};
use crate::store::parked::ParkedQueue;
use crate::store::parked_counts::{Counter, ParkedCounts};
use crate::store::parked_retry::{ParkedRetry, RetryState};
use crate::store::secrets::SecretsStore;
use crate::telemetry::Metrics;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Tunables (defaults suit Lambda with a 60 s timeout behind API Gateway).
#[derive(Clone, Debug)]
pub struct IngestSettings {
    /// Largest accepted request body (Lambda's synchronous payload limit is 6 MB).
    pub max_body_bytes: usize,
    /// Events per Amazon request (the Events API allows 1–500).
    pub batch_size: usize,
    /// Largest Amazon request body; a 413 splits further.
    pub batch_max_bytes: usize,
    /// Amazon requests in flight per invocation.
    pub send_concurrency: usize,
    /// Dedupe-store calls in flight per invocation.
    pub claim_concurrency: usize,
    /// Time kept back before the deadline to park what is left.
    pub deadline_margin: Duration,
    /// Longest wait for a claim held by another live request.
    pub max_wait: Duration,
    /// Parked-queue message size budget (SQS allows 256 KB).
    pub park_message_bytes: usize,
    /// The `Function` dimension of the metrics.
    pub metrics_fn: &'static str,
    /// How parked events are retried and when they go to the dead-letter queue.
    pub retry: ParkedRetry,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 6 * 1024 * 1024,
            batch_size: 500,
            batch_max_bytes: 1024 * 1024,
            send_concurrency: 4,
            claim_concurrency: 32,
            deadline_margin: Duration::from_secs(5),
            max_wait: Duration::from_secs(10),
            // Sealed with the KMS key the body grows by a third (base64): 180 KB → ~240 KB.
            park_message_bytes: 180 * 1024,
            metrics_fn: "conversion-ingest",
            retry: ParkedRetry::default(),
        }
    }
}

/// Everything the use case talks to, built once per process.
#[derive(Clone, Debug)]
pub struct IngestCtx {
    pub amazon: AmazonClient,
    pub accounts: AccountStore,
    pub dedupe: DedupeStore,
    pub parked: ParkedQueue,
    pub settings: IngestSettings,
}

pub use crate::runtime::StartError;

impl IngestCtx {
    /// From the environment: `ACCOUNTS_TABLE`, `DEDUPE_TABLE`, `DEDUPE_WINDOW_DAYS`,
    /// `PARKED_CONVERSIONS_QUEUE_URL` and the Amazon client's variables.
    pub async fn from_env(aws: &AwsClients) -> Result<Self, StartError> {
        Self::from_settings(aws, &Settings::from_env()?).await
    }

    /// [`IngestCtx::from_env`] with the settings read at cold start.
    pub async fn from_settings(aws: &AwsClients, config: &Settings) -> Result<Self, StartError> {
        let amazon = AmazonClient::from_settings(aws, config).await?;
        Ok(Self {
            amazon,
            accounts: AccountStore::new(aws.dynamodb.clone(), config.accounts_table.get()?),
            dedupe: DedupeStore::new(
                aws.dynamodb.clone(),
                config.tables()?.dedupe,
                config.dedupe_window,
            ),
            parked: ParkedQueue::new(aws.sqs.clone(), config.parked_conversions_queue.get()?)
                .with_dead_letter(config.parked_dlq.clone()),
            settings: IngestSettings {
                retry: config.parked_retry,
                ..IngestSettings::default()
            },
        })
    }
}

/// Why an event was parked without a claim: the request's time budget.
const CLAIMS_OUT_OF_TIME: &str = "the request's time budget ran out before this event was taken";

/// The outcome of one input event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Accepted,
    Duplicate,
    Rejected,
    Parked,
}

/// One result per input index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventResult {
    pub index: usize,
    pub status: Status,
    pub errors: Vec<FieldError>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub received: usize,
    pub accepted: usize,
    pub duplicate: usize,
    pub rejected: usize,
    pub parked: usize,
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IngestReport {
    pub account_id: String,
    pub totals: Totals,
    pub results: Vec<EventResult>,
}

impl IngestReport {
    /// The totals and the rejected events' reasons (each event's first error), as counted per hour.
    pub fn counts(&self) -> crate::store::conversion_counts::Counts {
        let t = &self.totals;
        let mut reasons = std::collections::BTreeMap::new();
        for r in self.results.iter().filter(|r| r.status == Status::Rejected) {
            let reason = r
                .errors
                .first()
                .map(|e| e.reason.as_str())
                .unwrap_or("unknown");
            *reasons.entry(reason.to_string()).or_default() += 1;
        }
        crate::store::conversion_counts::Counts {
            received: t.received as u64,
            accepted: t.accepted as u64,
            duplicate: t.duplicate as u64,
            rejected: t.rejected as u64,
            parked: t.parked as u64,
            reasons,
        }
    }

    /// 200 when every event was accepted or a duplicate, 207 otherwise.
    pub fn status_code(&self) -> u16 {
        if self.totals.accepted + self.totals.duplicate == self.totals.received {
            200
        } else {
            207
        }
    }
}

/// What a redrive run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RedriveSummary {
    pub messages: usize,
    pub acked: usize,
    pub delivered: usize,
    /// Already delivered by an earlier redrive or a retry: acknowledged only.
    pub already_delivered: usize,
    /// Replaced by a later correction (same id, other content): acknowledged, never sent.
    #[serde(default)]
    pub superseded: usize,
    pub rejected: usize,
    pub still_parked: usize,
    /// Events sent back to the queue with a delay (`store::parked_retry`).
    #[serde(default)]
    pub requeued: usize,
    /// Events put on the dead-letter queue (refused by Amazon for good, or too old).
    #[serde(default)]
    pub dead_lettered: usize,
}

/// One SQS message of parked conversions (all for one account).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParkedBatch {
    pub v: u32,
    pub account_id: String,
    pub advertiser_id: i64,
    pub events: Vec<ParkedEvent>,
    /// Redrive attempts, age and delay (`store::parked_retry`).
    #[serde(default)]
    pub retry: RetryState,
}

/// One parked event: its dedupe key and the outbound (normalised, hashed) JSON.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParkedEvent {
    pub key: DedupeKey,
    pub park_id: String,
    pub fingerprint: String,
    pub reason: String,
    pub parked_at_ms: u64,
    pub event: Box<RawValue>,
}

/// What became of one event sent to Amazon.
#[derive(Clone, Debug, PartialEq)]
enum Delivery {
    Accepted,
    Rejected(Vec<FieldError>),
    Park(String),
}

/// Per-invocation delivery bookkeeping.
#[derive(Debug, Default)]
struct SendStats {
    latencies_ms: Vec<f64>,
    reauthorization_required: bool,
}

/// One event on its way out.
#[derive(Debug)]
struct Work {
    index: usize,
    key: Option<DedupeKey>,
    fingerprint: String,
    claim: Option<Claim>,
}

fn fingerprint(event: &[u8]) -> String {
    let h = conversion::matchkey::sha256_hex(event);
    String::from_utf8_lossy(&h[..32]).into_owned()
}

fn err(field: &str, reason: Reason, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        message: message.into(),
        reason,
    }
}

/// Amazon's per-event errors as ours: `events[3].matchKeys[0]` → `matchKeys[0]`.
fn amazon_errors(errors: &[EventError]) -> Vec<FieldError> {
    let mut out: Vec<FieldError> = errors
        .iter()
        .map(|e| {
            let field = e.field_location.as_deref().unwrap_or("");
            let field = match field
                .strip_prefix("events[")
                .and_then(|r| r.split_once(']'))
            {
                Some((_, rest)) => rest.trim_start_matches('.'),
                None => field,
            };
            err(
                field,
                Reason::Amazon,
                format!("Amazon: {} {}", e.code, e.message)
                    .trim()
                    .to_string(),
            )
        })
        .collect();
    if out.is_empty() {
        out.push(err("", Reason::Amazon, "Amazon rejected the event"));
    }
    out
}

impl IngestCtx {
    /// `POST /accounts/{accountId}/conversions` after authentication.
    pub async fn handle_conversions(
        &self,
        req: &HttpRequest,
        inv: &Invocation,
        account_id: &str,
    ) -> HttpResponse {
        match req.content_type().as_deref() {
            Some("application/json") => {}
            Some(t) if t.ends_with("+json") => {}
            other => {
                return HttpResponse::error(
                    415,
                    "unsupported_media_type",
                    format!(
                        "Content-Type must be application/json (got {})",
                        other.unwrap_or("none")
                    ),
                );
            }
        }
        if req.body.len() > self.settings.max_body_bytes {
            return HttpResponse::error(
                413,
                "payload_too_large",
                format!(
                    "the body is {} bytes; the limit is {} (send at most {} events per request)",
                    req.body.len(),
                    self.settings.max_body_bytes,
                    conversion::MAX_EVENTS
                ),
            );
        }
        if req.body.is_empty() {
            return HttpResponse::error(
                400,
                "invalid_json",
                "the body is empty: send one event or {\"events\":[…]}",
            );
        }
        let found = if account_id.bytes().all(|b| b.is_ascii_digit()) && !account_id.is_empty() {
            match self.accounts.get_account(account_id).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(error = %e, "account lookup failed");
                    return HttpResponse::error(
                        503,
                        "unavailable",
                        "the account store is unavailable; try again",
                    );
                }
            }
        } else {
            None
        };
        let account = match require_active(account_id, found) {
            Ok(a) => a,
            Err(resp) => return resp,
        };
        let mut arena = Arena::for_body(req.body.len());
        let mut processor = Processor::new(now_ms() as i64).with_generated_ids();
        let outcomes = match conversion::prepare_body(&req.body, &mut processor, &mut arena) {
            Ok(r) => r,
            Err(e) => return HttpResponse::error(e.status, e.code, e.message),
        };
        let report = self.ingest(&account, &arena, outcomes, inv).await;
        // The console's per-hour counts: one write per request (store::conversion_counts).
        crate::store::conversion_counts::ConversionCounts::new(&self.accounts)
            .record_logged(
                &account.account_id,
                &report.counts(),
                now_ms() as i64 / 1000,
            )
            .await;
        HttpResponse::json(report.status_code(), &report)
    }

    /// Deduplicates and delivers (or parks) the events of one request, prepared into `arena`
    /// ([`conversion::prepare_body`]).
    pub async fn ingest(
        &self,
        account: &IntegratedAccount,
        arena: &Arena,
        outcomes: Vec<conversion::Outcome>,
        inv: &Invocation,
    ) -> IngestReport {
        let started = Instant::now();
        let n = outcomes.len();
        let mut results: Vec<Option<EventResult>> = vec![None; n];
        let mut prepared: Vec<Option<Prepared>> = Vec::with_capacity(n);
        for (i, (slot, outcome)) in results.iter_mut().zip(outcomes).enumerate() {
            match outcome {
                Ok(p) => prepared.push(Some(p)),
                Err(errors) => {
                    prepared.push(None);
                    *slot = Some(EventResult {
                        index: i,
                        status: Status::Rejected,
                        errors,
                    });
                }
            }
        }

        // Copies of an id inside this request: one goes on (see `dedupe_in_request`).
        let (with_id, without_id) = dedupe_in_request(account, arena, &prepared, &mut results);

        // Claims.
        let claimed = self.claim_initial(with_id, inv).await;
        let mut to_send = without_id;
        let mut waiting = Vec::new();
        let mut to_park: Vec<(Work, String)> = Vec::new();
        for (mut w, outcome) in claimed {
            match outcome {
                Ok(ClaimOutcome::Claimed(c)) => {
                    w.claim = Some(c);
                    to_send.push(w);
                }
                Ok(ClaimOutcome::Completed { .. }) => {
                    results[w.index] = Some(done(w.index, Status::Duplicate))
                }
                Ok(ClaimOutcome::Parked) => results[w.index] = Some(already_parked(w.index)),
                Ok(ClaimOutcome::Held { .. }) => waiting.push(w),
                Err(StoreError::Conflict(m)) if m == CLAIMS_OUT_OF_TIME => {
                    to_park.push((w, CLAIMS_OUT_OF_TIME.into()));
                }
                Err(e) => {
                    tracing::error!(error = %e, "dedupe claim failed; parking the event");
                    to_park.push((w, "the dedupe store was unavailable".into()));
                }
            }
        }

        let mut stats = SendStats::default();
        let settled = self
            .send(account, to_send, arena, &prepared, inv, &mut stats)
            .await;
        // Settle our own claims before waiting on anyone else's: two requests holding some of
        // each other's ids must not wait on each other.
        self.settle(settled, &mut results, &mut to_park).await;

        // Claims held by other live requests: wait for them to settle.
        if !waiting.is_empty() {
            let (ready, dups, parked_elsewhere, timed_out) =
                self.wait_for_holders(waiting, inv).await;
            for w in dups {
                results[w.index] = Some(done(w.index, Status::Duplicate));
            }
            for w in parked_elsewhere {
                results[w.index] = Some(already_parked(w.index));
            }
            for w in timed_out {
                to_park.push((
                    w,
                    "another request was still sending this clientDedupeId; parked for the redrive"
                        .into(),
                ));
            }
            let settled = self
                .send(account, ready, arena, &prepared, inv, &mut stats)
                .await;
            self.settle(settled, &mut results, &mut to_park).await;
        }

        if stats.reauthorization_required {
            self.mark_reauthorization(account).await;
        }

        // Parking.
        if !to_park.is_empty() {
            let items: Vec<(Work, String, &[u8])> = to_park
                .into_iter()
                .filter_map(|(w, reason)| {
                    let p = prepared[w.index].as_ref()?;
                    Some((w, reason, arena.event(p)))
                })
                .collect();
            for (index, result) in self.park(account, items, inv).await {
                results[index] = Some(result);
            }
        }

        let results: Vec<EventResult> = results
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.unwrap_or_else(|| EventResult {
                    index: i,
                    status: Status::Rejected,
                    errors: vec![err(
                        "",
                        Reason::Unavailable,
                        "the event was not processed; send it again",
                    )],
                })
            })
            .collect();
        let totals = totals(&results);
        self.emit_metrics(&results, &totals, &stats);
        tracing::info!(
            account_id = %account.account_id,
            received = totals.received,
            accepted = totals.accepted,
            duplicate = totals.duplicate,
            rejected = totals.rejected,
            parked = totals.parked,
            ms = started.elapsed().as_millis() as u64,
            "conversions ingested"
        );
        IngestReport {
            account_id: account.account_id.clone(),
            totals,
            results,
        }
    }

    /// Completes (accepted) or releases (rejected) the claims of delivered events and records
    /// their results; what is left to park goes to `to_park` with its reason.
    async fn settle(
        &self,
        settled: Vec<(Work, Delivery)>,
        results: &mut [Option<EventResult>],
        to_park: &mut Vec<(Work, String)>,
    ) {
        let mut futs = Vec::with_capacity(settled.len());
        for (w, d) in settled {
            futs.push(self.settle_one(w, d));
        }
        let done: Vec<_> = futures::stream::iter(futs)
            .buffer_unordered(self.settings.claim_concurrency)
            .collect()
            .await;
        for (w, r) in done {
            match r {
                Ok(res) => results[w.index] = Some(res),
                Err(reason) => to_park.push((w, reason)),
            }
        }
    }

    async fn settle_one(&self, w: Work, d: Delivery) -> (Work, Result<EventResult, String>) {
        match d {
            Delivery::Accepted => {
                if let Some(c) = &w.claim {
                    self.finish(self.dedupe.complete(c).await, "complete");
                }
                let index = w.index;
                (w, Ok(done(index, Status::Accepted)))
            }
            Delivery::Rejected(errors) => {
                if let Some(c) = &w.claim {
                    self.finish(self.dedupe.release(c).await, "release");
                }
                let index = w.index;
                (
                    w,
                    Ok(EventResult {
                        index,
                        status: Status::Rejected,
                        errors,
                    }),
                )
            }
            Delivery::Park(reason) => (w, Err(reason)),
        }
    }

    fn finish(&self, r: Result<bool, StoreError>, what: &str) {
        match r {
            Ok(true) => {}
            Ok(false) => tracing::warn!(what, "dedupe claim was lost before it could be settled"),
            Err(e) => tracing::error!(what, error = %e, "dedupe store update failed"),
        }
    }

    async fn claim_all(
        &self,
        work: Vec<Work>,
        inv: &Invocation,
    ) -> Vec<(Work, Result<ClaimOutcome, StoreError>)> {
        futures::stream::iter(work.into_iter().map(|w| async move {
            let key = w.key.as_ref().expect("claimed work has a key");
            let r = self
                .dedupe
                .claim(key, &w.fingerprint, inv.deadline_ms, &inv.request_id)
                .await;
            (w, r)
        }))
        .buffer_unordered(self.settings.claim_concurrency)
        .collect()
        .await
    }

    /// The request's first claims, started only in the first third of its Amazon window
    /// (`crate::budget`; completions and parking come after the send): an event not claimed by
    /// then is parked without a claim, and the redrive claims it.
    async fn claim_initial(
        &self,
        work: Vec<Work>,
        inv: &Invocation,
    ) -> Vec<(Work, Result<ClaimOutcome, StoreError>)> {
        let until = crate::budget::share_of_window(1.0 / 3.0);
        futures::stream::iter(work.into_iter().map(|w| async move {
            if until.is_some_and(|u| Instant::now() >= u) {
                return (w, Err(StoreError::Conflict(CLAIMS_OUT_OF_TIME.into())));
            }
            let key = w.key.as_ref().expect("claimed work has a key");
            let r = self
                .dedupe
                .claim(key, &w.fingerprint, inv.deadline_ms, &inv.request_id)
                .await;
            (w, r)
        }))
        .buffer_unordered(self.settings.claim_concurrency)
        .collect()
        .await
    }

    /// Polls claims held by other live requests with backoff until they settle or time runs out.
    /// Returns (claimed by us, duplicates, parked by the holder, still held).
    async fn wait_for_holders(
        &self,
        mut waiting: Vec<Work>,
        inv: &Invocation,
    ) -> (Vec<Work>, Vec<Work>, Vec<Work>, Vec<Work>) {
        let (mut ready, mut dups, mut parked) = (Vec::new(), Vec::new(), Vec::new());
        let give_up = Instant::now()
            + self.settings.max_wait.min(
                inv.remaining()
                    .saturating_sub(self.settings.deadline_margin * 2),
            );
        let mut delay = Duration::from_millis(100);
        while !waiting.is_empty() && Instant::now() + delay < give_up {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
            let polled = self.claim_all(std::mem::take(&mut waiting), inv).await;
            for (mut w, r) in polled {
                match r {
                    Ok(ClaimOutcome::Claimed(c)) => {
                        w.claim = Some(c);
                        ready.push(w);
                    }
                    Ok(ClaimOutcome::Completed { .. }) => dups.push(w),
                    Ok(ClaimOutcome::Parked) => parked.push(w),
                    Ok(ClaimOutcome::Held { .. }) | Err(_) => waiting.push(w),
                }
            }
        }
        (ready, dups, parked, waiting)
    }

    /// Sends prepared events (by input index) and returns what became of each.
    async fn send(
        &self,
        account: &IntegratedAccount,
        mut work: Vec<Work>,
        arena: &Arena,
        prepared: &[Option<Prepared>],
        inv: &Invocation,
        stats: &mut SendStats,
    ) -> Vec<(Work, Delivery)> {
        if work.is_empty() {
            return Vec::new();
        }
        // Input order: Amazon's indexes then follow the request, and logs read naturally.
        work.sort_by_key(|w| w.index);
        let bodies: Vec<&[u8]> = work
            .iter()
            .map(|w| {
                prepared[w.index]
                    .as_ref()
                    .map(|p| arena.event(p))
                    .unwrap_or(b"{}")
            })
            .collect();
        let deliveries = self.deliver(account, &bodies, inv, stats).await;
        work.into_iter().zip(deliveries).collect()
    }

    /// Delivers events (outbound JSON each) to Amazon: batches, bounded concurrency, 413 splits,
    /// bisection of whole-batch 400s, one resend of missing indexes. Returns one delivery per event.
    async fn deliver(
        &self,
        account: &IntegratedAccount,
        events: &[&[u8]],
        inv: &Invocation,
        stats: &mut SendStats,
    ) -> Vec<Delivery> {
        let mut out = vec![Delivery::Park("not sent".into()); events.len()];
        let mut batches: Vec<Vec<usize>> = Vec::new();
        let mut cur = Vec::new();
        let mut cur_bytes = 0;
        for (i, e) in events.iter().enumerate() {
            if !cur.is_empty()
                && (cur.len() == self.settings.batch_size
                    || cur_bytes + e.len() + 1 > self.settings.batch_max_bytes)
            {
                batches.push(std::mem::take(&mut cur));
                cur_bytes = 0;
            }
            cur_bytes += e.len() + 1;
            cur.push(i);
        }
        if !cur.is_empty() {
            batches.push(cur);
        }
        let results: Vec<(Vec<(usize, Delivery)>, SendStats)> = futures::stream::iter(
            batches
                .into_iter()
                .map(|b| self.send_batch(account, events, b, inv)),
        )
        .buffer_unordered(self.settings.send_concurrency.max(1))
        .collect()
        .await;
        for (deliveries, s) in results {
            for (i, d) in deliveries {
                out[i] = d;
            }
            stats.latencies_ms.extend(s.latencies_ms);
            stats.reauthorization_required |= s.reauthorization_required;
        }
        out
    }

    /// One batch, with the splits and resends it may need.
    async fn send_batch(
        &self,
        account: &IntegratedAccount,
        events: &[&[u8]],
        batch: Vec<usize>,
        inv: &Invocation,
    ) -> (Vec<(usize, Delivery)>, SendStats) {
        let mut stats = SendStats::default();
        let mut out = Vec::with_capacity(batch.len());
        // (events, missing indexes already resent once, split because of a whole-batch 400)
        let mut queue: Vec<(Vec<usize>, bool)> = vec![(batch, false)];
        let login = account.login();
        while let Some((b, resent)) = queue.pop() {
            let left = inv
                .remaining()
                .saturating_sub(self.settings.deadline_margin);
            if left.is_zero() {
                out.extend(b.into_iter().map(|i| {
                    (
                        i,
                        Delivery::Park("the invocation ran out of time before sending".into()),
                    )
                }));
                continue;
            }
            let body = batch_body(
                b.iter().map(|&i| events[i]),
                b.iter().map(|&i| events[i].len() + 1).sum(),
            );
            let t0 = Instant::now();
            let res = tokio::time::timeout(
                left,
                self.amazon
                    .create_events(&login, account.advertiser_id, body, b.len()),
            )
            .await;
            stats.latencies_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
            match res {
                Err(_) => out.extend(b.into_iter().map(|i| {
                    (
                        i,
                        Delivery::Park("Amazon did not answer before the deadline".into()),
                    )
                })),
                Ok(Ok(EventsOutcome {
                    accepted,
                    rejected,
                    missing,
                })) => {
                    for pos in accepted {
                        if let Some(&i) = b.get(pos) {
                            out.push((i, Delivery::Accepted));
                        }
                    }
                    for (pos, errors) in rejected {
                        if let Some(&i) = b.get(pos) {
                            out.push((i, Delivery::Rejected(amazon_errors(&errors))));
                        }
                    }
                    let missing: Vec<usize> = missing
                        .into_iter()
                        .filter_map(|pos| b.get(pos).copied())
                        .collect();
                    if !missing.is_empty() {
                        if resent {
                            out.extend(missing.into_iter().map(|i| {
                                (
                                    i,
                                    Delivery::Park(
                                        "Amazon's answer did not mention this event twice".into(),
                                    ),
                                )
                            }));
                        } else {
                            queue.push((missing, true));
                        }
                    }
                }
                Ok(Err(AmazonError::PayloadTooLarge { .. })) if b.len() > 1 => {
                    let mut b = b;
                    let second = b.split_off(b.len() / 2);
                    queue.push((second, resent));
                    queue.push((b, resent));
                }
                Ok(Err(AmazonError::PayloadTooLarge { message, .. })) => {
                    out.push((
                        b[0],
                        Delivery::Rejected(vec![err(
                            "",
                            Reason::Amazon,
                            format!("Amazon: the event is too large ({message})"),
                        )]),
                    ));
                }
                Ok(Err(AmazonError::Rejected {
                    status: 400 | 422, ..
                })) if b.len() > 1 => {
                    // One bad event fails the whole request: bisect to find it.
                    let mut b = b;
                    let second = b.split_off(b.len() / 2);
                    queue.push((second, resent));
                    queue.push((b, resent));
                }
                Ok(Err(e @ AmazonError::Rejected { .. })) => {
                    let msg = e.user_message();
                    out.extend(b.into_iter().map(|i| {
                        (
                            i,
                            Delivery::Rejected(vec![err("", Reason::Amazon, msg.clone())]),
                        )
                    }));
                }
                Ok(Err(AmazonError::ReauthorizationRequired)) => {
                    stats.reauthorization_required = true;
                    let msg = AmazonError::ReauthorizationRequired.user_message();
                    out.extend(b.into_iter().map(|i| (i, Delivery::Park(msg.clone()))));
                }
                Ok(Err(e)) => {
                    tracing::warn!(account_id = %account.account_id, error = %e, events = b.len(), "Amazon batch failed; parking");
                    let msg = e.user_message();
                    out.extend(b.into_iter().map(|i| (i, Delivery::Park(msg.clone()))));
                }
            }
        }
        (out, stats)
    }

    async fn record_parked(&self, claim: Option<&Claim>, pe: &ParkedEvent, request_id: &str) {
        match claim {
            Some(c) => self.finish(self.dedupe.mark_parked(c, &pe.park_id).await, "mark parked"),
            None if !pe.key.client => {
                if let Err(e) = self
                    .dedupe
                    .put_parked(&pe.key, &pe.fingerprint, &pe.park_id, request_id)
                    .await
                {
                    tracing::error!(error = %e, "could not record the park id");
                }
            }
            // Parked without a claim (out of time, held by another request, a store error):
            // nothing is written; the redrive takes the id by the copy's `parkedAtMs`.
            None => {}
        }
    }

    async fn take_one(
        &self,
        i: usize,
        pe: &ParkedEvent,
        inv: &Invocation,
    ) -> (usize, Result<TakeOutcome, StoreError>) {
        let r = self
            .dedupe
            .take_parked(
                &pe.key,
                &pe.fingerprint,
                pe.parked_at_ms,
                inv.deadline_ms,
                &inv.request_id,
            )
            .await;
        (i, r)
    }

    async fn mark_reauthorization(&self, account: &IntegratedAccount) {
        match self
            .accounts
            .mark_reauthorization_required(&account.token_secret)
            .await
        {
            Ok(n) => {
                tracing::warn!(account_id = %account.account_id, accounts = n, "login needs reauthorization; accounts marked")
            }
            Err(e) => {
                tracing::error!(error = %e, "could not mark the accounts reauthorization_required")
            }
        }
    }

    /// Parks events durably; returns the result of each (by input index).
    async fn park(
        &self,
        account: &IntegratedAccount,
        items: Vec<(Work, String, &[u8])>,
        inv: &Invocation,
    ) -> Vec<(usize, EventResult)> {
        let mut out = Vec::with_capacity(items.len());
        let now = now_ms();
        let mut groups: Vec<Vec<(Work, String, ParkedEvent)>> = Vec::new();
        let mut cur = Vec::new();
        let mut cur_bytes = 0;
        for (w, reason, bytes) in items {
            let park_id = uuid::Uuid::new_v4().simple().to_string();
            let key = w
                .key
                .clone()
                .unwrap_or_else(|| DedupeKey::park(account.advertiser_id, &park_id));
            let fp = if w.fingerprint.is_empty() {
                fingerprint(bytes)
            } else {
                w.fingerprint.clone()
            };
            let raw = std::str::from_utf8(bytes)
                .ok()
                .and_then(|s| RawValue::from_string(s.to_string()).ok());
            let Some(event) = raw else {
                out.push((w.index, rejected_unavailable(w.index)));
                continue;
            };
            let size = bytes.len() + reason.len() + 256;
            if !cur.is_empty()
                && (cur.len() == self.settings.batch_size
                    || cur_bytes + size > self.settings.park_message_bytes)
            {
                groups.push(std::mem::take(&mut cur));
                cur_bytes = 0;
            }
            cur_bytes += size;
            let pe = ParkedEvent {
                key,
                park_id,
                fingerprint: fp,
                reason: reason.clone(),
                parked_at_ms: now,
                event,
            };
            cur.push((w, reason, pe));
        }
        if !cur.is_empty() {
            groups.push(cur);
        }
        for group in groups {
            let (works, parked): (Vec<(Work, String)>, Vec<ParkedEvent>) =
                group.into_iter().map(|(w, r, p)| ((w, r), p)).unzip();
            let msg = ParkedBatch {
                v: 1,
                account_id: account.account_id.clone(),
                advertiser_id: account.advertiser_id,
                events: parked,
                retry: RetryState::parked_at(now),
            };
            match self.parked.park(&msg).await {
                Ok(()) => {
                    ParkedCounts::new(&self.accounts)
                        .add_logged(
                            &account.account_id,
                            &[(Counter::Conversions, msg.events.len() as i64)],
                        )
                        .await;
                    // Futures built in a loop, not a closure over references: keeps the
                    // handler future `Send` (rustc's higher-ranked closure limitation).
                    let mut futs = Vec::with_capacity(works.len());
                    for ((w, _), pe) in works.iter().zip(&msg.events) {
                        futs.push(self.record_parked(w.claim.as_ref(), pe, &inv.request_id));
                    }
                    let marks = futures::stream::iter(futs)
                        .buffer_unordered(self.settings.claim_concurrency)
                        .collect::<Vec<_>>();
                    marks.await;
                    for (w, reason) in works {
                        out.push((
                            w.index,
                            EventResult {
                                index: w.index,
                                status: Status::Parked,
                                errors: vec![err(
                                    "",
                                    Reason::Unavailable,
                                    format!("{reason}; the event is parked and will be redriven"),
                                )],
                            },
                        ));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, events = works.len(), "parking failed; the caller must resend");
                    for (w, _) in works {
                        if let Some(c) = &w.claim {
                            self.finish(self.dedupe.release(c).await, "release");
                        }
                        out.push((w.index, rejected_unavailable(w.index)));
                    }
                }
            }
        }
        out
    }

    fn emit_metrics(&self, results: &[EventResult], totals: &Totals, stats: &SendStats) {
        let mut m = Metrics::new(self.settings.metrics_fn);
        m.count("Received", totals.received as u64)
            .count("Accepted", totals.accepted as u64)
            .count("Duplicates", totals.duplicate as u64)
            .count("Rejected", totals.rejected as u64)
            .count("Parked", totals.parked as u64);
        let mut by_reason: BTreeMap<&'static str, u64> = BTreeMap::new();
        for r in results.iter().filter(|r| r.status == Status::Rejected) {
            let reason = r
                .errors
                .first()
                .map(|e| e.reason)
                .unwrap_or(Reason::Invalid);
            *by_reason.entry(reason.as_str()).or_default() += 1;
        }
        for (reason, count) in by_reason {
            m.count(&format!("Rejected_{reason}"), count);
        }
        if !stats.latencies_ms.is_empty() {
            m.millis("AmazonLatency", mean(&stats.latencies_ms));
            m.count("AmazonRequests", stats.latencies_ms.len() as u64);
        }
        m.emit();
    }
}

/// Splits a request's valid events into those with a caller's id (to be claimed) and those
/// without (generated ids included). Copies of one id inside the request settle here, without a
/// claim, the way Amazon would: the same content again is a `duplicate`; different content later
/// in the request replaces the earlier copy (latest wins), which is answered `duplicate` with a
/// note naming the copy that was sent instead.
fn dedupe_in_request(
    account: &IntegratedAccount,
    arena: &Arena,
    prepared: &[Option<Prepared>],
    results: &mut [Option<EventResult>],
) -> (Vec<Work>, Vec<Work>) {
    let mut slot_of: HashMap<&str, usize> = HashMap::new();
    let mut with_id: Vec<Work> = Vec::new();
    let mut without_id = Vec::new();
    for (i, p) in prepared.iter().enumerate() {
        let Some(p) = p else { continue };
        let id = arena.id(p).filter(|_| !p.generated_id);
        let Some(id) = id else {
            without_id.push(Work {
                index: i,
                key: None,
                fingerprint: String::new(),
                claim: None,
            });
            continue;
        };
        let work = Work {
            index: i,
            key: Some(DedupeKey::client(account.advertiser_id, id)),
            fingerprint: fingerprint(arena.event(p)),
            claim: None,
        };
        match slot_of.get(id) {
            None => {
                slot_of.insert(id, with_id.len());
                with_id.push(work);
            }
            Some(&slot) if with_id[slot].fingerprint == work.fingerprint => {
                results[i] = Some(done(i, Status::Duplicate));
            }
            Some(&slot) => {
                let older = std::mem::replace(&mut with_id[slot], work).index;
                results[older] = Some(EventResult {
                    index: older,
                    status: Status::Duplicate,
                    errors: vec![err(
                        "clientDedupeId",
                        Reason::Invalid,
                        format!(
                            "superseded by event {i} of this request (same clientDedupeId, other content); only the latest content is sent"
                        ),
                    )],
                });
            }
        }
    }
    (with_id, without_id)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn done(index: usize, status: Status) -> EventResult {
    EventResult {
        index,
        status,
        errors: vec![],
    }
}

fn already_parked(index: usize) -> EventResult {
    EventResult {
        index,
        status: Status::Parked,
        errors: vec![err(
            "clientDedupeId",
            Reason::Unavailable,
            "this clientDedupeId is already parked; the redrive will deliver it once",
        )],
    }
}

fn rejected_unavailable(index: usize) -> EventResult {
    EventResult {
        index,
        status: Status::Rejected,
        errors: vec![err(
            "",
            Reason::Unavailable,
            "the event could be neither delivered nor parked; send it again",
        )],
    }
}

fn totals(results: &[EventResult]) -> Totals {
    let mut t = Totals {
        received: results.len(),
        ..Totals::default()
    };
    for r in results {
        match r.status {
            Status::Accepted => t.accepted += 1,
            Status::Duplicate => t.duplicate += 1,
            Status::Rejected => t.rejected += 1,
            Status::Parked => t.parked += 1,
        }
    }
    t
}

/// The `conversion-ingest` function: routes, the API key check, and the scheduled redrive.
#[derive(Clone)]
pub struct ConversionHandler {
    pub ctx: IngestCtx,
    pub auth: ApiKeyAuth,
}

impl ConversionHandler {
    pub async fn from_env(aws: &AwsClients) -> Result<Self, StartError> {
        Self::from_settings(aws, &Settings::from_env()?).await
    }

    /// [`ConversionHandler::from_env`] with the settings read at cold start.
    pub async fn from_settings(aws: &AwsClients, config: &Settings) -> Result<Self, StartError> {
        let ctx = IngestCtx::from_settings(aws, config).await?;
        let auth = ApiKeyAuth::new(
            SecretsStore::new(aws.secrets.clone()),
            config.api_keys_secret.get()?,
        );
        Ok(Self { ctx, auth })
    }
}

/// The path's segments without the `cargo lambda watch` prefix (`/lambda-url/<function>/…`).
fn route_segments(path: &str) -> Vec<&str> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segs.first() == Some(&"lambda-url") && segs.len() >= 2 {
        segs[2..].to_vec()
    } else {
        segs
    }
}

#[async_trait::async_trait]
impl Handler for ConversionHandler {
    async fn http(&self, req: HttpRequest, inv: Invocation) -> HttpResponse {
        // Authenticate and authorize before routing (crate::http::scopes owns the rules).
        if let Err(resp) = crate::http::scopes::authorize(&self.auth, &req).await {
            return resp;
        }
        let segs = route_segments(&req.path);
        match segs.as_slice() {
            ["accounts", account_id, "conversions"] => {
                if req.method != "POST" {
                    return HttpResponse::method_not_allowed("POST");
                }
                self.ctx.handle_conversions(&req, &inv, account_id).await
            }
            _ => HttpResponse::not_found(),
        }
    }

    async fn task(
        &self,
        name: &str,
        input: serde_json::Value,
        inv: Invocation,
    ) -> Result<serde_json::Value, String> {
        match name {
            "redrive" => {
                let s = self.ctx.redrive(&inv).await;
                serde_json::to_value(s).map_err(|e| e.to_string())
            }
            "redrive-dlq" => {
                use crate::parked_dlq::{DeadLetterMover, Scope};
                let mover = DeadLetterMover::for_conversions(&self.ctx.parked, &self.ctx.accounts)?;
                let s = mover.run(&Scope::from_input(&input), &inv).await?;
                serde_json::to_value(s).map_err(|e| e.to_string())
            }
            other => Err(format!(
                "unknown task {other:?}; this function runs \"redrive\" and \"redrive-dlq\""
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amazon_error_locations_are_made_relative_to_the_event() {
        let errs = amazon_errors(&[EventError {
            code: "FIELD_VALUE_IS_INVALID".into(),
            message: "bad".into(),
            field_location: Some("events[3].matchKeys[0].values".into()),
        }]);
        assert_eq!(errs[0].field, "matchKeys[0].values");
        assert_eq!(errs[0].message, "Amazon: FIELD_VALUE_IS_INVALID bad");
        assert_eq!(amazon_errors(&[])[0].reason, Reason::Amazon);
    }

    #[test]
    fn status_code_is_200_only_when_everything_went_through() {
        let mk = |s: Vec<Status>| {
            let results: Vec<EventResult> =
                s.into_iter().enumerate().map(|(i, s)| done(i, s)).collect();
            IngestReport {
                account_id: "1".into(),
                totals: totals(&results),
                results,
            }
        };
        assert_eq!(
            mk(vec![Status::Accepted, Status::Duplicate]).status_code(),
            200
        );
        assert_eq!(
            mk(vec![Status::Accepted, Status::Parked]).status_code(),
            207
        );
        assert_eq!(mk(vec![Status::Rejected]).status_code(), 207);
    }

    #[test]
    fn routes_under_api_gateway_and_cargo_lambda() {
        assert_eq!(
            route_segments("/accounts/12/conversions"),
            ["accounts", "12", "conversions"]
        );
        assert_eq!(
            route_segments("/lambda-url/conversion-ingest/accounts/12/conversions"),
            ["accounts", "12", "conversions"]
        );
    }
}
