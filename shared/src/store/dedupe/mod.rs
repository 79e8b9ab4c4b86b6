//! [`DedupeStore`]: Powertools-style idempotency claims on (advertiser, `clientDedupeId`) in the
//! `DEDUPE_TABLE`, so that a conversion is sent to Amazon at most once per dedupe window even when
//! the same webhook is retried or sent concurrently, and so that a parked event is delivered at
//! most once however often it is redriven.
//!
//! # Item layout (one item per key)
//!
//! | attribute | type | meaning |
//! |---|---|---|
//! | `pk` | S | `<advertiserId>#c#<clientDedupeId>`, or `<advertiserId>#p#<parkId>` for a parked event that has no id |
//! | `status` | S | `IN_PROGRESS` (a live invocation is sending it), `COMPLETED` (Amazon accepted it), `PARKED` (on the parked queue) |
//! | `token` | S | random per claim: completion, release and parking are conditional on it, so a holder that lost its claim cannot overwrite the new holder's state |
//! | `inProgressUntil` | N | epoch ms: the holder's Lambda deadline; past it the claim may be taken over (the holder died) |
//! | `expiresAt` | N | epoch s: end of the dedupe window (TTL attribute). Never trusted for correctness: conditions compare it with the clock |
//! | `fingerprint` | S | SHA-256 prefix of the normalised outbound event (tells a retry from a different event reusing an id) |
//! | `parkId` | S | the parked-queue entry holding the event (status `PARKED`) |
//! | `contentAt` | N | epoch ms: when the stored fingerprint's content arrived (its claim, or the parking of a copy that the redrive took over); settling a claim never changes it |
//! | `requestId` | S | the invocation that last changed the item (tracing) |
//! | `updatedAt` | N | epoch ms |
//!
//! # Transitions
//!
//! Amazon keeps the **latest** event per id, so the fingerprint decides what a second copy is:
//! the same content is a duplicate (or already parked), different content is a correction that
//! must be sent and then remembered in place of the old one.
//!
//! - **claim**: one conditional PutItem, `attribute_not_exists(pk) OR expiresAt < :now OR
//!   (status = IN_PROGRESS AND inProgressUntil < :nowMs) OR (status IN (COMPLETED, PARKED) AND
//!   fingerprint <> :fp)`, with `ReturnValuesOnConditionCheckFailure = ALL_OLD` so a lost race
//!   says at once who holds it. The last clause is the correction: it takes the id over with the
//!   new fingerprint. Two requests carrying the same correction race on that one conditional
//!   write: one sends, the other finds it `IN_PROGRESS` and waits (then sees it `COMPLETED` with
//!   its own fingerprint: a duplicate).
//! - **complete** (IN_PROGRESS → COMPLETED, window restarts) and **release** (delete, so a
//!   corrected resend can go through) are conditional on `token`.
//! - **mark_parked** (IN_PROGRESS → PARKED): a webhook retry of a parked event is answered
//!   `parked`, never sent a second time.
//! - **take_parked** (PARKED, or IN_PROGRESS past its deadline → IN_PROGRESS with a new token,
//!   and only while the item's fingerprint is the parked copy's): the redrive's claim. A
//!   COMPLETED item with the same fingerprint means another redrive (or a retry) already
//!   delivered it: the redrive only acknowledges the message. An item with another fingerprint
//!   is decided by time: content that arrived after this copy was parked (`contentAt` later
//!   than the copy's `parkedAtMs`) is a correction, so the copy is obsolete and is acknowledged
//!   without being sent (old content never reaches Amazon after new content). Older content
//!   means the copy itself is the correction: it was parked without a claim (out of time, the
//!   id still held by another request, a store error), so no record of it was written. The
//!   redrive then takes the item over (COMPLETED, PARKED or a dead holder's IN_PROGRESS, one
//!   conditional write that re-checks `contentAt`) with the copy's fingerprint and `contentAt =
//!   parkedAtMs`, and sends it; a live holder of older content makes it wait. A missing item
//!   (released, or never claimed) is claimed afresh, without the correction clause.

use super::StoreError;
use crate::clock::now_ms;
use aws_sdk_dynamodb::Client;
use serde::{Deserialize, Serialize};
use std::time::Duration;

mod batch;
mod claims;
mod codec;
mod complete;
mod redrive;

pub use batch::{CLAIMS_PER_CALL, ClaimRequest};
pub use complete::LEASE_GUARD;

/// What is being deduplicated.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DedupeKey {
    pub advertiser_id: i64,
    /// `true` for a caller's `clientDedupeId`; `false` for a park id given to an event without one.
    pub client: bool,
    pub id: String,
}

impl DedupeKey {
    pub fn client(advertiser_id: i64, client_dedupe_id: &str) -> Self {
        Self {
            advertiser_id,
            client: true,
            id: client_dedupe_id.to_string(),
        }
    }

    pub fn park(advertiser_id: i64, park_id: &str) -> Self {
        Self {
            advertiser_id,
            client: false,
            id: park_id.to_string(),
        }
    }

    pub fn pk(&self) -> String {
        let kind = if self.client { 'c' } else { 'p' };
        format!("{}#{kind}#{}", self.advertiser_id, self.id)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimStatus {
    InProgress,
    Completed,
    Parked,
}

impl ClaimStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimStatus::InProgress => "IN_PROGRESS",
            ClaimStatus::Completed => "COMPLETED",
            ClaimStatus::Parked => "PARKED",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "IN_PROGRESS" => Some(ClaimStatus::InProgress),
            "COMPLETED" => Some(ClaimStatus::Completed),
            "PARKED" => Some(ClaimStatus::Parked),
            _ => None,
        }
    }
}

/// A held claim: the right to send one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub pk: String,
    pub token: String,
    /// What the claim wrote, when known (fresh claims): lets [`DedupeStore::complete_many`]
    /// write the completed item whole while the claim's lease is far from its end.
    pub(super) held: Option<Held>,
}

/// The item a fresh claim wrote, kept to complete it with one unconditional batched put.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Held {
    fingerprint: String,
    content_at: u64,
    /// `inProgressUntil` or the window's end if sooner: nobody may take the claim over before it.
    until_ms: u64,
    request_id: String,
}

/// The stored state of one key (for diagnostics and tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DedupeRecord {
    pub status: ClaimStatus,
    pub fingerprint: Option<String>,
    pub in_progress_until: Option<u64>,
    pub expires_at: u64,
    pub park_id: Option<String>,
    /// When the stored content arrived (`contentAt`; `updatedAt` for items written before it).
    pub content_at: Option<u64>,
}

/// The answer to a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// We hold it: send, then complete, release or park.
    Claimed(Claim),
    /// Already delivered within the window: a duplicate.
    Completed { fingerprint: Option<String> },
    /// On the parked queue: the redrive will deliver it.
    Parked,
    /// Another live invocation is sending it (until its deadline).
    Held { until_ms: u64 },
}

/// The answer to a redrive's claim on a parked event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TakeOutcome {
    Taken(Claim),
    /// Already delivered: acknowledge the parked message.
    Completed,
    /// A correction with other content came after this copy was parked: never send it.
    Superseded,
    /// Someone live holds it: leave the message for a later redrive.
    Busy {
        until_ms: u64,
    },
}

/// The arguments of one [`DedupeStore::take_parked`].
struct Take<'a> {
    key: &'a DedupeKey,
    fingerprint: &'a str,
    parked_at_ms: u64,
    holder_deadline_ms: u64,
    request_id: &'a str,
}

/// The `DEDUPE_TABLE` adapter. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DedupeStore {
    client: Client,
    table: String,
    window: Duration,
}

impl DedupeStore {
    /// `window`: how long a completed id is remembered (`DEDUPE_WINDOW_DAYS`, default 30 days).
    pub fn new(client: Client, table: String, window: Duration) -> Self {
        Self {
            client,
            table,
            window,
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    fn expires_at(&self) -> u64 {
        now_ms() / 1000 + self.window.as_secs()
    }
}

#[cfg(test)]
mod batch_tests;
#[cfg(test)]
mod tests;
