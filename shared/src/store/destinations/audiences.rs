//! Upkeep items of live audiences, in `DESTINATIONS_TABLE`, used by `export::refresh`,
//! `export::audience_meta` and `export::lifecycle` (purges and adoption claims are in
//! [`super::purges`]):
//!
//! | item | pk | sk | attributes |
//! |---|---|---|---|
//! | audience state | `AUDSTATE` | `<destinationId>#<segmentId>` | `destinationId, segmentId, accountId, audienceId (N), ttlSeconds (N, the audience's own TTL as last known), refreshGen (N)?, lastCompletedAt?, refreshDueAt (N, epoch ms)?, audienceSize (N)?, matchedSize (N)?, matchRate (N)?, measuredAt?, sizeDueAt (N, epoch ms), settingsVersion (N), appliedVersion (N), failedVersion (N)?, settingsError?, appliedAt?, appliedCountries (L of S)?, appliedDescription?, updatedAt` |
//! | destination (extra attribute) | `DST#<destinationId>` | `DESTINATION` | `audienceDescription?`: the description PATCHed onto the destination's audiences (absent: each audience keeps its segment's) |
//!
//! One audience-state item per mapping that has had an active audience: the scheduled upkeep
//! reads the whole `AUDSTATE` partition once per run (≈ 300 bytes per mapping, so one 1 MB
//! page covers a few thousand mappings) instead of walking every destination.

use super::{DestinationStore, Item, StoreError, get_num, get_s, key, now_rfc3339, opt_s, sdk_err};
use crate::store::dynamo::{conditional, is_conditional_failure, n, s};

const STATE_PK: &str = "AUDSTATE";

fn sk(destination_id: &str, segment_id: &str) -> String {
    format!("{destination_id}#{segment_id}")
}

/// Size and match rate as Amazon last reported them.
#[derive(Clone, Debug, PartialEq)]
pub struct MeasuredSize {
    /// Amazon's `receivedRecordSize`.
    pub audience_size: u64,
    /// Amazon's `matchedRecordSize`.
    pub matched_size: u64,
    /// Amazon's `matchRate` (0–1).
    pub match_rate: f64,
    /// RFC 3339.
    pub measured_at: String,
}

/// The upkeep state of one mapping's audience.
#[derive(Clone, Debug, PartialEq)]
pub struct AudienceState {
    pub destination_id: String,
    pub segment_id: String,
    pub account_id: String,
    pub audience_id: i64,
    /// The audience's TTL at Amazon as adsync last set or read it; refreshes follow it.
    pub ttl_seconds: u64,
    /// The job generation that the last refresh started.
    pub refresh_generation: Option<u64>,
    /// When the pass before the running refresh finished.
    pub last_completed_at: Option<String>,
    /// No refresh is due before this (epoch ms; a lower bound: a later pass only moves the due
    /// time later), so most runs skip the job read.
    pub refresh_due_ms: i64,
    pub size: Option<MeasuredSize>,
    /// When the next size read is due (epoch ms).
    pub size_due_ms: i64,
    /// Bumped by every settings change of the destination; the audience is up to date when
    /// `applied_version` reached it.
    pub settings_version: i64,
    pub applied_version: i64,
    /// A version Amazon refused (not retried until the settings change again).
    pub failed_version: Option<i64>,
    pub settings_error: Option<String>,
    pub applied_at: Option<String>,
    /// The countries Amazon last took from adsync (empty until a settings change was applied).
    pub applied_countries: Vec<String>,
    /// The description Amazon last took from a settings `PUT` (`None` until one was applied).
    pub applied_description: Option<String>,
}

impl AudienceState {
    /// Settings still to send to Amazon.
    pub fn settings_pending(&self) -> bool {
        self.settings_version > self.applied_version
            && self.failed_version != Some(self.settings_version)
    }
}

fn state_from(item: &Item) -> Result<AudienceState, StoreError> {
    let size = match get_num::<u64>(item, "audienceSize")? {
        Some(audience_size) => Some(MeasuredSize {
            audience_size,
            matched_size: get_num(item, "matchedSize")?.unwrap_or(0),
            match_rate: get_num(item, "matchRate")?.unwrap_or(0.0),
            measured_at: opt_s(item, "measuredAt").unwrap_or_default(),
        }),
        None => None,
    };
    Ok(AudienceState {
        destination_id: get_s(item, "destinationId")?,
        segment_id: get_s(item, "segmentId")?,
        account_id: get_s(item, "accountId")?,
        audience_id: get_num(item, "audienceId")?
            .ok_or_else(|| StoreError::Corrupt("audience state without audienceId".into()))?,
        ttl_seconds: get_num(item, "ttlSeconds")?.unwrap_or(0),
        refresh_generation: get_num(item, "refreshGen")?,
        last_completed_at: opt_s(item, "lastCompletedAt"),
        refresh_due_ms: get_num(item, "refreshDueAt")?.unwrap_or(0),
        size,
        size_due_ms: get_num(item, "sizeDueAt")?.unwrap_or(0),
        settings_version: get_num(item, "settingsVersion")?.unwrap_or(0),
        applied_version: get_num(item, "appliedVersion")?.unwrap_or(0),
        failed_version: get_num(item, "failedVersion")?,
        settings_error: opt_s(item, "settingsError"),
        applied_at: opt_s(item, "appliedAt"),
        applied_countries: super::get_list(item, "appliedCountries", |c| Some(c.to_string()))?,
        applied_description: opt_s(item, "appliedDescription"),
    })
}

impl DestinationStore {
    /// Records (or keeps) the upkeep state of a mapping's audience. A new audience id starts
    /// afresh with `ttl_seconds`; the same audience keeps its state, and takes `ttl_seconds`
    /// only when `force_ttl` (an adopted audience's own TTL).
    pub async fn register_audience(
        &self,
        destination_id: &str,
        segment_id: &str,
        account_id: &str,
        audience_id: i64,
        ttl_seconds: u64,
        force_ttl: bool,
    ) -> Result<(), StoreError> {
        let k = sk(destination_id, segment_id);
        if let Some(cur) = self.audience_state(destination_id, segment_id).await?
            && cur.audience_id == audience_id
        {
            if force_ttl && cur.ttl_seconds != ttl_seconds {
                // A new TTL may bring the next refresh forward: drop the due hint.
                self.update_state(
                    destination_id,
                    segment_id,
                    "SET ttlSeconds = :t REMOVE refreshDueAt",
                    |u| u.expression_attribute_values(":t", n(ttl_seconds)),
                )
                .await?;
            }
            return Ok(());
        }
        let mut item = key(STATE_PK.to_string(), &k);
        item.insert("destinationId".into(), s(destination_id));
        item.insert("segmentId".into(), s(segment_id));
        item.insert("accountId".into(), s(account_id));
        item.insert("audienceId".into(), n(audience_id));
        item.insert("ttlSeconds".into(), n(ttl_seconds));
        item.insert("sizeDueAt".into(), n(0));
        item.insert("settingsVersion".into(), n(0));
        item.insert("appliedVersion".into(), n(0));
        item.insert("updatedAt".into(), s(now_rfc3339()));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| sdk_err("register audience", e))?;
        Ok(())
    }

    pub async fn audience_state(
        &self,
        destination_id: &str,
        segment_id: &str,
    ) -> Result<Option<AudienceState>, StoreError> {
        self.get_item(STATE_PK.to_string(), &sk(destination_id, segment_id))
            .await?
            .map(|i| state_from(&i))
            .transpose()
    }

    /// Every audience state (the whole partition, page by page).
    pub async fn audience_states(&self) -> Result<Vec<AudienceState>, StoreError> {
        let items = self.query_partition(STATE_PK).await?;
        items.iter().map(state_from).collect()
    }

    pub async fn delete_audience_state(
        &self,
        destination_id: &str,
        segment_id: &str,
    ) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(
                STATE_PK.to_string(),
                &sk(destination_id, segment_id),
            )))
            .send()
            .await
            .map_err(|e| sdk_err("delete audience state", e))?;
        Ok(())
    }

    /// A refresh started as job generation `generation`; `last_completed_at` is when the pass
    /// it follows finished.
    pub async fn set_refresh_started(
        &self,
        destination_id: &str,
        segment_id: &str,
        generation: u64,
        last_completed_at: Option<&str>,
    ) -> Result<(), StoreError> {
        let expr = match last_completed_at {
            Some(_) => "SET refreshGen = :g, lastCompletedAt = :l, updatedAt = :u",
            None => "SET refreshGen = :g, updatedAt = :u",
        };
        let at = last_completed_at.map(str::to_string);
        self.update_state(destination_id, segment_id, expr, move |u| {
            let u = u
                .expression_attribute_values(":g", n(generation))
                .expression_attribute_values(":u", s(now_rfc3339()));
            match at {
                Some(l) => u.expression_attribute_values(":l", s(l)),
                None => u,
            }
        })
        .await
    }

    /// No refresh of this audience is due before `due_ms`.
    pub async fn set_refresh_due(
        &self,
        destination_id: &str,
        segment_id: &str,
        due_ms: i64,
    ) -> Result<(), StoreError> {
        self.update_state(
            destination_id,
            segment_id,
            "SET refreshDueAt = :d",
            move |u| u.expression_attribute_values(":d", n(due_ms)),
        )
        .await
    }

    /// Stores a size read and when the next one is due.
    pub async fn set_audience_size(
        &self,
        destination_id: &str,
        segment_id: &str,
        size: &MeasuredSize,
        next_due_ms: i64,
    ) -> Result<(), StoreError> {
        let size = size.clone();
        self.update_state(
            destination_id,
            segment_id,
            "SET audienceSize = :a, matchedSize = :m, matchRate = :r, measuredAt = :t, sizeDueAt = :d",
            move |u| {
                u.expression_attribute_values(":a", n(size.audience_size))
                    .expression_attribute_values(":m", n(size.matched_size))
                    .expression_attribute_values(":r", n(size.match_rate))
                    .expression_attribute_values(":t", s(size.measured_at))
                    .expression_attribute_values(":d", n(next_due_ms))
            },
        )
        .await
    }

    /// Pushes the next size read back (after a failed read).
    pub async fn delay_size(
        &self,
        destination_id: &str,
        segment_id: &str,
        next_due_ms: i64,
    ) -> Result<(), StoreError> {
        self.update_state(destination_id, segment_id, "SET sizeDueAt = :d", move |u| {
            u.expression_attribute_values(":d", n(next_due_ms))
        })
        .await
    }

    /// The destination's settings changed: its audience must get them (version = epoch ms).
    pub async fn bump_settings(
        &self,
        destination_id: &str,
        segment_id: &str,
        version: i64,
    ) -> Result<(), StoreError> {
        self.update_state(
            destination_id,
            segment_id,
            "SET settingsVersion = :v, updatedAt = :u",
            move |u| {
                u.expression_attribute_values(":v", n(version))
                    .expression_attribute_values(":u", s(now_rfc3339()))
            },
        )
        .await
    }

    /// Amazon took settings `version`: `ttl_seconds`, `countries` and `description` (the refresh
    /// due hint is dropped: a shorter TTL brings the next refresh forward).
    pub async fn settings_applied(
        &self,
        destination_id: &str,
        segment_id: &str,
        version: i64,
        applied: (u64, &[String], &str),
    ) -> Result<(), StoreError> {
        let (ttl_seconds, countries, description) = applied;
        let countries = super::str_list(countries);
        let description = description.to_string();
        self.update_state(
            destination_id,
            segment_id,
            "SET appliedVersion = :v, ttlSeconds = :t, appliedCountries = :c, appliedAt = :u, \
             appliedDescription = :d, updatedAt = :u REMOVE settingsError, failedVersion, refreshDueAt",
            move |u| {
                u.expression_attribute_values(":v", n(version))
                    .expression_attribute_values(":t", n(ttl_seconds))
                    .expression_attribute_values(":c", countries)
                    .expression_attribute_values(":d", s(description))
                    .expression_attribute_values(":u", s(now_rfc3339()))
            },
        )
        .await
    }

    /// Sets the description that every audience of the destination gets from now on (a `PATCH`
    /// of `description`); `false` when the destination does not exist.
    pub async fn set_audience_description(
        &self,
        destination_id: &str,
        description: &str,
    ) -> Result<bool, StoreError> {
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(super::dst_pk(destination_id), "DESTINATION")))
            .condition_expression("attribute_exists(pk)")
            .update_expression("SET audienceDescription = :d")
            .expression_attribute_values(":d", s(description))
            .send()
            .await;
        Ok(conditional(r, "set audience description")?.is_some())
    }

    /// The description PATCHed onto the destination's audiences, if any.
    pub async fn audience_description(
        &self,
        destination_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let r = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(super::dst_pk(destination_id), "DESTINATION")))
            .projection_expression("audienceDescription")
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_err("read audience description", e))?;
        Ok(r.item
            .as_ref()
            .and_then(|i| opt_s(i, "audienceDescription")))
    }

    /// Amazon did not take settings `version`; `permanent` stops retries of that version.
    pub async fn settings_failed(
        &self,
        destination_id: &str,
        segment_id: &str,
        version: i64,
        message: &str,
        permanent: bool,
    ) -> Result<(), StoreError> {
        let expr = if permanent {
            "SET settingsError = :e, failedVersion = :v, updatedAt = :u"
        } else {
            "SET settingsError = :e, updatedAt = :u"
        };
        let message = message.to_string();
        self.update_state(destination_id, segment_id, expr, move |u| {
            let u = u
                .expression_attribute_values(":e", s(message))
                .expression_attribute_values(":u", s(now_rfc3339()));
            if permanent {
                u.expression_attribute_values(":v", n(version))
            } else {
                u
            }
        })
        .await
    }

    /// One conditional update of an existing audience state (a missing one is left alone).
    async fn update_state(
        &self,
        destination_id: &str,
        segment_id: &str,
        expr: &str,
        values: impl FnOnce(
            aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder,
        ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder,
    ) -> Result<(), StoreError> {
        let req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(
                STATE_PK.to_string(),
                &sk(destination_id, segment_id),
            )))
            .condition_expression("attribute_exists(pk)")
            .update_expression(expr);
        match values(req).send().await {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Ok(()),
            Err(e) => Err(sdk_err("update audience state", e)),
        }
    }

    /// Every item of one partition, page by page (consistent).
    pub(super) async fn query_partition(&self, pk: &str) -> Result<Vec<Item>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("pk = :p")
                .expression_attribute_values(":p", s(pk))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| sdk_err("query partition", e))?;
            out.extend(page.items().iter().cloned());
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(out)
    }
}
