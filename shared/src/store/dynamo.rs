//! DynamoDB helpers every table adapter uses: attribute builders, the one SDK-error conversion,
//! conditional writes (a lost condition is an answer, not an error) and batched deletes.
//! Reading items back is [`super::item`].

use super::StoreError;
use super::item::Item;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, DeleteRequest, TransactWriteItem, WriteRequest,
};
use std::collections::HashMap;

pub use crate::clock::now_rfc3339;

/// A string attribute.
pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

/// A number attribute.
pub(crate) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// A list of strings.
pub(crate) fn str_list<T: AsRef<str>>(items: &[T]) -> AttributeValue {
    AttributeValue::L(items.iter().map(|i| s(i.as_ref())).collect())
}

/// A `pk`/`sk` key.
pub(crate) fn key(pk: impl Into<String>, sk: impl Into<String>) -> Item {
    HashMap::from([("pk".to_string(), s(pk)), ("sk".to_string(), s(sk))])
}

/// True when a conditional write lost (`ConditionalCheckFailedException`), for any operation.
pub(crate) fn is_conditional_failure<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    e.as_service_error()
        .and_then(|se| se.code())
        .is_some_and(|c| c == "ConditionalCheckFailedException")
}

/// True when a transaction was cancelled because one of its conditions failed.
pub(crate) fn is_cancelled_by_condition<R>(e: &SdkError<TransactWriteItemsError, R>) -> bool {
    match e.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(c)) => c
            .cancellation_reasons()
            .iter()
            .any(|r| r.code() == Some("ConditionalCheckFailed")),
        _ => false,
    }
}

/// An SDK failure (of any AWS service) as a [`StoreError`]: what we were doing plus the
/// service's code and message (no item data is in it).
pub(crate) fn aws_error<E, R>(what: &str, e: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    StoreError::Aws(format!("{what}: {}", DisplayErrorContext(&e)))
}

/// A request that could not be built (a missing required field) as a [`StoreError`].
pub(crate) fn build_error(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Aws(format!("{what}: {e}"))
}

/// The result of a conditional write: `Some(output)` when it was applied, `None` when its
/// condition failed, an error (`what: …`) otherwise.
pub(crate) fn conditional<T, E, R>(
    res: Result<T, SdkError<E, R>>,
    what: &str,
) -> Result<Option<T>, StoreError>
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    match res {
        Ok(out) => Ok(Some(out)),
        Err(e) if is_conditional_failure(&e) => Ok(None),
        Err(e) => Err(aws_error(what, e)),
    }
}

/// `BatchWriteItem` deletes of ≤ 25 keys from `table`, resending what DynamoDB leaves
/// unprocessed (8 attempts, 50 ms doubling). `what` names the call in errors; `exhausted` is the
/// error when keys are still left after the last attempt.
pub(crate) async fn batch_delete(
    client: &Client,
    table: &str,
    keys: &[Item],
    what: &str,
    exhausted: &str,
) -> Result<(), StoreError> {
    let mut requests: Vec<WriteRequest> = keys
        .iter()
        .map(|k| {
            let del = DeleteRequest::builder()
                .set_key(Some(k.clone()))
                .build()
                .map_err(|e| StoreError::Aws(e.to_string()))?;
            Ok(WriteRequest::builder().delete_request(del).build())
        })
        .collect::<Result<_, StoreError>>()?;
    for attempt in 0..8u32 {
        if requests.is_empty() {
            return Ok(());
        }
        let out = client
            .batch_write_item()
            .request_items(table, requests)
            .send()
            .await
            .map_err(|e| aws_error(what, e))?;
        requests = out
            .unprocessed_items
            .and_then(|mut m| m.remove(table))
            .unwrap_or_default();
        if !requests.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
        }
    }
    Err(StoreError::Aws(exhausted.into()))
}

/// A write fenced by its condition (a lease or a token still held): `lost()` when the condition
/// failed, an error (`what: …`) when the call failed.
pub(crate) fn fenced<T, E, R>(
    res: Result<T, SdkError<E, R>>,
    what: &str,
    lost: impl FnOnce() -> StoreError,
) -> Result<T, StoreError>
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    conditional(res, what)?.ok_or_else(lost)
}

/// What became of one `TransactWriteItems`.
pub(crate) enum Transacted {
    Done,
    /// Cancelled: one reason per item, in order (DynamoDB gives them with a failed condition,
    /// a concurrent transaction, throttling).
    Cancelled(Vec<CancellationReason>),
    Failed(StoreError),
}

/// One `TransactWriteItems` with a fresh `ClientRequestToken`, so that an SDK retry of a
/// transaction that went through is answered as done instead of as cancelled; `what` names it
/// in errors.
pub(crate) async fn transact(
    client: &Client,
    items: Vec<TransactWriteItem>,
    what: &str,
) -> Transacted {
    let res = client
        .transact_write_items()
        .set_transact_items(Some(items))
        .client_request_token(uuid::Uuid::new_v4().simple().to_string())
        .send()
        .await;
    match res {
        Ok(_) => Transacted::Done,
        Err(e) => match e.as_service_error() {
            Some(TransactWriteItemsError::TransactionCanceledException(c)) => {
                Transacted::Cancelled(c.cancellation_reasons().to_vec())
            }
            _ => Transacted::Failed(aws_error(what, e)),
        },
    }
}
