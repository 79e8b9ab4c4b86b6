//! The one lease of adsync's tables: shards, jobs and backfill slots (`store::jobs`) and erasure
//! jobs (`store::erasures`) are worked by whoever holds their item's lease.
//!
//! A leased item carries `leaseOwner` (S) and `leaseUntil` (N, epoch ms). Taking (or renewing)
//! is one conditional `UpdateItem` `SET leaseOwner = :me, leaseUntil = :until`, applied only
//! when the lease is free, expired or already ours ([`FREE_OR_MINE`], plus the item's own
//! guard), so two holders never overlap and a dead holder's item is taken over once its lease
//! runs out. Releasing sets `leaseUntil = 0` only while we still own it. Writes made under a
//! lease are fenced on `leaseOwner = :me`.

use super::StoreError;
use super::dynamo::{conditional, n, s};
use super::item::Item;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;

/// The lease part of a take's condition: free (expired) or already ours.
pub(crate) const FREE_OR_MINE: &str = "(leaseUntil < :now OR leaseOwner = :me)";

/// The lease of one item.
pub(crate) struct Lease<'a> {
    pub client: &'a Client,
    pub table: &'a str,
    pub key: Item,
}

impl Lease<'_> {
    /// The take (or renewal) of the lease by `owner` until `until_ms`, as of `now_ms`, under
    /// `condition` (which uses `:me` and `:now`, see [`guarded`]). Callers add what their
    /// condition needs besides, then send it through [`conditional`].
    pub fn take(
        &self,
        owner: &str,
        now_ms: impl ToString,
        until_ms: impl ToString,
        condition: &str,
    ) -> UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(self.table)
            .set_key(Some(self.key.clone()))
            .update_expression("SET leaseOwner = :me, leaseUntil = :until")
            .condition_expression(condition)
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":until", n(until_ms))
            .expression_attribute_values(":now", n(now_ms))
    }

    /// Gives the lease back (`leaseUntil = 0`) if `owner` still holds it; quietly does nothing
    /// otherwise.
    pub async fn release(&self, owner: &str, what: &str) -> Result<(), StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(self.table)
            .set_key(Some(self.key.clone()))
            .update_expression("SET leaseUntil = :zero")
            .condition_expression("leaseOwner = :me")
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":zero", n(0))
            .send()
            .await;
        conditional(res, what).map(|_| ())
    }
}

/// A take condition: the item's own `guard` and [`FREE_OR_MINE`].
pub(crate) fn guarded(guard: &str) -> String {
    format!("{guard} AND {FREE_OR_MINE}")
}
