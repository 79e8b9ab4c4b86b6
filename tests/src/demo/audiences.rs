//! Demo step: audiences that stay true at Amazon. A destination with a 30 s TTL (so the demo
//! sees it lapse in seconds; on AWS, where the schedule runs every minute, use at least 300 s)
//! is backfilled; the size and match rate the scheduled run read from Amazon are shown; the
//! schedule then refreshes the members before their TTL runs out, and the sandbox still holds
//! every qualified member after the first adds' TTL has passed; finally new settings (TTL and
//! countries) are PATCHed and reach the audience.

use super::segments::{account_id, get_destination, invoke_backfill, post_qualifications};
use super::{Demo, expect_status};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

const FUNCTION: &str = "segment-export";
const DEVICES: usize = 80;
const TTL_SECONDS: u64 = 30;

fn mapping(dest: &Value) -> Value {
    dest["mappings"][0].clone()
}

/// Plays the schedule until the mapping's job (backfill or refresh) is done.
async fn run_until_done(demo: &mut Demo, id: &str) -> Result<Value, String> {
    for _ in 0..15 {
        invoke_backfill(demo).await?;
        let dest = get_destination(demo, id).await?;
        let m = mapping(&dest);
        if m["status"] == "active" && m["backfill"]["state"] == "done" {
            return Ok(dest);
        }
    }
    Err(format!("the job of destination {id} did not finish"))
}

async fn member_count(demo: &Demo, advertiser: &str, audience: i64) -> Result<u64, String> {
    let reply = demo
        .send(
            demo.http
                .get(format!("{}/admin/audiences", demo.amazon_url))
                .query(&[("advertiserId", advertiser)]),
            "GET /admin/audiences on the sandbox",
        )
        .await?;
    expect_status(&reply, 200, "GET /admin/audiences")?;
    reply.json()["audiences"]
        .as_array()
        .and_then(|l| l.iter().find(|a| a["id"].as_i64() == Some(audience)))
        .and_then(|a| a["memberCount"].as_u64())
        .ok_or_else(|| format!("audience {audience} not found at the sandbox"))
}

fn wait_until(rfc3339: &str) -> Duration {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| (t.timestamp_millis() - chrono::Utc::now().timestamp_millis()).max(0))
        .map(|ms| Duration::from_millis(ms as u64 + 500))
        .unwrap_or(Duration::from_secs(1))
}

pub async fn run(demo: &mut Demo) -> Result<(), String> {
    let account = account_id(demo).await?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let seg = format!("demo-{run}-weekend");
    let reply = demo
        .call(Method::PUT, FUNCTION, &format!("/segments/{seg}"), true,
              Some(&json!({"name": "Weekend Shoppers", "dataExportControls": ["PII"]})))
        .await?;
    expect_status(&reply, 201, "PUT /segments (Audience Manager's control name PII)")?;
    demo.ok(format!(
        "segment registered with Audience Manager's control name PII, answered as {}",
        reply.json()["dataExportControls"]
    ));
    let ts = chrono::Utc::now().to_rfc3339();
    let items: Vec<Value> = (0..DEVICES)
        .map(|i| json!({"segmentId": seg, "deviceId": format!("wk-{run}-{i:03}"), "idType": "COOKIE",
                        "status": if i % 8 == 0 { "unqualified" } else { "qualified" }, "timestamp": ts}))
        .collect();
    post_qualifications(demo, items, "weekend shoppers").await?;
    let qualified = (0..DEVICES).filter(|i| i % 8 != 0).count() as u64;

    let body = json!({"name": format!("Short TTL demo {run}"), "accountId": account,
        "dataExportLabels": ["OFFSITE_ADVERTISING"], "dataSourceCountry": ["US"],
        "ttlSeconds": TTL_SECONDS, "mappings": [{"segmentId": seg}]});
    let created = demo.call(Method::POST, FUNCTION, "/destinations", true, Some(&body)).await?;
    expect_status(&created, 202, "POST /destinations")?;
    let id = created.json()["destinationId"].as_str().ok_or("no destinationId")?.to_string();
    let dest = run_until_done(demo, &id).await?;
    let m = mapping(&dest);
    let audience = m["audienceId"].as_i64().ok_or("no audience id")?;
    demo.ok(format!(
        "destination {id} (ttl {TTL_SECONDS} s): audience {audience} backfilled with {qualified} members"
    ));
    demo.ok(format!(
        "size read by the schedule: audienceSize {}, matchedSize {}, matchRate {} (measured {})",
        m["audienceSize"], m["matchedSize"], m["matchRate"], m["measuredAt"].as_str().unwrap_or("-")
    ));
    let due = m["refresh"]["nextDueAt"].as_str().ok_or("no refresh.nextDueAt")?.to_string();
    let first_pass = m["backfill"]["startedAt"].as_str().unwrap_or("").to_string();
    demo.info(format!("refresh due at {due} (half the TTL after the pass that started {first_pass})"));

    tokio::time::sleep(wait_until(&due)).await;
    let dest = run_until_done(demo, &id).await?;
    let m = mapping(&dest);
    demo.ok(format!(
        "refresh ran ({} as the job's purpose, {} members re-added): lastCompletedAt {}, next due {}",
        m["backfill"]["purpose"], m["backfill"]["devicesSent"],
        m["refresh"]["lastCompletedAt"].as_str().unwrap_or("-"),
        m["refresh"]["nextDueAt"].as_str().unwrap_or("-")
    ));
    // Past the first adds' TTL: without the refresh the sandbox would have dropped them.
    let lapse = chrono::DateTime::parse_from_rfc3339(&first_pass)
        .map(|t| t + chrono::Duration::seconds(TTL_SECONDS as i64 + 1))
        .map(|t| t.to_rfc3339())
        .unwrap_or_default();
    tokio::time::sleep(wait_until(&lapse)).await;
    let held = member_count(demo, &account, audience).await?;
    if held != qualified {
        return Err(format!("the sandbox holds {held} members after the TTL, the ledger {qualified}"));
    }
    demo.ok(format!("{held} members still at Amazon after the first adds' TTL ran out (= ledger)"));

    let patched = demo
        .call(Method::PATCH, FUNCTION, &format!("/destinations/{id}"), true,
              Some(&json!({"ttlSeconds": 3600, "dataSourceCountry": ["US", "CA"]})))
        .await?;
    expect_status(&patched, 200, "PATCH /destinations/{id}")?;
    demo.info(format!("settings after the PATCH: {}", mapping(&patched.json())["settings"]));
    invoke_backfill(demo).await?;
    let m = mapping(&get_destination(demo, &id).await?);
    if m["settings"]["state"] != "applied" {
        return Err(format!("the new settings did not reach Amazon: {}", m["settings"]));
    }
    demo.ok(format!("ttl 3600 s and countries US, CA applied at Amazon: {}", m["settings"]["applied"]));
    Ok(())
}
