//! Segment items.

use super::*;

impl DestinationStore {
    // ---------------------------------------------------------------- segments

    /// Creates or replaces a segment; returns the previous version (to notice changed controls).
    pub async fn put_segment(&self, seg: &Segment) -> Result<Option<Segment>, StoreError> {
        let mut item = key(seg_pk(&seg.segment_id), "SEGMENT");
        item.insert("gsi1pk".into(), s(lifecycle::SEGMENTS_GSI_PK));
        item.insert("gsi1sk".into(), s(&seg.segment_id));
        item.insert("segmentId".into(), s(&seg.segment_id));
        item.insert("name".into(), s(&seg.name));
        item.insert("description".into(), s(&seg.description));
        item.insert(
            "dataExportControls".into(),
            str_list(
                &seg.data_export_controls
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>(),
            ),
        );
        item.insert("updatedAt".into(), s(&seg.updated_at));
        let out = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
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
