//! Table-driven tests of parsing, validation and the outbound shape.

use super::*;
use serde_json::{Value, json};

mod bodies;
mod rejections;

/// 2026-08-20T15:00:00Z
const NOW: i64 = 1_787_238_000_000;
const JANE: &str = "86e0b9e56c17cc4d12387e1949b85053fbe73bc3ce5a1188713a9d300cc6133d";
const PHONE: &str = "d6736136ea896c1bfdc553e0e86e702c70d060d805696ca3e4e9e0961353860a";

fn base() -> Value {
    json!({
        "name": "Website_Purchase",
        "eventType": "OFF_AMAZON_PURCHASES",
        "timestamp": "2026-08-20T16:15:22+02:00",
        "countryCode": "US",
        "matchKeys": [{"type": "EMAIL", "values": [" Jane.Doe@Example.com "]}]
    })
}

fn with(mut v: Value, patch: Value) -> Value {
    for (k, val) in patch.as_object().unwrap() {
        if val.is_null() {
            v.as_object_mut().unwrap().remove(k);
        } else {
            v[k] = val.clone();
        }
    }
    v
}

fn run(ev: &Value) -> Result<Value, Vec<FieldError>> {
    let raw = serde_json::to_string(ev).unwrap();
    let mut arena = Arena::default();
    // The streaming pass over a batch (what the webhook takes)…
    let body = format!("{{\"events\":[{raw}]}}");
    let mut outcomes =
        prepare_body(body.as_bytes(), &mut Processor::new(NOW), &mut arena).expect("body");
    assert_eq!(outcomes.len(), 1);
    let p = outcomes.remove(0);
    // …and the event-by-event path agree.
    let mut arena2 = Arena::default();
    let p2 = Processor::new(NOW).prepare(&raw, &mut arena2);
    assert_eq!(p.is_ok(), p2.is_ok());
    assert_eq!(arena.json, arena2.json);
    if let (Err(a), Err(b)) = (&p, &p2) {
        assert_eq!(a, b);
    }
    let p = p?;
    let out: Value = serde_json::from_slice(arena.event(&p)).expect("outbound is JSON");
    assert_eq!(arena.id(&p), out["eventId"].as_str());
    Ok(out)
}

fn fields(errs: &[FieldError]) -> Vec<&str> {
    errs.iter().map(|e| e.field.as_str()).collect()
}

#[test]
fn full_event_goes_out_in_the_events_api_shape() {
    let ev = json!({
        "name": "Website_Purchase",
        "eventType": "off_amazon_purchases",
        "eventActionSource": "website",
        "timestamp": "2026-08-20T16:15:22.5+02:00",
        "clientDedupeId": "order-100045",
        "matchKeys": {"email": "Jane.Doe@Example.com", "phone": "+1 (555) 123-4567", "maid": "EA7583CD-A667-48BC-B806-42ECB2B48606"},
        "value": "59.99",
        "currencyCode": "eur",
        "unitsSold": 2,
        "countryCode": "de-DE",
        "dataProcessingOptions": ["LIMITED_DATA_USE"],
        "consent": {"geo": {"ipAddress": "203.0.113.7"}, "amazonConsent": {"amznUserData": true, "amznAdStorage": "denied"}},
        "customData": [{"name": "brand", "value": "acme", "dataType": "string"}, {"name": "margin_cents", "value": 1250}],
        "dataSetName": "Web_Orders"
    });
    let out = run(&ev).unwrap();
    assert_eq!(
        out,
        json!({
            "eventDescription": {"name": "Website_Purchase", "conversionType": "OFF_AMAZON_PURCHASES",
                "eventSource": "WEBSITE", "eventIngestionMethod": "SERVER_TO_SERVER", "dataSetName": "Web_Orders"},
            "eventTime": "2026-08-20T14:15:22.500Z",
            "countryCode": "DE",
            "matchKeys": [
                // (serde_json's test objects keep keys sorted: flat keys go out in input order)
                {"type": "EMAIL", "values": [JANE]},
                {"type": "MAID", "values": ["EA7583CD-A667-48BC-B806-42ECB2B48606"]},
                {"type": "PHONE", "values": [PHONE]}
            ],
            "eventId": "order-100045",
            "value": 59.99,
            "currencyCode": "EUR",
            "unitsSold": 2,
            "dataProcessingOptions": {"options": "LIMITED_DATA_USE"},
            "consent": {"geo": {"ipAddress": "203.0.113.7"}, "amazonConsent": {"amznUserData": "GRANTED", "amznAdStorage": "DENIED"}},
            "customData": [{"name": "brand", "value": "acme", "dataType": "STRING"}, {"name": "margin_cents", "value": "1250"}]
        })
    );
}

#[test]
fn events_api_names_are_aliases() {
    let ev = json!({
        "eventDescription": {"name": "Signup", "conversionType": "SIGN_UP", "eventSource": "IOS",
            "eventIngestionMethod": "SERVER_TO_SERVER", "dataSetName": "App"},
        "eventTime": "2026-08-20T14:00:00Z",
        "eventId": 12345,
        "countryCode": "US",
        "matchKeys": [{"type": "PHONE", "values": ["15551234567"]}],
        "customAttributes": [{"name": "category", "value": "shoes"}],
        "dataProcessingOptions": {"options": "LIMITED_DATA_USE"}
    });
    let out = run(&ev).unwrap();
    assert_eq!(out["eventDescription"]["name"], "Signup");
    assert_eq!(out["eventDescription"]["conversionType"], "SIGN_UP");
    assert_eq!(out["eventDescription"]["eventSource"], "IOS");
    assert_eq!(out["eventDescription"]["dataSetName"], "App");
    assert_eq!(out["eventTime"], "2026-08-20T14:00:00.000Z");
    assert_eq!(out["eventId"], "12345");
    assert_eq!(out["matchKeys"][0]["values"][0], PHONE);
    assert_eq!(out["customData"][0]["value"], "shoes");
    assert_eq!(out["dataProcessingOptions"]["options"], "LIMITED_DATA_USE");
}

#[test]
fn defaults_and_purchase_only_fields() {
    // eventActionSource defaults to WEBSITE; currencyCode/unitsSold only go out for purchases.
    let out = run(&with(
        base(),
        json!({"eventType": "LEAD", "currencyCode": "USD", "unitsSold": 3, "value": -1.5}),
    ))
    .unwrap();
    assert_eq!(out["eventDescription"]["eventSource"], "WEBSITE");
    assert!(out.get("currencyCode").is_none() && out.get("unitsSold").is_none());
    assert_eq!(out["value"], -1.5);
    assert!(
        out.get("eventId").is_none()
            && out.get("consent").is_none()
            && out.get("dataProcessingOptions").is_none()
    );
    // A blank id means "not deduplicated".
    let out = run(&with(base(), json!({"clientDedupeId": "  "}))).unwrap();
    assert!(out.get("eventId").is_none());
}

#[test]
fn timestamps_are_normalised_to_utc() {
    let cases = [
        ("2026-08-20T14:15:22Z", "2026-08-20T14:15:22.000Z"),
        ("2026-08-20T14:15:22.123456Z", "2026-08-20T14:15:22.123Z"),
        ("2026-08-20T09:15:22-05:00", "2026-08-20T14:15:22.000Z"),
        ("2026-08-20T23:45:22+0930", "2026-08-20T14:15:22.000Z"),
        ("2026-08-20 14:15:22Z", "2026-08-20T14:15:22.000Z"),
        ("2026-08-21T00:15:22+10:00", "2026-08-20T14:15:22.000Z"),
    ];
    for (input, want) in cases {
        let out = run(&with(base(), json!({"timestamp": input})))
            .unwrap_or_else(|e| panic!("{input}: {e:?}"));
        assert_eq!(out["eventTime"], want, "{input}");
    }
}

#[test]
fn country_codes_and_locales() {
    let cases = [
        ("US", "US"),
        ("us", "US"),
        ("en-US", "US"),
        ("en_us", "US"),
        ("zh-Hant-TW", "TW"),
        ("UK", "GB"),
        ("OTHER", "OTHER"),
        ("ZZ", "ZZ"),
    ];
    for (input, want) in cases {
        let out = run(&with(
            base(),
            json!({"countryCode": input, "consent": {"tcf": "CPXxRfAPXxRfAAfKABENB"}}),
        ))
        .unwrap_or_else(|e| panic!("{input}: {e:?}"));
        assert_eq!(out["countryCode"], want, "{input}");
    }
}
