//! Adapters for the stores adsync keeps state in (Secrets Manager, DynamoDB, SQS, KMS). Each store
//! owns one module; they share [`StoreError`], and the DynamoDB adapters share one item reader
//! ([`item`]), one set of attribute builders, SDK-error and conditional-write helpers
//! ([`dynamo`]), one lease ([`lease`]) and the one clock (`crate::clock`).
//!
//! Stores know nothing of HTTP: they answer with their own types (e.g.
//! [`accounts::AccountUnavailable`]); `crate::http` turns those into answers.

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
