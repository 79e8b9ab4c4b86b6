//! A segment-export test rig against the local stack (DynamoDB Local, moto, the sandbox), shared
//! by the audience upkeep and lifecycle tests: each rig has its own sandbox LwA client, user and
//! advertiser(s), its own destinations table (so scheduled work sees only this test's jobs) and
//! its own parked-patches queue. Answers are checked against `openapi.yaml`.

use crate::sandbox::{SandboxAdmin, SandboxLogin};
use adsync::amazon::client::{DEFAULT_SCOPES, http_client};
use adsync::amazon::{AmazonClient, Endpoints, LwaCredentials, RetryPolicy, SecretString};
use adsync::export::members::{BackfillOptions, backfill_progress, run_backfill_with};
use adsync::export::{ExportCtx, InlineWork};
use adsync::http::{HttpRequest, HttpResponse};
use adsync::runtime::{Invocation, now_ms};
use adsync::store::accounts::IntegratedAccount;
use adsync::store::destinations::{DestinationStore, MappingStatus, SegmentMapping};
use adsync::store::jobs::JobStore;
use adsync::store::ledger::{LedgerRow, LedgerStore};
use adsync::store::parked::ParkedQueue;
use adsync::store::secrets::SecretsStore;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

pub struct Rig {
    pub ctx: ExportCtx,
    pub sandbox: SandboxAdmin,
    pub login: SandboxLogin,
    pub account: IntegratedAccount,
    pub ddb: aws_sdk_dynamodb::Client,
    pub dest_table: String,
}

impl Drop for Rig {
    fn drop(&mut self) {
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

fn require_env() {
    for v in ["AWS_ENDPOINT_URL", "ACCOUNTS_TABLE", "LEDGER_TABLE"] {
        if std::env::var(v)
            .map(|s| s.trim().is_empty())
            .unwrap_or(true)
        {
            panic!(
                "{v} is not set: these tests need the local stack. Run infra/scripts/stack-up.sh, \
                 then `set -a; . .local/stack.env; set +a`."
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

/// A rig whose login reaches `advertisers` advertisers (the account is the first).
pub async fn rig(advertisers: usize) -> Rig {
    require_env();
    let aws = adsync::aws::AwsClients::from_env().await;
    let sandbox = SandboxAdmin::from_env();
    sandbox.health().await.unwrap_or_else(|e| panic!("{e}"));
    let login = sandbox
        .new_login(advertisers)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let amazon = AmazonClient::new(
        http_client(),
        Endpoints::single_host(sandbox.base_url()),
        LwaCredentials {
            client_id: login.client.client_id.clone(),
            client_secret: SecretString::new(login.client.client_secret.clone()),
        },
        SecretsStore::new(aws.secrets.clone()),
        DEFAULT_SCOPES.to_string(),
    )
    .with_retry_policy(RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(2),
        request_timeout: Duration::from_secs(30),
    });
    let (account, accounts) =
        crate::stack::seed_linked_account(&aws, &amazon, &login, "adsync-test/tokens-")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    let dest_table = crate::tables::fresh_destinations_table(&aws.dynamodb).await;
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

pub fn json_req(method: &str, path: &str, body: &Value) -> HttpRequest {
    HttpRequest::new(method, path)
        .with_header("content-type", "application/json")
        .with_body(serde_json::to_vec(body).unwrap())
}

pub fn seg_id() -> String {
    format!("seg-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Checks an answer against `openapi.yaml` and returns its status and body.
pub fn checked(req: &HttpRequest, r: &HttpResponse) -> (u16, Value) {
    crate::openapi::assert_http_response_valid(&req.method, &req.path, r);
    (r.status, r.json_body())
}

pub async fn put_segment(rig: &Rig, seg: &str, controls: Value) -> (u16, Value) {
    let req = json_req(
        "PUT",
        &format!("/segments/{seg}"),
        &json!({"name": format!("Segment {seg}"), "description": "test", "dataExportControls": controls}),
    );
    let r = adsync::export::destinations::put_segment(&rig.ctx, seg, &req).await;
    checked(&req, &r)
}

/// Registers the segments and a destination (ttl `ttl_seconds`) mapping them, then creates
/// the audiences the way the scheduled task does. Returns the destination id and mappings.
pub async fn destination_with(
    rig: &Rig,
    segments: &[&str],
    ttl_seconds: u64,
) -> (String, Vec<SegmentMapping>) {
    use adsync::export::destinations;
    for s in segments {
        let (st, body) = put_segment(rig, s, json!([])).await;
        assert!(st < 300, "PUT /segments: {st} {body}");
    }
    let body = json!({
        "name": format!("Dest {}", uuid::Uuid::new_v4().simple()),
        "accountId": rig.account.account_id,
        "dataSourceCountry": ["US"],
        "ttlSeconds": ttl_seconds,
        "mappings": segments.iter().map(|s| json!({"segmentId": s})).collect::<Vec<_>>(),
    });
    let inv = Invocation::with_timeout(60);
    let req = json_req("POST", "/destinations", &body);
    let r = destinations::create_destination(&rig.ctx, &req, &inv).await;
    let (st, v) = checked(&req, &r);
    assert_eq!(st, 202, "POST /destinations: {v}");
    let dest = v["destinationId"].as_str().unwrap().to_string();
    for _ in 0..20 {
        destinations::create_pending_audiences(&rig.ctx, &inv, Duration::from_secs(30)).await;
        let ms = rig.ctx.destinations.list_mappings(&dest).await.unwrap();
        if ms.iter().all(|m| m.status == MappingStatus::Active) {
            let ordered = segments
                .iter()
                .map(|s| ms.iter().find(|m| m.segment_id == *s).unwrap().clone())
                .collect();
            return (dest, ordered);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("the audiences were not created");
}

/// Seeds `n` devices `COOKIE-<prefix><i>`, every `unq_every`-th unqualified; returns the
/// qualified ones.
pub async fn seed(
    rig: &Rig,
    seg: &str,
    prefix: &str,
    n: usize,
    unq_every: usize,
) -> BTreeSet<String> {
    let ts_ms = now_ms() as i64 - 60_000;
    let rows: Vec<LedgerRow> = (0..n)
        .map(|i| LedgerRow {
            segment_id: seg.to_string(),
            device: format!("COOKIE-{prefix}{i:06}"),
            qualified: unq_every == 0 || i % unq_every != 0,
            ts_ms,
            consent: None,
        })
        .collect();
    rig.ctx
        .ledger
        .seed(&rows)
        .await
        .expect("seeding the ledger");
    rows.into_iter()
        .filter(|r| r.qualified)
        .map(|r| r.device)
        .collect()
}

/// Backfill options with a short margin and small bodies (more checkpoints).
pub fn opts(max_patches: usize) -> BackfillOptions {
    BackfillOptions {
        safety_margin: Duration::from_millis(1_000),
        parallel_shards: 4,
        max_patches,
        lease: Duration::from_secs(30),
        ..BackfillOptions::default()
    }
}

pub fn deadline_in(ms: u64) -> Invocation {
    Invocation {
        request_id: uuid::Uuid::new_v4().to_string(),
        deadline_ms: now_ms() + ms,
    }
}

/// Runs backfill invocations until the mapping's job (whatever its purpose) is done.
pub async fn run_jobs_until_done(rig: &Rig, dest: &str, seg: &str, o: &BackfillOptions) {
    for _ in 0..30 {
        run_backfill_with(&rig.ctx, &deadline_in(20_000), o)
            .await
            .unwrap();
        let p = backfill_progress(&rig.ctx, dest, seg).await.unwrap();
        if p["state"] == "done" {
            return;
        }
    }
    let p = backfill_progress(&rig.ctx, dest, seg).await.unwrap();
    panic!("job not done after 30 runs: {p}");
}

pub async fn members(rig: &Rig, audience_id: i64) -> BTreeSet<String> {
    rig.sandbox
        .members(audience_id)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .collect()
}

pub async fn ledger_qualified(rig: &Rig, seg: &str) -> BTreeSet<String> {
    rig.ctx
        .ledger
        .qualified_devices(seg)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// `POST /qualifications` with one `COOKIE` item per device (answer checked).
pub async fn qualify(rig: &Rig, seg: &str, devices: &[&str], status: &str) {
    let ts = now_ms() as i64;
    let items: Vec<Value> = devices
        .iter()
        .map(|d| json!({"segmentId": seg, "deviceId": d.trim_start_matches("COOKIE-"), "idType": "COOKIE", "status": status, "timestamp": ts}))
        .collect();
    let req = json_req("POST", "/qualifications", &json!({"qualifications": items}));
    let r = adsync::export::members::handle_qualifications(
        &rig.ctx,
        &req,
        &Invocation::with_timeout(30),
    )
    .await;
    let (st, v) = checked(&req, &r);
    assert_eq!(st, 200, "POST /qualifications: {v}");
}

/// `GET /destinations/{id}` (answer checked).
pub async fn get_destination(rig: &Rig, dest: &str) -> (u16, Value) {
    let req = HttpRequest::new("GET", &format!("/destinations/{dest}"));
    let r = adsync::export::destinations::get_destination(&rig.ctx, dest).await;
    checked(&req, &r)
}

/// Sandbox requests of this rig's client: `(PATCH requests, metadata requests)`.
pub async fn calls(
    rig: &Rig,
) -> (
    Vec<crate::sandbox::RequestRecord>,
    Vec<crate::sandbox::RequestRecord>,
) {
    let all = rig
        .sandbox
        .requests(Some(&rig.login.client.client_id), None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let patches = all
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.starts_with("/v2/dp/audience"))
        .cloned()
        .collect();
    let meta = all
        .into_iter()
        .filter(|r| r.path.starts_with("/v2/dp/audiencemetadata"))
        .collect();
    (patches, meta)
}
