//! `openapi.yaml` against `template.yaml`, and the response validator against known-bad answers.
//!
//! Run: `cargo test -p adsync-tests --test openapi` (no local services needed).

use adsync_tests::openapi::{Spec, read_yaml, spec, workspace_root};
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// (METHOD, path) of every `HttpApi` event of every function in `template.yaml`.
fn template_routes() -> BTreeSet<(String, String)> {
    let template =
        read_yaml(&workspace_root().join("template.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let resources = template["Resources"]
        .as_object()
        .expect("template.yaml has Resources");
    let mut routes = BTreeSet::new();
    for (name, res) in resources {
        let Some(events) = res["Properties"]["Events"].as_object() else {
            continue;
        };
        for (event_name, ev) in events {
            if ev["Type"] != "HttpApi" {
                continue;
            }
            let props = &ev["Properties"];
            let method = props["Method"].as_str().unwrap_or_else(|| {
                panic!("{name}.{event_name}: HttpApi event without a literal Method")
            });
            let path = props["Path"].as_str().unwrap_or_else(|| {
                panic!("{name}.{event_name}: HttpApi event without a literal Path")
            });
            routes.insert((method.to_ascii_uppercase(), path.to_string()));
        }
    }
    routes
}

#[test]
fn every_template_route_is_documented() {
    let routes = template_routes();
    assert!(
        routes.len() >= 15,
        "expected the adsync routes in template.yaml, found {routes:?}"
    );
    let documented: BTreeSet<(String, String)> = spec().routes().into_iter().collect();
    let missing: Vec<_> = routes.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes in template.yaml missing from openapi.yaml: {missing:?}"
    );
}

#[test]
fn every_documented_route_is_deployed() {
    let routes = template_routes();
    let extra: Vec<_> = spec()
        .routes()
        .into_iter()
        .filter(|r| !routes.contains(r))
        .collect();
    assert!(
        extra.is_empty(),
        "openapi.yaml documents routes template.yaml does not deploy: {extra:?}"
    );
}

#[test]
fn api_key_routes_document_401_and_every_json_error_uses_the_error_shape() {
    let s = spec();
    for (method, path) in s.routes() {
        let op = s.operation(&method, &path).unwrap();
        let responses = op["responses"].as_object().unwrap();
        // The linking browser steps and the console (session cookie) go without the API key.
        let html_route = path.starts_with("/oauth/") || path.starts_with("/console");
        assert_eq!(
            s.requires_api_key(&method, &path),
            Some(!html_route),
            "{method} {path}: only the /oauth and /console pages go without the API key"
        );
        if !html_route {
            assert!(
                responses.contains_key("401"),
                "{method} {path} lacks a 401 response"
            );
        }
        // Every documented JSON 4xx/5xx body must be exactly the error shape.
        for (status, _) in responses
            .iter()
            .filter(|(k, _)| k.starts_with('4') || k.starts_with('5'))
        {
            let code: u16 = status.parse().unwrap();
            let err =
                json!({"error": {"code": "some_error", "message": "what went wrong"}}).to_string();
            let res = s.validate_response(&method, &path, code, Some("application/json"), &err);
            let html = s.validate_response(
                &method,
                &path,
                code,
                Some("text/html; charset=utf-8"),
                "<p>x</p>",
            );
            assert!(
                res.is_ok() || (html_route && html.is_ok()),
                "{method} {path} {status}: {res:?} / {html:?}"
            );
            if res.is_ok() {
                let wrong = json!({"message": "what went wrong"}).to_string();
                assert!(
                    s.validate_response(&method, &path, code, Some("application/json"), &wrong)
                        .is_err(),
                    "{method} {path} {status} accepts a body without the error object"
                );
            }
        }
    }
}

#[test]
fn audience_ids_are_int64_integers() {
    let doc = spec().doc();
    let int64 = &doc["components"]["schemas"]["Int64"];
    assert_eq!(int64["type"], "integer");
    assert_eq!(int64["format"], "int64");
    let audience_id = &doc["components"]["schemas"]["Mapping"]["properties"]["audienceId"];
    assert!(
        audience_id
            .to_string()
            .contains("#/components/schemas/Int64"),
        "Mapping.audienceId must be the Int64 schema: {audience_id}"
    );
    // An id above 2^53 validates; the same id as a string or a float does not.
    let s = spec();
    let mapping = |id: Value| {
        json!({"destinationId": "d", "name": "n", "accountId": "1", "description": "",
               "dataExportLabels": [], "dataSourceCountry": ["US"], "ttlSeconds": 2592000,
               "status": "active", "errors": [], "createdAt": "2026-11-23T05:00:00.000Z",
               "mappings": [{"segmentId": "s", "status": "active", "audienceId": id,
                             "externalAudienceId": "adsync-s", "audienceName": "adsync segment s",
                             "audienceFees": [], "lastError": null, "blockedReason": null,
                             "backfill": null}]})
        .to_string()
    };
    let path = "/destinations/d-1";
    let ok = s.validate_response(
        "GET",
        path,
        200,
        Some("application/json"),
        &mapping(json!(9_007_199_254_740_993_i64)),
    );
    assert!(ok.is_ok(), "{ok:?}");
    for bad in [json!("9007199254740993"), json!(1.5)] {
        let r = s.validate_response(
            "GET",
            path,
            200,
            Some("application/json"),
            &mapping(bad.clone()),
        );
        assert!(r.is_err(), "audienceId {bad} was accepted");
    }
}

#[test]
fn validator_rejects_what_the_spec_does_not_say() {
    let s = spec();
    // Undocumented route and status.
    assert!(
        s.validate_response("GET", "/nope", 200, Some("application/json"), "{}")
            .is_err()
    );
    assert!(
        s.validate_response("GET", "/accounts", 418, Some("application/json"), "{}")
            .is_err()
    );
    // Wrong content type, non-JSON body, wrong shape.
    assert!(
        s.validate_response("GET", "/accounts", 200, Some("text/html"), "<p>")
            .is_err()
    );
    assert!(
        s.validate_response(
            "GET",
            "/accounts",
            200,
            Some("application/json"),
            "not json"
        )
        .is_err()
    );
    assert!(
        s.validate_response(
            "GET",
            "/accounts",
            200,
            Some("application/json"),
            r#"{"items":[]}"#
        )
        .is_err()
    );
    // Missing content type on a documented body.
    assert!(
        s.validate_response("GET", "/accounts", 200, None, r#"{"accounts":[]}"#)
            .is_err()
    );
    // An error body with an extra top-level member or a non-snake_case code.
    let extra = r#"{"error":{"code":"unauthorized","message":"m"},"debug":"x"}"#;
    assert!(
        s.validate_response("GET", "/accounts", 401, Some("application/json"), extra)
            .is_err()
    );
    let camel = r#"{"error":{"code":"notFound","message":"m"}}"#;
    assert!(
        s.validate_response("GET", "/accounts", 401, Some("application/json"), camel)
            .is_err()
    );
    // Formats are checked: a bad date-time in a Connection.
    let conn = |exp: &str| {
        json!({"connectionId": "c1", "authorizeUrl": "https://www.amazon.com/ap/oa?x=1", "expiresAt": exp}).to_string()
    };
    assert!(
        s.validate_response(
            "POST",
            "/connections",
            201,
            Some("application/json"),
            &conn("2026-11-23T05:00:00Z")
        )
        .is_ok()
    );
    assert!(
        s.validate_response(
            "POST",
            "/connections",
            201,
            Some("application/json"),
            &conn("tomorrow")
        )
        .is_err()
    );
    // HTML routes: text/html with a non-empty page.
    assert!(
        s.validate_response(
            "GET",
            "/oauth/callback",
            200,
            Some("text/html; charset=utf-8"),
            "<!doctype html><p>ok</p>"
        )
        .is_ok()
    );
    assert!(
        s.validate_response("GET", "/oauth/callback", 200, Some("text/html"), "")
            .is_err()
    );
    assert!(
        s.validate_response(
            "GET",
            "/oauth/callback",
            200,
            Some("application/json"),
            "{}"
        )
        .is_err()
    );
}

#[test]
fn required_headers_are_checked() {
    let s = spec();
    let ok = [("Location", "callback?view=abc_DEF-123")];
    assert!(
        s.validate_headers("GET", "/oauth/callback", 303, ok)
            .is_ok()
    );
    let none: [(&str, &str); 0] = [];
    assert!(
        s.validate_headers("GET", "/oauth/callback", 303, none)
            .is_err(),
        "Location is required"
    );
    // A redirect that would leave the code or state in the URL is not what the spec allows.
    let leaky = [(
        "location",
        "https://example.com/oauth/callback?code=x&state=y",
    )];
    assert!(
        s.validate_headers("GET", "/oauth/callback", 303, leaky)
            .is_err()
    );
    assert!(
        s.validate_response("GET", "/oauth/callback", 303, None, "")
            .is_ok()
    );
    assert!(
        s.validate_response("GET", "/oauth/callback", 303, None, "<p>moved</p>")
            .is_err()
    );
}

#[test]
fn concrete_and_local_paths_resolve_to_their_template() {
    let s = spec();
    assert_eq!(
        s.resolve_path("POST", "/accounts/123/conversions")
            .as_deref(),
        Some("/accounts/{accountId}/conversions")
    );
    assert_eq!(
        s.resolve_path("DELETE", "/accounts/123").as_deref(),
        Some("/accounts/{accountId}")
    );
    assert_eq!(
        s.resolve_path(
            "PUT",
            "/lambda-url/segment-export/destinations/d1/mappings/s1/fees?x=1"
        )
        .as_deref(),
        Some("/destinations/{destinationId}/mappings/{segmentId}/fees")
    );
    assert_eq!(
        s.resolve_path("GET", "/accounts/123").as_deref(),
        None,
        "GET /accounts/{{id}} is not a route"
    );
}

#[test]
fn request_bodies_are_checked() {
    let s = spec();
    let json = Some("application/json");
    assert!(
        s.validate_request_body("POST", "/connections", json, br#"{"region":"EU"}"#)
            .is_ok()
    );
    assert!(
        s.validate_request_body("POST", "/connections", json, br#"{"zone":"EU"}"#)
            .is_err()
    );
    assert!(
        s.validate_request_body("POST", "/connections", json, b"")
            .is_err(),
        "the body is required"
    );
    assert!(
        s.validate_request_body("POST", "/connections", Some("text/plain"), b"NA")
            .is_err()
    );
    let form = Some("application/x-www-form-urlencoded");
    assert!(
        s.validate_request_body("POST", "/oauth/confirm", form, b"csrf=abc&advertiserId=123")
            .is_ok()
    );
    assert!(
        s.validate_request_body("POST", "/oauth/confirm", form, b"csrf=abc")
            .is_err()
    );
    assert!(
        s.validate_request_body("GET", "/accounts", None, b"")
            .is_ok()
    );
    let q = br#"{"qualifications":[{"segmentId":"s","deviceId":"d","idType":"EMAIL","status":"qualified","timestamp":"2026-01-01T00:00:00Z"}]}"#;
    assert!(
        s.validate_request_body("POST", "/qualifications", json, q)
            .is_err(),
        "EMAIL is no device id type"
    );
}

#[test]
fn an_openapi_3_0_spec_is_refused() {
    // 3.0 schemas are not JSON Schema; the helper must not silently validate with them.
    assert!(Spec::from_value(json!({"openapi": "3.0.3", "paths": {}})).is_err());
}

#[test]
fn every_sample_event_targets_a_documented_route() {
    let dir = workspace_root().join("infra/events");
    let mut seen = BTreeSet::new();
    for func in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let func = func.unwrap().path();
        for f in std::fs::read_dir(&func).unwrap() {
            let f = f.unwrap().path();
            let ev: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            if ev.get("task").is_some() {
                continue;
            }
            let method = ev["requestContext"]["http"]["method"].as_str().unwrap();
            let raw = ev["rawPath"].as_str().unwrap();
            let template = spec().resolve_path(method, raw).unwrap_or_else(|| {
                panic!("{}: {method} {raw} is not in openapi.yaml", f.display())
            });
            assert_eq!(
                ev["routeKey"],
                format!("{method} {template}"),
                "{}",
                f.display()
            );
            let needs_key = spec().requires_api_key(method, &template).unwrap();
            let auth = ev["headers"]["authorization"].as_str();
            assert_eq!(
                auth.is_some(),
                needs_key,
                "{}: Authorization header present = {}, route needs the key = {needs_key}",
                f.display(),
                auth.is_some()
            );
            if let Some(a) = auth {
                assert_eq!(a, "Bearer adsync-local-key", "{}", f.display());
            }
            // The body is what the spec documents for the route.
            let req = adsync::http::HttpRequest::from_apigw_v2(&ev)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let ct = req.header("content-type").map(str::to_string);
            if let Err(e) = spec().validate_request_body(method, raw, ct.as_deref(), &req.body) {
                panic!("{}: {e}", f.display());
            }
            seen.insert((method.to_string(), template));
        }
    }
    let missing: Vec<_> = spec()
        .routes()
        .into_iter()
        .filter(|r| !seen.contains(r))
        .collect();
    assert!(
        missing.is_empty(),
        "documented routes without a sample event in infra/events: {missing:?}"
    );
}

/// Every API-key route of the spec has a line of its own in the scope table
/// (`adsync::http::scopes::POLICY`), so no route falls back to the default by omission.
#[test]
fn every_documented_api_key_route_has_its_own_scope_rule() {
    let spec = spec();
    let mut missing = Vec::new();
    for (method, template) in spec.routes() {
        if template.starts_with("/console")
            || spec.requires_api_key(&method, &template) != Some(true)
        {
            continue;
        }
        let path = template
            .replace("{accountId}", "123")
            .replace(['{', '}'], "");
        let segs = adsync::http::scopes::route_segments(&path);
        if !adsync::http::scopes::is_declared(&method, &segs) {
            missing.push(format!("{method} {template}"));
        }
    }
    assert!(
        missing.is_empty(),
        "routes without a scope rule: {missing:?}"
    );
}
