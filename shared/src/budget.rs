//! The request budget: every HTTP answer comes within `ADSYNC_HTTP_BUDGET_MS` (default 25 000)
//! of the request's arrival, whatever Amazon does (API Gateway's HTTP API cuts an integration at
//! 30 s).
//!
//! [`crate::runtime::dispatch`] gives an HTTP invocation the deadline `arrival + budget` (arrival
//! = API Gateway's `requestContext.timeEpoch`, else now; never later than Lambda's own deadline),
//! runs the handler under [`with_amazon_deadline`] set `reserve` earlier (default 5 s), and answers
//! 503 if the handler has not answered at the budget. The Amazon client reads that task-local
//! deadline ([`amazon_time_left`]): each attempt's timeout is clipped to it and no retry starts
//! that could not finish before it, so the retry policy's attempts and backoff always fit inside
//! the budget and leave `reserve` for parking and store writes. Scheduled tasks run without it and
//! keep planning against the Lambda deadline.

use std::future::Future;
use std::time::{Duration, Instant};

/// The default budget: 5 s under API Gateway's 30 s integration timeout.
pub const DEFAULT_BUDGET_MS: u64 = 25_000;
/// The default time kept after the last Amazon call of a request (parking, store writes).
pub const DEFAULT_RESERVE_MS: u64 = 5_000;
/// An attempt with less time than this is not started.
pub const MIN_ATTEMPT: Duration = Duration::from_millis(250);

/// The budget of HTTP requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpBudget {
    /// From arrival to the answer.
    pub total: Duration,
    /// Kept after the last Amazon call.
    pub reserve: Duration,
}

impl Default for HttpBudget {
    fn default() -> Self {
        Self {
            total: Duration::from_millis(DEFAULT_BUDGET_MS),
            reserve: Duration::from_millis(DEFAULT_RESERVE_MS),
        }
    }
}

impl HttpBudget {
    /// `ADSYNC_HTTP_BUDGET_MS` (1 000–29 000, default 25 000) and `ADSYNC_HTTP_RESERVE_MS`
    /// (default 5 000, at most half the budget).
    pub fn from_env() -> Result<Self, crate::config::ConfigError> {
        use crate::config::{ConfigError, parsed_or};
        let total: u64 = parsed_or("ADSYNC_HTTP_BUDGET_MS", DEFAULT_BUDGET_MS)?;
        if !(1_000..=29_000).contains(&total) {
            return Err(ConfigError::Invalid {
                name: "ADSYNC_HTTP_BUDGET_MS",
                reason: "must be between 1000 and 29000 (API Gateway cuts at 30 s)".into(),
            });
        }
        let reserve: u64 = parsed_or("ADSYNC_HTTP_RESERVE_MS", DEFAULT_RESERVE_MS.min(total / 2))?;
        if reserve > total / 2 {
            return Err(ConfigError::Invalid {
                name: "ADSYNC_HTTP_RESERVE_MS",
                reason: "must be at most half of ADSYNC_HTTP_BUDGET_MS".into(),
            });
        }
        Ok(Self {
            total: Duration::from_millis(total),
            reserve: Duration::from_millis(reserve),
        })
    }

    /// The epoch-ms deadline of a request: `arrival + total`, where arrival is API Gateway's
    /// `timeEpoch` when it is plausible (not in the future, not older than the budget), else
    /// `now`; never later than Lambda's deadline.
    pub fn deadline_ms(&self, lambda_deadline_ms: u64, arrival_ms: Option<u64>, now: u64) -> u64 {
        let total = self.total.as_millis() as u64;
        let arrival = arrival_ms
            .filter(|a| *a <= now && now - *a < total)
            .unwrap_or(now);
        (arrival + total).min(lambda_deadline_ms)
    }
}

/// When the request started and when its Amazon calls must end.
#[derive(Clone, Copy, Debug)]
struct Window {
    started: Instant,
    amazon_deadline: Instant,
}

tokio::task_local! {
    static WINDOW: Window;
}

/// Runs `f` with Amazon calls bounded by `deadline` (see the module doc).
pub async fn with_amazon_deadline<F: Future>(deadline: Instant, f: F) -> F::Output {
    let w = Window {
        started: Instant::now(),
        amazon_deadline: deadline,
    };
    WINDOW.scope(w, f).await
}

/// Time left for Amazon calls in this request; `None` outside a request (scheduled tasks).
pub fn amazon_time_left() -> Option<Duration> {
    WINDOW
        .try_with(|w| w.amazon_deadline.saturating_duration_since(Instant::now()))
        .ok()
}

/// The instant `share` (0–1) of this request's Amazon window has passed; `None` outside a
/// request. Work that must leave time for later steps (conversion claims, whose completions come
/// after the send) stops starting then.
pub fn share_of_window(share: f64) -> Option<Instant> {
    WINDOW
        .try_with(|w| {
            let span = w.amazon_deadline.saturating_duration_since(w.started);
            w.started + span.mul_f64(share.clamp(0.0, 1.0))
        })
        .ok()
}

/// The epoch-ms time by which an Amazon call of this request must start to have `needed` before
/// the request's Amazon deadline; `None` outside a request.
pub fn latest_start_ms(needed: Duration) -> Option<i64> {
    amazon_time_left()
        .map(|left| crate::clock::now_ms() as i64 + left.saturating_sub(needed).as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_counts_from_arrival_and_never_passes_lambda() {
        let b = HttpBudget::default();
        // Arrival 3 s ago: 22 s left.
        assert_eq!(b.deadline_ms(u64::MAX, Some(97_000), 100_000), 122_000);
        // No arrival, or an implausible one: from now.
        assert_eq!(b.deadline_ms(u64::MAX, None, 100_000), 125_000);
        assert_eq!(b.deadline_ms(u64::MAX, Some(101_000), 100_000), 125_000);
        assert_eq!(b.deadline_ms(u64::MAX, Some(1_000), 100_000), 125_000);
        // Lambda's deadline is earlier.
        assert_eq!(b.deadline_ms(110_000, None, 100_000), 110_000);
    }

    #[tokio::test]
    async fn the_amazon_deadline_is_task_local() {
        assert_eq!(amazon_time_left(), None);
        assert_eq!(latest_start_ms(Duration::ZERO), None);
        let left = with_amazon_deadline(Instant::now() + Duration::from_secs(5), async {
            amazon_time_left().unwrap()
        })
        .await;
        assert!(left > Duration::from_secs(4) && left <= Duration::from_secs(5));
        assert_eq!(amazon_time_left(), None);
        let t0 = Instant::now();
        let third = with_amazon_deadline(t0 + Duration::from_secs(6), async {
            share_of_window(1.0 / 3.0).unwrap()
        })
        .await;
        let d = third.saturating_duration_since(t0);
        // A third of the window from its start (a moment after t0): about 2 s after t0.
        assert!(
            d > Duration::from_millis(1_900) && d < Duration::from_millis(2_100),
            "{d:?}"
        );
        assert!(share_of_window(0.5).is_none());
    }
}
