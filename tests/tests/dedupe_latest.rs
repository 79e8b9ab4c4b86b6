//! Latest-wins deduplication and generated event ids, end to end: the real conversion handler and
//! redrive against DynamoDB Local, moto and the Amazon sandbox (which keeps every accepted event
//! in arrival order, so "latest" is the last copy of an `eventId` there). Every test has its own
//! sandbox advertiser, account and parked queue. Run with the stack up:
//! `set -a; . .local/stack.env; set +a; cargo test -p adsync-tests --test dedupe_latest`.

use adsync::budget::HttpBudget;
use adsync::runtime::{Invocation, answer_within};
use adsync::store::dedupe::{ClaimOutcome, ClaimStatus, DedupeKey, TakeOutcome};
use adsync::store::parked_counts::ParkedCounts;
use adsync_tests::conversions::{IngestFixture, purchase};
use adsync_tests::sandbox::FaultSpec;
use serde_json::{Value, json};
use std::time::Duration;

const EVENTS_PATH: &str = "/adsApi/v1/create/events";

fn statuses(body: &Value) -> Vec<String> {
    body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_string())
        .collect()
}

async fn post_statuses(f: &IngestFixture, events: Vec<Value>) -> Vec<String> {
    let resp = f.post(&json!({ "events": events })).await;
    statuses(&resp.json_body())
}

/// Every copy of `id` the sandbox accepted, in arrival order.
async fn copies(f: &IngestFixture, id: &str) -> Vec<Value> {
    let dump = f
        .login
        .sandbox
        .events(f.advertiser_id())
        .await
        .expect("sandbox events");
    dump.events
        .into_iter()
        .filter(|e| e["eventId"] == id)
        .collect()
}

async fn events_requests(f: &IngestFixture) -> usize {
    f.login
        .sandbox
        .requests(Some(f.login.client_id()), Some(EVENTS_PATH))
        .await
        .expect("sandbox requests")
        .len()
}

async fn fail_events(f: &IngestFixture) -> String {
    f.login
        .sandbox
        .add_fault(
            &FaultSpec::status(500)
                .path_prefix(EVENTS_PATH)
                .account_id(f.advertiser_id())
                .forever(),
        )
        .await
        .unwrap()
}

/// The account's parked conversions count, as `GET /accounts` shows it.
async fn parked_count(f: &IngestFixture) -> u64 {
    ParkedCounts::new(&f.ctx().accounts)
        .views(std::slice::from_ref(&f.account.account_id))
        .await
        .unwrap()
        .get(&f.account.account_id)
        .map(|v| v.conversions)
        .unwrap_or(0)
}

/// Runs the redrive until `key` of the summaries adds up to `want` (parked messages stay
/// invisible for the queue's 2 s visibility after a failed run). Returns the summed summary.
async fn redrive_until(f: &IngestFixture, key: &str, want: u64) -> Value {
    let mut total = json!({"delivered": 0, "superseded": 0, "alreadyDelivered": 0, "acked": 0});
    for _ in 0..12 {
        let s = f.redrive().await;
        for k in ["delivered", "superseded", "alreadyDelivered", "acked"] {
            total[k] = json!(total[k].as_u64().unwrap() + s[k].as_u64().unwrap_or(0));
        }
        if total[key].as_u64().unwrap() >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    total
}

#[tokio::test]
async fn a_correction_is_sent_and_a_repeat_of_the_same_content_is_not() {
    let f = IngestFixture::new().await;
    let original = purchase("fix", 1);
    assert_eq!(
        post_statuses(&f, vec![original.clone()]).await,
        ["accepted"]
    );
    assert_eq!(
        post_statuses(&f, vec![original.clone()]).await,
        ["duplicate"]
    );
    let key = DedupeKey::client(f.advertiser_id(), "fix-1");
    let first_fp = f.ctx().dedupe.get(&key).await.unwrap().unwrap().fingerprint;

    // Each change of content is a correction: sent, accepted, remembered as the new content.
    let mut changes: Vec<(&str, Value)> = Vec::new();
    let mut v = original.clone();
    v["value"] = json!(99.5);
    changes.push(("value", v.clone()));
    v["unitsSold"] = json!(7);
    changes.push(("unitsSold", v.clone()));
    v["matchKeys"] = json!({"email": "someone.else@example.com"});
    changes.push(("matchKeys", v.clone()));
    v["timestamp"] = json!((chrono::Utc::now() - chrono::Duration::hours(3)).to_rfc3339());
    changes.push(("timestamp", v.clone()));
    v["eventType"] = json!("LEAD");
    changes.push(("eventType", v.clone()));
    let mut fingerprints = vec![first_fp];
    for (what, event) in &changes {
        let before = copies(&f, "fix-1").await.len();
        assert_eq!(
            post_statuses(&f, vec![event.clone()]).await,
            ["accepted"],
            "a change of {what} is a correction"
        );
        assert_eq!(copies(&f, "fix-1").await.len(), before + 1, "{what}");
        // A repeat of the corrected content is a duplicate and is not sent.
        assert_eq!(
            post_statuses(&f, vec![event.clone()]).await,
            ["duplicate"],
            "{what}"
        );
        assert_eq!(copies(&f, "fix-1").await.len(), before + 1, "{what}");
        let rec = f.ctx().dedupe.get(&key).await.unwrap().unwrap();
        assert_eq!(rec.status, ClaimStatus::Completed);
        assert!(
            !fingerprints.contains(&rec.fingerprint),
            "{what}: a new fingerprint is stored"
        );
        fingerprints.push(rec.fingerprint);
    }
    // What Amazon keeps (the latest copy) is the last correction.
    let all = copies(&f, "fix-1").await;
    assert_eq!(all.len(), 1 + changes.len());
    let latest = all.last().unwrap();
    assert_eq!(latest["eventDescription"]["conversionType"], "LEAD");
    assert_eq!(latest["value"], 99.5);
    assert!(
        latest.get("unitsSold").is_none(),
        "unitsSold goes only with purchases"
    );
    assert_eq!(all[1]["value"], 99.5);
    assert_eq!(all[2]["unitsSold"], 7);

    // Going back to the original content is a correction too (latest wins).
    assert_eq!(post_statuses(&f, vec![original]).await, ["accepted"]);
    assert_eq!(copies(&f, "fix-1").await.last().unwrap()["value"], 11.0);
}

#[tokio::test]
async fn copies_inside_one_request_send_the_latest_content_once() {
    let f = IngestFixture::new().await;
    let a = purchase("in", 1);
    let mut b = a.clone();
    b["value"] = json!(500);
    let resp = f
        .post(&json!({"events": [a.clone(), a.clone(), b.clone(), b.clone()]}))
        .await;
    let body = resp.json_body();
    assert_eq!(
        statuses(&body),
        ["duplicate", "duplicate", "accepted", "duplicate"]
    );
    assert!(
        body["results"][0]["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("superseded by event 2"),
        "{body}"
    );
    let sent = copies(&f, "in-1").await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["value"], 500.0);
}

#[tokio::test]
async fn concurrent_copies_of_one_correction_send_it_exactly_once() {
    let f = IngestFixture::new().await;
    assert_eq!(
        post_statuses(&f, vec![purchase("cc", 1)]).await,
        ["accepted"]
    );
    let mut corrected = purchase("cc", 1);
    corrected["value"] = json!(42);
    // Amazon is slow for the first copy, so the requests overlap.
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
    let body = json!({ "events": [corrected] });
    let (a, b, c) = tokio::join!(f.post(&body), f.post(&body), f.post(&body));
    let mut all: Vec<String> = [a, b, c]
        .iter()
        .flat_map(|r| statuses(&r.json_body()))
        .collect();
    all.sort();
    assert_eq!(all, ["accepted", "duplicate", "duplicate"]);
    let sent = copies(&f, "cc-1").await;
    assert_eq!(sent.len(), 2, "the original and the correction, once each");
    assert_eq!(sent[1]["value"], 42.0);
}

#[tokio::test]
async fn concurrent_claims_of_a_correction_have_one_winner() {
    let f = IngestFixture::new().await;
    let d = &f.ctx().dedupe;
    let key = DedupeKey::client(f.advertiser_id(), &format!("race-{}", uuid::Uuid::new_v4()));
    let later = adsync::runtime::now_ms() + 60_000;
    let ClaimOutcome::Claimed(c) = d.claim(&key, "fp-old", later, "r0").await.unwrap() else {
        panic!("first claim");
    };
    assert!(d.complete(&c).await.unwrap());
    // An old copy parked before the correction arrived.
    let parked_at = adsync::runtime::now_ms() - 1;
    let outcomes = futures::future::join_all((0..12).map(|i| {
        let key = key.clone();
        async move {
            d.claim(&key, "fp-new", later, &format!("r{i}"))
                .await
                .unwrap()
        }
    }))
    .await;
    let won: Vec<&ClaimOutcome> = outcomes
        .iter()
        .filter(|o| matches!(o, ClaimOutcome::Claimed(_)))
        .collect();
    let held = outcomes
        .iter()
        .filter(|o| matches!(o, ClaimOutcome::Held { .. }))
        .count();
    assert_eq!((won.len(), held), (1, 11), "{outcomes:?}");
    let ClaimOutcome::Claimed(c) = won[0] else {
        unreachable!()
    };
    assert!(d.complete(c).await.unwrap());
    assert_eq!(
        d.claim(&key, "fp-new", later, "r13").await.unwrap(),
        ClaimOutcome::Completed {
            fingerprint: Some("fp-new".into())
        }
    );
    // The redrive of an old parked copy of this id is told it was superseded.
    assert_eq!(
        d.take_parked(&key, "fp-old", parked_at, later, "redrive")
            .await
            .unwrap(),
        TakeOutcome::Superseded
    );
}

#[tokio::test]
async fn a_correction_makes_the_parked_copy_obsolete() {
    let f = IngestFixture::new().await;
    let fault = fail_events(&f).await;
    assert_eq!(post_statuses(&f, vec![purchase("pk", 1)]).await, ["parked"]);
    f.login.sandbox.remove_fault(&fault).await.unwrap();

    // The correction arrives before the redrive: it is sent at once.
    let mut corrected = purchase("pk", 1);
    corrected["value"] = json!(77);
    assert_eq!(post_statuses(&f, vec![corrected]).await, ["accepted"]);
    let total = redrive_until(&f, "acked", 1).await;
    assert_eq!(total["superseded"], 1, "{total}");
    assert_eq!(total["delivered"], 0, "{total}");
    // The superseded copy left the queue: it is no longer counted as parked.
    assert_eq!(parked_count(&f).await, 0);
    // Amazon got only the new content: the old copy never followed it.
    let sent = copies(&f, "pk-1").await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["value"], 77.0);
}

#[tokio::test]
async fn a_parked_correction_replaces_the_parked_original() {
    let f = IngestFixture::new().await;
    let fault = fail_events(&f).await;
    assert_eq!(post_statuses(&f, vec![purchase("pp", 1)]).await, ["parked"]);
    // The same content again is answered parked and not sent; other content is a correction,
    // tried at once (and parked too while Amazon fails).
    let before = events_requests(&f).await;
    assert_eq!(post_statuses(&f, vec![purchase("pp", 1)]).await, ["parked"]);
    assert_eq!(events_requests(&f).await, before);
    let mut corrected = purchase("pp", 1);
    corrected["value"] = json!(55);
    assert_eq!(post_statuses(&f, vec![corrected]).await, ["parked"]);
    assert!(events_requests(&f).await > before);
    f.login.sandbox.remove_fault(&fault).await.unwrap();

    assert_eq!(parked_count(&f).await, 2);
    let total = redrive_until(&f, "acked", 2).await;
    assert_eq!(
        (total["delivered"].as_u64(), total["superseded"].as_u64()),
        (Some(1), Some(1)),
        "{total}"
    );
    assert_eq!(
        parked_count(&f).await,
        0,
        "delivered and superseded copies left"
    );
    let sent = copies(&f, "pp-1").await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["value"], 55.0);
}

#[tokio::test]
async fn a_correction_parked_without_a_claim_is_sent_by_the_redrive() {
    let f = IngestFixture::new().await;
    assert_eq!(
        post_statuses(&f, vec![purchase("oot", 1)]).await,
        ["accepted"]
    );
    let mut corrected = purchase("oot", 1);
    corrected["value"] = json!(66);
    // No Amazon window at all: the claim is out of time, so the correction is parked unclaimed.
    let budget = HttpBudget {
        total: Duration::from_secs(4),
        reserve: Duration::from_secs(4),
    };
    let req = f.request(&json!({ "events": [corrected] }));
    let resp = answer_within(
        &f.handler,
        req,
        Invocation::with_timeout(60),
        &json!({}),
        budget,
    )
    .await;
    let body = resp.json_body();
    assert_eq!(statuses(&body), ["parked"], "{body}");
    assert!(
        body["results"][0]["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("time budget"),
        "{body}"
    );
    let key = DedupeKey::client(f.advertiser_id(), "oot-1");
    let before = f.ctx().dedupe.get(&key).await.unwrap().unwrap();
    assert_eq!(
        before.status,
        ClaimStatus::Completed,
        "no record of the parked copy"
    );
    assert_eq!(parked_count(&f).await, 1);

    // The stored content is older than the parked copy: the copy is the correction and is sent.
    let total = redrive_until(&f, "delivered", 1).await;
    assert_eq!(
        (total["delivered"].as_u64(), total["superseded"].as_u64()),
        (Some(1), Some(0)),
        "{total}"
    );
    let sent = copies(&f, "oot-1").await;
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[1]["value"], 66.0, "Amazon ends with the correction");
    let after = f.ctx().dedupe.get(&key).await.unwrap().unwrap();
    assert_eq!(after.status, ClaimStatus::Completed);
    assert_ne!(
        after.fingerprint, before.fingerprint,
        "the correction is remembered"
    );
    assert_eq!(parked_count(&f).await, 0);
    // A repeat of the correction is now a duplicate; the original content is a correction again.
    let mut repeat = purchase("oot", 1);
    repeat["value"] = json!(66);
    assert_eq!(post_statuses(&f, vec![repeat]).await, ["duplicate"]);
}

#[tokio::test]
async fn a_correction_parked_while_another_request_held_the_id_is_sent_by_the_redrive() {
    let f = IngestFixture::new().await;
    assert_eq!(
        post_statuses(&f, vec![purchase("held", 1)]).await,
        ["accepted"]
    );
    // Another request holds the id (sending older content) past this request's wait.
    let key = DedupeKey::client(f.advertiser_id(), "held-1");
    let d = &f.ctx().dedupe;
    let ClaimOutcome::Claimed(holder) = d
        .claim(
            &key,
            "fp-holder",
            adsync::runtime::now_ms() + 30_000,
            "holder",
        )
        .await
        .unwrap()
    else {
        panic!("the holder's claim");
    };
    let mut corrected = purchase("held", 1);
    corrected["value"] = json!(88);
    let budget = HttpBudget {
        total: Duration::from_secs(6),
        reserve: Duration::from_secs(1),
    };
    let req = f.request(&json!({ "events": [corrected] }));
    let resp = answer_within(
        &f.handler,
        req,
        Invocation::with_timeout(60),
        &json!({}),
        budget,
    )
    .await;
    let body = resp.json_body();
    assert_eq!(statuses(&body), ["parked"], "{body}");
    // While the holder is live the copy waits; once it has settled, the copy is sent.
    let s = f.redrive().await;
    assert_eq!(s["delivered"], 0, "{s}");
    assert!(d.complete(&holder).await.unwrap());
    let total = redrive_until(&f, "delivered", 1).await;
    assert_eq!(
        (total["delivered"].as_u64(), total["superseded"].as_u64()),
        (Some(1), Some(0)),
        "{total}"
    );
    let sent = copies(&f, "held-1").await;
    assert_eq!(sent.last().unwrap()["value"], 88.0, "{sent:?}");
    assert_eq!(parked_count(&f).await, 0);
}

#[tokio::test]
async fn an_id_less_parked_event_keeps_its_generated_event_id_through_two_redrives() {
    let f = IngestFixture::new().await;
    let fault = fail_events(&f).await;
    let mut no_id = purchase("gen", 1);
    no_id.as_object_mut().unwrap().remove("clientDedupeId");
    assert_eq!(post_statuses(&f, vec![no_id]).await, ["parked"]);

    // The parked copy carries the id generated at ingest.
    let peek = f.ctx().parked.receive::<Value>(10).await.unwrap();
    assert_eq!(peek.len(), 1);
    let generated = peek[0].item["events"][0]["event"]["eventId"]
        .as_str()
        .expect("a generated eventId in the parked event")
        .to_string();
    assert!(generated.starts_with("adsync-"), "{generated}");
    tokio::time::sleep(Duration::from_millis(2100)).await; // visible again

    // Redrive 1: Amazon still fails; the event stays parked.
    let before = events_requests(&f).await;
    let s = f.redrive().await;
    assert_eq!(
        (s["delivered"].as_u64(), s["acked"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    assert!(
        events_requests(&f).await > before,
        "redrive 1 tried to send"
    );
    f.login.sandbox.remove_fault(&fault).await.unwrap();

    // Redrive 2 (once the message is visible again) delivers it, with the same eventId.
    let total = redrive_until(&f, "delivered", 1).await;
    assert_eq!(total["delivered"], 1, "{total}");
    let dump = f.login.sandbox.events(f.advertiser_id()).await.unwrap();
    assert_eq!(dump.events.len(), 1);
    assert_eq!(dump.events[0]["eventId"], generated.as_str());
    assert_eq!(dump.counts_by_event_id.get(&generated), Some(&1));
    // A later redrive has nothing left to send.
    let s = f.redrive().await;
    assert_eq!(s["delivered"], 0, "{s}");
    assert_eq!(
        f.login
            .sandbox
            .events(f.advertiser_id())
            .await
            .unwrap()
            .events
            .len(),
        1
    );
}

#[tokio::test]
async fn accepted_id_less_events_carry_distinct_generated_ids() {
    let f = IngestFixture::new().await;
    let mut no_id = purchase("g2", 1);
    no_id.as_object_mut().unwrap().remove("clientDedupeId");
    // The same content twice without an id: two events (not deduplicated), two distinct ids.
    assert_eq!(
        post_statuses(&f, vec![no_id.clone(), no_id]).await,
        ["accepted", "accepted"]
    );
    let dump = f.login.sandbox.events(f.advertiser_id()).await.unwrap();
    let ids: Vec<&str> = dump
        .events
        .iter()
        .map(|e| e["eventId"].as_str().expect("an eventId"))
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.iter().all(|i| i.starts_with("adsync-")), "{ids:?}");
    assert_ne!(ids[0], ids[1]);
    let key = DedupeKey::client(f.advertiser_id(), ids[0]);
    assert_eq!(
        f.ctx().dedupe.get(&key).await.unwrap(),
        None,
        "generated ids are not dedupe keys"
    );
}
