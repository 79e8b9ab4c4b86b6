//! The Amazon sandbox: a strict local stand-in for Login with Amazon and the Amazon Ads API
//! endpoints adsync uses (docs/amazon-contract.md), serving every region on one port, with the
//! admin API of docs/interfaces.md §4. See docs/sandbox.md.

// Handlers return `Result<_, Response>` so an early exit is the finished answer; the Err side is
// a Response by design (axum idiom), and these are cold error paths.
#![allow(clippy::result_large_err)]

pub mod accounts;
pub mod admin;
pub mod dp;
pub mod events;
pub mod faults;
pub mod http;
pub mod lwa;
pub mod privacy;
pub mod state;

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, patch, post};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tower_service::Service;

pub use state::Sandbox;

/// Every route, wrapped in the request-id / fault / log layer.
pub fn router(sb: Sandbox) -> Router {
    Router::new()
        .route("/ap/oa", get(lwa::consent))
        .route("/auth/o2/token", post(lwa::token))
        .route("/v2/profiles", get(accounts::profiles))
        .route("/dsp/advertisers", get(accounts::advertisers))
        .route("/v2/dp/audiencemetadata/", post(dp::create))
        .route(
            "/v2/dp/audiencemetadata/{id}",
            get(dp::get_one).put(dp::update),
        )
        .route("/v2/dp/audience", patch(dp::patch))
        .route("/v2/dp/users", patch(privacy::delete_users))
        .route("/dp/records/hashed/", post(privacy::upload_records))
        .route("/admin/user-deletions", get(privacy::admin_deletions))
        .route("/admin/hashed-records", get(privacy::admin_records))
        .route("/adsApi/v1/create/events", post(events::create_events))
        .route("/admin/health", get(admin::health))
        .route("/admin/clients", post(admin::create_client))
        .route("/admin/users", post(admin::create_user))
        .route(
            "/admin/users/{user_id}/refresh-token",
            post(admin::refresh_token),
        )
        .route("/admin/users/{user_id}/revoke", post(admin::revoke))
        .route(
            "/admin/users/{user_id}/expire-access-tokens",
            post(admin::expire_access_tokens),
        )
        .route(
            "/admin/faults",
            post(admin::add_fault).get(admin::list_faults),
        )
        .route("/admin/faults/{id}", delete(admin::delete_fault))
        .route("/admin/events", get(admin::events))
        .route("/admin/audiences", get(admin::audiences))
        .route("/admin/audiences/{id}/members", get(admin::members))
        .route("/admin/audiences/{id}/clock", post(admin::audience_clock))
        .route("/admin/requests", get(admin::requests))
        .route("/admin/config", post(admin::config))
        .fallback(not_found)
        // The track layer buffers bodies itself (with its own cap).
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            sb.clone(),
            http::track,
        ))
        .with_state(sb)
}

async fn not_found(req: axum::extract::Request) -> axum::response::Response {
    let rid = req
        .extensions()
        .get::<http::RequestId>()
        .cloned()
        .unwrap_or_else(|| http::RequestId(uuid::Uuid::new_v4().to_string()));
    http::ads_error(
        axum::http::StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "Resource not found",
        &rid,
    )
}

/// The error a service returns to make hyper close the connection without an answer.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by a sandbox fault")
    }
}

impl std::error::Error for Dropped {}

/// Serves until `shutdown` completes. Connections are driven by hyper directly (not
/// `axum::serve`) so that a `drop` fault can close a connection with no response at all.
pub async fn serve(listener: TcpListener, sb: Sandbox, shutdown: impl Future<Output = ()>) {
    let app = router(sb);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                eprintln!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let mut app = app.clone();
                async move {
                    let resp = match app.call(req.map(Body::new)).await {
                        Ok(r) => r,
                        Err(e) => match e {},
                    };
                    if resp.extensions().get::<http::DropConnection>().is_some() {
                        return Err(Dropped);
                    }
                    Ok::<_, Dropped>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Starts a quiet sandbox on an ephemeral 127.0.0.1 port (for tests); returns its base URL.
pub async fn spawn_for_tests(sb: Sandbox) -> std::io::Result<(String, SocketAddr)> {
    sb.lock().quiet = true;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener, sb, std::future::pending::<()>()));
    Ok((format!("http://{addr}"), addr))
}
