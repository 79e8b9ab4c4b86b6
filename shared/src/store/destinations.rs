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
use super::dynamo::{is_conditional_failure, n, s};
use crate::amazon::AudienceFee;
use crate::domain::export_controls::{ExportControl, ExportLabel};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, ReturnValue, TransactWriteItem};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

pub mod audiences;
pub mod lifecycle;
pub mod migrate;
pub mod purges;

type Item = HashMap<String, AttributeValue>;

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

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn str_list<T: AsRef<str>>(items: &[T]) -> AttributeValue {
    AttributeValue::L(items.iter().map(|i| s(i.as_ref())).collect())
}

fn fee_list(fees: &[AudienceFee]) -> AttributeValue {
    AttributeValue::L(
        fees.iter()
            .map(|f| {
                AttributeValue::M(HashMap::from([
                    ("cpmCents".to_string(), n(f.cpm_cents)),
                    ("currency".to_string(), s(&f.currency)),
                ]))
            })
            .collect(),
    )
}

fn seg_pk(segment_id: &str) -> String {
    format!("SEG#{segment_id}")
}

fn dst_pk(destination_id: &str) -> String {
    format!("DST#{destination_id}")
}

fn map_sk(segment_id: &str) -> String {
    format!("MAP#{segment_id}")
}

fn pending_sk(created_at: &str, destination_id: &str, segment_id: &str) -> String {
    format!("{created_at}#{destination_id}#{segment_id}")
}

fn key(pk: String, sk: &str) -> Item {
    HashMap::from([("pk".to_string(), s(pk)), ("sk".to_string(), s(sk))])
}

fn sdk_err<E, R>(what: &str, e: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    StoreError::Aws(format!("{what}: {}", DisplayErrorContext(&e)))
}

fn get_s(item: &Item, name: &str) -> Result<String, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v.clone()),
        _ => Err(StoreError::Corrupt(format!(
            "attribute {name} missing or not a string"
        ))),
    }
}

fn opt_s(item: &Item, name: &str) -> Option<String> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    }
}

fn get_num<T: std::str::FromStr>(item: &Item, name: &str) -> Result<Option<T>, StoreError> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        // Parsed from the decimal text, so an i64 above 2^53 stays exact.
        Some(AttributeValue::N(v)) => v
            .parse()
            .map(Some)
            .map_err(|_| StoreError::Corrupt(format!("attribute {name} is not a valid number"))),
        _ => Err(StoreError::Corrupt(format!(
            "attribute {name} is not a number"
        ))),
    }
}

fn get_list<T>(
    item: &Item,
    name: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, StoreError> {
    match item.get(name) {
        None => Ok(Vec::new()),
        Some(AttributeValue::L(items)) => items
            .iter()
            .map(|v| match v {
                AttributeValue::S(x) => parse(x).ok_or_else(|| {
                    StoreError::Corrupt(format!("attribute {name} holds unknown value {x:?}"))
                }),
                _ => Err(StoreError::Corrupt(format!(
                    "attribute {name} holds a non-string"
                ))),
            })
            .collect(),
        _ => Err(StoreError::Corrupt(format!(
            "attribute {name} is not a list"
        ))),
    }
}

fn get_fees(item: &Item) -> Result<Vec<AudienceFee>, StoreError> {
    match item.get("audienceFees") {
        None => Ok(Vec::new()),
        Some(AttributeValue::L(items)) => items
            .iter()
            .map(|v| match v {
                AttributeValue::M(m) => Ok(AudienceFee {
                    cpm_cents: get_num(m, "cpmCents")?.ok_or_else(|| {
                        StoreError::Corrupt("audienceFees entry without cpmCents".into())
                    })?,
                    currency: get_s(m, "currency")?,
                }),
                _ => Err(StoreError::Corrupt("audienceFees holds a non-map".into())),
            })
            .collect(),
        _ => Err(StoreError::Corrupt("audienceFees is not a list".into())),
    }
}

fn segment_from(item: &Item) -> Result<Segment, StoreError> {
    Ok(Segment {
        segment_id: get_s(item, "segmentId")?,
        name: get_s(item, "name")?,
        description: opt_s(item, "description").unwrap_or_default(),
        data_export_controls: get_list(item, "dataExportControls", ExportControl::parse)?,
        updated_at: get_s(item, "updatedAt")?,
    })
}

fn destination_from(item: &Item) -> Result<Destination, StoreError> {
    Ok(Destination {
        destination_id: get_s(item, "destinationId")?,
        name: get_s(item, "name")?,
        description: opt_s(item, "description").unwrap_or_default(),
        account_id: get_s(item, "accountId")?,
        data_export_labels: get_list(item, "dataExportLabels", ExportLabel::parse)?,
        data_source_country: get_list(item, "dataSourceCountry", |c| Some(c.to_string()))?,
        ttl_seconds: get_num(item, "ttlSeconds")?.unwrap_or(0),
        created_at: get_s(item, "createdAt")?,
    })
}

fn mapping_from(item: &Item) -> Result<SegmentMapping, StoreError> {
    let status = get_s(item, "status")?;
    Ok(SegmentMapping {
        destination_id: get_s(item, "destinationId")?,
        segment_id: get_s(item, "segmentId")?,
        status: MappingStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown mapping status {status:?}")))?,
        audience_id: get_num(item, "audienceId")?,
        external_audience_id: get_s(item, "externalAudienceId")?,
        audience_name: get_s(item, "audienceName")?,
        audience_fees: get_fees(item)?,
        last_error: opt_s(item, "lastError"),
        blocked_reason: opt_s(item, "blockedReason"),
        created_at: get_s(item, "createdAt")?,
        updated_at: get_s(item, "updatedAt")?,
    })
}

fn destination_item(d: &Destination, updated_at: &str) -> Item {
    let mut item = key(dst_pk(&d.destination_id), "DESTINATION");
    item.insert("gsi1pk".into(), s(DESTINATIONS_GSI_PK));
    item.insert(
        "gsi1sk".into(),
        s(format!("{}#{}", d.created_at, d.destination_id)),
    );
    item.insert("destinationId".into(), s(&d.destination_id));
    item.insert("name".into(), s(&d.name));
    item.insert("description".into(), s(&d.description));
    item.insert("accountId".into(), s(&d.account_id));
    item.insert(
        "dataExportLabels".into(),
        str_list(
            &d.data_export_labels
                .iter()
                .map(|l| l.as_str())
                .collect::<Vec<_>>(),
        ),
    );
    item.insert("dataSourceCountry".into(), str_list(&d.data_source_country));
    item.insert("ttlSeconds".into(), n(d.ttl_seconds));
    item.insert("createdAt".into(), s(&d.created_at));
    item.insert("updatedAt".into(), s(updated_at));
    item
}

fn mapping_item(m: &SegmentMapping) -> Item {
    let mut item = key(dst_pk(&m.destination_id), &map_sk(&m.segment_id));
    item.insert("gsi1pk".into(), s(format!("SEGMAP#{}", m.segment_id)));
    item.insert("gsi1sk".into(), s(dst_pk(&m.destination_id)));
    item.insert("destinationId".into(), s(&m.destination_id));
    item.insert("segmentId".into(), s(&m.segment_id));
    item.insert("status".into(), s(m.status.as_str()));
    if let Some(id) = m.audience_id {
        item.insert("audienceId".into(), n(id));
    }
    item.insert("externalAudienceId".into(), s(&m.external_audience_id));
    item.insert("audienceName".into(), s(&m.audience_name));
    item.insert("audienceFees".into(), fee_list(&m.audience_fees));
    if let Some(e) = &m.last_error {
        item.insert("lastError".into(), s(e));
    }
    if let Some(r) = &m.blocked_reason {
        item.insert("blockedReason".into(), s(r));
    }
    item.insert("createdAt".into(), s(&m.created_at));
    item.insert("updatedAt".into(), s(&m.updated_at));
    item
}

fn pending_item(m: &SegmentMapping) -> Item {
    let mut item = key(
        PENDING_PK.to_string(),
        &pending_sk(&m.created_at, &m.destination_id, &m.segment_id),
    );
    item.insert("destinationId".into(), s(&m.destination_id));
    item.insert("segmentId".into(), s(&m.segment_id));
    item
}

/// A transaction cancelled because one of its conditions failed.
fn is_cancelled_by_condition<R>(e: &SdkError<TransactWriteItemsError, R>) -> bool {
    match e.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(c)) => c
            .cancellation_reasons()
            .iter()
            .any(|r| r.code() == Some("ConditionalCheckFailed")),
        _ => false,
    }
}

/// The statuses as DynamoDB values for an `IN (…)` condition.
fn status_values(statuses: &[MappingStatus]) -> (String, Vec<(String, AttributeValue)>) {
    let names: Vec<String> = (0..statuses.len()).map(|i| format!(":st{i}")).collect();
    let values = names
        .iter()
        .zip(statuses)
        .map(|(k, st)| (k.clone(), s(st.as_str())))
        .collect();
    (names.join(", "), values)
}

impl DestinationStore {
    pub fn new(client: Client, table: String) -> Self {
        Self { client, table }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

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

    // ------------------------------------------------------------ destinations

    /// Creates a destination with its first mappings in one transaction (so a destination never
    /// exists half-mapped), queueing the audience creation of every `Pending` mapping. At most
    /// [`Self::MAX_MAPPINGS_PER_CREATE`] mappings (DynamoDB's 100 items per transaction).
    pub async fn create_destination(
        &self,
        d: &Destination,
        mappings: &[SegmentMapping],
    ) -> Result<(), StoreError> {
        if mappings.len() > Self::MAX_MAPPINGS_PER_CREATE {
            return Err(StoreError::Conflict(format!(
                "at most {} mappings per destination creation",
                Self::MAX_MAPPINGS_PER_CREATE
            )));
        }
        let mut items = vec![
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(destination_item(d, &d.created_at)))
                        .condition_expression("attribute_not_exists(pk)")
                        .build()
                        .map_err(|e| StoreError::Aws(e.to_string()))?,
                )
                .build(),
        ];
        for m in mappings {
            items.push(
                TransactWriteItem::builder()
                    .put(
                        Put::builder()
                            .table_name(&self.table)
                            .set_item(Some(mapping_item(m)))
                            .condition_expression("attribute_not_exists(pk)")
                            .build()
                            .map_err(|e| StoreError::Aws(e.to_string()))?,
                    )
                    .build(),
            );
            if m.status == MappingStatus::Pending {
                items.push(
                    TransactWriteItem::builder()
                        .put(
                            Put::builder()
                                .table_name(&self.table)
                                .set_item(Some(pending_item(m)))
                                .build()
                                .map_err(|e| StoreError::Aws(e.to_string()))?,
                        )
                        .build(),
                );
            }
        }
        self.client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
            .map_err(|e| {
                if is_cancelled_by_condition(&e) {
                    StoreError::Conflict(format!("destination {} already exists", d.destination_id))
                } else {
                    sdk_err("create destination", e)
                }
            })?;
        Ok(())
    }

    /// Mappings one destination-creating transaction can hold (1 destination + 2 items each).
    pub const MAX_MAPPINGS_PER_CREATE: usize = 49;

    pub async fn get_destination(&self, id: &str) -> Result<Option<Destination>, StoreError> {
        self.get_item(dst_pk(id), "DESTINATION")
            .await?
            .map(|i| destination_from(&i))
            .transpose()
    }

    /// Replaces the mutable fields of a destination (description, labels); `name`, `accountId`,
    /// countries, ttl and `createdAt` are kept as stored.
    pub async fn update_destination(
        &self,
        id: &str,
        description: &str,
        labels: &[ExportLabel],
    ) -> Result<Option<Destination>, StoreError> {
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(dst_pk(id), "DESTINATION")))
            .condition_expression("attribute_exists(pk)")
            .update_expression("SET description = :d, dataExportLabels = :l, updatedAt = :u")
            .expression_attribute_values(":d", s(description))
            .expression_attribute_values(
                ":l",
                str_list(&labels.iter().map(|l| l.as_str()).collect::<Vec<_>>()),
            )
            .expression_attribute_values(":u", s(now_rfc3339()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match r {
            Ok(out) => out.attributes.map(|a| destination_from(&a)).transpose(),
            Err(e) if is_conditional_failure(&e) => Ok(None),
            Err(e) => Err(sdk_err("update destination", e)),
        }
    }

    /// Destinations, oldest first, `limit` per page (1–100).
    pub async fn list_destinations(
        &self,
        limit: i32,
        next_token: Option<&str>,
    ) -> Result<DestinationPage, StoreError> {
        let mut q = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(GSI1)
            .key_condition_expression("gsi1pk = :p")
            .expression_attribute_values(":p", s(DESTINATIONS_GSI_PK))
            .limit(limit.clamp(1, 100));
        if let Some(t) = next_token {
            // The token is the last item's gsi1sk, `<createdAt>#<destinationId>`.
            let id = t.rsplit('#').next().unwrap_or_default();
            let mut start = key(dst_pk(id), "DESTINATION");
            start.insert("gsi1pk".into(), s(DESTINATIONS_GSI_PK));
            start.insert("gsi1sk".into(), s(t));
            q = q.set_exclusive_start_key(Some(start));
        }
        let out = q
            .send()
            .await
            .map_err(|e| sdk_err("list destinations", e))?;
        let destinations = out
            .items()
            .iter()
            .map(destination_from)
            .collect::<Result<Vec<_>, _>>()?;
        let next_token = out
            .last_evaluated_key()
            .and_then(|k| k.get("gsi1sk"))
            .and_then(|v| v.as_s().ok())
            .cloned();
        Ok(DestinationPage {
            destinations,
            next_token,
        })
    }

    // ---------------------------------------------------------------- mappings

    pub async fn get_mapping(
        &self,
        destination_id: &str,
        segment_id: &str,
    ) -> Result<Option<SegmentMapping>, StoreError> {
        self.get_item(dst_pk(destination_id), &map_sk(segment_id))
            .await?
            .map(|i| mapping_from(&i))
            .transpose()
    }

    /// Every mapping of one destination (any status), by segment id.
    pub async fn list_mappings(
        &self,
        destination_id: &str,
    ) -> Result<Vec<SegmentMapping>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("pk = :p AND begins_with(sk, :m)")
                .expression_attribute_values(":p", s(dst_pk(destination_id)))
                .expression_attribute_values(":m", s("MAP#"))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| sdk_err("list mappings", e))?;
            for item in page.items() {
                out.push(mapping_from(item)?);
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Every mapping of a segment, across destinations and in any status (callers filter on
    /// `status == Active` before delivering). Read from `gsi1`, so eventually consistent: a
    /// mapping activated a moment ago may be missing, which the backfill it starts covers.
    pub async fn mappings_for_segment(
        &self,
        segment_id: &str,
    ) -> Result<Vec<SegmentMapping>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(GSI1)
                .key_condition_expression("gsi1pk = :p")
                .expression_attribute_values(":p", s(format!("SEGMAP#{segment_id}")))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| sdk_err("mappings for segment", e))?;
            for item in page.items() {
                out.push(mapping_from(item)?);
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Adds a new mapping to an existing destination (conditional: the mapping must not exist),
    /// queueing its audience creation when it is `Pending`. `Ok(false)` if it already exists.
    pub async fn add_mapping(&self, m: &SegmentMapping) -> Result<bool, StoreError> {
        let mut items = vec![
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(mapping_item(m)))
                        .condition_expression("attribute_not_exists(pk)")
                        .build()
                        .map_err(|e| StoreError::Aws(e.to_string()))?,
                )
                .build(),
        ];
        if m.status == MappingStatus::Pending {
            items.push(
                TransactWriteItem::builder()
                    .put(
                        Put::builder()
                            .table_name(&self.table)
                            .set_item(Some(pending_item(m)))
                            .build()
                            .map_err(|e| StoreError::Aws(e.to_string()))?,
                    )
                    .build(),
            );
        }
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_cancelled_by_condition(&e) => Ok(false),
            Err(e) => Err(sdk_err("add mapping", e)),
        }
    }

    /// Moves a mapping to `status` if its current status is one of `from` (any status when `from`
    /// is empty). `blocked_reason` is set when given and removed otherwise; `last_error` is
    /// cleared when `clear_error`. Entering `Pending` queues the audience creation. Returns the
    /// new mapping, or `None` when the mapping is missing or not in one of `from`.
    pub async fn set_mapping_status(
        &self,
        destination_id: &str,
        segment_id: &str,
        from: &[MappingStatus],
        status: MappingStatus,
        blocked_reason: Option<&str>,
        clear_error: bool,
    ) -> Result<Option<SegmentMapping>, StoreError> {
        let mut set = vec!["#status = :new", "updatedAt = :u"];
        let mut remove = vec!["leaseUntil"];
        if blocked_reason.is_some() {
            set.push("blockedReason = :br");
        } else {
            remove.push("blockedReason");
        }
        if clear_error {
            remove.push("lastError");
            remove.push("lastErrorAt");
        }
        let mut condition = "attribute_exists(pk)".to_string();
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(dst_pk(destination_id), &map_sk(segment_id))))
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":new", s(status.as_str()))
            .expression_attribute_values(":u", s(now_rfc3339()))
            .return_values(ReturnValue::AllNew);
        if let Some(r) = blocked_reason {
            req = req.expression_attribute_values(":br", s(r));
        }
        if !from.is_empty() {
            let (names, values) = status_values(from);
            condition.push_str(&format!(" AND #status IN ({names})"));
            for (k, v) in values {
                req = req.expression_attribute_values(k, v);
            }
        }
        let update = format!("SET {} REMOVE {}", set.join(", "), remove.join(", "));
        let r = req
            .update_expression(update)
            .condition_expression(condition)
            .send()
            .await;
        let mapping = match r {
            Ok(out) => match out.attributes {
                Some(a) => mapping_from(&a)?,
                None => return Ok(None),
            },
            Err(e) if is_conditional_failure(&e) => return Ok(None),
            Err(e) => return Err(sdk_err("set mapping status", e)),
        };
        if mapping.status == MappingStatus::Pending {
            self.queue_audience(&mapping).await?;
        }
        Ok(Some(mapping))
    }

    /// Replaces a mapping's audience fees (after Amazon accepted them).
    pub async fn set_mapping_fees(
        &self,
        destination_id: &str,
        segment_id: &str,
        fees: &[AudienceFee],
    ) -> Result<Option<SegmentMapping>, StoreError> {
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(dst_pk(destination_id), &map_sk(segment_id))))
            .condition_expression("attribute_exists(pk)")
            .update_expression("SET audienceFees = :f, updatedAt = :u")
            .expression_attribute_values(":f", fee_list(fees))
            .expression_attribute_values(":u", s(now_rfc3339()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match r {
            Ok(out) => out.attributes.map(|a| mapping_from(&a)).transpose(),
            Err(e) if is_conditional_failure(&e) => Ok(None),
            Err(e) => Err(sdk_err("set mapping fees", e)),
        }
    }

    /// Records the last error of a mapping (shown in `GET /destinations/{id}`); the message must
    /// already be user-facing (`AmazonError::user_message()`), never carry a token or personal data.
    pub async fn set_mapping_error(
        &self,
        destination_id: &str,
        segment_id: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(dst_pk(destination_id), &map_sk(segment_id))))
            .condition_expression("attribute_exists(pk)")
            .update_expression("SET lastError = :e, lastErrorAt = :u, updatedAt = :u")
            .expression_attribute_values(":e", s(message))
            .expression_attribute_values(":u", s(now_rfc3339()))
            .send()
            .await;
        match r {
            Ok(_) => Ok(()),
            // The mapping is gone: nothing to report the error on.
            Err(e) if is_conditional_failure(&e) => Ok(()),
            Err(e) => Err(sdk_err("set mapping error", e)),
        }
    }

    /// Clears a mapping's last error (after a later success).
    pub async fn clear_mapping_error(
        &self,
        destination_id: &str,
        segment_id: &str,
    ) -> Result<(), StoreError> {
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(dst_pk(destination_id), &map_sk(segment_id))))
            .condition_expression("attribute_exists(lastError)")
            .update_expression("SET updatedAt = :u REMOVE lastError, lastErrorAt")
            .expression_attribute_values(":u", s(now_rfc3339()))
            .send()
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Ok(()),
            Err(e) => Err(sdk_err("clear mapping error", e)),
        }
    }

    // ------------------------------------------------------- audience creation

    /// Queues the audience creation of a pending mapping (idempotent).
    pub async fn queue_audience(&self, m: &SegmentMapping) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(pending_item(m)))
            .send()
            .await
            .map_err(|e| sdk_err("queue audience", e))?;
        Ok(())
    }

    /// The oldest queued audience creations.
    pub async fn pending_audiences(&self, limit: i32) -> Result<Vec<PendingAudience>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("pk = :p")
            .expression_attribute_values(":p", s(PENDING_PK))
            .limit(limit.clamp(1, 1000))
            .send()
            .await
            .map_err(|e| sdk_err("pending audiences", e))?;
        out.items()
            .iter()
            .map(|i| {
                Ok(PendingAudience {
                    destination_id: get_s(i, "destinationId")?,
                    segment_id: get_s(i, "segmentId")?,
                    sk: get_s(i, "sk")?,
                })
            })
            .collect()
    }

    /// Drops a queue entry (its mapping got its audience, failed for good, or left `Pending`).
    pub async fn dequeue_audience(&self, p: &PendingAudience) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(PENDING_PK.to_string(), &p.sk)))
            .send()
            .await
            .map_err(|e| sdk_err("dequeue audience", e))?;
        Ok(())
    }

    /// Claims a pending mapping for audience creation for `lease_ms`, so two concurrent
    /// invocations never create two audiences for it. `None`: not pending, or claimed by another
    /// invocation whose lease has not run out.
    pub async fn claim_creation(
        &self,
        destination_id: &str,
        segment_id: &str,
        lease_ms: i64,
    ) -> Result<Option<SegmentMapping>, StoreError> {
        let now = now_ms();
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(dst_pk(destination_id), &map_sk(segment_id))))
            .condition_expression(
                "#status = :pending AND attribute_not_exists(audienceId) \
                 AND (attribute_not_exists(leaseUntil) OR leaseUntil < :now)",
            )
            .update_expression("SET leaseUntil = :until")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":pending", s(MappingStatus::Pending.as_str()))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":until", n(now + lease_ms))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match r {
            Ok(out) => out.attributes.map(|a| mapping_from(&a)).transpose(),
            Err(e) if is_conditional_failure(&e) => Ok(None),
            Err(e) => Err(sdk_err("claim audience creation", e)),
        }
    }

    /// Records the audience Amazon created: sets `audienceId` (always, whatever happened to the
    /// mapping meanwhile, so the audience is never orphaned), and moves a still-`Pending` mapping
    /// to `Active`. Returns the mapping as stored now.
    pub async fn complete_creation(
        &self,
        destination_id: &str,
        segment_id: &str,
        audience_id: i64,
    ) -> Result<SegmentMapping, StoreError> {
        let k = key(dst_pk(destination_id), &map_sk(segment_id));
        let now = now_rfc3339();
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(k.clone()))
            .condition_expression("#status = :pending")
            .update_expression(
                "SET audienceId = :id, #status = :active, updatedAt = :u \
                 REMOVE leaseUntil, lastError, lastErrorAt",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":pending", s(MappingStatus::Pending.as_str()))
            .expression_attribute_values(":active", s(MappingStatus::Active.as_str()))
            .expression_attribute_values(":id", n(audience_id))
            .expression_attribute_values(":u", s(&now))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        let attrs = match r {
            Ok(out) => out.attributes,
            Err(e) if is_conditional_failure(&e) => {
                self.client
                    .update_item()
                    .table_name(&self.table)
                    .set_key(Some(k))
                    .condition_expression("attribute_exists(pk)")
                    .update_expression("SET audienceId = :id, updatedAt = :u REMOVE leaseUntil")
                    .expression_attribute_values(":id", n(audience_id))
                    .expression_attribute_values(":u", s(&now))
                    .return_values(ReturnValue::AllNew)
                    .send()
                    .await
                    .map_err(|e| sdk_err("record audience id", e))?
                    .attributes
            }
            Err(e) => return Err(sdk_err("complete audience creation", e)),
        };
        let attrs =
            attrs.ok_or_else(|| StoreError::Corrupt("update returned no attributes".into()))?;
        mapping_from(&attrs)
    }

    /// Gives back a claim taken by [`Self::claim_creation`] without trying (no metadata slot
    /// in time), so the next run may claim it at once. Only the claimant calls this, while its
    /// lease runs: nobody else can hold the claim meanwhile.
    pub async fn release_creation(
        &self,
        destination_id: &str,
        segment_id: &str,
    ) -> Result<(), StoreError> {
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(dst_pk(destination_id), &map_sk(segment_id))))
            .condition_expression("#status = :pending AND attribute_not_exists(audienceId)")
            .update_expression("REMOVE leaseUntil")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":pending", s(MappingStatus::Pending.as_str()))
            .send()
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Ok(()),
            Err(e) => Err(sdk_err("release audience creation", e)),
        }
    }

    /// Ends a failed creation attempt: records `message` as the last error; a `permanent` failure
    /// moves the mapping to `Failed`, otherwise it stays `Pending` and may be claimed again after
    /// `retry_after_ms`.
    pub async fn fail_creation(
        &self,
        destination_id: &str,
        segment_id: &str,
        message: &str,
        permanent: bool,
        retry_after_ms: i64,
    ) -> Result<(), StoreError> {
        let now = now_rfc3339();
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(dst_pk(destination_id), &map_sk(segment_id))))
            .condition_expression("#status = :pending")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":pending", s(MappingStatus::Pending.as_str()))
            .expression_attribute_values(":e", s(message))
            .expression_attribute_values(":u", s(&now));
        req = if permanent {
            req.update_expression(
                "SET #status = :failed, lastError = :e, lastErrorAt = :u, updatedAt = :u REMOVE leaseUntil",
            )
            .expression_attribute_values(":failed", s(MappingStatus::Failed.as_str()))
        } else {
            req.update_expression(
                "SET lastError = :e, lastErrorAt = :u, updatedAt = :u, leaseUntil = :until",
            )
            .expression_attribute_values(":until", n(now_ms() + retry_after_ms.max(0)))
        };
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Ok(()),
            Err(e) => Err(sdk_err("fail audience creation", e)),
        }
    }

    /// Reserves the next slot for an Amazon metadata call of LwA client `client_id`, shared by
    /// every process, so concurrent invocations together stay at one call per `spacing_ms`.
    /// Returns the slot (epoch milliseconds): the caller starts its call no earlier. Callers also
    /// report the end of each call ([`Self::metadata_call_done`]) so a slow call pushes the next
    /// slot back: spacing then holds at Amazon's end, not only at ours.
    pub async fn reserve_metadata_slot(
        &self,
        client_id: &str,
        spacing_ms: i64,
    ) -> Result<i64, StoreError> {
        self.reserve_metadata_slot_by(client_id, spacing_ms, None)
            .await?
            .ok_or_else(|| StoreError::Conflict("no metadata slot".into()))
    }

    /// Like [`Self::reserve_metadata_slot`], but only a slot no later than `not_after` (epoch
    /// ms): `None`, and nothing reserved, when the next free slot is later (a request working
    /// within its time slice leaves the call to the scheduled run instead of waiting).
    pub async fn reserve_metadata_slot_by(
        &self,
        client_id: &str,
        spacing_ms: i64,
        not_after: Option<i64>,
    ) -> Result<Option<i64>, StoreError> {
        let k = key(format!("RATE#{client_id}"), "METADATA");
        for _ in 0..20 {
            let now = now_ms();
            let current: i64 = match self
                .get_item(format!("RATE#{client_id}"), "METADATA")
                .await?
            {
                Some(item) => get_num(&item, "nextAt")?.unwrap_or(0),
                None => 0,
            };
            let slot = current.max(now);
            if not_after.is_some_and(|t| slot > t) {
                return Ok(None);
            }
            let mut req = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(k.clone()))
                .update_expression("SET nextAt = :next")
                .expression_attribute_values(":next", n(slot + spacing_ms));
            req = if current == 0 {
                req.condition_expression("attribute_not_exists(nextAt)")
            } else {
                req.condition_expression("nextAt = :cur")
                    .expression_attribute_values(":cur", n(current))
            };
            match req.send().await {
                Ok(_) => return Ok(Some(slot)),
                // Another process took this slot: read again and take the next one.
                Err(e) if is_conditional_failure(&e) => continue,
                Err(e) => return Err(sdk_err("reserve metadata slot", e)),
            }
        }
        Err(StoreError::Conflict(
            "could not reserve an Amazon metadata slot".into(),
        ))
    }

    /// Records that a metadata call of `client_id` just ended: no call starts before
    /// `now + spacing_ms`. Every call reaches Amazon before it ends, so calls arrive at least
    /// `spacing_ms` apart whatever their latency.
    pub async fn metadata_call_done(
        &self,
        client_id: &str,
        spacing_ms: i64,
    ) -> Result<(), StoreError> {
        let next = now_ms() + spacing_ms;
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(format!("RATE#{client_id}"), "METADATA")))
            .condition_expression("attribute_not_exists(nextAt) OR nextAt < :next")
            .update_expression("SET nextAt = :next")
            .expression_attribute_values(":next", n(next))
            .send()
            .await;
        match r {
            Ok(_) => Ok(()),
            // A later slot is already reserved.
            Err(e) if is_conditional_failure(&e) => Ok(()),
            Err(e) => Err(sdk_err("record metadata call", e)),
        }
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
