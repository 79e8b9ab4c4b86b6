//! The conversion-ingest function's error paths: authentication and scopes, routing, the body
//! checks (415, 413, 400), the account checks (404, 409), and every per-event rejection of the
//! validation (one event per request: a 207 with the event's errors, nothing sent to Amazon),
//! plus one batch mixing accepted, duplicate and rejected events.

use super::{Golden, Keys, bearer, body, json_body};
use crate::conversions::IngestFixture;
use crate::sandbox::random_id;
use adsync::amazon::{Region, RetryPolicy};
use adsync::http::HttpRequest;
use adsync::ingest::ConversionHandler;
use adsync::store::accounts::{AccountStatus, IntegratedAccount};
use serde_json::{Value, json};
use std::time::Duration;

/// A valid purchase one hour old (`id`: its clientDedupeId).
fn valid(id: &str) -> Value {
    json!({
        "name": "Golden_Purchase",
        "eventType": "OFF_AMAZON_PURCHASES",
        "timestamp": ago_hours(1),
        "clientDedupeId": id,
        "countryCode": "US",
        "matchKeys": {"email": "golden.buyer@example.com"},
        "value": 10,
        "currencyCode": "USD",
        "unitsSold": 1
    })
}

fn ago_hours(h: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::hours(h)).to_rfc3339()
}

/// The valid event with `changes` applied: `null` removes a field, anything else sets it.
fn event(changes: Value) -> Value {
    let mut e = valid("");
    e.as_object_mut().unwrap().remove("clientDedupeId");
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            e.as_object_mut().unwrap().remove(k);
        } else {
            e[k] = v.clone();
        }
    }
    e
}

/// Every per-event rejection: (case name, the event). The `…_accepted` cases pin where the
/// validation is lenient (a 200: the event is sent to the sandbox).
fn rejected_events() -> Vec<(&'static str, Value)> {
    let n = Value::Null;
    let sixteen: Vec<Value> = (0..16)
        .map(|i| json!({"type": "EMAIL", "values": [format!("a{i}@example.com")]}))
        .collect();
    let custom14: Vec<Value> = (0..14)
        .map(|i| json!({"name": format!("k{i}"), "value": "v"}))
        .collect();
    vec![
        ("name.missing", event(json!({"name": n}))),
        ("name.empty", event(json!({"name": "  "}))),
        ("name.too_long", event(json!({"name": "n".repeat(257)}))),
        ("name.wrong_type", event(json!({"name": 5}))),
        (
            "eventDescription.name.wrong_type",
            event(json!({"name": n, "eventDescription": {"name": 5}})),
        ),
        (
            "eventDescription.not_object",
            event(json!({"eventDescription": "x"})),
        ),
        ("eventType.missing", event(json!({"eventType": n}))),
        ("eventType.unknown", event(json!({"eventType": "NOPE"}))),
        ("eventType.wrong_type", event(json!({"eventType": 1}))),
        (
            "eventDescription.conversionType.unknown",
            event(json!({"eventType": n, "eventDescription": {"conversionType": "NOPE"}})),
        ),
        (
            "eventActionSource.unknown",
            event(json!({"eventActionSource": "FAX"})),
        ),
        (
            "eventIngestionMethod.not_server",
            event(json!({"eventIngestionMethod": "BROWSER"})),
        ),
        ("dataSetName.invalid", event(json!({"dataSetName": "1bad"}))),
        ("timestamp.missing", event(json!({"timestamp": n}))),
        (
            "timestamp.not_iso",
            event(json!({"timestamp": "yesterday"})),
        ),
        (
            "timestamp.no_offset",
            event(json!({"timestamp": "2026-01-01T10:00:00"})),
        ),
        ("timestamp.wrong_type", event(json!({"timestamp": 12345}))),
        (
            "timestamp.too_old",
            event(json!({"timestamp": ago_hours(24 * 30)})),
        ),
        (
            "timestamp.in_future",
            event(json!({"timestamp": ago_hours(-1)})),
        ),
        ("countryCode.missing", event(json!({"countryCode": n}))),
        ("countryCode.unknown", event(json!({"countryCode": "ZZZ"}))),
        ("countryCode.wrong_type", event(json!({"countryCode": 1}))),
        (
            "clientDedupeId.too_long",
            event(json!({"clientDedupeId": "i".repeat(257)})),
        ),
        (
            "clientDedupeId.control_char",
            event(json!({"clientDedupeId": "a\u{1}b"})),
        ),
        (
            "clientDedupeId.wrong_type",
            event(json!({"clientDedupeId": [1]})),
        ),
        ("matchKeys.missing", event(json!({"matchKeys": n}))),
        ("matchKeys.wrong_type", event(json!({"matchKeys": "x"}))),
        (
            "matchKeys.list_item_not_object",
            event(json!({"matchKeys": [5]})),
        ),
        (
            "matchKeys.type_missing",
            event(json!({"matchKeys": [{"values": ["a@b.c"]}]})),
        ),
        (
            "matchKeys.type_unknown",
            event(json!({"matchKeys": [{"type": "SSN", "values": ["1"]}]})),
        ),
        (
            "matchKeys.type_wrong_type",
            event(json!({"matchKeys": [{"type": 1, "values": ["a@b.c"]}]})),
        ),
        (
            "matchKeys.values_missing",
            event(json!({"matchKeys": [{"type": "EMAIL"}]})),
        ),
        (
            "matchKeys.values_scalar_accepted",
            event(json!({"matchKeys": [{"type": "EMAIL", "values": 5}]})),
        ),
        (
            "matchKeys.two_values",
            event(json!({"matchKeys": [{"type": "EMAIL", "values": ["a@b.c", "d@e.f"]}]})),
        ),
        (
            "matchKeys.value_number_accepted",
            event(json!({"matchKeys": [{"type": "EMAIL", "values": [5]}]})),
        ),
        (
            "matchKeys.type_twice",
            event(json!({"matchKeys": [
                {"type": "EMAIL", "values": ["a@b.c"]}, {"type": "EMAIL", "values": ["d@e.f"]}]})),
        ),
        (
            "matchKeys.second_item_unknown",
            event(json!({"matchKeys": [
                {"type": "EMAIL", "values": ["a@b.c"]}, {"type": "SSN", "values": ["1"]}]})),
        ),
        (
            "matchKeys.values_object",
            event(json!({"matchKeys": [{"type": "EMAIL", "values": {}}]})),
        ),
        (
            "matchKeys.value_bool",
            event(json!({"matchKeys": [{"type": "EMAIL", "values": [true]}]})),
        ),
        (
            "matchKeys.flat_bool",
            event(json!({"matchKeys": {"email": true}})),
        ),
        ("matchKeys.too_many", event(json!({"matchKeys": sixteen}))),
        (
            "matchKeys.flat_unknown",
            event(json!({"matchKeys": {"ssn": "1"}})),
        ),
        (
            "matchKeys.flat_number_accepted",
            event(json!({"matchKeys": {"email": 5}})),
        ),
        (
            "matchKeys.flat_blank",
            event(json!({"matchKeys": {"email": "   "}})),
        ),
        ("matchKeys.empty_list", event(json!({"matchKeys": []}))),
        (
            "value.numeric_string_accepted",
            event(json!({"value": "10"})),
        ),
        ("value.bool", event(json!({"value": true}))),
        ("value.text", event(json!({"value": "ten"}))),
        ("value.too_large", event(json!({"value": 1e13}))),
        ("value.three_decimals", event(json!({"value": 1.234}))),
        ("value.negative_purchase", event(json!({"value": -1}))),
        (
            "currencyCode.unknown",
            event(json!({"currencyCode": "XYZ"})),
        ),
        ("currencyCode.wrong_type", event(json!({"currencyCode": 5}))),
        ("unitsSold.zero", event(json!({"unitsSold": 0}))),
        ("unitsSold.fraction", event(json!({"unitsSold": 1.5}))),
        ("unitsSold.wrong_type", event(json!({"unitsSold": "x"}))),
        (
            "dataProcessingOptions.unknown",
            event(json!({"dataProcessingOptions": ["FOO"]})),
        ),
        (
            "dataProcessingOptions.item_wrong_type",
            event(json!({"dataProcessingOptions": [5]})),
        ),
        (
            "dataProcessingOptions.single_string_accepted",
            event(json!({"dataProcessingOptions": "LIMITED_DATA_USE"})),
        ),
        (
            "dataProcessingOptions.object",
            event(json!({"dataProcessingOptions": {}})),
        ),
        ("consent.required_eu", event(json!({"countryCode": "DE"}))),
        ("consent.wrong_type", event(json!({"consent": "x"}))),
        (
            "consent.geo.wrong_type",
            event(json!({"consent": {"geo": "x"}})),
        ),
        (
            "consent.geo.ipAddress.invalid",
            event(json!({"consent": {"geo": {"ipAddress": "nope"}}})),
        ),
        (
            "consent.amazonConsent.wrong_type",
            event(json!({"consent": {"amazonConsent": 5}})),
        ),
        (
            "consent.amazonConsent.flag_unknown",
            event(json!({"consent": {"amazonConsent": {"amznUserData": "maybe"}}})),
        ),
        (
            "consent.amazonConsent.flag_wrong_type",
            event(json!({"consent": {"amazonConsent": {"amznUserData": 5}}})),
        ),
        (
            "consent.amazonConsent.user_data_missing",
            event(json!({"consent": {"amazonConsent": {"amznAdStorage": "GRANTED"}}})),
        ),
        (
            "consent.tcf.wrong_type",
            event(json!({"consent": {"tcf": 5}})),
        ),
        (
            "consent.gpp.wrong_type",
            event(json!({"consent": {"gpp": 5}})),
        ),
        (
            "customData.too_many",
            event(json!({"customData": custom14})),
        ),
        ("customData.wrong_type", event(json!({"customData": "x"}))),
        (
            "customData.item_wrong_type",
            event(json!({"customData": [5]})),
        ),
        (
            "customData.name_invalid",
            event(json!({"customData": [{"name": "bad name", "value": "x"}]})),
        ),
        (
            "customData.name_wrong_type",
            event(json!({"customData": [{"name": 5, "value": "x"}]})),
        ),
        (
            "customData.value_invalid",
            event(json!({"customData": [{"name": "price", "value": "4.99"}]})),
        ),
        (
            "customData.dataType_unknown",
            event(json!({"customData": [{"name": "a", "value": "b", "dataType": "FLOAT"}]})),
        ),
        (
            "several_errors",
            json!({"eventType": "NOPE", "timestamp": "x", "matchKeys": {"ssn": "1"}}),
        ),
    ]
}

/// Records every case of the conversion-ingest function into `conversion-ingest.json`.
pub async fn run() -> usize {
    let f = IngestFixture::new().await;
    let keys = Keys::new(&f.login.secrets).await;
    // The accepted events reach the sandbox: patient retries, so that a slow answer on a
    // loaded machine never turns an accepted event into a parked one.
    let mut ctx = f.handler.ctx.clone();
    ctx.amazon = ctx.amazon.clone().with_retry_policy(RetryPolicy {
        max_attempts: 5,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(2),
        request_timeout: Duration::from_secs(20),
    });
    let h = ConversionHandler {
        ctx,
        auth: keys.auth.clone(),
    };
    let mut g = Golden::new("conversion-ingest.json");
    let account = f.account.account_id.clone();
    g.redact(account.clone(), "{account}");
    let path = format!("/accounts/{account}/conversions");
    let post = |p: &str, key: &str| bearer(HttpRequest::new("POST", p), key);
    let ok_body = json!({"events": [valid("unused")]});
    let admin = keys.admin.clone();

    // Authentication, scopes, routing.
    let plain = json_body(HttpRequest::new("POST", &path), &ok_body);
    g.case(&h, "auth.no_key", plain.clone()).await;
    g.case(&h, "auth.wrong_key", bearer(plain.clone(), "nope"))
        .await;
    g.case(&h, "scope.reader", bearer(plain.clone(), &keys.reader))
        .await;
    g.case(
        &h,
        "scope.restricted_other_account",
        bearer(plain.clone(), &keys.restricted),
    )
    .await;
    g.case(
        &h,
        "auth.no_key_unknown_route",
        HttpRequest::new("GET", "/nope"),
    )
    .await;
    g.case(
        &h,
        "route.not_found",
        bearer(HttpRequest::new("GET", "/nope"), &admin),
    )
    .await;
    g.case(
        &h,
        "route.not_found_extra_segment",
        post(&format!("{path}/x"), &admin),
    )
    .await;
    g.case(
        &h,
        "route.scope_of_unlisted_route",
        bearer(HttpRequest::new("GET", "/nope"), &keys.reader),
    )
    .await;
    for m in ["GET", "PUT", "DELETE"] {
        let name = format!("method.{}", m.to_ascii_lowercase());
        g.case(&h, &name, bearer(HttpRequest::new(m, &path), &admin))
            .await;
    }

    // The body.
    let raw = |ct: &str, b: Vec<u8>| body(post(&path, &admin), ct, b);
    let ok = serde_json::to_vec(&ok_body).unwrap();
    let mut many = b"{\"events\":[".to_vec();
    many.extend(vec!["{}"; 10_001].join(",").into_bytes());
    many.extend(b"]}");
    let body_cases: Vec<(&str, HttpRequest)> = vec![
        (
            "body.no_content_type",
            post(&path, &admin).with_body(ok.clone()),
        ),
        ("body.text_plain", raw("text/plain", ok.clone())),
        ("body.form", raw("application/x-www-form-urlencoded", ok)),
        (
            "body.too_large",
            raw("application/json", vec![b' '; 6 * 1024 * 1024 + 1]),
        ),
        ("body.empty", raw("application/json", Vec::new())),
        (
            "body.malformed",
            raw("application/json", b"{\"events\":[".to_vec()),
        ),
        ("body.trailing", raw("application/json", b"{} x".to_vec())),
        (
            "body.not_utf8",
            raw(
                "application/json",
                b"{\"events\":[{\"name\":\"\xff\xfe\"}]}".to_vec(),
            ),
        ),
        ("body.array", raw("application/json", b"[]".to_vec())),
        ("body.string", raw("application/json", b"\"x\"".to_vec())),
        (
            "body.events_empty",
            raw("application/json", b"{\"events\":[]}".to_vec()),
        ),
        (
            "body.events_object",
            raw("application/json", b"{\"events\":{}}".to_vec()),
        ),
        (
            "body.events_string",
            raw("application/json", b"{\"events\":\"x\"}".to_vec()),
        ),
        ("body.too_many_events", raw("application/json", many)),
        (
            "body.event_not_object",
            raw("application/json", b"{\"events\":[5]}".to_vec()),
        ),
        (
            "body.event_repeats_a_field",
            raw(
                "application/json",
                br#"{"events":[{"name":"a","name":"b"}]}"#.to_vec(),
            ),
        ),
        ("body.empty_object", raw("application/json", b"{}".to_vec())),
    ];
    for (name, req) in body_cases {
        g.case(&h, name, req).await;
    }

    // The account.
    let reauth = account_in(&f, AccountStatus::ReauthorizationRequired).await;
    g.redact(reauth.clone(), "{reauth_account}");
    let removed = account_in(&f, AccountStatus::Removed).await;
    g.redact(removed.clone(), "{removed_account}");
    let to = |id: &str| {
        json_body(
            post(&format!("/accounts/{id}/conversions"), &admin),
            &ok_body,
        )
    };
    g.case(&h, "account.not_digits", to("abc")).await;
    g.case(&h, "account.unknown", to("900000000000003")).await;
    g.case(&h, "account.reauthorization_required", to(&reauth))
        .await;
    g.case(&h, "account.removed", to(&removed)).await;

    // Each rejection alone: 207, nothing sent.
    for (name, ev) in rejected_events() {
        let req = json_body(post(&path, &admin), &json!({"events": [ev]}));
        g.case(&h, &format!("event.{name}"), req).await;
    }
    // A single bare event (no `events` list) that is invalid.
    let bare = json_body(post(&path, &admin), &event(json!({"name": Value::Null})));
    g.case(&h, "event.bare_object_name_missing", bare).await;

    // A batch mixing accepted, duplicate and rejected events (field paths per index).
    let id = format!("golden-{}", uuid::Uuid::new_v4().simple());
    // The repeat is the same event (built once: two `valid` calls could straddle a second and
    // differ in their timestamp, which would make the repeat a correction).
    let first = valid(&format!("{id}-0"));
    let batch = json!({"events": [
        first.clone(),
        event(json!({"name": Value::Null})),
        event(json!({"matchKeys": [{"type": "EMAIL", "values": ["a@b.c"]}, {"type": 5, "values": ["x"]}]})),
        first,
        5,
        event(json!({"timestamp": "x", "countryCode": "ZZ"})),
        valid(&format!("{id}-1")),
    ]});
    g.case(&h, "batch.mixed", json_body(post(&path, &admin), &batch))
        .await;
    let n = g.len();
    g.finish();
    n
}

/// A fresh account of `status` in the fixture's table; returns its id.
async fn account_in(f: &IngestFixture, status: AccountStatus) -> String {
    let id = random_id(14);
    f.ctx()
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
    id.to_string()
}
