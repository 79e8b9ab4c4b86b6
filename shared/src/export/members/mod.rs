//! The membership side of segment export, one file per job: `qualifications` (the
//! `POST /qualifications` route, `request` its item validation, `ledger_writes` its batched
//! ledger writes) writes the ledger and sends live deltas; `delivery` sends patches to Amazon; `backfill` (with `shard`, `drain`, `progress`)
//! runs the historical jobs; `redrive` re-sends parked patches (and routes devices parked
//! unrouted); `targets` resolves mappings; `dirty_marks` writes rule 2's marks.
//!
//! # Why Amazon ends with the ledger's state
//!
//! The ledger (`store::ledger`) is the truth: each row carries its version (the update's
//! timestamp) and a write never replaces a newer one. Every path that sends membership follows
//! two rules:
//!
//! 1. **Send, then verify** (deltas, redrive, drain): after Amazon acknowledges a batch, its rows
//!    are read again (consistently); a row whose version moved is sent again from its current
//!    state (up to [`VERIFY_ROUNDS`] rounds, then parked). The last acknowledged send of a device
//!    is therefore the ledger's latest state.
//! 2. **Deltas mark the backfill's dirty set before sending.** While a mapping's job is scanning,
//!    a delta records its device in the job's dirty set (`store::jobs`) after its ledger write
//!    and before its send (a delta parked unrouted, by the redrive that routes it). When every shard is done the job turns `draining`, re-sends each dirty
//!    device from the ledger (send-then-verify) in one forward pass (never restarted, so steady
//!    deltas cannot keep a job from finishing), then finishes. A stale scan send is thus always
//!    followed by the delta's own send or by the drain's. Drain entries are deleted only if their
//!    nonce is unchanged. A mapping activated after a delta read the mapping list is covered by
//!    the backfill it starts.
//!
//! # Backfill
//!
//! One job per mapping, one shard per ledger shard (16). Shards are leased (conditional writes
//! with an expiry), streamed page by page (≤ 2 000 rows, the next page prefetched), packed
//! (2 000 patches / 1 MB), sent, and checkpointed after every acknowledged batch; a run stops
//! before the deadline minus a safety margin and resumes from the checkpoint (at most the batch
//! in flight when an invocation died is sent twice). At most `BACKFILL_MAX_INVOCATIONS`
//! invocations backfill at once (slot leases), each pacing its requests to 100 / that number per
//! second (`amazon::ratelimit::Spacer`), so backfills together stay ≤ 100 PATCH/s.
//!
//! # Errors from Amazon
//!
//! 413 splits the body in halves. 429 / 5xx / timeouts are retried by the client; if they
//! persist, a shard keeps its checkpoint and records the error, a delta parks its devices on
//! `PARKED_PATCHES_QUEUE_URL`. Other 4xx set the mapping's last error (a job moves to `failed`,
//! re-armed by `start_backfill`; a delta is not retried). Account not found / reauthorization
//! use the contract's wording; reauthorization marks every account on the login. Parked
//! messages carry device keys and mapping references, never bodies: the redrive recomputes
//! each patch from the ledger, so a late redrive cannot undo a newer change.

mod backfill;
mod delivery;
mod dirty_marks;
mod drain;
mod ledger_writes;
mod parking;
mod progress;
mod qualifications;
mod redrive;
mod request;
mod shard;
mod targets;

pub use backfill::{
    BackfillOptions, CHECKPOINT_ALLOWANCE, default_lease, restart_backfill, run_backfill,
    run_backfill_for, run_backfill_with, start_backfill,
};
pub use delivery::{DeliveryReport, VERIFY_ROUNDS};
pub use parking::ParkedPatch;
pub use progress::backfill_progress;
pub use qualifications::handle_qualifications;
pub use redrive::{run_redrive, run_redrive_with};
pub use request::{MAX_QUALIFICATIONS, MAX_REQUEST_BYTES};
pub use targets::TargetRef;

/// Concurrent dirty marks per request (and dirty-entry deletions per drain round).
const LEDGER_WRITE_CONCURRENCY: usize = 32;
