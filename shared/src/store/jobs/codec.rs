//! Keys and item encoding and decoding of the job store (layouts in the module doc).

use super::{ACTIVE_JOBS, BackfillJob, Generation, JobPurpose, JobState, ShardState};
use crate::store::StoreError;
use crate::store::dynamo::{key, n, s};
use crate::store::item::{Item, ItemExt};
use aws_sdk_dynamodb::types::AttributeValue;

/// The partition key of a mapping's job.
pub fn job_pk(destination_id: &str, segment_id: &str) -> String {
    format!("JOB#{destination_id}#{segment_id}")
}

pub(super) fn shard_sk(shard: u16) -> String {
    format!("SHARD#{shard:02}")
}

/// The key of a mapping's job item.
pub(super) fn job_key(destination_id: &str, segment_id: &str) -> Item {
    key(job_pk(destination_id, segment_id), "JOB")
}

/// The key of one shard of a mapping's job.
pub(super) fn shard_key(destination_id: &str, segment_id: &str, shard: u16) -> Item {
    key(job_pk(destination_id, segment_id), shard_sk(shard))
}

pub(super) fn req_s(item: &Item, k: &str) -> Result<String, StoreError> {
    item.opt_s(k)
        .ok_or_else(|| StoreError::Corrupt(format!("job item without {k}")))
}

pub(super) fn job_from(item: &Item) -> Result<BackfillJob, StoreError> {
    Ok(BackfillJob {
        destination_id: req_s(item, "destinationId")?,
        segment_id: req_s(item, "segmentId")?,
        account_id: req_s(item, "accountId")?,
        audience_id: item
            .opt_num("audienceId")
            .ok_or_else(|| StoreError::Corrupt("job item without audienceId".into()))?,
        generation: item.opt_num("gen").unwrap_or(0),
        state: JobState::parse(&req_s(item, "state")?)
            .ok_or_else(|| StoreError::Corrupt("job item with an unknown state".into()))?,
        shards: item.opt_num("shards").unwrap_or(0),
        include_removals: item.flag("includeRemovals"),
        created_at: item.opt_s("createdAt").unwrap_or_default(),
        updated_at: item.opt_s("updatedAt").unwrap_or_default(),
        finished_at: item.opt_s("finishedAt"),
        last_error: item.opt_s("lastError"),
        drained: item.opt_num("drained").unwrap_or(0),
        draining: item.flag("draining"),
        purpose: JobPurpose::parse(item.opt_str("purpose")),
    })
}

pub(super) fn shard_from(item: &Item) -> Result<ShardState, StoreError> {
    let sk = req_s(item, "sk")?;
    let shard = sk
        .strip_prefix("SHARD#")
        .and_then(|x| x.parse().ok())
        .ok_or_else(|| StoreError::Corrupt("shard item with a bad sort key".into()))?;
    Ok(ShardState {
        shard,
        generation: item.opt_num("gen").unwrap_or(0),
        done: item.opt_str("state") == Some("done"),
        last_key: item.opt_s("lastKey"),
        sent: item.opt_num("sent").unwrap_or(0),
        batches: item.opt_num("batches").unwrap_or(0),
        lease_owner: item.opt_s("leaseOwner"),
        lease_until_ms: item.opt_num("leaseUntil").unwrap_or(0),
        last_error: item.opt_s("lastError"),
    })
}

pub(super) fn fresh_shard(pk: &str, shard: u16, generation: u64, now: &str) -> Item {
    let mut it = key(pk, shard_sk(shard));
    it.insert("gen".into(), n(generation));
    it.insert("state".into(), s("pending"));
    it.insert("sent".into(), n(0));
    it.insert("batches".into(), n(0));
    it.insert("leaseUntil".into(), n(0));
    it.insert("updatedAt".into(), s(now));
    it
}

/// The job item of generation `generation`, running, listed in the active index.
pub(super) fn job_item(g: &Generation<'_>, generation: u64, now: &str) -> Item {
    let (destination_id, segment_id) = (g.destination_id, g.segment_id);
    let mut job = key(job_pk(destination_id, segment_id), "JOB");
    job.insert("destinationId".into(), s(destination_id));
    job.insert("segmentId".into(), s(segment_id));
    job.insert("accountId".into(), s(g.account_id));
    job.insert("audienceId".into(), n(g.audience_id));
    job.insert("gen".into(), n(generation));
    job.insert("state".into(), s("running"));
    job.insert("shards".into(), n(g.shards));
    job.insert(
        "includeRemovals".into(),
        AttributeValue::Bool(g.include_removals),
    );
    job.insert("purpose".into(), s(g.purpose.as_str()));
    job.insert("createdAt".into(), s(now));
    job.insert("updatedAt".into(), s(now));
    job.insert("drained".into(), n(0));
    job.insert("draining".into(), AttributeValue::Bool(false));
    job.insert("leaseUntil".into(), n(0));
    job.insert("gsi1pk".into(), s(ACTIVE_JOBS));
    job.insert(
        "gsi1sk".into(),
        s(format!("{now}#{destination_id}#{segment_id}")),
    );
    job
}
