//! SecretsStore against moto: create, read back, overwrite, delete, missing and corrupt secrets.
//! Needs the local stack (`.local/stack.env`).

use adsync::store::StoreError;
use adsync::store::secrets::SecretsStore;
use adsync_tests::stack;
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Doc {
    a: String,
    n: i64,
}

#[tokio::test]
async fn create_overwrite_read_back_delete() {
    let aws = stack::aws().await;
    let store = SecretsStore::new(aws.secrets.clone());
    let name = stack::secret_name("store");

    assert_eq!(store.get_json::<Doc>(&name).await.unwrap(), None);

    let v1 = Doc {
        a: "one".into(),
        n: 72057594038053891,
    };
    store.put_json(&name, &v1).await.unwrap();
    assert_eq!(store.get_json::<Doc>(&name).await.unwrap(), Some(v1));

    let v2 = Doc {
        a: "two".into(),
        n: -1,
    };
    store.put_json(&name, &v2).await.unwrap();
    assert_eq!(store.get_json::<Doc>(&name).await.unwrap(), Some(v2));

    // Exactly what we wrote is what moto holds (one JSON document, current version; the stage
    // is named because moto answers a stage-less read with a stale version after a stage move).
    let raw = aws
        .secrets
        .get_secret_value()
        .secret_id(&name)
        .version_stage("AWSCURRENT")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.secret_string(), Some(r#"{"a":"two","n":-1}"#));

    store.delete(&name).await.unwrap();
    assert_eq!(store.get_json::<Doc>(&name).await.unwrap(), None);
    // Deleting again is fine, and the name can be reused at once (no recovery window).
    store.delete(&name).await.unwrap();
    let v3 = Doc {
        a: "three".into(),
        n: 3,
    };
    store.put_json(&name, &v3).await.unwrap();
    assert_eq!(store.get_json::<Doc>(&name).await.unwrap(), Some(v3));
    store.delete(&name).await.unwrap();
}

#[tokio::test]
async fn corrupt_secret_is_reported_without_its_value() {
    let aws = stack::aws().await;
    let store = SecretsStore::new(aws.secrets.clone());
    let name = stack::secret_name("store");
    aws.secrets
        .create_secret()
        .name(&name)
        .secret_string("not-json Atzr|SECRETVALUE")
        .send()
        .await
        .unwrap();
    let err = store.get_json::<Doc>(&name).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    let shown = format!("{err} {err:?}");
    assert!(shown.contains(&name), "{shown}");
    assert!(!shown.contains("SECRETVALUE"), "{shown}");

    // Valid JSON of the wrong shape names the problem, not the value.
    store
        .put_json(&name, &serde_json::json!({"a": "Atzr|SECRETVALUE"}))
        .await
        .unwrap();
    let err = store.get_json::<Doc>(&name).await.unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("missing field `n`"), "{shown}");
    assert!(!shown.contains("SECRETVALUE"), "{shown}");
    store.delete(&name).await.unwrap();
}

#[tokio::test]
async fn concurrent_first_writes_both_succeed() {
    let aws = stack::aws().await;
    let store = SecretsStore::new(aws.secrets.clone());
    let name = stack::secret_name("store");
    let a = Doc {
        a: "a".into(),
        n: 1,
    };
    let b = Doc {
        a: "b".into(),
        n: 2,
    };
    let (ra, rb) = tokio::join!(store.put_json(&name, &a), store.put_json(&name, &b));
    ra.unwrap();
    rb.unwrap();
    let got = store.get_json::<Doc>(&name).await.unwrap().unwrap();
    assert!(got == a || got == b, "{got:?}");
    store.delete(&name).await.unwrap();
}
