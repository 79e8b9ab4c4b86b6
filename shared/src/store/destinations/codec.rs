//! Item layouts and attribute helpers of the destination store.

use super::*;

pub(super) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(super) fn str_list<T: AsRef<str>>(items: &[T]) -> AttributeValue {
    AttributeValue::L(items.iter().map(|i| s(i.as_ref())).collect())
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

pub(super) fn key(pk: String, sk: &str) -> Item {
    HashMap::from([("pk".to_string(), s(pk)), ("sk".to_string(), s(sk))])
}

pub(super) fn sdk_err<E, R>(what: &str, e: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    StoreError::Aws(format!("{what}: {}", DisplayErrorContext(&e)))
}

pub(super) fn get_s(item: &Item, name: &str) -> Result<String, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v.clone()),
        _ => Err(StoreError::Corrupt(format!(
            "attribute {name} missing or not a string"
        ))),
    }
}

pub(super) fn opt_s(item: &Item, name: &str) -> Option<String> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    }
}

pub(super) fn get_num<T: std::str::FromStr>(
    item: &Item,
    name: &str,
) -> Result<Option<T>, StoreError> {
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

pub(super) fn get_list<T>(
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

pub(super) fn get_fees(item: &Item) -> Result<Vec<AudienceFee>, StoreError> {
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

pub(super) fn segment_from(item: &Item) -> Result<Segment, StoreError> {
    Ok(Segment {
        segment_id: get_s(item, "segmentId")?,
        name: get_s(item, "name")?,
        description: opt_s(item, "description").unwrap_or_default(),
        data_export_controls: get_list(item, "dataExportControls", ExportControl::parse)?,
        updated_at: get_s(item, "updatedAt")?,
    })
}

pub(super) fn destination_from(item: &Item) -> Result<Destination, StoreError> {
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

pub(super) fn mapping_from(item: &Item) -> Result<SegmentMapping, StoreError> {
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

pub(super) fn destination_item(d: &Destination, updated_at: &str) -> Item {
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

pub(super) fn mapping_item(m: &SegmentMapping) -> Item {
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

pub(super) fn pending_item(m: &SegmentMapping) -> Item {
    let mut item = key(
        PENDING_PK.to_string(),
        &pending_sk(&m.created_at, &m.destination_id, &m.segment_id),
    );
    item.insert("destinationId".into(), s(&m.destination_id));
    item.insert("segmentId".into(), s(&m.segment_id));
    item
}

/// A transaction cancelled because one of its conditions failed.
pub(super) fn is_cancelled_by_condition<R>(e: &SdkError<TransactWriteItemsError, R>) -> bool {
    match e.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(c)) => c
            .cancellation_reasons()
            .iter()
            .any(|r| r.code() == Some("ConditionalCheckFailed")),
        _ => false,
    }
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
