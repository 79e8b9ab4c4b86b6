//! The Amazon client core: regions and endpoints, Login with Amazon, the per-login token cache,
//! and the one request path every Ads API call goes through (headers, timeouts, retries, typed
//! errors, client-side rate limits).

pub mod accounts;
pub mod audiences;
pub mod client;
pub mod error;
pub mod events;
pub mod lwa;
pub mod pkce;
pub mod privacy;
pub mod ratelimit;
pub mod region;
pub mod secret;
pub mod tokens;
pub mod vault;

pub use accounts::{Advertiser, Profile};
pub use audiences::{Audience, AudienceFee, AudienceSize, AudienceUpdate, NewAudience, PatchAck};
pub use client::{AccountScope, AmazonClient, RetryPolicy};
pub use error::AmazonError;
pub use events::{EventError, EventsOutcome};
pub use lwa::{LwaCredentials, LwaError, TokenGrant};
pub use region::{Endpoints, Region};
pub use secret::SecretString;
pub use tokens::LoginRef;
pub use vault::{TokenVault, VaultError};
