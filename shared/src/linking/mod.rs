//! Account linking: how an admin links an Amazon Ads login to adsync and picks the DSP advertiser
//! account to use (Audience Manager's "Integrated Accounts → Add Account → Amazon Data Provider").
//!
//! Routes (`routes::ROUTES`, one file per job; the `/lambda-url/oauth-callback` prefix of
//! `cargo lambda watch` is ignored):
//!
//! | route | auth | answer |
//! |---|---|---|
//! | `POST /connections` `{"region"}` (`connections`) | API key | 201 `{"connectionId","authorizeUrl","expiresAt"}` |
//! | `GET /oauth/callback?code&state` (`callback`) | the state | 303 to `callback?view=…` (no code or state left in the URL) |
//! | `GET /oauth/callback?view=…` (`pages`) | the view id | the advertiser list, one Confirm form each |
//! | `POST /oauth/confirm` (form, `confirm`) | the CSRF token | the success page naming the account id |
//! | `GET /accounts` (`accounts`) | API key | `{"accounts":[…]}` |
//! | `DELETE /accounts/{id}` | API key | unlinks; deletes the token secret when no other account uses it |
//!
//! Every failure of the browser flow answers an HTML page saying what happened and what to do,
//! with its own status code (`failure`; docs/linking.md lists them). Anything that fails after the code
//! exchange deletes the token secret and marks the connection failed, so nothing half-made stays.
//! Codes, states, tokens and the client secret are never logged: log lines carry connection ids,
//! account ids and outcomes only.

mod accounts;
pub mod binding;
mod callback;
pub mod cleanup;
mod confirm;
mod connections;
mod failure;
mod listing;
mod pages;
mod routes;

use crate::amazon::{AmazonClient, LoginRef, Region};
use crate::http::auth::ApiKeyAuth;
use crate::store::accounts::AccountStore;
use binding::BindingStore;
use std::time::Duration;

/// How long a consent link (its OAuth state) is valid.
pub const STATE_TTL: Duration = Duration::from_secs(600);
/// How long the advertiser list (and its Confirm forms) stays usable after consent.
pub const PICK_TTL: Duration = Duration::from_secs(1800);
/// Most advertisers one login may offer (keeps the connection item far below DynamoDB's 400 KB).
pub const MAX_ADVERTISERS: usize = 1000;

pub use crate::settings::options::LinkingConfig;

/// The account-linking use case and the oauth-callback function's handler. Build once per
/// process; cheap to share.
#[derive(Clone)]
pub struct Linking {
    amazon: AmazonClient,
    accounts: AccountStore,
    bindings: BindingStore,
    auth: ApiKeyAuth,
    config: LinkingConfig,
    /// PKCE on every consent (`LWA_PKCE`, default on).
    pkce: bool,
}

/// `POST /connections` answer.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewConnection {
    pub connection_id: String,
    pub authorize_url: String,
    /// RFC 3339: when the consent link stops working.
    pub expires_at: String,
}

/// A fresh random value: 256 bits from the OS, base64url without padding (URL and form safe).
/// A failing OS generator is an error (answered 503), never a panic.
pub fn random_token() -> Result<String, crate::random::RandomUnavailable> {
    crate::random::token()
}

pub(super) fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

pub(super) fn rfc3339(epoch: i64) -> String {
    chrono::DateTime::from_timestamp(epoch, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Linking {
    pub fn new(
        amazon: AmazonClient,
        accounts: AccountStore,
        auth: ApiKeyAuth,
        config: LinkingConfig,
    ) -> Self {
        let bindings = BindingStore::new(accounts.client().clone(), accounts.table().to_string());
        Self {
            amazon,
            accounts,
            bindings,
            auth,
            config,
            pkce: true,
        }
    }

    /// Turns PKCE on or off (`LWA_PKCE`).
    pub fn with_pkce(mut self, on: bool) -> Self {
        self.pkce = on;
        self
    }

    /// Builds everything from the environment, once per process.
    pub async fn from_env() -> Result<Self, String> {
        let settings = crate::settings::Settings::from_env().map_err(|e| e.to_string())?;
        let aws = crate::aws::AwsClients::from_settings(&settings.aws).await;
        Self::from_settings(&aws, &settings)
            .await
            .map_err(|e| e.to_string())
    }

    /// [`Linking::from_env`] with the clients and settings built at cold start.
    pub async fn from_settings(
        aws: &crate::aws::AwsClients,
        settings: &crate::settings::Settings,
    ) -> Result<Self, crate::runtime::StartError> {
        let amazon = AmazonClient::from_settings(aws, settings).await?;
        Self::with_amazon(aws, settings, amazon)
    }

    /// [`Linking::from_settings`] sharing an Amazon client built before (the console's, so that
    /// one process reads the LwA credentials once).
    pub fn with_amazon(
        aws: &crate::aws::AwsClients,
        settings: &crate::settings::Settings,
        amazon: AmazonClient,
    ) -> Result<Self, crate::runtime::StartError> {
        let tables = settings.accounts_table.get()?;
        let keys = settings.api_keys_secret.get()?;
        let secrets = crate::store::secrets::SecretsStore::new(aws.secrets.clone());
        Ok(Self::new(
            amazon,
            AccountStore::new(aws.dynamodb.clone(), tables),
            ApiKeyAuth::new(secrets, keys),
            settings.linking.clone(),
        )
        .with_pkce(settings.pkce))
    }

    pub fn accounts(&self) -> &AccountStore {
        &self.accounts
    }

    pub fn amazon(&self) -> &AmazonClient {
        &self.amazon
    }

    fn login_for(&self, connection_id: &str, region: Region) -> LoginRef {
        LoginRef {
            region,
            secret_name: format!("{}{connection_id}", self.config.token_secret_prefix),
        }
    }
}

#[cfg(test)]
mod tests;
