//! The oauth-callback function's handler: authorization, routes and the scheduled cleanup.

use super::*;

#[async_trait::async_trait]
impl Handler for Linking {
    async fn http(&self, req: HttpRequest, _inv: Invocation) -> HttpResponse {
        // Authenticate and authorize before routing (crate::http::scopes owns the rules; the
        // browser steps are open).
        let caller = match crate::http::scopes::authorize(&self.auth, &req).await {
            Ok(c) => c,
            Err(denied) => return denied,
        };
        self.route_authorized(&req, caller.as_ref()).await
    }

    async fn task(
        &self,
        name: &str,
        _input: serde_json::Value,
        inv: Invocation,
    ) -> Result<serde_json::Value, String> {
        match name {
            "cleanup" => {
                let s = self.cleanup(&inv, cleanup::ABANDONED_AFTER).await;
                serde_json::to_value(s).map_err(|e| e.to_string())
            }
            other => Err(format!(
                "unknown task {other:?}; this function runs \"cleanup\""
            )),
        }
    }
}

impl Linking {
    /// Routes a request whose caller is already authorized against `crate::http::scopes::POLICY`
    /// (the console checks its session's key the same way before it calls this in process).
    pub async fn route_authorized(
        &self,
        req: &HttpRequest,
        caller: Option<&Caller>,
    ) -> HttpResponse {
        let segs = req.segments();
        let m = req.method.as_str();
        match segs.as_slice() {
            [.., "oauth", "callback"] => match m {
                // GET only: a HEAD (link previews, prefetchers) must not spend the state.
                "GET" => self.get_callback(req).await,
                _ => HttpResponse::method_not_allowed("GET"),
            },
            [.., "oauth", "confirm"] => match m {
                "POST" => self.post_confirm(req).await,
                _ => HttpResponse::method_not_allowed("POST"),
            },
            [.., "connections"] => match m {
                "POST" => self.post_connections(req).await,
                _ => HttpResponse::method_not_allowed("POST"),
            },
            [.., "accounts"] => match m {
                "GET" => self.get_accounts(caller).await,
                _ => HttpResponse::method_not_allowed("GET"),
            },
            [.., "accounts", id] => match m {
                "DELETE" => self.delete_account(id).await,
                _ => HttpResponse::method_not_allowed("DELETE"),
            },
            _ => HttpResponse::not_found(),
        }
    }
}
