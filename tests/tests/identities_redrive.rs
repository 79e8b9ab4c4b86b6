//! The redrive policy of parked identity records against the local stack (moto SQS with a
//! dead-letter queue at `maxReceiveCount` 10, as the template has it; the sandbox's
//! `POST /dp/records/hashed/`): an outage outlasts more redrive runs than `maxReceiveCount`
//! without reaching the dead-letter queue, and a dead-lettered message is moved back by
//! `redrive-dlq` and delivered once.
//!
//! Run: `set -a; . .local/stack.env; set +a; cargo test -p adsync-tests --test identities_redrive`

use adsync::amazon::privacy::{HashedFields, HashedRecord};
use adsync::export::identities::{PARKED_KIND, ParkedIdentities, run_redrive_with};
use adsync::parked_dlq::{DeadLetterMover, Scope};
use adsync::runtime::{Invocation, now_ms};
use adsync::store::parked::ParkedQueue;
use adsync::store::parked_retry::{ParkedRetry, RetryState};
use adsync_tests::conversions::{parked_queue_with_dlq, queue_depth};
use adsync_tests::privacy::PrivacyRig;
use adsync_tests::sandbox::FaultSpec;
use serde_json::Value;
use std::time::Duration;

const PATH: &str = "/dp/records/hashed/";

struct Setup {
    rig: PrivacyRig,
    q: ParkedQueue,
    url: String,
    dlq: String,
    external_id: String,
}

/// A rig, an identities queue with its dead-letter queue, and one parked message on it.
async fn setup() -> Setup {
    let rig = PrivacyRig::new(1).await;
    let (url, dlq) = parked_queue_with_dlq(&rig.sqs, "identities").await;
    let q = ParkedQueue::new(rig.sqs.clone(), url.clone()).with_dead_letter(Some(dlq.clone()));
    let external_id = format!("u-{}", uuid::Uuid::new_v4().simple());
    let msg = ParkedIdentities {
        kind: PARKED_KIND.into(),
        account_id: rig.accounts[0].account_id.clone(),
        records: vec![HashedRecord {
            external_id: external_id.clone(),
            hashed_records: vec![HashedFields {
                email: Some("a".repeat(64)),
                ..HashedFields::default()
            }],
        }],
        reason: "test".into(),
        retry: RetryState::parked_at(now_ms()),
    };
    q.park(&msg).await.unwrap();
    Setup {
        rig,
        q,
        url,
        dlq,
        external_id,
    }
}

async fn redrive(s: &Setup, policy: &ParkedRetry) -> Value {
    run_redrive_with(&s.rig.ctx, &Invocation::with_timeout(30), &s.q, policy)
        .await
        .unwrap()
}

async fn outage(s: &Setup) -> String {
    s.rig
        .sandbox
        .add_fault(
            &FaultSpec::status(503)
                .forever()
                .path_prefix(PATH)
                .client_id(s.rig.client_id()),
        )
        .await
        .unwrap()
}

fn no_delay() -> ParkedRetry {
    ParkedRetry {
        base_delay: Duration::ZERO,
        max_delay: Duration::ZERO,
        ..ParkedRetry::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_identities_outlast_more_redrives_than_max_receive_count() {
    let s = setup().await;
    let fault = outage(&s).await;
    for run in 0..12 {
        let r = redrive(&s, &no_delay()).await;
        assert_eq!(
            (r["requeued"].as_u64(), r["delivered"].as_u64()),
            (Some(1), Some(0)),
            "run {run}: {r}"
        );
    }
    assert_eq!(queue_depth(&s.rig.sqs, &s.dlq).await, 0);
    s.rig.sandbox.remove_fault(&fault).await.unwrap();
    let before = s.rig.calls("POST", PATH).await;
    let r = redrive(&s, &no_delay()).await;
    assert_eq!(r["delivered"], 1, "{r}");
    assert_eq!(s.rig.calls("POST", PATH).await - before, 1);
    let got = s.rig.hashed_records().await;
    assert_eq!(got["records"][&s.external_id][0]["email"], "a".repeat(64));
    let again = redrive(&s, &no_delay()).await;
    assert_eq!(again["messages"], 0, "{again}");
    assert_eq!(queue_depth(&s.rig.sqs, &s.dlq).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_lettered_identities_are_moved_back_by_redrive_dlq_and_delivered_once() {
    let s = setup().await;
    let fault = outage(&s).await;
    let aged = ParkedRetry {
        max_age: Duration::from_millis(1),
        ..ParkedRetry::default()
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    let r = redrive(&s, &aged).await;
    assert_eq!(
        (r["deadLettered"].as_u64(), r["requeued"].as_u64()),
        (Some(1), Some(0)),
        "{r}"
    );
    assert_eq!(queue_depth(&s.rig.sqs, &s.url).await, 0);
    s.rig.sandbox.remove_fault(&fault).await.unwrap();

    let dlq = ParkedQueue::new(s.rig.sqs.clone(), s.dlq.clone());
    let mover = DeadLetterMover::new(dlq, None, None, s.rig.ctx.accounts.clone())
        .with_identities(Some(s.q.clone()));
    let account = s.rig.accounts[0].account_id.clone();
    let moved = mover
        .run(&Scope::Account(account), &Invocation::with_timeout(30))
        .await
        .unwrap();
    assert_eq!((moved.moved, moved.moved_identities), (1, 1), "{moved:?}");
    assert_eq!(moved.unknown, 0, "{moved:?}");

    let before = s.rig.calls("POST", PATH).await;
    let r = redrive(&s, &no_delay()).await;
    assert_eq!(r["delivered"], 1, "{r}");
    let again = redrive(&s, &no_delay()).await;
    assert_eq!(again["messages"], 0, "{again}");
    assert_eq!(s.rig.calls("POST", PATH).await - before, 1);
    let got = s.rig.hashed_records().await;
    assert_eq!(got["records"][&s.external_id][0]["email"], "a".repeat(64));
    assert_eq!(queue_depth(&s.rig.sqs, &s.dlq).await, 0);
}
