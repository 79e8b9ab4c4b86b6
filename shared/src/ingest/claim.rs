//! Dedupe claims (`store::dedupe`), taken with the fingerprint of the event's content.
//! Remembered with the same fingerprint: completed → `duplicate`, parked → `parked`; with another
//! fingerprint: a correction, claimed and sent like a new event. Held by a live request → wait
//! for it (poll with backoff, bounded by the deadline): it completes → `duplicate`, it releases →
//! we claim and send, time runs out → `parked`. After delivery: accepted → claim completed,
//! rejected by Amazon → claim released (a corrected resend may go through). Claims and
//! completions go to the store in batches (`DedupeStore::claim_many`, `complete_many`).

use super::pipeline::Work;
use super::report::done;
use super::send::Delivery;
use super::{EventResult, IngestCtx, Status};
use crate::runtime::Invocation;
use crate::store::StoreError;
use crate::store::dedupe::{CLAIMS_PER_CALL, Claim, ClaimOutcome, ClaimRequest};
use futures::StreamExt;
use std::time::{Duration, Instant};

/// Claim transactions in flight per request (`claim_initial`). DynamoDB Local serialises
/// transactions: 100-item transactions ran at ~1 500 claims/s two at a time, ~1 150/s four at a
/// time, ~550/s eight at a time (measured 2026-12-05 on the 2-core dev box); two of AWS's ~30 ms
/// transactions already claim ~6 000 ids/s.
const CLAIM_CALLS: usize = 2;

/// Why an event was parked without a claim: the request's time budget.
pub(super) const CLAIMS_OUT_OF_TIME: &str =
    "the request's time budget ran out before this event was taken";

impl IngestCtx {
    /// Settles delivered events: accepted claims are completed (together, `complete_many`),
    /// rejected ones released; returns their results and what is left to park, with its reason.
    pub(super) async fn settle(
        &self,
        settled: Vec<(Work, Delivery)>,
    ) -> (Vec<EventResult>, Vec<(Work, String)>) {
        let (mut results, mut to_park) = (Vec::new(), Vec::new());
        let (mut accepted, mut released) = (Vec::new(), Vec::new());
        for (w, d) in settled {
            match d {
                Delivery::Accepted => {
                    accepted.extend(w.claim);
                    results.push(done(w.index, Status::Accepted));
                }
                Delivery::Rejected(errors) => {
                    released.extend(w.claim);
                    results.push(EventResult {
                        index: w.index,
                        status: Status::Rejected,
                        errors,
                    });
                }
                Delivery::Park(reason) => to_park.push((w, reason)),
            }
        }
        let accepted: Vec<&Claim> = accepted.iter().collect();
        let calls = self.store_calls_per_wave();
        let completing = self.dedupe.complete_many(&accepted, calls);
        let mut releases = Vec::with_capacity(released.len());
        for c in &released {
            releases.push(self.dedupe.release(c));
        }
        let releasing = futures::stream::iter(releases)
            .buffer_unordered(calls)
            .collect::<Vec<_>>();
        let (completed, released) = futures::join!(completing, releasing);
        for r in completed {
            self.finish(r, "complete");
        }
        for r in released {
            self.finish(r, "release");
        }
        (results, to_park)
    }

    pub(super) fn finish(&self, r: Result<bool, StoreError>, what: &str) {
        match r {
            Ok(true) => {}
            Ok(false) => tracing::warn!(what, "dedupe claim was lost before it could be settled"),
            Err(e) => tracing::error!(what, error = %e, "dedupe store update failed"),
        }
    }

    /// Dedupe-store calls in flight for one wave ([`super::IngestSettings::claim_concurrency`] shared
    /// by the waves in flight).
    pub(super) fn store_calls_per_wave(&self) -> usize {
        let s = &self.settings;
        s.claim_concurrency
            .div_ceil(s.send_concurrency.max(1))
            .max(1)
    }

    /// Claims `work` (every item has a key), batched (`DedupeStore::claim_many`).
    pub(super) async fn claim_all(
        &self,
        work: Vec<Work>,
        inv: &Invocation,
    ) -> Vec<(Work, Result<ClaimOutcome, StoreError>)> {
        let reqs: Vec<ClaimRequest> = work
            .iter()
            .map(|w| ClaimRequest {
                key: w.key.as_ref().expect("claimed work has a key"),
                fingerprint: &w.fingerprint,
            })
            .collect();
        let answers = self
            .dedupe
            .claim_many(
                &reqs,
                inv.deadline_ms,
                &inv.request_id,
                self.store_calls_per_wave(),
            )
            .await;
        work.into_iter().zip(answers).collect()
    }

    /// A wave's first claims, a transaction's worth (`CLAIMS_PER_CALL`) at a time, [`CLAIM_CALLS`]
    /// in flight, each started only in the first third of the request's Amazon window
    /// (`crate::budget`; completions and parking come after the send): events not claimed by
    /// then are parked without a claim, and the redrive claims them.
    pub(super) async fn claim_initial(
        &self,
        work: Vec<Work>,
        inv: &Invocation,
    ) -> Vec<(Work, Result<ClaimOutcome, StoreError>)> {
        let until = crate::budget::share_of_window(1.0 / 3.0);
        let mut groups = Vec::new();
        let mut rest = work.into_iter().peekable();
        while rest.peek().is_some() {
            let group: Vec<Work> = rest.by_ref().take(CLAIMS_PER_CALL).collect();
            groups.push(async move {
                if until.is_some_and(|u| Instant::now() >= u) {
                    let late = || Err(StoreError::Conflict(CLAIMS_OUT_OF_TIME.into()));
                    return group.into_iter().map(|w| (w, late())).collect();
                }
                self.claim_all(group, inv).await
            });
        }
        let claimed: Vec<Vec<_>> = futures::stream::iter(groups)
            .buffered(CLAIM_CALLS)
            .collect()
            .await;
        claimed.into_iter().flatten().collect()
    }

    /// Polls claims held by other live requests with backoff until they settle or time runs out.
    /// Returns (claimed by us, duplicates, parked by the holder, still held).
    pub(super) async fn wait_for_holders(
        &self,
        mut waiting: Vec<Work>,
        inv: &Invocation,
    ) -> (Vec<Work>, Vec<Work>, Vec<Work>, Vec<Work>) {
        let (mut ready, mut dups, mut parked) = (Vec::new(), Vec::new(), Vec::new());
        let give_up = Instant::now()
            + self.settings.max_wait.min(
                inv.remaining()
                    .saturating_sub(self.settings.deadline_margin * 2),
            );
        let mut delay = Duration::from_millis(100);
        while !waiting.is_empty() && Instant::now() + delay < give_up {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
            let polled = self.claim_all(std::mem::take(&mut waiting), inv).await;
            for (mut w, r) in polled {
                match r {
                    Ok(ClaimOutcome::Claimed(c)) => {
                        w.claim = Some(c);
                        ready.push(w);
                    }
                    Ok(ClaimOutcome::Completed { .. }) => dups.push(w),
                    Ok(ClaimOutcome::Parked) => parked.push(w),
                    Ok(ClaimOutcome::Held { .. }) | Err(_) => waiting.push(w),
                }
            }
        }
        (ready, dups, parked, waiting)
    }
}
