//! The request budget and the redrive that outlasts outages, end to end: the real conversion
//! handler against DynamoDB Local, moto (a parked queue with a redrive policy to its own
//! dead-letter queue, as in the template) and the Amazon sandbox with faults. Time scales are
//! shrunk by configuration (budget 6 s, redrive delays 0), not by changing behaviour.
//!
//! `set -a; . .local/stack.env; set +a; cargo test -p adsync-tests --test redrive`

use adsync::budget::HttpBudget;
use adsync::runtime::{Invocation, answer_within};
use adsync::store::accounts::AccountStatus;
use adsync::store::parked_counts::{ParkedCounts, ParkedView};
use adsync_tests::conversions::{IngestFixture, purchase, queue_depth};
use adsync_tests::sandbox::FaultSpec;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const EVENTS_PATH: &str = "/adsApi/v1/create/events";

fn statuses(body: &Value) -> Vec<String> {
    body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_string())
        .collect()
}

/// Three events: two with a `clientDedupeId`, one without.
fn three(prefix: &str) -> Value {
    let mut no_id = purchase(prefix, 99);
    no_id.as_object_mut().unwrap().remove("clientDedupeId");
    json!({"events": [purchase(prefix, 1), purchase(prefix, 2), no_id]})
}

/// Every event Amazon accepted for the fixture's advertiser, and the count per `eventId`.
async fn accepted(f: &IngestFixture) -> (usize, Vec<u64>) {
    let dump = f.login.sandbox.events(f.advertiser_id()).await.unwrap();
    let mut counts: Vec<u64> = dump.counts_by_event_id.values().copied().collect();
    counts.sort_unstable();
    (dump.events.len(), counts)
}

async fn events_requests(f: &IngestFixture) -> usize {
    f.login
        .sandbox
        .requests(Some(f.login.client_id()), Some(EVENTS_PATH))
        .await
        .unwrap()
        .len()
}

async fn parked_view(f: &IngestFixture) -> ParkedView {
    ParkedCounts::new(&f.ctx().accounts)
        .views(std::slice::from_ref(&f.account.account_id))
        .await
        .unwrap()
        .get(&f.account.account_id)
        .copied()
        .unwrap_or_default()
}

/// Parks `three(prefix)` with Amazon answering 500 to the request (3 attempts).
async fn park_three(f: &IngestFixture, prefix: &str) {
    let fault = FaultSpec::status(500)
        .path_prefix(EVENTS_PATH)
        .account_id(f.advertiser_id())
        .times(3);
    f.login.sandbox.add_fault(&fault).await.unwrap();
    let resp = f.post(&three(prefix)).await;
    assert_eq!(statuses(&resp.json_body()), ["parked"; 3], "{}", resp.body);
}

fn dlq_url(f: &IngestFixture) -> String {
    f.ctx()
        .parked
        .dead_letter()
        .expect("the fixture has a DLQ")
        .queue_url()
        .to_string()
}

#[tokio::test]
async fn a_slow_amazon_gets_parked_answers_within_the_budget_then_one_delivery() {
    let f = IngestFixture::new().await;
    let s = &f.login.sandbox;
    let slow = s
        .add_fault(
            &FaultSpec::delay_ms(40_000)
                .path_prefix(EVENTS_PATH)
                .account_id(f.advertiser_id())
                .forever(),
        )
        .await
        .unwrap();
    let budget = HttpBudget {
        total: Duration::from_secs(6),
        reserve: Duration::from_secs(2),
    };
    let req = f.request(&three("slow"));
    let t0 = Instant::now();
    let resp = answer_within(
        &f.handler,
        req.clone(),
        Invocation::with_timeout(60),
        &json!({}),
        budget,
    )
    .await;
    let took = t0.elapsed();
    adsync_tests::openapi::assert_http_response_valid(&req.method, &req.path, &resp);
    assert!(took < budget.total, "answered after {took:?}");
    assert_eq!(resp.status, 207, "{}", resp.body);
    let body = resp.json_body();
    assert_eq!(statuses(&body), ["parked"; 3], "{body}");
    assert_eq!(parked_view(&f).await.conversions, 3);

    s.remove_fault(&slow).await.unwrap();
    let summary = f.redrive().await;
    assert_eq!(summary["delivered"], 3, "{summary}");
    // A second run finds nothing left.
    assert_eq!(f.redrive().await["messages"], 0);
    let (n, counts) = accepted(&f).await;
    assert_eq!(n, 3, "each event reached Amazon once");
    assert_eq!(
        counts,
        [1, 1, 1],
        "each eventId once (the id-less event has a generated one)"
    );
    assert_eq!(parked_view(&f).await.conversions, 0);
}

#[tokio::test]
async fn thirty_failed_redrives_then_recovery_deliver_once_with_nothing_dead_lettered() {
    let f = IngestFixture::new().await;
    // The request's 3 attempts, then 30 redrive runs of 3 attempts each.
    let fault = FaultSpec::status(500)
        .path_prefix(EVENTS_PATH)
        .account_id(f.advertiser_id())
        .times(3 + 30 * 3);
    f.login.sandbox.add_fault(&fault).await.unwrap();
    let resp = f.post(&three("outage")).await;
    assert_eq!(statuses(&resp.json_body()), ["parked"; 3]);
    for run in 1..=30 {
        let s = f.redrive().await;
        assert_eq!(
            (
                s["delivered"].as_u64(),
                s["requeued"].as_u64(),
                s["deadLettered"].as_u64()
            ),
            (Some(0), Some(3), Some(0)),
            "run {run}: {s}"
        );
    }
    assert_eq!(events_requests(&f).await, 3 + 30 * 3);
    // Amazon is back.
    let s = f.redrive().await;
    assert_eq!(s["delivered"], 3, "{s}");
    assert_eq!(s["acked"], 1, "{s}");
    let (n, counts) = accepted(&f).await;
    assert_eq!((n, counts), (3, vec![1, 1, 1]));
    let sqs = &f.login.aws.sqs;
    assert_eq!(queue_depth(sqs, f.ctx().parked.queue_url()).await, 0);
    assert_eq!(
        queue_depth(sqs, &dlq_url(&f)).await,
        0,
        "nothing dead-lettered"
    );
    assert_eq!(parked_view(&f).await, ParkedView::default());
}

#[tokio::test]
async fn an_inactive_accounts_parked_events_wait_and_go_after_the_relink() {
    let f = IngestFixture::new().await;
    park_three(&f, "relink").await;
    let accounts = &f.ctx().accounts;
    accounts
        .mark_reauthorization_required(&f.account.token_secret)
        .await
        .unwrap();
    let before = events_requests(&f).await;
    for _ in 0..3 {
        let s = f.redrive().await;
        assert_eq!(
            (s["delivered"].as_u64(), s["requeued"].as_u64()),
            (Some(0), Some(3)),
            "{s}"
        );
    }
    assert_eq!(
        events_requests(&f).await,
        before,
        "nothing sent while inactive"
    );

    // Still inactive when the age limit passes: dead-lettered, not dropped.
    let mut aged = f.ctx().clone();
    aged.settings.retry.max_age = Duration::from_millis(1);
    let s = aged.redrive(&Invocation::with_timeout(60)).await;
    assert_eq!(s.dead_lettered, 3, "{s:?}");
    assert_eq!(
        parked_view(&f).await,
        ParkedView {
            conversions_dead_lettered: 3,
            ..ParkedView::default()
        }
    );
    // The schedule's sweep leaves them while the account is not relinked.
    let moved = f.redrive_dlq(json!({"relinkedOnly": true})).await;
    assert_eq!(moved["moved"], 0, "{moved}");

    // Relink (what POST /oauth/confirm stores), then the schedule's sweep and the redrive.
    let mut relinked = f.account.clone();
    relinked.status = AccountStatus::Active;
    accounts.put_account(&relinked).await.unwrap();
    ParkedCounts::new(accounts)
        .mark_relinked(&f.account.account_id, adsync::runtime::now_ms())
        .await
        .unwrap();
    let mut moved = json!(null);
    for _ in 0..5 {
        // Messages left by the first sweep are invisible for the DLQ's visibility timeout.
        moved = f.redrive_dlq(json!({"relinkedOnly": true})).await;
        if moved["moved"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2_500)).await;
    }
    assert_eq!(moved["movedConversions"], 3, "{moved}");
    let s = f.redrive().await;
    assert_eq!(s["delivered"], 3, "{s}");
    let (n, counts) = accepted(&f).await;
    assert_eq!((n, counts), (3, vec![1, 1, 1]));
    assert_eq!(parked_view(&f).await, ParkedView::default());
}

#[tokio::test]
async fn a_dead_lettered_message_moved_back_twice_is_delivered_once() {
    let f = IngestFixture::new().await;
    park_three(&f, "dlq").await;
    // As if SQS had moved it after maxReceiveCount, twice (a duplicate delivery).
    let q = &f.ctx().parked;
    let mut got = Vec::new();
    for _ in 0..5 {
        got.extend(q.receive::<Value>(10).await.unwrap());
        if !got.is_empty() {
            break;
        }
    }
    assert_eq!(got.len(), 1);
    q.dead_letter_item(&got[0].item).await.unwrap();
    q.dead_letter_item(&got[0].item).await.unwrap();
    q.ack(&got[0].receipt_handle).await.unwrap();

    let moved = f.redrive_dlq(json!({})).await;
    assert_eq!(
        (moved["moved"].as_u64(), moved["movedConversions"].as_u64()),
        (Some(2), Some(6)),
        "{moved}"
    );
    let s = f.redrive().await;
    assert_eq!(
        (
            s["delivered"].as_u64(),
            s["alreadyDelivered"].as_u64(),
            s["acked"].as_u64()
        ),
        (Some(3), Some(3), Some(2)),
        "{s}"
    );
    let (n, counts) = accepted(&f).await;
    assert_eq!((n, counts), (3, vec![1, 1, 1]), "delivered once");
    let sqs = &f.login.aws.sqs;
    assert_eq!(queue_depth(sqs, &dlq_url(&f)).await, 0);
    assert_eq!(f.redrive_dlq(json!({})).await["moved"], 0);
}

#[tokio::test]
async fn events_amazon_refuses_on_redrive_go_to_the_dead_letter_queue() {
    let f = IngestFixture::new().await;
    park_three(&f, "refused").await;
    // Amazon now refuses the whole batch for good (400 on every split).
    let refuse = f
        .login
        .sandbox
        .add_fault(
            &FaultSpec::status(400)
                .path_prefix(EVENTS_PATH)
                .account_id(f.advertiser_id())
                .forever(),
        )
        .await
        .unwrap();
    let s = f.redrive().await;
    f.login.sandbox.remove_fault(&refuse).await.unwrap();
    assert_eq!(
        (
            s["rejected"].as_u64(),
            s["deadLettered"].as_u64(),
            s["requeued"].as_u64()
        ),
        (Some(3), Some(3), Some(0)),
        "{s}"
    );
    let dlq = f.ctx().parked.dead_letter().unwrap();
    let got = dlq.receive::<Value>(10).await.unwrap();
    assert_eq!(got.len(), 1);
    let reason = got[0].item["retry"]["deadLetterReason"]
        .as_str()
        .unwrap_or("");
    assert!(reason.contains("Amazon"), "{reason}");
    assert!(
        !got[0].item.to_string().contains("Buyer."),
        "no raw personal data"
    );
}

#[tokio::test]
async fn retries_and_waits_stop_at_the_requests_amazon_deadline() {
    use adsync::amazon::{AmazonError, RetryPolicy};
    use adsync::budget::with_amazon_deadline;
    let f = IngestFixture::new().await;
    // A patient policy: 10 attempts, 30 s each, up to 20 s between them.
    let client = f.login.client.clone().with_retry_policy(RetryPolicy {
        max_attempts: 10,
        base_delay: Duration::from_secs(3),
        max_delay: Duration::from_secs(20),
        request_timeout: Duration::from_secs(30),
    });
    let login = f.account.login();
    let body = br#"{"events":[{}]}"#.to_vec();
    let s = &f.login.sandbox;
    let call = |d: Duration| {
        let (client, login, body) = (client.clone(), login.clone(), body.clone());
        let adv = f.advertiser_id();
        async move {
            let t0 = Instant::now();
            let r = with_amazon_deadline(Instant::now() + d, async move {
                client.create_events(&login, adv, body, 1).await
            })
            .await;
            (r, t0.elapsed())
        }
    };

    // 429 with Retry-After: 10 s: not waited for inside a 2 s deadline.
    let throttle = FaultSpec::status(429)
        .retry_after(10)
        .path_prefix(EVENTS_PATH)
        .account_id(f.advertiser_id())
        .forever();
    let id = s.add_fault(&throttle).await.unwrap();
    let (r, took) = call(Duration::from_secs(2)).await;
    s.remove_fault(&id).await.unwrap();
    assert!(matches!(r, Err(AmazonError::Throttled { .. })), "{r:?}");
    assert!(took < Duration::from_millis(1_500), "{took:?}");
    assert_eq!(
        events_requests(&f).await,
        1,
        "no retry that cannot finish in time"
    );

    // Amazon takes 40 s: the attempt is cut at the deadline, no retry after it.
    let slow = FaultSpec::delay_ms(40_000)
        .path_prefix(EVENTS_PATH)
        .account_id(f.advertiser_id())
        .forever();
    let id = s.add_fault(&slow).await.unwrap();
    let (r, took) = call(Duration::from_secs(2)).await;
    s.remove_fault(&id).await.unwrap();
    assert_eq!(r.unwrap_err(), AmazonError::Timeout);
    assert!(
        took >= Duration::from_millis(1_900) && took < Duration::from_millis(2_600),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_request_too_big_for_its_budget_parks_what_it_could_not_claim() {
    let f = IngestFixture::new().await;
    let events: Vec<Value> = (0..3_000).map(|i| purchase("big", i)).collect();
    let req = f.request(&json!({ "events": events }));
    // Claims start only in the first third of the Amazon window (1 s of 3 s here).
    let budget = HttpBudget {
        total: Duration::from_secs(4),
        reserve: Duration::from_secs(1),
    };
    let t0 = Instant::now();
    let resp = answer_within(
        &f.handler,
        req,
        Invocation::with_timeout(60),
        &json!({}),
        budget,
    )
    .await;
    let took = t0.elapsed();
    assert!(took < budget.total, "answered after {took:?}");
    assert_eq!(resp.status, 207, "{}", resp.body);
    let body = resp.json_body();
    let (accepted, parked) = (
        body["totals"]["accepted"].as_u64().unwrap(),
        body["totals"]["parked"].as_u64().unwrap(),
    );
    assert_eq!(accepted + parked, 3_000, "{}", body["totals"]);
    assert!(
        parked > 0,
        "DynamoDB Local cannot take 3 000 claims in 1 s: {}",
        body["totals"]
    );
    let parked_result = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["status"] == "parked")
        .unwrap();
    assert!(
        parked_result["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("time budget"),
        "{parked_result}"
    );
    // The redrive claims and delivers the rest: every event reaches Amazon once.
    let mut delivered = 0;
    for _ in 0..5 {
        delivered += f.redrive().await["delivered"].as_u64().unwrap();
        if delivered == parked {
            break;
        }
    }
    assert_eq!(delivered, parked);
    let dump = f.login.sandbox.events(f.advertiser_id()).await.unwrap();
    assert_eq!(dump.events.len(), 3_000);
    assert!(dump.counts_by_event_id.values().all(|n| *n == 1));
}
