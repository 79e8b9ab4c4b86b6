//! Fault injection and the request log.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

async fn profiles(env: &Env, c: &Caller) -> Result<reqwest::Response, reqwest::Error> {
    env.ads(Method::GET, "/v2/profiles", c).send().await
}

#[tokio::test]
async fn status_fault_counts_down_and_matches_only_its_target() {
    let env = start().await;
    let c = env.caller(1).await;
    let bystander = env.caller(1).await;
    let id = env
        .admin
        .add_fault(
            &FaultSpec::status(503)
                .retry_after(2)
                .client_id(c.client_id())
                .path_prefix("/v2/")
                .method("get")
                .times(2),
        )
        .await
        .unwrap();
    assert!(!id.is_empty());

    for _ in 0..2 {
        let r = profiles(&env, &c).await.unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "2");
        assert!(r.headers().contains_key("x-amzn-requestid"));
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], "SERVICE_UNAVAILABLE");
    }
    assert_eq!(
        profiles(&env, &c).await.unwrap().status(),
        200,
        "times ran out"
    );
    assert_eq!(profiles(&env, &bystander).await.unwrap().status(), 200);
    // Used up faults disappear.
    let r = env
        .http
        .delete(env.url(&format!("/admin/faults/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn fault_bodies_and_account_match_and_delete() {
    let env = start().await;
    let c = env.caller(1).await;
    // Default DP-shaped body for a 429 on the DP path, matched by the Scope header.
    env.admin
        .add_fault(
            &FaultSpec::status(429)
                .retry_after(1)
                .account_id(c.profile_id())
                .path_prefix("/v2/dp/"),
        )
        .await
        .unwrap();
    let r = env
        .dp(
            Method::PATCH,
            "/v2/dp/audience",
            &c,
            json!({"patches": []}).to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["errors"][0]["errorType"], "TOO_MANY_REQUESTS");

    // Custom body on the Events API, matched by Amazon-Ads-AccountId; deleted before it runs out.
    let id = env
        .admin
        .add_fault(
            &FaultSpec::status(500)
                .body(json!({"code": "INTERNAL_ERROR", "message": "boom"}))
                .account_id(c.advertiser_id())
                .forever(),
        )
        .await
        .unwrap();
    let faults: Value = env
        .http
        .get(env.url("/admin/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(faults["faults"].as_array().unwrap().len(), 1);
    for _ in 0..3 {
        let r = env
            .events(&c, json!({"events": []}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 500);
        assert_eq!(r.json::<Value>().await.unwrap()["message"], "boom");
    }
    env.admin.remove_fault(&id).await.unwrap();
    let r = env
        .events(&c, json!({"events": []}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "back to normal validation");

    // Faults on the token endpoint match the form's client_id.
    env.admin
        .add_fault(
            &FaultSpec::status(503)
                .client_id(c.client_id())
                .path_prefix("/auth/o2/token"),
        )
        .await
        .unwrap();
    let r = env.refresh(&c.login.client, &c.login.refresh_token).await;
    assert_eq!(r.status(), 503);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    assert_eq!(
        env.refresh(&c.login.client, &c.login.refresh_token)
            .await
            .status(),
        200
    );

    // A bad fault is refused.
    let r = env
        .http
        .post(env.url("/admin/faults"))
        .json(&json!({"match": {}, "action": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn delay_fault_then_normal_answer() {
    let env = start().await;
    let c = env.caller(1).await;
    env.admin
        .add_fault(&FaultSpec::delay_ms(400).client_id(c.client_id()))
        .await
        .unwrap();
    let started = Instant::now();
    let r = profiles(&env, &c).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(400));
    let started = Instant::now();
    assert_eq!(profiles(&env, &c).await.unwrap().status(), 200);
    assert!(started.elapsed() < Duration::from_millis(400));
}

#[tokio::test]
async fn drop_fault_closes_the_connection_without_an_answer() {
    let env = start().await;
    let c = env.caller(1).await;
    env.admin
        .add_fault(
            &FaultSpec::drop_connection()
                .client_id(c.client_id())
                .method("POST")
                .path_prefix("/adsApi/"),
        )
        .await
        .unwrap();
    let err = env
        .events(&c, json!({"events": []}).to_string())
        .send()
        .await
        .expect_err("the connection must be dropped");
    assert!(!err.is_status() && !err.is_timeout(), "{err:?}");
    // Next one goes through.
    let r = env
        .events(&c, json!({"events": []}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let log = env
        .admin
        .requests(Some(c.client_id()), Some("/adsApi/"))
        .await
        .unwrap();
    let statuses: Vec<u16> = log.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [0, 400]);
}

#[tokio::test]
async fn request_log_records_non_admin_requests() {
    let env = start().await;
    let c = env.caller(1).await;
    assert_eq!(profiles(&env, &c).await.unwrap().status(), 200);
    let body = json!({"events": []}).to_string();
    let len = body.len() as u64;
    env.events(&c, body).send().await.unwrap();
    let log = env.admin.requests(Some(c.client_id()), None).await.unwrap();
    let paths: Vec<(&str, &str, u16)> = log
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str(), r.status))
        .collect();
    assert_eq!(
        paths,
        [
            ("POST", "/auth/o2/token", 200),
            ("GET", "/v2/profiles", 200),
            ("POST", "/adsApi/v1/create/events", 400)
        ]
    );
    assert_eq!(
        log[1].account_id.as_deref(),
        Some(c.profile_id().to_string().as_str())
    );
    assert_eq!(
        log[2].account_id.as_deref(),
        Some(c.advertiser_id().to_string().as_str())
    );
    assert_eq!(log[2].bytes, len);
    assert!(log[2].at_ms >= log[1].at_ms);
    let all = env.admin.requests(None, Some("/admin")).await.unwrap();
    assert!(all.is_empty(), "admin calls are not logged");
}
