//! One-time data migrations, one step per scheduled upkeep until done
//! (`store::destinations::migrate`): today the segment listing of segments registered before it.

use super::ExportCtx;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once this process has seen every migration done: later runs skip the check.
static ALL_DONE: AtomicBool = AtomicBool::new(false);

/// One step of each unfinished migration.
pub async fn run_migrations(ctx: &ExportCtx) -> Result<Value, String> {
    if ALL_DONE.load(Ordering::Relaxed) {
        return Ok(json!({"segmentsGsi1": {"done": true, "migrated": 0}}));
    }
    let step = ctx
        .destinations
        .migrate_segment_listing_step()
        .await
        .map_err(|e| e.to_string())?;
    if step.done {
        ALL_DONE.store(true, Ordering::Relaxed);
    }
    Ok(json!({ "segmentsGsi1": step }))
}
