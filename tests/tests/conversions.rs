//! Conversion ingest end to end: the real handler against DynamoDB Local, moto (SQS, Secrets
//! Manager) and the Amazon sandbox. Every test has its own sandbox advertiser, account and parked
//! queue. Run with the stack up: `set -a; . .local/stack.env; set +a; cargo test -p adsync-tests
//! --test conversions`.

use adsync::domain::conversion::matchkey::sha256_hex;
use adsync::http::HttpRequest;
use adsync::runtime::{Handler, Invocation};
use adsync::store::accounts::AccountStatus;
use adsync::store::dedupe::{ClaimStatus, DedupeKey};
use adsync_tests::conversions::{IngestFixture, purchase};
use adsync_tests::sandbox::FaultSpec;
use serde_json::{Value, json};

const EVENTS_PATH: &str = "/adsApi/v1/create/events";

fn hex(s: &str) -> String {
    String::from_utf8(sha256_hex(s.as_bytes()).to_vec()).unwrap()
}

fn statuses(body: &Value) -> Vec<String> {
    body["results"]
        .as_array()
        .expect("results")
        .iter()
        .enumerate()
        .map(|(i, r)| {
            assert_eq!(r["index"], i, "results are in input order: {r}");
            r["status"].as_str().unwrap().to_string()
        })
        .collect()
}

async fn sent(f: &IngestFixture) -> adsync_tests::sandbox::EventsDump {
    f.login
        .sandbox
        .events(f.advertiser_id())
        .await
        .expect("sandbox events")
}

async fn events_requests(f: &IngestFixture) -> Vec<u16> {
    let mut r = f
        .login
        .sandbox
        .requests(Some(f.login.client_id()), Some(EVENTS_PATH))
        .await
        .expect("sandbox requests");
    r.sort_by_key(|r| r.at_ms);
    r.into_iter().map(|r| r.status).collect()
}

#[tokio::test]
async fn mixed_batch_valid_invalid_and_duplicates() {
    let f = IngestFixture::new().await;
    let first = f.post(&json!({"events": [purchase("m", 1)]})).await;
    assert_eq!(first.status, 200, "{}", first.body);

    let mut invalid = purchase("m", 2);
    invalid["timestamp"] = json!("last tuesday");
    let mut no_id = purchase("m", 3);
    no_id.as_object_mut().unwrap().remove("clientDedupeId");
    let body = json!({"events": [
        purchase("m", 10),            // 0 valid
        invalid,                      // 1 invalid
        purchase("m", 10),            // 2 duplicate within the request
        purchase("m", 1),             // 3 duplicate of the earlier request
        no_id,                        // 4 valid, not deduplicated
        {"name": "x"},                // 5 invalid: many fields missing
        "not an event",               // 6 invalid: not an object
    ]});
    let resp = f.post(&body).await;
    assert_eq!(resp.status, 207, "{}", resp.body);
    let b = resp.json_body();
    assert_eq!(
        statuses(&b),
        [
            "accepted",
            "rejected",
            "duplicate",
            "duplicate",
            "accepted",
            "rejected",
            "rejected"
        ]
    );
    assert_eq!(
        b["totals"],
        json!({"received": 7, "accepted": 2, "duplicate": 2, "rejected": 3, "parked": 0})
    );
    assert_eq!(b["results"][1]["errors"][0]["field"], "timestamp");
    let fields: Vec<&str> = b["results"][5]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["eventType", "timestamp", "countryCode", "matchKeys"]
    );
    assert!(
        b["results"][6]["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("JSON object")
    );
    assert_eq!(b["results"][0]["errors"], json!([]));

    // What Amazon got: each id once, hashed and normalised exactly.
    let dump = sent(&f).await;
    assert_eq!(dump.events.len(), 3);
    assert_eq!(dump.counts_by_event_id.get("m-1"), Some(&1));
    assert_eq!(dump.counts_by_event_id.get("m-10"), Some(&1));
    let ev = dump.events.iter().find(|e| e["eventId"] == "m-10").unwrap();
    assert_eq!(
        ev["matchKeys"][0],
        json!({"type": "EMAIL", "values": [hex("buyer.10tag@example.com")]})
    );
    assert_eq!(
        ev["matchKeys"][1],
        json!({"type": "PHONE", "values": [hex("15550100010")]})
    );
    assert_eq!(
        ev["eventDescription"]["eventIngestionMethod"],
        "SERVER_TO_SERVER"
    );
    assert_eq!(ev["currencyCode"], "USD");
    // The claim is remembered as completed.
    let rec = f
        .ctx()
        .dedupe
        .get(&DedupeKey::client(f.advertiser_id(), "m-10"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, ClaimStatus::Completed);
}

#[tokio::test]
async fn twelve_hundred_events_go_in_three_amazon_batches() {
    let f = IngestFixture::new().await;
    let events: Vec<Value> = (0..1200).map(|i| purchase("big", i)).collect();
    let resp = f.post(&json!({ "events": events })).await;
    assert_eq!(
        resp.status,
        200,
        "{}",
        &resp.body[..resp.body.len().min(500)]
    );
    assert_eq!(resp.json_body()["totals"]["accepted"], 1200);
    assert_eq!(events_requests(&f).await, [207, 207, 207]);
    let dump = sent(&f).await;
    assert_eq!(dump.events.len(), 1200);
    assert!(dump.counts_by_event_id.values().all(|&n| n == 1));
}

#[tokio::test]
async fn throttling_then_success_and_413_splits() {
    let f = IngestFixture::new().await;
    let s = &f.login.sandbox;
    s.add_fault(
        &FaultSpec::status(429)
            .retry_after(1)
            .path_prefix(EVENTS_PATH)
            .account_id(f.advertiser_id())
            .times(1),
    )
    .await
    .unwrap();
    let resp = f
        .post(&json!({"events": (0..10).map(|i| purchase("t", i)).collect::<Vec<_>>()}))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(events_requests(&f).await, [429, 207]);

    // 413: the batch is split in halves and both halves go through.
    s.add_fault(
        &FaultSpec::status(413)
            .path_prefix(EVENTS_PATH)
            .account_id(f.advertiser_id())
            .times(1),
    )
    .await
    .unwrap();
    let resp = f
        .post(&json!({"events": (10..20).map(|i| purchase("t", i)).collect::<Vec<_>>()}))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(events_requests(&f).await, [429, 207, 413, 207, 207]);
    assert_eq!(sent(&f).await.events.len(), 20);
}

#[tokio::test]
async fn server_errors_park_then_the_redrive_delivers_once() {
    let f = IngestFixture::new().await;
    let s = &f.login.sandbox;
    let fault = s
        .add_fault(
            &FaultSpec::status(500)
                .path_prefix(EVENTS_PATH)
                .account_id(f.advertiser_id())
                .forever(),
        )
        .await
        .unwrap();
    let mut no_id = purchase("p", 99);
    no_id.as_object_mut().unwrap().remove("clientDedupeId");
    let body = json!({"events": [purchase("p", 1), purchase("p", 2), no_id]});
    let resp = f.post(&body).await;
    assert_eq!(resp.status, 207, "{}", resp.body);
    let b = resp.json_body();
    assert_eq!(statuses(&b), ["parked", "parked", "parked"]);
    assert!(
        b["results"][0]["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("parked"),
        "{b}"
    );
    let key = DedupeKey::client(f.advertiser_id(), "p-1");
    assert_eq!(
        f.ctx().dedupe.get(&key).await.unwrap().unwrap().status,
        ClaimStatus::Parked
    );

    // A webhook retry of a parked event is answered `parked` and not sent again.
    let before = events_requests(&f).await.len();
    let retry = f.post(&json!({"events": [purchase("p", 1)]})).await;
    assert_eq!(statuses(&retry.json_body()), ["parked"]);
    assert_eq!(
        events_requests(&f).await.len(),
        before,
        "a parked id must not be sent by a retry"
    );

    // Amazon still failing: the redrive leaves everything parked.
    let summary = f.redrive().await;
    assert_eq!(summary["delivered"], 0, "{summary}");
    assert_eq!(summary["acked"], 0, "{summary}");

    s.remove_fault(&fault).await.unwrap();
    // The message may still be invisible from the failed redrive (visibility 2 s).
    let mut delivered = 0;
    for _ in 0..10 {
        let summary = f.redrive().await;
        delivered += summary["delivered"].as_u64().unwrap();
        if delivered == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    }
    assert_eq!(delivered, 3);
    let dump = sent(&f).await;
    assert_eq!(dump.events.len(), 3);
    assert_eq!(dump.counts_by_event_id.get("p-1"), Some(&1));
    assert_eq!(
        f.ctx().dedupe.get(&key).await.unwrap().unwrap().status,
        ClaimStatus::Completed
    );
    let again = f.post(&json!({"events": [purchase("p", 1)]})).await;
    assert_eq!(statuses(&again.json_body()), ["duplicate"]);
}

#[tokio::test]
async fn a_parked_message_redriven_twice_is_delivered_once() {
    let f = IngestFixture::new().await;
    let s = &f.login.sandbox;
    let fault = s
        .add_fault(
            &FaultSpec::status(503)
                .path_prefix(EVENTS_PATH)
                .account_id(f.advertiser_id())
                .forever(),
        )
        .await
        .unwrap();
    let mut no_id = purchase("r", 7);
    no_id.as_object_mut().unwrap().remove("clientDedupeId");
    let resp = f.post(&json!({"events": [purchase("r", 1), no_id]})).await;
    assert_eq!(statuses(&resp.json_body()), ["parked", "parked"]);
    s.remove_fault(&fault).await.unwrap();

    // Copy the parked message before the redrive handles it, as if SQS delivered it twice
    // (an acknowledgement lost after a successful send).
    let q = &f.ctx().parked;
    let mut copies = Vec::new();
    for _ in 0..5 {
        copies.extend(q.receive::<Value>(10).await.unwrap());
        if !copies.is_empty() {
            break;
        }
    }
    assert_eq!(copies.len(), 1, "one parked message");
    let copy = copies.remove(0);
    q.park(&copy.item).await.unwrap(); // the duplicate delivery
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await; // the original becomes visible again

    let mut total = json!({"delivered": 0, "alreadyDelivered": 0, "acked": 0});
    for _ in 0..6 {
        let s = f.redrive().await;
        for k in ["delivered", "alreadyDelivered", "acked"] {
            total[k] = json!(total[k].as_u64().unwrap() + s[k].as_u64().unwrap());
        }
        if total["acked"] == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(
        total,
        json!({"delivered": 2, "alreadyDelivered": 2, "acked": 2})
    );
    let dump = sent(&f).await;
    assert_eq!(
        dump.events.len(),
        2,
        "each parked event reached Amazon exactly once"
    );
    assert_eq!(dump.counts_by_event_id.get("r-1"), Some(&1));
}

#[tokio::test]
async fn expired_access_token_is_refreshed_and_resent() {
    let f = IngestFixture::new().await;
    // Warm the token cache, then make the sandbox refuse every access token issued so far.
    let resp = f.post(&json!({"events": [purchase("a", 1)]})).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    f.login
        .sandbox
        .expire_access_tokens(&f.login.user().user_id)
        .await
        .unwrap();
    let resp = f.post(&json!({"events": [purchase("a", 2)]})).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(events_requests(&f).await, [207, 401, 207]);
    assert_eq!(sent(&f).await.events.len(), 2);
}

#[tokio::test]
async fn partial_207_errors_map_to_the_right_input() {
    let f = IngestFixture::new().await;
    let s = &f.login.sandbox;
    // Amazon's answer for the 3 valid events (batch positions 0..2 = input indexes 1..3):
    // position 1 rejected, position 2 not mentioned at all.
    s.add_fault(
        &FaultSpec::status(207)
            .body(json!({
                "success": [{"index": 0}],
                "error": [{"index": 1, "errors": [{"code": "FIELD_VALUE_IS_INVALID", "message": "unknown customer",
                    "fieldLocation": "events[1].matchKeys[0].values[0]"}]}]
            }))
            .path_prefix(EVENTS_PATH)
            .account_id(f.advertiser_id())
            .times(1),
    )
    .await
    .unwrap();
    let mut invalid = purchase("x", 0);
    invalid.as_object_mut().unwrap().remove("countryCode");
    let resp = f
        .post(&json!({"events": [invalid, purchase("x", 1), purchase("x", 2), purchase("x", 3)]}))
        .await;
    assert_eq!(resp.status, 207, "{}", resp.body);
    let b = resp.json_body();
    assert_eq!(
        statuses(&b),
        ["rejected", "accepted", "rejected", "accepted"]
    );
    assert_eq!(b["results"][0]["errors"][0]["field"], "countryCode");
    assert_eq!(
        b["results"][2]["errors"],
        json!([{"field": "matchKeys[0].values[0]", "message": "Amazon: FIELD_VALUE_IS_INVALID unknown customer"}])
    );
    // The missing index was resent once (and went through); the rejected id was released.
    assert_eq!(events_requests(&f).await, [207, 207]);
    assert_eq!(sent(&f).await.counts_by_event_id.get("x-3"), Some(&1));
    assert_eq!(
        f.ctx()
            .dedupe
            .get(&DedupeKey::client(f.advertiser_id(), "x-2"))
            .await
            .unwrap(),
        None
    );
    let resend = f.post(&json!({"events": [purchase("x", 2)]})).await;
    assert_eq!(
        statuses(&resend.json_body()),
        ["accepted"],
        "a corrected resend goes through"
    );
}

#[tokio::test]
async fn concurrent_requests_with_the_same_ids_send_each_once() {
    let f = IngestFixture::new().await;
    // Slow Amazon down for the first request so that the two overlap.
    f.login
        .sandbox
        .add_fault(
            &FaultSpec::delay_ms(1500)
                .path_prefix(EVENTS_PATH)
                .account_id(f.advertiser_id())
                .times(1),
        )
        .await
        .unwrap();
    let body = json!({"events": (0..50).map(|i| purchase("c", i)).collect::<Vec<_>>()});
    let (a, b) = tokio::join!(f.post(&body), f.post(&body));
    let (a, b) = (a.json_body(), b.json_body());
    let accepted =
        a["totals"]["accepted"].as_u64().unwrap() + b["totals"]["accepted"].as_u64().unwrap();
    let dups =
        a["totals"]["duplicate"].as_u64().unwrap() + b["totals"]["duplicate"].as_u64().unwrap();
    assert_eq!((accepted, dups), (50, 50), "{a}\n{b}");
    let dump = sent(&f).await;
    assert_eq!(dump.events.len(), 50);
    assert!(dump.counts_by_event_id.values().all(|&n| n == 1));
}

#[tokio::test]
async fn revoked_consent_parks_and_marks_the_account() {
    let f = IngestFixture::new().await;
    f.login
        .sandbox
        .revoke(&f.login.user().user_id)
        .await
        .unwrap();
    let resp = f.post(&json!({"events": [purchase("v", 1)]})).await;
    let b = resp.json_body();
    assert_eq!(statuses(&b), ["parked"], "{b}");
    let acct = f
        .ctx()
        .accounts
        .get_account(&f.account.account_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(acct.status, AccountStatus::ReauthorizationRequired);
    let resp = f.post(&json!({"events": [purchase("v", 2)]})).await;
    assert_eq!(resp.status, 409, "{}", resp.body);
    assert_eq!(
        resp.json_body()["error"]["code"],
        "reauthorization_required"
    );
}

#[tokio::test]
async fn request_level_errors() {
    let f = IngestFixture::new().await;
    let inv = || Invocation::with_timeout(30);
    let ok = f.request(&json!({"events": [purchase("e", 1)]}));

    let no_key = HttpRequest {
        headers: Default::default(),
        ..ok.clone()
    }
    .with_header("content-type", "application/json");
    assert_eq!(f.handler.http(no_key, inv()).await.status, 401);

    let text = ok.clone().with_header("content-type", "text/plain");
    let r = f.handler.http(text, inv()).await;
    assert_eq!(
        (r.status, r.json_body()["error"]["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );

    let bad = ok.clone().with_body("{\"events\": [");
    let r = f.handler.http(bad, inv()).await;
    assert_eq!(r.status, 400);
    assert!(
        r.json_body()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("malformed JSON")
    );

    let huge = ok.clone().with_body(vec![b' '; 7 * 1024 * 1024]);
    assert_eq!(f.handler.http(huge, inv()).await.status, 413);

    let too_many = f.request(&json!({"events": vec![json!({}); 10_001]}));
    assert_eq!(f.handler.http(too_many, inv()).await.status, 413);

    let mut unknown = ok.clone();
    unknown.path = "/accounts/123456789/conversions".into();
    let r = f.handler.http(unknown, inv()).await;
    assert_eq!(
        (r.status, r.json_body()["error"]["code"].as_str()),
        (404, Some("account_not_found"))
    );
    assert!(
        r.json_body()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Account 123456789 was not found")
    );

    let mut get = ok.clone();
    get.method = "GET".into();
    assert_eq!(f.handler.http(get, inv()).await.status, 405);

    // Under `cargo lambda watch` the path carries the function prefix.
    let mut local = ok.clone();
    local.path = format!("/lambda-url/conversion-ingest{}", ok.path);
    assert_eq!(f.handler.http(local, inv()).await.status, 200);
    // A single event object (not wrapped in "events") is accepted too.
    let single = f.request(&purchase("e", 2));
    let r = f.handler.http(single, inv()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json_body()["totals"]["accepted"], 1);
}
