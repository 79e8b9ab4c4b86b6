//! Retries: the policy, the backoff with full jitter honouring `Retry-After`, and the attempt
//! timeout clipped to the request budget.

use super::AmazonClient;
use crate::amazon::error::AmazonError;
use backon::{ExponentialBuilder, Retryable};
use std::time::Duration;

/// The longest `Retry-After` we honour: a longer wait is better left to the caller's own retry
/// (parking, the scheduler) than spent inside one Lambda invocation.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(30);

/// Retries and timeouts. `max_attempts` counts every request sent (1 = no retry); the n-th retry
/// waits a uniformly random time in `[0, min(max_delay, base_delay · 2ⁿ⁻¹)]` (full jitter), or
/// `Retry-After` (capped at [`RETRY_AFTER_CAP`]) when a 429 carries one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    /// 4 attempts, 200 ms base, 20 s cap, 30 s per request.
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(20),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The longest one call can take under this policy: every attempt timing out, and the
    /// longest wait between attempts (the backoff cap, or a capped `Retry-After`).
    pub fn worst_case(&self) -> Duration {
        let waits = self.max_attempts.saturating_sub(1);
        self.request_timeout * self.max_attempts + self.max_delay.max(RETRY_AFTER_CAP) * waits
    }
}

impl AmazonClient {
    /// Runs `f` under the retry policy: transient failures (429, 5xx, timeouts, network) are
    /// retried with exponential backoff and full jitter, honouring `Retry-After`.
    pub(crate) async fn retrying<T, F, Fut>(
        &self,
        f: F,
        method: &str,
        path: &str,
    ) -> Result<T, AmazonError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, AmazonError>>,
    {
        let p = &self.policy;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(p.base_delay)
            .with_max_delay(p.max_delay.max(p.base_delay))
            .with_factor(2.0)
            .with_max_times(p.max_attempts.saturating_sub(1) as usize);
        f.retry(backoff)
            .sleep(tokio::time::sleep)
            .when(is_transient)
            .adjust(|e, d| d.map(|d| retry_delay(e, d)).filter(|d| fits_budget(*d)))
            .notify(|e, d| {
                tracing::warn!(
                    method,
                    path,
                    error = %e,
                    delay_ms = d.as_millis() as u64,
                    "Amazon call failed; retrying"
                );
            })
            .await
    }

    /// One attempt's timeout: the policy's, clipped to the request budget's Amazon deadline
    /// (`crate::budget`); no attempt starts with less than [`crate::budget::MIN_ATTEMPT`] left.
    pub(crate) fn attempt_timeout(&self) -> Result<Duration, AmazonError> {
        match crate::budget::amazon_time_left() {
            None => Ok(self.policy.request_timeout),
            Some(left) if left < crate::budget::MIN_ATTEMPT => Err(AmazonError::Timeout),
            Some(left) => Ok(self.policy.request_timeout.min(left)),
        }
    }
}

fn is_transient(e: &AmazonError) -> bool {
    matches!(
        e,
        AmazonError::Throttled { .. }
            | AmazonError::Server { .. }
            | AmazonError::Timeout
            | AmazonError::Network(_)
    )
}

/// Inside a request (`crate::budget`), a retry is only started when its wait and a minimal
/// attempt end before the request's Amazon deadline; outside one, always.
fn fits_budget(wait: Duration) -> bool {
    crate::budget::amazon_time_left().is_none_or(|left| left > wait + crate::budget::MIN_ATTEMPT)
}

/// The wait before the next attempt: `Retry-After` (capped) on a 429 that carries one, else a
/// uniformly random time in `[0, backoff]` (full jitter).
pub(super) fn retry_delay(e: &AmazonError, backoff: Duration) -> Duration {
    match e {
        AmazonError::Throttled {
            retry_after: Some(ra),
            ..
        } => (*ra).min(RETRY_AFTER_CAP),
        _ => backoff.mul_f64(rand::random::<f64>()),
    }
}
