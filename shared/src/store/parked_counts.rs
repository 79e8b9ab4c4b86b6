//! [`ParkedCounts`]: per-account counts of parked work, shown by `GET /accounts`, and the time an
//! account was last (re)linked, which tells the scheduled `redrive-dlq` which dead-lettered
//! messages to move back.
//!
//! One item per account in `ACCOUNTS_TABLE`: pk `PARKED#<accountId>`, sk `COUNTS`, numbers
//! `conversions`, `conversionsDeadLettered`, `patches`, `patchesDeadLettered` (changed with
//! `ADD`, so concurrent writers never lose an update) and `relinkedAtMs`.
//!
//! The counts follow the work (parked +n; delivered, settled or dead-lettered −n; moved back
//! from the dead-letter queue +n) and are best effort: a crash between a queue write and its
//! count can leave a count off by one message's worth, so they are shown, never used for
//! decisions, and never kept below zero (a decrement that would go below zero leaves 0).

use super::StoreError;
use super::accounts::AccountStore;
use super::dynamo::{self, aws_error, conditional, n};
use super::item::{Item, ItemExt};
use aws_sdk_dynamodb::types::{KeysAndAttributes, ReturnValue};
use serde::Serialize;
use std::collections::HashMap;

/// What is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Conversion events waiting on the parked queue.
    Conversions,
    /// Conversion events on the dead-letter queue.
    ConversionsDeadLettered,
    /// Device updates (audience patches) waiting on the parked queue.
    Patches,
    /// Device updates on the dead-letter queue.
    PatchesDeadLettered,
}

impl Counter {
    fn attr(self) -> &'static str {
        match self {
            Counter::Conversions => "conversions",
            Counter::ConversionsDeadLettered => "conversionsDeadLettered",
            Counter::Patches => "patches",
            Counter::PatchesDeadLettered => "patchesDeadLettered",
        }
    }
}

/// One account's parked work, as `GET /accounts` shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParkedView {
    pub conversions: u64,
    pub conversions_dead_lettered: u64,
    pub patches: u64,
    pub patches_dead_lettered: u64,
}

/// The counts adapter. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ParkedCounts {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

fn key(account_id: &str) -> Item {
    dynamo::key(format!("PARKED#{account_id}"), "COUNTS")
}

fn num(item: &Item, attr: &str) -> i64 {
    item.opt_num(attr).unwrap_or(0)
}

impl ParkedCounts {
    pub fn new(accounts: &AccountStore) -> Self {
        Self {
            client: accounts.client().clone(),
            table: accounts.table().to_string(),
        }
    }

    /// Adds `delta` (may be negative) to counters of an account, in one write. Work parked for
    /// no account yet (an empty id: devices parked unrouted, `export::members`) is not counted;
    /// it is counted on its account once the redrive has routed it.
    pub async fn add(&self, account_id: &str, deltas: &[(Counter, i64)]) -> Result<(), StoreError> {
        let deltas: Vec<&(Counter, i64)> = deltas.iter().filter(|(_, d)| *d != 0).collect();
        if deltas.is_empty() || account_id.is_empty() {
            return Ok(());
        }
        let mut expr = Vec::new();
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(account_id)));
        for (i, (c, d)) in deltas.iter().enumerate() {
            expr.push(format!("#c{i} :d{i}"));
            req = req
                .expression_attribute_names(format!("#c{i}"), c.attr())
                .expression_attribute_values(format!(":d{i}"), n(d));
        }
        let out = req
            .update_expression(format!("ADD {}", expr.join(", ")))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| aws_error("count parked work", e))?;
        let after = out.attributes.unwrap_or_default();
        for (c, _) in deltas
            .iter()
            .filter(|(c, d)| *d < 0 && num(&after, c.attr()) < 0)
        {
            self.clamp(account_id, *c).await?;
        }
        Ok(())
    }

    /// Sets a counter that went below zero (more copies left than were counted in) back to 0,
    /// so that later additions are not swallowed by the deficit.
    async fn clamp(&self, account_id: &str, c: Counter) -> Result<(), StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(account_id)))
            .update_expression("SET #c = :zero")
            .condition_expression("#c < :zero")
            .expression_attribute_names("#c", c.attr())
            .expression_attribute_values(":zero", n(0))
            .send()
            .await;
        conditional(res, "clamp a parked count").map(|_| ())
    }

    /// Best effort [`add`](Self::add): a failure is logged, never fails the caller's work.
    pub async fn add_logged(&self, account_id: &str, deltas: &[(Counter, i64)]) {
        if let Err(e) = self.add(account_id, deltas).await {
            tracing::warn!(account_id, error = %e, "could not update the parked counts");
        }
    }

    /// Records that the account was (re)linked now.
    pub async fn mark_relinked(&self, account_id: &str, now_ms: u64) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(account_id)))
            .update_expression("SET relinkedAtMs = :t")
            .expression_attribute_values(":t", n(now_ms))
            .send()
            .await
            .map_err(|e| aws_error("record the relink", e))?;
        Ok(())
    }

    /// When the account was last (re)linked (epoch ms; 0 when never recorded).
    pub async fn relinked_at(&self, account_id: &str) -> Result<u64, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(account_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws_error("read the relink time", e))?;
        Ok(out
            .item
            .as_ref()
            .map(|i| num(i, "relinkedAtMs").max(0) as u64)
            .unwrap_or(0))
    }

    /// The counts of these accounts (missing ones are all zero).
    pub async fn views(
        &self,
        account_ids: &[String],
    ) -> Result<HashMap<String, ParkedView>, StoreError> {
        let mut out = HashMap::new();
        for chunk in account_ids.chunks(100) {
            let mut keys = KeysAndAttributes::builder();
            for id in chunk {
                keys = keys.keys(key(id));
            }
            let keys = keys
                .build()
                .map_err(|e| StoreError::Aws(format!("read parked counts: {e}")))?;
            let mut pending = Some(HashMap::from([(self.table.clone(), keys)]));
            while let Some(req) = pending.take().filter(|r| !r.is_empty()) {
                let got = self
                    .client
                    .batch_get_item()
                    .set_request_items(Some(req))
                    .send()
                    .await
                    .map_err(|e| aws_error("read parked counts", e))?;
                for item in got
                    .responses
                    .unwrap_or_default()
                    .remove(&self.table)
                    .unwrap_or_default()
                {
                    let Some(id) = item.opt_str("pk").and_then(|pk| pk.strip_prefix("PARKED#"))
                    else {
                        continue;
                    };
                    let c = |c: Counter| num(&item, c.attr()).max(0) as u64;
                    out.insert(
                        id.to_string(),
                        ParkedView {
                            conversions: c(Counter::Conversions),
                            conversions_dead_lettered: c(Counter::ConversionsDeadLettered),
                            patches: c(Counter::Patches),
                            patches_dead_lettered: c(Counter::PatchesDeadLettered),
                        },
                    );
                }
                pending = got.unprocessed_keys;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The local stack's DynamoDB Local; fails loudly when its environment is missing.
    async fn store() -> ParkedCounts {
        let table = std::env::var("ACCOUNTS_TABLE").expect(
            "ACCOUNTS_TABLE is not set: start the local stack and `source .local/stack.env`",
        );
        let aws = crate::aws::AwsClients::from_env().await;
        ParkedCounts::new(&AccountStore::new(aws.dynamodb, table))
    }

    #[tokio::test]
    async fn counts_add_up_and_never_show_below_zero() {
        let c = store().await;
        let a = format!("9{}", crate::clock::now_ms());
        let b = format!("8{}", crate::clock::now_ms());
        c.add(&a, &[(Counter::Conversions, 5), (Counter::Patches, 2)])
            .await
            .unwrap();
        c.add(
            &a,
            &[
                (Counter::Conversions, -3),
                (Counter::ConversionsDeadLettered, 1),
            ],
        )
        .await
        .unwrap();
        c.add(&b, &[(Counter::Patches, -1)]).await.unwrap();
        // No account (unrouted work): nothing is written, nothing fails.
        c.add("", &[(Counter::Patches, 3)]).await.unwrap();
        let v = c
            .views(&[a.clone(), b.clone(), "none".into()])
            .await
            .unwrap();
        assert_eq!(
            v[&a],
            ParkedView {
                conversions: 2,
                conversions_dead_lettered: 1,
                patches: 2,
                patches_dead_lettered: 0
            }
        );
        assert_eq!(v[&b], ParkedView::default());
        // The stored counter was clamped at 0: a later addition is not swallowed by a deficit.
        c.add(&b, &[(Counter::Patches, 1)]).await.unwrap();
        let v = c.views(std::slice::from_ref(&b)).await.unwrap();
        assert_eq!(v[&b].patches, 1);
        assert!(!v.contains_key("none"));
        assert_eq!(c.relinked_at(&a).await.unwrap(), 0);
        c.mark_relinked(&a, 1234).await.unwrap();
        assert_eq!(c.relinked_at(&a).await.unwrap(), 1234);
        assert_eq!(
            c.views(std::slice::from_ref(&a)).await.unwrap()[&a].conversions,
            2
        );
    }
}
