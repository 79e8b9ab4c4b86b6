//! The Amazon client against the sandbox (Login with Amazon + Ads API) and moto (token secrets):
//! consent and code exchange, the token cache and refreshes, retries, timeouts, error mapping,
//! rate limits, and that no token, code or secret reaches a log line or an error.
//!
//! Needs the local stack (`.local/stack.env`) and the sandbox on `AMAZON_ADS_API_URL`.

use adsync::amazon::lwa::LwaError;
use adsync::amazon::tokens::TokenSecret;
use adsync::amazon::{
    AccountScope, AmazonError, AudienceFee, AudienceUpdate, LoginRef, NewAudience, Region,
    RetryPolicy, TokenGrant,
};
use adsync_tests::sandbox::{FaultSpec, RequestRecord};
use adsync_tests::stack::{self, TestLogin, fresh_login};
use std::time::{Duration, Instant};

const REDIRECT: &str = "https://app.example/oauth/callback?x=1";

async fn log(t: &TestLogin, path: &str) -> Vec<RequestRecord> {
    t.sandbox
        .requests(Some(t.client_id()), Some(path))
        .await
        .expect("sandbox request log")
}

async fn token_calls(t: &TestLogin) -> usize {
    log(t, "/auth/o2/token").await.len()
}

fn statuses(r: &[RequestRecord]) -> Vec<u16> {
    r.iter().map(|r| r.status).collect()
}

/// Follows the consent URL as the user's browser would (without following the redirect) and
/// returns the `code` from the `Location` header, checking the `state` came back.
async fn consent_code(t: &TestLogin, state: &str) -> String {
    let url = format!(
        "{}&sandbox_user={}",
        t.client
            .authorize_url(Region::NA, REDIRECT, state)
            .await
            .unwrap(),
        t.user().user_id
    );
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = browser.get(&url).send().await.expect("consent page");
    assert_eq!(
        resp.status().as_u16(),
        302,
        "consent answer: {:?}",
        resp.text().await
    );
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let loc = url::Url::parse(&location).unwrap();
    assert!(
        location.starts_with("https://app.example/oauth/callback?"),
        "{location}"
    );
    let q: std::collections::HashMap<_, _> = loc.query_pairs().into_owned().collect();
    assert_eq!(q.get("state").map(String::as_str), Some(state));
    assert_eq!(q.get("x").map(String::as_str), Some("1"));
    q.get("code").cloned().expect("code in the redirect")
}

fn new_login_ref() -> LoginRef {
    LoginRef {
        region: Region::NA,
        secret_name: stack::secret_name("tokens"),
    }
}

#[tokio::test]
async fn consent_exchange_save_and_no_secret_in_logs_or_errors() {
    let (logs, _guard) = stack::capture_logs();
    let t = fresh_login(1).await;

    let state = uuid::Uuid::new_v4().to_string();
    let code = consent_code(&t, &state).await;
    let grant = t
        .client
        .exchange_code(Region::NA, &code, REDIRECT)
        .await
        .expect("code exchange");
    assert!(grant.expires_in > 300);
    let refresh = grant.refresh_token.clone().expect("refresh token");
    assert!(!format!("{grant:?}").contains(grant.access_token.expose()));

    // Save: the secret holds the refresh token and the access token with its expiry.
    let login = new_login_ref();
    t.client.save_login(&login, &grant).await.unwrap();
    let stored: TokenSecret = t
        .secrets
        .get_json(&login.secret_name)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.region, Region::NA);
    assert_eq!(stored.refresh_token, refresh);
    assert_eq!(stored.access_token.as_ref(), Some(&grant.access_token));
    let now = chrono::Utc::now().timestamp();
    let exp = stored.access_token_expires_at.unwrap();
    assert!(
        (exp - now - grant.expires_in as i64).abs() <= 5,
        "{exp} vs {now}"
    );

    // The saved token is used as is: no further token call.
    let calls = token_calls(&t).await;
    assert_eq!(
        t.client.access_token(&login).await.unwrap(),
        grant.access_token
    );
    let profiles = t.client.list_profiles(&login).await.unwrap();
    assert!(profiles.iter().any(|p| p.profile_id == t.profile_id()));
    assert_eq!(token_calls(&t).await, calls);

    // A code is single use.
    let err = t
        .client
        .exchange_code(Region::NA, &code, REDIRECT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, AmazonError::Lwa(LwaError::InvalidGrant { .. })),
        "{err:?}"
    );
    let shown = format!("{err} {err:?} {}", err.user_message());
    assert!(!shown.contains(&code), "{shown}");

    // A wrong client secret is invalid_client, and the secret is nowhere in the error.
    let code2 = consent_code(&t, "state-2").await;
    let bad_secret = format!("wrong-{}", uuid::Uuid::new_v4());
    let bad = stack::amazon_client(&t.sandbox, &t.secrets, t.client_id(), &bad_secret);
    let err = bad
        .exchange_code(Region::NA, &code2, REDIRECT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, AmazonError::Lwa(LwaError::InvalidClient { .. })),
        "{err:?}"
    );
    let shown = format!("{err} {err:?} {}", err.user_message());
    assert!(
        !shown.contains(&bad_secret) && !shown.contains(&code2),
        "{shown}"
    );

    // Force a 401 and a refresh so the refresh path logs too.
    t.sandbox
        .expire_access_tokens(&t.user().user_id)
        .await
        .unwrap();
    t.client.list_profiles(&login).await.unwrap();
    let fresh = t.client.access_token(&login).await.unwrap();
    assert_ne!(fresh, grant.access_token);

    let out = logs.contents();
    assert!(
        out.contains("access token refreshed"),
        "the capture works: {out}"
    );
    for (what, secret) in [
        ("code", code.as_str()),
        ("second code", code2.as_str()),
        ("access token", grant.access_token.expose()),
        ("refreshed access token", fresh.expose()),
        ("refresh token", refresh.expose()),
        (
            "client secret",
            t.sandbox_login.client.client_secret.as_str(),
        ),
        ("wrong client secret", bad_secret.as_str()),
    ] {
        assert!(!out.contains(secret), "the {what} appears in the logs");
    }
    t.client.delete_login(&login).await.unwrap();
}

#[tokio::test]
async fn lists_profiles_and_pages_through_advertisers() {
    let t = fresh_login(230).await;
    let profiles = t.client.list_profiles(&t.login).await.unwrap();
    let p = profiles
        .iter()
        .find(|p| p.profile_id == t.profile_id())
        .expect("the user's profile");
    assert_eq!(p.account_type, "agency");
    assert_eq!(p.country_code, "US");
    assert_eq!(p.currency_code, "USD");

    let advertisers = t
        .client
        .list_advertisers(&t.login, t.profile_id())
        .await
        .unwrap();
    let mut got: Vec<i64> = advertisers.iter().map(|a| a.advertiser_id).collect();
    let mut want: Vec<i64> = t
        .user()
        .profile()
        .advertisers
        .iter()
        .map(|a| a.advertiser_id)
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert!(
        advertisers
            .iter()
            .all(|a| a.currency == "USD" && a.country == "US")
    );
    // 230 advertisers = three pages of at most 100.
    let pages = log(&t, "/dsp/advertisers").await;
    assert_eq!(pages.len(), 3, "{pages:?}");
}

#[tokio::test]
async fn access_token_comes_from_memory_then_the_secret_and_refreshes_near_expiry() {
    let t = fresh_login(1).await;
    // Secret without an access token: refresh once, write it back.
    let t1 = t.client.access_token(&t.login).await.unwrap();
    assert_eq!(token_calls(&t).await, 1);
    let stored = t.stored_secret().await.unwrap();
    assert_eq!(stored.access_token.as_ref(), Some(&t1));
    let now = chrono::Utc::now().timestamp();
    assert!(stored.access_token_expires_at.unwrap() > now + 3000);
    // Warm: memory.
    assert_eq!(t.client.access_token(&t.login).await.unwrap(), t1);
    assert_eq!(token_calls(&t).await, 1);

    // Cold memory (another secret name with the same content): taken from the secret.
    let copy = new_login_ref();
    t.secrets
        .put_json(&copy.secret_name, &stored)
        .await
        .unwrap();
    assert_eq!(t.client.access_token(&copy).await.unwrap(), t1);
    assert_eq!(token_calls(&t).await, 1);

    // Less than five minutes left (memory and secret): refreshed and written back.
    let near = TokenGrant {
        access_token: t1.clone(),
        refresh_token: Some(stored.refresh_token.clone()),
        expires_in: 240,
    };
    t.client.save_login(&t.login, &near).await.unwrap();
    let t2 = t.client.access_token(&t.login).await.unwrap();
    assert_ne!(t2, t1);
    assert_eq!(token_calls(&t).await, 2);
    let stored = t.stored_secret().await.unwrap();
    assert_eq!(stored.access_token.as_ref(), Some(&t2));
    assert!(stored.access_token_expires_at.unwrap() > chrono::Utc::now().timestamp() + 3000);
    t.client.list_profiles(&t.login).await.unwrap();

    // Cold memory with a nearly expired token in the secret: refreshed too.
    let cold = new_login_ref();
    let mut nearly = stored.clone();
    nearly.access_token_expires_at = Some(chrono::Utc::now().timestamp() + 100);
    t.secrets
        .put_json(&cold.secret_name, &nearly)
        .await
        .unwrap();
    let t3 = t.client.access_token(&cold).await.unwrap();
    assert_ne!(t3, t2);
    assert_eq!(token_calls(&t).await, 3);
    let cold_stored: TokenSecret = t
        .secrets
        .get_json(&cold.secret_name)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cold_stored.access_token.as_ref(), Some(&t3));

    for l in [&copy, &cold, &t.login] {
        t.client.delete_login(l).await.unwrap();
    }
}

#[tokio::test]
async fn concurrent_callers_refresh_once() {
    let t = fresh_login(1).await;
    let tokens = futures::future::join_all((0..8).map(|_| t.client.access_token(&t.login))).await;
    let first = tokens[0].as_ref().unwrap().clone();
    assert!(tokens.iter().all(|r| r.as_ref().unwrap() == &first));
    assert_eq!(token_calls(&t).await, 1);
}

#[tokio::test]
async fn a_401_refreshes_once_and_resends() {
    let t = fresh_login(1).await;
    t.client.list_profiles(&t.login).await.unwrap();
    let before = t.client.access_token(&t.login).await.unwrap();
    assert_eq!(token_calls(&t).await, 1);

    t.sandbox
        .expire_access_tokens(&t.user().user_id)
        .await
        .unwrap();
    let results = futures::future::join_all((0..4).map(|_| t.client.list_profiles(&t.login))).await;
    for r in results {
        r.expect("succeeds after one refresh");
    }
    // Four calls saw the 401; one refresh served them all.
    assert_eq!(token_calls(&t).await, 2);
    let s = statuses(&log(&t, "/v2/profiles").await);
    assert_eq!(s.iter().filter(|&&s| s == 401).count(), 4, "{s:?}");
    assert_eq!(s.iter().filter(|&&s| s == 200).count(), 5, "{s:?}");
    let after = t.client.access_token(&t.login).await.unwrap();
    assert_ne!(after, before);
    assert_eq!(t.stored_secret().await.unwrap().access_token, Some(after));
}

#[tokio::test]
async fn revoked_or_deleted_login_requires_reauthorization() {
    // Cold: the first refresh is refused.
    let t = fresh_login(1).await;
    t.sandbox.revoke(&t.user().user_id).await.unwrap();
    let err = t.client.access_token(&t.login).await.unwrap_err();
    assert_eq!(err, AmazonError::ReauthorizationRequired);
    assert!(!err.is_retryable());
    let m = err.user_message();
    assert!(
        m.starts_with("Amazon Error:") && m.contains("Relink"),
        "{m}"
    );
    let err = t.client.list_profiles(&t.login).await.unwrap_err();
    assert_eq!(err, AmazonError::ReauthorizationRequired);

    // Warm: a 401, then the refresh is refused.
    let t = fresh_login(1).await;
    t.client.list_profiles(&t.login).await.unwrap();
    t.sandbox.revoke(&t.user().user_id).await.unwrap();
    t.sandbox
        .expire_access_tokens(&t.user().user_id)
        .await
        .unwrap();
    let err = t.client.list_profiles(&t.login).await.unwrap_err();
    assert_eq!(err, AmazonError::ReauthorizationRequired);

    // Deleted: the secret is gone at once and the cache forgotten.
    let t = fresh_login(1).await;
    t.client.access_token(&t.login).await.unwrap();
    t.client.delete_login(&t.login).await.unwrap();
    assert!(t.stored_secret().await.is_none());
    let err = t.client.access_token(&t.login).await.unwrap_err();
    assert_eq!(err, AmazonError::ReauthorizationRequired);
}

#[tokio::test]
async fn a_429_is_retried_after_retry_after() {
    let t = fresh_login(1).await;
    t.client.access_token(&t.login).await.unwrap();
    t.sandbox
        .add_fault(
            &FaultSpec::status(429)
                .retry_after(1)
                .path_prefix("/v2/profiles")
                .client_id(t.client_id()),
        )
        .await
        .unwrap();
    let started = Instant::now();
    t.client.list_profiles(&t.login).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(1000));
    let r = log(&t, "/v2/profiles").await;
    assert_eq!(statuses(&r), [429, 200]);
    let gap = r[1].at_ms - r[0].at_ms;
    // fast_policy's own backoff is ≤ 20 ms: only Retry-After explains a 1 s gap.
    assert!(gap >= 1000, "retry came {gap} ms after the 429");

    // Throttled until the attempts run out: exactly max_attempts requests, then Throttled.
    let id = t
        .sandbox
        .add_fault(
            &FaultSpec::status(429)
                .retry_after(0)
                .path_prefix("/dsp/advertisers")
                .client_id(t.client_id())
                .forever(),
        )
        .await
        .unwrap();
    let err = t
        .client
        .list_advertisers(&t.login, t.profile_id())
        .await
        .unwrap_err();
    t.sandbox.remove_fault(&id).await.unwrap();
    assert!(matches!(err, AmazonError::Throttled { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(
        statuses(&log(&t, "/dsp/advertisers").await),
        [429, 429, 429]
    );
}

#[tokio::test]
async fn a_400_is_not_retried() {
    let t = fresh_login(1).await;
    let id = t
        .sandbox
        .add_fault(
            &FaultSpec::status(400)
                .path_prefix("/v2/profiles")
                .client_id(t.client_id())
                .forever(),
        )
        .await
        .unwrap();
    let err = t.client.list_profiles(&t.login).await.unwrap_err();
    t.sandbox.remove_fault(&id).await.unwrap();
    match &err {
        AmazonError::Rejected {
            status: 400,
            message,
            request_id,
        } => {
            assert!(!message.is_empty());
            assert!(request_id.is_some(), "{err:?}");
        }
        other => panic!("expected Rejected 400, got {other:?}"),
    }
    assert!(!err.is_retryable());
    assert_eq!(statuses(&log(&t, "/v2/profiles").await), [400]);
}

#[tokio::test]
async fn server_errors_are_retried_then_reported() {
    let t = fresh_login(1).await;
    t.client.access_token(&t.login).await.unwrap();
    t.sandbox
        .add_fault(
            &FaultSpec::status(503)
                .path_prefix("/v2/profiles")
                .client_id(t.client_id()),
        )
        .await
        .unwrap();
    t.client.list_profiles(&t.login).await.unwrap();
    assert_eq!(statuses(&log(&t, "/v2/profiles").await), [503, 200]);

    let id = t
        .sandbox
        .add_fault(
            &FaultSpec::status(500)
                .path_prefix("/dsp/advertisers")
                .client_id(t.client_id())
                .forever(),
        )
        .await
        .unwrap();
    let err = t
        .client
        .list_advertisers(&t.login, t.profile_id())
        .await
        .unwrap_err();
    t.sandbox.remove_fault(&id).await.unwrap();
    assert!(
        matches!(err, AmazonError::Server { status: 500, .. }),
        "{err:?}"
    );
    assert_eq!(
        statuses(&log(&t, "/dsp/advertisers").await),
        [500, 500, 500]
    );
}

#[tokio::test]
async fn timeouts_are_retried_then_reported() {
    let t = fresh_login(1).await;
    let client = t.client.clone().with_retry_policy(RetryPolicy {
        max_attempts: 2,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        request_timeout: Duration::from_millis(300),
    });
    client.access_token(&t.login).await.unwrap();

    // One slow answer: the retry succeeds.
    t.sandbox
        .add_fault(
            &FaultSpec::delay_ms(1500)
                .path_prefix("/v2/profiles")
                .client_id(t.client_id()),
        )
        .await
        .unwrap();
    let started = Instant::now();
    client.list_profiles(&t.login).await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1400),
        "one 300 ms timeout, then a quick answer: {took:?}"
    );

    // Always slow: Timeout after two attempts.
    let id = t
        .sandbox
        .add_fault(
            &FaultSpec::delay_ms(1500)
                .path_prefix("/dsp/advertisers")
                .client_id(t.client_id())
                .forever(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    let err = client
        .list_advertisers(&t.login, t.profile_id())
        .await
        .unwrap_err();
    let took = started.elapsed();
    t.sandbox.remove_fault(&id).await.unwrap();
    assert_eq!(err, AmazonError::Timeout);
    assert!(err.is_retryable());
    // Two attempts of 300 ms each (the sandbox does not log requests the client gave up on, so
    // the time is the evidence): one attempt would take ~300 ms, waiting for the answer 1.5 s.
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_millis(1400),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_dropped_connection_is_retried() {
    let t = fresh_login(1).await;
    t.client.access_token(&t.login).await.unwrap();
    t.sandbox
        .add_fault(
            &FaultSpec::drop_connection()
                .path_prefix("/v2/profiles")
                .client_id(t.client_id()),
        )
        .await
        .unwrap();
    t.client.list_profiles(&t.login).await.unwrap();
    assert_eq!(statuses(&log(&t, "/v2/profiles").await), [0, 200]);

    let id = t
        .sandbox
        .add_fault(
            &FaultSpec::drop_connection()
                .path_prefix("/dsp/advertisers")
                .client_id(t.client_id())
                .forever(),
        )
        .await
        .unwrap();
    let err = t
        .client
        .list_advertisers(&t.login, t.profile_id())
        .await
        .unwrap_err();
    t.sandbox.remove_fault(&id).await.unwrap();
    assert!(matches!(err, AmazonError::Network(_)), "{err:?}");
    assert_eq!(statuses(&log(&t, "/dsp/advertisers").await), [0, 0, 0]);
}

fn new_audience(advertiser_id: i64) -> NewAudience {
    NewAudience {
        name: format!("adsync test audience {}", uuid::Uuid::new_v4().simple()),
        description: "created by the amazon_client test".into(),
        advertiser_id,
        external_audience_id: format!("seg-{}", uuid::Uuid::new_v4().simple()),
        ttl: 2_592_000,
        data_source_country: vec!["US".into()],
        audience_fees: None,
    }
}

#[tokio::test]
async fn unknown_advertiser_is_account_not_found() {
    let t = fresh_login(1).await;
    let stranger = adsync_tests::sandbox::random_id(13);
    let scope = AccountScope {
        profile_id: t.profile_id(),
        advertiser_id: stranger,
    };
    let err = t
        .client
        .create_audience(&t.login, scope, &new_audience(stranger))
        .await
        .unwrap_err();
    match &err {
        AmazonError::AccountNotFound {
            advertiser_id,
            status,
            ..
        } => {
            assert_eq!(*advertiser_id, stranger);
            assert_eq!(*status, 401);
        }
        other => panic!("expected AccountNotFound, got {other:?}"),
    }
    let m = err.user_message();
    assert!(
        m.starts_with(&format!("Amazon Error: Account {stranger} was not found")),
        "{m}"
    );
    assert!(m.contains("not authorised") && m.contains("relink"), "{m}");
    // Not a token problem: no refresh, one request.
    assert_eq!(token_calls(&t).await, 1);
    assert_eq!(log(&t, "/v2/dp/audiencemetadata").await.len(), 1);

    // A 403 on an account call maps the same way.
    t.sandbox
        .add_fault(
            &FaultSpec::status(403)
                .path_prefix("/v2/dp/audience")
                .client_id(t.client_id()),
        )
        .await
        .unwrap();
    let err = t
        .client
        .patch_audiences(
            &t.login,
            AccountScope {
                profile_id: t.profile_id(),
                advertiser_id: t.advertiser_id(),
            },
            br#"{"patches":[]}"#.to_vec(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, AmazonError::AccountNotFound { status: 403, advertiser_id, .. } if advertiser_id == t.advertiser_id()),
        "{err:?}"
    );
}

#[tokio::test]
async fn audience_metadata_and_patches() {
    let t = fresh_login(1).await;
    let scope = AccountScope {
        profile_id: t.profile_id(),
        advertiser_id: t.advertiser_id(),
    };
    let new = new_audience(t.advertiser_id());
    let created = t
        .client
        .create_audience(&t.login, scope, &new)
        .await
        .unwrap();
    assert_eq!(created.name, new.name);
    assert_eq!(created.advertiser_id, t.advertiser_id());
    assert_eq!(created.external_audience_id, new.external_audience_id);
    let listed = t.sandbox.audiences(t.advertiser_id()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, created.id, "the id survives exactly");

    let got = t
        .client
        .get_audience(&t.login, scope, created.id)
        .await
        .unwrap();
    assert_eq!(got.id, created.id);
    assert_eq!(got.ttl, Some(2_592_000));

    let update = AudienceUpdate {
        description: "updated".into(),
        ttl: 86_400,
        data_source_country: vec!["US".into(), "CA".into()],
        audience_fees: Some(vec![AudienceFee {
            cpm_cents: 150,
            currency: "USD".into(),
        }]),
    };
    let updated = t
        .client
        .update_audience(&t.login, scope, created.id, &update)
        .await
        .unwrap();
    assert_eq!(updated.description, "updated");
    assert_eq!(updated.ttl, Some(86_400));
    assert_eq!(updated.audience_fees, update.audience_fees.clone().unwrap());

    // Metadata calls are spaced at least 1 s apart by the client (the sandbox enforces 1 TPS).
    let meta = log(&t, "/v2/dp/audiencemetadata").await;
    assert_eq!(statuses(&meta), [200, 200, 200], "{meta:?}");
    for w in meta.windows(2) {
        assert!(w[1].at_ms - w[0].at_ms >= 990, "{meta:?}");
    }

    // Missing audience: rejected (404), not an account problem. (Ids are sequential in the
    // sandbox; this one is far beyond anything a test run creates.)
    let err = t
        .client
        .get_audience(&t.login, scope, created.id + 1_000_000_000_000)
        .await
        .unwrap_err();
    assert!(
        matches!(err, AmazonError::Rejected { status: 404, .. }),
        "{err:?}"
    );

    let body = serde_json::json!({"patches":[
        {"op":"add","path":"/COOKIE-abc/audiences","value":[created.id]},
        {"op":"add","path":"/MAID-6d92078a-8246-4ba4-ae5b-76104861e7dc/audiences","value":[created.id]}
    ]});
    let ack = t
        .client
        .patch_audiences(&t.login, scope, serde_json::to_vec(&body).unwrap())
        .await
        .unwrap();
    assert!(!ack.job_id.is_empty());
    assert!(ack.request_id.is_some());
    let members = t.sandbox.members(created.id).await.unwrap();
    assert_eq!(
        members,
        ["COOKIE-abc", "MAID-6d92078a-8246-4ba4-ae5b-76104861e7dc"]
    );

    // 413: never retried, the caller splits.
    t.sandbox
        .add_fault(
            &FaultSpec::status(413)
                .path_prefix("/v2/dp/audience")
                .client_id(t.client_id())
                .method("PATCH"),
        )
        .await
        .unwrap();
    let err = t
        .client
        .patch_audiences(&t.login, scope, serde_json::to_vec(&body).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, AmazonError::PayloadTooLarge { .. }),
        "{err:?}"
    );
    let patches = log(&t, "/v2/dp/audience").await;
    let patch_statuses: Vec<u16> = patches
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.status)
        .collect();
    assert_eq!(patch_statuses, [200, 413]);
}

#[tokio::test]
async fn events_are_mapped_per_index() {
    let t = fresh_login(1).await;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let event = |id: &str, time: &str| {
        serde_json::json!({
            "eventDescription": {"name": "purchase", "conversionType": "OFF_AMAZON_PURCHASES",
                                 "eventSource": "WEBSITE", "eventIngestionMethod": "SERVER_TO_SERVER"},
            "eventTime": time, "countryCode": "US", "eventId": id,
            "value": 10.5, "currencyCode": "USD", "unitsSold": 1,
            "matchKeys": [{"type": "EMAIL", "values": ["973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"]}]
        })
    };
    let ok1 = uuid::Uuid::new_v4().to_string();
    let ok2 = uuid::Uuid::new_v4().to_string();
    let body = serde_json::json!({"events": [event(&ok1, &now), event("bad-time", "not a time"), event(&ok2, &now)]});
    let out = t
        .client
        .create_events(
            &t.login,
            t.advertiser_id(),
            serde_json::to_vec(&body).unwrap(),
            3,
        )
        .await
        .unwrap();
    assert_eq!(out.accepted, [0, 2]);
    assert_eq!(out.rejected.len(), 1);
    assert_eq!(out.rejected[0].0, 1);
    assert!(!out.rejected[0].1.is_empty());
    assert!(out.missing.is_empty());
    let dump = t.sandbox.events(t.advertiser_id()).await.unwrap();
    assert_eq!(dump.counts_by_event_id.get(&ok1), Some(&1));
    assert_eq!(dump.counts_by_event_id.get(&ok2), Some(&1));

    // An advertiser the login cannot reach.
    let stranger = adsync_tests::sandbox::random_id(13);
    let err = t
        .client
        .create_events(&t.login, stranger, serde_json::to_vec(&body).unwrap(), 3)
        .await
        .unwrap_err();
    assert!(
        matches!(err, AmazonError::AccountNotFound { advertiser_id, .. } if advertiser_id == stranger),
        "{err:?}"
    );
    assert!(
        err.user_message()
            .starts_with(&format!("Amazon Error: Account {stranger} was not found"))
    );
}
