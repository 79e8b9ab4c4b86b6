//! Item decoding and error helpers of the dedupe store.

use super::*;

pub(super) fn now_ms() -> u64 {
    crate::runtime::now_ms()
}

pub(super) fn aws_err<E, R>(what: &str, e: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    StoreError::Aws(format!(
        "DynamoDB {what}: {}",
        aws_sdk_dynamodb::error::DisplayErrorContext(e)
    ))
}

pub(super) fn record(item: &HashMap<String, AttributeValue>) -> Result<DedupeRecord, StoreError> {
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

/// `Ok(true)` on success, `Ok(false)` when the condition failed, `Err` otherwise.
pub(super) fn conditional<E, R>(
    res: Result<(), SdkError<E, R>>,
    what: &str,
) -> Result<bool, StoreError>
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
