//! A request's events in waves of one Amazon batch (`batch_size`, 500), as a pipeline: the
//! waves' claims (`DedupeStore::claim_many`: a few transactions) one wave after another, and
//! behind them the deliveries and completions (`complete_many`) of up to `send_concurrency`
//! waves, so the claims of one wave overlap the Amazon call and the completions of the others. A 500-event request is one wave: one Amazon call, as
//! before. Claims held by other live requests come back as `waiting`, handled after every wave
//! has settled its own claims (two requests holding some of each other's ids never wait on each
//! other).

use super::pipeline::{Work, sort_claims};
use super::send::SendStats;
use super::{EventResult, IngestCtx};
use crate::domain::conversion::{Arena, Prepared};
use crate::runtime::Invocation;
use crate::store::accounts::IntegratedAccount;
use futures::StreamExt;

/// What the waves did: results, what to park (with its reason), claims held elsewhere.
#[derive(Debug, Default)]
pub(super) struct Flowed {
    pub(super) results: Vec<EventResult>,
    pub(super) to_park: Vec<(Work, String)>,
    pub(super) waiting: Vec<Work>,
    pub(super) stats: SendStats,
}

impl Flowed {
    fn absorb(&mut self, other: Flowed) {
        self.results.extend(other.results);
        self.to_park.extend(other.to_park);
        self.waiting.extend(other.waiting);
        self.stats.latencies_ms.extend(other.stats.latencies_ms);
        self.stats.reauthorization_required |= other.stats.reauthorization_required;
    }
}

impl IngestCtx {
    /// Runs `work` (in input order; items with a key are claimed first) in waves.
    pub(super) async fn flow(
        &self,
        account: &IntegratedAccount,
        arena: &Arena,
        prepared: &[Option<Prepared>],
        work: Vec<Work>,
        inv: &Invocation,
    ) -> Flowed {
        let size = self.settings.batch_size.max(1);
        let mut waves: Vec<Vec<Work>> = Vec::with_capacity(work.len().div_ceil(size));
        let mut rest = work.into_iter().peekable();
        while rest.peek().is_some() {
            waves.push(rest.by_ref().take(size).collect());
        }
        // Claims one wave at a time (DynamoDB Local serialises transactions: more in flight
        // only slows them), deliveries and completions of up to `send_concurrency` waves behind.
        let outs: Vec<Flowed> = futures::stream::iter(waves)
            .map(|w| self.claim_wave(w, inv))
            .buffered(1)
            .map(|(out, to_send)| self.deliver_wave(account, arena, prepared, out, to_send, inv))
            .buffer_unordered(self.settings.send_concurrency.max(1))
            .collect()
            .await;
        let mut all = Flowed::default();
        for o in outs {
            all.absorb(o);
        }
        all
    }

    /// A wave's claims: what to send, and the results of the rest.
    async fn claim_wave(&self, work: Vec<Work>, inv: &Invocation) -> (Flowed, Vec<Work>) {
        let mut out = Flowed::default();
        let (keyed, mut to_send): (Vec<Work>, Vec<Work>) =
            work.into_iter().partition(|w| w.key.is_some());
        if !keyed.is_empty() {
            let claimed = self.claim_initial(keyed, inv).await;
            out.waiting = sort_claims(claimed, &mut out.results, &mut to_send, &mut out.to_park);
        }
        (out, to_send)
    }

    /// A wave's delivery and settlement.
    async fn deliver_wave(
        &self,
        account: &IntegratedAccount,
        arena: &Arena,
        prepared: &[Option<Prepared>],
        mut out: Flowed,
        to_send: Vec<Work>,
        inv: &Invocation,
    ) -> Flowed {
        let settled = self
            .send(account, to_send, arena, prepared, inv, &mut out.stats)
            .await;
        let (results, to_park) = self.settle(settled).await;
        out.results.extend(results);
        out.to_park.extend(to_park);
        out
    }
}
