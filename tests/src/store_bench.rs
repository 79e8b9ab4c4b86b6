//! Pieces of the conversion benchmark (`src/bin/ingest_bench.rs`): the bare store work a request
//! cannot do without (one conditional write per fresh id, `attribute_not_exists(pk)`), an account
//! the served function can use, and latency statistics.

use crate::sandbox::SEED_CLIENT_ID;
use crate::stack::{aws, env, sandbox};
use adsync::amazon::Region;
use adsync::amazon::tokens::TokenSecret;
use adsync::store::accounts::{AccountStatus, AccountStore, IntegratedAccount};
use adsync::store::secrets::SecretsStore;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::{AttributeValue, Put, PutRequest, TransactWriteItem, WriteRequest};
use futures::StreamExt;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Conditional puts per `TransactWriteItems` (the API's limit).
pub const TRANSACT_MAX: usize = 100;
/// Puts per `BatchWriteItem` (the API's limit).
pub const BATCH_WRITE_MAX: usize = 25;

/// An item shaped like a dedupe claim (same attributes and sizes) under a fresh `pk`.
fn claim_item(pk: &str) -> HashMap<String, AttributeValue> {
    let now = adsync::runtime::now_ms();
    let s = |v: &str| AttributeValue::S(v.to_string());
    let n = |v: u64| AttributeValue::N(v.to_string());
    HashMap::from([
        ("pk".to_string(), s(pk)),
        ("status".to_string(), s("IN_PROGRESS")),
        (
            "token".to_string(),
            s(&uuid::Uuid::new_v4().simple().to_string()),
        ),
        ("inProgressUntil".to_string(), n(now + 60_000)),
        ("expiresAt".to_string(), n(now / 1000 + 30 * 86_400)),
        ("fingerprint".to_string(), s(&"f".repeat(64))),
        ("contentAt".to_string(), n(now)),
        (
            "requestId".to_string(),
            s(&uuid::Uuid::new_v4().to_string()),
        ),
        ("updatedAt".to_string(), n(now)),
    ])
}

/// Fresh `pk`s for `n` ids (`bench#<run>#<i>`).
pub fn fresh_ids(n: usize) -> Vec<String> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    (0..n).map(|i| format!("bench#{run}#{i}")).collect()
}

/// Runs `calls`, `concurrency` in flight; returns the wall time and every answer (a failed call
/// panics, naming `what`).
async fn timed<T, E: std::error::Error + 'static>(
    what: &str,
    calls: impl Iterator<Item = impl Future<Output = Result<T, E>>>,
    concurrency: usize,
) -> (Duration, Vec<T>) {
    let started = Instant::now();
    let results: Vec<Result<T, E>> = futures::stream::iter(calls)
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let answers = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("bare {what}: {}", DisplayErrorContext(e))))
        .collect();
    (elapsed, answers)
}

/// Writes every id with `TransactWriteItems` of up to 100 conditional puts
/// (`attribute_not_exists(pk)`), `concurrency` transactions in flight. Returns the wall time.
pub async fn bare_transact(
    ddb: &Client,
    table: &str,
    ids: &[String],
    concurrency: usize,
) -> Duration {
    let calls = ids.chunks(TRANSACT_MAX).map(|chunk| {
        let items = chunk.iter().map(|pk| {
            let put = Put::builder()
                .table_name(table)
                .set_item(Some(claim_item(pk)))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .expect("put");
            TransactWriteItem::builder().put(put).build()
        });
        ddb.transact_write_items()
            .set_transact_items(Some(items.collect()))
            .send()
    });
    timed("TransactWriteItems", calls, concurrency).await.0
}

/// Writes every id with its own conditional `PutItem` (`attribute_not_exists(pk)`),
/// `concurrency` in flight. Returns the wall time.
pub async fn bare_put(ddb: &Client, table: &str, ids: &[String], concurrency: usize) -> Duration {
    let calls = ids.iter().map(|pk| {
        ddb.put_item()
            .table_name(table)
            .set_item(Some(claim_item(pk)))
            .condition_expression("attribute_not_exists(pk)")
            .send()
    });
    timed("PutItem", calls, concurrency).await.0
}

/// Rewrites every id whole, unconditionally, with `BatchWriteItem` of up to 25 puts, `concurrency`
/// calls in flight (what completing a claim costs at the least: `store::dedupe::complete_many`).
/// Returns the wall time.
pub async fn bare_batch_write(
    ddb: &Client,
    table: &str,
    ids: &[String],
    concurrency: usize,
) -> Duration {
    let calls = ids.chunks(BATCH_WRITE_MAX).map(|chunk| {
        let writes = chunk.iter().map(|pk| {
            let put = PutRequest::builder()
                .set_item(Some(claim_item(pk)))
                .build()
                .expect("put");
            WriteRequest::builder().put_request(put).build()
        });
        ddb.batch_write_item()
            .request_items(table, writes.collect())
            .send()
    });
    let (elapsed, answers) = timed("BatchWriteItem", calls, concurrency).await;
    for out in answers {
        let left = out.unprocessed_items().map_or(0, |m| m.len());
        assert_eq!(left, 0, "bare BatchWriteItem left items unprocessed");
    }
    elapsed
}

/// A fresh sandbox user linked to the LwA client the stack's functions use (the seeded one), as
/// an active account: its refresh token in a secret under `TOKEN_SECRET_PREFIX`, the account in
/// `ACCOUNTS_TABLE`. Returns the account id.
pub async fn seed_client_account() -> String {
    let sb = sandbox().await;
    let user = sb.new_user("US", "USD", 1).await.expect("sandbox user");
    let refresh_token = sb
        .refresh_token(&user.user_id, SEED_CLIENT_ID)
        .await
        .expect("sandbox refresh token");
    let aws = aws().await;
    let secret_name = format!(
        "{}bench-{}",
        env("TOKEN_SECRET_PREFIX"),
        uuid::Uuid::new_v4().simple()
    );
    SecretsStore::new(aws.secrets.clone())
        .put_json(
            &secret_name,
            &TokenSecret {
                region: Region::NA,
                refresh_token: refresh_token.into(),
                access_token: None,
                access_token_expires_at: None,
            },
        )
        .await
        .expect("store the token secret in moto");
    let adv = user.advertiser().clone();
    let account = IntegratedAccount {
        account_id: adv.advertiser_id.to_string(),
        region: Region::NA,
        profile_id: user.profile().profile_id,
        advertiser_id: adv.advertiser_id,
        name: adv.name.clone(),
        currency: adv.currency.clone(),
        country: adv.country.clone(),
        connection_id: uuid::Uuid::new_v4().simple().to_string(),
        token_secret: secret_name,
        status: AccountStatus::Active,
        created_at: chrono::Utc::now().to_rfc3339(),
    };
    AccountStore::new(aws.dynamodb.clone(), env("ACCOUNTS_TABLE"))
        .put_account(&account)
        .await
        .expect("seed the account in DynamoDB Local");
    account.account_id
}

/// Latencies in milliseconds, with percentiles (nearest rank).
#[derive(Default, Clone, Debug)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1000.0);
    }

    pub fn pct(&self, p: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            return f64::NAN;
        }
        v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
    }

    pub fn total_s(&self) -> f64 {
        self.0.iter().sum::<f64>() / 1000.0
    }

    /// `p50 / p95 / max` in ms.
    pub fn summary(&self) -> String {
        format!(
            "p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms",
            self.pct(0.5),
            self.pct(0.95),
            self.pct(1.0)
        )
    }
}
