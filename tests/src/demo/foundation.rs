//! Demo step 0: the local stack is wired up. The Amazon sandbox answers, each function answers
//! under `cargo lambda watch`, a call without (or with a wrong) API key gets 401, and a call with
//! the key gets through.

use super::{Demo, FUNCTIONS, expect_status};
use reqwest::Method;
use serde_json::json;

/// A route of each function that requires the API key.
fn protected_route(function: &str) -> (Method, &'static str) {
    match function {
        "oauth-callback" => (Method::GET, "/accounts"),
        "segment-export" => (Method::GET, "/destinations"),
        _ => (Method::POST, "/accounts/1/conversions"),
    }
}

pub async fn run(demo: &mut Demo) -> Result<(), String> {
    let health = demo
        .send(
            demo.http.get(format!("{}/admin/health", demo.amazon_url)),
            "Amazon sandbox health",
        )
        .await?;
    expect_status(&health, 200, "GET /admin/health on the Amazon sandbox")?;
    if health.json()["ok"] != json!(true) {
        return Err(format!(
            "the Amazon sandbox is not healthy: {}",
            health.short_body()
        ));
    }
    demo.ok(format!("Amazon sandbox answers at {}", demo.amazon_url));

    for function in FUNCTIONS {
        let (method, path) = protected_route(function);
        let body = (method == Method::POST).then(|| json!({"events": []}));

        let reply = demo
            .call(method.clone(), function, path, false, body.as_ref())
            .await?;
        let what = format!("{method} {path} on {function} without an API key");
        expect_status(&reply, 401, &what)?;
        if reply.error_code().as_deref() != Some("unauthorized") {
            return Err(format!(
                "{what}: expected error code \"unauthorized\", got {}",
                reply.short_body()
            ));
        }
        demo.ok(format!(
            "{function} answers; {method} {path} without a key → 401 unauthorized"
        ));

        let req = demo
            .http
            .request(method.clone(), demo.url(function, path))
            .bearer_auth("not-the-key");
        let req = match &body {
            Some(b) => req.json(b),
            None => req,
        };
        let reply = demo.send(req, &what).await?;
        expect_status(
            &reply,
            401,
            &format!("{method} {path} on {function} with a wrong key"),
        )?;
        demo.ok(format!("{function}: a wrong key → 401 too"));
    }

    let reply = demo
        .call(Method::GET, "oauth-callback", "/accounts", true, None)
        .await?;
    expect_status(
        &reply,
        200,
        "GET /accounts on oauth-callback with the API key",
    )?;
    demo.ok("GET /accounts with the API key → 200");
    Ok(())
}
