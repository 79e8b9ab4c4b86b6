//! Purges and adoption claims, in `DESTINATIONS_TABLE` (used by `export::purge` and
//! `export::adopt`):
//!
//! | item | pk | sk | attributes |
//! |---|---|---|---|
//! | audience claim | `AUDIENCE#<audienceId>` | `CLAIM` | `destinationId, segmentId, claimedAt`: the one mapping an adopted audience backs |
//! | purge | `PURGES` | `<destinationId>#<segmentId>` | `destinationId, segmentId, accountId, audienceId (N), requestedAt (N, epoch ms), state (waiting/running/done), gen (N)?, deleteDestination (BOOL)` |

use super::{DestinationStore, Item, MappingStatus, StoreError, key, n, now_rfc3339, s, sdk_err};
use crate::store::dynamo::conditional;
use crate::store::item::ItemExt;
use aws_sdk_dynamodb::types::AttributeValue;

const PURGE_PK: &str = "PURGES";

fn sk(destination_id: &str, segment_id: &str) -> String {
    format!("{destination_id}#{segment_id}")
}

/// Where a purge stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PurgeState {
    /// Waiting for earlier sends to settle before its remove patches start.
    Waiting,
    Running,
    Done,
}

impl PurgeState {
    pub fn as_str(&self) -> &'static str {
        match self {
            PurgeState::Waiting => "waiting",
            PurgeState::Running => "running",
            PurgeState::Done => "done",
        }
    }
}

/// A requested purge of one mapping's audience (`?purge=true`).
#[derive(Clone, Debug, PartialEq)]
pub struct PurgeEntry {
    pub destination_id: String,
    pub segment_id: String,
    pub account_id: String,
    pub audience_id: i64,
    pub requested_ms: i64,
    pub state: PurgeState,
    /// The job generation running the purge.
    pub generation: Option<u64>,
    /// The destination is deleted once every purge of it is done.
    pub delete_destination: bool,
}

fn purge_from(item: &Item) -> Result<PurgeEntry, StoreError> {
    let state = match item.opt_str("state") {
        Some("running") => PurgeState::Running,
        Some("done") => PurgeState::Done,
        _ => PurgeState::Waiting,
    };
    Ok(PurgeEntry {
        destination_id: item.req_s("destinationId")?,
        segment_id: item.req_s("segmentId")?,
        account_id: item.req_s("accountId")?,
        audience_id: item
            .num("audienceId")?
            .ok_or_else(|| StoreError::Corrupt("purge without audienceId".into()))?,
        requested_ms: item.num("requestedAt")?.unwrap_or(0),
        state,
        generation: item.num("gen")?,
        delete_destination: item.flag("deleteDestination"),
    })
}

impl DestinationStore {
    // ------------------------------------------------------------------ claims

    /// Claims Amazon audience `audience_id` for one mapping (an audience backs at most one
    /// mapping). `Some((destinationId, segmentId))` of the mapping that holds it; a claim whose
    /// mapping is gone, removed or on another audience is taken over.
    pub async fn claim_audience(
        &self,
        audience_id: i64,
        destination_id: &str,
        segment_id: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let pk = format!("AUDIENCE#{audience_id}");
        for _ in 0..3 {
            let mut item = key(pk.clone(), "CLAIM");
            item.insert("destinationId".into(), s(destination_id));
            item.insert("segmentId".into(), s(segment_id));
            item.insert("claimedAt".into(), s(now_rfc3339()));
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item));
            let owner = match self.get_item(pk.clone(), "CLAIM").await? {
                None => put.condition_expression("attribute_not_exists(pk)"),
                Some(cur) => {
                    let (od, os) = (cur.req_s("destinationId")?, cur.req_s("segmentId")?);
                    let mine = od == destination_id && os == segment_id;
                    if !mine
                        && self.get_mapping(&od, &os).await?.is_some_and(|m| {
                            m.status != MappingStatus::Removed && m.audience_id == Some(audience_id)
                        })
                    {
                        return Ok(Some((od, os)));
                    }
                    put.condition_expression("destinationId = :d AND segmentId = :s")
                        .expression_attribute_values(":d", s(od))
                        .expression_attribute_values(":s", s(os))
                }
            };
            if conditional(owner.send().await, "claim audience")?.is_some() {
                return Ok(None);
            }
        }
        Err(StoreError::Conflict(format!(
            "audience {audience_id} is being claimed concurrently"
        )))
    }

    // ------------------------------------------------------------------ purges

    /// Records a purge request (replacing an earlier one of the same mapping).
    pub async fn put_purge(&self, p: &PurgeEntry) -> Result<(), StoreError> {
        let mut item = key(PURGE_PK.to_string(), &sk(&p.destination_id, &p.segment_id));
        item.insert("destinationId".into(), s(&p.destination_id));
        item.insert("segmentId".into(), s(&p.segment_id));
        item.insert("accountId".into(), s(&p.account_id));
        item.insert("audienceId".into(), n(p.audience_id));
        item.insert("requestedAt".into(), n(p.requested_ms));
        item.insert("state".into(), s(p.state.as_str()));
        if let Some(g) = p.generation {
            item.insert("gen".into(), n(g));
        }
        item.insert(
            "deleteDestination".into(),
            AttributeValue::Bool(p.delete_destination),
        );
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| sdk_err("put purge", e))?;
        Ok(())
    }

    /// Every purge (the whole partition).
    pub async fn purges(&self) -> Result<Vec<PurgeEntry>, StoreError> {
        let items = self.query_partition(PURGE_PK).await?;
        items.iter().map(purge_from).collect()
    }

    pub async fn purge_of(
        &self,
        destination_id: &str,
        segment_id: &str,
    ) -> Result<Option<PurgeEntry>, StoreError> {
        self.get_item(PURGE_PK.to_string(), &sk(destination_id, segment_id))
            .await?
            .map(|i| purge_from(&i))
            .transpose()
    }

    pub async fn delete_purge(
        &self,
        destination_id: &str,
        segment_id: &str,
    ) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(
                PURGE_PK.to_string(),
                &sk(destination_id, segment_id),
            )))
            .send()
            .await
            .map_err(|e| sdk_err("delete purge", e))?;
        Ok(())
    }
}
