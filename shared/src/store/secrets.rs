//! [`SecretsStore`]: JSON documents in AWS Secrets Manager (the LwA client credentials, the API
//! key digests, one token secret per linked login). Values never appear in errors or logs.

use super::StoreError;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Clone, Debug)]
pub struct SecretsStore {
    client: aws_sdk_secretsmanager::Client,
    /// The customer-managed KMS key new secrets are encrypted with (`ADSYNC_KMS_KEY_ID`, set by
    /// the template); `None`: Secrets Manager's default key.
    kms_key_id: Option<String>,
}

impl SecretsStore {
    /// A store whose new secrets use `ADSYNC_KMS_KEY_ID` when it is set.
    pub fn new(client: aws_sdk_secretsmanager::Client) -> Self {
        Self {
            client,
            kms_key_id: crate::config::optional("ADSYNC_KMS_KEY_ID"),
        }
    }

    /// Reads and parses a secret; `None` when it does not exist (or is scheduled for deletion).
    pub async fn get_json<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        let out = match self.client.get_secret_value().secret_id(name).send().await {
            Ok(o) => o,
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(aws_error("GetSecretValue", name, &e)),
        };
        let Some(text) = out.secret_string() else {
            return Err(StoreError::Corrupt(format!(
                "secret {name} has no string value"
            )));
        };
        serde_json::from_str(text).map(Some).map_err(|e| {
            // serde_json's message carries a position and the expected type, never the input.
            StoreError::Corrupt(format!("secret {name} is not the expected JSON: {e}"))
        })
    }

    /// Writes a secret: creates it, or stores a new current version when it exists.
    pub async fn put_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        let text = serde_json::to_string(value)
            .map_err(|e| StoreError::Corrupt(format!("secret {name} could not be encoded: {e}")))?;
        match self
            .client
            .put_secret_value()
            .secret_id(name)
            .secret_string(&text)
            .send()
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if is_missing(&e) => {}
            Err(e) => return Err(aws_error("PutSecretValue", name, &e)),
        }
        match self
            .client
            .create_secret()
            .name(name)
            .secret_string(&text)
            .set_kms_key_id(self.kms_key_id.clone())
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // Someone created it between our two calls: store our value as the new version.
            Err(e) if e.code() == Some("ResourceExistsException") => self
                .client
                .put_secret_value()
                .secret_id(name)
                .secret_string(&text)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| aws_error("PutSecretValue", name, &e)),
            Err(e) => Err(aws_error("CreateSecret", name, &e)),
        }
    }

    /// Deletes a secret at once (no recovery window). Deleting a missing secret is not an error.
    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        match self
            .client
            .delete_secret()
            .secret_id(name)
            .force_delete_without_recovery(true)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_missing(&e) => Ok(()),
            Err(e) => Err(aws_error("DeleteSecret", name, &e)),
        }
    }
}

fn is_missing<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    match e.code() {
        Some("ResourceNotFoundException") => true,
        // A secret pending deletion answers InvalidRequestException ("marked for deletion").
        Some("InvalidRequestException") => e.message().is_some_and(|m| {
            m.to_ascii_lowercase().contains("deleted")
                || m.to_ascii_lowercase().contains("deletion")
        }),
        _ => false,
    }
}

fn aws_error<E, R>(op: &str, name: &str, e: &SdkError<E, R>) -> StoreError
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    // The SDK's error context names the operation and the service error, not the payload.
    let detail = match (e.code(), e.message()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_string(),
        _ => DisplayErrorContext(e).to_string(),
    };
    StoreError::Aws(format!("{op} {name}: {detail}"))
}
