//! Backfill benchmark: seeds a segment of N ledger rows into DynamoDB Local (BatchWriteItem, in
//! parallel), maps it to a fresh sandbox audience, runs the backfill, checks that the sandbox
//! audience holds exactly the qualified devices, and reports records/s, Amazon requests/s and
//! peak memory.
//!
//! ```text
//! set -a; . .local/stack.env; set +a
//! cargo run --release -p adsync-tests --bin backfill_bench -- --rows 1000000
//! ```
//!
//! Options: `--rows N` (default 100000), `--parallel-shards K` (default 4, as deployed),
//! `--seed-concurrency C` (default 16), `--unqualified-every U` (default 0 = all qualified).
//! The ledger and destinations tables are created for the run and deleted afterwards.
//!
//! Peak memory: the kernel's high-water mark of resident memory (`VmHWM`), reset after seeding
//! (`/proc/self/clear_refs` = 5), so the figure is the backfill's own peak.

use adsync::amazon::client::{DEFAULT_SCOPES, http_client};
use adsync::amazon::{AmazonClient, Endpoints, LwaCredentials, SecretString};
use adsync::export::ExportCtx;
use adsync::export::members::{BackfillOptions, backfill_progress, run_backfill_with};
use adsync::http::HttpRequest;
use adsync::runtime::{Invocation, now_ms};
use adsync::store::destinations::{DestinationStore, MappingStatus};
use adsync::store::jobs::JobStore;
use adsync::store::ledger::{LedgerRow, LedgerStore};
use adsync::store::parked::ParkedQueue;
use adsync::store::secrets::SecretsStore;
use adsync_tests::sandbox::SandboxAdmin;
use futures::StreamExt;
use serde_json::json;
use std::time::{Duration, Instant};

struct Args {
    rows: usize,
    parallel_shards: usize,
    seed_concurrency: usize,
    unqualified_every: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        rows: 100_000,
        parallel_shards: 4,
        seed_concurrency: 16,
        unqualified_every: 0,
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
            "--rows" => a.rows = v()?,
            "--parallel-shards" => a.parallel_shards = v()?,
            "--seed-concurrency" => a.seed_concurrency = v()?,
            "--unqualified-every" => a.unqualified_every = v()?,
            "-h" | "--help" => {
                return Err("usage: backfill_bench [--rows N] [--parallel-shards K] [--seed-concurrency C] [--unqualified-every U]".into());
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// `VmHWM` / `VmRSS` in KiB from /proc/self/status.
fn proc_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn json_req(method: &str, path: &str, body: &serde_json::Value) -> HttpRequest {
    HttpRequest::new(method, path)
        .with_header("content-type", "application/json")
        .with_body(serde_json::to_vec(body).unwrap())
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("backfill_bench: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let args = parse_args()?;
    for v in [
        "AWS_ENDPOINT_URL_DYNAMODB",
        "AWS_ENDPOINT_URL",
        "ACCOUNTS_TABLE",
    ] {
        if std::env::var(v)
            .map(|s| s.trim().is_empty())
            .unwrap_or(true)
        {
            return Err(format!(
                "{v} is not set: run infra/scripts/stack-up.sh, then `set -a; . .local/stack.env; set +a`"
            ));
        }
    }
    let aws = adsync::aws::AwsClients::from_env().await;
    let sandbox = SandboxAdmin::from_env();
    sandbox.health().await.map_err(|e| e.to_string())?;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let ledger_table = format!("adsync-bench-ledger-{}", &run_id[..12]);
    let dest_table = format!("adsync-bench-dest-{}", &run_id[..12]);
    adsync_tests::tables::create_table(&aws.dynamodb, &ledger_table, false).await?;
    adsync_tests::tables::create_table(&aws.dynamodb, &dest_table, true).await?;
    let result = bench(&args, &aws, &sandbox, &ledger_table, &dest_table).await;
    for t in [&ledger_table, &dest_table] {
        let _ = aws.dynamodb.delete_table().table_name(t).send().await;
    }
    result
}

async fn bench(
    args: &Args,
    aws: &adsync::aws::AwsClients,
    sandbox: &SandboxAdmin,
    ledger_table: &str,
    dest_table: &str,
) -> Result<(), String> {
    // Amazon side: a fresh LwA client, user, advertiser, linked account.
    let login = sandbox.new_login(1).await.map_err(|e| e.to_string())?;
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
    );
    let (account, accounts) =
        adsync_tests::stack::seed_linked_account(aws, &amazon, &login, "adsync-bench/tokens-")
            .await?;
    let queue_url = match std::env::var("PARKED_PATCHES_QUEUE_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => aws
            .sqs
            .create_queue()
            .queue_name("adsync-bench-parked")
            .send()
            .await
            .map_err(|e| format!("create queue: {e}"))?
            .queue_url()
            .unwrap_or_default()
            .to_string(),
    };
    let ctx = ExportCtx {
        amazon,
        accounts,
        destinations: DestinationStore::new(aws.dynamodb.clone(), dest_table.to_string()),
        ledger: LedgerStore::new(aws.dynamodb.clone(), ledger_table.to_string()),
        jobs: JobStore::new(aws.dynamodb.clone(), dest_table.to_string()),
        parked: ParkedQueue::new(aws.sqs.clone(), queue_url),
        metrics_fn: "backfill-bench",
        // The benchmark times `run_backfill` alone: the creating request only queues.
        inline: adsync::export::InlineWork::off(),
        options: adsync::export::ExportOptions::from_env().expect("export options"),
    };
    let seg = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);

    // 1. Seed the ledger: rows generated lazily, 25 per BatchWriteItem, C in parallel.
    let started = Instant::now();
    let (rows, unq) = (args.rows, args.unqualified_every);
    let seg_ref = seg.as_str();
    let chunks = (0..rows.div_ceil(25)).map(move |c| {
        (c * 25..((c + 1) * 25).min(rows))
            .map(|i| LedgerRow {
                segment_id: seg_ref.to_string(),
                device: format!("COOKIE-bench{i:08}"),
                qualified: unq == 0 || i % unq != 0,
                ts_ms: 1_700_000_000_000,
                consent: None,
            })
            .collect::<Vec<_>>()
    });
    let mut seeded = 0usize;
    let mut stream = futures::stream::iter(chunks)
        .map(|c| {
            let l = ctx.ledger.clone();
            async move { l.seed(&c).await.map(|_| c.len()) }
        })
        .buffer_unordered(args.seed_concurrency.max(1));
    while let Some(n) = stream.next().await {
        seeded += n.map_err(|e| e.to_string())?;
        if seeded % 100_000 < 25 {
            eprintln!(
                "  seeded {seeded} rows ({:.0} rows/s)",
                seeded as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    drop(stream);
    let seed_secs = started.elapsed().as_secs_f64();
    let qualified = if unq == 0 {
        rows
    } else {
        rows - rows.div_ceil(unq)
    };
    eprintln!(
        "seeded {rows} rows in {seed_secs:.1} s ({:.0} rows/s)",
        rows as f64 / seed_secs
    );

    // 2. The destination and its audience (through the metadata routes and the creation task).
    use adsync::export::destinations;
    let r = destinations::put_segment(
        &ctx,
        &seg,
        &json_req("PUT", &format!("/segments/{seg}"), &json!({"name": format!("Bench {seg}"), "description": "benchmark", "dataExportControls": []})),
    )
    .await;
    if r.status >= 300 {
        return Err(format!("PUT /segments: {} {}", r.status, r.body));
    }
    let body = json!({
        "name": format!("Bench {seg}"), "description": "benchmark", "accountId": account.account_id,
        "dataExportLabels": [], "dataSourceCountry": ["US"], "ttlSeconds": 2_592_000,
        "mappings": [{"segmentId": seg}],
    });
    let r = destinations::create_destination(
        &ctx,
        &json_req("POST", "/destinations", &body),
        &adsync::runtime::Invocation::with_timeout(60),
    )
    .await;
    if r.status != 202 {
        return Err(format!("POST /destinations: {} {}", r.status, r.body));
    }
    let dest = r.json_body()["destinationId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut audience = None;
    for _ in 0..10 {
        destinations::create_pending_audiences(
            &ctx,
            &Invocation::with_timeout(60),
            Duration::from_secs(30),
        )
        .await;
        let m = ctx
            .destinations
            .get_mapping(&dest, &seg)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(m) = m.filter(|m| m.status == MappingStatus::Active) {
            audience = m.audience_id;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let audience = audience.ok_or("the audience was not created")?;

    // 3. Backfill. Peak memory from here on only.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let hwm_before = proc_kib("VmHWM:").unwrap_or(0);
    let opts = BackfillOptions {
        parallel_shards: args.parallel_shards,
        ..BackfillOptions::default()
    };
    let started = Instant::now();
    let (mut requests, mut devices, mut invocations) = (0u64, 0u64, 0u32);
    loop {
        invocations += 1;
        // Lambda's longest invocation: 15 minutes.
        let inv = Invocation {
            request_id: format!("bench-{invocations}"),
            deadline_ms: now_ms() + 900_000,
        };
        let s = run_backfill_with(&ctx, &inv, &opts).await?;
        requests += s["requests"].as_u64().unwrap_or(0);
        devices += s["devicesSent"].as_u64().unwrap_or(0);
        if let Some(errs) = s["errors"].as_array().filter(|e| !e.is_empty()) {
            eprintln!("  errors: {errs:?}");
        }
        let p = backfill_progress(&ctx, &dest, &seg)
            .await
            .map_err(|e| e.to_string())?;
        if p["state"] == "done" || invocations >= 20 {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let hwm = proc_kib("VmHWM:").unwrap_or(0);

    // 4. Check what the sandbox holds.
    let auds = sandbox
        .audiences(account.advertiser_id)
        .await
        .map_err(|e| e.to_string())?;
    let members = auds
        .iter()
        .find(|a| a.id == audience)
        .map(|a| a.member_count)
        .unwrap_or(0);
    let ok = members as usize == qualified && devices as usize == qualified;
    let report = json!({
        "rows": rows,
        "qualified": qualified,
        "seedSeconds": (seed_secs * 10.0).round() / 10.0,
        "seedRowsPerSec": (rows as f64 / seed_secs).round(),
        "backfillSeconds": (secs * 100.0).round() / 100.0,
        "devicesSent": devices,
        "recordsPerSec": (devices as f64 / secs).round(),
        "amazonRequests": requests,
        "amazonRequestsPerSec": ((requests as f64 / secs) * 10.0).round() / 10.0,
        "invocations": invocations,
        "parallelShards": args.parallel_shards,
        "peakRssMiB": ((hwm as f64 / 1024.0) * 10.0).round() / 10.0,
        "rssAtBackfillStartMiB": ((hwm_before as f64 / 1024.0) * 10.0).round() / 10.0,
        "sandboxMembers": members,
        "membersMatchLedger": ok,
    });
    println!("{report}");
    eprintln!(
        "backfill: {devices} devices in {secs:.1} s = {:.0} records/s; {requests} PATCH requests = {:.1} req/s; peak RSS {:.1} MiB; sandbox members {members} ({})",
        devices as f64 / secs,
        requests as f64 / secs,
        hwm as f64 / 1024.0,
        if ok { "match the ledger" } else { "MISMATCH" }
    );
    if !ok {
        return Err(format!(
            "the sandbox holds {members} members, expected {qualified}"
        ));
    }
    Ok(())
}
