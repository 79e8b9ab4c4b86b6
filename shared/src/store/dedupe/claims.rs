//! Claims: claim, complete, release, park, read.

use super::codec::{outcome_of, record};
use super::{
    Claim, ClaimOutcome, ClaimStatus, DedupeKey, DedupeRecord, DedupeStore, Held, StoreError,
};
use crate::clock::now_ms;
use crate::store::dynamo::{aws_error, conditional, n, s};
use crate::store::item::Item;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure;
use std::collections::HashMap;

/// A claim's condition: free, expired, a dead holder's, or a correction of remembered content.
const CLAIM_IF: &str = "attribute_not_exists(pk) OR expiresAt < :now OR (#s = :inprog AND inProgressUntil < :nowMs) OR (#s IN (:done, :parked) AND fingerprint <> :fp)";
/// [`CLAIM_IF`] without the correction clause.
const CLAIM_FRESH_IF: &str =
    "attribute_not_exists(pk) OR expiresAt < :now OR (#s = :inprog AND inProgressUntil < :nowMs)";

/// A completion's update and condition (`#s` status, `#t` token).
pub(super) const COMPLETE_SET: &str =
    "SET #s = :done, expiresAt = :exp, updatedAt = :nowMs REMOVE inProgressUntil, parkId";
pub(super) const COMPLETE_IF: &str = "#t = :token AND #s = :inprog";

/// One claim's conditional put (`#s` is `status`).
pub(super) struct ClaimWrite {
    pub(super) item: Item,
    pub(super) condition: &'static str,
    pub(super) values: Item,
    pub(super) claim: Claim,
}

impl DedupeStore {
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
    pub(super) async fn claim_with(
        &self,
        key: &DedupeKey,
        fingerprint: &str,
        holder_deadline_ms: u64,
        request_id: &str,
        corrections: bool,
        content_at: u64,
    ) -> Result<ClaimOutcome, StoreError> {
        // A lost race whose old item vanished before we could read it is simply retried.
        for _ in 0..3 {
            let w = self.claim_write(
                key,
                fingerprint,
                holder_deadline_ms,
                request_id,
                corrections,
                content_at,
            );
            let res = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(w.item))
                .condition_expression(w.condition)
                .expression_attribute_names("#s", "status")
                .set_expression_attribute_values(Some(w.values))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .send()
                .await;
            let old = match res {
                Ok(_) => return Ok(ClaimOutcome::Claimed(w.claim)),
                Err(e) => match e.as_service_error() {
                    Some(PutItemError::ConditionalCheckFailedException(c)) => c.item().cloned(),
                    _ => return Err(aws_error("DynamoDB claim", e)),
                },
            };
            let old = match old {
                Some(item) => Some(record(&item)?),
                None => self.get(key).await?,
            };
            if let Some(r) = old {
                return Ok(outcome_of(r));
            }
        }
        Err(StoreError::Conflict(format!(
            "claim on {} kept changing",
            key.advertiser_id
        )))
    }

    /// One claim's conditional put: the item, its condition and values, and the claim it makes.
    pub(super) fn claim_write(
        &self,
        key: &DedupeKey,
        fingerprint: &str,
        holder_deadline_ms: u64,
        request_id: &str,
        corrections: bool,
        content_at: u64,
    ) -> ClaimWrite {
        let now = now_ms();
        let token = uuid::Uuid::new_v4().simple().to_string();
        let pk = key.pk();
        let expires_at = self.expires_at();
        let item = HashMap::from([
            ("pk".to_string(), s(&pk)),
            ("status".into(), s(ClaimStatus::InProgress.as_str())),
            ("token".into(), s(&token)),
            ("inProgressUntil".into(), n(holder_deadline_ms)),
            ("expiresAt".into(), n(expires_at)),
            ("fingerprint".into(), s(fingerprint)),
            ("contentAt".into(), n(content_at)),
            ("requestId".into(), s(request_id)),
            ("updatedAt".into(), n(now)),
        ]);
        let mut values = HashMap::from([
            (":now".to_string(), n(now / 1000)),
            (":nowMs".into(), n(now)),
            (":inprog".into(), s(ClaimStatus::InProgress.as_str())),
        ]);
        if corrections {
            values.insert(":done".into(), s(ClaimStatus::Completed.as_str()));
            values.insert(":parked".into(), s(ClaimStatus::Parked.as_str()));
            values.insert(":fp".into(), s(fingerprint));
        }
        let held = Held {
            fingerprint: fingerprint.to_string(),
            content_at,
            // Past the window's end the item is free to any claim, whatever its lease.
            until_ms: holder_deadline_ms.min(expires_at * 1000),
            request_id: request_id.to_string(),
        };
        ClaimWrite {
            item,
            condition: if corrections {
                CLAIM_IF
            } else {
                CLAIM_FRESH_IF
            },
            values,
            claim: Claim {
                pk,
                token,
                held: Some(held),
            },
        }
    }

    /// Amazon accepted the event: remember it for the window. `false` if the claim was lost.
    pub async fn complete(&self, claim: &Claim) -> Result<bool, StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&claim.pk))
            .update_expression(COMPLETE_SET)
            .condition_expression(COMPLETE_IF)
            .expression_attribute_names("#s", "status")
            .expression_attribute_names("#t", "token")
            .expression_attribute_values(":done", s(ClaimStatus::Completed.as_str()))
            .expression_attribute_values(":inprog", s(ClaimStatus::InProgress.as_str()))
            .expression_attribute_values(":exp", n(self.expires_at()))
            .expression_attribute_values(":nowMs", n(now_ms()))
            .expression_attribute_values(":token", s(&claim.token))
            .send()
            .await;
        Ok(conditional(res, "DynamoDB complete")?.is_some())
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
        Ok(conditional(res, "DynamoDB release")?.is_some())
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
        Ok(conditional(res, "DynamoDB mark parked")?.is_some())
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
            .map_err(|e| aws_error("DynamoDB get", e))?;
        out.item.as_ref().map(record).transpose()
    }
}
