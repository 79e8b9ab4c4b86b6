//! `POST /accounts/{accountId}/identities` against the local stack (the sandbox implements
//! `POST /dp/records/hashed/` strictly: media types, 5 MB, 10 requests/s, field shapes): hashes
//! equal to the conversion code's, mixed raw and pre-hashed values, bodies split under 5 MB,
//! per-index field errors, parking and redrive of hashed records only, and no raw PII left in
//! logs, DynamoDB items or SQS messages.
//!
//! Run: `set -a; . .local/stack.env; set +a; cargo test -p adsync-tests --test identities`

use adsync::domain::conversion::matchkey::{KeyHasher, KeyType, KeyValue};
use adsync::export::identities::{handle, run_redrive};
use adsync::http::HttpResponse;
use adsync::runtime::Invocation;
use adsync_tests::privacy::{PrivacyRig, json_req};
use adsync_tests::sandbox::FaultSpec;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

async fn post(rig: &PrivacyRig, identities: Value) -> HttpResponse {
    let account = &rig.accounts[0].account_id;
    let path = format!("/accounts/{account}/identities");
    let r = handle(
        &rig.ctx,
        account,
        &json_req("POST", &path, &json!({"identities": identities})),
        &Invocation::with_timeout(60),
    )
    .await;
    adsync_tests::openapi::assert_http_response_valid("POST", &path, &r);
    r
}

/// What the conversion code sends for this value.
fn conv(kind: KeyType, v: &str) -> String {
    match KeyHasher::new().key_value(kind, v) {
        Some(KeyValue::Hashed(h)) => String::from_utf8_lossy(&h).into_owned(),
        other => panic!("{v:?} gave {other:?}"),
    }
}

fn sha(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

#[tokio::test]
async fn mixed_raw_and_prehashed_identities_reach_amazon_with_the_conversion_hashes() {
    let (logs, _guard) = adsync_tests::stack::capture_logs();
    let rig = PrivacyRig::new(1).await;
    let pre_phone = sha("15551234567").to_uppercase();
    let r = post(
        &rig,
        json!([
            {"externalUserId": "crm-1", "email": "  Jane.Doe+news@Example.COM ", "phone": pre_phone,
             "firstName": "Jane", "lastName": "O'Neil", "address": "1 Main St.", "city": "New York",
             "state": "NY", "postalCode": "SW1A 1AA"},
            {"externalUserId": "crm-2", "firstName": "José", "city": "São Paulo"},
            {"externalUserId": "bad id", "email": 5, "phone": "+1 555"},
            {"externalUserId": "crm-3", "fax": "123", "lastName": "!!"},
            {"externalUserId": "crm-4", "firstName": "--"},
        ]),
    )
    .await;
    assert_eq!(r.status, 207, "{}", r.body);
    let b = r.json_body();
    let status: Vec<&str> = b["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        status,
        ["accepted", "accepted", "rejected", "rejected", "rejected"]
    );
    let fields = |i: usize| -> Vec<String> {
        b["results"][i]["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(fields(2), ["externalUserId", "email"]);
    assert_eq!(fields(3), ["fax"]);
    assert_eq!(fields(4), ["identity", "firstName"]);

    let got = rig.hashed_records().await;
    let crm1 = &got["records"]["crm-1"][0];
    // The contract's normalisation, spelled out for ASCII values...
    assert_eq!(crm1["email"], sha("jane.doenews@example.com"));
    assert_eq!(
        crm1["phone"],
        sha("15551234567"),
        "pre-hashed: lowercased, not re-hashed"
    );
    assert_eq!(crm1["lastName"], sha("oneil"));
    assert_eq!(crm1["postalCode"], sha("sw1a1aa"));
    // ...and every value exactly what the conversion code gives (one implementation).
    for (k, kind, v) in [
        ("firstName", KeyType::FirstName, "Jane"),
        ("address", KeyType::Address, "1 Main St."),
        ("city", KeyType::City, "New York"),
        ("state", KeyType::State, "NY"),
    ] {
        assert_eq!(crm1[k], conv(kind, v), "{k}");
    }
    let crm2 = &got["records"]["crm-2"][0];
    assert_eq!(crm2["firstName"], conv(KeyType::FirstName, "José"));
    assert_eq!(crm2["city"], conv(KeyType::City, "São Paulo"));
    assert_eq!(crm2.as_object().unwrap().len(), 2, "absent fields omitted");
    assert!(got["records"].get("crm-3").is_none());

    let hits = rig
        .find_anywhere(
            &[
                "Jane.Doe",
                "jane.doe",
                "O'Neil",
                "Main St",
                "São Paulo",
                "Paulo",
                "15551234567",
            ],
            &logs.contents(),
        )
        .await;
    assert!(hits.is_empty(), "raw PII left behind: {hits:?}");
}

#[tokio::test]
async fn a_batch_over_5_mb_is_split_into_bodies_amazon_takes() {
    let rig = PrivacyRig::new(1).await;
    let ids: Vec<Value> = (0..10_000)
        .map(|i| {
            json!({"externalUserId": format!("u{i}"), "email": format!("user{i}@example.com"),
                   "phone": format!("+1555{i:07}"), "firstName": format!("First{i}"), "lastName": format!("Last{i}"),
                   "address": format!("{i} Long Street"), "city": "Springfield", "state": "IL", "postalCode": format!("{i:05}")})
        })
        .collect();
    let r = post(&rig, Value::Array(ids)).await;
    assert_eq!(r.status, 200, "{}", &r.body[..300.min(r.body.len())]);
    let b = r.json_body();
    assert_eq!(b["totals"]["accepted"], 10_000);
    let got = rig.hashed_records().await;
    let uploads = got["uploads"].as_array().unwrap();
    let total: u64 = uploads.iter().map(|u| u["bytes"].as_u64().unwrap()).sum();
    assert!(total > 6_000_000, "the batch is over 6 MB ({total} bytes)");
    assert!(uploads.len() >= 2, "{uploads:?}");
    for u in uploads {
        assert!(u["bytes"].as_u64().unwrap() <= 5_000_000, "{u}");
    }
    assert_eq!(
        uploads
            .iter()
            .map(|u| u["records"].as_u64().unwrap())
            .sum::<u64>(),
        10_000
    );
    assert_eq!(got["records"].as_object().unwrap().len(), 10_000);
}

#[tokio::test]
async fn records_amazon_cannot_take_are_parked_hashed_and_redriven() {
    let (logs, _guard) = adsync_tests::stack::capture_logs();
    let rig = PrivacyRig::new(1).await;
    let fault = rig
        .sandbox
        .add_fault(
            &FaultSpec::status(503)
                .forever()
                .path_prefix("/dp/records/hashed/")
                .client_id(rig.client_id()),
        )
        .await
        .unwrap();
    let email = format!("parked.{}@example.com", uuid::Uuid::new_v4().simple());
    let r = post(
        &rig,
        json!([{"externalUserId": "p-1", "email": email, "firstName": "Parkina"}]),
    )
    .await;
    assert_eq!(r.status, 207, "{}", r.body);
    assert_eq!(
        r.json_body()["results"][0]["status"],
        "parked",
        "{}",
        r.body
    );
    let hits = rig
        .find_anywhere(&[email.as_str(), "Parkina", "parkina"], &logs.contents())
        .await;
    assert!(hits.is_empty(), "raw PII left behind: {hits:?}");

    rig.sandbox.remove_fault(&fault).await.unwrap();
    let mut delivered = 0;
    for _ in 0..5 {
        let out = run_redrive(&rig.ctx, &Invocation::with_timeout(60))
            .await
            .unwrap();
        delivered += out["delivered"].as_u64().unwrap();
        if rig.hashed_records().await["records"].get("p-1").is_some() {
            break;
        }
    }
    assert!(delivered >= 1);
    let got = rig.hashed_records().await;
    assert_eq!(got["records"]["p-1"][0]["email"], sha(&email));
}

#[tokio::test]
async fn an_unknown_account_or_bad_body_is_refused_before_amazon() {
    let rig = PrivacyRig::new(1).await;
    let r = handle(
        &rig.ctx,
        "123",
        &json_req(
            "POST",
            "/accounts/123/identities",
            &json!({"identities": [{"externalUserId": "a", "email": "a@b.c"}]}),
        ),
        &Invocation::with_timeout(30),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = post(&rig, json!([])).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json_body()["error"]["field"], "identities");
}
