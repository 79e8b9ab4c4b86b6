//! The audience fields of a mapping's view (`GET /destinations/{id}` and the creating answers):
//! `refresh` ([`super::refresh`]), `audienceSize`, `matchedSize`, `matchRate`, `measuredAt`,
//! `settings` ([`super::audience_meta`]) and `purge` ([`super::purge`]). All read from
//! DynamoDB: a view never calls Amazon.

use super::ExportCtx;
use serde_json::{Map, Value};

/// The extra fields of one mapping with an audience, given its job progress.
pub async fn extras(ctx: &ExportCtx, dst: &str, seg: &str, progress: &Value) -> Map<String, Value> {
    let st = match ctx.destinations.audience_state(dst, seg).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "audience state unavailable");
            None
        }
    };
    let d = match st {
        Some(_) => ctx.destinations.get_destination(dst).await.ok().flatten(),
        None => None,
    };
    let mut out = super::audience_meta::meta_view(st.as_ref(), d.as_ref());
    out.insert(
        "refresh".into(),
        super::refresh::refresh_view(Some(progress), st.as_ref()),
    );
    let purge = super::purge::purge_view(ctx, dst, seg, Some(progress)).await;
    out.insert("purge".into(), purge);
    out
}
