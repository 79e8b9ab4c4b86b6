//! Segment items (listing and deleting them is in [`super::lifecycle`]).

use super::codec::segment_item;
use super::{DestinationStore, Segment, StoreError, sdk_err, seg_pk, segment_from};
use aws_sdk_dynamodb::types::ReturnValue;

impl DestinationStore {
    /// Creates or replaces a segment; returns the previous version (to notice changed controls).
    pub async fn put_segment(&self, seg: &Segment) -> Result<Option<Segment>, StoreError> {
        let out = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(segment_item(seg)))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| sdk_err("put segment", e))?;
        out.attributes
            .filter(|a| !a.is_empty())
            .map(|a| segment_from(&a))
            .transpose()
    }

    pub async fn get_segment(&self, id: &str) -> Result<Option<Segment>, StoreError> {
        self.get_item(seg_pk(id), "SEGMENT")
            .await?
            .map(|i| segment_from(&i))
            .transpose()
    }
}
