//! Dirty devices of unfinished jobs.

use super::*;

impl JobStore {
    /// Records a device changed by a delta while the job is unfinished. Written before the
    /// delta's own send (see `export::members` for why that order matters).
    pub async fn mark_dirty(
        &self,
        destination_id: &str,
        segment_id: &str,
        device: &str,
    ) -> Result<(), StoreError> {
        let mut it = Self::key(
            &job_pk(destination_id, segment_id),
            &format!("DIRTY#{device}"),
        );
        it.insert("segmentId".into(), s(segment_id));
        it.insert("device".into(), s(device));
        it.insert("nonce".into(), s(uuid::Uuid::new_v4().simple().to_string()));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(it))
            .send()
            .await
            .map_err(|e| aws("mark dirty", e))?;
        Ok(())
    }

    /// One page of a job's dirty devices (consistent read), after `start_after` (a device key).
    pub async fn dirty_page(
        &self,
        destination_id: &str,
        segment_id: &str,
        start_after: Option<&str>,
        limit: i32,
    ) -> Result<(Vec<DirtyDevice>, Option<String>), StoreError> {
        let pk = job_pk(destination_id, segment_id);
        let res = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
            .expression_attribute_values(":pk", s(&pk))
            .expression_attribute_values(":p", s("DIRTY#"))
            .consistent_read(true)
            .limit(limit)
            .set_exclusive_start_key(start_after.map(|d| Self::key(&pk, &format!("DIRTY#{d}"))))
            .send()
            .await
            .map_err(|e| aws("query dirty", e))?;
        let mut out = Vec::new();
        for it in res.items() {
            out.push(DirtyDevice {
                segment_id: req_s(it, "segmentId")?,
                device: req_s(it, "device")?,
                nonce: req_s(it, "nonce")?,
            });
        }
        let last = match res.last_evaluated_key().and_then(|k| k.get("sk")) {
            Some(AttributeValue::S(sk)) => sk.strip_prefix("DIRTY#").map(str::to_string),
            _ => None,
        };
        Ok((out, last))
    }

    /// Removes a dirty entry unless a newer delta re-marked it (different nonce).
    pub async fn clear_dirty(
        &self,
        destination_id: &str,
        segment_id: &str,
        d: &DirtyDevice,
    ) -> Result<(), StoreError> {
        let res = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(
                &job_pk(destination_id, segment_id),
                &format!("DIRTY#{}", d.device),
            )))
            .condition_expression("nonce = :n")
            .expression_attribute_values(":n", s(&d.nonce))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Ok(()),
            Err(e) => Err(aws("clear dirty", e)),
        }
    }
}
