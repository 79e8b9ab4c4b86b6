//! `PATCH /v2/dp/users` and `POST /dp/records/hashed/`: body shapes, limits, media types,
//! rates, and what they do to audiences.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

const MEDIA: &str = "application/vnd.dpuploadhashedrecordsrequest.v3+json";
const H: &str = "0000000000000000000000000000000000000000000000000000000000000abc";

fn deletion(c: &Caller, users: &[(&str, &str)]) -> Value {
    json!({"operation": "DELETE", "users": users.iter().map(|(t, v)| json!({
        "userId": {"type": t, "value": v}, "advertiserId": c.advertiser_id().to_string(),
        "consentTime": 1_764_000_000_000_i64})).collect::<Vec<_>>()})
}

async fn delete_users(env: &Env, c: &Caller, body: &Value) -> (u16, Value) {
    let r = env
        .dp(Method::PATCH, "/v2/dp/users", c, body.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn user_deletion_removes_the_user_from_the_advertisers_audiences_and_checks_the_body() {
    let env = start().await;
    env.admin
        .set_config(&SandboxConfig {
            metadata_tps: Some(0),
            ..Default::default()
        })
        .await
        .unwrap();
    let c = env.caller(1).await;
    let body = json!({"name": "Adsync segment privacy test", "description": "d", "advertiserId": c.advertiser_id(),
        "metadata": {"type": "DATA_PROVIDER", "externalAudienceId": "p1", "ttl": 1000, "dataSourceCountry": ["US"]}});
    let r = env
        .dp(
            Method::POST,
            "/v2/dp/audiencemetadata/",
            &c,
            body.to_string(),
        )
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let id = v["audience"]["id"].as_i64().unwrap();
    let add = json!({"patches": [{"op": "add", "path": "/MAID-m1/audiences", "value": [id]},
                                  {"op": "add", "path": "/MAID-m2/audiences", "value": [id]}]});
    let r = env
        .dp(Method::PATCH, "/v2/dp/audience", &c, add.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let (status, v) = delete_users(&env, &c, &deletion(&c, &[("MAID", "m1")])).await;
    assert_eq!(status, 202, "{v}");
    assert!(v["requestId"].is_string());
    assert_eq!(env.admin.members(id).await.unwrap(), ["MAID-m2"]);

    let mut numeric = deletion(&c, &[("MAID", "m2")]);
    numeric["users"][0]["advertiserId"] = json!(c.advertiser_id());
    let mut seconds = deletion(&c, &[("MAID", "m2")]);
    seconds["users"][0]["consentTime"] = json!(1_764_000_000);
    let mut other = deletion(&c, &[("MAID", "m2")]);
    other["users"][0]["advertiserId"] = json!("1");
    let too_many: Vec<(&str, &str)> = vec![("MAID", "x"); 1001];
    for (bad, field) in [
        (json!({"operation": "ADD", "users": []}), "operation"),
        (deletion(&c, &[("IDFA", "m2")]), "users[0].userId.type"),
        (numeric, "users[0].advertiserId"),
        (seconds, "users[0].consentTime"),
        (other, "users[0].advertiserId"),
        (deletion(&c, &too_many), "users"),
    ] {
        let (status, v) = delete_users(&env, &c, &bad).await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert_eq!(v["error"]["errors"][0]["fieldName"], field, "{v}");
    }
    assert_eq!(env.admin.members(id).await.unwrap(), ["MAID-m2"]);
    let r = env
        .ads(Method::PATCH, "/v2/dp/users", &c)
        .header("Content-Type", "text/plain")
        .body(deletion(&c, &[("MAID", "m2")]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
}

async fn records(env: &Env, c: &Caller, ct: &str, body: String) -> (u16, Value) {
    let r = env
        .ads(Method::POST, "/dp/records/hashed/", c)
        .header("Content-Type", ct)
        .header("Accept", MEDIA)
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn hashed_records_are_checked_strictly() {
    let env = start().await;
    let c = env.caller(1).await;
    let ok = json!({"records": [{"externalId": "crm_1-a", "hashedRecords": [{"email": H, "postalCode": H}]}]});
    let (status, v) = records(&env, &c, MEDIA, ok.to_string()).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["requestId"].is_string());
    let (status, v) = records(&env, &c, "application/json", ok.to_string()).await;
    assert_eq!(status, 415, "{v}");
    assert!(v["errorMessage"].as_str().unwrap().contains(MEDIA));
    for bad in [
        json!({"records": []}),
        json!({"records": [{"externalId": "has space", "hashedRecords": [{"email": H}]}]}),
        json!({"records": [{"externalId": "a", "hashedRecords": [{"email": "plain@example.com"}]}]}),
        json!({"records": [{"externalId": "a", "hashedRecords": [{"email": H.to_uppercase()}]}]}),
        json!({"records": [{"externalId": "a", "hashedRecords": [{"maid": H}]}]}),
        json!({"records": [{"externalId": "a", "hashedRecords": []}]}),
    ] {
        let (status, v) = records(&env, &c, MEDIA, bad.to_string()).await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert!(v["errorMessage"].is_string(), "{v}");
    }
    let big = format!(
        "{{\"records\":[{{\"externalId\":\"a\",\"hashedRecords\":[{{\"email\":\"{H}\"}}]}}],\"pad\":\"{}\"}}",
        "x".repeat(5_000_001)
    );
    let (status, _) = records(&env, &c, MEDIA, big).await;
    assert_eq!(status, 413);
    // 10 requests/s per client: the next one in the same second is throttled.
    let mut throttled = false;
    for _ in 0..12 {
        let (status, _) = records(&env, &c, MEDIA, ok.to_string()).await;
        if status == 429 {
            throttled = true;
            break;
        }
    }
    assert!(throttled, "more than 10 requests/s must be refused");
}
