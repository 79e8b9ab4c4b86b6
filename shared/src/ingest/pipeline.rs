//! One request's events: in-request dedupe, claims, delivery, waiting on other holders, parking.

use super::claim::CLAIMS_OUT_OF_TIME;
use super::report::{already_parked, done, err, totals};
use super::send::SendStats;
use super::{EventResult, IngestCtx, IngestReport, Status};
use crate::domain::conversion;
use crate::domain::conversion::{Arena, Prepared, Reason};
use crate::runtime::Invocation;
use crate::store::StoreError;
use crate::store::accounts::IntegratedAccount;
use crate::store::dedupe::{Claim, ClaimOutcome, DedupeKey};
use std::collections::HashMap;
use std::time::Instant;

/// One event on its way out.
#[derive(Debug)]
pub(super) struct Work {
    pub(super) index: usize,
    pub(super) key: Option<DedupeKey>,
    pub(super) fingerprint: String,
    pub(super) claim: Option<Claim>,
}

pub(super) fn fingerprint(event: &[u8]) -> String {
    let h = conversion::matchkey::sha256_hex(event);
    String::from_utf8_lossy(&h[..32]).into_owned()
}

impl IngestCtx {
    /// Deduplicates and delivers (or parks) the events of one request, prepared into `arena`
    /// ([`conversion::prepare_body`]).
    pub async fn ingest(
        &self,
        account: &IntegratedAccount,
        arena: &Arena,
        outcomes: Vec<conversion::Outcome>,
        inv: &Invocation,
    ) -> IngestReport {
        let started = Instant::now();
        let (mut results, prepared) = split_outcomes(outcomes);

        // Copies of an id inside this request: one goes on (see `dedupe_in_request`).
        let (with_id, without_id) = dedupe_in_request(account, arena, &prepared, &mut results);

        // Waves of one Amazon batch each: claims, delivery, completions, several in flight.
        let mut work = with_id;
        work.extend(without_id);
        work.sort_by_key(|w| w.index);
        let flowed = self.flow(account, arena, &prepared, work, inv).await;
        let (mut to_park, waiting, mut stats) = (flowed.to_park, flowed.waiting, flowed.stats);
        for r in flowed.results {
            let i = r.index;
            results[i] = Some(r);
        }

        // Claims held by other live requests: wait for them to settle.
        if !waiting.is_empty() {
            let ready = self
                .await_holders(waiting, inv, &mut results, &mut to_park)
                .await;
            let settled = self
                .send(account, ready, arena, &prepared, inv, &mut stats)
                .await;
            let (settled, parked) = self.settle(settled).await;
            to_park.extend(parked);
            for r in settled {
                let i = r.index;
                results[i] = Some(r);
            }
        }

        if stats.reauthorization_required {
            self.mark_reauthorization(account).await;
        }

        // Parking.
        if !to_park.is_empty() {
            let items: Vec<(Work, String, &[u8])> = to_park
                .into_iter()
                .filter_map(|(w, reason)| {
                    let p = prepared[w.index].as_ref()?;
                    Some((w, reason, arena.event(p)))
                })
                .collect();
            for (index, result) in self.park(account, items, inv).await {
                results[index] = Some(result);
            }
        }
        self.report(account, fill_unprocessed(results), &stats, started)
    }

    /// Waits for the claims other live requests hold ([`IngestCtx::wait_for_holders`]): what
    /// they completed is a duplicate, what they parked is parked, what they still hold is parked
    /// here; returns the claims we got, to be sent.
    async fn await_holders(
        &self,
        waiting: Vec<Work>,
        inv: &Invocation,
        results: &mut [Option<EventResult>],
        to_park: &mut Vec<(Work, String)>,
    ) -> Vec<Work> {
        let (ready, dups, parked_elsewhere, timed_out) = self.wait_for_holders(waiting, inv).await;
        for w in dups {
            results[w.index] = Some(done(w.index, Status::Duplicate));
        }
        for w in parked_elsewhere {
            results[w.index] = Some(already_parked(w.index));
        }
        for w in timed_out {
            to_park.push((
                w,
                "another request was still sending this clientDedupeId; parked for the redrive"
                    .into(),
            ));
        }
        ready
    }

    /// The answer: totals, metrics and the log line of the request.
    fn report(
        &self,
        account: &IntegratedAccount,
        results: Vec<EventResult>,
        stats: &SendStats,
        started: Instant,
    ) -> IngestReport {
        let totals = totals(&results);
        self.emit_metrics(&results, &totals, stats);
        tracing::info!(
            account_id = %account.account_id,
            received = totals.received,
            accepted = totals.accepted,
            duplicate = totals.duplicate,
            rejected = totals.rejected,
            parked = totals.parked,
            ms = started.elapsed().as_millis() as u64,
            "conversions ingested"
        );
        IngestReport {
            account_id: account.account_id.clone(),
            totals,
            results,
        }
    }
}

/// One result slot per event (filled for the events the domain rejected) and the prepared events.
fn split_outcomes(
    outcomes: Vec<conversion::Outcome>,
) -> (Vec<Option<EventResult>>, Vec<Option<Prepared>>) {
    let n = outcomes.len();
    let mut results: Vec<Option<EventResult>> = vec![None; n];
    let mut prepared: Vec<Option<Prepared>> = Vec::with_capacity(n);
    for (i, (slot, outcome)) in results.iter_mut().zip(outcomes).enumerate() {
        match outcome {
            Ok(p) => prepared.push(Some(p)),
            Err(errors) => {
                prepared.push(None);
                *slot = Some(EventResult {
                    index: i,
                    status: Status::Rejected,
                    errors,
                });
            }
        }
    }
    (results, prepared)
}

/// Sorts the first claims: ours go to `to_send`, settled ones get their result, failed ones go to
/// `to_park`; returns the claims held by other live requests.
pub(super) fn sort_claims(
    claimed: Vec<(Work, Result<ClaimOutcome, StoreError>)>,
    results: &mut Vec<EventResult>,
    to_send: &mut Vec<Work>,
    to_park: &mut Vec<(Work, String)>,
) -> Vec<Work> {
    let mut waiting = Vec::new();
    for (mut w, outcome) in claimed {
        match outcome {
            Ok(ClaimOutcome::Claimed(c)) => {
                w.claim = Some(c);
                to_send.push(w);
            }
            Ok(ClaimOutcome::Completed { .. }) => results.push(done(w.index, Status::Duplicate)),
            Ok(ClaimOutcome::Parked) => results.push(already_parked(w.index)),
            Ok(ClaimOutcome::Held { .. }) => waiting.push(w),
            Err(StoreError::Conflict(m)) if m == CLAIMS_OUT_OF_TIME => {
                to_park.push((w, CLAIMS_OUT_OF_TIME.into()));
            }
            Err(e) => {
                tracing::error!(error = %e, "dedupe claim failed; parking the event");
                to_park.push((w, "the dedupe store was unavailable".into()));
            }
        }
    }
    waiting
}

/// Every event left without a result (none should be) is answered "send it again".
fn fill_unprocessed(results: Vec<Option<EventResult>>) -> Vec<EventResult> {
    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.unwrap_or_else(|| EventResult {
                index: i,
                status: Status::Rejected,
                errors: vec![err(
                    "",
                    Reason::Unavailable,
                    "the event was not processed; send it again",
                )],
            })
        })
        .collect()
}

/// Splits a request's valid events into those with a caller's id (to be claimed) and those
/// without (generated ids included). Copies of one id inside the request settle here, without a
/// claim, the way Amazon would: the same content again is a `duplicate`; different content later
/// in the request replaces the earlier copy (latest wins), which is answered `duplicate` with a
/// note naming the copy that was sent instead.
pub(super) fn dedupe_in_request(
    account: &IntegratedAccount,
    arena: &Arena,
    prepared: &[Option<Prepared>],
    results: &mut [Option<EventResult>],
) -> (Vec<Work>, Vec<Work>) {
    let mut slot_of: HashMap<&str, usize> = HashMap::new();
    let mut with_id: Vec<Work> = Vec::new();
    let mut without_id = Vec::new();
    for (i, p) in prepared.iter().enumerate() {
        let Some(p) = p else { continue };
        let id = arena.id(p).filter(|_| !p.generated_id);
        let Some(id) = id else {
            without_id.push(Work {
                index: i,
                key: None,
                fingerprint: String::new(),
                claim: None,
            });
            continue;
        };
        let work = Work {
            index: i,
            key: Some(DedupeKey::client(account.advertiser_id, id)),
            fingerprint: fingerprint(arena.event(p)),
            claim: None,
        };
        match slot_of.get(id) {
            None => {
                slot_of.insert(id, with_id.len());
                with_id.push(work);
            }
            Some(&slot) if with_id[slot].fingerprint == work.fingerprint => {
                results[i] = Some(done(i, Status::Duplicate));
            }
            Some(&slot) => {
                let older = std::mem::replace(&mut with_id[slot], work).index;
                results[older] = Some(EventResult {
                    index: older,
                    status: Status::Duplicate,
                    errors: vec![err(
                        "clientDedupeId",
                        Reason::Invalid,
                        format!(
                            "superseded by event {i} of this request (same clientDedupeId, other content); only the latest content is sent"
                        ),
                    )],
                });
            }
        }
    }
    (with_id, without_id)
}
