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

use super::StoreError;
use super::dynamo::{aws_error as aws_err_sdk, is_conditional_failure, n, now_rfc3339, s};
use crate::amazon::{AccountScope, LoginRef, Region};
use crate::http::HttpResponse;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, KeysAndAttributes, Put, TransactWriteItem, Update,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

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

/// Turns a looked-up account into the account a request may use.
///
/// Unknown or removed → 404 `account_not_found`; reauthorization required → 409
/// `reauthorization_required`. Messages use the contract's wording and say what to do.
pub fn require_active(
    account_id: &str,
    found: Option<IntegratedAccount>,
) -> Result<IntegratedAccount, HttpResponse> {
    match found {
        Some(a) if a.status == AccountStatus::Active => Ok(a),
        Some(a) if a.status == AccountStatus::ReauthorizationRequired => Err(HttpResponse::error(
            409,
            "reauthorization_required",
            format!(
                "Amazon Error: Account {account_id} needs reauthorization: the Amazon login linked to it \
                 was revoked or expired. Link the account again (POST /connections, then confirm \
                 advertiser {account_id}); nothing is sent for it until then."
            ),
        )),
        _ => Err(HttpResponse::error(
            404,
            "account_not_found",
            format!(
                "Amazon Error: Account {account_id} was not found. Link it first (POST /connections) \
                 or use the id of a linked account (GET /accounts)."
            ),
        )),
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

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

fn aws_err<E: std::fmt::Display>(what: &str, e: E) -> StoreError {
    StoreError::Aws(format!("{what}: {e}"))
}

fn get_s<'a>(item: &'a HashMap<String, AttributeValue>, k: &str) -> Result<&'a str, StoreError> {
    match item.get(k) {
        Some(AttributeValue::S(v)) => Ok(v),
        _ => Err(StoreError::Corrupt(format!(
            "attribute {k} is missing or not a string"
        ))),
    }
}

fn opt_s(item: &HashMap<String, AttributeValue>, k: &str) -> Option<String> {
    match item.get(k) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    }
}

fn get_n(item: &HashMap<String, AttributeValue>, k: &str) -> Result<i64, StoreError> {
    match item.get(k) {
        Some(AttributeValue::N(v)) => v
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("attribute {k} is not an integer"))),
        _ => Err(StoreError::Corrupt(format!(
            "attribute {k} is missing or not a number"
        ))),
    }
}

fn region_of(item: &HashMap<String, AttributeValue>) -> Result<Region, StoreError> {
    let r = get_s(item, "region")?;
    Region::parse(r).ok_or_else(|| StoreError::Corrupt(format!("unknown region {r:?}")))
}

fn account_key(account_id: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_string(), s(format!("ACCOUNT#{account_id}"))),
        ("sk".to_string(), s("ACCOUNT")),
    ])
}

fn directory_key(account_id: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_string(), s("ACCOUNTS")),
        ("sk".to_string(), s(format!("ACCOUNT#{account_id}"))),
    ])
}

fn connection_key(connection_id: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_string(), s(format!("CONN#{connection_id}"))),
        ("sk".to_string(), s("CONNECTION")),
    ])
}

fn single_use_key(kind: &str, value: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_string(), s(format!("{kind}#{}", digest(value)))),
        ("sk".to_string(), s(kind)),
    ])
}

fn account_from_item(
    item: &HashMap<String, AttributeValue>,
) -> Result<IntegratedAccount, StoreError> {
    let status = get_s(item, "status")?;
    Ok(IntegratedAccount {
        account_id: get_s(item, "accountId")?.to_string(),
        region: region_of(item)?,
        profile_id: get_n(item, "profileId")?,
        advertiser_id: get_n(item, "advertiserId")?,
        name: get_s(item, "name")?.to_string(),
        currency: get_s(item, "currency")?.to_string(),
        country: get_s(item, "country")?.to_string(),
        connection_id: get_s(item, "connectionId")?.to_string(),
        token_secret: get_s(item, "tokenSecret")?.to_string(),
        status: AccountStatus::parse(status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown account status {status:?}")))?,
        created_at: get_s(item, "createdAt")?.to_string(),
    })
}

fn account_item(a: &IntegratedAccount) -> HashMap<String, AttributeValue> {
    let mut item = account_key(&a.account_id);
    item.insert("accountId".into(), s(&a.account_id));
    item.insert("region".into(), s(a.region.as_str()));
    item.insert("profileId".into(), n(a.profile_id));
    item.insert("advertiserId".into(), n(a.advertiser_id));
    item.insert("name".into(), s(&a.name));
    item.insert("currency".into(), s(&a.currency));
    item.insert("country".into(), s(&a.country));
    item.insert("connectionId".into(), s(&a.connection_id));
    item.insert("tokenSecret".into(), s(&a.token_secret));
    item.insert("status".into(), s(a.status.as_str()));
    item.insert("createdAt".into(), s(&a.created_at));
    item.insert("updatedAt".into(), s(now_rfc3339()));
    item
}

fn connection_from_item(item: &HashMap<String, AttributeValue>) -> Result<Connection, StoreError> {
    let status = get_s(item, "status")?;
    let advertisers = match opt_s(item, "advertisers") {
        Some(json) => serde_json::from_str(&json)
            .map_err(|e| StoreError::Corrupt(format!("connection advertisers: {e}")))?,
        None => Vec::new(),
    };
    Ok(Connection {
        connection_id: get_s(item, "connectionId")?.to_string(),
        region: region_of(item)?,
        status: ConnectionStatus::parse(status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown connection status {status:?}")))?,
        created_at: get_s(item, "createdAt")?.to_string(),
        expires_at: get_n(item, "expiresAt")?,
        advertisers,
        token_secret: opt_s(item, "tokenSecret"),
        failure: opt_s(item, "failure"),
    })
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

    // ---- integrated accounts -------------------------------------------------------------

    /// The account with this id, in whatever status (removed accounts are kept as tombstones).
    pub async fn get_account(
        &self,
        account_id: &str,
    ) -> Result<Option<IntegratedAccount>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(account_key(account_id)))
            .send()
            .await
            .map_err(|e| aws_err_sdk("get account", e))?;
        out.item.as_ref().map(account_from_item).transpose()
    }

    /// Creates or replaces an account (and its directory entry, dropped when `Removed`).
    pub async fn put_account(&self, a: &IntegratedAccount) -> Result<(), StoreError> {
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(account_item(a)))
            .build()
            .map_err(|e| aws_err("put account", e))?;
        let dir = if a.status == AccountStatus::Removed {
            TransactWriteItem::builder()
                .delete(
                    Delete::builder()
                        .table_name(&self.table)
                        .set_key(Some(directory_key(&a.account_id)))
                        .build()
                        .map_err(|e| aws_err("put account", e))?,
                )
                .build()
        } else {
            let mut item = directory_key(&a.account_id);
            item.insert("accountId".into(), s(&a.account_id));
            item.insert("tokenSecret".into(), s(&a.token_secret));
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(item))
                        .build()
                        .map_err(|e| aws_err("put account", e))?,
                )
                .build()
        };
        self.client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put).build())
            .transact_items(dir)
            .send()
            .await
            .map_err(|e| aws_err_sdk("put account", e))?;
        Ok(())
    }

    /// Marks every active account on that login `reauthorization_required`; returns how many
    /// changed. Called when a refresh answers `invalid_grant` (consent revoked).
    pub async fn mark_reauthorization_required(
        &self,
        token_secret: &str,
    ) -> Result<u32, StoreError> {
        let ids = self.account_ids_on_login(token_secret).await?;
        let mut changed = 0;
        for id in ids {
            let res = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(account_key(&id)))
                .update_expression("SET #st = :reauth, updatedAt = :now")
                .condition_expression(
                    "attribute_exists(pk) AND tokenSecret = :secret AND #st = :active",
                )
                .expression_attribute_names("#st", "status")
                .expression_attribute_values(
                    ":reauth",
                    s(AccountStatus::ReauthorizationRequired.as_str()),
                )
                .expression_attribute_values(":active", s(AccountStatus::Active.as_str()))
                .expression_attribute_values(":secret", s(token_secret))
                .expression_attribute_values(":now", s(now_rfc3339()))
                .send()
                .await;
            match res {
                Ok(_) => changed += 1,
                Err(e) if is_conditional_failure(&e) => {}
                Err(e) => return Err(aws_err_sdk("mark reauthorization required", e)),
            }
        }
        if changed > 0 {
            tracing::warn!(accounts = changed, "accounts now need reauthorization");
        }
        Ok(changed)
    }

    /// Ids of the non-removed accounts that use this login's token secret.
    pub async fn account_ids_on_login(
        &self,
        token_secret: &str,
    ) -> Result<Vec<String>, StoreError> {
        Ok(self
            .directory()
            .await?
            .into_iter()
            .filter(|(_, secret)| secret == token_secret)
            .map(|(id, _)| id)
            .collect())
    }

    /// (accountId, tokenSecret) of every non-removed account.
    async fn directory(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s("ACCOUNTS"))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| aws_err_sdk("list accounts", e))?;
            for item in page.items() {
                out.push((
                    get_s(item, "accountId")?.to_string(),
                    get_s(item, "tokenSecret")?.to_string(),
                ));
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Every non-removed account, sorted by account id.
    pub async fn list_accounts(&self) -> Result<Vec<IntegratedAccount>, StoreError> {
        let ids: Vec<String> = self
            .directory()
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(100) {
            let mut keys: Vec<HashMap<String, AttributeValue>> =
                chunk.iter().map(|id| account_key(id)).collect();
            // BatchGetItem may return part of the batch; retry the rest a bounded number of times.
            for attempt in 0..8u32 {
                if keys.is_empty() {
                    break;
                }
                if attempt > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(50 << attempt.min(5)))
                        .await;
                }
                let ka = KeysAndAttributes::builder()
                    .set_keys(Some(std::mem::take(&mut keys)))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| aws_err("list accounts", e))?;
                let res = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, ka)
                    .send()
                    .await
                    .map_err(|e| aws_err_sdk("list accounts", e))?;
                if let Some(items) = res.responses.as_ref().and_then(|r| r.get(&self.table)) {
                    for item in items {
                        let a = account_from_item(item)?;
                        if a.status != AccountStatus::Removed {
                            out.push(a);
                        }
                    }
                }
                if let Some(rest) = res
                    .unprocessed_keys
                    .as_ref()
                    .and_then(|u| u.get(&self.table))
                {
                    keys = rest.keys().to_vec();
                }
            }
            if !keys.is_empty() {
                return Err(StoreError::Aws(
                    "list accounts: DynamoDB kept throttling the batch read".into(),
                ));
            }
        }
        out.sort_by(|a, b| a.account_id.cmp(&b.account_id));
        Ok(out)
    }

    /// Marks the account removed and drops its directory entry. Returns the account as it was
    /// before, or `None` when it is unknown or already removed.
    pub async fn remove_account(
        &self,
        account_id: &str,
    ) -> Result<Option<IntegratedAccount>, StoreError> {
        let Some(before) = self.get_account(account_id).await? else {
            return Ok(None);
        };
        if before.status == AccountStatus::Removed {
            return Ok(None);
        }
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(account_key(account_id)))
            .update_expression("SET #st = :removed, updatedAt = :now")
            .condition_expression("attribute_exists(pk) AND #st <> :removed")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":removed", s(AccountStatus::Removed.as_str()))
            .expression_attribute_values(":now", s(now_rfc3339()))
            .build()
            .map_err(|e| aws_err("remove account", e))?;
        let delete = Delete::builder()
            .table_name(&self.table)
            .set_key(Some(directory_key(account_id)))
            .build()
            .map_err(|e| aws_err("remove account", e))?;
        let res = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(update).build())
            .transact_items(TransactWriteItem::builder().delete(delete).build())
            .send()
            .await;
        match res {
            Ok(_) => Ok(Some(before)),
            // Removed concurrently by another request: that one reports it.
            Err(e) if is_transaction_conditional_failure(&e) => Ok(None),
            Err(e) => Err(aws_err_sdk("remove account", e)),
        }
    }

    // ---- connections ---------------------------------------------------------------------

    /// Creates a pending connection and its OAuth state (stored hashed) in one transaction.
    pub async fn create_connection(
        &self,
        connection_id: &str,
        region: Region,
        state: &str,
        state_expires_at: i64,
        connection_expires_at: i64,
    ) -> Result<(), StoreError> {
        let now = now_rfc3339();
        let mut conn = connection_key(connection_id);
        conn.insert("connectionId".into(), s(connection_id));
        conn.insert("region".into(), s(region.as_str()));
        conn.insert("status".into(), s(ConnectionStatus::Pending.as_str()));
        conn.insert("createdAt".into(), s(&now));
        conn.insert("updatedAt".into(), s(&now));
        conn.insert("expiresAt".into(), n(connection_expires_at));
        let mut st = single_use_key("STATE", state);
        st.insert("connectionId".into(), s(connection_id));
        st.insert("region".into(), s(region.as_str()));
        st.insert("expiresAt".into(), n(state_expires_at));
        let put = |item| {
            Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(|e| aws_err("create connection", e))
        };
        self.client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put(conn)?).build())
            .transact_items(TransactWriteItem::builder().put(put(st)?).build())
            .send()
            .await
            .map_err(|e| aws_err_sdk("create connection", e))?;
        Ok(())
    }

    pub async fn get_connection(
        &self,
        connection_id: &str,
    ) -> Result<Option<Connection>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(connection_key(connection_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws_err_sdk("get connection", e))?;
        out.item.as_ref().map(connection_from_item).transpose()
    }

    /// Pending → consented, with the token secret's name and the advertisers the login may use.
    /// Fails with `Conflict` unless the connection is pending and not expired.
    pub async fn mark_consented(
        &self,
        connection_id: &str,
        token_secret: &str,
        advertisers: &[ListedAdvertiser],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let json =
            serde_json::to_string(advertisers).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(connection_key(connection_id)))
            .update_expression(
                "SET #st = :consented, tokenSecret = :secret, advertisers = :adv, expiresAt = :exp, updatedAt = :now",
            )
            .condition_expression("attribute_exists(pk) AND #st = :pending AND expiresAt > :nowsecs")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":consented", s(ConnectionStatus::Consented.as_str()))
            .expression_attribute_values(":pending", s(ConnectionStatus::Pending.as_str()))
            .expression_attribute_values(":secret", s(token_secret))
            .expression_attribute_values(":adv", s(json))
            .expression_attribute_values(":exp", n(expires_at))
            .expression_attribute_values(":now", s(now_rfc3339()))
            .expression_attribute_values(":nowsecs", n(now_secs()))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Err(StoreError::Conflict(format!(
                "connection {connection_id} is not pending any more"
            ))),
            Err(e) => Err(aws_err_sdk("mark connection consented", e)),
        }
    }

    /// Consented/linked → linked (idempotent).
    pub async fn mark_linked(&self, connection_id: &str) -> Result<(), StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(connection_key(connection_id)))
            .update_expression("SET #st = :linked, updatedAt = :now")
            .condition_expression("attribute_exists(pk) AND (#st = :consented OR #st = :linked)")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":linked", s(ConnectionStatus::Linked.as_str()))
            .expression_attribute_values(":consented", s(ConnectionStatus::Consented.as_str()))
            .expression_attribute_values(":now", s(now_rfc3339()))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Err(StoreError::Conflict(format!(
                "connection {connection_id} cannot be linked in its current state"
            ))),
            Err(e) => Err(aws_err_sdk("mark connection linked", e)),
        }
    }

    /// Marks the connection failed with a short reason code and forgets its advertiser list.
    /// A linked connection stays linked (its accounts exist). Missing connections are ignored.
    pub async fn mark_failed(&self, connection_id: &str, reason: &str) -> Result<(), StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(connection_key(connection_id)))
            .update_expression(
                "SET #st = :failed, failure = :reason, updatedAt = :now REMOVE advertisers",
            )
            .condition_expression("attribute_exists(pk) AND #st <> :linked")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":failed", s(ConnectionStatus::Failed.as_str()))
            .expression_attribute_values(":linked", s(ConnectionStatus::Linked.as_str()))
            .expression_attribute_values(":reason", s(reason))
            .expression_attribute_values(":now", s(now_rfc3339()))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Ok(()),
            Err(e) => Err(aws_err_sdk("mark connection failed", e)),
        }
    }

    // ---- single-use values ---------------------------------------------------------------

    /// Consumes an OAuth state atomically: the first caller gets what it is bound to; every
    /// later caller gets `Used`.
    pub async fn consume_state(&self, state: &str) -> Result<StateGrant, ConsumeError> {
        let item = self.consume("STATE", state, None).await?;
        let connection_id = get_s(&item, "connectionId")
            .map_err(|e| ConsumeError::Store(e.to_string()))?
            .to_string();
        let region = region_of(&item).map_err(|e| ConsumeError::Store(e.to_string()))?;
        Ok(StateGrant {
            connection_id,
            region,
        })
    }

    /// Stores a view id (hashed) that renders the connection's account list until `expires_at`.
    pub async fn put_view(
        &self,
        view: &str,
        connection_id: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.put_single_use("VIEW", view, connection_id, expires_at)
            .await
    }

    /// The connection a view id renders (reusable until it expires: reloading the page works).
    pub async fn resolve_view(&self, view: &str) -> Result<String, ConsumeError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(single_use_key("VIEW", view)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| ConsumeError::Store(aws_err_sdk("resolve view", e).to_string()))?;
        let Some(item) = out.item else {
            return Err(ConsumeError::Unknown);
        };
        let exp = get_n(&item, "expiresAt").map_err(|e| ConsumeError::Store(e.to_string()))?;
        if exp <= now_secs() {
            return Err(ConsumeError::Expired);
        }
        get_s(&item, "connectionId")
            .map(str::to_string)
            .map_err(|e| ConsumeError::Store(e.to_string()))
    }

    /// Stores a CSRF token (hashed) bound to the connection.
    pub async fn put_csrf(
        &self,
        token: &str,
        connection_id: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.put_single_use("CSRF", token, connection_id, expires_at)
            .await
    }

    /// Spends a CSRF token on `used_for` (the advertiser id). A repeat of the same use is told
    /// apart from a use for something else, so a double-submitted form stays idempotent.
    pub async fn consume_csrf(
        &self,
        token: &str,
        used_for: &str,
    ) -> Result<CsrfOutcome, ConsumeError> {
        match self.consume("CSRF", token, Some(used_for)).await {
            Ok(item) => Ok(CsrfOutcome::Fresh {
                connection_id: get_s(&item, "connectionId")
                    .map_err(|e| ConsumeError::Store(e.to_string()))?
                    .to_string(),
            }),
            Err(ConsumeError::Used) => {
                let used = self.read_used("CSRF", token).await?;
                if used.used_for.as_deref() == Some(used_for) {
                    Ok(CsrfOutcome::Repeat {
                        connection_id: used.connection_id,
                    })
                } else {
                    Ok(CsrfOutcome::UsedForOther {
                        connection_id: used.connection_id,
                    })
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn put_single_use(
        &self,
        kind: &str,
        value: &str,
        connection_id: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let mut item = single_use_key(kind, value);
        item.insert("connectionId".into(), s(connection_id));
        item.insert("expiresAt".into(), n(expires_at));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(|e| aws_err_sdk("store single-use value", e))?;
        Ok(())
    }

    /// Marks a single-use item used, only if it exists, is unused and has not expired (all in
    /// the condition, so two concurrent uses cannot both win). On failure, reads the item to say
    /// which of the three it was.
    async fn consume(
        &self,
        kind: &str,
        value: &str,
        used_for: Option<&str>,
    ) -> Result<HashMap<String, AttributeValue>, ConsumeError> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(single_use_key(kind, value)))
            .condition_expression(
                "attribute_exists(pk) AND attribute_not_exists(usedAt) AND expiresAt > :now",
            )
            .expression_attribute_values(":now", n(now_secs()))
            .expression_attribute_values(":usedAt", s(now_rfc3339()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew);
        req = match used_for {
            Some(f) => req
                .update_expression("SET usedAt = :usedAt, usedFor = :usedFor")
                .expression_attribute_values(":usedFor", s(f)),
            None => req.update_expression("SET usedAt = :usedAt"),
        };
        match req.send().await {
            Ok(out) => Ok(out.attributes.unwrap_or_default()),
            Err(e) if is_conditional_failure(&e) => {
                let out = self
                    .client
                    .get_item()
                    .table_name(&self.table)
                    .set_key(Some(single_use_key(kind, value)))
                    .consistent_read(true)
                    .send()
                    .await
                    .map_err(|e| {
                        ConsumeError::Store(aws_err_sdk("read single-use value", e).to_string())
                    })?;
                match out.item {
                    None => Err(ConsumeError::Unknown),
                    Some(item) if item.contains_key("usedAt") => Err(ConsumeError::Used),
                    Some(_) => Err(ConsumeError::Expired),
                }
            }
            Err(e) => Err(ConsumeError::Store(
                aws_err_sdk("consume single-use value", e).to_string(),
            )),
        }
    }

    async fn read_used(&self, kind: &str, value: &str) -> Result<UsedCsrf, ConsumeError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(single_use_key(kind, value)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| {
                ConsumeError::Store(aws_err_sdk("read single-use value", e).to_string())
            })?;
        let item = out.item.ok_or(ConsumeError::Unknown)?;
        Ok(UsedCsrf {
            connection_id: get_s(&item, "connectionId")
                .map_err(|e| ConsumeError::Store(e.to_string()))?
                .to_string(),
            used_for: opt_s(&item, "usedFor"),
        })
    }
}

fn is_transaction_conditional_failure<R>(
    e: &aws_sdk_dynamodb::error::SdkError<
        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError,
        R,
    >,
) -> bool {
    match e.as_service_error() {
        Some(aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(t)) => t
            .cancellation_reasons()
            .iter()
            .any(|r| r.code() == Some("ConditionalCheckFailed")),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(status: AccountStatus) -> IntegratedAccount {
        IntegratedAccount {
            account_id: "123".into(),
            region: Region::EU,
            profile_id: 7,
            advertiser_id: 123,
            name: "Acme".into(),
            currency: "GBP".into(),
            country: "UK".into(),
            connection_id: "c1".into(),
            token_secret: "adsync/tokens/c1".into(),
            status,
            created_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn require_active_maps_status_to_the_documented_errors() {
        assert!(require_active("123", Some(account(AccountStatus::Active))).is_ok());
        let r = require_active("123", None).unwrap_err();
        assert_eq!(r.status, 404);
        assert_eq!(r.json_body()["error"]["code"], "account_not_found");
        assert!(
            r.json_body()["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("Amazon Error: Account 123 was not found")
        );
        let r = require_active("123", Some(account(AccountStatus::Removed))).unwrap_err();
        assert_eq!(r.status, 404);
        let r = require_active("123", Some(account(AccountStatus::ReauthorizationRequired)))
            .unwrap_err();
        assert_eq!(r.status, 409);
        assert_eq!(r.json_body()["error"]["code"], "reauthorization_required");
    }

    #[test]
    fn account_round_trips_through_its_item() {
        let a = account(AccountStatus::ReauthorizationRequired);
        assert_eq!(account_from_item(&account_item(&a)).unwrap(), a);
        let l = a.login();
        assert_eq!(
            (l.region, l.secret_name.as_str()),
            (Region::EU, "adsync/tokens/c1")
        );
        let sc = a.scope();
        assert_eq!((sc.profile_id, sc.advertiser_id), (7, 123));
        assert_eq!(
            serde_json::to_value(AccountStatus::ReauthorizationRequired).unwrap(),
            "reauthorization_required"
        );
    }

    #[test]
    fn single_use_keys_hold_only_the_digest() {
        let k = single_use_key("STATE", "secret-state-value");
        let AttributeValue::S(pk) = &k["pk"] else {
            panic!()
        };
        assert!(!pk.contains("secret-state-value"));
        assert_eq!(pk, &format!("STATE#{}", digest("secret-state-value")));
        assert_eq!(digest("abc").len(), 64);
    }
}
