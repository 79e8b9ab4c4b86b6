//! [`ParkedQueue`]: durable parking of work that still fails after its retries (conversion
//! batches, audience patches), on an SQS queue, and its redrive.
//!
//! One parked item is one SQS message whose body is the item as JSON. The queue's redrive policy
//! moves a message that keeps failing to its dead-letter queue after `maxReceiveCount` receipts
//! (alarmed in SAM), so nothing is dropped silently. Callers keep each item below SQS's 256 KB
//! message limit; [`ParkedQueue::park`] refuses larger ones instead of truncating them.
//!
//! With `ADSYNC_KMS_KEY_ID` set the body is sealed with the KMS key ([`super::sealed`]): no raw
//! identifier is readable on the queue.
//!
//! A message whose body cannot be read back as `T` is left on the queue (logged by message id,
//! never by content) so that it reaches the dead-letter queue instead of blocking the redrive.

use super::StoreError;
use super::dynamo::aws_error;
use aws_sdk_sqs::types::MessageSystemAttributeName;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// SQS's hard limit for one message body.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// SQS's longest per-message delay (15 minutes).
pub const MAX_DELAY_SECS: u64 = 900;

/// How long a receive waits for messages (long polling: short polls may miss messages on a
/// lightly used queue).
const RECEIVE_WAIT_SECS: i32 = 1;

/// The SQS queue parked work is kept on.
#[derive(Clone, Debug)]
pub struct ParkedQueue {
    client: crate::aws::Lazy<aws_sdk_sqs::Client>,
    queue_url: String,
    /// The dead-letter queue (`PARKED_DLQ_URL`): where the redrive puts what can never be
    /// delivered or has waited too long (`store::parked_retry`).
    dead_letter_url: Option<String>,
}

/// One received item with what is needed to acknowledge it.
#[derive(Clone, Debug)]
pub struct Parked<T> {
    pub item: T,
    pub receipt_handle: String,
    pub message_id: String,
    /// How many times SQS has handed this message out (1 on the first receipt).
    pub receive_count: u32,
}

impl ParkedQueue {
    pub fn new(
        client: impl Into<crate::aws::Lazy<aws_sdk_sqs::Client>>,
        queue_url: String,
    ) -> Self {
        Self {
            client: client.into(),
            queue_url,
            dead_letter_url: None,
        }
    }

    /// The same queue with its dead-letter queue.
    pub fn with_dead_letter(mut self, url: Option<String>) -> Self {
        self.dead_letter_url = url;
        self
    }

    /// The dead-letter queue as a queue of its own (to read it back: `redrive-dlq`).
    pub fn dead_letter(&self) -> Option<ParkedQueue> {
        self.dead_letter_url
            .as_ref()
            .map(|u| ParkedQueue::new(self.client.clone(), u.clone()))
    }

    /// The same SQS client on another queue.
    pub fn sibling(&self, queue_url: String) -> ParkedQueue {
        ParkedQueue::new(self.client.clone(), queue_url)
    }

    /// The queue URL (for logs and tests).
    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// Parks one item as one message.
    pub async fn park<T: Serialize>(&self, item: &T) -> Result<(), StoreError> {
        self.send_to(&self.queue_url, item, Duration::ZERO).await
    }

    /// Parks one item that becomes visible after `delay` (SQS allows at most 15 minutes; longer
    /// waits are held in the item, `store::parked_retry::RetryState::not_before_ms`).
    pub async fn park_delayed<T: Serialize>(
        &self,
        item: &T,
        delay: Duration,
    ) -> Result<(), StoreError> {
        self.send_to(&self.queue_url, item, delay).await
    }

    /// Puts one item on the dead-letter queue (an error when there is none).
    pub async fn dead_letter_item<T: Serialize>(&self, item: &T) -> Result<(), StoreError> {
        let url = self.dead_letter_url.as_deref().ok_or_else(|| {
            StoreError::Aws("no dead-letter queue configured (PARKED_DLQ_URL)".into())
        })?;
        self.send_to(url, item, Duration::ZERO).await
    }

    /// Makes a received message visible again after `after` (zero: at once). It counts as a
    /// receive towards `maxReceiveCount`, so the redrive only uses it for messages it re-enqueued
    /// itself in the same run (those are fresh messages, received at most twice).
    pub async fn release(&self, receipt_handle: &str, after: Duration) -> Result<(), StoreError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(after.as_secs().min(43_200) as i32)
            .send()
            .await
            .map_err(|e| aws_error("SQS ChangeMessageVisibility", e))?;
        Ok(())
    }

    async fn send_to<T: Serialize>(
        &self,
        url: &str,
        item: &T,
        delay: Duration,
    ) -> Result<(), StoreError> {
        let body = serde_json::to_string(item)
            .map_err(|e| StoreError::Corrupt(format!("parked item does not serialize: {e}")))?;
        // Encrypted with the KMS key when ADSYNC_KMS_KEY_ID is set (super::sealed).
        let body = super::sealed::seal_if_on(body).await?;
        if body.len() > MAX_MESSAGE_BYTES {
            return Err(StoreError::Aws(format!(
                "parked item is {} bytes; SQS allows {MAX_MESSAGE_BYTES}",
                body.len()
            )));
        }
        self.client
            .send_message()
            .queue_url(url)
            .message_body(body)
            .delay_seconds(delay.as_secs().min(MAX_DELAY_SECS) as i32)
            .send()
            .await
            .map_err(|e| aws_error("SQS SendMessage", e))?;
        Ok(())
    }

    /// Receives up to `max` items (clamped to SQS's 1..=10). Each stays invisible for the queue's
    /// visibility timeout; [`ack`](Self::ack) it after it was handled, or it comes back.
    pub async fn receive<T: DeserializeOwned>(
        &self,
        max: i32,
    ) -> Result<Vec<Parked<T>>, StoreError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max.clamp(1, 10))
            .wait_time_seconds(RECEIVE_WAIT_SECS)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| aws_error("SQS ReceiveMessage", e))?;
        let mut items = Vec::new();
        for m in out.messages.unwrap_or_default() {
            let message_id = m.message_id.unwrap_or_default();
            let Some(receipt_handle) = m.receipt_handle else {
                continue;
            };
            let receive_count = m
                .attributes
                .as_ref()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            let body = match super::sealed::open_if_sealed(m.body.as_deref().unwrap_or("")).await {
                Ok(b) => b,
                Err(e) => {
                    // Left on the queue, as an unreadable message (reaches the dead-letter queue).
                    tracing::error!(message_id = %message_id, error = %e, "parked message cannot be opened");
                    continue;
                }
            };
            match serde_json::from_str::<T>(&body) {
                Ok(item) => items.push(Parked {
                    item,
                    receipt_handle,
                    message_id,
                    receive_count,
                }),
                Err(e) => {
                    // Left on the queue: it reaches the dead-letter queue after maxReceiveCount.
                    tracing::error!(message_id = %message_id, error = %e, "parked message is unreadable");
                }
            }
        }
        Ok(items)
    }

    /// Deletes a handled message.
    pub async fn ack(&self, receipt_handle: &str) -> Result<(), StoreError> {
        self.client
            .delete_message()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt_handle)
            .send()
            .await
            .map_err(|e| aws_error("SQS DeleteMessage", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The local stack's SQS (moto); fails loudly when its environment is missing.
    async fn sqs() -> aws_sdk_sqs::Client {
        for v in ["AWS_ENDPOINT_URL", "AWS_REGION"] {
            assert!(
                std::env::var(v).is_ok(),
                "{v} is not set: start the local stack and `source .local/stack.env` (moto on 127.0.0.1:5000)"
            );
        }
        let conf = crate::aws::config_loader().load().await;
        aws_sdk_sqs::Client::new(&conf)
    }

    async fn fresh_queue(client: &aws_sdk_sqs::Client) -> ParkedQueue {
        let name = format!("adsync-test-parked-{}", uuid::Uuid::new_v4().simple());
        let url = client
            .create_queue()
            .queue_name(name)
            .attributes(
                aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
                "30",
            )
            .send()
            .await
            .expect("create queue on moto")
            .queue_url
            .expect("queue url");
        ParkedQueue::new(client.clone(), url)
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Item {
        id: String,
        n: u32,
    }

    #[tokio::test]
    async fn parks_receives_and_acks() {
        let client = sqs().await;
        let q = fresh_queue(&client).await;
        q.park(&Item {
            id: "a".into(),
            n: 1,
        })
        .await
        .unwrap();
        q.park(&Item {
            id: "b".into(),
            n: 2,
        })
        .await
        .unwrap();
        let mut got: Vec<Parked<Item>> = Vec::new();
        for _ in 0..5 {
            got.extend(q.receive::<Item>(10).await.unwrap());
            if got.len() == 2 {
                break;
            }
        }
        got.sort_by(|a, b| a.item.id.cmp(&b.item.id));
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0].item,
            Item {
                id: "a".into(),
                n: 1
            }
        );
        assert_eq!(got[1].item.n, 2);
        assert_eq!(got[0].receive_count, 1);
        for p in &got {
            q.ack(&p.receipt_handle).await.unwrap();
        }
        // Acked messages never come back.
        let attrs = client
            .get_queue_attributes()
            .queue_url(q.queue_url())
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
            .send()
            .await
            .unwrap();
        let attrs = attrs.attributes.unwrap();
        let visible = &attrs[&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages];
        let inflight =
            &attrs[&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible];
        assert_eq!((visible.as_str(), inflight.as_str()), ("0", "0"));
    }

    #[tokio::test]
    async fn refuses_oversize_items_and_skips_unreadable_messages() {
        let client = sqs().await;
        let q = fresh_queue(&client).await;
        let big = Item {
            id: "x".repeat(MAX_MESSAGE_BYTES),
            n: 0,
        };
        assert!(q.park(&big).await.is_err());
        client
            .send_message()
            .queue_url(q.queue_url())
            .message_body("not json")
            .send()
            .await
            .unwrap();
        q.park(&Item {
            id: "ok".into(),
            n: 3,
        })
        .await
        .unwrap();
        let mut got = Vec::new();
        for _ in 0..5 {
            got.extend(q.receive::<Item>(10).await.unwrap());
            if !got.is_empty() {
                break;
            }
        }
        assert_eq!(got.len(), 1, "only the readable message is returned");
        assert_eq!(got[0].item.id, "ok");
    }
}
