//! Table-driven tests of parsing, validation and the outbound shape.

use super::*;
use serde_json::{Value, json};

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

#[test]
fn rejections_name_the_field() {
    let one_key = |k: Value| json!({"matchKeys": k});
    // (patch, expected fields, expected reason of the first error)
    let cases: Vec<(Value, Vec<&str>, Reason)> = vec![
        (json!({"name": null}), vec!["name"], Reason::Missing),
        (json!({"name": "  "}), vec!["name"], Reason::Invalid),
        (
            json!({"eventType": "PURCHASE"}),
            vec!["eventType"],
            Reason::Invalid,
        ),
        (
            json!({"eventType": null}),
            vec!["eventType"],
            Reason::Missing,
        ),
        (
            json!({"eventActionSource": "TV"}),
            vec!["eventActionSource"],
            Reason::Invalid,
        ),
        (
            json!({"timestamp": null}),
            vec!["timestamp"],
            Reason::Missing,
        ),
        (
            json!({"timestamp": "yesterday"}),
            vec!["timestamp"],
            Reason::Invalid,
        ),
        (
            json!({"timestamp": "2026-08-20T14:15:22"}),
            vec!["timestamp"],
            Reason::Invalid,
        ),
        (
            json!({"timestamp": "2026-07-29T14:59:59Z"}),
            vec!["timestamp"],
            Reason::TooOld,
        ),
        (
            json!({"timestamp": "2026-08-20T15:05:01Z"}),
            vec!["timestamp"],
            Reason::InFuture,
        ),
        (
            json!({"countryCode": null}),
            vec!["countryCode"],
            Reason::Missing,
        ),
        (
            json!({"countryCode": "USA"}),
            vec!["countryCode"],
            Reason::Invalid,
        ),
        (
            json!({"countryCode": "FR"}),
            vec!["consent"],
            Reason::ConsentRequired,
        ),
        (
            json!({"countryCode": "en-GB", "consent": {"amazonConsent": {"amznAdStorage": "GRANTED"}}}),
            vec!["consent.amazonConsent.amznUserData", "consent"],
            Reason::Missing,
        ),
        (
            json!({"countryCode": "DE", "consent": {"geo": {"ipAddress": "999.1.1.1"}}}),
            vec!["consent.geo.ipAddress", "consent"],
            Reason::Invalid,
        ),
        (
            json!({"consent": {"amazonConsent": {"amznUserData": "maybe"}}}),
            vec!["consent.amazonConsent.amznUserData"],
            Reason::Invalid,
        ),
        (json!({"value": 10.999}), vec!["value"], Reason::Invalid),
        (json!({"value": -5}), vec!["value"], Reason::Invalid),
        (json!({"value": "ten"}), vec!["value"], Reason::Malformed),
        (
            json!({"currencyCode": "EURO"}),
            vec!["currencyCode"],
            Reason::Invalid,
        ),
        (
            json!({"unitsSold": 1.5}),
            vec!["unitsSold"],
            Reason::Invalid,
        ),
        (json!({"unitsSold": 0}), vec!["unitsSold"], Reason::Invalid),
        (
            json!({"dataProcessingOptions": ["LDU"]}),
            vec!["dataProcessingOptions"],
            Reason::Invalid,
        ),
        (
            json!({"dataSetName": "1abc"}),
            vec!["dataSetName"],
            Reason::Invalid,
        ),
        (
            json!({"clientDedupeId": "x".repeat(257)}),
            vec!["clientDedupeId"],
            Reason::Invalid,
        ),
        (
            json!({"customData": [{"name": "price", "value": "49.99"}]}),
            vec!["customData[0].value"],
            Reason::Invalid,
        ),
        (
            json!({"customData": [{"name": "a b", "value": "x", "dataType": "NUMBER"}]}),
            vec!["customData[0].name", "customData[0].dataType"],
            Reason::Invalid,
        ),
        (
            json!({"eventIngestionMethod": "BATCH"}),
            vec!["eventIngestionMethod"],
            Reason::Invalid,
        ),
        (json!({"name": 5}), vec!["name"], Reason::Malformed),
        (one_key(json!(null)), vec!["matchKeys"], Reason::Missing),
        (one_key(json!([])), vec!["matchKeys"], Reason::NoMatchKey),
        (
            one_key(
                json!([{"type": "EMAIL", "values": ["  "]}, {"type": "PHONE", "values": ["n/a"]}]),
            ),
            vec!["matchKeys"],
            Reason::NoMatchKey,
        ),
        (
            one_key(json!({"email": "", "phone": "---"})),
            vec!["matchKeys"],
            Reason::NoMatchKey,
        ),
        (
            one_key(
                json!([{"type": "EMAIL", "values": ["a@b.c"]}, {"type": "IDFA", "values": ["x"]}]),
            ),
            vec!["matchKeys[1].type"],
            Reason::Invalid,
        ),
        (
            one_key(
                json!([{"type": "EMAIL", "values": ["a@b.c"]}, {"type": "EMAIL", "values": ["d@e.f"]}]),
            ),
            vec!["matchKeys[1].type"],
            Reason::Invalid,
        ),
        (
            one_key(json!([{"type": "EMAIL", "values": ["a@b.c", "d@e.f"]}])),
            vec!["matchKeys[0].values"],
            Reason::Invalid,
        ),
        (
            one_key(json!([{"values": ["a@b.c"]}])),
            vec!["matchKeys[0].type"],
            Reason::Missing,
        ),
        (
            one_key(json!([{"type": "EMAIL"}])),
            vec!["matchKeys[0].values"],
            Reason::Missing,
        ),
        (
            one_key(json!({"email": "a@b.c", "shoeSize": "9"})),
            vec!["matchKeys.shoeSize"],
            Reason::Invalid,
        ),
        (
            one_key(
                json!([{"type": "EMAIL", "values": ["a@b.c"]}, {"type": "PHONE", "values": [{"n": 1}]}]),
            ),
            vec!["matchKeys[1].values[0]"],
            Reason::Malformed,
        ),
        (
            one_key(json!("jane@example.com")),
            vec!["matchKeys"],
            Reason::Malformed,
        ),
    ];
    for (patch, want, reason) in cases {
        let ev = with(base(), patch.clone());
        let errs = run(&ev).expect_err(&format!("{patch} should be rejected"));
        assert_eq!(fields(&errs), want, "{patch}: {errs:?}");
        assert_eq!(errs[0].reason, reason, "{patch}: {errs:?}");
        assert!(errs.iter().all(|e| !e.message.is_empty()));
    }
    // Type errors never echo the value (it may be personal data).
    let errs = run(&with(base(), json!({"matchKeys": "jane@example.com"}))).unwrap_err();
    assert!(!errs[0].message.contains("jane"), "{errs:?}");
    assert!(
        errs[0].message.contains("wrong type (a string)"),
        "{errs:?}"
    );
}

#[test]
fn every_problem_of_an_event_is_reported_and_no_pii_is_echoed() {
    let ev = json!({"eventType": "NOPE", "timestamp": "bad", "countryCode": "FR",
        "matchKeys": [{"type": "SSN", "values": ["jane@example.com"]}]});
    let errs = run(&ev).unwrap_err();
    assert_eq!(
        fields(&errs),
        [
            "name",
            "eventType",
            "timestamp",
            "matchKeys[0].type",
            "consent"
        ]
    );
    assert!(
        errs.iter().all(|e| !e.message.contains("jane@example.com")),
        "{errs:?}"
    );
}

#[test]
fn match_key_limits() {
    let fifteen: Vec<Value> = KeyType::ALL
        .iter()
        .map(|k| json!({"type": k.as_str(), "values": ["v1"]}))
        .collect();
    let out = run(&with(base(), json!({"matchKeys": fifteen}))).unwrap();
    assert_eq!(out["matchKeys"].as_array().unwrap().len(), 15);
    let mut sixteen = fifteen.clone();
    sixteen.push(json!({"type": "EMAIL", "values": ["x@y.z"]}));
    let errs = run(&with(base(), json!({"matchKeys": sixteen}))).unwrap_err();
    assert!(fields(&errs).contains(&"matchKeys"), "{errs:?}");
    // A key that normalises to nothing is dropped; the others go out.
    let out = run(&with(base(), json!({"matchKeys": {"email": "Jane.Doe@example.com", "phone": "n/a", "firstName": "José"}}))).unwrap();
    let types: Vec<&str> = out["matchKeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["EMAIL", "FIRST_NAME"]);
    // "José" is hashed as "jos" (the contract: no accent folding).
    assert_eq!(
        out["matchKeys"][1]["values"][0],
        "f854b2aeb789d616b26acff4df9ff7741d09d5f7a63add238201880e5b10bf2b"
    );
}

#[test]
fn escapes_are_kept_and_strings_are_escaped_on_the_way_out() {
    let raw = r#"{"name":"Caf\u00e9 \"Deluxe\"","eventType":"LEAD","timestamp":"2026-08-20T14:00:00Z","countryCode":"US","clientDedupeId":"a\"b\\c","matchKeys":[{"type":"MATCH_ID","values":["id\n1"]}]}"#;
    let mut arena = Arena::default();
    let p = Processor::new(NOW).prepare(raw, &mut arena).unwrap();
    let out: Value = serde_json::from_slice(arena.event(&p)).unwrap();
    assert_eq!(out["eventDescription"]["name"], "Café \"Deluxe\"");
    assert_eq!(out["eventId"], "a\"b\\c");
    assert_eq!(arena.id(&p), Some("a\"b\\c"));
    assert_eq!(out["matchKeys"][0]["values"][0], "id\n1");
}

#[test]
fn bodies_split_into_events() {
    let one = br#"{"name":"x"}"#;
    assert_eq!(parse_body(one).unwrap().len(), 1);
    let many = br#"{"events":[{"name":"a"},{"name":"b"},5]}"#;
    let Events::Raw(evs) = parse_body(many).unwrap() else {
        panic!("a non-object event sends the body down the event-by-event path")
    };
    assert_eq!(evs.len(), 3);
    assert_eq!(evs[2].get(), "5");
    // A non-object event is a per-event error, never a batch failure.
    let errs = Processor::new(NOW)
        .prepare(evs[2].get(), &mut Arena::default())
        .unwrap_err();
    assert_eq!(errs[0].field, "");
    assert!(errs[0].message.contains("JSON object"), "{errs:?}");

    // An event that repeats a field (an alias and its name) is rejected alone.
    let body = format!(
        r#"{{"events":[{{"name":"a","timestamp":"2026-08-20T14:00:00Z","eventTime":"2026-08-20T14:00:00Z"}},{}]}}"#,
        base()
    );
    let events = parse_body(body.as_bytes()).unwrap();
    assert!(matches!(events, Events::Raw(_)));
    let mut p = Processor::new(NOW);
    let mut arena = Arena::default();
    let errs = p.prepare_nth(&events, 0, &mut arena).unwrap_err();
    assert!(errs[0].message.contains("duplicate field"), "{errs:?}");
    assert!(p.prepare_nth(&events, 1, &mut arena).is_ok());

    for (body, status, code) in [
        (&b"{\"events\":[{]}"[..], 400, "invalid_json"),
        (b"not json", 400, "invalid_json"),
        (b"[1,2]", 400, "invalid_json"),
        (b"{\"events\":[]}", 400, "invalid_request"),
        (b"{\"events\":{}}", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
    ] {
        let e = parse_body(body).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (status, code),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    let big = format!("{{\"events\":[{}]}}", vec!["{}"; MAX_EVENTS + 1].join(","));
    assert_eq!(parse_body(big.as_bytes()).unwrap_err().status, 413);
}

#[test]
fn batch_body_joins_written_events() {
    let mut arena = Arena::default();
    let mut p = Processor::new(NOW);
    let a = p.prepare(&base().to_string(), &mut arena).unwrap();
    let b = p
        .prepare(
            &with(base(), json!({"name": "Second"})).to_string(),
            &mut arena,
        )
        .unwrap();
    let body = batch_body([arena.event(&a), arena.event(&b)], arena.json.len());
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["events"].as_array().unwrap().len(), 2);
    assert_eq!(v["events"][1]["eventDescription"]["name"], "Second");
}

#[test]
fn the_streaming_pass_gives_one_outcome_per_index() {
    let ok = base();
    let bad = with(base(), json!({"countryCode": "Atlantis"}));
    let body = format!(r#"{{"events":[{ok},{bad},5,"x",{ok}],"other":1}}"#);
    let mut arena = Arena::default();
    let out = prepare_body(body.as_bytes(), &mut Processor::new(NOW), &mut arena).unwrap();
    assert_eq!(out.len(), 5);
    assert!(out[0].is_ok() && out[4].is_ok());
    assert_eq!(fields(out[1].as_ref().unwrap_err()), ["countryCode"]);
    for i in [2, 3] {
        let errs = out[i].as_ref().unwrap_err();
        assert_eq!(errs[0].field, "");
        assert!(errs[0].message.contains("JSON object"), "{errs:?}");
    }
    // Only the two valid events were written, back to back.
    let (a, b) = (out[0].as_ref().unwrap(), out[4].as_ref().unwrap());
    assert_eq!((a.event.start, a.event.end), (0, b.event.start));
    assert_eq!(b.event.end, arena.json.len());
}

#[test]
fn a_body_the_streaming_pass_cannot_read_falls_back_without_leftovers() {
    // The second event repeats a field: the streaming pass gives up after writing the first
    // event; the event-by-event path must start from a clean arena.
    let body = format!(
        r#"{{"events":[{},{{"name":"a","timestamp":"2026-08-20T14:00:00Z","eventTime":"2026-08-20T14:00:00Z"}},{}]}}"#,
        base(),
        with(base(), json!({"name": "Third"}))
    );
    let mut arena = Arena::default();
    let out = prepare_body(body.as_bytes(), &mut Processor::new(NOW), &mut arena).unwrap();
    assert_eq!(out.len(), 3);
    assert!(
        out[1].as_ref().unwrap_err()[0]
            .message
            .contains("duplicate field")
    );
    let (a, c) = (out[0].as_ref().unwrap(), out[2].as_ref().unwrap());
    assert_eq!((a.event.start, a.event.end), (0, c.event.start));
    assert_eq!(c.event.end, arena.json.len());
    let third: Value = serde_json::from_slice(arena.event(c)).unwrap();
    assert_eq!(third["eventDescription"]["name"], "Third");

    // One bare event, and body-level problems, as on the parse_body path.
    let one = base().to_string();
    let out = prepare_body(one.as_bytes(), &mut Processor::new(NOW), &mut arena).unwrap();
    assert_eq!(out.len(), 1);
    assert!(out[0].is_ok());
    for (body, status) in [
        (&b"{\"events\":[]}"[..], 400),
        (b"{\"events\":[{]}", 400),
        (b"{\"events\":[{}]} trailing", 400),
        (b"{\"events\":[\"\xff\"]}", 400),
    ] {
        let e = prepare_body(body, &mut Processor::new(NOW), &mut Arena::default()).unwrap_err();
        assert_eq!(e.status, status, "{}", String::from_utf8_lossy(body));
    }
    let big = format!("{{\"events\":[{}]}}", vec!["{}"; MAX_EVENTS + 1].join(","));
    let e = prepare_body(
        big.as_bytes(),
        &mut Processor::new(NOW),
        &mut Arena::default(),
    )
    .unwrap_err();
    assert_eq!(e.status, 413);
    assert!(e.message.contains("10001 events"), "{}", e.message);
}

#[test]
fn events_without_an_id_get_a_generated_event_id_when_asked() {
    let no_id = serde_json::to_string(&base()).unwrap();
    let with_id =
        serde_json::to_string(&with(base(), json!({"clientDedupeId": "order-1"}))).unwrap();
    let mut arena = Arena::default();
    let mut p = Processor::new(NOW).with_generated_ids();
    let a = p.prepare(&no_id, &mut arena).unwrap();
    let b = p.prepare(&no_id, &mut arena).unwrap();
    let c = p.prepare(&with_id, &mut arena).unwrap();
    for x in [&a, &b] {
        assert!(x.generated_id);
        let id = arena.id(x).unwrap();
        assert!(id.starts_with(GENERATED_ID_PREFIX), "{id}");
        assert_eq!(id.len(), GENERATED_ID_PREFIX.len() + 32, "{id}");
        assert!(
            id[GENERATED_ID_PREFIX.len()..]
                .bytes()
                .all(|c| c.is_ascii_hexdigit())
        );
        let out: Value = serde_json::from_slice(arena.event(x)).unwrap();
        assert_eq!(out["eventId"], id, "the generated id goes out as eventId");
    }
    assert_ne!(arena.id(&a), arena.id(&b), "every event gets its own id");
    // A caller's id is kept as it is and is not marked generated.
    assert!(!c.generated_id);
    assert_eq!(arena.id(&c), Some("order-1"));
    let out: Value = serde_json::from_slice(arena.event(&c)).unwrap();
    assert_eq!(out["eventId"], "order-1");
    // Without the option (the default) nothing is generated.
    let mut arena = Arena::default();
    let d = Processor::new(NOW).prepare(&no_id, &mut arena).unwrap();
    assert!(!d.generated_id);
    assert_eq!(arena.id(&d), None);
    let out: Value = serde_json::from_slice(arena.event(&d)).unwrap();
    assert!(out.get("eventId").is_none());
}
