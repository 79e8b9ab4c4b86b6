//! Whole-handler benchmark of conversion ingest: posts 500-event batches through the real
//! handler (API key check, account lookup, validation, dedupe claims on DynamoDB Local, one
//! Amazon request to the sandbox, claim completion, metrics) and reports events/s and request
//! latency percentiles.
//!
//! Run with the local stack up:
//! `set -a; . .local/stack.env; set +a; cargo run --release -p adsync-tests --bin ingest_bench [rounds]`

use adsync_tests::conversions::{IngestFixture, mixed};
use serde_json::json;
use std::time::Instant;

const BATCH: usize = 500;

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let f = IngestFixture::new().await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    // Bodies are built up front: the clock measures the handler only.
    let bodies: Vec<Vec<u8>> = (0..=rounds)
        .map(|r| {
            let events: Vec<_> = (0..BATCH)
                .map(|i| mixed(&format!("{run}-{r}"), i))
                .collect();
            serde_json::to_vec(&json!({ "events": events })).unwrap()
        })
        .collect();
    let request = |body: &Vec<u8>| {
        let mut req = f.request(&json!({}));
        req.body = body.clone();
        req
    };
    // Warm-up: token refresh, connection pools, API keys.
    let warm = f.post(&serde_json::from_slice(&bodies[0]).unwrap()).await;
    assert!(
        warm.status == 200 || warm.status == 207,
        "warm-up failed: {}",
        warm.body
    );

    let mut latencies = Vec::with_capacity(rounds);
    let mut totals = json!({});
    let started = Instant::now();
    for body in &bodies[1..] {
        let req = request(body);
        let t = Instant::now();
        let resp = adsync::runtime::Handler::http(
            &f.handler,
            req,
            adsync::runtime::Invocation::with_timeout(60),
        )
        .await;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(resp.status == 200 || resp.status == 207, "{}", resp.body);
        totals = resp.json_body()["totals"].clone();
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    println!(
        "whole handler, {rounds} requests x {BATCH} events (sequential, one invocation at a time):"
    );
    println!(
        "  throughput: {:.0} events/s",
        (rounds * BATCH) as f64 / elapsed
    );
    println!(
        "  latency per 500-event request: p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms",
        pct(0.50),
        pct(0.95),
        latencies.last().unwrap()
    );
    println!("  last request's totals: {totals}");
}
