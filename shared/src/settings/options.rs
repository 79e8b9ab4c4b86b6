//! The option types of the use cases, read from the environment by [`super::Settings`] once at
//! cold start (and by their own `from_env` in tests). They live here, below the use cases, so
//! that the settings never import a use case.

use crate::config::{ConfigError, parsed_or};
use crate::domain::audience::MAX_PATCHES;
use std::time::Duration;

/// Settings of the linking flow.
#[derive(Clone, Debug)]
pub struct LinkingConfig {
    /// The public URL of `GET /oauth/callback` (registered with the LwA client). Empty: derive
    /// it from the request's host (`https://<host>/oauth/callback`), which is the API's own URL
    /// behind API Gateway — the SAM template cannot pass that URL in without a circular reference.
    pub redirect_uri: String,
    /// Prefix of per-login token secrets; the secret is `<prefix><connectionId>`.
    pub token_secret_prefix: String,
}

impl LinkingConfig {
    /// `OAUTH_REDIRECT_URI` (optional, see [`LinkingConfig::redirect_uri`]) and
    /// `TOKEN_SECRET_PREFIX` (default `adsync/tokens/`).
    pub fn from_env() -> Result<Self, ConfigError> {
        let redirect_uri = crate::config::optional("OAUTH_REDIRECT_URI").unwrap_or_default();
        if !redirect_uri.is_empty() && url::Url::parse(&redirect_uri).is_err() {
            return Err(ConfigError::Invalid {
                name: "OAUTH_REDIRECT_URI",
                reason: "must be an absolute URL".into(),
            });
        }
        Ok(Self {
            redirect_uri,
            token_secret_prefix: crate::config::optional("TOKEN_SECRET_PREFIX")
                .unwrap_or_else(|| "adsync/tokens/".into()),
        })
    }
}

/// How many wrong keys one source IP may present per window (`CONSOLE_SIGNIN_LIMIT`, default
/// 5; `CONSOLE_SIGNIN_WINDOW_SECS`, default 900).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignInLimit {
    pub max_failures: u64,
    pub window_secs: i64,
}

impl Default for SignInLimit {
    fn default() -> Self {
        Self {
            max_failures: 5,
            window_secs: 900,
        }
    }
}

impl SignInLimit {
    pub fn from_env() -> Result<Self, ConfigError> {
        let d = Self::default();
        let window_secs = parsed_or("CONSOLE_SIGNIN_WINDOW_SECS", d.window_secs)?;
        if window_secs <= 0 {
            return Err(ConfigError::Invalid {
                name: "CONSOLE_SIGNIN_WINDOW_SECS",
                reason: "must be a positive number of seconds".into(),
            });
        }
        Ok(Self {
            max_failures: parsed_or("CONSOLE_SIGNIN_LIMIT", d.max_failures)?,
            window_secs,
        })
    }

    pub fn window_start(&self, now: i64) -> i64 {
        now - now.rem_euclid(self.window_secs)
    }
}

/// Knobs of a backfill run (defaults from the environment).
#[derive(Clone, Debug)]
pub struct BackfillOptions {
    /// Stop starting work when less than this is left before the deadline.
    pub safety_margin: Duration,
    /// Shards worked at once by one invocation.
    pub parallel_shards: usize,
    /// Patches per body (≤ 2 000; tests lower it to get more checkpoints).
    pub max_patches: usize,
    /// Shard lease length; renewed at every checkpoint. A body's send is cut at the lease's
    /// end minus [`CHECKPOINT_ALLOWANCE`], so no send outlives the lease.
    pub lease: Duration,
    /// Invocations allowed to run backfills at once, across all processes (slot leases).
    pub max_invocations: u16,
    /// Amazon's PATCH budget for the client, shared by those invocations: each paces its
    /// backfill requests to `patch_rps / max_invocations`.
    pub patch_rps: f64,
}

impl Default for BackfillOptions {
    fn default() -> Self {
        Self {
            safety_margin: Duration::from_secs(20),
            parallel_shards: 4,
            max_patches: MAX_PATCHES,
            lease: default_lease(),
            max_invocations: 2,
            patch_rps: 100.0,
        }
    }
}

/// Time kept for the checkpoint write after a body's send: one DynamoDB operation with its
/// retries (`aws::SdkTimeouts`), and slack.
pub const CHECKPOINT_ALLOWANCE: Duration = Duration::from_secs(15);

/// The shard lease: longer than the worst-case send of one body under the default retry policy
/// (every attempt timing out, the longest waits between them: 210 s) plus the checkpoint write,
/// so a live invocation never loses its shard mid-send (225 s).
pub fn default_lease() -> Duration {
    crate::amazon::RetryPolicy::default().worst_case() + CHECKPOINT_ALLOWANCE
}

impl BackfillOptions {
    /// `BACKFILL_SAFETY_MARGIN_MS`, `BACKFILL_PARALLEL_SHARDS` (1–16), `BACKFILL_BATCH_PATCHES`
    /// (1–2 000), `BACKFILL_MAX_INVOCATIONS` (1–100). Unset keeps the default; a malformed or
    /// out-of-range value is an error naming the variable.
    pub fn from_env() -> Result<Self, ConfigError> {
        let d = Self::default();
        let margin_ms = parsed_or::<u64>(
            "BACKFILL_SAFETY_MARGIN_MS",
            d.safety_margin.as_millis() as u64,
        )?;
        Ok(Self {
            safety_margin: Duration::from_millis(margin_ms),
            parallel_shards: in_range("BACKFILL_PARALLEL_SHARDS", d.parallel_shards as u64, 16)?
                as usize,
            max_patches: in_range(
                "BACKFILL_BATCH_PATCHES",
                d.max_patches as u64,
                MAX_PATCHES as u64,
            )? as usize,
            lease: d.lease,
            max_invocations: in_range(
                "BACKFILL_MAX_INVOCATIONS",
                u64::from(d.max_invocations),
                100,
            )? as u16,
            patch_rps: d.patch_rps,
        })
    }
}

/// An optional whole number between 1 and `max`, `default` when unset.
fn in_range(name: &'static str, default: u64, max: u64) -> Result<u64, ConfigError> {
    let v = parsed_or::<u64>(name, default)?;
    if !(1..=max).contains(&v) {
        return Err(ConfigError::Invalid {
            name,
            reason: format!("{v} is not between 1 and {max}"),
        });
    }
    Ok(v)
}

/// The default slice a creating request spends on its destination's work (`ADSYNC_INLINE_WORK_MS`).
pub const DEFAULT_INLINE_WORK_MS: u64 = 5_000;
/// The largest slice accepted: with the one Amazon call that may still be running when the slice
/// ends (≤ `export::INLINE_REQUEST_TIMEOUT` per attempt; four in the worst case: token refresh, call,
/// refresh after a 401, resend), the slice's Amazon work ends within 6 + 4 × 3 = 18 s, inside
/// the request budget's Amazon deadline (`crate::budget`: 25 s − 5 s reserve = 20 s), which
/// also cuts any call still running then.
pub const MAX_INLINE_WORK_MS: u64 = 6_000;

/// Default time between two size reads of one audience.
pub const DEFAULT_SIZE_INTERVAL: Duration = Duration::from_secs(6 * 3600);

/// Default wait between a purge request and its first remove patch.
pub const DEFAULT_PURGE_SETTLE: Duration = Duration::from_secs(30);

/// Knobs of the upkeep (`AUDIENCE_SIZE_INTERVAL_SECS`, `PURGE_SETTLE_SECS`).
#[derive(Clone, Debug)]
pub struct UpkeepOptions {
    /// Time between two size reads of one audience.
    pub size_interval: Duration,
    /// Wait between a purge request and its first remove patch.
    pub purge_settle: Duration,
}

impl Default for UpkeepOptions {
    fn default() -> Self {
        Self {
            size_interval: DEFAULT_SIZE_INTERVAL,
            purge_settle: DEFAULT_PURGE_SETTLE,
        }
    }
}

impl UpkeepOptions {
    /// Unset keeps the default; a malformed value is an error naming the variable.
    pub fn from_env() -> Result<Self, ConfigError> {
        let d = Self::default();
        let secs = |k: &'static str, def: Duration| {
            parsed_or::<u64>(k, def.as_secs()).map(Duration::from_secs)
        };
        Ok(Self {
            size_interval: secs("AUDIENCE_SIZE_INTERVAL_SECS", d.size_interval)?,
            purge_settle: secs("PURGE_SETTLE_SECS", d.purge_settle)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_values_are_checked_not_replaced() {
        assert_eq!(
            in_range("ADSYNC_TEST_UNSET_BACKFILL_KNOB", 4, 16).unwrap(),
            4
        );
        // SAFETY: a variable no other test reads.
        unsafe { std::env::set_var("ADSYNC_TEST_BACKFILL_KNOB_A", "four") };
        let e = in_range("ADSYNC_TEST_BACKFILL_KNOB_A", 4, 16).unwrap_err();
        assert!(e.to_string().contains("ADSYNC_TEST_BACKFILL_KNOB_A"), "{e}");
        unsafe { std::env::set_var("ADSYNC_TEST_BACKFILL_KNOB_B", "17") };
        let e = in_range("ADSYNC_TEST_BACKFILL_KNOB_B", 4, 16).unwrap_err();
        assert!(e.to_string().contains("not between 1 and 16"), "{e}");
    }
}
