//! Tokens across processes: two clients with their own token caches (two Lambda instances)
//! refreshing the same login at once against a sandbox client that rotates refresh tokens, and
//! the guarded write-back that keeps a stale writer from overwriting a newer token.
//!
//! Needs the stack env (`set -a; . .local/stack.env; set +a`).

use adsync::amazon::AmazonClient;
use adsync::amazon::tokens::TokenSecret;
use adsync_tests::stack::{self, TestLogin};

/// A client like the login's own, with a token cache of its own (another process).
fn process(t: &TestLogin) -> AmazonClient {
    stack::amazon_client(
        &t.sandbox,
        &t.secrets,
        &t.sandbox_login.client.client_id,
        &t.sandbox_login.client.client_secret,
    )
    .with_private_token_cache()
}

/// Whether a refresh token still works at the sandbox's token endpoint.
async fn refresh_works(t: &TestLogin, refresh: &str) -> bool {
    let c = &t.sandbox_login.client;
    reqwest::Client::new()
        .post(t.sandbox.token_url())
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", c.client_id.as_str()),
            ("client_secret", c.client_secret.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .status()
        .is_success()
}

#[tokio::test]
async fn two_concurrent_refreshes_keep_a_working_token_with_rotation() {
    let t = stack::fresh_login(1).await;
    let mut client = t.sandbox_login.client.clone();
    client.rotate_refresh_tokens = true;
    t.sandbox.register_client(&client).await.unwrap();

    for round in 0..4 {
        // Both processes find no usable access token and refresh at the same moment.
        let mut s: TokenSecret = t.stored_secret().await.unwrap();
        s.access_token = None;
        s.access_token_expires_at = None;
        t.secrets.put_json(&t.login.secret_name, &s).await.unwrap();
        let (a, b) = (process(&t), process(&t));
        let (ta, tb) = tokio::join!(a.access_token(&t.login), b.access_token(&t.login));
        let (ta, tb) = (
            ta.unwrap_or_else(|e| panic!("round {round}, first: {e}")),
            tb.unwrap_or_else(|e| panic!("round {round}, second: {e}")),
        );
        // Both tokens work at Amazon, and the stored refresh token is the live one.
        for (c, tok) in [(&a, &ta), (&b, &tb)] {
            assert!(tok.expose().starts_with("Atza|"));
            c.list_profiles(&t.login)
                .await
                .unwrap_or_else(|e| panic!("round {round}: a refreshed token fails: {e}"));
        }
        let stored: TokenSecret = t.stored_secret().await.unwrap();
        assert!(stored.access_token.is_some(), "round {round}");
        assert_ne!(
            stored.refresh_token.expose(),
            s.refresh_token.expose(),
            "round {round}: the rotated refresh token was stored"
        );
        // The refresh token used is spent.
        assert!(!refresh_works(&t, s.refresh_token.expose()).await);
    }
    // A fresh process still refreshes with what is stored.
    let mut s: TokenSecret = t.stored_secret().await.unwrap();
    s.access_token = None;
    t.secrets.put_json(&t.login.secret_name, &s).await.unwrap();
    process(&t).access_token(&t.login).await.unwrap();
}

#[tokio::test]
async fn a_stale_writer_does_not_overwrite_a_newer_token() {
    let aws = stack::aws().await;
    let secrets = adsync::store::secrets::SecretsStore::new(aws.secrets.clone());
    let name = stack::secret_name("tokens");
    secrets
        .put_json(&name, &serde_json::json!({"v": 1}))
        .await
        .unwrap();
    let (_, read_by_a) = secrets
        .get_json_versioned::<serde_json::Value>(&name)
        .await
        .unwrap()
        .unwrap();
    let (_, read_by_b) = secrets
        .get_json_versioned::<serde_json::Value>(&name)
        .await
        .unwrap()
        .unwrap();
    // B writes first; A, writing over the version it read, loses and changes nothing.
    assert!(
        secrets
            .put_json_if_current(&name, &serde_json::json!({"v": "b"}), &read_by_b)
            .await
            .unwrap()
    );
    assert!(
        !secrets
            .put_json_if_current(&name, &serde_json::json!({"v": "a"}), &read_by_a)
            .await
            .unwrap()
    );
    let now: serde_json::Value = secrets.get_json(&name).await.unwrap().unwrap();
    assert_eq!(now["v"], "b");
    secrets.delete(&name).await.unwrap();
}
