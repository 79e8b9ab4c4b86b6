//! The answer to a request: one result per event, the totals, the status code and the metrics.

use super::IngestCtx;
use super::send::SendStats;
use crate::domain::conversion::{FieldError, Reason};
use crate::telemetry::Metrics;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The outcome of one input event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Accepted,
    Duplicate,
    Rejected,
    Parked,
}

/// One result per input index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventResult {
    pub index: usize,
    pub status: Status,
    pub errors: Vec<FieldError>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub received: usize,
    pub accepted: usize,
    pub duplicate: usize,
    pub rejected: usize,
    pub parked: usize,
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IngestReport {
    pub account_id: String,
    pub totals: Totals,
    pub results: Vec<EventResult>,
}

impl IngestReport {
    /// The totals and the rejected events' reasons (each event's first error), as counted per hour.
    pub fn counts(&self) -> crate::store::conversion_counts::Counts {
        let t = &self.totals;
        let mut reasons = std::collections::BTreeMap::new();
        for r in self.results.iter().filter(|r| r.status == Status::Rejected) {
            let reason = r
                .errors
                .first()
                .map(|e| e.reason.as_str())
                .unwrap_or("unknown");
            *reasons.entry(reason.to_string()).or_default() += 1;
        }
        crate::store::conversion_counts::Counts {
            received: t.received as u64,
            accepted: t.accepted as u64,
            duplicate: t.duplicate as u64,
            rejected: t.rejected as u64,
            parked: t.parked as u64,
            reasons,
        }
    }

    /// 200 when every event was accepted or a duplicate, 207 otherwise.
    pub fn status_code(&self) -> u16 {
        if self.totals.accepted + self.totals.duplicate == self.totals.received {
            200
        } else {
            207
        }
    }
}

pub(super) fn err(field: &str, reason: Reason, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        message: message.into(),
        reason,
    }
}

pub(super) fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

pub(super) fn done(index: usize, status: Status) -> EventResult {
    EventResult {
        index,
        status,
        errors: vec![],
    }
}

pub(super) fn already_parked(index: usize) -> EventResult {
    EventResult {
        index,
        status: Status::Parked,
        errors: vec![err(
            "clientDedupeId",
            Reason::Unavailable,
            "this clientDedupeId is already parked; the redrive will deliver it once",
        )],
    }
}

pub(super) fn rejected_unavailable(index: usize) -> EventResult {
    EventResult {
        index,
        status: Status::Rejected,
        errors: vec![err(
            "",
            Reason::Unavailable,
            "the event could be neither delivered nor parked; send it again",
        )],
    }
}

pub(super) fn totals(results: &[EventResult]) -> Totals {
    let mut t = Totals {
        received: results.len(),
        ..Totals::default()
    };
    for r in results {
        match r.status {
            Status::Accepted => t.accepted += 1,
            Status::Duplicate => t.duplicate += 1,
            Status::Rejected => t.rejected += 1,
            Status::Parked => t.parked += 1,
        }
    }
    t
}

impl IngestCtx {
    pub(super) fn emit_metrics(&self, results: &[EventResult], totals: &Totals, stats: &SendStats) {
        let mut m = Metrics::new(self.settings.metrics_fn);
        m.count("Received", totals.received as u64)
            .count("Accepted", totals.accepted as u64)
            .count("Duplicates", totals.duplicate as u64)
            .count("Rejected", totals.rejected as u64)
            .count("Parked", totals.parked as u64);
        let mut by_reason: BTreeMap<&'static str, u64> = BTreeMap::new();
        for r in results.iter().filter(|r| r.status == Status::Rejected) {
            let reason = r
                .errors
                .first()
                .map(|e| e.reason)
                .unwrap_or(Reason::Invalid);
            *by_reason.entry(reason.as_str()).or_default() += 1;
        }
        for (reason, count) in by_reason {
            m.count(&format!("Rejected_{reason}"), count);
        }
        if !stats.latencies_ms.is_empty() {
            m.millis("AmazonLatency", mean(&stats.latencies_ms));
            m.count("AmazonRequests", stats.latencies_ms.len() as u64);
        }
        m.emit();
    }
}
