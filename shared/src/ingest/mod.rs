//! Conversion ingest: `POST /accounts/{accountId}/conversions` and the scheduled
//! `{"task":"redrive"}` of parked conversions. Ports in ([`IngestCtx`]), results out
//! ([`IngestReport`], [`RedriveSummary`]).
//!
//! A request, by file: `request` (envelope, account, `domain::conversion` parses and validates:
//! a bad event is `rejected` with its field errors and never sinks the batch) → `pipeline`
//! (in-request copies of a `clientDedupeId`: latest content wins, as at Amazon) → `claim` (the
//! dedupe store) → `send` (Amazon, batched) → `park` (what could not be delivered) → `report`.
//!
//! Invariants:
//! - Nothing accepted is lost: an event is answered `accepted`, `duplicate`, `rejected` (the
//!   caller may resend) or `parked` (durably queued, hashed outbound JSON only, no raw personal
//!   data; the redrive delivers it once).
//! - Nothing is sent twice: a `clientDedupeId` is claimed with its content's fingerprint before it
//!   is sent; completed or parked claims answer a retry without sending; other content under the
//!   same id is a correction, and old content never follows new content to Amazon.
//! - The answer comes within the request's budget (`crate::budget`): what Amazon does not answer
//!   in time is parked.
//! - Delivery is at least once at the network boundary; every event carries an `eventId` (the
//!   `clientDedupeId`, or a generated `adsync-<32 hex>` kept in the parked copy) so Amazon
//!   dedupes that case.

mod claim;
mod erased;
mod park;
mod pipeline;
mod redrive;
mod report;
mod request;
mod routes;
mod send;
mod wave;

pub use park::{ParkedBatch, ParkedEvent};
pub use redrive::RedriveSummary;
pub use report::{EventResult, IngestReport, Status, Totals};

use crate::amazon::AmazonClient;
use crate::aws::AwsClients;
use crate::http::auth::ApiKeyAuth;
use crate::settings::Settings;
use crate::store::accounts::AccountStore;
use crate::store::dedupe::DedupeStore;
use crate::store::erased_rows::TombstoneReader;
use crate::store::parked::ParkedQueue;
use crate::store::parked_retry::ParkedRetry;
use crate::store::secrets::SecretsStore;
use std::time::Duration;

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
    /// Erasure tombstones (`LEDGER_TABLE`): parked conversions of erased MAIDs are not sent.
    pub tombstones: Option<TombstoneReader>,
    pub settings: IngestSettings,
}

pub use crate::runtime::StartError;

impl IngestCtx {
    /// From the environment: `ACCOUNTS_TABLE`, `DEDUPE_TABLE`, `DEDUPE_WINDOW_DAYS`,
    /// `PARKED_CONVERSIONS_QUEUE_URL`, `LEDGER_TABLE` (optional: the erasure tombstones) and the
    /// Amazon client's variables.
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
            tombstones: tombstone_reader(aws, config),
            settings: IngestSettings {
                retry: config.parked_retry,
                ..IngestSettings::default()
            },
        })
    }
}

/// The erasure tombstones' reader, if `LEDGER_TABLE` is set (the template sets it everywhere).
fn tombstone_reader(aws: &AwsClients, config: &Settings) -> Option<TombstoneReader> {
    let reader = config
        .ledger_table
        .get()
        .ok()
        .map(|t| TombstoneReader::new(aws.dynamodb.clone(), t));
    if reader.is_none() {
        tracing::warn!(
            "LEDGER_TABLE is not set: parked conversions are redriven without the erasure check"
        );
    }
    reader
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

#[cfg(test)]
mod tests;
