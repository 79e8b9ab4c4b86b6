//! Item layouts and attribute helpers of the job store.

use super::*;

pub(super) fn aws<E: std::error::Error + Send + Sync + 'static>(
    op: &str,
    e: aws_sdk_dynamodb::error::SdkError<E>,
) -> StoreError {
    StoreError::Aws(format!(
        "jobs {op}: {}",
        aws_sdk_dynamodb::error::DisplayErrorContext(&e)
    ))
}

pub(super) fn get_s(item: &Item, k: &str) -> Option<String> {
    match item.get(k) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    }
}
pub(super) fn get_n<T: std::str::FromStr>(item: &Item, k: &str) -> Option<T> {
    match item.get(k) {
        Some(AttributeValue::N(v)) => v.parse().ok(),
        _ => None,
    }
}
pub(super) fn req_s(item: &Item, k: &str) -> Result<String, StoreError> {
    get_s(item, k).ok_or_else(|| StoreError::Corrupt(format!("job item without {k}")))
}

/// The partition key of a mapping's job.
pub fn job_pk(destination_id: &str, segment_id: &str) -> String {
    format!("JOB#{destination_id}#{segment_id}")
}

pub(super) fn shard_sk(shard: u16) -> String {
    format!("SHARD#{shard:02}")
}

impl JobStore {
    pub(super) fn key(pk: &str, sk: &str) -> Item {
        HashMap::from([("pk".to_string(), s(pk)), ("sk".to_string(), s(sk))])
    }

    pub(super) fn job_from(item: &Item) -> Result<BackfillJob, StoreError> {
        Ok(BackfillJob {
            destination_id: req_s(item, "destinationId")?,
            segment_id: req_s(item, "segmentId")?,
            account_id: req_s(item, "accountId")?,
            audience_id: get_n(item, "audienceId")
                .ok_or_else(|| StoreError::Corrupt("job item without audienceId".into()))?,
            generation: get_n(item, "gen").unwrap_or(0),
            state: JobState::parse(&req_s(item, "state")?)
                .ok_or_else(|| StoreError::Corrupt("job item with an unknown state".into()))?,
            shards: get_n(item, "shards").unwrap_or(0),
            include_removals: matches!(
                item.get("includeRemovals"),
                Some(AttributeValue::Bool(true))
            ),
            created_at: get_s(item, "createdAt").unwrap_or_default(),
            updated_at: get_s(item, "updatedAt").unwrap_or_default(),
            finished_at: get_s(item, "finishedAt"),
            last_error: get_s(item, "lastError"),
            drained: get_n(item, "drained").unwrap_or(0),
            draining: matches!(item.get("draining"), Some(AttributeValue::Bool(true))),
            purpose: JobPurpose::parse(get_s(item, "purpose").as_deref()),
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
            generation: get_n(item, "gen").unwrap_or(0),
            done: get_s(item, "state").as_deref() == Some("done"),
            last_key: get_s(item, "lastKey"),
            sent: get_n(item, "sent").unwrap_or(0),
            batches: get_n(item, "batches").unwrap_or(0),
            lease_owner: get_s(item, "leaseOwner"),
            lease_until_ms: get_n(item, "leaseUntil").unwrap_or(0),
            last_error: get_s(item, "lastError"),
        })
    }

    pub(super) fn fresh_shard(pk: &str, shard: u16, generation: u64, now: &str) -> Item {
        let mut it = Self::key(pk, &shard_sk(shard));
        it.insert("gen".into(), n(generation));
        it.insert("state".into(), s("pending"));
        it.insert("sent".into(), n(0));
        it.insert("batches".into(), n(0));
        it.insert("leaseUntil".into(), n(0));
        it.insert("updatedAt".into(), s(now));
        it
    }
}
