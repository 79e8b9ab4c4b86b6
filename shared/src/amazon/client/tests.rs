//! Error mapping, retry delays, the retry policy's worst case, and the client's own guarantees.

use super::mapping::{map_error, parse_retry_after};
use super::retry::retry_delay;
use super::*;
use crate::amazon::error::AmazonError;
use crate::amazon::tokens::LoginRef;
use reqwest::header::HeaderMap;
use reqwest::header::HeaderValue;
use std::time::Duration;

fn hm(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

fn acct(id: i64) -> Option<AccountCtx> {
    Some(AccountCtx {
        advertiser_id: id,
        not_found_is_account: true,
    })
}

#[test]
fn retry_after_parsing() {
    assert_eq!(
        parse_retry_after(&hm(&[("retry-after", "2")])),
        Some(Duration::from_secs(2))
    );
    assert_eq!(
        parse_retry_after(&hm(&[("retry-after", " 0 ")])),
        Some(Duration::ZERO)
    );
    assert_eq!(
        parse_retry_after(&hm(&[("retry-after", "1.5")])),
        Some(Duration::from_millis(1500))
    );
    assert_eq!(parse_retry_after(&hm(&[("retry-after", "-1")])), None);
    assert_eq!(parse_retry_after(&hm(&[("retry-after", "soon")])), None);
    assert_eq!(parse_retry_after(&HeaderMap::new()), None);
    // An HTTP date in the past means "now".
    assert_eq!(
        parse_retry_after(&hm(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")])),
        Some(Duration::ZERO)
    );
    let future = (chrono::Utc::now() + chrono::Duration::seconds(60)).to_rfc2822();
    let d = parse_retry_after(&hm(&[("retry-after", &future)])).unwrap();
    assert!(
        d > Duration::from_secs(55) && d <= Duration::from_secs(60),
        "{d:?}"
    );
}

#[test]
fn retry_delay_honours_retry_after_with_a_cap_and_jitters_otherwise() {
    let throttled = |s| AmazonError::Throttled {
        retry_after: Some(Duration::from_secs(s)),
        request_id: None,
    };
    assert_eq!(
        retry_delay(&throttled(2), Duration::from_millis(1)),
        Duration::from_secs(2)
    );
    assert_eq!(
        retry_delay(&throttled(3600), Duration::from_millis(1)),
        RETRY_AFTER_CAP
    );
    let backoff = Duration::from_millis(800);
    let mut seen_low = false;
    for _ in 0..200 {
        let d = retry_delay(&AmazonError::Timeout, backoff);
        assert!(d <= backoff);
        seen_low |= d < backoff / 2;
    }
    assert!(seen_low, "full jitter spreads delays over [0, backoff]");
}

#[test]
fn error_mapping_from_canned_answers() {
    let e = map_error(
        401,
        &hm(&[("x-amzn-RequestId", "RID-1")]),
        br#"{"code":"UNAUTHORIZED","details":"No matching advertiser found for scope"}"#,
        acct(42),
    );
    assert_eq!(
        e,
        AmazonError::AccountNotFound {
            advertiser_id: 42,
            status: 401,
            message: "No matching advertiser found for scope".into(),
            request_id: Some("RID-1".into())
        }
    );
    assert!(
        e.user_message()
            .starts_with("Amazon Error: Account 42 was not found")
    );

    // A plain 401 is a token problem (the caller refreshes), even on an account call.
    let e = map_error(
        401,
        &HeaderMap::new(),
        br#"{"code":"401","details":"Authentication failed"}"#,
        acct(42),
    );
    assert!(
        matches!(e, AmazonError::Rejected { status: 401, .. }),
        "{e:?}"
    );

    let e = map_error(
        403,
        &HeaderMap::new(),
        br#"{"message":"Forbidden","requestId":"B-RID"}"#,
        acct(7),
    );
    assert_eq!(
        e,
        AmazonError::AccountNotFound {
            advertiser_id: 7,
            status: 403,
            message: "Forbidden".into(),
            request_id: Some("B-RID".into())
        }
    );
    let e = map_error(404, &HeaderMap::new(), b"{}", acct(7));
    assert!(matches!(
        e,
        AmazonError::AccountNotFound { status: 404, .. }
    ));
    // A 404 naming another object (an audience) is not about the account.
    let e = map_error(
        404,
        &HeaderMap::new(),
        b"{}",
        Some(AccountCtx {
            advertiser_id: 7,
            not_found_is_account: false,
        }),
    );
    assert!(matches!(e, AmazonError::Rejected { status: 404, .. }));
    // Without account context a 403 is just rejected.
    assert!(matches!(
        map_error(403, &HeaderMap::new(), b"", None),
        AmazonError::Rejected { status: 403, .. }
    ));

    let e = map_error(
        413,
        &HeaderMap::new(),
        br#"{"requestId":"F8","error":{"httpStatusCode":"413","description":"Payload Too Large","errors":[{"errorType":"INPUT_TOO_LARGE","message":"The input payload exceeds 1MB limit."}]}}"#,
        acct(1),
    );
    assert_eq!(
        e,
        AmazonError::PayloadTooLarge {
            message: "Payload Too Large: The input payload exceeds 1MB limit.".into(),
            request_id: Some("F8".into())
        }
    );

    let e = map_error(429, &hm(&[("retry-after", "3")]), b"", acct(1));
    assert_eq!(
        e,
        AmazonError::Throttled {
            retry_after: Some(Duration::from_secs(3)),
            request_id: None
        }
    );
    let e = map_error(503, &HeaderMap::new(), b"Service Unavailable", None);
    assert_eq!(
        e,
        AmazonError::Server {
            status: 503,
            message: "Service Unavailable".into(),
            request_id: None
        }
    );
    let e = map_error(
        400,
        &HeaderMap::new(),
        br#"{"requestId":"F88","error":{"httpStatusCode":"400","description":"Bad Request","errors":[{"errorType":"INVALID_INPUT","message":"The input field 'name' cannot be updated","fieldName":"name"}]}}"#,
        acct(1),
    );
    assert_eq!(
        e,
        AmazonError::Rejected {
            status: 400,
            message: "Bad Request: The input field 'name' cannot be updated (field name)".into(),
            request_id: Some("F88".into())
        }
    );
    // HTML error pages are not copied into messages.
    let e = map_error(
        502,
        &HeaderMap::new(),
        b"<html><body>Bad gateway</body></html>",
        None,
    );
    assert_eq!(
        e,
        AmazonError::Server {
            status: 502,
            message: "HTTP 502".into(),
            request_id: None
        }
    );
}

/// Callers run these futures inside `Send` handlers and spawned tasks; this fails to compile
/// if any of them stops being `Send`.
#[allow(dead_code)]
fn futures_are_send(c: AmazonClient, l: LoginRef, s: AccountScope) {
    fn spawnable<F: Future + Send + 'static>(_: F) {}
    spawnable(async move {
        let _ = c.list_profiles(&l).await;
        let _ = c.list_advertisers(&l, s.profile_id).await;
        let _ = c.create_audience(&l, s, &new_audience()).await;
        let _ = c.get_audience(&l, s, 1).await;
        let _ = c.patch_audiences(&l, s, Vec::new()).await;
        let _ = c.create_events(&l, s.advertiser_id, Vec::new(), 0).await;
        let _ = c.access_token(&l).await;
        let _ = c.exchange_code(l.region, "c", "r").await;
        let _ = c.delete_login(&l).await;
    });
}

fn new_audience() -> super::NewAudience {
    super::NewAudience {
        name: String::new(),
        description: String::new(),
        advertiser_id: 1,
        external_audience_id: String::new(),
        ttl: 0,
        data_source_country: Vec::new(),
        audience_fees: None,
    }
}

#[test]
fn the_worst_case_of_a_call_counts_every_attempt_and_wait() {
    // 4 × 30 s + 3 × 30 s (Retry-After cap over the 20 s backoff cap).
    assert_eq!(
        RetryPolicy::default().worst_case(),
        Duration::from_secs(210)
    );
    let one = RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::default()
    };
    assert_eq!(one.worst_case(), Duration::from_secs(30));
}

#[test]
fn long_messages_are_truncated_on_a_char_boundary() {
    let long = "é".repeat(600);
    let t = truncate(&long);
    assert!(t.len() <= 504 && t.ends_with('…'));
}

/// A vault that holds nothing (the client's construction never touches it).
struct NoVault;

#[async_trait::async_trait]
impl crate::amazon::vault::TokenVault for NoVault {
    async fn read(
        &self,
        _: &str,
    ) -> Result<Option<(crate::amazon::tokens::TokenSecret, String)>, crate::amazon::VaultError>
    {
        Ok(None)
    }
    async fn write(
        &self,
        _: &str,
        _: &crate::amazon::tokens::TokenSecret,
    ) -> Result<(), crate::amazon::VaultError> {
        Ok(())
    }
    async fn write_if_current(
        &self,
        _: &str,
        _: &crate::amazon::tokens::TokenSecret,
        _: &str,
    ) -> Result<bool, crate::amazon::VaultError> {
        Ok(false)
    }
    async fn delete(&self, _: &str) -> Result<(), crate::amazon::VaultError> {
        Ok(())
    }
}

#[tokio::test]
async fn scopes_are_normalised_and_debug_hides_the_secret() {
    let c = AmazonClient::new(
        reqwest::Client::new(),
        Endpoints::amazon(),
        LwaCredentials {
            client_id: "amzn1.application-oa2-client.x".into(),
            client_secret: "very-secret-value".into(),
        },
        NoVault,
        "  advertising::audiences \n advertising::campaign_management ".into(),
    );
    assert_eq!(c.scopes(), DEFAULT_SCOPES);
    assert!(!format!("{c:?}").contains("very-secret-value"));
    let u = c
        .authorize_url(Region::EU, "https://h/cb", "s1")
        .await
        .unwrap();
    assert!(u.starts_with("https://eu.account.amazon.com/ap/oa?client_id=amzn1.application-oa2-client.x&scope=advertising%3A%3Aaudiences%20advertising%3A%3Acampaign_management&response_type=code&redirect_uri=https%3A%2F%2Fh%2Fcb&state=s1"), "{u}");
    assert!(!u.contains("very-secret-value"));
}
