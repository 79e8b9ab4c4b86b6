//! AWS SDK clients, built once per process and shared by every invocation.

use aws_config::SdkConfig;
use std::sync::{Arc, OnceLock};

/// The SDK clients adsync uses. Cloning is cheap (the SDK clients are `Arc` inside).
/// DynamoDB and Secrets Manager serve nearly every request and are built at cold start; SQS
/// (parking and redrives) is built by its first call ([`Lazy`]).
#[derive(Clone, Debug)]
pub struct AwsClients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    pub sqs: Lazy<aws_sdk_sqs::Client>,
}

/// An SDK client built on its first use from the process's shared configuration. Building a
/// client parses its service's endpoint rules (a JSON document and its patterns): the largest
/// part of a function's own start-up work, so a client a cold start may not need waits for the
/// call that does. Dereferences to the client; cloning shares it.
pub struct Lazy<C> {
    inner: Arc<LazyInner<C>>,
}

/// How a [`Lazy`] client is made: the configuration and the service's constructor.
type Builder<C> = (SdkConfig, fn(&SdkConfig) -> C);

struct LazyInner<C> {
    client: OnceLock<C>,
    build: Option<Builder<C>>,
}

impl<C> Lazy<C> {
    /// A client `build` makes from `conf` when it is first used.
    pub fn new(conf: &SdkConfig, build: fn(&SdkConfig) -> C) -> Self {
        Self {
            inner: Arc::new(LazyInner {
                client: OnceLock::new(),
                build: Some((conf.clone(), build)),
            }),
        }
    }

    /// The client, built now if this is its first use.
    pub fn get(&self) -> &C {
        let inner = &*self.inner;
        inner.client.get_or_init(|| match &inner.build {
            Some((conf, build)) => build(conf),
            None => unreachable!("a Lazy without a builder is made with its client"),
        })
    }
}

/// A client already built (tests, tools).
impl<C> From<C> for Lazy<C> {
    fn from(client: C) -> Self {
        Self {
            inner: Arc::new(LazyInner {
                client: OnceLock::from(client),
                build: None,
            }),
        }
    }
}

impl<C> Clone for Lazy<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<C> std::ops::Deref for Lazy<C> {
    type Target = C;
    fn deref(&self) -> &C {
        self.get()
    }
}

impl<C> std::fmt::Debug for Lazy<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let built = self.inner.client.get().is_some();
        f.debug_struct("Lazy").field("built", &built).finish()
    }
}

/// Where the AWS clients go and how long they may take: read once at cold start
/// ([`crate::settings::Settings`]).
///
/// `ADSYNC_AWS_ENDPOINT_URL` / `ADSYNC_AWS_ENDPOINT_URL_DYNAMODB`, when non-empty, point every
/// client (or DynamoDB alone) elsewhere. They exist for `sam local --env-vars`, which passes only
/// variables the template declares: the template declares these empty (unset in AWS), whereas an
/// empty `AWS_ENDPOINT_URL` makes the SDK fail on the first call. The SDK itself still honours
/// `AWS_ENDPOINT_URL` and `AWS_ENDPOINT_URL_<SERVICE>`, which is how the local stack points us at
/// moto and DynamoDB Local.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AwsSettings {
    pub endpoint_url: Option<String>,
    pub dynamodb_endpoint_url: Option<String>,
    pub timeouts: SdkTimeouts,
}

impl AwsSettings {
    pub fn from_env() -> Result<Self, crate::config::ConfigError> {
        Ok(Self {
            endpoint_url: crate::config::optional("ADSYNC_AWS_ENDPOINT_URL"),
            dynamodb_endpoint_url: crate::config::optional("ADSYNC_AWS_ENDPOINT_URL_DYNAMODB"),
            timeouts: SdkTimeouts::read()?,
        })
    }
}

/// Where every SDK configuration of the process starts: the SDK's defaults (latest behaviour
/// version) with adsync's HTTP client ([`crate::sdk_http::client`]). The SDK is built without
/// a default HTTP client, so a configuration loaded any other way cannot make a call.
pub fn config_loader() -> aws_config::ConfigLoader {
    let loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(crate::sdk_http::client());
    match env_credentials() {
        Some(provider) => loader.credentials_provider(provider),
        None => loader,
    }
}

/// Lambda gives a function its role's credentials in `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`, the first place the SDK's default chain
/// looks. With both keys set, that provider is taken directly, the chain's answer: building the
/// whole chain builds an STS client (for web identity) and parses STS's endpoint rules at cold
/// start. Without them (a developer's profile, SSO, a container) the default chain decides.
fn env_credentials() -> Option<aws_config::environment::EnvironmentVariableCredentialsProvider> {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    (set("AWS_ACCESS_KEY_ID") && set("AWS_SECRET_ACCESS_KEY"))
        .then(aws_config::environment::EnvironmentVariableCredentialsProvider::new)
}

impl AwsClients {
    /// Loads the shared AWS configuration (see [`AwsSettings`]) and builds the clients.
    pub async fn from_settings(settings: &AwsSettings) -> Self {
        let mut loader = config_loader().timeout_config(settings.timeouts.config());
        if let Some(url) = &settings.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let conf = loader.load().await;
        let mut dynamodb = aws_sdk_dynamodb::config::Builder::from(&conf);
        if let Some(url) = &settings.dynamodb_endpoint_url {
            dynamodb = dynamodb.endpoint_url(url);
        }
        Self {
            dynamodb: aws_sdk_dynamodb::Client::from_conf(dynamodb.build()),
            secrets: aws_sdk_secretsmanager::Client::new(&conf),
            sqs: Lazy::new(&conf, aws_sdk_sqs::Client::new),
        }
    }

    /// For tests and tools: [`AwsClients::from_settings`] with the environment's settings. The
    /// functions read them through [`crate::settings::Settings`], which refuses a malformed value;
    /// here one is logged and the defaults are used.
    pub async fn from_env() -> Self {
        let settings = AwsSettings::from_env().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "AWS settings; using the defaults");
            AwsSettings {
                endpoint_url: crate::config::optional("ADSYNC_AWS_ENDPOINT_URL"),
                dynamodb_endpoint_url: crate::config::optional("ADSYNC_AWS_ENDPOINT_URL_DYNAMODB"),
                timeouts: SdkTimeouts::default(),
            }
        });
        Self::from_settings(&settings).await
    }
}

/// Operation timeouts of every AWS SDK client, so that no DynamoDB, SQS or Secrets Manager call
/// can hang a request past its budget or a backfill shard past its lease:
/// `ADSYNC_AWS_ATTEMPT_TIMEOUT_MS` (one HTTP attempt, default 5 000),
/// `ADSYNC_AWS_OPERATION_TIMEOUT_MS` (the call with the SDK's own retries, default 12 000),
/// connect 2 s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SdkTimeouts {
    pub connect: std::time::Duration,
    pub attempt: std::time::Duration,
    pub operation: std::time::Duration,
}

impl Default for SdkTimeouts {
    fn default() -> Self {
        Self {
            connect: std::time::Duration::from_secs(2),
            attempt: std::time::Duration::from_millis(5_000),
            operation: std::time::Duration::from_millis(12_000),
        }
    }
}

impl SdkTimeouts {
    /// From the environment; a malformed value (or one under 100 ms) is an error naming it.
    pub fn read() -> Result<Self, crate::config::ConfigError> {
        let d = Self::default();
        let ms = |name: &'static str, def: std::time::Duration| {
            let v = crate::config::parsed_or::<u64>(name, def.as_millis() as u64)?;
            if v < 100 {
                return Err(crate::config::ConfigError::Invalid {
                    name,
                    reason: "must be at least 100 (milliseconds)".into(),
                });
            }
            Ok(std::time::Duration::from_millis(v))
        };
        let attempt = ms("ADSYNC_AWS_ATTEMPT_TIMEOUT_MS", d.attempt)?;
        Ok(Self {
            connect: d.connect,
            attempt,
            operation: ms("ADSYNC_AWS_OPERATION_TIMEOUT_MS", d.operation)?.max(attempt),
        })
    }

    /// [`SdkTimeouts::read`] for the clients built outside [`crate::settings::Settings`]
    /// (`store::sealed`, `console::invoke`); the functions refuse a malformed value at cold start
    /// (through `Settings`), so the defaults here only serve tests and tools.
    pub fn from_env() -> Self {
        Self::read().unwrap_or_default()
    }

    pub fn config(&self) -> aws_config::timeout::TimeoutConfig {
        aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(self.connect)
            .operation_attempt_timeout(self.attempt)
            .operation_timeout(self.operation)
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_lazy_client_is_built_once_by_its_first_use() {
        static BUILT: AtomicUsize = AtomicUsize::new(0);
        fn build(_: &SdkConfig) -> String {
            BUILT.fetch_add(1, Ordering::SeqCst);
            "client".to_string()
        }
        let lazy = Lazy::new(&SdkConfig::builder().build(), build);
        let shared = lazy.clone();
        assert_eq!(
            BUILT.load(Ordering::SeqCst),
            0,
            "built before its first use"
        );
        assert!(format!("{lazy:?}").contains("built: false"));
        assert_eq!(shared.len(), 6);
        assert_eq!(lazy.as_str(), "client");
        assert_eq!(BUILT.load(Ordering::SeqCst), 1, "clones share one client");
        let ready: Lazy<String> = String::from("ready").into();
        assert_eq!(ready.as_str(), "ready");
    }

    #[test]
    fn every_client_gets_operation_timeouts() {
        let t = SdkTimeouts::default();
        let c = t.config();
        assert_eq!(c.operation_timeout(), Some(t.operation));
        assert_eq!(c.operation_attempt_timeout(), Some(t.attempt));
        assert_eq!(c.connect_timeout(), Some(t.connect));
        // A long poll (1 s) fits in one attempt.
        assert!(t.attempt > std::time::Duration::from_secs(1));
    }
}
