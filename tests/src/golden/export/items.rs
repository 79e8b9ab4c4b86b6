//! Segment-export cases of the item lists: qualifications, privacy deletions and identities
//! (each item's rejection alone in its request).

use super::Ex;
use adsync::store::accounts::AccountStatus;
use serde_json::{Value, json};

pub(super) async fn qualifications(x: &mut Ex) {
    let p = "/qualifications";
    x.body_checks("qualifications", "POST", p, 6 * 1024 * 1024)
        .await;
    let many: Vec<Value> = (0..10_001).map(|_| json!({})).collect();
    x.bodies(
        "qualifications",
        "POST",
        p,
        vec![
            ("list.missing", json!({})),
            ("list.not_array", json!({"qualifications": {}})),
            ("list.empty", json!({"qualifications": []})),
            ("list.too_many", json!({"qualifications": many})),
        ],
    )
    .await;
    let seg = x.segment(None).await;
    let now = chrono::Utc::now().timestamp_millis();
    let q = |changes: Value| {
        let mut v = json!({"segmentId": seg, "deviceId": "golden-device", "idType": "COOKIE",
                           "status": "qualified", "timestamp": now});
        for (k, c) in changes.as_object().unwrap() {
            if c.is_null() {
                v.as_object_mut().unwrap().remove(k);
            } else {
                v[k] = c.clone();
            }
        }
        v
    };
    let n = Value::Null;
    let items = vec![
        ("item.not_object", json!(5)),
        ("item.empty_object", json!({})),
        ("item.segmentId_wrong_type", q(json!({"segmentId": 5}))),
        ("item.segmentId_bad_char", q(json!({"segmentId": "a#b"}))),
        ("item.deviceId_missing", q(json!({"deviceId": n}))),
        ("item.deviceId_empty", q(json!({"deviceId": ""}))),
        ("item.deviceId_slash", q(json!({"deviceId": "a/b"}))),
        ("item.deviceId_space", q(json!({"deviceId": "a b"}))),
        (
            "item.deviceId_too_long",
            q(json!({"deviceId": "d".repeat(257)})),
        ),
        ("item.idType_unknown", q(json!({"idType": "EMAIL"}))),
        ("item.status_unknown", q(json!({"status": "maybe"}))),
        ("item.timestamp_missing", q(json!({"timestamp": n}))),
        ("item.timestamp_text", q(json!({"timestamp": "yesterday"}))),
        ("item.timestamp_negative", q(json!({"timestamp": -1}))),
        ("item.timestamp_fraction", q(json!({"timestamp": 1.5}))),
        ("item.timestamp_bool", q(json!({"timestamp": true}))),
        (
            "item.timestamp_future",
            q(json!({"timestamp": now + 3_600_000})),
        ),
        ("item.consent_not_object", q(json!({"consent": "x"}))),
        (
            "item.consent_type_unknown",
            q(json!({"consent": {"consentType": "X"}})),
        ),
        (
            "item.consent_type_missing",
            q(json!({"consent": {"tcf": "x"}})),
        ),
        (
            "item.consent_tcf_without_string",
            q(json!({"consent": {"consentType": "TCF"}})),
        ),
        (
            "item.consent_amazon_incomplete",
            q(json!({"consent": {"consentType": "Amazon",
            "amazonConsent": {"amazonAdStorage": "GRANTED"}}})),
        ),
    ];
    let cases: Vec<(&str, Value)> = items
        .into_iter()
        .map(|(name, it)| (name, json!({"qualifications": [it]})))
        .collect();
    x.bodies("qualifications", "POST", p, cases).await;
}

pub(super) async fn privacy_and_identities(x: &mut Ex) {
    let p = "/privacy/deletions";
    x.body_checks("deletions", "POST", p, 1024 * 1024).await;
    let cookie = |id: &str| json!({"idType": "COOKIE", "deviceId": id});
    let many: Vec<Value> = (0..1001).map(|i| cookie(&format!("d{i}"))).collect();
    x.bodies(
        "deletions",
        "POST",
        p,
        vec![
            ("devices.missing", json!({})),
            ("devices.not_array", json!({"devices": "x"})),
            ("devices.empty", json!({"devices": []})),
            ("devices.too_many", json!({"devices": many})),
            (
                "devices.idType_missing",
                json!({"devices": [{"deviceId": "a"}]}),
            ),
            (
                "devices.idType_unknown",
                json!({"devices": [{"idType": "IP", "deviceId": "a"}]}),
            ),
            (
                "devices.deviceId_missing",
                json!({"devices": [cookie("a"), {"idType": "MAID"}]}),
            ),
            ("devices.deviceId_empty", json!({"devices": [cookie("")]})),
            (
                "devices.deviceId_space",
                json!({"devices": [cookie("a b")]}),
            ),
            (
                "devices.deviceId_too_long",
                json!({"devices": [cookie(&"d".repeat(257))]}),
            ),
        ],
    )
    .await;
    let req = x.req("GET", "/privacy/deletions/0123456789abcdef");
    x.case("get_deletion.not_found", req).await;

    let acc = x.rig.account.account_id.clone();
    let ip = format!("/accounts/{acc}/identities");
    x.body_checks("identities", "POST", &ip, 6 * 1024 * 1024)
        .await;
    let many: Vec<Value> = (0..10_001).map(|_| json!({})).collect();
    let one = json!({"identities": [{"externalUserId": "u1", "email": "a@example.com"}]});
    let reauth = x.account_in(AccountStatus::ReauthorizationRequired).await;
    let cases = vec![
        ("identities.list.missing", x.with("POST", &ip, &json!({}))),
        (
            "identities.list.not_array",
            x.with("POST", &ip, &json!({"identities": 5})),
        ),
        (
            "identities.list.empty",
            x.with("POST", &ip, &json!({"identities": []})),
        ),
        (
            "identities.list.too_many",
            x.with("POST", &ip, &json!({"identities": many})),
        ),
        (
            "identities.account_unknown",
            x.with("POST", "/accounts/900000000000005/identities", &one),
        ),
        (
            "identities.account_reauthorization_required",
            x.with("POST", &format!("/accounts/{reauth}/identities"), &one),
        ),
        (
            "identities.account_not_digits",
            x.with("POST", "/accounts/abc/identities", &one),
        ),
    ];
    for (name, req) in cases {
        x.case(name, req).await;
    }
    let items = vec![
        ("item.not_object", json!(5)),
        ("item.empty_object", json!({})),
        (
            "item.externalUserId_invalid",
            json!({"externalUserId": "bad id!", "email": "a@example.com"}),
        ),
        (
            "item.externalUserId_wrong_type",
            json!({"externalUserId": 5, "email": "a@example.com"}),
        ),
        (
            "item.unknown_field",
            json!({"externalUserId": "u1", "ssn": "1", "email": "a@example.com"}),
        ),
        (
            "item.email_wrong_type",
            json!({"externalUserId": "u1", "email": 5}),
        ),
        ("item.no_fields", json!({"externalUserId": "u1"})),
        (
            "item.fields_normalise_to_nothing",
            json!({"externalUserId": "u1", "email": "  ", "phone": "--"}),
        ),
    ];
    let cases: Vec<(&str, Value)> = items
        .into_iter()
        .map(|(name, it)| (name, json!({"identities": [it]})))
        .collect();
    x.bodies("identities", "POST", &ip, cases).await;
}
