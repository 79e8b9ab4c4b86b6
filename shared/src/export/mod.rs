//! Segment export: the use case behind `functions/segment-export`.
//!
//! This module owns the context built once per process ([`ExportCtx`]), the router of every
//! segment-export route ([`route`]) and the dispatch of the scheduled tasks ([`run_task`]). The
//! metadata side (segments, destinations, mappings, audiences, fees, export controls) lives in
//! [`destinations`]; the membership side (ledger, qualifications, patches, backfill jobs,
//! redrive) in [`members`].
//!
//! Scheduled tasks:
//! - `{"task":"backfill"}`: first creates queued audiences (1 request/s, within at most
//!   [`AUDIENCE_CREATION_SHARE`] of the time left), which queues the new mappings' backfills,
//!   then the audience upkeep ([`upkeep`]: purges, membership refreshes, settings and size
//!   reads in the rest of that metadata share), then continues backfill jobs
//!   (`members::run_backfill`, which also runs refreshes and purges) until the deadline margin.
//! - `{"task":"redrive"}`: `members::run_redrive`.
//!
//! The creating requests (`POST /destinations`, `POST /destinations/{id}/mappings`) also spend
//! a bounded slice of their own time ([`InlineWork`], `ADSYNC_INLINE_WORK_MS`) on their own
//! destination's work before answering, through the same paced creation and the same leased,
//! checkpointed backfill as the scheduled task; whatever the slice does not finish stays queued
//! or checkpointed for the schedule.

pub mod adopt;
pub mod audience_meta;
pub mod audience_view;
pub mod destinations;
pub mod erasure;
pub mod erasure_progress;
pub mod errors;
pub mod identities;
pub mod identities_redrive;
pub mod lifecycle;
pub mod members;
pub mod migrate;
pub mod privacy;
pub mod purge;
pub mod refresh;
mod router;
mod tasks;
pub mod upkeep;

use crate::amazon::{AmazonClient, RetryPolicy};
use crate::aws::AwsClients;
use crate::config::ConfigError;
use crate::http::auth::ApiKeyAuth;
use crate::http::{HttpRequest, HttpResponse};
use crate::runtime::{Handler, Invocation};
use crate::settings::Settings;
use crate::store::accounts::AccountStore;
use crate::store::destinations::DestinationStore;
use crate::store::jobs::JobStore;
use crate::store::ledger::LedgerStore;
use crate::store::parked::ParkedQueue;
use crate::store::secrets::SecretsStore;
use serde_json::Value;
use std::time::Duration;

/// The share of an invocation's remaining time the `backfill` task may spend creating audiences
/// before it turns to backfill jobs (so a long creation queue never starves running backfills).
/// A creating request splits its slice the same way.
pub const AUDIENCE_CREATION_SHARE: f64 = 0.5;

pub use crate::settings::options::{DEFAULT_INLINE_WORK_MS, MAX_INLINE_WORK_MS};
/// Per-attempt timeout of the Amazon calls made inside a request's slice.
pub const INLINE_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// What a creating request does before it answers: within `budget` (never past the Lambda
/// deadline minus `backfill.safety_margin`), create its destination's queued audiences (same
/// DynamoDB pacing and claims as the schedule), then run the backfill jobs of its mappings that
/// are active (same leases, slots and checkpoints). A zero budget turns this off: the request
/// only queues, and makes no Amazon call.
#[derive(Clone, Debug)]
pub struct InlineWork {
    pub budget: Duration,
    /// Backfill knobs inside the slice (the scheduled run's by default).
    pub backfill: members::BackfillOptions,
    /// Amazon calls inside the slice make one attempt with a short timeout: a request never
    /// waits out backoffs or a `Retry-After`; what fails transiently is left to the scheduled
    /// run, which has the full retry policy.
    pub retry: RetryPolicy,
}

impl InlineWork {
    /// No inline work: the request answers at once with its mappings `pending`.
    pub fn off() -> Self {
        Self::with_budget(Duration::ZERO)
    }

    /// A slice of `budget` with the default backfill options and the inline retry policy.
    pub fn with_budget(budget: Duration) -> Self {
        Self {
            budget,
            backfill: members::BackfillOptions::default(),
            retry: RetryPolicy {
                max_attempts: 1,
                request_timeout: INLINE_REQUEST_TIMEOUT,
                ..RetryPolicy::default()
            },
        }
    }

    pub fn enabled(&self) -> bool {
        !self.budget.is_zero()
    }

    /// `ADSYNC_INLINE_WORK_MS` (default [`DEFAULT_INLINE_WORK_MS`], 0 = off, at most
    /// [`MAX_INLINE_WORK_MS`]) with the backfill options of the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self::from_settings(&Settings::from_env()?))
    }

    /// [`InlineWork::from_env`] with the settings read at cold start (`Settings::inline_work`
    /// checks `ADSYNC_INLINE_WORK_MS`).
    pub fn from_settings(config: &Settings) -> Self {
        Self {
            backfill: config.backfill.clone(),
            ..Self::with_budget(config.inline_work)
        }
    }
}

impl Default for InlineWork {
    fn default() -> Self {
        Self::with_budget(Duration::from_millis(DEFAULT_INLINE_WORK_MS))
    }
}

/// Everything the segment-export routes and tasks use, built once per process.
#[derive(Clone)]
pub struct ExportCtx {
    pub amazon: AmazonClient,
    pub accounts: AccountStore,
    pub destinations: DestinationStore,
    pub ledger: LedgerStore,
    pub jobs: JobStore,
    pub parked: ParkedQueue,
    /// The `Function` dimension of the metrics this context emits.
    pub metrics_fn: &'static str,
    /// The creating requests' slice of work before they answer.
    pub inline: InlineWork,
    /// The scheduled work's options, read once with the settings.
    pub options: ExportOptions,
}

/// The options of segment-export's scheduled work (`crate::settings`), read once at cold start.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub upkeep: upkeep::UpkeepOptions,
    pub parked_retry: crate::store::parked_retry::ParkedRetry,
    /// `PARKED_IDENTITIES_QUEUE_URL`: where identity records Amazon could not take yet wait.
    pub identities_queue: Option<String>,
}

impl ExportOptions {
    pub fn from_settings(config: &Settings) -> Self {
        Self {
            upkeep: config.upkeep.clone(),
            parked_retry: config.parked_retry,
            identities_queue: config.parked_identities_queue.value.clone(),
        }
    }

    /// From the environment (tests and tools that build an [`ExportCtx`] by hand).
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self::from_settings(&Settings::from_env()?))
    }
}

pub use crate::runtime::StartError;
pub use router::{route, route_authorized};
pub use tasks::{run_task, run_task_with};

impl ExportCtx {
    /// Builds the context from the environment (`ACCOUNTS_TABLE`, `DESTINATIONS_TABLE`,
    /// `LEDGER_TABLE`, `PARKED_PATCHES_QUEUE_URL`, the Amazon client's variables).
    pub async fn from_env(aws: &AwsClients) -> Result<Self, StartError> {
        Self::from_settings(aws, &Settings::from_env()?).await
    }

    /// [`ExportCtx::from_env`] with the settings read at cold start.
    pub async fn from_settings(aws: &AwsClients, config: &Settings) -> Result<Self, StartError> {
        let tables = config.tables()?;
        let amazon = AmazonClient::from_settings(aws, config).await?;
        // Checked at start-up: identities park there (`identities::queue`).
        config.parked_identities_queue.get()?;
        Ok(Self {
            amazon,
            accounts: AccountStore::new(aws.dynamodb.clone(), tables.accounts),
            destinations: DestinationStore::new(aws.dynamodb.clone(), tables.destinations.clone()),
            ledger: LedgerStore::new(aws.dynamodb.clone(), tables.ledger),
            jobs: JobStore::new(aws.dynamodb.clone(), tables.destinations),
            parked: ParkedQueue::new(aws.sqs.clone(), config.parked_patches_queue.get()?)
                .with_dead_letter(config.parked_dlq.clone()),
            metrics_fn: "segment-export",
            inline: InlineWork::from_settings(config),
            options: ExportOptions::from_settings(config),
        })
    }
}

/// The function's handler: the context plus the API key check.
#[derive(Clone)]
pub struct ExportHandler {
    pub ctx: ExportCtx,
    pub auth: ApiKeyAuth,
}

impl ExportHandler {
    pub async fn from_env(aws: &AwsClients) -> Result<Self, StartError> {
        Self::from_settings(aws, &Settings::from_env()?).await
    }

    /// [`ExportHandler::from_env`] with the settings read at cold start.
    pub async fn from_settings(aws: &AwsClients, config: &Settings) -> Result<Self, StartError> {
        let ctx = ExportCtx::from_settings(aws, config).await?;
        let auth = ApiKeyAuth::new(
            SecretsStore::new(aws.secrets.clone()),
            config.api_keys_secret.get()?,
        );
        Ok(Self { ctx, auth })
    }
}

#[async_trait::async_trait]
impl Handler for ExportHandler {
    async fn http(&self, req: HttpRequest, inv: Invocation) -> HttpResponse {
        route(&self.ctx, &self.auth, &req, &inv).await
    }

    async fn task(&self, name: &str, input: Value, inv: Invocation) -> Result<Value, String> {
        run_task_with(&self.ctx, name, &input, &inv).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_work_keeps_the_answer_under_api_gateways_timeout() {
        let d = InlineWork::default();
        assert!(d.enabled());
        assert_eq!(d.budget, Duration::from_millis(DEFAULT_INLINE_WORK_MS));
        assert_eq!(
            d.retry.max_attempts, 1,
            "no backoff or Retry-After wait in a request"
        );
        assert_eq!(d.retry.request_timeout, INLINE_REQUEST_TIMEOUT);
        // The largest slice plus the call that may still run when it ends (token refresh, call,
        // refresh after a 401, resend: four attempts) ends before the request budget's Amazon
        // deadline, leaving its reserve for the work after the slice.
        let budget = crate::budget::HttpBudget::default();
        assert!(
            Duration::from_millis(MAX_INLINE_WORK_MS) + INLINE_REQUEST_TIMEOUT * 4
                <= budget.total - budget.reserve
        );
        assert!(!InlineWork::off().enabled());
    }
}
