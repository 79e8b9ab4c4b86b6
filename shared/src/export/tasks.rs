//! The scheduled tasks of segment export (see the module doc of `super`): `backfill`, `redrive`
//! and `redrive-dlq`.

use super::{
    AUDIENCE_CREATION_SHARE, ExportCtx, destinations, erasure, identities, members, upkeep,
};
use crate::runtime::Invocation;
use serde_json::{Value, json};

/// Runs a scheduled task: `backfill` (audience creation, then backfill jobs) or `redrive`.
pub async fn run_task(ctx: &ExportCtx, name: &str, inv: &Invocation) -> Result<Value, String> {
    run_task_with(ctx, name, &json!({ "task": name }), inv).await
}

/// A scheduled step's summary, or its error.
fn step_view(r: &Result<Value, String>) -> Value {
    match r {
        Ok(v) => v.clone(),
        Err(e) => json!({ "error": e }),
    }
}

/// `out` when every step succeeded, else the first error (logged with the whole summary).
fn both_ok<const N: usize>(out: Value, steps: [Result<Value, String>; N]) -> Result<Value, String> {
    match steps.into_iter().find_map(Result::err) {
        None => Ok(out),
        Some(e) => {
            tracing::error!(summary = %out, "a scheduled step failed");
            Err(e)
        }
    }
}

/// [`run_task`] with the task's input (`redrive-dlq` reads its scope from it).
pub async fn run_task_with(
    ctx: &ExportCtx,
    name: &str,
    input: &Value,
    inv: &Invocation,
) -> Result<Value, String> {
    match name {
        "backfill" => {
            let started = crate::runtime::now_ms() as i64;
            let budget = inv.remaining().mul_f64(AUDIENCE_CREATION_SHARE);
            let audiences = destinations::create_pending_audiences(ctx, inv, budget).await;
            // Refreshes, purges and audience metadata, within the same metadata share.
            let upkeep = upkeep::run_upkeep(
                ctx,
                started + budget.as_millis() as i64,
                &ctx.options.upkeep,
                crate::runtime::now_ms() as i64,
            )
            .await;
            let mut metrics = crate::telemetry::Metrics::new(ctx.metrics_fn);
            metrics
                .count("AudiencesCreated", audiences.created as u64)
                .count("AudienceCreationFailures", audiences.failed as u64);
            metrics.emit();
            // Erasures first (rare, and owed to a person); a failure of one step never skips
            // the other.
            let erasures = erasure::run_erasures(ctx, inv, &Default::default()).await;
            let backfill = members::run_backfill(ctx, inv).await;
            let out = json!({
                "task": "backfill", "audiences": audiences, "upkeep": upkeep,
                "backfill": step_view(&backfill), "erasures": step_view(&erasures)
            });
            both_ok(out, [backfill, erasures])
        }
        "redrive" => {
            let redrive = members::run_redrive(ctx, inv).await;
            let identities = identities::run_redrive(ctx, inv).await;
            let out = json!({
                "task": "redrive", "redrive": step_view(&redrive),
                "identities": step_view(&identities)
            });
            both_ok(out, [redrive, identities])
        }
        "redrive-dlq" => {
            use crate::parked_dlq::{DeadLetterMover, Scope};
            let mover = DeadLetterMover::for_patches(&ctx.parked, &ctx.accounts)?;
            let moved = mover.run(&Scope::from_input(input), inv).await?;
            Ok(json!({"task": "redrive-dlq", "redriveDlq": moved}))
        }
        other => Err(format!(
            "unknown task {other:?} (expected \"backfill\", \"redrive\" or \"redrive-dlq\")"
        )),
    }
}
