//! `ErasureStore`: erasure tombstones (in `LEDGER_TABLE`) and erasure jobs (in
//! `DESTINATIONS_TABLE`, beside the backfill jobs of `store::jobs`).
//!
//! | item | table | pk | sk | attributes |
//! |---|---|---|---|---|
//! | tombstone | ledger | `ERASED#<deviceHash>` | `ERASED` | `ts` (N, epoch ms of the erasure request), `deletionId` |
//! | job | destinations | `ERASURE#<deletionId>` | `JOB` | `doc` (progress JSON, no raw ids), `devices` (raw `[[type,id],…]`, removed when the job completes), `state`, `leaseOwner`, `leaseUntil` (N); while unfinished `gsi1pk = ERASURES#active`, `gsi1sk = <createdAt>#<id>` |
//! | found row | destinations | `ERASURE#<deletionId>` | `FOUND#<segmentId>#<deviceHash>` | `seg`, `hash`: a ledger row the job removed, kept until the audience patches are sent |
//!
//! `deviceHash` = lowercase hex SHA-256 of the device key `<idType>-<deviceId>` ([`device_hash`]):
//! a later qualification finds the tombstone without anyone storing the id. A tombstone only
//! moves forward in time (conditional on `ts`).

use super::StoreError;
use super::dynamo::{aws_error, conditional, fenced, key, n, s};
use super::item::{Item, ItemExt};
use super::lease::{Lease, guarded};
use super::ledger::{partition_key, shard_of};
use crate::store::ledger::LEDGER_SHARDS;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{DeleteRequest, PutRequest, WriteRequest};
use sha2::{Digest, Sha256};

/// The `gsi1pk` of unfinished erasure jobs.
pub const ACTIVE_ERASURES: &str = "ERASURES#active";
pub const TOMBSTONE_PREFIX: &str = "ERASED#";

/// SHA-256 (lowercase hex) of a device key `<TYPE>-<id>`: what logs, audit records and
/// tombstones carry instead of the id.
pub fn device_hash(device_key: &str) -> String {
    hex::encode(Sha256::digest(device_key.as_bytes()))
}

/// One ledger row seen by the erasure scan (key and version only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannedRow {
    pub segment_id: String,
    pub device: String,
    pub ts_ms: i64,
}

/// A stored job: its progress document, its raw devices while unfinished, its lease.
#[derive(Clone, Debug)]
pub struct StoredErasure {
    pub doc: String,
    pub devices: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_until_ms: i64,
}

#[derive(Clone, Debug)]
pub struct ErasureStore {
    client: Client,
    ledger_table: String,
    jobs_table: String,
}

fn job_key(id: &str) -> Item {
    key(format!("ERASURE#{id}"), "JOB")
}

fn found_key(id: &str, seg: &str, hash: &str) -> Item {
    key(format!("ERASURE#{id}"), format!("FOUND#{seg}#{hash}"))
}

fn ledger_key(segment_id: &str, device: &str) -> Item {
    key(
        partition_key(segment_id, shard_of(device, LEDGER_SHARDS)),
        device,
    )
}

impl ErasureStore {
    pub fn new(client: Client, ledger_table: String, jobs_table: String) -> Self {
        Self {
            client,
            ledger_table,
            jobs_table,
        }
    }

    // ---- tombstones ----

    /// Writes (or moves forward) the tombstone of a device hash.
    pub async fn put_tombstone(
        &self,
        hash: &str,
        ts_ms: i64,
        deletion_id: &str,
    ) -> Result<(), StoreError> {
        let res = self
            .client
            .put_item()
            .table_name(&self.ledger_table)
            .item("pk", s(format!("{TOMBSTONE_PREFIX}{hash}")))
            .item("sk", s("ERASED"))
            .item("ts", n(ts_ms))
            .item("deletionId", s(deletion_id))
            .condition_expression("attribute_not_exists(pk) OR ts < :ts")
            .expression_attribute_values(":ts", n(ts_ms))
            .send()
            .await;
        conditional(res, "erasure tombstone put").map(|_| ())
    }

    /// The erasure time of a device hash, if it was ever erased (consistent read).
    pub async fn tombstone(&self, hash: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.tombstone_entry(hash).await?.map(|(ts, _)| ts))
    }

    /// The erasure time of a device hash and the erasure job that wrote it (consistent read).
    pub async fn tombstone_entry(&self, hash: &str) -> Result<Option<(i64, String)>, StoreError> {
        let res = self
            .client
            .get_item()
            .table_name(&self.ledger_table)
            .key("pk", s(format!("{TOMBSTONE_PREFIX}{hash}")))
            .key("sk", s("ERASED"))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws_error("erasure tombstone get", e))?;
        Ok(res.item().and_then(|i| {
            let id = i.opt_str("deletionId").unwrap_or_default().to_string();
            i.opt_num("ts").map(|ts| (ts, id))
        }))
    }

    // ---- the ledger, seen by an erasure ----

    /// Deletes a ledger row when its version is `cond` `ts` (`"ts <= :t"` or `"ts = :t"`).
    /// Returns whether it was deleted.
    pub async fn delete_ledger_row(
        &self,
        segment_id: &str,
        device: &str,
        cond: &str,
        ts_ms: i64,
    ) -> Result<bool, StoreError> {
        let res = self
            .client
            .delete_item()
            .table_name(&self.ledger_table)
            .set_key(Some(ledger_key(segment_id, device)))
            .condition_expression(cond)
            .expression_attribute_values(":t", n(ts_ms))
            .send()
            .await;
        Ok(conditional(res, "ledger delete")?.is_some())
    }

    /// Deletes a backfill job's dirty mark of a device (`store::jobs` layout), so no raw id
    /// outlives the erasure there.
    pub async fn delete_dirty_mark(
        &self,
        destination_id: &str,
        segment_id: &str,
        device: &str,
    ) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.jobs_table)
            .key("pk", s(super::jobs::job_pk(destination_id, segment_id)))
            .key("sk", s(format!("DIRTY#{device}")))
            .send()
            .await
            .map_err(|e| aws_error("dirty mark delete", e))?;
        Ok(())
    }

    /// One page of a consistent scan of the ledger (keys and versions; tombstones skipped).
    /// `after` is the `(pk, sk)` to continue after; the second value is the next one.
    pub async fn scan_ledger(
        &self,
        after: Option<(String, String)>,
        limit: i32,
    ) -> Result<(Vec<ScannedRow>, Option<(String, String)>), StoreError> {
        let mut q = self
            .client
            .scan()
            .table_name(&self.ledger_table)
            .consistent_read(true)
            .projection_expression("pk, sk, ts")
            .limit(limit);
        if let Some((pk, sk)) = after {
            q = q.set_exclusive_start_key(Some(key(pk, sk)));
        }
        let res = q.send().await.map_err(|e| aws_error("ledger scan", e))?;
        let rows = res
            .items()
            .iter()
            .filter_map(|it| {
                let pk = it.opt_str("pk")?;
                if pk.starts_with(TOMBSTONE_PREFIX) {
                    return None;
                }
                let (seg, _) = pk.rsplit_once('#')?;
                Some(ScannedRow {
                    segment_id: seg.to_string(),
                    device: it.opt_str("sk")?.to_string(),
                    ts_ms: it.opt_num("ts")?,
                })
            })
            .collect();
        let next = res
            .last_evaluated_key()
            .and_then(|k| Some((k.opt_str("pk")?.to_string(), k.opt_str("sk")?.to_string())));
        Ok((rows, next))
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_hash_is_sha256_of_the_device_key() {
        assert_eq!(
            device_hash("MAID-abc"),
            hex::encode(Sha256::digest(b"MAID-abc"))
        );
        assert_eq!(device_hash("MAID-abc").len(), 64);
        assert_ne!(device_hash("MAID-abc"), device_hash("COOKIE-abc"));
    }
}
