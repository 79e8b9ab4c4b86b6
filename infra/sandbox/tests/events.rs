//! Events API: strict per-event validation mapped to the right index, limits, storage.

mod common;

use chrono::{Duration, SecondsFormat, Utc};
use common::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn sha(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn at(offset: Duration) -> String {
    (Utc::now() + offset).to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn signup(id: &str) -> Value {
    json!({
        "eventDescription": {"name": "Newsletter_Signup", "conversionType": "SIGN_UP",
                             "eventSource": "WEBSITE", "eventIngestionMethod": "SERVER_TO_SERVER"},
        "eventTime": at(Duration::minutes(-10)),
        "countryCode": "US",
        "eventId": id,
        "matchKeys": [{"type": "EMAIL", "values": [sha("jane.doe@example.com")]}]
    })
}

fn purchase() -> Value {
    json!({
        "eventDescription": {"name": "Website_Purchase", "conversionType": "OFF_AMAZON_PURCHASES",
                             "eventSource": "WEBSITE", "eventIngestionMethod": "SERVER_TO_SERVER",
                             "dataSetName": "Web_Orders"},
        "eventTime": at(Duration::days(-20)),
        "countryCode": "DE",
        "eventId": "order-100045",
        "value": 59.99,
        "currencyCode": "EUR",
        "unitsSold": 2,
        "matchKeys": [
            {"type": "EMAIL", "values": [sha("jane.doe@example.com")]},
            {"type": "PHONE", "values": [sha("15551234567")]},
            {"type": "MATCH_ID", "values": ["loyalty12345"]}
        ],
        "consent": {"geo": {"ipAddress": "203.0.113.7"},
                    "amazonConsent": {"amznUserData": "GRANTED", "amznAdStorage": "DENIED"}},
        "customData": [{"name": "brand", "dataType": "STRING", "value": "acme"},
                       {"name": "margin_cents", "dataType": "INTEGER", "value": "1250"}],
        "deviceInfo": {"userAgent": "Mozilla/5.0 (X11; Linux x86_64)"},
        "dataProcessingOptions": {"options": "LIMITED_DATA_USE"}
    })
}

async fn send(env: &Env, c: &Caller, events: Vec<Value>) -> (u16, Value) {
    let r = env
        .events(c, json!({"events": events}).to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn valid_events_are_accepted_and_kept() {
    let env = start().await;
    let c = env.caller(1).await;
    let (status, v) = send(&env, &c, vec![purchase(), signup("s-1"), signup("s-1")]).await;
    assert_eq!(status, 207, "{v}");
    assert_eq!(v["error"].as_array().unwrap().len(), 0, "{v}");
    let idx: Vec<i64> = v["success"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["index"].as_i64().unwrap())
        .collect();
    assert_eq!(idx, [0, 1, 2]);
    assert_eq!(v["success"][0]["event"]["eventId"], "order-100045");

    let dump = env.admin.events(c.advertiser_id()).await.unwrap();
    assert_eq!(dump.events.len(), 3);
    assert_eq!(dump.counts_by_event_id["s-1"], 2);
    assert_eq!(dump.counts_by_event_id["order-100045"], 1);
    assert_eq!(dump.events[0], purchase_without_time(&dump.events[0]));
}

/// The stored event equals what was sent (time aside, which moves with the clock).
fn purchase_without_time(stored: &Value) -> Value {
    let mut p = purchase();
    p["eventTime"] = stored["eventTime"].clone();
    p
}

#[tokio::test]
async fn every_rule_is_enforced_at_the_right_index() {
    let env = start().await;
    let c = env.caller(1).await;
    let mut cases: Vec<(Value, &str)> = Vec::new();
    let mut with = |f: &dyn Fn(&mut Value), loc: &'static str| {
        let mut e = signup("x");
        f(&mut e);
        cases.push((e, loc));
    };
    with(
        &|e| {
            e["eventDescription"]
                .as_object_mut()
                .unwrap()
                .remove("conversionType");
        },
        "eventDescription.conversionType",
    );
    with(
        &|e| e["eventDescription"]["conversionType"] = json!("PURCHASE"),
        "eventDescription.conversionType",
    );
    with(
        &|e| e["eventDescription"]["eventSource"] = json!("MEASUREMENT_PARTNER"),
        "eventDescription.eventSource",
    );
    with(
        &|e| e["eventDescription"]["eventIngestionMethod"] = json!("BATCH"),
        "eventDescription.eventIngestionMethod",
    );
    with(
        &|e| e["eventDescription"]["dataSetName"] = json!("1orders"),
        "eventDescription.dataSetName",
    );
    with(
        &|e| {
            e["eventDescription"]
                .as_object_mut()
                .unwrap()
                .remove("name");
        },
        "eventDescription.name",
    );
    with(&|e| e["eventTime"] = json!("2026-08-20 14:16"), "eventTime");
    with(
        &|e| e["eventTime"] = json!(at(Duration::days(-22))),
        "eventTime",
    );
    with(
        &|e| e["eventTime"] = json!(at(Duration::minutes(10))),
        "eventTime",
    );
    with(&|e| e["countryCode"] = json!("UK"), "countryCode");
    with(&|e| e["matchKeys"] = json!([]), "matchKeys");
    with(
        &|e| {
            let keys: Vec<Value> = (0..16)
                .map(|i| json!({"type": "MAID", "values": [format!("m{i}")]}))
                .collect();
            e["matchKeys"] = json!(keys);
        },
        "matchKeys",
    );
    with(
        &|e| {
            e["matchKeys"] =
                json!([{"type": "MAID", "values": ["a"]}, {"type": "MAID", "values": ["b"]}])
        },
        "matchKeys[1].type",
    );
    with(
        &|e| e["matchKeys"] = json!([{"type": "EMAIL", "values": [sha("a"), sha("b")]}]),
        "matchKeys[0].values",
    );
    with(
        &|e| e["matchKeys"] = json!([{"type": "EMAIL", "values": [sha("a").to_uppercase()]}]),
        "matchKeys[0].values[0]",
    );
    with(
        &|e| e["matchKeys"] = json!([{"type": "EMAIL", "values": ["jane.doe@example.com"]}]),
        "matchKeys[0].values[0]",
    );
    with(
        &|e| e["matchKeys"] = json!([{"type": "MAID", "values": [""]}]),
        "matchKeys[0].values[0]",
    );
    with(
        &|e| e["matchKeys"] = json!([{"type": "IDFA", "values": ["x"]}]),
        "matchKeys[0].type",
    );
    with(&|e| e["value"] = json!(1.234), "value");
    with(&|e| e["currencyCode"] = json!("USD"), "currencyCode");
    with(&|e| e["unitsSold"] = json!(1), "unitsSold");
    with(
        &|e| e["dataProcessingOptions"] = json!(["LIMITED_DATA_USE"]),
        "dataProcessingOptions",
    );
    with(&|e| e["countryCode"] = json!("DE"), "consent");
    with(
        &|e| {
            e["countryCode"] = json!("GB");
            e["consent"] = json!({});
        },
        "consent",
    );
    with(
        &|e| e["consent"] = json!({"amazonConsent": {"amznUserData": "YES"}}),
        "consent.amazonConsent.amznUserData",
    );
    with(
        &|e| {
            let items: Vec<Value> = (0..14)
                .map(|i| json!({"name": format!("attr{i}"), "value": "v"}))
                .collect();
            e["customData"] = json!(items);
        },
        "customData",
    );
    with(
        &|e| e["customData"] = json!([{"name": "price", "value": "49.99"}]),
        "customData[0].value",
    );
    with(&|e| e["clientDedupeId"] = json!("x"), "clientDedupeId");
    with(&|e| e["eventId"] = json!(""), "eventId");

    // Put a valid event first and between, so indexes are not simply 0..n.
    let mut events = vec![signup("ok-0")];
    let mut expected = Vec::new();
    for (e, loc) in &cases {
        expected.push((events.len(), *loc));
        events.push(e.clone());
    }
    events.push(signup("ok-last"));
    let (status, v) = send(&env, &c, events.clone()).await;
    assert_eq!(status, 207);

    let mut seen = vec![0; events.len()];
    for s in v["success"].as_array().unwrap() {
        seen[s["index"].as_u64().unwrap() as usize] += 1;
    }
    for e in v["error"].as_array().unwrap() {
        seen[e["index"].as_u64().unwrap() as usize] += 1;
    }
    assert!(
        seen.iter().all(|n| *n == 1),
        "every index exactly once: {seen:?}"
    );
    let ok: Vec<u64> = v["success"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["index"].as_u64().unwrap())
        .collect();
    assert_eq!(ok, [0, events.len() as u64 - 1]);

    for (index, loc) in expected {
        let entry = v["error"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["index"] == index)
            .unwrap_or_else(|| panic!("event {index} ({loc}) was accepted"));
        let want = format!("events[{index}].{loc}");
        let locations: Vec<&str> = entry["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["fieldLocation"].as_str().unwrap())
            .collect();
        assert!(
            locations.contains(&want.as_str()),
            "{want} not in {locations:?}"
        );
        for e in entry["errors"].as_array().unwrap() {
            assert!(e["code"].is_string() && e["message"].is_string());
        }
    }
    let dump = env.admin.events(c.advertiser_id()).await.unwrap();
    assert_eq!(dump.events.len(), 2, "only the valid events are kept");
}

#[tokio::test]
async fn batch_limits_and_headers() {
    let env = start().await;
    let c = env.caller(1).await;
    let (status, v) = send(&env, &c, vec![]).await;
    assert_eq!((status, v["code"].as_str()), (400, Some("BAD_REQUEST")));
    let many: Vec<Value> = (0..501).map(|i| signup(&format!("e{i}"))).collect();
    let (status, v) = send(&env, &c, many).await;
    assert_eq!((status, v["code"].as_str()), (400, Some("BAD_REQUEST")));
    assert!(
        env.admin
            .events(c.advertiser_id())
            .await
            .unwrap()
            .events
            .is_empty()
    );
    let full: Vec<Value> = (0..500).map(|i| signup(&format!("e{i}"))).collect();
    let (status, v) = send(&env, &c, full).await;
    assert_eq!(status, 207);
    assert_eq!(v["success"].as_array().unwrap().len(), 500);

    // Unknown top-level field.
    let r = env
        .events(
            &c,
            json!({"events": [signup("a")], "ingestionMethod": "SERVER_TO_SERVER"}).to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // An account the user cannot reach.
    let other = env.caller(1).await;
    let r = env
        .events_for(
            &c,
            other.advertiser_id(),
            json!({"events": [signup("a")]}).to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "FORBIDDEN");

    // The classic ClientId header is not the Events API's.
    let r = env
        .http
        .post(env.url("/adsApi/v1/create/events"))
        .bearer_auth(&c.access)
        .header("Amazon-Advertising-API-ClientId", c.client_id())
        .header("Amazon-Ads-AccountId", c.advertiser_id().to_string())
        .header("Content-Type", "application/json")
        .body(json!({"events": [signup("a")]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Content-Type is required.
    let r = env
        .http
        .post(env.url("/adsApi/v1/create/events"))
        .bearer_auth(&c.access)
        .header("Amazon-Ads-ClientId", c.client_id())
        .header("Amazon-Ads-AccountId", c.advertiser_id().to_string())
        .body(json!({"events": [signup("a")]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
}
