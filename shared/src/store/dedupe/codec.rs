//! Decoding a stored dedupe item.

use super::{ClaimOutcome, ClaimStatus, DedupeRecord};
use crate::store::StoreError;
use crate::store::item::{Item, ItemExt};

pub(super) fn record(item: &Item) -> Result<DedupeRecord, StoreError> {
    let status = item
        .opt_str("status")
        .and_then(ClaimStatus::parse)
        .ok_or_else(|| StoreError::Corrupt("dedupe item without a valid status".into()))?;
    Ok(DedupeRecord {
        status,
        fingerprint: item.opt_s("fingerprint"),
        in_progress_until: item.opt_num("inProgressUntil"),
        expires_at: item.opt_num("expiresAt").unwrap_or(0),
        park_id: item.opt_s("parkId"),
        content_at: item
            .opt_num("contentAt")
            .or_else(|| item.opt_num("updatedAt")),
    })
}

/// What a lost claim found: the holder's state.
pub(super) fn outcome_of(r: DedupeRecord) -> ClaimOutcome {
    match r.status {
        ClaimStatus::Completed => ClaimOutcome::Completed {
            fingerprint: r.fingerprint,
        },
        ClaimStatus::Parked => ClaimOutcome::Parked,
        ClaimStatus::InProgress => ClaimOutcome::Held {
            until_ms: r.in_progress_until.unwrap_or(0),
        },
    }
}
