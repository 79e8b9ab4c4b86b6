//! Connections: the linking attempts.

use super::codec::{connection_from_item, connection_key, single_use_key};
use super::{AccountStore, Connection, ConnectionStatus, ListedAdvertiser};
use crate::clock::now_secs;
use crate::domain::account::Region;
use crate::store::StoreError;
use crate::store::dynamo::{aws_error, build_error, conditional, fenced, n, now_rfc3339, s};
use aws_sdk_dynamodb::types::{Put, TransactWriteItem};

impl AccountStore {
    // ---- connections ---------------------------------------------------------------------

    /// Creates a pending connection and its OAuth state (stored hashed) in one transaction.
    pub async fn create_connection(
        &self,
        connection_id: &str,
        region: Region,
        state: &str,
        state_expires_at: i64,
        connection_expires_at: i64,
    ) -> Result<(), StoreError> {
        let now = now_rfc3339();
        let mut conn = connection_key(connection_id);
        conn.insert("connectionId".into(), s(connection_id));
        conn.insert("region".into(), s(region.as_str()));
        conn.insert("status".into(), s(ConnectionStatus::Pending.as_str()));
        conn.insert("createdAt".into(), s(&now));
        conn.insert("updatedAt".into(), s(&now));
        conn.insert("expiresAt".into(), n(connection_expires_at));
        let mut st = single_use_key("STATE", state);
        st.insert("connectionId".into(), s(connection_id));
        st.insert("region".into(), s(region.as_str()));
        st.insert("expiresAt".into(), n(state_expires_at));
        let put = |item| {
            Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(|e| build_error("create connection", e))
        };
        self.client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put(conn)?).build())
            .transact_items(TransactWriteItem::builder().put(put(st)?).build())
            .send()
            .await
            .map_err(|e| aws_error("create connection", e))?;
        Ok(())
    }

    pub async fn get_connection(
        &self,
        connection_id: &str,
    ) -> Result<Option<Connection>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(connection_key(connection_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws_error("get connection", e))?;
        out.item.as_ref().map(connection_from_item).transpose()
    }

    /// Pending → consented, with the token secret's name and the advertisers the login may use.
    /// Fails with `Conflict` unless the connection is pending and not expired.
    pub async fn mark_consented(
        &self,
        connection_id: &str,
        token_secret: &str,
        advertisers: &[ListedAdvertiser],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let json =
            serde_json::to_string(advertisers).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(connection_key(connection_id)))
            .update_expression(
                "SET #st = :consented, tokenSecret = :secret, advertisers = :adv, expiresAt = :exp, updatedAt = :now",
            )
            .condition_expression("attribute_exists(pk) AND #st = :pending AND expiresAt > :nowsecs")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":consented", s(ConnectionStatus::Consented.as_str()))
            .expression_attribute_values(":pending", s(ConnectionStatus::Pending.as_str()))
            .expression_attribute_values(":secret", s(token_secret))
            .expression_attribute_values(":adv", s(json))
            .expression_attribute_values(":exp", n(expires_at))
            .expression_attribute_values(":now", s(now_rfc3339()))
            .expression_attribute_values(":nowsecs", n(now_secs()))
            .send()
            .await;
        fenced(res, "mark connection consented", || {
            StoreError::Conflict(format!(
                "connection {connection_id} is not pending any more"
            ))
        })
        .map(|_| ())
    }

    /// Consented/linked → linked (idempotent).
    pub async fn mark_linked(&self, connection_id: &str) -> Result<(), StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(connection_key(connection_id)))
            .update_expression("SET #st = :linked, updatedAt = :now")
            .condition_expression("attribute_exists(pk) AND (#st = :consented OR #st = :linked)")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":linked", s(ConnectionStatus::Linked.as_str()))
            .expression_attribute_values(":consented", s(ConnectionStatus::Consented.as_str()))
            .expression_attribute_values(":now", s(now_rfc3339()))
            .send()
            .await;
        fenced(res, "mark connection linked", || {
            StoreError::Conflict(format!(
                "connection {connection_id} cannot be linked in its current state"
            ))
        })
        .map(|_| ())
    }

    /// Marks the connection failed with a short reason code and forgets its advertiser list.
    /// A linked connection stays linked (its accounts exist). Missing connections are ignored.
    pub async fn mark_failed(&self, connection_id: &str, reason: &str) -> Result<(), StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(connection_key(connection_id)))
            .update_expression(
                "SET #st = :failed, failure = :reason, updatedAt = :now REMOVE advertisers",
            )
            .condition_expression("attribute_exists(pk) AND #st <> :linked")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":failed", s(ConnectionStatus::Failed.as_str()))
            .expression_attribute_values(":linked", s(ConnectionStatus::Linked.as_str()))
            .expression_attribute_values(":reason", s(reason))
            .expression_attribute_values(":now", s(now_rfc3339()))
            .send()
            .await;
        conditional(res, "mark connection failed").map(|_| ())
    }
}
