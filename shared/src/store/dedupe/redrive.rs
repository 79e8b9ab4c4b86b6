//! The redrive's side: taking parked events over, recording parked events.

use super::codec::record;
use super::{
    Claim, ClaimOutcome, ClaimStatus, DedupeKey, DedupeRecord, DedupeStore, StoreError, Take,
    TakeOutcome,
};
use crate::clock::now_ms;
use crate::store::dynamo::{aws_error, conditional, n, s};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure;

impl DedupeStore {
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
            Ok(_) => {
                return Ok(Ok(Claim {
                    pk,
                    token,
                    held: None,
                }));
            }
            Err(e) => match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(c)) => c.item().cloned(),
                _ => return Err(aws_error("DynamoDB take parked", e)),
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
        match conditional(res, "DynamoDB put parked")?.is_some() {
            true => Ok(()),
            false => Err(StoreError::Conflict("park id already in use".into())),
        }
    }
}
