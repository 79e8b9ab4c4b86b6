//! Data Provider API: metadata validation, ids above 2^53, limits, membership.

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

/// Turns the 1 TPS metadata limit off for this (private, in-process) sandbox: the validation
/// tests send many calls in a row; the limit itself is tested in `metadata_one_tps`.
async fn no_metadata_limit(env: &Env) {
    env.admin
        .set_config(&SandboxConfig {
            metadata_tps: Some(0),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Breaks one field of a valid body.
type Mutation = Box<dyn Fn(&mut Value)>;

fn audience_body(c: &Caller, external: &str) -> Value {
    json!({
        "name": "Adsync segment Luxury Travelers",
        "description": "Adsync segment 42",
        "advertiserId": c.advertiser_id(),
        "metadata": {
            "type": "DATA_PROVIDER",
            "externalAudienceId": external,
            "ttl": 2592000,
            "dataSourceCountry": ["US"],
            "audienceFees": [{"cpmCents": 150, "currency": "USD"}]
        }
    })
}

async fn create(env: &Env, c: &Caller, body: &Value) -> (u16, String) {
    let r = env
        .dp(
            Method::POST,
            "/v2/dp/audiencemetadata/",
            c,
            body.to_string(),
        )
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The audience id exactly as the JSON text carries it.
fn raw_id(text: &str) -> i64 {
    let at = text.find("\"id\":").expect("id") + 5;
    let digits: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().unwrap()
}

fn first_error(text: &str) -> (String, Option<String>, String) {
    let v: Value = serde_json::from_str(text).unwrap();
    let e = &v["error"]["errors"][0];
    (
        e["errorType"].as_str().unwrap().to_string(),
        e["fieldName"].as_str().map(str::to_string),
        e["message"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn create_validates_every_field() {
    let env = start().await;
    no_metadata_limit(&env).await;
    let c = env.caller(1).await;
    let good = audience_body(&c, "seg-1");

    let cases: Vec<(&str, Mutation)> = vec![
        ("name", Box::new(|v| v["name"] = json!("too short"))),
        ("name", Box::new(|v| v["name"] = json!("x".repeat(129)))),
        (
            "description",
            Box::new(|v| v["description"] = json!("d".repeat(1001))),
        ),
        (
            "description",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("description");
            }),
        ),
        (
            "advertiserId",
            Box::new(|v| {
                let a = v["advertiserId"].as_i64().unwrap();
                v["advertiserId"] = json!(a.to_string())
            }),
        ),
        (
            "advertiserId",
            Box::new(|v| {
                let a = v["advertiserId"].as_i64().unwrap();
                v["advertiserId"] = json!(a as f64 + 0.5)
            }),
        ),
        (
            "metadata.type",
            Box::new(|v| v["metadata"]["type"] = json!("FIRST_PARTY")),
        ),
        (
            "metadata.externalAudienceId",
            Box::new(|v| v["metadata"]["externalAudienceId"] = json!("")),
        ),
        (
            "metadata.ttl",
            Box::new(|v| v["metadata"]["ttl"] = json!(34_300_801)),
        ),
        (
            "metadata.ttl",
            Box::new(|v| v["metadata"]["ttl"] = json!(-1)),
        ),
        (
            "metadata.dataSourceCountry",
            Box::new(|v| v["metadata"]["dataSourceCountry"] = json!([])),
        ),
        (
            "metadata.dataSourceCountry",
            Box::new(|v| v["metadata"]["dataSourceCountry"] = json!(["USA"])),
        ),
        (
            "metadata.audienceFees[0].currency",
            Box::new(|v| v["metadata"]["audienceFees"][0]["currency"] = json!("XXX")),
        ),
        (
            "metadata.audienceFees[0].cpmCents",
            Box::new(|v| v["metadata"]["audienceFees"][0]["cpmCents"] = json!(1.5)),
        ),
        (
            "metadata.audienceSize",
            Box::new(|v| v["metadata"]["audienceSize"] = json!({})),
        ),
        (
            "destinationCategories",
            Box::new(|v| v["destinationCategories"] = json!([])),
        ),
    ];
    for (field, mutate) in cases {
        let mut body = good.clone();
        mutate(&mut body);
        let (status, text) = create(&env, &c, &body).await;
        assert_eq!(status, 400, "{field}: {text}");
        let (kind, f, _) = first_error(&text);
        assert_eq!(kind, "INVALID_INPUT");
        assert_eq!(f.as_deref(), Some(field), "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["httpStatusCode"], "400");
        assert!(v["requestId"].is_string());
    }

    // Fee currency must be the advertiser's (USD here).
    let mut body = good.clone();
    body["metadata"]["audienceFees"][0]["currency"] = json!("EUR");
    let (status, text) = create(&env, &c, &body).await;
    assert_eq!(status, 400);
    assert_eq!(
        first_error(&text).1.as_deref(),
        Some("metadata.audienceFees[0].currency")
    );

    // An advertiser outside the scope profile.
    let other = env.caller(1).await;
    let mut body = good.clone();
    body["advertiserId"] = json!(other.advertiser_id());
    let (status, text) = create(&env, &c, &body).await;
    assert_eq!(status, 401);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["error"]["description"],
        "No matching advertiser found for scope"
    );

    // Without the trailing slash the route does not exist.
    let r = env
        .dp(
            Method::POST,
            "/v2/dp/audiencemetadata",
            &c,
            good.to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Content-Type is required.
    let r = env
        .ads(Method::POST, "/v2/dp/audiencemetadata/", &c)
        .body(good.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    // Scope header rules apply here too.
    let r = env
        .http
        .post(env.url("/v2/dp/audiencemetadata/"))
        .bearer_auth(&c.access)
        .header("Amazon-Advertising-API-ClientId", c.client_id())
        .header("Content-Type", "application/json")
        .body(good.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn ids_above_2_pow_53_survive_and_create_is_idempotent() {
    let env = start().await;
    no_metadata_limit(&env).await;
    let c = env.caller(1).await;
    let (status, text) = create(&env, &c, &audience_body(&c, "seg-big")).await;
    assert_eq!(status, 200, "{text}");
    let id = raw_id(&text);
    assert!(id > (1i64 << 53), "{id}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["audience"]["advertiserId"].as_i64(),
        Some(c.advertiser_id())
    );
    assert_eq!(v["audience"]["metadata"]["externalAudienceId"], "seg-big");

    // A second create for the same externalAudienceId returns the same audience.
    let (status, text2) = create(&env, &c, &audience_body(&c, "seg-big")).await;
    assert_eq!(status, 200);
    assert_eq!(raw_id(&text2), id);
    let (_, text3) = create(&env, &c, &audience_body(&c, "seg-other")).await;
    assert_eq!(raw_id(&text3), id + 1);
    assert_eq!(
        env.admin.audiences(c.advertiser_id()).await.unwrap().len(),
        2
    );

    // GET by the exact id; a neighbouring id (what f64 rounding would give) is unknown.
    let r = env
        .ads(Method::GET, &format!("/v2/dp/audiencemetadata/{id}"), &c)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert_eq!(raw_id(&text), id);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["audience"]["metadata"]["audienceSize"]["matchedRecordSize"],
        0
    );
    let rounded = (id as f64) as i64;
    assert_ne!(rounded, id, "the id must not survive an f64 round trip");
    let r = env
        .ads(
            Method::GET,
            &format!("/v2/dp/audiencemetadata/{rounded}"),
            &c,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn update_rules_and_ownership() {
    let env = start().await;
    no_metadata_limit(&env).await;
    let c = env.caller(1).await;
    let (_, text) = create(&env, &c, &audience_body(&c, "seg-u")).await;
    let id = raw_id(&text);
    let path = format!("/v2/dp/audiencemetadata/{id}");

    let r = env
        .dp(
            Method::PUT,
            &path,
            &c,
            json!({"name": "A brand new name", "description": "x"}).to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (kind, field, message) = first_error(&r.text().await.unwrap());
    assert_eq!(
        (kind.as_str(), field.as_deref()),
        ("INVALID_INPUT", Some("name"))
    );
    assert_eq!(message, "The input field 'name' cannot be updated");

    let r = env
        .dp(
            Method::PUT,
            &path,
            &c,
            json!({"description": "x", "metadata": {"audienceFees": [{"cpmCents": 100, "currency": "GBP"}]}}).to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        first_error(&r.text().await.unwrap()).1.as_deref(),
        Some("metadata.audienceFees[0].currency")
    );

    let r = env
        .dp(
            Method::PUT,
            &path,
            &c,
            json!({"description": "new words", "metadata": {"ttl": 86400, "dataSourceCountry": ["US", "CA"],
                   "audienceFees": [{"cpmCents": 250, "currency": "USD"}]}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert_eq!(raw_id(&text), id);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["audience"]["description"], "new words");
    assert_eq!(v["audience"]["name"], "Adsync segment Luxury Travelers");
    assert_eq!(v["audience"]["metadata"]["ttl"], 86400);
    assert_eq!(
        v["audience"]["metadata"]["audienceFees"][0]["cpmCents"],
        250
    );

    // Unknown id → 404.
    let r = env
        .dp(
            Method::PUT,
            &format!("/v2/dp/audiencemetadata/{}", id + 1000),
            &c,
            json!({"description": "x"}).to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Another client (same user, so the scope is fine) → 403.
    let client2 = env.admin.new_client().await.unwrap();
    let rt = env
        .admin
        .refresh_token(&c.login.user.user_id, &client2.client_id)
        .await
        .unwrap();
    let access = env.access_token(&client2, &rt).await;
    let mut login2 = c.login.clone();
    login2.client = client2;
    let c2 = Caller {
        login: login2,
        access,
    };
    let r = env.ads(Method::GET, &path, &c2).send().await.unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn metadata_one_tps() {
    let env = start().await;
    let c = env.caller(1).await;
    let (status, text) = create(&env, &c, &audience_body(&c, "seg-tps")).await;
    assert_eq!(status, 200);
    let id = raw_id(&text);
    let path = format!("/v2/dp/audiencemetadata/{id}");
    let r = env.ads(Method::GET, &path, &c).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["httpStatusCode"], "429");
    assert_eq!(v["error"]["errors"][0]["errorType"], "TOO_MANY_REQUESTS");

    // Other clients are not affected.
    let other = env.caller(1).await;
    let (status, _) = create(&env, &other, &audience_body(&other, "seg-x")).await;
    assert_eq!(status, 200);

    tokio::time::sleep(Duration::from_millis(1000)).await;
    let r = env.ads(Method::GET, &path, &c).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

fn patch(op: &str, record: &str, ids: &[i64]) -> Value {
    json!({"op": op, "path": format!("/{record}/audiences"), "value": ids})
}

async fn send_patch(env: &Env, c: &Caller, body: String) -> reqwest::Response {
    env.dp(Method::PATCH, "/v2/dp/audience", c, body)
        .send()
        .await
        .unwrap()
}

async fn two_audiences(env: &Env, c: &Caller) -> (i64, i64) {
    no_metadata_limit(env).await;
    let (_, a) = create(env, c, &audience_body(c, "seg-a")).await;
    let (_, b) = create(env, c, &audience_body(c, "seg-b")).await;
    (raw_id(&a), raw_id(&b))
}

#[tokio::test]
async fn membership_add_remove_and_validation() {
    let env = start().await;
    let c = env.caller(1).await;
    let (a, b) = two_audiences(&env, &c).await;

    let body = json!({"patches": [
        patch("add", "COOKIE-c1", &[a, b]),
        patch("add", "MAID-m1", &[a]),
        {"op": "add", "path": "/EXTERNAL_USER_ID-u_1/audiences", "value": [b],
         "consent": {"consentType": "Amazon", "amazonConsent": {"amazonAdStorage": "GRANTED", "amazonUserData": "DENIED"}}},
        {"op": "add", "path": "/COOKIE-c2/audiences", "value": [a], "consent": {"consentType": "TCF", "tcf": "CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA"}},
        {"op": "add", "path": "/COOKIE-c3/audiences", "value": [a], "consent": {"consentType": "GPP", "gpp": "DBABMA~CPXxRfAPXxRfAAfKABENB"}},
        patch("remove", "COOKIE-c3", &[a]),
    ]});
    let r = send_patch(&env, &c, body.to_string()).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["jobId"].is_string() && v["requestId"].is_string());
    assert_eq!(
        env.admin.members(a).await.unwrap(),
        ["COOKIE-c1", "COOKIE-c2", "MAID-m1"]
    );
    assert_eq!(
        env.admin.members(b).await.unwrap(),
        ["COOKIE-c1", "EXTERNAL_USER_ID-u_1"]
    );

    let r = send_patch(
        &env,
        &c,
        json!({"patches": [patch("remove", "COOKIE-c1", &[a, b])]}).to_string(),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        env.admin.members(b).await.unwrap(),
        ["EXTERNAL_USER_ID-u_1"]
    );

    // audienceSize reflects the current members.
    let v: Value = env
        .ads(Method::GET, &format!("/v2/dp/audiencemetadata/{a}"), &c)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let size = &v["audience"]["metadata"]["audienceSize"];
    assert_eq!(size["matchedRecordSize"], 2);
    assert_eq!(size["receivedRecordSize"], 4);

    // Each bad patch is named by its index, and nothing of the body is applied.
    let other = env.caller(1).await;
    no_metadata_limit(&env).await;
    let (_, t) = create(&env, &other, &audience_body(&other, "seg-o")).await;
    let foreign = raw_id(&t);
    let bad: Vec<(Value, &str)> = vec![
        (
            json!({"op": "replace", "path": "/COOKIE-z/audiences", "value": [a]}),
            "patches[1].op",
        ),
        (
            json!({"op": "add", "path": "/IDFA-z/audiences", "value": [a]}),
            "patches[1].path",
        ),
        (
            json!({"op": "add", "path": "/COOKIE-/audiences", "value": [a]}),
            "patches[1].path",
        ),
        (
            json!({"op": "add", "path": "/COOKIE-z", "value": [a]}),
            "patches[1].path",
        ),
        (
            json!({"op": "add", "path": "/COOKIE-z/audiences", "value": []}),
            "patches[1].value",
        ),
        (
            json!({"op": "add", "path": "/COOKIE-z/audiences", "value": [a.to_string()]}),
            "patches[1].value",
        ),
        (
            json!({"op": "add", "path": "/COOKIE-z/audiences", "value": [a + 999]}),
            "patches[1].value",
        ),
        (
            json!({"op": "add", "path": "/COOKIE-z/audiences", "value": [foreign]}),
            "patches[1].value",
        ),
        (
            json!({"op": "add", "path": "/COOKIE-z/audiences", "value": [a], "consent": {"consentType": "TCF"}}),
            "patches[1].consent",
        ),
        (
            json!({"op": "add", "path": "/COOKIE-z/audiences", "value": [a], "consent": {"consentType": "Amazon", "amazonConsent": {"amazonAdStorage": "YES", "amazonUserData": "GRANTED"}}}),
            "patches[1].consent",
        ),
        (
            json!({"op": "add", "path": "/COOKIE-z/audiences", "value": [a], "extra": 1}),
            "patches[1].extra",
        ),
    ];
    for (p, field) in bad {
        let body = json!({"patches": [patch("add", "COOKIE-first", &[a]), p]});
        let r = send_patch(&env, &c, body.to_string()).await;
        assert_eq!(r.status(), 400, "{field}");
        let text = r.text().await.unwrap();
        let (kind, f, message) = first_error(&text);
        assert_eq!(kind, "INVALID_INPUT");
        assert_eq!(f.as_deref(), Some(field), "{text}");
        assert!(message.contains("Patch 1"), "{message}");
    }
    assert!(
        !env.admin
            .members(a)
            .await
            .unwrap()
            .contains(&"COOKIE-first".to_string())
    );
}

#[tokio::test]
async fn patch_size_limits() {
    let env = start().await;
    let c = env.caller(1).await;
    let (a, _) = two_audiences(&env, &c).await;

    let many: Vec<Value> = (0..2001)
        .map(|i| patch("add", &format!("COOKIE-{i}"), &[a]))
        .collect();
    let r = send_patch(&env, &c, json!({"patches": many}).to_string()).await;
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["errors"][0]["errorType"], "INPUT_TOO_LARGE");

    // 2000 patches in under 1 MB are fine.
    let ok: Vec<Value> = (0..2000)
        .map(|i| patch("add", &format!("COOKIE-{i:036}"), &[a]))
        .collect();
    let body = json!({"patches": ok}).to_string();
    assert!(body.len() < 1_000_000);
    let r = send_patch(&env, &c, body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(env.admin.members(a).await.unwrap().len(), 2000);

    // Over 1 MB (few patches, long ids).
    let big: Vec<Value> = (0..1900)
        .map(|i| patch("add", &format!("COOKIE-{i}{}", "x".repeat(500)), &[a]))
        .collect();
    let body = json!({"patches": big}).to_string();
    assert!(body.len() > 1_000_000);
    let r = send_patch(&env, &c, body).await;
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["error"]["errors"][0]["message"],
        "The input payload exceeds 1MB limit."
    );
    assert_eq!(env.admin.members(a).await.unwrap().len(), 2000);
}

#[tokio::test]
async fn patch_hundred_tps() {
    let env = start().await;
    let c = env.caller(1).await;
    let (a, _) = two_audiences(&env, &c).await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..110 {
        let req = env.dp(
            Method::PATCH,
            "/v2/dp/audience",
            &c,
            json!({"patches": [patch("add", &format!("COOKIE-t{i}"), &[a])]}).to_string(),
        );
        set.spawn(async move {
            let r = req.send().await.unwrap();
            (
                r.status().as_u16(),
                r.headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string()),
            )
        });
    }
    let mut ok = 0;
    let mut throttled = 0;
    while let Some(res) = set.join_next().await {
        match res.unwrap() {
            (200, _) => ok += 1,
            (429, retry) => {
                assert_eq!(retry.as_deref(), Some("1"));
                throttled += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((ok, throttled), (100, 10));
    assert_eq!(env.admin.members(a).await.unwrap().len(), 100);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let r = send_patch(
        &env,
        &c,
        json!({"patches": [patch("add", "COOKIE-late", &[a])]}).to_string(),
    )
    .await;
    assert_eq!(r.status(), 200);
}
