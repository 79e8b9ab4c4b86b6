//! [`TokenVault`]: where the client keeps each linked login's [`TokenSecret`] (refresh token,
//! cached access token and its expiry). The client depends on this trait only; the Secrets
//! Manager implementation is wired in `crate::amazon_vault`.
//!
//! Writes after a refresh are conditional on the version that was read
//! ([`TokenVault::write_if_current`]), so a stale writer never overwrites a newer (possibly
//! rotated) refresh token. No method ever puts a secret value into an error.

use super::error::AmazonError;
use super::tokens::TokenSecret;

/// A vault failure, already worded for logs and errors (it never carries a secret value).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct VaultError(pub String);

impl From<VaultError> for AmazonError {
    fn from(e: VaultError) -> Self {
        AmazonError::Store(e.0)
    }
}

/// Read and write one login's token secret, by secret name.
#[async_trait::async_trait]
pub trait TokenVault: Send + Sync + 'static {
    /// The secret and the id of the version read; `None` when it does not exist.
    async fn read(&self, name: &str) -> Result<Option<(TokenSecret, String)>, VaultError>;

    /// Creates the secret or stores a new current version.
    async fn write(&self, name: &str, secret: &TokenSecret) -> Result<(), VaultError>;

    /// Stores a new version only if `expected` is still the current one; `Ok(false)`: a newer
    /// version won and nothing changed.
    async fn write_if_current(
        &self,
        name: &str,
        secret: &TokenSecret,
        expected: &str,
    ) -> Result<bool, VaultError>;

    /// Deletes the secret at once; deleting a missing secret is not an error.
    async fn delete(&self, name: &str) -> Result<(), VaultError>;
}
