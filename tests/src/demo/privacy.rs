//! Demo step: privacy and identity.
//!
//! 1. Qualifies a fresh device into the first segment of the destination the `segments` step
//!    created (it reaches the audience at the sandbox), then erases it with
//!    `POST /privacy/deletions`, plays the schedule until the job is done, and shows its steps,
//!    the audience without the device, and the user deletions Amazon received.
//! 2. Uploads hashed records for two `EXTERNAL_USER_ID`s (one raw, one pre-hashed) and a bad
//!    identity with `POST /accounts/{id}/identities` (207: the bad one named by field).
//!
//! Needs the `segments` step's destination (or `DEMO_DESTINATION_ID`).

use super::{Demo, expect_status};
use crate::sandbox::SEED_CLIENT_ID;
use reqwest::Method;
use serde_json::{Value, json};

const FUNCTION: &str = "segment-export";

async fn invoke_backfill(demo: &Demo) -> Result<Value, String> {
    let base = demo.functions_url.strip_suffix("/lambda-url").unwrap_or(&demo.functions_url);
    let url = format!("{base}/2015-03-31/functions/{FUNCTION}/invocations");
    let reply = demo
        .send(demo.http.post(&url).json(&json!({"task": "backfill"})), "invoking {\"task\":\"backfill\"}")
        .await?;
    expect_status(&reply, 200, "the backfill task")?;
    Ok(reply.json())
}

async fn members(demo: &Demo, audience: i64) -> Result<Vec<String>, String> {
    let url = format!("{}/admin/audiences/{audience}/members", demo.amazon_url);
    let reply = demo.send(demo.http.get(&url), "GET /admin/audiences/{id}/members").await?;
    expect_status(&reply, 200, "the sandbox's members")?;
    Ok(serde_json::from_value(reply.json()["members"].clone()).unwrap_or_default())
}

pub async fn run(demo: &mut Demo) -> Result<(), String> {
    let dest_id = demo
        .recall("destination_id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| std::env::var("DEMO_DESTINATION_ID").ok())
        .ok_or("no destination: run the segments step first (infra/scripts/demo.sh segments privacy)")?;
    let reply = demo.call(Method::GET, FUNCTION, &format!("/destinations/{dest_id}"), true, None).await?;
    expect_status(&reply, 200, "GET /destinations/{id}")?;
    let dest = reply.json();
    let account = dest["accountId"].as_str().unwrap_or_default().to_string();
    let m = dest["mappings"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["audienceId"].is_i64()).cloned())
        .ok_or("the destination has no audience yet")?;
    let (segment, audience) = (m["segmentId"].as_str().unwrap_or_default().to_string(), m["audienceId"].as_i64().unwrap_or(0));

    // 1. A device in the audience, then erased.
    let device = format!("demo-erase-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let q = json!({"qualifications": [{"segmentId": segment, "deviceId": device, "idType": "MAID",
        "status": "qualified", "timestamp": chrono::Utc::now().to_rfc3339()}]});
    let reply = demo.call(Method::POST, FUNCTION, "/qualifications", true, Some(&q)).await?;
    expect_status(&reply, 200, "POST /qualifications")?;
    let key = format!("MAID-{device}");
    if !members(demo, audience).await?.contains(&key) {
        return Err(format!("{key} did not reach audience {audience}"));
    }
    demo.ok(format!("MAID {device} qualified into {segment}: it is in audience {audience} at Amazon"));
    let body = json!({"devices": [{"idType": "MAID", "deviceId": device}]});
    let reply = demo.call(Method::POST, FUNCTION, "/privacy/deletions", true, Some(&body)).await?;
    expect_status(&reply, 202, "POST /privacy/deletions")?;
    let id = reply.json()["deletionId"].as_str().unwrap_or_default().to_string();
    demo.ok(format!("POST /privacy/deletions → 202, deletion {id} (the job shows the device as its SHA-256 only)"));
    let mut job = reply.json();
    for _ in 0..10 {
        if job["status"] == "done" {
            break;
        }
        invoke_backfill(demo).await?;
        let reply = demo.call(Method::GET, FUNCTION, &format!("/privacy/deletions/{id}"), true, None).await?;
        expect_status(&reply, 200, "GET /privacy/deletions/{id}")?;
        job = reply.json();
    }
    if job["status"] != "done" {
        return Err(format!("the erasure did not finish: {job}"));
    }
    let s = &job["steps"];
    demo.info(format!(
        "steps: tombstones {} · ledger rows removed {} (of {} scanned) · audiences of {} account(s) · user deletions for {} advertiser(s)",
        s["tombstones"]["done"], s["ledger"]["rowsRemoved"], s["ledger"]["rowsScanned"],
        s["audiences"]["targets"].as_object().map_or(0, |t| t.len()),
        s["users"]["targets"].as_object().map_or(0, |t| t.len()),
    ));
    if members(demo, audience).await?.contains(&key) {
        return Err(format!("{key} is still in audience {audience}"));
    }
    demo.ok(format!("erasure done: {key} is gone from audience {audience}; PATCH /v2/dp/users sent per advertiser"));

    // 2. Hashed records for EXTERNAL_USER_ID members.
    let ids = json!({"identities": [
        {"externalUserId": "crm-demo-1", "email": " Jane.Doe@Example.com ", "phone": "+1 (206) 555-0100", "firstName": "Jane", "postalCode": "98109"},
        {"externalUserId": "crm-demo-2", "email": "9b1a4c6d0e2f38a7b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2"},
        {"externalUserId": "crm demo 3", "email": 42}]});
    let reply = demo.call(Method::POST, FUNCTION, &format!("/accounts/{account}/identities"), true, Some(&ids)).await?;
    expect_status(&reply, 207, "POST /accounts/{id}/identities")?;
    let v = reply.json();
    demo.ok(format!(
        "POST /accounts/{account}/identities → 207: {} accepted, {} rejected ({})",
        v["totals"]["accepted"], v["totals"]["rejected"], v["results"][2]["errors"]
    ));
    let url = format!("{}/admin/hashed-records", demo.amazon_url);
    let reply = demo.send(demo.http.get(&url).query(&[("clientId", SEED_CLIENT_ID)]), "GET /admin/hashed-records").await?;
    let rec = reply.json()["records"]["crm-demo-1"].clone();
    demo.info(format!("Amazon holds for EXTERNAL_USER_ID-crm-demo-1: {rec}"));
    Ok(())
}
