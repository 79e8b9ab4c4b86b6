//! Single-use values: OAuth states, account-list views, CSRF tokens.

use super::codec::{region_of, single_use_key};
use super::{AccountStore, ConsumeError, CsrfOutcome, StateGrant, UsedCsrf};
use crate::clock::now_secs;
use crate::store::StoreError;
use crate::store::dynamo::{aws_error, is_conditional_failure, n, now_rfc3339, s};
use crate::store::item::{Item, ItemExt};
use aws_sdk_dynamodb::types::ReturnValue;

impl AccountStore {
    // ---- single-use values ---------------------------------------------------------------

    /// Consumes an OAuth state atomically: the first caller gets what it is bound to; every
    /// later caller gets `Used`.
    pub async fn consume_state(&self, state: &str) -> Result<StateGrant, ConsumeError> {
        let item = self.consume("STATE", state, None).await?;
        let connection_id = item
            .req_str("connectionId")
            .map_err(|e| ConsumeError::Store(e.to_string()))?
            .to_string();
        let region = region_of(&item).map_err(|e| ConsumeError::Store(e.to_string()))?;
        Ok(StateGrant {
            connection_id,
            region,
        })
    }

    /// Stores a view id (hashed) that renders the connection's account list until `expires_at`.
    pub async fn put_view(
        &self,
        view: &str,
        connection_id: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.put_single_use("VIEW", view, connection_id, expires_at)
            .await
    }

    /// The connection a view id renders (reusable until it expires: reloading the page works).
    pub async fn resolve_view(&self, view: &str) -> Result<String, ConsumeError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(single_use_key("VIEW", view)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| ConsumeError::Store(aws_error("resolve view", e).to_string()))?;
        let Some(item) = out.item else {
            return Err(ConsumeError::Unknown);
        };
        let exp = item
            .req_num::<i64>("expiresAt")
            .map_err(|e| ConsumeError::Store(e.to_string()))?;
        if exp <= now_secs() {
            return Err(ConsumeError::Expired);
        }
        item.req_str("connectionId")
            .map(str::to_string)
            .map_err(|e| ConsumeError::Store(e.to_string()))
    }

    /// Stores a CSRF token (hashed) bound to the connection.
    pub async fn put_csrf(
        &self,
        token: &str,
        connection_id: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.put_single_use("CSRF", token, connection_id, expires_at)
            .await
    }

    /// Spends a CSRF token on `used_for` (the advertiser id). A repeat of the same use is told
    /// apart from a use for something else, so a double-submitted form stays idempotent.
    pub async fn consume_csrf(
        &self,
        token: &str,
        used_for: &str,
    ) -> Result<CsrfOutcome, ConsumeError> {
        match self.consume("CSRF", token, Some(used_for)).await {
            Ok(item) => Ok(CsrfOutcome::Fresh {
                connection_id: item
                    .req_str("connectionId")
                    .map_err(|e| ConsumeError::Store(e.to_string()))?
                    .to_string(),
            }),
            Err(ConsumeError::Used) => {
                let used = self.read_used("CSRF", token).await?;
                if used.used_for.as_deref() == Some(used_for) {
                    Ok(CsrfOutcome::Repeat {
                        connection_id: used.connection_id,
                    })
                } else {
                    Ok(CsrfOutcome::UsedForOther {
                        connection_id: used.connection_id,
                    })
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn put_single_use(
        &self,
        kind: &str,
        value: &str,
        connection_id: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let mut item = single_use_key(kind, value);
        item.insert("connectionId".into(), s(connection_id));
        item.insert("expiresAt".into(), n(expires_at));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(|e| aws_error("store single-use value", e))?;
        Ok(())
    }

    /// Marks a single-use item used, only if it exists, is unused and has not expired (all in
    /// the condition, so two concurrent uses cannot both win). On failure, reads the item to say
    /// which of the three it was.
    async fn consume(
        &self,
        kind: &str,
        value: &str,
        used_for: Option<&str>,
    ) -> Result<Item, ConsumeError> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(single_use_key(kind, value)))
            .condition_expression(
                "attribute_exists(pk) AND attribute_not_exists(usedAt) AND expiresAt > :now",
            )
            .expression_attribute_values(":now", n(now_secs()))
            .expression_attribute_values(":usedAt", s(now_rfc3339()))
            .return_values(ReturnValue::AllNew);
        req = match used_for {
            Some(f) => req
                .update_expression("SET usedAt = :usedAt, usedFor = :usedFor")
                .expression_attribute_values(":usedFor", s(f)),
            None => req.update_expression("SET usedAt = :usedAt"),
        };
        match req.send().await {
            Ok(out) => Ok(out.attributes.unwrap_or_default()),
            Err(e) if is_conditional_failure(&e) => {
                let out = self
                    .client
                    .get_item()
                    .table_name(&self.table)
                    .set_key(Some(single_use_key(kind, value)))
                    .consistent_read(true)
                    .send()
                    .await
                    .map_err(|e| {
                        ConsumeError::Store(aws_error("read single-use value", e).to_string())
                    })?;
                match out.item {
                    None => Err(ConsumeError::Unknown),
                    Some(item) if item.contains_key("usedAt") => Err(ConsumeError::Used),
                    Some(_) => Err(ConsumeError::Expired),
                }
            }
            Err(e) => Err(ConsumeError::Store(
                aws_error("consume single-use value", e).to_string(),
            )),
        }
    }

    async fn read_used(&self, kind: &str, value: &str) -> Result<UsedCsrf, ConsumeError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(single_use_key(kind, value)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| ConsumeError::Store(aws_error("read single-use value", e).to_string()))?;
        let item = out.item.ok_or(ConsumeError::Unknown)?;
        Ok(UsedCsrf {
            connection_id: item
                .req_str("connectionId")
                .map_err(|e| ConsumeError::Store(e.to_string()))?
                .to_string(),
            used_for: item.opt_s("usedFor"),
        })
    }
}
