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
