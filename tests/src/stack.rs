//! Helpers for tests that run against the local stack: AWS clients pointed at moto / DynamoDB
//! Local (from `.local/stack.env`), a fresh sandbox LwA client + user + linked login wired into
//! an [`AmazonClient`], fast retry policies, and a log capture to prove secrets stay out of logs.
//!
//! Every helper fails with a message saying what to start or source when the stack is missing;
//! nothing is silently skipped.

use crate::sandbox::{SandboxAdmin, SandboxLogin, SandboxUser};
use adsync::amazon::client::{DEFAULT_SCOPES, http_client};
use adsync::amazon::tokens::TokenSecret;
use adsync::amazon::{AmazonClient, Endpoints, LoginRef, LwaCredentials, Region, RetryPolicy};
use adsync::amazon::{SecretString, TokenGrant};
use adsync::aws::AwsClients;
use adsync::store::accounts::{AccountStatus, AccountStore, IntegratedAccount};
use adsync::store::secrets::SecretsStore;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const STACK_HINT: &str = "start the local stack with infra/scripts/stack-up.sh, then \
    `set -a; . /work/main/.local/stack.env; set +a` before `cargo test`";

/// The value of a stack variable, or a panic naming it.
pub fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!("environment variable {name} is not set: {STACK_HINT}"),
    }
}

/// AWS clients for the local stack. Refuses to run without `AWS_ENDPOINT_URL` (so a test never
/// talks to real AWS) and checks that moto answers.
pub async fn aws() -> AwsClients {
    let endpoint = env("AWS_ENDPOINT_URL");
    env("AWS_REGION");
    let aws = AwsClients::from_env().await;
    if let Err(e) = aws.secrets.list_secrets().max_results(1).send().await {
        panic!(
            "moto (Secrets Manager) at {endpoint} is not reachable: {}; {STACK_HINT}",
            aws_sdk_secretsmanager::error::DisplayErrorContext(e)
        );
    }
    aws
}

/// The sandbox admin client, after checking the sandbox answers.
pub async fn sandbox() -> SandboxAdmin {
    let s = SandboxAdmin::from_env();
    if let Err(e) = s.health().await {
        panic!("{e}");
    }
    s
}

/// Short retries so failure-path tests stay fast: 3 attempts, 20 ms base, 200 ms cap, 2 s per
/// request.
pub fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        request_timeout: Duration::from_secs(2),
    }
}

/// A fresh, unique secret name for a test.
pub fn secret_name(kind: &str) -> String {
    format!("adsync-test/{kind}/{}", uuid::Uuid::new_v4().simple())
}

/// An [`AmazonClient`] for an LwA client registered in the sandbox, pointed at the sandbox.
pub fn amazon_client(
    sandbox: &SandboxAdmin,
    secrets: &SecretsStore,
    client_id: &str,
    client_secret: &str,
) -> AmazonClient {
    AmazonClient::new(
        http_client(),
        Endpoints::single_host(sandbox.base_url()),
        LwaCredentials {
            client_id: client_id.to_string(),
            client_secret: client_secret.into(),
        },
        secrets.clone(),
        DEFAULT_SCOPES.to_string(),
    )
    .with_retry_policy(fast_policy())
}

/// A linked login ready to use: its own sandbox LwA client and user, the refresh token stored in
/// its own secret in moto (no access token yet), and a client with [`fast_policy`].
pub struct TestLogin {
    pub sandbox: SandboxAdmin,
    pub aws: AwsClients,
    pub secrets: SecretsStore,
    pub client: AmazonClient,
    pub login: LoginRef,
    pub sandbox_login: SandboxLogin,
}

impl TestLogin {
    pub fn user(&self) -> &SandboxUser {
        &self.sandbox_login.user
    }

    pub fn client_id(&self) -> &str {
        &self.sandbox_login.client.client_id
    }

    pub fn profile_id(&self) -> i64 {
        self.sandbox_login.user.profile().profile_id
    }

    pub fn advertiser_id(&self) -> i64 {
        self.sandbox_login.user.advertiser().advertiser_id
    }

    /// The token secret as stored in moto.
    pub async fn stored_secret(&self) -> Option<TokenSecret> {
        self.secrets
            .get_json(&self.login.secret_name)
            .await
            .expect("read the token secret")
    }
}

/// A fresh login for a US/USD user with `advertisers` advertisers.
pub async fn fresh_login(advertisers: usize) -> TestLogin {
    let sandbox = sandbox().await;
    let aws = aws().await;
    let secrets = SecretsStore::new(aws.secrets.clone());
    let sandbox_login = sandbox
        .new_login(advertisers)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let login = LoginRef {
        region: Region::NA,
        secret_name: secret_name("tokens"),
    };
    secrets
        .put_json(
            &login.secret_name,
            &TokenSecret {
                region: login.region,
                refresh_token: sandbox_login.refresh_token.clone().into(),
                access_token: None,
                access_token_expires_at: None,
            },
        )
        .await
        .expect("store the token secret in moto");
    let client = amazon_client(
        &sandbox,
        &secrets,
        &sandbox_login.client.client_id,
        &sandbox_login.client.client_secret,
    );
    TestLogin {
        sandbox,
        aws,
        secrets,
        client,
        login,
        sandbox_login,
    }
}

/// Everything written to a tracing subscriber, for asserting what logs contain.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Captures events (adsync at every level, everything else at `info`, as production would log)
/// as JSON lines on this thread until the guard drops. Use it from a current-thread runtime
/// (`#[tokio::test]`) so spawned work logs here too.
pub fn capture_logs() -> (LogCapture, tracing::subscriber::DefaultGuard) {
    let cap = LogCapture::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info,adsync=trace"))
        .with_writer(cap.clone())
        .finish();
    (cap, tracing::subscriber::set_default(subscriber))
}

/// Links `login` the way a confirmed consent does, without the browser: saves its refresh token
/// (with an already expired access token, so the first call refreshes) under
/// `{secret_prefix}{connection id}`, and stores its first advertiser as an active NA account in
/// `ACCOUNTS_TABLE`. Returns the account and the store it is in.
pub async fn seed_linked_account(
    aws: &AwsClients,
    amazon: &AmazonClient,
    login: &SandboxLogin,
    secret_prefix: &str,
) -> Result<(IntegratedAccount, AccountStore), String> {
    let connection_id = uuid::Uuid::new_v4().simple().to_string();
    let login_ref = LoginRef {
        region: Region::NA,
        secret_name: format!("{secret_prefix}{connection_id}"),
    };
    amazon
        .save_login(
            &login_ref,
            &TokenGrant {
                access_token: SecretString::new("Atza|expired".to_string()),
                refresh_token: Some(SecretString::new(login.refresh_token.clone())),
                expires_in: 0,
            },
        )
        .await
        .map_err(|e| format!("saving the test login in moto: {e}"))?;
    let adv = login.user.advertiser().clone();
    let account = IntegratedAccount {
        account_id: adv.advertiser_id.to_string(),
        region: Region::NA,
        profile_id: login.user.profile().profile_id,
        advertiser_id: adv.advertiser_id,
        name: adv.name.clone(),
        currency: adv.currency.clone(),
        country: adv.country.clone(),
        connection_id,
        token_secret: login_ref.secret_name.clone(),
        status: AccountStatus::Active,
        created_at: chrono::Utc::now().to_rfc3339(),
    };
    let accounts = AccountStore::new(aws.dynamodb.clone(), env("ACCOUNTS_TABLE"));
    accounts
        .put_account(&account)
        .await
        .map_err(|e| format!("seeding the account: {e}"))?;
    Ok((account, accounts))
}
