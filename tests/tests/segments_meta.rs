//! Segment export, metadata side: segments, destinations, mappings, audience creation at
//! Amazon's pace, fees, export controls and Amazon's errors, through the function's router,
//! against DynamoDB Local, moto and the Amazon sandbox.
//!
//! Each test has its own sandbox LwA client, user and advertiser, its own seeded account, its own
//! API key secret and its own destinations table (the scheduled task works every queued audience
//! and backfill job of its table, so a shared table would let one test's task act on another's
//! work with the wrong LwA client).
//!
//! Run: `set -a; . .local/stack.env; set +a; cargo test -p adsync-tests --test segments_meta`

use adsync::export::members::BackfillOptions;
use adsync::export::{ExportCtx, InlineWork, route, run_task};
use adsync::http::auth::ApiKeyAuth;
use adsync::http::{HttpRequest, HttpResponse};
use adsync::runtime::Invocation;
use adsync::store::accounts::{AccountStatus, AccountStore, IntegratedAccount};
use adsync::store::destinations::DestinationStore;
use adsync::store::jobs::JobStore;
use adsync::store::ledger::LedgerStore;
use adsync::store::parked::ParkedQueue;
use adsync_tests::sandbox::random_id;
use adsync_tests::stack::{TestLogin, env, fresh_login, secret_name};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

struct Env {
    ctx: ExportCtx,
    auth: ApiKeyAuth,
    api_key: String,
    login: TestLogin,
    account: IntegratedAccount,
    table: String,
}

/// A fresh login, an active account on it (`advertiser_id` = `None`: the login's own advertiser;
/// `Some(id)`: an advertiser the login cannot reach), an API key and a context whose creating
/// requests work for `inline` before answering.
async fn setup_full(advertiser_id: Option<i64>, inline: InlineWork) -> Env {
    let login = fresh_login(1).await;
    let aws = login.aws.clone();
    let table = adsync_tests::tables::fresh_destinations_table(&aws.dynamodb).await;
    let accounts = AccountStore::new(aws.dynamodb.clone(), env("ACCOUNTS_TABLE"));
    let advertiser_id = advertiser_id.unwrap_or_else(|| login.advertiser_id());
    let account = IntegratedAccount {
        account_id: advertiser_id.to_string(),
        region: login.login.region,
        profile_id: login.profile_id(),
        advertiser_id,
        name: "Test advertiser".into(),
        currency: "USD".into(),
        country: "US".into(),
        connection_id: uuid::Uuid::new_v4().simple().to_string(),
        token_secret: login.login.secret_name.clone(),
        status: AccountStatus::Active,
        created_at: chrono::Utc::now().to_rfc3339(),
    };
    accounts
        .put_account(&account)
        .await
        .expect("seed the account");
    let ctx = ExportCtx {
        amazon: login.client.clone(),
        accounts,
        destinations: DestinationStore::new(aws.dynamodb.clone(), table.clone()),
        ledger: LedgerStore::new(aws.dynamodb.clone(), env("LEDGER_TABLE")),
        jobs: JobStore::new(aws.dynamodb.clone(), table.clone()),
        parked: ParkedQueue::new(aws.sqs.clone(), env("PARKED_PATCHES_QUEUE_URL")),
        metrics_fn: "segment-export-test",
        inline,
        options: adsync::export::ExportOptions::from_env().expect("export options"),
    };
    let api_key = format!("key-{}", uuid::Uuid::new_v4().simple());
    let keys_secret = secret_name("api-keys");
    login
        .secrets
        .put_json(
            &keys_secret,
            &json!({"keys": [{"name": "test", "sha256": ApiKeyAuth::digest(&api_key)}]}),
        )
        .await
        .expect("store the API key secret");
    let auth = ApiKeyAuth::new(login.secrets.clone(), keys_secret);
    Env {
        ctx,
        auth,
        api_key,
        login,
        account,
        table,
    }
}

/// Creating requests only queue (no Amazon call in the request): the scheduled task does the
/// work, as the tests of the metadata rules expect.
async fn setup() -> Env {
    setup_full(None, InlineWork::off()).await
}

/// Creating requests spend `inline` on their own work before answering.
async fn setup_inline(inline: InlineWork) -> Env {
    setup_full(None, inline).await
}

impl Env {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> HttpResponse {
        self.call_with(&self.ctx, method, path, body).await
    }

    /// [`Env::call`] through another context (e.g. another inline setting, same tables).
    async fn call_with(
        &self,
        ctx: &ExportCtx,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> HttpResponse {
        let mut req = HttpRequest::new(method, path)
            .with_header("authorization", &format!("Bearer {}", self.api_key));
        if let Some(b) = body {
            req = req
                .with_header("content-type", "application/json")
                .with_body(serde_json::to_vec(&b).unwrap());
        }
        let resp = route(ctx, &self.auth, &req, &Invocation::with_timeout(60)).await;
        // Every answer the tests receive must match openapi.yaml (405s are not routed by API
        // Gateway, so the spec leaves them out).
        if resp.status != 405 {
            adsync_tests::openapi::assert_http_response_valid(&req.method, &req.path, &resp);
        }
        resp
    }

    /// Calls and checks the status, printing the body when it differs.
    async fn expect(&self, method: &str, path: &str, body: Option<Value>, status: u16) -> Value {
        let r = self.call(method, path, body).await;
        assert_eq!(
            r.status, status,
            "{method} {path} answered {}: {}",
            r.status, r.body
        );
        r.json_body()
    }

    async fn segment(&self, id: &str, name: &str, controls: Value) {
        let r = self
            .call(
                "PUT",
                &format!("/segments/{id}"),
                Some(json!({"name": name, "description": format!("{name} (test)"), "dataExportControls": controls})),
            )
            .await;
        assert!(
            r.status == 200 || r.status == 201,
            "PUT /segments/{id}: {} {}",
            r.status,
            r.body
        );
    }

    /// One scheduled `{"task":"backfill"}` invocation with `secs` to live.
    async fn backfill_task(&self, secs: u64) -> Value {
        run_task(&self.ctx, "backfill", &Invocation::with_timeout(secs))
            .await
            .expect("the backfill task runs")
    }

    async fn destination(&self, id: &str) -> Value {
        self.expect("GET", &format!("/destinations/{id}"), None, 200)
            .await
    }

    fn advertiser_id(&self) -> i64 {
        self.account.advertiser_id
    }

    async fn cleanup(self) {
        let _ = self
            .login
            .aws
            .dynamodb
            .delete_table()
            .table_name(&self.table)
            .send()
            .await;
    }
}

fn seg_id(tag: &str) -> String {
    format!("{tag}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

fn mapping<'a>(dest: &'a Value, segment_id: &str) -> &'a Value {
    dest["mappings"]
        .as_array()
        .expect("mappings")
        .iter()
        .find(|m| m["segmentId"] == segment_id)
        .unwrap_or_else(|| panic!("no mapping for {segment_id} in {dest}"))
}

#[tokio::test]
async fn destination_with_several_mappings_creates_audiences_at_most_one_per_second() {
    // The shipped slice: the request creates what its time allows, the schedule the rest, and
    // together they stay at one metadata call per second.
    let env = setup_inline(InlineWork::default()).await;
    let (a, b, c) = (seg_id("lux"), seg_id("cars"), seg_id("long"));
    env.segment(&a, "Luxury Travelers", json!([])).await;
    env.segment(&b, "Cars", json!(["NO_PII_COMBINATION"])).await;
    let long_name = "Very long segment name ".repeat(10);
    env.segment(&c, &long_name, json!([])).await;

    let created = env
        .expect(
            "POST",
            "/destinations",
            Some(json!({
                "name": "Amazon DSP (test)",
                "description": "device-based destination",
                "accountId": env.account.account_id,
                "dataExportLabels": ["OFFSITE_AD_TARGETING"],
                "dataSourceCountry": ["US"],
                "ttlSeconds": 2_592_000,
                "mappings": [
                    {"segmentId": a, "audienceFees": [{"cpmCents": 150, "currency": "USD"}]},
                    {"segmentId": b},
                    {"segmentId": c},
                ]
            })),
            202,
        )
        .await;
    let id = created["destinationId"]
        .as_str()
        .expect("destinationId")
        .to_string();
    // As of the answer: the audiences the slice created are active with their id and backfill
    // progress (the first one always: nothing else holds this client's metadata slots); the
    // others still wait, pending.
    let mut created_inline = 0u64;
    for s in [&a, &b, &c] {
        let m = mapping(&created, s);
        match m["status"].as_str() {
            Some("active") => {
                assert!(m["audienceId"].as_i64().is_some(), "{m}");
                assert!(m["backfill"]["state"].is_string(), "{m}");
                created_inline += 1;
            }
            Some("pending") => assert!(m["audienceId"].is_null(), "{m}"),
            _ => panic!("unexpected mapping state in the 202: {m}"),
        }
    }
    assert!(created_inline >= 1, "{created}");
    assert_eq!(
        created["status"],
        if created_inline == 3 {
            "active"
        } else {
            "pending"
        },
        "{created}"
    );
    assert_eq!(
        mapping(&created, &b)["audienceName"],
        format!("Cars segment {}", b.replace('-', " "))
    );
    let long_audience = mapping(&created, &c)["audienceName"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        long_audience.len() <= 128 && long_audience.len() >= 120,
        "{long_audience}"
    );

    let summary = env.backfill_task(40).await;
    assert_eq!(
        summary["audiences"]["created"],
        json!(3 - created_inline),
        "{summary}"
    );

    let dest = env.destination(&id).await;
    assert_eq!(dest["status"], "active", "{dest}");
    let sandbox_audiences = env
        .login
        .sandbox
        .audiences(env.advertiser_id())
        .await
        .unwrap();
    assert_eq!(sandbox_audiences.len(), 3, "{sandbox_audiences:?}");
    for s in [&a, &b, &c] {
        let m = mapping(&dest, s);
        assert_eq!(m["status"], "active", "{m}");
        assert!(m["lastError"].is_null(), "{m}");
        // The id arrives as a JSON integer and matches the sandbox's exactly (ids exceed 2^53).
        let audience_id = m["audienceId"]
            .as_i64()
            .unwrap_or_else(|| panic!("integer audienceId in {m}"));
        let at_amazon = sandbox_audiences
            .iter()
            .find(|x| x.id == audience_id)
            .unwrap_or_else(|| panic!("audience {audience_id} not in the sandbox"));
        assert_eq!(at_amazon.name, m["audienceName"].as_str().unwrap());
        assert_eq!(
            at_amazon.metadata["externalAudienceId"],
            m["externalAudienceId"]
        );
        assert_eq!(at_amazon.metadata["dataSourceCountry"], json!(["US"]));
        assert_eq!(at_amazon.metadata["ttl"], 2_592_000);
        // Backfill was queued for every new audience.
        assert!(
            m["backfill"].is_object() && m["backfill"]["state"] != "none",
            "{m}"
        );
    }
    let lux = sandbox_audiences
        .iter()
        .find(|x| Some(x.id) == mapping(&dest, &a)["audienceId"].as_i64())
        .unwrap();
    assert_eq!(
        lux.metadata["audienceFees"],
        json!([{"cpmCents": 150, "currency": "USD"}])
    );
    assert_eq!(lux.description, "Luxury Travelers (test)");
    let text = serde_json::to_string(&dest).unwrap();
    for x in &sandbox_audiences {
        assert!(
            text.contains(&format!("\"audienceId\":{}", x.id)),
            "exact id {} in {text}",
            x.id
        );
    }

    // Amazon's 1 request/s: the sandbox saw the three creations at least a second apart.
    let reqs = env
        .login
        .sandbox
        .requests(Some(env.login.client_id()), Some("/v2/dp/audiencemetadata"))
        .await
        .unwrap();
    let mut at: Vec<i64> = reqs.iter().map(|r| r.at_ms).collect();
    at.sort();
    assert_eq!(
        reqs.iter().filter(|r| r.method == "POST").count(),
        3,
        "{reqs:?}"
    );
    assert!(reqs.iter().all(|r| r.status == 200), "{reqs:?}");
    for w in at.windows(2) {
        assert!(
            w[1] - w[0] >= 1000,
            "metadata calls {} ms apart: {at:?}",
            w[1] - w[0]
        );
    }

    // A second run has nothing to create (the queue is empty, no second audience).
    let again = env.backfill_task(20).await;
    assert_eq!(again["audiences"]["created"], 0, "{again}");
    assert_eq!(
        env.login
            .sandbox
            .audiences(env.advertiser_id())
            .await
            .unwrap()
            .len(),
        3
    );

    let list = env.expect("GET", "/destinations", None, 200).await;
    let listed = list["destinations"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{list}");
    assert_eq!(listed[0]["destinationId"], id);
    assert_eq!(listed[0]["mappings"].as_array().unwrap().len(), 3);
    env.cleanup().await;
}

#[tokio::test]
async fn export_control_conflicts_are_refused_and_later_ones_block_the_mapping() {
    let env = setup().await;
    let (s_off, s_b, s_c) = (seg_id("off"), seg_id("b"), seg_id("c"));
    env.segment(
        &s_off,
        "No off-site targeting",
        json!(["NO_OFFSITE_AD_TARGETING"]),
    )
    .await;
    env.segment(&s_b, "Blockable segment", json!([])).await;
    env.segment(&s_c, "Another segment", json!([])).await;

    // Mapping a segment whose control conflicts with a label: 409 naming both.
    let r = env
        .call(
            "POST",
            "/destinations",
            Some(json!({
                "name": "conflicting", "accountId": env.account.account_id,
                "dataExportLabels": ["PII_COMBINATION", "OFFSITE_AD_TARGETING"],
                "mappings": [{"segmentId": s_c}, {"segmentId": s_off}]
            })),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    let e = r.json_body();
    assert_eq!(e["error"]["code"], "export_control_conflict");
    assert_eq!(e["error"]["field"], "mappings[1].segmentId");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("OFFSITE_AD_TARGETING") && msg.contains("NO_OFFSITE_AD_TARGETING"),
        "{msg}"
    );
    assert!(
        env.expect("GET", "/destinations", None, 200).await["destinations"]
            .as_array()
            .unwrap()
            .is_empty(),
        "nothing was created"
    );

    let created = env
        .expect(
            "POST",
            "/destinations",
            Some(json!({
                "name": "labels", "accountId": env.account.account_id,
                "dataExportLabels": ["PII_COMBINATION"],
                "mappings": [{"segmentId": s_b}, {"segmentId": s_c}]
            })),
            202,
        )
        .await;
    let id = created["destinationId"].as_str().unwrap().to_string();
    // The same conflict through POST …/mappings.
    let r = env
        .call(
            "PATCH",
            &format!("/destinations/{id}"),
            Some(json!({"dataExportLabels": ["PII_COMBINATION", "OFFSITE_AD_TARGETING"]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = env
        .call(
            "POST",
            &format!("/destinations/{id}/mappings"),
            Some(json!({"segmentId": s_off})),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json_body()["error"]["field"], "segmentId");

    // Audiences exist and deliveries flow for both.
    env.backfill_task(30).await;
    let dest = env.destination(&id).await;
    assert_eq!(mapping(&dest, &s_b)["status"], "active", "{dest}");

    // A later control conflicts with a label: the mapping is blocked, visibly.
    env.segment(&s_b, "Blockable segment", json!(["NO_PII_COMBINATION"]))
        .await;
    let dest = env.destination(&id).await;
    let m = mapping(&dest, &s_b);
    assert_eq!(m["status"], "blocked", "{m}");
    let reason = m["blockedReason"].as_str().unwrap();
    assert!(
        reason.contains("PII_COMBINATION") && reason.contains("NO_PII_COMBINATION"),
        "{reason}"
    );
    assert_eq!(dest["status"], "attention");
    assert!(
        dest["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["segmentId"] == s_b.as_str()
                && e["message"]
                    .as_str()
                    .unwrap()
                    .contains("NO_PII_COMBINATION")),
        "{dest}"
    );
    assert_eq!(mapping(&dest, &s_c)["status"], "active");

    // Deliveries stop: a qualification for the blocked segment reaches no audience, while the
    // unblocked one still gets its member.
    let now = chrono::Utc::now().to_rfc3339();
    let r = env
        .call(
            "POST",
            "/qualifications",
            Some(json!({"qualifications": [
                {"segmentId": s_b, "deviceId": "dev-blocked", "idType": "COOKIE", "status": "qualified", "timestamp": now},
                {"segmentId": s_c, "deviceId": "dev-open", "idType": "COOKIE", "status": "qualified", "timestamp": now},
            ]})),
        )
        .await;
    assert!(
        r.status < 300,
        "POST /qualifications: {} {}",
        r.status,
        r.body
    );
    let b_audience = mapping(&dest, &s_b)["audienceId"].as_i64().unwrap();
    let c_audience = mapping(&dest, &s_c)["audienceId"].as_i64().unwrap();
    assert!(
        env.login
            .sandbox
            .members(b_audience)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        env.login.sandbox.members(c_audience).await.unwrap(),
        vec!["COOKIE-dev-open".to_string()]
    );

    // Labels changing later block too.
    env.segment(
        &s_c,
        "Another segment",
        json!(["NO_ONSITE_PERSONALIZATION"]),
    )
    .await;
    assert_eq!(
        mapping(&env.destination(&id).await, &s_c)["status"],
        "active"
    );
    env.expect(
        "PATCH",
        &format!("/destinations/{id}"),
        Some(json!({"dataExportLabels": ["PII_COMBINATION", "ONSITE_PERSONALIZATION"]})),
        200,
    )
    .await;
    let dest = env.destination(&id).await;
    assert_eq!(mapping(&dest, &s_c)["status"], "blocked", "{dest}");
    assert!(
        mapping(&dest, &s_c)["blockedReason"]
            .as_str()
            .unwrap()
            .contains("ONSITE_PERSONALIZATION")
    );

    // Resolving the conflict unblocks, and the members missed meanwhile are sent by a backfill.
    env.segment(&s_b, "Blockable segment", json!([])).await;
    let dest = env.destination(&id).await;
    assert_eq!(mapping(&dest, &s_b)["status"], "active", "{dest}");
    assert!(mapping(&dest, &s_b)["blockedReason"].is_null());
    let summary = env.backfill_task(30).await;
    assert_eq!(
        env.login.sandbox.members(b_audience).await.unwrap(),
        vec!["COOKIE-dev-blocked".to_string()],
        "the backfill after unblocking sends what the ledger gained meanwhile: {summary}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn fee_updates_need_the_advertisers_currency() {
    let env = setup().await;
    let s = seg_id("fees");
    env.segment(&s, "Fee segment", json!([])).await;
    let created = env
        .expect(
            "POST",
            "/destinations",
            Some(json!({"name": "fees", "accountId": env.account.account_id, "mappings": [{"segmentId": s}]})),
            202,
        )
        .await;
    let id = created["destinationId"].as_str().unwrap().to_string();
    env.backfill_task(20).await;
    let audience_id = mapping(&env.destination(&id).await, &s)["audienceId"]
        .as_i64()
        .unwrap();
    let puts = || async {
        env.login
            .sandbox
            .requests(Some(env.login.client_id()), Some("/v2/dp/audiencemetadata"))
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.method == "PUT")
            .count()
    };

    // Wrong currency: 400 naming the field, and Amazon is not called.
    let r = env
        .call(
            "PUT",
            &format!("/destinations/{id}/mappings/{s}/fees"),
            Some(json!({"audienceFees": [{"cpmCents": 250, "currency": "EUR"}]})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json_body()["error"]["field"], "audienceFees[0].currency");
    assert!(
        r.json_body()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("USD")
    );
    assert_eq!(puts().await, 0);

    // The advertiser's currency: Amazon gets the full metadata with the fee.
    let m = env
        .expect(
            "PUT",
            &format!("/destinations/{id}/mappings/{s}/fees"),
            Some(json!({"audienceFees": [{"cpmCents": 250, "currency": "USD"}]})),
            200,
        )
        .await;
    assert_eq!(
        m["audienceFees"],
        json!([{"cpmCents": 250, "currency": "USD"}])
    );
    assert_eq!(puts().await, 1);
    let at_amazon = env
        .login
        .sandbox
        .audiences(env.advertiser_id())
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.id == audience_id)
        .unwrap();
    assert_eq!(
        at_amazon.metadata["audienceFees"],
        json!([{"cpmCents": 250, "currency": "USD"}])
    );
    assert_eq!(at_amazon.metadata["ttl"], 2_592_000);
    assert_eq!(at_amazon.metadata["dataSourceCountry"], json!(["US"]));
    assert_eq!(
        mapping(&env.destination(&id).await, &s)["audienceFees"],
        json!([{"cpmCents": 250, "currency": "USD"}])
    );

    // Unknown mapping / destination: 404.
    let r = env
        .call(
            "PUT",
            &format!("/destinations/{id}/mappings/nope/fees"),
            Some(json!({"audienceFees": []})),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = env
        .call(
            "PUT",
            &format!("/destinations/nope/mappings/{s}/fees"),
            Some(json!({"audienceFees": []})),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    env.cleanup().await;
}

#[tokio::test]
async fn the_name_of_a_destination_cannot_change() {
    let env = setup().await;
    let created = env
        .expect(
            "POST",
            "/destinations",
            Some(json!({"name": "Original", "description": "first", "accountId": env.account.account_id, "mappings": []})),
            202,
        )
        .await;
    let id = created["destinationId"].as_str().unwrap().to_string();
    let r = env
        .call(
            "PATCH",
            &format!("/destinations/{id}"),
            Some(json!({"name": "Renamed", "description": "x"})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json_body()["error"]["field"], "name");
    assert_eq!(
        r.json_body()["error"]["message"],
        "the name of a destination cannot be changed"
    );
    // Nothing changed.
    assert_eq!(env.destination(&id).await["description"], "first");
    // The same name with a new description is fine.
    let d = env
        .expect(
            "PATCH",
            &format!("/destinations/{id}"),
            Some(json!({"name": "Original", "description": "second", "dataExportLabels": ["ONSITE_AD_TARGETING"]})),
            200,
        )
        .await;
    assert_eq!(d["description"], "second");
    assert_eq!(d["dataExportLabels"], json!(["ONSITE_AD_TARGETING"]));
    assert_eq!(d["name"], "Original");
    let r = env
        .call(
            "PATCH",
            &format!("/destinations/{id}"),
            Some(json!({"accountId": "1"})),
        )
        .await;
    assert_eq!(
        (r.status, r.json_body()["error"]["field"].clone()),
        (400, json!("accountId"))
    );
    let r = env
        .call(
            "PATCH",
            "/destinations/unknown",
            Some(json!({"description": "x"})),
        )
        .await;
    assert_eq!(r.status, 404);
    env.cleanup().await;
}

#[tokio::test]
async fn account_not_found_at_amazon_is_the_mappings_last_error() {
    // The account is linked on our side, but the login cannot reach this advertiser at Amazon.
    let unreachable = random_id(13);
    let env = setup_full(Some(unreachable), InlineWork::default()).await;
    let s = seg_id("anf");
    env.segment(&s, "Unreachable advertiser", json!([])).await;
    let created = env
        .expect(
            "POST",
            "/destinations",
            Some(json!({"name": "anf", "accountId": unreachable.to_string(), "mappings": [{"segmentId": s}]})),
            202,
        )
        .await;
    let id = created["destinationId"].as_str().unwrap().to_string();
    // The request tried at once, within its slice: its answer already says what Amazon said.
    let m = mapping(&created, &s);
    assert_eq!(m["status"], "failed", "{m}");
    assert!(
        m["lastError"].as_str().unwrap_or("").starts_with(&format!(
            "Amazon Error: Account {unreachable} was not found"
        )),
        "{m}"
    );
    assert_eq!(created["status"], "attention", "{created}");
    let summary = env.backfill_task(20).await;
    assert_eq!(
        summary["audiences"]["failed"], 0,
        "failed for good in the request, not tried again: {summary}"
    );
    let dest = env.destination(&id).await;
    let m = mapping(&dest, &s);
    assert_eq!(m["status"], "failed", "{m}");
    let err = m["lastError"].as_str().unwrap();
    assert!(
        err.starts_with(&format!(
            "Amazon Error: Account {unreachable} was not found"
        )),
        "{err}"
    );
    assert_eq!(dest["status"], "attention");
    assert_eq!(dest["errors"][0]["message"], err);
    // Failed for good: the next run does not call Amazon again.
    let before = env
        .login
        .sandbox
        .requests(Some(env.login.client_id()), None)
        .await
        .unwrap()
        .len();
    env.backfill_task(10).await;
    let after = env
        .login
        .sandbox
        .requests(Some(env.login.client_id()), None)
        .await
        .unwrap()
        .len();
    assert_eq!(before, after);
    env.cleanup().await;
}

#[tokio::test]
async fn a_revoked_login_marks_the_account_and_says_so() {
    let env = setup().await;
    let s = seg_id("reauth");
    env.segment(&s, "Reauth segment", json!([])).await;
    let created = env
        .expect(
            "POST",
            "/destinations",
            Some(json!({"name": "reauth", "accountId": env.account.account_id, "mappings": [{"segmentId": s}]})),
            202,
        )
        .await;
    let id = created["destinationId"].as_str().unwrap().to_string();
    env.login
        .sandbox
        .revoke(&env.login.user().user_id)
        .await
        .unwrap();
    env.backfill_task(20).await;
    let account = env
        .ctx
        .accounts
        .get_account(&env.account.account_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(account.status, AccountStatus::ReauthorizationRequired);
    let dest = env.destination(&id).await;
    let m = mapping(&dest, &s);
    assert_eq!(m["status"], "pending", "kept for after relinking: {m}");
    assert!(
        m["lastError"].as_str().unwrap().contains("Amazon Error"),
        "{m}"
    );
    assert_eq!(dest["status"], "attention");
    // New work for the account is refused with the contract's wording.
    let r = env
        .call(
            "POST",
            "/destinations",
            Some(json!({"name": "x", "accountId": env.account.account_id, "mappings": []})),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json_body()["error"]["code"], "reauthorization_required");
    env.cleanup().await;
}

#[tokio::test]
async fn bad_input_names_the_field_and_unknowns_are_404() {
    let env = setup().await;
    let s = seg_id("v");
    env.segment(&s, "Validation segment", json!([])).await;
    let acct = env.account.account_id.clone();
    let cases = [
        (json!({"accountId": acct, "mappings": []}), 400, "name"),
        (json!({"name": "x", "mappings": []}), 400, "accountId"),
        (
            json!({"name": "x", "accountId": acct, "dataExportLabels": ["PII_COMBINATION", "BAD"]}),
            400,
            "dataExportLabels[1]",
        ),
        (
            json!({"name": "x", "accountId": acct, "dataSourceCountry": ["US", "Germany"]}),
            400,
            "dataSourceCountry[1]",
        ),
        (
            json!({"name": "x", "accountId": acct, "ttlSeconds": 34_300_801}),
            400,
            "ttlSeconds",
        ),
        (
            json!({"name": "x", "accountId": acct, "mappings": [{"segmentId": s}, {"segmentId": s, "audienceFees": [{"cpmCents": 1, "currency": "USD"}]}]}),
            400,
            "mappings[1].segmentId",
        ),
        (
            json!({"name": "x", "accountId": acct, "mappings": [{"segmentId": s, "audienceFees": [{"cpmCents": 1, "currency": "GBP"}]}]}),
            400,
            "mappings[0].audienceFees[0].currency",
        ),
        (
            json!({"name": "x", "accountId": acct, "mappings": [{"segmentId": "missing-segment"}]}),
            404,
            "mappings[0].segmentId",
        ),
        (
            json!({"name": "x", "accountId": acct, "colour": "red"}),
            400,
            "colour",
        ),
    ];
    for (body, status, field) in cases {
        let r = env.call("POST", "/destinations", Some(body.clone())).await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert_eq!(r.json_body()["error"]["field"], field, "{body}: {}", r.body);
    }
    let r = env
        .call(
            "POST",
            "/destinations",
            Some(json!({"name": "x", "accountId": "999999999", "mappings": []})),
        )
        .await;
    assert_eq!(
        (r.status, r.json_body()["error"]["code"].clone()),
        (404, json!("account_not_found"))
    );
    let r = env
        .call("PUT", "/segments/bad%23id", Some(json!({"name": "x"})))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = env
        .call(
            "PUT",
            &format!("/segments/{s}"),
            Some(json!({"name": "x", "dataExportControls": ["NO_PII_COMBINATION", 3]})),
        )
        .await;
    assert_eq!(
        (r.status, r.json_body()["error"]["field"].clone()),
        (400, json!("dataExportControls[1]"))
    );
    assert_eq!(
        env.call("GET", "/destinations/nope", None).await.status,
        404
    );
    assert_eq!(env.call("GET", "/segments/nope", None).await.status, 404);
    assert_eq!(
        env.call("DELETE", &format!("/destinations/nope/mappings/{s}"), None)
            .await
            .status,
        404
    );

    // No API key: 401.
    let req = HttpRequest::new("GET", "/destinations");
    assert_eq!(
        route(&env.ctx, &env.auth, &req, &Invocation::with_timeout(5))
            .await
            .status,
        401
    );

    // Remove and map again: removed at once, revived later.
    let created = env
        .expect(
            "POST",
            "/destinations",
            Some(json!({"name": "rm", "accountId": acct, "mappings": [{"segmentId": s}]})),
            202,
        )
        .await;
    let id = created["destinationId"].as_str().unwrap().to_string();
    let m = env
        .expect(
            "DELETE",
            &format!("/destinations/{id}/mappings/{s}"),
            None,
            200,
        )
        .await;
    assert_eq!(m["status"], "removed");
    assert_eq!(
        env.call(
            "DELETE",
            &format!("/destinations/{id}/mappings/other"),
            None
        )
        .await
        .status,
        404
    );
    let summary = env.backfill_task(10).await;
    assert_eq!(
        summary["audiences"]["created"], 0,
        "a removed mapping gets no audience: {summary}"
    );
    let r = env
        .expect(
            "POST",
            &format!("/destinations/{id}/mappings"),
            Some(json!({"segmentId": s})),
            202,
        )
        .await;
    assert_eq!(r["mappings"][0]["status"], "pending");
    let r = env
        .call(
            "POST",
            &format!("/destinations/{id}/mappings"),
            Some(json!({"segmentId": s})),
        )
        .await;
    assert_eq!(
        (r.status, r.json_body()["error"]["code"].clone()),
        (409, json!("already_mapped"))
    );
    env.cleanup().await;
}

#[tokio::test]
async fn store_claims_each_audience_creation_once_and_paces_metadata_calls() {
    use adsync::amazon::AudienceFee;
    use adsync::domain::export_controls::ExportControl;
    use adsync::store::destinations::{Destination, MappingStatus, Segment, SegmentMapping};

    let aws = adsync_tests::stack::aws().await;
    let table = adsync_tests::tables::fresh_destinations_table(&aws.dynamodb).await;
    let store = DestinationStore::new(aws.dynamodb.clone(), table.clone());
    let now = chrono::Utc::now().to_rfc3339();
    let seg = Segment {
        segment_id: seg_id("st"),
        name: "Store segment".into(),
        description: String::new(),
        data_export_controls: vec![ExportControl::NoOnsiteAdTargeting],
        updated_at: now.clone(),
    };
    assert!(store.put_segment(&seg).await.unwrap().is_none());
    assert_eq!(store.put_segment(&seg).await.unwrap(), Some(seg.clone()));
    let d = Destination {
        destination_id: uuid::Uuid::new_v4().simple().to_string(),
        name: "store".into(),
        description: String::new(),
        account_id: "1".into(),
        data_export_labels: vec![],
        data_source_country: vec!["US".into()],
        ttl_seconds: 60,
        created_at: now.clone(),
    };
    let m = SegmentMapping {
        destination_id: d.destination_id.clone(),
        segment_id: seg.segment_id.clone(),
        status: MappingStatus::Pending,
        audience_id: None,
        external_audience_id: "x".into(),
        audience_name: "Store segment".into(),
        audience_fees: vec![AudienceFee {
            cpm_cents: 1,
            currency: "USD".into(),
        }],
        last_error: None,
        blocked_reason: None,
        created_at: now.clone(),
        updated_at: now.clone(),
    };
    store
        .create_destination(&d, std::slice::from_ref(&m))
        .await
        .unwrap();
    assert!(matches!(
        store.create_destination(&d, &[]).await,
        Err(adsync::store::StoreError::Conflict(_))
    ));
    assert_eq!(
        store
            .get_mapping(&d.destination_id, &seg.segment_id)
            .await
            .unwrap(),
        Some(m.clone())
    );
    assert_eq!(
        store.mappings_for_segment(&seg.segment_id).await.unwrap(),
        vec![m.clone()]
    );
    let queued = store.pending_audiences(10).await.unwrap();
    assert_eq!(queued.len(), 1);

    // Two invocations race for the creation: exactly one gets it.
    let (a, b) = tokio::join!(
        store.claim_creation(&d.destination_id, &seg.segment_id, 60_000),
        store.claim_creation(&d.destination_id, &seg.segment_id, 60_000)
    );
    assert_eq!(
        [a.unwrap().is_some(), b.unwrap().is_some()]
            .iter()
            .filter(|x| **x)
            .count(),
        1
    );
    // A claim given back (no metadata slot in time) can be taken again at once.
    store
        .release_creation(&d.destination_id, &seg.segment_id)
        .await
        .unwrap();
    assert!(
        store
            .claim_creation(&d.destination_id, &seg.segment_id, 60_000)
            .await
            .unwrap()
            .is_some()
    );
    // An id above 2^53 survives DynamoDB exactly.
    let id = 72_057_594_038_053_891_i64;
    let done = store
        .complete_creation(&d.destination_id, &seg.segment_id, id)
        .await
        .unwrap();
    assert_eq!(
        (done.status, done.audience_id),
        (MappingStatus::Active, Some(id))
    );
    assert!(
        store
            .claim_creation(&d.destination_id, &seg.segment_id, 60_000)
            .await
            .unwrap()
            .is_none()
    );
    store.dequeue_audience(&queued[0]).await.unwrap();
    assert!(store.pending_audiences(10).await.unwrap().is_empty());

    // Removal wins over a late completion, which still records the audience id.
    store
        .set_mapping_status(
            &d.destination_id,
            &seg.segment_id,
            &[],
            MappingStatus::Removed,
            None,
            false,
        )
        .await
        .unwrap()
        .unwrap();
    let late = store
        .complete_creation(&d.destination_id, &seg.segment_id, id)
        .await
        .unwrap();
    assert_eq!(
        (late.status, late.audience_id),
        (MappingStatus::Removed, Some(id))
    );

    // Metadata slots handed to concurrent callers are 1.1 s apart.
    let client = format!("pace-{}", uuid::Uuid::new_v4().simple());
    let mut slots =
        futures::future::join_all((0..4).map(|_| store.reserve_metadata_slot(&client, 1100)))
            .await
            .into_iter()
            .map(|s| s.unwrap())
            .collect::<Vec<i64>>();
    slots.sort();
    for w in slots.windows(2) {
        assert!(w[1] - w[0] >= 1100, "{slots:?}");
    }
    // A call that ends late pushes the next slot to a full gap after its end.
    let before = chrono::Utc::now().timestamp_millis();
    store.metadata_call_done(&client, 10_000).await.unwrap();
    let next = store.reserve_metadata_slot(&client, 1100).await.unwrap();
    assert!(next >= before + 10_000, "{next} vs {before}");
    // A slot only if it comes in time (a request's slice): otherwise nothing is reserved.
    assert_eq!(
        store
            .reserve_metadata_slot_by(&client, 1100, Some(next + 500))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .reserve_metadata_slot_by(&client, 1100, Some(next + 5_000))
            .await
            .unwrap(),
        Some(next + 1100)
    );
    let _ = aws.dynamodb.delete_table().table_name(&table).send().await;
}

// ------------------------------------------------------------------------------------------
// The creating request's slice of work (ADSYNC_INLINE_WORK_MS)

/// Posts `n` devices of `seg` to the ledger through `POST /qualifications` (every
/// `unq_every`-th unqualified, 0 = none); returns the qualified ones as the sandbox names members.
async fn qualify(
    env: &Env,
    seg: &str,
    prefix: &str,
    n: usize,
    unq_every: usize,
) -> BTreeSet<String> {
    let ts = chrono::Utc::now().timestamp_millis() - 60_000;
    let mut qualified = BTreeSet::new();
    let items: Vec<Value> = (0..n)
        .map(|i| {
            let device = format!("{prefix}-{i:05}");
            let q = unq_every == 0 || i % unq_every != 0;
            if q {
                qualified.insert(format!("COOKIE-{device}"));
            }
            json!({"segmentId": seg, "deviceId": device, "idType": "COOKIE",
                   "status": if q { "qualified" } else { "unqualified" }, "timestamp": ts})
        })
        .collect();
    for chunk in items.chunks(5_000) {
        let r = env
            .expect(
                "POST",
                "/qualifications",
                Some(json!({"qualifications": chunk})),
                200,
            )
            .await;
        assert_eq!(r["totals"]["applied"], chunk.len(), "{}", r["totals"]);
    }
    qualified
}

async fn members_of(env: &Env, audience_id: i64) -> BTreeSet<String> {
    env.login
        .sandbox
        .members(audience_id)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

async fn ledger_of(env: &Env, seg: &str) -> BTreeSet<String> {
    env.ctx
        .ledger
        .qualified_devices(seg)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// The audience creations (`POST /v2/dp/audiencemetadata/`) the sandbox saw from this test's
/// client, oldest first.
async fn audience_creations(env: &Env) -> Vec<adsync_tests::sandbox::RequestRecord> {
    let mut posts: Vec<_> = env
        .login
        .sandbox
        .requests(Some(env.login.client_id()), Some("/v2/dp/audiencemetadata"))
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    posts.sort_by_key(|r| r.at_ms);
    posts
}

fn assert_a_second_apart(posts: &[adsync_tests::sandbox::RequestRecord]) {
    let at: Vec<i64> = posts.iter().map(|r| r.at_ms).collect();
    for w in at.windows(2) {
        assert!(
            w[1] - w[0] >= 1000,
            "audience creations {} ms apart: {at:?}",
            w[1] - w[0]
        );
    }
}

fn all_active_and_backfilled(dest: &Value) -> bool {
    dest["mappings"].as_array().is_some_and(|ms| {
        ms.iter()
            .all(|m| m["status"] == "active" && m["backfill"]["state"] == "done")
    })
}

/// Scheduled `{"task":"backfill"}` runs until every mapping of `id` is active and backfilled.
async fn schedule_until_done(env: &Env, id: &str) -> Value {
    for _ in 0..12 {
        env.backfill_task(30).await;
        let dest = env.destination(id).await;
        if all_active_and_backfilled(&dest) {
            return dest;
        }
    }
    panic!(
        "the schedule did not finish destination {id}: {}",
        env.destination(id).await
    );
}

#[tokio::test]
async fn a_creating_request_creates_and_backfills_its_audiences_within_its_slice() {
    let env = setup_inline(InlineWork::with_budget(Duration::from_secs(8))).await;
    let segs = [seg_id("in0"), seg_id("in1"), seg_id("in2")];
    let mut expected = BTreeMap::new();
    for (k, sid) in segs.iter().enumerate() {
        env.segment(sid, &format!("Inline segment {k}"), json!([]))
            .await;
        let q = qualify(&env, sid, &format!("in{k}"), 20 + 15 * k, 4).await;
        expected.insert(sid.clone(), q);
    }

    // No scheduled run at all before the answer.
    let created = env
        .expect(
            "POST",
            "/destinations",
            Some(json!({
                "name": "inline", "accountId": env.account.account_id,
                "mappings": segs.iter().map(|s| json!({"segmentId": s})).collect::<Vec<_>>(),
            })),
            202,
        )
        .await;
    let id = created["destinationId"].as_str().unwrap().to_string();
    let (mut active, mut backfilled) = (0, 0);
    for sid in &segs {
        let m = mapping(&created, sid);
        match m["status"].as_str() {
            Some("active") => {
                active += 1;
                let audience = m["audienceId"].as_i64().unwrap_or_else(|| panic!("{m}"));
                assert!(m["backfill"]["state"].is_string(), "{m}");
                if m["backfill"]["state"] == "done" {
                    // Done as of the answer: Amazon already holds exactly the ledger's devices.
                    backfilled += 1;
                    let at_amazon = members_of(&env, audience).await;
                    assert_eq!(at_amazon, ledger_of(&env, sid).await, "{m}");
                    assert_eq!(at_amazon, expected[sid], "{m}");
                }
            }
            Some("pending") => assert!(m["audienceId"].is_null(), "{m}"),
            _ => panic!("unexpected mapping in the 202: {m}"),
        }
    }
    assert!(active >= 1 && backfilled >= 1, "{created}");
    assert_eq!(
        env.login
            .sandbox
            .audiences(env.advertiser_id())
            .await
            .unwrap()
            .len(),
        active,
        "every audience at Amazon so far was created by the request"
    );

    // The schedule creates the rest and finishes every backfill.
    let dest = schedule_until_done(&env, &id).await;
    for sid in &segs {
        let audience = mapping(&dest, sid)["audienceId"].as_i64().unwrap();
        assert_eq!(members_of(&env, audience).await, ledger_of(&env, sid).await);
        assert_eq!(members_of(&env, audience).await, expected[sid]);
    }
    // One audience per mapping, created a second apart by the request and the schedule together.
    let posts = audience_creations(&env).await;
    assert_eq!(posts.len(), 3, "{posts:?}");
    assert!(posts.iter().all(|r| r.status == 200), "{posts:?}");
    assert_a_second_apart(&posts);

    // A stale queue entry (the schedule read its queue before the request dequeued it) met after
    // the backfill finished must not start that backfill over.
    let m = env
        .ctx
        .destinations
        .get_mapping(&id, &segs[0])
        .await
        .unwrap()
        .expect("the mapping");
    let before = env
        .ctx
        .jobs
        .get_job(&id, &segs[0])
        .await
        .unwrap()
        .expect("its job");
    env.ctx.destinations.queue_audience(&m).await.unwrap();
    env.backfill_task(30).await;
    let after = env
        .ctx
        .jobs
        .get_job(&id, &segs[0])
        .await
        .unwrap()
        .expect("its job");
    assert_eq!(
        (after.generation, after.state),
        (before.generation, before.state),
        "a stale queue entry restarted a finished backfill"
    );
    assert_eq!(audience_creations(&env).await.len(), 3);
    env.cleanup().await;
}

#[tokio::test]
async fn a_backfill_the_slice_cannot_finish_is_resumed_by_the_schedule_without_repeats() {
    // 50 patches per body at 5 requests/s (10/s shared by 2 slots) in a 3 s slice: at most ~15
    // bodies, while this segment needs 48 (16 shards × 3). The slice ends mid-job, for sure.
    let mut inline = InlineWork::with_budget(Duration::from_secs(3));
    inline.backfill = BackfillOptions {
        max_patches: 50,
        patch_rps: 10.0,
        max_invocations: 2,
        ..BackfillOptions::default()
    };
    let env = setup_inline(inline).await;
    let seg = seg_id("big");
    env.segment(&seg, "Large segment", json!([])).await;
    let expected = qualify(&env, &seg, "lg", 2_000, 10).await;
    assert_eq!(expected.len(), 1_800);

    let created = env
        .expect(
            "POST",
            "/destinations",
            Some(json!({"name": "slow", "accountId": env.account.account_id,
                        "mappings": [{"segmentId": seg}]})),
            202,
        )
        .await;
    let id = created["destinationId"].as_str().unwrap().to_string();
    let m = mapping(&created, &seg);
    assert_eq!(m["status"], "active", "{m}");
    let audience = m["audienceId"].as_i64().unwrap();
    let b = &m["backfill"];
    assert_eq!(b["state"], "running", "{m}");
    let sent_in_request = b["devicesSent"].as_u64().unwrap();
    assert!(
        sent_in_request > 0 && sent_in_request < 1_800,
        "the request sent part of the segment and left a checkpoint: {m}"
    );
    // Amazon holds exactly what the checkpoints say was sent.
    assert_eq!(
        members_of(&env, audience).await.len() as u64,
        sent_in_request
    );

    // The schedule resumes from the checkpoints.
    let dest = schedule_until_done(&env, &id).await;
    let p = &mapping(&dest, &seg)["backfill"];
    assert_eq!(p["devicesSent"], 1_800, "{p}");
    assert_eq!(members_of(&env, audience).await, expected);
    assert_eq!(
        members_of(&env, audience).await,
        ledger_of(&env, &seg).await
    );
    // Each device sent once: Amazon received 1 800 adds in all, and every PATCH call is one
    // checkpointed batch (none repeated by the resume).
    let size = env
        .ctx
        .amazon
        .get_audience(&env.account.login(), env.account.scope(), audience)
        .await
        .unwrap()
        .audience_size
        .expect("audienceSize");
    assert_eq!(size.received_record_size, 1_800);
    let patches = env
        .login
        .sandbox
        .requests(Some(env.login.client_id()), Some("/v2/dp/audience"))
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.status == 200)
        .count() as u64;
    assert_eq!(patches, p["batches"].as_u64().unwrap(), "{p}");
    env.cleanup().await;
}

#[tokio::test]
async fn with_the_slice_off_a_creating_request_only_queues_and_calls_no_amazon() {
    let env = setup().await;
    let (a, b, c) = (seg_id("off"), seg_id("off"), seg_id("off"));
    for s in [&a, &b, &c] {
        env.segment(s, "Queued segment", json!([])).await;
        qualify(&env, s, "off", 5, 0).await;
    }
    let calls = || async {
        env.login
            .sandbox
            .requests(Some(env.login.client_id()), None)
            .await
            .unwrap()
            .len()
    };
    let before = calls().await;
    let created = env
        .expect(
            "POST",
            "/destinations",
            Some(json!({"name": "off", "accountId": env.account.account_id,
                        "mappings": [{"segmentId": a}, {"segmentId": b}]})),
            202,
        )
        .await;
    let id = created["destinationId"].as_str().unwrap().to_string();
    for s in [&a, &b] {
        let m = mapping(&created, s);
        assert_eq!(m["status"], "pending", "{m}");
        assert!(m["audienceId"].is_null() && m["backfill"].is_null(), "{m}");
    }
    assert_eq!(created["status"], "pending");
    assert!(
        created["note"]
            .as_str()
            .unwrap()
            .contains("scheduled backfill task"),
        "{created}"
    );
    let added = env
        .expect(
            "POST",
            &format!("/destinations/{id}/mappings"),
            Some(json!({"segmentId": c})),
            202,
        )
        .await;
    assert_eq!(added["mappings"][0]["status"], "pending", "{added}");
    assert_eq!(calls().await, before, "no Amazon call in the requests");
    assert!(
        env.login
            .sandbox
            .audiences(env.advertiser_id())
            .await
            .unwrap()
            .is_empty()
    );
    let summary = env.backfill_task(30).await;
    assert_eq!(summary["audiences"]["created"], 3, "{summary}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creating_requests_and_the_schedule_share_one_metadata_call_per_second() {
    let env = setup_inline(InlineWork::with_budget(Duration::from_secs(4))).await;
    let mut queue_only = env.ctx.clone();
    queue_only.inline = InlineWork::off();
    let segs: Vec<String> = (0..5).map(|k| seg_id(&format!("cc{k}"))).collect();
    let mut expected = BTreeMap::new();
    for (k, s) in segs.iter().enumerate() {
        env.segment(s, &format!("Concurrent segment {k}"), json!([]))
            .await;
        expected.insert(s.clone(), qualify(&env, s, &format!("cc{k}"), 12, 3).await);
    }
    // A destination whose two audiences wait in the queue (created with the slice off)…
    let r = env
        .call_with(
            &queue_only,
            "POST",
            "/destinations",
            Some(json!({"name": "x", "accountId": env.account.account_id,
                        "mappings": [{"segmentId": segs[0]}, {"segmentId": segs[1]}]})),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let x = r.json_body()["destinationId"].as_str().unwrap().to_string();
    // …worked by the schedule while two creating requests work their own mappings.
    let more_path = format!("/destinations/{x}/mappings");
    let (task, y, more) = tokio::join!(
        env.backfill_task(30),
        env.call(
            "POST",
            "/destinations",
            Some(json!({"name": "y", "accountId": env.account.account_id,
                        "mappings": [{"segmentId": segs[2]}, {"segmentId": segs[3]}]})),
        ),
        env.call("POST", &more_path, Some(json!({"segmentId": segs[4]}))),
    );
    assert_eq!(y.status, 202, "{}", y.body);
    assert_eq!(more.status, 202, "{}", more.body);
    let (y, more) = (y.json_body(), more.json_body());
    for m in y["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .chain(more["mappings"].as_array().unwrap())
    {
        let ok = (m["status"] == "active" && m["audienceId"].is_i64())
            || (m["status"] == "pending" && m["audienceId"].is_null());
        assert!(ok, "{m} (schedule: {task})");
    }
    let y = y["destinationId"].as_str().unwrap().to_string();
    let dx = schedule_until_done(&env, &x).await;
    let dy = schedule_until_done(&env, &y).await;

    // One audience per mapping, whoever created it, and every member list equals the ledger.
    let audiences = env
        .login
        .sandbox
        .audiences(env.advertiser_id())
        .await
        .unwrap();
    assert_eq!(audiences.len(), 5, "{audiences:?}");
    let external: BTreeSet<String> = audiences
        .iter()
        .map(|a| a.metadata["externalAudienceId"].to_string())
        .collect();
    assert_eq!(external.len(), 5, "{audiences:?}");
    for (dest, ss) in [(&dx, &segs[..2]), (&dx, &segs[4..]), (&dy, &segs[2..4])] {
        for s in ss {
            let audience = mapping(dest, s)["audienceId"].as_i64().unwrap();
            assert_eq!(members_of(&env, audience).await, expected[s], "{s}");
        }
    }
    let posts = audience_creations(&env).await;
    assert_eq!(posts.len(), 5, "{posts:?}");
    assert_a_second_apart(&posts);
    env.cleanup().await;
}

/// The function's router, for `runtime::answer_within`.
struct Router(ExportCtx, ApiKeyAuth);

#[async_trait::async_trait]
impl adsync::runtime::Handler for Router {
    async fn http(&self, req: HttpRequest, inv: Invocation) -> HttpResponse {
        route(&self.0, &self.1, &req, &inv).await
    }
}

#[tokio::test]
async fn a_fee_update_without_a_metadata_slot_in_its_budget_answers_503_and_changes_nothing() {
    let env = setup().await;
    let s = seg_id("busy");
    env.segment(&s, "Busy fee segment", json!([])).await;
    let created = env
        .expect(
            "POST",
            "/destinations",
            Some(json!({"name": "busy", "accountId": env.account.account_id, "mappings": [{"segmentId": s}]})),
            202,
        )
        .await;
    let id = created["destinationId"].as_str().unwrap().to_string();
    env.backfill_task(20).await;
    assert!(mapping(&env.destination(&id).await, &s)["audienceId"].is_i64());
    // Other processes hold every metadata slot of the next ~30 s (audience creations).
    for _ in 0..30 {
        env.ctx
            .destinations
            .reserve_metadata_slot(env.login.client_id(), 1_100)
            .await
            .unwrap();
    }
    let req = HttpRequest::new("PUT", &format!("/destinations/{id}/mappings/{s}/fees"))
        .with_header("authorization", &format!("Bearer {}", env.api_key))
        .with_header("content-type", "application/json")
        .with_body(
            serde_json::to_vec(&json!({"audienceFees": [{"cpmCents": 250, "currency": "USD"}]}))
                .unwrap(),
        );
    let budget = adsync::budget::HttpBudget {
        total: Duration::from_secs(6),
        reserve: Duration::from_secs(2),
    };
    let t0 = std::time::Instant::now();
    let r = adsync::runtime::answer_within(
        &Router(env.ctx.clone(), env.auth.clone()),
        req.clone(),
        Invocation::with_timeout(60),
        &json!({}),
        budget,
    )
    .await;
    let took = t0.elapsed();
    adsync_tests::openapi::assert_http_response_valid(&req.method, &req.path, &r);
    assert!(
        took < Duration::from_secs(3),
        "no waiting for a slot it cannot use: {took:?}"
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json_body()["error"]["code"], "metadata_busy");
    assert_eq!(r.headers.get("retry-after").map(String::as_str), Some("5"));
    let puts = env
        .login
        .sandbox
        .requests(Some(env.login.client_id()), Some("/v2/dp/audiencemetadata"))
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.method == "PUT")
        .count();
    assert_eq!(puts, 0, "Amazon was not called");
    assert_eq!(
        mapping(&env.destination(&id).await, &s)["audienceFees"],
        json!([]),
        "nothing changed"
    );
    env.cleanup().await;
}
