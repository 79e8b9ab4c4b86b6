//! The oauth-callback function's handler: authorization, routes and the scheduled cleanup.

use super::{Linking, cleanup};
use crate::http::auth::Caller;
use crate::http::router::{Matched, RouteLine, route_request};
use crate::http::{HttpRequest, HttpResponse};
use crate::runtime::{Handler, Invocation};

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

/// The routes of oauth-callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Route {
    Callback,
    Confirm,
    Connections,
    Accounts,
    Account,
}

/// Method, pattern, route (`crate::http::router`; the `/lambda-url/<fn>` prefix is ignored).
/// Only these exact paths reach the function (API Gateway routes them, `crate::http::scopes`
/// authorizes them); a path under a stage prefix is not served.
pub(super) const ROUTES: &[RouteLine<Route>] = &[
    // GET only: a HEAD (link previews, prefetchers) must not spend the state.
    ("GET", "/oauth/callback", Route::Callback),
    ("POST", "/oauth/confirm", Route::Confirm),
    ("POST", "/connections", Route::Connections),
    ("GET", "/accounts", Route::Accounts),
    ("DELETE", "/accounts/{accountId}", Route::Account),
];

impl Linking {
    /// Routes a request whose caller is already authorized against `crate::http::scopes::POLICY`
    /// (the console checks its session's key the same way before it calls this in process).
    pub async fn route_authorized(
        &self,
        req: &HttpRequest,
        caller: Option<&Caller>,
    ) -> HttpResponse {
        match route_request(ROUTES, req) {
            Matched::Route(Route::Callback, _) => self.get_callback(req).await,
            Matched::Route(Route::Confirm, _) => self.post_confirm(req).await,
            Matched::Route(Route::Connections, _) => self.post_connections(req).await,
            Matched::Route(Route::Accounts, _) => self.get_accounts(caller).await,
            Matched::Route(Route::Account, ids) => self.delete_account(ids[0]).await,
            refused => refused.refusal().unwrap_or_else(HttpResponse::not_found),
        }
    }
}
