//! Audiences that stay true at Amazon, against the local stack: membership refresh across
//! several TTLs (the sandbox expires members; its per-audience clock makes three TTLs take
//! seconds), refresh and backfill sharing Amazon's budgets, size and match rate read by the
//! schedule, and settings PATCHed onto the audiences.
//!
//! Run: `cargo test -p adsync-tests --test segments_upkeep` (stack env loaded).

use adsync::export::upkeep::{UpkeepOptions, run_upkeep};
use adsync::runtime::now_ms;
use adsync_tests::export_rig::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

/// The upkeep of a scheduled run at `now + offset_ms` (size reads every time, no purge wait).
async fn upkeep_at(rig: &Rig, offset_ms: i64) -> Value {
    let o = UpkeepOptions {
        size_interval: Duration::ZERO,
        purge_settle: Duration::ZERO,
    };
    let now = now_ms() as i64;
    run_upkeep(&rig.ctx, now + 30_000, &o, now + offset_ms).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_two_minute_ttl_keeps_every_qualified_member_across_three_ttls() {
    let rig = rig(1).await;
    let seg = seg_id();
    seed(&rig, &seg, "rf", 60, 4).await;
    let (dest, maps) = destination_with(&rig, &[&seg], 120).await;
    let audience = maps[0].audience_id.unwrap();
    let o = opts(20);
    run_jobs_until_done(&rig, &dest, &seg, &o).await;
    assert_eq!(
        members(&rig, audience).await,
        ledger_qualified(&rig, &seg).await
    );
    let (_, v) = get_destination(&rig, &dest).await;
    let due = v["mappings"][0]["refresh"]["nextDueAt"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!due.is_empty(), "{v}");

    // Before half the TTL nothing is due.
    let plan = upkeep_at(&rig, 0).await;
    assert_eq!(plan["refresh"]["started"], 0, "{plan}");

    let mut gone: BTreeSet<String> = BTreeSet::new();
    // Six half-TTL steps: three TTLs on the audience's clock.
    for step in 1..=6i64 {
        rig.sandbox
            .advance_audience_clock(audience, 60)
            .await
            .unwrap();
        let plan = upkeep_at(&rig, step * 60_000).await;
        assert_eq!(plan["refresh"]["started"], 1, "step {step}: {plan}");
        if step == 2 || step == 4 {
            // Members leave while refreshes run: they must stay gone.
            let q: Vec<String> = ledger_qualified(&rig, &seg)
                .await
                .into_iter()
                .take(3)
                .collect();
            let refs: Vec<&str> = q.iter().map(String::as_str).collect();
            qualify(&rig, &seg, &refs, "unqualified").await;
            gone.extend(q);
        }
        let (_, v) = get_destination(&rig, &dest).await;
        assert_eq!(
            v["mappings"][0]["refresh"]["progress"]["state"], "running",
            "{v}"
        );
        run_jobs_until_done(&rig, &dest, &seg, &o).await;
        let qualified = ledger_qualified(&rig, &seg).await;
        assert_eq!(members(&rig, audience).await, qualified, "step {step}");
        assert!(gone.iter().all(|g| !qualified.contains(g)));
    }
    assert_eq!(gone.len(), 6);
    let (_, v) = get_destination(&rig, &dest).await;
    let r = &v["mappings"][0]["refresh"];
    assert!(
        r["lastCompletedAt"].is_string() && r["progress"].is_null(),
        "{v}"
    );
    assert_eq!(v["mappings"][0]["backfill"]["purpose"], "refresh");

    // Without a refresh, a full TTL later the sandbox has dropped everyone: the test above
    // could fail.
    rig.sandbox
        .advance_audience_clock(audience, 121)
        .await
        .unwrap();
    assert!(members(&rig, audience).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refresh_and_backfill_share_the_patch_and_metadata_budgets_and_sizes_appear() {
    let rig = rig(1).await;
    let (small, big) = (seg_id(), seg_id());
    seed(&rig, &small, "sm", 400, 0).await;
    let (dest, maps) = destination_with(&rig, &[&small], 120).await;
    let o = opts(4);
    run_jobs_until_done(&rig, &dest, &small, &o).await;

    // A second mapping with a big backfill, while the first one's refresh is due.
    seed(&rig, &big, "bg", 2_000, 0).await;
    put_segment(&rig, &big, json!([])).await;
    let req = json_req(
        "POST",
        &format!("/destinations/{dest}/mappings"),
        &json!({"segmentId": big}),
    );
    let inv = adsync::runtime::Invocation::with_timeout(30);
    let r = adsync::export::destinations::add_mappings(&rig.ctx, &dest, &req, &inv).await;
    assert_eq!(checked(&req, &r).0, 202);
    adsync::export::destinations::create_pending_audiences(&rig.ctx, &inv, Duration::from_secs(20))
        .await;
    let plan = upkeep_at(&rig, 61_000).await;
    assert_eq!(plan["refresh"]["started"], 1, "{plan}");
    assert!(
        plan["metadata"]["sizesRead"].as_u64().unwrap() >= 1,
        "{plan}"
    );

    // Two scheduled invocations at once, as overlapping schedules would run them.
    let (a, b) = tokio::join!(
        run_jobs_until_done(&rig, &dest, &small, &o),
        run_jobs_until_done(&rig, &dest, &big, &o)
    );
    let _ = (a, b);
    let big_audience = rig
        .ctx
        .destinations
        .get_mapping(&dest, &big)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        members(&rig, big_audience.audience_id.unwrap()).await,
        ledger_qualified(&rig, &big).await
    );
    assert_eq!(
        members(&rig, maps[0].audience_id.unwrap()).await,
        ledger_qualified(&rig, &small).await
    );

    let (patches, meta) = calls(&rig).await;
    assert!(patches.len() > 400, "{} PATCH requests", patches.len());
    assert!(
        patches.iter().chain(&meta).all(|r| r.status != 429),
        "Amazon throttled us"
    );
    // Amazon's (and the sandbox's) window: at most 100 requests in any 975 ms.
    let mut at: Vec<i64> = patches.iter().map(|r| r.at_ms).collect();
    at.sort_unstable();
    for (i, t) in at.iter().enumerate() {
        let in_window = at[i..].iter().take_while(|x| **x < t + 975).count();
        assert!(in_window <= 100, "{in_window} PATCH requests within 975 ms");
    }
    let mut mt: Vec<i64> = meta.iter().map(|r| r.at_ms).collect();
    mt.sort_unstable();
    for w in mt.windows(2) {
        assert!(
            w[1] - w[0] >= 1000,
            "metadata calls {} ms apart",
            w[1] - w[0]
        );
    }

    // Size and match rate as the schedule read them (a GET never calls Amazon).
    let before = calls(&rig).await.1.len();
    let (_, v) = get_destination(&rig, &dest).await;
    assert_eq!(
        calls(&rig).await.1.len(),
        before,
        "GET /destinations called Amazon"
    );
    let m = v["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["segmentId"] == small.as_str())
        .unwrap();
    assert_eq!(m["audienceSize"], 400, "{m}");
    assert_eq!(m["matchedSize"], 400);
    assert_eq!(m["matchRate"], 1.0);
    assert!(m["measuredAt"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_patch_of_ttl_and_countries_reaches_the_audience() {
    let rig = rig(1).await;
    let seg = seg_id();
    let (dest, maps) = destination_with(&rig, &[&seg], 2_592_000).await;
    let audience = maps[0].audience_id.unwrap();
    run_jobs_until_done(&rig, &dest, &seg, &opts(20)).await;
    // With 30 days, no refresh for 15 days (the run notes when the next one is due).
    let plan = upkeep_at(&rig, 0).await;
    assert_eq!(plan["refresh"]["started"], 0, "{plan}");
    let patch = |body: Value| {
        let req = json_req("PATCH", &format!("/destinations/{dest}"), &body);
        let rig = &rig;
        let dest = dest.clone();
        async move {
            let r = adsync::export::destinations::patch_destination(&rig.ctx, &dest, &req).await;
            checked(&req, &r)
        }
    };
    let (st, v) = patch(json!({"dataSourceCountry": ["US", "xx1"]})).await;
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (400, Some("dataSourceCountry[1]")),
        "{v}"
    );
    let (st, v) = patch(json!({"name": "Another name"})).await;
    assert_eq!(st, 400, "{v}");
    let (st, v) = patch(
        json!({"ttlSeconds": 3600, "dataSourceCountry": ["us", "CA"],
        "description": " Luxury travel, refreshed "}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["description"], "Luxury travel, refreshed");
    assert_eq!(v["ttlSeconds"], 3600);
    assert_eq!(v["mappings"][0]["settings"]["state"], "pending", "{v}");
    assert_eq!(
        v["mappings"][0]["settings"]["pending"]["dataSourceCountry"],
        json!(["US", "CA"])
    );

    let plan = upkeep_at(&rig, 0).await;
    assert_eq!(plan["metadata"]["settingsApplied"], 1, "{plan}");
    let at_amazon = rig
        .sandbox
        .audiences(rig.account.advertiser_id)
        .await
        .unwrap();
    let a = at_amazon.iter().find(|a| a.id == audience).unwrap();
    assert_eq!(a.metadata["ttl"], 3600);
    assert_eq!(a.metadata["dataSourceCountry"], json!(["US", "CA"]));
    assert_eq!(a.name, maps[0].audience_name, "the name never changes");
    assert_eq!(a.description, "Luxury travel, refreshed");
    let (_, v) = get_destination(&rig, &dest).await;
    let s = &v["mappings"][0]["settings"];
    assert_eq!(s["state"], "applied", "{v}");
    assert_eq!(s["applied"]["ttlSeconds"], 3600);
    assert_eq!(s["applied"]["dataSourceCountry"], json!(["US", "CA"]));
    assert_eq!(s["applied"]["description"], "Luxury travel, refreshed");
    assert_eq!(v["mappings"][0]["refresh"]["ttlSeconds"], 3600);
    // A description alone is a settings change too; the same one again is not.
    let (st, v) = patch(json!({"description": "Luxury travel, v3"})).await;
    assert_eq!(
        (st, &v["mappings"][0]["settings"]["state"]),
        (200, &json!("pending")),
        "{v}"
    );
    let plan = upkeep_at(&rig, 0).await;
    assert_eq!(plan["metadata"]["settingsApplied"], 1, "{plan}");
    let (st, v) = patch(json!({"description": "Luxury travel, v3"})).await;
    assert_eq!(
        (st, &v["mappings"][0]["settings"]["state"]),
        (200, &json!("applied")),
        "{v}"
    );
    let at_amazon = rig
        .sandbox
        .audiences(rig.account.advertiser_id)
        .await
        .unwrap();
    let a = at_amazon.iter().find(|a| a.id == audience).unwrap();
    assert_eq!(
        (a.description.as_str(), &a.metadata["ttl"]),
        ("Luxury travel, v3", &json!(3600))
    );
    // The applied TTL brings the next refresh forward: half an hour, not 15 days.
    let plan = upkeep_at(&rig, 1_801_000).await;
    assert_eq!(plan["refresh"]["started"], 1, "{plan}");
}
