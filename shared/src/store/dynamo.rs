//! DynamoDB helpers every table adapter uses: attribute builders, the conditional-failure test
//! and the conversion of SDK errors into [`StoreError`].

use super::StoreError;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;

/// A string attribute.
pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

/// A number attribute.
pub(crate) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// RFC 3339 with milliseconds, UTC: the timestamp format of every stored item.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// True when a conditional write lost (`ConditionalCheckFailedException`), for any operation.
pub(crate) fn is_conditional_failure<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    e.as_service_error()
        .and_then(|se| se.code())
        .is_some_and(|c| c == "ConditionalCheckFailedException")
}

/// An SDK failure as a [`StoreError`]: what we were doing plus the service's code and message
/// (no item data is in it).
pub(crate) fn aws_error<E, R>(what: &str, e: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    StoreError::Aws(format!("{what}: {}", DisplayErrorContext(&e)))
}
