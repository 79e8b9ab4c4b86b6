//! Backfill slots: how many invocations run backfills at once.

use super::*;

impl JobStore {
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
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(Self::key("JOBS#slots", &format!("SLOT#{slot}"))))
                .update_expression("SET leaseOwner = :me, leaseUntil = :until")
                .condition_expression(
                    "attribute_not_exists(pk) OR leaseUntil < :now OR leaseOwner = :me",
                )
                .expression_attribute_values(":me", s(owner))
                .expression_attribute_values(":until", n(until_ms))
                .expression_attribute_values(":now", n(now_ms))
                .send()
                .await;
            match res {
                Ok(_) => return Ok(Some(slot)),
                Err(e) if is_condition_failed(&e) => continue,
                Err(e) => return Err(aws("lease slot", e)),
            }
        }
        Ok(None)
    }

    /// Frees a backfill slot (quietly, if it is no longer ours).
    pub async fn release_slot(&self, slot: u16, owner: &str) -> Result<(), StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key("JOBS#slots", &format!("SLOT#{slot}"))))
            .update_expression("SET leaseUntil = :zero")
            .condition_expression("leaseOwner = :me")
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":zero", n(0))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Ok(()),
            Err(e) => Err(aws("release slot", e)),
        }
    }
}
