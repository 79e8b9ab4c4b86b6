//! The segment-export function's error paths: authentication and scopes, routing and methods,
//! every request body's field checks (segments, destinations, mappings, fees, qualifications,
//! privacy deletions, identities), ids that do not exist, and the state conflicts that need no
//! Amazon call (a segment still mapped, a segment mapped twice, export-control conflicts, a
//! destination being deleted, a removed mapping, accounts that are unknown or need
//! reauthorization). The rig has its own destinations table; inline work is off, so creating a
//! destination or a mapping only queues it.
mod destinations;
mod items;

use super::{Golden, Keys, bearer, body, json_body};
use crate::export_rig::{Rig, rig, seg_id};
use crate::sandbox::random_id;
use adsync::amazon::Region;
use adsync::export::ExportHandler;
use adsync::http::HttpRequest;
use adsync::store::accounts::{AccountStatus, IntegratedAccount};
use serde_json::{Value, json};

const JSON: &str = "application/json";

pub(super) struct Ex {
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
    destinations::destinations(&mut x).await;
    destinations::mappings_and_fees(&mut x).await;
    items::qualifications(&mut x).await;
    items::privacy_and_identities(&mut x).await;
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
