//! Erasure jobs: their items, their lease (the one lease of `store::lease`), their progress
//! and the ledger rows they removed.

use super::{ACTIVE_ERASURES, ErasureStore, StoredErasure, found_key, job_key};
use crate::store::StoreError;
use crate::store::dynamo::{aws_error, conditional, fenced, n, s};
use crate::store::item::{Item, ItemExt};
use crate::store::lease::{Lease, guarded};
use aws_sdk_dynamodb::types::{DeleteRequest, PutRequest, WriteRequest};

impl ErasureStore {
    // ---- jobs ----

    /// Creates a job (its first lease free).
    pub async fn create_job(
        &self,
        id: &str,
        created_at: &str,
        doc: &str,
        devices: &str,
    ) -> Result<(), StoreError> {
        let mut item = job_key(id);
        item.insert("doc".into(), s(doc));
        item.insert("devices".into(), s(devices));
        item.insert("state".into(), s("running"));
        item.insert("leaseUntil".into(), n(0));
        item.insert("gsi1pk".into(), s(ACTIVE_ERASURES));
        item.insert("gsi1sk".into(), s(format!("{created_at}#{id}")));
        self.client
            .put_item()
            .table_name(&self.jobs_table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(|e| aws_error("erasure job create", e))?;
        Ok(())
    }

    pub async fn get_job(&self, id: &str) -> Result<Option<StoredErasure>, StoreError> {
        let res = self
            .client
            .get_item()
            .table_name(&self.jobs_table)
            .set_key(Some(job_key(id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws_error("erasure job get", e))?;
        let Some(it) = res.item() else {
            return Ok(None);
        };
        Ok(Some(StoredErasure {
            doc: it
                .opt_str("doc")
                .ok_or_else(|| StoreError::Corrupt("erasure job without doc".into()))?
                .to_string(),
            devices: it.opt_str("devices").map(str::to_string),
            lease_owner: it.opt_str("leaseOwner").map(str::to_string),
            lease_until_ms: it.opt_num("leaseUntil").unwrap_or(0),
        }))
    }

    /// Ids of unfinished jobs, oldest first.
    pub async fn active_jobs(&self, limit: i32) -> Result<Vec<String>, StoreError> {
        let res = self
            .client
            .query()
            .table_name(&self.jobs_table)
            .index_name("gsi1")
            .key_condition_expression("gsi1pk = :p")
            .expression_attribute_values(":p", s(ACTIVE_ERASURES))
            .limit(limit)
            .send()
            .await
            .map_err(|e| aws_error("erasure jobs query", e))?;
        Ok(res
            .items()
            .iter()
            .filter_map(|it| {
                it.opt_str("pk")?
                    .strip_prefix("ERASURE#")
                    .map(str::to_string)
            })
            .collect())
    }

    /// Takes (or renews) the job's lease: free, expired or already `owner`'s.
    pub async fn lease(
        &self,
        id: &str,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, StoreError> {
        let res = self
            .lease_of(id)
            .take(owner, now_ms, until_ms, &guarded("attribute_exists(pk)"))
            .send()
            .await;
        Ok(conditional(res, "erasure job lease")?.is_some())
    }

    /// Gives the lease back (when `owner` still holds it), so the next run need not wait for it
    /// to expire.
    pub async fn release(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        self.lease_of(id)
            .release(owner, "erasure job release")
            .await
    }

    fn lease_of(&self, id: &str) -> Lease<'_> {
        Lease {
            client: &self.client,
            table: &self.jobs_table,
            key: job_key(id),
        }
    }

    /// Saves progress while holding the lease (a fence: a lost lease is a `Conflict`).
    /// `finished` also drops the raw devices and leaves the active index.
    pub async fn save(
        &self,
        id: &str,
        owner: &str,
        doc: &str,
        state: &str,
        finished: bool,
    ) -> Result<(), StoreError> {
        let expr = if finished {
            "SET doc = :doc, #st = :st, leaseUntil = :zero REMOVE devices, gsi1pk, gsi1sk"
        } else {
            "SET doc = :doc, #st = :st"
        };
        let mut q = self
            .client
            .update_item()
            .table_name(&self.jobs_table)
            .set_key(Some(job_key(id)))
            .update_expression(expr)
            .condition_expression("leaseOwner = :me")
            .expression_attribute_names("#st", "state")
            .expression_attribute_values(":doc", s(doc))
            .expression_attribute_values(":st", s(state))
            .expression_attribute_values(":me", s(owner));
        if finished {
            q = q.expression_attribute_values(":zero", n(0));
        }
        fenced(q.send().await, "erasure job save", || {
            StoreError::Conflict("the erasure job's lease was lost".into())
        })
        .map(|_| ())
    }

    /// Records ledger rows the job removed (idempotent).
    pub async fn put_found(&self, id: &str, rows: &[(String, String)]) -> Result<(), StoreError> {
        let writes: Vec<WriteRequest> = rows
            .iter()
            .filter_map(|(seg, hash)| {
                let mut item = found_key(id, seg, hash);
                item.insert("seg".to_string(), s(seg.as_str()));
                item.insert("hash".to_string(), s(hash.as_str()));
                let p = PutRequest::builder().set_item(Some(item)).build().ok()?;
                Some(WriteRequest::builder().put_request(p).build())
            })
            .collect();
        self.batch_write(writes).await
    }

    /// Every found row of the job: `(segmentId, deviceHash)`.
    pub async fn found(&self, id: &str) -> Result<Vec<(String, String)>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let res = self
                .client
                .query()
                .table_name(&self.jobs_table)
                .key_condition_expression("pk = :p AND begins_with(sk, :f)")
                .expression_attribute_values(":p", s(format!("ERASURE#{id}")))
                .expression_attribute_values(":f", s("FOUND#"))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| aws_error("erasure found query", e))?;
            for it in res.items() {
                if let (Some(seg), Some(hash)) = (it.opt_str("seg"), it.opt_str("hash")) {
                    out.push((seg.to_string(), hash.to_string()));
                }
            }
            match res.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Deletes the job's found rows.
    pub async fn delete_found(&self, id: &str) -> Result<(), StoreError> {
        let found = self.found(id).await?;
        let writes: Vec<WriteRequest> = found
            .iter()
            .filter_map(|(seg, hash)| {
                let d = DeleteRequest::builder()
                    .set_key(Some(found_key(id, seg, hash)))
                    .build()
                    .ok()?;
                Some(WriteRequest::builder().delete_request(d).build())
            })
            .collect();
        self.batch_write(writes).await
    }

    async fn batch_write(&self, writes: Vec<WriteRequest>) -> Result<(), StoreError> {
        for chunk in writes.chunks(25) {
            let mut pending = chunk.to_vec();
            for attempt in 0..10u32 {
                let res = self
                    .client
                    .batch_write_item()
                    .request_items(&self.jobs_table, pending)
                    .send()
                    .await
                    .map_err(|e| aws_error("erasure batch write", e))?;
                pending = res
                    .unprocessed_items()
                    .and_then(|u| u.get(&self.jobs_table))
                    .cloned()
                    .unwrap_or_default();
                if pending.is_empty() {
                    break;
                }
                if attempt == 9 {
                    return Err(StoreError::Aws(
                        "erasure batch write: items left unprocessed".into(),
                    ));
                }
                tokio::time::sleep(std::time::Duration::from_millis(20 << attempt.min(6))).await;
            }
        }
        Ok(())
    }
}
