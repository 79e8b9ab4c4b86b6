//! No raw identifiers in parked messages: after a fault run, every message on the local stack's
//! adsync queues is a sealed envelope without a raw IP address or MAID, and the redrive still
//! opens and delivers them.
//!
//! Needs the stack env (`set -a; . .local/stack.env; set +a`), with `ADSYNC_KMS_KEY_ID`.

use adsync_tests::conversions::{IngestFixture, purchase};
use adsync_tests::sandbox::random_id;
use serde_json::json;

/// Every message visible on the local stack's adsync queues (left visible: visibility 0).
async fn queued_bodies(sqs: &aws_sdk_sqs::Client) -> Vec<String> {
    let mut out = Vec::new();
    let queues = sqs
        .list_queues()
        .queue_name_prefix("adsync")
        .send()
        .await
        .unwrap();
    for url in queues.queue_urls() {
        for _ in 0..3 {
            let got = sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .visibility_timeout(0)
                .send()
                .await
                .unwrap();
            out.extend(
                got.messages()
                    .iter()
                    .filter_map(|m| m.body().map(String::from)),
            );
        }
    }
    out
}

#[tokio::test]
async fn parked_messages_carry_no_raw_ip_or_maid() {
    assert!(
        std::env::var("ADSYNC_KMS_KEY_ID").is_ok_and(|k| !k.is_empty()),
        "ADSYNC_KMS_KEY_ID is not set: the local stack (stack-up.sh) creates the key in moto"
    );
    let f = IngestFixture::new().await;
    let s = &f.login.sandbox;
    let fault = s
        .add_fault(
            &adsync_tests::sandbox::FaultSpec::status(500)
                .path_prefix("/adsApi/v1/create/events")
                .account_id(f.advertiser_id())
                .forever(),
        )
        .await
        .unwrap();
    let ip = "203.0.113.77";
    let maid = format!("EA7583CD-A667-48BC-B806-{:012}", random_id(12));
    let ts = chrono::Utc::now().to_rfc3339();
    let events = json!({"events": [
        {"name": "App_Open", "eventType": "MOBILE_APP_FIRST_START", "eventActionSource": "ANDROID",
         "timestamp": ts, "clientDedupeId": format!("sealed-{}", random_id(10)), "countryCode": "US",
         "matchKeys": {"maid": maid}, "consent": {"geo": {"ipAddress": ip}}},
        purchase("sealed", 1),
    ]});
    let r = f.post(&events).await;
    assert_eq!(r.status, 207, "{}", r.body);
    assert!(r.body.contains("parked"), "{}", r.body);

    // Raw messages on every adsync queue of the stack (this test's and any earlier fault
    // test's): sealed envelopes, no IP, no MAID.
    let bodies = queued_bodies(&f.login.aws.sqs).await;
    let own = f.ctx().parked.queue_url().to_string();
    let mine = f
        .login
        .aws
        .sqs
        .receive_message()
        .queue_url(&own)
        .max_number_of_messages(10)
        .visibility_timeout(0)
        .send()
        .await
        .unwrap();
    let mine: Vec<&str> = mine.messages().iter().filter_map(|m| m.body()).collect();
    assert!(!mine.is_empty(), "the parked batch is on the queue");
    for b in mine
        .iter()
        .copied()
        .chain(bodies.iter().map(String::as_str))
    {
        assert!(!b.contains(ip), "a raw IP on a queue: {b:.200}");
        assert!(!b.contains(&maid), "a raw MAID on a queue: {b:.200}");
        assert!(
            !b.contains("EA7583CD-A667-48BC-B806-") && !b.contains("203.0.113."),
            "a raw test identifier on a queue: {b:.200}"
        );
    }
    assert!(
        mine.iter().all(|b| b.starts_with("{\"sealed\":1")),
        "{mine:?}"
    );

    // The redrive opens them and delivers, once Amazon recovers.
    s.remove_fault(&fault).await.unwrap();
    let mut delivered = 0;
    for _ in 0..10 {
        delivered += f.redrive().await["delivered"].as_u64().unwrap();
        if delivered == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    }
    assert_eq!(delivered, 2);
}
