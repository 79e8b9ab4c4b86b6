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
        Ok(self.get_json_versioned(name).await?.map(|(v, _)| v))
    }

    /// As [`get_json`](Self::get_json), with the id of the version read (for
    /// [`put_json_if_current`](Self::put_json_if_current)). Always the `AWSCURRENT` stage, named
    /// explicitly (moto answers a stage-less read with a stale version after a stage move).
    pub async fn get_json_versioned<T: DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<(T, String)>, StoreError> {
        let read = self
            .client
            .get_secret_value()
            .secret_id(name)
            .version_stage("AWSCURRENT")
            .send()
            .await;
        let out = match read {
            Ok(o) => o,
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(aws_error("GetSecretValue", name, &e)),
        };
        let Some(text) = out.secret_string() else {
            return Err(StoreError::Corrupt(format!(
                "secret {name} has no string value"
            )));
        };
        let version = out.version_id().unwrap_or_default().to_string();
        serde_json::from_str(text)
            .map(|v| Some((v, version)))
            .map_err(|e| {
                // serde_json's message carries a position and the expected type, never the input.
                StoreError::Corrupt(format!("secret {name} is not the expected JSON: {e}"))
            })
    }

    /// Writes a secret: creates it, or stores a new current version when it exists. An existing
    /// secret is written the way [`put_json_if_current`](Self::put_json_if_current) writes
    /// (staged, then `AWSCURRENT` moved), so every version change of a secret is one stage move
    /// (a plain put after a stage move leaves moto with two `AWSCURRENT` versions).
    pub async fn put_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        for _ in 0..3 {
            let Some(current) = self.current_version(name).await? else {
                break;
            };
            if self.put_json_if_current(name, value, &current).await? {
                return Ok(());
            }
        }
        let text = serde_json::to_string(value)
            .map_err(|e| StoreError::Corrupt(format!("secret {name} could not be encoded: {e}")))?;
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

    /// The id of the `AWSCURRENT` version (whatever its content); `None` when there is none.
    async fn current_version(&self, name: &str) -> Result<Option<String>, StoreError> {
        match self
            .client
            .get_secret_value()
            .secret_id(name)
            .version_stage("AWSCURRENT")
            .send()
            .await
        {
            Ok(o) => Ok(o.version_id().map(str::to_string)),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(aws_error("GetSecretValue", name, &e)),
        }
    }

    /// Writes a new version and makes it current only if `expected` (read with
    /// [`get_json_versioned`](Self::get_json_versioned)) is still the current one: the write is
    /// staged (`ADSYNC_NEW`) and `AWSCURRENT` moved from `expected`, which Secrets Manager refuses
    /// when another writer moved it first. `Ok(false)`: a newer version won; nothing changed.
    pub async fn put_json_if_current<T: Serialize>(
        &self,
        name: &str,
        value: &T,
        expected: &str,
    ) -> Result<bool, StoreError> {
        let text = serde_json::to_string(value)
            .map_err(|e| StoreError::Corrupt(format!("secret {name} could not be encoded: {e}")))?;
        let staged = self
            .client
            .put_secret_value()
            .secret_id(name)
            .secret_string(&text)
            .version_stages("ADSYNC_NEW")
            .send()
            .await
            .map_err(|e| aws_error("PutSecretValue", name, &e))?;
        let Some(new_version) = staged.version_id() else {
            return Err(StoreError::Aws(format!(
                "PutSecretValue on {name} returned no version id"
            )));
        };
        let moved = self
            .client
            .update_secret_version_stage()
            .secret_id(name)
            .version_stage("AWSCURRENT")
            .move_to_version_id(new_version)
            .remove_from_version_id(expected)
            .send()
            .await;
        match moved {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("InvalidParameterException") => Ok(false),
            Err(e) => Err(aws_error("UpdateSecretVersionStage", name, &e)),
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
