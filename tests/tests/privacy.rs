//! Erasure (`POST /privacy/deletions`, `GET /privacy/deletions/{id}`) against the local stack
//! (DynamoDB Local, moto, the sandbox implementing `PATCH /v2/dp/users` strictly): every audience
//! emptied, one user deletion per advertiser with the contract's body, tombstones against older
//! qualifications, a crash between steps resumed without duplicate calls, inactive advertisers
//! waiting, and no raw id left in logs, DynamoDB items or SQS messages.
//!
//! Run: `set -a; . .local/stack.env; set +a; cargo test -p adsync-tests --test privacy`

use adsync::export::erasure::{ErasureOptions, run_erasures, run_job, store};
use adsync::export::privacy::{create_deletion, get_deletion};
use adsync::runtime::Invocation;
use adsync::store::accounts::AccountStatus;
use adsync_tests::privacy::{PrivacyRig, json_req};
use serde_json::{Value, json};
use std::time::Duration;

fn seg() -> String {
    format!("seg-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

fn uid(p: &str) -> String {
    format!("{p}{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339()
}

/// Qualifies every `(idType, id)` in every segment at `ts_ms`; asserts all applied.
async fn qualify_all(rig: &PrivacyRig, devices: &[(&str, &str)], segs: &[String], ts_ms: i64) {
    let items: Vec<Value> = segs
        .iter()
        .flat_map(|s| {
            devices.iter().map(move |(t, d)| {
                json!({"segmentId": s, "deviceId": d, "idType": t, "status": "qualified", "timestamp": iso(ts_ms)})
            })
        })
        .collect();
    let r = rig.qualify(Value::Array(items)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json_body()["delivery"]["parked"], 0, "{}", r.body);
}

async fn post_deletion(rig: &PrivacyRig, devices: &[(&str, &str)]) -> Value {
    let body = json!({"devices": devices.iter().map(|(t, d)| json!({"idType": t, "deviceId": d})).collect::<Vec<_>>()});
    let inv = Invocation::with_timeout(60);
    let r = create_deletion(
        &rig.ctx,
        &json_req("POST", "/privacy/deletions", &body),
        &inv,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    adsync_tests::openapi::assert_http_response_valid("POST", "/privacy/deletions", &r);
    r.json_body()
}

async fn job(rig: &PrivacyRig, id: &str) -> Value {
    let r = get_deletion(&rig.ctx, id).await;
    assert_eq!(r.status, 200, "{}", r.body);
    adsync_tests::openapi::assert_http_response_valid(
        "GET",
        &format!("/privacy/deletions/{id}"),
        &r,
    );
    r.json_body()
}

async fn members(rig: &PrivacyRig, audience: i64) -> Vec<String> {
    rig.sandbox.members(audience).await.unwrap()
}

#[tokio::test]
async fn erasing_three_devices_empties_four_audiences_of_two_advertisers() {
    let (logs, _guard) = adsync_tests::stack::capture_logs();
    let rig = PrivacyRig::new(2).await;
    let (s1, s2, s3, s4) = (seg(), seg(), seg(), seg());
    let mut maps = rig.destination(0, &[s1.clone(), s2.clone()]).await;
    maps.extend(rig.destination(1, &[s3.clone(), s4.clone()]).await);
    let (e1, e2, e3, keep) = (uid("maid-"), uid("cookie-"), uid("ext_"), uid("keep-"));
    let erased = [
        ("MAID", e1.as_str()),
        ("COOKIE", e2.as_str()),
        ("EXTERNAL_USER_ID", e3.as_str()),
    ];
    let mut all = erased.to_vec();
    all.push(("COOKIE", keep.as_str()));
    let segs = [s1.clone(), s2.clone(), s3.clone(), s4.clone()];
    let t0 = chrono::Utc::now().timestamp_millis() - 60_000;
    qualify_all(&rig, &all, &segs, t0).await;
    for m in &maps {
        assert_eq!(members(&rig, m.audience_id.unwrap()).await.len(), 4);
    }

    let created = post_deletion(&rig, &erased).await;
    let id = created["deletionId"].as_str().unwrap().to_string();
    assert_eq!(
        created["status"], "running",
        "the slice is off: queued only"
    );
    let out = run_erasures(
        &rig.ctx,
        &Invocation::with_timeout(120),
        &ErasureOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(out["jobs"][0]["status"], "done", "{out}");

    let j = job(&rig, &id).await;
    assert_eq!(j["status"], "done", "{j}");
    assert_eq!(
        j["steps"]["ledger"]["rowsRemoved"], 12,
        "3 devices × 4 segments: {j}"
    );
    assert_eq!(
        j["steps"]["audiences"]["targets"]
            .as_object()
            .unwrap()
            .len(),
        2,
        "{j}"
    );
    for m in &maps {
        assert_eq!(
            members(&rig, m.audience_id.unwrap()).await,
            vec![format!("COOKIE-{keep}")],
            "only the kept device stays in {}",
            m.segment_id
        );
    }
    // One user deletion per advertiser, with the contract's body.
    let dels = rig.user_deletions().await;
    assert_eq!(dels.len(), 2, "{dels:?}");
    let requested = j["requestedAtMs"].as_i64().unwrap();
    let mut advertisers: Vec<String> = Vec::new();
    for d in &dels {
        let b = &d["body"];
        assert_eq!(b["operation"], "DELETE");
        let users = b["users"].as_array().unwrap();
        assert_eq!(users.len(), 3);
        let adv = users[0]["advertiserId"]
            .as_str()
            .expect("a string")
            .to_string();
        for (u, (t, v)) in users.iter().zip(erased.iter()) {
            assert_eq!(
                u,
                &json!({"userId": {"type": t, "value": v}, "advertiserId": adv, "consentTime": requested})
            );
        }
        advertisers.push(adv);
    }
    advertisers.sort();
    let mut expect: Vec<String> = rig.accounts.iter().map(|a| a.account_id.clone()).collect();
    expect.sort();
    assert_eq!(advertisers, expect);

    // Older than the erasure: stale, not stored, not sent. Newer: re-added.
    let a1 = maps
        .iter()
        .find(|m| m.segment_id == s1)
        .unwrap()
        .audience_id
        .unwrap();
    let old = json!([{"segmentId": s1, "deviceId": e1, "idType": "MAID", "status": "qualified", "timestamp": iso(requested - 1000)}]);
    let r = rig.qualify(old).await;
    assert_eq!(r.json_body()["results"][0]["status"], "stale", "{}", r.body);
    let key = (s1.clone(), format!("MAID-{e1}"));
    assert!(
        rig.ctx
            .ledger
            .get_many(std::slice::from_ref(&key))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(!members(&rig, a1).await.contains(&format!("MAID-{e1}")));
    let newer = json!([{"segmentId": s1, "deviceId": e1, "idType": "MAID", "status": "qualified", "timestamp": iso(requested + 1)}]);
    let r = rig.qualify(newer).await;
    assert_eq!(
        r.json_body()["results"][0]["status"],
        "applied",
        "{}",
        r.body
    );
    assert!(members(&rig, a1).await.contains(&format!("MAID-{e1}")));

    // No raw id of an erased device (e1 came back with a newer qualification) anywhere.
    let hits = rig
        .find_anywhere(&[e2.as_str(), e3.as_str()], &logs.contents())
        .await;
    assert!(hits.is_empty(), "raw ids left behind: {hits:?}");
    assert!(
        j.to_string().find(&e1).is_none(),
        "the job shows hashes only"
    );
}

#[tokio::test]
async fn a_crash_between_steps_resumes_and_finishes_without_duplicate_calls() {
    let rig = PrivacyRig::new(2).await;
    let (s1, s2) = (seg(), seg());
    let maps = rig.destination(0, &[s1.clone(), s2.clone()]).await;
    let (d1, d2) = (uid("maid-"), uid("maid-"));
    let devices = [("MAID", d1.as_str()), ("MAID", d2.as_str())];
    qualify_all(
        &rig,
        &devices,
        &[s1.clone(), s2.clone()],
        chrono::Utc::now().timestamp_millis() - 5000,
    )
    .await;
    let patches_before = rig.calls("PATCH", "/v2/dp/audience").await;

    let id = post_deletion(&rig, &devices).await["deletionId"]
        .as_str()
        .unwrap()
        .to_string();
    let st = store(&rig.ctx);
    let short = ErasureOptions {
        lease: Duration::from_millis(500),
        ..Default::default()
    };
    for step in ["tombstones", "ledger", "audiences", "users"] {
        let opts = ErasureOptions {
            crash_after: Some(step),
            ..short.clone()
        };
        let err = run_job(&rig.ctx, &st, &id, &Invocation::with_timeout(60), &opts)
            .await
            .unwrap_err();
        assert!(err.contains(step), "{err}");
        let j = job(&rig, &id).await;
        assert_eq!(
            j["steps"][step]["state"], "done",
            "checkpoint of {step}: {j}"
        );
        // A new invocation must wait for the dead one's lease.
        let busy = run_job(&rig.ctx, &st, &id, &Invocation::with_timeout(60), &short)
            .await
            .unwrap();
        assert_eq!(busy, "busy");
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let status = run_job(&rig.ctx, &st, &id, &Invocation::with_timeout(60), &short)
        .await
        .unwrap();
    assert_eq!(status, "done");
    for m in &maps {
        assert!(members(&rig, m.audience_id.unwrap()).await.is_empty());
    }
    assert_eq!(
        rig.calls("PATCH", "/v2/dp/audience").await - patches_before,
        1,
        "one remove body for the one account"
    );
    assert_eq!(
        rig.calls("PATCH", "/v2/dp/users").await,
        2,
        "one user deletion per advertiser, none repeated"
    );
    assert_eq!(rig.user_deletions().await.len(), 2);
    let item = st.get_job(&id).await.unwrap().unwrap();
    assert!(
        item.devices.is_none(),
        "the raw ids leave the job when it completes"
    );
}

#[tokio::test]
async fn an_inactive_advertiser_waits_visibly_and_is_served_once_active() {
    let rig = PrivacyRig::new(2).await;
    let s1 = seg();
    rig.destination(0, std::slice::from_ref(&s1)).await;
    let d = uid("cookie-");
    qualify_all(
        &rig,
        &[("COOKIE", d.as_str())],
        std::slice::from_ref(&s1),
        chrono::Utc::now().timestamp_millis() - 5000,
    )
    .await;
    let mut second = rig.accounts[1].clone();
    second.status = AccountStatus::ReauthorizationRequired;
    rig.ctx.accounts.put_account(&second).await.unwrap();

    let id = post_deletion(&rig, &[("COOKIE", d.as_str())]).await["deletionId"]
        .as_str()
        .unwrap()
        .to_string();
    run_erasures(
        &rig.ctx,
        &Invocation::with_timeout(60),
        &ErasureOptions::default(),
    )
    .await
    .unwrap();
    let j = job(&rig, &id).await;
    assert_eq!(j["status"], "waiting", "{j}");
    let waiting = &j["steps"]["users"]["targets"][&second.account_id];
    assert_eq!(waiting["state"], "waiting", "{j}");
    assert!(waiting["error"].as_str().unwrap().contains("Relink"), "{j}");
    assert_eq!(
        j["steps"]["users"]["targets"][&rig.accounts[0].account_id]["state"],
        "done"
    );
    assert_eq!(rig.user_deletions().await.len(), 1);
    assert!(
        store(&rig.ctx)
            .get_job(&id)
            .await
            .unwrap()
            .unwrap()
            .devices
            .is_some(),
        "kept until done"
    );

    second.status = AccountStatus::Active;
    rig.ctx.accounts.put_account(&second).await.unwrap();
    run_erasures(
        &rig.ctx,
        &Invocation::with_timeout(60),
        &ErasureOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(job(&rig, &id).await["status"], "done");
    assert_eq!(
        rig.user_deletions().await.len(),
        2,
        "the first advertiser is not called again"
    );
}

#[tokio::test]
async fn bad_deletion_requests_name_the_field() {
    let rig = PrivacyRig::new(1).await;
    let inv = Invocation::with_timeout(30);
    for (body, field) in [
        (json!({"devices": []}), "devices"),
        (
            json!({"devices": [{"idType": "MAID", "deviceId": "ok"}, {"idType": "IDFA", "deviceId": "x"}]}),
            "devices[1].idType",
        ),
        (
            json!({"devices": [{"idType": "COOKIE", "deviceId": "has space"}]}),
            "devices[0].deviceId",
        ),
    ] {
        let r = create_deletion(
            &rig.ctx,
            &json_req("POST", "/privacy/deletions", &body),
            &inv,
        )
        .await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.json_body()["error"]["field"], field, "{}", r.body);
    }
    let r = get_deletion(&rig.ctx, "nope").await;
    assert_eq!(r.status, 404);
}
