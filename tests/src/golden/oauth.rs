//! The oauth-callback function's error paths: authentication and scopes, routing, `POST
//! /connections`, the browser steps (`GET /oauth/callback`, `POST /oauth/confirm`: HTML pages)
//! and `DELETE /accounts/{id}`. States, views, form tokens and connections in the states the
//! cases need are written straight to the accounts table (no Amazon call is made).

use super::{Golden, Keys, RESTRICTED_ACCOUNT, bearer, body, json_body};
use crate::sandbox::random_id;
use crate::stack::{amazon_client, aws, env, sandbox};
use adsync::amazon::Region;
use adsync::http::HttpRequest;
use adsync::linking::binding::{BindingStore, cookie_name};
use adsync::linking::{Linking, LinkingConfig};
use adsync::store::accounts::{AccountStatus, AccountStore, IntegratedAccount, ListedAdvertiser};
use adsync::store::secrets::SecretsStore;
use serde_json::json;

const REDIRECT: &str = "http://127.0.0.1:9/oauth/callback";
const FORM: &str = "application/x-www-form-urlencoded";

struct Rig {
    linking: Linking,
    keys: Keys,
    accounts: AccountStore,
    bindings: BindingStore,
    g: Golden,
    n: usize,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn get(path: &str) -> HttpRequest {
    HttpRequest::new("GET", path)
}

fn form(fields: &[(&str, &str)]) -> HttpRequest {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        s.append_pair(k, v);
    }
    body(HttpRequest::new("POST", "/oauth/confirm"), FORM, s.finish())
}

impl Rig {
    async fn case(&mut self, name: &str, req: HttpRequest) {
        self.g.case(&self.linking, name, req).await;
    }

    fn admin(&self, req: HttpRequest) -> HttpRequest {
        bearer(req, &self.keys.admin)
    }

    /// A fresh token, redacted as `{<kind>N}`.
    fn token(&mut self, kind: &str) -> String {
        self.n += 1;
        let t = format!("golden{kind}{}", uuid::Uuid::new_v4().simple());
        self.g.redact(t.clone(), &format!("{{{kind}{}}}", self.n));
        t
    }

    /// A pending connection made by `POST /connections`: (connection id, state).
    async fn connection(&mut self) -> (String, String) {
        let req = json_body(
            self.admin(HttpRequest::new("POST", "/connections")),
            &json!({"region": "NA"}),
        );
        let r = super::call(&self.linking, &req).await;
        assert_eq!(r.status, 201, "POST /connections: {}", r.body);
        let v = r.json_body();
        let cid = v["connectionId"].as_str().unwrap().to_string();
        let url = url::Url::parse(v["authorizeUrl"].as_str().unwrap()).unwrap();
        let state = url
            .query_pairs()
            .find(|(k, _)| k == "state")
            .map(|(_, v)| v.into_owned())
            .expect("a state");
        self.n += 1;
        self.g
            .redact(cid.clone(), &format!("{{connection{}}}", self.n));
        self.g
            .redact(state.clone(), &format!("{{state{}}}", self.n));
        (cid, state)
    }

    /// A connection with a browser bound to the returned cookie header.
    async fn bound(&mut self) -> (String, String) {
        let (cid, _) = self.connection().await;
        let cookie = self.token("cookie");
        self.bindings
            .bind_browser(&cid, &cookie, now() + 600)
            .await
            .unwrap();
        let header = format!("{}={cookie}", cookie_name(&cid));
        (cid, header)
    }

    /// A view of `cid` valid until `expires`.
    async fn view(&mut self, cid: &str, expires: i64) -> String {
        let view = self.token("view");
        self.accounts.put_view(&view, cid, expires).await.unwrap();
        view
    }

    /// A form token of `cid` valid until `expires`.
    async fn csrf(&mut self, cid: &str, expires: i64) -> String {
        let csrf = self.token("csrf");
        self.accounts.put_csrf(&csrf, cid, expires).await.unwrap();
        csrf
    }
}

/// Records every case of the oauth-callback function into `oauth-callback.json`.
pub async fn run() -> usize {
    let aws = aws().await;
    let sandbox = sandbox().await;
    let secrets = SecretsStore::new(aws.secrets.clone());
    let client = sandbox.new_client().await.unwrap_or_else(|e| panic!("{e}"));
    let amazon = amazon_client(&sandbox, &secrets, &client.client_id, &client.client_secret);
    let accounts = AccountStore::new(aws.dynamodb.clone(), env("ACCOUNTS_TABLE"));
    let keys = Keys::new(&secrets).await;
    let linking = Linking::new(
        amazon,
        accounts.clone(),
        keys.auth.clone(),
        LinkingConfig {
            redirect_uri: REDIRECT.into(),
            token_secret_prefix: format!("adsync-test/golden-{}/", uuid::Uuid::new_v4().simple()),
        },
    );
    let bindings = BindingStore::new(aws.dynamodb.clone(), env("ACCOUNTS_TABLE"));
    let mut r = Rig {
        linking,
        keys,
        accounts,
        bindings,
        g: Golden::new("oauth-callback.json"),
        n: 0,
    };
    auth_and_routing(&mut r).await;
    connections(&mut r).await;
    callback(&mut r).await;
    confirm(&mut r).await;
    delete_account(&mut r).await;
    let n = r.g.len();
    r.g.finish();
    n
}

async fn auth_and_routing(r: &mut Rig) {
    r.case("auth.no_key_unknown_route", get("/nope")).await;
    r.case("auth.no_key_accounts", get("/accounts")).await;
    r.case("auth.wrong_key", bearer(get("/accounts"), "wrong-key"))
        .await;
    r.case(
        "auth.basic_scheme",
        get("/accounts").with_header("authorization", &format!("Basic {}", r.keys.admin)),
    )
    .await;
    r.case(
        "auth.empty_bearer",
        get("/accounts").with_header("authorization", "Bearer "),
    )
    .await;
    r.case(
        "auth.no_scheme",
        get("/accounts").with_header("authorization", &r.keys.admin.clone()),
    )
    .await;
    let conn = json_body(
        HttpRequest::new("POST", "/connections"),
        &json!({"region": "NA"}),
    );
    let reader = r.keys.reader.clone();
    let restricted = r.keys.restricted.clone();
    r.case(
        "scope.reader_post_connections",
        bearer(conn.clone(), &reader),
    )
    .await;
    r.case(
        "scope.restricted_post_connections",
        bearer(conn, &restricted),
    )
    .await;
    r.case(
        "scope.restricted_other_account",
        bearer(
            HttpRequest::new("DELETE", "/accounts/123456789"),
            &restricted,
        ),
    )
    .await;
    r.case(
        "scope.reader_delete_account",
        bearer(HttpRequest::new("DELETE", "/accounts/123456789"), &reader),
    )
    .await;
    r.case(
        "scope.reader_unlisted_route",
        bearer(get("/connections"), &reader),
    )
    .await;
    let admin = |m: &str, p: &str| bearer(HttpRequest::new(m, p), &r.keys.admin);
    let wrong = [
        ("route.not_found", admin("GET", "/nope")),
        ("route.not_found_deep", admin("GET", "/a/b/c/d")),
        (
            "method.head_callback",
            HttpRequest::new("HEAD", "/oauth/callback"),
        ),
        (
            "method.post_callback",
            HttpRequest::new("POST", "/oauth/callback"),
        ),
        ("method.get_confirm", get("/oauth/confirm")),
        ("method.get_connections", admin("GET", "/connections")),
        ("method.put_accounts", admin("PUT", "/accounts")),
        ("method.get_account", admin("GET", "/accounts/123")),
        ("method.patch_account", admin("PATCH", "/accounts/123")),
    ];
    for (name, req) in wrong {
        r.case(name, req).await;
    }
}

async fn connections(r: &mut Rig) {
    let post = r.admin(HttpRequest::new("POST", "/connections"));
    let raw = |ct: &str, b: &[u8]| body(post.clone(), ct, b.to_vec());
    let cases: Vec<(&str, HttpRequest)> = vec![
        (
            "connections.no_content_type",
            post.clone().with_body(r#"{"region":"NA"}"#),
        ),
        (
            "connections.text_plain",
            raw("text/plain", br#"{"region":"NA"}"#),
        ),
        (
            "connections.too_large",
            raw("application/json", &vec![b' '; 4097]),
        ),
        ("connections.empty_body", raw("application/json", b"")),
        (
            "connections.malformed",
            raw("application/json", b"{\"region\":"),
        ),
        (
            "connections.not_utf8",
            raw("application/json", b"{\"region\":\"\xff\"}"),
        ),
        ("connections.array_body", raw("application/json", b"[]")),
        (
            "connections.string_body",
            raw("application/json", b"\"NA\""),
        ),
        ("connections.region_missing", raw("application/json", b"{}")),
        (
            "connections.region_missing_plus_json",
            raw("application/vnd.api+json", b"{}"),
        ),
        (
            "connections.region_null",
            raw("application/json", br#"{"region":null}"#),
        ),
        (
            "connections.region_unknown",
            raw("application/json", br#"{"region":"XX"}"#),
        ),
        (
            "connections.region_number",
            raw("application/json", br#"{"region":1}"#),
        ),
        (
            "connections.region_list",
            raw("application/json", br#"{"region":["NA"]}"#),
        ),
    ];
    for (name, req) in cases {
        r.case(name, req).await;
    }
}

async fn callback(r: &mut Rig) {
    let cb = |q: &str| get("/oauth/callback").with_query(q);
    r.case("callback.no_query", get("/oauth/callback")).await;
    r.case(
        "callback.no_state_lambda_url_prefix",
        get("/lambda-url/oauth-callback/oauth/callback"),
    )
    .await;
    r.case("callback.code_without_state", cb("code=abc")).await;
    r.case("callback.access_denied", cb("error=access_denied"))
        .await;
    r.case(
        "callback.access_denied_unknown_state",
        cb("error=access_denied&state=nope"),
    )
    .await;
    r.case("callback.invalid_scope", cb("error=invalid_scope"))
        .await;
    r.case("callback.server_error", cb("error=server_error"))
        .await;
    r.case(
        "callback.error_not_echoed",
        cb("error=%3Cscript%3Ealert(1)%3C%2Fscript%3E"),
    )
    .await;
    let (_, state) = r.connection().await;
    r.case(
        "callback.access_denied_known_state",
        cb(&format!("error=access_denied&state={state}")),
    )
    .await;
    r.case("callback.state_unknown", cb("state=nope&code=abc"))
        .await;
    let (_, state) = r.connection().await;
    r.case("callback.state_without_code", cb(&format!("state={state}")))
        .await;
    r.case(
        "callback.state_used",
        cb(&format!("state={state}&code=abc")),
    )
    .await;
    let expired_cid = r.token("connection");
    let expired_state = r.token("state");
    r.accounts
        .create_connection(
            &expired_cid,
            Region::NA,
            &expired_state,
            now() - 60,
            now() - 60,
        )
        .await
        .unwrap();
    r.case(
        "callback.state_expired",
        cb(&format!("state={expired_state}&code=abc")),
    )
    .await;
    r.case("callback.view_unknown", cb("view=nope")).await;
    let (cid, _) = r.connection().await;
    let view = r.view(&cid, now() - 60).await;
    r.case("callback.view_expired", cb(&format!("view={view}")))
        .await;
    let view = r.view(&cid, now() + 600).await;
    r.case(
        "callback.view_other_browser",
        cb(&format!("view={view}")).with_header("cookie", &format!("{}=forged", cookie_name(&cid))),
    )
    .await;
    let (cid, cookie) = r.bound().await;
    let view = r.view(&cid, now() + 600).await;
    r.case(
        "callback.view_of_pending_connection",
        cb(&format!("view={view}")).with_header("cookie", &cookie),
    )
    .await;
    r.accounts.mark_failed(&cid, "golden").await.unwrap();
    let view = r.view(&cid, now() + 600).await;
    r.case(
        "callback.view_of_failed_connection",
        cb(&format!("view={view}")).with_header("cookie", &cookie),
    )
    .await;
}

/// A consented connection (with a bound browser) offering advertiser `offered`.
async fn consented(r: &mut Rig, offered: i64, expires: i64) -> (String, String) {
    let (cid, cookie) = r.bound().await;
    let listed = ListedAdvertiser {
        profile_id: 1,
        advertiser_id: offered,
        name: "Golden advertiser".into(),
        currency: "USD".into(),
        country: "US".into(),
        timezone: "UTC".into(),
        profile_name: "Golden agency".into(),
    };
    r.accounts
        .mark_consented(&cid, "adsync-test/golden-none", &[listed], expires)
        .await
        .unwrap();
    (cid, cookie)
}

async fn confirm(r: &mut Rig) {
    let post = HttpRequest::new("POST", "/oauth/confirm");
    r.case(
        "confirm.json_content_type",
        json_body(post.clone(), &json!({"csrf": "x"})),
    )
    .await;
    r.case("confirm.no_content_type", post.with_body("csrf=x"))
        .await;
    r.case(
        "confirm.too_large",
        body(
            HttpRequest::new("POST", "/oauth/confirm"),
            FORM,
            format!("csrf={}", "x".repeat(4100)),
        ),
    )
    .await;
    r.case("confirm.empty_form", form(&[])).await;
    r.case(
        "confirm.csrf_empty",
        form(&[("csrf", ""), ("advertiserId", "1")]),
    )
    .await;
    r.case("confirm.advertiser_missing", form(&[("csrf", "x")]))
        .await;
    r.case(
        "confirm.advertiser_not_a_number",
        form(&[("csrf", "x"), ("advertiserId", "abc")]),
    )
    .await;
    r.case(
        "confirm.advertiser_zero",
        form(&[("csrf", "x"), ("advertiserId", "0")]),
    )
    .await;
    r.case(
        "confirm.csrf_unknown",
        form(&[("csrf", "nope"), ("advertiserId", "1")]),
    )
    .await;
    let (cid, cookie) = r.bound().await;
    let csrf = r.csrf(&cid, now() - 60).await;
    r.case(
        "confirm.csrf_expired",
        form(&[("csrf", &csrf), ("advertiserId", "1")]).with_header("cookie", &cookie),
    )
    .await;
    let csrf = r.csrf(&cid, now() + 600).await;
    r.case(
        "confirm.other_browser",
        form(&[("csrf", &csrf), ("advertiserId", "1")]),
    )
    .await;
    let csrf = r.csrf(&cid, now() + 600).await;
    r.case(
        "confirm.pending_connection",
        form(&[("csrf", &csrf), ("advertiserId", "1")]).with_header("cookie", &cookie),
    )
    .await;
    let offered = random_id(13);
    r.g.redact(offered.to_string(), "{offered}");
    let (cid, cookie) = consented(r, offered, now() + 600).await;
    let csrf = r.csrf(&cid, now() + 600).await;
    r.case(
        "confirm.advertiser_not_offered",
        form(&[("csrf", &csrf), ("advertiserId", "77")]).with_header("cookie", &cookie),
    )
    .await;
    r.case(
        "confirm.form_used_for_other",
        form(&[("csrf", &csrf), ("advertiserId", "78")]).with_header("cookie", &cookie),
    )
    .await;
    let (cid, cookie) = consented(r, offered, now() - 60).await;
    let csrf = r.csrf(&cid, now() + 600).await;
    r.case(
        "confirm.account_list_expired",
        form(&[("csrf", &csrf), ("advertiserId", &offered.to_string())])
            .with_header("cookie", &cookie),
    )
    .await;
    let view = r.view(&cid, now() + 600).await;
    r.case(
        "callback.view_of_expired_consent",
        get("/oauth/callback")
            .with_query(&format!("view={view}"))
            .with_header("cookie", &cookie),
    )
    .await;
}

async fn delete_account(r: &mut Rig) {
    let del = |r: &Rig, id: &str| r.admin(HttpRequest::new("DELETE", &format!("/accounts/{id}")));
    r.case("delete_account.not_digits", del(r, "abc")).await;
    r.case("delete_account.too_long", del(r, &"1".repeat(21)))
        .await;
    r.case("delete_account.unknown", del(r, "900000000000002"))
        .await;
    let removed = random_id(14).to_string();
    r.g.redact(removed.clone(), "{removed_account}");
    r.accounts
        .put_account(&IntegratedAccount {
            account_id: removed.clone(),
            region: Region::NA,
            profile_id: 1,
            advertiser_id: removed.parse().unwrap(),
            name: "Golden removed".into(),
            currency: "USD".into(),
            country: "US".into(),
            connection_id: "c-golden".into(),
            token_secret: "adsync-test/golden-none".into(),
            status: AccountStatus::Removed,
            created_at: "2026-12-05T00:00:00.000Z".into(),
        })
        .await
        .unwrap();
    r.case("delete_account.already_removed", del(r, &removed))
        .await;
    r.case(
        "delete_account.restricted_own_but_unknown",
        bearer(
            HttpRequest::new("DELETE", &format!("/accounts/{RESTRICTED_ACCOUNT}")),
            &r.keys.restricted.clone(),
        ),
    )
    .await;
}
