//! Targets: the active mappings a segment's membership goes to.

use super::dirty_marks::needs_dirty_mark;
use crate::export::ExportCtx;
use crate::store::StoreError;
use crate::store::accounts::IntegratedAccount;
use crate::store::destinations::{MappingStatus, SegmentMapping};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One active mapping, resolved to its audience and account.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    pub destination_id: String,
    pub segment_id: String,
}

#[derive(Clone, Debug)]
pub(super) struct Target {
    pub(super) r: TargetRef,
    pub(super) audience_id: i64,
    pub(super) account_id: String,
}

/// Per-call caches of destinations' accounts.
#[derive(Default)]
pub(super) struct Lookups {
    pub(super) account_of_destination: HashMap<String, Option<String>>,
    pub(super) accounts: HashMap<String, Option<IntegratedAccount>>,
}

impl Lookups {
    pub(super) async fn account_id(
        &mut self,
        ctx: &ExportCtx,
        destination_id: &str,
    ) -> Result<Option<String>, StoreError> {
        if let Some(a) = self.account_of_destination.get(destination_id) {
            return Ok(a.clone());
        }
        let a = ctx
            .destinations
            .get_destination(destination_id)
            .await?
            .map(|d| d.account_id);
        self.account_of_destination
            .insert(destination_id.to_string(), a.clone());
        Ok(a)
    }

    pub(super) async fn account(
        &mut self,
        ctx: &ExportCtx,
        account_id: &str,
    ) -> Result<Option<IntegratedAccount>, StoreError> {
        if let Some(a) = self.accounts.get(account_id) {
            return Ok(a.clone());
        }
        let a = ctx.accounts.get_account(account_id).await?;
        self.accounts.insert(account_id.to_string(), a.clone());
        Ok(a)
    }

    /// A segment's active targets: its mappings (neither removed nor failed), each resolved by
    /// [`Lookups::target`]; with the last lookup error, when some of its targets are unknown.
    pub(super) async fn of_segment(
        &mut self,
        ctx: &ExportCtx,
        segment_id: &str,
    ) -> (Vec<Target>, Option<StoreError>) {
        let mappings = match ctx.destinations.mappings_for_segment(segment_id).await {
            Ok(m) => m,
            Err(e) => return (Vec::new(), Some(e)),
        };
        let (mut targets, mut error) = (Vec::new(), None);
        for m in mappings {
            if matches!(m.status, MappingStatus::Removed | MappingStatus::Failed) {
                continue;
            }
            match self.target(ctx, &m).await {
                Ok(t) => targets.extend(t),
                Err(e) => error = Some(e),
            }
        }
        (targets, error)
    }

    /// Resolves a mapping (re-read consistently: the segment index may lag) to a target when it
    /// is active.
    pub(super) async fn target(
        &mut self,
        ctx: &ExportCtx,
        m: &SegmentMapping,
    ) -> Result<Option<Target>, StoreError> {
        let Some(m) = ctx
            .destinations
            .get_mapping(&m.destination_id, &m.segment_id)
            .await?
        else {
            return Ok(None);
        };
        let (MappingStatus::Active, Some(audience_id)) = (m.status, m.audience_id) else {
            return Ok(None);
        };
        let Some(account_id) = self.account_id(ctx, &m.destination_id).await? else {
            return Ok(None);
        };
        Ok(Some(Target {
            r: TargetRef {
                destination_id: m.destination_id,
                segment_id: m.segment_id,
            },
            audience_id,
            account_id,
        }))
    }
}

/// Where a delta's rows go: targets per segment, the mappings whose backfill needs dirty marks,
/// the segments some of whose targets could not be read (their rows are parked unrouted for the
/// redrive), and the lookup errors.
#[derive(Default)]
pub(super) struct Routing {
    pub(super) targets: BTreeMap<String, Vec<Target>>,
    pub(super) dirty_jobs: Vec<TargetRef>,
    pub(super) unrouted: BTreeSet<String>,
    pub(super) errors: Vec<String>,
}

/// Routes `segments` (each once, on any account): `POST /qualifications` for its rows, the
/// redrive for devices parked unrouted.
pub(super) async fn route<'a>(
    ctx: &ExportCtx,
    lookups: &mut Lookups,
    segments: impl IntoIterator<Item = &'a String>,
) -> Routing {
    let mut routing = Routing::default();
    let segments: BTreeSet<&String> = segments.into_iter().collect();
    for seg in segments {
        let (targets, error) = lookups.of_segment(ctx, seg).await;
        if let Some(e) = error {
            let what = format!("mapping lookup failed for segment {seg}; its rows are parked");
            routing
                .errors
                .push(super::delivery::store_failed(&what, &e));
            routing.unrouted.insert(seg.clone());
        }
        for t in targets {
            if needs_dirty_mark(ctx, &t.r).await {
                routing.dirty_jobs.push(t.r.clone());
            }
            routing.targets.entry(seg.clone()).or_default().push(t);
        }
    }
    routing
}
