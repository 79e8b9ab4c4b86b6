//! Item layouts and attribute helpers of the account store.

use super::*;

pub(super) fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

pub(super) fn aws_err<E: std::fmt::Display>(what: &str, e: E) -> StoreError {
    StoreError::Aws(format!("{what}: {e}"))
}

pub(super) fn get_s<'a>(
    item: &'a HashMap<String, AttributeValue>,
    k: &str,
) -> Result<&'a str, StoreError> {
    match item.get(k) {
        Some(AttributeValue::S(v)) => Ok(v),
        _ => Err(StoreError::Corrupt(format!(
            "attribute {k} is missing or not a string"
        ))),
    }
}

pub(super) fn opt_s(item: &HashMap<String, AttributeValue>, k: &str) -> Option<String> {
    match item.get(k) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    }
}

pub(super) fn get_n(item: &HashMap<String, AttributeValue>, k: &str) -> Result<i64, StoreError> {
    match item.get(k) {
        Some(AttributeValue::N(v)) => v
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("attribute {k} is not an integer"))),
        _ => Err(StoreError::Corrupt(format!(
            "attribute {k} is missing or not a number"
        ))),
    }
}

pub(super) fn region_of(item: &HashMap<String, AttributeValue>) -> Result<Region, StoreError> {
    let r = get_s(item, "region")?;
    Region::parse(r).ok_or_else(|| StoreError::Corrupt(format!("unknown region {r:?}")))
}

pub(super) fn account_key(account_id: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_string(), s(format!("ACCOUNT#{account_id}"))),
        ("sk".to_string(), s("ACCOUNT")),
    ])
}

pub(super) fn directory_key(account_id: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_string(), s("ACCOUNTS")),
        ("sk".to_string(), s(format!("ACCOUNT#{account_id}"))),
    ])
}

pub(super) fn connection_key(connection_id: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_string(), s(format!("CONN#{connection_id}"))),
        ("sk".to_string(), s("CONNECTION")),
    ])
}

pub(super) fn single_use_key(kind: &str, value: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_string(), s(format!("{kind}#{}", digest(value)))),
        ("sk".to_string(), s(kind)),
    ])
}

pub(super) fn account_from_item(
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

pub(super) fn account_item(a: &IntegratedAccount) -> HashMap<String, AttributeValue> {
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

pub(super) fn connection_from_item(
    item: &HashMap<String, AttributeValue>,
) -> Result<Connection, StoreError> {
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

pub(super) fn is_transaction_conditional_failure<R>(
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
