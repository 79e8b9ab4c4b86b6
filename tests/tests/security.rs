//! Security hardening against the local stack: scoped API keys on every function (403 naming the
//! missing scope, no other account revealed, filtered lists, 401 before routing, the key's name
//! on the request's log line), PKCE enforced by the sandbox, the browser-bound account list and a
//! forged `X-Forwarded-Host`, the cleanup schedule. (Sealed parked messages: `parked_sealed.rs`.)
//!
//! Needs the stack env (`set -a; . .local/stack.env; set +a`).

#[path = "linking_support/mod.rs"]
mod support;

use adsync::amazon::{AmazonError, LwaError, Region};
use adsync::http::auth::{ApiKeyAuth, ApiKeyEntry, ApiKeysSecret};
use adsync::http::scopes::authorize;
use adsync::http::{HttpRequest, HttpResponse};
use adsync::ingest::ConversionHandler;
use adsync::linking::{Linking, LinkingConfig};
use adsync::runtime::{Handler, Invocation};
use adsync::store::accounts::{AccountStatus, IntegratedAccount};
use adsync::store::secrets::SecretsStore;
use adsync_tests::conversions::{IngestFixture, purchase};
use adsync_tests::sandbox::random_id;
use serde_json::json;
use support::*;

const REDIRECT: &str = "http://127.0.0.1:9/oauth/callback";

/// One key of a test keys secret.
struct K<'a> {
    name: &'a str,
    key: String,
    scopes: Option<&'a [&'a str]>,
    accounts: Option<Vec<String>>,
}

fn key<'a>(name: &'a str, scopes: Option<&'a [&'a str]>, accounts: Option<Vec<String>>) -> K<'a> {
    K {
        name,
        key: format!("key-{name}-{}", uuid::Uuid::new_v4().simple()),
        scopes,
        accounts,
    }
}

/// Stores the keys' digests in a fresh secret; returns an `ApiKeyAuth` reading it.
async fn auth_with(secrets: &SecretsStore, keys: &[&K<'_>]) -> ApiKeyAuth {
    let name = adsync_tests::stack::secret_name("api-keys");
    let secret = ApiKeysSecret {
        keys: keys
            .iter()
            .map(|k| ApiKeyEntry {
                name: k.name.to_string(),
                sha256: ApiKeyAuth::digest(&k.key),
                scopes: k.scopes.map(|s| s.iter().map(|x| x.to_string()).collect()),
                accounts: k.accounts.clone(),
            })
            .collect(),
    };
    secrets.put_json(&name, &secret).await.unwrap();
    ApiKeyAuth::new(secrets.clone(), name)
}

fn bearer(req: HttpRequest, k: &K<'_>) -> HttpRequest {
    req.with_header("authorization", &format!("Bearer {}", k.key))
}

/// Through the Lambda runtime's dispatch (so its request log line is written).
async fn dispatch<H: Handler>(h: &H, req: &HttpRequest) -> HttpResponse {
    let event = json!({
        "version": "2.0", "rawPath": req.path, "rawQueryString": req.raw_query,
        "headers": req.headers, "body": String::from_utf8(req.body.clone()).unwrap(),
        "isBase64Encoded": false,
        "requestContext": {"requestId": uuid::Uuid::new_v4().to_string(), "http": {"method": req.method, "path": req.path}},
    });
    let out = adsync::runtime::dispatch(h, event, Invocation::with_timeout(30))
        .await
        .unwrap();
    let mut r = HttpResponse::new(out["statusCode"].as_u64().unwrap() as u16);
    for (k, v) in out["headers"].as_object().unwrap() {
        r.headers.insert(k.clone(), v.as_str().unwrap().to_string());
    }
    r.body = out["body"].as_str().unwrap_or_default().to_string();
    r
}

fn account(id: i64) -> IntegratedAccount {
    IntegratedAccount {
        account_id: id.to_string(),
        region: Region::NA,
        profile_id: random_id(15),
        advertiser_id: id,
        name: format!("Scoped {id}"),
        currency: "USD".into(),
        country: "US".into(),
        connection_id: "c-scoped".into(),
        token_secret: format!("adsync-test/tokens-scoped/{id}"),
        status: AccountStatus::Active,
        created_at: "2026-12-05T00:00:00.000Z".into(),
    }
}

fn assert_forbidden(r: &HttpResponse, names: &str, hides: &[&str]) {
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json_body()["error"]["code"], "forbidden", "{}", r.body);
    assert!(r.body.contains(names), "{names} not in {}", r.body);
    for h in hides {
        assert!(!r.body.contains(h), "{h} revealed in {}", r.body);
    }
}

#[tokio::test]
async fn linking_routes_follow_the_key_scopes_and_accounts() {
    let stack = stack().await;
    let logs = capture_logs();
    let rig = rig(&stack, REDIRECT).await;
    let (a, b) = (account(random_id(14)), account(random_id(14)));
    for x in [&a, &b] {
        rig.accounts.put_account(x).await.unwrap();
    }
    let only_a = key("only-a", None, Some(vec![a.account_id.clone()]));
    let reader = key("reader", Some(&["read"]), None);
    let admin = key("admin", None, None);
    let auth = auth_with(&rig.secrets, &[&only_a, &reader, &admin]).await;
    let linking = Linking::new(
        rig.linking.amazon().clone(),
        rig.accounts.clone(),
        auth,
        LinkingConfig {
            redirect_uri: REDIRECT.into(),
            token_secret_prefix: rig.prefix.clone(),
        },
    );

    // The list shows only the key's accounts.
    let list = HttpRequest::new("GET", "/accounts");
    let r = dispatch(&linking, &bearer(list.clone(), &only_a)).await;
    validate(&list, &r);
    assert_eq!(r.status, 200, "{}", r.body);
    let ids: Vec<String> = r.json_body()["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["accountId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, vec![a.account_id.clone()]);
    let r = dispatch(&linking, &bearer(list, &admin)).await;
    assert!(r.body.contains(&a.account_id) && r.body.contains(&b.account_id));

    // Another account's route: 403 naming that account only, and nothing changed.
    let del_b = HttpRequest::new("DELETE", &format!("/accounts/{}", b.account_id));
    let r = dispatch(&linking, &bearer(del_b.clone(), &only_a)).await;
    validate(&del_b, &r);
    assert_forbidden(&r, &b.account_id, &[&a.account_id]);
    // An account that does not exist answers the same (nothing is looked up).
    let ghost = HttpRequest::new("DELETE", &format!("/accounts/{}", random_id(14)));
    assert_eq!(
        dispatch(&linking, &bearer(ghost, &only_a)).await.status,
        403
    );
    assert_eq!(
        rig.accounts
            .get_account(&b.account_id)
            .await
            .unwrap()
            .unwrap()
            .status,
        AccountStatus::Active
    );

    // A read-only key cannot write; an account-restricted key cannot start a connection.
    let del_a = HttpRequest::new("DELETE", &format!("/accounts/{}", a.account_id));
    assert_forbidden(
        &dispatch(&linking, &bearer(del_a.clone(), &reader)).await,
        "accounts:admin",
        &[],
    );
    let conn = HttpRequest::new("POST", "/connections")
        .with_header("content-type", "application/json")
        .with_body(r#"{"region":"NA"}"#);
    assert_forbidden(
        &dispatch(&linking, &bearer(conn, &only_a)).await,
        "accounts",
        &[&a.account_id],
    );
    // Its own account: allowed.
    assert_eq!(
        dispatch(&linking, &bearer(del_a, &only_a)).await.status,
        200
    );

    // Authentication before routing: an unknown route without a key is 401, with one 404.
    let nope = HttpRequest::new("GET", "/nope");
    assert_eq!(dispatch(&linking, &nope).await.status, 401);
    assert_eq!(dispatch(&linking, &bearer(nope, &admin)).await.status, 404);
    // The browser steps stay open.
    let cb = HttpRequest::new("GET", "/oauth/callback").with_query("view=x");
    assert_eq!(dispatch(&linking, &cb).await.status, 404);

    // Audit: the key's name is on the request lines, the key never.
    let text = logs.contents();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"message\":\"request\"") && l.contains(&b.account_id))
        .collect();
    assert!(!lines.is_empty(), "no request line for the DELETE");
    assert!(
        lines.iter().all(|l| l.contains("\"key\":\"only-a\"")),
        "{lines:?}"
    );
    for k in [&only_a, &reader, &admin] {
        assert!(!text.contains(&k.key), "a key was logged");
    }
}

#[tokio::test]
async fn conversions_need_the_write_scope_and_the_account() {
    let f = IngestFixture::new().await;
    let own = f.account.account_id.clone();
    let other = random_id(14).to_string();
    let writer = key(
        "writer",
        Some(&["conversions:write"]),
        Some(vec![own.clone()]),
    );
    let elsewhere = key("elsewhere", None, Some(vec![other.clone()]));
    let reader = key("reader", Some(&["read"]), None);
    let auth = auth_with(&f.login.secrets, &[&writer, &elsewhere, &reader]).await;
    let h = ConversionHandler {
        ctx: f.handler.ctx.clone(),
        auth,
    };
    let body = json!({"events": [purchase("scoped", 1)]});
    let req = |k: &K<'_>| {
        let r = f.request(&body);
        let r = HttpRequest {
            headers: Default::default(),
            ..r
        }
        .with_header("content-type", "application/json");
        bearer(r, k)
    };
    let inv = || Invocation::with_timeout(60);

    let r = h.http(req(&reader), inv()).await;
    assert_forbidden(&r, "conversions:write", &[]);
    let r = h.http(req(&elsewhere), inv()).await;
    assert_forbidden(&r, &own, &[&other]);
    let ok = req(&writer);
    let r = h.http(ok.clone(), inv()).await;
    adsync_tests::openapi::assert_http_response_valid(&ok.method, &ok.path, &r);
    assert_eq!(r.status, 200, "{}", r.body);

    let nope = HttpRequest::new("GET", "/nope");
    assert_eq!(h.http(nope.clone(), inv()).await.status, 401);
    let r = h.http(bearer(nope, &writer), inv()).await;
    assert_eq!(
        r.status, 403,
        "an unlisted route needs the most restrictive rule"
    );
}

#[tokio::test]
async fn export_routes_are_not_per_account() {
    let aws = adsync_tests::stack::aws().await;
    let secrets = SecretsStore::new(aws.secrets.clone());
    let reader = key("reader", Some(&["read"]), None);
    let one = key("one", None, Some(vec!["123".into()]));
    let seg = key("seg", Some(&["segments:write", "read"]), None);
    let auth = auth_with(&secrets, &[&reader, &one, &seg]).await;
    let at = |m: &str, p: &str| HttpRequest::new(m, p);

    assert!(
        authorize(&auth, &bearer(at("GET", "/destinations"), &reader))
            .await
            .is_ok()
    );
    let denied = |r: Result<_, HttpResponse>| r.expect_err("refused");
    assert_forbidden(
        &denied(authorize(&auth, &bearer(at("PUT", "/segments/s1"), &reader)).await),
        "segments:write",
        &[],
    );
    assert_forbidden(
        &denied(authorize(&auth, &bearer(at("POST", "/qualifications"), &reader)).await),
        "segments:write",
        &[],
    );
    // A key restricted to accounts cannot use routes that are not per account.
    assert_forbidden(
        &denied(authorize(&auth, &bearer(at("GET", "/destinations/d1"), &one)).await),
        "accounts",
        &["123"],
    );
    let c = authorize(
        &auth,
        &bearer(at("PUT", "/destinations/d/mappings/s/fees"), &seg),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(c.name, "seg");
    // No key: 401 on any path, known or not.
    for p in ["/destinations", "/nope", "/lambda-url/segment-export/x/y"] {
        assert_eq!(denied(authorize(&auth, &at("GET", p)).await).status, 401);
    }
}

/// Follows the consent URL as a browser and returns the `code` Amazon sends back.
async fn consent_code(t: &adsync_tests::stack::TestLogin, url: &str) -> String {
    let url = format!("{url}&sandbox_user={}", t.user().user_id);
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = browser.get(&url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 302);
    let loc = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    let q: std::collections::HashMap<_, _> = loc.query_pairs().into_owned().collect();
    q.get("code").cloned().expect("a code")
}

#[tokio::test]
async fn the_sandbox_refuses_a_pkce_consent_without_its_verifier() {
    let t = adsync_tests::stack::fresh_login(1).await;
    let redirect = "https://app.example/oauth/callback";
    let verifier = adsync::amazon::pkce::new_verifier().unwrap();
    let url = t
        .client
        .authorize_url(Region::NA, redirect, "st")
        .await
        .unwrap();
    let consent = || adsync::amazon::pkce::with_challenge(&url, &verifier);
    let invalid_grant = |r: Result<_, AmazonError>| {
        assert!(
            matches!(r, Err(AmazonError::Lwa(LwaError::InvalidGrant { .. }))),
            "{r:?}"
        )
    };
    let code = consent_code(&t, &consent()).await;
    invalid_grant(t.client.exchange_code(Region::NA, &code, redirect).await);
    let code = consent_code(&t, &consent()).await;
    let wrong = adsync::amazon::pkce::new_verifier().unwrap();
    invalid_grant(
        t.client
            .exchange_code_pkce(Region::NA, &code, redirect, Some(&wrong))
            .await,
    );
    let code = consent_code(&t, &consent()).await;
    let grant = t
        .client
        .exchange_code_pkce(Region::NA, &code, redirect, Some(&verifier))
        .await
        .expect("the right verifier is accepted");
    assert!(grant.refresh_token.is_some());
    // A verifier on a consent that carried no challenge is refused too.
    let plain = t
        .client
        .authorize_url(Region::NA, redirect, "st")
        .await
        .unwrap();
    let code = consent_code(&t, &plain).await;
    invalid_grant(
        t.client
            .exchange_code_pkce(Region::NA, &code, redirect, Some(&verifier))
            .await,
    );
}

#[tokio::test]
async fn the_account_list_and_confirm_need_the_callbacks_cookie() {
    let stack = stack().await;
    let rig = rig(&stack, REDIRECT).await;
    let user = user_in_every_region(&rig.sandbox, 1).await;
    let (cid, url) = rig.create_connection("NA").await;
    let q: std::collections::HashMap<_, _> = url::Url::parse(&url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    assert_eq!(q["code_challenge_method"], "S256", "PKCE is on by default");
    let back = rig.consent(&url, &user.user_id, false).await;
    let r = rig.callback(&back).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let cookie = &r.headers["set-cookie"];
    assert!(
        cookie.starts_with(&format!("adsync_link_{cid}=")),
        "{cookie}"
    );
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    let view = r.headers["location"]
        .strip_prefix("callback?")
        .unwrap()
        .to_string();

    // The leaked view URL, elsewhere: refused, with and without a made-up cookie.
    let leaked = HttpRequest::new("GET", "/oauth/callback").with_query(&view);
    let r = rig.call_as_is(leaked.clone()).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        title_of(&r.body),
        "This account list belongs to another browser"
    );
    let forged = leaked
        .clone()
        .with_header("cookie", &format!("adsync_link_{cid}=forged"));
    assert_eq!(rig.call_as_is(forged).await.status, 403);

    // The browser that signed in sees the list and confirms.
    let page = rig.callback(&view).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let csrf = csrf_of(&page.body);
    let ids = advertiser_ids(&page.body);
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("csrf", &csrf)
        .append_pair("advertiserId", &ids[0])
        .finish();
    let confirm = HttpRequest::new("POST", "/oauth/confirm")
        .with_header("content-type", "application/x-www-form-urlencoded")
        .with_body(form);
    let r = rig.call_as_is(confirm).await;
    assert_eq!(r.status, 403, "confirm without the cookie: {}", r.body);
    let page = rig.callback(&view).await;
    let r = rig.confirm(&csrf_of(&page.body), &ids[0]).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn a_forged_forwarded_host_does_not_move_the_redirect_uri() {
    let stack = stack().await;
    let mut rig = rig(&stack, "").await;
    let own = "https://api.example/oauth/callback";
    rig.redirect_uri = own.into();
    let user = user_in_every_region(&rig.sandbox, 1).await;
    let mut req = rig
        .with_key(HttpRequest::new("POST", "/connections"))
        .with_header("content-type", "application/json")
        .with_header("host", "api.example")
        .with_header("x-forwarded-host", "evil.example")
        .with_header("x-forwarded-proto", "http")
        .with_body(r#"{"region":"NA"}"#);
    req.domain_name = Some("api.example".into());
    let r = rig.call(req).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let url = r.json_body()["authorizeUrl"].as_str().unwrap().to_string();
    let q: std::collections::HashMap<_, _> = url::Url::parse(&url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    assert_eq!(q["redirect_uri"], own);

    // The callback arrives with forged headers: the stored URI is used for the exchange (the
    // sandbox refuses a different one), so the consent completes.
    let back = rig.consent(&url, &user.user_id, false).await;
    let mut cb = HttpRequest::new("GET", "/oauth/callback")
        .with_query(&back)
        .with_header("host", "evil.example")
        .with_header("x-forwarded-host", "evil.example");
    cb.domain_name = Some("evil.example".into());
    let r = rig.call(cb).await;
    assert_eq!(r.status, 303, "{}", r.body);
}

#[tokio::test]
async fn the_schedule_deletes_token_secrets_of_consents_never_confirmed() {
    use adsync::linking::cleanup::ABANDONED_AFTER;
    use adsync::store::accounts::ConnectionStatus;
    let stack = stack().await;
    let rig = rig(&stack, REDIRECT).await;
    let user = user_in_every_region(&rig.sandbox, 1).await;
    // One consent left on its account list, one confirmed.
    let (open_cid, url) = rig.create_connection("NA").await;
    let back = rig.consent(&url, &user.user_id, false).await;
    assert_eq!(rig.callback(&back).await.status, 303);
    let (done_cid, url) = rig.create_connection("EU").await;
    let back = rig.consent(&url, &user.user_id, false).await;
    let page = rig.follow(&rig.callback(&back).await).await;
    let ids = advertiser_ids(&page.body);
    assert_eq!(rig.confirm(&csrf_of(&page.body), &ids[0]).await.status, 200);
    assert!(rig.token_secret(&open_cid).await.is_some());

    // Less than a day old: kept.
    let inv = Invocation::with_timeout(30);
    let s = rig.linking.cleanup(&inv, ABANDONED_AFTER).await;
    assert_eq!((s.connections_closed, s.secrets_deleted), (0, 0));
    assert!(rig.token_secret(&open_cid).await.is_some());

    // Old enough (age 0 here): the unconfirmed consent's secret goes, the linked one stays.
    let s = rig.linking.cleanup(&inv, std::time::Duration::ZERO).await;
    assert_eq!((s.connections_closed, s.secrets_deleted), (1, 1), "{s:?}");
    assert!(rig.token_secret(&open_cid).await.is_none());
    assert!(rig.token_secret(&done_cid).await.is_some());
    let conn = rig
        .accounts
        .get_connection(&open_cid)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (conn.status, conn.failure.as_deref(), conn.token_secret),
        (ConnectionStatus::Failed, Some("abandoned"), None)
    );
    // Idempotent.
    let s = rig.linking.cleanup(&inv, std::time::Duration::ZERO).await;
    assert_eq!(s.connections_closed, 0);
    // The schedule's input reaches it through the runtime.
    let out = adsync::runtime::dispatch(&rig.linking, json!({"task": "cleanup"}), inv)
        .await
        .unwrap();
    assert!(out["scanned"].is_number(), "{out}");
}
