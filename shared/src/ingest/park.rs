//! Parking: one SQS message per ≤ 500 events (normalised, hashed outbound JSON only: no raw
//! personal data); then the claim is kept as `PARKED` (events without an id get a park id), so a
//! webhook retry is answered `parked`, never sent twice. If the message cannot be written the
//! claims are released and the events answered "send it again".

use super::pipeline::{Work, fingerprint};
use super::report::{err, rejected_unavailable};
use super::{EventResult, IngestCtx, Status};
use crate::domain::conversion::Reason;
use crate::runtime::{Invocation, now_ms};
use crate::store::StoreError;
use crate::store::accounts::IntegratedAccount;
use crate::store::dedupe::{Claim, DedupeKey, TakeOutcome};
use crate::store::parked_counts::{Counter, ParkedCounts};
use crate::store::parked_retry::RetryState;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// One SQS message of parked conversions (all for one account).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParkedBatch {
    pub v: u32,
    pub account_id: String,
    pub advertiser_id: i64,
    pub events: Vec<ParkedEvent>,
    /// Redrive attempts, age and delay (`store::parked_retry`).
    #[serde(default)]
    pub retry: RetryState,
}

/// One parked event: its dedupe key and the outbound (normalised, hashed) JSON.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParkedEvent {
    pub key: DedupeKey,
    pub park_id: String,
    pub fingerprint: String,
    pub reason: String,
    pub parked_at_ms: u64,
    pub event: Box<RawValue>,
}

impl IngestCtx {
    pub(super) async fn record_parked(
        &self,
        claim: Option<&Claim>,
        pe: &ParkedEvent,
        request_id: &str,
    ) {
        match claim {
            Some(c) => self.finish(self.dedupe.mark_parked(c, &pe.park_id).await, "mark parked"),
            None if !pe.key.client => {
                if let Err(e) = self
                    .dedupe
                    .put_parked(&pe.key, &pe.fingerprint, &pe.park_id, request_id)
                    .await
                {
                    tracing::error!(error = %e, "could not record the park id");
                }
            }
            // Parked without a claim (out of time, held by another request, a store error):
            // nothing is written; the redrive takes the id by the copy's `parkedAtMs`.
            None => {}
        }
    }

    pub(super) async fn take_one(
        &self,
        i: usize,
        pe: &ParkedEvent,
        inv: &Invocation,
    ) -> (usize, Result<TakeOutcome, StoreError>) {
        let r = self
            .dedupe
            .take_parked(
                &pe.key,
                &pe.fingerprint,
                pe.parked_at_ms,
                inv.deadline_ms,
                &inv.request_id,
            )
            .await;
        (i, r)
    }

    pub(super) async fn mark_reauthorization(&self, account: &IntegratedAccount) {
        match self
            .accounts
            .mark_reauthorization_required(&account.token_secret)
            .await
        {
            Ok(n) => {
                tracing::warn!(account_id = %account.account_id, accounts = n, "login needs reauthorization; accounts marked")
            }
            Err(e) => {
                tracing::error!(error = %e, "could not mark the accounts reauthorization_required")
            }
        }
    }

    /// Parks events durably; returns the result of each (by input index).
    pub(super) async fn park(
        &self,
        account: &IntegratedAccount,
        items: Vec<(Work, String, &[u8])>,
        inv: &Invocation,
    ) -> Vec<(usize, EventResult)> {
        let mut out = Vec::with_capacity(items.len());
        let now = now_ms();
        let groups = self.park_groups(account, items, now, &mut out);
        for group in groups {
            self.park_group(account, group, now, inv, &mut out).await;
        }
        out
    }

    /// The parked copies of `items`, grouped into messages of at most `batch_size` events and
    /// `park_message_bytes`; an event that is not JSON text is answered at once in `out`.
    fn park_groups(
        &self,
        account: &IntegratedAccount,
        items: Vec<(Work, String, &[u8])>,
        now: u64,
        out: &mut Vec<(usize, EventResult)>,
    ) -> Vec<ParkGroup> {
        let mut groups: Vec<ParkGroup> = Vec::new();
        let mut cur = Vec::new();
        let mut cur_bytes = 0;
        for (w, reason, bytes) in items {
            let park_id = uuid::Uuid::new_v4().simple().to_string();
            let key = w
                .key
                .clone()
                .unwrap_or_else(|| DedupeKey::park(account.advertiser_id, &park_id));
            let fp = if w.fingerprint.is_empty() {
                fingerprint(bytes)
            } else {
                w.fingerprint.clone()
            };
            let raw = std::str::from_utf8(bytes)
                .ok()
                .and_then(|s| RawValue::from_string(s.to_string()).ok());
            let Some(event) = raw else {
                out.push((w.index, rejected_unavailable(w.index)));
                continue;
            };
            let size = bytes.len() + reason.len() + 256;
            if !cur.is_empty()
                && (cur.len() == self.settings.batch_size
                    || cur_bytes + size > self.settings.park_message_bytes)
            {
                groups.push(std::mem::take(&mut cur));
                cur_bytes = 0;
            }
            cur_bytes += size;
            let pe = ParkedEvent {
                key,
                park_id,
                fingerprint: fp,
                reason: reason.clone(),
                parked_at_ms: now,
                event,
            };
            cur.push((w, reason, pe));
        }
        if !cur.is_empty() {
            groups.push(cur);
        }
        groups
    }

    /// One message on the parked queue; its claims are kept as `PARKED` (or released if the
    /// message could not be written, and the events answered "send it again").
    async fn park_group(
        &self,
        account: &IntegratedAccount,
        group: ParkGroup,
        now: u64,
        inv: &Invocation,
        out: &mut Vec<(usize, EventResult)>,
    ) {
        let (works, parked): (Vec<(Work, String)>, Vec<ParkedEvent>) =
            group.into_iter().map(|(w, r, p)| ((w, r), p)).unzip();
        let msg = ParkedBatch {
            v: 1,
            account_id: account.account_id.clone(),
            advertiser_id: account.advertiser_id,
            events: parked,
            retry: RetryState::parked_at(now),
        };
        if let Err(e) = self.parked.park(&msg).await {
            tracing::error!(error = %e, events = works.len(), "parking failed; the caller must resend");
            for (w, _) in works {
                if let Some(c) = &w.claim {
                    self.finish(self.dedupe.release(c).await, "release");
                }
                out.push((w.index, rejected_unavailable(w.index)));
            }
            return;
        }
        ParkedCounts::new(&self.accounts)
            .add_logged(
                &account.account_id,
                &[(Counter::Conversions, msg.events.len() as i64)],
            )
            .await;
        // Futures built in a loop, not a closure over references: keeps the
        // handler future `Send` (rustc's higher-ranked closure limitation).
        let mut futs = Vec::with_capacity(works.len());
        for ((w, _), pe) in works.iter().zip(&msg.events) {
            futs.push(self.record_parked(w.claim.as_ref(), pe, &inv.request_id));
        }
        let marks = futures::stream::iter(futs)
            .buffer_unordered(self.settings.claim_concurrency)
            .collect::<Vec<_>>();
        marks.await;
        for (w, reason) in works {
            out.push((
                w.index,
                EventResult {
                    index: w.index,
                    status: Status::Parked,
                    errors: vec![err(
                        "",
                        Reason::Unavailable,
                        format!("{reason}; the event is parked and will be redriven"),
                    )],
                },
            ));
        }
    }
}

/// The events of one parked message, with their work and reason.
type ParkGroup = Vec<(Work, String, ParkedEvent)>;
