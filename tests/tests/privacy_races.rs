//! Erasure races against the local stack: a qualification older than an erasure that arrives
//! between the erasure's tombstone and its ledger scan, and a backfill page read before the
//! erasure deleted the rows but sent after its `remove`.
//!
//! Run: `set -a; . .local/stack.env; set +a; cargo test -p adsync-tests --test privacy_races`

use adsync::export::erasure::{ErasureOptions, run_job, store};
use adsync::export::privacy::create_deletion;
use adsync::runtime::Invocation;
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

fn qualified(seg: &str, id_type: &str, device: &str, ts_ms: i64) -> Value {
    json!({"segmentId": seg, "deviceId": device, "idType": id_type, "status": "qualified", "timestamp": iso(ts_ms)})
}

async fn post_deletion(rig: &PrivacyRig, devices: &[(&str, &str)]) -> String {
    let body = json!({"devices": devices.iter().map(|(t, d)| json!({"idType": t, "deviceId": d})).collect::<Vec<_>>()});
    let r = create_deletion(
        &rig.ctx,
        &json_req("POST", "/privacy/deletions", &body),
        &Invocation::with_timeout(60),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    r.json_body()["deletionId"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn an_older_qualification_between_tombstone_and_scan_is_still_removed_from_audiences() {
    let rig = PrivacyRig::new(1).await;
    let s1 = seg();
    let maps = rig.destination(0, std::slice::from_ref(&s1)).await;
    let audience = maps[0].audience_id.unwrap();
    let (erased, keep) = (uid("maid-"), uid("maid-"));
    let t0 = chrono::Utc::now().timestamp_millis() - 60_000;
    let r = rig
        .qualify(json!([
            qualified(&s1, "MAID", &erased, t0),
            qualified(&s1, "MAID", &keep, t0)
        ]))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(rig.sandbox.members(audience).await.unwrap().len(), 2);

    // The erasure writes its tombstones, then stops before its ledger scan.
    let id = post_deletion(&rig, &[("MAID", erased.as_str())]).await;
    let st = store(&rig.ctx);
    let short = ErasureOptions {
        lease: Duration::from_millis(300),
        ..Default::default()
    };
    let crash = ErasureOptions {
        crash_after: Some("tombstones"),
        ..short.clone()
    };
    let err = run_job(&rig.ctx, &st, &id, &Invocation::with_timeout(60), &crash)
        .await
        .unwrap_err();
    assert!(err.contains("tombstones"), "{err}");

    // A qualification newer than the row but older than the erasure replaces the row and is
    // taken back: the scan will find nothing of the device in the ledger.
    let r = rig
        .qualify(json!([qualified(&s1, "MAID", &erased, t0 + 1_000)]))
        .await;
    assert_eq!(r.json_body()["results"][0]["status"], "stale", "{}", r.body);

    // Checked after the audience step, before the user deletion (which the sandbox also applies
    // to audiences): the erasure's own `remove` took the device out.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let until_audiences = ErasureOptions {
        crash_after: Some("audiences"),
        ..short.clone()
    };
    let err = run_job(
        &rig.ctx,
        &st,
        &id,
        &Invocation::with_timeout(60),
        &until_audiences,
    )
    .await
    .unwrap_err();
    assert!(err.contains("audiences"), "{err}");
    assert_eq!(
        rig.sandbox.members(audience).await.unwrap(),
        vec![format!("MAID-{keep}")],
        "the erased device left the audience"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let status = run_job(&rig.ctx, &st, &id, &Invocation::with_timeout(60), &short)
        .await
        .unwrap();
    assert_eq!(status, "done");
}

#[tokio::test]
async fn a_backfill_page_holding_an_erased_device_does_not_add_it() {
    use adsync::export::members::{BackfillOptions, run_backfill_for};
    use adsync::store::erasures::device_hash;
    use adsync::store::ledger::LedgerRow;
    let rig = PrivacyRig::new(1).await;
    let s1 = seg();
    let (erased, keep, newer) = (uid("maid-"), uid("maid-"), uid("maid-"));
    let t0 = chrono::Utc::now().timestamp_millis() - 60_000;
    // Rows as a page read before the erasure's ledger step still holds them.
    for (d, ts) in [(&erased, t0), (&keep, t0), (&newer, t0 + 5_000)] {
        let row = LedgerRow {
            segment_id: s1.clone(),
            device: format!("MAID-{d}"),
            qualified: true,
            ts_ms: ts,
            consent: None,
        };
        rig.ctx.ledger.upsert(&row).await.unwrap();
    }
    // Both erased at t0 + 1 s; `newer` qualified again after its erasure, so it stays.
    let st = store(&rig.ctx);
    for d in [&erased, &newer] {
        st.put_tombstone(&device_hash(&format!("MAID-{d}")), t0 + 1_000, "del-test")
            .await
            .unwrap();
    }

    let maps = rig.destination(0, std::slice::from_ref(&s1)).await;
    let audience = maps[0].audience_id.unwrap();
    let key = (maps[0].destination_id.clone(), s1.clone());
    let mut members = Vec::new();
    for _ in 0..10 {
        run_backfill_for(
            &rig.ctx,
            &Invocation::with_timeout(60),
            &BackfillOptions::default(),
            std::slice::from_ref(&key),
        )
        .await
        .unwrap();
        members = rig.sandbox.members(audience).await.unwrap();
        members.sort();
        if members.len() >= 2 {
            break;
        }
    }
    let mut expect = vec![format!("MAID-{keep}"), format!("MAID-{newer}")];
    expect.sort();
    assert_eq!(members, expect, "the erased device is not added");
}
