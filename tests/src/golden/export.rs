//! The segment-export function's error paths: authentication and scopes, routing and methods,
//! every request body's field checks (segments, destinations, mappings, fees, qualifications,
//! privacy deletions, identities), ids that do not exist, and the state conflicts that need no
//! Amazon call (a segment still mapped, a segment mapped twice, export-control conflicts, a
//! destination being deleted, a removed mapping, accounts that are unknown or need
//! reauthorization). The rig has its own destinations table; inline work is off, so creating a
//! destination or a mapping only queues it.

use super::{Golden, Keys, bearer, body, json_body};
use crate::export_rig::{Rig, rig, seg_id};
use crate::sandbox::random_id;
use adsync::amazon::Region;
use adsync::export::ExportHandler;
use adsync::http::HttpRequest;
use adsync::store::accounts::{AccountStatus, IntegratedAccount};
use serde_json::{Value, json};

const JSON: &str = "application/json";

struct Ex {
    h: ExportHandler,
    rig: Rig,
    admin: String,
    g: Golden,
    n: usize,
}

impl Ex {
    fn req(&self, m: &str, p: &str) -> HttpRequest {
        bearer(HttpRequest::new(m, p), &self.admin)
    }

    fn with(&self, m: &str, p: &str, v: &Value) -> HttpRequest {
        json_body(self.req(m, p), v)
    }

    fn raw(&self, m: &str, p: &str, ct: &str, b: impl Into<Vec<u8>>) -> HttpRequest {
        body(self.req(m, p), ct, b)
    }

    async fn case(&mut self, name: &str, req: HttpRequest) {
        self.g.case(&self.h, name, req).await;
    }

    /// A fresh segment id, redacted as `{segN}`; registered (with `controls`) unless `None`.
    async fn segment(&mut self, controls: Option<Value>) -> String {
        let id = seg_id();
        self.n += 1;
        self.g.redact(id.clone(), &format!("{{seg{}}}", self.n));
        if let Some(c) = controls {
            let req = self.with(
                "PUT",
                &format!("/segments/{id}"),
                &json!({"name": format!("Golden {id}"), "dataExportControls": c}),
            );
            let r = super::call(&self.h, &req).await;
            assert_eq!(r.status, 201, "PUT /segments: {}", r.body);
        }
        id
    }

    /// A destination of the rig's account mapping `segments` (queued), with `labels`.
    async fn destination(&mut self, segments: &[&str], labels: Value) -> String {
        let maps: Vec<Value> = segments.iter().map(|s| json!({"segmentId": s})).collect();
        let req = self.with(
            "POST",
            "/destinations",
            &json!({"name": format!("Golden {}", uuid::Uuid::new_v4().simple()),
                    "accountId": self.rig.account.account_id, "dataExportLabels": labels,
                    "mappings": maps}),
        );
        let r = super::call(&self.h, &req).await;
        assert_eq!(r.status, 202, "POST /destinations: {}", r.body);
        let id = r.json_body()["destinationId"].as_str().unwrap().to_string();
        self.n += 1;
        self.g
            .redact(id.clone(), &format!("{{destination{}}}", self.n));
        id
    }

    /// A fresh account of `status`; returns its id (redacted as `{<status>_account}`).
    async fn account_in(&mut self, status: AccountStatus) -> String {
        let id = random_id(14);
        self.rig
            .ctx
            .accounts
            .put_account(&IntegratedAccount {
                account_id: id.to_string(),
                region: Region::NA,
                profile_id: 1,
                advertiser_id: id,
                name: "Golden".into(),
                currency: "USD".into(),
                country: "US".into(),
                connection_id: "c-golden".into(),
                token_secret: "adsync-test/golden-none".into(),
                status,
                created_at: "2026-12-05T00:00:00.000Z".into(),
            })
            .await
            .expect("seeding an account");
        self.g
            .redact(id.to_string(), &format!("{{{}_account}}", status.as_str()));
        id.to_string()
    }

    /// `(name, body)` cases sent as `method path`.
    async fn bodies(&mut self, prefix: &str, m: &str, p: &str, cases: Vec<(&str, Value)>) {
        for (name, v) in cases {
            let req = self.with(m, p, &v);
            self.case(&format!("{prefix}.{name}"), req).await;
        }
    }

    /// The body-level checks of a JSON route: 415, 413 (`limit` bytes), empty, malformed, not
    /// UTF-8, not an object.
    async fn body_checks(&mut self, prefix: &str, m: &str, p: &str, limit: usize) {
        let cases = vec![
            ("no_content_type", self.req(m, p).with_body("{}")),
            ("text_plain", self.raw(m, p, "text/plain", "{}")),
            ("too_large", self.raw(m, p, JSON, vec![b' '; limit + 1])),
            ("empty", self.raw(m, p, JSON, "")),
            ("malformed", self.raw(m, p, JSON, "{\"a\":")),
            (
                "not_utf8",
                self.raw(m, p, JSON, b"{\"a\":\"\xff\"}".to_vec()),
            ),
            ("array", self.raw(m, p, JSON, "[]")),
        ];
        for (name, req) in cases {
            self.case(&format!("{prefix}.body.{name}"), req).await;
        }
    }
}

/// Records every case of the segment-export function into `segment-export.json`.
pub async fn run() -> usize {
    let rig = rig(1).await;
    let keys = Keys::new(&adsync::store::secrets::SecretsStore::new(
        adsync::aws::AwsClients::from_env().await.secrets,
    ))
    .await;
    let h = ExportHandler {
        ctx: rig.ctx.clone(),
        auth: keys.auth.clone(),
    };
    let mut g = Golden::new("segment-export.json");
    g.redact(rig.account.account_id.clone(), "{account}");
    let mut x = Ex {
        h,
        rig,
        admin: keys.admin.clone(),
        g,
        n: 0,
    };
    auth_and_routing(&mut x, &keys).await;
    segments(&mut x).await;
    destinations(&mut x).await;
    mappings_and_fees(&mut x).await;
    qualifications(&mut x).await;
    privacy_and_identities(&mut x).await;
    let n = x.g.len();
    x.g.finish();
    n
}

async fn auth_and_routing(x: &mut Ex, keys: &Keys) {
    let acc = x.rig.account.account_id.clone();
    let seg = json!({"name": "x"});
    let as_key = |m: &str, p: &str, k: &str| bearer(HttpRequest::new(m, p), k);
    let cases = vec![
        ("auth.no_key", HttpRequest::new("GET", "/segments")),
        (
            "auth.no_key_unknown_route",
            HttpRequest::new("GET", "/nope"),
        ),
        ("auth.wrong_key", as_key("GET", "/segments", "nope")),
        (
            "scope.reader_put_segment",
            json_body(as_key("PUT", "/segments/s1", &keys.reader), &seg),
        ),
        (
            "scope.reader_qualifications",
            as_key("POST", "/qualifications", &keys.reader),
        ),
        (
            "scope.reader_deletions",
            as_key("POST", "/privacy/deletions", &keys.reader),
        ),
        (
            "scope.restricted_list_destinations",
            as_key("GET", "/destinations", &keys.restricted),
        ),
        (
            "scope.restricted_identities_other_account",
            as_key(
                "POST",
                &format!("/accounts/{acc}/identities"),
                &keys.restricted,
            ),
        ),
        (
            "scope.reader_identities",
            as_key("POST", &format!("/accounts/{acc}/identities"), &keys.reader),
        ),
        (
            "scope.reader_unlisted_route",
            as_key("POST", "/segments", &keys.reader),
        ),
    ];
    for (name, req) in cases {
        x.case(name, req).await;
    }
    let routes = [
        ("route.not_found", "GET", "/nope"),
        (
            "route.not_found_fees_tail",
            "GET",
            "/destinations/d/mappings/s/fees/x",
        ),
        (
            "route.not_found_lambda_url",
            "GET",
            "/lambda-url/segment-export/nope",
        ),
        ("method.post_segments", "POST", "/segments"),
        ("method.post_segment", "POST", "/segments/s1"),
        ("method.put_destinations", "PUT", "/destinations"),
        ("method.post_destination", "POST", "/destinations/d1"),
        ("method.get_mappings", "GET", "/destinations/d1/mappings"),
        ("method.get_mapping", "GET", "/destinations/d1/mappings/s1"),
        (
            "method.get_fees",
            "GET",
            "/destinations/d1/mappings/s1/fees",
        ),
        ("method.get_qualifications", "GET", "/qualifications"),
        ("method.get_deletions", "GET", "/privacy/deletions"),
        ("method.post_deletion", "POST", "/privacy/deletions/x"),
        ("method.get_identities", "GET", "/accounts/1/identities"),
        (
            "method.lambda_url_post_segments",
            "POST",
            "/lambda-url/segment-export/segments",
        ),
    ];
    for (name, m, p) in routes {
        let req = x.req(m, p);
        x.case(name, req).await;
    }
}

async fn segments(x: &mut Ex) {
    let s = x.segment(None).await;
    let p = format!("/segments/{s}");
    x.body_checks("put_segment", "PUT", &p, 256 * 1024).await;
    let bad_id = |id: &str| json!({"name": format!("for {id}")});
    for (name, id) in [
        ("put_segment.id_bad_char", "a#b".to_string()),
        ("put_segment.id_too_long", "s".repeat(129)),
    ] {
        let req = x.with("PUT", &format!("/segments/{id}"), &bad_id(&id));
        x.case(name, req).await;
    }
    let long = "n".repeat(256);
    x.bodies(
        "put_segment",
        "PUT",
        &p,
        vec![
            ("unknown_field", json!({"name": "a", "color": "red"})),
            (
                "segmentId_differs",
                json!({"name": "a", "segmentId": "other"}),
            ),
            ("name.missing", json!({"description": "d"})),
            ("name.null", json!({"name": null})),
            ("name.empty", json!({"name": "  "})),
            ("name.too_long", json!({"name": long})),
            ("name.wrong_type", json!({"name": 5})),
            (
                "description.too_long",
                json!({"name": "a", "description": "d".repeat(1001)}),
            ),
            (
                "description.wrong_type",
                json!({"name": "a", "description": 5}),
            ),
            (
                "controls.not_array",
                json!({"name": "a", "dataExportControls": "NO_PII_COMBINATION"}),
            ),
            (
                "controls.unknown",
                json!({"name": "a", "dataExportControls": ["NO_PII_COMBINATION", "NOPE"]}),
            ),
            (
                "controls.wrong_type",
                json!({"name": "a", "dataExportControls": [5]}),
            ),
        ],
    )
    .await;
    let unknown = x.segment(None).await;
    let cases = vec![
        (
            "get_segment.not_found",
            x.req("GET", &format!("/segments/{unknown}")),
        ),
        (
            "list_segments.limit_zero",
            x.req("GET", "/segments").with_query("limit=0"),
        ),
        (
            "list_segments.limit_101",
            x.req("GET", "/segments").with_query("limit=101"),
        ),
        (
            "list_segments.limit_text",
            x.req("GET", "/segments").with_query("limit=abc"),
        ),
        (
            "delete_segment.not_found",
            x.req("DELETE", &format!("/segments/{unknown}")),
        ),
        (
            "delete_segment.purge_not_bool",
            x.req("DELETE", &format!("/segments/{unknown}"))
                .with_query("purgeLedger=yes"),
        ),
    ];
    for (name, req) in cases {
        x.case(name, req).await;
    }
    let mapped = x.segment(Some(json!([]))).await;
    x.destination(&[&mapped], json!([])).await;
    let req = x.req("DELETE", &format!("/segments/{mapped}"));
    x.case("delete_segment.still_mapped", req).await;
}

async fn destinations(x: &mut Ex) {
    x.body_checks("create_destination", "POST", "/destinations", 256 * 1024)
        .await;
    let acc = x.rig.account.account_id.clone();
    let reauth = x.account_in(AccountStatus::ReauthorizationRequired).await;
    let removed = x.account_in(AccountStatus::Removed).await;
    let free = x.segment(Some(json!([]))).await;
    let no_pii = x.segment(Some(json!(["NO_PII_COMBINATION"]))).await;
    let unknown = x.segment(None).await;
    let six: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(x.segment(Some(json!([]))).await);
        }
        v
    };
    let d = |extra: Value| {
        let mut b = json!({"name": "Golden", "accountId": acc});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                b.as_object_mut().unwrap().remove(k);
            } else {
                b[k] = v.clone();
            }
        }
        b
    };
    let m = |v: Value| d(json!({"mappings": [v]}));
    let n = Value::Null;
    let fifty: Vec<Value> = (0..50)
        .map(|i| json!({"segmentId": format!("s{i}")}))
        .collect();
    let adopt6: Vec<Value> = six
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"segmentId": s, "audienceId": 1000 + i}))
        .collect();
    x.bodies(
        "create_destination",
        "POST",
        "/destinations",
        vec![
            ("unknown_field", d(json!({"colour": "red"}))),
            ("name.missing", d(json!({"name": n}))),
            ("name.empty", d(json!({"name": ""}))),
            ("name.too_long", d(json!({"name": "n".repeat(256)}))),
            ("name.wrong_type", d(json!({"name": []}))),
            ("description.wrong_type", d(json!({"description": 5}))),
            ("description.too_long", d(json!({"description": "d".repeat(1001)}))),
            ("accountId.missing", d(json!({"accountId": n}))),
            ("accountId.wrong_type", d(json!({"accountId": true}))),
            ("accountId.negative", d(json!({"accountId": -5}))),
            ("accountId.not_digits", d(json!({"accountId": "12a"}))),
            ("accountId.too_long", d(json!({"accountId": "1".repeat(21)}))),
            ("accountId.unknown", d(json!({"accountId": "900000000000004"}))),
            ("accountId.reauthorization_required", d(json!({"accountId": reauth}))),
            ("accountId.removed", d(json!({"accountId": removed}))),
            ("labels.not_array", d(json!({"dataExportLabels": "PII_COMBINATION"}))),
            ("labels.unknown", d(json!({"dataExportLabels": ["PII_COMBINATION", "NOPE"]}))),
            ("ttlSeconds.negative", d(json!({"ttlSeconds": -1}))),
            ("ttlSeconds.too_large", d(json!({"ttlSeconds": 34_300_801}))),
            ("ttlSeconds.text", d(json!({"ttlSeconds": "60"}))),
            ("dataSourceCountry.not_array", d(json!({"dataSourceCountry": "US"}))),
            ("dataSourceCountry.empty", d(json!({"dataSourceCountry": []}))),
            ("dataSourceCountry.three_letters", d(json!({"dataSourceCountry": ["USA"]}))),
            ("dataSourceCountry.wrong_type", d(json!({"dataSourceCountry": ["US", 5]}))),
            ("mappings.too_many", d(json!({"mappings": fifty}))),
            ("mappings.not_array", d(json!({"mappings": "x"}))),
            ("mappings.item_not_object", d(json!({"mappings": [5]}))),
            ("mappings.segmentId_missing", m(json!({}))),
            ("mappings.segmentId_wrong_type", m(json!({"segmentId": 5}))),
            ("mappings.segmentId_bad_char", m(json!({"segmentId": "a b"}))),
            ("mappings.unknown_field", m(json!({"segmentId": free, "x": 1}))),
            ("mappings.listed_twice", d(json!({"mappings": [{"segmentId": free}, {"segmentId": free}]}))),
            ("mappings.fees_not_array", m(json!({"segmentId": free, "audienceFees": 5}))),
            ("mappings.fees_two", m(json!({"segmentId": free, "audienceFees": [
                {"cpmCents": 1, "currency": "USD"}, {"cpmCents": 2, "currency": "USD"}]}))),
            ("mappings.fee_not_object", m(json!({"segmentId": free, "audienceFees": [5]}))),
            ("mappings.fee_cpm_missing", m(json!({"segmentId": free, "audienceFees": [{"currency": "USD"}]}))),
            ("mappings.fee_cpm_negative", m(json!({"segmentId": free, "audienceFees": [{"cpmCents": -1, "currency": "USD"}]}))),
            ("mappings.fee_cpm_too_large", m(json!({"segmentId": free, "audienceFees": [{"cpmCents": 5_000_000_000u64, "currency": "USD"}]}))),
            ("mappings.fee_currency_missing", m(json!({"segmentId": free, "audienceFees": [{"cpmCents": 1}]}))),
            ("mappings.fee_currency_other", m(json!({"segmentId": free, "audienceFees": [{"cpmCents": 1, "currency": "EUR"}]}))),
            ("mappings.audienceId_text", m(json!({"segmentId": free, "audienceId": "abc"}))),
            ("mappings.audienceId_zero", m(json!({"segmentId": free, "audienceId": 0}))),
            ("mappings.audienceId_with_fees", m(json!({"segmentId": free, "audienceId": 5,
                "audienceFees": [{"cpmCents": 1, "currency": "USD"}]}))),
            ("mappings.segment_unknown", m(json!({"segmentId": unknown}))),
            ("mappings.second_segment_unknown", d(json!({"mappings": [{"segmentId": free}, {"segmentId": unknown}]}))),
            ("mappings.export_control_conflict", d(json!({"dataExportLabels": ["PII_COMBINATION"],
                "mappings": [{"segmentId": free}, {"segmentId": no_pii}]}))),
            ("mappings.too_many_adoptions", d(json!({"mappings": adopt6}))),
        ],
    )
    .await;
    let unknown_d = "0123456789abcdef0123456789abcdef";
    let cases = vec![
        (
            "list_destinations.limit_zero",
            x.req("GET", "/destinations").with_query("limit=0"),
        ),
        (
            "list_destinations.limit_text",
            x.req("GET", "/destinations").with_query("limit=x"),
        ),
        (
            "get_destination.not_found",
            x.req("GET", &format!("/destinations/{unknown_d}")),
        ),
        (
            "patch_destination.not_found",
            x.with("PATCH", &format!("/destinations/{unknown_d}"), &json!({})),
        ),
        (
            "delete_destination.not_found",
            x.req("DELETE", &format!("/destinations/{unknown_d}")),
        ),
        (
            "delete_destination.purge_not_bool",
            x.req("DELETE", &format!("/destinations/{unknown_d}"))
                .with_query("purge=1"),
        ),
    ];
    for (name, req) in cases {
        x.case(name, req).await;
    }
    let dest = x.destination(&[&free], json!(["PII_COMBINATION"])).await;
    let p = format!("/destinations/{dest}");
    x.body_checks("patch_destination", "PATCH", &p, 256 * 1024)
        .await;
    x.bodies(
        "patch_destination",
        "PATCH",
        &p,
        vec![
            ("name.changed", json!({"name": "Other"})),
            ("accountId", json!({"accountId": "1"})),
            ("mappings", json!({"mappings": []})),
            ("destinationId.other", json!({"destinationId": "other"})),
            ("unknown_field", json!({"colour": "red"})),
            ("description.wrong_type", json!({"description": 5})),
            ("labels.unknown", json!({"dataExportLabels": ["NOPE"]})),
            ("labels.not_array", json!({"dataExportLabels": 5})),
            ("ttlSeconds.too_large", json!({"ttlSeconds": 34_300_801})),
            ("ttlSeconds.text", json!({"ttlSeconds": "1"})),
            ("dataSourceCountry.empty", json!({"dataSourceCountry": []})),
            (
                "dataSourceCountry.bad",
                json!({"dataSourceCountry": ["U1"]}),
            ),
        ],
    )
    .await;
}

async fn mappings_and_fees(x: &mut Ex) {
    let a = x.segment(Some(json!([]))).await;
    let b = x.segment(Some(json!([]))).await;
    let no_pii = x.segment(Some(json!(["NO_PII_COMBINATION"]))).await;
    let unknown = x.segment(None).await;
    let dest = x.destination(&[&a, &b], json!(["PII_COMBINATION"])).await;
    let unknown_d = "fedcba9876543210fedcba9876543210";
    let mp = format!("/destinations/{dest}/mappings");
    x.body_checks("add_mappings", "POST", &mp, 256 * 1024).await;
    let cases = vec![
        (
            "add_mappings.destination_not_found",
            x.with(
                "POST",
                &format!("/destinations/{unknown_d}/mappings"),
                &json!({"segmentId": a}),
            ),
        ),
        (
            "add_mappings.mappings_and_other_field",
            x.with("POST", &mp, &json!({"mappings": [], "segmentId": a})),
        ),
        (
            "add_mappings.mappings_empty",
            x.with("POST", &mp, &json!({"mappings": []})),
        ),
        (
            "add_mappings.mappings_not_array",
            x.with("POST", &mp, &json!({"mappings": {}})),
        ),
        (
            "add_mappings.segmentId_missing",
            x.with("POST", &mp, &json!({})),
        ),
        (
            "add_mappings.segmentId_invalid",
            x.with("POST", &mp, &json!({"segmentId": ""})),
        ),
        (
            "add_mappings.unknown_field",
            x.with("POST", &mp, &json!({"segmentId": a, "ttl": 1})),
        ),
        (
            "add_mappings.segment_unknown",
            x.with("POST", &mp, &json!({"segmentId": unknown})),
        ),
        (
            "add_mappings.list_segment_unknown",
            x.with("POST", &mp, &json!({"mappings": [{"segmentId": unknown}]})),
        ),
        (
            "add_mappings.already_mapped",
            x.with("POST", &mp, &json!({"segmentId": a})),
        ),
        (
            "add_mappings.list_already_mapped",
            x.with("POST", &mp, &json!({"mappings": [{"segmentId": a}]})),
        ),
        (
            "add_mappings.export_control_conflict",
            x.with("POST", &mp, &json!({"segmentId": no_pii})),
        ),
        (
            "add_mappings.fee_currency_other",
            x.with(
                "POST",
                &mp,
                &json!({"segmentId": a, "audienceFees": [{"cpmCents": 1, "currency": "JPY"}]}),
            ),
        ),
        (
            "remove_mapping.destination_not_found",
            x.req("DELETE", &format!("/destinations/{unknown_d}/mappings/{a}")),
        ),
        (
            "remove_mapping.not_mapped",
            x.req("DELETE", &format!("{mp}/{unknown}")),
        ),
        (
            "remove_mapping.purge_not_bool",
            x.req("DELETE", &format!("{mp}/{a}"))
                .with_query("purge=yes"),
        ),
    ];
    for (name, req) in cases {
        x.case(name, req).await;
    }
    let fees = |d: &str, s: &str| format!("/destinations/{d}/mappings/{s}/fees");
    let usd = json!({"audienceFees": [{"cpmCents": 100, "currency": "USD"}]});
    x.body_checks("put_fees", "PUT", &fees(&dest, &a), 256 * 1024)
        .await;
    let cases = vec![
        (
            "put_fees.destination_not_found",
            x.with("PUT", &fees(unknown_d, &a), &usd),
        ),
        (
            "put_fees.mapping_not_found",
            x.with("PUT", &fees(&dest, &unknown), &usd),
        ),
        (
            "put_fees.unknown_field",
            x.with("PUT", &fees(&dest, &a), &json!({"fees": []})),
        ),
        (
            "put_fees.missing",
            x.with("PUT", &fees(&dest, &a), &json!({})),
        ),
        (
            "put_fees.not_array",
            x.with("PUT", &fees(&dest, &a), &json!({"audienceFees": {}})),
        ),
        (
            "put_fees.currency_other",
            x.with(
                "PUT",
                &fees(&dest, &a),
                &json!({"audienceFees": [{"cpmCents": 1, "currency": "GBP"}]}),
            ),
        ),
        (
            "put_fees.cpm_fraction",
            x.with(
                "PUT",
                &fees(&dest, &a),
                &json!({"audienceFees": [{"cpmCents": 1.5, "currency": "USD"}]}),
            ),
        ),
    ];
    for (name, req) in cases {
        x.case(name, req).await;
    }
    let r = super::call(&x.h, &x.req("DELETE", &format!("{mp}/{b}"))).await;
    assert_eq!(r.status, 200, "DELETE mapping: {}", r.body);
    let req = x.with("PUT", &fees(&dest, &b), &usd);
    x.case("put_fees.mapping_removed", req).await;

    // A destination being deleted refuses changes.
    let c = x.segment(Some(json!([]))).await;
    let deleting = x.destination(&[&c], json!([])).await;
    x.rig
        .ctx
        .destinations
        .mark_destination_deleting(&deleting)
        .await
        .expect("marking the destination deleting");
    let cases = vec![
        (
            "deleting.patch",
            x.with(
                "PATCH",
                &format!("/destinations/{deleting}"),
                &json!({"description": "d"}),
            ),
        ),
        (
            "deleting.add_mappings",
            x.with(
                "POST",
                &format!("/destinations/{deleting}/mappings"),
                &json!({"segmentId": a}),
            ),
        ),
        (
            "deleting.put_fees",
            x.with("PUT", &fees(&deleting, &c), &usd),
        ),
    ];
    for (name, req) in cases {
        x.case(name, req).await;
    }
}

async fn qualifications(x: &mut Ex) {
    let p = "/qualifications";
    x.body_checks("qualifications", "POST", p, 6 * 1024 * 1024)
        .await;
    let many: Vec<Value> = (0..10_001).map(|_| json!({})).collect();
    x.bodies(
        "qualifications",
        "POST",
        p,
        vec![
            ("list.missing", json!({})),
            ("list.not_array", json!({"qualifications": {}})),
            ("list.empty", json!({"qualifications": []})),
            ("list.too_many", json!({"qualifications": many})),
        ],
    )
    .await;
    let seg = x.segment(None).await;
    let now = chrono::Utc::now().timestamp_millis();
    let q = |changes: Value| {
        let mut v = json!({"segmentId": seg, "deviceId": "golden-device", "idType": "COOKIE",
                           "status": "qualified", "timestamp": now});
        for (k, c) in changes.as_object().unwrap() {
            if c.is_null() {
                v.as_object_mut().unwrap().remove(k);
            } else {
                v[k] = c.clone();
            }
        }
        v
    };
    let n = Value::Null;
    let items = vec![
        ("item.not_object", json!(5)),
        ("item.empty_object", json!({})),
        ("item.segmentId_wrong_type", q(json!({"segmentId": 5}))),
        ("item.segmentId_bad_char", q(json!({"segmentId": "a#b"}))),
        ("item.deviceId_missing", q(json!({"deviceId": n}))),
        ("item.deviceId_empty", q(json!({"deviceId": ""}))),
        ("item.deviceId_slash", q(json!({"deviceId": "a/b"}))),
        ("item.deviceId_space", q(json!({"deviceId": "a b"}))),
        (
            "item.deviceId_too_long",
            q(json!({"deviceId": "d".repeat(257)})),
        ),
        ("item.idType_unknown", q(json!({"idType": "EMAIL"}))),
        ("item.status_unknown", q(json!({"status": "maybe"}))),
        ("item.timestamp_missing", q(json!({"timestamp": n}))),
        ("item.timestamp_text", q(json!({"timestamp": "yesterday"}))),
        ("item.timestamp_negative", q(json!({"timestamp": -1}))),
        ("item.timestamp_fraction", q(json!({"timestamp": 1.5}))),
        ("item.timestamp_bool", q(json!({"timestamp": true}))),
        (
            "item.timestamp_future",
            q(json!({"timestamp": now + 3_600_000})),
        ),
        ("item.consent_not_object", q(json!({"consent": "x"}))),
        (
            "item.consent_type_unknown",
            q(json!({"consent": {"consentType": "X"}})),
        ),
        (
            "item.consent_type_missing",
            q(json!({"consent": {"tcf": "x"}})),
        ),
        (
            "item.consent_tcf_without_string",
            q(json!({"consent": {"consentType": "TCF"}})),
        ),
        (
            "item.consent_amazon_incomplete",
            q(json!({"consent": {"consentType": "Amazon",
            "amazonConsent": {"amazonAdStorage": "GRANTED"}}})),
        ),
    ];
    let cases: Vec<(&str, Value)> = items
        .into_iter()
        .map(|(name, it)| (name, json!({"qualifications": [it]})))
        .collect();
    x.bodies("qualifications", "POST", p, cases).await;
}

async fn privacy_and_identities(x: &mut Ex) {
    let p = "/privacy/deletions";
    x.body_checks("deletions", "POST", p, 1024 * 1024).await;
    let cookie = |id: &str| json!({"idType": "COOKIE", "deviceId": id});
    let many: Vec<Value> = (0..1001).map(|i| cookie(&format!("d{i}"))).collect();
    x.bodies(
        "deletions",
        "POST",
        p,
        vec![
            ("devices.missing", json!({})),
            ("devices.not_array", json!({"devices": "x"})),
            ("devices.empty", json!({"devices": []})),
            ("devices.too_many", json!({"devices": many})),
            (
                "devices.idType_missing",
                json!({"devices": [{"deviceId": "a"}]}),
            ),
            (
                "devices.idType_unknown",
                json!({"devices": [{"idType": "IP", "deviceId": "a"}]}),
            ),
            (
                "devices.deviceId_missing",
                json!({"devices": [cookie("a"), {"idType": "MAID"}]}),
            ),
            ("devices.deviceId_empty", json!({"devices": [cookie("")]})),
            (
                "devices.deviceId_space",
                json!({"devices": [cookie("a b")]}),
            ),
            (
                "devices.deviceId_too_long",
                json!({"devices": [cookie(&"d".repeat(257))]}),
            ),
        ],
    )
    .await;
    let req = x.req("GET", "/privacy/deletions/0123456789abcdef");
    x.case("get_deletion.not_found", req).await;

    let acc = x.rig.account.account_id.clone();
    let ip = format!("/accounts/{acc}/identities");
    x.body_checks("identities", "POST", &ip, 6 * 1024 * 1024)
        .await;
    let many: Vec<Value> = (0..10_001).map(|_| json!({})).collect();
    let one = json!({"identities": [{"externalUserId": "u1", "email": "a@example.com"}]});
    let reauth = x.account_in(AccountStatus::ReauthorizationRequired).await;
    let cases = vec![
        ("identities.list.missing", x.with("POST", &ip, &json!({}))),
        (
            "identities.list.not_array",
            x.with("POST", &ip, &json!({"identities": 5})),
        ),
        (
            "identities.list.empty",
            x.with("POST", &ip, &json!({"identities": []})),
        ),
        (
            "identities.list.too_many",
            x.with("POST", &ip, &json!({"identities": many})),
        ),
        (
            "identities.account_unknown",
            x.with("POST", "/accounts/900000000000005/identities", &one),
        ),
        (
            "identities.account_reauthorization_required",
            x.with("POST", &format!("/accounts/{reauth}/identities"), &one),
        ),
        (
            "identities.account_not_digits",
            x.with("POST", "/accounts/abc/identities", &one),
        ),
    ];
    for (name, req) in cases {
        x.case(name, req).await;
    }
    let items = vec![
        ("item.not_object", json!(5)),
        ("item.empty_object", json!({})),
        (
            "item.externalUserId_invalid",
            json!({"externalUserId": "bad id!", "email": "a@example.com"}),
        ),
        (
            "item.externalUserId_wrong_type",
            json!({"externalUserId": 5, "email": "a@example.com"}),
        ),
        (
            "item.unknown_field",
            json!({"externalUserId": "u1", "ssn": "1", "email": "a@example.com"}),
        ),
        (
            "item.email_wrong_type",
            json!({"externalUserId": "u1", "email": 5}),
        ),
        ("item.no_fields", json!({"externalUserId": "u1"})),
        (
            "item.fields_normalise_to_nothing",
            json!({"externalUserId": "u1", "email": "  ", "phone": "--"}),
        ),
    ];
    let cases: Vec<(&str, Value)> = items
        .into_iter()
        .map(|(name, it)| (name, json!({"identities": [it]})))
        .collect();
    x.bodies("identities", "POST", &ip, cases).await;
}
