//! Pacing of an invocation's backfill requests.

use std::time::Duration;

/// Spaces an invocation's backfill requests to its share of Amazon's PATCH budget.
pub(super) struct Pacer {
    pub(super) interval: Duration,
    pub(super) next: tokio::sync::Mutex<tokio::time::Instant>,
}

impl Pacer {
    pub(super) fn new(per_sec: f64) -> Self {
        Self {
            interval: Duration::from_secs_f64(1.0 / per_sec.max(0.1)),
            next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    pub(super) async fn wait(&self) {
        let at = {
            let mut next = self.next.lock().await;
            let at = (*next).max(tokio::time::Instant::now());
            *next = at + self.interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}
