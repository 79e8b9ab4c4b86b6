//! Adapters for the stores adsync keeps state in (Secrets Manager, DynamoDB, SQS). Each store
//! owns one module; they share [`StoreError`].

pub mod accounts;
pub mod conversion_counts;
pub mod dedupe;
pub mod destinations;
pub mod dynamo;
pub mod erased_rows;
pub mod erasures;
pub(crate) mod item;
pub mod jobs;
pub(crate) mod lease;
pub mod ledger;
pub mod parked;
pub mod parked_counts;
pub mod parked_retry;
pub mod sealed;
pub mod secrets;

/// A store failure. Messages never carry secret values or personal data.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The AWS call failed (network, throttling, permissions, …).
    #[error("AWS error: {0}")]
    Aws(String),
    /// A stored item or secret could not be read back (bad JSON, missing attribute).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// A conditional write lost a race.
    #[error("conflict: {0}")]
    Conflict(String),
}
