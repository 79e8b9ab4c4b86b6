//! Unit tests of the account store's pure parts (the DynamoDB side is in `tests/tests/linking.rs`).

use super::codec::{account_from_item, account_item, single_use_key};
use super::*;
use aws_sdk_dynamodb::types::AttributeValue;

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
fn only_an_active_account_is_available() {
    assert!(active_account("123", Some(account(AccountStatus::Active))).is_ok());
    let not_found = AccountUnavailable::NotFound {
        account_id: "123".into(),
    };
    assert_eq!(active_account("123", None).unwrap_err(), not_found);
    assert_eq!(
        active_account("123", Some(account(AccountStatus::Removed))).unwrap_err(),
        not_found
    );
    assert_eq!(
        active_account("123", Some(account(AccountStatus::ReauthorizationRequired))).unwrap_err(),
        AccountUnavailable::ReauthorizationRequired {
            account_id: "123".into()
        }
    );
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
