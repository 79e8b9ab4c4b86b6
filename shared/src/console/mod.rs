//! The console: Audience Manager's and AEP's pages (segments, destinations, integrated accounts,
//! conversions) as server-rendered HTML for people who do not use curl, served by the `console`
//! function under `/console/…` (locally `/lambda-url/console/console/…`).
//!
//! The console has no rules of its own: every action builds the API's JSON request and calls the
//! API's router in process ([`api`]), after checking the signed-in key against the same route
//! policy (`crate::http::scopes`), and renders the JSON answer; an error is shown next to the
//! form field it names, in the API's own words.
//!
//! Sign-in takes an API key (the same keys as the API) and starts a server-side session
//! ([`session`]); every form carries the session's CSRF token; every answer has `Cache-Control:
//! no-store` and a CSP without inline script or `unsafe-*` ([`pages`]).

pub mod api;
pub mod forms;
pub mod invoke;
pub mod pages;
pub mod session;
mod views;
mod views_accounts;
mod views_privacy;

use crate::export::ExportCtx;
use crate::http::auth::ApiKeyAuth;
use crate::http::{HttpRequest, HttpResponse};
use crate::linking::Linking;
use crate::runtime::{Handler, Invocation, StartError};
use crate::settings::Settings;
use crate::store::conversion_counts::ConversionCounts;
use crate::store::secrets::SecretsStore;
use invoke::TaskInvoker;
use pages::Chrome;
use session::{COOKIE, Session, SessionStore, SignInLimit};

/// The console's use cases and stores, built once per process.
#[derive(Clone)]
pub struct Console {
    pub api: api::Api,
    pub auth: ApiKeyAuth,
    pub sessions: SessionStore,
    pub counts: ConversionCounts,
    pub invoker: TaskInvoker,
    pub limit: SignInLimit,
}

impl Console {
    /// From the environment: what segment-export and oauth-callback read, plus
    /// `CONSOLE_SIGNIN_LIMIT` / `CONSOLE_SIGNIN_WINDOW_SECS` and `CONVERSION_INGEST_FUNCTION`.
    pub async fn from_env(aws: &crate::aws::AwsClients) -> Result<Self, String> {
        let settings = Settings::from_env().map_err(|e| e.to_string())?;
        Self::from_settings(aws, &settings)
            .await
            .map_err(|e| e.to_string())
    }

    /// [`Console::from_env`] with the clients and settings built at cold start.
    pub async fn from_settings(
        aws: &crate::aws::AwsClients,
        settings: &Settings,
    ) -> Result<Self, StartError> {
        let export = ExportCtx::from_settings(aws, settings).await?;
        let linking = Linking::with_amazon(aws, settings, export.amazon.clone())?;
        let keys = settings.api_keys_secret.get()?;
        Ok(Self {
            sessions: SessionStore::new(aws.dynamodb.clone(), export.accounts.table().to_string()),
            counts: ConversionCounts::new(&export.accounts),
            api: api::Api { export, linking },
            auth: ApiKeyAuth::new(SecretsStore::new(aws.secrets.clone()), keys),
            invoker: TaskInvoker::from_settings(settings).await,
            limit: settings.signin_limit.clone(),
        })
    }
}

/// One signed-in request: where the console lives, the session and the form sent.
pub(crate) struct Req<'a> {
    pub inv: &'a Invocation,
    pub chrome: Chrome,
    pub session: Session,
    pub form: forms::Form,
}

/// The route below the console's root (`…/console/<route>`) and the relative URL of that root as
/// seen from the request's page (`.`, `..`, `../..`, or `console` for the root itself). Every
/// link, form and redirect is relative, so the pages work behind API Gateway (`/console/…`) and
/// behind `cargo lambda watch`, which strips its `/lambda-url/console` prefix before the function
/// sees the path.
pub fn split_path(path: &str) -> Option<(String, Vec<&str>)> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let skip = if segs.first() == Some(&"lambda-url") && segs.len() >= 2 {
        2
    } else {
        0
    };
    if segs.get(skip) != Some(&"console") {
        return None;
    }
    let route = segs[skip + 1..].to_vec();
    let depth = (route.len() + usize::from(path.ends_with('/'))).saturating_sub(1);
    let base = match (route.is_empty(), depth) {
        (true, _) if !path.ends_with('/') => "console".to_string(),
        (_, 0) => ".".to_string(),
        (_, d) => vec![".."; d].join("/"),
    };
    Some((base, route))
}

pub(crate) fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

#[async_trait::async_trait]
impl Handler for Console {
    async fn http(&self, req: HttpRequest, inv: Invocation) -> HttpResponse {
        let Some((base, route)) = split_path(&req.path) else {
            return HttpResponse::not_found();
        };
        let m = req.method.as_str();
        match (m, route.as_slice()) {
            ("GET", ["static", "console.css"]) => pages::asset("text/css", pages::CSS),
            ("GET", ["static", "progress.js"]) => pages::asset("text/javascript", pages::JS),
            ("GET", ["sign-in"]) => views_accounts::sign_in_page(&base, None, 200),
            ("POST", ["sign-in"]) => views_accounts::sign_in(self, &req, &base).await,
            _ => self.signed_in(&req, &inv, base, m, &route).await,
        }
    }
}

impl Console {
    /// The session of the request's cookie, or the answer to send instead.
    async fn session(
        &self,
        req: &HttpRequest,
        base: &str,
    ) -> Result<(String, Session), HttpResponse> {
        let refused = || {
            if req.method == "GET" {
                pages::see_other(&format!("{base}/sign-in"))
            } else {
                pages::notice_page(
                    base,
                    401,
                    "Signed out",
                    "Your session has ended (or this browser never signed in), so nothing was changed. Sign in again.",
                )
            }
        };
        let Some(id) = session::cookie(req, COOKIE) else {
            return Err(refused());
        };
        match self.sessions.get(id, now_secs()).await {
            Ok(Some(s)) => {
                // Audit: the session's key name on the request's log line.
                crate::http::auth::record_key(&s.caller.name);
                Ok((id.to_string(), s))
            }
            Ok(None) => Err(refused()),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the console session");
                Err(pages::notice_page(
                    base,
                    503,
                    "Try again",
                    "adsync could not read your session (its database did not answer). Try again in a minute.",
                ))
            }
        }
    }

    async fn signed_in(
        &self,
        req: &HttpRequest,
        inv: &Invocation,
        base: String,
        m: &str,
        route: &[&str],
    ) -> HttpResponse {
        let (id, session) = match self.session(req, &base).await {
            Ok(s) => s,
            Err(r) => return r,
        };
        let form = forms::Form::parse(req);
        if m == "POST" && !session.csrf_ok(form.get("csrf")) {
            tracing::warn!(key = %session.caller.name, "console form refused: bad CSRF token");
            return pages::notice_page(
                &base,
                403,
                "Form refused",
                "This form did not carry this session's security token (it may come from another site or an old page), so nothing was changed. Reload the page and try again.",
            );
        }
        let chrome = Chrome {
            base: base.clone(),
            csrf: session.csrf.clone(),
            key_name: session.caller.name.clone(),
        };
        let r = Req {
            inv,
            chrome,
            session,
            form,
        };
        match (m, route) {
            ("POST", ["sign-out"]) => views_accounts::sign_out(self, &id, &base).await,
            ("GET", []) => pages::see_other(&format!("{base}/destinations")),
            ("GET", ["segments"]) => views::segments(self, &r, None).await,
            ("POST", ["segments"]) => views::save_segment(self, &r, None).await,
            ("GET", ["segments", seg]) => views::segment(self, &r, seg, None).await,
            ("POST", ["segments", seg]) => views::save_segment(self, &r, Some(seg)).await,
            ("POST", ["segments", seg, "delete"]) => views::delete_segment(self, &r, seg).await,
            ("GET", ["destinations"]) => views::destinations(self, &r, None).await,
            ("POST", ["destinations"]) => views::create_destination(self, &r).await,
            ("GET", ["destinations", d]) => views::destination(self, &r, d, None).await,
            ("GET", ["destinations", d, "progress"]) => views::progress(self, &r, d).await,
            ("POST", ["destinations", d, "mappings"]) => views::add_mapping(self, &r, d).await,
            ("POST", ["destinations", d, "mappings", s, "fees"]) => {
                views::put_fees(self, &r, d, s).await
            }
            ("POST", ["destinations", d, "mappings", s, "remove"]) => {
                views::remove_mapping(self, &r, d, s).await
            }
            ("POST", ["destinations", d, "delete"]) => views::delete_destination(self, &r, d).await,
            ("GET", ["accounts"]) => views_accounts::accounts(self, &r, None).await,
            ("POST", ["accounts", "link"]) => views_accounts::link(self, &r).await,
            ("GET", ["accounts", a, "unlink"]) => views_accounts::confirm_unlink(&r, a),
            ("POST", ["accounts", a, "unlink"]) => views_accounts::unlink(self, &r, a).await,
            ("GET", ["conversions"]) => views_accounts::conversions(self, &r, None).await,
            ("POST", ["conversions", "redrive"]) => views_accounts::redrive(self, &r).await,
            ("GET", ["privacy"]) => views_privacy::form(&r),
            ("POST", ["privacy"]) => views_privacy::submit(self, &r).await,
            ("GET", ["privacy", id]) => views_privacy::job(self, &r, id).await,
            _ => pages::notice_page(
                &base,
                404,
                "Not found",
                "There is no such page in the console.",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_lives_under_console_with_or_without_the_local_prefix() {
        let (base, r) = split_path("/console/destinations/d1").unwrap();
        assert_eq!((base.as_str(), r), ("..", vec!["destinations", "d1"]));
        let (base, r) = split_path("/lambda-url/console/console/sign-in").unwrap();
        assert_eq!((base.as_str(), r), (".", vec!["sign-in"]));
        let (base, r) = split_path("/console/accounts/1/unlink").unwrap();
        assert_eq!(
            (base.as_str(), r),
            ("../..", vec!["accounts", "1", "unlink"])
        );
        assert_eq!(split_path("/console").unwrap().0, "console");
        assert_eq!(split_path("/console/").unwrap().0, ".");
        assert_eq!(split_path("/console/segments/").unwrap().0, "..");
        assert!(split_path("/segments").is_none());
        assert!(split_path("/lambda-url/console/segments").is_none());
    }
}
