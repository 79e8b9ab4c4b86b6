//! The scheduled upkeep of live audiences, run by `{"task":"backfill"}` after audience creation
//! and before the backfill jobs (which then run the refreshes and purges it started, within the
//! same PATCH budget):
//!
//! 1. purges: start those whose wait is over, note finished ones, delete destinations whose
//!    purges are done ([`super::purge::plan_purges`]);
//! 2. refreshes due ([`super::refresh::plan_refreshes`]);
//! 3. metadata: pending settings `PUT`s, then due size reads, in what is left of the run's
//!    metadata share ([`super::audience_meta::run_metadata`]).

use super::ExportCtx;
use serde_json::{Value, json};

pub use crate::settings::options::UpkeepOptions;

/// Runs the upkeep; `metadata_deadline_ms` bounds the metadata calls (epoch ms), `now_ms` is
/// the clock refreshes and purges are planned by (tests pass a later one). Failures are
/// reported in the summary, never fatal: the backfill phase still runs.
pub async fn run_upkeep(
    ctx: &ExportCtx,
    metadata_deadline_ms: i64,
    opts: &UpkeepOptions,
    now_ms: i64,
) -> Value {
    let purges = super::purge::plan_purges(ctx, now_ms, opts.purge_settle).await;
    let refresh = super::refresh::plan_refreshes(ctx, now_ms).await;
    let meta =
        super::audience_meta::run_metadata(ctx, metadata_deadline_ms, opts.size_interval, now_ms)
            .await;
    let migrations = super::migrate::run_migrations(ctx).await;
    let as_json = |r: Result<Value, String>| r.unwrap_or_else(|e| json!({"error": e}));
    json!({
        "migrations": as_json(migrations),
        "purges": as_json(purges.map(|p| json!(p)).map_err(|e| e.to_string())),
        "refresh": as_json(refresh.map(|p| json!(p)).map_err(|e| e.to_string())),
        "metadata": as_json(meta.map(|p| json!(p)).map_err(|e| e.to_string())),
    })
}
