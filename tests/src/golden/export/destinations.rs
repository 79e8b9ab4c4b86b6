//! Segment-export cases: destinations (creation, listing, reading, changes, deletion), mappings
//! and audience fees, and the changes a destination being deleted refuses.

use super::Ex;
use adsync::store::accounts::AccountStatus;
use serde_json::{Value, json};

pub(super) async fn destinations(x: &mut Ex) {
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

pub(super) async fn mappings_and_fees(x: &mut Ex) {
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
    let r = crate::golden::call(&x.h, &x.req("DELETE", &format!("{mp}/{b}"))).await;
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
