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

use adsync::export::{ExportCtx, route, run_task};
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
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType,
};
use serde_json::{Value, json};

struct Env {
    ctx: ExportCtx,
    auth: ApiKeyAuth,
    api_key: String,
    login: TestLogin,
    account: IntegratedAccount,
    table: String,
}

/// A destinations table of the stack's shape (pk, sk, gsi1 on gsi1pk/gsi1sk) for one test.
async fn create_destinations_table(ddb: &aws_sdk_dynamodb::Client) -> String {
    let name = format!("adsync-test-destinations-{}", uuid::Uuid::new_v4().simple());
    let attr = |n: &str| {
        AttributeDefinition::builder()
            .attribute_name(n)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .unwrap()
    };
    let key = |n: &str, t: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(n)
            .key_type(t)
            .build()
            .unwrap()
    };
    ddb.create_table()
        .table_name(&name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr("pk"))
        .attribute_definitions(attr("sk"))
        .attribute_definitions(attr("gsi1pk"))
        .attribute_definitions(attr("gsi1sk"))
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name("gsi1")
                .key_schema(key("gsi1pk", KeyType::Hash))
                .key_schema(key("gsi1sk", KeyType::Range))
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot create a table in DynamoDB Local ({}): is the local stack up?",
                aws_sdk_dynamodb::error::DisplayErrorContext(e)
            )
        });
    name
}

/// A fresh login, an active account on it (`advertiser_id` = `None`: the login's own advertiser;
/// `Some(id)`: an advertiser the login cannot reach), an API key and a context.
async fn setup_with(advertiser_id: Option<i64>) -> Env {
    let login = fresh_login(1).await;
    let aws = login.aws.clone();
    let table = create_destinations_table(&aws.dynamodb).await;
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

async fn setup() -> Env {
    setup_with(None).await
}

impl Env {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> HttpResponse {
        let mut req = HttpRequest::new(method, path)
            .with_header("authorization", &format!("Bearer {}", self.api_key));
        if let Some(b) = body {
            req = req
                .with_header("content-type", "application/json")
                .with_body(serde_json::to_vec(&b).unwrap());
        }
        let resp = route(&self.ctx, &self.auth, &req, &Invocation::with_timeout(60)).await;
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
    let env = setup().await;
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
    for s in [&a, &b, &c] {
        let m = mapping(&created, s);
        assert_eq!(m["status"], "pending", "{m}");
        assert!(m["audienceId"].is_null(), "{m}");
    }
    assert_eq!(created["status"], "pending");
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
    assert_eq!(summary["audiences"]["created"], 3, "{summary}");

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
    let env = setup_with(Some(unreachable)).await;
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
    let summary = env.backfill_task(20).await;
    assert_eq!(summary["audiences"]["failed"], 1, "{summary}");
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
    let table = create_destinations_table(&aws.dynamodb).await;
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
    let _ = aws.dynamodb.delete_table().table_name(&table).send().await;
}
