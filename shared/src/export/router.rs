//! The routes of segment export: one table for `crate::http::router`, and their dispatch.
//!
//! Every route needs an API key with the route's scope and no account restriction
//! (`crate::http::scopes`). A change to a destination that is being deleted (its purges run)
//! answers 409 before its handler runs ([`lifecycle::refuse_if_deleting`]).

use super::{ExportCtx, destinations, identities, lifecycle, members, privacy};
use crate::http::auth::ApiKeyAuth;
use crate::http::router::{Matched, RouteLine, route_request};
use crate::http::{HttpRequest, HttpResponse};
use crate::runtime::Invocation;
use futures::future::BoxFuture;

/// A segment-export route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    PutSegment,
    GetSegment,
    ListSegments,
    DeleteSegment,
    DeleteDestination,
    CreateDestination,
    ListDestinations,
    GetDestination,
    PatchDestination,
    AddMappings,
    RemoveMapping,
    PutFees,
    Qualifications,
    CreateDeletion,
    GetDeletion,
    Identities,
}

/// Method, path and route; `{…}` segments are captured in order.
const ROUTES: &[RouteLine<Route>] = &[
    ("PUT", "/segments/{segmentId}", Route::PutSegment),
    ("GET", "/segments/{segmentId}", Route::GetSegment),
    ("DELETE", "/segments/{segmentId}", Route::DeleteSegment),
    ("GET", "/segments", Route::ListSegments),
    ("POST", "/destinations", Route::CreateDestination),
    ("GET", "/destinations", Route::ListDestinations),
    ("GET", "/destinations/{id}", Route::GetDestination),
    ("PATCH", "/destinations/{id}", Route::PatchDestination),
    ("DELETE", "/destinations/{id}", Route::DeleteDestination),
    ("POST", "/destinations/{id}/mappings", Route::AddMappings),
    (
        "DELETE",
        "/destinations/{id}/mappings/{segmentId}",
        Route::RemoveMapping,
    ),
    (
        "PUT",
        "/destinations/{id}/mappings/{segmentId}/fees",
        Route::PutFees,
    ),
    ("POST", "/qualifications", Route::Qualifications),
    ("POST", "/privacy/deletions", Route::CreateDeletion),
    ("GET", "/privacy/deletions/{deletionId}", Route::GetDeletion),
    (
        "POST",
        "/accounts/{accountId}/identities",
        Route::Identities,
    ),
];

impl Route {
    /// Routes that change a destination: refused while it is being deleted.
    fn changes_destination(self) -> bool {
        matches!(
            self,
            Route::PatchDestination | Route::AddMappings | Route::PutFees
        )
    }
}

/// Routes one request of the segment-export function. Every route needs an API key with the
/// route's scope and no account restriction.
pub async fn route(
    ctx: &ExportCtx,
    auth: &ApiKeyAuth,
    req: &HttpRequest,
    inv: &Invocation,
) -> HttpResponse {
    // Authenticate and authorize before routing (crate::http::scopes owns the rules).
    if let Err(denied) = crate::http::scopes::authorize(auth, req).await {
        return denied;
    }
    route_authorized(ctx, req, inv).await
}

/// Routes a request whose caller is already authorized against `crate::http::scopes::POLICY`
/// (the console checks its session's key the same way before it calls this in process).
pub async fn route_authorized(
    ctx: &ExportCtx,
    req: &HttpRequest,
    inv: &Invocation,
) -> HttpResponse {
    let (r, caps) = match route_request(ROUTES, req) {
        Matched::Route(r, caps) => (r, caps),
        Matched::WrongMethod(allowed) => return HttpResponse::method_not_allowed(&allowed),
        Matched::NotFound => return HttpResponse::not_found(),
    };
    if r.changes_destination()
        && let Err(refused) =
            lifecycle::refuse_if_deleting(ctx, caps.first().copied().unwrap_or_default()).await
    {
        return refused.into_response();
    }
    dispatch(ctx, r, &caps, req, inv).await
}

/// The handler of route `r`, boxed: the routes' futures are large (debug builds reserve stack
/// for each arm's), and a request served in process (the console) polls them deep in its own.
fn dispatch<'a>(
    ctx: &'a ExportCtx,
    r: Route,
    caps: &[&'a str],
    req: &'a HttpRequest,
    inv: &'a Invocation,
) -> BoxFuture<'a, HttpResponse> {
    // The table's patterns capture what each route reads.
    let at = |i: usize| caps.get(i).copied().unwrap_or_default();
    match r {
        Route::PutSegment => Box::pin(destinations::put_segment(ctx, at(0), req)),
        Route::GetSegment => Box::pin(destinations::get_segment(ctx, at(0))),
        Route::ListSegments => Box::pin(lifecycle::list_segments(ctx, req)),
        Route::DeleteSegment => Box::pin(lifecycle::delete_segment(ctx, at(0), req, inv)),
        Route::DeleteDestination => Box::pin(lifecycle::delete_destination(ctx, at(0), req)),
        Route::CreateDestination => Box::pin(destinations::create_destination(ctx, req, inv)),
        Route::ListDestinations => Box::pin(destinations::list_destinations(ctx, req)),
        Route::GetDestination => Box::pin(destinations::get_destination(ctx, at(0))),
        Route::PatchDestination => Box::pin(destinations::patch_destination(ctx, at(0), req)),
        Route::AddMappings => Box::pin(destinations::add_mappings(ctx, at(0), req, inv)),
        Route::RemoveMapping => Box::pin(lifecycle::remove_mapping(ctx, at(0), at(1), req)),
        Route::PutFees => Box::pin(destinations::put_fees(ctx, at(0), at(1), req)),
        Route::Qualifications => Box::pin(members::handle_qualifications(ctx, req, inv)),
        Route::CreateDeletion => Box::pin(privacy::create_deletion(ctx, req, inv)),
        Route::GetDeletion => Box::pin(privacy::get_deletion(ctx, at(0))),
        Route::Identities => Box::pin(identities::handle(ctx, at(0), req, inv)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::router::route;

    #[test]
    fn routes_match_with_and_without_the_function_url_prefix() {
        use Route::*;
        for prefix in ["", "/lambda-url/segment-export"] {
            let r = |m: &str, p: &str| {
                let path = format!("{prefix}{p}");
                match route(ROUTES, m, &path) {
                    Matched::Route(r, caps) => {
                        Ok((r, caps.iter().map(|c| c.to_string()).collect::<Vec<_>>()))
                    }
                    Matched::WrongMethod(allowed) => Err(allowed),
                    Matched::NotFound => Err("not found".to_string()),
                }
            };
            let ok =
                |r: Route, caps: &[&str]| Ok((r, caps.iter().map(|c| c.to_string()).collect()));
            let allow = |a: &str| Err(a.to_string());
            let not_found = allow("not found");
            assert_eq!(r("PUT", "/segments/s1"), ok(PutSegment, &["s1"]));
            assert_eq!(r("POST", "/destinations"), ok(CreateDestination, &[]));
            assert_eq!(r("GET", "/destinations/"), ok(ListDestinations, &[]));
            assert_eq!(r("GET", "/destinations/d1"), ok(GetDestination, &["d1"]));
            assert_eq!(
                r("PATCH", "/destinations/d1"),
                ok(PatchDestination, &["d1"])
            );
            assert_eq!(
                r("POST", "/destinations/d1/mappings"),
                ok(AddMappings, &["d1"])
            );
            assert_eq!(
                r("DELETE", "/destinations/d1/mappings/s1"),
                ok(RemoveMapping, &["d1", "s1"])
            );
            assert_eq!(
                r("PUT", "/destinations/d1/mappings/s1/fees"),
                ok(PutFees, &["d1", "s1"])
            );
            assert_eq!(r("POST", "/qualifications"), ok(Qualifications, &[]));
            assert_eq!(
                r("DELETE", "/destinations/d1"),
                ok(DeleteDestination, &["d1"])
            );
            assert_eq!(r("GET", "/segments"), ok(ListSegments, &[]));
            assert_eq!(r("DELETE", "/segments/s1"), ok(DeleteSegment, &["s1"]));
            assert_eq!(r("POST", "/privacy/deletions"), ok(CreateDeletion, &[]));
            assert_eq!(
                r("GET", "/privacy/deletions/abc"),
                ok(GetDeletion, &["abc"])
            );
            assert_eq!(
                r("POST", "/accounts/42/identities"),
                ok(Identities, &["42"])
            );
            // The `Allow` lists, as they were before the table.
            assert_eq!(r("POST", "/segments"), allow("GET"));
            assert_eq!(r("POST", "/segments/s1"), allow("GET, PUT, DELETE"));
            assert_eq!(r("PUT", "/destinations"), allow("GET, POST"));
            assert_eq!(r("POST", "/destinations/d1"), allow("GET, PATCH, DELETE"));
            assert_eq!(r("GET", "/destinations/d1/mappings"), allow("POST"));
            assert_eq!(r("GET", "/destinations/d1/mappings/s1"), allow("DELETE"));
            assert_eq!(r("GET", "/destinations/d1/mappings/s1/fees"), allow("PUT"));
            assert_eq!(r("GET", "/qualifications"), allow("POST"));
            assert_eq!(r("GET", "/privacy/deletions"), allow("POST"));
            assert_eq!(r("POST", "/privacy/deletions/abc"), allow("GET"));
            assert_eq!(r("GET", "/accounts/42/identities"), allow("POST"));
            assert_eq!(r("GET", "/nope"), not_found);
            assert_eq!(r("GET", "/accounts/42"), not_found);
            assert_eq!(r("GET", "/destinations/d1/mappings/s1/fees/x"), not_found);
        }
        for r in [Route::PatchDestination, Route::AddMappings, Route::PutFees] {
            assert!(r.changes_destination());
        }
        assert!(!Route::GetDestination.changes_destination());
    }
}
