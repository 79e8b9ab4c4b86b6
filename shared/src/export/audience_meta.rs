//! Audience metadata kept true at Amazon by the schedule, inside the shared 1 request/s metadata
//! budget (the same DynamoDB slots as audience creation, `destinations::pace_by`):
//!
//! - **Settings**: `PATCH /destinations/{id}` may change `description`, `ttlSeconds` and
//!   `dataSourceCountry` ([`parse_settings`], [`apply_settings`]); every audience of the
//!   destination is then marked with a new settings version, and the scheduled run sends the full
//!   updatable metadata with `PUT /v2/dp/audiencemetadata/{id}` (description, ttl, countries,
//!   fees; never `name`). An audience's description is its segment's until a `PATCH` names a
//!   `description`: from then on every audience of the destination gets that one. The mapping
//!   view shows what is pending, what Amazon took, and Amazon's refusal.
//! - **Size and match rate**: `GET /v2/dp/audiencemetadata/{id}` every `AUDIENCE_SIZE_INTERVAL_SECS`
//!   (default 6 h) per audience; `metadata.audienceSize` is stored as `audienceSize`
//!   (`receivedRecordSize`), `matchedSize` (`matchedRecordSize`) and `matchRate`, with
//!   `measuredAt`. A `GET /destinations/{id}` never calls Amazon.
//!
//! Settings go first (a user waits for them), then size reads, oldest due first; the run stops
//! taking slots at its metadata deadline.

use super::ExportCtx;
use super::destinations::{audience_description, invalid, pace_by, paced_call_done};
use crate::amazon::{AmazonError, AudienceUpdate};
use crate::store::StoreError;
use crate::store::accounts::{AccountStatus, IntegratedAccount};
use crate::store::destinations::audiences::{AudienceState, MeasuredSize};
use crate::store::destinations::{Destination, MappingStatus, now_rfc3339};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::time::Duration;

pub use crate::settings::options::DEFAULT_SIZE_INTERVAL;
/// After a failed size read.
const SIZE_RETRY_MS: i64 = 5 * 60 * 1000;

/// What one metadata pass did.
#[derive(Debug, Default, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetaSummary {
    pub settings_applied: u32,
    pub settings_failed: u32,
    pub sizes_read: u32,
    pub size_failures: u32,
    /// Work left because the metadata share of the run was spent.
    pub left_for_next_run: bool,
}

/// The audience settings a `PATCH /destinations/{id}` changes.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingsChange {
    pub ttl: u64,
    pub countries: Vec<String>,
    /// A new description for every audience of the destination (`None`: unchanged).
    pub description: Option<String>,
}

/// `ttlSeconds` / `dataSourceCountry` / `description` of a `PATCH /destinations/{id}` body:
/// `Some` when any is given (the others keep their value), validated like at creation.
pub fn parse_settings(
    obj: &Map<String, Value>,
    d: &Destination,
) -> crate::http::ApiResult<Option<SettingsChange>> {
    let description = match obj.get("description") {
        // Its length is checked with the rest of the PATCH body.
        Some(Value::String(s)) => Some(s.trim().to_string()),
        _ => None,
    };
    if !obj.contains_key("ttlSeconds") && !obj.contains_key("dataSourceCountry") {
        return Ok(description.map(|description| SettingsChange {
            ttl: d.ttl_seconds,
            countries: d.data_source_country.clone(),
            description: Some(description),
        }));
    }
    let ttl = match obj.get("ttlSeconds") {
        None => d.ttl_seconds,
        Some(v) => v
            .as_u64()
            .filter(|t| *t <= super::destinations::MAX_TTL_SECONDS)
            .ok_or_else(|| {
                invalid(
                    "ttlSeconds",
                    format!(
                        "ttlSeconds must be an integer from 0 to {}",
                        super::destinations::MAX_TTL_SECONDS
                    ),
                )
            })?,
    };
    let countries = match obj.get("dataSourceCountry") {
        None => d.data_source_country.clone(),
        Some(v) => super::destinations::parse_countries(v)?,
    };
    Ok(Some(SettingsChange {
        ttl,
        countries,
        description,
    }))
}

/// Stores new settings and marks every audience of the destination for a `PUT` (nothing when
/// they are what Amazon already has from adsync).
pub async fn apply_settings(
    ctx: &ExportCtx,
    d: &Destination,
    change: &SettingsChange,
) -> Result<(), StoreError> {
    let id = &d.destination_id;
    let new_description = match &change.description {
        Some(desc) => ctx.destinations.audience_description(id).await?.as_ref() != Some(desc),
        None => false,
    };
    let same = change.ttl == d.ttl_seconds && change.countries == d.data_source_country;
    if same && !new_description {
        return Ok(());
    }
    if !same {
        ctx.destinations
            .update_destination_settings(id, change.ttl, &change.countries)
            .await?;
    }
    if let (true, Some(desc)) = (new_description, &change.description) {
        ctx.destinations.set_audience_description(id, desc).await?;
    }
    let version = chrono::Utc::now().timestamp_millis();
    for m in ctx.destinations.list_mappings(id).await? {
        if m.audience_id.is_some() && m.status != MappingStatus::Removed {
            ctx.destinations
                .bump_settings(id, &m.segment_id, version)
                .await?;
        }
    }
    Ok(())
}

/// The scheduled metadata work: pending settings, then due size reads, until `deadline_ms`.
pub async fn run_metadata(
    ctx: &ExportCtx,
    deadline_ms: i64,
    size_interval: Duration,
    now_ms: i64,
) -> Result<MetaSummary, StoreError> {
    let mut summary = MetaSummary::default();
    let states = ctx.destinations.audience_states().await?;
    let mut settings: Vec<&AudienceState> =
        states.iter().filter(|s| s.settings_pending()).collect();
    settings.sort_by_key(|s| s.settings_version);
    let mut sizes: Vec<&AudienceState> =
        states.iter().filter(|s| s.size_due_ms <= now_ms).collect();
    sizes.sort_by_key(|s| s.size_due_ms);
    let mut accounts: HashMap<String, Option<IntegratedAccount>> = HashMap::new();
    let work = settings
        .into_iter()
        .map(|s| (s, true))
        .chain(sizes.into_iter().map(|s| (s, false)));
    for (st, is_settings) in work {
        if !accounts.contains_key(&st.account_id) {
            let a = ctx.accounts.get_account(&st.account_id).await?;
            accounts.insert(st.account_id.clone(), a);
        }
        let Some(account) = accounts[&st.account_id]
            .as_ref()
            .filter(|a| a.status == AccountStatus::Active)
        else {
            continue;
        };
        let live = ctx
            .destinations
            .get_mapping(&st.destination_id, &st.segment_id)
            .await?
            .filter(|m| m.status == MappingStatus::Active && m.audience_id == Some(st.audience_id));
        let Some(mapping) = live else { continue };
        if !pace_by(ctx, account, Some(deadline_ms)).await? {
            summary.left_for_next_run = true;
            break;
        }
        if is_settings {
            let r = put_settings(ctx, account, st, &mapping.audience_fees).await;
            paced_call_done(ctx).await;
            match r? {
                true => summary.settings_applied += 1,
                false => summary.settings_failed += 1,
            }
        } else {
            read_size(ctx, account, st, now_ms, size_interval, &mut summary).await?;
        }
    }
    Ok(summary)
}

/// One size read (`GET /v2/dp/audiencemetadata/{id}`), stored with its next due time; a failed
/// read is retried after [`SIZE_RETRY_MS`].
async fn read_size(
    ctx: &ExportCtx,
    account: &IntegratedAccount,
    st: &AudienceState,
    now_ms: i64,
    size_interval: Duration,
    summary: &mut MetaSummary,
) -> Result<(), StoreError> {
    let r = ctx
        .amazon
        .get_audience(&account.login(), account.scope(), st.audience_id)
        .await;
    paced_call_done(ctx).await;
    match r {
        Ok(a) => {
            let size = a.audience_size.unwrap_or(crate::amazon::AudienceSize {
                received_record_size: 0,
                matched_record_size: 0,
                match_rate: 0.0,
            });
            let measured = MeasuredSize {
                audience_size: size.received_record_size,
                matched_size: size.matched_record_size,
                match_rate: size.match_rate,
                measured_at: now_rfc3339(),
            };
            let next = now_ms + size_interval.as_millis() as i64;
            ctx.destinations
                .set_audience_size(&st.destination_id, &st.segment_id, &measured, next)
                .await?;
            summary.sizes_read += 1;
        }
        Err(e) => {
            tracing::warn!(audience_id = st.audience_id, error = %e, "audience size read failed");
            ctx.destinations
                .delay_size(&st.destination_id, &st.segment_id, now_ms + SIZE_RETRY_MS)
                .await?;
            summary.size_failures += 1;
        }
    }
    Ok(())
}

/// The description an audience of destination `dst` for segment `seg` gets at creation and in
/// every metadata `PUT`: the one PATCHed onto the destination, else the segment's.
pub async fn description_for(ctx: &ExportCtx, dst: &str, seg: &str) -> Result<String, StoreError> {
    if let Some(patched) = ctx.destinations.audience_description(dst).await? {
        return Ok(patched);
    }
    Ok(match ctx.destinations.get_segment(seg).await? {
        Some(s) => audience_description(&s),
        None => format!("adsync segment {seg}"),
    })
}

/// One settings `PUT`; `Ok(false)` when Amazon did not take it (recorded on the state).
async fn put_settings(
    ctx: &ExportCtx,
    account: &IntegratedAccount,
    st: &AudienceState,
    fees: &[crate::amazon::AudienceFee],
) -> Result<bool, StoreError> {
    let (dst, seg) = (st.destination_id.as_str(), st.segment_id.as_str());
    let Some(d) = ctx.destinations.get_destination(dst).await? else {
        return Ok(false);
    };
    let description = description_for(ctx, dst, seg).await?;
    let update = AudienceUpdate {
        description: description.clone(),
        ttl: d.ttl_seconds,
        data_source_country: d.data_source_country.clone(),
        audience_fees: if fees.is_empty() {
            None
        } else {
            Some(fees.to_vec())
        },
    };
    match ctx
        .amazon
        .update_audience(&account.login(), account.scope(), st.audience_id, &update)
        .await
    {
        Ok(_) => {
            ctx.destinations
                .settings_applied(
                    dst,
                    seg,
                    st.settings_version,
                    (d.ttl_seconds, &d.data_source_country, &description),
                )
                .await?;
            Ok(true)
        }
        Err(e) => {
            if matches!(e, AmazonError::ReauthorizationRequired) {
                ctx.accounts
                    .mark_reauthorization_required(&account.token_secret)
                    .await?;
            }
            let permanent = !e.is_retryable() && !matches!(e, AmazonError::ReauthorizationRequired);
            ctx.destinations
                .settings_failed(dst, seg, st.settings_version, &e.user_message(), permanent)
                .await?;
            Ok(false)
        }
    }
}

/// The mapping view's size fields and `settings`.
pub fn meta_view(st: Option<&AudienceState>, d: Option<&Destination>) -> Map<String, Value> {
    let mut out = Map::new();
    let size = st.and_then(|s| s.size.as_ref());
    out.insert("audienceSize".into(), json!(size.map(|s| s.audience_size)));
    out.insert("matchedSize".into(), json!(size.map(|s| s.matched_size)));
    out.insert("matchRate".into(), json!(size.map(|s| s.match_rate)));
    out.insert("measuredAt".into(), json!(size.map(|s| &s.measured_at)));
    let settings = match (st, d) {
        (Some(s), Some(d)) => {
            let state = if s.settings_pending() {
                "pending"
            } else if s.failed_version.is_some() {
                "error"
            } else {
                "applied"
            };
            json!({
                "state": state,
                "pending": if s.settings_pending() {
                    json!({"ttlSeconds": d.ttl_seconds, "dataSourceCountry": d.data_source_country})
                } else { Value::Null },
                "applied": {
                    "ttlSeconds": s.ttl_seconds,
                    "dataSourceCountry": if s.applied_at.is_some() {
                        json!(s.applied_countries)
                    } else if s.settings_pending() { Value::Null } else { json!(d.data_source_country) },
                    "description": s.applied_description,
                    "appliedAt": s.applied_at,
                },
                "lastError": s.settings_error,
            })
        }
        _ => Value::Null,
    };
    out.insert("settings".into(), settings);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::export_controls::ExportLabel;

    fn dest() -> Destination {
        Destination {
            destination_id: "d".into(),
            name: "n".into(),
            description: String::new(),
            account_id: "1".into(),
            data_export_labels: vec![ExportLabel::OffsiteAdTargeting],
            data_source_country: vec!["US".into()],
            ttl_seconds: 2_592_000,
            created_at: String::new(),
        }
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn settings_keep_what_the_patch_does_not_name_and_name_the_bad_field() {
        let d = dest();
        assert_eq!(
            parse_settings(&obj(json!({"dataExportLabels": []})), &d).ok(),
            Some(None)
        );
        let change = |body: Value| parse_settings(&obj(body), &d).ok().flatten().unwrap();
        let c = change(json!({"description": " x "}));
        assert_eq!(
            (c.ttl, c.countries, c.description.as_deref()),
            (2_592_000, vec!["US".to_string()], Some("x"))
        );
        let c = change(json!({"ttlSeconds": 600}));
        assert_eq!(
            (c.ttl, c.countries, c.description),
            (600, vec!["US".to_string()], None)
        );
        let c = change(json!({"dataSourceCountry": ["ca", "US"]}));
        assert_eq!(
            (c.ttl, c.countries),
            (2_592_000, vec!["CA".to_string(), "US".to_string()])
        );
        for (body, field) in [
            (json!({"ttlSeconds": 34_300_801}), "ttlSeconds"),
            (json!({"ttlSeconds": "600"}), "ttlSeconds"),
            (json!({"dataSourceCountry": []}), "dataSourceCountry"),
            (
                json!({"dataSourceCountry": ["USA"]}),
                "dataSourceCountry[0]",
            ),
        ] {
            let e = parse_settings(&obj(body.clone()), &d).unwrap_err();
            assert_eq!(e.status(), 400, "{body}");
            assert_eq!(e.field.as_deref(), Some(field), "{body}");
        }
    }

    #[test]
    fn the_view_shows_pending_applied_and_refused_settings() {
        let d = dest();
        let mut st = AudienceState {
            destination_id: "d".into(),
            segment_id: "s".into(),
            account_id: "1".into(),
            audience_id: 72057594038053891,
            ttl_seconds: 2_592_000,
            refresh_generation: None,
            last_completed_at: None,
            refresh_due_ms: 0,
            size: None,
            size_due_ms: 0,
            settings_version: 0,
            applied_version: 0,
            failed_version: None,
            settings_error: None,
            applied_at: None,
            applied_countries: Vec::new(),
            applied_description: None,
        };
        let v = meta_view(Some(&st), Some(&d));
        assert_eq!(v["settings"]["state"], "applied");
        assert_eq!(v["settings"]["applied"]["dataSourceCountry"], json!(["US"]));
        assert!(v["audienceSize"].is_null() && v["matchRate"].is_null());
        st.settings_version = 5;
        let v = meta_view(Some(&st), Some(&d));
        assert_eq!(v["settings"]["state"], "pending");
        assert_eq!(v["settings"]["pending"]["ttlSeconds"], 2_592_000);
        st.failed_version = Some(5);
        st.settings_error = Some("Amazon Error: bad (HTTP 400)".into());
        let v = meta_view(Some(&st), Some(&d));
        assert_eq!(v["settings"]["state"], "error");
        assert_eq!(v["settings"]["lastError"], "Amazon Error: bad (HTTP 400)");
        st.size = Some(MeasuredSize {
            audience_size: 120_000,
            matched_size: 81_000,
            match_rate: 0.675,
            measured_at: "2026-12-05T10:00:00.000Z".into(),
        });
        let v = meta_view(Some(&st), Some(&d));
        assert_eq!(
            (
                v["audienceSize"].clone(),
                v["matchedSize"].clone(),
                v["matchRate"].clone()
            ),
            (json!(120_000), json!(81_000), json!(0.675))
        );
        assert!(meta_view(None, None)["settings"].is_null());
    }
}
