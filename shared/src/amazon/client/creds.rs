//! The client's LwA credentials, read on first use.
//!
//! A function process builds its [`AmazonClient`](super::AmazonClient) at cold start without
//! touching the network: the `LWA_CREDENTIALS_SECRET` secret is read by the first call that needs
//! the client id or secret (a token refresh, a code exchange, an Ads API call, a consent URL), once
//! per process. Concurrent first calls wait for that one read. A read that fails is not kept: that
//! call answers its error (a retryable [`AmazonError::Store`]) and the next call reads again.

use crate::amazon::error::AmazonError;
use crate::amazon::lwa::LwaCredentials;
use tokio::sync::OnceCell;

/// Where a client's LwA credentials come from when they are not given up front (adsync's is the
/// `LWA_CREDENTIALS_SECRET` secret, `crate::amazon_vault`).
#[async_trait::async_trait]
pub trait CredentialSource: Send + Sync + 'static {
    /// Reads the credentials (one attempt; the caller retries on a later call).
    async fn load(&self) -> Result<LwaCredentials, AmazonError>;
}

/// The credentials, known from the start or loaded once on first use.
pub(crate) struct Credentials {
    cell: OnceCell<LwaCredentials>,
    source: Option<Box<dyn CredentialSource>>,
}

impl Credentials {
    pub(crate) fn known(creds: LwaCredentials) -> Self {
        Self {
            cell: OnceCell::new_with(Some(creds)),
            source: None,
        }
    }

    pub(crate) fn lazy(source: impl CredentialSource) -> Self {
        Self {
            cell: OnceCell::new(),
            source: Some(Box::new(source)),
        }
    }

    /// The credentials, read now when this is the first use (or every earlier read failed).
    pub(crate) async fn get(&self) -> Result<&LwaCredentials, AmazonError> {
        self.cell
            .get_or_try_init(|| async {
                let Some(source) = &self.source else {
                    return Err(AmazonError::Store("no LwA credentials".into()));
                };
                let read = source.load().await;
                if let Err(e) = &read {
                    tracing::error!(error = %e, "could not read the LwA client credentials");
                }
                read
            })
            .await
    }

    /// The credentials when already known (no read).
    pub(crate) fn loaded(&self) -> Option<&LwaCredentials> {
        self.cell.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Fails the first `fail` reads, then answers; counts every read.
    struct Flaky {
        reads: Arc<AtomicUsize>,
        fail: usize,
    }

    #[async_trait::async_trait]
    impl CredentialSource for Flaky {
        async fn load(&self) -> Result<LwaCredentials, AmazonError> {
            let n = self.reads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            if n < self.fail {
                return Err(AmazonError::Store("secrets manager unavailable".into()));
            }
            Ok(LwaCredentials {
                client_id: "cid".into(),
                client_secret: "s".into(),
            })
        }
    }

    #[tokio::test]
    async fn read_once_on_first_use_and_a_failure_is_retried_by_the_next_call() {
        let reads = Arc::new(AtomicUsize::new(0));
        let creds = Credentials::lazy(Flaky {
            reads: reads.clone(),
            fail: 1,
        });
        assert!(creds.loaded().is_none());
        assert_eq!(reads.load(Ordering::SeqCst), 0, "nothing read before use");
        let e = creds.get().await.unwrap_err();
        assert!(e.is_retryable(), "{e:?}");
        assert!(creds.loaded().is_none(), "a failed read is not kept");
        // Concurrent first users share one read.
        let (a, b, c) = tokio::join!(creds.get(), creds.get(), creds.get());
        for got in [a, b, c] {
            assert_eq!(got.unwrap().client_id, "cid");
        }
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        assert_eq!(creds.get().await.unwrap().client_id, "cid");
        assert_eq!(reads.load(Ordering::SeqCst), 2, "kept once read");
    }
}
