//! Account linking: how an admin links an Amazon Ads login to adsync and picks the DSP advertiser
//! account to use (Audience Manager's "Integrated Accounts → Add Account → Amazon Data Provider").
//!
//! Routes (matched on the end of the path, so the same handler works behind API Gateway and under
//! `cargo lambda watch`'s `/lambda-url/oauth-callback/…` prefix):
//!
//! | route | auth | answer |
//! |---|---|---|
//! | `POST /connections` `{"region"}` | API key | 201 `{"connectionId","authorizeUrl","expiresAt"}` |
//! | `GET /oauth/callback?code&state` | the state | 303 to `callback?view=…` (no code or state left in the URL) |
//! | `GET /oauth/callback?view=…` | the view id | the advertiser list, one Confirm form each |
//! | `POST /oauth/confirm` (form) | the CSRF token | the success page naming the account id |
//! | `GET /accounts` | API key | `{"accounts":[…]}` |
//! | `DELETE /accounts/{id}` | API key | unlinks; deletes the token secret when no other account uses it |
//!
//! Every failure of the browser flow answers an HTML page saying what happened and what to do,
//! with its own status code (docs/linking.md lists them). Anything that fails after the code
//! exchange deletes the token secret and marks the connection failed, so nothing half-made stays.
//! Codes, states, tokens and the client secret are never logged: log lines carry connection ids,
//! account ids and outcomes only.

pub mod binding;
pub mod cleanup;

use crate::amazon::{AmazonClient, AmazonError, LoginRef, LwaError, Region};
use crate::http::auth::{ApiKeyAuth, Caller};
use crate::http::html::{self, AccountsPage, AdvertiserRow, STYLE, SuccessPage, Tone};
use crate::http::{HttpRequest, HttpResponse};
use crate::runtime::{Handler, Invocation};
use crate::store::accounts::{
    AccountStatus, AccountStore, Connection, ConnectionStatus, ConsumeError, CsrfOutcome,
    IntegratedAccount, ListedAdvertiser,
};
use binding::{Binding, BindingStore};
use serde::Deserialize;
use std::time::Duration;

/// How long a consent link (its OAuth state) is valid.
pub const STATE_TTL: Duration = Duration::from_secs(600);
/// How long the advertiser list (and its Confirm forms) stays usable after consent.
pub const PICK_TTL: Duration = Duration::from_secs(1800);
/// Most advertisers one login may offer (keeps the connection item far below DynamoDB's 400 KB).
pub const MAX_ADVERTISERS: usize = 1000;

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
    pub fn from_env() -> Result<Self, crate::config::ConfigError> {
        let redirect_uri = crate::config::optional("OAUTH_REDIRECT_URI").unwrap_or_default();
        if !redirect_uri.is_empty() && url::Url::parse(&redirect_uri).is_err() {
            return Err(crate::config::ConfigError::Invalid {
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

fn random_failure() -> Failure {
    Failure::new(
        503,
        "adsync could not create a secure link",
        "The server's random number generator did not answer, so no sign-in value could be made.",
        "Try again in a minute. If it keeps failing, check the oauth-callback function's logs.",
    )
}

fn browser_failure() -> Failure {
    Failure::new(
        403,
        "This account list belongs to another browser",
        "The account list can only be used in the browser that signed in with Amazon (it carries a cookie \
         set at sign-in), and this request did not carry it.",
        "Open the authorizeUrl of the connection in this browser, or start again with POST /connections.",
    )
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

fn rfc3339(epoch: i64) -> String {
    chrono::DateTime::from_timestamp(epoch, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// What a failed browser step answers: status, title, what happened, what to do.
struct Failure {
    status: u16,
    title: &'static str,
    what: String,
    todo: String,
}

impl Failure {
    fn new(
        status: u16,
        title: &'static str,
        what: impl Into<String>,
        todo: impl Into<String>,
    ) -> Self {
        Self {
            status,
            title,
            what: what.into(),
            todo: todo.into(),
        }
    }

    fn page(&self, reference: Option<&str>) -> HttpResponse {
        let tone = if self.status >= 500 {
            Tone::Warn
        } else {
            Tone::Error
        };
        html::message(
            self.status,
            tone,
            self.title,
            &self.what,
            &self.todo,
            reference,
        )
    }
}

const START_AGAIN: &str = "Start again: create a new connection (POST /connections with the region) and open its \
                           authorizeUrl in this browser.";

fn store_failure(what: &str) -> Failure {
    Failure::new(
        503,
        "adsync could not save its progress",
        format!("adsync could not {what} (its database or secret store did not answer)."),
        "Try again in a minute. If it keeps failing, check the oauth-callback function's logs.",
    )
}

fn consume_failure(kind: &str, e: &ConsumeError) -> Failure {
    match (kind, e) {
        ("state", ConsumeError::Unknown) => Failure::new(
            400,
            "This sign-in link is not valid",
            "The sign-in answer did not carry a state adsync issued, so it cannot be trusted (it may have been forged or mistyped).",
            START_AGAIN,
        ),
        ("state", ConsumeError::Expired) => Failure::new(
            410,
            "This sign-in link has expired",
            "The consent link is valid for 10 minutes after the connection is created, and that time has passed.",
            START_AGAIN,
        ),
        ("state", ConsumeError::Used) => Failure::new(
            409,
            "This sign-in link was already used",
            "Each consent link works once, and this one was already used (for example by reloading the page or pressing Back).",
            "If the account list was shown, go on from there; otherwise start again: create a new connection \
             (POST /connections) and open its authorizeUrl.",
        ),
        ("form", ConsumeError::Unknown) => Failure::new(
            403,
            "This form could not be verified",
            "The confirmation did not carry a form token adsync issued, so it was not accepted.",
            "Open the account list again from the link adsync showed you and press Confirm there, or start again with POST /connections.",
        ),
        ("form", ConsumeError::Expired) => Failure::new(
            410,
            "This form has expired",
            "The account list is valid for 30 minutes after you signed in with Amazon, and that time has passed.",
            START_AGAIN,
        ),
        ("view", ConsumeError::Unknown) => Failure::new(
            404,
            "This account list does not exist",
            "The link does not point to an account list adsync issued.",
            START_AGAIN,
        ),
        ("view", ConsumeError::Expired) => Failure::new(
            410,
            "This account list has expired",
            "The account list is valid for 30 minutes after you signed in with Amazon, and that time has passed.",
            START_AGAIN,
        ),
        (_, ConsumeError::Used) => Failure::new(
            409,
            "This form was already used",
            "This confirmation form was already used.",
            "Go back, reload the account list and press Confirm again.",
        ),
        (_, ConsumeError::Store(_)) => store_failure("check the link"),
        (_, _) => Failure::new(
            400,
            "This link is not valid",
            "The link is not valid.",
            START_AGAIN,
        ),
    }
}

/// The OAuth error codes LwA may send back, with our words for them.
fn provider_error(error: &str) -> Failure {
    match error {
        "access_denied" => Failure::new(
            403,
            "Access was not granted",
            "The Amazon sign-in was cancelled or access was denied, so no account was linked.",
            "To link an account, start again (POST /connections), open the authorizeUrl and choose Allow on Amazon's consent page.",
        ),
        "invalid_scope" => Failure::new(
            400,
            "Amazon refused the requested permissions",
            "Amazon answered invalid_scope: the LwA security profile is not approved for the Amazon Ads scopes adsync asks for.",
            "Ask Amazon Ads to approve the security profile for advertising::audiences and advertising::campaign_management \
             (or set LWA_SCOPES), then start again.",
        ),
        other => Failure::new(
            400,
            "Amazon could not complete the sign-in",
            format!(
                "Amazon answered the sign-in with the error {other:?}, so no account was linked."
            ),
            "Check the LwA security profile (client id, allowed return URL = OAUTH_REDIRECT_URI), then start again with POST /connections.",
        ),
    }
}

/// `error` values are OAuth tokens (letters and `_`); anything else is not echoed.
fn sanitize_error_code(e: &str) -> &str {
    if !e.is_empty() && e.len() <= 64 && e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        e
    } else {
        "unknown_error"
    }
}

#[derive(Deserialize)]
struct CreateConnectionBody {
    region: Option<serde_json::Value>,
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
        let settings = crate::config::Settings::from_env().map_err(|e| e.to_string())?;
        let aws = crate::aws::AwsClients::from_settings(&settings.aws).await;
        Self::from_settings(&aws, &settings)
            .await
            .map_err(|e| e.to_string())
    }

    /// [`Linking::from_env`] with the clients and settings built at cold start.
    pub async fn from_settings(
        aws: &crate::aws::AwsClients,
        settings: &crate::config::Settings,
    ) -> Result<Self, crate::runtime::StartError> {
        let tables = settings.accounts_table.get()?;
        let keys = settings.api_keys_secret.get()?;
        let amazon = AmazonClient::from_settings(aws, settings).await?;
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

    // ---- POST /connections -----------------------------------------------------------------

    /// The redirect URI of a new connection (see [`binding::redirect_uri_for`]).
    fn redirect_uri_for(&self, req: &HttpRequest) -> Result<String, HttpResponse> {
        binding::redirect_uri_for(&self.config.redirect_uri, req)
            .map_err(|m| HttpResponse::error(500, "configuration", m))
    }

    /// Starts a linking attempt: a pending connection and a single-use state for `region`,
    /// with the configured redirect URI.
    pub async fn create_connection(&self, region: Region) -> Result<NewConnection, HttpResponse> {
        let redirect_uri = self.config.redirect_uri.clone();
        self.create_connection_with(region, &redirect_uri).await
    }

    async fn create_connection_with(
        &self,
        region: Region,
        redirect_uri: &str,
    ) -> Result<NewConnection, HttpResponse> {
        let connection_id = uuid::Uuid::new_v4().simple().to_string();
        let unavailable = || {
            HttpResponse::error(
                503,
                "unavailable",
                "the server's random generator did not answer; try again",
            )
        };
        let state = random_token().map_err(|_| unavailable())?;
        let verifier = match self.pkce {
            true => Some(crate::amazon::pkce::new_verifier().map_err(|_| unavailable())?),
            false => None,
        };
        let expires = now_secs() + STATE_TTL.as_secs() as i64;
        // The binding first: a connection never exists without its redirect URI and verifier.
        let stored = self
            .bindings
            .put(&connection_id, redirect_uri, verifier.as_deref(), expires)
            .await;
        let stored = match stored {
            Ok(()) => {
                self.accounts
                    .create_connection(&connection_id, region, &state, expires, expires)
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = stored {
            tracing::error!(error = %e, "could not store the new connection");
            return Err(HttpResponse::error(
                503,
                "store_unavailable",
                "adsync could not store the connection; try again",
            ));
        }
        tracing::info!(connection_id = %connection_id, region = %region, pkce = self.pkce, "connection created");
        let mut authorize_url = self.amazon.authorize_url(region, redirect_uri, &state);
        if let Some(v) = &verifier {
            authorize_url = crate::amazon::pkce::with_challenge(&authorize_url, v);
        }
        Ok(NewConnection {
            authorize_url,
            connection_id,
            expires_at: rfc3339(expires),
        })
    }

    async fn post_connections(&self, req: &HttpRequest) -> HttpResponse {
        let body: CreateConnectionBody = match crate::http::parse_json_body(req, 4096) {
            Ok(b) => b,
            Err(r) => return r,
        };
        let allowed = Region::ALL
            .map(|r| format!("\"{}\"", r.as_str()))
            .join(", ");
        let region = match body.region {
            None | Some(serde_json::Value::Null) => {
                return HttpResponse::field_error(
                    400,
                    "invalid_field",
                    "region",
                    format!("region is required; allowed values: {allowed}"),
                );
            }
            Some(serde_json::Value::String(s)) => match Region::parse(&s) {
                Some(r) => r,
                None => {
                    return HttpResponse::field_error(
                        400,
                        "invalid_field",
                        "region",
                        format!("unknown region; allowed values: {allowed}"),
                    );
                }
            },
            Some(_) => {
                return HttpResponse::field_error(
                    400,
                    "invalid_field",
                    "region",
                    format!("region must be a string; allowed values: {allowed}"),
                );
            }
        };
        let redirect_uri = match self.redirect_uri_for(req) {
            Ok(u) => u,
            Err(r) => return r,
        };
        match self.create_connection_with(region, &redirect_uri).await {
            Ok(c) => HttpResponse::json(201, &c),
            Err(r) => r,
        }
    }

    // ---- GET /oauth/callback -----------------------------------------------------------------

    async fn get_callback(&self, req: &HttpRequest) -> HttpResponse {
        let q = req.query();
        let get = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
        if let Some(error) = get("error") {
            return self.provider_declined(error, get("state")).await;
        }
        if let Some(view) = get("view")
            && get("code").is_none()
            && get("state").is_none()
        {
            return self.render_view(view, req).await;
        }
        let Some(state) = get("state") else {
            return Failure::new(
                400,
                "This sign-in link is not valid",
                "The sign-in answer carried no state, so adsync cannot tell which connection it belongs to.",
                START_AGAIN,
            )
            .page(None);
        };
        let grant = match self.accounts.consume_state(state).await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(outcome = ?kind_of(&e), "callback state rejected");
                return consume_failure("state", &e).page(None);
            }
        };
        let cid = grant.connection_id.clone();
        let Some(code) = get("code") else {
            self.fail_connection(&cid, None, "missing_code").await;
            return Failure::new(
                400,
                "The sign-in answer is incomplete",
                "Amazon's answer carried no authorization code.",
                START_AGAIN,
            )
            .page(Some(&cid));
        };
        // The redirect URI and verifier chosen at POST /connections, never this request's headers.
        let bound = match self.bindings.get(&cid).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                self.fail_connection(&cid, None, "binding_missing").await;
                return consume_failure("state", &ConsumeError::Expired).page(Some(&cid));
            }
            Err(e) => {
                tracing::error!(connection_id = %cid, error = %e, "cannot read the link binding");
                return store_failure("read the connection").page(Some(&cid));
            }
        };
        match self
            .complete_consent(&cid, grant.region, code, &bound)
            .await
        {
            Ok((view, cookie)) => html::see_other(&format!("callback?view={view}")).with_header(
                "set-cookie",
                &binding::set_cookie(&cid, &cookie, PICK_TTL.as_secs()),
            ),
            Err(f) => f.page(Some(&cid)),
        }
    }

    /// `?error=…` from LwA: consume the state (if it is ours) so the connection ends as failed.
    async fn provider_declined(&self, error: &str, state: Option<&str>) -> HttpResponse {
        let error = sanitize_error_code(error);
        let mut reference = None;
        if let Some(state) = state
            && let Ok(grant) = self.accounts.consume_state(state).await
        {
            self.fail_connection(&grant.connection_id, None, error)
                .await;
            reference = Some(grant.connection_id);
        }
        tracing::info!(
            connection_id = reference.as_deref().unwrap_or("-"),
            error,
            "consent not granted"
        );
        provider_error(error).page(reference.as_deref())
    }

    /// Exchange, store the token, list advertisers, record them, bind the browser; returns the
    /// view id and the browser cookie's value.
    async fn complete_consent(
        &self,
        cid: &str,
        region: Region,
        code: &str,
        bound: &Binding,
    ) -> Result<(String, String), Failure> {
        let conn = match self.accounts.get_connection(cid).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                return Err(consume_failure("state", &ConsumeError::Expired));
            }
            Err(e) => {
                tracing::error!(connection_id = cid, error = %e, "cannot read connection");
                return Err(store_failure("read the connection"));
            }
        };
        if conn.status != ConnectionStatus::Pending || conn.region != region {
            tracing::warn!(
                connection_id = cid,
                status = conn.status.as_str(),
                "connection not pending"
            );
            return Err(consume_failure("state", &ConsumeError::Used));
        }
        let exchanged = self
            .amazon
            .exchange_code_pkce(
                region,
                code,
                &bound.redirect_uri,
                bound.code_verifier.as_deref(),
            )
            .await;
        let grant = match exchanged {
            Ok(g) => g,
            Err(e) => {
                self.fail_connection(cid, None, "exchange_failed").await;
                tracing::warn!(connection_id = cid, error = %e, "code exchange failed");
                return Err(exchange_failure(&e));
            }
        };
        let login = self.login_for(cid, region);
        if let Err(e) = self.amazon.save_login(&login, &grant).await {
            tracing::error!(connection_id = cid, error = %e, "cannot store the login's token");
            self.fail_connection(cid, Some(&login), "token_store_failed")
                .await;
            return Err(store_failure("store the Amazon login's token"));
        }
        drop(grant);
        let advertisers = match self.list_linkable(&login).await {
            Ok(a) => a,
            Err(f) => {
                self.fail_connection(cid, Some(&login), "listing_failed")
                    .await;
                return Err(f);
            }
        };
        if advertisers.is_empty() {
            tracing::info!(connection_id = cid, "login has no advertiser accounts");
            self.fail_connection(cid, Some(&login), "no_advertisers")
                .await;
            return Err(Failure::new(
                422,
                "No advertiser accounts found",
                format!(
                    "The Amazon login has no DSP advertiser accounts in region {region} (adsync needs an agency \
                     profile in one of {} with at least one advertiser). Nothing was linked and the login was not kept.",
                    region.marketplaces().join(", ")
                ),
                "Sign in with an Amazon login that has access to a DSP advertiser in this region, or pick the \
                 region where the advertiser lives, then start again with POST /connections.",
            ));
        }
        let expires = now_secs() + PICK_TTL.as_secs() as i64;
        if let Err(e) = self
            .accounts
            .mark_consented(cid, &login.secret_name, &advertisers, expires)
            .await
        {
            tracing::warn!(connection_id = cid, error = %e, "cannot record consent");
            self.fail_connection(cid, Some(&login), "consent_not_recorded")
                .await;
            return Err(match e {
                crate::store::StoreError::Conflict(_) => {
                    consume_failure("state", &ConsumeError::Expired)
                }
                _ => store_failure("record the advertiser list"),
            });
        }
        let (Ok(view), Ok(cookie)) = (random_token(), random_token()) else {
            self.fail_connection(cid, Some(&login), "random_unavailable")
                .await;
            return Err(random_failure());
        };
        let recorded = match self.accounts.put_view(&view, cid, expires).await {
            Ok(()) => self.bindings.bind_browser(cid, &cookie, expires).await,
            Err(e) => Err(e),
        };
        if let Err(e) = recorded {
            tracing::error!(connection_id = cid, error = %e, "cannot store the view");
            self.fail_connection(cid, Some(&login), "view_not_stored")
                .await;
            return Err(store_failure("record the advertiser list"));
        }
        tracing::info!(
            connection_id = cid,
            advertisers = advertisers.len(),
            "consent recorded"
        );
        Ok((view, cookie))
    }

    /// Agency profiles of the region's marketplaces, and the DSP advertisers of each: the
    /// profiles' pages are read concurrently (bounded), within the request budget, and no more
    /// pages than needed to tell that a login reaches more than [`MAX_ADVERTISERS`].
    async fn list_linkable(&self, login: &LoginRef) -> Result<Vec<ListedAdvertiser>, Failure> {
        use futures::StreamExt;
        let profiles = self
            .amazon
            .list_profiles(login)
            .await
            .map_err(|e| listing_failure(&e))?;
        let agency: Vec<&crate::amazon::Profile> = profiles
            .iter()
            .filter(|p| {
                p.account_type.eq_ignore_ascii_case("agency")
                    && login
                        .region
                        .marketplaces()
                        .iter()
                        .any(|m| m.eq_ignore_ascii_case(&p.country_code))
            })
            .collect();
        // Futures built in a loop, not a closure over references: keeps the handler future
        // `Send` (rustc's higher-ranked closure limitation).
        let mut futs = Vec::with_capacity(agency.len());
        for p in &agency {
            futs.push(
                self.amazon
                    .list_advertisers_upto(login, p.profile_id, MAX_ADVERTISERS),
            );
        }
        let lists: Vec<_> = futures::stream::iter(futs)
            .buffered(crate::amazon::accounts::PAGE_CONCURRENCY)
            .collect()
            .await;
        let mut out = Vec::new();
        let mut reachable = 0usize;
        for (p, list) in agency.iter().zip(lists) {
            let list = list.map_err(|e| listing_failure(&e))?;
            reachable += list.total;
            for a in list.advertisers {
                if out
                    .iter()
                    .any(|x: &ListedAdvertiser| x.advertiser_id == a.advertiser_id)
                {
                    continue;
                }
                out.push(ListedAdvertiser {
                    profile_id: p.profile_id,
                    advertiser_id: a.advertiser_id,
                    name: a.name,
                    currency: a.currency,
                    country: a.country,
                    timezone: a.timezone,
                    profile_name: p.account_name.clone(),
                });
            }
        }
        if out.len() > MAX_ADVERTISERS {
            return Err(Failure::new(
                422,
                "Too many advertiser accounts",
                format!(
                    "The Amazon login can reach {} advertiser accounts; adsync lists at most {MAX_ADVERTISERS}.",
                    reachable.max(out.len())
                ),
                "Sign in with an Amazon login scoped to fewer advertisers, then start again with POST /connections.",
            ));
        }
        out.sort_by(|a, b| {
            a.name
                .cmp(&b.name)
                .then(a.advertiser_id.cmp(&b.advertiser_id))
        });
        Ok(out)
    }

    /// Leaves nothing half-made: deletes the token secret (when one was written) and marks the
    /// connection failed. Best effort: failures are logged, the user still gets the error page.
    async fn fail_connection(&self, cid: &str, login: Option<&LoginRef>, reason: &str) {
        if let Some(login) = login
            && let Err(e) = self.amazon.delete_login(login).await
        {
            tracing::error!(connection_id = cid, error = %e, "could not delete the token secret of a failed connection");
        }
        if let Err(e) = self.accounts.mark_failed(cid, reason).await {
            tracing::error!(connection_id = cid, error = %e, "could not mark the connection failed");
        }
        tracing::info!(connection_id = cid, reason, "connection failed");
    }

    /// Whether the request carries the browser cookie of the connection.
    async fn check_browser(&self, cid: &str, req: &HttpRequest) -> Result<(), Failure> {
        match self.bindings.get(cid).await {
            Ok(Some(b)) if binding::browser_matches(req, cid, &b) => Ok(()),
            Ok(_) => {
                tracing::warn!(
                    connection_id = cid,
                    "request without the browser's cookie refused"
                );
                Err(browser_failure())
            }
            Err(e) => {
                tracing::error!(connection_id = cid, error = %e, "cannot read the link binding");
                Err(store_failure("read the connection"))
            }
        }
    }

    /// `GET /oauth/callback?view=…`: the advertiser list with a fresh CSRF token, only in the
    /// browser that signed in (its cookie).
    async fn render_view(&self, view: &str, req: &HttpRequest) -> HttpResponse {
        let cid = match self.accounts.resolve_view(view).await {
            Ok(c) => c,
            Err(e) => return consume_failure("view", &e).page(None),
        };
        if let Err(f) = self.check_browser(&cid, req).await {
            return f.page(Some(&cid));
        }
        let conn = match self.usable_connection(&cid).await {
            Ok(c) => c,
            Err(f) => return f.page(Some(&cid)),
        };
        let Ok(csrf) = random_token() else {
            return random_failure().page(Some(&cid));
        };
        if let Err(e) = self.accounts.put_csrf(&csrf, &cid, conn.expires_at).await {
            tracing::error!(connection_id = %cid, error = %e, "cannot store the form token");
            return store_failure("prepare the form").page(Some(&cid));
        }
        let rows: Vec<AdvertiserRow> = conn
            .advertisers
            .iter()
            .map(|a| AdvertiserRow {
                advertiser_id: a.advertiser_id,
                name: a.name.clone(),
                country: a.country.clone(),
                currency: a.currency.clone(),
                profile_id: a.profile_id,
                profile_name: a.profile_name.clone(),
            })
            .collect();
        html::render(
            200,
            &AccountsPage {
                style: STYLE,
                title: "Choose the advertiser account",
                region: conn.region.as_str(),
                connection_id: &cid,
                advertisers: &rows,
                action: "confirm",
                csrf: &csrf,
                valid_until: &rfc3339(conn.expires_at),
            },
        )
    }

    /// The connection, if the user may still pick from it.
    async fn usable_connection(&self, cid: &str) -> Result<Connection, Failure> {
        let conn = match self.accounts.get_connection(cid).await {
            Ok(Some(c)) => c,
            Ok(None) => return Err(consume_failure("view", &ConsumeError::Expired)),
            Err(e) => {
                tracing::error!(connection_id = cid, error = %e, "cannot read connection");
                return Err(store_failure("read the connection"));
            }
        };
        match conn.status {
            ConnectionStatus::Consented | ConnectionStatus::Linked
                if conn.expires_at > now_secs() =>
            {
                Ok(conn)
            }
            ConnectionStatus::Consented | ConnectionStatus::Linked => {
                Err(consume_failure("view", &ConsumeError::Expired))
            }
            ConnectionStatus::Failed => Err(Failure::new(
                410,
                "This connection ended with an error",
                "This linking attempt failed earlier, and its Amazon login was not kept.",
                START_AGAIN,
            )),
            ConnectionStatus::Pending => Err(Failure::new(
                409,
                "The Amazon sign-in is not finished",
                "adsync has not received Amazon's consent for this connection yet.",
                START_AGAIN,
            )),
        }
    }

    // ---- POST /oauth/confirm -----------------------------------------------------------------

    async fn post_confirm(&self, req: &HttpRequest) -> HttpResponse {
        if req.content_type().as_deref() != Some("application/x-www-form-urlencoded") {
            return Failure::new(
                415,
                "Unsupported form",
                "The confirmation must be posted as a form (application/x-www-form-urlencoded).",
                "Press Confirm on the account list page.",
            )
            .page(None);
        }
        if req.body.len() > 4096 {
            return Failure::new(
                413,
                "Form too large",
                "The confirmation form is too large.",
                "Press Confirm on the account list page.",
            )
            .page(None);
        }
        let mut csrf = None;
        let mut advertiser = None;
        for (k, v) in url::form_urlencoded::parse(&req.body) {
            match k.as_ref() {
                "csrf" if csrf.is_none() => csrf = Some(v.into_owned()),
                "advertiserId" if advertiser.is_none() => advertiser = Some(v.into_owned()),
                _ => {}
            }
        }
        let missing = |field: &str| {
            Failure::new(
                400,
                "The confirmation is incomplete",
                format!("The form field {field} is missing."),
                "Press Confirm on the account list page.",
            )
            .page(None)
        };
        let Some(csrf) = csrf.filter(|c| !c.is_empty()) else {
            return missing("csrf");
        };
        let Some(advertiser) = advertiser.filter(|a| !a.is_empty()) else {
            return missing("advertiserId");
        };
        let Some(advertiser_id) = advertiser.trim().parse::<i64>().ok().filter(|a| *a > 0) else {
            return Failure::new(
                400,
                "The confirmation is not valid",
                "The form field advertiserId is not an advertiser id (a positive whole number).",
                "Press Confirm on the account list page.",
            )
            .page(None);
        };
        let outcome = self
            .accounts
            .consume_csrf(&csrf, &advertiser_id.to_string())
            .await;
        // Only the browser that signed in may confirm (whatever the form token's state).
        if let Ok(
            CsrfOutcome::Fresh { connection_id }
            | CsrfOutcome::Repeat { connection_id }
            | CsrfOutcome::UsedForOther { connection_id },
        ) = &outcome
            && let Err(f) = self.check_browser(connection_id, req).await
        {
            return f.page(Some(connection_id));
        }
        let (cid, repeat) = match outcome {
            Ok(CsrfOutcome::Fresh { connection_id }) => (connection_id, false),
            Ok(CsrfOutcome::Repeat { connection_id }) => (connection_id, true),
            Ok(CsrfOutcome::UsedForOther { connection_id }) => {
                return Failure::new(
                    409,
                    "This form was already used",
                    "This account list was already used to confirm a different advertiser account.",
                    "To link another advertiser from the same Amazon login, go back and reload the account list, \
                     then press Confirm next to it.",
                )
                .page(Some(&connection_id));
            }
            Err(e) => {
                tracing::warn!(outcome = ?kind_of(&e), "confirmation form rejected");
                return consume_failure("form", &e).page(None);
            }
        };
        if repeat && let Some(f) = self.unlinked_since(&cid, advertiser_id).await {
            return f.page(Some(&cid));
        }
        match self.confirm(&cid, advertiser_id).await {
            Ok(a) => html::render(
                200,
                &SuccessPage {
                    style: STYLE,
                    title: "Account linked",
                    account_id: &a.account_id,
                    name: &a.name,
                    region: a.region.as_str(),
                    advertiser_id: a.advertiser_id,
                    profile_id: a.profile_id,
                    country: &a.country,
                    currency: &a.currency,
                },
            ),
            Err(f) => f.page(Some(&cid)),
        }
    }

    /// A repeated submit (a reload of the success page) must not bring back an account that was
    /// unlinked in between: its login's token may be gone.
    async fn unlinked_since(&self, cid: &str, advertiser_id: i64) -> Option<Failure> {
        match self.accounts.get_account(&advertiser_id.to_string()).await {
            Ok(Some(a)) if a.status == AccountStatus::Removed && a.connection_id == cid => {
                Some(Failure::new(
                    410,
                    "This account was unlinked",
                    format!(
                        "Account {advertiser_id} was linked from this page and has been unlinked since."
                    ),
                    START_AGAIN,
                ))
            }
            _ => None,
        }
    }

    /// Creates (or re-links) the integrated account for a listed advertiser. Idempotent.
    async fn confirm(&self, cid: &str, advertiser_id: i64) -> Result<IntegratedAccount, Failure> {
        let conn = self.usable_connection(cid).await?;
        let Some(listed) = conn
            .advertisers
            .iter()
            .find(|a| a.advertiser_id == advertiser_id)
        else {
            return Err(Failure::new(
                400,
                "This advertiser was not offered",
                format!(
                    "Advertiser {advertiser_id} is not one of the accounts this Amazon login can link."
                ),
                "Press Confirm next to one of the accounts on the account list page.",
            ));
        };
        let Some(token_secret) = conn.token_secret.clone() else {
            return Err(store_failure("find the login's token"));
        };
        let account_id = advertiser_id.to_string();
        let previous = match self.accounts.get_account(&account_id).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(connection_id = cid, error = %e, "cannot read account");
                return Err(store_failure("read the account"));
            }
        };
        let account = IntegratedAccount {
            account_id: account_id.clone(),
            region: conn.region,
            profile_id: listed.profile_id,
            advertiser_id,
            name: listed.name.clone(),
            currency: listed.currency.clone(),
            country: listed.country.clone(),
            connection_id: cid.to_string(),
            token_secret: token_secret.clone(),
            status: AccountStatus::Active,
            created_at: previous
                .as_ref()
                .filter(|p| p.status != AccountStatus::Removed)
                .map(|p| p.created_at.clone())
                .unwrap_or_else(|| {
                    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                }),
        };
        let unchanged = previous.as_ref() == Some(&account);
        if !unchanged && let Err(e) = self.accounts.put_account(&account).await {
            tracing::error!(connection_id = cid, account_id = %account_id, error = %e, "cannot store account");
            return Err(store_failure("save the linked account"));
        }
        if let Err(e) = self.accounts.mark_linked(cid).await {
            tracing::warn!(connection_id = cid, error = %e, "cannot mark connection linked");
        }
        // The next scheduled `redrive-dlq` moves this account's dead-lettered work back.
        if let Err(e) = crate::store::parked_counts::ParkedCounts::new(&self.accounts)
            .mark_relinked(&account_id, crate::runtime::now_ms())
            .await
        {
            tracing::warn!(account_id = %account_id, error = %e, "cannot record the relink");
        }
        // Re-linked from a new login: the old login's secret goes when nothing else uses it.
        if let Some(prev) = previous
            && prev.status != AccountStatus::Removed
            && prev.token_secret != token_secret
        {
            self.release_login(&prev.login()).await;
        }
        tracing::info!(connection_id = cid, account_id = %account_id, relinked = !unchanged, "account linked");
        Ok(account)
    }

    /// Deletes a login's token secret if no non-removed account uses it any more. Returns
    /// whether it was deleted.
    async fn release_login(&self, login: &LoginRef) -> bool {
        match self.accounts.account_ids_on_login(&login.secret_name).await {
            Ok(ids) if ids.is_empty() => match self.amazon.delete_login(login).await {
                Ok(()) => {
                    tracing::info!(secret = %login.secret_name, "token secret deleted");
                    true
                }
                Err(e) => {
                    tracing::error!(secret = %login.secret_name, error = %e, "could not delete token secret");
                    false
                }
            },
            Ok(_) => false,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the accounts on a login");
                false
            }
        }
    }

    // ---- GET /accounts, DELETE /accounts/{id} ------------------------------------------------

    /// The accounts the caller's key may use (all for a key without an `accounts` restriction).
    async fn get_accounts(&self, caller: Option<&Caller>) -> HttpResponse {
        match self.accounts.list_accounts().await {
            Ok(list) => {
                let ids: Vec<String> = list.iter().map(|a| a.account_id.clone()).collect();
                let parked = crate::store::parked_counts::ParkedCounts::new(&self.accounts)
                    .views(&ids)
                    .await
                    .inspect_err(|e| tracing::warn!(error = %e, "cannot read the parked counts"))
                    .ok();
                let accounts: Vec<serde_json::Value> = list
                    .iter()
                    .filter(|a| caller.is_none_or(|c| c.may_use(&a.account_id)))
                    .map(|a| {
                        let mut v = account_json(a);
                        if let Some(p) = &parked {
                            v["parked"] = serde_json::json!(
                                p.get(&a.account_id).copied().unwrap_or_default()
                            );
                        }
                        v
                    })
                    .collect();
                HttpResponse::json(200, &serde_json::json!({ "accounts": accounts }))
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot list accounts");
                HttpResponse::error(
                    503,
                    "store_unavailable",
                    "adsync could not read the accounts; try again",
                )
            }
        }
    }

    async fn delete_account(&self, account_id: &str) -> HttpResponse {
        if account_id.is_empty()
            || account_id.len() > 20
            || !account_id.bytes().all(|b| b.is_ascii_digit())
        {
            return HttpResponse::field_error(
                400,
                "invalid_field",
                "accountId",
                "the account id is the advertiser id, a decimal number",
            );
        }
        match self.accounts.remove_account(account_id).await {
            Ok(Some(before)) => {
                let deleted = self.release_login(&before.login()).await;
                tracing::info!(
                    account_id,
                    token_secret_deleted = deleted,
                    "account unlinked"
                );
                HttpResponse::json(
                    200,
                    &serde_json::json!({
                        "accountId": account_id,
                        "status": AccountStatus::Removed.as_str(),
                        "tokenSecretDeleted": deleted,
                    }),
                )
            }
            Ok(None) => crate::http::accounts::require_active(account_id, None)
                .err()
                .unwrap_or_else(HttpResponse::not_found),
            Err(e) => {
                tracing::error!(account_id, error = %e, "cannot unlink account");
                HttpResponse::error(
                    503,
                    "store_unavailable",
                    "adsync could not unlink the account; try again",
                )
            }
        }
    }
}

fn account_json(a: &IntegratedAccount) -> serde_json::Value {
    serde_json::json!({
        "accountId": a.account_id,
        "region": a.region,
        "profileId": a.profile_id,
        "advertiserId": a.advertiser_id,
        "name": a.name,
        "currency": a.currency,
        "country": a.country,
        "connectionId": a.connection_id,
        "status": a.status,
        "createdAt": a.created_at,
    })
}

fn kind_of(e: &ConsumeError) -> &'static str {
    match e {
        ConsumeError::Unknown => "unknown",
        ConsumeError::Expired => "expired",
        ConsumeError::Used => "used",
        ConsumeError::Store(_) => "store_error",
    }
}

fn exchange_failure(e: &AmazonError) -> Failure {
    match e {
        AmazonError::Lwa(LwaError::InvalidGrant { .. }) => Failure::new(
            400,
            "Amazon did not accept the sign-in code",
            "Amazon answered invalid_grant: the authorization code expired (codes last 5 minutes) or was already used.",
            START_AGAIN,
        ),
        AmazonError::Lwa(LwaError::InvalidClient { .. }) => Failure::new(
            502,
            "adsync's Amazon credentials were refused",
            "Amazon answered invalid_client: the LwA client id or secret adsync uses is wrong.",
            "Fix the LWA_CREDENTIALS_SECRET secret (client_id, client_secret of the security profile), then start again.",
        ),
        e if e.is_retryable() => Failure::new(
            502,
            "Amazon could not be reached",
            "The sign-in code could not be exchanged because Amazon's token service did not answer in time.",
            START_AGAIN,
        ),
        _ => Failure::new(
            502,
            "Amazon refused the sign-in",
            "Amazon's token service refused to exchange the sign-in code.",
            "Check the LwA security profile (allowed return URL = OAUTH_REDIRECT_URI), then start again.",
        ),
    }
}

fn listing_failure(e: &AmazonError) -> Failure {
    tracing::warn!(error = %e, "listing profiles or advertisers failed");
    if matches!(e, AmazonError::Timeout) {
        return Failure::new(
            504,
            "Amazon is too slow to list the advertiser accounts",
            "adsync signed in, but Amazon did not list the login's profiles and DSP advertisers \
             within the time this page may take (API Gateway ends a request after 30 s). The login \
             was not kept.",
            "Try again in a few minutes: create a new connection (POST /connections) and open its authorizeUrl.",
        );
    }
    Failure::new(
        502,
        "Amazon could not list the advertiser accounts",
        format!(
            "adsync signed in, but listing the login's profiles and DSP advertisers failed: {}. The login was not kept.",
            e.user_message()
        ),
        START_AGAIN,
    )
}

#[async_trait::async_trait]
impl Handler for Linking {
    async fn http(&self, req: HttpRequest, _inv: Invocation) -> HttpResponse {
        // Authenticate and authorize before routing (crate::http::scopes owns the rules; the
        // browser steps are open).
        let caller = match crate::http::scopes::authorize(&self.auth, &req).await {
            Ok(c) => c,
            Err(denied) => return denied,
        };
        self.route_authorized(&req, caller.as_ref()).await
    }

    async fn task(
        &self,
        name: &str,
        _input: serde_json::Value,
        inv: Invocation,
    ) -> Result<serde_json::Value, String> {
        match name {
            "cleanup" => {
                let s = self.cleanup(&inv, cleanup::ABANDONED_AFTER).await;
                serde_json::to_value(s).map_err(|e| e.to_string())
            }
            other => Err(format!(
                "unknown task {other:?}; this function runs \"cleanup\""
            )),
        }
    }
}

impl Linking {
    /// Routes a request whose caller is already authorized against `crate::http::scopes::POLICY`
    /// (the console checks its session's key the same way before it calls this in process).
    pub async fn route_authorized(
        &self,
        req: &HttpRequest,
        caller: Option<&Caller>,
    ) -> HttpResponse {
        let segs = req.segments();
        let m = req.method.as_str();
        match segs.as_slice() {
            [.., "oauth", "callback"] => match m {
                // GET only: a HEAD (link previews, prefetchers) must not spend the state.
                "GET" => self.get_callback(req).await,
                _ => HttpResponse::method_not_allowed("GET"),
            },
            [.., "oauth", "confirm"] => match m {
                "POST" => self.post_confirm(req).await,
                _ => HttpResponse::method_not_allowed("POST"),
            },
            [.., "connections"] => match m {
                "POST" => self.post_connections(req).await,
                _ => HttpResponse::method_not_allowed("POST"),
            },
            [.., "accounts"] => match m {
                "GET" => self.get_accounts(caller).await,
                _ => HttpResponse::method_not_allowed("GET"),
            },
            [.., "accounts", id] => match m {
                "DELETE" => self.delete_account(id).await,
                _ => HttpResponse::method_not_allowed("DELETE"),
            },
            _ => HttpResponse::not_found(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tokens_are_long_and_distinct() {
        let a = random_token().unwrap();
        let b = random_token().unwrap();
        assert_ne!(a, b);
        // 32 bytes → 43 base64url characters: 256 bits.
        assert_eq!(a.len(), 43);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }

    #[test]
    fn provider_errors_are_not_echoed_raw() {
        assert_eq!(sanitize_error_code("access_denied"), "access_denied");
        assert_eq!(sanitize_error_code("<script>"), "unknown_error");
        assert_eq!(provider_error("access_denied").status, 403);
        assert_eq!(provider_error("server_error").status, 400);
    }

    #[test]
    fn failure_statuses_match_the_docs() {
        assert_eq!(consume_failure("state", &ConsumeError::Unknown).status, 400);
        assert_eq!(consume_failure("state", &ConsumeError::Expired).status, 410);
        assert_eq!(consume_failure("state", &ConsumeError::Used).status, 409);
        assert_eq!(consume_failure("form", &ConsumeError::Unknown).status, 403);
        let ig = AmazonError::Lwa(LwaError::InvalidGrant {
            description: "x".into(),
        });
        assert_eq!(exchange_failure(&ig).status, 400);
        assert_eq!(exchange_failure(&AmazonError::Timeout).status, 502);
    }
}
