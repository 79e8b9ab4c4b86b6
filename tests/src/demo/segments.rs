//! Demo step: segment export with historical backfill, the way Audience Manager's Amazon
//! Advertising device-based destination works.
//!
//! Registers three segments, ingests historical qualifications (before any destination exists),
//! creates a destination mapping the three segments (the request creates the audiences its slice
//! allows, one per second, and starts their backfills; the others stay `pending`), then plays the
//! EventBridge schedule by invoking the function with `{"task":"backfill"}` through the
//! `cargo lambda watch` invoke endpoint, printing each mapping's audience and backfill progress
//! after every invocation. Then live deltas, a fee update (the wrong currency refused first),
//! and the final audience sizes as the Amazon sandbox sees them, checked against the ledger's
//! expected membership.
//!
//! Needs a linked account: the one the `linking` step remembered, else the first active account
//! `GET /accounts` lists.

use super::{Demo, Reply, expect_status};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;

const FUNCTION: &str = "segment-export";
/// Devices in the historical load.
const DEVICES: usize = 600;
/// Scheduled invocations the demo plays at most before giving up.
const MAX_RUNS: usize = 25;

/// Which of the three segments device `i` qualifies for historically.
fn historical(i: usize) -> [bool; 3] {
    [
        i.is_multiple_of(2),
        i.is_multiple_of(3),
        i.is_multiple_of(5),
    ]
}

fn device(run: &str, i: usize) -> String {
    format!("demo-{run}-{i:04}")
}

pub(super) async fn account_id(demo: &Demo) -> Result<String, String> {
    if let Some(id) = demo.recall("account_id").and_then(Value::as_str) {
        return Ok(id.to_string());
    }
    let reply = demo
        .call(Method::GET, "oauth-callback", "/accounts", true, None)
        .await?;
    expect_status(&reply, 200, "GET /accounts")?;
    let v = reply.json();
    let list = v["accounts"]
        .as_array()
        .or_else(|| v.as_array())
        .cloned()
        .unwrap_or_default();
    list.iter()
        .find(|a| a["status"] == "active")
        .and_then(|a| a["accountId"].as_str().map(str::to_string))
        .ok_or_else(|| {
            "no linked account: run the linking step first (infra/scripts/demo.sh linking segments)"
                .to_string()
        })
}

pub(super) async fn post_qualifications(demo: &Demo, items: Vec<Value>, what: &str) -> Result<Reply, String> {
    let n = items.len();
    let reply = demo
        .call(
            Method::POST,
            FUNCTION,
            "/qualifications",
            true,
            Some(&json!({ "qualifications": items })),
        )
        .await?;
    expect_status(
        &reply,
        200,
        &format!("POST /qualifications ({what}, {n} items)"),
    )?;
    Ok(reply)
}

/// One scheduled `{"task":"backfill"}` invocation through the watch emulator's invoke API.
pub(super) async fn invoke_backfill(demo: &Demo) -> Result<Value, String> {
    let base = demo
        .functions_url
        .strip_suffix("/lambda-url")
        .unwrap_or(&demo.functions_url)
        .to_string();
    let url = format!("{base}/2015-03-31/functions/{FUNCTION}/invocations");
    let reply = demo
        .send(
            demo.http.post(&url).json(&json!({"task": "backfill"})),
            "invoking {\"task\":\"backfill\"}",
        )
        .await?;
    expect_status(
        &reply,
        200,
        &format!("POST {url} {{\"task\":\"backfill\"}}"),
    )?;
    Ok(reply.json())
}

pub(super) async fn get_destination(demo: &Demo, id: &str) -> Result<Value, String> {
    let reply = demo
        .call(
            Method::GET,
            FUNCTION,
            &format!("/destinations/{id}"),
            true,
            None,
        )
        .await?;
    expect_status(&reply, 200, &format!("GET /destinations/{id}"))?;
    Ok(reply.json())
}

fn progress_line(m: &Value, names: &BTreeMap<String, String>) -> String {
    let seg = m["segmentId"].as_str().unwrap_or("?");
    let b = &m["backfill"];
    let backfill = if b.is_object() {
        format!(
            "backfill {} ({}), {} devices sent, shards {}/{}",
            b["state"].as_str().unwrap_or("?"),
            b["phase"].as_str().unwrap_or("-"),
            b["devicesSent"],
            b["shardsDone"],
            b["shards"]
        )
    } else {
        "backfill not started".into()
    };
    let err = m["lastError"]
        .as_str()
        .map(|e| format!(" — last error: {e}"))
        .unwrap_or_default();
    format!(
        "{:<22} {:<8} audience {:<20} {backfill}{err}",
        names.get(seg).map(String::as_str).unwrap_or(seg),
        m["status"].as_str().unwrap_or("?"),
        m["audienceId"].to_string(),
    )
}

fn all_done(dest: &Value) -> bool {
    dest["mappings"].as_array().is_some_and(|ms| {
        ms.iter()
            .all(|m| m["status"] == "active" && m["backfill"]["state"] == "done")
    })
}

pub async fn run(demo: &mut Demo) -> Result<(), String> {
    let account = account_id(demo).await?;
    let advertiser: i64 = account
        .parse()
        .map_err(|_| format!("account id {account} is not an advertiser id"))?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();

    // 1. Segments and their data export controls.
    let segments = [
        (format!("demo-{run}-luxury"), "Luxury Travelers", json!([])),
        (
            format!("demo-{run}-outdoor"),
            "Outdoor Enthusiasts",
            json!(["NO_PII_COMBINATION"]),
        ),
        (format!("demo-{run}-auto"), "New Car Intenders", json!([])),
    ];
    let mut names = BTreeMap::new();
    for (id, name, controls) in &segments {
        let reply = demo
            .call(
                Method::PUT,
                FUNCTION,
                &format!("/segments/{id}"),
                true,
                Some(&json!({"name": name, "description": format!("{name} (adsync demo)"), "dataExportControls": controls})),
            )
            .await?;
        expect_status(&reply, 201, &format!("PUT /segments/{id}"))?;
        names.insert(id.clone(), name.to_string());
    }
    demo.ok(format!(
        "3 segments registered ({})",
        names.values().cloned().collect::<Vec<_>>().join(", ")
    ));

    // 2. Historical qualifications, before any destination exists.
    let ts = chrono::Utc::now() - chrono::Duration::minutes(10);
    let mut items = Vec::new();
    for i in 0..DEVICES {
        for (k, q) in historical(i).iter().enumerate() {
            if *q {
                items.push(json!({"segmentId": segments[k].0, "deviceId": device(&run, i), "idType": "COOKIE",
                                  "status": "qualified", "timestamp": ts.to_rfc3339()}));
            }
        }
    }
    let total = items.len();
    post_qualifications(demo, items, "historical load").await?;
    demo.ok(format!(
        "{total} historical qualifications of {DEVICES} devices in the ledger"
    ));

    // 3. The destination: labels that conflict with a control are refused first.
    let mut body = json!({
        "name": format!("Amazon DSP demo {run}"),
        "description": "device-based destination (adsync demo)",
        "accountId": account,
        "dataExportLabels": ["PII_COMBINATION", "OFFSITE_AD_TARGETING"],
        "dataSourceCountry": ["US"],
        "ttlSeconds": 2_592_000,
        "mappings": segments.iter().map(|(id, _, _)| json!({"segmentId": id})).collect::<Vec<_>>(),
    });
    let refused = demo
        .call(Method::POST, FUNCTION, "/destinations", true, Some(&body))
        .await?;
    expect_status(&refused, 409, "POST /destinations with a conflicting label")?;
    demo.ok(format!(
        "label PII_COMBINATION vs control NO_PII_COMBINATION → 409: {}",
        refused.json()["error"]["message"].as_str().unwrap_or("")
    ));
    body["dataExportLabels"] = json!(["OFFSITE_AD_TARGETING"]);
    let created = demo
        .call(Method::POST, FUNCTION, "/destinations", true, Some(&body))
        .await?;
    expect_status(&created, 202, "POST /destinations")?;
    let dest = created.json();
    let id = dest["destinationId"]
        .as_str()
        .ok_or("no destinationId")?
        .to_string();
    let mappings = dest["mappings"].as_array().cloned().unwrap_or_default();
    let active = mappings.iter().filter(|m| m["status"] == "active").count();
    let rest = if active == mappings.len() {
        "backfills the slice could not finish continue on the schedule"
    } else {
        "the scheduled task creates the rest"
    };
    demo.ok(format!(
        "destination {id} created (202): within its slice the request created {active} of {} \
         audience(s) (1 per second) and started their backfills; {rest}:",
        mappings.len()
    ));
    for m in &mappings {
        demo.info(progress_line(m, &names));
    }
    demo.remember("destination_id", json!(id));

    // 4. The schedule, played by hand: audiences at 1 request/s, then the backfill.
    for n in 1..=MAX_RUNS {
        let summary = invoke_backfill(demo).await?;
        let dest = get_destination(demo, &id).await?;
        demo.info(format!(
            "invocation {n}: {} audience(s) created, {} device(s) sent in {} request(s)",
            summary["audiences"]["created"],
            summary["backfill"]["devicesSent"],
            summary["backfill"]["requests"]
        ));
        for m in dest["mappings"].as_array().cloned().unwrap_or_default() {
            demo.info(format!("  {}", progress_line(&m, &names)));
        }
        if all_done(&dest) {
            break;
        }
        if n == MAX_RUNS {
            return Err(format!(
                "the backfill did not finish in {MAX_RUNS} invocations: {dest}"
            ));
        }
    }
    demo.ok("every mapping active with its audience; historical backfill done");

    // 5. Live deltas: some devices leave the luxury segment, new ones join the auto segment.
    let now = chrono::Utc::now().to_rfc3339();
    let mut deltas = Vec::new();
    for i in (0..40).step_by(2) {
        deltas.push(json!({"segmentId": segments[0].0, "deviceId": device(&run, i), "idType": "COOKIE", "status": "unqualified", "timestamp": now}));
    }
    for i in DEVICES..DEVICES + 15 {
        deltas.push(json!({"segmentId": segments[2].0, "deviceId": device(&run, i), "idType": "COOKIE", "status": "qualified", "timestamp": now}));
    }
    post_qualifications(demo, deltas, "live deltas").await?;
    demo.ok("live deltas sent: 20 devices left Luxury Travelers, 15 joined New Car Intenders");

    // 6. Fees: the advertiser's currency only.
    let luxury = &segments[0].0;
    let fees_path = format!("/destinations/{id}/mappings/{luxury}/fees");
    let wrong = demo
        .call(
            Method::PUT,
            FUNCTION,
            &fees_path,
            true,
            Some(&json!({"audienceFees": [{"cpmCents": 150, "currency": "EUR"}]})),
        )
        .await?;
    expect_status(&wrong, 400, "PUT …/fees in EUR")?;
    // The advertiser's currency, as linking recorded it.
    let accounts = demo
        .call(Method::GET, "oauth-callback", "/accounts", true, None)
        .await?;
    expect_status(&accounts, 200, "GET /accounts")?;
    let currency = accounts.json()["accounts"]
        .as_array()
        .and_then(|list| list.iter().find(|a| a["accountId"] == account.as_str()))
        .and_then(|a| a["currency"].as_str())
        .map(str::to_string)
        .ok_or_else(|| {
            format!("GET /accounts does not list account {account} with its currency")
        })?;
    demo.ok(format!(
        "fee in EUR refused before calling Amazon (the advertiser pays in {currency})"
    ));
    let right = demo
        .call(
            Method::PUT,
            FUNCTION,
            &fees_path,
            true,
            Some(&json!({"audienceFees": [{"cpmCents": 150, "currency": currency}]})),
        )
        .await?;
    expect_status(&right, 200, "PUT …/fees")?;
    demo.ok(format!(
        "Luxury Travelers audience fee set to 150 cents CPM ({currency}) at Amazon"
    ));

    // 7. What Amazon (the sandbox) holds, against what the ledger says.
    let mut expected = [0usize; 3];
    for i in 0..DEVICES {
        for (k, q) in historical(i).iter().enumerate() {
            let left = k == 0 && i < 40 && i.is_multiple_of(2);
            if *q && !left {
                expected[k] += 1;
            }
        }
    }
    expected[2] += 15;
    let dest = get_destination(demo, &id).await?;
    let reply = demo
        .send(
            demo.http
                .get(format!("{}/admin/audiences", demo.amazon_url))
                .query(&[("advertiserId", advertiser.to_string())]),
            "GET /admin/audiences on the sandbox",
        )
        .await?;
    expect_status(&reply, 200, "GET /admin/audiences")?;
    let audiences = reply.json()["audiences"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (k, (seg, name, _)) in segments.iter().enumerate() {
        let m = dest["mappings"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["segmentId"] == seg.as_str()).cloned())
            .ok_or_else(|| format!("mapping of {seg} missing"))?;
        let audience_id = m["audienceId"].as_i64().ok_or("audience id missing")?;
        let at_amazon = audiences
            .iter()
            .find(|a| a["id"].as_i64() == Some(audience_id))
            .ok_or_else(|| format!("audience {audience_id} not found at the sandbox"))?;
        let size = at_amazon["memberCount"].as_u64().unwrap_or(0) as usize;
        if size != expected[k] {
            return Err(format!(
                "{name}: the sandbox holds {size} members, the ledger says {}",
                expected[k]
            ));
        }
        demo.ok(format!(
            "{name:<20} audience {audience_id} \"{}\": {size} members at Amazon (= ledger)",
            at_amazon["name"].as_str().unwrap_or("")
        ));
    }
    Ok(())
}
