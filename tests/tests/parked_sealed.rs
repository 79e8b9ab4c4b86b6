//! What parked conversions carry and where they may go:
//! - no raw identifiers: after a fault run, every message on the local stack's adsync queues is a
//!   sealed envelope without a raw IP address or MAID, and the redrive still opens and delivers
//!   them;
//! - a conversion parked before its MAID was erased is never sent (`ingest::erased`).
//!
//! Needs the stack env (`set -a; . .local/stack.env; set +a`), with `ADSYNC_KMS_KEY_ID`.

use adsync::store::erased_rows::TombstoneReader;
use adsync::store::erasures::{ErasureStore, device_hash};
use adsync_tests::conversions::{IngestFixture, purchase};
use adsync_tests::sandbox::{FaultSpec, random_id};
use serde_json::{Value, json};

/// Every message visible on the local stack's adsync queues (left visible: visibility 0).
async fn queued_bodies(sqs: &aws_sdk_sqs::Client) -> Vec<String> {
    let mut out = Vec::new();
    let queues = sqs
        .list_queues()
        .queue_name_prefix("adsync")
        .send()
        .await
        .unwrap();
    for url in queues.queue_urls() {
        for _ in 0..3 {
            let got = sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .visibility_timeout(0)
                .send()
                .await
                .unwrap();
            out.extend(
                got.messages()
                    .iter()
                    .filter_map(|m| m.body().map(String::from)),
            );
        }
    }
    out
}

/// Amazon answers 500 to every events request of the fixture's advertiser; returns the fault.
async fn events_fail(f: &IngestFixture) -> String {
    let fault = FaultSpec::status(500)
        .path_prefix("/adsApi/v1/create/events")
        .account_id(f.advertiser_id())
        .forever();
    f.login.sandbox.add_fault(&fault).await.unwrap()
}

/// Redrives (up to 10 runs) until `want` events were delivered or erased; returns
/// (delivered, erased).
async fn settle(f: &IngestFixture, want: u64) -> (u64, u64) {
    let (mut delivered, mut erased) = (0, 0);
    for _ in 0..10 {
        let sum = f.redrive().await;
        delivered += sum["delivered"].as_u64().unwrap();
        erased += sum["erased"].as_u64().unwrap();
        if delivered + erased == want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    }
    (delivered, erased)
}

#[tokio::test]
async fn parked_messages_carry_no_raw_ip_or_maid() {
    assert!(
        std::env::var("ADSYNC_KMS_KEY_ID").is_ok_and(|k| !k.is_empty()),
        "ADSYNC_KMS_KEY_ID is not set: the local stack (stack-up.sh) creates the key in moto"
    );
    let f = IngestFixture::new().await;
    let s = &f.login.sandbox;
    let fault = events_fail(&f).await;
    let ip = "203.0.113.77";
    let maid = format!("EA7583CD-A667-48BC-B806-{:012}", random_id(12));
    let ts = chrono::Utc::now().to_rfc3339();
    let events = json!({"events": [
        {"name": "App_Open", "eventType": "MOBILE_APP_FIRST_START", "eventActionSource": "ANDROID",
         "timestamp": ts, "clientDedupeId": format!("sealed-{}", random_id(10)), "countryCode": "US",
         "matchKeys": {"maid": maid}, "consent": {"geo": {"ipAddress": ip}}},
        purchase("sealed", 1),
    ]});
    let r = f.post(&events).await;
    assert_eq!(r.status, 207, "{}", r.body);
    assert!(r.body.contains("parked"), "{}", r.body);

    // Raw messages on every adsync queue of the stack (this test's and any earlier fault
    // test's): sealed envelopes, no IP, no MAID.
    let bodies = queued_bodies(&f.login.aws.sqs).await;
    let own = f.ctx().parked.queue_url().to_string();
    let mine = f
        .login
        .aws
        .sqs
        .receive_message()
        .queue_url(&own)
        .max_number_of_messages(10)
        .visibility_timeout(0)
        .send()
        .await
        .unwrap();
    let mine: Vec<&str> = mine.messages().iter().filter_map(|m| m.body()).collect();
    assert!(!mine.is_empty(), "the parked batch is on the queue");
    for b in mine
        .iter()
        .copied()
        .chain(bodies.iter().map(String::as_str))
    {
        assert!(!b.contains(ip), "a raw IP on a queue: {b:.200}");
        assert!(!b.contains(&maid), "a raw MAID on a queue: {b:.200}");
        assert!(
            !b.contains("EA7583CD-A667-48BC-B806-") && !b.contains("203.0.113."),
            "a raw test identifier on a queue: {b:.200}"
        );
    }
    assert!(
        mine.iter().all(|b| b.starts_with("{\"sealed\":1")),
        "{mine:?}"
    );

    // The redrive opens them and delivers, once Amazon recovers.
    s.remove_fault(&fault).await.unwrap();
    assert_eq!(settle(&f, 2).await.0, 2);
}

/// An app event keyed by `maid`, at `ts`.
fn app_event(maid: &str, ts: &chrono::DateTime<chrono::Utc>) -> Value {
    json!({"name": "App_Open", "eventType": "MOBILE_APP_FIRST_START", "eventActionSource": "ANDROID",
           "timestamp": ts.to_rfc3339(), "clientDedupeId": format!("erased-{}", random_id(10)),
           "countryCode": "US", "matchKeys": {"maid": maid}})
}

#[tokio::test]
async fn a_conversion_parked_before_its_maid_was_erased_is_never_sent() {
    let f = IngestFixture::new().await;
    let s = &f.login.sandbox;
    let fault = events_fail(&f).await;
    let at = chrono::Utc::now() - chrono::Duration::minutes(2);
    let (erased, earlier, kept) = (
        format!("EA7583CD-0000-0000-0001-{:012}", random_id(12)),
        format!("EA7583CD-0000-0000-0002-{:012}", random_id(12)),
        format!("EA7583CD-0000-0000-0003-{:012}", random_id(12)),
    );
    let events = [
        app_event(&erased, &at),
        app_event(&earlier, &at),
        app_event(&kept, &at),
    ];
    let r = f.post(&json!({ "events": events })).await;
    assert_eq!(r.status, 207, "{}", r.body);
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["totals"]["parked"], 3, "{body}");

    // Erasures: one after the events (covers it), one before them (a later event is new data).
    let ledger = std::env::var("LEDGER_TABLE").expect("LEDGER_TABLE (the stack env)");
    let store = ErasureStore::new(f.login.aws.dynamodb.clone(), ledger.clone(), ledger);
    let ms = |t: chrono::DateTime<chrono::Utc>| t.timestamp_millis();
    let hash = |m: &str| device_hash(&format!("MAID-{m}"));
    // Erased as another system wrote it: lower case (the event has it in upper case).
    store
        .put_tombstone(&hash(&erased.to_lowercase()), ms(chrono::Utc::now()), "t1")
        .await
        .unwrap();
    store
        .put_tombstone(&hash(&earlier), ms(at - chrono::Duration::minutes(1)), "t2")
        .await
        .unwrap();

    s.remove_fault(&fault).await.unwrap();
    let (delivered, gone) = settle(&f, 3).await;
    assert_eq!((delivered, gone), (2, 1), "delivered, erased");
    let sent = s.events(f.advertiser_id()).await.unwrap().events;
    let names = |m: &str| sent.iter().any(|e| e["matchKeys"].to_string().contains(m));
    assert!(!names(&erased), "an erased MAID reached Amazon");
    assert!(names(&earlier) && names(&kept), "{sent:?}");

    // A webhook retry of the erased event is a duplicate: still not sent.
    let r = f.post(&json!({"events": [events[0].clone()]})).await;
    assert!(r.body.contains("\"duplicate\""), "{}", r.body);
    let sent = s.events(f.advertiser_id()).await.unwrap().events;
    assert_eq!(sent.len(), 2, "{sent:?}");
}

#[tokio::test]
async fn without_readable_tombstones_a_maid_waits_and_other_events_go() {
    let mut f = IngestFixture::new().await;
    let s = &f.login.sandbox;
    let fault = events_fail(&f).await;
    let maid = format!("EA7583CD-0000-0000-0004-{:012}", random_id(12));
    let at = chrono::Utc::now() - chrono::Duration::minutes(1);
    let r = f
        .post(&json!({"events": [app_event(&maid, &at), purchase("erasure-check", 1)]}))
        .await;
    assert_eq!(r.status, 207, "{}", r.body);
    s.remove_fault(&fault).await.unwrap();
    // A table that does not exist: every tombstone read fails.
    f.handler.ctx.tombstones = Some(TombstoneReader::new(
        f.login.aws.dynamodb.clone(),
        format!("no-such-ledger-{}", random_id(8)),
    ));
    let sum = f.redrive().await;
    assert_eq!(sum["delivered"], 1, "{sum}");
    assert_eq!(sum["stillParked"], 1, "{sum}");
    let sent = f
        .login
        .sandbox
        .events(f.advertiser_id())
        .await
        .unwrap()
        .events;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(
        !sent[0]["matchKeys"].to_string().contains(&maid),
        "{sent:?}"
    );

    // Readable again (no tombstone for it): a later run sends it.
    let ledger = std::env::var("LEDGER_TABLE").expect("LEDGER_TABLE (the stack env)");
    f.handler.ctx.tombstones = Some(TombstoneReader::new(f.login.aws.dynamodb.clone(), ledger));
    assert_eq!(settle(&f, 1).await.0, 1);
    let sent = f.login.sandbox.events(f.advertiser_id()).await.unwrap();
    assert_eq!(sent.events.len(), 2, "{:?}", sent.events);
}
