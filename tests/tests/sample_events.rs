//! Every sample event in `infra/events/` fed to its function's handler, the way Lambda would
//! (`adsync::runtime::dispatch`, the same entry `sam local invoke` and API Gateway reach), against
//! the local stack (DynamoDB Local, moto, the Amazon sandbox). Each HTTP answer is checked for
//! behaviour and validated against `openapi.yaml`, so the samples, the handlers and the spec
//! cannot drift apart.
//!
//! The samples carry realistic fixed ids. Before sending one, the test creates what it refers to
//! (a linked account with a sandbox login, segments, a destination) under fresh random ids and
//! rewrites the sample's ids to them, so parallel runs never collide; timestamps that Amazon
//! bounds (conversions: at most 21 days old) are moved to now.
//!
//! Run (stack up, sandbox on 9400):
//! `set -a; . .local/stack.env; set +a; cargo test -p adsync-tests --test sample_events`

use adsync::runtime::{Handler, Invocation, dispatch};
use adsync_tests::openapi::{assert_apigw_response_valid, read_yaml, workspace_root};
use base64::Engine;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::PathBuf;

/// The variables that point a function at the local stack instead of AWS and Amazon.
const LOCAL_ENDPOINT_VARS: [&str; 4] = [
    "ADSYNC_AWS_ENDPOINT_URL",
    "ADSYNC_AWS_ENDPOINT_URL_DYNAMODB",
    "AMAZON_ADS_API_URL",
    "AMAZON_LWA_TOKEN_URL",
];

// The ids the sample events use (see infra/events/); the test rewrites them to fresh ones.
const SAMPLE_ACCOUNT: &str = "5819463027104";
const SAMPLE_DESTINATION: &str = "3f1c2a9e-6b7d-4c1e-9a55-2f0e8d4b7c61";
const SAMPLE_SEG_LOYAL: &str = "seg-loyal-shoppers";
const SAMPLE_SEG_CART: &str = "seg-cart-abandoners";
const SAMPLE_SEG_HIGH: &str = "seg-high-value";

/// Every sample file each test below feeds, so a new sample without a test fails
/// `every_sample_event_is_fed_by_a_test`.
const FED: &[(&str, &[&str])] = &[
    // Fed by tests/tests/console.rs.
    (
        "console",
        &["home.json", "sign-in-page.json", "sign-in.json"],
    ),
    (
        "oauth-callback",
        &[
            "create-connection.json",
            "oauth-callback.json",
            "oauth-callback-view.json",
            "oauth-confirm.json",
            "list-accounts.json",
            "delete-account.json",
            "cleanup.json",
        ],
    ),
    (
        "conversion-ingest",
        &[
            "ingest-conversions.json",
            "redrive.json",
            "redrive-dlq.json",
        ],
    ),
    (
        "segment-export",
        &[
            "put-segment.json",
            "get-segment.json",
            "create-destination.json",
            "list-destinations.json",
            "get-destination.json",
            "update-destination.json",
            "add-mappings.json",
            "update-fees.json",
            "qualifications.json",
            "delete-mapping.json",
            "list-segments.json",
            "delete-segment.json",
            "delete-destination.json",
            "backfill.json",
            "redrive.json",
            "upload-identities.json",
            "create-deletion.json",
            "get-deletion.json",
        ],
    ),
];

// ------------------------------------------------------------------------------------ helpers

fn events_dir() -> PathBuf {
    workspace_root().join("infra/events")
}

/// Fails with a clear message when the local stack's environment is missing (never skips).
fn require_stack_env() {
    let missing: Vec<&str> = [
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_DYNAMODB",
        "ACCOUNTS_TABLE",
        "DEDUPE_TABLE",
        "DESTINATIONS_TABLE",
        "LEDGER_TABLE",
        "PARKED_CONVERSIONS_QUEUE_URL",
        "PARKED_PATCHES_QUEUE_URL",
        "LWA_CREDENTIALS_SECRET",
        "API_KEYS_SECRET",
        "OAUTH_REDIRECT_URI",
        "AMAZON_ADS_API_URL",
    ]
    .into_iter()
    .filter(|v| {
        std::env::var(v)
            .map(|s| s.trim().is_empty())
            .unwrap_or(true)
    })
    .collect();
    assert!(
        missing.is_empty(),
        "the sample-event test needs the local stack; missing {missing:?}. Run infra/scripts/stack-up.sh, \
         then `set -a; . .local/stack.env; set +a` before cargo test."
    );
}

async fn sandbox() -> adsync_tests::sandbox::SandboxAdmin {
    let sb = adsync_tests::sandbox::SandboxAdmin::from_env();
    if let Err(e) = sb.health().await {
        panic!("{e}");
    }
    sb
}

/// Reads `infra/events/<function>/<file>`.
fn load(function: &str, file: &str) -> Value {
    let p = events_dir().join(function).join(file);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()))
}

/// Replaces every occurrence of the literal `from` in the event (path, path parameters, query,
/// body) by `to`, then fixes the body's content-length.
fn rewrite(ev: &Value, pairs: &[(&str, &str)]) -> Value {
    let mut text = ev.to_string();
    for (from, to) in pairs {
        text = text.replace(from, to);
    }
    let mut ev: Value = serde_json::from_str(&text).expect("still JSON");
    if ev["isBase64Encoded"] == true {
        // Ids inside a base64 body are invisible to the text replacement: decode, replace, encode.
        let raw = base64::engine::general_purpose::STANDARD
            .decode(ev["body"].as_str().unwrap_or(""))
            .expect("base64 body");
        let mut body = String::from_utf8(raw).expect("utf-8 body");
        for (from, to) in pairs {
            body = body.replace(from, to);
        }
        set_body(&mut ev, &body);
    } else if let Some(b) = ev["body"].as_str().map(str::to_string) {
        set_body(&mut ev, &b);
    }
    ev
}

/// Sets the raw body (base64 when the sample's body is), and its content-length.
fn set_body(ev: &mut Value, body: &str) {
    ev["headers"]["content-length"] = json!(body.len().to_string());
    ev["body"] = if ev["isBase64Encoded"] == true {
        json!(base64::engine::general_purpose::STANDARD.encode(body))
    } else {
        json!(body)
    };
}

/// Replaces the query string (raw and parsed forms).
fn set_query(ev: &mut Value, pairs: &[(&str, &str)]) {
    let raw = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    ev["rawQueryString"] = json!(raw);
    let parsed: serde_json::Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    ev["queryStringParameters"] = Value::Object(parsed);
}

/// Feeds an HTTP sample to the handler exactly as Lambda would, validates the answer against
/// openapi.yaml, and returns the API Gateway response document.
async fn invoke_http<H: Handler>(h: &H, ev: Value) -> Value {
    let method = ev["requestContext"]["http"]["method"]
        .as_str()
        .expect("method")
        .to_string();
    let path = ev["rawPath"].as_str().expect("rawPath").to_string();
    let out = dispatch(h, ev, Invocation::with_timeout(120))
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: the handler failed the invocation: {e}"));
    assert_apigw_response_valid(&method, &path, &out);
    out
}

/// Feeds a scheduled `{"task":…}` sample; the summary must be a JSON object. The deadline is
/// short on purpose: a scheduled run works every job and parked message of the shared local
/// stack (other tests' too) until its deadline, and must stop safely before it.
async fn invoke_task<H: Handler>(h: &H, ev: Value, timeout_secs: u64) -> Value {
    let task = ev["task"].as_str().expect("task").to_string();
    let out = dispatch(h, ev, Invocation::with_timeout(timeout_secs))
        .await
        .unwrap_or_else(|e| panic!("task {task} failed: {e}"));
    assert!(
        out.is_object(),
        "task {task} answered {out}, not a JSON summary"
    );
    out
}

fn status(resp: &Value) -> u64 {
    resp["statusCode"].as_u64().expect("statusCode")
}

fn json_body(resp: &Value) -> Value {
    serde_json::from_str(resp["body"].as_str().unwrap_or("")).unwrap_or(Value::Null)
}

fn header<'a>(resp: &'a Value, name: &str) -> Option<&'a str> {
    resp["headers"]
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str())
}

/// The value of `name=` in the first `<input … name="NAME" value="…">` of a page.
fn input_value(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = start + html[start..].find('"')?;
    Some(html[start..end].to_string())
}

async fn aws() -> adsync::aws::AwsClients {
    adsync::aws::AwsClients::from_env().await
}

/// Links a fresh sandbox login (one US advertiser) the way oauth-callback would leave it: the
/// refresh token in a secret under TOKEN_SECRET_PREFIX and an active integrated account.
async fn link_account(
    aws: &adsync::aws::AwsClients,
    sb: &adsync_tests::sandbox::SandboxAdmin,
) -> adsync::store::accounts::IntegratedAccount {
    use adsync::store::accounts::{AccountStatus, AccountStore, IntegratedAccount};
    let user = sb.new_user("US", "USD", 1).await.unwrap();
    // The functions use the LwA client of LWA_CREDENTIALS_SECRET, the sandbox's seeded one.
    let refresh = sb
        .refresh_token(&user.user_id, adsync_tests::sandbox::SEED_CLIENT_ID)
        .await
        .unwrap();
    let prefix = std::env::var("TOKEN_SECRET_PREFIX").unwrap_or_else(|_| "adsync/tokens/".into());
    let connection_id = format!("sample{}", uuid::Uuid::new_v4().simple());
    let token_secret = format!("{prefix}{connection_id}");
    adsync::store::secrets::SecretsStore::new(aws.secrets.clone())
        .put_json(
            &token_secret,
            &json!({"region": "NA", "refresh_token": refresh}),
        )
        .await
        .unwrap();
    let adv = user.advertiser();
    let account = IntegratedAccount {
        account_id: adv.advertiser_id.to_string(),
        region: adsync::amazon::Region::NA,
        profile_id: user.profile().profile_id,
        advertiser_id: adv.advertiser_id,
        name: adv.name.clone(),
        currency: adv.currency.clone(),
        country: adv.country.clone(),
        connection_id,
        token_secret,
        status: AccountStatus::Active,
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    };
    AccountStore::new(
        aws.dynamodb.clone(),
        std::env::var("ACCOUNTS_TABLE").unwrap(),
    )
    .put_account(&account)
    .await
    .unwrap();
    account
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

// ----------------------------------------------------------------------------- oauth-callback

/// The whole linking flow from the samples: POST /connections → the sandbox's consent redirect →
/// GET /oauth/callback (code, state) → 303 → GET /oauth/callback?view → POST /oauth/confirm →
/// GET /accounts → DELETE /accounts/{id}.
#[tokio::test]
async fn oauth_callback_sample_events() {
    require_stack_env();
    let sb = sandbox().await;
    let linking = adsync::linking::Linking::from_env()
        .await
        .unwrap_or_else(|e| panic!("oauth-callback handler from env: {e}"));
    // A fresh "Amazon user" with two advertisers in the NA marketplace the sample asks for.
    let user = sb.new_user("US", "USD", 2).await.unwrap();
    let advertiser = user.advertiser().advertiser_id.to_string();

    // POST /connections
    let resp = invoke_http(&linking, load("oauth-callback", "create-connection.json")).await;
    assert_eq!(status(&resp), 201, "{resp}");
    let conn = json_body(&resp);
    let authorize = url::Url::parse(conn["authorizeUrl"].as_str().unwrap()).unwrap();
    let q: std::collections::HashMap<String, String> =
        authorize.query_pairs().into_owned().collect();
    assert_eq!(q.get("response_type").map(String::as_str), Some("code"));
    assert!(
        q.get("state").is_some_and(|s| s.len() >= 22),
        "state must carry ≥ 128 bits: {q:?}"
    );
    assert_eq!(
        q.get("redirect_uri"),
        std::env::var("OAUTH_REDIRECT_URI").ok().as_ref()
    );

    // The browser at Amazon: the sandbox approves and redirects with code + state.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut consent = authorize.clone();
    consent
        .query_pairs_mut()
        .append_pair("sandbox_user", &user.user_id);
    let r = http
        .get(consent)
        .send()
        .await
        .expect("sandbox consent page");
    assert!(
        r.status().is_redirection(),
        "consent answered {}",
        r.status()
    );
    let back = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let back: std::collections::HashMap<String, String> = back.query_pairs().into_owned().collect();

    // GET /oauth/callback?code&scope&state → 303 to the advertiser list.
    let mut ev = load("oauth-callback", "oauth-callback.json");
    set_query(
        &mut ev,
        &[
            ("code", &back["code"]),
            ("scope", &back["scope"]),
            ("state", &back["state"]),
        ],
    );
    let resp = invoke_http(&linking, ev.clone()).await;
    assert_eq!(status(&resp), 303, "{resp}");
    let location = header(&resp, "location").expect("Location").to_string();
    let view = location
        .strip_prefix("callback?view=")
        .expect("relative redirect to the view");
    // The browser binding: the view and the confirm need the cookie the callback set (payload
    // 2.0 carries it in `cookies`, both ways).
    let cookie = resp["cookies"][0]
        .as_str()
        .expect("the callback sets the browser cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    // The same state again is refused (single use).
    let again = invoke_http(&linking, ev).await;
    assert!(
        matches!(status(&again), 400 | 409 | 410),
        "a reused state must fail: {}",
        status(&again)
    );

    // GET /oauth/callback?view → the advertiser list with one Confirm form each.
    let mut ev = load("oauth-callback", "oauth-callback-view.json");
    set_query(&mut ev, &[("view", view)]);
    let without = invoke_http(&linking, ev.clone()).await;
    assert_eq!(
        status(&without),
        403,
        "the view without the cookie: {without}"
    );
    ev["cookies"] = json!([cookie]);
    let resp = invoke_http(&linking, ev).await;
    assert_eq!(status(&resp), 200, "{resp}");
    let page = resp["body"].as_str().unwrap();
    for a in &user.profile().advertisers {
        assert!(
            page.contains(&a.advertiser_id.to_string()),
            "advertiser {} not listed",
            a.advertiser_id
        );
    }
    let csrf = input_value(page, "csrf").expect("a csrf field in the form");
    assert_eq!(header(&resp, "cache-control"), Some("no-store"));
    assert!(
        header(&resp, "content-security-policy").is_some(),
        "pages carry a CSP"
    );

    // POST /oauth/confirm (the sample's base64 form, with this page's token and advertiser).
    let ev = load("oauth-callback", "oauth-confirm.json");
    let sample_csrf = {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(ev["body"].as_str().unwrap())
            .unwrap();
        let form = String::from_utf8(raw).unwrap();
        url::form_urlencoded::parse(form.as_bytes())
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.into_owned())
            .expect("the sample form has a csrf field")
    };
    let mut ev = rewrite(&ev, &[(&sample_csrf, &csrf), (SAMPLE_ACCOUNT, &advertiser)]);
    ev["cookies"] = json!([cookie]);
    let resp = invoke_http(&linking, ev.clone()).await;
    assert_eq!(status(&resp), 200, "{resp}");
    assert!(
        resp["body"]
            .as_str()
            .unwrap()
            .contains(&format!("<code id=\"account-id\">{advertiser}</code>")),
        "the success page shows the account id"
    );
    // Confirming twice is idempotent.
    let twice = invoke_http(&linking, ev).await;
    assert_eq!(status(&twice), 200, "{twice}");

    // GET /accounts lists it, active.
    let resp = invoke_http(&linking, load("oauth-callback", "list-accounts.json")).await;
    assert_eq!(status(&resp), 200, "{resp}");
    let accounts = json_body(&resp)["accounts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mine = accounts
        .iter()
        .find(|a| a["accountId"] == advertiser.as_str())
        .unwrap_or_else(|| panic!("account {advertiser} not listed"));
    assert_eq!(mine["status"], "active");
    assert_eq!(mine["region"], "NA");
    assert!(
        mine["advertiserId"].is_i64(),
        "advertiserId is a JSON integer: {mine}"
    );

    // DELETE /accounts/{id} unlinks it; the login's secret goes with it (no other account uses it).
    let ev = rewrite(
        &load("oauth-callback", "delete-account.json"),
        &[(SAMPLE_ACCOUNT, &advertiser)],
    );
    let resp = invoke_http(&linking, ev.clone()).await;
    assert_eq!(status(&resp), 200, "{resp}");
    let body = json_body(&resp);
    assert_eq!(body["status"], "removed");
    assert_eq!(body["tokenSecretDeleted"], true);
    // The sample as is, with the API key removed: 401 in the error shape.
    let mut anon = ev.clone();
    anon["headers"]
        .as_object_mut()
        .unwrap()
        .remove("authorization");
    let resp = invoke_http(&linking, anon).await;
    assert_eq!(status(&resp), 401, "{resp}");
    assert_eq!(json_body(&resp)["error"]["code"], "unauthorized");
    // Gone now.
    let resp = invoke_http(&linking, ev).await;
    assert_eq!(status(&resp), 404, "{resp}");

    // The schedule's cleanup of consents never confirmed answers a summary.
    let summary = invoke_task(&linking, load("oauth-callback", "cleanup.json"), 20).await;
    assert!(summary["scanned"].is_number(), "{summary}");
}

// -------------------------------------------------------------------------- conversion-ingest

/// Moves every event's `timestamp` into Amazon's window (≤ 21 days old), keeping each sample's
/// format (offset, fractional seconds).
fn recent_timestamps(ev: &mut Value) {
    let mut body: Value = serde_json::from_str(ev["body"].as_str().unwrap()).unwrap();
    let now = chrono::Utc::now();
    for (i, e) in body["events"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .enumerate()
    {
        let Some(old) = e["timestamp"].as_str() else {
            continue;
        };
        let at = now - chrono::Duration::minutes(10 + i as i64);
        let new = if old.ends_with("+01:00") {
            at.with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap())
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
        } else if old.contains('.') {
            at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        } else {
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        };
        e["timestamp"] = json!(new);
    }
    set_body(ev, &body.to_string());
}

#[tokio::test]
async fn conversion_ingest_sample_events() {
    require_stack_env();
    let sb = sandbox().await;
    let aws = aws().await;
    let handler = adsync::ingest::ConversionHandler::from_env(&aws)
        .await
        .unwrap_or_else(|e| panic!("conversion-ingest handler from env: {e}"));
    let account = link_account(&aws, &sb).await;

    let mut ev = rewrite(
        &load("conversion-ingest", "ingest-conversions.json"),
        &[(SAMPLE_ACCOUNT, &account.account_id)],
    );
    recent_timestamps(&mut ev);
    let resp = invoke_http(&handler, ev.clone()).await;
    assert_eq!(status(&resp), 200, "{resp}");
    let body = json_body(&resp);
    assert_eq!(body["totals"]["received"], 3, "{body}");
    assert_eq!(body["totals"]["accepted"], 3, "{body}");
    for (i, r) in body["results"].as_array().unwrap().iter().enumerate() {
        assert_eq!(r["index"], i);
        assert_eq!(r["status"], "accepted", "{r}");
    }

    // What "Amazon" received: hashed, normalised match keys; raw MAID as given; the dedupe id
    // as eventId; currency only on the purchase.
    let dump = sb.events(account.advertiser_id).await.unwrap();
    assert_eq!(dump.events.len(), 3, "{:?}", dump.events);
    assert_eq!(dump.counts_by_event_id.get("order-100045"), Some(&1));
    assert_eq!(dump.counts_by_event_id.get("signup-7f3a9c"), Some(&1));
    let purchase = dump
        .events
        .iter()
        .find(|e| e["eventId"] == "order-100045")
        .expect("the purchase reached Amazon");
    let keys = purchase["matchKeys"].to_string();
    assert!(
        keys.contains(&sha256_hex("jane.doeads@example.com")),
        "EMAIL normalised then hashed: {keys}"
    );
    assert!(
        keys.contains(&sha256_hex("12065550100")),
        "PHONE digits only, then hashed: {keys}"
    );
    assert!(
        !keys.contains("Jane") && !keys.contains("555-0100"),
        "no raw personal data: {keys}"
    );
    assert_eq!(purchase["currencyCode"], "USD");
    assert_eq!(purchase["countryCode"], "US", "en-US becomes US");
    let signup = dump
        .events
        .iter()
        .find(|e| e["eventId"] == "signup-7f3a9c")
        .unwrap();
    assert!(
        signup["matchKeys"]
            .to_string()
            .contains("6D92078A-8246-4BA4-AE5B-76104861E7DC"),
        "MAID as given"
    );
    assert!(
        signup.get("currencyCode").is_none(),
        "currency only for purchases: {signup}"
    );

    // The same webhook again: the two events with a clientDedupeId are duplicates (not sent
    // twice); the one without an id is not deduplicated.
    let resp = invoke_http(&handler, ev).await;
    assert_eq!(status(&resp), 200, "{resp}");
    let body = json_body(&resp);
    let statuses: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["duplicate", "duplicate", "accepted"], "{body}");
    let dump = sb.events(account.advertiser_id).await.unwrap();
    assert_eq!(
        dump.counts_by_event_id.get("order-100045"),
        Some(&1),
        "never double-counted"
    );
    assert_eq!(dump.events.len(), 4);

    // An unknown account: the contract's 404.
    let mut ev = rewrite(
        &load("conversion-ingest", "ingest-conversions.json"),
        &[(
            SAMPLE_ACCOUNT,
            &adsync_tests::sandbox::random_id(13).to_string(),
        )],
    );
    recent_timestamps(&mut ev);
    let resp = invoke_http(&handler, ev).await;
    assert_eq!(status(&resp), 404, "{resp}");
    assert_eq!(json_body(&resp)["error"]["code"], "account_not_found");

    // The scheduled redrive.
    let summary = invoke_task(&handler, load("conversion-ingest", "redrive.json"), 20).await;
    for k in ["messages", "delivered", "stillParked"] {
        assert!(
            summary.get(k).is_some_and(Value::is_u64),
            "redrive summary lacks {k}: {summary}"
        );
    }
    // The scheduled move of relinked accounts' dead-lettered work.
    let summary = invoke_task(&handler, load("conversion-ingest", "redrive-dlq.json"), 20).await;
    for k in ["messages", "moved", "kept"] {
        assert!(
            summary.get(k).is_some_and(Value::is_u64),
            "redrive-dlq summary lacks {k}: {summary}"
        );
    }
}

// ----------------------------------------------------------------------------- segment-export

#[tokio::test]
async fn segment_export_sample_events() {
    require_stack_env();
    let sb = sandbox().await;
    let aws = aws().await;
    let handler = adsync::export::ExportHandler::from_env(&aws)
        .await
        .unwrap_or_else(|e| panic!("segment-export handler from env: {e}"));
    let account = link_account(&aws, &sb).await;
    let run = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    let (loyal, cart, high) = (
        format!("{SAMPLE_SEG_LOYAL}-{run}"),
        format!("{SAMPLE_SEG_CART}-{run}"),
        format!("{SAMPLE_SEG_HIGH}-{run}"),
    );
    let ids = |dest: &str| -> Vec<(String, String)> {
        vec![
            (SAMPLE_ACCOUNT.into(), account.account_id.clone()),
            (SAMPLE_DESTINATION.into(), dest.into()),
            (SAMPLE_SEG_LOYAL.into(), loyal.clone()),
            (SAMPLE_SEG_CART.into(), cart.clone()),
            (SAMPLE_SEG_HIGH.into(), high.clone()),
        ]
    };
    let fresh = |file: &str, dest: &str| -> Value {
        let pairs = ids(dest);
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        rewrite(&load("segment-export", file), &pairs)
    };

    // PUT /segments/{id}: created, then updated; the other two segments the samples map are
    // registered from the same sample.
    let resp = invoke_http(&handler, fresh("put-segment.json", "")).await;
    assert_eq!(status(&resp), 201, "{resp}");
    assert_eq!(json_body(&resp)["segmentId"], loyal.as_str());
    let resp = invoke_http(&handler, fresh("put-segment.json", "")).await;
    assert_eq!(status(&resp), 200, "{resp}");
    // GET /segments/{id}: the segment as registered.
    let resp = invoke_http(&handler, fresh("get-segment.json", "")).await;
    assert_eq!(status(&resp), 200, "{resp}");
    assert_eq!(json_body(&resp)["segmentId"], loyal.as_str());
    for seg in [&cart, &high] {
        let ev = rewrite(
            &fresh("put-segment.json", ""),
            &[(loyal.as_str(), seg.as_str())],
        );
        let resp = invoke_http(&handler, ev).await;
        assert_eq!(status(&resp), 201, "{resp}");
    }

    // POST /destinations: 202, each mapping as of the answer: active with its audience when the
    // request's slice (ADSYNC_INLINE_WORK_MS) created it, pending otherwise.
    let resp = invoke_http(&handler, fresh("create-destination.json", "")).await;
    assert_eq!(status(&resp), 202, "{resp}");
    let created = json_body(&resp);
    let dest = created["destinationId"].as_str().unwrap().to_string();
    assert_eq!(
        header(&resp, "location"),
        Some(format!("/destinations/{dest}").as_str())
    );
    let mappings = created["mappings"].as_array().unwrap();
    assert_eq!(mappings.len(), 2, "{created}");
    for m in mappings {
        let ok = (m["status"] == "active" && m["audienceId"].is_i64())
            || (m["status"] == "pending" && m["audienceId"].is_null());
        assert!(ok, "{m}");
    }

    // GET /destinations (paged until ours shows up).
    let mut token: Option<String> = None;
    let mut found = false;
    for _ in 0..200 {
        let mut ev = load("segment-export", "list-destinations.json");
        match &token {
            Some(t) => set_query(&mut ev, &[("limit", "100"), ("nextToken", t)]),
            None => set_query(&mut ev, &[("limit", "100")]),
        }
        let resp = invoke_http(&handler, ev).await;
        assert_eq!(status(&resp), 200, "{resp}");
        let page = json_body(&resp);
        found |= page["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["destinationId"] == dest.as_str());
        token = page["nextToken"].as_str().map(str::to_string);
        if found || token.is_none() {
            break;
        }
    }
    assert!(found, "GET /destinations does not list {dest}");

    // The scheduled backfill creates the audiences (1 request/s, shared with every other test
    // using the local stack) and then backfills them.
    let get = || fresh("get-destination.json", &dest);
    let started = std::time::Instant::now();
    let view = loop {
        let summary = invoke_task(&handler, load("segment-export", "backfill.json"), 15).await;
        assert_eq!(summary["task"], "backfill", "{summary}");
        let resp = invoke_http(&handler, get()).await;
        assert_eq!(status(&resp), 200, "{resp}");
        let v = json_body(&resp);
        let active = v["mappings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["status"] == "active");
        if active {
            break v;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(240),
            "the audiences were not created within 4 minutes: {v}"
        );
    };
    let audience_of = |seg: &str| -> i64 {
        view["mappings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["segmentId"] == seg)
            .and_then(|m| m["audienceId"].as_i64())
            .unwrap_or_else(|| panic!("no integer audienceId for {seg}: {view}"))
    };
    let (aud_loyal, aud_cart) = (audience_of(&loyal), audience_of(&cart));
    let at_amazon = sb.audiences(account.advertiser_id).await.unwrap();
    for id in [aud_loyal, aud_cart] {
        assert!(
            at_amazon.iter().any(|a| a.id == id),
            "audience {id} is not at Amazon"
        );
    }

    // PATCH /destinations/{id}
    let resp = invoke_http(&handler, fresh("update-destination.json", &dest)).await;
    assert_eq!(status(&resp), 200, "{resp}");
    let v = json_body(&resp);
    assert_eq!(
        v["description"],
        "Loyal shoppers and cart abandoners (refreshed nightly)"
    );
    assert_eq!(
        v["dataExportLabels"],
        json!(["OFFSITE_AD_TARGETING", "ONSITE_AD_TARGETING"])
    );
    // New TTL and countries: pending until the schedule PUTs them on each audience.
    assert_eq!(v["ttlSeconds"], 1_209_600);
    assert_eq!(v["dataSourceCountry"], json!(["US", "CA"]));

    // POST /destinations/{id}/mappings
    let resp = invoke_http(&handler, fresh("add-mappings.json", &dest)).await;
    assert_eq!(status(&resp), 202, "{resp}");
    let added = &json_body(&resp)["mappings"][0];
    assert_eq!(added["segmentId"], high.as_str());
    // As of the answer (the request's slice may have created the audience already).
    assert!(
        (added["status"] == "pending" && added["audienceId"].is_null())
            || (added["status"] == "active" && added["audienceId"].is_i64()),
        "{added}"
    );

    // PUT …/fees: the advertiser's currency, sent to Amazon with the full metadata.
    let resp = invoke_http(&handler, fresh("update-fees.json", &dest)).await;
    assert_eq!(status(&resp), 200, "{resp}");
    assert_eq!(
        json_body(&resp)["audienceFees"],
        json!([{"cpmCents": 200, "currency": "USD"}])
    );
    let at_amazon = sb.audiences(account.advertiser_id).await.unwrap();
    let meta = &at_amazon
        .iter()
        .find(|a| a.id == aud_loyal)
        .unwrap()
        .metadata;
    assert!(
        meta.to_string().contains("\"cpmCents\":200"),
        "fees at Amazon: {meta}"
    );

    // POST /qualifications: the ledger and the audiences follow.
    let resp = invoke_http(&handler, fresh("qualifications.json", &dest)).await;
    assert_eq!(status(&resp), 200, "{resp}");
    let q = json_body(&resp);
    assert_eq!(q["totals"]["applied"], 4, "{q}");
    invoke_task(&handler, load("segment-export", "backfill.json"), 15).await;
    let members = sb.members(aud_loyal).await.unwrap();
    let lower: Vec<String> = members.iter().map(|m| m.to_ascii_lowercase()).collect();
    assert!(
        lower.contains(&"cookie-a7c3e1f0-5b2d-4e8a-9c6f-1d0b3a5e7f92".to_string()),
        "{members:?}"
    );
    assert!(
        lower.contains(&"maid-6d92078a-8246-4ba4-ae5b-76104861e7dc".to_string()),
        "{members:?}"
    );
    let members = sb.members(aud_cart).await.unwrap();
    assert_eq!(
        members,
        ["EXTERNAL_USER_ID-crm-0004417"],
        "the cookie unqualified from the cart segment"
    );

    // DELETE …/mappings/{segmentId}
    let resp = invoke_http(&handler, fresh("delete-mapping.json", &dest)).await;
    assert_eq!(status(&resp), 200, "{resp}");
    assert_eq!(json_body(&resp)["status"], "removed");
    assert_eq!(json_body(&resp)["segmentId"], cart.as_str());

    // DELETE /segments/{id}: the cart segment is no longer mapped.
    let resp = invoke_http(&handler, fresh("delete-segment.json", &dest)).await;
    assert_eq!(status(&resp), 200, "{resp}");
    assert_eq!(json_body(&resp)["deleted"], true);

    // GET /segments (paged until ours shows up; the deleted one is not listed).
    let (mut token, mut seen) = (None::<String>, Vec::<String>::new());
    for _ in 0..500 {
        let mut ev = load("segment-export", "list-segments.json");
        match &token {
            Some(t) => set_query(&mut ev, &[("limit", "100"), ("nextToken", t)]),
            None => set_query(&mut ev, &[("limit", "100")]),
        }
        let resp = invoke_http(&handler, ev).await;
        assert_eq!(status(&resp), 200, "{resp}");
        let page = json_body(&resp);
        seen.extend(
            page["segments"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|s| s["segmentId"].as_str().map(str::to_string)),
        );
        token = page["nextToken"].as_str().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    assert!(seen.contains(&loyal), "GET /segments does not list {loyal}");
    assert!(
        !seen.contains(&cart),
        "GET /segments lists the deleted {cart}"
    );

    // DELETE /destinations/{id}?purge=true: 202, deleting while its audiences are emptied.
    let resp = invoke_http(&handler, fresh("delete-destination.json", &dest)).await;
    assert_eq!(status(&resp), 202, "{resp}");
    assert_eq!(json_body(&resp)["status"], "deleting");
    let resp = invoke_http(&handler, get()).await;
    assert_eq!(json_body(&resp)["status"], "deleting", "{resp}");

    // The scheduled redrive of parked patches.
    let summary = invoke_task(&handler, load("segment-export", "redrive.json"), 15).await;
    assert_eq!(summary["task"], "redrive", "{summary}");
    assert!(summary["redrive"]["messages"].is_u64(), "{summary}");

    // The samples as they are (ids nobody created) get the documented 404s.
    let resp = invoke_http(&handler, load("segment-export", "get-destination.json")).await;
    assert_eq!(status(&resp), 404, "{resp}");
    let resp = invoke_http(&handler, load("segment-export", "get-deletion.json")).await;
    assert_eq!(status(&resp), 404, "{resp}");

    // POST /accounts/{id}/identities: hashed records for the EXTERNAL_USER_ID members.
    let resp = invoke_http(&handler, fresh("upload-identities.json", &dest)).await;
    assert_eq!(status(&resp), 200, "{resp}");
    assert_eq!(json_body(&resp)["totals"]["accepted"], 2, "{resp}");
    // POST /privacy/deletions (devices of their own: tombstones outlive the test) and its job.
    let resp = invoke_http(&handler, load("segment-export", "create-deletion.json")).await;
    assert_eq!(status(&resp), 202, "{resp}");
    let id = json_body(&resp)["deletionId"].as_str().unwrap().to_string();
    let ev = rewrite(
        &load("segment-export", "get-deletion.json"),
        &[("sample-deletion-id", &id)],
    );
    let resp = invoke_http(&handler, ev).await;
    assert_eq!(status(&resp), 200, "{resp}");
    assert_eq!(
        json_body(&resp)["devices"].as_array().unwrap().len(),
        2,
        "{resp}"
    );
}

// ------------------------------------------------------------------------ no services needed

#[test]
fn every_sample_event_is_fed_by_a_test() {
    let mut on_disk = BTreeSet::new();
    for func in std::fs::read_dir(events_dir()).unwrap() {
        let func = func.unwrap();
        for f in std::fs::read_dir(func.path()).unwrap() {
            on_disk.insert(format!(
                "{}/{}",
                func.file_name().to_string_lossy(),
                f.unwrap().file_name().to_string_lossy()
            ));
        }
    }
    let fed: BTreeSet<String> = FED
        .iter()
        .flat_map(|(func, files)| files.iter().map(move |f| format!("{func}/{f}")))
        .collect();
    let unfed: Vec<_> = on_disk.difference(&fed).collect();
    assert!(
        unfed.is_empty(),
        "sample events no test feeds to their function: {unfed:?}"
    );
    let gone: Vec<_> = fed.difference(&on_disk).collect();
    assert!(
        gone.is_empty(),
        "FED lists samples that do not exist: {gone:?}"
    );
}

/// `infra/local/env.json` (for `sam local … --env-vars`) names every function of template.yaml
/// and every variable the template gives it, and points at the local stack from inside a
/// container (`host.docker.internal`), never at the container's own loopback.
#[test]
fn env_json_covers_every_function_and_variable() {
    let template =
        read_yaml(&workspace_root().join("template.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let env_path = workspace_root().join("infra/local/env.json");
    let env: Value = serde_json::from_str(&std::fs::read_to_string(&env_path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", env_path.display()));
    let globals: BTreeSet<String> = template["Globals"]["Function"]["Environment"]["Variables"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let mut functions = 0;
    for (name, res) in template["Resources"].as_object().unwrap() {
        if res["Type"] != "AWS::Serverless::Function" {
            continue;
        }
        functions += 1;
        let vars = env[name]
            .as_object()
            .unwrap_or_else(|| panic!("env.json has no section for function {name}"));
        let mut needed = globals.clone();
        if let Some(own) = res["Properties"]["Environment"]["Variables"].as_object() {
            needed.extend(own.keys().cloned());
        }
        for v in &needed {
            assert!(vars.contains_key(v), "env.json {name} lacks {v}");
        }
        for (k, v) in vars {
            let v = v
                .as_str()
                .unwrap_or_else(|| panic!("env.json {name}.{k} must be a string"));
            // Only what the admin's browser opens may say 127.0.0.1; the function's own calls
            // run inside the container.
            let browser_facing = matches!(k.as_str(), "OAUTH_REDIRECT_URI" | "AMAZON_LWA_AUTH_URL");
            if !browser_facing {
                assert!(
                    !v.contains("127.0.0.1") && !v.contains("localhost"),
                    "env.json {name}.{k} = {v}: inside the container that is the container itself; use host.docker.internal"
                );
            }
        }
        for k in LOCAL_ENDPOINT_VARS {
            let v = vars.get(k).and_then(Value::as_str).unwrap_or("");
            assert!(
                v.starts_with("http://host.docker.internal:"),
                "env.json {name}.{k} = {v:?}"
            );
        }
        // `sam local` passes a function only the variables its template declares: an endpoint
        // override missing from template.yaml is silently dropped and the function would call
        // real AWS / Amazon from the container.
        let undeclared: Vec<&String> = vars.keys().filter(|k| !needed.contains(*k)).collect();
        assert!(
            undeclared.is_empty(),
            "env.json {name} sets {undeclared:?}, which template.yaml does not declare for it, so \
             `sam local --env-vars` drops them; declare them (empty by default) in the function's Environment"
        );
    }
    assert_eq!(
        functions, 4,
        "template.yaml should define the four adsync functions"
    );
    assert_eq!(
        env.as_object().unwrap().len(),
        functions,
        "env.json names a function template.yaml lacks"
    );
}

/// The schedules are EventBridge Scheduler (`ScheduleV2`) with an explicit `Input` that is
/// exactly a scheduled sample of the same function, so `sam local invoke -e …/backfill.json`
/// sends what AWS sends.
#[test]
fn schedules_are_schedule_v2_with_the_sample_inputs() {
    let template =
        read_yaml(&workspace_root().join("template.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let dirs = [
        ("OAuthCallbackFunction", "oauth-callback"),
        ("SegmentExportFunction", "segment-export"),
        ("ConversionIngestFunction", "conversion-ingest"),
    ];
    let mut scheduled = BTreeSet::new();
    for (logical, dir) in dirs {
        let events = template["Resources"][logical]["Properties"]["Events"]
            .as_object()
            .unwrap_or_else(|| panic!("{logical} has no Events"));
        for (name, ev) in events {
            let kind = ev["Type"].as_str().unwrap_or("");
            assert_ne!(
                kind, "Schedule",
                "{logical}.{name}: use ScheduleV2 (EventBridge Scheduler)"
            );
            if kind != "ScheduleV2" {
                continue;
            }
            let input = ev["Properties"]["Input"].as_str().unwrap_or_else(|| {
                panic!("{logical}.{name}: ScheduleV2 without an explicit Input")
            });
            let input: Value = serde_json::from_str(input)
                .unwrap_or_else(|e| panic!("{logical}.{name}: Input is not JSON: {e}"));
            let task = input["task"]
                .as_str()
                .unwrap_or_else(|| panic!("{logical}.{name}: Input has no task: {input}"));
            assert_eq!(
                load(dir, &format!("{task}.json")),
                input,
                "{logical}.{name}: the schedule's Input differs from infra/events/{dir}/{task}.json"
            );
            scheduled.insert(format!("{dir}/{task}"));
        }
    }
    let expected: BTreeSet<String> = [
        "oauth-callback/cleanup",
        "segment-export/backfill",
        "segment-export/redrive",
        "conversion-ingest/redrive",
        "conversion-ingest/redrive-dlq",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(scheduled, expected);
}

/// Every HTTP sample is a well-formed API Gateway HTTP API (payload 2.0) event as the AWS Lambda
/// Rust runtime's own event types read it: method, path, path parameters, query and body agree
/// with what adsync's parser sees.
#[test]
fn http_samples_are_api_gateway_v2_events() {
    use lambda_http::RequestExt;
    use lambda_http::request::RequestContext;
    for func in std::fs::read_dir(events_dir()).unwrap() {
        let func = func.unwrap();
        for f in std::fs::read_dir(func.path()).unwrap() {
            let path = f.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let ev: Value = serde_json::from_str(&text).unwrap();
            if ev.get("task").is_some() {
                continue;
            }
            let name = path.display().to_string();
            assert_eq!(ev["version"], "2.0", "{name}");
            assert_eq!(ev["routeKey"], ev["requestContext"]["routeKey"], "{name}");
            assert_eq!(
                ev["rawPath"], ev["requestContext"]["http"]["path"],
                "{name}"
            );
            let req =
                lambda_http::request::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                matches!(req.request_context(), RequestContext::ApiGatewayV2(_)),
                "{name} is not read as an HTTP API (payload 2.0) event"
            );
            let ours = adsync::http::HttpRequest::from_apigw_v2(&ev)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(req.method().as_str(), ours.method, "{name}");
            assert_eq!(req.uri().path(), ours.path, "{name}");
            assert_eq!(req.uri().query().unwrap_or(""), ours.raw_query, "{name}");
            let params = req.path_parameters();
            for (k, v) in ev["pathParameters"].as_object().into_iter().flatten() {
                assert_eq!(params.first(k), v.as_str(), "{name}: path parameter {k}");
                assert!(
                    ours.path.contains(v.as_str().unwrap()),
                    "{name}: {k} is not in the path"
                );
            }
            assert_eq!(req.body().as_ref(), ours.body.as_slice(), "{name}: body");
            if !ours.body.is_empty() {
                assert_eq!(
                    ours.header("content-length"),
                    Some(ours.body.len().to_string().as_str()),
                    "{name}: content-length"
                );
            }
        }
    }
}
