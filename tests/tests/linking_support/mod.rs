//! Shared set-up of the linking tests (`linking.rs`, `browser.rs`): the local stack's clients,
//! a per-test `Linking` handler wired to a fresh sandbox LwA client, API key and token-secret
//! prefix, and the steps a browser would take through the flow.

#![allow(dead_code)]

use adsync::amazon::client::http_client;
use adsync::amazon::{AmazonClient, Endpoints, LwaCredentials, Region, SecretString};
use adsync::http::auth::ApiKeyAuth;
use adsync::http::{HttpRequest, HttpResponse};
use adsync::linking::{Linking, LinkingConfig};
use adsync::runtime::Invocation;
use adsync::store::accounts::AccountStore;
use adsync::store::secrets::SecretsStore;
use adsync_tests::sandbox::{
    LwaClient, SandboxAdmin, SandboxAdvertiser, SandboxProfile, SandboxUser, random_id,
};
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

/// Fails the test with a clear message when the local stack's env is missing.
pub fn require_env() {
    for v in ["AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL"] {
        if std::env::var(v)
            .map(|s| s.trim().is_empty())
            .unwrap_or(true)
        {
            panic!(
                "{v} is not set: the linking tests need the local stack (DynamoDB Local, moto, the Amazon \
                 sandbox). Run infra/scripts/stack-up.sh, then `set -a; . .local/stack.env; set +a`."
            );
        }
    }
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        for (k, v) in [
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ] {
            if std::env::var(k).is_err() {
                // SAFETY: moto/DynamoDB Local accept any credentials; set once before any client
                // reads them (the SDK reads the environment when a client is built).
                unsafe { std::env::set_var(k, v) };
            }
        }
    });
}

/// The local stack: AWS clients, the accounts table, the sandbox.
pub struct Stack {
    pub aws: adsync::aws::AwsClients,
    pub table: String,
    pub sandbox: SandboxAdmin,
}

pub async fn stack() -> Stack {
    require_env();
    let aws = adsync::aws::AwsClients::from_env().await;
    let table = ensure_accounts_table(&aws.dynamodb).await;
    let sandbox = SandboxAdmin::from_env();
    if let Err(e) = sandbox.health().await {
        panic!("{e}");
    }
    Stack {
        aws,
        table,
        sandbox,
    }
}

/// Creates the accounts table if it is missing (idempotent; stack-up.sh normally does it).
pub async fn ensure_accounts_table(ddb: &aws_sdk_dynamodb::Client) -> String {
    let table = std::env::var("ACCOUNTS_TABLE").unwrap_or_else(|_| "adsync-accounts".into());
    if ddb.describe_table().table_name(&table).send().await.is_ok() {
        return table;
    }
    if let Err(e) = adsync_tests::tables::create_table(ddb, &table, false).await {
        // Another test may have created it at the same moment.
        if ddb
            .describe_table()
            .table_name(&table)
            .send()
            .await
            .is_err()
        {
            panic!("{e}");
        }
    }
    table
}

/// One test's linking set-up: its own LwA client, API key and token-secret prefix.
pub struct Rig {
    pub linking: Linking,
    pub api_key: String,
    pub client: LwaClient,
    pub prefix: String,
    pub redirect_uri: String,
    pub secrets: SecretsStore,
    pub accounts: AccountStore,
    pub sandbox: SandboxAdmin,
    /// A client that never follows redirects (plays the browser step by step).
    pub browser: reqwest::Client,
    /// The cookies the handler set (as the browser keeps them): sent on every `call`.
    pub cookies: Arc<Mutex<Vec<(String, String)>>>,
}

pub async fn rig(stack: &Stack, redirect_uri: &str) -> Rig {
    let client = stack
        .sandbox
        .new_client()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let secrets = SecretsStore::new(stack.aws.secrets.clone());
    let api_key = format!("key-{}", uuid::Uuid::new_v4().simple());
    let keys_secret = format!("adsync-test/api-keys-{}", uuid::Uuid::new_v4().simple());
    secrets
        .put_json(
            &keys_secret,
            &serde_json::json!({"keys": [{"name": "test", "sha256": ApiKeyAuth::digest(&api_key)}]}),
        )
        .await
        .expect("storing the test API key in moto");
    let amazon = AmazonClient::new(
        http_client(),
        Endpoints::single_host(stack.sandbox.base_url()),
        LwaCredentials {
            client_id: client.client_id.clone(),
            client_secret: SecretString::new(client.client_secret.clone()),
        },
        secrets.clone(),
        adsync::amazon::client::DEFAULT_SCOPES.to_string(),
    );
    let accounts = AccountStore::new(stack.aws.dynamodb.clone(), stack.table.clone());
    let prefix = format!("adsync-test/tokens-{}/", uuid::Uuid::new_v4().simple());
    let linking = Linking::new(
        amazon,
        accounts.clone(),
        ApiKeyAuth::new(secrets.clone(), keys_secret),
        LinkingConfig {
            redirect_uri: redirect_uri.to_string(),
            token_secret_prefix: prefix.clone(),
        },
    );
    Rig {
        linking,
        api_key,
        client,
        prefix,
        redirect_uri: redirect_uri.to_string(),
        secrets,
        accounts,
        sandbox: stack.sandbox.clone(),
        browser: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        cookies: Default::default(),
    }
}

/// The `(country, currency)` of a region's sandbox profiles.
pub fn market(region: Region) -> (&'static str, &'static str) {
    match region {
        Region::NA => ("US", "USD"),
        Region::EU => ("UK", "GBP"),
        Region::FE => ("JP", "JPY"),
    }
}

/// A fresh sandbox user with one agency profile per region, `per_region` advertisers each.
pub async fn user_in_every_region(sandbox: &SandboxAdmin, per_region: usize) -> SandboxUser {
    let profiles = Region::ALL
        .iter()
        .map(|r| {
            let (country, currency) = market(*r);
            let profile_id = random_id(15);
            SandboxProfile {
                profile_id,
                country_code: country.into(),
                currency_code: currency.into(),
                timezone: "UTC".into(),
                kind: "agency".into(),
                name: format!("Agency {} <{}> & Co", r.as_str(), profile_id),
                advertisers: (0..per_region)
                    .map(|i| {
                        let id = random_id(13);
                        SandboxAdvertiser {
                            advertiser_id: id,
                            name: format!("Advertiser {} #{i} <b>\"quoted\"</b>", r.as_str()),
                            currency: currency.into(),
                            country: country.into(),
                            timezone: "UTC".into(),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    let user = SandboxUser {
        user_id: format!("user-{}", uuid::Uuid::new_v4().simple()),
        profiles,
    };
    sandbox
        .register_user(&user)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    user
}

impl Rig {
    /// Sends the request through the Lambda runtime's dispatch as an HTTP API payload 2.0 event
    /// (so the runtime's own request log line is part of what the tests search).
    pub async fn call(&self, req: HttpRequest) -> HttpResponse {
        let jar = self.cookies.lock().unwrap().clone();
        let req = if jar.is_empty() || req.header("cookie").is_some() {
            req
        } else {
            let header: Vec<String> = jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req.with_header("cookie", &header.join("; "))
        };
        self.call_as_is(req).await
    }

    /// As `call`, without adding the jar's cookies (another browser, or a crafted request).
    pub async fn call_as_is(&self, req: HttpRequest) -> HttpResponse {
        let event = serde_json::json!({
            "version": "2.0",
            "rawPath": req.path,
            "rawQueryString": req.raw_query,
            "headers": req.headers,
            "body": String::from_utf8(req.body.clone()).expect("test bodies are UTF-8"),
            "isBase64Encoded": false,
            "requestContext": {"requestId": uuid::Uuid::new_v4().to_string(), "domainName": req.domain_name, "http": {"method": req.method, "path": req.path}},
        });
        let out = adsync::runtime::dispatch(&self.linking, event, Invocation::with_timeout(30))
            .await
            .expect("an HTTP event always gets a response");
        let mut r = HttpResponse::new(out["statusCode"].as_u64().unwrap() as u16);
        for (k, v) in out["headers"].as_object().unwrap() {
            r.headers.insert(k.clone(), v.as_str().unwrap().to_string());
        }
        r.body = out["body"].as_str().unwrap_or_default().to_string();
        // API Gateway's payload 2.0 carries cookies in their own list: keep them like a browser.
        for c in out["cookies"].as_array().into_iter().flatten() {
            let c = c.as_str().unwrap().to_string();
            let pair = c.split(';').next().unwrap_or("");
            if let Some((k, v)) = pair.split_once('=') {
                let mut jar = self.cookies.lock().unwrap();
                jar.retain(|(name, _)| name != k);
                jar.push((k.to_string(), v.to_string()));
            }
            r.headers.insert("set-cookie".into(), c);
        }
        validate(&req, &r);
        r
    }

    pub fn with_key(&self, req: HttpRequest) -> HttpRequest {
        req.with_header("authorization", &format!("Bearer {}", self.api_key))
    }

    /// `POST /connections` → (connectionId, authorizeUrl).
    pub async fn create_connection(&self, region: &str) -> (String, String) {
        let r = self
            .call(
                self.with_key(HttpRequest::new("POST", "/connections"))
                    .with_header("content-type", "application/json")
                    .with_body(serde_json::json!({ "region": region }).to_string()),
            )
            .await;
        assert_eq!(r.status, 201, "POST /connections: {}", r.body);
        let v = r.json_body();
        (
            v["connectionId"].as_str().unwrap().to_string(),
            v["authorizeUrl"].as_str().unwrap().to_string(),
        )
    }

    /// Opens the consent page as `user` (optionally pressing "deny"); returns the query string
    /// the sandbox redirects back to the callback with.
    pub async fn consent(&self, authorize_url: &str, user: &str, deny: bool) -> String {
        let mut url = url::Url::parse(authorize_url).unwrap();
        url.query_pairs_mut().append_pair("sandbox_user", user);
        if deny {
            url.query_pairs_mut().append_pair("sandbox_deny", "1");
        }
        let r = self
            .browser
            .get(url)
            .send()
            .await
            .expect("opening the consent page");
        assert_eq!(
            r.status().as_u16(),
            302,
            "consent page: {}",
            r.text().await.unwrap_or_default()
        );
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        assert!(
            loc.starts_with(&self.redirect_uri),
            "consent redirected to {loc}"
        );
        url::Url::parse(&loc)
            .unwrap()
            .query()
            .unwrap_or("")
            .to_string()
    }

    pub async fn callback(&self, query: &str) -> HttpResponse {
        self.call(HttpRequest::new("GET", "/oauth/callback").with_query(query))
            .await
    }

    /// Follows the callback's 303 to the account list.
    pub async fn follow(&self, r: &HttpResponse) -> HttpResponse {
        assert_eq!(
            r.status, 303,
            "expected a redirect to the account list: {}",
            r.body
        );
        let loc = &r.headers["location"];
        let query = loc
            .strip_prefix("callback?")
            .unwrap_or_else(|| panic!("unexpected location {loc}"));
        self.callback(query).await
    }

    pub async fn confirm(&self, csrf: &str, advertiser_id: &str) -> HttpResponse {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("csrf", csrf)
            .append_pair("advertiserId", advertiser_id)
            .finish();
        self.call(
            HttpRequest::new("POST", "/oauth/confirm")
                .with_header("content-type", "application/x-www-form-urlencoded")
                .with_body(body),
        )
        .await
    }

    pub fn secret_name(&self, connection_id: &str) -> String {
        format!("{}{connection_id}", self.prefix)
    }

    pub async fn token_secret(&self, connection_id: &str) -> Option<serde_json::Value> {
        self.secrets
            .get_json::<serde_json::Value>(&self.secret_name(connection_id))
            .await
            .expect("reading the token secret from moto")
    }
}

/// The value of the hidden `csrf` field of an account list page.
pub fn csrf_of(page: &str) -> String {
    attr_after(page, r#"name="csrf" value=""#).expect("the page carries a csrf field")
}

/// The advertiser ids offered on an account list page, in order.
pub fn advertiser_ids(page: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = page;
    let needle = r#"name="advertiserId" value=""#;
    while let Some(i) = rest.find(needle) {
        rest = &rest[i + needle.len()..];
        out.push(rest[..rest.find('"').unwrap()].to_string());
    }
    out
}

fn attr_after(page: &str, needle: &str) -> Option<String> {
    let i = page.find(needle)? + needle.len();
    let rest = &page[i..];
    Some(rest[..rest.find('"')?].to_string())
}

/// The `<h1>` of a page.
pub fn title_of(page: &str) -> String {
    let i = page.find("<h1").expect("page has a title");
    let rest = &page[i..];
    let start = rest.find('>').unwrap() + 1;
    rest[start..rest.find("</h1>").unwrap()].to_string()
}

/// A buffer that collects every log line written while a test runs.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Captures every log line of this test process (JSON, as in production; debug level for adsync,
/// info for everything else) into one buffer, from the first call on. A process-wide subscriber is
/// used because a thread-scoped one misses callsites first hit by a parallel test (tracing
/// caches each callsite's interest); searching every test's lines is only stricter.
pub fn capture_logs() -> LogBuffer {
    static BUF: OnceLock<LogBuffer> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = LogBuffer::default();
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,adsync=trace"))
            .with_writer(buf.clone())
            .try_init()
            .expect("no other global log subscriber in the linking tests");
        buf
    })
    .clone()
}

/// Every answer the tests receive must match `openapi.yaml` (405s are left out of the spec:
/// API Gateway routes only the declared methods).
pub fn validate(req: &HttpRequest, resp: &HttpResponse) {
    if resp.status != 405 {
        adsync_tests::openapi::assert_http_response_valid(&req.method, &req.path, resp);
    }
}
