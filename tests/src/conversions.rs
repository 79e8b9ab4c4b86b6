//! Conversion-ingest fixtures for tests and the whole-handler benchmark: a linked account of a
//! fresh sandbox advertiser, the real stores on DynamoDB Local / moto (with a parked queue of its
//! own, so a redrive only sees this fixture's messages), the real handler, and event generators.

use crate::stack::{TestLogin, env, fresh_login};
use adsync::http::auth::ApiKeyAuth;
use adsync::http::{HttpRequest, HttpResponse};
use adsync::ingest::{ConversionHandler, IngestCtx, IngestSettings};
use adsync::runtime::{Handler, Invocation};
use adsync::store::accounts::{AccountStatus, AccountStore, IntegratedAccount};
use adsync::store::dedupe::DedupeStore;
use adsync::store::erased_rows::TombstoneReader;
use adsync::store::parked::ParkedQueue;
use adsync::store::parked_retry::ParkedRetry;
use serde_json::{Value, json};
use std::time::Duration;

/// One account wired to the real conversion handler.
pub struct IngestFixture {
    pub login: TestLogin,
    pub account: IntegratedAccount,
    pub handler: ConversionHandler,
    pub api_key: String,
}

impl IngestFixture {
    /// A fresh sandbox login + advertiser, its account (active) and a fresh parked queue.
    pub async fn new() -> Self {
        let login = fresh_login(1).await;
        let aws = login.aws.clone();
        let accounts = AccountStore::new(aws.dynamodb.clone(), env("ACCOUNTS_TABLE"));
        let account = IntegratedAccount {
            account_id: login.advertiser_id().to_string(),
            region: login.login.region,
            profile_id: login.profile_id(),
            advertiser_id: login.advertiser_id(),
            name: "Conversion test advertiser".into(),
            currency: "USD".into(),
            country: "US".into(),
            connection_id: uuid::Uuid::new_v4().to_string(),
            token_secret: login.login.secret_name.clone(),
            status: AccountStatus::Active,
            created_at: chrono::Utc::now().to_rfc3339(),
        };
        accounts
            .put_account(&account)
            .await
            .expect("seed the account in DynamoDB Local");
        let (queue_url, dlq_url) = parked_queue_with_dlq(&aws.sqs, "conversions").await;
        let window: u64 = std::env::var("DEDUPE_WINDOW_DAYS")
            .ok()
            .and_then(|d| d.parse().ok())
            .unwrap_or(30);
        let ctx = IngestCtx {
            amazon: login.client.clone(),
            accounts,
            dedupe: DedupeStore::new(
                aws.dynamodb.clone(),
                env("DEDUPE_TABLE"),
                Duration::from_secs(window * 86_400),
            ),
            parked: ParkedQueue::new(aws.sqs.clone(), queue_url).with_dead_letter(Some(dlq_url)),
            tombstones: std::env::var("LEDGER_TABLE")
                .ok()
                .map(|t| TombstoneReader::new(aws.dynamodb.clone(), t)),
            settings: IngestSettings {
                deadline_margin: Duration::from_secs(2),
                max_wait: Duration::from_secs(20),
                // The time scale of the redrive shrunk: every run may try again.
                retry: ParkedRetry {
                    base_delay: Duration::ZERO,
                    max_delay: Duration::ZERO,
                    ..ParkedRetry::default()
                },
                ..IngestSettings::default()
            },
        };
        let auth = ApiKeyAuth::new(login.secrets.clone(), env("API_KEYS_SECRET"));
        let api_key = std::env::var("ADSYNC_API_KEY").unwrap_or_else(|_| "adsync-local-key".into());
        IngestFixture {
            login,
            account,
            handler: ConversionHandler { ctx, auth },
            api_key,
        }
    }

    pub fn ctx(&self) -> &IngestCtx {
        &self.handler.ctx
    }

    pub fn advertiser_id(&self) -> i64 {
        self.account.advertiser_id
    }

    /// A `POST /accounts/{id}/conversions` request with the API key and a JSON body.
    pub fn request(&self, body: &Value) -> HttpRequest {
        HttpRequest::new(
            "POST",
            &format!("/accounts/{}/conversions", self.account.account_id),
        )
        .with_header("authorization", &format!("Bearer {}", self.api_key))
        .with_header("content-type", "application/json")
        .with_body(serde_json::to_vec(body).expect("JSON"))
    }

    /// Posts `body` through the handler (a 60 s invocation).
    /// The answer is checked against `openapi.yaml`.
    pub async fn post(&self, body: &Value) -> HttpResponse {
        let req = self.request(body);
        let resp = self
            .handler
            .http(req.clone(), Invocation::with_timeout(60))
            .await;
        crate::openapi::assert_http_response_valid(&req.method, &req.path, &resp);
        resp
    }

    /// Runs `{"task":"redrive-dlq"}` with `input`'s extra fields.
    pub async fn redrive_dlq(&self, mut input: Value) -> Value {
        input["task"] = json!("redrive-dlq");
        self.handler
            .task("redrive-dlq", input, Invocation::with_timeout(60))
            .await
            .expect("redrive-dlq task")
    }

    /// Runs the scheduled redrive.
    pub async fn redrive(&self) -> Value {
        self.handler
            .task(
                "redrive",
                json!({"task": "redrive"}),
                Invocation::with_timeout(60),
            )
            .await
            .expect("redrive task")
    }
}

/// A fresh parked queue on moto (visibility 2 s, also on its DLQ) whose redrive policy moves a message to a fresh
/// dead-letter queue after 10 receives, as the template's queues do. Returns both URLs.
pub async fn parked_queue_with_dlq(sqs: &aws_sdk_sqs::Client, kind: &str) -> (String, String) {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let id = uuid::Uuid::new_v4().simple();
    let dlq_url = sqs
        .create_queue()
        .queue_name(format!("adsync-test-{kind}-dlq-{id}"))
        .attributes(A::VisibilityTimeout, "2")
        .send()
        .await
        .expect("create a dead-letter queue on moto")
        .queue_url
        .expect("queue url");
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(A::QueueArn)
        .send()
        .await
        .expect("dead-letter queue ARN")
        .attributes
        .and_then(|a| a.get(&A::QueueArn).cloned())
        .expect("QueueArn");
    let url = sqs
        .create_queue()
        .queue_name(format!("adsync-test-{kind}-{id}"))
        .attributes(A::VisibilityTimeout, "2")
        .attributes(
            A::RedrivePolicy,
            json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 10}).to_string(),
        )
        .send()
        .await
        .expect("create a parked queue on moto")
        .queue_url
        .expect("queue url");
    (url, dlq_url)
}

/// Messages visible or in flight on a queue.
pub async fn queue_depth(sqs: &aws_sdk_sqs::Client, url: &str) -> u64 {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::All)
        .send()
        .await
        .expect("queue attributes")
        .attributes
        .unwrap_or_default();
    let n = |k: A| {
        attrs
            .get(&k)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    n(A::ApproximateNumberOfMessages)
        + n(A::ApproximateNumberOfMessagesNotVisible)
        + n(A::ApproximateNumberOfMessagesDelayed)
}

/// A valid purchase event with a unique id (`prefix-i`) and an e-mail + phone.
/// The clock the generators count back from: fixed for the process, so that the same
/// `(prefix, i)` always makes the same event (a retried webhook repeats its content exactly,
/// and the dedupe compares content).
fn base_time() -> chrono::DateTime<chrono::Utc> {
    static BASE: std::sync::OnceLock<chrono::DateTime<chrono::Utc>> = std::sync::OnceLock::new();
    *BASE.get_or_init(chrono::Utc::now)
}

/// A valid purchase event with a unique id (`prefix-i`) and an e-mail + phone. The same
/// arguments give the same event.
pub fn purchase(prefix: &str, i: usize) -> Value {
    json!({
        "name": "Website_Purchase",
        "eventType": "OFF_AMAZON_PURCHASES",
        "timestamp": (base_time() - chrono::Duration::minutes((i % 300) as i64)).to_rfc3339(),
        "clientDedupeId": format!("{prefix}-{i}"),
        "countryCode": "US",
        "matchKeys": {"email": format!(" Buyer.{i}+tag@Example.com "), "phone": format!("+1 (555) 010-{:04}", i % 10_000)},
        "value": 10 + (i % 90),
        "currencyCode": "USD",
        "unitsSold": 1 + i % 3
    })
}

/// A realistic mix: purchases, leads with name/address keys (Amazon's list form), EU sign-ups
/// with consent, app events keyed by MAID without an id, and a few invalid events (every 25th has
/// no timestamp, every 40th an unknown key type).
pub fn mixed(prefix: &str, i: usize) -> Value {
    let ts = (base_time() - chrono::Duration::minutes((i % 600) as i64)).to_rfc3339();
    if i % 25 == 24 {
        return json!({"name": "Broken", "eventType": "LEAD", "countryCode": "US", "matchKeys": {"email": "x@y.z"}});
    }
    if i % 40 == 39 {
        return json!({"name": "Broken", "eventType": "LEAD", "timestamp": ts, "countryCode": "US",
            "matchKeys": [{"type": "SSN", "values": ["123"]}]});
    }
    match i % 4 {
        0 => purchase(prefix, i),
        1 => json!({
            "name": "Lead_Form", "eventType": "LEAD", "timestamp": ts, "clientDedupeId": format!("{prefix}-{i}"),
            "countryCode": "en-US",
            "matchKeys": [
                {"type": "EMAIL", "values": [format!("lead{i}@example.org")]},
                {"type": "FIRST_NAME", "values": ["José"]},
                {"type": "LAST_NAME", "values": ["O'Brien"]},
                {"type": "POSTAL", "values": ["94107 1234"]}
            ],
            "dataProcessingOptions": ["LIMITED_DATA_USE"]
        }),
        2 => json!({
            "eventDescription": {"name": "Signup", "conversionType": "SIGN_UP", "eventSource": "WEBSITE"},
            "eventTime": ts, "eventId": format!("{prefix}-{i}"), "countryCode": "DE",
            "matchKeys": [{"type": "EMAIL", "values": [format!("kunde{i}@example.de")]}],
            "consent": {"amazonConsent": {"amznUserData": "GRANTED", "amznAdStorage": "DENIED"}}
        }),
        _ => json!({
            "name": "App_Open", "eventType": "MOBILE_APP_FIRST_START", "eventActionSource": "ANDROID",
            "timestamp": ts, "countryCode": "US",
            "matchKeys": {"maid": format!("EA7583CD-A667-48BC-B806-{i:012}")},
            "customData": [{"name": "brand", "value": "acme"}]
        }),
    }
}
