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
use super::dynamo::{n, s};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

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

fn now_ms() -> u64 {
    crate::runtime::now_ms()
}

fn aws_err<E, R>(what: &str, e: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    StoreError::Aws(format!(
        "DynamoDB {what}: {}",
        aws_sdk_dynamodb::error::DisplayErrorContext(e)
    ))
}

fn record(item: &HashMap<String, AttributeValue>) -> Result<DedupeRecord, StoreError> {
    let get_s = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    let get_n = |k: &str| {
        item.get(k)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let status = get_s("status")
        .as_deref()
        .and_then(ClaimStatus::parse)
        .ok_or_else(|| StoreError::Corrupt("dedupe item without a valid status".into()))?;
    Ok(DedupeRecord {
        status,
        fingerprint: get_s("fingerprint"),
        in_progress_until: get_n("inProgressUntil"),
        expires_at: get_n("expiresAt").unwrap_or(0),
        park_id: get_s("parkId"),
        content_at: get_n("contentAt").or_else(|| get_n("updatedAt")),
    })
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

    /// Claims `key` for an invocation that dies at `holder_deadline_ms`. An id remembered
    /// (`COMPLETED` or `PARKED`) with another fingerprint is claimed too: the event is a
    /// correction. `Completed` and `Parked` therefore always mean "the same content".
    pub async fn claim(
        &self,
        key: &DedupeKey,
        fingerprint: &str,
        holder_deadline_ms: u64,
        request_id: &str,
    ) -> Result<ClaimOutcome, StoreError> {
        self.claim_with(
            key,
            fingerprint,
            holder_deadline_ms,
            request_id,
            true,
            now_ms(),
        )
        .await
    }

    /// [`Self::claim`]; `corrections: false` never takes over a remembered id (the redrive's
    /// fresh claim of an old copy must not replace a newer content); `content_at` is when the
    /// content arrived (stored as `contentAt`).
    async fn claim_with(
        &self,
        key: &DedupeKey,
        fingerprint: &str,
        holder_deadline_ms: u64,
        request_id: &str,
        corrections: bool,
        content_at: u64,
    ) -> Result<ClaimOutcome, StoreError> {
        let condition = if corrections {
            "attribute_not_exists(pk) OR expiresAt < :now OR (#s = :inprog AND inProgressUntil < :nowMs) OR (#s IN (:done, :parked) AND fingerprint <> :fp)"
        } else {
            "attribute_not_exists(pk) OR expiresAt < :now OR (#s = :inprog AND inProgressUntil < :nowMs)"
        };
        let pk = key.pk();
        // A lost race whose old item vanished before we could read it is simply retried.
        for _ in 0..3 {
            let now = now_ms();
            let token = uuid::Uuid::new_v4().simple().to_string();
            let req = self
                .client
                .put_item()
                .table_name(&self.table)
                .item("pk", s(&pk))
                .item("status", s(ClaimStatus::InProgress.as_str()))
                .item("token", s(&token))
                .item("inProgressUntil", n(holder_deadline_ms))
                .item("expiresAt", n(self.expires_at()))
                .item("fingerprint", s(fingerprint))
                .item("contentAt", n(content_at))
                .item("requestId", s(request_id))
                .item("updatedAt", n(now))
                .condition_expression(condition)
                .expression_attribute_names("#s", "status")
                .expression_attribute_values(":now", n(now / 1000))
                .expression_attribute_values(":nowMs", n(now))
                .expression_attribute_values(":inprog", s(ClaimStatus::InProgress.as_str()));
            let req = if corrections {
                req.expression_attribute_values(":done", s(ClaimStatus::Completed.as_str()))
                    .expression_attribute_values(":parked", s(ClaimStatus::Parked.as_str()))
                    .expression_attribute_values(":fp", s(fingerprint))
            } else {
                req
            };
            let res = req
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .send()
                .await;
            let old = match res {
                Ok(_) => return Ok(ClaimOutcome::Claimed(Claim { pk, token })),
                Err(e) => match e.as_service_error() {
                    Some(aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c)) => {
                        c.item().cloned()
                    }
                    _ => return Err(aws_err("claim", e)),
                },
            };
            let old = match old {
                Some(item) => Some(record(&item)?),
                None => self.get(key).await?,
            };
            match old {
                None => continue,
                Some(r) => {
                    return Ok(match r.status {
                        ClaimStatus::Completed => ClaimOutcome::Completed {
                            fingerprint: r.fingerprint,
                        },
                        ClaimStatus::Parked => ClaimOutcome::Parked,
                        ClaimStatus::InProgress => ClaimOutcome::Held {
                            until_ms: r.in_progress_until.unwrap_or(0),
                        },
                    });
                }
            }
        }
        Err(StoreError::Conflict(format!(
            "claim on {} kept changing",
            key.advertiser_id
        )))
    }

    /// Amazon accepted the event: remember it for the window. `false` if the claim was lost.
    pub async fn complete(&self, claim: &Claim) -> Result<bool, StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&claim.pk))
            .update_expression("SET #s = :done, expiresAt = :exp, updatedAt = :nowMs REMOVE inProgressUntil, parkId")
            .condition_expression("#t = :token AND #s = :inprog")
            .expression_attribute_names("#s", "status")
            .expression_attribute_names("#t", "token")
            .expression_attribute_values(":done", s(ClaimStatus::Completed.as_str()))
            .expression_attribute_values(":inprog", s(ClaimStatus::InProgress.as_str()))
            .expression_attribute_values(":exp", n(self.expires_at()))
            .expression_attribute_values(":nowMs", n(now_ms()))
            .expression_attribute_values(":token", s(&claim.token))
            .send()
            .await;
        conditional(res.map(|_| ()), "complete")
    }

    /// Gives the claim up (the send failed for good, or Amazon rejected the event), so that a
    /// retry or a corrected resend can claim it. `false` if the claim was lost.
    pub async fn release(&self, claim: &Claim) -> Result<bool, StoreError> {
        let res = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(&claim.pk))
            .condition_expression("#t = :token")
            .expression_attribute_names("#t", "token")
            .expression_attribute_values(":token", s(&claim.token))
            .send()
            .await;
        conditional(res.map(|_| ()), "release")
    }

    /// The event was parked: keep the key so that webhook retries answer `parked`.
    pub async fn mark_parked(&self, claim: &Claim, park_id: &str) -> Result<bool, StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&claim.pk))
            .update_expression("SET #s = :parked, parkId = :park, expiresAt = :exp, updatedAt = :nowMs REMOVE inProgressUntil")
            .condition_expression("#t = :token")
            .expression_attribute_names("#s", "status")
            .expression_attribute_names("#t", "token")
            .expression_attribute_values(":parked", s(ClaimStatus::Parked.as_str()))
            .expression_attribute_values(":park", s(park_id))
            .expression_attribute_values(":exp", n(self.expires_at()))
            .expression_attribute_values(":nowMs", n(now_ms()))
            .expression_attribute_values(":token", s(&claim.token))
            .send()
            .await;
        conditional(res.map(|_| ()), "mark parked")
    }

    /// The redrive's claim on a parked event (see the module doc); `parked_at_ms` is when this
    /// copy was parked.
    pub async fn take_parked(
        &self,
        key: &DedupeKey,
        fingerprint: &str,
        parked_at_ms: u64,
        holder_deadline_ms: u64,
        request_id: &str,
    ) -> Result<TakeOutcome, StoreError> {
        // A lost race (the item changed between our write and our read) is decided again.
        for _ in 0..3 {
            let take = Take {
                key,
                fingerprint,
                parked_at_ms,
                holder_deadline_ms,
                request_id,
            };
            if let Some(outcome) = self.take_once(&take).await? {
                return Ok(outcome);
            }
        }
        Ok(TakeOutcome::Busy { until_ms: now_ms() })
    }

    /// One attempt of [`Self::take_parked`]; `None` when the item changed under us.
    async fn take_once(&self, t: &Take<'_>) -> Result<Option<TakeOutcome>, StoreError> {
        let now = now_ms();
        let same = self
            .take_update(
                t,
                "attribute_exists(pk) AND fingerprint = :fp AND (#s = :parked OR (#s = :inprog AND inProgressUntil < :nowMs))",
                false,
            )
            .await?;
        let old = match same {
            Ok(claim) => return Ok(Some(TakeOutcome::Taken(claim))),
            Err(old) => old,
        };
        let old = match old {
            Some(r) => r,
            None => return self.take_missing(t).await,
        };
        let live =
            old.status == ClaimStatus::InProgress && old.in_progress_until.unwrap_or(0) >= now;
        Ok(Some(match old {
            r if r.fingerprint.as_deref() == Some(t.fingerprint) => match r.status {
                ClaimStatus::Completed => TakeOutcome::Completed,
                // Held by a live redrive or request; or parked again in between (another redrive
                // gave it back): try next time.
                _ => TakeOutcome::Busy {
                    until_ms: r.in_progress_until.unwrap_or(now),
                },
            },
            // Content that arrived after this copy was parked: a correction of it.
            r if r.content_at.unwrap_or(0) > t.parked_at_ms => TakeOutcome::Superseded,
            r if live => TakeOutcome::Busy {
                until_ms: r.in_progress_until.unwrap_or(now),
            },
            // Older content: this copy is the correction; take the id over and send it.
            _ => {
                let cond = "attribute_exists(pk) AND fingerprint <> :fp AND (#s IN (:parked, :done) OR (#s = :inprog AND inProgressUntil < :nowMs)) AND (contentAt <= :parkedAt OR (attribute_not_exists(contentAt) AND updatedAt <= :parkedAt))";
                match self.take_update(t, cond, true).await? {
                    Ok(claim) => TakeOutcome::Taken(claim),
                    Err(_) => return Ok(None),
                }
            }
        }))
    }

    /// No item: a fresh claim (never a correction) with the copy's time as its content's.
    async fn take_missing(&self, t: &Take<'_>) -> Result<Option<TakeOutcome>, StoreError> {
        let c = self
            .claim_with(
                t.key,
                t.fingerprint,
                t.holder_deadline_ms,
                t.request_id,
                false,
                t.parked_at_ms,
            )
            .await?;
        Ok(match c {
            ClaimOutcome::Claimed(c) => Some(TakeOutcome::Taken(c)),
            ClaimOutcome::Completed { fingerprint: f } if f.as_deref() == Some(t.fingerprint) => {
                Some(TakeOutcome::Completed)
            }
            // Other content appeared meanwhile: decide again against it.
            ClaimOutcome::Completed { .. } | ClaimOutcome::Parked => None,
            ClaimOutcome::Held { until_ms } => Some(TakeOutcome::Busy { until_ms }),
        })
    }

    /// The conditional write behind a take: `IN_PROGRESS` with a new token (and, for a
    /// takeover, the copy's fingerprint and time). `Err(old item)` when `condition` failed.
    async fn take_update(
        &self,
        t: &Take<'_>,
        condition: &str,
        takeover: bool,
    ) -> Result<Result<Claim, Option<DedupeRecord>>, StoreError> {
        let now = now_ms();
        let token = uuid::Uuid::new_v4().simple().to_string();
        let pk = t.key.pk();
        let mut set = String::from(
            "SET #s = :inprog, #t = :token, inProgressUntil = :until, expiresAt = :exp, requestId = :rid, updatedAt = :nowMs",
        );
        let mut req = self.client.update_item();
        if takeover {
            set.push_str(", fingerprint = :fp, contentAt = :parkedAt");
            req = req
                .expression_attribute_values(":done", s(ClaimStatus::Completed.as_str()))
                .expression_attribute_values(":parkedAt", n(t.parked_at_ms));
        }
        let res = req
            .table_name(&self.table)
            .key("pk", s(&pk))
            .update_expression(set)
            .condition_expression(condition)
            .expression_attribute_values(":fp", s(t.fingerprint))
            .expression_attribute_names("#s", "status")
            .expression_attribute_names("#t", "token")
            .expression_attribute_values(":inprog", s(ClaimStatus::InProgress.as_str()))
            .expression_attribute_values(":parked", s(ClaimStatus::Parked.as_str()))
            .expression_attribute_values(":token", s(&token))
            .expression_attribute_values(":until", n(t.holder_deadline_ms))
            .expression_attribute_values(":exp", n(self.expires_at()))
            .expression_attribute_values(":rid", s(t.request_id))
            .expression_attribute_values(":nowMs", n(now))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let old = match res {
            Ok(_) => return Ok(Ok(Claim { pk, token })),
            Err(e) => match e.as_service_error() {
                Some(aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c)) => {
                    c.item().cloned()
                }
                _ => return Err(aws_err("take parked", e)),
            },
        };
        Ok(Err(match old {
            Some(item) => Some(record(&item)?),
            None => self.get(t.key).await?,
        }))
    }

    /// Records a parked event that has no `clientDedupeId` under its park id (a fresh key).
    pub async fn put_parked(
        &self,
        key: &DedupeKey,
        fingerprint: &str,
        park_id: &str,
        request_id: &str,
    ) -> Result<(), StoreError> {
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(key.pk()))
            .item("status", s(ClaimStatus::Parked.as_str()))
            .item("token", s(uuid::Uuid::new_v4().simple().to_string()))
            .item("expiresAt", n(self.expires_at()))
            .item("fingerprint", s(fingerprint))
            .item("parkId", s(park_id))
            .item("contentAt", n(now_ms()))
            .item("requestId", s(request_id))
            .item("updatedAt", n(now_ms()))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match conditional(res.map(|_| ()), "put parked")? {
            true => Ok(()),
            false => Err(StoreError::Conflict("park id already in use".into())),
        }
    }

    /// The stored state of `key` (strongly consistent).
    pub async fn get(&self, key: &DedupeKey) -> Result<Option<DedupeRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(key.pk()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws_err("get", e))?;
        out.item.as_ref().map(record).transpose()
    }
}

/// `Ok(true)` on success, `Ok(false)` when the condition failed, `Err` otherwise.
fn conditional<E, R>(res: Result<(), SdkError<E, R>>, what: &str) -> Result<bool, StoreError>
where
    E: std::error::Error + aws_sdk_dynamodb::error::ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match res {
        Ok(()) => Ok(true),
        Err(e) => {
            if e.as_service_error().and_then(|s| s.code())
                == Some("ConditionalCheckFailedException")
            {
                Ok(false)
            } else {
                Err(aws_err(what, e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dedupe table on DynamoDB Local; fails loudly when the stack's environment is missing.
    async fn store(window: Duration) -> DedupeStore {
        let table = std::env::var("DEDUPE_TABLE").unwrap_or_else(|_| {
            panic!("DEDUPE_TABLE is not set: run infra/scripts/stack-up.sh and `set -a; . .local/stack.env; set +a`")
        });
        assert!(
            std::env::var("AWS_ENDPOINT_URL_DYNAMODB").is_ok(),
            "AWS_ENDPOINT_URL_DYNAMODB is not set: source .local/stack.env (DynamoDB Local on 127.0.0.1:8000)"
        );
        let conf = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        DedupeStore::new(Client::new(&conf), table, window)
    }

    fn key() -> DedupeKey {
        DedupeKey::client(
            rand::random::<u32>() as i64 + 1,
            &format!("order-{}", uuid::Uuid::new_v4()),
        )
    }

    fn later() -> u64 {
        now_ms() + 60_000
    }

    fn claimed(o: ClaimOutcome) -> Claim {
        match o {
            ClaimOutcome::Claimed(c) => c,
            other => panic!("expected a claim, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn claim_complete_then_duplicate() {
        let d = store(Duration::from_secs(30 * 86_400)).await;
        let k = key();
        let c = claimed(d.claim(&k, "fp1", later(), "r1").await.unwrap());
        // A live holder: the second claimant is told who holds it and until when.
        match d.claim(&k, "fp1", later(), "r2").await.unwrap() {
            ClaimOutcome::Held { until_ms } => assert!(until_ms > now_ms()),
            other => panic!("{other:?}"),
        }
        assert!(d.complete(&c).await.unwrap());
        assert_eq!(
            d.claim(&k, "fp1", later(), "r3").await.unwrap(),
            ClaimOutcome::Completed {
                fingerprint: Some("fp1".into())
            }
        );
        let r = d.get(&k).await.unwrap().unwrap();
        assert_eq!(r.status, ClaimStatus::Completed);
        assert_eq!(r.in_progress_until, None);
        let window_end = now_ms() / 1000 + 30 * 86_400;
        assert!(
            r.expires_at + 5 >= window_end && r.expires_at <= window_end,
            "{r:?}"
        );
        // Completing twice is refused (the claim is no longer in progress).
        assert!(!d.complete(&c).await.unwrap());
        // Other content under the same id is a correction: claimed, and remembered once sent.
        let fix = claimed(d.claim(&k, "fp2", later(), "r4").await.unwrap());
        assert!(d.complete(&fix).await.unwrap());
        let r = d.get(&k).await.unwrap().unwrap();
        assert_eq!(
            (r.status, r.fingerprint.as_deref()),
            (ClaimStatus::Completed, Some("fp2"))
        );
    }

    #[tokio::test]
    async fn release_lets_a_retry_through_and_lost_claims_cannot_write() {
        let d = store(Duration::from_secs(86_400)).await;
        let k = key();
        let c = claimed(d.claim(&k, "fp", later(), "r1").await.unwrap());
        assert!(d.release(&c).await.unwrap());
        assert_eq!(d.get(&k).await.unwrap(), None);
        let c2 = claimed(d.claim(&k, "fp", later(), "r2").await.unwrap());
        // The first holder's token is stale: it can neither complete nor release the new claim.
        assert!(!d.complete(&c).await.unwrap());
        assert!(!d.release(&c).await.unwrap());
        assert!(!d.mark_parked(&c, "p").await.unwrap());
        assert_eq!(
            d.get(&k).await.unwrap().unwrap().status,
            ClaimStatus::InProgress
        );
        assert!(d.complete(&c2).await.unwrap());
    }

    #[tokio::test]
    async fn a_dead_holder_is_taken_over() {
        let d = store(Duration::from_secs(86_400)).await;
        let k = key();
        // The holder's deadline has passed: it died mid-send.
        let dead = claimed(d.claim(&k, "fp", now_ms() - 1, "r1").await.unwrap());
        let live = claimed(d.claim(&k, "fp", later(), "r2").await.unwrap());
        assert_ne!(dead.token, live.token);
        assert!(!d.complete(&dead).await.unwrap());
        assert!(d.complete(&live).await.unwrap());
    }

    #[tokio::test]
    async fn the_window_ends() {
        let d = store(Duration::from_secs(0)).await;
        let k = key();
        let c = claimed(d.claim(&k, "fp", later(), "r1").await.unwrap());
        assert!(d.complete(&c).await.unwrap());
        // expiresAt = now (seconds); once a second has passed the id may be used again.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        claimed(d.claim(&k, "fp", later(), "r2").await.unwrap());
    }

    #[tokio::test]
    async fn parked_events_are_delivered_at_most_once() {
        let d = store(Duration::from_secs(86_400)).await;
        let k = key();
        let c = claimed(d.claim(&k, "fp", later(), "r1").await.unwrap());
        assert!(d.mark_parked(&c, "park-1").await.unwrap());
        // A webhook retry is told it is parked, never allowed to send.
        assert_eq!(
            d.claim(&k, "fp", later(), "r2").await.unwrap(),
            ClaimOutcome::Parked
        );
        assert_eq!(
            d.get(&k).await.unwrap().unwrap().park_id.as_deref(),
            Some("park-1")
        );
        let t = match d
            .take_parked(&k, "fp", now_ms(), later(), "redrive-1")
            .await
            .unwrap()
        {
            TakeOutcome::Taken(t) => t,
            other => panic!("{other:?}"),
        };
        // A second, concurrent redrive of the same message must not send it too.
        assert!(matches!(
            d.take_parked(&k, "fp", now_ms(), later(), "redrive-2")
                .await
                .unwrap(),
            TakeOutcome::Busy { .. }
        ));
        assert!(d.complete(&t).await.unwrap());
        assert_eq!(
            d.take_parked(&k, "fp", now_ms(), later(), "redrive-3")
                .await
                .unwrap(),
            TakeOutcome::Completed
        );
        assert!(matches!(
            d.claim(&k, "fp", later(), "r3").await.unwrap(),
            ClaimOutcome::Completed { .. }
        ));
    }

    #[tokio::test]
    async fn take_parked_takes_over_dead_redrives_and_claims_missing_items() {
        let d = store(Duration::from_secs(86_400)).await;
        // An event without an id, parked under a park id.
        let k = DedupeKey::park(7, &uuid::Uuid::new_v4().to_string());
        d.put_parked(&k, "fp", "park-9", "r1").await.unwrap();
        assert!(
            d.put_parked(&k, "fp", "park-9", "r1").await.is_err(),
            "park ids are single use"
        );
        let dead = match d
            .take_parked(&k, "fp", now_ms(), now_ms() - 1, "redrive-1")
            .await
            .unwrap()
        {
            TakeOutcome::Taken(t) => t,
            other => panic!("{other:?}"),
        };
        let live = match d
            .take_parked(&k, "fp", now_ms(), later(), "redrive-2")
            .await
            .unwrap()
        {
            TakeOutcome::Taken(t) => t,
            other => panic!("{other:?}"),
        };
        assert!(!d.complete(&dead).await.unwrap());
        assert!(d.release(&live).await.unwrap());
        // Released (e.g. parked while another request held it, which then gave it up): claimed afresh.
        assert!(matches!(
            d.take_parked(&k, "fp", now_ms(), later(), "redrive-3")
                .await
                .unwrap(),
            TakeOutcome::Taken(_)
        ));
    }

    #[tokio::test]
    async fn an_unclaimed_parked_correction_wins_over_older_content_only() {
        let d = store(Duration::from_secs(86_400)).await;
        let k = key();
        // Content A parked with a claim, then delivered by a retry.
        let a = claimed(d.claim(&k, "fpA", later(), "r1").await.unwrap());
        assert!(d.mark_parked(&a, "park-a").await.unwrap());
        let a_parked_at = now_ms();
        tokio::time::sleep(Duration::from_millis(5)).await;
        // Content B parked without a claim after A arrived: B is the correction.
        let b_parked_at = now_ms();
        let b = match d
            .take_parked(&k, "fpB", b_parked_at, later(), "redrive-1")
            .await
            .unwrap()
        {
            TakeOutcome::Taken(t) => t,
            other => panic!("{other:?}"),
        };
        // The old copy A (parked before B) is superseded, even while B is in flight.
        assert_eq!(
            d.take_parked(&k, "fpA", a_parked_at, later(), "redrive-2")
                .await
                .unwrap(),
            TakeOutcome::Superseded
        );
        assert!(d.complete(&b).await.unwrap());
        let r = d.get(&k).await.unwrap().unwrap();
        assert_eq!(
            (r.status, r.fingerprint.as_deref()),
            (ClaimStatus::Completed, Some("fpB"))
        );
        assert_eq!(r.content_at, Some(b_parked_at));
        assert_eq!(
            d.take_parked(&k, "fpB", b_parked_at, later(), "redrive-3")
                .await
                .unwrap(),
            TakeOutcome::Completed
        );
        // A live holder of older content makes the copy wait rather than be dropped.
        let k2 = key();
        claimed(d.claim(&k2, "fpOld", later(), "r2").await.unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(matches!(
            d.take_parked(&k2, "fpNew", now_ms(), later(), "redrive-4")
                .await
                .unwrap(),
            TakeOutcome::Busy { .. }
        ));
    }

    #[tokio::test]
    async fn concurrent_claims_have_one_winner() {
        let d = store(Duration::from_secs(86_400)).await;
        let k = key();
        let outcomes = futures::future::join_all((0..12).map(|i| {
            let d = d.clone();
            let k = k.clone();
            async move { d.claim(&k, "fp", later(), &format!("r{i}")).await.unwrap() }
        }))
        .await;
        let winners = outcomes
            .iter()
            .filter(|o| matches!(o, ClaimOutcome::Claimed(_)))
            .count();
        let held = outcomes
            .iter()
            .filter(|o| matches!(o, ClaimOutcome::Held { .. }))
            .count();
        assert_eq!((winners, held), (1, 11), "{outcomes:?}");
    }
}
