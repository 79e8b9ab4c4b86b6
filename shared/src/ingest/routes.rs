//! The conversion-ingest function's handler: authorization, routes and the scheduled tasks.

use super::*;

/// The path's segments without the `cargo lambda watch` prefix (`/lambda-url/<function>/…`).
pub(super) fn route_segments(path: &str) -> Vec<&str> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segs.first() == Some(&"lambda-url") && segs.len() >= 2 {
        segs[2..].to_vec()
    } else {
        segs
    }
}

#[async_trait::async_trait]
impl Handler for ConversionHandler {
    async fn http(&self, req: HttpRequest, inv: Invocation) -> HttpResponse {
        // Authenticate and authorize before routing (crate::http::scopes owns the rules).
        if let Err(resp) = crate::http::scopes::authorize(&self.auth, &req).await {
            return resp;
        }
        let segs = route_segments(&req.path);
        match segs.as_slice() {
            ["accounts", account_id, "conversions"] => {
                if req.method != "POST" {
                    return HttpResponse::method_not_allowed("POST");
                }
                self.ctx.handle_conversions(&req, &inv, account_id).await
            }
            _ => HttpResponse::not_found(),
        }
    }

    async fn task(
        &self,
        name: &str,
        input: serde_json::Value,
        inv: Invocation,
    ) -> Result<serde_json::Value, String> {
        match name {
            "redrive" => {
                let s = self.ctx.redrive(&inv).await;
                serde_json::to_value(s).map_err(|e| e.to_string())
            }
            "redrive-dlq" => {
                use crate::parked_dlq::{DeadLetterMover, Scope};
                let mover = DeadLetterMover::for_conversions(&self.ctx.parked, &self.ctx.accounts)?;
                let s = mover.run(&Scope::from_input(&input), &inv).await?;
                serde_json::to_value(s).map_err(|e| e.to_string())
            }
            other => Err(format!(
                "unknown task {other:?}; this function runs \"redrive\" and \"redrive-dlq\""
            )),
        }
    }
}
