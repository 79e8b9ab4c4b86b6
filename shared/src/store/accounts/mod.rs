//! `AccountStore`: the `ACCOUNTS_TABLE` adapter. It owns integrated accounts (the linked
//! advertiser accounts every other part looks up) and the short-lived records of the linking flow:
//! connections, OAuth states, account-list views and CSRF tokens.
//!
//! Item layouts (table keys `pk`, `sk`; TTL attribute `expiresAt`, epoch seconds):
//!
//! | item | pk | sk | attributes |
//! |---|---|---|---|
//! | account | `ACCOUNT#<accountId>` | `ACCOUNT` | `accountId, region, profileId (N), advertiserId (N), name, currency, country, connectionId, tokenSecret, status, createdAt, updatedAt` |
//! | directory entry (one per non-removed account) | `ACCOUNTS` | `ACCOUNT#<accountId>` | `accountId, tokenSecret` |
//! | connection | `CONN#<connectionId>` | `CONNECTION` | `connectionId, region, status, createdAt, updatedAt, expiresAt, advertisers?` (JSON list), `failure?`, `tokenSecret?` |
//! | OAuth state | `STATE#<sha256 hex of the state>` | `STATE` | `connectionId, region, expiresAt, usedAt?` |
//! | account-list view | `VIEW#<sha256 hex of the view id>` | `VIEW` | `connectionId, expiresAt` |
//! | CSRF token | `CSRF#<sha256 hex of the token>` | `CSRF` | `connectionId, expiresAt, usedAt?, usedFor?` |
//!
//! The state, view id and CSRF token values are never stored, only their SHA-256, so a table dump
//! cannot replay them. DynamoDB's TTL deletes expired items eventually (up to days later); it is
//! never trusted: every read or consume checks `expiresAt` against the clock, in the condition
//! expression when it writes. Single-use records are marked `usedAt` (not deleted) so a second use
//! can be told apart from a forged value until the item expires.
//!
//! The account item is separate from its directory entry so the hot `get_account` reads (every
//! conversion batch, every export) spread over partitions, while listing stays one query.

use crate::domain::account::{AccountScope, LoginRef, Region};
use aws_sdk_dynamodb::Client;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod codec;
mod connections;
mod integrated;
mod single_use;

/// The state of a linked account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountStatus {
    Active,
    ReauthorizationRequired,
    Removed,
}

impl AccountStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            AccountStatus::Active => "active",
            AccountStatus::ReauthorizationRequired => "reauthorization_required",
            AccountStatus::Removed => "removed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(AccountStatus::Active),
            "reauthorization_required" => Some(AccountStatus::ReauthorizationRequired),
            "removed" => Some(AccountStatus::Removed),
            _ => None,
        }
    }
}

/// A DSP advertiser account linked to adsync.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IntegratedAccount {
    /// The DSP advertiser id as a decimal string: the id users put in URLs.
    pub account_id: String,
    pub region: Region,
    pub profile_id: i64,
    pub advertiser_id: i64,
    pub name: String,
    pub currency: String,
    pub country: String,
    pub connection_id: String,
    /// The secret *name* holding the login's refresh token, never its value.
    pub token_secret: String,
    pub status: AccountStatus,
    /// RFC 3339.
    pub created_at: String,
}

impl IntegratedAccount {
    /// The linked login this account calls Amazon with.
    pub fn login(&self) -> LoginRef {
        LoginRef {
            region: self.region,
            secret_name: self.token_secret.clone(),
        }
    }

    /// The profile and advertiser scope of Ads API calls for this account.
    pub fn scope(&self) -> AccountScope {
        AccountScope {
            profile_id: self.profile_id,
            advertiser_id: self.advertiser_id,
        }
    }
}

/// Why a request cannot use an account (`crate::http::accounts` turns it into the answer).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccountUnavailable {
    /// Unknown, or removed.
    #[error("account {account_id} was not found")]
    NotFound { account_id: String },
    /// Its Amazon login was revoked or expired: it must be linked again.
    #[error("account {account_id} needs reauthorization")]
    ReauthorizationRequired { account_id: String },
}

/// Turns a looked-up account into the account a request may use: only an `Active` one.
pub fn active_account(
    account_id: &str,
    found: Option<IntegratedAccount>,
) -> Result<IntegratedAccount, AccountUnavailable> {
    match found {
        Some(a) if a.status == AccountStatus::Active => Ok(a),
        Some(a) if a.status == AccountStatus::ReauthorizationRequired => {
            Err(AccountUnavailable::ReauthorizationRequired {
                account_id: account_id.to_string(),
            })
        }
        _ => Err(AccountUnavailable::NotFound {
            account_id: account_id.to_string(),
        }),
    }
}

/// Lifecycle of a linking attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    /// Created; waiting for the user at Amazon's consent page.
    Pending,
    /// Consent given, token stored, advertisers listed; waiting for the user to pick one.
    Consented,
    /// At least one account confirmed from this login.
    Linked,
    /// Ended in an error; nothing of it remains (its token secret is deleted).
    Failed,
}

impl ConnectionStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            ConnectionStatus::Pending => "pending",
            ConnectionStatus::Consented => "consented",
            ConnectionStatus::Linked => "linked",
            ConnectionStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(ConnectionStatus::Pending),
            "consented" => Some(ConnectionStatus::Consented),
            "linked" => Some(ConnectionStatus::Linked),
            "failed" => Some(ConnectionStatus::Failed),
            _ => None,
        }
    }
}

/// An advertiser the login can use, as listed at consent time (the only ones confirm accepts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedAdvertiser {
    pub profile_id: i64,
    pub advertiser_id: i64,
    pub name: String,
    pub currency: String,
    pub country: String,
    pub timezone: String,
    /// The agency profile's account name.
    pub profile_name: String,
}

/// One linking attempt (`POST /connections` … confirm).
#[derive(Clone, Debug, PartialEq)]
pub struct Connection {
    pub connection_id: String,
    pub region: Region,
    pub status: ConnectionStatus,
    pub created_at: String,
    /// Epoch seconds after which the connection can no longer be used.
    pub expires_at: i64,
    pub advertisers: Vec<ListedAdvertiser>,
    /// Set once the token is stored.
    pub token_secret: Option<String>,
    /// Why it failed (a short code such as `access_denied`), for operators.
    pub failure: Option<String>,
}

/// Why a single-use value could not be consumed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsumeError {
    /// Never issued (forged, mistyped, or so old that it was deleted).
    Unknown,
    /// Issued, but its time ran out.
    Expired,
    /// Already used once.
    Used,
    /// The store failed.
    Store(String),
}

/// A consumed OAuth state: what it was bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateGrant {
    pub connection_id: String,
    pub region: Region,
}

/// A CSRF token that was already used, and for which advertiser.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsedCsrf {
    pub connection_id: String,
    pub used_for: Option<String>,
}

/// Outcome of consuming a CSRF token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CsrfOutcome {
    /// First use: the token is now spent for `used_for`.
    Fresh { connection_id: String },
    /// The same token was already spent on the same advertiser (a repeated submit).
    Repeat { connection_id: String },
    /// The token was spent on another advertiser.
    UsedForOther { connection_id: String },
}

/// Lowercase hex SHA-256: how single-use values are keyed.
pub fn digest(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// The `ACCOUNTS_TABLE` adapter. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AccountStore {
    client: Client,
    table: String,
}

impl AccountStore {
    pub fn new(client: Client, table: String) -> Self {
        Self { client, table }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// The DynamoDB client (for the linking flow's own records and other items in this table,
    /// `store::parked_counts`).
    pub fn client(&self) -> &Client {
        &self.client
    }
}

#[cfg(test)]
mod tests;
