//! The membership side of segment export: qualifications into the ledger, audience patches for
//! live deltas, historical backfill jobs (sharded, checkpointed, leased), the dirty-set drain,
//! and the redrive of parked patches.
//!
//! # Why Amazon ends with the ledger's state
//!
//! The ledger (`store::ledger`) is the truth: every row carries its version (the update's
//! timestamp) and a write never replaces a newer version. Every path that sends membership to
//! Amazon follows two rules:
//!
//! 1. **Send, then verify** (deltas, redrive, dirty drain): after Amazon acknowledges a batch, the
//!    rows it carried are read again (consistent `BatchGetItem`); a row whose version changed in
//!    the meantime is sent again from its current state (up to [`VERIFY_ROUNDS`] rounds, then
//!    parked). So for every device, the last acknowledged send is the ledger's latest state:
//!    whoever sent a stale state finds out at its verify, which happens after its own ack and
//!    therefore after the newer write.
//! 2. **Deltas mark the backfill's dirty set before sending.** A backfill does not verify each
//!    of its (many) rows; instead a delta for a mapping whose job is still scanning records the
//!    device in the job's dirty set (`store::jobs`) *after* its ledger write and *before* its own
//!    send. Once every shard is done (every scan batch acknowledged), the job turns `draining`,
//!    makes one pass over the dirty set re-sending each device from the ledger's current state
//!    (send-then-verify), and only then finishes. For a stale scan send S of device X and a
//!    delta D on X: if D's send is acknowledged after S, D wins; otherwise D's mark (made before
//!    D's send, so before S's ack, so before the drain began) is seen by the drain pass, whose
//!    send comes after S. A delta that reads the job as `draining` or done needs no mark: its
//!    send follows every scan batch. Drain entries are deleted only if their nonce is unchanged.
//!    The pass never restarts from the beginning, so a steady stream of deltas cannot keep a job
//!    from finishing.
//!
//! A mapping that becomes active after a delta read the mapping list is covered by the backfill
//! it starts (the scan reads the ledger after the delta's write).
//!
//! # Backfill
//!
//! A job per mapping (`start_backfill`), one shard per ledger shard (16). `run_backfill` leases
//! shards (conditional writes with an expiry, so two invocations never work the same shard and a
//! dead one's shard is taken over), streams the shard page by page (≤ 2 000 rows per page, the
//! next page prefetched while the current one is sent; never the whole segment),
//! packs patches (2 000 / 1 MB), sends, and saves a checkpoint (the last device of the
//! acknowledged batch) after every acknowledged batch. It stops before the deadline minus a
//! safety margin and resumes from the checkpoint: nobody is skipped, and at most the one batch in
//! flight when an invocation died is sent twice.
//!
//! Rate: the `AmazonClient` spaces `PATCH` calls to ≤ 100/s per process. Across processes, at
//! most `BACKFILL_MAX_INVOCATIONS` (default 2) invocations run backfills at once (slot leases in
//! `store::jobs`, held until the invocation's deadline), and each paces its backfill requests to
//! 100 / that number per second, so backfills together stay ≤ 100 requests/s. An invocation works
//! at most `BACKFILL_PARALLEL_SHARDS` (default 4) shards at once. Live deltas come on top; Amazon's
//! 429s are honoured by the client's retry path.
//!
//! # Errors from Amazon
//!
//! - 413: the body is split in halves and resent.
//! - 429 / 5xx / timeouts: retried by the client; if they persist, a backfill shard keeps its
//!   checkpoint, records the error (job and mapping) and resumes on a later run; a delta parks
//!   its devices on `PARKED_PATCHES_QUEUE_URL` for `run_redrive`.
//! - other 4xx: the mapping's last error says why; a backfill job moves to `failed` (re-armed by
//!   `start_backfill`), a delta is not retried.
//! - account not found / reauthorization required: the mapping's last error uses the contract's
//!   wording; reauthorization marks every account on the login. Deltas are parked.
//!
//! Parked messages carry device keys and mapping references, never bodies: the redrive
//! recomputes each patch from the ledger's current state, so a late redrive cannot undo a newer
//! change.

mod backfill;
mod delivery;
mod drain;
mod pacing;
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
pub use delivery::{DeliveryReport, ParkedPatch};
pub use progress::backfill_progress;
pub use qualifications::handle_qualifications;
pub use redrive::{run_redrive, run_redrive_with};
pub use targets::TargetRef;

use backfill::*;
use delivery::*;
use drain::*;
use pacing::*;
use request::*;
use shard::*;
use targets::*;

/// Most qualifications per request.
pub const MAX_QUALIFICATIONS: usize = 10_000;
/// Largest request body (Lambda's synchronous payload limit).
pub const MAX_REQUEST_BYTES: usize = 6 * 1024 * 1024;
/// Rounds of send-then-verify before the still-changing devices are parked.
pub const VERIFY_ROUNDS: usize = 3;
/// How far in the future a timestamp may be (clock skew); later ones would freeze a row.
const MAX_FUTURE_MS: i64 = 5 * 60 * 1000;
/// Concurrent conditional ledger writes per request.
const LEDGER_WRITE_CONCURRENCY: usize = 32;
/// Concurrent PATCH requests of one delta delivery.
const SEND_CONCURRENCY: usize = 4;
/// Device keys per parked message (each ≤ ~400 bytes: ≤ 140 KB, ≤ 190 KB once sealed with the
/// KMS key (base64), under SQS's 256 KB).
const PARK_CHUNK: usize = 350;
