//! Segment export, membership side, against the local stack (DynamoDB Local, moto, the Amazon
//! sandbox): the qualification ledger, `POST /qualifications` deltas, backfill jobs across
//! invocations (checkpoints, forced stops, leases), deltas racing a backfill, removals, Amazon
//! faults during a backfill, and the redrive of parked patches.
//!
//! Needs the stack env (`set -a; . .local/stack.env; set +a`); fails naming what is missing.
//! Each test gets its own sandbox LwA client / user / advertiser, its own destinations table (so
//! `run_backfill` sees only this test's jobs) and its own parked-patches queue.
//!
//! Run: `cargo test -p adsync-tests --test segments_members`

use adsync::amazon::client::{DEFAULT_SCOPES, http_client};
use adsync::amazon::{AmazonClient, Endpoints, LwaCredentials, RetryPolicy, SecretString};
use adsync::export::members::{
    BackfillOptions, backfill_progress, handle_qualifications, run_backfill_with, run_redrive,
    start_backfill,
};
use adsync::export::{ExportCtx, InlineWork};
use adsync::http::HttpRequest;
use adsync::runtime::{Invocation, now_ms};
use adsync::store::accounts::{AccountStatus, IntegratedAccount};
use adsync::store::destinations::{DestinationStore, MappingStatus, SegmentMapping};
use adsync::store::jobs::JobStore;
use adsync::store::ledger::{LedgerRow, LedgerStore, Upsert};
use adsync::store::parked::ParkedQueue;
use adsync::store::secrets::SecretsStore;
use adsync_tests::sandbox::{FaultSpec, SandboxAdmin, SandboxLogin};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

fn require_env() {
    for v in [
        "AWS_ENDPOINT_URL_DYNAMODB",
        "AWS_ENDPOINT_URL",
        "ACCOUNTS_TABLE",
        "LEDGER_TABLE",
    ] {
        if std::env::var(v)
            .map(|s| s.trim().is_empty())
            .unwrap_or(true)
        {
            panic!(
                "{v} is not set: these tests need the local stack (DynamoDB Local, moto, the Amazon \
                 sandbox). Run infra/scripts/stack-up.sh, then `set -a; . .local/stack.env; set +a`."
            );
        }
    }
    for (k, v) in [
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ] {
        if std::env::var(k).is_err() {
            // SAFETY: set before any AWS client reads the environment; same value every time.
            unsafe { std::env::set_var(k, v) };
        }
    }
}

struct Rig {
    ctx: ExportCtx,
    sandbox: SandboxAdmin,
    login: SandboxLogin,
    account: IntegratedAccount,
    ddb: aws_sdk_dynamodb::Client,
    dest_table: String,
}

impl Drop for Rig {
    fn drop(&mut self) {
        // Best effort: DynamoDB Local keeps tables until restarted.
        let ddb = self.ddb.clone();
        let table = self.dest_table.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async { ddb.delete_table().table_name(table).send().await.ok() });
        })
        .join();
    }
}

async fn rig() -> Rig {
    rig_with_policy(RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(2),
        request_timeout: Duration::from_secs(30),
    })
    .await
}

async fn rig_with_policy(policy: RetryPolicy) -> Rig {
    require_env();
    let aws = adsync::aws::AwsClients::from_env().await;
    let sandbox = SandboxAdmin::from_env();
    if let Err(e) = sandbox.health().await {
        panic!("{e}");
    }
    let login = sandbox.new_login(1).await.unwrap_or_else(|e| panic!("{e}"));
    let secrets = SecretsStore::new(aws.secrets.clone());
    let amazon = AmazonClient::new(
        http_client(),
        Endpoints::single_host(sandbox.base_url()),
        LwaCredentials {
            client_id: login.client.client_id.clone(),
            client_secret: SecretString::new(login.client.client_secret.clone()),
        },
        secrets,
        DEFAULT_SCOPES.to_string(),
    )
    .with_retry_policy(policy);
    let (account, accounts) =
        adsync_tests::stack::seed_linked_account(&aws, &amazon, &login, "adsync-test/tokens-")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    let dest_table = adsync_tests::tables::fresh_destinations_table(&aws.dynamodb).await;
    let queue = aws
        .sqs
        .create_queue()
        .queue_name(format!(
            "adsync-test-parked-{}",
            uuid::Uuid::new_v4().simple()
        ))
        .send()
        .await
        .expect("creating a test queue in moto");
    let ctx = ExportCtx {
        amazon,
        accounts,
        destinations: DestinationStore::new(aws.dynamodb.clone(), dest_table.clone()),
        ledger: LedgerStore::new(aws.dynamodb.clone(), std::env::var("LEDGER_TABLE").unwrap()),
        jobs: JobStore::new(aws.dynamodb.clone(), dest_table.clone()),
        parked: ParkedQueue::new(aws.sqs.clone(), queue.queue_url().unwrap().to_string()),
        metrics_fn: "segment-export-test",
        // The tests drive audience creation and backfills themselves, with their own options.
        inline: InlineWork::off(),
        options: adsync::export::ExportOptions::from_env().expect("export options"),
    };
    Rig {
        ctx,
        sandbox,
        login,
        account,
        ddb: aws.dynamodb.clone(),
        dest_table,
    }
}

fn json_req(method: &str, path: &str, body: &Value) -> HttpRequest {
    HttpRequest::new(method, path)
        .with_header("content-type", "application/json")
        .with_body(serde_json::to_vec(body).unwrap())
}

fn seg_id() -> String {
    format!("seg-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Registers the segments and a destination mapping them through the metadata routes, then
/// creates the audiences (1/s) the way the scheduled task does; each creation queues the
/// mapping's backfill. Returns the destination id and the active mappings.
async fn destination_with(rig: &Rig, segments: &[&str]) -> (String, Vec<SegmentMapping>) {
    use adsync::export::destinations;
    for s in segments {
        let r = destinations::put_segment(
            &rig.ctx,
            s,
            &json_req("PUT", &format!("/segments/{s}"), &json!({"name": format!("Segment {s}"), "description": "test", "dataExportControls": []})),
        )
        .await;
        assert!(r.status < 300, "PUT /segments: {} {}", r.status, r.body);
    }
    let body = json!({
        "name": format!("Dest {}", uuid::Uuid::new_v4().simple()),
        "description": "membership tests",
        "accountId": rig.account.account_id,
        "dataExportLabels": [],
        "dataSourceCountry": ["US"],
        "ttlSeconds": 2_592_000,
        "mappings": segments.iter().map(|s| json!({"segmentId": s})).collect::<Vec<_>>(),
    });
    let inv = Invocation::with_timeout(60);
    let r =
        destinations::create_destination(&rig.ctx, &json_req("POST", "/destinations", &body), &inv)
            .await;
    assert_eq!(r.status, 202, "POST /destinations: {}", r.body);
    let dest_id = r.json_body()["destinationId"]
        .as_str()
        .unwrap_or_else(|| panic!("no destinationId in {}", r.body))
        .to_string();
    for _ in 0..10 {
        destinations::create_pending_audiences(&rig.ctx, &inv, Duration::from_secs(30)).await;
        let ms = rig.ctx.destinations.list_mappings(&dest_id).await.unwrap();
        if ms.iter().all(|m| m.status == MappingStatus::Active) {
            return (dest_id, ms);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("the audiences were not created");
}

/// Seeds `n` devices (`COOKIE-<prefix><i>`), every `unq_every`-th unqualified.
async fn seed(
    rig: &Rig,
    seg: &str,
    prefix: &str,
    n: usize,
    unq_every: usize,
    ts_ms: i64,
) -> BTreeSet<String> {
    let rows: Vec<LedgerRow> = (0..n)
        .map(|i| LedgerRow {
            segment_id: seg.to_string(),
            device: format!("COOKIE-{prefix}{i:06}"),
            qualified: unq_every == 0 || i % unq_every != 0,
            ts_ms,
            consent: None,
        })
        .collect();
    let qualified = rows
        .iter()
        .filter(|r| r.qualified)
        .map(|r| r.device.clone())
        .collect();
    let ledger = rig.ctx.ledger.clone();
    let chunks: Vec<Vec<LedgerRow>> = rows.chunks(1000).map(|c| c.to_vec()).collect();
    futures::future::try_join_all(chunks.into_iter().map(|c| {
        let l = ledger.clone();
        async move { l.seed(&c).await }
    }))
    .await
    .expect("seeding the ledger");
    qualified
}

fn opts(margin_ms: u64, max_patches: usize) -> BackfillOptions {
    BackfillOptions {
        safety_margin: Duration::from_millis(margin_ms),
        parallel_shards: 4,
        max_patches,
        lease: Duration::from_secs(30),
        ..BackfillOptions::default()
    }
}

fn deadline_in(ms: u64) -> Invocation {
    Invocation {
        request_id: uuid::Uuid::new_v4().to_string(),
        deadline_ms: now_ms() + ms,
    }
}

async fn members(rig: &Rig, audience_id: i64) -> BTreeSet<String> {
    rig.sandbox
        .members(audience_id)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .collect()
}

async fn ledger_qualified(rig: &Rig, seg: &str) -> BTreeSet<String> {
    rig.ctx
        .ledger
        .qualified_devices(seg)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// Runs backfill invocations (each with `per_run_ms`) until the mapping's job is done.
async fn backfill_until_done(
    rig: &Rig,
    dest: &str,
    seg: &str,
    o: &BackfillOptions,
    per_run_ms: u64,
    max_runs: usize,
) -> usize {
    for run in 1..=max_runs {
        run_backfill_with(&rig.ctx, &deadline_in(per_run_ms), o)
            .await
            .unwrap();
        let p = backfill_progress(&rig.ctx, dest, seg).await.unwrap();
        if p["state"] == "done" {
            return run;
        }
    }
    let p = backfill_progress(&rig.ctx, dest, seg).await.unwrap();
    panic!("backfill not done after {max_runs} runs: {p}");
}

async fn post_qualifications(rig: &Rig, items: Vec<Value>) -> (u16, Value) {
    let req = json_req("POST", "/qualifications", &json!({"qualifications": items}));
    let r = handle_qualifications(&rig.ctx, &req, &Invocation::with_timeout(30)).await;
    // Every answer the tests receive must match openapi.yaml.
    adsync_tests::openapi::assert_http_response_valid(&req.method, &req.path, &r);
    (r.status, r.json_body())
}

fn q(seg: &str, device: &str, status: &str, ts_ms: i64) -> Value {
    json!({"segmentId": seg, "deviceId": device, "idType": "COOKIE", "status": status, "timestamp": ts_ms})
}

fn patch_requests(reqs: &[adsync_tests::sandbox::RequestRecord]) -> usize {
    reqs.iter()
        .filter(|r| r.method == "PATCH" && r.status == 200)
        .count()
}

// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backfill_of_25k_devices_stops_at_the_deadline_and_resumes_without_gaps_or_repeats() {
    let rig = rig().await;
    let seg = seg_id();
    let qualified = seed(&rig, &seg, "bf", 25_000, 10, 1_700_000_000_000).await;
    assert_eq!(qualified.len(), 22_500);
    let (dest, maps) = destination_with(&rig, &[&seg]).await;
    let audience = maps[0].audience_id.unwrap();
    // 100 patches per body: 225 batches, more than 2 s of PATCH calls at ≤ 100/s.
    let o = opts(1_000, 100);

    // First invocation: 2 s before the deadline with a 1 s margin → stops mid-job.
    let first = run_backfill_with(&rig.ctx, &deadline_in(2_000), &o)
        .await
        .unwrap();
    assert_eq!(first["stoppedForDeadline"], true, "{first}");
    let p = backfill_progress(&rig.ctx, &dest, &seg).await.unwrap();
    let sent_first = p["devicesSent"].as_u64().unwrap();
    assert!(
        sent_first > 0 && sent_first < 22_500,
        "first run sent {sent_first}: {p}"
    );
    assert_eq!(p["state"], "running");
    // What Amazon holds is exactly what the checkpoints say was sent.
    assert_eq!(members(&rig, audience).await.len() as u64, sent_first);

    // Resume over several short invocations.
    let runs = backfill_until_done(&rig, &dest, &seg, &o, 2_000, 40).await;
    assert!(runs >= 2, "expected several invocations, took {runs}");
    let p = backfill_progress(&rig.ctx, &dest, &seg).await.unwrap();
    assert_eq!(p["devicesSent"], 22_500, "{p}");
    assert_eq!(p["shardsDone"], 16);

    // No one skipped, no one extra.
    assert_eq!(members(&rig, audience).await, qualified);
    // Nothing sent twice: every add Amazon received is one ledger device, and the PATCH calls are
    // exactly the checkpointed batches.
    let size = rig
        .ctx
        .amazon
        .get_audience(&rig.account.login(), rig.account.scope(), audience)
        .await
        .unwrap()
        .audience_size
        .expect("audienceSize");
    assert_eq!(size.received_record_size, 22_500);
    let reqs = rig
        .sandbox
        .requests(Some(&rig.login.client.client_id), Some("/v2/dp/audience"))
        .await
        .unwrap();
    assert_eq!(patch_requests(&reqs) as u64, p["batches"].as_u64().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_invocations_never_work_the_same_shard() {
    let rig = rig().await;
    let seg = seg_id();
    let qualified = seed(&rig, &seg, "cc", 8_000, 0, 1_700_000_000_000).await;
    let (dest, maps) = destination_with(&rig, &[&seg]).await;
    let audience = maps[0].audience_id.unwrap();
    let o = opts(500, 200);
    let (i1, i2, i3) = (
        deadline_in(20_000),
        deadline_in(20_000),
        deadline_in(20_000),
    );
    let (a, b, c) = tokio::join!(
        run_backfill_with(&rig.ctx, &i1, &o),
        run_backfill_with(&rig.ctx, &i2, &o),
        run_backfill_with(&rig.ctx, &i3, &o),
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    // Two backfill slots: one of the three invocations found both taken and did nothing.
    let skipped = [&a, &b, &c]
        .iter()
        .filter(|s| s["skipped"].is_string())
        .count();
    assert_eq!(skipped, 1, "{a} {b} {c}");
    let n = |s: &Value, k: &str| s[k].as_u64().unwrap_or(0);
    let worked: u64 = [&a, &b, &c].iter().map(|s| n(s, "shardsFinished")).sum();
    assert_eq!(
        worked, 16,
        "each shard finished by exactly one invocation: {a} {b} {c}"
    );
    let sent: u64 = [&a, &b, &c].iter().map(|s| n(s, "devicesSent")).sum();
    assert_eq!(sent, 8_000);
    backfill_until_done(&rig, &dest, &seg, &o, 10_000, 3).await;
    assert_eq!(members(&rig, audience).await, qualified);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_invocations_shard_is_taken_over_after_its_lease() {
    let rig = rig().await;
    let seg = seg_id();
    let qualified = seed(&rig, &seg, "dl", 2_000, 0, 1_700_000_000_000).await;
    let (dest, maps) = destination_with(&rig, &[&seg]).await;
    // A "dead" invocation holds shard 3 with a lease of 1.5 s and never comes back.
    let job = rig.ctx.jobs.get_job(&dest, &seg).await.unwrap().unwrap();
    let held = rig
        .ctx
        .jobs
        .lease_shard(
            &dest,
            &seg,
            3,
            job.generation,
            "dead-invocation",
            now_ms(),
            1_500,
        )
        .await
        .unwrap();
    assert!(held.is_some());
    let o = opts(300, 2000);
    let s = run_backfill_with(&rig.ctx, &deadline_in(10_000), &o)
        .await
        .unwrap();
    assert_eq!(
        s["shardsFinished"], 15,
        "the leased shard is not touched: {s}"
    );
    let p = backfill_progress(&rig.ctx, &dest, &seg).await.unwrap();
    assert_eq!(p["state"], "running");
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    backfill_until_done(&rig, &dest, &seg, &o, 10_000, 2).await;
    assert_eq!(members(&rig, maps[0].audience_id.unwrap()).await, qualified);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deltas_racing_a_backfill_end_with_amazon_equal_to_the_ledger() {
    let rig = rig().await;
    let seg = seg_id();
    let base_ts = 1_700_000_000_000;
    seed(&rig, &seg, "dx", 6_000, 4, base_ts).await;
    let (dest, maps) = destination_with(&rig, &[&seg]).await;
    let audience = maps[0].audience_id.unwrap();
    let o = opts(400, 50);

    // Rounds: a short backfill invocation runs while a burst of flips (on seeded devices, on
    // ones already sent, and on new devices) is posted at the same time.
    let mut ts = base_ts + 1;
    let mut round = 0;
    loop {
        round += 1;
        let flips: Vec<Value> = (0..150)
            .map(|k| {
                let i = (k * 37 + round * 101) % 6_500; // ≥ 6000: devices new to the ledger
                let status = if (k + round) % 2 == 0 {
                    "qualified"
                } else {
                    "unqualified"
                };
                ts += 1;
                q(&seg, &format!("dx{i:06}"), status, ts)
            })
            .collect();
        let half = flips.len() / 2;
        let (first, second) = flips.split_at(half);
        let inv = deadline_in(1_000);
        let (bf, d1, d2) = tokio::join!(
            run_backfill_with(&rig.ctx, &inv, &o),
            post_qualifications(&rig, first.to_vec()),
            async {
                tokio::time::sleep(Duration::from_millis(150)).await;
                post_qualifications(&rig, second.to_vec()).await
            },
        );
        bf.unwrap();
        assert_eq!(d1.0, 200, "{}", d1.1);
        assert_eq!(d2.0, 200, "{}", d2.1);
        let p = backfill_progress(&rig.ctx, &dest, &seg).await.unwrap();
        if p["state"] == "done" && round >= 3 {
            break;
        }
        assert!(round < 60, "backfill did not finish: {p}");
    }
    let p = backfill_progress(&rig.ctx, &dest, &seg).await.unwrap();
    assert!(
        p["dirtyResent"].as_u64().unwrap() > 0,
        "deltas during the job were drained: {p}"
    );
    assert_eq!(
        members(&rig, audience).await,
        ledger_qualified(&rig, &seg).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn qualifications_add_remove_and_an_older_update_never_wins() {
    let rig = rig().await;
    let (seg_a, seg_b) = (seg_id(), seg_id());
    let (dest, maps) = destination_with(&rig, &[&seg_a, &seg_b]).await;
    backfill_until_done(&rig, &dest, &seg_a, &opts(300, 2000), 5_000, 3).await;
    backfill_until_done(&rig, &dest, &seg_b, &opts(300, 2000), 5_000, 3).await;
    let aud = |s: &str| {
        maps.iter()
            .find(|m| m.segment_id == s)
            .unwrap()
            .audience_id
            .unwrap()
    };
    let t = chrono::Utc::now().timestamp_millis() - 60_000;

    // Qualify d1 for both segments (one patch carrying both audiences), d2 for A.
    let (st, body) = post_qualifications(
        &rig,
        vec![
            q(&seg_a, "d1", "qualified", t),
            q(&seg_b, "d1", "qualified", t),
            q(&seg_a, "d2", "qualified", t),
        ],
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["totals"]["applied"], 3);
    assert_eq!(
        body["delivery"]["patches"], 2,
        "one patch per device: {body}"
    );
    assert_eq!(
        members(&rig, aud(&seg_a)).await,
        BTreeSet::from(["COOKIE-d1".into(), "COOKIE-d2".into()])
    );
    assert_eq!(
        members(&rig, aud(&seg_b)).await,
        BTreeSet::from(["COOKIE-d1".to_string()])
    );

    // Removal.
    let (st, body) = post_qualifications(&rig, vec![q(&seg_a, "d1", "unqualified", t + 10)]).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        members(&rig, aud(&seg_a)).await,
        BTreeSet::from(["COOKIE-d2".to_string()])
    );

    // An older update (and a same-time replay) is stale: reported, not applied, not sent.
    let (st, body) = post_qualifications(
        &rig,
        vec![
            q(&seg_a, "d1", "qualified", t + 5),
            q(&seg_a, "d1", "unqualified", t + 10),
        ],
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "stale");
    assert_eq!(body["results"][1]["status"], "stale");
    assert_eq!(body["totals"]["stale"], 2);
    assert_eq!(
        members(&rig, aud(&seg_a)).await,
        BTreeSet::from(["COOKIE-d2".to_string()])
    );

    // Old and new for the same device in one request: the newer wins whatever the order.
    let (st, _) = post_qualifications(
        &rig,
        vec![
            q(&seg_a, "d3", "unqualified", t + 30),
            q(&seg_a, "d3", "qualified", t + 20),
        ],
    )
    .await;
    assert_eq!(st, 200);
    assert!(!members(&rig, aud(&seg_a)).await.contains("COOKIE-d3"));

    // The ledger itself refuses older writes.
    let row = |qualified, ts_ms| LedgerRow {
        segment_id: seg_a.clone(),
        device: "COOKIE-d9".into(),
        qualified,
        ts_ms,
        consent: None,
    };
    assert_eq!(
        rig.ctx.ledger.upsert(&row(true, 100)).await.unwrap(),
        Upsert::Applied
    );
    assert_eq!(
        rig.ctx.ledger.upsert(&row(false, 99)).await.unwrap(),
        Upsert::Stale
    );
    assert_eq!(
        rig.ctx.ledger.upsert(&row(false, 100)).await.unwrap(),
        Upsert::Stale
    );
    assert_eq!(
        rig.ctx.ledger.upsert(&row(false, 101)).await.unwrap(),
        Upsert::Applied
    );
    let got = rig
        .ctx
        .ledger
        .get_many(&[(seg_a.clone(), "COOKIE-d9".into())])
        .await
        .unwrap();
    assert_eq!(got, vec![row(false, 101)]);
    assert_eq!(
        members(&rig, aud(&seg_a)).await,
        ledger_qualified(&rig, &seg_a).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_items_get_per_item_errors_and_bad_bodies_are_refused() {
    let rig = rig().await;
    let seg = seg_id();
    let now = chrono::Utc::now().timestamp_millis();
    let (st, body) = post_qualifications(
        &rig,
        vec![
            q(&seg, "ok1", "qualified", now - 1000),
            json!({"segmentId": seg, "deviceId": "a/b", "idType": "EMAIL", "status": "qualified", "timestamp": "2026-13-01"}),
            json!({"segmentId": seg, "deviceId": "x", "idType": "MAID", "status": "qualified", "timestamp": now - 1,
                   "consent": {"consentType": "Amazon", "amazonConsent": {"amazonAdStorage": "GRANTED", "amazonUserData": "GRANTED"}}}),
            // A segment id that `PUT /segments` refuses is refused here too, in the same words.
            q("spring#sale", "ok2", "qualified", now - 1000),
        ],
    )
    .await;
    assert_eq!(st, 207, "{body}");
    let rule = "must be 1–128 characters of A–Z, a–z, 0–9, '-', '_', '.', ':' (it contains '#' at position 6)";
    assert_eq!(body["results"][3]["index"], 3);
    assert_eq!(body["results"][3]["status"], "rejected");
    assert_eq!(
        body["results"][3]["errors"],
        json!([{"field": "segmentId", "message": rule}])
    );
    let put = adsync::export::destinations::put_segment(
        &rig.ctx,
        "spring#sale",
        &json_req(
            "PUT",
            "/segments/spring%23sale",
            &json!({"name": "Spring sale"}),
        ),
    )
    .await;
    assert_eq!(put.status, 400, "{}", put.body);
    assert_eq!(put.json_body()["error"]["field"], "segmentId");
    assert_eq!(
        put.json_body()["error"]["message"],
        format!("segmentId (in the path) {rule}")
    );
    assert_eq!(body["results"][0]["status"], "applied");
    assert_eq!(body["results"][1]["status"], "rejected");
    let fields: Vec<&str> = body["results"][1]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["deviceId", "idType", "timestamp"]);
    assert_eq!(body["results"][2]["status"], "applied");
    assert_eq!(
        body["totals"],
        json!({"received": 4, "applied": 2, "stale": 0, "rejected": 2, "failed": 0})
    );

    let send = |r: HttpRequest| {
        let ctx = rig.ctx.clone();
        async move { handle_qualifications(&ctx, &r, &Invocation::with_timeout(10)).await }
    };
    let r = send(HttpRequest::new("POST", "/qualifications").with_body("{}")).await;
    assert_eq!(r.status, 415);
    let r = send(
        HttpRequest::new("POST", "/qualifications")
            .with_header("content-type", "application/json")
            .with_body("{\"qualifications\":["),
    )
    .await;
    assert_eq!(r.status, 400);
    let r = send(json_req(
        "POST",
        "/qualifications",
        &json!({"qualifications": []}),
    ))
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json_body()["error"]["field"], "qualifications");
    let many: Vec<Value> = (0..10_001)
        .map(|i| q(&seg, &format!("m{i}"), "qualified", now))
        .collect();
    let r = send(json_req(
        "POST",
        "/qualifications",
        &json!({"qualifications": many}),
    ))
    .await;
    assert_eq!(r.status, 413);
    let big = HttpRequest::new("POST", "/qualifications")
        .with_header("content-type", "application/json")
        .with_body(vec![b' '; 6 * 1024 * 1024 + 1]);
    assert_eq!(send(big).await.status, 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn amazon_413_429_and_500_during_a_backfill() {
    let rig = rig().await;
    let seg = seg_id();
    let qualified = seed(&rig, &seg, "ft", 3_000, 0, 1_700_000_000_000).await;
    let (dest, maps) = destination_with(&rig, &[&seg]).await;
    let audience = maps[0].audience_id.unwrap();
    let client = rig.login.client.client_id.clone();
    let patch_fault = |f: FaultSpec| {
        f.method("PATCH")
            .path_prefix("/v2/dp/audience")
            .client_id(&client)
    };

    // 413 twice: the batch is split and resent; 429 with Retry-After: the client waits.
    rig.sandbox
        .add_fault(&patch_fault(FaultSpec::status(413)).times(2))
        .await
        .unwrap();
    rig.sandbox
        .add_fault(&patch_fault(FaultSpec::status(429).retry_after(1)).times(2))
        .await
        .unwrap();
    let o = BackfillOptions {
        parallel_shards: 1,
        ..opts(300, 400)
    };
    // The first batch goes through after the split and the waits; the deadline stops the run.
    let run = run_backfill_with(&rig.ctx, &deadline_in(1_000), &o)
        .await
        .unwrap();
    let sent_before = backfill_progress(&rig.ctx, &dest, &seg).await.unwrap()["devicesSent"]
        .as_u64()
        .unwrap();
    assert!(sent_before > 0 && sent_before < 3_000, "{run}");
    // 5xx that outlast the client's retries: the shard keeps its checkpoint and the error shows.
    let fault500 = rig
        .sandbox
        .add_fault(&patch_fault(FaultSpec::status(500)).forever())
        .await
        .unwrap();
    let run = run_backfill_with(&rig.ctx, &deadline_in(8_000), &o)
        .await
        .unwrap();
    assert!(!run["errors"].as_array().unwrap().is_empty(), "{run}");
    let p = backfill_progress(&rig.ctx, &dest, &seg).await.unwrap();
    assert_eq!(p["state"], "running");
    assert_eq!(
        p["devicesSent"].as_u64().unwrap(),
        sent_before,
        "no checkpoint moved on 500s"
    );
    assert!(p["lastError"].as_str().unwrap().contains("HTTP 500"), "{p}");
    let m = rig
        .ctx
        .destinations
        .get_mapping(&dest, &seg)
        .await
        .unwrap()
        .unwrap();
    assert!(m.last_error.unwrap().starts_with("Amazon Error"));

    // Amazon recovers: the job resumes from its checkpoints and finishes; the error clears.
    rig.sandbox.remove_fault(&fault500).await.unwrap();
    backfill_until_done(&rig, &dest, &seg, &o, 10_000, 5).await;
    assert_eq!(members(&rig, audience).await, qualified);
    let p = backfill_progress(&rig.ctx, &dest, &seg).await.unwrap();
    assert_eq!(p["devicesSent"], 3_000);
    assert!(p["lastError"].is_null(), "{p}");
    let reqs = rig
        .sandbox
        .requests(Some(&client), Some("/v2/dp/audience"))
        .await
        .unwrap();
    assert!(reqs.iter().filter(|r| r.status == 413).count() == 2);
    assert!(reqs.iter().filter(|r| r.status == 429).count() == 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_batches_and_unknown_accounts_fail_the_job_visibly() {
    let rig = rig().await;
    let seg = seg_id();
    seed(&rig, &seg, "rj", 500, 0, 1_700_000_000_000).await;
    let (dest, maps) = destination_with(&rig, &[&seg]).await;
    let client = rig.login.client.client_id.clone();
    let fault = rig
        .sandbox
        .add_fault(
            &FaultSpec::status(400)
                .body(json!({"requestId": "R1", "error": {"httpStatusCode": "400", "description": "Bad Request", "errorType": "INVALID_INPUT", "message": "bad patch"}}))
                .method("PATCH")
                .path_prefix("/v2/dp/audience")
                .client_id(&client)
                .times(1),
        )
        .await
        .unwrap();
    let o = opts(300, 2000);
    run_backfill_with(&rig.ctx, &deadline_in(5_000), &o)
        .await
        .unwrap();
    let p = backfill_progress(&rig.ctx, &dest, &seg).await.unwrap();
    assert_eq!(p["state"], "failed", "{p}");
    let m = rig
        .ctx
        .destinations
        .get_mapping(&dest, &seg)
        .await
        .unwrap()
        .unwrap();
    assert!(
        m.last_error.as_deref().unwrap_or("").contains("HTTP 400"),
        "{m:?}"
    );
    // A failed job is not retried blindly…
    let again = run_backfill_with(&rig.ctx, &deadline_in(3_000), &o)
        .await
        .unwrap();
    assert_eq!(again["jobs"], 0, "{again}");
    let _ = rig.sandbox.remove_fault(&fault).await;
    // …until someone re-arms it (mapping again); it resumes from its checkpoints.
    start_backfill(&rig.ctx, &m).await.unwrap();
    backfill_until_done(&rig, &dest, &seg, &o, 5_000, 3).await;
    assert_eq!(members(&rig, maps[0].audience_id.unwrap()).await.len(), 500);

    // Account not found (403): the contract's wording on the mapping, the job fails.
    let seg2 = seg_id();
    seed(&rig, &seg2, "nf", 50, 0, 1_700_000_000_000).await;
    let (dest2, _) = destination_with(&rig, &[&seg2]).await;
    rig.sandbox
        .add_fault(
            &FaultSpec::status(403)
                .method("PATCH")
                .path_prefix("/v2/dp/audience")
                .client_id(&client)
                .forever(),
        )
        .await
        .unwrap();
    run_backfill_with(&rig.ctx, &deadline_in(5_000), &o)
        .await
        .unwrap();
    let p = backfill_progress(&rig.ctx, &dest2, &seg2).await.unwrap();
    assert_eq!(p["state"], "failed", "{p}");
    let m = rig
        .ctx
        .destinations
        .get_mapping(&dest2, &seg2)
        .await
        .unwrap()
        .unwrap();
    let want = format!(
        "Amazon Error: Account {} was not found",
        rig.account.advertiser_id
    );
    assert!(
        m.last_error.as_deref().unwrap_or("").starts_with(&want),
        "{m:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_consent_marks_the_account_and_pauses_the_job() {
    let rig = rig().await;
    let seg = seg_id();
    seed(&rig, &seg, "rv", 100, 0, 1_700_000_000_000).await;
    let (dest, _) = destination_with(&rig, &[&seg]).await;
    rig.sandbox.revoke(&rig.login.user.user_id).await.unwrap();
    rig.sandbox
        .expire_access_tokens(&rig.login.user.user_id)
        .await
        .unwrap();
    run_backfill_with(&rig.ctx, &deadline_in(5_000), &opts(300, 2000))
        .await
        .unwrap();
    let acct = rig
        .ctx
        .accounts
        .get_account(&rig.account.account_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(acct.status, AccountStatus::ReauthorizationRequired);
    let m = rig
        .ctx
        .destinations
        .get_mapping(&dest, &seg)
        .await
        .unwrap()
        .unwrap();
    assert!(
        m.last_error.as_deref().unwrap_or("").contains("Relink"),
        "{m:?}"
    );
    let p = backfill_progress(&rig.ctx, &dest, &seg).await.unwrap();
    assert_eq!(
        p["state"], "running",
        "paused, resumes after relinking: {p}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_patches_are_redriven_from_the_ledger_and_never_undo_a_newer_change() {
    let rig = rig().await;
    let seg = seg_id();
    let (dest, maps) = destination_with(&rig, &[&seg]).await;
    backfill_until_done(&rig, &dest, &seg, &opts(300, 2000), 5_000, 3).await;
    let audience = maps[0].audience_id.unwrap();
    let client = rig.login.client.client_id.clone();
    let t = chrono::Utc::now().timestamp_millis() - 60_000;

    // Amazon is down: the deltas are accepted (ledger) and parked.
    let fault = rig
        .sandbox
        .add_fault(
            &FaultSpec::status(503)
                .method("PATCH")
                .path_prefix("/v2/dp/audience")
                .client_id(&client)
                .forever(),
        )
        .await
        .unwrap();
    let (st, body) = post_qualifications(
        &rig,
        vec![q(&seg, "p1", "qualified", t), q(&seg, "p2", "qualified", t)],
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["totals"]["applied"], 2);
    assert_eq!(body["delivery"]["parked"], 2, "{body}");
    rig.sandbox.remove_fault(&fault).await.unwrap();

    // A newer change for p1 is delivered before the redrive runs.
    let (st, body) = post_qualifications(&rig, vec![q(&seg, "p1", "unqualified", t + 1)]).await;
    assert_eq!(st, 200, "{body}");
    assert!(members(&rig, audience).await.is_empty());

    // The late redrive sends the ledger's current state: p2 joins, p1 stays out.
    let mut redriven = 0;
    for _ in 0..5 {
        let r = run_redrive(&rig.ctx, &Invocation::with_timeout(30))
            .await
            .unwrap();
        redriven += r["redriven"].as_u64().unwrap();
        if redriven >= 1 {
            break;
        }
    }
    assert!(redriven >= 1);
    assert_eq!(
        members(&rig, audience).await,
        BTreeSet::from(["COOKIE-p2".to_string()])
    );
    assert_eq!(
        members(&rig, audience).await,
        ledger_qualified(&rig, &seg).await
    );
}

/// `POST /qualifications` as the function serves it, for `runtime::answer_within`.
struct Qualifications(ExportCtx);

#[async_trait::async_trait]
impl adsync::runtime::Handler for Qualifications {
    async fn http(&self, req: HttpRequest, inv: Invocation) -> adsync::http::HttpResponse {
        handle_qualifications(&self.0, &req, &inv).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_amazon_parks_qualifications_within_the_budget_and_an_outage_is_outlasted() {
    use adsync::store::parked_retry::ParkedRetry;
    let rig = rig().await;
    let seg = seg_id();
    let (dest, maps) = destination_with(&rig, &[&seg]).await;
    backfill_until_done(&rig, &dest, &seg, &opts(300, 2000), 5_000, 3).await;
    let audience = maps[0].audience_id.unwrap();
    let client = rig.login.client.client_id.clone();
    let t = chrono::Utc::now().timestamp_millis() - 60_000;
    let patch = |f: FaultSpec| {
        f.method("PATCH")
            .path_prefix("/v2/dp/audience")
            .client_id(&client)
    };

    // Amazon takes 40 s per PATCH: the answer still comes within the (shrunk) budget.
    let slow = rig
        .sandbox
        .add_fault(&patch(FaultSpec::delay_ms(40_000)).forever())
        .await
        .unwrap();
    let budget = adsync::budget::HttpBudget {
        total: Duration::from_secs(6),
        reserve: Duration::from_secs(2),
    };
    let req = json_req(
        "POST",
        "/qualifications",
        &json!({"qualifications": [q(&seg, "s1", "qualified", t), q(&seg, "s2", "qualified", t)]}),
    );
    let t0 = std::time::Instant::now();
    let resp = adsync::runtime::answer_within(
        &Qualifications(rig.ctx.clone()),
        req.clone(),
        Invocation::with_timeout(60),
        &json!({}),
        budget,
    )
    .await;
    let took = t0.elapsed();
    adsync_tests::openapi::assert_http_response_valid(&req.method, &req.path, &resp);
    assert!(took < budget.total, "answered after {took:?}");
    let body = resp.json_body();
    assert_eq!(resp.status, 200, "{body}");
    assert_eq!(body["totals"]["applied"], 2, "{body}");
    assert_eq!(body["delivery"]["parked"], 2, "{body}");
    rig.sandbox.remove_fault(&slow).await.unwrap();

    // Then Amazon fails three redrive runs (3 attempts each) and recovers: each run sends the
    // message back with its delay (0 here) instead of leaving it to burn SQS receives.
    rig.sandbox
        .add_fault(&patch(FaultSpec::status(503)).times(9))
        .await
        .unwrap();
    let policy = ParkedRetry {
        base_delay: Duration::ZERO,
        max_delay: Duration::ZERO,
        ..ParkedRetry::default()
    };
    for run in 0..3 {
        let r = adsync::export::members::run_redrive_with(
            &rig.ctx,
            &Invocation::with_timeout(30),
            &policy,
        )
        .await
        .unwrap();
        assert_eq!(
            (r["redriven"].as_u64(), r["requeued"].as_u64()),
            (Some(0), Some(1)),
            "run {run}: {r}"
        );
    }
    let r =
        adsync::export::members::run_redrive_with(&rig.ctx, &Invocation::with_timeout(30), &policy)
            .await
            .unwrap();
    assert_eq!(r["redriven"], 1, "{r}");
    assert_eq!(
        members(&rig, audience).await,
        BTreeSet::from(["COOKIE-s1".to_string(), "COOKIE-s2".to_string()])
    );
    assert_eq!(
        members(&rig, audience).await,
        ledger_qualified(&rig, &seg).await
    );
    let again =
        adsync::export::members::run_redrive_with(&rig.ctx, &Invocation::with_timeout(30), &policy)
            .await
            .unwrap();
    assert_eq!(again["messages"], 0, "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_patches_past_the_age_limit_are_dead_lettered_and_moved_back_by_redrive_dlq() {
    use adsync::store::parked_retry::ParkedRetry;
    let mut rig = rig().await;
    // A parked queue with its own dead-letter queue (as the template has them).
    let aws = adsync::aws::AwsClients::from_env().await;
    let (url, dlq) = adsync_tests::conversions::parked_queue_with_dlq(&aws.sqs, "patches").await;
    rig.ctx.parked =
        ParkedQueue::new(aws.sqs.clone(), url.clone()).with_dead_letter(Some(dlq.clone()));
    let seg = seg_id();
    let (dest, maps) = destination_with(&rig, &[&seg]).await;
    backfill_until_done(&rig, &dest, &seg, &opts(300, 2000), 5_000, 3).await;
    let audience = maps[0].audience_id.unwrap();
    let client = rig.login.client.client_id.clone();
    let t = chrono::Utc::now().timestamp_millis() - 60_000;
    let down = rig
        .sandbox
        .add_fault(
            &FaultSpec::status(503)
                .method("PATCH")
                .path_prefix("/v2/dp/audience")
                .client_id(&client)
                .forever(),
        )
        .await
        .unwrap();
    let (st, body) = post_qualifications(
        &rig,
        vec![q(&seg, "d1", "qualified", t), q(&seg, "d2", "qualified", t)],
    )
    .await;
    assert_eq!(
        (st, &body["delivery"]["parked"]),
        (200, &json!(2)),
        "{body}"
    );

    // Still failing when the message is older than the age limit: to the dead-letter queue.
    let aged = ParkedRetry {
        max_age: Duration::from_millis(1),
        ..ParkedRetry::default()
    };
    let r =
        adsync::export::members::run_redrive_with(&rig.ctx, &Invocation::with_timeout(30), &aged)
            .await
            .unwrap();
    assert_eq!(
        (r["deadLettered"].as_u64(), r["requeued"].as_u64()),
        (Some(1), Some(0)),
        "{r}"
    );
    assert_eq!(
        adsync_tests::conversions::queue_depth(&aws.sqs, &url).await,
        0
    );
    rig.sandbox.remove_fault(&down).await.unwrap();

    // Amazon is back: redrive-dlq moves it to the patches queue, the redrive delivers it.
    let moved = adsync::export::run_task_with(
        &rig.ctx,
        "redrive-dlq",
        &json!({"task": "redrive-dlq", "accountId": rig.account.account_id}),
        &Invocation::with_timeout(30),
    )
    .await
    .unwrap();
    assert_eq!(moved["redriveDlq"]["movedPatches"], 2, "{moved}");
    let r = run_redrive(&rig.ctx, &Invocation::with_timeout(30))
        .await
        .unwrap();
    assert_eq!(r["redriven"], 1, "{r}");
    assert_eq!(
        members(&rig, audience).await,
        BTreeSet::from(["COOKIE-d1".to_string(), "COOKIE-d2".to_string()])
    );
    assert_eq!(
        adsync_tests::conversions::queue_depth(&aws.sqs, &dlq).await,
        0
    );
}
