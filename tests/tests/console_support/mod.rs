//! Set-up of the console's browser test: a console wired to the local stack (its own
//! destinations table and parked queues, one sandbox LwA client shared with the linking flow and
//! conversion ingest), served over real HTTP together with the oauth-callback handler and a
//! stand-in of the Lambda Invoke API (which runs conversion-ingest's task in process), and a
//! headless Chromium driven through chromedriver.

#![allow(dead_code)]

use crate::support::{Rig, Stack, rig};
use adsync::amazon::client::{DEFAULT_SCOPES, http_client};
use adsync::amazon::{AmazonClient, Endpoints, LwaCredentials, SecretString};
use adsync::console::Console;
use adsync::console::api::Api;
use adsync::console::invoke::TaskInvoker;
use adsync::console::session::{SessionStore, SignInLimit};
use adsync::export::{ExportCtx, InlineWork};
use adsync::http::HttpRequest;
use adsync::http::auth::ApiKeyAuth;
use adsync::ingest::{ConversionHandler, IngestCtx, IngestSettings};
use adsync::runtime::{Handler, Invocation};
use adsync::store::conversion_counts::ConversionCounts;
use adsync::store::dedupe::DedupeStore;
use adsync::store::destinations::DestinationStore;
use adsync::store::erased_rows::TombstoneReader;
use adsync::store::jobs::JobStore;
use adsync::store::ledger::LedgerStore;
use adsync::store::parked::ParkedQueue;
use adsync::store::parked_retry::ParkedRetry;
use adsync_tests::stack::env;
use axum::body::Body;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Everything the console test drives.
pub struct World {
    pub base: String,
    pub console: Arc<Console>,
    pub ingest: Arc<ConversionHandler>,
    pub rig: Rig,
    pub key: String,
    pub source_ip: String,
}

async fn fresh_queue(sqs: &aws_sdk_sqs::Client, kind: &str) -> String {
    let q = sqs
        .create_queue()
        .queue_name(format!(
            "adsync-test-console-{kind}-{}",
            uuid::Uuid::new_v4().simple()
        ))
        .send()
        .await
        .expect("creating a test queue in moto");
    q.queue_url().unwrap().to_string()
}

/// Builds the console and serves it (with the linking pages and the Invoke stand-in).
pub async fn world(stack: &Stack) -> World {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let rig = rig(stack, &format!("{base}/oauth/callback")).await;
    let aws = &stack.aws;
    let amazon = AmazonClient::new(
        http_client(),
        Endpoints::single_host(stack.sandbox.base_url()),
        LwaCredentials {
            client_id: rig.client.client_id.clone(),
            client_secret: SecretString::new(rig.client.client_secret.clone()),
        },
        rig.secrets.clone(),
        DEFAULT_SCOPES.to_string(),
    )
    .with_retry_policy(adsync_tests::stack::fast_policy());
    let dest_table = adsync_tests::tables::fresh_destinations_table(&aws.dynamodb).await;
    let export = ExportCtx {
        amazon: amazon.clone(),
        accounts: rig.accounts.clone(),
        destinations: DestinationStore::new(aws.dynamodb.clone(), dest_table.clone()),
        ledger: LedgerStore::new(aws.dynamodb.clone(), env("LEDGER_TABLE")),
        jobs: JobStore::new(aws.dynamodb.clone(), dest_table),
        parked: ParkedQueue::new(aws.sqs.clone(), fresh_queue(&aws.sqs, "patches").await),
        metrics_fn: "console-test",
        // Creation only queues, so the page can watch the scheduled backfill run.
        inline: InlineWork::off(),
        options: adsync::export::ExportOptions::from_env().expect("export options"),
    };
    let key = format!("console-key-{}", uuid::Uuid::new_v4().simple());
    let keys_secret = format!("adsync-test/console-keys-{}", uuid::Uuid::new_v4().simple());
    rig.secrets
        .put_json(
            &keys_secret,
            &serde_json::json!({"keys": [{"name": "console-test", "sha256": ApiKeyAuth::digest(&key)}]}),
        )
        .await
        .expect("storing the console key in moto");
    let console = Console {
        api: Api {
            export,
            linking: rig.linking.clone(),
        },
        auth: ApiKeyAuth::new(rig.secrets.clone(), keys_secret),
        sessions: SessionStore::new(aws.dynamodb.clone(), rig.accounts.table().to_string()),
        counts: ConversionCounts::new(&rig.accounts),
        invoker: TaskInvoker::with_endpoint(&base, "conversion-ingest").await,
        limit: SignInLimit {
            max_failures: 3,
            window_secs: 600,
        },
    };
    let ingest = ConversionHandler {
        ctx: IngestCtx {
            amazon,
            accounts: rig.accounts.clone(),
            dedupe: DedupeStore::new(
                aws.dynamodb.clone(),
                env("DEDUPE_TABLE"),
                Duration::from_secs(30 * 86_400),
            ),
            parked: ParkedQueue::new(aws.sqs.clone(), fresh_queue(&aws.sqs, "conversions").await),
            tombstones: std::env::var("LEDGER_TABLE")
                .ok()
                .map(|t| TombstoneReader::new(aws.dynamodb.clone(), t)),
            settings: IngestSettings {
                deadline_margin: Duration::from_secs(2),
                retry: ParkedRetry {
                    base_delay: Duration::ZERO,
                    max_delay: Duration::ZERO,
                    ..ParkedRetry::default()
                },
                ..IngestSettings::default()
            },
        },
        auth: ApiKeyAuth::new(rig.secrets.clone(), "unused".into()),
    };
    let w = World {
        base,
        console: Arc::new(console),
        ingest: Arc::new(ingest),
        rig,
        key,
        // One address per test run: the sign-in limit counts per source IP in the shared table.
        source_ip: format!("198.51.100.{}", rand_octet()),
    };
    serve(&w, listener);
    w
}

fn rand_octet() -> u8 {
    (uuid::Uuid::new_v4().as_u128() % 250) as u8 + 1
}

/// Serves `/console/…` (the console), `/2015-03-31/functions/…/invocations` (Lambda's Invoke
/// API: runs the task of the conversion-ingest handler, then answers 202 as an `Event` invoke
/// does) and everything else (the linking pages).
fn serve(w: &World, listener: tokio::net::TcpListener) {
    let (console, ingest, linking) = (w.console.clone(), w.ingest.clone(), w.rig.linking.clone());
    let ip = w.source_ip.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (console, ingest, linking, ip) =
            (console.clone(), ingest.clone(), linking.clone(), ip.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20)
                .await
                .unwrap_or_default();
            let path = parts.uri.path().to_string();
            if path.starts_with("/2015-03-31/functions/") {
                let payload: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let out = adsync::runtime::dispatch(
                    ingest.as_ref(),
                    payload,
                    Invocation::with_timeout(60),
                )
                .await;
                let status = if out.is_ok() { 202 } else { 500 };
                return axum::http::Response::builder()
                    .status(status)
                    .body(Body::empty())
                    .unwrap();
            }
            let mut r = HttpRequest::new(parts.method.as_str(), &path)
                .with_query(parts.uri.query().unwrap_or(""))
                .with_body(body.to_vec());
            for (k, v) in &parts.headers {
                if let Ok(v) = v.to_str() {
                    r = r.with_header(k.as_str(), v);
                }
            }
            r.source_ip = Some(ip);
            let resp = if path.starts_with("/console") {
                console.http(r, Invocation::with_timeout(30)).await
            } else {
                linking.http(r, Invocation::with_timeout(30)).await
            };
            let mut out = axum::http::Response::builder().status(resp.status);
            for (k, v) in &resp.headers {
                out = out.header(k, v);
            }
            out.body(Body::from(resp.body)).unwrap()
        }
    });
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
}

/// Kills chromedriver (and with it the browser) when the test ends, pass or fail.
pub struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn browser() -> (Driver, fantoccini::Client, PathBuf) {
    for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
        assert!(
            Path::new(path).exists(),
            "{path} is missing: the browser test needs Debian's {package} package"
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
    let driver = Driver(child);
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if let Ok(r) = http.get(format!("{url}/status")).send().await
            && r.status().is_success()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let profile =
        std::env::temp_dir().join(format!("adsync-console-{}", uuid::Uuid::new_v4().simple()));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1100,800", "--hide-scrollbars",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let client = fantoccini::ClientBuilder::rustls()
        .expect("the WebDriver client")
        .capabilities(caps)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("chromedriver could not start chromium: {e}"));
    (driver, client, profile)
}

/// `docs/screenshots/` (the README shows what the test saves there).
pub fn screenshots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("docs/screenshots");
    std::fs::create_dir_all(&dir).expect("creating docs/screenshots/");
    dir
}
