//! The conversion-ingest function's handler: authorization, routes and the scheduled tasks.

use super::ConversionHandler;
use crate::http::router::{Matched, RouteLine, route_request};
use crate::http::{HttpRequest, HttpResponse};
use crate::runtime::{Handler, Invocation};

/// The routes of conversion-ingest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Route {
    Conversions,
}

/// Method, pattern, route (`crate::http::router`; the `/lambda-url/<fn>` prefix is ignored).
pub(super) const ROUTES: &[RouteLine<Route>] = &[(
    "POST",
    "/accounts/{accountId}/conversions",
    Route::Conversions,
)];

#[async_trait::async_trait]
impl Handler for ConversionHandler {
    async fn http(&self, req: HttpRequest, inv: Invocation) -> HttpResponse {
        // Authenticate and authorize before routing (crate::http::scopes owns the rules).
        if let Err(resp) = crate::http::scopes::authorize(&self.auth, &req).await {
            return resp;
        }
        match route_request(ROUTES, &req) {
            Matched::Route(Route::Conversions, ids) => {
                self.ctx.handle_conversions(&req, &inv, ids[0]).await
            }
            refused => refused.refusal().unwrap_or_else(HttpResponse::not_found),
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
