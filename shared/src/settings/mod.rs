//! [`Settings`]: every function's options, read from the environment once at cold start by
//! [`crate::runtime::start`] and handed to the constructors of the handlers (`…::from_settings`).
//!
//! `Settings::from_env` refuses a malformed or out-of-range value with an error naming the
//! variable; an unset one keeps its default. A variable only some functions need (a table, a
//! secret, a queue) is kept as a [`Var`] and checked by the constructor that needs it, so each
//! function still starts without the variables it does not use.
//!
//! The option types of the use cases (`BackfillOptions`, `UpkeepOptions`, `LinkingConfig`,
//! `SignInLimit`, the inline-work bounds) live in [`options`], below the use cases, so this
//! module never imports a use case; the use cases import [`Settings`] in their constructors.
//!
//! Two readers remain outside it, both reading the process environment (which does not change
//! in a Lambda) when their work runs: the sibling queue URLs of `{"task":"redrive-dlq"}`
//! (`crate::parked_dlq`) and `ADSYNC_KMS_KEY_ID` with the KMS client's SDK timeouts
//! (`store::secrets`, `store::sealed`). `Settings` checks the queue URLs and the SDK timeouts
//! at cold start, so a malformed one still stops the function before any request; the KMS key
//! id is an opaque name, checked by KMS when it is used.

pub mod options;

use crate::aws::AwsSettings;
use crate::budget::HttpBudget;
use crate::config::{ConfigError, Tables, optional, parsed_or};
use std::time::Duration;

/// A variable that some functions require: its value when set, and its name for the error when a
/// function that needs it finds it unset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Var {
    pub name: &'static str,
    pub value: Option<String>,
}

impl Var {
    pub fn read(name: &'static str) -> Self {
        Self {
            name,
            value: optional(name),
        }
    }

    /// The value, or [`ConfigError::Missing`] naming the variable.
    pub fn get(&self) -> Result<String, ConfigError> {
        self.value.clone().ok_or(ConfigError::Missing(self.name))
    }
}

/// The local emulator's knobs (unused in AWS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalSettings {
    /// `ADSYNC_LOCAL_TIMEOUT_SECS` (default 60): the time budget of an invocation whose emulator
    /// gives no deadline (`crate::runtime::effective_deadline`).
    pub timeout_secs: u64,
    /// `ADSYNC_LOCAL_RESPONSE_SETTLE_MS` (default 100): `crate::local_serving::SettleLayer`.
    pub settle: Duration,
}

impl Default for LocalSettings {
    fn default() -> Self {
        Self {
            timeout_secs: 60,
            settle: Duration::from_millis(100),
        }
    }
}

impl LocalSettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        let d = Self::default();
        Ok(Self {
            timeout_secs: parsed_or("ADSYNC_LOCAL_TIMEOUT_SECS", d.timeout_secs)?,
            settle: Duration::from_millis(parsed_or(
                "ADSYNC_LOCAL_RESPONSE_SETTLE_MS",
                d.settle.as_millis() as u64,
            )?),
        })
    }
}

/// Everything the functions are configured with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// AWS endpoints and SDK timeouts (`crate::aws`).
    pub aws: AwsSettings,
    /// `ADSYNC_HTTP_BUDGET_MS` / `ADSYNC_HTTP_RESERVE_MS` (`crate::budget`).
    pub http_budget: HttpBudget,
    pub local: LocalSettings,
    pub accounts_table: Var,
    pub dedupe_table: Var,
    pub destinations_table: Var,
    pub ledger_table: Var,
    /// `API_KEYS_SECRET`: the API key digests.
    pub api_keys_secret: Var,
    /// `LWA_CREDENTIALS_SECRET`: the Login with Amazon client.
    pub lwa_credentials_secret: Var,
    /// `LWA_SCOPES` (default [`crate::amazon::client::DEFAULT_SCOPES`]).
    pub lwa_scopes: String,
    /// Amazon's URLs with `AMAZON_ADS_API_URL` / `AMAZON_LWA_AUTH_URL` / `AMAZON_LWA_TOKEN_URL`.
    pub amazon_endpoints: crate::amazon::region::Endpoints,
    /// `LWA_PKCE` (default on).
    pub pkce: bool,
    /// `OAUTH_REDIRECT_URI`, `TOKEN_SECRET_PREFIX`.
    pub linking: options::LinkingConfig,
    pub parked_conversions_queue: Var,
    pub parked_patches_queue: Var,
    pub parked_identities_queue: Var,
    /// `PARKED_DLQ_URL` (optional).
    pub parked_dlq: Option<String>,
    /// `PARKED_RETRY_BASE_SECONDS`, `PARKED_RETRY_MAX_SECONDS`, `PARKED_MAX_AGE_HOURS`.
    pub parked_retry: crate::store::parked_retry::ParkedRetry,
    /// `DEDUPE_WINDOW_DAYS` (default 30).
    pub dedupe_window: Duration,
    /// `ADSYNC_INLINE_WORK_MS` (default 5 000, 0 = off, at most 6 000): the creating requests'
    /// slice of work before they answer (`crate::export::InlineWork`).
    pub inline_work: Duration,
    /// `BACKFILL_*` (`options::BackfillOptions`).
    pub backfill: options::BackfillOptions,
    /// `AUDIENCE_SIZE_INTERVAL_SECS`, `PURGE_SETTLE_SECS` (`options::UpkeepOptions`).
    pub upkeep: options::UpkeepOptions,
    /// `CONSOLE_SIGNIN_LIMIT`, `CONSOLE_SIGNIN_WINDOW_SECS`.
    pub signin_limit: options::SignInLimit,
    /// `CONVERSION_INGEST_FUNCTION` (default `conversion-ingest`): the console's "Redrive now".
    pub conversion_ingest_function: String,
}

impl Settings {
    /// Reads the environment once. In AWS (`ADSYNC_RUNNING_IN_AWS`), a plain `http://` endpoint
    /// override is refused first ([`super::refuse_insecure_endpoints`]).
    pub fn from_env() -> Result<Self, ConfigError> {
        crate::config::refuse_insecure_endpoints()?;
        Ok(Self {
            aws: AwsSettings::from_env()?,
            http_budget: HttpBudget::from_env()?,
            local: LocalSettings::from_env()?,
            accounts_table: Var::read("ACCOUNTS_TABLE"),
            dedupe_table: Var::read("DEDUPE_TABLE"),
            destinations_table: Var::read("DESTINATIONS_TABLE"),
            ledger_table: Var::read("LEDGER_TABLE"),
            api_keys_secret: Var::read("API_KEYS_SECRET"),
            lwa_credentials_secret: Var::read("LWA_CREDENTIALS_SECRET"),
            lwa_scopes: optional("LWA_SCOPES")
                .unwrap_or_else(|| crate::amazon::client::DEFAULT_SCOPES.into()),
            amazon_endpoints: crate::amazon::region::Endpoints::from_env(),
            pkce: crate::amazon::pkce::enabled_from_env()?,
            linking: options::LinkingConfig::from_env()?,
            parked_conversions_queue: Var::read("PARKED_CONVERSIONS_QUEUE_URL"),
            parked_patches_queue: Var::read("PARKED_PATCHES_QUEUE_URL"),
            parked_identities_queue: Var::read("PARKED_IDENTITIES_QUEUE_URL"),
            parked_dlq: optional("PARKED_DLQ_URL"),
            parked_retry: crate::store::parked_retry::ParkedRetry::from_env()?,
            dedupe_window: crate::config::dedupe_window()?,
            inline_work: inline_work()?,
            backfill: options::BackfillOptions::from_env()?,
            upkeep: options::UpkeepOptions::from_env()?,
            signin_limit: options::SignInLimit::from_env()?,
            conversion_ingest_function: optional("CONVERSION_INGEST_FUNCTION")
                .unwrap_or_else(|| "conversion-ingest".into()),
        })
    }

    /// The four table names (all required).
    pub fn tables(&self) -> Result<Tables, ConfigError> {
        Ok(Tables {
            accounts: self.accounts_table.get()?,
            dedupe: self.dedupe_table.get()?,
            destinations: self.destinations_table.get()?,
            ledger: self.ledger_table.get()?,
        })
    }
}

/// `ADSYNC_INLINE_WORK_MS`, see [`Settings::inline_work`].
fn inline_work() -> Result<Duration, ConfigError> {
    use options::{DEFAULT_INLINE_WORK_MS, MAX_INLINE_WORK_MS};
    const VAR: &str = "ADSYNC_INLINE_WORK_MS";
    let ms = parsed_or::<u64>(VAR, DEFAULT_INLINE_WORK_MS)?;
    if ms > MAX_INLINE_WORK_MS {
        return Err(ConfigError::Invalid {
            name: VAR,
            reason: format!(
                "{ms} is above {MAX_INLINE_WORK_MS} ms: the API answer must stay well under API \
                 Gateway's 29 s timeout (0 turns the inline work off)"
            ),
        });
    }
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_variable_a_function_needs_is_named_when_unset() {
        let v = Var::read("ADSYNC_TEST_SURELY_UNSET_VARIABLE");
        assert_eq!(
            v.get().unwrap_err().to_string(),
            "missing environment variable ADSYNC_TEST_SURELY_UNSET_VARIABLE"
        );
    }

    #[test]
    fn local_defaults() {
        let d = LocalSettings::default();
        assert_eq!((d.timeout_secs, d.settle.as_millis()), (60, 100));
    }
}
