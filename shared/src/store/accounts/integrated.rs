//! Integrated accounts and their directory.

use super::codec::{account_from_item, account_item, account_key, directory_key};
use super::{AccountStatus, AccountStore, IntegratedAccount};
use crate::store::StoreError;
use crate::store::dynamo::{
    aws_error, build_error, conditional, is_cancelled_by_condition, now_rfc3339, s,
};
use crate::store::item::{Item, ItemExt};
use aws_sdk_dynamodb::types::{Delete, KeysAndAttributes, Put, TransactWriteItem, Update};

impl AccountStore {
    // ---- integrated accounts -------------------------------------------------------------

    /// The account with this id, in whatever status (removed accounts are kept as tombstones).
    pub async fn get_account(
        &self,
        account_id: &str,
    ) -> Result<Option<IntegratedAccount>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(account_key(account_id)))
            .send()
            .await
            .map_err(|e| aws_error("get account", e))?;
        out.item.as_ref().map(account_from_item).transpose()
    }

    /// Creates or replaces an account (and its directory entry, dropped when `Removed`).
    pub async fn put_account(&self, a: &IntegratedAccount) -> Result<(), StoreError> {
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(account_item(a)))
            .build()
            .map_err(|e| build_error("put account", e))?;
        let dir = if a.status == AccountStatus::Removed {
            TransactWriteItem::builder()
                .delete(
                    Delete::builder()
                        .table_name(&self.table)
                        .set_key(Some(directory_key(&a.account_id)))
                        .build()
                        .map_err(|e| build_error("put account", e))?,
                )
                .build()
        } else {
            let mut item = directory_key(&a.account_id);
            item.insert("accountId".into(), s(&a.account_id));
            item.insert("tokenSecret".into(), s(&a.token_secret));
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(item))
                        .build()
                        .map_err(|e| build_error("put account", e))?,
                )
                .build()
        };
        self.client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put).build())
            .transact_items(dir)
            .send()
            .await
            .map_err(|e| aws_error("put account", e))?;
        Ok(())
    }

    /// Marks every active account on that login `reauthorization_required`; returns how many
    /// changed. Called when a refresh answers `invalid_grant` (consent revoked).
    pub async fn mark_reauthorization_required(
        &self,
        token_secret: &str,
    ) -> Result<u32, StoreError> {
        let ids = self.account_ids_on_login(token_secret).await?;
        let mut changed = 0;
        for id in ids {
            let res = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(account_key(&id)))
                .update_expression("SET #st = :reauth, updatedAt = :now")
                .condition_expression(
                    "attribute_exists(pk) AND tokenSecret = :secret AND #st = :active",
                )
                .expression_attribute_names("#st", "status")
                .expression_attribute_values(
                    ":reauth",
                    s(AccountStatus::ReauthorizationRequired.as_str()),
                )
                .expression_attribute_values(":active", s(AccountStatus::Active.as_str()))
                .expression_attribute_values(":secret", s(token_secret))
                .expression_attribute_values(":now", s(now_rfc3339()))
                .send()
                .await;
            if conditional(res, "mark reauthorization required")?.is_some() {
                changed += 1;
            }
        }
        if changed > 0 {
            tracing::warn!(accounts = changed, "accounts now need reauthorization");
        }
        Ok(changed)
    }

    /// Ids of the non-removed accounts that use this login's token secret.
    pub async fn account_ids_on_login(
        &self,
        token_secret: &str,
    ) -> Result<Vec<String>, StoreError> {
        Ok(self
            .directory()
            .await?
            .into_iter()
            .filter(|(_, secret)| secret == token_secret)
            .map(|(id, _)| id)
            .collect())
    }

    /// (accountId, tokenSecret) of every non-removed account.
    async fn directory(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s("ACCOUNTS"))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| aws_error("list accounts", e))?;
            for item in page.items() {
                out.push((item.req_s("accountId")?, item.req_s("tokenSecret")?));
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Every non-removed account, sorted by account id.
    pub async fn list_accounts(&self) -> Result<Vec<IntegratedAccount>, StoreError> {
        let ids: Vec<String> = self
            .directory()
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(100) {
            let mut keys: Vec<Item> = chunk.iter().map(|id| account_key(id)).collect();
            // BatchGetItem may return part of the batch; retry the rest a bounded number of times.
            for attempt in 0..8u32 {
                if keys.is_empty() {
                    break;
                }
                if attempt > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(50 << attempt.min(5)))
                        .await;
                }
                let ka = KeysAndAttributes::builder()
                    .set_keys(Some(std::mem::take(&mut keys)))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| build_error("list accounts", e))?;
                let res = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, ka)
                    .send()
                    .await
                    .map_err(|e| aws_error("list accounts", e))?;
                if let Some(items) = res.responses.as_ref().and_then(|r| r.get(&self.table)) {
                    for item in items {
                        let a = account_from_item(item)?;
                        if a.status != AccountStatus::Removed {
                            out.push(a);
                        }
                    }
                }
                if let Some(rest) = res
                    .unprocessed_keys
                    .as_ref()
                    .and_then(|u| u.get(&self.table))
                {
                    keys = rest.keys().to_vec();
                }
            }
            if !keys.is_empty() {
                return Err(StoreError::Aws(
                    "list accounts: DynamoDB kept throttling the batch read".into(),
                ));
            }
        }
        out.sort_by(|a, b| a.account_id.cmp(&b.account_id));
        Ok(out)
    }

    /// Marks the account removed and drops its directory entry. Returns the account as it was
    /// before, or `None` when it is unknown or already removed.
    pub async fn remove_account(
        &self,
        account_id: &str,
    ) -> Result<Option<IntegratedAccount>, StoreError> {
        let Some(before) = self.get_account(account_id).await? else {
            return Ok(None);
        };
        if before.status == AccountStatus::Removed {
            return Ok(None);
        }
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(account_key(account_id)))
            .update_expression("SET #st = :removed, updatedAt = :now")
            .condition_expression("attribute_exists(pk) AND #st <> :removed")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":removed", s(AccountStatus::Removed.as_str()))
            .expression_attribute_values(":now", s(now_rfc3339()))
            .build()
            .map_err(|e| build_error("remove account", e))?;
        let delete = Delete::builder()
            .table_name(&self.table)
            .set_key(Some(directory_key(account_id)))
            .build()
            .map_err(|e| build_error("remove account", e))?;
        let res = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(update).build())
            .transact_items(TransactWriteItem::builder().delete(delete).build())
            .send()
            .await;
        match res {
            Ok(_) => Ok(Some(before)),
            // Removed concurrently by another request: that one reports it.
            Err(e) if is_cancelled_by_condition(&e) => Ok(None),
            Err(e) => Err(aws_error("remove account", e)),
        }
    }
}
