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

mod claim;
mod park;
mod pipeline;
mod redrive;
mod report;
mod request;
mod routes;
mod send;

pub use park::{ParkedBatch, ParkedEvent};
pub use redrive::RedriveSummary;
pub use report::{EventResult, IngestReport, Status, Totals};

use claim::*;
use pipeline::*;
use report::*;
use send::*;

use crate::amazon::{AmazonClient, AmazonError, EventError, EventsOutcome};
use crate::aws::AwsClients;
use crate::config::{Tables, dedupe_window, required};
use crate::domain::conversion::{self, Arena, FieldError, Prepared, Processor, Reason, batch_body};
use crate::http::auth::ApiKeyAuth;
use crate::http::{HttpRequest, HttpResponse};
use crate::runtime::{Handler, Invocation, now_ms};
use crate::store::StoreError;
use crate::store::accounts::{AccountStore, IntegratedAccount, require_active};
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
        let amazon = AmazonClient::from_env(aws).await?;
        Ok(Self {
            amazon,
            accounts: AccountStore::new(aws.dynamodb.clone(), required("ACCOUNTS_TABLE")?),
            dedupe: DedupeStore::new(
                aws.dynamodb.clone(),
                Tables::from_env()?.dedupe,
                dedupe_window()?,
            ),
            parked: ParkedQueue::new(aws.sqs.clone(), required("PARKED_CONVERSIONS_QUEUE_URL")?)
                .with_dead_letter(crate::config::optional("PARKED_DLQ_URL")),
            settings: IngestSettings {
                retry: ParkedRetry::from_env()?,
                ..IngestSettings::default()
            },
        })
    }
}

/// The `conversion-ingest` function: routes, the API key check, and the scheduled redrive.
#[derive(Clone)]
pub struct ConversionHandler {
    pub ctx: IngestCtx,
    pub auth: ApiKeyAuth,
}

impl ConversionHandler {
    pub async fn from_env(aws: &AwsClients) -> Result<Self, StartError> {
        let ctx = IngestCtx::from_env(aws).await?;
        let auth = ApiKeyAuth::new(
            SecretsStore::new(aws.secrets.clone()),
            required("API_KEYS_SECRET")?,
        );
        Ok(Self { ctx, auth })
    }
}

#[cfg(test)]
mod tests;
