//! Backfill slots (`JOBS#slots` / `SLOT#<n>`): leased items that bound how many invocations run
//! backfills at once across every process.

use super::JobStore;
use crate::store::StoreError;
use crate::store::dynamo::{conditional, key};
use crate::store::lease::Lease;

impl JobStore {
    fn slot_lease(&self, slot: u16) -> Lease<'_> {
        Lease {
            client: &self.client,
            table: &self.table,
            key: key("JOBS#slots", format!("SLOT#{slot}")),
        }
    }

    /// Takes one of `slots` backfill slots until `until_ms` (the invocation's deadline), so at
    /// most `slots` invocations run backfills at once across every process. `None` when all are
    /// held by live invocations.
    pub async fn lease_slot(
        &self,
        slots: u16,
        owner: &str,
        now_ms: u64,
        until_ms: u64,
    ) -> Result<Option<u16>, StoreError> {
        for slot in 0..slots {
            let res = self
                .slot_lease(slot)
                .take(
                    owner,
                    now_ms,
                    until_ms,
                    "attribute_not_exists(pk) OR leaseUntil < :now OR leaseOwner = :me",
                )
                .send()
                .await;
            if conditional(res, "jobs lease slot")?.is_some() {
                return Ok(Some(slot));
            }
        }
        Ok(None)
    }

    /// Frees a backfill slot (quietly, if it is no longer ours).
    pub async fn release_slot(&self, slot: u16, owner: &str) -> Result<(), StoreError> {
        self.slot_lease(slot)
            .release(owner, "jobs release slot")
            .await
    }
}
