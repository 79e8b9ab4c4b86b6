//! adsync: connects first-party data to Amazon Ads.
//!
//! The library behind the three Lambda functions. See `docs/design.md` for the module map.

pub mod amazon;
mod amazon_vault;
pub mod aws;
pub mod budget;
pub mod clock;
pub mod config;
pub mod console;
pub mod domain;
pub mod export;
pub mod http;
pub mod ingest;
pub mod linking;
pub mod local_serving;
pub mod parked_dlq;
pub mod random;
pub mod runtime;
pub mod sdk_http;
pub mod settings;
pub mod store;
pub mod telemetry;
