//! Client-side request spacing, so adsync stays inside Amazon's published per-client rates
//! instead of provoking 429s (which the retry path still handles).
//!
//! A [`Spacer`] hands out start slots at least `interval` apart: with 1 s it is the Data Provider
//! metadata limit (1 request/s), with 10 ms the PATCH limit (100 requests/s, and never more than
//! 100 in any one-second window, which a bursty token bucket would allow). Limits are per process
//! and per LwA client id ([`spacer_for`]), matching Amazon's "per client" wording while letting
//! tests with their own LwA clients run in parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::time::Instant;

/// Start slots at least `interval` apart, first come first served.
#[derive(Debug)]
pub struct Spacer {
    interval: Duration,
    next: Mutex<Option<Instant>>,
}

impl Spacer {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            next: Mutex::new(None),
        }
    }

    /// Slots for `per_sec` requests a second (at most 10 s apart): an invocation's share of a
    /// budget shared across processes (backfills split Amazon's PATCH rate between them).
    pub fn per_second(per_sec: f64) -> Self {
        Self::new(Duration::from_secs_f64(1.0 / per_sec.max(0.1)))
    }

    /// Waits for this caller's slot. Reserving under the lock and sleeping outside it keeps
    /// concurrent callers in order without holding the lock across an await.
    pub async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let slot = match *next {
                Some(n) if n > now => n,
                _ => now,
            };
            *next = Some(slot + self.interval);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// Which limit a call is subject to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Limit {
    /// Data Provider audience metadata (create, get, update): 1 request/s.
    Metadata,
    /// `PATCH /v2/dp/audience` and `PATCH /v2/dp/users`: 100 requests/s together.
    Patch,
    /// `POST /dp/records/hashed/`: 10 requests/s.
    HashedRecords,
}

impl Limit {
    pub fn interval(self) -> Duration {
        match self {
            Limit::Metadata => Duration::from_secs(1),
            Limit::Patch => Duration::from_millis(10),
            Limit::HashedRecords => Duration::from_millis(100),
        }
    }
}

type Spacers = Mutex<HashMap<(String, Limit), Arc<Spacer>>>;

/// The process-wide spacer for one LwA client and limit.
pub fn spacer_for(client_id: &str, limit: Limit) -> Arc<Spacer> {
    static SPACERS: OnceLock<Spacers> = OnceLock::new();
    let mut map = SPACERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    map.entry((client_id.to_string(), limit))
        .or_insert_with(|| Arc::new(Spacer::new(limit.interval())))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn slots_are_spaced_by_the_interval() {
        let s = Arc::new(Spacer::new(Duration::from_secs(1)));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.wait().await;
                Instant::now()
            }));
        }
        let mut times = Vec::new();
        for t in tasks {
            times.push(t.await.unwrap() - start);
        }
        times.sort();
        assert_eq!(
            times,
            [
                Duration::ZERO,
                Duration::from_secs(1),
                Duration::from_secs(2)
            ]
        );
        // After a quiet period the next caller goes at once.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let before = Instant::now();
        s.wait().await;
        assert_eq!(Instant::now(), before);
    }

    #[test]
    fn spacers_are_shared_per_client_and_limit() {
        let a = spacer_for("client-a", Limit::Metadata);
        let b = spacer_for("client-a", Limit::Metadata);
        let c = spacer_for("client-a", Limit::Patch);
        let d = spacer_for("client-b", Limit::Metadata);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(!Arc::ptr_eq(&a, &d));
        assert_eq!(c.interval, Duration::from_millis(10));
    }

    #[test]
    fn a_share_per_second_becomes_an_interval() {
        assert_eq!(Spacer::per_second(50.0).interval, Duration::from_millis(20));
        assert_eq!(Spacer::per_second(0.0).interval, Duration::from_secs(10));
    }
}
