//! Wiring of the Amazon client to AWS: [`SecretsStore`] as the client's [`TokenVault`], and
//! [`AmazonClient::from_env`], whose LwA client credentials come from Secrets Manager on first
//! use ([`LwaSecret`]). It sits above both `amazon` and `store`, so neither imports the other.

use crate::amazon::client::{CredentialSource, Http};
use crate::amazon::tokens::TokenSecret;
use crate::amazon::vault::{TokenVault, VaultError};
use crate::amazon::{AmazonClient, AmazonError, LwaCredentials};
use crate::aws::AwsClients;
use crate::store::StoreError;
use crate::store::secrets::SecretsStore;

impl From<StoreError> for AmazonError {
    fn from(e: StoreError) -> Self {
        AmazonError::Store(e.to_string())
    }
}

fn vault_error(e: StoreError) -> VaultError {
    VaultError(e.to_string())
}

#[async_trait::async_trait]
impl TokenVault for SecretsStore {
    async fn read(&self, name: &str) -> Result<Option<(TokenSecret, String)>, VaultError> {
        self.get_json_versioned::<TokenSecret>(name)
            .await
            .map_err(vault_error)
    }

    async fn write(&self, name: &str, secret: &TokenSecret) -> Result<(), VaultError> {
        self.put_json(name, secret).await.map_err(vault_error)
    }

    async fn write_if_current(
        &self,
        name: &str,
        secret: &TokenSecret,
        expected: &str,
    ) -> Result<bool, VaultError> {
        self.put_json_if_current(name, secret, expected)
            .await
            .map_err(vault_error)
    }

    async fn delete(&self, name: &str) -> Result<(), VaultError> {
        SecretsStore::delete(self, name).await.map_err(vault_error)
    }
}

/// The `LWA_CREDENTIALS_SECRET` secret as the Amazon client's [`CredentialSource`]: read by the
/// first call that needs the credentials, not at cold start (so a function's first runtime poll
/// waits for no network; its first request that talks to Amazon pays one Secrets Manager read).
pub struct LwaSecret {
    pub secrets: SecretsStore,
    pub name: String,
}

#[async_trait::async_trait]
impl CredentialSource for LwaSecret {
    async fn load(&self) -> Result<LwaCredentials, AmazonError> {
        let name = &self.name;
        self.secrets
            .get_json(name)
            .await?
            .ok_or_else(|| AmazonError::Store(format!("secret {name} does not exist")))
    }
}

impl AmazonClient {
    /// Builds the client from the environment: the LwA credentials from the
    /// `LWA_CREDENTIALS_SECRET` secret (read on first use), the endpoint overrides, `LWA_SCOPES`.
    pub async fn from_env(aws: &AwsClients) -> Result<Self, AmazonError> {
        let settings =
            crate::settings::Settings::from_env().map_err(|e| AmazonError::Store(e.to_string()))?;
        Self::from_settings(aws, &settings).await
    }

    /// [`AmazonClient::from_env`] with the settings read at cold start. Reads nothing over the
    /// network (the credentials secret is read on first use); only a missing
    /// `LWA_CREDENTIALS_SECRET` fails here.
    pub async fn from_settings(
        aws: &AwsClients,
        settings: &crate::settings::Settings,
    ) -> Result<Self, AmazonError> {
        let name = settings
            .lwa_credentials_secret
            .get()
            .map_err(|e| AmazonError::Store(e.to_string()))?;
        let secrets = SecretsStore::new(aws.secrets.clone());
        let source = LwaSecret {
            secrets: secrets.clone(),
            name,
        };
        Ok(Self::with_credential_source(
            Http::lazy(),
            settings.amazon_endpoints.clone(),
            source,
            secrets,
            settings.lwa_scopes.clone(),
        ))
    }
}
