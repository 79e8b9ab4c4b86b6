//! Reading the environment: the readers ([`required`], [`optional`], [`parsed_or`]) and
//! [`ConfigError`], which names the variable at fault, plus the refusal of plain-http endpoint
//! overrides in AWS ([`refuse_insecure_endpoints`]).
//!
//! This is the bottom layer: anything may use it. What a function reads, it reads once at cold
//! start through [`crate::settings::Settings`].

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

/// The endpoint overrides a function honours (AWS services and Amazon).
pub const ENDPOINT_OVERRIDES: [&str; 7] = [
    "ADSYNC_AWS_ENDPOINT_URL",
    "ADSYNC_AWS_ENDPOINT_URL_DYNAMODB",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_DYNAMODB",
    "AMAZON_ADS_API_URL",
    "AMAZON_LWA_AUTH_URL",
    "AMAZON_LWA_TOKEN_URL",
];

/// `ADSYNC_RUNNING_IN_AWS`: the template sets it to `true`; local runs leave it unset or `false`
/// (Lambda's own variables cannot tell: the local emulators set them too). A value that is
/// neither (`1/true/yes/on`, `0/false/no/off`) is an error.
pub fn running_in_aws() -> Result<bool, ConfigError> {
    match optional("ADSYNC_RUNNING_IN_AWS")
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("0" | "false" | "no" | "off") => Ok(false),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some(_) => Err(ConfigError::Invalid {
            name: "ADSYNC_RUNNING_IN_AWS",
            reason: "must be true or false".into(),
        }),
    }
}

/// In AWS, refuses to start with a plain `http://` endpoint override: tokens, codes and personal
/// data would leave in clear text (overrides exist for the local stack and its sandbox).
pub fn refuse_insecure_endpoints() -> Result<(), ConfigError> {
    if !running_in_aws()? {
        return Ok(());
    }
    check_endpoints(optional)
}

fn check_endpoints(get: impl Fn(&'static str) -> Option<String>) -> Result<(), ConfigError> {
    for name in ENDPOINT_OVERRIDES {
        if let Some(url) = get(name)
            && !url.trim().to_ascii_lowercase().starts_with("https://")
        {
            return Err(ConfigError::Invalid {
                name,
                reason: "must be an https:// URL when running in AWS (ADSYNC_RUNNING_IN_AWS)"
                    .into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod endpoint_tests {
    use super::*;

    #[test]
    fn plain_http_overrides_are_refused() {
        let none = |_: &'static str| None;
        assert!(check_endpoints(none).is_ok());
        let https = |_: &'static str| Some("https://sandbox.example".to_string());
        assert!(check_endpoints(https).is_ok());
        let http = |n: &'static str| (n == "AMAZON_LWA_TOKEN_URL").then(|| "http://x".to_string());
        let e = check_endpoints(http).unwrap_err().to_string();
        assert!(
            e.contains("AMAZON_LWA_TOKEN_URL") && e.contains("https"),
            "{e}"
        );
    }
}
