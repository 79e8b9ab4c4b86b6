//! Unit tests of the request checks and views.

use super::fields::{
    DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS, parse_account_id, parse_controls, parse_countries,
    parse_fees, parse_labels, parse_ttl, valid_segment_id,
};
use super::mapping_requests::parse_mapping_requests;
use super::views::{destination_status, mapping_view};
use crate::amazon::AudienceFee;
use crate::domain::export_controls::ExportControl;
use crate::http::HttpResponse;
use crate::store::destinations::{MappingStatus, SegmentMapping};
use serde_json::json;

#[test]
fn segment_ids_use_a_safe_alphabet() {
    assert!(valid_segment_id("seg-1_a.b:c"));
    assert!(!valid_segment_id(""));
    assert!(!valid_segment_id("a#b"));
    assert!(!valid_segment_id("a b"));
    assert!(!valid_segment_id(&"x".repeat(129)));
}

#[test]
fn fees_must_be_in_the_advertisers_currency() {
    let ok = parse_fees(
        &json!([{"cpmCents": 150, "currency": "usd"}]),
        "audienceFees",
        "USD",
    )
    .unwrap();
    assert_eq!(
        ok,
        vec![AudienceFee {
            cpm_cents: 150,
            currency: "USD".into()
        }]
    );
    assert!(
        parse_fees(&json!([]), "audienceFees", "USD")
            .unwrap()
            .is_empty()
    );
    let r = parse_fees(
        &json!([{"cpmCents": 150, "currency": "EUR"}]),
        "mappings[2].audienceFees",
        "USD",
    )
    .map_err(HttpResponse::from)
    .unwrap_err();
    assert_eq!(r.status, 400);
    let b = r.json_body();
    assert_eq!(b["error"]["field"], "mappings[2].audienceFees[0].currency");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("USD"),
        "{b}"
    );
    for bad in [json!(-1), json!(1.5), json!("150"), json!(5_000_000_000u64)] {
        let r = parse_fees(
            &json!([{"cpmCents": bad, "currency": "USD"}]),
            "audienceFees",
            "USD",
        )
        .map_err(HttpResponse::from)
        .unwrap_err();
        assert_eq!(r.json_body()["error"]["field"], "audienceFees[0].cpmCents");
    }
    let r = parse_fees(
        &json!([{"cpmCents": 1, "currency": "USD"}, {"cpmCents": 2, "currency": "USD"}]),
        "audienceFees",
        "USD",
    )
    .map_err(HttpResponse::from)
    .unwrap_err();
    assert_eq!(r.json_body()["error"]["field"], "audienceFees[1]");
}

#[test]
fn labels_and_controls_errors_name_the_index() {
    let r = parse_labels(Some(&json!(["PII_COMBINATION", "nope"])))
        .map_err(HttpResponse::from)
        .unwrap_err();
    assert_eq!(r.json_body()["error"]["field"], "dataExportLabels[1]");
    let r = parse_controls(Some(&json!("NO_PII_COMBINATION")))
        .map_err(HttpResponse::from)
        .unwrap_err();
    assert_eq!(r.json_body()["error"]["field"], "dataExportControls");
    assert_eq!(
        parse_controls(Some(&json!(["NO_PII_COMBINATION", "NO_PII_COMBINATION"]))).unwrap(),
        vec![ExportControl::NoPiiCombination]
    );
}

#[test]
fn countries_ttl_and_account_ids_are_checked() {
    assert_eq!(
        parse_countries(&json!(["us", "CA"])).unwrap(),
        vec!["US", "CA"]
    );
    assert_eq!(
        parse_countries(&json!(["US", "USA"]))
            .map_err(HttpResponse::from)
            .unwrap_err()
            .json_body()["error"]["field"],
        "dataSourceCountry[1]"
    );
    assert_eq!(
        parse_countries(&json!([]))
            .map_err(HttpResponse::from)
            .unwrap_err()
            .status,
        400
    );
    assert_eq!(parse_ttl(None).unwrap(), DEFAULT_TTL_SECONDS);
    assert_eq!(
        parse_ttl(Some(&json!(MAX_TTL_SECONDS))).unwrap(),
        MAX_TTL_SECONDS
    );
    assert!(parse_ttl(Some(&json!(MAX_TTL_SECONDS + 1))).is_err());
    assert_eq!(parse_account_id(Some(&json!("123"))).unwrap(), "123");
    assert_eq!(
        parse_account_id(Some(&json!(4728736040201u64))).unwrap(),
        "4728736040201"
    );
    assert!(parse_account_id(Some(&json!("12a"))).is_err());
}

#[test]
fn duplicate_segments_in_one_request_are_refused() {
    let r = parse_mapping_requests(
        &json!([{"segmentId": "a"}, {"segmentId": "b"}, {"segmentId": "a"}]),
        "mappings",
        "USD",
    )
    .map_err(HttpResponse::from)
    .err()
    .unwrap();
    assert_eq!(r.json_body()["error"]["field"], "mappings[2].segmentId");
    let r = parse_mapping_requests(&json!([{"segmentId": "a", "fees": []}]), "mappings", "USD")
        .map_err(HttpResponse::from)
        .err()
        .unwrap();
    assert_eq!(r.json_body()["error"]["field"], "mappings[0].fees");
}

fn mapping(status: MappingStatus, err: Option<&str>) -> SegmentMapping {
    SegmentMapping {
        destination_id: "d".into(),
        segment_id: format!("s-{}", status.as_str()),
        status,
        audience_id: Some(72_057_594_038_053_890),
        external_audience_id: "x".into(),
        audience_name: "name of it".into(),
        audience_fees: vec![],
        last_error: err.map(String::from),
        blocked_reason: (status == MappingStatus::Blocked).then(|| "why".to_string()),
        created_at: "t".into(),
        updated_at: "t".into(),
    }
}

#[test]
fn destination_status_surfaces_errors() {
    let (s, e) = destination_status(None, &[mapping(MappingStatus::Active, None)]);
    assert_eq!((s.as_str(), e.len()), ("active", 0));
    let (s, _) = destination_status(None, &[mapping(MappingStatus::Pending, None)]);
    assert_eq!(s, "pending");
    let (s, e) = destination_status(
        None,
        &[
            mapping(
                MappingStatus::Failed,
                Some("Amazon Error: Account 1 was not found."),
            ),
            mapping(MappingStatus::Removed, Some("old")),
        ],
    );
    assert_eq!(s, "attention");
    assert_eq!(
        e,
        vec![json!({"segmentId": "s-failed", "message": "Amazon Error: Account 1 was not found."})]
    );
    let (s, e) = destination_status(Some("relink".into()), &[]);
    assert_eq!((s.as_str(), e.len()), ("attention", 1));
}

#[test]
fn audience_ids_above_2_pow_53_stay_exact_in_views() {
    let v = mapping_view(&mapping(MappingStatus::Active, None), None);
    let text = serde_json::to_string(&v).unwrap();
    assert!(text.contains("\"audienceId\":72057594038053890"), "{text}");
}

/// The error (status, field, message) of a body check.
fn refusal<T>(r: crate::http::ApiResult<T>) -> (u16, String, String) {
    let e = r.err().expect("the check should fail");
    (e.status(), e.field.unwrap_or_default(), e.message)
}

fn segment_body(v: serde_json::Value) -> super::requests::SegmentBody {
    super::requests::from_object(v).unwrap()
}

#[test]
fn segment_bodies_answer_the_first_problem_in_a_fixed_order() {
    let r = refusal(segment_body(json!({"zeta": 1, "alpha": 2, "name": "x"})).check("s"));
    assert_eq!(r, (400, "alpha".into(), "unknown field alpha".into()));
    // `null` is not the path's id; an absent one is fine.
    let r = refusal(segment_body(json!({"segmentId": null, "name": "x"})).check("s"));
    assert_eq!(r.1, "segmentId");
    assert!(segment_body(json!({"name": " x "})).check("s").is_ok());
    // The name is checked before the description, whatever the key order.
    let r = refusal(segment_body(json!({"description": 5, "name": 5})).check("s"));
    assert_eq!(r, (400, "name".into(), "name must be a string".into()));
}

#[test]
fn patch_bodies_refuse_the_first_fixed_or_unknown_field_in_key_order() {
    let d = crate::store::destinations::Destination {
        destination_id: "d1".into(),
        name: "N".into(),
        description: "old".into(),
        account_id: "1".into(),
        data_export_labels: vec![crate::domain::export_controls::ExportLabel::ALL[0]],
        data_source_country: vec!["US".into()],
        ttl_seconds: 60,
        created_at: String::new(),
    };
    let patch = |v: serde_json::Value| {
        super::requests::from_object::<super::requests::PatchBody>(v)
            .unwrap()
            .check(&d)
    };
    let r = refusal(patch(json!({"zz": 1, "mappings": [], "accountId": "1"})));
    assert_eq!(
        r,
        (
            400,
            "accountId".into(),
            "accountId of a destination cannot be changed".into()
        )
    );
    let r = refusal(patch(json!({"zz": 1, "name": "M"})));
    assert_eq!(r.1, "name");
    let r = refusal(patch(json!({"destinationId": "d2"})));
    assert_eq!(r.1, "destinationId");
    // Unchanged fixed fields and the settings pass; a `null` label list empties the labels.
    let p = patch(
        json!({"name": " N ", "destinationId": "d1", "ttlSeconds": 5,
        "dataSourceCountry": ["CA"], "dataExportLabels": null}),
    )
    .unwrap();
    assert_eq!((p.description.as_str(), p.labels.len()), ("old", 0));
    assert_eq!(patch(json!({})).unwrap().labels, d.data_export_labels);
}

#[test]
fn mapping_and_fee_bodies_keep_null_apart_from_absent() {
    use super::mapping_requests::AddMappingsBody;
    let add = |v: serde_json::Value| {
        super::requests::from_object::<AddMappingsBody>(v)
            .unwrap()
            .check("USD")
    };
    let r = refusal(add(json!({"mappings": null, "b": 1, "a": 2})));
    assert_eq!(
        r,
        (
            400,
            "a".into(),
            "unknown field a (give either mappings or one segmentId)".into()
        )
    );
    let r = refusal(add(json!({"mappings": null})));
    assert_eq!(r.2, "mappings must be an array");
    let r = refusal(add(json!({"segmentId": "s", "x": 1})));
    assert_eq!((r.1.as_str(), r.2.as_str()), ("x", "unknown field x"));
    let r = refusal(add(json!({"mappings": []})));
    assert_eq!(r.2, "mappings must list at least one segment");
    assert_eq!(
        add(json!({"segmentId": "s"})).unwrap()[0].segment_field(),
        "segmentId"
    );

    use super::requests::FeesBody;
    let fees = |v: serde_json::Value| super::requests::from_object::<FeesBody>(v).unwrap();
    assert_eq!(
        refusal(fees(json!({"audienceFees": [], "cpm": 1})).check_fields()).1,
        "cpm"
    );
    assert_eq!(
        refusal(fees(json!({"audienceFees": null})).fees("USD")).2,
        "audienceFees must be an array"
    );
    assert_eq!(
        refusal(fees(json!({})).fees("USD")).2,
        "audienceFees is required (an empty array removes the fee)"
    );
    let r = refusal(parse_fees(
        &json!([{"cpmCents": null, "currency": "USD"}]),
        "f",
        "USD",
    ));
    assert_eq!(r.1, "f[0].cpmCents");
    assert!(r.2.contains("non-negative integer"), "{}", r.2);
}
