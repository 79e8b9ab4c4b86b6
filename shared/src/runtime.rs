//! The one Lambda entry point of every function.
//!
//! A function may be invoked by API Gateway (HTTP API, payload 2.0), by a Lambda function URL
//! (same payload; this is what `cargo lambda watch` sends), or by the EventBridge Scheduler with an
//! explicit input such as `{"task":"backfill"}`. [`run`] tells them apart and hands each to the
//! function's [`Handler`].

use crate::budget::HttpBudget;
use crate::http::{HttpRequest, HttpResponse};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

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
        Ok(req) => {
            let method = req.method.clone();
            let path = req.path.clone();
            let started = std::time::Instant::now();
            let budget = *HTTP_BUDGET.get_or_init(HttpBudget::default);
            let resp = answer_within(handler, req, inv, &payload, budget).await;
            tracing::info!(
                method = %method,
                path = %redact_path(&path),
                status = resp.status,
                ms = started.elapsed().as_millis() as u64,
                "request"
            );
            Ok(resp.to_apigw_v2())
        }
        Err(e) => Err(format!("unsupported event: {e}").into()),
    }
}

/// The budget of HTTP requests, read once by [`run`] (the default when never set, e.g. in tests).
static HTTP_BUDGET: std::sync::OnceLock<HttpBudget> = std::sync::OnceLock::new();

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
    let now = now_ms();
    let arrival = payload
        .pointer("/requestContext/timeEpoch")
        .and_then(Value::as_u64);
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
    let secs = crate::config::parsed_or("ADSYNC_LOCAL_TIMEOUT_SECS", 60u64).unwrap_or(60);
    now_ms + secs * 1000
}

/// Runs the Lambda runtime loop with `handler` (built once, shared by every invocation).
pub async fn run<H: Handler>(handler: H) -> Result<(), Error> {
    let budget = HttpBudget::from_env()?;
    let _ = HTTP_BUDGET.set(budget);
    let handler = Arc::new(handler);
    lambda_runtime::run(service_fn(move |ev: LambdaEvent<Value>| {
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
            dispatch(handler.as_ref(), ev.payload, inv).await
        }
    }))
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
        let payload = serde_json::json!({"requestContext": {"timeEpoch": now_ms() - 600}});
        let t0 = std::time::Instant::now();
        let resp = answer_within(
            &Slow,
            req.clone(),
            Invocation::with_timeout(60),
            &payload,
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
        let resp =
            answer_within(&Slow, req, Invocation::with_timeout(60), &Value::Null, long).await;
        let took = t0.elapsed();
        assert_eq!(resp.status, 503);
        assert!(resp.body.contains("deadline_exceeded"), "{}", resp.body);
        assert!(
            took >= Duration::from_millis(2_900) && took < Duration::from_millis(3_500),
            "{took:?}"
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
