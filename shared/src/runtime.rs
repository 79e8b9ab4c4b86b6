//! The one Lambda entry point of every function.
//!
//! A function may be invoked by API Gateway (HTTP API, payload 2.0), by a Lambda function URL
//! (same payload; this is what `cargo lambda watch` sends), or by the EventBridge Scheduler with an
//! explicit input such as `{"task":"backfill"}`. [`serve`] tells them apart and hands each to the
//! function's [`Handler`].
//!
//! [`start`] is every function's `main`: tracing, [`Settings`] read once, the AWS clients, the
//! function's handler built from them, then [`serve`].

use crate::aws::AwsClients;
use crate::budget::HttpBudget;
use crate::http::{HttpRequest, HttpResponse};
use crate::settings::Settings;
pub use lambda_runtime::Error;
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Duration;

/// Why a function could not start (configuration or the Amazon client's set-up).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("Amazon client: {0}")]
    Amazon(#[from] crate::amazon::AmazonError),
}

/// What one invocation may know about itself.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub request_id: String,
    /// Epoch milliseconds at which Lambda kills this invocation.
    pub deadline_ms: u64,
}

impl Invocation {
    /// For tests and local runs: a deadline `secs` from now.
    pub fn with_timeout(secs: u64) -> Self {
        Self {
            request_id: uuid::Uuid::new_v4().to_string(),
            deadline_ms: now_ms() + secs * 1000,
        }
    }

    /// Time left before the deadline.
    pub fn remaining(&self) -> Duration {
        Duration::from_millis(self.deadline_ms.saturating_sub(now_ms()))
    }
}

/// Milliseconds since the Unix epoch.
pub use crate::clock::now_ms;

/// A function's behaviour.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Answers an HTTP request. Expected failures are responses, never panics.
    async fn http(&self, req: HttpRequest, inv: Invocation) -> HttpResponse;

    /// Runs a scheduled task (`{"task":"…"}`); returns a JSON summary.
    async fn task(&self, name: &str, input: Value, inv: Invocation) -> Result<Value, String> {
        let _ = (input, inv);
        Err(format!("unknown task {name:?}"))
    }
}

/// Dispatches one raw Lambda payload to the handler.
pub async fn dispatch<H: Handler + ?Sized>(
    handler: &H,
    payload: Value,
    inv: Invocation,
) -> Result<Value, Error> {
    if let Some(task) = payload.get("task").and_then(Value::as_str) {
        let task = task.to_string();
        return match handler.task(&task, payload, inv).await {
            Ok(v) => Ok(v),
            Err(e) => {
                tracing::error!(task = %task, error = %e, "task failed");
                Err(e.into())
            }
        };
    }
    match HttpRequest::from_apigw_v2(&payload) {
        Ok(req) => Ok(answer(handler, req, inv, arrival_of(&payload)).await),
        Err(e) => Err(format!("unsupported event: {e}").into()),
    }
}

/// The budget of HTTP requests, set once by [`serve`] (the default when never set, e.g. in tests).
static HTTP_BUDGET: std::sync::OnceLock<HttpBudget> = std::sync::OnceLock::new();
/// `ADSYNC_LOCAL_TIMEOUT_SECS`, set once by [`serve`] (see [`effective_deadline`]).
static LOCAL_TIMEOUT_SECS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Runs one HTTP request under the request budget (`crate::budget`): the invocation's deadline is
/// the budget's, Amazon calls end `reserve` before it, and a handler still running at the deadline
/// is answered 503 (the work it accepted is durable; what it did not finish can be sent again).
pub async fn answer_within<H: Handler + ?Sized>(
    handler: &H,
    req: HttpRequest,
    inv: Invocation,
    payload: &Value,
    budget: HttpBudget,
) -> HttpResponse {
    answer_within_at(handler, req, inv, arrival_of(payload), budget).await
}

/// [`answer_within`] for a request that arrived at `arrival` (epoch ms; `None`: now).
async fn answer_within_at<H: Handler + ?Sized>(
    handler: &H,
    req: HttpRequest,
    inv: Invocation,
    arrival: Option<u64>,
    budget: HttpBudget,
) -> HttpResponse {
    let now = now_ms();
    let deadline_ms = budget.deadline_ms(inv.deadline_ms, arrival, now);
    let left = Duration::from_millis(deadline_ms.saturating_sub(now));
    let amazon_until = std::time::Instant::now() + left.saturating_sub(budget.reserve);
    let inv = Invocation { deadline_ms, ..inv };
    let work = crate::budget::with_amazon_deadline(amazon_until, handler.http(req, inv));
    match tokio::time::timeout(left, work).await {
        Ok(resp) => resp,
        Err(_) => {
            tracing::error!(
                budget_ms = budget.total.as_millis() as u64,
                "the request did not finish within its budget"
            );
            HttpResponse::error(
                503,
                "deadline_exceeded",
                format!(
                    "adsync could not finish this request within its {} ms budget; what it \
                     accepted is kept, send the request again to learn the rest",
                    budget.total.as_millis()
                ),
            )
        }
    }
}

/// [`dispatch`] for the payload as Lambda hands it over (JSON text). An HTTP event is read
/// straight from the text, so that a request body that is not UTF-8 reaches the route (which
/// answers 400) instead of failing the whole event's deserialisation (a 500 nobody can read).
pub async fn dispatch_raw<H: Handler + ?Sized>(
    handler: &H,
    payload: &RawValue,
    inv: Invocation,
) -> Result<Value, Error> {
    // Only the `task` field is read here; everything else is skipped unchecked.
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(default)]
        task: Option<Value>,
        #[serde(default, rename = "requestContext")]
        context: Option<ProbeContext>,
    }
    #[derive(serde::Deserialize)]
    struct ProbeContext {
        #[serde(default, rename = "timeEpoch")]
        time_epoch: Option<u64>,
    }
    let probe: Probe = serde_json::from_str(payload.get())
        .map_err(|e| Error::from(format!("unsupported event: {e}")))?;
    if probe.task.as_ref().is_some_and(Value::is_string) {
        let value: Value = serde_json::from_str(payload.get())
            .map_err(|e| Error::from(format!("unsupported event: {e}")))?;
        return dispatch(handler, value, inv).await;
    }
    match HttpRequest::from_apigw_v2_json(payload.get()) {
        Ok(req) => {
            let arrival = probe.context.and_then(|c| c.time_epoch);
            Ok(answer(handler, req, inv, arrival).await)
        }
        Err(e) => Err(format!("unsupported event: {e}").into()),
    }
}

/// API Gateway's arrival time of the request (`requestContext.timeEpoch`), when given.
fn arrival_of(payload: &Value) -> Option<u64> {
    payload
        .pointer("/requestContext/timeEpoch")
        .and_then(Value::as_u64)
}

/// Runs one HTTP request through the handler within the request budget, logs it (never its
/// query or body, with the accepting key's name) and returns the payload 2.0 answer.
async fn answer<H: Handler + ?Sized>(
    handler: &H,
    req: HttpRequest,
    inv: Invocation,
    arrival: Option<u64>,
) -> Value {
    let method = req.method.clone();
    let path = req.path.clone();
    let started = std::time::Instant::now();
    let budget = *HTTP_BUDGET.get_or_init(HttpBudget::default);
    // Audit: the accepting key's name (never the key) on every request line.
    let (resp, key) =
        crate::http::auth::audit_scope(answer_within_at(handler, req, inv, arrival, budget)).await;
    tracing::info!(
        method = %method,
        path = %redact_path(&path),
        key = key.as_deref().unwrap_or("-"),
        status = resp.status,
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    resp.to_apigw_v2()
}

/// Paths carry ids only, never tokens; still, cut anything that looks like a query.
fn redact_path(p: &str) -> &str {
    p.split('?').next().unwrap_or("")
}

/// The deadline work is planned against. Lambda always gives at least the function's timeout
/// (≥ 10 s for adsync) at the start of an invocation; a deadline that is already (nearly) past at
/// the start comes from an emulator that does not set one (`cargo lambda watch` without
/// `--timeout`), where the time budget falls back to `ADSYNC_LOCAL_TIMEOUT_SECS` (default 60) so
/// that budgeted work (backfill, waiting on claims) still runs.
pub fn effective_deadline(deadline_ms: u64, now_ms: u64) -> u64 {
    if deadline_ms > now_ms + 1_000 {
        return deadline_ms;
    }
    let secs =
        *LOCAL_TIMEOUT_SECS.get_or_init(|| crate::settings::LocalSettings::default().timeout_secs);
    now_ms + secs * 1000
}

/// Every function's start-up: tracing, [`Settings`] read once from the environment, the AWS
/// clients, then the handler `build` makes of them, served by [`serve`]. A configuration error or
/// a handler that cannot be built is logged (`cannot start`, with the function's name) and ends
/// the process.
pub async fn start<H: Handler>(
    function: &'static str,
    build: impl AsyncFnOnce(&AwsClients, &Settings) -> Result<H, StartError>,
) -> Result<(), Error> {
    crate::telemetry::init_tracing();
    let cannot_start = |e: &dyn std::fmt::Display| {
        tracing::error!(function, error = %e, "cannot start");
        Error::from(format!("{function} cannot start: {e}"))
    };
    let settings = Settings::from_env().map_err(|e| cannot_start(&e))?;
    let aws = AwsClients::from_settings(&settings.aws).await;
    let handler = build(&aws, &settings).await.map_err(|e| cannot_start(&e))?;
    serve(handler, &settings).await
}

/// Runs the Lambda runtime loop with `handler` (built once, shared by every invocation), with
/// lambda_runtime's tracing and the local emulator's [`crate::local_serving::SettleLayer`].
pub async fn serve<H: Handler>(handler: H, settings: &Settings) -> Result<(), Error> {
    let _ = HTTP_BUDGET.set(settings.http_budget);
    let _ = LOCAL_TIMEOUT_SECS.set(settings.local.timeout_secs);
    let handler = Arc::new(handler);
    let service = service_fn(move |ev: LambdaEvent<Box<RawValue>>| {
        let handler = handler.clone();
        async move {
            let inv = Invocation {
                request_id: ev.context.request_id.clone(),
                deadline_ms: effective_deadline(ev.context.deadline, now_ms()),
            };
            tracing::debug!(
                remaining_ms = inv.remaining().as_millis() as u64,
                "invocation"
            );
            dispatch_raw(handler.as_ref(), &ev.payload, inv).await
        }
    });
    lambda_runtime::Runtime::new(service)
        .layer(lambda_runtime::layers::TracingLayer::new())
        .layer(crate::local_serving::SettleLayer::new(
            settings.local.settle,
        ))
        .run()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;

    #[async_trait::async_trait]
    impl Handler for Echo {
        async fn http(&self, req: HttpRequest, _inv: Invocation) -> HttpResponse {
            HttpResponse::json(200, &serde_json::json!({"path": req.path}))
        }
        async fn task(&self, name: &str, _input: Value, _inv: Invocation) -> Result<Value, String> {
            Ok(serde_json::json!({"ran": name}))
        }
    }

    struct Slow;

    #[async_trait::async_trait]
    impl Handler for Slow {
        async fn http(&self, _req: HttpRequest, inv: Invocation) -> HttpResponse {
            let amazon_left = crate::budget::amazon_time_left().unwrap();
            if inv.remaining() > Duration::from_secs(2) {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            HttpResponse::json(
                200,
                &serde_json::json!({"amazonLeftMs": amazon_left.as_millis() as u64}),
            )
        }
    }

    #[tokio::test]
    async fn http_answers_come_within_the_budget() {
        let budget = HttpBudget {
            total: Duration::from_millis(1_500),
            reserve: Duration::from_millis(500),
        };
        let req = HttpRequest::new("GET", "/x");
        // Arrived 600 ms ago: the handler sees ~900 ms left, Amazon ~400 ms.
        let t0 = std::time::Instant::now();
        let resp = answer_within_at(
            &Slow,
            req.clone(),
            Invocation::with_timeout(60),
            Some(now_ms() - 600),
            budget,
        )
        .await;
        assert_eq!(resp.status, 200, "{}", resp.body);
        let left = resp.json_body()["amazonLeftMs"].as_u64().unwrap();
        assert!((300..=400).contains(&left), "{left}");
        assert!(t0.elapsed() < Duration::from_millis(100));
        // A handler that overruns is cut at the budget with a clear 503.
        let long = HttpBudget {
            total: Duration::from_millis(3_000),
            reserve: Duration::from_millis(500),
        };
        let t0 = std::time::Instant::now();
        let resp = answer_within_at(&Slow, req, Invocation::with_timeout(60), None, long).await;
        let took = t0.elapsed();
        assert_eq!(resp.status, 503);
        assert!(resp.body.contains("deadline_exceeded"), "{}", resp.body);
        assert!(
            took >= Duration::from_millis(2_900) && took < Duration::from_millis(3_500),
            "{took:?}"
        );
    }

    /// Answers what `parse_json_body` makes of the body (every JSON route's first step).
    struct JsonRoute;

    #[async_trait::async_trait]
    impl Handler for JsonRoute {
        async fn http(&self, req: HttpRequest, _inv: Invocation) -> HttpResponse {
            match crate::http::parse_json_body::<Value>(&req, 1 << 20) {
                Ok(v) => HttpResponse::json(200, &v),
                Err(e) => e.into(),
            }
        }
    }

    fn http_event(body: &str, base64: bool) -> Box<RawValue> {
        // `body` is spliced in as JSON string content: it may hold escapes no Rust string can.
        let text = format!(
            r#"{{"version":"2.0","rawPath":"/x","headers":{{"content-type":"application/json"}},"requestContext":{{"http":{{"method":"POST"}}}},"isBase64Encoded":{base64},"body":"{body}"}}"#
        );
        RawValue::from_string(text).unwrap()
    }

    #[tokio::test]
    async fn a_body_that_is_not_utf8_is_a_400_however_it_comes() {
        // Plain: a lone surrogate escape cannot be a Rust string; reading the event as a `Value`
        // (what lambda_runtime would do) fails before any route runs.
        let plain = http_event(r#"{\"events\":[{\"name\":\"\udcff\"}]}"#, false);
        assert!(serde_json::from_str::<Value>(plain.get()).is_err());
        // Base64: `eyJuIjoi/yJ9` is `{"n":"` 0xFF `"}`.
        let b64 = http_event("eyJuIjoi/yJ9", true);
        for (what, ev, offset) in [("plain", plain, 20), ("base64", b64, 6)] {
            let out = dispatch_raw(&JsonRoute, &ev, Invocation::with_timeout(5))
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(out["statusCode"], 400, "{what}: {out}");
            let body: Value = serde_json::from_str(out["body"].as_str().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "invalid_json", "{what}");
            assert_eq!(
                body["error"]["message"],
                format!(
                    "the body is not UTF-8 (invalid byte at offset {offset}); JSON must be UTF-8"
                ),
                "{what}"
            );
        }
        // A good body and a task take the same entry point.
        let ok = http_event(r#"{\"a\":\"\u00e9\ud83d\ude00\"}"#, false);
        let out = dispatch_raw(&JsonRoute, &ok, Invocation::with_timeout(5))
            .await
            .unwrap();
        assert_eq!(out["statusCode"], 200, "{out}");
        assert_eq!(out["body"], r#"{"a":"é😀"}"#);
        let task = RawValue::from_string(r#"{"task":"redrive"}"#.into()).unwrap();
        let out = dispatch_raw(&Echo, &task, Invocation::with_timeout(5))
            .await
            .unwrap();
        assert_eq!(out["ran"], "redrive");
        let other = RawValue::from_string(r#"{"x":1}"#.into()).unwrap();
        assert!(
            dispatch_raw(&Echo, &other, Invocation::with_timeout(5))
                .await
                .is_err()
        );
    }

    #[test]
    fn a_missing_deadline_gets_a_local_budget() {
        assert_eq!(effective_deadline(50_000, 10_000), 50_000);
        let d = effective_deadline(0, 10_000);
        assert!(d >= 10_000 + 60_000, "{d}");
        assert!(effective_deadline(10_500, 10_000) > 11_000);
    }

    #[tokio::test]
    async fn dispatches_http_and_tasks() {
        let http =
            serde_json::json!({"rawPath": "/a/b", "requestContext": {"http": {"method": "GET"}}});
        let out = dispatch(&Echo, http, Invocation::with_timeout(5))
            .await
            .unwrap();
        assert_eq!(out["statusCode"], 200);
        assert_eq!(out["body"], r#"{"path":"/a/b"}"#);
        let out = dispatch(
            &Echo,
            serde_json::json!({"task": "backfill"}),
            Invocation::with_timeout(5),
        )
        .await
        .unwrap();
        assert_eq!(out["ran"], "backfill");
        assert!(
            dispatch(
                &Echo,
                serde_json::json!({"x": 1}),
                Invocation::with_timeout(5)
            )
            .await
            .is_err()
        );
    }
}
