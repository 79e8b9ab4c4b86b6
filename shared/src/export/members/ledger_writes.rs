//! The ledger writes of `POST /qualifications`, batched: the newest item per (segment, device)
//! goes to the ledger in `TransactWriteItems` calls of up to 100 conditional puts
//! (`LedgerStore::upsert_batch`: an older update never wins), each call followed by one
//! consistent `BatchGetItem` of its devices' erasure tombstones (write, then check: the same
//! order as `privacy::upsert_unless_erased`, which leaves no gap with an erasure that writes its
//! tombstone before it scans the ledger). A write an erasure covers is taken back and answered
//! `stale`. Older items of a key in the same request are answered `stale` when the newest was
//! stored (the ledger then holds a later update), with the newest's failure otherwise.

use super::request::Qualification;
use crate::export::ExportCtx;
use crate::export::erasure;
use crate::runtime::{Invocation, now_ms};
use crate::store::StoreError;
use crate::store::erasures::device_hash;
use crate::store::ledger::batch::MAX_TRANSACT_ROWS;
use crate::store::ledger::{LedgerRow, Upsert};
use futures::StreamExt;
use futures::channel::mpsc::UnboundedSender;
use std::collections::HashMap;
use std::time::Duration;

pub(super) const OUT_OF_TIME: &str = "not stored: the request's time budget ran out";
/// `TransactWriteItems` calls of one request in flight (ordered: waves complete in turn).
const TRANSACT_CONCURRENCY: usize = 8;
/// Keys per wave handed to delivery: one full Amazon body (2 000 patches).
const WAVE_KEYS: usize = 2_000;

/// One outcome per valid item (by its position in `valid`).
pub(super) type Outcomes = Vec<Result<Upsert, StoreError>>;

/// Writes the valid items under the request budget: no call starts in the last 10 s (a third of
/// a shorter invocation); items not stored then are answered as failed with [`OUT_OF_TIME`].
/// The keys go in waves of about [`WAVE_KEYS`] (a device's segments in one wave); as soon as a
/// wave is written and checked, its applied rows are handed to `waves` (for delivery, which
/// then overlaps the next waves' writes).
pub(super) async fn write_all(
    ctx: &ExportCtx,
    inv: &Invocation,
    valid: &[(usize, Qualification)],
    waves: UnboundedSender<Vec<LedgerRow>>,
) -> Outcomes {
    let keep = Duration::from_secs(10).min(inv.remaining() / 3);
    let stop_writes_at = inv.deadline_ms.saturating_sub(keep.as_millis() as u64);
    let (newest, older_of) = newest_per_key(valid);
    let chunks = wave_chunks(valid, &newest);
    let mut written = futures::stream::iter(chunks)
        .map(|(wave, chunk)| async move {
            if now_ms() >= stop_writes_at {
                let late = || Err(StoreError::Conflict(OUT_OF_TIME.into()));
                return (wave, chunk.into_iter().map(|(v, _)| (v, late())).collect());
            }
            (wave, write_chunk(ctx, chunk).await)
        })
        .buffered(TRANSACT_CONCURRENCY);
    let mut out: Vec<Option<Result<Upsert, StoreError>>> = valid.iter().map(|_| None).collect();
    let (mut current, mut applied) = (0usize, Vec::new());
    while let Some((wave, res)) = written.next().await {
        if wave != current && !applied.is_empty() {
            let _ = waves.unbounded_send(std::mem::take(&mut applied));
        }
        current = wave;
        for (v, r) in res {
            if matches!(r, Ok(Upsert::Applied)) {
                applied.push(valid[v].1.row.clone());
            }
            for &o in older_of.get(&v).into_iter().flatten() {
                out[o] = Some(match &r {
                    Ok(_) => Ok(Upsert::Stale),
                    Err(e) => Err(e.again()),
                });
            }
            out[v] = Some(r);
        }
    }
    if !applied.is_empty() {
        let _ = waves.unbounded_send(applied);
    }
    out.into_iter()
        .map(|o| o.unwrap_or_else(|| Err(StoreError::Aws("ledger write not attempted".into()))))
        .collect()
}

/// The newest items cut into waves (≥ [`WAVE_KEYS`] keys, never splitting a device) and each
/// wave into chunks of ≤ 100 rows, in order: `(wave, [(valid index, row)])`.
fn wave_chunks(
    valid: &[(usize, Qualification)],
    newest: &[usize],
) -> Vec<(usize, Vec<(usize, LedgerRow)>)> {
    let mut waves: Vec<Vec<usize>> = vec![Vec::new()];
    for &v in newest {
        let last = waves.last_mut().expect("one wave");
        let same_device = last
            .last()
            .is_some_and(|&p| valid[p].1.row.device == valid[v].1.row.device);
        if last.len() >= WAVE_KEYS && !same_device {
            waves.push(vec![v]);
        } else {
            last.push(v);
        }
    }
    waves
        .iter()
        .enumerate()
        .flat_map(|(w, wave)| {
            wave.chunks(MAX_TRANSACT_ROWS)
                .map(move |c| (w, c.iter().map(|&v| (v, valid[v].1.row.clone())).collect()))
        })
        .collect()
}

/// The newest item per (segment, device) (the first in the request on a tie), sorted by device
/// so that a device's segments share a chunk and its tombstone read; and per newest item, the
/// other items of its key.
fn newest_per_key(valid: &[(usize, Qualification)]) -> (Vec<usize>, HashMap<usize, Vec<usize>>) {
    let mut best: HashMap<(&str, &str), usize> = HashMap::new();
    for (v, (_, q)) in valid.iter().enumerate() {
        let k = (q.row.segment_id.as_str(), q.row.device.as_str());
        match best.get(&k) {
            Some(&b) if valid[b].1.row.ts_ms >= q.row.ts_ms => {}
            _ => {
                best.insert(k, v);
            }
        }
    }
    let mut older_of: HashMap<usize, Vec<usize>> = HashMap::new();
    for (v, (_, q)) in valid.iter().enumerate() {
        let b = best[&(q.row.segment_id.as_str(), q.row.device.as_str())];
        if b != v {
            older_of.entry(b).or_default().push(v);
        }
    }
    let mut newest: Vec<usize> = best.into_values().collect();
    newest.sort_by(|&a, &b| {
        let (ra, rb) = (&valid[a].1.row, &valid[b].1.row);
        (&ra.device, &ra.segment_id).cmp(&(&rb.device, &rb.segment_id))
    });
    (newest, older_of)
}

/// One chunk: the conditional writes, then the erasure check of what was applied.
async fn write_chunk(
    ctx: &ExportCtx,
    chunk: Vec<(usize, LedgerRow)>,
) -> Vec<(usize, Result<Upsert, StoreError>)> {
    let rows: Vec<LedgerRow> = chunk.iter().map(|(_, r)| r.clone()).collect();
    let mut res = ctx.ledger.upsert_batch(&rows).await;
    let applied: Vec<usize> = (0..rows.len())
        .filter(|&i| matches!(res[i], Ok(Upsert::Applied)))
        .collect();
    if !applied.is_empty() {
        let hashes: Vec<String> = applied
            .iter()
            .map(|&i| device_hash(&rows[i].device))
            .collect();
        match ctx.ledger.tombstones(&hashes).await {
            Ok(tombs) => {
                for (&i, hash) in applied.iter().zip(&hashes) {
                    if let Some((erased_at, deletion_id)) = tombs.get(hash)
                        && *erased_at >= rows[i].ts_ms
                    {
                        res[i] = take_back(ctx, &rows[i], hash, deletion_id).await;
                    }
                }
            }
            Err(e) => {
                for &i in &applied {
                    res[i] = Err(e.again());
                }
            }
        }
    }
    chunk.into_iter().map(|(v, _)| v).zip(res).collect()
}

/// A write an erasure covers: recorded as found for the erasure first (it may have replaced a
/// row the erasure's scan has not reached yet), then deleted if still ours; answered `stale`.
async fn take_back(
    ctx: &ExportCtx,
    row: &LedgerRow,
    hash: &str,
    deletion_id: &str,
) -> Result<Upsert, StoreError> {
    let st = erasure::store(ctx);
    if !deletion_id.is_empty() {
        st.put_found(deletion_id, &[(row.segment_id.clone(), hash.to_string())])
            .await?;
    }
    st.delete_ledger_row(&row.segment_id, &row.device, "ts = :t", row.ts_ms)
        .await?;
    Ok(Upsert::Stale)
}
