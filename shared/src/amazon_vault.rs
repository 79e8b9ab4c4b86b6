//! Wiring of the Amazon client to AWS: [`SecretsStore`] as the client's [`TokenVault`], and
//! [`AmazonClient::from_env`], which reads the LwA client credentials from Secrets Manager.
//! It sits above both `amazon` and `store`, so neither imports the other.

use crate::amazon::client::http_client;
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

impl AmazonClient {
    /// Builds the client from the environment: the LwA credentials from the
    /// `LWA_CREDENTIALS_SECRET` secret, the endpoint overrides, `LWA_SCOPES`.
    pub async fn from_env(aws: &AwsClients) -> Result<Self, AmazonError> {
        let settings =
            crate::settings::Settings::from_env().map_err(|e| AmazonError::Store(e.to_string()))?;
        Self::from_settings(aws, &settings).await
    }

    /// [`AmazonClient::from_env`] with the settings read at cold start.
    pub async fn from_settings(
        aws: &AwsClients,
        settings: &crate::settings::Settings,
    ) -> Result<Self, AmazonError> {
        let name = settings
            .lwa_credentials_secret
            .get()
            .map_err(|e| AmazonError::Store(e.to_string()))?;
        let secrets = SecretsStore::new(aws.secrets.clone());
        let creds: LwaCredentials = secrets
            .get_json(&name)
            .await?
            .ok_or_else(|| AmazonError::Store(format!("secret {name} does not exist")))?;
        Ok(Self::new(
            http_client(),
            settings.amazon_endpoints.clone(),
            creds,
            secrets,
            settings.lwa_scopes.clone(),
        ))
    }
}
