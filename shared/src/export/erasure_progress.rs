//! The progress document of an erasure job (`erasure.rs`): what `GET /privacy/deletions/{id}`
//! shows and the job item stores. Hashes only, never a device id.

use crate::domain::audience::{IdType, device_key};
use crate::store::erasures::device_hash;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A device as the job's progress shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRef {
    pub id_type: String,
    pub device_hash: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CountStep {
    pub state: String,
    pub done: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerStep {
    pub state: String,
    pub rows_scanned: u64,
    pub rows_removed: u64,
    /// Rows newer than the request (a later qualification re-added the device): kept.
    pub rows_newer_kept: u64,
    /// Internal scan cursor; never shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<(String, String)>,
}

/// Progress towards one account (audiences step) or advertiser (users step).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetProgress {
    pub advertiser_id: i64,
    /// `pending`, `done`, `waiting` (account not active), `retrying`, `failed`, `skipped`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<i64>,
    pub requests: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl TargetProgress {
    pub(crate) fn settled(&self) -> bool {
        matches!(self.state.as_str(), "done" | "failed" | "skipped")
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetsStep {
    pub state: String,
    /// accountId → progress.
    pub targets: BTreeMap<String, TargetProgress>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Steps {
    pub tombstones: CountStep,
    pub ledger: LedgerStep,
    pub audiences: TargetsStep,
    pub users: TargetsStep,
}

/// The job's progress and audit record: hashes only, never a device id.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErasureDoc {
    pub deletion_id: String,
    /// `running`, `waiting` (something waits for an account or a retry), `done`.
    pub status: String,
    pub requested_at: String,
    pub requested_at_ms: i64,
    pub devices: Vec<DeviceRef>,
    pub steps: Steps,
    pub errors: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
}

impl ErasureDoc {
    pub fn new(deletion_id: String, requested_at_ms: i64, devices: &[(IdType, String)]) -> Self {
        let now = crate::store::dynamo::now_rfc3339();
        let pending = || "pending".to_string();
        Self {
            deletion_id,
            status: "running".into(),
            requested_at: chrono::DateTime::from_timestamp_millis(requested_at_ms)
                .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or_default(),
            requested_at_ms,
            devices: devices
                .iter()
                .map(|(t, id)| DeviceRef {
                    id_type: t.as_str().into(),
                    device_hash: device_hash(&device_key(*t, id)),
                })
                .collect(),
            steps: Steps {
                tombstones: CountStep {
                    state: pending(),
                    done: 0,
                },
                ledger: LedgerStep {
                    state: pending(),
                    ..Default::default()
                },
                audiences: TargetsStep {
                    state: pending(),
                    ..Default::default()
                },
                users: TargetsStep {
                    state: pending(),
                    ..Default::default()
                },
            },
            errors: Vec::new(),
            created_at: now.clone(),
            updated_at: now,
            finished_at: None,
        }
    }

    pub(crate) fn note(&mut self, msg: String) {
        const KEEP: usize = 20;
        self.errors.push(msg);
        if self.errors.len() > KEEP {
            self.errors.remove(0);
        }
    }
}

/// Raw ids of the job, as stored while it runs: `[[type, id], …]`.
pub type RawDevices = Vec<(IdType, String)>;

/// Replaces every device id of the job in `msg` by its hash (Amazon may echo a value back).
pub(crate) fn redact(msg: &str, devices: &RawDevices) -> String {
    let mut out = msg.to_string();
    for (t, id) in devices {
        if out.contains(id.as_str()) {
            out = out.replace(
                id.as_str(),
                &format!("sha256:{}", device_hash(&device_key(*t, id))),
            );
        }
    }
    out
}

/// `done` when every target is settled, else `waiting` (targets left for lack of time stay
/// `pending` and are served by the next run).
pub(crate) fn step_state(s: &TargetsStep) -> String {
    if s.targets.values().all(TargetProgress::settled) {
        "done".into()
    } else {
        "waiting".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_and_errors_never_carry_a_device_id() {
        let devices: RawDevices = vec![(IdType::Maid, "maid-secret-1".into())];
        let doc = ErasureDoc::new("d1".into(), 1_700_000_000_000, &devices);
        let json = serde_json::to_string(&doc).unwrap();
        assert!(!json.contains("maid-secret-1"), "{json}");
        assert!(json.contains(&device_hash("MAID-maid-secret-1")));
        let msg = redact("Amazon Error: bad value maid-secret-1 (HTTP 400)", &devices);
        assert!(!msg.contains("maid-secret-1"), "{msg}");
        assert!(msg.contains("sha256:"));
    }

    #[test]
    fn a_step_is_done_only_when_every_target_settled() {
        let mut s = TargetsStep::default();
        assert_eq!(step_state(&s), "done");
        for (k, st) in [("a", "done"), ("b", "waiting")] {
            s.targets.insert(
                k.into(),
                TargetProgress {
                    state: st.into(),
                    ..Default::default()
                },
            );
        }
        assert_eq!(step_state(&s), "waiting");
        s.targets.get_mut("b").unwrap().state = "skipped".into();
        assert_eq!(step_state(&s), "done");
    }
}
