//! Conversion-ingest benchmark against the local stack (DynamoDB Local, moto, the Amazon sandbox).
//! One run reports, with the figures it compares measured side by side:
//!
//! 1. 500-event requests (`rounds`, default 20) and 10 000-event requests (`big_rounds`, default
//!    3) through the real handler in this process (API key, account, validation, dedupe claims,
//!    Amazon, completions): events/s and latency per request. Each request is followed by the
//!    **bare store work** for as many fresh ids as the request claims: one conditional write per
//!    id (`attribute_not_exists(pk)`, an item shaped like a claim), as `TransactWriteItems` of
//!    100 puts (the bare call) and as single `PutItem`s, both with the handler's store
//!    concurrency (`IngestSettings::claim_concurrency`). Ratio = bare time / handler time.
//! 2. The release `conversion-ingest` binary as a child process behind a fake Lambda Runtime API
//!    (`adsync_tests::lambda_host`): 500-event requests and one 10 000-event request, its wall
//!    time and the process's peak memory (`VmHWM`).
//! 3. A separate counting pass (the extra hop would distort the timing): a second function process
//!    whose DynamoDB and moto endpoints are counting proxies (`adsync_tests::ddb_count`): calls
//!    per request by operation, for fresh ids, 10 % resent, and a full resend.
//!
//! Run with the local stack up (from the workspace root):
//! ```sh
//! cargo build --release -p adsync-tests -p conversion-ingest --bins
//! set -a; . .local/stack.env; set +a     # or .local/stack-<name>/stack.env
//! target/release/ingest_bench [rounds=20] [big_rounds=3] [--no-spawn]
//! ```
//! (`--no-spawn`: the in-process part alone. `INGEST_BENCH_FUNCTION_BIN` picks another function
//! binary than the one next to the benchmark.)

use adsync::runtime::{Handler, Invocation};
use adsync_tests::conversions::{IngestFixture, mixed};
use adsync_tests::ddb_count::{CountingProxy, Tally, describe, diff};
use adsync_tests::lambda_host::{Answer, LambdaHost, apigw_post, memory_kib};
use adsync_tests::stack::env;
use adsync_tests::store_bench::{
    Samples, bare_batch_write, bare_put, bare_transact, fresh_ids, seed_client_account,
};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The report, printed whole at the end (the in-process handler prints its metric lines on
/// stdout as it goes); each line also goes to stderr as progress.
static REPORT: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

macro_rules! say {
    ($($arg:tt)*) => {{
        let line = format!($($arg)*);
        eprintln!("{line}");
        let mut r = REPORT.lock().unwrap();
        r.push_str(&line);
        r.push('\n');
    }};
}

/// The function's memory in `template.yaml` (Globals), as Lambda passes it.
const MEMORY_MB: u32 = 256;

struct Args {
    rounds: usize,
    big_rounds: usize,
    spawn: bool,
}

fn args() -> Args {
    let all: Vec<String> = std::env::args().skip(1).collect();
    let nums: Vec<usize> = all.iter().filter_map(|a| a.parse().ok()).collect();
    Args {
        rounds: nums.first().copied().unwrap_or(20),
        big_rounds: nums.get(1).copied().unwrap_or(3),
        spawn: !all.iter().any(|a| a == "--no-spawn"),
    }
}

/// `{"events": [...]}` of `n` mixed events, ids `prefix-i`; `resent` of them (the first ones)
/// repeat `resent_prefix`'s events exactly.
fn body(prefix: &str, n: usize, resent_prefix: Option<(&str, usize)>) -> Vec<u8> {
    let events: Vec<Value> = (0..n)
        .map(|i| match resent_prefix {
            Some((p, k)) if i < k => mixed(p, i),
            _ => mixed(prefix, i),
        })
        .collect();
    serde_json::to_vec(&json!({ "events": events })).expect("JSON")
}

/// Valid events of an `n`-event mixed body (the ones Amazon accepts).
fn valid(n: usize) -> usize {
    (0..n)
        .filter(|&i| mixed("k", i)["name"] != "Broken")
        .count()
}

/// Events of an `n`-event mixed body that carry an id (the ones the handler claims).
fn keyed(n: usize) -> usize {
    (0..n)
        .map(|i| mixed("k", i))
        .filter(|e| e.get("clientDedupeId").is_some() || e.get("eventId").is_some())
        .count()
}

#[derive(Default)]
struct Row {
    handler: Samples,
    transact: Samples,
    complete: Samples,
    put: Samples,
}

/// `rounds` requests of `n` events through the in-process handler, each followed by the bare
/// store work for as many fresh ids.
async fn handler_rounds(f: &IngestFixture, n: usize, rounds: usize) -> Row {
    let ddb = &f.login.aws.dynamodb;
    let table = env("DEDUPE_TABLE");
    let settings = &f.ctx().settings;
    let conc = settings.claim_concurrency;
    // The handler's completion calls in flight per wave (`IngestCtx::store_calls_per_wave`).
    let complete_conc = conc.div_ceil(settings.send_concurrency.max(1)).max(1);
    let k = keyed(n);
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut row = Row::default();
    for r in 0..rounds {
        let mut req = f.request(&json!({}));
        req.body = body(&format!("{run}-{r}"), n, None);
        let t = Instant::now();
        let resp = f.handler.http(req, Invocation::with_timeout(60)).await;
        row.handler.push(t.elapsed());
        assert!(
            resp.status == 200 || resp.status == 207,
            "{n}-event request: {} {}",
            resp.status,
            resp.body
        );
        let totals = &resp.json_body()["totals"];
        assert_eq!(
            totals["accepted"].as_u64(),
            Some(valid(n) as u64),
            "{totals}"
        );
        let ids = fresh_ids(k);
        row.transact
            .push(bare_transact(ddb, &table, &ids, conc).await);
        row.complete
            .push(bare_batch_write(ddb, &table, &ids, complete_conc).await);
        row.put
            .push(bare_put(ddb, &table, &fresh_ids(k), conc).await);
    }
    row
}

fn report_rows(title: &str, n: usize, row: &Row) {
    let k = keyed(n);
    let rounds = row.handler.0.len();
    let rate = |s: &Samples, per: usize| (rounds * per) as f64 / s.total_s();
    say!(
        "\n{title}: {rounds} sequential requests x {n} events ({} valid, {k} of them carry an id and are claimed)",
        valid(n)
    );
    say!(
        "  handler:                         {:>8.0} events/s  {:>8.0} ids/s   {}",
        rate(&row.handler, n),
        rate(&row.handler, k),
        row.handler.summary()
    );
    say!(
        "  bare TransactWriteItems x100:                       {:>8.0} ids/s   {}",
        rate(&row.transact, k),
        row.transact.summary()
    );
    say!(
        "  bare PutItem (one per id):                          {:>8.0} ids/s   {}",
        rate(&row.put, k),
        row.put.summary()
    );
    say!(
        "  then BatchWriteItem x25 of the same ids (completion):{:>7.0} ids/s   {}",
        rate(&row.complete, k),
        row.complete.summary()
    );
    let both = row.transact.total_s() + row.complete.total_s();
    say!(
        "  handler / bare (same ids, same rounds): {:.1} % of TransactWriteItems (the bare call), {:.1} % of PutItem; {:.1} % of claim + completion (TransactWriteItems, then BatchWriteItem)",
        100.0 * row.transact.total_s() / row.handler.total_s(),
        100.0 * row.put.total_s() / row.handler.total_s(),
        100.0 * both / row.handler.total_s()
    );
}

/// The release function binary: `INGEST_BENCH_FUNCTION_BIN`, else next to this benchmark.
fn function_bin() -> PathBuf {
    if let Ok(p) = std::env::var("INGEST_BENCH_FUNCTION_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    exe.with_file_name("conversion-ingest")
}

/// A function process behind its own Runtime API.
struct Served {
    host: LambdaHost,
    child: std::process::Child,
    account_id: String,
    cold: Duration,
}

impl Served {
    async fn start(account_id: &str, extra: &[(String, String)], tag: &str) -> Self {
        let bin = function_bin();
        assert!(
            bin.exists(),
            "{} is missing: cargo build --release -p conversion-ingest",
            bin.display()
        );
        let host = LambdaHost::start("conversion-ingest").await;
        let log = bin.with_file_name(format!("ingest_bench-{tag}.log"));
        let t = Instant::now();
        let child = host.spawn(&bin, MEMORY_MB, extra, &log);
        host.first_poll(Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{} did not start: {e} (log: {})",
                    bin.display(),
                    log.display()
                )
            });
        Served {
            host,
            child,
            account_id: account_id.to_string(),
            cold: t.elapsed(),
        }
    }

    /// Posts `body` as API Gateway would; returns the wall time and the totals.
    async fn post(&self, body: &[u8]) -> (Duration, Value) {
        let key = format!("Bearer {}", env("ADSYNC_API_KEY"));
        let event = apigw_post(
            &format!("/accounts/{}/conversions", self.account_id),
            &[
                ("authorization", &key),
                ("content-type", "application/json"),
            ],
            std::str::from_utf8(body).expect("UTF-8 body"),
        );
        let t = Instant::now();
        let answer = self.host.invoke(event, Duration::from_secs(60)).await;
        let took = t.elapsed();
        let out: Value = match answer {
            Ok(Answer::Response(b)) => serde_json::from_slice(&b).expect("answer JSON"),
            Ok(Answer::Error(b)) => panic!("invocation error: {}", String::from_utf8_lossy(&b)),
            Err(e) => panic!("{e}"),
        };
        let status = out["statusCode"].as_u64().unwrap_or(0);
        let resp: Value =
            serde_json::from_str(out["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null);
        assert!(status == 200 || status == 207, "status {status}: {resp}");
        (took, resp["totals"].clone())
    }

    fn memory(&self) -> (u64, u64) {
        memory_kib(self.child.id()).expect("/proc/<pid>/status")
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The release binary: cold start, 500-event requests, one 10 000-event request, peak memory.
async fn spawned(account_id: &str, rounds: usize) {
    let s = Served::start(account_id, &[], "timed").await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (_, _) = s.post(&body(&format!("{run}-warm"), 500, None)).await;
    let mut small = Samples::default();
    for r in 0..rounds {
        let (t, _) = s.post(&body(&format!("{run}-{r}"), 500, None)).await;
        small.push(t);
    }
    let (hwm_before, _) = s.memory();
    let (big, totals) = s.post(&body(&format!("{run}-big"), 10_000, None)).await;
    let (hwm, rss) = s.memory();
    say!(
        "\nrelease conversion-ingest process (fake Runtime API, {MEMORY_MB} MB as in template.yaml):"
    );
    say!(
        "  exec -> first poll: {:.1} ms",
        s.cold.as_secs_f64() * 1000.0
    );
    say!(
        "  500-event requests ({rounds}, after one warm-up): {:.0} events/s, {}",
        (rounds * 500) as f64 / small.total_s(),
        small.summary()
    );
    say!(
        "  one 10 000-event request: {:.0} ms ({:.0} events/s); totals {totals}",
        big.as_secs_f64() * 1000.0,
        10_000.0 / big.as_secs_f64()
    );
    say!(
        "  VmHWM: {:.1} MiB after the 500-event requests, {:.1} MiB after the 10 000-event request (VmRSS then {:.1} MiB)",
        hwm_before as f64 / 1024.0,
        hwm as f64 / 1024.0,
        rss as f64 / 1024.0
    );
    s.stop();
}

fn print_phase(name: &str, ddb: &Tally, aws: &Tally) {
    say!("  {name}:");
    for l in describe(ddb) {
        say!("    DynamoDB {l}");
    }
    for l in describe(aws) {
        say!("    moto     {l}");
    }
}

/// Calls per request by operation, through counting proxies.
async fn counting(account_id: &str) {
    let ddb = CountingProxy::start(&env("AWS_ENDPOINT_URL_DYNAMODB")).await;
    let aws = CountingProxy::start(&env("AWS_ENDPOINT_URL")).await;
    let extra = [
        ("AWS_ENDPOINT_URL_DYNAMODB".to_string(), ddb.url.clone()),
        ("AWS_ENDPOINT_URL".to_string(), aws.url.clone()),
    ];
    let s = Served::start(account_id, &extra, "counted").await;
    say!(
        "\ncalls per request by operation (counting pass, release binary behind counting proxies; moto = Secrets Manager, SQS, KMS):"
    );
    print_phase(
        "start-up (exec -> first poll)",
        &ddb.snapshot(),
        &aws.snapshot(),
    );
    let run = uuid::Uuid::new_v4().simple().to_string();
    let a = format!("{run}-a");
    let b = format!("{run}-b");
    let c = format!("{run}-c");
    let big = format!("{run}-big");
    let phases: Vec<(String, Vec<u8>)> = vec![
        (
            "first request, 500 fresh (token refresh)".into(),
            body(&format!("{run}-0"), 500, None),
        ),
        (
            format!("500 fresh ({} claimed)", keyed(500)),
            body(&a, 500, None),
        ),
        ("500 resent (all duplicates)".into(), body(&a, 500, None)),
        (
            "500 with 10 % resent (50 of the last request's events)".into(),
            body(&b, 500, Some((&a, 50))),
        ),
        ("500 fresh again".into(), body(&c, 500, None)),
        (
            format!("10 000 fresh ({} claimed)", keyed(10_000)),
            body(&big, 10_000, None),
        ),
        (
            "10 000 resent (all duplicates)".into(),
            body(&big, 10_000, None),
        ),
    ];
    for (name, b) in phases {
        let (d0, a0) = (ddb.snapshot(), aws.snapshot());
        let (took, totals) = s.post(&b).await;
        let (d1, a1) = (ddb.snapshot(), aws.snapshot());
        print_phase(
            &format!(
                "{name}: {:.0} ms via the proxies; totals {totals}",
                took.as_secs_f64() * 1000.0
            ),
            &diff(&d0, &d1),
            &diff(&a0, &a1),
        );
    }
    s.stop();
}

fn uptime() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[tokio::main]
async fn main() {
    let a = args();
    say!(
        "ingest_bench: {} rounds of 500, {} of 10 000; {}; loadavg {}",
        a.rounds,
        a.big_rounds,
        chrono::Utc::now().to_rfc3339(),
        uptime()
    );
    let f = IngestFixture::new().await;
    // Warm-up: token refresh, connection pools, API keys.
    let warm = f
        .post(&serde_json::from_slice(&body("warm", 500, None)).unwrap())
        .await;
    assert!(
        warm.status == 200 || warm.status == 207,
        "warm-up failed: {}",
        warm.body
    );
    let small = handler_rounds(&f, 500, a.rounds).await;
    report_rows("500-event requests, in-process handler", 500, &small);
    let big = handler_rounds(&f, 10_000, a.big_rounds).await;
    report_rows("10 000-event requests, in-process handler", 10_000, &big);
    if a.spawn {
        let account_id = seed_client_account().await;
        spawned(&account_id, 5).await;
        counting(&account_id).await;
    }
    say!("\nloadavg at the end: {}", uptime());
    println!(
        "\n==== ingest_bench report ====\n{}",
        REPORT.lock().unwrap()
    );
}
