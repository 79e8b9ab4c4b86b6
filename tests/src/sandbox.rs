//! `SandboxAdmin`: the Rust client of the Amazon sandbox's admin API (docs/interfaces.md §4,
//! docs/sandbox.md). Every integration test uses it to create its own LwA client, user, profiles
//! and advertisers with fresh random ids, to inject faults, and to see what "Amazon" received.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const DEFAULT_URL: &str = "http://127.0.0.1:9400";
/// Seeded LwA client (any redirect URI).
pub const SEED_CLIENT_ID: &str = "amzn1.application-oa2-client.adsynclocal";
pub const SEED_CLIENT_SECRET: &str = "adsync-local-client-secret";
/// Seeded user with one agency profile per region, two advertisers each.
pub const SEED_USER: &str = "sandbox-user";
/// Seeded user whose agency profiles have no advertisers.
pub const SEED_EMPTY_USER: &str = "sandbox-empty";

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "the Amazon sandbox at {url} is not reachable ({message}); start it with \
         `cargo build -p adsync-sandbox && target/debug/amazon-sandbox --port 9400`"
    )]
    Unreachable { url: String, message: String },
    #[error("the Amazon sandbox answered {status} to {what}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("the Amazon sandbox's answer to {what} was not understood: {message}")]
    Decode { what: String, message: String },
}

/// An LwA client registered in the sandbox.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LwaClient {
    pub client_id: String,
    pub client_secret: String,
    /// Empty = any redirect URI is allowed.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Each refresh answers a new refresh token and revokes the one used.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rotate_refresh_tokens: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SandboxAdvertiser {
    pub advertiser_id: i64,
    pub name: String,
    pub currency: String,
    pub country: String,
    pub timezone: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SandboxProfile {
    pub profile_id: i64,
    pub country_code: String,
    pub currency_code: String,
    pub timezone: String,
    /// `agency` for DSP / Data Provider accounts.
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub advertisers: Vec<SandboxAdvertiser>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SandboxUser {
    pub user_id: String,
    pub profiles: Vec<SandboxProfile>,
}

impl SandboxUser {
    /// A user with one agency profile in `country`/`currency` holding `advertisers` advertisers,
    /// all with fresh random ids.
    pub fn random(country: &str, currency: &str, advertisers: usize) -> Self {
        let profile_id = random_id(16);
        SandboxUser {
            user_id: format!("user-{}", uuid::Uuid::new_v4().simple()),
            profiles: vec![SandboxProfile {
                profile_id,
                country_code: country.to_string(),
                currency_code: currency.to_string(),
                timezone: "America/Los_Angeles".to_string(),
                kind: "agency".to_string(),
                name: format!("Test DSP {profile_id}"),
                advertisers: (0..advertisers)
                    .map(|_| {
                        let id = random_id(13);
                        SandboxAdvertiser {
                            advertiser_id: id,
                            name: format!("Test advertiser {id}"),
                            currency: currency.to_string(),
                            country: country.to_string(),
                            timezone: "America/Los_Angeles".to_string(),
                        }
                    })
                    .collect(),
            }],
        }
    }

    /// The first profile (panics when the user has none: a test set-up bug).
    pub fn profile(&self) -> &SandboxProfile {
        &self.profiles[0]
    }

    /// The first advertiser of the first profile.
    pub fn advertiser(&self) -> &SandboxAdvertiser {
        &self.profiles[0].advertisers[0]
    }
}

/// A fresh client + user + refresh token: what a linked login needs.
#[derive(Clone, Debug)]
pub struct SandboxLogin {
    pub client: LwaClient,
    pub user: SandboxUser,
    pub refresh_token: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FaultMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FaultAction {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub drop: bool,
}

/// A fault rule; build with `FaultSpec::status(429).retry_after(1).path_prefix("/v2/dp").times(2)`.
/// Always scope a fault to your own `client_id` or `account_id` so parallel tests are unaffected.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FaultSpec {
    #[serde(rename = "match")]
    pub matcher: FaultMatch,
    pub action: FaultAction,
    /// Requests it applies to; `None` = until removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub times: Option<u32>,
}

impl FaultSpec {
    fn with(action: FaultAction) -> Self {
        FaultSpec {
            matcher: FaultMatch::default(),
            action,
            times: Some(1),
        }
    }
    /// Answer with this status (default body: the shape the real service uses).
    pub fn status(status: u16) -> Self {
        Self::with(FaultAction {
            status: Some(status),
            ..Default::default()
        })
    }
    /// Delay the request, then serve it normally.
    pub fn delay_ms(ms: u64) -> Self {
        Self::with(FaultAction {
            delay_ms: Some(ms),
            ..Default::default()
        })
    }
    /// Close the connection without an answer.
    pub fn drop_connection() -> Self {
        Self::with(FaultAction {
            drop: true,
            ..Default::default()
        })
    }
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.action.retry_after = Some(secs);
        self
    }
    pub fn body(mut self, body: Value) -> Self {
        self.action.body = Some(body);
        self
    }
    /// Applies to this many requests (default 1).
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }
    /// Applies until removed.
    pub fn forever(mut self) -> Self {
        self.times = None;
        self
    }
    pub fn method(mut self, m: &str) -> Self {
        self.matcher.method = Some(m.to_string());
        self
    }
    pub fn path_prefix(mut self, p: &str) -> Self {
        self.matcher.path_prefix = Some(p.to_string());
        self
    }
    pub fn client_id(mut self, c: &str) -> Self {
        self.matcher.client_id = Some(c.to_string());
        self
    }
    /// Matches the `Amazon-Ads-AccountId` or `Amazon-Advertising-API-Scope` header.
    pub fn account_id(mut self, a: impl ToString) -> Self {
        self.matcher.account_id = Some(a.to_string());
        self
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventsDump {
    /// Every accepted event in arrival order, repeats included.
    pub events: Vec<Value>,
    pub counts_by_event_id: HashMap<String, u64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminAudience {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub advertiser_id: i64,
    pub metadata: Value,
    pub member_count: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    /// Epoch milliseconds (snake_case on the wire, as docs/interfaces.md §4 has it).
    #[serde(rename = "at_ms")]
    pub at_ms: i64,
    pub method: String,
    pub path: String,
    /// 0 = dropped by a fault.
    pub status: u16,
    pub client_id: Option<String>,
    pub account_id: Option<String>,
    pub bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_tps: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_tps: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token_ttl_secs: Option<u64>,
}

/// A random positive id with `digits` decimal digits (2..=18).
pub fn random_id(digits: u32) -> i64 {
    let digits = digits.clamp(2, 18);
    let low = 10i64.pow(digits - 1);
    let span = (9 * low) as u128;
    low + (uuid::Uuid::new_v4().as_u128() % span) as i64
}

#[derive(Clone, Debug)]
pub struct SandboxAdmin {
    base: String,
    http: reqwest::Client,
    /// For the consent page: its 302 is the answer, not something to follow.
    no_redirect: reqwest::Client,
}

impl SandboxAdmin {
    pub fn new(base_url: impl Into<String>) -> Self {
        let base: String = base_url.into();
        SandboxAdmin {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            no_redirect: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
        }
    }

    /// `AMAZON_ADS_API_URL`, else `SANDBOX_URL`, else `http://127.0.0.1:9400`.
    pub fn from_env() -> Self {
        let url = std::env::var("AMAZON_ADS_API_URL")
            .or_else(|_| std::env::var("SANDBOX_URL"))
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| DEFAULT_URL.to_string());
        Self::new(url)
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }
    pub fn consent_url(&self) -> String {
        format!("{}/ap/oa", self.base)
    }
    pub fn token_url(&self) -> String {
        format!("{}/auth/o2/token", self.base)
    }

    async fn send(&self, what: &str, req: reqwest::RequestBuilder) -> Result<Value, SandboxError> {
        let resp = req.send().await.map_err(|e| SandboxError::Unreachable {
            url: self.base.clone(),
            message: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| SandboxError::Unreachable {
            url: self.base.clone(),
            message: e.to_string(),
        })?;
        if !(200..300).contains(&status) {
            return Err(SandboxError::Status {
                what: what.to_string(),
                status,
                body: text,
            });
        }
        serde_json::from_str(&text).map_err(|e| SandboxError::Decode {
            what: what.to_string(),
            message: e.to_string(),
        })
    }

    async fn post(&self, path: &str, body: &impl Serialize) -> Result<Value, SandboxError> {
        let req = self.http.post(format!("{}{path}", self.base)).json(body);
        self.send(&format!("POST {path}"), req).await
    }

    async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, SandboxError> {
        let req = self.http.get(format!("{}{path}", self.base)).query(query);
        self.send(&format!("GET {path}"), req).await
    }

    fn decode<T: serde::de::DeserializeOwned>(what: &str, v: Value) -> Result<T, SandboxError> {
        serde_json::from_value(v).map_err(|e| SandboxError::Decode {
            what: what.to_string(),
            message: e.to_string(),
        })
    }

    /// Plays the user on the consent page: opens `authorize_url` (as adsync built it) as
    /// `user_id` (default `sandbox-user`), approving or denying, and returns the `Location` the
    /// browser would be sent to (the redirect URI with `code`/`state` or `error`/`state`).
    pub async fn consent(
        &self,
        authorize_url: &str,
        user_id: Option<&str>,
        deny: bool,
    ) -> Result<String, SandboxError> {
        let mut url = reqwest::Url::parse(authorize_url).map_err(|e| SandboxError::Decode {
            what: "authorize URL".into(),
            message: e.to_string(),
        })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(u) = user_id {
                q.append_pair("sandbox_user", u);
            }
            if deny {
                q.append_pair("sandbox_deny", "1");
            }
        }
        let resp =
            self.no_redirect
                .get(url)
                .send()
                .await
                .map_err(|e| SandboxError::Unreachable {
                    url: self.base.clone(),
                    message: e.to_string(),
                })?;
        let status = resp.status().as_u16();
        match resp.headers().get("location").and_then(|v| v.to_str().ok()) {
            Some(loc) if status == 302 => Ok(loc.to_string()),
            _ => Err(SandboxError::Status {
                what: "GET /ap/oa".into(),
                status,
                body: resp.text().await.unwrap_or_default(),
            }),
        }
    }

    /// Ok when the sandbox answers `GET /admin/health`.
    pub async fn health(&self) -> Result<(), SandboxError> {
        self.get("/admin/health", &[]).await.map(|_| ())
    }

    pub async fn register_client(&self, c: &LwaClient) -> Result<(), SandboxError> {
        self.post("/admin/clients", c).await.map(|_| ())
    }

    /// Registers a fresh random LwA client (any redirect URI).
    pub async fn new_client(&self) -> Result<LwaClient, SandboxError> {
        let c = LwaClient {
            client_id: format!(
                "amzn1.application-oa2-client.test{}",
                uuid::Uuid::new_v4().simple()
            ),
            client_secret: format!("secret-{}", uuid::Uuid::new_v4().simple()),
            redirect_uris: vec![],
            rotate_refresh_tokens: false,
        };
        self.register_client(&c).await?;
        Ok(c)
    }

    /// Creates the user (or replaces its profiles).
    pub async fn register_user(&self, u: &SandboxUser) -> Result<(), SandboxError> {
        self.post("/admin/users", u).await.map(|_| ())
    }

    /// Registers `SandboxUser::random(country, currency, advertisers)`.
    pub async fn new_user(
        &self,
        country: &str,
        currency: &str,
        advertisers: usize,
    ) -> Result<SandboxUser, SandboxError> {
        let u = SandboxUser::random(country, currency, advertisers);
        self.register_user(&u).await?;
        Ok(u)
    }

    /// A refresh token for the user and client, skipping the browser flow.
    pub async fn refresh_token(
        &self,
        user_id: &str,
        client_id: &str,
    ) -> Result<String, SandboxError> {
        let path = format!("/admin/users/{user_id}/refresh-token");
        let v = self
            .post(&path, &serde_json::json!({"clientId": client_id}))
            .await?;
        v.get("refresh_token")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| SandboxError::Decode {
                what: path,
                message: "no refresh_token".into(),
            })
    }

    /// Fresh client + US/USD user with `advertisers` advertisers + refresh token.
    pub async fn new_login(&self, advertisers: usize) -> Result<SandboxLogin, SandboxError> {
        let client = self.new_client().await?;
        let user = self.new_user("US", "USD", advertisers).await?;
        let refresh_token = self.refresh_token(&user.user_id, &client.client_id).await?;
        Ok(SandboxLogin {
            client,
            user,
            refresh_token,
        })
    }

    /// The user's refresh tokens now answer `invalid_grant`.
    pub async fn revoke(&self, user_id: &str) -> Result<(), SandboxError> {
        self.post(
            &format!("/admin/users/{user_id}/revoke"),
            &serde_json::json!({}),
        )
        .await
        .map(|_| ())
    }

    /// Every access token issued to the user so far now answers 401.
    pub async fn expire_access_tokens(&self, user_id: &str) -> Result<(), SandboxError> {
        self.post(
            &format!("/admin/users/{user_id}/expire-access-tokens"),
            &serde_json::json!({}),
        )
        .await
        .map(|_| ())
    }

    /// Registers a fault; returns its id.
    pub async fn add_fault(&self, f: &FaultSpec) -> Result<String, SandboxError> {
        let v = self.post("/admin/faults", f).await?;
        v.get("id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| SandboxError::Decode {
                what: "POST /admin/faults".into(),
                message: "no id".into(),
            })
    }

    pub async fn remove_fault(&self, id: &str) -> Result<(), SandboxError> {
        let path = format!("/admin/faults/{id}");
        let req = self.http.delete(format!("{}{path}", self.base));
        self.send(&format!("DELETE {path}"), req).await.map(|_| ())
    }

    /// Events accepted for the advertiser (account).
    pub async fn events(&self, account_id: i64) -> Result<EventsDump, SandboxError> {
        let v = self
            .get("/admin/events", &[("accountId", account_id.to_string())])
            .await?;
        Self::decode("GET /admin/events", v)
    }

    pub async fn audiences(&self, advertiser_id: i64) -> Result<Vec<AdminAudience>, SandboxError> {
        let mut v = self
            .get(
                "/admin/audiences",
                &[("advertiserId", advertiser_id.to_string())],
            )
            .await?;
        Self::decode("GET /admin/audiences", v["audiences"].take())
    }

    /// Members of the audience, sorted (`"COOKIE-abc"`, `"MAID-…"`, …).
    pub async fn members(&self, audience_id: i64) -> Result<Vec<String>, SandboxError> {
        let mut v = self
            .get(&format!("/admin/audiences/{audience_id}/members"), &[])
            .await?;
        Self::decode("GET /admin/audiences/{id}/members", v["members"].take())
    }

    /// Moves one audience's clock forward by `seconds` (its members' TTL expiry only).
    pub async fn advance_audience_clock(
        &self,
        audience_id: i64,
        seconds: u64,
    ) -> Result<(), SandboxError> {
        self.post(
            &format!("/admin/audiences/{audience_id}/clock"),
            &serde_json::json!({"advanceSeconds": seconds}),
        )
        .await
        .map(|_| ())
    }

    /// Logged non-admin requests, optionally filtered.
    pub async fn requests(
        &self,
        client_id: Option<&str>,
        path_prefix: Option<&str>,
    ) -> Result<Vec<RequestRecord>, SandboxError> {
        let mut q = Vec::new();
        if let Some(c) = client_id {
            q.push(("clientId", c.to_string()));
        }
        if let Some(p) = path_prefix {
            q.push(("pathPrefix", p.to_string()));
        }
        let mut v = self.get("/admin/requests", &q).await?;
        Self::decode("GET /admin/requests", v["requests"].take())
    }

    /// Global knobs; tests should not need this (it affects everyone using the sandbox).
    pub async fn set_config(&self, c: &SandboxConfig) -> Result<Value, SandboxError> {
        self.post("/admin/config", c).await
    }
}
