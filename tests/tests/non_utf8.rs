//! A request body that is not UTF-8 gets a 400 naming the problem from the real conversion
//! handler, whichever way API Gateway / the function URL delivers it: base64-encoded, or as a
//! JSON string with lone surrogate escapes (which no Rust `String` can hold). The event goes
//! through `adsync::runtime::dispatch_raw`, the entry point the Lambda runtime calls.
//! Run with the stack up: `cargo test -p adsync-tests --test non_utf8`.

use adsync::runtime::{Invocation, dispatch_raw};
use adsync_tests::conversions::IngestFixture;
use base64::Engine;
use serde_json::Value;
use serde_json::value::RawValue;

/// A payload 2.0 event for `POST /accounts/{id}/conversions`; `body` is spliced in as JSON
/// string content, escapes included.
fn event(f: &IngestFixture, body: &str, base64: bool) -> Box<RawValue> {
    let text = format!(
        r#"{{"version":"2.0","rawPath":"/accounts/{}/conversions","headers":{{"content-type":"application/json","authorization":"Bearer {}"}},"requestContext":{{"http":{{"method":"POST"}}}},"isBase64Encoded":{base64},"body":"{body}"}}"#,
        f.account.account_id, f.api_key
    );
    RawValue::from_string(text).unwrap()
}

#[tokio::test]
async fn a_body_that_is_not_utf8_gets_400_plain_or_base64() {
    let f = IngestFixture::new().await;
    let raw: &[u8] = b"{\"events\":[{\"name\":\"\xff\xfe\"}]}";
    let cases = [
        (
            "base64",
            event(
                &f,
                &base64::engine::general_purpose::STANDARD.encode(raw),
                true,
            ),
        ),
        (
            "plain",
            event(&f, r#"{\"events\":[{\"name\":\"\udcff\"}]}"#, false),
        ),
    ];
    for (what, ev) in cases {
        let out = dispatch_raw(&f.handler, &ev, Invocation::with_timeout(30))
            .await
            .unwrap_or_else(|e| panic!("{what}: the event failed instead of answering: {e}"));
        assert_eq!(out["statusCode"], 400, "{what}: {out}");
        adsync_tests::openapi::assert_apigw_response_valid(
            "POST",
            &format!("/accounts/{}/conversions", f.account.account_id),
            &out,
        );
        let body: Value = serde_json::from_str(out["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "invalid_json", "{what}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(
            msg.starts_with("the body is not UTF-8 (invalid byte at offset 20)"),
            "{what}: {msg}"
        );
    }
    // Nothing reached Amazon.
    let dump = f.login.sandbox.events(f.advertiser_id()).await.unwrap();
    assert!(dump.events.is_empty());
}
