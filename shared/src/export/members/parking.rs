//! Parking what cannot be delivered now: device keys and mapping references, never bodies
//! (`run_redrive` recomputes each patch from the ledger).

use super::delivery::{DeliveryReport, FailedRows, targets_of_account};
use super::targets::{Target, TargetRef};
// Devices whose segments' targets could not be read (a lookup failed, or the request's budget
// ran out first) are parked as `UNROUTED_KIND`, without account or targets; the redrive reads
// the segments' active mappings when it sends them.
pub(super) use crate::parked_dlq::PATCH_KIND as PARKED_KIND;
use crate::parked_dlq::UNROUTED_KIND;
use crate::runtime::now_ms;
use crate::store::ledger::LedgerRow;
use crate::store::parked_retry::RetryState;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Device keys per parked message (each ≤ ~400 bytes: ≤ 140 KB, ≤ 190 KB once sealed with the
/// KMS key (base64), under SQS's 256 KB).
const PARK_CHUNK: usize = 350;

/// A patch job that could not be delivered now; redriven by `run_redrive`. Device keys and
/// mapping references only: the patch is recomputed from the ledger when redriven.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParkedPatch {
    /// Marks the message kind (the queue is ours alone, but be explicit).
    pub kind: String,
    pub account_id: String,
    pub targets: Vec<TargetRef>,
    /// `(segmentId, deviceKey)` pairs.
    pub devices: Vec<(String, String)>,
    /// Why it was parked (no personal data).
    pub reason: String,
    /// Redrive attempts, age and delay (`store::parked_retry`).
    #[serde(default)]
    pub retry: RetryState,
}

impl ParkedPatch {
    /// A message of devices whose targets the redrive must look up ([`UNROUTED_KIND`]).
    pub fn is_unrouted(&self) -> bool {
        self.kind == UNROUTED_KIND
    }
}

pub(super) fn push_parked(
    report: &mut DeliveryReport,
    account_id: &str,
    targets: Vec<TargetRef>,
    devices: Vec<(String, String)>,
    reason: &str,
) {
    push_kind(report, PARKED_KIND, account_id, targets, devices, reason);
}

/// Parks `rows` for the redrive to route ([`UNROUTED_KIND`]).
pub(super) fn park_unrouted(rows: &[LedgerRow], reason: &str, report: &mut DeliveryReport) {
    let devices: BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| (r.segment_id.clone(), r.device.clone()))
        .collect();
    let devices = devices.into_iter().collect();
    push_kind(report, UNROUTED_KIND, "", Vec::new(), devices, reason);
}

fn push_kind(
    report: &mut DeliveryReport,
    kind: &str,
    account_id: &str,
    targets: Vec<TargetRef>,
    devices: Vec<(String, String)>,
    reason: &str,
) {
    for chunk in devices.chunks(PARK_CHUNK) {
        report.parked += chunk.len() as u64;
        report.failed.push(ParkedPatch {
            kind: kind.into(),
            account_id: account_id.to_string(),
            targets: targets.clone(),
            devices: chunk.to_vec(),
            reason: reason.to_string(),
            retry: RetryState::parked_at(now_ms()),
        });
    }
}

/// Per account: the targets and the `(segment, device)` keys to park.
pub(super) type ParkGroup = (BTreeSet<TargetRef>, BTreeSet<(String, String)>);

pub(super) fn park_rows(
    targets: &BTreeMap<String, Vec<Target>>,
    rows: Vec<LedgerRow>,
    reason: &str,
    report: &mut DeliveryReport,
) {
    let mut per_account: BTreeMap<String, ParkGroup> = BTreeMap::new();
    for r in rows {
        for t in targets.get(&r.segment_id).into_iter().flatten() {
            let e = per_account.entry(t.account_id.clone()).or_default();
            e.0.insert(t.r.clone());
            e.1.insert((r.segment_id.clone(), r.device.clone()));
        }
    }
    for (account_id, (ts, devs)) in per_account {
        push_parked(
            report,
            &account_id,
            ts.into_iter().collect(),
            devs.into_iter().collect(),
            reason,
        );
    }
}

/// Parks what failed (by account, only towards that account's targets).
pub(super) fn park_failed_rows(
    targets: &BTreeMap<String, Vec<Target>>,
    rows: &[LedgerRow],
    failed: FailedRows,
    report: &mut DeliveryReport,
) {
    for (account_id, (idxs, reason)) in failed {
        if idxs.is_empty() {
            continue;
        }
        let devices: Vec<(String, String)> = idxs
            .iter()
            .map(|&i| (rows[i].segment_id.clone(), rows[i].device.clone()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let account_targets = targets_of_account(targets, &account_id);
        push_parked(report, &account_id, account_targets, devices, &reason);
    }
}
