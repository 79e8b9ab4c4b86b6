//! The rig of the privacy and identity tests (`tests/tests/privacy.rs`): its own sandbox login
//! with several advertisers, its own accounts, destinations and ledger tables and parked queue
//! (so erasure scans, `list_accounts` and the schedule see only this test's data), helpers for
//! the sandbox's privacy admin routes, and the scan for raw ids and PII left anywhere.

use crate::sandbox::{SandboxAdmin, SandboxLogin};
use adsync::amazon::client::{DEFAULT_SCOPES, http_client};
use adsync::amazon::{
    AmazonClient, Endpoints, LoginRef, LwaCredentials, Region, RetryPolicy, SecretString,
    TokenGrant,
};
use adsync::export::{ExportCtx, InlineWork};
use adsync::http::{HttpRequest, HttpResponse};
use adsync::runtime::Invocation;
use adsync::store::accounts::{AccountStatus, AccountStore, IntegratedAccount};
use adsync::store::destinations::{DestinationStore, MappingStatus, SegmentMapping};
use adsync::store::jobs::JobStore;
use adsync::store::ledger::LedgerStore;
use adsync::store::parked::ParkedQueue;
use adsync::store::secrets::SecretsStore;
use serde_json::{Value, json};
use std::time::Duration;

pub struct PrivacyRig {
    pub ctx: ExportCtx,
    pub sandbox: SandboxAdmin,
    pub login: SandboxLogin,
    pub accounts: Vec<IntegratedAccount>,
    pub ddb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub tables: Vec<String>,
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

impl PrivacyRig {
    /// A fresh login with `advertisers` advertisers, each linked as an active account.
    pub async fn new(advertisers: usize) -> Self {
        let aws = crate::stack::aws().await;
        let sandbox = crate::stack::sandbox().await;
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
        let mut tables = Vec::new();
        for (name, gsi) in [
            ("accounts", false),
            ("destinations", true),
            ("ledger", false),
        ] {
            let t = unique(&format!("adsync-test-privacy-{name}"));
            crate::tables::create_table(&aws.dynamodb, &t, gsi)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            tables.push(t);
        }
        let connection_id = uuid::Uuid::new_v4().simple().to_string();
        let login_ref = LoginRef {
            region: Region::NA,
            secret_name: format!("adsync-test/tokens-{connection_id}"),
        };
        amazon
            .save_login(
                &login_ref,
                &TokenGrant {
                    access_token: SecretString::new("Atza|expired".to_string()),
                    refresh_token: Some(SecretString::new(login.refresh_token.clone())),
                    expires_in: 0,
                },
            )
            .await
            .unwrap_or_else(|e| panic!("saving the test login: {e}"));
        let store = AccountStore::new(aws.dynamodb.clone(), tables[0].clone());
        let profile = login.user.profile().clone();
        let mut accounts = Vec::new();
        for adv in &profile.advertisers {
            let a = IntegratedAccount {
                account_id: adv.advertiser_id.to_string(),
                region: Region::NA,
                profile_id: profile.profile_id,
                advertiser_id: adv.advertiser_id,
                name: adv.name.clone(),
                currency: adv.currency.clone(),
                country: adv.country.clone(),
                connection_id: connection_id.clone(),
                token_secret: login_ref.secret_name.clone(),
                status: AccountStatus::Active,
                created_at: chrono::Utc::now().to_rfc3339(),
            };
            store.put_account(&a).await.expect("seeding an account");
            accounts.push(a);
        }
        let queue = aws
            .sqs
            .create_queue()
            .queue_name(unique("adsync-test-privacy-parked"))
            .send()
            .await
            .expect("creating a test queue in moto");
        let ctx = ExportCtx {
            amazon,
            accounts: store,
            destinations: DestinationStore::new(aws.dynamodb.clone(), tables[1].clone()),
            ledger: LedgerStore::new(aws.dynamodb.clone(), tables[2].clone()),
            jobs: JobStore::new(aws.dynamodb.clone(), tables[1].clone()),
            parked: ParkedQueue::new(aws.sqs.clone(), queue.queue_url().unwrap().to_string()),
            metrics_fn: "segment-export-test",
            inline: InlineWork::off(),
            options: adsync::export::ExportOptions::from_env().expect("export options"),
        };
        Self {
            ctx,
            sandbox,
            login,
            accounts,
            ddb: aws.dynamodb.clone(),
            sqs: aws.sqs.get().clone(),
            tables,
        }
    }

    pub fn client_id(&self) -> &str {
        &self.login.client.client_id
    }

    /// A destination on `account` mapping `segments`, with every audience created.
    pub async fn destination(&self, account: usize, segments: &[String]) -> Vec<SegmentMapping> {
        use adsync::export::destinations;
        for s in segments {
            let body = json!({"name": format!("Segment {s}"), "description": "privacy test", "dataExportControls": []});
            let r = destinations::put_segment(&self.ctx, s, &json_req("PUT", "/segments/x", &body))
                .await;
            assert!(r.status < 300, "PUT /segments: {} {}", r.status, r.body);
        }
        let body = json!({
            "name": unique("Dest"), "description": "privacy tests",
            "accountId": self.accounts[account].account_id, "dataExportLabels": [],
            "dataSourceCountry": ["US"], "ttlSeconds": 2_592_000,
            "mappings": segments.iter().map(|s| json!({"segmentId": s})).collect::<Vec<_>>(),
        });
        let inv = Invocation::with_timeout(60);
        let r = destinations::create_destination(
            &self.ctx,
            &json_req("POST", "/destinations", &body),
            &inv,
        )
        .await;
        assert_eq!(r.status, 202, "POST /destinations: {}", r.body);
        let id = r.json_body()["destinationId"].as_str().unwrap().to_string();
        for _ in 0..20 {
            destinations::create_pending_audiences(&self.ctx, &inv, Duration::from_secs(30)).await;
            let ms = self.ctx.destinations.list_mappings(&id).await.unwrap();
            if ms.iter().all(|m| m.status == MappingStatus::Active) {
                return ms;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        panic!("the audiences were not created");
    }

    /// `POST /qualifications` through the router (API key checked as in production).
    pub async fn qualify(&self, items: Value) -> HttpResponse {
        adsync::export::members::handle_qualifications(
            &self.ctx,
            &json_req("POST", "/qualifications", &json!({"qualifications": items})),
            &Invocation::with_timeout(60),
        )
        .await
    }

    async fn admin(&self, path: &str) -> Value {
        let url = format!(
            "{}{path}?clientId={}",
            self.sandbox.base_url(),
            self.client_id()
        );
        reqwest::get(&url)
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .json()
            .await
            .unwrap()
    }

    /// `PATCH /v2/dp/users` bodies the sandbox accepted for this test's client.
    pub async fn user_deletions(&self) -> Vec<Value> {
        let v = self.admin("/admin/user-deletions").await;
        v["deletions"].as_array().cloned().unwrap_or_default()
    }

    /// `{"records": {externalId: hashedRecords}, "uploads": [{records, bytes}]}`.
    pub async fn hashed_records(&self) -> Value {
        self.admin("/admin/hashed-records").await
    }

    /// Sandbox requests of this client on `path_prefix` (count).
    pub async fn calls(&self, method: &str, path_prefix: &str) -> usize {
        self.sandbox
            .requests(Some(self.client_id()), Some(path_prefix))
            .await
            .unwrap()
            .iter()
            .filter(|r| r.method == method && r.path.starts_with(path_prefix))
            .count()
    }

    /// Every place a raw value could be left: the test's tables (every item, as text), its
    /// parked queue and the identities queue (peeked), and `logs`. Returns `where: needle` hits.
    pub async fn find_anywhere(&self, needles: &[&str], logs: &str) -> Vec<String> {
        let mut hay: Vec<(String, String)> = vec![("logs".into(), logs.to_string())];
        for t in &self.tables {
            let mut start = None;
            loop {
                let res = self
                    .ddb
                    .scan()
                    .table_name(t)
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .unwrap();
                for it in res.items() {
                    hay.push((format!("table {t}"), format!("{it:?}")));
                }
                match res.last_evaluated_key() {
                    Some(k) if !k.is_empty() => start = Some(k.clone()),
                    _ => break,
                }
            }
        }
        let mut queues = vec![self.ctx.parked.queue_url().to_string()];
        if let Ok(q) = std::env::var(adsync::export::identities::QUEUE_VAR) {
            queues.push(q);
        }
        for q in queues {
            let res = self
                .sqs
                .receive_message()
                .queue_url(&q)
                .max_number_of_messages(10)
                .visibility_timeout(0)
                .wait_time_seconds(0)
                .send()
                .await
                .unwrap();
            for m in res.messages() {
                hay.push((format!("queue {q}"), m.body().unwrap_or("").to_string()));
            }
        }
        let mut hits = Vec::new();
        for (place, text) in &hay {
            for n in needles {
                if text.contains(n) {
                    hits.push(format!("{place}: {n}"));
                }
            }
        }
        hits
    }
}

impl Drop for PrivacyRig {
    fn drop(&mut self) {
        let ddb = self.ddb.clone();
        let tables = std::mem::take(&mut self.tables);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            // DynamoDB Local takes ~20 s per DeleteTable; it finishes the deletion after the
            // client stops waiting, so send them together and wait briefly.
            rt.block_on(async {
                let all = futures::future::join_all(
                    tables
                        .iter()
                        .map(|t| ddb.delete_table().table_name(t).send()),
                );
                let _ = tokio::time::timeout(Duration::from_secs(2), all).await;
            });
        })
        .join();
    }
}

pub fn json_req(method: &str, path: &str, body: &Value) -> HttpRequest {
    HttpRequest::new(method, path)
        .with_header("content-type", "application/json")
        .with_body(serde_json::to_vec(body).unwrap())
}
