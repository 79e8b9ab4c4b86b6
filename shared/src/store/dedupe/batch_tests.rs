//! `claim_many` / `complete_many` on DynamoDB Local: the same answers as the one-key calls.

use super::tests::{claimed, key, later, store};
use super::*;
use crate::store::dynamo::s;
use std::collections::HashMap;

fn reqs<'a>(keys: &'a [DedupeKey], fp: &'a str) -> Vec<ClaimRequest<'a>> {
    keys.iter()
        .map(|key| ClaimRequest {
            key,
            fingerprint: fp,
        })
        .collect()
}

/// The whole stored item, but the times that differ between two writes.
async fn raw(d: &DedupeStore, k: &DedupeKey) -> Vec<(String, String)> {
    let out = d
        .client
        .get_item()
        .table_name(&d.table)
        .key("pk", s(k.pk()))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    let mut v: Vec<(String, String)> = out
        .item
        .unwrap()
        .into_iter()
        .filter(|(name, _)| !["updatedAt", "expiresAt", "pk", "token"].contains(&name.as_str()))
        .map(|(name, v)| (name, format!("{v:?}")))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn one_transaction_answers_every_state_like_single_claims() {
    let d = store(Duration::from_secs(86_400)).await;
    // Fresh, completed (same content), completed (other content: a correction), parked, held.
    let keys: Vec<DedupeKey> = (0..5).map(|_| key()).collect();
    let done_same = claimed(d.claim(&keys[1], "fp", later(), "r0").await.unwrap());
    assert!(d.complete(&done_same).await.unwrap());
    let done_other = claimed(d.claim(&keys[2], "old", later(), "r0").await.unwrap());
    assert!(d.complete(&done_other).await.unwrap());
    let parked = claimed(d.claim(&keys[3], "fp", later(), "r0").await.unwrap());
    assert!(d.mark_parked(&parked, "park-1").await.unwrap());
    let until = later();
    claimed(d.claim(&keys[4], "fp", until, "r0").await.unwrap());

    let got = d.claim_many(&reqs(&keys, "fp"), later(), "r1", 4).await;
    let got: Vec<ClaimOutcome> = got.into_iter().map(Result::unwrap).collect();
    assert!(matches!(got[0], ClaimOutcome::Claimed(_)), "{got:?}");
    assert_eq!(
        got[1],
        ClaimOutcome::Completed {
            fingerprint: Some("fp".into())
        }
    );
    assert!(
        matches!(got[2], ClaimOutcome::Claimed(_)),
        "correction: {got:?}"
    );
    assert_eq!(got[3], ClaimOutcome::Parked);
    assert_eq!(got[4], ClaimOutcome::Held { until_ms: until });
    // The claims it made are real: a second claimant is told they are held.
    for k in [&keys[0], &keys[2]] {
        assert!(matches!(
            d.claim(k, "fp", later(), "r2").await.unwrap(),
            ClaimOutcome::Held { .. }
        ));
    }
}

#[tokio::test]
async fn racing_batches_over_overlapping_keys_claim_each_key_once() {
    let d = store(Duration::from_secs(86_400)).await;
    let keys: Vec<DedupeKey> = (0..450).map(|_| key()).collect();
    // Three claimants over overlapping windows of the keys, in different orders, at once.
    let a = reqs(&keys[..300], "fp");
    let mut b = reqs(&keys[150..], "fp");
    b.reverse();
    let c = reqs(&keys[100..400], "fp");
    let (ra, rb, rc) = tokio::join!(
        d.claim_many(&a, later(), "a", 3),
        d.claim_many(&b, later(), "b", 3),
        d.claim_many(&c, later(), "c", 3),
    );
    let mut winners: HashMap<String, usize> = HashMap::new();
    for (rs, answers) in [(&a, ra), (&b, rb), (&c, rc)] {
        assert_eq!(rs.len(), answers.len());
        for (r, answer) in rs.iter().zip(answers) {
            match answer.unwrap() {
                ClaimOutcome::Claimed(_) => *winners.entry(r.key.pk()).or_default() += 1,
                ClaimOutcome::Held { .. } => {}
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(winners.len(), keys.len(), "every key has a holder");
    assert!(winners.values().all(|&n| n == 1), "one holder per key");
}

#[tokio::test]
async fn batched_completion_writes_what_the_conditional_one_writes() {
    let d = store(Duration::from_secs(86_400)).await;
    let keys: Vec<DedupeKey> = (0..60).map(|_| key()).collect();
    let claims: Vec<Claim> = d
        .claim_many(&reqs(&keys, "fp"), later(), "r1", 4)
        .await
        .into_iter()
        .map(|o| claimed(o.unwrap()))
        .collect();
    let mut before = Vec::new();
    for k in &keys {
        before.push(completed_form(raw(&d, k).await));
    }
    // The first by the one-key call, the rest together: both leave what the claim wrote,
    // `COMPLETED`, without `inProgressUntil`.
    assert!(d.complete(&claims[0]).await.unwrap());
    let rest: Vec<&Claim> = claims[1..].iter().collect();
    assert!(
        d.complete_many(&rest, 4)
            .await
            .into_iter()
            .all(|r| r.unwrap())
    );
    for (k, expected) in keys.iter().zip(before) {
        assert_eq!(raw(&d, k).await, expected);
        assert_eq!(
            d.claim(k, "fp", later(), "r2").await.unwrap(),
            ClaimOutcome::Completed {
                fingerprint: Some("fp".into())
            }
        );
    }
}

/// An in-progress item as its completion leaves it.
fn completed_form(item: Vec<(String, String)>) -> Vec<(String, String)> {
    item.into_iter()
        .filter(|(name, _)| name != "inProgressUntil")
        .map(|(name, v)| match name.as_str() {
            "status" => (name, format!("{:?}", s("COMPLETED"))),
            _ => (name, v),
        })
        .collect()
}

#[tokio::test]
async fn a_claim_near_its_lease_end_completes_only_if_still_held() {
    let d = store(Duration::from_secs(86_400)).await;
    let (k1, k2) = (key(), key());
    // Leases shorter than the guard: completed conditionally, one at a time.
    let soon = now_ms() + 1_000;
    let mine = claimed(d.claim(&k1, "fp", soon, "r1").await.unwrap());
    let lost = claimed(d.claim(&k2, "fp", now_ms() + 300, "r1").await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The second holder died; a new request takes it over (with another fingerprint).
    let taker = claimed(d.claim(&k2, "new", later(), "r2").await.unwrap());
    let answers = d.complete_many(&[&mine, &lost], 4).await;
    assert!(answers[0].as_ref().unwrap());
    assert!(
        !answers[1].as_ref().unwrap(),
        "a lost claim cannot complete"
    );
    let r = d.get(&k2).await.unwrap().unwrap();
    assert_eq!(r.status, ClaimStatus::InProgress);
    assert_eq!(r.fingerprint.as_deref(), Some("new"));
    assert!(d.complete(&taker).await.unwrap());
}

#[tokio::test]
async fn a_claim_past_its_window_is_not_completed_over_its_new_holder() {
    // A one-second window: the item is free to any claim after it, whatever the lease says.
    let d = store(Duration::from_secs(1)).await;
    let k = key();
    let old = claimed(d.claim(&k, "fp", later(), "r1").await.unwrap());
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let taker = claimed(d.claim(&k, "new", later(), "r2").await.unwrap());
    let answers = d.complete_many(&[&old], 4).await;
    assert!(!answers[0].as_ref().unwrap(), "the old claim is lost");
    assert_eq!(
        d.get(&k).await.unwrap().unwrap().fingerprint.as_deref(),
        Some("new")
    );
    assert!(d.complete(&taker).await.unwrap());
}
