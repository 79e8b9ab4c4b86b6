//! Whole-handler benchmark of `POST /qualifications`: posts 10 000-item requests through the real
//! segment-export handler (API key check, validation, the ledger writes and erasure checks on
//! DynamoDB Local, target lookup, the PATCH deliveries to the sandbox, verify reads) and reports
//! items/s and p50/p95 per request, next to the **bare store rate** measured in the same run:
//! the same ids written to the ledger with the cheapest calls that keep the ledger's guarantee
//! (newest timestamp wins), each timed on its own:
//!
//! - `put`: one conditional `PutItem` per item (`attribute_not_exists(pk) OR ts < :ts`, 1 write
//!   unit each), 32 in flight (the handler's concurrency before issue 16);
//! - `transact`: `TransactWriteItems` of 100 conditional puts (2 write units per item), 8 calls in
//!   flight.
//!
//! Every round uses the same devices with a newer timestamp (and the other status), so each
//! item is a real write: the handler's items are all `applied`, the bare writes all pass their
//! condition. After the timed rounds, two counting rounds go through a tiny TCP proxy in front
//! of DynamoDB Local that tallies the `X-Amz-Target` header of every request: one with fresh
//! updates, one that repeats the same body (every item `stale`). Product code is unchanged: only
//! the bench's DynamoDB client points at the proxy.
//!
//! ```text
//! set -a; . .local/stack-<name>/stack.env; set +a     # or .local/stack.env
//! cargo run --release -p adsync-tests --bin qualifications_bench -- --rounds 5
//! ```
//!
//! Options: `--rounds N` (timed rounds, default 5), `--items N` (per request, default 10000,
//! at most 10000).

use adsync::export::{ExportCtx, ExportHandler};
use adsync::http::HttpRequest;
use adsync::http::auth::ApiKeyAuth;
use adsync::runtime::{Handler, Invocation, now_ms};
use adsync::store::accounts::AccountStore;
use adsync::store::destinations::DestinationStore;
use adsync::store::jobs::JobStore;
use adsync::store::ledger::{LEDGER_SHARDS, LedgerStore, partition_key, shard_of};
use adsync::store::secrets::SecretsStore;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PUT_CONCURRENCY: usize = 32;
const TRANSACT_CONCURRENCY: usize = 8;

struct Args {
    rounds: usize,
    items: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        rounds: 5,
        items: 10_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || -> Result<usize, String> {
            it.next()
                .ok_or(format!("{k} needs a value"))?
                .replace('_', "")
                .parse()
                .map_err(|e| format!("{k}: {e}"))
        };
        match k.as_str() {
            "--rounds" => a.rounds = v()?.max(1),
            "--items" => a.items = v()?.clamp(1, 10_000),
            "-h" | "--help" => {
                return Err("usage: qualifications_bench [--rounds N] [--items N]".into());
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn device(i: usize) -> String {
    format!("qb{i:07}")
}

/// One request body: every device of the run, at `ts`, qualified or not.
fn body(seg: &str, items: usize, ts: i64, qualified: bool) -> Vec<u8> {
    let status = if qualified {
        "qualified"
    } else {
        "unqualified"
    };
    let items: Vec<Value> = (0..items)
        .map(|i| json!({"segmentId": seg, "deviceId": device(i), "idType": "COOKIE", "status": status, "timestamp": ts}))
        .collect();
    serde_json::to_vec(&json!({ "qualifications": items })).unwrap()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("qualifications_bench: {e}");
        std::process::exit(1);
    }
}

struct Bench {
    handler: ExportHandler,
    rig: adsync_tests::export_rig::Rig,
    seg: String,
    api_key: String,
}

impl Bench {
    async fn post(&self, handler: &ExportHandler, body: &[u8]) -> Result<(f64, Value), String> {
        let req = HttpRequest::new("POST", "/qualifications")
            .with_header("authorization", &format!("Bearer {}", self.api_key))
            .with_header("content-type", "application/json")
            .with_body(body.to_vec());
        let t = Instant::now();
        let resp = handler.http(req, Invocation::with_timeout(60)).await;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if resp.status != 200 {
            return Err(format!(
                "POST /qualifications: {} {}",
                resp.status, resp.body
            ));
        }
        let v = resp.json_body();
        Ok((
            ms,
            json!({"totals": v["totals"], "delivery": v["delivery"]}),
        ))
    }
}

async fn run() -> Result<(), String> {
    let args = parse_args()?;
    let rig = adsync_tests::export_rig::rig(1).await;
    let seg = adsync_tests::export_rig::seg_id();
    let (dest, mappings) = adsync_tests::export_rig::destination_with(&rig, &[&seg], 3600).await;
    let audience = mappings[0].audience_id.ok_or("no audience")?;
    // The mapping's (empty) backfill finishes first: the steady state, no dirty marks.
    let o = adsync_tests::export_rig::opts(2000);
    adsync_tests::export_rig::run_jobs_until_done(&rig, &dest, &seg, &o).await;
    let secrets = SecretsStore::new(adsync::aws::AwsClients::from_env().await.secrets);
    let auth = ApiKeyAuth::new(
        secrets,
        std::env::var("API_KEYS_SECRET").map_err(|e| e.to_string())?,
    );
    let handler = ExportHandler {
        ctx: rig.ctx.clone(),
        auth,
    };
    let api_key = std::env::var("ADSYNC_API_KEY").unwrap_or_else(|_| "adsync-local-key".into());
    let b = Bench {
        handler,
        rig,
        seg,
        api_key,
    };
    let n = args.items;
    // Timestamps: a minute in the past, one millisecond newer per round.
    let t0 = now_ms() as i64 - 60_000;
    // Warm-up: token, connections, API keys; also creates the rows (later rounds update them).
    b.post(&b.handler, &body(&b.seg, n, t0, true)).await?;
    let bare_seg = format!("{}-bare", b.seg);
    let bare = Bare {
        ledger: b.rig.ctx.ledger.clone(),
        ddb: b.rig.ddb.clone(),
        seg: bare_seg,
        items: n,
    };
    bare.put(t0).await?;

    let (mut lat, mut handler_s, mut put_s, mut tx_s) = (Vec::new(), 0.0, 0.0, 0.0);
    let mut last = Value::Null;
    for r in 1..=args.rounds {
        let ts = t0 + r as i64;
        let bytes = body(&b.seg, n, ts, r % 2 == 0);
        let (ms, v) = b.post(&b.handler, &bytes).await?;
        if v["totals"]["applied"] != json!(n) {
            return Err(format!("round {r}: not every item applied: {v}"));
        }
        lat.push(ms);
        handler_s += ms / 1000.0;
        last = v;
        let t = Instant::now();
        // The bare rows move forward too: put at t0 + 2r, transact at t0 + 2r + 1.
        bare.put(t0 + 2 * r as i64).await?;
        put_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        bare.transact(t0 + 2 * r as i64 + 1).await?;
        tx_s += t.elapsed().as_secs_f64();
        println!(
            "round {r}: handler {ms:.0} ms, bare put {:.0} ms/round avg so far, bare transact {:.0} ms/round avg so far",
            put_s * 1000.0 / r as f64,
            tx_s * 1000.0 / r as f64
        );
    }
    let total = (args.rounds * n) as f64;
    let (h, p, t) = (total / handler_s, total / put_s, total / tx_s);
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "\n{} rounds x {n} items, sequential requests, one process:",
        args.rounds
    );
    println!(
        "  handler:            {h:>7.0} items/s   p50 {:.0} ms  p95 {:.0} ms  max {:.0} ms per request",
        percentile(&lat, 0.50),
        percentile(&lat, 0.95),
        lat.last().unwrap()
    );
    println!(
        "  bare put (conditional PutItem x{PUT_CONCURRENCY} in flight): {p:>7.0} items/s   handler/bare = {:.2}",
        h / p
    );
    println!(
        "  bare transact (TransactWriteItems of 100 conditional puts, x{TRANSACT_CONCURRENCY}): {t:>7.0} items/s   handler/bare = {:.2}",
        h / t
    );
    println!("  last request: {last}");
    let members = adsync_tests::export_rig::members(&b.rig, audience).await;
    let want_members = if args.rounds % 2 == 0 { n } else { 0 };
    println!(
        "  sandbox audience members: {} (expected {want_members})",
        members.len()
    );

    count_rounds(&b, n, t0 + 100).await
}

/// The counting rounds: DynamoDB calls per request by operation.
async fn count_rounds(b: &Bench, n: usize, ts: i64) -> Result<(), String> {
    let upstream = std::env::var("AWS_ENDPOINT_URL_DYNAMODB")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .map_err(|e| e.to_string())?;
    let (proxy_url, tally) = counting_proxy(&upstream).await?;
    let sdk = adsync::aws::config_loader().load().await;
    let client = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk)
            .endpoint_url(&proxy_url)
            .build(),
    );
    let ctx = &b.rig.ctx;
    let counted = ExportHandler {
        ctx: ExportCtx {
            accounts: AccountStore::new(client.clone(), ctx.accounts.table().to_string()),
            destinations: DestinationStore::new(client.clone(), b.rig.dest_table.clone()),
            ledger: LedgerStore::new(client.clone(), ctx.ledger.table().to_string()),
            jobs: JobStore::new(client.clone(), b.rig.dest_table.clone()),
            ..ctx.clone()
        },
        auth: b.handler.auth.clone(),
    };
    let fresh = body(&b.seg, n, ts, true);
    for (label, want) in [
        ("fresh updates", "applied"),
        ("the same body again", "stale"),
    ] {
        tally.lock().unwrap().clear();
        let (ms, v) = b.post(&counted, &fresh).await?;
        if v["totals"][want] != json!(n) {
            return Err(format!("counting round ({label}): {v}"));
        }
        let ops = tally.lock().unwrap().clone();
        let calls: u64 = ops.values().sum();
        println!(
            "\nDynamoDB calls of one {n}-item request, {label} (every item {want}; {ms:.0} ms through the proxy):"
        );
        for (op, c) in &ops {
            println!("  {op:<20} {c:>6}");
        }
        println!("  {:<20} {calls:>6}   delivery {}", "total", v["delivery"]);
    }
    Ok(())
}

/// The bare store work: the same devices under another segment id.
struct Bare {
    ledger: LedgerStore,
    ddb: aws_sdk_dynamodb::Client,
    seg: String,
    items: usize,
}

impl Bare {
    fn item(&self, i: usize, ts: i64) -> HashMap<String, AttributeValue> {
        let dev = format!("COOKIE-{}", device(i));
        HashMap::from([
            (
                "pk".to_string(),
                AttributeValue::S(partition_key(&self.seg, shard_of(&dev, LEDGER_SHARDS))),
            ),
            ("sk".to_string(), AttributeValue::S(dev)),
            ("st".to_string(), AttributeValue::S("q".into())),
            ("ts".to_string(), AttributeValue::N(ts.to_string())),
        ])
    }

    /// One conditional PutItem per item, [`PUT_CONCURRENCY`] in flight.
    async fn put(&self, ts: i64) -> Result<(), String> {
        let results: Vec<Result<(), String>> = futures::stream::iter(0..self.items)
            .map(|i| async move {
                self.ddb
                    .put_item()
                    .table_name(self.ledger.table())
                    .set_item(Some(self.item(i, ts)))
                    .condition_expression("attribute_not_exists(pk) OR ts < :ts")
                    .expression_attribute_values(":ts", AttributeValue::N(ts.to_string()))
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("bare put: {e:?}"))
            })
            .buffer_unordered(PUT_CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// TransactWriteItems of 100 conditional puts, [`TRANSACT_CONCURRENCY`] in flight.
    async fn transact(&self, ts: i64) -> Result<(), String> {
        let chunks: Vec<Vec<usize>> = (0..self.items)
            .collect::<Vec<_>>()
            .chunks(100)
            .map(<[usize]>::to_vec)
            .collect();
        let results: Vec<Result<(), String>> = futures::stream::iter(chunks)
            .map(|c| async move {
                let items = c
                    .into_iter()
                    .map(|i| {
                        Put::builder()
                            .table_name(self.ledger.table())
                            .set_item(Some(self.item(i, ts)))
                            .condition_expression("attribute_not_exists(pk) OR ts < :ts")
                            .expression_attribute_values(":ts", AttributeValue::N(ts.to_string()))
                            .build()
                            .map(|p| TransactWriteItem::builder().put(p).build())
                            .map_err(|e| e.to_string())
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                self.ddb
                    .transact_write_items()
                    .set_transact_items(Some(items))
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("bare transact: {e:?}"))
            })
            .buffer_unordered(TRANSACT_CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect()
    }
}

/// A TCP proxy in front of `upstream` (`http://host:port`) that counts the `X-Amz-Target`
/// header of every request: `DynamoDB_20120810.PutItem` → `PutItem`.
async fn counting_proxy(
    upstream: &str,
) -> Result<(String, Arc<Mutex<BTreeMap<String, u64>>>), String> {
    let target = upstream
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let tally: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let t = tally.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (target, tally) = (target.clone(), t.clone());
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut line: Vec<u8> = Vec::with_capacity(256);
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        for &byte in &buf[..n] {
                            if byte == b'\n' {
                                tally_line(&line, &tally);
                                line.clear();
                            } else if line.len() < 200 {
                                line.push(byte);
                            }
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = sw.shutdown().await;
                };
                let down = async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    let _ = cw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    Ok((format!("http://{addr}"), tally))
}

fn tally_line(line: &[u8], tally: &Mutex<BTreeMap<String, u64>>) {
    const NAME: &[u8] = b"x-amz-target:";
    if line.len() > NAME.len() && line[..NAME.len()].eq_ignore_ascii_case(NAME) {
        let v = String::from_utf8_lossy(&line[NAME.len()..]);
        let op = v.trim().rsplit('.').next().unwrap_or_default().to_string();
        *tally.lock().unwrap().entry(op).or_default() += 1;
    }
}
