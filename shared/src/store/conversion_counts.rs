//! [`ConversionCounts`]: per-account, per-hour counts of conversion events, shown by the console's
//! Conversions page (received / accepted / duplicate / rejected with its reasons / parked over the
//! last 24 hours and 7 days).
//!
//! One item per account and UTC hour in `ACCOUNTS_TABLE`: pk `CONVCOUNT#<accountId>`, sk the hour
//! (`2026-12-05T18`), numbers changed with `ADD` (concurrent requests never lose an update), and
//! `expiresAt` eight days after the hour. A request writes its totals once (one `UpdateItem`),
//! never once per event. Counts are best effort (a failed write is logged, the request is not
//! failed for it): they are shown, never used for decisions.

use super::StoreError;
use super::accounts::AccountStore;
use super::dynamo::{aws_error, n, s};
use super::item::ItemExt;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// How long an hour's item is kept.
pub const KEEP_SECS: i64 = 8 * 86_400;

/// The counts of one request (or of a period).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub received: u64,
    pub accepted: u64,
    pub duplicate: u64,
    pub rejected: u64,
    pub parked: u64,
    /// Rejected events per reason (`invalid`, `too_old`, `amazon`, …).
    pub reasons: BTreeMap<String, u64>,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.received += o.received;
        self.accepted += o.accepted;
        self.duplicate += o.duplicate;
        self.rejected += o.rejected;
        self.parked += o.parked;
        for (k, v) in &o.reasons {
            *self.reasons.entry(k.clone()).or_default() += v;
        }
    }

    /// The reasons, most frequent first.
    pub fn top_reasons(&self, n: usize) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self.reasons.iter().map(|(k, v)| (k.clone(), *v)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }
}

/// An account's counts over the last 24 hours and the last 7 days.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Periods {
    pub last_24h: Counts,
    pub last_7d: Counts,
}

/// The counts adapter. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ConversionCounts {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

/// The hour key of an epoch second (`2026-12-05T18`).
pub fn hour_key(epoch_secs: i64) -> String {
    chrono::DateTime::from_timestamp(epoch_secs - epoch_secs.rem_euclid(3600), 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H")
        .to_string()
}

const FIELDS: [&str; 5] = ["received", "accepted", "duplicate", "rejected", "parked"];

impl ConversionCounts {
    pub fn new(accounts: &AccountStore) -> Self {
        Self {
            client: accounts.client().clone(),
            table: accounts.table().to_string(),
        }
    }

    /// Adds one request's counts to its hour (one `UpdateItem`).
    pub async fn record(
        &self,
        account_id: &str,
        c: &Counts,
        now_secs: i64,
    ) -> Result<(), StoreError> {
        if c.received == 0 {
            return Ok(());
        }
        let mut expr = Vec::new();
        let mut names = HashMap::new();
        let mut values = HashMap::new();
        let nums = [c.received, c.accepted, c.duplicate, c.rejected, c.parked];
        for (i, (f, v)) in FIELDS.iter().zip(nums).enumerate() {
            expr.push(format!("#f{i} :v{i}"));
            names.insert(format!("#f{i}"), f.to_string());
            values.insert(format!(":v{i}"), n(v));
        }
        for (i, (reason, v)) in c.reasons.iter().enumerate() {
            expr.push(format!("#r{i} :r{i}"));
            names.insert(format!("#r{i}"), format!("r_{reason}"));
            values.insert(format!(":r{i}"), n(*v));
        }
        let hour = now_secs - now_secs.rem_euclid(3600);
        values.insert(":exp".into(), n(hour + KEEP_SECS));
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("CONVCOUNT#{account_id}")))
            .key("sk", s(hour_key(now_secs)))
            .update_expression(format!("ADD {} SET expiresAt = :exp", expr.join(", ")))
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .send()
            .await
            .map_err(|e| aws_error("add conversion counts", e))?;
        Ok(())
    }

    /// As [`record`](Self::record), logging (not returning) a failure.
    pub async fn record_logged(&self, account_id: &str, c: &Counts, now_secs: i64) {
        if let Err(e) = self.record(account_id, c, now_secs).await {
            tracing::warn!(account_id = %account_id, error = %e, "could not add the conversion counts");
        }
    }

    /// The last 24 hours (this hour and the 23 before) and 7 days (168 hours) of one account.
    pub async fn periods(&self, account_id: &str, now_secs: i64) -> Result<Periods, StoreError> {
        let from_7d = hour_key(now_secs - 167 * 3600);
        let from_24h = hour_key(now_secs - 23 * 3600);
        let mut out = Periods::default();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND sk >= :from")
                .expression_attribute_values(":pk", s(format!("CONVCOUNT#{account_id}")))
                .expression_attribute_values(":from", s(&from_7d))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| aws_error("read conversion counts", e))?;
            for item in page.items() {
                let c = counts_of(item);
                out.last_7d.add(&c);
                if item.opt_str("sk").is_some_and(|sk| sk >= from_24h.as_str()) {
                    out.last_24h.add(&c);
                }
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(out)
    }
}

fn num(v: &AttributeValue) -> u64 {
    v.as_n()
        .ok()
        .and_then(|x| x.parse::<i64>().ok())
        .unwrap_or(0)
        .max(0) as u64
}

fn counts_of(item: &HashMap<String, AttributeValue>) -> Counts {
    let get = |k: &str| item.get(k).map(num).unwrap_or(0);
    let reasons = item
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("r_").map(|r| (r.to_string(), num(v))))
        .collect();
    Counts {
        received: get("received"),
        accepted: get("accepted"),
        duplicate: get("duplicate"),
        rejected: get("rejected"),
        parked: get("parked"),
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_are_utc_and_sortable() {
        assert_eq!(hour_key(0), "1970-01-01T00");
        assert_eq!(hour_key(3599), "1970-01-01T00");
        assert_eq!(hour_key(3600 * 25 + 5), "1970-01-02T01");
        assert!(hour_key(3600 * 9) < hour_key(3600 * 10));
    }

    #[test]
    fn items_sum_and_reasons_rank() {
        let item = HashMap::from([
            ("received".to_string(), n(5)),
            ("accepted".to_string(), n(2)),
            ("rejected".to_string(), n(3)),
            ("r_invalid".to_string(), n(2)),
            ("r_too_old".to_string(), n(1)),
        ]);
        let mut total = Counts::default();
        total.add(&counts_of(&item));
        total.add(&counts_of(&item));
        assert_eq!((total.received, total.accepted, total.rejected), (10, 4, 6));
        assert_eq!(total.top_reasons(1), vec![("invalid".to_string(), 4)]);
    }
}
