//! Dedupe claims (`store::dedupe`), taken with the fingerprint of the event's content.
//! Remembered with the same fingerprint: completed → `duplicate`, parked → `parked`; with another
//! fingerprint: a correction, claimed and sent like a new event. Held by a live request → wait
//! for it (poll with backoff, bounded by the deadline): it completes → `duplicate`, it releases →
//! we claim and send, time runs out → `parked`. After delivery: accepted → claim completed,
//! rejected by Amazon → claim released (a corrected resend may go through).

use super::pipeline::Work;
use super::report::done;
use super::send::Delivery;
use super::{EventResult, IngestCtx, Status};
use crate::runtime::Invocation;
use crate::store::StoreError;
use crate::store::dedupe::ClaimOutcome;
use futures::StreamExt;
use std::time::{Duration, Instant};

/// Why an event was parked without a claim: the request's time budget.
pub(super) const CLAIMS_OUT_OF_TIME: &str =
    "the request's time budget ran out before this event was taken";

impl IngestCtx {
    /// Completes (accepted) or releases (rejected) the claims of delivered events and records
    /// their results; what is left to park goes to `to_park` with its reason.
    pub(super) async fn settle(
        &self,
        settled: Vec<(Work, Delivery)>,
        results: &mut [Option<EventResult>],
        to_park: &mut Vec<(Work, String)>,
    ) {
        let mut futs = Vec::with_capacity(settled.len());
        for (w, d) in settled {
            futs.push(self.settle_one(w, d));
        }
        let done: Vec<_> = futures::stream::iter(futs)
            .buffer_unordered(self.settings.claim_concurrency)
            .collect()
            .await;
        for (w, r) in done {
            match r {
                Ok(res) => results[w.index] = Some(res),
                Err(reason) => to_park.push((w, reason)),
            }
        }
    }

    pub(super) async fn settle_one(
        &self,
        w: Work,
        d: Delivery,
    ) -> (Work, Result<EventResult, String>) {
        match d {
            Delivery::Accepted => {
                if let Some(c) = &w.claim {
                    self.finish(self.dedupe.complete(c).await, "complete");
                }
                let index = w.index;
                (w, Ok(done(index, Status::Accepted)))
            }
            Delivery::Rejected(errors) => {
                if let Some(c) = &w.claim {
                    self.finish(self.dedupe.release(c).await, "release");
                }
                let index = w.index;
                (
                    w,
                    Ok(EventResult {
                        index,
                        status: Status::Rejected,
                        errors,
                    }),
                )
            }
            Delivery::Park(reason) => (w, Err(reason)),
        }
    }

    pub(super) fn finish(&self, r: Result<bool, StoreError>, what: &str) {
        match r {
            Ok(true) => {}
            Ok(false) => tracing::warn!(what, "dedupe claim was lost before it could be settled"),
            Err(e) => tracing::error!(what, error = %e, "dedupe store update failed"),
        }
    }

    pub(super) async fn claim_all(
        &self,
        work: Vec<Work>,
        inv: &Invocation,
    ) -> Vec<(Work, Result<ClaimOutcome, StoreError>)> {
        futures::stream::iter(work.into_iter().map(|w| async move {
            let key = w.key.as_ref().expect("claimed work has a key");
            let r = self
                .dedupe
                .claim(key, &w.fingerprint, inv.deadline_ms, &inv.request_id)
                .await;
            (w, r)
        }))
        .buffer_unordered(self.settings.claim_concurrency)
        .collect()
        .await
    }

    /// The request's first claims, started only in the first third of its Amazon window
    /// (`crate::budget`; completions and parking come after the send): an event not claimed by
    /// then is parked without a claim, and the redrive claims it.
    pub(super) async fn claim_initial(
        &self,
        work: Vec<Work>,
        inv: &Invocation,
    ) -> Vec<(Work, Result<ClaimOutcome, StoreError>)> {
        let until = crate::budget::share_of_window(1.0 / 3.0);
        futures::stream::iter(work.into_iter().map(|w| async move {
            if until.is_some_and(|u| Instant::now() >= u) {
                return (w, Err(StoreError::Conflict(CLAIMS_OUT_OF_TIME.into())));
            }
            let key = w.key.as_ref().expect("claimed work has a key");
            let r = self
                .dedupe
                .claim(key, &w.fingerprint, inv.deadline_ms, &inv.request_id)
                .await;
            (w, r)
        }))
        .buffer_unordered(self.settings.claim_concurrency)
        .collect()
        .await
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
