//! `{"task":"redrive-dlq"}`: moves dead-lettered parked work back to its queue for another try.
//!
//! The dead-letter queue (`PARKED_DLQ_URL`) is shared by the parked conversions and the parked
//! audience patches; each message says what it is (a conversion batch has `accountId` and
//! `events`, a patch message `kind: "segment_patch_v1"`), so either function's task moves both
//! kinds, each to its own queue (and identity records, `kind: "identity_records_v1"`, to
//! `PARKED_IDENTITIES_QUEUE_URL`), with a fresh retry state (the age limit counts again from the
//! move). The redrive then delivers them once: conversions through their dedupe claims (a
//! delivered event is only acknowledged), patches from the ledger's current state.
//!
//! Input: `{"task":"redrive-dlq"}` moves every message; `{"task":"redrive-dlq","accountId":"…"}`
//! only that account's; `{"task":"redrive-dlq","relinkedOnly":true}` (the schedule) only the
//! messages of active accounts relinked after the message was dead-lettered, which is how a
//! relink brings its account's dead-lettered work back without the confirm request waiting for it.
//! A message that is not moved stays on the dead-letter queue.

use crate::runtime::{Invocation, now_ms};
use crate::store::accounts::{AccountStatus, AccountStore};
use crate::store::parked::{Parked, ParkedQueue};
use crate::store::parked_counts::{Counter, ParkedCounts};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// The kind tag of parked audience patches (`export::members::ParkedPatch`).
pub const PATCH_KIND: &str = "segment_patch_v1";
/// The kind tag of parked devices whose targets the redrive must look up (a `ParkedPatch`
/// without account or targets); moved with the patches by `{"task":"redrive-dlq"}` alone.
pub const UNROUTED_KIND: &str = "segment_rows_v1";
/// The kind tag of parked identity records (`export::identities::ParkedIdentities`).
pub const IDENTITIES_KIND: &str = "identity_records_v1";

const NO_DLQ: &str = "no dead-letter queue configured (PARKED_DLQ_URL)";

/// Which dead-lettered messages to move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    Account(String),
    /// Active accounts relinked after the message was dead-lettered.
    Relinked,
}

impl Scope {
    /// From the task input.
    pub fn from_input(input: &Value) -> Self {
        if let Some(a) = input.get("accountId").and_then(Value::as_str) {
            return Scope::Account(a.to_string());
        }
        if input.get("relinkedOnly").and_then(Value::as_bool) == Some(true) {
            return Scope::Relinked;
        }
        Scope::All
    }
}

/// What a run did.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DlqSummary {
    pub messages: usize,
    pub moved: usize,
    /// Conversion events and device updates moved back.
    pub moved_conversions: usize,
    pub moved_patches: usize,
    /// Identity records moved back.
    pub moved_identities: usize,
    /// Left on the dead-letter queue (out of scope, or the move failed).
    pub kept: usize,
    /// Messages of no known kind (left for a person to look at).
    pub unknown: usize,
}

/// Moves dead-lettered messages back. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DeadLetterMover {
    dlq: ParkedQueue,
    conversions: Option<ParkedQueue>,
    patches: Option<ParkedQueue>,
    identities: Option<ParkedQueue>,
    accounts: AccountStore,
}

enum Kind {
    Conversions,
    Patches,
    Identities,
}

impl DeadLetterMover {
    pub fn new(
        dlq: ParkedQueue,
        conversions: Option<ParkedQueue>,
        patches: Option<ParkedQueue>,
        accounts: AccountStore,
    ) -> Self {
        Self {
            dlq,
            conversions,
            patches,
            identities: None,
            accounts,
        }
    }

    /// Also moves identity records back, to `identities`.
    pub fn with_identities(mut self, identities: Option<ParkedQueue>) -> Self {
        self.identities = identities;
        self
    }

    /// The identities queue from `PARKED_IDENTITIES_QUEUE_URL`, on `own`'s SQS client.
    fn identities_queue(own: &ParkedQueue) -> Option<ParkedQueue> {
        crate::config::optional("PARKED_IDENTITIES_QUEUE_URL").map(|u| own.sibling(u))
    }

    /// For the conversion function: its own parked queue (with its dead-letter queue) and the
    /// patches queue from `PARKED_PATCHES_QUEUE_URL`.
    pub fn for_conversions(own: &ParkedQueue, accounts: &AccountStore) -> Result<Self, String> {
        let dlq = own.dead_letter().ok_or(NO_DLQ)?;
        let patches = crate::config::optional("PARKED_PATCHES_QUEUE_URL").map(|u| own.sibling(u));
        Ok(Self::new(dlq, Some(own.clone()), patches, accounts.clone())
            .with_identities(Self::identities_queue(own)))
    }

    /// For the segment-export function: its own parked queue (with its dead-letter queue) and
    /// the conversions queue from `PARKED_CONVERSIONS_QUEUE_URL`.
    pub fn for_patches(own: &ParkedQueue, accounts: &AccountStore) -> Result<Self, String> {
        let dlq = own.dead_letter().ok_or(NO_DLQ)?;
        let conversions =
            crate::config::optional("PARKED_CONVERSIONS_QUEUE_URL").map(|u| own.sibling(u));
        Ok(
            Self::new(dlq, conversions, Some(own.clone()), accounts.clone())
                .with_identities(Self::identities_queue(own)),
        )
    }

    /// Moves messages in `scope` until the dead-letter queue has nothing new or the deadline is
    /// 10 s away.
    pub async fn run(&self, scope: &Scope, inv: &Invocation) -> Result<DlqSummary, String> {
        let mut summary = DlqSummary::default();
        let mut seen: HashSet<String> = HashSet::new();
        let mut relinked: HashMap<String, Option<u64>> = HashMap::new();
        let counts = ParkedCounts::new(&self.accounts);
        while inv.remaining() > Duration::from_secs(10) {
            let msgs = self
                .dlq
                .receive::<Value>(10)
                .await
                .map_err(|e| e.to_string())?;
            let mut fresh = 0;
            for m in msgs {
                if !seen.insert(m.message_id.clone()) {
                    continue;
                }
                fresh += 1;
                self.move_one(&m, scope, &mut relinked, &counts, &mut summary)
                    .await;
            }
            if fresh == 0 {
                break;
            }
        }
        tracing::info!(?summary, ?scope, "dead-lettered parked work moved back");
        Ok(summary)
    }

    /// One dead-lettered message: back to its parked queue when in `scope`, counted in `summary`.
    async fn move_one(
        &self,
        m: &Parked<Value>,
        scope: &Scope,
        relinked: &mut HashMap<String, Option<u64>>,
        counts: &ParkedCounts,
        summary: &mut DlqSummary,
    ) {
        summary.messages += 1;
        let (kind, units) = match kind_of(&m.item) {
            Some(k) => k,
            None => {
                summary.unknown += 1;
                return;
            }
        };
        let account_id = m.item["accountId"].as_str().unwrap_or("").to_string();
        if !self.in_scope(scope, &account_id, &m.item, relinked).await {
            summary.kept += 1;
            return;
        }
        let target = match kind {
            Kind::Conversions => self.conversions.as_ref(),
            Kind::Patches => self.patches.as_ref(),
            Kind::Identities => self.identities.as_ref(),
        };
        let Some(target) = target else {
            summary.kept += 1;
            return;
        };
        let mut item = m.item.clone();
        item["retry"] = json!({"firstParkedAtMs": now_ms()});
        let moved = match target.park(&item).await {
            Ok(()) => self
                .dlq
                .ack(&m.receipt_handle)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = moved {
            tracing::error!(error = %e, message_id = %m.message_id, "could not move a dead-lettered message back");
            summary.kept += 1;
            return;
        }
        summary.moved += 1;
        let n = units as i64;
        let deltas = match kind {
            Kind::Conversions => {
                summary.moved_conversions += units;
                [
                    (Counter::Conversions, n),
                    (Counter::ConversionsDeadLettered, -n),
                ]
            }
            Kind::Patches => {
                summary.moved_patches += units;
                [(Counter::Patches, n), (Counter::PatchesDeadLettered, -n)]
            }
            Kind::Identities => {
                // Identity records have no parked counters.
                summary.moved_identities += units;
                return;
            }
        };
        counts.add_logged(&account_id, &deltas).await;
    }

    async fn in_scope(
        &self,
        scope: &Scope,
        account_id: &str,
        item: &Value,
        relinked: &mut HashMap<String, Option<u64>>,
    ) -> bool {
        match scope {
            Scope::All => true,
            Scope::Account(a) => a == account_id,
            // Unrouted devices have no account to be relinked: moved by an unscoped run.
            Scope::Relinked if account_id.is_empty() => false,
            Scope::Relinked => {
                if !relinked.contains_key(account_id) {
                    relinked.insert(account_id.to_string(), self.relinked_at(account_id).await);
                }
                let died = item["retry"]["deadLetteredAtMs"]
                    .as_u64()
                    .or_else(|| item["retry"]["firstParkedAtMs"].as_u64())
                    .unwrap_or(0);
                relinked[account_id].is_some_and(|t| t > died)
            }
        }
    }

    /// When an *active* account was last relinked.
    async fn relinked_at(&self, account_id: &str) -> Option<u64> {
        let account = self.accounts.get_account(account_id).await.ok().flatten()?;
        if account.status != AccountStatus::Active {
            return None;
        }
        ParkedCounts::new(&self.accounts)
            .relinked_at(account_id)
            .await
            .ok()
            .filter(|t| *t > 0)
    }
}

/// The kind of a parked message and how many events / device updates it holds.
fn kind_of(v: &Value) -> Option<(Kind, usize)> {
    v.get("accountId").and_then(Value::as_str)?;
    if matches!(
        v.get("kind").and_then(Value::as_str),
        Some(PATCH_KIND | UNROUTED_KIND)
    ) {
        let n = v.get("devices").and_then(Value::as_array)?.len();
        return Some((Kind::Patches, n));
    }
    if v.get("kind").and_then(Value::as_str) == Some(IDENTITIES_KIND) {
        let n = v.get("records").and_then(Value::as_array)?.len();
        return Some((Kind::Identities, n));
    }
    let n = v.get("events").and_then(Value::as_array)?.len();
    Some((Kind::Conversions, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_they_are() {
        let c = json!({"v":1,"accountId":"1","advertiserId":1,"events":[{},{}]});
        assert!(matches!(kind_of(&c), Some((Kind::Conversions, 2))));
        let p = json!({"kind":PATCH_KIND,"accountId":"1","targets":[],"devices":[["s","d"]],"reason":""});
        assert!(matches!(kind_of(&p), Some((Kind::Patches, 1))));
        let u = json!({"kind":UNROUTED_KIND,"accountId":"","targets":[],"devices":[["s","d"],["s","e"]],"reason":""});
        assert!(matches!(kind_of(&u), Some((Kind::Patches, 2))));
        let i = json!({"kind":IDENTITIES_KIND,"accountId":"1","records":[{},{},{}],"reason":""});
        assert!(matches!(kind_of(&i), Some((Kind::Identities, 3))));
        assert!(kind_of(&json!({"events":[]})).is_none());
        assert!(kind_of(&json!("x")).is_none());
    }

    #[test]
    fn scope_from_the_task_input() {
        assert_eq!(
            Scope::from_input(&json!({"task":"redrive-dlq"})),
            Scope::All
        );
        assert_eq!(
            Scope::from_input(&json!({"task":"redrive-dlq","accountId":"7"})),
            Scope::Account("7".into())
        );
        assert_eq!(
            Scope::from_input(&json!({"task":"redrive-dlq","relinkedOnly":true})),
            Scope::Relinked
        );
    }
}
