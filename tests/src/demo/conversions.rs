//! Demo step: conversion ingest. Sends a realistic mix of 3 000 conversions (purchases, leads
//! with name and address keys, EU sign-ups with consent, app events keyed by MAID, a few invalid
//! ones, duplicates inside a request) in three requests, then resends 300 of them as a retried
//! webhook would, prints the per-status totals, and shows what the Amazon sandbox received:
//! every `clientDedupeId` exactly once, match keys hashed.

use super::{Demo, Reply};
use crate::conversions::mixed;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;

const EVENTS: usize = 3_000;
const PER_REQUEST: usize = 1_000;

async fn sandbox_events(demo: &Demo, account_id: &str) -> Result<Value, String> {
    let url = format!("{}/admin/events?accountId={account_id}", demo.amazon_url);
    let reply = demo
        .send(demo.http.get(url), "sandbox GET /admin/events")
        .await?;
    if reply.status != 200 {
        return Err(format!(
            "sandbox /admin/events answered {}: {}",
            reply.status,
            reply.short_body()
        ));
    }
    Ok(reply.json())
}

fn add_totals(sum: &mut BTreeMap<String, u64>, reply: &Reply) -> Result<(), String> {
    let totals = reply.json()["totals"].clone();
    let obj = totals
        .as_object()
        .ok_or_else(|| format!("no totals in the answer: {}", reply.short_body()))?;
    for (k, v) in obj {
        *sum.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
    }
    Ok(())
}

pub async fn run(demo: &mut Demo) -> Result<(), String> {
    let account_id = demo
        .recall("account_id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or("no linked NA account: the linking step must run first")?;
    let path = format!("/accounts/{account_id}/conversions");
    let run = format!("demo{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let before = sandbox_events(demo, &account_id).await?["events"]
        .as_array()
        .map_or(0, Vec::len);

    let mut events: Vec<Value> = (0..EVENTS).map(|i| mixed(&run, i)).collect();
    // A tag manager that fires twice: every 50th event is repeated inside its request.
    for i in (0..EVENTS).step_by(50) {
        events[i + 1] = events[i].clone();
    }
    let mut sum = BTreeMap::new();
    for (n, chunk) in events.chunks(PER_REQUEST).enumerate() {
        let started = std::time::Instant::now();
        let reply = demo
            .call(
                Method::POST,
                "conversion-ingest",
                &path,
                true,
                Some(&json!({ "events": chunk })),
            )
            .await?;
        if reply.status != 200 && reply.status != 207 {
            return Err(format!(
                "POST {path} answered {}: {}",
                reply.status,
                reply.short_body()
            ));
        }
        add_totals(&mut sum, &reply)?;
        demo.info(format!(
            "request {}: {} events → HTTP {} in {} ms, totals {}",
            n + 1,
            chunk.len(),
            reply.status,
            started.elapsed().as_millis(),
            reply.json()["totals"]
        ));
    }
    // The webhook is retried: 300 events already sent (those with an id) come again.
    let has_id = |e: &&Value| {
        e.get("clientDedupeId")
            .or_else(|| e.get("eventId"))
            .is_some()
    };
    let retry: Vec<Value> = events.iter().filter(has_id).take(300).cloned().collect();
    let reply = demo
        .call(
            Method::POST,
            "conversion-ingest",
            &path,
            true,
            Some(&json!({ "events": retry })),
        )
        .await?;
    add_totals(&mut sum, &reply)?;
    let retried = reply.json()["totals"].clone();
    if retried["accepted"] != 0 {
        return Err(format!(
            "a retried webhook was sent to Amazon again: {retried}"
        ));
    }
    demo.ok(format!(
        "retried webhook of 300 events: nothing sent twice ({retried})"
    ));
    // With a healthy local Amazon nothing should be parked, and the valid events must get through.
    let (accepted, parked) = (
        sum.get("accepted").copied().unwrap_or(0),
        sum.get("parked").copied().unwrap_or(0),
    );
    if accepted == 0 || parked > 0 {
        return Err(format!(
            "expected the valid events accepted and none parked; got accepted {accepted}, parked {parked}"
        ));
    }
    demo.ok(format!(
        "per-status totals over {} events: accepted {}, duplicate {}, rejected {}, parked {}",
        sum.get("received").copied().unwrap_or(0),
        sum.get("accepted").copied().unwrap_or(0),
        sum.get("duplicate").copied().unwrap_or(0),
        sum.get("rejected").copied().unwrap_or(0),
        sum.get("parked").copied().unwrap_or(0)
    ));

    let dump = sandbox_events(demo, &account_id).await?;
    let all = dump["events"].as_array().cloned().unwrap_or_default();
    let new = &all[before.min(all.len())..];
    let ours: BTreeMap<&str, u64> = dump["countsByEventId"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.starts_with(&run))
                .map(|(k, v)| (k.as_str(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    let twice = ours.values().filter(|&&n| n > 1).count();
    if twice > 0 {
        return Err(format!(
            "{twice} clientDedupeIds reached the sandbox more than once"
        ));
    }
    let accepted = sum.get("accepted").copied().unwrap_or(0) as usize;
    if new.len() != accepted {
        return Err(format!(
            "the sandbox received {} events but {accepted} were accepted",
            new.len()
        ));
    }
    demo.ok(format!(
        "the sandbox received {} events: {} distinct clientDedupeIds, each exactly once, plus {} without one (each sent with a generated eventId)",
        new.len(),
        ours.len(),
        new.len() - ours.len()
    ));
    let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
    for e in new {
        let t = e["eventDescription"]["conversionType"]
            .as_str()
            .unwrap_or("?");
        *by_type.entry(t.to_string()).or_default() += 1;
    }
    demo.info(format!("received by conversion type: {by_type:?}"));
    if let Some(sample) = new
        .iter()
        .find(|e| e["eventDescription"]["conversionType"] == "LEAD")
    {
        demo.info(format!(
            "a received lead (match keys hashed, \"José\" hashed as jos, no accent folding): {sample}"
        ));
    }
    Ok(())
}
