use super::*;

/// The dedupe table on DynamoDB Local; fails loudly when the stack's environment is missing.
pub(super) async fn store(window: Duration) -> DedupeStore {
    let table = std::env::var("DEDUPE_TABLE").unwrap_or_else(|_| {
            panic!("DEDUPE_TABLE is not set: run infra/scripts/stack-up.sh and `set -a; . .local/stack.env; set +a`")
        });
    assert!(
        std::env::var("AWS_ENDPOINT_URL_DYNAMODB").is_ok(),
        "AWS_ENDPOINT_URL_DYNAMODB is not set: source .local/stack.env (DynamoDB Local on 127.0.0.1:8000)"
    );
    let conf = crate::aws::config_loader().load().await;
    DedupeStore::new(Client::new(&conf), table, window)
}

pub(super) fn key() -> DedupeKey {
    DedupeKey::client(
        rand::random::<u32>() as i64 + 1,
        &format!("order-{}", uuid::Uuid::new_v4()),
    )
}

pub(super) fn later() -> u64 {
    now_ms() + 60_000
}

pub(super) fn claimed(o: ClaimOutcome) -> Claim {
    match o {
        ClaimOutcome::Claimed(c) => c,
        other => panic!("expected a claim, got {other:?}"),
    }
}

#[tokio::test]
async fn claim_complete_then_duplicate() {
    let d = store(Duration::from_secs(30 * 86_400)).await;
    let k = key();
    let c = claimed(d.claim(&k, "fp1", later(), "r1").await.unwrap());
    // A live holder: the second claimant is told who holds it and until when.
    match d.claim(&k, "fp1", later(), "r2").await.unwrap() {
        ClaimOutcome::Held { until_ms } => assert!(until_ms > now_ms()),
        other => panic!("{other:?}"),
    }
    assert!(d.complete(&c).await.unwrap());
    assert_eq!(
        d.claim(&k, "fp1", later(), "r3").await.unwrap(),
        ClaimOutcome::Completed {
            fingerprint: Some("fp1".into())
        }
    );
    let r = d.get(&k).await.unwrap().unwrap();
    assert_eq!(r.status, ClaimStatus::Completed);
    assert_eq!(r.in_progress_until, None);
    let window_end = now_ms() / 1000 + 30 * 86_400;
    assert!(
        r.expires_at + 5 >= window_end && r.expires_at <= window_end,
        "{r:?}"
    );
    // Completing twice is refused (the claim is no longer in progress).
    assert!(!d.complete(&c).await.unwrap());
    // Other content under the same id is a correction: claimed, and remembered once sent.
    let fix = claimed(d.claim(&k, "fp2", later(), "r4").await.unwrap());
    assert!(d.complete(&fix).await.unwrap());
    let r = d.get(&k).await.unwrap().unwrap();
    assert_eq!(
        (r.status, r.fingerprint.as_deref()),
        (ClaimStatus::Completed, Some("fp2"))
    );
}

#[tokio::test]
async fn release_lets_a_retry_through_and_lost_claims_cannot_write() {
    let d = store(Duration::from_secs(86_400)).await;
    let k = key();
    let c = claimed(d.claim(&k, "fp", later(), "r1").await.unwrap());
    assert!(d.release(&c).await.unwrap());
    assert_eq!(d.get(&k).await.unwrap(), None);
    let c2 = claimed(d.claim(&k, "fp", later(), "r2").await.unwrap());
    // The first holder's token is stale: it can neither complete nor release the new claim.
    assert!(!d.complete(&c).await.unwrap());
    assert!(!d.release(&c).await.unwrap());
    assert!(!d.mark_parked(&c, "p").await.unwrap());
    assert_eq!(
        d.get(&k).await.unwrap().unwrap().status,
        ClaimStatus::InProgress
    );
    assert!(d.complete(&c2).await.unwrap());
}

#[tokio::test]
async fn a_dead_holder_is_taken_over() {
    let d = store(Duration::from_secs(86_400)).await;
    let k = key();
    // The holder's deadline has passed: it died mid-send.
    let dead = claimed(d.claim(&k, "fp", now_ms() - 1, "r1").await.unwrap());
    let live = claimed(d.claim(&k, "fp", later(), "r2").await.unwrap());
    assert_ne!(dead.token, live.token);
    assert!(!d.complete(&dead).await.unwrap());
    assert!(d.complete(&live).await.unwrap());
}

#[tokio::test]
async fn the_window_ends() {
    let d = store(Duration::from_secs(0)).await;
    let k = key();
    let c = claimed(d.claim(&k, "fp", later(), "r1").await.unwrap());
    assert!(d.complete(&c).await.unwrap());
    // expiresAt = now (seconds); once a second has passed the id may be used again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    claimed(d.claim(&k, "fp", later(), "r2").await.unwrap());
}

#[tokio::test]
async fn parked_events_are_delivered_at_most_once() {
    let d = store(Duration::from_secs(86_400)).await;
    let k = key();
    let c = claimed(d.claim(&k, "fp", later(), "r1").await.unwrap());
    assert!(d.mark_parked(&c, "park-1").await.unwrap());
    // A webhook retry is told it is parked, never allowed to send.
    assert_eq!(
        d.claim(&k, "fp", later(), "r2").await.unwrap(),
        ClaimOutcome::Parked
    );
    assert_eq!(
        d.get(&k).await.unwrap().unwrap().park_id.as_deref(),
        Some("park-1")
    );
    let t = match d
        .take_parked(&k, "fp", now_ms(), later(), "redrive-1")
        .await
        .unwrap()
    {
        TakeOutcome::Taken(t) => t,
        other => panic!("{other:?}"),
    };
    // A second, concurrent redrive of the same message must not send it too.
    assert!(matches!(
        d.take_parked(&k, "fp", now_ms(), later(), "redrive-2")
            .await
            .unwrap(),
        TakeOutcome::Busy { .. }
    ));
    assert!(d.complete(&t).await.unwrap());
    assert_eq!(
        d.take_parked(&k, "fp", now_ms(), later(), "redrive-3")
            .await
            .unwrap(),
        TakeOutcome::Completed
    );
    assert!(matches!(
        d.claim(&k, "fp", later(), "r3").await.unwrap(),
        ClaimOutcome::Completed { .. }
    ));
}

#[tokio::test]
async fn take_parked_takes_over_dead_redrives_and_claims_missing_items() {
    let d = store(Duration::from_secs(86_400)).await;
    // An event without an id, parked under a park id.
    let k = DedupeKey::park(7, &uuid::Uuid::new_v4().to_string());
    d.put_parked(&k, "fp", "park-9", "r1").await.unwrap();
    assert!(
        d.put_parked(&k, "fp", "park-9", "r1").await.is_err(),
        "park ids are single use"
    );
    let dead = match d
        .take_parked(&k, "fp", now_ms(), now_ms() - 1, "redrive-1")
        .await
        .unwrap()
    {
        TakeOutcome::Taken(t) => t,
        other => panic!("{other:?}"),
    };
    let live = match d
        .take_parked(&k, "fp", now_ms(), later(), "redrive-2")
        .await
        .unwrap()
    {
        TakeOutcome::Taken(t) => t,
        other => panic!("{other:?}"),
    };
    assert!(!d.complete(&dead).await.unwrap());
    assert!(d.release(&live).await.unwrap());
    // Released (e.g. parked while another request held it, which then gave it up): claimed afresh.
    assert!(matches!(
        d.take_parked(&k, "fp", now_ms(), later(), "redrive-3")
            .await
            .unwrap(),
        TakeOutcome::Taken(_)
    ));
}

#[tokio::test]
async fn an_unclaimed_parked_correction_wins_over_older_content_only() {
    let d = store(Duration::from_secs(86_400)).await;
    let k = key();
    // Content A parked with a claim, then delivered by a retry.
    let a = claimed(d.claim(&k, "fpA", later(), "r1").await.unwrap());
    assert!(d.mark_parked(&a, "park-a").await.unwrap());
    let a_parked_at = now_ms();
    tokio::time::sleep(Duration::from_millis(5)).await;
    // Content B parked without a claim after A arrived: B is the correction.
    let b_parked_at = now_ms();
    let b = match d
        .take_parked(&k, "fpB", b_parked_at, later(), "redrive-1")
        .await
        .unwrap()
    {
        TakeOutcome::Taken(t) => t,
        other => panic!("{other:?}"),
    };
    // The old copy A (parked before B) is superseded, even while B is in flight.
    assert_eq!(
        d.take_parked(&k, "fpA", a_parked_at, later(), "redrive-2")
            .await
            .unwrap(),
        TakeOutcome::Superseded
    );
    assert!(d.complete(&b).await.unwrap());
    let r = d.get(&k).await.unwrap().unwrap();
    assert_eq!(
        (r.status, r.fingerprint.as_deref()),
        (ClaimStatus::Completed, Some("fpB"))
    );
    assert_eq!(r.content_at, Some(b_parked_at));
    assert_eq!(
        d.take_parked(&k, "fpB", b_parked_at, later(), "redrive-3")
            .await
            .unwrap(),
        TakeOutcome::Completed
    );
    // A live holder of older content makes the copy wait rather than be dropped.
    let k2 = key();
    claimed(d.claim(&k2, "fpOld", later(), "r2").await.unwrap());
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(matches!(
        d.take_parked(&k2, "fpNew", now_ms(), later(), "redrive-4")
            .await
            .unwrap(),
        TakeOutcome::Busy { .. }
    ));
}

#[tokio::test]
async fn concurrent_claims_have_one_winner() {
    let d = store(Duration::from_secs(86_400)).await;
    let k = key();
    let outcomes = futures::future::join_all((0..12).map(|i| {
        let d = d.clone();
        let k = k.clone();
        async move { d.claim(&k, "fp", later(), &format!("r{i}")).await.unwrap() }
    }))
    .await;
    let winners = outcomes
        .iter()
        .filter(|o| matches!(o, ClaimOutcome::Claimed(_)))
        .count();
    let held = outcomes
        .iter()
        .filter(|o| matches!(o, ClaimOutcome::Held { .. }))
        .count();
    assert_eq!((winners, held), (1, 11), "{outcomes:?}");
}
