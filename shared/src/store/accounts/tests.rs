
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
    let r =
        require_active("123", Some(account(AccountStatus::ReauthorizationRequired))).unwrap_err();
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
