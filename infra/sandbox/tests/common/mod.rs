//! Shared helpers for the sandbox's own tests: an in-process sandbox on an ephemeral port, the
//! `SandboxAdmin` client (compiled from tests/src/sandbox.rs so it is tested here too), and
//! shortcuts to a logged-in caller.
#![allow(dead_code)]

#[path = "../../../../tests/src/sandbox.rs"]
pub mod admin;

pub use admin::*;
use adsync_sandbox::Sandbox;
use reqwest::Client;
use serde_json::Value;

pub struct Env {
    pub sb: Sandbox,
    pub base: String,
    pub admin: SandboxAdmin,
    pub http: Client,
}

pub async fn start() -> Env {
    let sb = Sandbox::new();
    let (base, _) = adsync_sandbox::spawn_for_tests(sb.clone())
        .await
        .expect("bind");
    Env {
        admin: SandboxAdmin::new(base.clone()),
        sb,
        base,
        http: Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    }
}

/// A caller with a live access token.
pub struct Caller {
    pub login: SandboxLogin,
    pub access: String,
}

impl Caller {
    pub fn client_id(&self) -> &str {
        &self.login.client.client_id
    }
    pub fn profile_id(&self) -> i64 {
        self.login.user.profile().profile_id
    }
    pub fn advertiser_id(&self) -> i64 {
        self.login.user.advertiser().advertiser_id
    }
}

impl Env {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn refresh(&self, client: &LwaClient, refresh_token: &str) -> reqwest::Response {
        self.http
            .post(self.url("/auth/o2/token"))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
                ("client_id", &client.client_id),
                ("client_secret", &client.client_secret),
            ])
            .send()
            .await
            .unwrap()
    }

    pub async fn access_token(&self, client: &LwaClient, refresh_token: &str) -> String {
        let r = self.refresh(client, refresh_token).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        v["access_token"].as_str().unwrap().to_string()
    }

    /// Fresh client + user (one US profile, `advertisers` advertisers) + access token.
    pub async fn caller(&self, advertisers: usize) -> Caller {
        let login = self.admin.new_login(advertisers).await.unwrap();
        let access = self.access_token(&login.client, &login.refresh_token).await;
        Caller { login, access }
    }

    /// A request with the classic Ads API headers (Bearer, ClientId, Scope).
    pub fn ads(&self, method: reqwest::Method, path: &str, c: &Caller) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&c.access)
            .header("Amazon-Advertising-API-ClientId", c.client_id())
            .header("Amazon-Advertising-API-Scope", c.profile_id().to_string())
    }

    /// A Data Provider request with a JSON body text.
    pub fn dp(
        &self,
        method: reqwest::Method,
        path: &str,
        c: &Caller,
        body: String,
    ) -> reqwest::RequestBuilder {
        self.ads(method, path, c)
            .header("Content-Type", "application/json")
            .body(body)
    }

    /// An Events API request for the caller's first advertiser.
    pub fn events(&self, c: &Caller, body: String) -> reqwest::RequestBuilder {
        self.events_for(c, c.advertiser_id(), body)
    }

    /// An Events API request for any account id.
    pub fn events_for(&self, c: &Caller, account_id: i64, body: String) -> reqwest::RequestBuilder {
        self.http
            .post(self.url("/adsApi/v1/create/events"))
            .bearer_auth(&c.access)
            .header("Amazon-Ads-ClientId", c.client_id())
            .header("Amazon-Ads-AccountId", account_id.to_string())
            .header("Content-Type", "application/json")
            .body(body)
    }
}
