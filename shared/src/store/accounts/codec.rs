//! Keys and item encoding and decoding of the account store (layouts in the module doc).

use super::{AccountStatus, Connection, ConnectionStatus, IntegratedAccount, digest};
use crate::domain::account::Region;
use crate::store::StoreError;
use crate::store::dynamo::{key, n, now_rfc3339, s};
use crate::store::item::{Item, ItemExt};

pub(super) fn region_of(item: &Item) -> Result<Region, StoreError> {
    let r = item.req_str("region")?;
    Region::parse(r).ok_or_else(|| StoreError::Corrupt(format!("unknown region {r:?}")))
}

pub(super) fn account_key(account_id: &str) -> Item {
    key(format!("ACCOUNT#{account_id}"), "ACCOUNT")
}

pub(super) fn directory_key(account_id: &str) -> Item {
    key("ACCOUNTS", format!("ACCOUNT#{account_id}"))
}

pub(super) fn connection_key(connection_id: &str) -> Item {
    key(format!("CONN#{connection_id}"), "CONNECTION")
}

pub(super) fn single_use_key(kind: &str, value: &str) -> Item {
    key(format!("{kind}#{}", digest(value)), kind)
}

pub(super) fn account_from_item(item: &Item) -> Result<IntegratedAccount, StoreError> {
    let status = item.req_str("status")?;
    Ok(IntegratedAccount {
        account_id: item.req_s("accountId")?,
        region: region_of(item)?,
        profile_id: item.req_num("profileId")?,
        advertiser_id: item.req_num("advertiserId")?,
        name: item.req_s("name")?,
        currency: item.req_s("currency")?,
        country: item.req_s("country")?,
        connection_id: item.req_s("connectionId")?,
        token_secret: item.req_s("tokenSecret")?,
        status: AccountStatus::parse(status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown account status {status:?}")))?,
        created_at: item.req_s("createdAt")?,
    })
}

pub(super) fn account_item(a: &IntegratedAccount) -> Item {
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

pub(super) fn connection_from_item(item: &Item) -> Result<Connection, StoreError> {
    let status = item.req_str("status")?;
    let advertisers = match item.opt_s("advertisers") {
        Some(json) => serde_json::from_str(&json)
            .map_err(|e| StoreError::Corrupt(format!("connection advertisers: {e}")))?,
        None => Vec::new(),
    };
    Ok(Connection {
        connection_id: item.req_s("connectionId")?,
        region: region_of(item)?,
        status: ConnectionStatus::parse(status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown connection status {status:?}")))?,
        created_at: item.req_s("createdAt")?,
        expires_at: item.req_num("expiresAt")?,
        advertisers,
        token_secret: item.opt_s("tokenSecret"),
        failure: item.opt_s("failure"),
    })
}
