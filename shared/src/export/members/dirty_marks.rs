//! Dirty marks of deltas (rule 2 in `export::members`): while a mapping's backfill job is still
//! scanning, a delta's device is recorded in the job's dirty set after its ledger write and
//! before its send. `POST /qualifications` and the redrive of unrouted devices both mark.

use super::LEDGER_WRITE_CONCURRENCY;
use super::targets::TargetRef;
use crate::export::ExportCtx;
use crate::store::jobs::JobState;
use crate::store::ledger::LedgerRow;
use futures::StreamExt;
use std::collections::BTreeSet;

/// Until the job's drain begins, its scan may still send a stale state after ours: leave a mark
/// for the drain. An unknown job state marks anyway (a harmless extra resend).
pub(super) async fn needs_dirty_mark(ctx: &ExportCtx, t: &TargetRef) -> bool {
    match ctx.jobs.get_job(&t.destination_id, &t.segment_id).await {
        Ok(Some(j)) => j.state != JobState::Done && !j.draining,
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(error = %e, "job lookup failed");
            true
        }
    }
}

/// Marks the rows dirty in the jobs that need it; returns the rows whose mark failed.
pub(super) async fn mark_dirty(
    ctx: &ExportCtx,
    dirty_jobs: &[TargetRef],
    rows: &[LedgerRow],
) -> Vec<LedgerRow> {
    if dirty_jobs.is_empty() {
        return Vec::new();
    }
    let marks: Vec<(String, String, usize)> = dirty_jobs
        .iter()
        .flat_map(|t| {
            rows.iter()
                .enumerate()
                .filter(move |(_, r)| r.segment_id == t.segment_id)
                .map(move |(i, _)| (t.destination_id.clone(), t.segment_id.clone(), i))
        })
        .collect();
    let failed: Vec<usize> = futures::stream::iter(marks)
        .map(|(dest, seg, i)| async move {
            match ctx.jobs.mark_dirty(&dest, &seg, &rows[i].device).await {
                Ok(()) => None,
                Err(e) => {
                    tracing::error!(error = %e, "could not mark a device dirty");
                    Some(i)
                }
            }
        })
        .buffer_unordered(LEDGER_WRITE_CONCURRENCY)
        .filter_map(|x| async move { x })
        .collect()
        .await;
    // Without its dirty mark, a send could race the backfill's scan: park the device instead
    // (the redrive sends the ledger's state later, after the scan).
    let failed: BTreeSet<usize> = failed.into_iter().collect();
    failed.into_iter().map(|i| rows[i].clone()).collect()
}
