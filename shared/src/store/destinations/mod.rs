//! `DestinationStore`: the `DESTINATIONS_TABLE` adapter for the metadata side of segment export:
//! segments, destinations, segment mappings (one Data Provider audience each), the queue of
//! audiences still to create, and the cross-process pacing of Amazon's metadata calls.
//!
//! Item layouts (table keys `pk`, `sk`; GSI `gsi1` on `gsi1pk`, `gsi1sk`, projection ALL):
//!
//! | item | pk | sk | gsi1pk / gsi1sk | attributes |
//! |---|---|---|---|---|
//! | segment | `SEG#<segmentId>` | `SEGMENT` | `SEGMENTS` / `<segmentId>` | `segmentId, name, description, dataExportControls (L of S), updatedAt` |
//! | destination | `DST#<destinationId>` | `DESTINATION` | `DESTINATIONS` / `<createdAt>#<destinationId>` | `destinationId, name, description, accountId, dataExportLabels (L of S), dataSourceCountry (L of S), ttlSeconds (N), createdAt, updatedAt` |
//! | mapping | `DST#<destinationId>` | `MAP#<segmentId>` | `SEGMAP#<segmentId>` / `DST#<destinationId>` | `destinationId, segmentId, status, audienceId (N)?, externalAudienceId, audienceName, audienceFees (L of M{cpmCents N, currency S}), lastError?, lastErrorAt?, blockedReason?, leaseUntil (N, epoch ms)?, createdAt, updatedAt` |
//! | audience to create | `PENDING#AUDIENCE` | `<mapping createdAt>#<destinationId>#<segmentId>` | — | `destinationId, segmentId` |
//! | metadata pacing | `RATE#<LwA client id>` | `METADATA` | — | `nextAt (N, epoch ms)` |
//!
//! Audience upkeep (`AUDSTATE`) is laid out in [`audiences`], purges and adoption claims
//! (`PURGES`, `AUDIENCE#<id>`) in [`purges`]; segment listing and
//! destination deletion in [`lifecycle`] (a destination being deleted also has `deleting`).
//!
//! Other owners keep their items in this table under other `pk` prefixes (the backfill jobs of
//! `store::jobs` use `JOB#…`); the prefixes above are reserved for this module.
//!
//! Audience ids exceed 2^53: they are stored as DynamoDB numbers and parsed straight into `i64`,
//! never through a float. A mapping's `audienceName` and `externalAudienceId` are written once,
//! when the mapping is first created, and never change (Amazon cannot rename an audience).
//!
//! Updates that race (the backfill task completing an audience creation while a request blocks or
//! removes the mapping) are field-level `UpdateItem`s with conditions, never read-modify-write of
//! the whole item, so no writer can lose another's `audienceId`.

use super::StoreError;
pub use super::dynamo::now_rfc3339;
use super::dynamo::{aws_error as sdk_err, n, s, str_list};
use super::item::Item;
use crate::domain::audience_fee::AudienceFee;
use crate::domain::export_controls::{ExportControl, ExportLabel};
use aws_sdk_dynamodb::Client;
use serde::{Deserialize, Serialize};

pub mod audiences;
pub mod lifecycle;
pub mod migrate;
pub mod purges;

mod codec;
mod creation;
mod mappings;
mod pacing;
mod records;
mod segments;

use codec::{
    destination_from, dst_pk, get_list, get_num, get_s, key, map_sk, mapping_from, mapping_key,
    opt_s, pending_sk, seg_pk, segment_from,
};

const PENDING_PK: &str = "PENDING#AUDIENCE";
const DESTINATIONS_GSI_PK: &str = "DESTINATIONS";
const GSI1: &str = "gsi1";

/// A segment registered by `PUT /segments/{segmentId}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Segment {
    pub segment_id: String,
    pub name: String,
    pub description: String,
    pub data_export_controls: Vec<ExportControl>,
    /// RFC 3339.
    pub updated_at: String,
}

/// A destination: one advertiser account plus what it may do with the data (its labels).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    pub destination_id: String,
    /// Never changes after creation (Audience Manager's rule).
    pub name: String,
    pub description: String,
    pub account_id: String,
    pub data_export_labels: Vec<ExportLabel>,
    pub data_source_country: Vec<String>,
    pub ttl_seconds: u64,
    /// RFC 3339.
    pub created_at: String,
}

/// Where a mapping stands. Only `Active` mappings receive deliveries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MappingStatus {
    /// The audience is still to be created at Amazon (1 request/s).
    Pending,
    /// The audience exists; deliveries flow.
    Active,
    /// A data export label of the destination conflicts with a control of the segment.
    Blocked,
    /// Amazon refused to create the audience; `last_error` says why.
    Failed,
    /// Removed by the user; no deliveries.
    Removed,
}

impl MappingStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            MappingStatus::Pending => "pending",
            MappingStatus::Active => "active",
            MappingStatus::Blocked => "blocked",
            MappingStatus::Failed => "failed",
            MappingStatus::Removed => "removed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(MappingStatus::Pending),
            "active" => Some(MappingStatus::Active),
            "blocked" => Some(MappingStatus::Blocked),
            "failed" => Some(MappingStatus::Failed),
            "removed" => Some(MappingStatus::Removed),
            _ => None,
        }
    }
}

/// One segment mapped to one destination, i.e. one Data Provider audience.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentMapping {
    pub destination_id: String,
    pub segment_id: String,
    pub status: MappingStatus,
    /// Amazon's audience id (> 2^53: always an integer, never a float).
    pub audience_id: Option<i64>,
    pub external_audience_id: String,
    pub audience_name: String,
    pub audience_fees: Vec<AudienceFee>,
    /// The last Amazon (or adsync) error for this mapping, in the contract's wording.
    pub last_error: Option<String>,
    /// Why the mapping is blocked (names the label and the control).
    pub blocked_reason: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// A queued audience creation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingAudience {
    pub destination_id: String,
    pub segment_id: String,
    sk: String,
}

impl PendingAudience {
    /// The queue entry of a pending mapping (as `create_destination`, `add_mapping` and
    /// `set_mapping_status` wrote it), so the request that queued it can work it at once without
    /// reading the queue.
    pub fn of(m: &SegmentMapping) -> Self {
        Self {
            destination_id: m.destination_id.clone(),
            segment_id: m.segment_id.clone(),
            sk: pending_sk(&m.created_at, &m.destination_id, &m.segment_id),
        }
    }
}

/// One page of destinations.
#[derive(Clone, Debug)]
pub struct DestinationPage {
    pub destinations: Vec<Destination>,
    /// Opaque; pass back to get the next page.
    pub next_token: Option<String>,
}

/// The adapter.
#[derive(Clone, Debug)]
pub struct DestinationStore {
    client: Client,
    table: String,
}

impl DestinationStore {
    pub fn new(client: Client, table: String) -> Self {
        Self { client, table }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    async fn get_item(&self, pk: String, sk: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_err("get item", e))?;
        Ok(out.item)
    }
}
