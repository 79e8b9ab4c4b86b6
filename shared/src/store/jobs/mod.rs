//! `JobStore`: backfill jobs of segment mappings, their shards (checkpoints and leases) and their
//! dirty sets, kept in `DESTINATIONS_TABLE` under the `JOB#` prefix (the destination, segment and
//! mapping items in that table belong to `store::destinations`).
//!
//! Item layouts (table keys `pk`, `sk`; `gsi1` on `gsi1pk`/`gsi1sk`):
//!
//! | item | pk | sk | attributes |
//! |---|---|---|---|
//! | job | `JOB#<destinationId>#<segmentId>` | `JOB` | `destinationId, segmentId, accountId, audienceId (N), generation (N), state` (`running`/`done`/`failed`), `purpose` (`backfill`/`refresh`/`purge`, absent = backfill), `shards (N), includeRemovals (BOOL), draining (BOOL), createdAt, updatedAt, finishedAt?, lastError?, leaseOwner?, leaseUntil (N)?, drained (N)`; while unfinished also `gsi1pk = JOBS#active`, `gsi1sk = <createdAt>#<destinationId>#<segmentId>` |
//! | shard | same pk | `SHARD#<nn>` | `generation (N), state` (`pending`/`done`), `lastKey?` (ledger sort key of the last acknowledged row), `sent (N), batches (N), leaseOwner?, leaseUntil (N), lastError?, updatedAt` |
//! | dirty device | same pk | `DIRTY#<deviceKey>` | `segmentId, device, nonce` |
//! | backfill slot | `JOBS#slots` | `SLOT#<n>` | `leaseOwner, leaseUntil (N)`: at most `n` invocations run backfill at once |
//!
//! - A shard is worked by whoever holds its lease: [`JobStore::lease_shard`] is a conditional
//!   write that succeeds only when the lease is free, expired, or already ours, so two
//!   invocations never work the same shard and a dead invocation's shard is taken over once its
//!   lease expires. Every checkpoint is conditional on still holding the lease (a fence): an
//!   invocation that lost its lease cannot move the checkpoint.
//! - The checkpoint is saved after each batch Amazon acknowledged, so a resumed shard re-sends at
//!   most the one batch that was in flight when an invocation died.
//! - The job's own item carries the lease of its final phase (draining the dirty set). The job
//!   leaves `gsi1` (sparse index) when done, so listing unfinished work is one small query.
//! - Dirty devices are deltas that arrived while the job was unfinished; the job re-sends them
//!   from the ledger's current state after its scan. The `nonce` lets the drain delete an entry
//!   only if no newer delta re-marked it meanwhile.

use aws_sdk_dynamodb::Client;

mod codec;
mod dirty;
mod drain;
mod generations;
mod retire;
mod shards;
mod slots;

pub use codec::job_pk;

/// The `gsi1pk` of unfinished jobs.
pub const ACTIVE_JOBS: &str = "JOBS#active";

/// The state of a backfill job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Done,
    /// Stopped on an error that needs a person (rejected input, account not found); re-armed by
    /// `start_backfill`.
    Failed,
}

impl JobState {
    pub fn as_str(&self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(JobState::Running),
            "done" => Some(JobState::Done),
            "failed" => Some(JobState::Failed),
            _ => None,
        }
    }
}

/// What a job's pass over the ledger is for. All three share the job's shards, leases,
/// checkpoints, backfill slots and PATCH pacing (`export::members`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobPurpose {
    /// The mapping's historical backfill (or its restart).
    Backfill,
    /// Members re-added before Amazon's TTL drops them (`export::refresh`): qualified rows only.
    Refresh,
    /// Every row of the segment removed from the audience (`export::lifecycle`, `?purge=true`).
    Purge,
}

impl JobPurpose {
    pub fn as_str(&self) -> &'static str {
        match self {
            JobPurpose::Backfill => "backfill",
            JobPurpose::Refresh => "refresh",
            JobPurpose::Purge => "purge",
        }
    }
    fn parse(s: Option<&str>) -> Self {
        match s {
            Some("refresh") => JobPurpose::Refresh,
            Some("purge") => JobPurpose::Purge,
            _ => JobPurpose::Backfill,
        }
    }
}

/// A backfill job: one per mapping (destination × segment).
#[derive(Clone, Debug, PartialEq)]
pub struct BackfillJob {
    pub destination_id: String,
    pub segment_id: String,
    pub account_id: String,
    pub audience_id: i64,
    /// Bumped each time the job restarts from scratch.
    pub generation: u64,
    pub state: JobState,
    pub shards: u16,
    /// Also send removals (a restart on an audience that may hold members).
    pub include_removals: bool,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
    pub last_error: Option<String>,
    /// Dirty devices re-sent so far.
    pub drained: u64,
    /// Every shard is done and the dirty-set drain has begun: deltas no longer need to mark
    /// devices dirty (their sends come after every scan batch).
    pub draining: bool,
    /// What this generation's pass is for.
    pub purpose: JobPurpose,
}

/// One shard of a job.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardState {
    pub shard: u16,
    pub generation: u64,
    pub done: bool,
    pub last_key: Option<String>,
    pub sent: u64,
    pub batches: u64,
    pub lease_owner: Option<String>,
    pub lease_until_ms: u64,
    pub last_error: Option<String>,
}

/// A dirty device of a job.
#[derive(Clone, Debug, PartialEq)]
pub struct DirtyDevice {
    pub segment_id: String,
    pub device: String,
    pub nonce: String,
}

/// What a [`JobStore::ensure_job`] call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ensure {
    Created,
    /// Already running for this audience: nothing to do.
    AlreadyRunning,
    /// A failed job was re-armed; its checkpoints are kept.
    Rearmed,
    /// Restarted from scratch (new audience, or a finished job asked again).
    Restarted,
}

/// A new generation of a mapping's job ([`JobStore::put_generation`]).
#[derive(Clone, Debug)]
pub struct Generation<'a> {
    pub destination_id: &'a str,
    pub segment_id: &'a str,
    pub account_id: &'a str,
    pub audience_id: i64,
    pub shards: u16,
    /// Also read unqualified rows (a backfill restart sends their removals; a purge removes all).
    pub include_removals: bool,
    pub purpose: JobPurpose,
}

/// The job adapter. Cheap to clone.
#[derive(Clone, Debug)]
pub struct JobStore {
    client: Client,
    table: String,
}

impl JobStore {
    pub fn new(client: Client, table: String) -> Self {
        Self { client, table }
    }
}
