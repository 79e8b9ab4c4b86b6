//! Conversion ingest with batched store work (`DedupeStore::claim_many` / `complete_many`):
//! racing requests whose batches overlap still send each `clientDedupeId` exactly once. Run with
//! the stack up: `set -a; . .local/stack.env; set +a; cargo test -p adsync-tests --test
//! ingest_batches`.

use adsync_tests::conversions::{IngestFixture, purchase};
use adsync_tests::sandbox::FaultSpec;
use serde_json::{Value, json};

const EVENTS_PATH: &str = "/adsApi/v1/create/events";

fn total(bodies: &[&Value], what: &str) -> u64 {
    bodies
        .iter()
        .map(|b| b["totals"][what].as_u64().unwrap())
        .sum()
}

#[tokio::test]
async fn racing_requests_with_overlapping_batches_send_each_id_once() {
    let f = IngestFixture::new().await;
    // Slow Amazon down a little so the requests overlap for sure.
    f.login
        .sandbox
        .add_fault(
            &FaultSpec::delay_ms(300)
                .path_prefix(EVENTS_PATH)
                .account_id(f.advertiser_id())
                .times(2),
        )
        .await
        .unwrap();
    // A: ids 0..1200 (three waves, twelve claim transactions); B: 500..1700 backwards, so the
    // overlap 500..1200 falls in other waves and other transactions; C: every third id of the
    // whole range (straddling both).
    let a: Vec<Value> = (0..1200).map(|i| purchase("o", i)).collect();
    let b: Vec<Value> = (500..1700).rev().map(|i| purchase("o", i)).collect();
    let c: Vec<Value> = (0..1700).step_by(3).map(|i| purchase("o", i)).collect();
    let (a, b, c) = (
        json!({ "events": a }),
        json!({ "events": b }),
        json!({ "events": c }),
    );
    let (ra, rb, rc) = tokio::join!(f.post(&a), f.post(&b), f.post(&c));
    let (ra, rb, rc) = (ra.json_body(), rb.json_body(), rc.json_body());
    let bodies = [&ra, &rb, &rc];
    let received = 1200 + 1200 + 567;
    assert_eq!(total(&bodies, "received"), received);
    assert_eq!(total(&bodies, "parked"), 0, "{bodies:?}");
    assert_eq!(total(&bodies, "rejected"), 0, "{bodies:?}");
    assert_eq!(total(&bodies, "accepted"), 1700, "each id accepted once");
    assert_eq!(total(&bodies, "duplicate"), received - 1700);

    let dump = f
        .login
        .sandbox
        .events(f.advertiser_id())
        .await
        .expect("sandbox events");
    assert_eq!(dump.events.len(), 1700);
    assert_eq!(dump.counts_by_event_id.len(), 1700);
    assert!(
        dump.counts_by_event_id.values().all(|&n| n == 1),
        "an id reached Amazon twice"
    );

    // A webhook retry of everything afterwards sends nothing.
    let again: Vec<Value> = (0..1700).map(|i| purchase("o", i)).collect();
    let r = f.post(&json!({ "events": again })).await.json_body();
    assert_eq!(r["totals"]["duplicate"], 1700, "{r}");
    let dump = f.login.sandbox.events(f.advertiser_id()).await.unwrap();
    assert_eq!(dump.events.len(), 1700);
}
