//! Throughput guard: the backfill benchmark sends hundreds of 2000-patch bodies; the sandbox must
//! not be the bottleneck (run with `--ignored` to see the numbers on a debug build).

mod common;

use std::time::Instant;

use common::*;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
#[ignore = "timing; run by hand"]
async fn many_full_patch_bodies() {
    let env = start().await;
    env.admin
        .set_config(&SandboxConfig {
            metadata_tps: Some(0),
            patch_tps: Some(0),
            ..Default::default()
        })
        .await
        .unwrap();
    let c = env.caller(1).await;
    let mut ids = Vec::new();
    for ext in ["a", "b"] {
        let body = json!({"name": "Performance audience", "description": "", "advertiserId": c.advertiser_id(),
            "metadata": {"type": "DATA_PROVIDER", "externalAudienceId": ext, "dataSourceCountry": ["US"]}});
        let text = env
            .dp(
                Method::POST,
                "/v2/dp/audiencemetadata/",
                &c,
                body.to_string(),
            )
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        ids.push(v["audience"]["id"].as_i64().unwrap());
    }
    let bodies = 50;
    let prepared: Vec<String> = (0..bodies)
        .map(|b| {
            let patches: Vec<_> = (0..2000)
                .map(|i| json!({"op": "add", "path": format!("/COOKIE-{:08}-aaaa-bbbb-cccc-{:012}/audiences", b, i), "value": ids}))
                .collect();
            json!({"patches": patches}).to_string()
        })
        .collect();
    let started = Instant::now();
    for body in prepared {
        let r = env
            .dp(Method::PATCH, "/v2/dp/audience", &c, body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let per = started.elapsed() / bodies;
    eprintln!("{bodies} bodies of 2000 patches: {per:?} per body");
    assert_eq!(
        env.admin.audiences(c.advertiser_id()).await.unwrap()[0].member_count,
        2000 * bodies as u64
    );
}
