//! Configuration, read once from the environment at start-up.
//!
//! Every function reads the variables it needs through [`Config`]; a missing or malformed
//! variable fails start-up with an error naming it.

use std::time::Duration;

/// What went wrong while reading the environment.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("missing environment variable {0}")]
    Missing(&'static str),
    #[error("environment variable {name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// Reads a required variable.
pub fn required(name: &'static str) -> Result<String, ConfigError> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(ConfigError::Missing(name)),
    }
}

/// Reads an optional variable (empty counts as unset).
pub fn optional(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Reads an optional variable parsed as `T`, with a default.
pub fn parsed_or<T: std::str::FromStr>(name: &'static str, default: T) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match optional(name) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|e: T::Err| ConfigError::Invalid {
            name,
            reason: e.to_string(),
        }),
    }
}

/// Table names.
#[derive(Debug, Clone)]
pub struct Tables {
    pub accounts: String,
    pub dedupe: String,
    pub destinations: String,
    pub ledger: String,
}

impl Tables {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            accounts: required("ACCOUNTS_TABLE")?,
            dedupe: required("DEDUPE_TABLE")?,
            destinations: required("DESTINATIONS_TABLE")?,
            ledger: required("LEDGER_TABLE")?,
        })
    }
}

/// Names of the secrets adsync reads.
#[derive(Debug, Clone)]
pub struct Secrets {
    pub lwa_credentials: String,
    pub api_keys: String,
    pub token_prefix: String,
}

impl Secrets {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            lwa_credentials: required("LWA_CREDENTIALS_SECRET")?,
            api_keys: required("API_KEYS_SECRET")?,
            token_prefix: optional("TOKEN_SECRET_PREFIX")
                .unwrap_or_else(|| "adsync/tokens/".into()),
        })
    }
}

/// The dedupe window for `clientDedupeId` (default 30 days).
pub fn dedupe_window() -> Result<Duration, ConfigError> {
    let days: u64 = parsed_or("DEDUPE_WINDOW_DAYS", 30)?;
    if days == 0 || days > 3650 {
        return Err(ConfigError::Invalid {
            name: "DEDUPE_WINDOW_DAYS",
            reason: "must be between 1 and 3650".into(),
        });
    }
    Ok(Duration::from_secs(days * 86_400))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_variable_is_named() {
        let err = required("ADSYNC_TEST_SURELY_UNSET_VARIABLE").unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing environment variable ADSYNC_TEST_SURELY_UNSET_VARIABLE"
        );
    }
}
