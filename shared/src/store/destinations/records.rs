//! Destination items: creating (with the first mappings), reading, updating, listing.

use super::codec::{new_destination_write, new_mapping_writes};
use super::{
    DESTINATIONS_GSI_PK, Destination, DestinationPage, DestinationStore, GSI1, SegmentMapping,
    StoreError, destination_from, dst_pk, key, now_rfc3339, s, sdk_err, str_list,
};
use crate::domain::export_controls::ExportLabel;
use crate::store::dynamo::{conditional, is_cancelled_by_condition};
use aws_sdk_dynamodb::types::ReturnValue;

impl DestinationStore {
    /// Creates a destination with its first mappings in one transaction (so a destination never
    /// exists half-mapped), queueing the audience creation of every `Pending` mapping. At most
    /// [`Self::MAX_MAPPINGS_PER_CREATE`] mappings (DynamoDB's 100 items per transaction).
    pub async fn create_destination(
        &self,
        d: &Destination,
        mappings: &[SegmentMapping],
    ) -> Result<(), StoreError> {
        if mappings.len() > Self::MAX_MAPPINGS_PER_CREATE {
            return Err(StoreError::Conflict(format!(
                "at most {} mappings per destination creation",
                Self::MAX_MAPPINGS_PER_CREATE
            )));
        }
        let mut items = vec![new_destination_write(&self.table, d)?];
        for m in mappings {
            items.extend(new_mapping_writes(&self.table, m)?);
        }
        self.client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
            .map_err(|e| {
                if is_cancelled_by_condition(&e) {
                    StoreError::Conflict(format!("destination {} already exists", d.destination_id))
                } else {
                    sdk_err("create destination", e)
                }
            })?;
        Ok(())
    }

    /// Mappings one destination-creating transaction can hold (1 destination + 2 items each).
    pub const MAX_MAPPINGS_PER_CREATE: usize = 49;

    pub async fn get_destination(&self, id: &str) -> Result<Option<Destination>, StoreError> {
        self.get_item(dst_pk(id), "DESTINATION")
            .await?
            .map(|i| destination_from(&i))
            .transpose()
    }

    /// Replaces the mutable fields of a destination (description, labels); `name`, `accountId`,
    /// countries, ttl and `createdAt` are kept as stored.
    pub async fn update_destination(
        &self,
        id: &str,
        description: &str,
        labels: &[ExportLabel],
    ) -> Result<Option<Destination>, StoreError> {
        let labels: Vec<_> = labels.iter().map(|l| l.as_str()).collect();
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(dst_pk(id), "DESTINATION")))
            .condition_expression("attribute_exists(pk)")
            .update_expression("SET description = :d, dataExportLabels = :l, updatedAt = :u")
            .expression_attribute_values(":d", s(description))
            .expression_attribute_values(":l", str_list(&labels))
            .expression_attribute_values(":u", s(now_rfc3339()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match conditional(r, "update destination")? {
            Some(out) => out.attributes.map(|a| destination_from(&a)).transpose(),
            None => Ok(None),
        }
    }

    /// Destinations, oldest first, `limit` per page (1–100).
    pub async fn list_destinations(
        &self,
        limit: i32,
        next_token: Option<&str>,
    ) -> Result<DestinationPage, StoreError> {
        let mut q = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(GSI1)
            .key_condition_expression("gsi1pk = :p")
            .expression_attribute_values(":p", s(DESTINATIONS_GSI_PK))
            .limit(limit.clamp(1, 100));
        if let Some(t) = next_token {
            // The token is the last item's gsi1sk, `<createdAt>#<destinationId>`.
            let id = t.rsplit('#').next().unwrap_or_default();
            let mut start = key(dst_pk(id), "DESTINATION");
            start.insert("gsi1pk".into(), s(DESTINATIONS_GSI_PK));
            start.insert("gsi1sk".into(), s(t));
            q = q.set_exclusive_start_key(Some(start));
        }
        let out = q
            .send()
            .await
            .map_err(|e| sdk_err("list destinations", e))?;
        let destinations = out
            .items()
            .iter()
            .map(destination_from)
            .collect::<Result<Vec<_>, _>>()?;
        let next_token = out
            .last_evaluated_key()
            .and_then(|k| k.get("gsi1sk"))
            .and_then(|v| v.as_s().ok())
            .cloned();
        Ok(DestinationPage {
            destinations,
            next_token,
        })
    }
}
