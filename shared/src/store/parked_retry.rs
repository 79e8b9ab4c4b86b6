//! How parked work outlasts an outage: the redrive policy and the retry state a parked message
//! carries.
//!
//! A parked message that cannot be delivered now (Amazon 5xx, 429 or timeout, the account not
//! active, its token being refreshed) is not left for SQS to hand back: every receive counts
//! towards the queue's `maxReceiveCount`, so an hour-long outage would push it to the dead-letter
//! queue after a few redrive runs. Instead the redrive sends it again as a new message with a
//! growing delay (`PARKED_RETRY_BASE_SECONDS`, default 60, doubling up to
//! `PARKED_RETRY_MAX_SECONDS`, default 3 600) and deletes the one it received. SQS delays a
//! message by at most 15 minutes; a longer wait is held in the message (`notBeforeMs`) and a
//! message received before its time is re-sent with the rest of the wait.
//!
//! A message goes to the dead-letter queue only when its own error is permanent (Amazon refused
//! the event itself with a 4xx) or when it has waited longer than `PARKED_MAX_AGE_HOURS`
//! (default 96, i.e. 4 days) since it was first parked. `{"task":"redrive-dlq"}` moves
//! dead-lettered messages back with a fresh retry state (`crate::parked_dlq`).

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The redrive policy of parked messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParkedRetry {
    /// Delay after the first failed redrive; doubles with each further one.
    pub base_delay: Duration,
    /// The longest delay between two redrives of a message.
    pub max_delay: Duration,
    /// A message older than this (since first parked) goes to the dead-letter queue.
    pub max_age: Duration,
}

impl Default for ParkedRetry {
    fn default() -> Self {
        Self {
            base_delay: Duration::from_secs(60),
            max_delay: Duration::from_secs(3_600),
            max_age: Duration::from_secs(4 * 86_400),
        }
    }
}

impl ParkedRetry {
    /// `PARKED_RETRY_BASE_SECONDS` (0–3 600), `PARKED_RETRY_MAX_SECONDS` (≥ base, ≤ 86 400),
    /// `PARKED_MAX_AGE_HOURS` (1–336; SQS keeps a message 14 days).
    pub fn from_env() -> Result<Self, crate::config::ConfigError> {
        use crate::config::{ConfigError, parsed_or};
        let d = Self::default();
        let base: u64 = parsed_or("PARKED_RETRY_BASE_SECONDS", d.base_delay.as_secs())?;
        let max: u64 = parsed_or("PARKED_RETRY_MAX_SECONDS", d.max_delay.as_secs())?;
        let hours: u64 = parsed_or("PARKED_MAX_AGE_HOURS", d.max_age.as_secs() / 3_600)?;
        let bad = |name, reason: &str| ConfigError::Invalid {
            name,
            reason: reason.into(),
        };
        if base > 3_600 {
            return Err(bad("PARKED_RETRY_BASE_SECONDS", "must be at most 3600"));
        }
        if max < base || max > 86_400 {
            return Err(bad(
                "PARKED_RETRY_MAX_SECONDS",
                "must be between PARKED_RETRY_BASE_SECONDS and 86400",
            ));
        }
        if !(1..=336).contains(&hours) {
            return Err(bad("PARKED_MAX_AGE_HOURS", "must be between 1 and 336"));
        }
        Ok(Self {
            base_delay: Duration::from_secs(base),
            max_delay: Duration::from_secs(max),
            max_age: Duration::from_secs(hours * 3_600),
        })
    }

    /// The wait after `attempts` failed redrives (1 → base, 2 → 2 × base, …, capped).
    pub fn delay(&self, attempts: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(30));
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// What to do with a message that failed again now: wait (with its new state), or give up.
    pub fn after_failure(&self, state: &RetryState, now_ms: u64, run_id: &str) -> Next {
        let first = state.first_parked_at_ms.unwrap_or(now_ms);
        if now_ms.saturating_sub(first) >= self.max_age.as_millis() as u64 {
            return Next::DeadLetter(format!(
                "not delivered within {} hours of being parked",
                self.max_age.as_secs() / 3_600
            ));
        }
        let attempts = state.attempts.saturating_add(1);
        let delay = self.delay(attempts);
        Next::Later {
            delay,
            state: RetryState {
                attempts,
                first_parked_at_ms: Some(first),
                not_before_ms: Some(now_ms + delay.as_millis() as u64),
                last_run: Some(run_id.to_string()),
                dead_lettered_at_ms: None,
                dead_letter_reason: None,
            },
        }
    }
}

/// What becomes of a message that could not be delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Send it again, visible after `delay` (SQS caps the delay at 15 minutes; `state` holds
    /// the full wait).
    Later { delay: Duration, state: RetryState },
    /// Too old: to the dead-letter queue, with the reason.
    DeadLetter(String),
}

/// The retry state a parked message carries (flattened into the message; every field optional,
/// so messages parked before it existed still read).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryState {
    /// Failed redrives so far.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    /// When the work was first parked (epoch ms); the age limit counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_parked_at_ms: Option<u64>,
    /// Not to be tried before this time (epoch ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    /// The redrive run that sent this copy (a run never takes up its own copies again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<String>,
    /// When it was put on the dead-letter queue, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_lettered_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_reason: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl RetryState {
    /// A fresh state for work parked now.
    pub fn parked_at(now_ms: u64) -> Self {
        Self {
            first_parked_at_ms: Some(now_ms),
            ..Self::default()
        }
    }

    /// How long the message must still wait (`None` when it is due).
    pub fn wait(&self, now_ms: u64) -> Option<Duration> {
        self.not_before_ms
            .filter(|t| *t > now_ms + 1_000)
            .map(|t| Duration::from_millis(t - now_ms))
    }

    /// The state of a copy put on the dead-letter queue.
    pub fn dead_lettered(&self, now_ms: u64, reason: &str) -> Self {
        Self {
            dead_lettered_at_ms: Some(now_ms),
            dead_letter_reason: Some(reason.to_string()),
            not_before_ms: None,
            last_run: None,
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let p = ParkedRetry::default();
        let secs: Vec<u64> = (1..=8).map(|a| p.delay(a).as_secs()).collect();
        assert_eq!(secs, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(p.delay(1_000), Duration::from_secs(3_600));
    }

    #[test]
    fn a_failure_waits_longer_each_time_and_gives_up_after_the_age_limit() {
        let p = ParkedRetry::default();
        let t0 = 1_000_000_000;
        let s0 = RetryState::parked_at(t0);
        let Next::Later { delay, state } = p.after_failure(&s0, t0 + 5_000, "run-1") else {
            panic!("a young message waits")
        };
        assert_eq!(delay, Duration::from_secs(60));
        assert_eq!(state.attempts, 1);
        assert_eq!(state.first_parked_at_ms, Some(t0));
        assert_eq!(state.not_before_ms, Some(t0 + 65_000));
        assert_eq!(state.last_run.as_deref(), Some("run-1"));
        // Received early (SQS delays at most 15 min): the rest of the wait.
        assert_eq!(state.wait(t0 + 35_000), Some(Duration::from_secs(30)));
        assert_eq!(state.wait(t0 + 65_000), None);
        let Next::Later { delay, .. } = p.after_failure(&state, t0 + 70_000, "run-2") else {
            panic!()
        };
        assert_eq!(delay, Duration::from_secs(120));
        let old = t0 + 4 * 86_400_000;
        assert!(
            matches!(p.after_failure(&state, old, "r"), Next::DeadLetter(m) if m.contains("96 hours"))
        );
    }

    #[test]
    fn messages_without_a_state_still_read() {
        #[derive(Deserialize)]
        struct Msg {
            #[serde(flatten)]
            retry: RetryState,
        }
        let m: Msg = serde_json::from_str(r#"{"v":1}"#).unwrap();
        assert_eq!(m.retry, RetryState::default());
        let s = serde_json::to_value(RetryState::parked_at(5)).unwrap();
        assert_eq!(s, serde_json::json!({"firstParkedAtMs": 5}));
    }
}
