//! Envelope encryption of parked messages with the deployment's KMS key, so that no raw
//! identifier (IP addresses, MAIDs, external user ids, hashed match keys) sits readable on an
//! SQS queue or its dead-letter queue, even for someone allowed to read the queue but not to use
//! the key.
//!
//! [`seal`] asks KMS for a fresh AES-256 data key (`GenerateDataKey`), encrypts the body with
//! AES-256-GCM and returns the envelope
//! `{"sealed":1,"key":"<KMS ciphertext of the data key>","nonce":"…","data":"…"}` (base64).
//! [`open`] decrypts the data key with KMS (`Decrypt`) and the body with it. A body that is not an
//! envelope is returned as is, so messages parked before sealing was turned on are still redriven.
//!
//! Sealing is on when `ADSYNC_KMS_KEY_ID` is set (the template sets it; the local stack sets it to
//! the key it creates in moto). The KMS client is built once per process, from the same
//! environment as the other AWS clients.

use super::StoreError;
use super::dynamo::aws_error;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

/// Bound into every envelope's tag: a sealed value only opens as a parked message.
const AAD: &[u8] = b"adsync-parked-v1";

/// The envelope written to the queue.
#[derive(Serialize, Deserialize)]
struct Envelope {
    sealed: u32,
    key: String,
    nonce: String,
    data: String,
}

/// The key parked messages are sealed with, and a KMS client.
#[derive(Clone, Debug)]
pub struct Sealer {
    kms: aws_sdk_kms::Client,
    key_id: String,
}

impl Sealer {
    pub fn new(kms: aws_sdk_kms::Client, key_id: String) -> Self {
        Self { kms, key_id }
    }

    /// Encrypts `plain` under a fresh data key.
    pub async fn seal(&self, plain: &str) -> Result<String, StoreError> {
        let dk = self
            .kms
            .generate_data_key()
            .key_id(&self.key_id)
            .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
            .send()
            .await
            .map_err(|e| aws_error("KMS GenerateDataKey", e))?;
        let (Some(key), Some(wrapped)) = (dk.plaintext(), dk.ciphertext_blob()) else {
            return Err(StoreError::Aws(
                "KMS GenerateDataKey: no key returned".into(),
            ));
        };
        let mut nonce = [0u8; NONCE_LEN];
        crate::random::fill(&mut nonce).map_err(|e| StoreError::Aws(e.to_string()))?;
        let mut data = plain.as_bytes().to_vec();
        aead_key(key.as_ref())?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut data,
            )
            .map_err(|_| StoreError::Corrupt("sealing a parked message failed".into()))?;
        let env = Envelope {
            sealed: 1,
            key: B64.encode(wrapped.as_ref()),
            nonce: B64.encode(nonce),
            data: B64.encode(data),
        };
        serde_json::to_string(&env).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    /// Decrypts an envelope; any other body is returned unchanged.
    pub async fn open(&self, body: &str) -> Result<String, StoreError> {
        let Some(env) = envelope(body) else {
            return Ok(body.to_string());
        };
        let bad = |what: &str| StoreError::Corrupt(format!("sealed parked message: {what}"));
        let wrapped = B64.decode(&env.key).map_err(|_| bad("key is not base64"))?;
        let nonce: [u8; NONCE_LEN] = B64
            .decode(&env.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| bad("malformed nonce"))?;
        let mut data = B64
            .decode(&env.data)
            .map_err(|_| bad("data is not base64"))?;
        let out = self
            .kms
            .decrypt()
            .key_id(&self.key_id)
            .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(wrapped))
            .send()
            .await
            .map_err(|e| aws_error("KMS Decrypt", e))?;
        let key = out.plaintext().ok_or_else(|| bad("KMS returned no key"))?;
        let plain = aead_key(key.as_ref())?
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut data,
            )
            .map_err(|_| bad("authentication failed"))?;
        String::from_utf8(plain.to_vec()).map_err(|_| bad("not UTF-8"))
    }
}

/// The envelope, when `body` is one.
fn envelope(body: &str) -> Option<Envelope> {
    if !body.starts_with("{\"sealed\":") {
        return None;
    }
    serde_json::from_str::<Envelope>(body)
        .ok()
        .filter(|e| e.sealed == 1)
}

fn aead_key(key: &[u8]) -> Result<LessSafeKey, StoreError> {
    UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| StoreError::Aws("KMS returned a data key of the wrong size".into()))
}

/// The process's sealer: `Some` when `ADSYNC_KMS_KEY_ID` is set. Built once, on first use.
pub async fn from_env() -> Option<&'static Sealer> {
    static SEALER: OnceCell<Option<Sealer>> = OnceCell::const_new();
    SEALER
        .get_or_init(|| async {
            let key_id = crate::config::optional("ADSYNC_KMS_KEY_ID")?;
            // The same connect/attempt/operation timeouts as every other AWS client (`crate::aws`).
            let mut loader = crate::aws::config_loader()
                .timeout_config(crate::aws::SdkTimeouts::from_env().config());
            if let Some(url) = crate::config::optional("ADSYNC_AWS_ENDPOINT_URL") {
                loader = loader.endpoint_url(url);
            }
            let kms = aws_sdk_kms::Client::new(&loader.load().await);
            Some(Sealer::new(kms, key_id))
        })
        .await
        .as_ref()
}

/// Seals `body` when sealing is on.
pub async fn seal_if_on(body: String) -> Result<String, StoreError> {
    match from_env().await {
        Some(s) => s.seal(&body).await,
        None => Ok(body),
    }
}

/// Opens `body` when it is an envelope (sealing must be on to open one).
pub async fn open_if_sealed(body: &str) -> Result<String, StoreError> {
    if envelope(body).is_none() {
        return Ok(body.to_string());
    }
    match from_env().await {
        Some(s) => s.open(body).await,
        None => Err(StoreError::Corrupt(
            "a sealed parked message, but ADSYNC_KMS_KEY_ID is not set".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The local stack's KMS (moto) and its key; fails loudly when the env is missing.
    async fn sealer() -> Sealer {
        for v in ["AWS_ENDPOINT_URL", "AWS_REGION"] {
            assert!(
                std::env::var(v).is_ok(),
                "{v} is not set: start the local stack and `source .local/stack.env`"
            );
        }
        let conf = crate::aws::config_loader().load().await;
        let kms = aws_sdk_kms::Client::new(&conf);
        let key = kms.create_key().send().await.expect("moto CreateKey");
        let id = key.key_metadata().unwrap().key_id().to_string();
        Sealer::new(kms, id)
    }

    #[tokio::test]
    async fn seals_and_opens_without_leaving_the_plain_text() {
        let s = sealer().await;
        let plain = r#"{"ip":"203.0.113.7","maid":"EA7583CD-A667-48BC-B806-000000000001"}"#;
        let sealed = s.seal(plain).await.unwrap();
        assert!(!sealed.contains("203.0.113.7") && !sealed.contains("EA7583CD"));
        assert!(envelope(&sealed).is_some());
        assert_ne!(
            sealed,
            s.seal(plain).await.unwrap(),
            "fresh key and nonce each time"
        );
        assert_eq!(s.open(&sealed).await.unwrap(), plain);
        // A plain (pre-sealing) body passes through.
        assert_eq!(s.open(plain).await.unwrap(), plain);
        // A tampered body does not open.
        let mut env: Envelope = serde_json::from_str(&sealed).unwrap();
        let mut data = B64.decode(&env.data).unwrap();
        data[0] ^= 1;
        env.data = B64.encode(data);
        let tampered = serde_json::to_string(&env).unwrap();
        assert!(s.open(&tampered).await.is_err());
    }
}
