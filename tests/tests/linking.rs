//! Account linking against the local stack: DynamoDB Local (accounts table), moto (token
//! secrets, API keys) and the Amazon sandbox (consent page, token endpoint, profiles,
//! advertisers). The tests play the browser step by step with a client that does not follow
//! redirects, and call the oauth-callback handler directly.
//!
//! Needs the stack env (`set -a; . .local/stack.env; set +a`); fails naming what is missing.

#[path = "linking_support/mod.rs"]
mod support;

use adsync::amazon::{LoginRef, Region};
use adsync::http::HttpRequest;
use adsync::http::accounts::require_active;
use adsync::linking::random_token;
use adsync::store::accounts::{AccountStatus, ConnectionStatus, IntegratedAccount};
use adsync_tests::sandbox::{SandboxAdvertiser, SandboxProfile, SandboxUser, random_id};
use support::*;

const REDIRECT: &str = "http://127.0.0.1:9/oauth/callback";

fn sample_account(advertiser_id: i64, secret: &str) -> IntegratedAccount {
    IntegratedAccount {
        account_id: advertiser_id.to_string(),
        region: Region::NA,
        profile_id: random_id(15),
        advertiser_id,
        name: "Acme <US>".into(),
        currency: "USD".into(),
        country: "US".into(),
        connection_id: "c-test".into(),
        token_secret: secret.into(),
        status: AccountStatus::Active,
        created_at: "2026-11-23T00:00:00.000Z".into(),
    }
}

#[tokio::test]
async fn account_store_round_trip_and_reauthorization() {
    let stack = stack().await;
    let store =
        adsync::store::accounts::AccountStore::new(stack.aws.dynamodb.clone(), stack.table.clone());
    let secret = format!("adsync-test/tokens-{}", uuid::Uuid::new_v4().simple());
    let a = sample_account(random_id(14), &secret);
    let b = sample_account(random_id(14), &secret);
    let other = sample_account(random_id(14), &format!("{secret}-other"));
    for x in [&a, &b, &other] {
        store.put_account(x).await.unwrap();
    }
    assert_eq!(
        store.get_account(&a.account_id).await.unwrap().as_ref(),
        Some(&a)
    );
    assert_eq!(
        store.get_account(&random_id(14).to_string()).await.unwrap(),
        None
    );

    assert_eq!(
        store.mark_reauthorization_required(&secret).await.unwrap(),
        2
    );
    // Already marked: nothing changes the second time.
    assert_eq!(
        store.mark_reauthorization_required(&secret).await.unwrap(),
        0
    );
    let got = store.get_account(&b.account_id).await.unwrap();
    assert_eq!(
        got.as_ref().map(|x| x.status),
        Some(AccountStatus::ReauthorizationRequired)
    );
    assert_eq!(
        require_active(&b.account_id, got).unwrap_err().status(),
        409
    );
    let got = store.get_account(&other.account_id).await.unwrap();
    assert_eq!(
        require_active(&other.account_id, got)
            .unwrap()
            .advertiser_id,
        other.advertiser_id
    );

    let listed = store.list_accounts().await.unwrap();
    assert!(listed.iter().any(|x| x.account_id == a.account_id));
    let removed = store.remove_account(&a.account_id).await.unwrap();
    assert_eq!(removed.map(|x| x.account_id), Some(a.account_id.clone()));
    assert_eq!(store.remove_account(&a.account_id).await.unwrap(), None);
    assert!(
        !store
            .list_accounts()
            .await
            .unwrap()
            .iter()
            .any(|x| x.account_id == a.account_id)
    );
    assert_eq!(
        store.account_ids_on_login(&secret).await.unwrap(),
        vec![b.account_id.clone()]
    );
    let got = store.get_account(&a.account_id).await.unwrap();
    assert_eq!(
        require_active(&a.account_id, got).unwrap_err().status(),
        404
    );
}

/// The whole flow in every region, with the logs captured and searched for every secret value
/// that passed through (code, state, tokens, client secret, view id, CSRF token).
#[tokio::test]
async fn links_an_account_in_each_region_without_logging_secrets() {
    let stack = stack().await;
    let logs = capture_logs();
    let rig = rig(&stack, REDIRECT).await;
    let user = user_in_every_region(&rig.sandbox, 2).await;
    let mut secrets_seen = vec![rig.client.client_secret.clone()];
    let mut connections = Vec::new();

    for region in Region::ALL {
        let (cid, authorize_url) = rig
            .create_connection(&region.as_str().to_ascii_lowercase())
            .await;
        connections.push(cid.clone());
        let url = url::Url::parse(&authorize_url).unwrap();
        assert_eq!(
            url.as_str().split('?').next().unwrap(),
            rig.linking.amazon().endpoints().consent_url(region)
        );
        let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(q["client_id"], rig.client.client_id);
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["redirect_uri"], REDIRECT);
        assert!(
            q["scope"].contains("advertising::audiences"),
            "{}",
            q["scope"]
        );
        assert!(q["state"].len() >= 22, "state must carry ≥ 128 bits");
        secrets_seen.push(q["state"].clone());

        let back = rig.consent(&authorize_url, &user.user_id, false).await;
        let bq: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(back.as_bytes())
                .into_owned()
                .collect();
        secrets_seen.push(bq["code"].clone());

        let r = rig.callback(&back).await;
        assert_eq!(r.status, 303, "{region}: {}", r.body);
        let loc = r.headers["location"].clone();
        assert!(loc.starts_with("callback?view="), "{loc}");
        assert!(!loc.contains(&bq["code"]) && !loc.contains(&bq["state"]));
        assert_eq!(r.headers["cache-control"], "no-store");
        secrets_seen.push(loc.trim_start_matches("callback?view=").to_string());

        let page = rig.follow(&r).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
        assert_eq!(page.headers["cache-control"], "no-store");
        assert_eq!(page.headers["referrer-policy"], "no-referrer");
        let csp = &page.headers["content-security-policy"];
        assert!(
            csp.starts_with("default-src 'none'") && !csp.contains("script-src"),
            "{csp}"
        );
        // Only this region's profile is offered (the one sandbox serves every region).
        let profile = user
            .profiles
            .iter()
            .find(|p| p.country_code == market(region).0)
            .unwrap();
        let want: Vec<String> = {
            let mut v: Vec<&SandboxAdvertiser> = profile.advertisers.iter().collect();
            v.sort_by(|a, b| a.name.cmp(&b.name));
            v.iter().map(|a| a.advertiser_id.to_string()).collect()
        };
        assert_eq!(advertiser_ids(&page.body), want, "{region}");
        // Names are escaped, never raw markup.
        assert!(!page.body.contains("<b>\"quoted\"</b>"));
        assert!(
            page.body.contains("&#60;b&#62;&#34;quoted&#34;"),
            "{}",
            page.body
        );
        let csrf = csrf_of(&page.body);
        secrets_seen.push(csrf.clone());

        let chosen = &profile.advertisers[1];
        let done = rig.confirm(&csrf, &chosen.advertiser_id.to_string()).await;
        assert_eq!(done.status, 200, "{}", done.body);
        assert_eq!(title_of(&done.body), "Account linked");
        assert!(done.body.contains(&format!(
            r#"<code id="account-id">{}</code>"#,
            chosen.advertiser_id
        )));
        // Confirming again (a double submit) answers the same page.
        let again = rig.confirm(&csrf, &chosen.advertiser_id.to_string()).await;
        assert_eq!((again.status, &again.body), (200, &done.body));

        let acc = rig
            .accounts
            .get_account(&chosen.advertiser_id.to_string())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                acc.region,
                acc.profile_id,
                acc.advertiser_id,
                acc.currency.as_str(),
                acc.country.as_str()
            ),
            (
                region,
                profile.profile_id,
                chosen.advertiser_id,
                market(region).1,
                market(region).0
            )
        );
        assert_eq!(
            (acc.status, acc.connection_id.as_str()),
            (AccountStatus::Active, cid.as_str())
        );
        assert_eq!(acc.token_secret, rig.secret_name(&cid));
        let conn = rig.accounts.get_connection(&cid).await.unwrap().unwrap();
        assert_eq!(conn.status, ConnectionStatus::Linked);

        let secret = rig
            .token_secret(&cid)
            .await
            .expect("the token secret exists");
        assert_eq!(secret["region"], region.as_str());
        for k in ["refresh_token", "access_token"] {
            let v = secret[k].as_str().unwrap().to_string();
            assert!(!page.body.contains(&v) && !done.body.contains(&v));
            secrets_seen.push(v);
        }
    }

    let listed = rig
        .call(rig.with_key(HttpRequest::new("GET", "/accounts")))
        .await;
    assert_eq!(listed.status, 200);
    let accounts = listed.json_body()["accounts"].as_array().unwrap().clone();
    for cid in &connections {
        let a = accounts
            .iter()
            .find(|a| a["connectionId"] == cid.as_str())
            .expect("listed");
        assert_eq!(a["status"], "active");
        assert!(a.get("tokenSecret").is_none());
    }

    let text = logs.contents();
    // The capture works (a log search over nothing would prove nothing)...
    for cid in &connections {
        assert!(
            text.contains(cid.as_str()),
            "connection {cid} is not in the logs:\n{text}"
        );
    }
    assert!(
        text.contains("/oauth/callback"),
        "the runtime's request lines are captured too:\n{text}"
    );
    // ...and none of the secrets is in it.
    for s in &secrets_seen {
        assert!(
            s.len() >= 16,
            "a secret value too short to search for: {s:?}"
        );
        assert!(
            !text.contains(s.as_str()),
            "a log line contains a secret value {s:?}:\n{text}"
        );
    }
}

async fn token_requests(rig: &Rig) -> usize {
    rig.sandbox
        .requests(Some(&rig.client.client_id), Some("/auth/o2/token"))
        .await
        .unwrap()
        .len()
}

#[tokio::test]
async fn a_reused_state_is_refused_without_a_second_exchange() {
    let stack = stack().await;
    let rig = rig(&stack, REDIRECT).await;
    let user = user_in_every_region(&rig.sandbox, 1).await;
    let (cid, url) = rig.create_connection("NA").await;
    let back = rig.consent(&url, &user.user_id, false).await;
    assert_eq!(rig.callback(&back).await.status, 303);
    assert_eq!(token_requests(&rig).await, 1);

    let again = rig.callback(&back).await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(title_of(&again.body), "This sign-in link was already used");
    assert_eq!(
        token_requests(&rig).await,
        1,
        "a reused state must not reach Amazon"
    );
    // The first use stands.
    let conn = rig.accounts.get_connection(&cid).await.unwrap().unwrap();
    assert_eq!(conn.status, ConnectionStatus::Consented);
    assert!(rig.token_secret(&cid).await.is_some());
}

#[tokio::test]
async fn an_expired_state_is_refused() {
    let stack = stack().await;
    let rig = rig(&stack, REDIRECT).await;
    let user = user_in_every_region(&rig.sandbox, 1).await;
    let cid = uuid::Uuid::new_v4().simple().to_string();
    let state = random_token().unwrap();
    let past = chrono::Utc::now().timestamp() - 1;
    rig.accounts
        .create_connection(&cid, Region::EU, &state, past, past)
        .await
        .unwrap();
    let url = rig
        .linking
        .amazon()
        .authorize_url(Region::EU, REDIRECT, &state)
        .await
        .unwrap();
    let back = rig.consent(&url, &user.user_id, false).await;
    let r = rig.callback(&back).await;
    assert_eq!(r.status, 410, "{}", r.body);
    assert_eq!(title_of(&r.body), "This sign-in link has expired");
    assert!(r.body.contains("POST /connections"));
    assert_eq!(token_requests(&rig).await, 0);
    assert!(rig.token_secret(&cid).await.is_none());
}

#[tokio::test]
async fn a_forged_or_missing_state_is_refused() {
    let stack = stack().await;
    let rig = rig(&stack, REDIRECT).await;
    let r = rig
        .callback(&format!("code=ANfake&state={}", random_token().unwrap()))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(title_of(&r.body), "This sign-in link is not valid");
    let r = rig.callback("code=ANfake").await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = rig.callback("").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(token_requests(&rig).await, 0);
}

#[tokio::test]
async fn access_denied_leaves_no_connection_behind() {
    let stack = stack().await;
    let rig = rig(&stack, REDIRECT).await;
    let user = user_in_every_region(&rig.sandbox, 1).await;
    let (cid, url) = rig.create_connection("FE").await;
    let back = rig.consent(&url, &user.user_id, true).await;
    assert!(back.contains("error=access_denied"), "{back}");
    let r = rig.callback(&back).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(title_of(&r.body), "Access was not granted");
    assert!(r.body.contains("POST /connections"));
    let conn = rig.accounts.get_connection(&cid).await.unwrap().unwrap();
    assert_eq!(
        (conn.status, conn.failure.as_deref()),
        (ConnectionStatus::Failed, Some("access_denied"))
    );
    assert!(rig.token_secret(&cid).await.is_none());
    // The state was spent: replaying the consent answer does not revive the connection.
    let replay = rig.callback(&back).await;
    assert_eq!(replay.status, 403);
    let r = rig
        .callback(
            &back
                .replace("error=access_denied&", "code=x&")
                .replace("error_description=", "d="),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(token_requests(&rig).await, 0);
}

#[tokio::test]
async fn invalid_grant_on_exchange_leaves_no_connection_behind() {
    let stack = stack().await;
    let rig = rig(&stack, REDIRECT).await;
    let user = user_in_every_region(&rig.sandbox, 1).await;
    let (cid, url) = rig.create_connection("NA").await;
    let back = rig.consent(&url, &user.user_id, false).await;
    let code = url::form_urlencoded::parse(back.as_bytes())
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    // Someone else spends the code first: Amazon now answers invalid_grant. With PKCE a stolen
    // code alone cannot be spent; the spender here also has the connection's verifier.
    let spend = |verifier: Option<String>| {
        let mut form = vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code.clone()),
            ("redirect_uri", REDIRECT.to_string()),
            ("client_id", rig.client.client_id.clone()),
            ("client_secret", rig.client.client_secret.clone()),
        ];
        if let Some(v) = verifier {
            form.push(("code_verifier", v));
        }
        reqwest::Client::new()
            .post(rig.sandbox.token_url())
            .form(&form)
            .send()
    };
    assert_eq!(spend(None).await.unwrap().status().as_u16(), 400);
    let binding = adsync::linking::binding::BindingStore::new(
        rig.accounts.client().clone(),
        rig.accounts.table().to_string(),
    )
    .get(&cid)
    .await
    .unwrap()
    .expect("the connection's binding");
    let spent = spend(binding.code_verifier).await.unwrap();
    assert_eq!(spent.status().as_u16(), 200);

    let r = rig.callback(&back).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(title_of(&r.body), "Amazon did not accept the sign-in code");
    let conn = rig.accounts.get_connection(&cid).await.unwrap().unwrap();
    assert_eq!(
        (conn.status, conn.failure.as_deref()),
        (ConnectionStatus::Failed, Some("exchange_failed"))
    );
    assert!(rig.token_secret(&cid).await.is_none());
}

#[tokio::test]
async fn a_login_without_advertisers_is_refused_and_its_token_deleted() {
    let stack = stack().await;
    let rig = rig(&stack, REDIRECT).await;
    // Advertisers only in an EU profile, plus an empty NA agency profile: NA has nothing.
    let user = SandboxUser {
        user_id: format!("user-{}", uuid::Uuid::new_v4().simple()),
        profiles: vec![
            SandboxProfile {
                profile_id: random_id(15),
                country_code: "US".into(),
                currency_code: "USD".into(),
                timezone: "UTC".into(),
                kind: "agency".into(),
                name: "Empty agency".into(),
                advertisers: vec![],
            },
            SandboxProfile {
                profile_id: random_id(15),
                country_code: "DE".into(),
                currency_code: "EUR".into(),
                timezone: "UTC".into(),
                kind: "agency".into(),
                name: "EU agency".into(),
                advertisers: vec![SandboxAdvertiser {
                    advertiser_id: random_id(13),
                    name: "EU only".into(),
                    currency: "EUR".into(),
                    country: "DE".into(),
                    timezone: "UTC".into(),
                }],
            },
        ],
    };
    rig.sandbox.register_user(&user).await.unwrap();
    let (cid, url) = rig.create_connection("NA").await;
    let back = rig.consent(&url, &user.user_id, false).await;
    let r = rig.callback(&back).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(title_of(&r.body), "No advertiser accounts found");
    assert_eq!(token_requests(&rig).await, 1);
    let conn = rig.accounts.get_connection(&cid).await.unwrap().unwrap();
    assert_eq!(
        (conn.status, conn.failure.as_deref()),
        (ConnectionStatus::Failed, Some("no_advertisers"))
    );
    assert!(conn.advertisers.is_empty());
    assert!(
        rig.token_secret(&cid).await.is_none(),
        "the token secret must be deleted"
    );
}

#[tokio::test]
async fn token_refresh_writes_the_new_access_token_back() {
    let stack = stack().await;
    let rig = rig(&stack, REDIRECT).await;
    let user = user_in_every_region(&rig.sandbox, 1).await;
    let (cid, url) = rig.create_connection("EU").await;
    let back = rig.consent(&url, &user.user_id, false).await;
    assert_eq!(rig.callback(&back).await.status, 303);
    let before = rig.token_secret(&cid).await.unwrap();

    // Amazon now refuses the access token we hold: the next call refreshes once and resends.
    rig.sandbox
        .expire_access_tokens(&user.user_id)
        .await
        .unwrap();
    let login = LoginRef {
        region: Region::EU,
        secret_name: rig.secret_name(&cid),
    };
    let profiles = rig
        .linking
        .amazon()
        .list_profiles(&login)
        .await
        .expect("the call succeeds after a refresh");
    assert_eq!(profiles.len(), 3);
    let after = rig.token_secret(&cid).await.unwrap();
    assert_ne!(
        after["access_token"], before["access_token"],
        "the refreshed token is written back"
    );
    assert_eq!(after["refresh_token"], before["refresh_token"]);
    assert!(
        after["access_token_expires_at"].as_i64().unwrap() > chrono::Utc::now().timestamp() + 600
    );
    assert_eq!(token_requests(&rig).await, 2);
}

#[tokio::test]
async fn confirm_accepts_only_its_own_forms_and_listed_advertisers() {
    let stack = stack().await;
    let rig = rig(&stack, REDIRECT).await;
    let user = user_in_every_region(&rig.sandbox, 2).await;
    let (cid, url) = rig.create_connection("NA").await;
    let back = rig.consent(&url, &user.user_id, false).await;
    let redirect = rig.callback(&back).await;
    let page = rig.follow(&redirect).await;
    let ids = advertiser_ids(&page.body);
    let csrf = csrf_of(&page.body);

    let forged = rig.confirm(&random_token().unwrap(), &ids[0]).await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    let not_listed = rig.confirm(&csrf, &random_id(13).to_string()).await;
    assert_eq!(not_listed.status, 400, "{}", not_listed.body);
    assert_eq!(
        title_of(&not_listed.body),
        "This advertiser was not offered"
    );
    // That form is now spent on the unlisted id: using it for a listed one is refused.
    let other = rig.confirm(&csrf, &ids[0]).await;
    assert_eq!(other.status, 409, "{}", other.body);
    let missing = rig
        .call(
            HttpRequest::new("POST", "/oauth/confirm")
                .with_header("content-type", "application/x-www-form-urlencoded")
                .with_body(format!("csrf={csrf}")),
        )
        .await;
    assert_eq!(missing.status, 400);
    assert!(missing.body.contains("advertiserId"));

    // Reloading the list gives a fresh form: both advertisers of the login can be linked.
    for id in &ids {
        let page = rig.follow(&redirect).await;
        let ok = rig.confirm(&csrf_of(&page.body), id).await;
        assert_eq!(ok.status, 200, "{}", ok.body);
    }
    let on_login = rig
        .accounts
        .account_ids_on_login(&rig.secret_name(&cid))
        .await
        .unwrap();
    assert_eq!(on_login.len(), 2);
    assert_eq!(
        rig.callback(&format!("view={}", random_token().unwrap()))
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn unlinking_deletes_the_token_only_with_the_last_account() {
    let stack = stack().await;
    let rig = rig(&stack, REDIRECT).await;
    let user = user_in_every_region(&rig.sandbox, 2).await;
    let (cid, url) = rig.create_connection("FE").await;
    let back = rig.consent(&url, &user.user_id, false).await;
    let redirect = rig.callback(&back).await;
    let ids = advertiser_ids(&rig.follow(&redirect).await.body);
    let mut forms = Vec::new();
    for id in &ids {
        let page = rig.follow(&redirect).await;
        let csrf = csrf_of(&page.body);
        assert_eq!(rig.confirm(&csrf, id).await.status, 200);
        forms.push(csrf);
    }

    // Consent revoked: both accounts show it.
    assert_eq!(
        rig.accounts
            .mark_reauthorization_required(&rig.secret_name(&cid))
            .await
            .unwrap(),
        2
    );
    let listed = rig
        .call(rig.with_key(HttpRequest::new("GET", "/accounts")))
        .await
        .json_body();
    for id in &ids {
        let a = listed["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["accountId"] == id.as_str())
            .unwrap();
        assert_eq!(a["status"], "reauthorization_required");
    }

    let del =
        |id: String| rig.call(rig.with_key(HttpRequest::new("DELETE", &format!("/accounts/{id}"))));
    let r = del(ids[0].clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json_body()["tokenSecretDeleted"], false);
    assert!(
        rig.token_secret(&cid).await.is_some(),
        "the other account still uses the login"
    );
    let r = del(ids[1].clone()).await;
    assert_eq!(r.json_body()["tokenSecretDeleted"], true, "{}", r.body);
    assert!(rig.token_secret(&cid).await.is_none());
    let gone = rig.accounts.get_account(&ids[1]).await.unwrap().unwrap();
    assert_eq!(gone.status, AccountStatus::Removed);
    // Reloading the old success page (re-posting its form) does not bring the account back.
    let resubmit = rig.confirm(&forms[1], &ids[1]).await;
    assert_eq!(resubmit.status, 410, "{}", resubmit.body);
    let still = rig.accounts.get_account(&ids[1]).await.unwrap().unwrap();
    assert_eq!(still.status, AccountStatus::Removed);
    let r = del(ids[1].clone()).await;
    assert_eq!(
        (r.status, r.json_body()["error"]["code"].as_str()),
        (404, Some("account_not_found"))
    );
    let r = rig
        .call(HttpRequest::new("DELETE", &format!("/accounts/{}", ids[0])))
        .await;
    assert_eq!(r.status, 401);
    let listed = rig
        .call(rig.with_key(HttpRequest::new("GET", "/accounts")))
        .await
        .json_body();
    assert!(
        !listed["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| ids.contains(&a["accountId"].as_str().unwrap().to_string()))
    );
}

#[tokio::test]
async fn create_connection_validates_the_region_and_the_key() {
    let stack = stack().await;
    let rig = rig(&stack, REDIRECT).await;
    let post = |body: &str, key: bool| {
        let req = HttpRequest::new("POST", "/lambda-url/oauth-callback/connections")
            .with_header("content-type", "application/json")
            .with_body(body.to_string());
        rig.call(if key { rig.with_key(req) } else { req })
    };
    let r = post(r#"{"region":"US"}"#, true).await;
    assert_eq!(r.status, 400);
    let e = &r.json_body()["error"];
    assert_eq!(e["field"], "region");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains(r#""NA", "EU", "FE""#),
        "{e}"
    );
    assert_eq!(post("{}", true).await.status, 400);
    assert_eq!(post(r#"{"region":1}"#, true).await.status, 400);
    assert_eq!(post(r#"{"region":"NA"}"#, false).await.status, 401);
    let ok = post(r#"{"region":"NA"}"#, true).await;
    assert_eq!(ok.status, 201, "{}", ok.body);
    let v = ok.json_body();
    let expires = chrono::DateTime::parse_from_rfc3339(v["expiresAt"].as_str().unwrap()).unwrap();
    let left = expires.timestamp() - chrono::Utc::now().timestamp();
    assert!((590..=600).contains(&left), "{left}");
}

/// One NA agency profile with `n` advertisers.
fn agency_user(n: usize) -> SandboxUser {
    SandboxUser {
        user_id: format!("user-{}", uuid::Uuid::new_v4().simple()),
        profiles: vec![SandboxProfile {
            profile_id: random_id(15),
            country_code: "US".into(),
            currency_code: "USD".into(),
            timezone: "UTC".into(),
            kind: "agency".into(),
            name: "Big agency".into(),
            advertisers: (0..n)
                .map(|i| SandboxAdvertiser {
                    advertiser_id: random_id(13),
                    name: format!("Advertiser {i}"),
                    currency: "USD".into(),
                    country: "US".into(),
                    timezone: "UTC".into(),
                })
                .collect(),
        }],
    }
}

async fn advertiser_pages(rig: &Rig) -> Vec<adsync_tests::sandbox::RequestRecord> {
    rig.sandbox
        .requests(Some(&rig.client.client_id), Some("/dsp/advertisers"))
        .await
        .unwrap()
}

#[tokio::test]
async fn advertiser_pages_are_read_together_and_stop_at_the_cap() {
    let stack = stack().await;
    let rig = rig(&stack, REDIRECT).await;
    // 250 advertisers = 3 pages, each taking 1.5 s at Amazon: pages 2 and 3 go out together.
    let user = agency_user(250);
    rig.sandbox.register_user(&user).await.unwrap();
    let slow = adsync_tests::sandbox::FaultSpec::delay_ms(1_500)
        .path_prefix("/dsp/advertisers")
        .client_id(&rig.client.client_id)
        .forever();
    let fault = rig.sandbox.add_fault(&slow).await.unwrap();
    let (_, url) = rig.create_connection("NA").await;
    let back = rig.consent(&url, &user.user_id, false).await;
    let r = rig.callback(&back).await;
    rig.sandbox.remove_fault(&fault).await.unwrap();
    let page = rig.follow(&r).await;
    assert_eq!(advertiser_ids(&page.body).len(), 250);
    let mut at: Vec<i64> = advertiser_pages(&rig)
        .await
        .iter()
        .map(|r| r.at_ms)
        .collect();
    at.sort_unstable();
    assert_eq!(at.len(), 3);
    assert!(at[1] - at[0] >= 1_400, "the first page comes first: {at:?}");
    assert!(
        at[2] - at[1] < 1_000,
        "the other pages are read together: {at:?}"
    );

    // 1 500 advertisers: the cap (1 000) is known to be passed after 11 pages, not 15.
    let rig = support::rig(&stack, REDIRECT).await;
    let user = agency_user(1_500);
    rig.sandbox.register_user(&user).await.unwrap();
    let (_, url) = rig.create_connection("NA").await;
    let back = rig.consent(&url, &user.user_id, false).await;
    let r = rig.callback(&back).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(title_of(&r.body), "Too many advertiser accounts");
    assert!(r.body.contains("1500 advertiser accounts"), "{}", r.body);
    assert_eq!(advertiser_pages(&rig).await.len(), 11);
}

#[tokio::test]
async fn a_listing_amazon_is_too_slow_for_says_so_within_the_budget() {
    let stack = stack().await;
    let rig = rig(&stack, REDIRECT).await;
    let user = agency_user(3);
    rig.sandbox.register_user(&user).await.unwrap();
    let slow = adsync_tests::sandbox::FaultSpec::delay_ms(40_000)
        .path_prefix("/dsp/advertisers")
        .client_id(&rig.client.client_id)
        .forever();
    let fault = rig.sandbox.add_fault(&slow).await.unwrap();
    let (cid, url) = rig.create_connection("NA").await;
    let back = rig.consent(&url, &user.user_id, false).await;
    let req = HttpRequest::new("GET", "/oauth/callback").with_query(&back);
    let budget = adsync::budget::HttpBudget {
        total: std::time::Duration::from_secs(6),
        reserve: std::time::Duration::from_secs(2),
    };
    let t0 = std::time::Instant::now();
    let r = adsync::runtime::answer_within(
        &rig.linking,
        req.clone(),
        adsync::runtime::Invocation::with_timeout(60),
        &serde_json::json!({}),
        budget,
    )
    .await;
    let took = t0.elapsed();
    rig.sandbox.remove_fault(&fault).await.unwrap();
    validate(&req, &r);
    assert!(took < budget.total, "answered after {took:?}");
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(
        title_of(&r.body),
        "Amazon is too slow to list the advertiser accounts"
    );
    let conn = rig.accounts.get_connection(&cid).await.unwrap().unwrap();
    assert_eq!(conn.status, ConnectionStatus::Failed);
    assert!(
        rig.token_secret(&cid).await.is_none(),
        "the login was not kept"
    );
}

#[tokio::test]
async fn a_confirm_records_the_relink_and_accounts_show_their_parked_work() {
    use adsync::store::parked_counts::{Counter, ParkedCounts};
    let stack = stack().await;
    let rig = rig(&stack, REDIRECT).await;
    let user = agency_user(1);
    rig.sandbox.register_user(&user).await.unwrap();
    let (_, url) = rig.create_connection("NA").await;
    let back = rig.consent(&url, &user.user_id, false).await;
    let page = rig.follow(&rig.callback(&back).await).await;
    let id = advertiser_ids(&page.body)[0].clone();
    let counts = ParkedCounts::new(&rig.accounts);
    let before = adsync::runtime::now_ms();
    assert_eq!(rig.confirm(&csrf_of(&page.body), &id).await.status, 200);
    // The schedule's redrive-dlq moves work dead-lettered before this time back.
    assert!(counts.relinked_at(&id).await.unwrap() >= before);
    counts
        .add(
            &id,
            &[(Counter::Conversions, 4), (Counter::PatchesDeadLettered, 2)],
        )
        .await
        .unwrap();
    let listed = rig
        .call(rig.with_key(HttpRequest::new("GET", "/accounts")))
        .await
        .json_body();
    let a = listed["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["accountId"] == id.as_str())
        .unwrap();
    assert_eq!(
        a["parked"],
        serde_json::json!({"conversions": 4, "conversionsDeadLettered": 0, "patches": 0, "patchesDeadLettered": 2})
    );
}
