//! One-time migrations of this table's items, run by the scheduled upkeep until done.
//!
//! `segments-gsi1`: segments registered before the segment listing existed lack
//! `gsi1pk`/`gsi1sk`, so `GET /segments` would not show them. The migration scans the table for
//! segment items without `gsi1pk` (a page per step, from a checkpoint) and adds the listing keys
//! with a condition, so a segment written meanwhile is never overwritten.
//!
//! | item | pk | sk | attributes |
//! |---|---|---|---|
//! | migration | `MIGRATION` | `<name>` | `done (BOOL), cursorPk?, cursorSk?, migrated (N, items changed so far), updatedAt` |

use super::lifecycle::SEGMENTS_GSI_PK;
use super::{DestinationStore, Item, StoreError, key, n, now_rfc3339, s, sdk_err, seg_pk};
use crate::store::dynamo::conditional;
use crate::store::item::ItemExt;
use aws_sdk_dynamodb::types::AttributeValue;

const MIGRATION_PK: &str = "MIGRATION";
/// The segment-listing migration.
pub const SEGMENTS_GSI1: &str = "segments-gsi1";

/// What one step of a migration did.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationStep {
    pub done: bool,
    /// Items changed by this step.
    pub migrated: u32,
}

impl DestinationStore {
    /// Whether migration `name` has finished.
    pub async fn migration_done(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .migration_item(name)
            .await?
            .is_some_and(|i| matches!(i.get("done"), Some(AttributeValue::Bool(true)))))
    }

    async fn migration_item(&self, name: &str) -> Result<Option<Item>, StoreError> {
        let r = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(MIGRATION_PK.into(), name)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_err("read migration", e))?;
        Ok(r.item)
    }

    /// One page of the segment-listing migration, from its checkpoint.
    pub async fn migrate_segment_listing_step(&self) -> Result<MigrationStep, StoreError> {
        let marker = self.migration_item(SEGMENTS_GSI1).await?;
        if marker.as_ref().is_some_and(|i| i.flag("done")) {
            return Ok(MigrationStep {
                done: true,
                migrated: 0,
            });
        }
        let cursor = marker
            .as_ref()
            .and_then(|i| Some(key(i.opt_s("cursorPk")?, i.opt_str("cursorSk")?)));
        let page = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression("sk = :seg AND attribute_not_exists(gsi1pk)")
            .expression_attribute_values(":seg", s("SEGMENT"))
            .projection_expression("pk, segmentId")
            .set_exclusive_start_key(cursor)
            .send()
            .await
            .map_err(|e| sdk_err("scan for unlisted segments", e))?;
        let mut migrated = 0;
        for item in page.items() {
            if let Some(id) = item.opt_str("segmentId") {
                migrated += u32::from(self.list_segment(id).await?);
            }
        }
        let next = page.last_evaluated_key().cloned();
        let before = marker
            .as_ref()
            .and_then(|i| i.opt_num::<u32>("migrated"))
            .unwrap_or(0);
        self.save_migration(SEGMENTS_GSI1, next.as_ref(), before + migrated)
            .await?;
        Ok(MigrationStep {
            done: next.is_none(),
            migrated,
        })
    }

    /// Adds the listing keys to one segment that has none; `false` when it has them or is gone.
    async fn list_segment(&self, id: &str) -> Result<bool, StoreError> {
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(seg_pk(id), "SEGMENT")))
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(gsi1pk)")
            .update_expression("SET gsi1pk = :g, gsi1sk = :id")
            .expression_attribute_values(":g", s(SEGMENTS_GSI_PK))
            .expression_attribute_values(":id", s(id))
            .send()
            .await;
        Ok(conditional(r, "list segment")?.is_some())
    }

    /// Records a migration's checkpoint (`next`: where to go on; `None`: done).
    async fn save_migration(
        &self,
        name: &str,
        next: Option<&Item>,
        migrated_total: u32,
    ) -> Result<(), StoreError> {
        let cursor = |k: &str| next.and_then(|i| i.get(k)).cloned();
        let mut item = key(MIGRATION_PK.into(), name);
        item.insert("done".into(), AttributeValue::Bool(next.is_none()));
        if let (Some(pk), Some(sk)) = (cursor("pk"), cursor("sk")) {
            item.insert("cursorPk".into(), pk);
            item.insert("cursorSk".into(), sk);
        }
        item.insert("migrated".into(), n(migrated_total));
        item.insert("updatedAt".into(), s(now_rfc3339()));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| sdk_err("save migration", e))?;
        Ok(())
    }

    /// Forgets a migration's progress (tests and operators re-running it).
    pub async fn reset_migration(&self, name: &str) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(MIGRATION_PK.into(), name)))
            .send()
            .await
            .map_err(|e| sdk_err("reset migration", e))?;
        Ok(())
    }
}
