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
pub mod identities;
pub mod identities_redrive;
pub mod lifecycle;
pub mod members;
pub mod privacy;
pub mod purge;
pub mod refresh;
pub mod upkeep;

use crate::amazon::{AmazonClient, RetryPolicy};
use crate::aws::AwsClients;
use crate::config::{ConfigError, Tables, parsed_or, required};
use crate::http::auth::ApiKeyAuth;
use crate::http::{HttpRequest, HttpResponse};
use crate::runtime::{Handler, Invocation};
use crate::store::accounts::AccountStore;
use crate::store::destinations::DestinationStore;
use crate::store::jobs::JobStore;
use crate::store::ledger::LedgerStore;
use crate::store::parked::ParkedQueue;
use crate::store::secrets::SecretsStore;
use serde_json::{Value, json};
use std::time::Duration;

/// The share of an invocation's remaining time the `backfill` task may spend creating audiences
/// before it turns to backfill jobs (so a long creation queue never starves running backfills).
/// A creating request splits its slice the same way.
pub const AUDIENCE_CREATION_SHARE: f64 = 0.5;

/// The default slice a creating request spends on its destination's work (`ADSYNC_INLINE_WORK_MS`).
pub const DEFAULT_INLINE_WORK_MS: u64 = 5_000;
/// The largest slice accepted: with the one Amazon call that may still be running when the slice
/// ends (≤ [`INLINE_REQUEST_TIMEOUT`] per attempt; four in the worst case: token refresh, call,
/// refresh after a 401, resend), the slice's Amazon work ends within 6 + 4 × 3 = 18 s, inside
/// the request budget's Amazon deadline (`crate::budget`: 25 s − 5 s reserve = 20 s), which
/// also cuts any call still running then.
pub const MAX_INLINE_WORK_MS: u64 = 6_000;
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
        const VAR: &str = "ADSYNC_INLINE_WORK_MS";
        let ms = parsed_or::<u64>(VAR, DEFAULT_INLINE_WORK_MS)?;
        if ms > MAX_INLINE_WORK_MS {
            return Err(ConfigError::Invalid {
                name: VAR,
                reason: format!(
                    "{ms} is above {MAX_INLINE_WORK_MS} ms: the API answer must stay well under \
                     API Gateway's 29 s timeout (0 turns the inline work off)"
                ),
            });
        }
        Ok(Self {
            backfill: members::BackfillOptions::from_env()?,
            ..Self::with_budget(Duration::from_millis(ms))
        })
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
}

pub use crate::runtime::StartError;

impl ExportCtx {
    /// Builds the context from the environment (`ACCOUNTS_TABLE`, `DESTINATIONS_TABLE`,
    /// `LEDGER_TABLE`, `PARKED_PATCHES_QUEUE_URL`, the Amazon client's variables).
    pub async fn from_env(aws: &AwsClients) -> Result<Self, StartError> {
        let tables = Tables::from_env()?;
        let amazon = AmazonClient::from_env(aws).await?;
        // Checked at start-up: identities park there (`identities::queue`).
        required(identities::QUEUE_VAR)?;
        Ok(Self {
            amazon,
            accounts: AccountStore::new(aws.dynamodb.clone(), tables.accounts),
            destinations: DestinationStore::new(aws.dynamodb.clone(), tables.destinations.clone()),
            ledger: LedgerStore::new(aws.dynamodb.clone(), tables.ledger),
            jobs: JobStore::new(aws.dynamodb.clone(), tables.destinations),
            parked: ParkedQueue::new(aws.sqs.clone(), required("PARKED_PATCHES_QUEUE_URL")?)
                .with_dead_letter(crate::config::optional("PARKED_DLQ_URL")),
            metrics_fn: "segment-export",
            inline: InlineWork::from_env()?,
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
        let ctx = ExportCtx::from_env(aws).await?;
        let auth = ApiKeyAuth::new(
            SecretsStore::new(aws.secrets.clone()),
            required("API_KEYS_SECRET")?,
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

/// The route a request matched.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    PutSegment(&'a str),
    GetSegment(&'a str),
    ListSegments,
    DeleteSegment(&'a str),
    DeleteDestination(&'a str),
    CreateDestination,
    ListDestinations,
    GetDestination(&'a str),
    PatchDestination(&'a str),
    AddMappings(&'a str),
    RemoveMapping(&'a str, &'a str),
    PutFees(&'a str, &'a str),
    Qualifications,
    Privacy(privacy::PrivacyRoute<'a>),
    /// The path exists but not with this method: the allowed methods.
    WrongMethod(&'static str),
    NotFound,
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

fn match_route<'a>(method: &str, segs: &[&'a str]) -> Route<'a> {
    use Route::*;
    match (method, segs) {
        ("PUT", ["segments", id]) => PutSegment(id),
        ("GET", ["segments", id]) => GetSegment(id),
        ("DELETE", ["segments", id]) => DeleteSegment(id),
        (_, ["segments", _]) => WrongMethod("GET, PUT, DELETE"),
        ("GET", ["segments"]) => ListSegments,
        (_, ["segments"]) => WrongMethod("GET"),
        ("POST", ["destinations"]) => CreateDestination,
        ("GET", ["destinations"]) => ListDestinations,
        (_, ["destinations"]) => WrongMethod("GET, POST"),
        ("GET", ["destinations", id]) => GetDestination(id),
        ("PATCH", ["destinations", id]) => PatchDestination(id),
        ("DELETE", ["destinations", id]) => DeleteDestination(id),
        (_, ["destinations", _]) => WrongMethod("GET, PATCH, DELETE"),
        ("POST", ["destinations", id, "mappings"]) => AddMappings(id),
        (_, ["destinations", _, "mappings"]) => WrongMethod("POST"),
        ("DELETE", ["destinations", id, "mappings", seg]) => RemoveMapping(id, seg),
        (_, ["destinations", _, "mappings", _]) => WrongMethod("DELETE"),
        ("PUT", ["destinations", id, "mappings", seg, "fees"]) => PutFees(id, seg),
        (_, ["destinations", _, "mappings", _, "fees"]) => WrongMethod("PUT"),
        ("POST", ["qualifications"]) => Qualifications,
        (_, ["qualifications"]) => WrongMethod("POST"),
        _ => match privacy::match_route(method, segs) {
            Some(Ok(r)) => Privacy(r),
            Some(Err(allowed)) => WrongMethod(allowed),
            None => NotFound,
        },
    }
}

/// Routes one request of the segment-export function. Every route needs an API key with the
/// route's scope and no account restriction.
pub async fn route(
    ctx: &ExportCtx,
    auth: &ApiKeyAuth,
    req: &HttpRequest,
    inv: &Invocation,
) -> HttpResponse {
    // Authenticate and authorize before routing (crate::http::scopes owns the rules).
    if let Err(denied) = crate::http::scopes::authorize(auth, req).await {
        return denied;
    }
    route_authorized(ctx, req, inv).await
}

/// Routes a request whose caller is already authorized against `crate::http::scopes::POLICY`
/// (the console checks its session's key the same way before it calls this in process).
pub async fn route_authorized(
    ctx: &ExportCtx,
    req: &HttpRequest,
    inv: &Invocation,
) -> HttpResponse {
    let segs = route_segments(&req.path);
    let r = match_route(&req.method, &segs);
    if let Route::PatchDestination(id) | Route::AddMappings(id) | Route::PutFees(id, _) = r
        && let Some(refused) = lifecycle::refuse_if_deleting(ctx, id).await
    {
        return refused;
    }
    match r {
        Route::PutSegment(id) => destinations::put_segment(ctx, id, req).await,
        Route::GetSegment(id) => destinations::get_segment(ctx, id).await,
        Route::ListSegments => lifecycle::list_segments(ctx, req).await,
        Route::DeleteSegment(id) => lifecycle::delete_segment(ctx, id, req, inv).await,
        Route::DeleteDestination(id) => lifecycle::delete_destination(ctx, id, req).await,
        Route::CreateDestination => destinations::create_destination(ctx, req, inv).await,
        Route::ListDestinations => destinations::list_destinations(ctx, req).await,
        Route::GetDestination(id) => destinations::get_destination(ctx, id).await,
        Route::PatchDestination(id) => destinations::patch_destination(ctx, id, req).await,
        Route::AddMappings(id) => destinations::add_mappings(ctx, id, req, inv).await,
        Route::RemoveMapping(id, seg) => lifecycle::remove_mapping(ctx, id, seg, req).await,
        Route::PutFees(id, seg) => destinations::put_fees(ctx, id, seg, req).await,
        Route::Qualifications => members::handle_qualifications(ctx, req, inv).await,
        Route::Privacy(r) => privacy::route(ctx, r, req, inv).await,
        Route::WrongMethod(allowed) => HttpResponse::method_not_allowed(allowed),
        Route::NotFound => HttpResponse::not_found(),
    }
}

/// Runs a scheduled task: `backfill` (audience creation, then backfill jobs) or `redrive`.
pub async fn run_task(ctx: &ExportCtx, name: &str, inv: &Invocation) -> Result<Value, String> {
    run_task_with(ctx, name, &json!({ "task": name }), inv).await
}

/// [`run_task`] with the task's input (`redrive-dlq` reads its scope from it).
/// A scheduled step's summary, or its error.
fn step_view(r: &Result<Value, String>) -> Value {
    match r {
        Ok(v) => v.clone(),
        Err(e) => json!({ "error": e }),
    }
}

/// `out` when every step succeeded, else the first error (logged with the whole summary).
fn both_ok<const N: usize>(out: Value, steps: [Result<Value, String>; N]) -> Result<Value, String> {
    match steps.into_iter().find_map(Result::err) {
        None => Ok(out),
        Some(e) => {
            tracing::error!(summary = %out, "a scheduled step failed");
            Err(e)
        }
    }
}

pub async fn run_task_with(
    ctx: &ExportCtx,
    name: &str,
    input: &Value,
    inv: &Invocation,
) -> Result<Value, String> {
    match name {
        "backfill" => {
            let started = crate::runtime::now_ms() as i64;
            let budget = inv.remaining().mul_f64(AUDIENCE_CREATION_SHARE);
            let audiences = destinations::create_pending_audiences(ctx, inv, budget).await;
            // Refreshes, purges and audience metadata, within the same metadata share.
            let upkeep = upkeep::run_upkeep(
                ctx,
                started + budget.as_millis() as i64,
                &upkeep::UpkeepOptions::from_env().map_err(|e| e.to_string())?,
                crate::runtime::now_ms() as i64,
            )
            .await;
            let mut metrics = crate::telemetry::Metrics::new(ctx.metrics_fn);
            metrics
                .count("AudiencesCreated", audiences.created as u64)
                .count("AudienceCreationFailures", audiences.failed as u64);
            metrics.emit();
            // Erasures first (rare, and owed to a person); a failure of one step never skips
            // the other.
            let erasures = erasure::run_erasures(ctx, inv, &Default::default()).await;
            let backfill = members::run_backfill(ctx, inv).await;
            let out = json!({
                "task": "backfill", "audiences": audiences, "upkeep": upkeep,
                "backfill": step_view(&backfill), "erasures": step_view(&erasures)
            });
            both_ok(out, [backfill, erasures])
        }
        "redrive" => {
            let redrive = members::run_redrive(ctx, inv).await;
            let identities = identities::run_redrive(ctx, inv).await;
            let out = json!({
                "task": "redrive", "redrive": step_view(&redrive),
                "identities": step_view(&identities)
            });
            both_ok(out, [redrive, identities])
        }
        "redrive-dlq" => {
            use crate::parked_dlq::{DeadLetterMover, Scope};
            let mover = DeadLetterMover::for_patches(&ctx.parked, &ctx.accounts)?;
            let moved = mover.run(&Scope::from_input(input), inv).await?;
            Ok(json!({"task": "redrive-dlq", "redriveDlq": moved}))
        }
        other => Err(format!(
            "unknown task {other:?} (expected \"backfill\", \"redrive\" or \"redrive-dlq\")"
        )),
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

    #[test]
    fn routes_match_with_and_without_the_function_url_prefix() {
        for prefix in ["", "/lambda-url/segment-export"] {
            let r = |m: &str, p: &str| {
                let path = format!("{prefix}{p}");
                let segs = route_segments(&path);
                format!("{:?}", match_route(m, &segs))
            };
            assert_eq!(r("PUT", "/segments/s1"), "PutSegment(\"s1\")");
            assert_eq!(r("POST", "/destinations"), "CreateDestination");
            assert_eq!(r("GET", "/destinations/"), "ListDestinations");
            assert_eq!(r("GET", "/destinations/d1"), "GetDestination(\"d1\")");
            assert_eq!(r("PATCH", "/destinations/d1"), "PatchDestination(\"d1\")");
            assert_eq!(
                r("POST", "/destinations/d1/mappings"),
                "AddMappings(\"d1\")"
            );
            assert_eq!(
                r("DELETE", "/destinations/d1/mappings/s1"),
                "RemoveMapping(\"d1\", \"s1\")"
            );
            assert_eq!(
                r("PUT", "/destinations/d1/mappings/s1/fees"),
                "PutFees(\"d1\", \"s1\")"
            );
            assert_eq!(r("POST", "/qualifications"), "Qualifications");
            assert_eq!(r("DELETE", "/destinations/d1"), "DeleteDestination(\"d1\")");
            assert_eq!(r("GET", "/segments"), "ListSegments");
            assert_eq!(r("DELETE", "/segments/s1"), "DeleteSegment(\"s1\")");
            assert_eq!(r("POST", "/segments"), "WrongMethod(\"GET\")");
            assert_eq!(
                r("POST", "/destinations/d1"),
                "WrongMethod(\"GET, PATCH, DELETE\")"
            );
            assert_eq!(r("GET", "/nope"), "NotFound");
            assert_eq!(r("GET", "/destinations/d1/mappings/s1/fees/x"), "NotFound");
        }
    }
}
