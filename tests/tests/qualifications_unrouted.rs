//! `POST /qualifications` whose target lookups fail or run out of time after the ledger writes:
//! the applied rows are parked unrouted, never lost (a resend would be answered `stale`), and
//! the redrive reads the segments' mappings and sends the ledger's state, removes included; a
//! message dead-lettered unrouted is moved back by `redrive-dlq` and routed.
//! Needs the local stack (`infra/scripts/stack-up.sh`, then `source .local/stack.env`).

use adsync::export::members::{handle_qualifications, run_redrive};
use adsync::runtime::Invocation;
use adsync::store::destinations::DestinationStore;
use adsync::store::jobs::JobStore;
use adsync_tests::export_rig::{
    Rig, checked, destination_with, json_req, ledger_qualified, members, opts, qualify, rig,
    run_jobs_until_done, seg_id,
};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// `POST /qualifications` of one `COOKIE` item with `ctx` (answer checked against openapi.yaml).
async fn post_one(
    ctx: &adsync::export::ExportCtx,
    seg: &str,
    device: &str,
    status: &str,
) -> (u16, Value) {
    let ts = chrono::Utc::now().timestamp_millis();
    let item = json!({"segmentId": seg, "deviceId": device, "idType": "COOKIE", "status": status, "timestamp": ts});
    let req = json_req(
        "POST",
        "/qualifications",
        &json!({"qualifications": [item]}),
    );
    let r = handle_qualifications(ctx, &req, &Invocation::with_timeout(30)).await;
    checked(&req, &r)
}

/// Redrives until a run sends nothing more; returns the devices the runs sent.
async fn redrive(rig: &Rig) -> u64 {
    let mut devices = 0;
    for _ in 0..5 {
        let r = run_redrive(&rig.ctx, &Invocation::with_timeout(30))
            .await
            .unwrap();
        assert_eq!(r["errors"], json!([]), "{r}");
        devices += r["devices"].as_u64().unwrap();
        if r["messages"] == 0 {
            break;
        }
    }
    devices
}

/// A test's segment on a fresh rig, mapped to one audience; its backfill job is run to the end
/// when `backfilled`, else left queued (its scan not begun). Returns (rig, segment, destination,
/// audience).
async fn mapped_segment(backfilled: bool) -> (Rig, String, String, i64) {
    let rig = rig(1).await;
    let seg = seg_id();
    let (dest, maps) = destination_with(&rig, &[&seg], 86_400).await;
    if backfilled {
        run_jobs_until_done(&rig, &dest, &seg, &opts(500)).await;
    }
    let audience = maps[0].audience_id.unwrap();
    (rig, seg, dest, audience)
}

/// `ctx` with its destinations store on a table that does not exist (every lookup fails).
fn without_destinations(rig: &Rig) -> adsync::export::ExportCtx {
    let mut broken = rig.ctx.clone();
    broken.destinations = DestinationStore::new(rig.ddb.clone(), "adsync-missing-table".into());
    broken
}

fn cookies(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|d| format!("COOKIE-{d}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_whose_targets_cannot_be_read_are_parked_and_the_redrive_routes_them() {
    let (rig, seg, _dest, audience) = mapped_segment(true).await;
    qualify(&rig, &seg, &["d1", "d2"], "qualified").await;
    assert_eq!(members(&rig, audience).await, cookies(&["d1", "d2"]));

    // The mappings cannot be read (a destinations table that does not exist): the remove is
    // applied to the ledger and parked, not sent, and not lost.
    let broken = without_destinations(&rig);
    let (st, body) = post_one(&broken, &seg, "d1", "unqualified").await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["totals"]["applied"], 1, "{body}");
    assert_eq!(body["delivery"]["parked"], 1, "{body}");
    let error = body["delivery"]["errors"][0].as_str().unwrap();
    assert!(error.starts_with("mapping lookup failed"), "{body}");
    assert!(
        !error.contains("adsync-missing-table") && !error.contains("ResourceNotFound"),
        "the store's own error reached the caller: {error}"
    );
    assert_eq!(members(&rig, audience).await, cookies(&["d1", "d2"]));

    // The redrive reads the segment's mappings and sends the ledger's state: d1 leaves.
    assert_eq!(redrive(&rig).await, 1);
    assert_eq!(members(&rig, audience).await, cookies(&["d2"]));
    assert_eq!(
        members(&rig, audience).await,
        ledger_qualified(&rig, &seg).await
    );
}

/// A DynamoDB client whose endpoint accepts connections and never answers.
async fn silent_dynamodb() -> aws_sdk_dynamodb::Client {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let conf = adsync::aws::config_loader().endpoint_url(url).load().await;
    aws_sdk_dynamodb::Client::new(&conf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_whose_lookups_outlast_the_amazon_window_are_parked_in_time() {
    let (rig, seg, _dest, audience) = mapped_segment(true).await;
    qualify(&rig, &seg, &["d3"], "qualified").await;
    assert_eq!(members(&rig, audience).await, cookies(&["d3"]));

    // The mapping lookups hang; the request's Amazon window closes 1.5 s from now: the
    // applied remove is parked when it closes instead of waiting on the lookups.
    let mut slow = rig.ctx.clone();
    slow.destinations = DestinationStore::new(silent_dynamodb().await, rig.dest_table.clone());
    let started = Instant::now();
    let window = started + Duration::from_millis(1_500);
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        adsync::budget::with_amazon_deadline(window, post_one(&slow, &seg, "d3", "unqualified")),
    )
    .await;
    let (st, body) = answer.expect("the answer waited on the hanging lookups");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["totals"]["applied"], 1, "{body}");
    assert_eq!(body["delivery"]["parked"], 1, "{body}");
    assert_eq!(body["delivery"]["patches"], 0, "{body}");
    assert_eq!(members(&rig, audience).await, cookies(&["d3"]));

    assert_eq!(redrive(&rig).await, 1);
    assert!(members(&rig, audience).await.is_empty());
    assert!(ledger_qualified(&rig, &seg).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrouted_device_is_marked_dirty_for_a_backfill_still_scanning_before_its_send() {
    // The destination's backfill job is queued, not run: its scan has not begun.
    let (rig, seg, dest, audience) = mapped_segment(false).await;

    let broken = without_destinations(&rig);
    let (st, body) = post_one(&broken, &seg, "d5", "qualified").await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["delivery"]["parked"], 1, "{body}");
    let dirty = |rig: &Rig| {
        let (jobs, dest, seg) = (rig.ctx.jobs.clone(), dest.clone(), seg.clone());
        async move {
            let (page, _) = jobs.dirty_page(&dest, &seg, None, 100).await.unwrap();
            page.into_iter().map(|d| d.device).collect::<Vec<_>>()
        }
    };
    assert!(dirty(&rig).await.is_empty(), "nothing was routed yet");

    // The redrive finds the job still scanning: the device's mark precedes its send.
    assert_eq!(redrive(&rig).await, 1);
    assert_eq!(dirty(&rig).await, vec!["COOKIE-d5".to_string()]);
    assert_eq!(members(&rig, audience).await, cookies(&["d5"]));

    // The backfill then runs, drains the mark and ends with the ledger's state.
    run_jobs_until_done(&rig, &dest, &seg, &opts(500)).await;
    assert!(dirty(&rig).await.is_empty(), "the drain cleared the mark");
    assert_eq!(
        members(&rig, audience).await,
        ledger_qualified(&rig, &seg).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_whose_dirty_mark_fails_is_not_sent_but_parked_for_the_redrive_to_mark() {
    // The backfill job is queued, not run: a delta must mark its device before sending it.
    let (rig, seg, dest, audience) = mapped_segment(false).await;

    // The jobs table cannot be written: no mark, so no send (a stale scan send could follow).
    let mut broken = rig.ctx.clone();
    broken.jobs = JobStore::new(rig.ddb.clone(), "adsync-missing-table".into());
    let (st, body) = post_one(&broken, &seg, "d7", "qualified").await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["totals"]["applied"], 1, "{body}");
    assert_eq!(body["delivery"]["patches"], 0, "{body}");
    assert_eq!(body["delivery"]["parked"], 1, "{body}");
    assert!(members(&rig, audience).await.is_empty());

    // The redrive marks, then sends.
    assert_eq!(redrive(&rig).await, 1);
    let (page, _) = rig
        .ctx
        .jobs
        .dirty_page(&dest, &seg, None, 10)
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(members(&rig, audience).await, cookies(&["d7"]));
    run_jobs_until_done(&rig, &dest, &seg, &opts(500)).await;
    assert_eq!(
        members(&rig, audience).await,
        ledger_qualified(&rig, &seg).await
    );
}

/// Sets a destination's `ttlSeconds` to a string (its record cannot be read) or back to a number.
async fn set_destination_ttl(
    rig: &Rig,
    dest: &str,
    value: aws_sdk_dynamodb::types::AttributeValue,
) {
    use aws_sdk_dynamodb::types::AttributeValue;
    rig.ddb
        .update_item()
        .table_name(&rig.dest_table)
        .key("pk", AttributeValue::S(format!("DST#{dest}")))
        .key("sk", AttributeValue::S("DESTINATION".into()))
        .update_expression("SET ttlSeconds = :v")
        .expression_attribute_values(":v", value)
        .send()
        .await
        .expect("update the destination in DynamoDB Local");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_with_one_unreadable_target_reaches_the_others_and_parks_the_rest() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let (rig, seg, dest_a, audience_a) = mapped_segment(true).await;
    let (dest_b, maps_b) = destination_with(&rig, &[&seg], 86_400).await;
    run_jobs_until_done(&rig, &dest_b, &seg, &opts(500)).await;
    let audience_b = maps_b[0].audience_id.unwrap();
    assert_ne!(dest_a, dest_b);

    // Destination B's record cannot be read: A gets the update now, the device is parked for B.
    set_destination_ttl(&rig, &dest_b, AttributeValue::S("x".into())).await;
    let (st, body) = post_one(&rig.ctx, &seg, "d9", "qualified").await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["delivery"]["patches"], 1, "{body}");
    assert_eq!(body["delivery"]["parked"], 1, "{body}");
    assert_eq!(members(&rig, audience_a).await, cookies(&["d9"]));
    assert!(members(&rig, audience_b).await.is_empty());

    // Readable again: the redrive reaches B (A again, harmlessly).
    set_destination_ttl(&rig, &dest_b, AttributeValue::N("86400".into())).await;
    assert_eq!(redrive(&rig).await, 1);
    assert_eq!(members(&rig, audience_a).await, cookies(&["d9"]));
    assert_eq!(members(&rig, audience_b).await, cookies(&["d9"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrouted_message_past_the_age_limit_is_dead_lettered_then_moved_back_and_routed() {
    use adsync::store::parked::ParkedQueue;
    use adsync::store::parked_retry::ParkedRetry;
    use adsync_tests::conversions::{parked_queue_with_dlq, queue_depth};
    let (mut rig, seg, _dest, audience) = mapped_segment(true).await;
    qualify(&rig, &seg, &["d1", "d2"], "qualified").await;
    let sqs = adsync::aws::AwsClients::from_env().await.sqs;
    let (url, dlq) = parked_queue_with_dlq(&sqs, "patches").await;
    rig.ctx.parked = ParkedQueue::new(sqs.clone(), url.clone()).with_dead_letter(Some(dlq.clone()));

    // Parked unrouted, and still unroutable when older than the age limit: dead-lettered.
    let broken = without_destinations(&rig);
    let (_, body) = post_one(&broken, &seg, "d1", "unqualified").await;
    assert_eq!(body["delivery"]["parked"], 1, "{body}");
    let aged = ParkedRetry {
        max_age: Duration::from_millis(1),
        ..ParkedRetry::default()
    };
    let r =
        adsync::export::members::run_redrive_with(&broken, &Invocation::with_timeout(30), &aged)
            .await
            .unwrap();
    assert_eq!(r["deadLettered"], 1, "{r}");
    assert_eq!(
        (queue_depth(&sqs, &url).await, queue_depth(&sqs, &dlq).await),
        (0, 1)
    );

    // redrive-dlq (every account: an unrouted message has none yet) moves it back; the redrive
    // routes it and sends the ledger's state.
    let input = json!({"task": "redrive-dlq"});
    let inv = Invocation::with_timeout(30);
    let moved = adsync::export::run_task_with(&rig.ctx, "redrive-dlq", &input, &inv)
        .await
        .unwrap();
    assert_eq!(moved["redriveDlq"]["movedPatches"], 1, "{moved}");
    assert_eq!(queue_depth(&sqs, &dlq).await, 0);
    assert_eq!(redrive(&rig).await, 1);
    assert_eq!(members(&rig, audience).await, cookies(&["d2"]));
}
