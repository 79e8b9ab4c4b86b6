//! Every problem of an event is named by its field, with its reason.

use super::*;

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
