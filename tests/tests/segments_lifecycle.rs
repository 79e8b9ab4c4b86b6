//! Segment export lifecycle against the local stack: purging an audience (`?purge=true` on a
//! mapping and on a destination), deleting a destination with its scheduled work, adopting an
//! existing audience (refusals and a backfill), listing and deleting segments, and Audience
//! Manager's label/control spellings.
//!
//! Run: `cargo test -p adsync-tests --test segments_lifecycle` (stack env loaded).

use adsync::amazon::{AccountScope, NewAudience};
use adsync::export::upkeep::{UpkeepOptions, run_upkeep};
use adsync::export::{destinations, lifecycle};
use adsync::http::HttpRequest;
use adsync::runtime::{Invocation, now_ms};
use adsync_tests::export_rig::*;
use serde_json::{Value, json};
use std::time::Duration;

async fn upkeep(rig: &Rig) -> Value {
    let o = UpkeepOptions {
        size_interval: Duration::ZERO,
        purge_settle: Duration::ZERO,
    };
    let now = now_ms() as i64;
    run_upkeep(&rig.ctx, now + 20_000, &o, now).await
}

/// A request as API Gateway hands it over: the query apart from the path.
fn req(method: &str, path_and_query: &str) -> HttpRequest {
    match path_and_query.split_once('?') {
        Some((p, q)) => HttpRequest::new(method, p).with_query(q),
        None => HttpRequest::new(method, path_and_query),
    }
}

/// An API key check that accepts `key` (its digest in a fresh moto secret).
async fn api_key_auth(key: &str) -> adsync::http::auth::ApiKeyAuth {
    use adsync::http::auth::{ApiKeyAuth, ApiKeyEntry, ApiKeysSecret};
    let aws = adsync_tests::stack::aws().await;
    let store = adsync::store::secrets::SecretsStore::new(aws.secrets.clone());
    let name = adsync_tests::stack::secret_name("api-keys");
    let secret = ApiKeysSecret {
        keys: vec![ApiKeyEntry {
            name: "lifecycle".into(),
            sha256: ApiKeyAuth::digest(key),
            scopes: None,
            accounts: None,
        }],
    };
    store.put_json(&name, &secret).await.unwrap();
    ApiKeyAuth::new(store, name)
}

/// A scheduled run: upkeep, then backfill jobs.
async fn scheduled_run(rig: &Rig) -> Value {
    let u = upkeep(rig).await;
    let b = adsync::export::members::run_backfill_with(&rig.ctx, &deadline_in(20_000), &opts(50))
        .await
        .unwrap();
    json!({"upkeep": u, "backfill": b})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purging_a_mapping_empties_its_audience_exactly_and_stops_every_patch() {
    let rig = rig(1).await;
    let (s1, s2) = (seg_id(), seg_id());
    seed(&rig, &s1, "pa", 300, 5).await;
    let kept = seed(&rig, &s2, "pb", 40, 0).await;
    let (dest, maps) = destination_with(&rig, &[&s1, &s2], 2_592_000).await;
    let o = opts(20);
    run_jobs_until_done(&rig, &dest, &s1, &o).await;
    run_jobs_until_done(&rig, &dest, &s2, &o).await;
    let (a1, a2) = (maps[0].audience_id.unwrap(), maps[1].audience_id.unwrap());
    assert_eq!(members(&rig, a1).await.len(), 240);

    let path = format!("/destinations/{dest}/mappings/{s1}?purge=true");
    let r = lifecycle::remove_mapping(&rig.ctx, &dest, &s1, &req("DELETE", &path)).await;
    let (st, v) = checked(&req("DELETE", &path), &r);
    assert_eq!(st, 202, "{v}");
    assert_eq!(
        (v["status"].as_str(), v["purge"]["state"].as_str()),
        (Some("removed"), Some("waiting")),
        "{v}"
    );

    let run = scheduled_run(&rig).await;
    assert_eq!(run["upkeep"]["purges"]["started"], 1, "{run}");
    let (_, v) = get_destination(&rig, &dest).await;
    let m = v["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["segmentId"] == s1.as_str())
        .unwrap();
    assert!(
        m["purge"]["state"] == "running" || m["purge"]["state"] == "done",
        "{m}"
    );
    run_jobs_until_done(&rig, &dest, &s1, &o).await;
    assert!(
        members(&rig, a1).await.is_empty(),
        "the purged audience still has members"
    );
    assert_eq!(
        members(&rig, a2).await,
        kept,
        "the other audience is untouched"
    );
    let (_, v) = get_destination(&rig, &dest).await;
    let m = v["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["segmentId"] == s1.as_str())
        .unwrap();
    assert_eq!(m["purge"]["state"], "done", "{m}");
    assert_eq!(
        m["purge"]["removesSent"], 300,
        "every ledger row sent as a remove: {m}"
    );

    // Nothing reaches the purged audience any more: deltas, refreshes, later runs.
    let before = calls(&rig).await.0.len();
    qualify(&rig, &s1, &["COOKIE-pa000001", "COOKIE-new1"], "qualified").await;
    scheduled_run(&rig).await;
    scheduled_run(&rig).await;
    assert_eq!(
        calls(&rig).await.0.len(),
        before,
        "a patch reached Amazon after the purge"
    );
    assert!(members(&rig, a1).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_destination_is_purged_then_gone_and_its_scheduled_work_never_runs_again() {
    let rig = rig(1).await;
    let (s1, s2) = (seg_id(), seg_id());
    seed(&rig, &s1, "da", 120, 0).await;
    seed(&rig, &s2, "db", 3_000, 0).await;
    let (d1, m1) = destination_with(&rig, &[&s1], 2_592_000).await;
    run_jobs_until_done(&rig, &d1, &s1, &opts(20)).await;
    // A second destination whose backfill is stopped halfway, then deleted without purge.
    let (d2, m2) = destination_with(&rig, &[&s2], 2_592_000).await;
    adsync::export::members::run_backfill_with(&rig.ctx, &deadline_in(2_500), &opts(10))
        .await
        .unwrap();
    let p = adsync::export::members::backfill_progress(&rig.ctx, &d2, &s2)
        .await
        .unwrap();
    assert_eq!(
        p["state"], "running",
        "the backfill should still be running: {p}"
    );

    let path = format!("/destinations/{d2}");
    let r = lifecycle::delete_destination(&rig.ctx, &d2, &req("DELETE", &path)).await;
    let (st, v) = checked(&req("DELETE", &path), &r);
    assert_eq!((st, &v["deleted"]), (200, &json!(true)), "{v}");
    assert_eq!(get_destination(&rig, &d2).await.0, 404);
    let listed = rig.ctx.jobs.active_jobs().await.unwrap();
    assert!(
        listed.iter().all(|j| j.destination_id != d2),
        "the deleted destination's job is still listed as unfinished"
    );
    let sent = members(&rig, m2[0].audience_id.unwrap()).await.len();

    let path = format!("/destinations/{d1}?purge=true");
    let r = lifecycle::delete_destination(&rig.ctx, &d1, &req("DELETE", &path)).await;
    let (st, v) = checked(&req("DELETE", &path), &r);
    assert_eq!((st, v["status"].as_str()), (202, Some("deleting")), "{v}");
    let list = destinations::list_destinations(&rig.ctx, &req("GET", "/destinations")).await;
    let (_, l) = checked(&req("GET", "/destinations"), &list);
    assert!(
        l["destinations"].as_array().unwrap().is_empty(),
        "deleted destinations are listed: {l}"
    );
    let (st, v) = get_destination(&rig, &d1).await;
    assert_eq!((st, v["status"].as_str()), (200, Some("deleting")), "{v}");
    assert!(!v["mappings"][0]["purge"].is_null(), "{v}");
    // Through the router (API key checked): changes to a deleting destination are refused.
    let auth = api_key_auth("k-lifecycle").await;
    let rq = json_req(
        "PATCH",
        &format!("/destinations/{d1}"),
        &json!({"description": "x"}),
    )
    .with_header("authorization", "Bearer k-lifecycle");
    let r = adsync::export::route(&rig.ctx, &auth, &rq, &Invocation::with_timeout(30)).await;
    let (st, v) = checked(&rq, &r);
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("destination_deleting")),
        "{v}"
    );

    for _ in 0..10 {
        scheduled_run(&rig).await;
        if get_destination(&rig, &d1).await.0 == 404 {
            break;
        }
    }
    assert_eq!(
        get_destination(&rig, &d1).await.0,
        404,
        "the purged destination is not gone"
    );
    assert!(members(&rig, m1[0].audience_id.unwrap()).await.is_empty());

    // Neither destination's work ever runs again: no patch, no metadata call.
    let (patches, meta) = calls(&rig).await;
    qualify(&rig, &s1, &["COOKIE-da000001"], "unqualified").await;
    qualify(&rig, &s2, &["COOKIE-zz1"], "qualified").await;
    scheduled_run(&rig).await;
    scheduled_run(&rig).await;
    let (patches2, meta2) = calls(&rig).await;
    assert_eq!((patches2.len(), meta2.len()), (patches.len(), meta.len()));
    // Without purge the members stay until their TTL, as documented.
    assert_eq!(members(&rig, m2[0].audience_id.unwrap()).await.len(), sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adopting_an_audience_refuses_foreign_and_unknown_ones_and_backfills_a_valid_one() {
    let other = rig(1).await;
    let rig = rig(2).await;
    let seg = seg_id();
    let qualified = seed(&rig, &seg, "ad", 50, 5).await;
    put_segment(&rig, &seg, json!([])).await;
    let (dest, _) = destination_with(&rig, &[], 2_592_000).await;
    let make = |r: &Rig, advertiser: i64, ext: &str| {
        let a = NewAudience {
            name: format!("CRM audience {ext}"),
            description: "made outside adsync".into(),
            advertiser_id: advertiser,
            external_audience_id: ext.to_string(),
            ttl: 7_200,
            data_source_country: vec!["US".into()],
            audience_fees: None,
        };
        let scope = AccountScope {
            profile_id: r.account.profile_id,
            advertiser_id: advertiser,
        };
        let amazon = r.ctx.amazon.clone();
        let login = r.account.login();
        async move { amazon.create_audience(&login, scope, &a).await.unwrap().id }
    };
    let mine = make(&rig, rig.account.advertiser_id, &format!("crm-{}", seg)).await;
    let second_adv = rig.login.user.profile().advertisers[1].advertiser_id;
    let other_adv = make(&rig, second_adv, "crm-other-adv").await;
    let foreign = make(&other, other.account.advertiser_id, "crm-foreign").await;

    let adopt = |audience: Value| {
        let body = json!({"segmentId": seg, "audienceId": audience});
        let path = format!("/destinations/{dest}/mappings");
        let rig = &rig;
        let dest = dest.clone();
        async move {
            let rq = json_req("POST", &path, &body);
            let r = destinations::add_mappings(&rig.ctx, &dest, &rq, &Invocation::with_timeout(30))
                .await;
            checked(&rq, &r)
        }
    };
    let (st, v) = adopt(json!(4_242_424_242_424_242_i64)).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("audience_not_found")),
        "{v}"
    );
    let (st, v) = adopt(json!(foreign)).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("audience_not_found")),
        "{v}"
    );
    let (st, v) = adopt(json!(other_adv)).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("audience_of_another_advertiser")),
        "{v}"
    );
    let (st, v) = adopt(json!("12x")).await;
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (400, Some("audienceId")),
        "{v}"
    );

    let (st, v) = adopt(json!(mine.to_string())).await;
    assert_eq!(st, 202, "{v}");
    let m = &v["mappings"][0];
    assert_eq!(
        (m["status"].as_str(), m["audienceId"].as_i64()),
        (Some("active"), Some(mine)),
        "{m}"
    );
    run_jobs_until_done(&rig, &dest, &seg, &opts(20)).await;
    assert_eq!(members(&rig, mine).await, qualified);
    let (_, v) = get_destination(&rig, &dest).await;
    assert_eq!(
        v["mappings"][0]["refresh"]["ttlSeconds"], 7_200,
        "the audience keeps its TTL: {v}"
    );
    assert_eq!(
        v["mappings"][0]["audienceName"],
        format!("CRM audience crm-{seg}")
    );

    // One audience backs one mapping: not in a second destination.
    let (d2, _) = destination_with(&rig, &[], 2_592_000).await;
    let body = json!({"segmentId": seg, "audienceId": mine});
    let rq = json_req("POST", &format!("/destinations/{d2}/mappings"), &body);
    let r = destinations::add_mappings(&rig.ctx, &d2, &rq, &Invocation::with_timeout(30)).await;
    let (st, v) = checked(&rq, &r);
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("audience_already_mapped")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains(&dest),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn segments_are_listed_deleted_when_unmapped_and_accept_audience_manager_spellings() {
    let rig = rig(1).await;
    let mut ids: Vec<String> = (0..3).map(|_| seg_id()).collect();
    ids.sort();
    let (st, v) = put_segment(&rig, &ids[0], json!(["PII", "ONSITE_ADVERTISING"])).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(
        v["dataExportControls"],
        json!(["NO_PII_COMBINATION", "NO_ONSITE_AD_TARGETING"])
    );
    put_segment(&rig, &ids[1], json!([])).await;
    put_segment(&rig, &ids[2], json!([])).await;

    // Labels too: PII on the destination conflicts with PII on the segment.
    let body = json!({"name": "AAM names", "accountId": rig.account.account_id,
        "dataExportLabels": ["PII", "OFFSITE_ADVERTISING"], "mappings": [{"segmentId": ids[0]}]});
    let rq = json_req("POST", "/destinations", &body);
    let r = destinations::create_destination(&rig.ctx, &rq, &Invocation::with_timeout(30)).await;
    let (st, v) = checked(&rq, &r);
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("export_control_conflict")),
        "{v}"
    );
    let (dest, _) = destination_with(&rig, &[&ids[1]], 2_592_000).await;

    // Paged, by id.
    let page = |q: &str| {
        let rq = req("GET", &format!("/segments?{q}"));
        let rig = &rig;
        async move {
            let r = lifecycle::list_segments(&rig.ctx, &rq).await;
            checked(&rq, &r).1
        }
    };
    let p1 = page("limit=2").await;
    let token = p1["nextToken"].as_str().unwrap().to_string();
    let p2 = page(&format!("limit=2&nextToken={token}")).await;
    let listed: Vec<&str> = p1["segments"]
        .as_array()
        .unwrap()
        .iter()
        .chain(p2["segments"].as_array().unwrap())
        .map(|s| s["segmentId"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(p2["nextToken"].is_null(), "{p2}");

    // Mapped: 409 naming the destination; unmapped: deleted, ledger rows only on request.
    seed(&rig, &ids[1], "sg", 30, 0).await;
    let del = |seg: String, q: &'static str| {
        let rig = &rig;
        async move {
            let rq = req("DELETE", &format!("/segments/{seg}{q}"));
            let r =
                lifecycle::delete_segment(&rig.ctx, &seg, &rq, &Invocation::with_timeout(30)).await;
            checked(&rq, &r)
        }
    };
    let (st, v) = del(ids[1].clone(), "").await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("segment_mapped")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains(&dest),
        "{v}"
    );
    let rq = req(
        "DELETE",
        &format!("/destinations/{dest}/mappings/{}", ids[1]),
    );
    let r = lifecycle::remove_mapping(&rig.ctx, &dest, &ids[1], &rq).await;
    assert_eq!(checked(&rq, &r).0, 200);
    let (st, v) = del(ids[1].clone(), "?purgeLedger=true").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (
            v["ledger"]["rowsDeleted"].as_u64(),
            v["ledger"]["complete"].as_bool()
        ),
        (Some(30), Some(true))
    );
    assert!(ledger_qualified(&rig, &ids[1]).await.is_empty());
    seed(&rig, &ids[2], "sk", 5, 0).await;
    assert_eq!(del(ids[2].clone(), "").await.0, 200);
    assert_eq!(
        ledger_qualified(&rig, &ids[2]).await.len(),
        5,
        "ledger rows kept without purgeLedger"
    );
    assert_eq!(del(ids[2].clone(), "").await.0, 404);
    let listed = page("limit=10").await;
    assert_eq!(listed["segments"].as_array().unwrap().len(), 1, "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn segments_registered_before_the_listing_are_migrated_into_it_once() {
    use aws_sdk_dynamodb::types::AttributeValue as Av;
    let rig = rig(1).await;
    let listed = |q: &'static str| {
        let rig = &rig;
        async move {
            let rq = req("GET", &format!("/segments?{q}"));
            let r = lifecycle::list_segments(&rig.ctx, &rq).await;
            let v = checked(&rq, &r).1;
            v["segments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["segmentId"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    // Two segments as an older release wrote them (no gsi1 keys), one as today's.
    let old: Vec<String> = (0..2).map(|_| seg_id()).collect();
    for id in &old {
        rig.ddb
            .put_item()
            .table_name(&rig.dest_table)
            .item("pk", Av::S(format!("SEG#{id}")))
            .item("sk", Av::S("SEGMENT".into()))
            .item("segmentId", Av::S(id.clone()))
            .item("name", Av::S(format!("old {id}")))
            .item("description", Av::S(String::new()))
            .item("dataExportControls", Av::L(vec![]))
            .item("updatedAt", Av::S("2026-11-01T00:00:00.000Z".into()))
            .send()
            .await
            .unwrap();
    }
    let new = seg_id();
    put_segment(&rig, &new, json!([])).await;
    assert_eq!(listed("limit=10").await, vec![new.clone()]);

    let store = &rig.ctx.destinations;
    let mut steps = 0;
    let mut migrated = 0;
    loop {
        let s = store.migrate_segment_listing_step().await.unwrap();
        migrated += s.migrated;
        steps += 1;
        if s.done {
            break;
        }
        assert!(steps < 20, "the migration does not finish");
    }
    assert_eq!(migrated, 2, "only the unlisted segments change");
    assert!(store.migration_done("segments-gsi1").await.unwrap());
    let mut want = vec![old[0].clone(), old[1].clone(), new.clone()];
    want.sort();
    assert_eq!(listed("limit=10").await, want);
    let again = store.migrate_segment_listing_step().await.unwrap();
    assert_eq!((again.done, again.migrated), (true, 0));
    // A migrated segment reads back whole.
    let rq = req("GET", &format!("/segments/{}", old[0]));
    let r = destinations::get_segment(&rig.ctx, &old[0]).await;
    let (st, v) = checked(&rq, &r);
    assert_eq!(
        (st, v["name"].as_str()),
        (200, Some(format!("old {}", old[0]).as_str()))
    );
}
