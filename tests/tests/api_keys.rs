//! ApiKeyAuth against moto: good key, wrong key, missing header, Bearer spelling, caching and
//! re-reading after rotation. Needs the local stack (`.local/stack.env`).

use adsync::http::HttpRequest;
use adsync::http::auth::{ApiKeyAuth, ApiKeyEntry, ApiKeysSecret};
use adsync::store::secrets::SecretsStore;
use adsync_tests::stack;
use std::time::Duration;

async fn seeded(keys: &[(&str, &str)]) -> (SecretsStore, String) {
    let aws = stack::aws().await;
    let store = SecretsStore::new(aws.secrets.clone());
    let name = stack::secret_name("api-keys");
    write_keys(&store, &name, keys).await;
    (store, name)
}

async fn write_keys(store: &SecretsStore, name: &str, keys: &[(&str, &str)]) {
    let secret = ApiKeysSecret {
        keys: keys
            .iter()
            .map(|(n, k)| ApiKeyEntry {
                name: n.to_string(),
                sha256: ApiKeyAuth::digest(k),
                ..Default::default()
            })
            .collect(),
    };
    store.put_json(name, &secret).await.unwrap();
}

fn req(auth: Option<&str>) -> HttpRequest {
    let r = HttpRequest::new("POST", "/accounts/1/conversions");
    match auth {
        Some(a) => r.with_header("Authorization", a),
        None => r,
    }
}

fn assert_unauthorized(r: Result<(), adsync::http::HttpResponse>, what: &str) {
    let resp = r.expect_err(what);
    assert_eq!(resp.status, 401, "{what}");
    let body = resp.json_body();
    assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}"
    );
    assert_eq!(
        resp.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
}

#[tokio::test]
async fn good_wrong_and_missing_keys() {
    let good = format!("key-{}", uuid::Uuid::new_v4());
    let other = format!("key-{}", uuid::Uuid::new_v4());
    let (store, name) = seeded(&[("first", &good), ("second", &other)]).await;
    let auth = ApiKeyAuth::new(store.clone(), name.clone());

    auth.check(&req(Some(&format!("Bearer {good}"))))
        .await
        .unwrap();
    auth.check(&req(Some(&format!("Bearer {other}"))))
        .await
        .unwrap();
    // The scheme is case-insensitive.
    auth.check(&req(Some(&format!("bearer {good}"))))
        .await
        .unwrap();
    auth.check(&req(Some(&format!("BEARER {good}"))))
        .await
        .unwrap();

    assert_unauthorized(
        auth.check(&req(Some("Bearer wrong-key"))).await,
        "wrong key",
    );
    assert_unauthorized(
        auth.check(&req(Some(&format!("Bearer {good}x")))).await,
        "longer key",
    );
    assert_unauthorized(auth.check(&req(None)).await, "missing header");
    assert_unauthorized(auth.check(&req(Some("Bearer "))).await, "empty key");
    assert_unauthorized(
        auth.check(&req(Some(&format!("Basic {good}")))).await,
        "other scheme",
    );
    assert_unauthorized(auth.check(&req(Some(&good))).await, "no scheme");
    // The digest itself is not a key.
    let digest = ApiKeyAuth::digest(&good);
    assert_unauthorized(
        auth.check(&req(Some(&format!("Bearer {digest}")))).await,
        "digest",
    );
    // The answer never echoes the key.
    let resp = auth
        .check(&req(Some("Bearer wrong-key-SENTINEL")))
        .await
        .unwrap_err();
    assert!(!resp.body.contains("SENTINEL"), "{}", resp.body);

    store.delete(&name).await.unwrap();
}

#[tokio::test]
async fn missing_secret_refuses_every_key() {
    let aws = stack::aws().await;
    let store = SecretsStore::new(aws.secrets.clone());
    let auth = ApiKeyAuth::new(store, stack::secret_name("api-keys"));
    assert_unauthorized(auth.check(&req(Some("Bearer anything"))).await, "no secret");
}

#[tokio::test]
async fn digests_are_cached_and_reread_after_the_ttl() {
    let old = format!("key-{}", uuid::Uuid::new_v4());
    let new = format!("key-{}", uuid::Uuid::new_v4());
    let (store, name) = seeded(&[("old", &old)]).await;

    // Default TTL (5 min): a rotation is not seen yet, the cached digests keep answering.
    let cached = ApiKeyAuth::new(store.clone(), name.clone());
    cached
        .check(&req(Some(&format!("Bearer {old}"))))
        .await
        .unwrap();
    let short = ApiKeyAuth::with_ttl(store.clone(), name.clone(), Duration::from_millis(300));
    short
        .check(&req(Some(&format!("Bearer {old}"))))
        .await
        .unwrap();

    write_keys(&store, &name, &[("new", &new)]).await;
    cached
        .check(&req(Some(&format!("Bearer {old}"))))
        .await
        .unwrap();
    assert_unauthorized(
        cached.check(&req(Some(&format!("Bearer {new}")))).await,
        "not re-read yet",
    );

    // A short TTL re-reads: the old key stops working, the new one works.
    tokio::time::sleep(Duration::from_millis(400)).await;
    short
        .check(&req(Some(&format!("Bearer {new}"))))
        .await
        .unwrap();
    assert_unauthorized(
        short.check(&req(Some(&format!("Bearer {old}")))).await,
        "rotated out",
    );

    store.delete(&name).await.unwrap();
}
