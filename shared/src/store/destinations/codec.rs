//! Keys, item encoding and decoding of the destination store (layouts in the module doc).

use super::{DESTINATIONS_GSI_PK, Destination, MappingStatus, PENDING_PK, Segment, SegmentMapping};
use crate::domain::audience_fee::AudienceFee;
use crate::domain::export_controls::{ExportControl, ExportLabel};
use crate::store::StoreError;
use crate::store::dynamo::{self, n, s, str_list};
use crate::store::item::{Item, ItemExt};
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use std::collections::HashMap;

// The free-function spellings `audiences` reads and keys items with.

pub(super) fn key(pk: String, sk: &str) -> Item {
    dynamo::key(pk, sk)
}

pub(super) fn get_s(item: &Item, name: &str) -> Result<String, StoreError> {
    item.req_s(name)
}

pub(super) fn opt_s(item: &Item, name: &str) -> Option<String> {
    item.opt_s(name)
}

pub(super) fn get_num<T: std::str::FromStr>(
    item: &Item,
    name: &str,
) -> Result<Option<T>, StoreError> {
    item.num(name)
}

pub(super) fn get_list<T>(
    item: &Item,
    name: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, StoreError> {
    item.list(name, parse)
}

pub(super) fn fee_list(fees: &[AudienceFee]) -> AttributeValue {
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

pub(super) fn seg_pk(segment_id: &str) -> String {
    format!("SEG#{segment_id}")
}

pub(super) fn dst_pk(destination_id: &str) -> String {
    format!("DST#{destination_id}")
}

pub(super) fn map_sk(segment_id: &str) -> String {
    format!("MAP#{segment_id}")
}

pub(super) fn pending_sk(created_at: &str, destination_id: &str, segment_id: &str) -> String {
    format!("{created_at}#{destination_id}#{segment_id}")
}

/// The key of a mapping.
pub(super) fn mapping_key(destination_id: &str, segment_id: &str) -> Item {
    key(dst_pk(destination_id), &map_sk(segment_id))
}

fn get_fees(item: &Item) -> Result<Vec<AudienceFee>, StoreError> {
    match item.get("audienceFees") {
        None => Ok(Vec::new()),
        Some(AttributeValue::L(items)) => items
            .iter()
            .map(|v| match v {
                AttributeValue::M(m) => Ok(AudienceFee {
                    cpm_cents: m.num("cpmCents")?.ok_or_else(|| {
                        StoreError::Corrupt("audienceFees entry without cpmCents".into())
                    })?,
                    currency: m.req_s("currency")?,
                }),
                _ => Err(StoreError::Corrupt("audienceFees holds a non-map".into())),
            })
            .collect(),
        _ => Err(StoreError::Corrupt("audienceFees is not a list".into())),
    }
}

pub(super) fn segment_from(item: &Item) -> Result<Segment, StoreError> {
    Ok(Segment {
        segment_id: item.req_s("segmentId")?,
        name: item.req_s("name")?,
        description: item.opt_s("description").unwrap_or_default(),
        data_export_controls: item.list("dataExportControls", ExportControl::parse)?,
        updated_at: item.req_s("updatedAt")?,
    })
}

pub(super) fn segment_item(seg: &Segment) -> Item {
    let mut item = key(seg_pk(&seg.segment_id), "SEGMENT");
    item.insert("gsi1pk".into(), s(super::lifecycle::SEGMENTS_GSI_PK));
    item.insert("gsi1sk".into(), s(&seg.segment_id));
    item.insert("segmentId".into(), s(&seg.segment_id));
    item.insert("name".into(), s(&seg.name));
    item.insert("description".into(), s(&seg.description));
    let controls: Vec<_> = seg
        .data_export_controls
        .iter()
        .map(|c| c.as_str())
        .collect();
    item.insert("dataExportControls".into(), str_list(&controls));
    item.insert("updatedAt".into(), s(&seg.updated_at));
    item
}

pub(super) fn destination_from(item: &Item) -> Result<Destination, StoreError> {
    Ok(Destination {
        destination_id: item.req_s("destinationId")?,
        name: item.req_s("name")?,
        description: item.opt_s("description").unwrap_or_default(),
        account_id: item.req_s("accountId")?,
        data_export_labels: item.list("dataExportLabels", ExportLabel::parse)?,
        data_source_country: item.list("dataSourceCountry", |c| Some(c.to_string()))?,
        ttl_seconds: item.num("ttlSeconds")?.unwrap_or(0),
        created_at: item.req_s("createdAt")?,
    })
}

pub(super) fn mapping_from(item: &Item) -> Result<SegmentMapping, StoreError> {
    let status = item.req_s("status")?;
    Ok(SegmentMapping {
        destination_id: item.req_s("destinationId")?,
        segment_id: item.req_s("segmentId")?,
        status: MappingStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown mapping status {status:?}")))?,
        audience_id: item.num("audienceId")?,
        external_audience_id: item.req_s("externalAudienceId")?,
        audience_name: item.req_s("audienceName")?,
        audience_fees: get_fees(item)?,
        last_error: item.opt_s("lastError"),
        blocked_reason: item.opt_s("blockedReason"),
        created_at: item.req_s("createdAt")?,
        updated_at: item.req_s("updatedAt")?,
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
    let labels: Vec<_> = d.data_export_labels.iter().map(|l| l.as_str()).collect();
    item.insert("dataExportLabels".into(), str_list(&labels));
    item.insert("dataSourceCountry".into(), str_list(&d.data_source_country));
    item.insert("ttlSeconds".into(), n(d.ttl_seconds));
    item.insert("createdAt".into(), s(&d.created_at));
    item.insert("updatedAt".into(), s(updated_at));
    item
}

fn mapping_item(m: &SegmentMapping) -> Item {
    let mut item = mapping_key(&m.destination_id, &m.segment_id);
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

pub(super) fn pending_item(m: &SegmentMapping) -> Item {
    let mut item = key(
        PENDING_PK.to_string(),
        &pending_sk(&m.created_at, &m.destination_id, &m.segment_id),
    );
    item.insert("destinationId".into(), s(&m.destination_id));
    item.insert("segmentId".into(), s(&m.segment_id));
    item
}

/// The statuses as DynamoDB values for an `IN (…)` condition.
pub(super) fn status_values(statuses: &[MappingStatus]) -> (String, Vec<(String, AttributeValue)>) {
    let names: Vec<String> = (0..statuses.len()).map(|i| format!(":st{i}")).collect();
    let values = names
        .iter()
        .zip(statuses)
        .map(|(k, st)| (k.clone(), s(st.as_str())))
        .collect();
    (names.join(", "), values)
}

/// A `Put` of `item` in a transaction, under `condition` when given.
fn tx_put(
    table: &str,
    item: Item,
    condition: Option<&str>,
) -> Result<TransactWriteItem, StoreError> {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .set_condition_expression(condition.map(str::to_string))
        .build()
        .map_err(|e| StoreError::Aws(e.to_string()))?;
    Ok(TransactWriteItem::builder().put(put).build())
}

/// The transaction items of a new mapping: the mapping (which must not exist yet) and, when it
/// is `Pending`, its entry in the queue of audiences to create.
pub(super) fn new_mapping_writes(
    table: &str,
    m: &SegmentMapping,
) -> Result<Vec<TransactWriteItem>, StoreError> {
    let mut items = vec![tx_put(
        table,
        mapping_item(m),
        Some("attribute_not_exists(pk)"),
    )?];
    if m.status == MappingStatus::Pending {
        items.push(tx_put(table, pending_item(m), None)?);
    }
    Ok(items)
}

/// The transaction item of a new destination (which must not exist yet).
pub(super) fn new_destination_write(
    table: &str,
    d: &Destination,
) -> Result<TransactWriteItem, StoreError> {
    tx_put(
        table,
        destination_item(d, &d.created_at),
        Some("attribute_not_exists(pk)"),
    )
}
