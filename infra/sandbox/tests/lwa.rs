//! Login with Amazon and account listing against an in-process sandbox.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn consent_query(client_id: &str, redirect: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut q = vec![
        ("client_id".to_string(), client_id.to_string()),
        (
            "scope".to_string(),
            "advertising::audiences advertising::campaign_management".to_string(),
        ),
        ("response_type".to_string(), "code".to_string()),
        ("redirect_uri".to_string(), redirect.to_string()),
        ("state".to_string(), "st4te-xyz".to_string()),
    ];
    for (k, v) in extra {
        q.push((k.to_string(), v.to_string()));
    }
    q
}

fn location(r: &reqwest::Response) -> url::Url {
    url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap()
}

fn param(u: &url::Url, k: &str) -> Option<String> {
    u.query_pairs()
        .find(|(a, _)| a == k)
        .map(|(_, v)| v.into_owned())
}

async fn get_code(env: &Env, client: &LwaClient, redirect: &str, user: &str) -> String {
    let r = env
        .http
        .get(env.url("/ap/oa"))
        .query(&consent_query(
            &client.client_id,
            redirect,
            &[("sandbox_user", user)],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let loc = location(&r);
    assert_eq!(param(&loc, "state").as_deref(), Some("st4te-xyz"));
    param(&loc, "code").expect("code")
}

async fn exchange(env: &Env, client: &LwaClient, code: &str, redirect: &str) -> reqwest::Response {
    env.http
        .post(env.url("/auth/o2/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect),
            ("client_id", &client.client_id),
            ("client_secret", &client.client_secret),
        ])
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn consent_approve_exchange_and_single_use() {
    let env = start().await;
    let mut client = env.admin.new_client().await.unwrap();
    client.redirect_uris = vec!["https://app.example/cb?x=1".into()];
    env.admin.register_client(&client).await.unwrap();
    let user = env.admin.new_user("US", "USD", 1).await.unwrap();

    let r = env
        .http
        .get(env.url("/ap/oa"))
        .query(&consent_query(
            &client.client_id,
            "https://app.example/cb?x=1",
            &[("sandbox_user", &user.user_id)],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let loc = location(&r);
    assert_eq!(loc.host_str(), Some("app.example"));
    assert_eq!(param(&loc, "x").as_deref(), Some("1"));
    assert_eq!(
        param(&loc, "scope").as_deref(),
        Some("advertising::audiences advertising::campaign_management")
    );
    let code = param(&loc, "code").unwrap();

    // redirect_uri must match the one the code was issued for.
    let r = exchange(&env, &client, &code, "https://app.example/other").await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");

    let r = exchange(&env, &client, &code, "https://app.example/cb?x=1").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["access_token"].as_str().unwrap().starts_with("Atza|"));
    assert!(v["refresh_token"].as_str().unwrap().starts_with("Atzr|"));
    assert_eq!(v["token_type"], "bearer");
    assert_eq!(v["expires_in"], 3600);

    // Single use.
    let r = exchange(&env, &client, &code, "https://app.example/cb?x=1").await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");

    // The access token belongs to the chosen user: their profile is listed.
    let access = v["access_token"].as_str().unwrap();
    let profiles: Value = env
        .http
        .get(env.url("/v2/profiles"))
        .bearer_auth(access)
        .header("Amazon-Advertising-API-ClientId", &client.client_id)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(profiles.as_array().unwrap().len(), 1);
    assert_eq!(
        profiles[0]["profileId"].as_i64(),
        Some(user.profile().profile_id)
    );
    assert_eq!(profiles[0]["accountInfo"]["type"], "agency");
}

#[tokio::test]
async fn consent_rejects_bad_requests_and_deny() {
    let env = start().await;
    let mut client = env.admin.new_client().await.unwrap();
    client.redirect_uris = vec!["https://app.example/cb".into()];
    env.admin.register_client(&client).await.unwrap();

    // Unknown client → error page, no redirect.
    let r = env
        .http
        .get(env.url("/ap/oa"))
        .query(&consent_query("amzn1.nope", "https://app.example/cb", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("location").is_none());

    // Redirect URI not allowed → error page.
    let r = env
        .http
        .get(env.url("/ap/oa"))
        .query(&consent_query(
            &client.client_id,
            "https://evil.example/cb",
            &[],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("location").is_none());

    // Unknown scope → invalid_scope redirect.
    let mut q = consent_query(&client.client_id, "https://app.example/cb", &[]);
    q[1].1 = "advertising::audiences profile".into();
    let r = env
        .http
        .get(env.url("/ap/oa"))
        .query(&q)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(
        param(&location(&r), "error").as_deref(),
        Some("invalid_scope")
    );

    // Deny.
    let r = env
        .http
        .get(env.url("/ap/oa"))
        .query(&consent_query(
            &client.client_id,
            "https://app.example/cb",
            &[("sandbox_deny", "1")],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let loc = location(&r);
    assert_eq!(param(&loc, "error").as_deref(), Some("access_denied"));
    assert!(param(&loc, "error_description").is_some());
    assert_eq!(param(&loc, "state").as_deref(), Some("st4te-xyz"));
    assert!(param(&loc, "code").is_none());
}

#[tokio::test]
async fn code_expires_after_five_minutes() {
    let env = start().await;
    let client = env.admin.new_client().await.unwrap();
    let code = get_code(&env, &client, "https://app.example/cb", SEED_USER).await;
    env.sb.advance_clock(Duration::from_secs(301));
    let r = exchange(&env, &client, &code, "https://app.example/cb").await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");

    let code = get_code(&env, &client, "https://app.example/cb", SEED_USER).await;
    env.sb.advance_clock(Duration::from_secs(290));
    let r = exchange(&env, &client, &code, "https://app.example/cb").await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn token_endpoint_rules() {
    let env = start().await;
    let login = env.admin.new_login(1).await.unwrap();
    let c = &login.client;
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", login.refresh_token.as_str()),
        ("client_id", c.client_id.as_str()),
        ("client_secret", c.client_secret.as_str()),
    ];

    // An Authorization header is refused.
    let r = env
        .http
        .post(env.url("/auth/o2/token"))
        .bearer_auth("Atza|whatever")
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");

    // JSON instead of a form → Malformed request.
    let r = env
        .http
        .post(env.url("/auth/o2/token"))
        .json(&serde_json::json!({"grant_type": "refresh_token"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "invalid_request");
    assert_eq!(v["error_description"], "Malformed request");

    // Wrong secret → 401 invalid_client.
    let r = env
        .http
        .post(env.url("/auth/o2/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", login.refresh_token.as_str()),
            ("client_id", c.client_id.as_str()),
            ("client_secret", "wrong"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client");

    // Refresh returns the same refresh token and a new access token.
    let r = env.refresh(c, &login.refresh_token).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["refresh_token"].as_str(),
        Some(login.refresh_token.as_str())
    );
    assert!(v["access_token"].as_str().unwrap().starts_with("Atza|"));

    // Bound to its client: another (valid) client cannot use it.
    let other = env.admin.new_client().await.unwrap();
    let r = env.refresh(&other, &login.refresh_token).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");

    // Unknown token.
    let r = env.refresh(c, "Atzr|nope").await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");

    // Revoked → invalid_grant.
    env.admin.revoke(&login.user.user_id).await.unwrap();
    let r = env.refresh(c, &login.refresh_token).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
}

#[tokio::test]
async fn ads_api_auth_and_expiry() {
    let env = start().await;
    let c = env.caller(1).await;
    let ok = env
        .ads(reqwest::Method::GET, "/v2/profiles", &c)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok.headers().contains_key("x-amzn-requestid"));

    // Wrong ClientId header.
    let r = env
        .http
        .get(env.url("/v2/profiles"))
        .bearer_auth(&c.access)
        .header("Amazon-Advertising-API-ClientId", "amzn1.other")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "UNAUTHORIZED");
    assert_eq!(v["details"], "Authentication failed");
    assert!(v["requestId"].is_string());

    // No token.
    let r = env
        .http
        .get(env.url("/v2/profiles"))
        .header("Amazon-Advertising-API-ClientId", c.client_id())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Expired by admin; a refreshed token works again.
    env.admin
        .expire_access_tokens(&c.login.user.user_id)
        .await
        .unwrap();
    let r = env
        .ads(reqwest::Method::GET, "/v2/profiles", &c)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let fresh = env
        .access_token(&c.login.client, &c.login.refresh_token)
        .await;
    let c2 = Caller {
        login: c.login.clone(),
        access: fresh,
    };
    let r = env
        .ads(reqwest::Method::GET, "/v2/profiles", &c2)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Expired by time (one hour).
    env.sb.advance_clock(Duration::from_secs(3601));
    let r = env
        .ads(reqwest::Method::GET, "/v2/profiles", &c2)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn advertisers_scope_and_paging() {
    let env = start().await;
    let c = env.caller(3).await;
    let other = env.caller(1).await;

    let r = env
        .http
        .get(env.url("/dsp/advertisers"))
        .bearer_auth(&c.access)
        .header("Amazon-Advertising-API-ClientId", c.client_id())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["details"],
        "Scope header is missing"
    );

    let r = env
        .http
        .get(env.url("/dsp/advertisers"))
        .bearer_auth(&c.access)
        .header("Amazon-Advertising-API-ClientId", c.client_id())
        .header(
            "Amazon-Advertising-API-Scope",
            other.profile_id().to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["details"],
        "Not authorized to access scope"
    );

    for bad in ["0", "101", "x"] {
        let r = env
            .ads(
                reqwest::Method::GET,
                &format!("/dsp/advertisers?count={bad}"),
                &c,
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "count={bad}");
    }

    let mut seen = Vec::new();
    let mut start_index = 0;
    loop {
        let v: Value = env
            .ads(
                reqwest::Method::GET,
                &format!("/dsp/advertisers?startIndex={start_index}&count=2"),
                &c,
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["totalResults"], 3);
        let page = v["response"].as_array().unwrap().clone();
        if page.is_empty() {
            break;
        }
        for a in &page {
            let id = a["advertiserId"]
                .as_str()
                .expect("advertiserId is a string");
            assert!(id.bytes().all(|b| b.is_ascii_digit()));
            assert_eq!(a["currency"], "USD");
            seen.push(id.parse::<i64>().unwrap());
        }
        start_index += page.len();
    }
    let want: Vec<i64> = c
        .login
        .user
        .profile()
        .advertisers
        .iter()
        .map(|a| a.advertiser_id)
        .collect();
    assert_eq!(seen, want);
}

#[tokio::test]
async fn seeded_data_is_there() {
    let env = start().await;
    let client = LwaClient {
        client_id: SEED_CLIENT_ID.into(),
        client_secret: SEED_CLIENT_SECRET.into(),
        redirect_uris: vec![],
        rotate_refresh_tokens: false,
    };
    let code = get_code(&env, &client, "http://127.0.0.1:9000/cb", SEED_USER).await;
    let r = exchange(&env, &client, &code, "http://127.0.0.1:9000/cb").await;
    let access = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let profiles: Value = env
        .http
        .get(env.url("/v2/profiles"))
        .bearer_auth(&access)
        .header("Amazon-Advertising-API-ClientId", SEED_CLIENT_ID)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let countries: Vec<&str> = profiles
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["countryCode"].as_str().unwrap())
        .collect();
    assert_eq!(countries, ["US", "UK", "JP"]);
}

#[tokio::test]
async fn admin_consent_helper_plays_the_user() {
    let env = start().await;
    let client = env.admin.new_client().await.unwrap();
    let user = env.admin.new_user("US", "USD", 1).await.unwrap();
    let mut authorize = url::Url::parse(&env.admin.consent_url()).unwrap();
    authorize.query_pairs_mut().extend_pairs(consent_query(
        &client.client_id,
        "https://app.example/cb",
        &[],
    ));
    let loc = env
        .admin
        .consent(authorize.as_str(), Some(&user.user_id), false)
        .await
        .unwrap();
    let loc = url::Url::parse(&loc).unwrap();
    let code = param(&loc, "code").unwrap();
    let r = exchange(&env, &client, &code, "https://app.example/cb").await;
    assert_eq!(r.status(), 200);

    let loc = env
        .admin
        .consent(authorize.as_str(), None, true)
        .await
        .unwrap();
    assert_eq!(
        param(&url::Url::parse(&loc).unwrap(), "error").as_deref(),
        Some("access_denied")
    );

    // An unknown client gets the error page, reported as an error.
    let mut bad = url::Url::parse(&env.admin.consent_url()).unwrap();
    bad.query_pairs_mut()
        .extend_pairs(consent_query("amzn1.nope", "https://app.example/cb", &[]));
    let err = env
        .admin
        .consent(bad.as_str(), None, false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, SandboxError::Status { status: 400, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn admin_client_says_when_the_sandbox_is_down() {
    let err = SandboxAdmin::new("http://127.0.0.1:1")
        .health()
        .await
        .unwrap_err();
    assert!(matches!(err, SandboxError::Unreachable { .. }));
    assert!(
        err.to_string().contains("amazon-sandbox --port 9400"),
        "{err}"
    );
}
