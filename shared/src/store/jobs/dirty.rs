//! Dirty devices of unfinished jobs (`DIRTY#<deviceKey>`, with a `nonce` so that the drain
//! deletes an entry only if no newer delta re-marked it).

use super::codec::{job_pk, req_s};
use super::{DirtyDevice, JobStore};
use crate::store::StoreError;
use crate::store::dynamo::{aws_error, conditional, key, s};
use crate::store::item::ItemExt;

impl JobStore {
    /// Records a device changed by a delta while the job is unfinished. Written before the
    /// delta's own send (see `export::members` for why that order matters).
    pub async fn mark_dirty(
        &self,
        destination_id: &str,
        segment_id: &str,
        device: &str,
    ) -> Result<(), StoreError> {
        let mut it = key(
            job_pk(destination_id, segment_id),
            format!("DIRTY#{device}"),
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
            .map_err(|e| aws_error("jobs mark dirty", e))?;
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
            .set_exclusive_start_key(start_after.map(|d| key(&pk, format!("DIRTY#{d}"))))
            .send()
            .await
            .map_err(|e| aws_error("jobs query dirty", e))?;
        let mut out = Vec::new();
        for it in res.items() {
            out.push(DirtyDevice {
                segment_id: req_s(it, "segmentId")?,
                device: req_s(it, "device")?,
                nonce: req_s(it, "nonce")?,
            });
        }
        let last = res
            .last_evaluated_key()
            .and_then(|k| k.opt_str("sk"))
            .and_then(|sk| sk.strip_prefix("DIRTY#"))
            .map(str::to_string);
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
            .set_key(Some(key(
                job_pk(destination_id, segment_id),
                format!("DIRTY#{}", d.device),
            )))
            .condition_expression("nonce = :n")
            .expression_attribute_values(":n", s(&d.nonce))
            .send()
            .await;
        conditional(res, "jobs clear dirty").map(|_| ())
    }
}
