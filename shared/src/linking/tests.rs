use super::failure::{consume_failure, exchange_failure, provider_error, sanitize_error_code};
use super::random_token;
use crate::amazon::{AmazonError, LwaError};
use crate::store::accounts::ConsumeError;

#[test]
fn random_tokens_are_long_and_distinct() {
    let a = random_token().unwrap();
    let b = random_token().unwrap();
    assert_ne!(a, b);
    // 32 bytes → 43 base64url characters: 256 bits.
    assert_eq!(a.len(), 43);
    assert!(
        a.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    );
}

#[test]
fn provider_errors_are_not_echoed_raw() {
    assert_eq!(sanitize_error_code("access_denied"), "access_denied");
    assert_eq!(sanitize_error_code("<script>"), "unknown_error");
    assert_eq!(provider_error("access_denied").status(), 403);
    assert_eq!(provider_error("server_error").status(), 400);
}

#[test]
fn failure_statuses_match_the_docs() {
    assert_eq!(
        consume_failure("state", &ConsumeError::Unknown).status(),
        400
    );
    assert_eq!(
        consume_failure("state", &ConsumeError::Expired).status(),
        410
    );
    assert_eq!(consume_failure("state", &ConsumeError::Used).status(), 409);
    assert_eq!(
        consume_failure("form", &ConsumeError::Unknown).status(),
        403
    );
    let ig = AmazonError::Lwa(LwaError::InvalidGrant {
        description: "x".into(),
    });
    assert_eq!(exchange_failure(&ig).status(), 400);
    assert_eq!(exchange_failure(&AmazonError::Timeout).status(), 502);
}

#[test]
fn routes_answer_as_before_under_api_gateway_and_cargo_lambda() {
    use super::routes::{ROUTES, Route};
    use crate::http::router::{Matched, route};
    for prefix in ["", "/lambda-url/oauth-callback"] {
        let p = |s: &str| format!("{prefix}{s}");
        let cases = [
            ("GET", "/oauth/callback", Route::Callback),
            ("POST", "/oauth/confirm", Route::Confirm),
            ("POST", "/connections", Route::Connections),
            ("GET", "/accounts", Route::Accounts),
            ("DELETE", "/accounts/42", Route::Account),
        ];
        for (m, path, r) in cases {
            assert!(matches!(route(ROUTES, m, &p(path)), Matched::Route(x, _) if x == r));
        }
        for (m, path, allow) in [
            ("HEAD", "/oauth/callback", "GET"),
            ("GET", "/oauth/confirm", "POST"),
            ("GET", "/connections", "POST"),
            ("DELETE", "/accounts", "GET"),
            ("GET", "/accounts/42", "DELETE"),
        ] {
            let r = route(ROUTES, m, &p(path)).refusal().unwrap();
            assert_eq!((r.status, r.headers["allow"].as_str()), (405, allow));
            assert_eq!(
                r.json_body()["error"]["message"],
                format!("allowed methods: {allow}")
            );
        }
        let r = route(ROUTES, "GET", &p("/nope")).refusal().unwrap();
        assert_eq!(r.status, 404);
    }
}
