//! [`AmazonError`]: what can go wrong talking to Amazon, with Amazon's message and request id,
//! and the wording shown to users. No variant ever carries a token, code or client secret.

use super::lwa::LwaError;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AmazonError {
    /// `invalid_grant` on refresh: the user revoked consent (or the login is gone). Relink.
    #[error("the linked Amazon login needs to be reauthorized")]
    ReauthorizationRequired,
    /// 401 "No matching advertiser found for scope", 403, or 404 on an account-level call.
    #[error(
        "account {advertiser_id} was not found (HTTP {status}: {message}{})",
        rid(request_id)
    )]
    AccountNotFound {
        advertiser_id: i64,
        status: u16,
        message: String,
        request_id: Option<String>,
    },
    /// 413: the caller splits the batch and resends.
    #[error("payload too large (HTTP 413: {message}{})", rid(request_id))]
    PayloadTooLarge {
        message: String,
        request_id: Option<String>,
    },
    /// Any other 4xx: never retried.
    #[error("rejected by Amazon (HTTP {status}: {message}{})", rid(request_id))]
    Rejected {
        status: u16,
        message: String,
        request_id: Option<String>,
    },
    /// 429 after the retries ran out.
    #[error("throttled by Amazon{}{}", retry_after.map(|d| format!(" (retry after {} s)", d.as_secs())).unwrap_or_default(), rid(request_id))]
    Throttled {
        retry_after: Option<Duration>,
        request_id: Option<String>,
    },
    /// 5xx after the retries ran out.
    #[error("Amazon server error (HTTP {status}: {message}{})", rid(request_id))]
    Server {
        status: u16,
        message: String,
        request_id: Option<String>,
    },
    #[error("the request to Amazon timed out")]
    Timeout,
    #[error("network error talking to Amazon: {0}")]
    Network(String),
    #[error("Login with Amazon: {0}")]
    Lwa(LwaError),
    #[error("token store: {0}")]
    Store(String),
}

fn rid(request_id: &Option<String>) -> String {
    match request_id {
        Some(r) => format!(", request id {r}"),
        None => String::new(),
    }
}

impl AmazonError {
    /// Worth trying again later (the same request may succeed): throttling, 5xx, timeouts,
    /// network and Secrets Manager failures.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            AmazonError::Throttled { .. }
                | AmazonError::Server { .. }
                | AmazonError::Timeout
                | AmazonError::Network(_)
                | AmazonError::Store(_)
        )
    }

    /// Amazon's request id, when the error came from an Ads API answer.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            AmazonError::AccountNotFound { request_id, .. }
            | AmazonError::PayloadTooLarge { request_id, .. }
            | AmazonError::Rejected { request_id, .. }
            | AmazonError::Throttled { request_id, .. }
            | AmazonError::Server { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }

    /// The message shown to users (in API answers and pages), in the contract's wording.
    pub fn user_message(&self) -> String {
        match self {
            AmazonError::ReauthorizationRequired => {
                "Amazon Error: the Amazon login linked to this \
                account is no longer authorised (consent was revoked or has expired). Relink the \
                account with Login with Amazon to resume."
                    .to_string()
            }
            AmazonError::AccountNotFound { advertiser_id, .. } => format!(
                "Amazon Error: Account {advertiser_id} was not found. The linked Amazon login is \
                 not authorised for advertiser {advertiser_id}; relink the account with an Amazon \
                 login that has access to it."
            ),
            AmazonError::PayloadTooLarge {
                message,
                request_id,
            } => format!(
                "Amazon Error: the request was too large ({message}){}",
                rid(request_id)
            ),
            AmazonError::Rejected {
                status,
                message,
                request_id,
            } => format!("Amazon Error: {message} (HTTP {status}{})", rid(request_id)),
            AmazonError::Throttled { request_id, .. } => format!(
                "Amazon Error: Amazon is throttling requests; try again later{}",
                rid(request_id)
            ),
            AmazonError::Server {
                status,
                message,
                request_id,
            } => format!(
                "Amazon Error: Amazon answered HTTP {status} ({message}); try again later{}",
                rid(request_id)
            ),
            AmazonError::Timeout => {
                "Amazon Error: the request to Amazon timed out; try again later".to_string()
            }
            AmazonError::Network(m) => {
                format!("Amazon Error: could not reach Amazon ({m}); try again later")
            }
            AmazonError::Lwa(e) => format!("Amazon Error: Login with Amazon: {e}"),
            AmazonError::Store(_) => {
                "adsync could not read or write its token store; try again later".to_string()
            }
        }
    }
}

impl From<LwaError> for AmazonError {
    fn from(e: LwaError) -> Self {
        AmazonError::Lwa(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_not_found_wording() {
        let e = AmazonError::AccountNotFound {
            advertiser_id: 123,
            status: 401,
            message: "No matching advertiser found for scope".into(),
            request_id: Some("R1".into()),
        };
        let m = e.user_message();
        assert!(
            m.starts_with("Amazon Error: Account 123 was not found"),
            "{m}"
        );
        assert!(m.contains("not authorised"), "{m}");
        assert!(m.contains("relink"), "{m}");
        assert!(!e.is_retryable());
        assert_eq!(e.request_id(), Some("R1"));
    }

    #[test]
    fn retryable_variants() {
        assert!(AmazonError::Timeout.is_retryable());
        assert!(AmazonError::Network("x".into()).is_retryable());
        assert!(AmazonError::Store("x".into()).is_retryable());
        assert!(
            AmazonError::Server {
                status: 503,
                message: String::new(),
                request_id: None
            }
            .is_retryable()
        );
        assert!(
            AmazonError::Throttled {
                retry_after: None,
                request_id: None
            }
            .is_retryable()
        );
        assert!(!AmazonError::ReauthorizationRequired.is_retryable());
        assert!(
            !AmazonError::PayloadTooLarge {
                message: String::new(),
                request_id: None
            }
            .is_retryable()
        );
        assert!(
            !AmazonError::Rejected {
                status: 400,
                message: String::new(),
                request_id: None
            }
            .is_retryable()
        );
    }
}
