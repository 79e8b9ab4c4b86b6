//! `POST /qualifications` under racing requests, against the local stack: two requests with
//! overlapping items (and repeated keys inside each) end with the newest timestamp of every
//! key in the ledger, whatever order their batched writes land in, and Amazon's audience equal
//! to the ledger. Also the batched ledger write on its own: racing batches over the same keys.
//!
//! Run: `cargo test -p adsync-tests --test qualifications_race` (stack env loaded).

use adsync::runtime::{Invocation, now_ms};
use adsync::store::ledger::{LedgerRow, Upsert};
use adsync_tests::export_rig::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// A deterministic spread of timestamps: key `i` of request `r` (0 or 1).
fn ts_of(base: i64, r: usize, i: usize) -> i64 {
    // Request 0 is newer on even keys, request 1 on odd ones; some keys tie.
    let bump = ((i * 7919 + r * 104_729) % 50) as i64;
    match (i.is_multiple_of(5), (i + r).is_multiple_of(2)) {
        (true, _) => base + 1_000,
        (false, true) => base + 2_000 + bump,
        (false, false) => base + 1_000 + bump,
    }
}

fn item(seg: &str, dev: usize, ts: i64, qualified: bool) -> Value {
    let status = if qualified {
        "qualified"
    } else {
        "unqualified"
    };
    json!({"segmentId": seg, "deviceId": format!("race{dev:05}"), "idType": "COOKIE", "status": status, "timestamp": ts})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_racing_requests_with_overlapping_items_keep_the_newest_timestamp_per_key() {
    let rig = rig(1).await;
    let seg = seg_id();
    let (dest, maps) = destination_with(&rig, &[&seg], 3600).await;
    run_jobs_until_done(&rig, &dest, &seg, &opts(2000)).await;
    let audience = maps[0].audience_id.unwrap();
    let base = now_ms() as i64 - 120_000;

    // Request 0: devices 0..600; request 1: devices 300..900 (300 shared). Each also repeats
    // 40 of its keys with an older timestamp and the other status.
    let mut want: BTreeMap<String, (i64, bool)> = BTreeMap::new();
    let mut bodies = Vec::new();
    for (r, range) in [(0usize, 0..600usize), (1, 300..900)] {
        let mut items = Vec::new();
        for i in range.clone() {
            let (ts, q) = (ts_of(base, r, i), (i + r) % 3 != 0);
            items.push(item(&seg, i, ts, q));
            let k = format!("COOKIE-race{i:05}");
            // On a tie the first write wins: either request's state is right then.
            let e = want.entry(k).or_insert((ts, q));
            if ts > e.0 {
                *e = (ts, q);
            }
        }
        for i in range.step_by(15) {
            items.push(item(&seg, i, ts_of(base, r, i) - 500, (i + r) % 3 == 0));
        }
        items.reverse();
        bodies.push(json!({ "qualifications": items }));
    }
    let post = |b: &Value| {
        let req = json_req("POST", "/qualifications", b);
        let ctx = rig.ctx.clone();
        async move {
            let r = adsync::export::members::handle_qualifications(
                &ctx,
                &req,
                &Invocation::with_timeout(60),
            )
            .await;
            checked(&req, &r)
        }
    };
    let ((s0, a0), (s1, a1)) = tokio::join!(post(&bodies[0]), post(&bodies[1]));
    assert_eq!((s0, s1), (200, 200), "{a0}\n{a1}");
    for a in [&a0, &a1] {
        assert_eq!(a["totals"]["failed"], 0, "{a}");
        assert_eq!(a["totals"]["received"], 640, "{a}");
        assert_eq!(
            a["totals"]["applied"].as_u64().unwrap() + a["totals"]["stale"].as_u64().unwrap(),
            640
        );
    }
    // Every older repeat inside a request is stale.
    for a in [&a0, &a1] {
        let stale_repeats = a["results"].as_array().unwrap()[..40]
            .iter()
            .filter(|r| r["status"] == "stale")
            .count();
        assert_eq!(stale_repeats, 40, "{a}");
    }

    let keys: Vec<(String, String)> = want.keys().map(|k| (seg.clone(), k.clone())).collect();
    let rows = rig.ctx.ledger.get_many(&keys).await.unwrap();
    assert_eq!(rows.len(), want.len());
    for row in &rows {
        let (ts, q) = want[&row.device];
        assert_eq!(row.ts_ms, ts, "{}: not the newest timestamp", row.device);
        // A tie (every fifth key) keeps whichever came first; otherwise the newest status.
        let i: usize = row
            .device
            .trim_start_matches("COOKIE-race")
            .parse()
            .unwrap();
        if !i.is_multiple_of(5) {
            assert_eq!(row.qualified, q, "{}: not the newest status", row.device);
        }
    }
    assert_eq!(
        members(&rig, audience).await,
        ledger_qualified(&rig, &seg).await,
        "Amazon ends with the ledger's state"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_ledger_batches_over_the_same_keys_keep_the_newest_row() {
    let rig = rig(1).await;
    let seg = seg_id();
    let row = |i: usize, ts_ms: i64| LedgerRow {
        segment_id: seg.clone(),
        device: format!("COOKIE-lb{i:04}"),
        qualified: ts_ms % 2 == 0,
        ts_ms,
        consent: None,
    };
    // Three batches of the same 100 keys; the newest version of key i is in batch i % 3.
    let batches: Vec<Vec<LedgerRow>> = (0..3)
        .map(|b| {
            (0..100)
                .map(|i| row(i, 1_000 + if i % 3 == b { 100 } else { b as i64 }))
                .collect()
        })
        .collect();
    let l = &rig.ctx.ledger;
    let (r0, r1, r2) = tokio::join!(
        l.upsert_batch(&batches[0]),
        l.upsert_batch(&batches[1]),
        l.upsert_batch(&batches[2])
    );
    let mut applied_newest = 0;
    for (b, res) in [r0, r1, r2].into_iter().enumerate() {
        for (i, r) in res.into_iter().enumerate() {
            let r = r.unwrap_or_else(|e| panic!("batch {b} row {i}: {e}"));
            if i % 3 == b {
                // The newest version of a key is never stale.
                assert_eq!(r, Upsert::Applied, "batch {b} row {i}");
                applied_newest += 1;
            }
        }
    }
    assert_eq!(applied_newest, 100);
    let keys: Vec<(String, String)> = (0..100).map(|i| (seg.clone(), row(i, 0).device)).collect();
    let got: BTreeSet<(String, i64)> = rig
        .ctx
        .ledger
        .get_many(&keys)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.device, r.ts_ms))
        .collect();
    let want: BTreeSet<(String, i64)> = (0..100).map(|i| (row(i, 0).device, 1_100)).collect();
    assert_eq!(got, want);
    // A replay of the newest batch is all stale: nothing moves back or forward.
    let newest: Vec<LedgerRow> = (0..100).map(|i| row(i, 1_100)).collect();
    let again = l.upsert_batch(&newest).await;
    assert!(again.iter().all(|r| matches!(r, Ok(Upsert::Stale))));
}
