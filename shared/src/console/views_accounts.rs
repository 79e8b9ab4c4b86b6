//! Sign-in and sign-out, the Accounts page (Audience Manager's "Integrated Accounts": list, add
//! through the linking flow, unlink) and the Conversions page (counts and "Redrive now").

use super::api::seg;
use super::pages::{self, Chrome, Errors, Notice};
use super::session::{self, COOKIE, PRE_COOKIE, SESSION_SECS};
use super::{Console, Req, now_secs};
use crate::amazon::Region;
use crate::http::scopes::{self, Accounts, Scope};
use crate::http::{HttpRequest, HttpResponse};
use askama::Template;
use serde_json::{Value, json};

#[derive(Template)]
#[template(path = "console/sign_in.html")]
pub struct SignInPage<'a> {
    pub base: &'a str,
    pub csrf: &'a str,
    pub error: Option<&'a str>,
}

/// The sign-in form, with a fresh double-submit token (cookie + hidden field).
pub fn sign_in_page(base: &str, error: Option<&str>, status: u16) -> HttpResponse {
    let Ok(token) = crate::random::token() else {
        return pages::notice_page(
            base,
            503,
            "Try again",
            "adsync could not create a secure form. Try again in a minute.",
        );
    };
    pages::render(
        status,
        &SignInPage {
            base,
            csrf: &token,
            error,
        },
    )
    .with_header("set-cookie", &session::set_cookie(PRE_COOKIE, &token, 600))
}

/// `POST sign-in`: a key → a session cookie. Wrong keys count against the source IP; the key is
/// never logged or echoed.
pub async fn sign_in(con: &Console, req: &HttpRequest, base: &str) -> HttpResponse {
    let form = super::forms::Form::parse(req);
    let pre = session::cookie(req, PRE_COOKIE);
    if !pre.is_some_and(|p| form.get("csrf").is_some_and(|f| session::same(p, f))) {
        return sign_in_page(
            base,
            Some("This sign-in form expired or did not come from this console. Try again."),
            403,
        );
    }
    let ip = req.source_ip.clone().unwrap_or_else(|| "unknown".into());
    let now = now_secs();
    match con.sessions.failures(&ip, &con.limit, now).await {
        Ok(n) if n >= con.limit.max_failures => {
            tracing::warn!("console sign-in refused: too many wrong keys from this address");
            let wait = (con.limit.window_start(now) + con.limit.window_secs - now).max(1);
            let msg = format!(
                "Too many wrong keys from your address. Try again in {} minute(s).",
                (wait + 59) / 60
            );
            return sign_in_page(base, Some(&msg), 429);
        }
        Ok(_) => {}
        Err(e) => {
            tracing::error!(error = %e, "cannot read the sign-in failures");
            return sign_in_page(
                base,
                Some(
                    "adsync could not check this sign-in (its database did not answer). Try again.",
                ),
                503,
            );
        }
    }
    let key = form.text("key");
    let probe = HttpRequest::new("POST", "/console/sign-in")
        .with_header("authorization", &format!("Bearer {key}"));
    let caller = match con.auth.authenticate(&probe).await {
        Ok(c) => c,
        Err(resp) if resp.status == 401 => {
            tracing::warn!("console sign-in with a wrong key");
            if let Err(e) = con.sessions.add_failure(&ip, &con.limit, now).await {
                tracing::error!(error = %e, "cannot count a sign-in failure");
            }
            return sign_in_page(base, Some("That key is not valid."), 401);
        }
        Err(resp) => {
            return sign_in_page(
                base,
                Some("adsync could not read its API keys. Try again in a minute."),
                resp.status,
            );
        }
    };
    match con.sessions.create(&caller, now).await {
        Ok((id, _)) => {
            tracing::info!(key = %caller.name, "console session started");
            pages::see_other(&format!("{base}/destinations")).with_header(
                "set-cookie",
                &session::set_cookie(COOKIE, &id, SESSION_SECS),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start a console session");
            sign_in_page(
                base,
                Some("adsync could not start a session. Try again in a minute."),
                503,
            )
        }
    }
}

/// `POST sign-out`: the session is deleted, so its cookie stops working everywhere.
pub async fn sign_out(con: &Console, id: &str, base: &str) -> HttpResponse {
    if let Err(e) = con.sessions.revoke(id).await {
        tracing::error!(error = %e, "cannot end a console session");
        return pages::notice_page(
            base,
            503,
            "Not signed out",
            "adsync could not end the session (its database did not answer). Try again.",
        );
    }
    pages::see_other(&format!("{base}/sign-in"))
        .with_header("set-cookie", &session::set_cookie(COOKIE, "", 0))
}

pub struct AccountRow {
    pub id: String,
    pub name: String,
    pub region: String,
    pub status: String,
    pub status_text: String,
    pub parked_conversions: u64,
    pub parked_patches: u64,
}

#[derive(Template)]
#[template(path = "console/accounts.html")]
pub struct AccountsPage {
    pub c: Chrome,
    pub title: String,
    pub notice: Option<Notice>,
    pub accounts: Vec<AccountRow>,
    pub regions: Vec<&'static str>,
    pub authorize_url: Option<String>,
    pub errors: Errors,
}

fn account_rows(list: &Value) -> Vec<AccountRow> {
    list["accounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let s = |k: &str| a[k].as_str().unwrap_or("").to_string();
            let status = s("status");
            AccountRow {
                id: s("accountId"),
                name: s("name"),
                region: s("region"),
                status_text: status.replace('_', " "),
                status,
                parked_conversions: a["parked"]["conversions"].as_u64().unwrap_or(0),
                parked_patches: a["parked"]["patches"].as_u64().unwrap_or(0),
            }
        })
        .collect()
}

async fn accounts_page(
    con: &Console,
    r: &Req<'_>,
    shown: (Option<Notice>, Errors),
    url: Option<String>,
    status: u16,
) -> HttpResponse {
    let list = con.api.get(&r.session.caller, "/accounts", r.inv).await;
    let (mut notice, errors) = shown;
    if let Some(e) = list.error() {
        notice = Notice::error(e.message);
    }
    let page = AccountsPage {
        c: r.chrome.clone(),
        title: "Integrated accounts".into(),
        notice,
        accounts: account_rows(&list.body),
        regions: Region::ALL.iter().map(|r| r.as_str()).collect(),
        authorize_url: url,
        errors,
    };
    pages::render(status, &page)
}

/// `GET accounts`.
pub async fn accounts(
    con: &Console,
    r: &Req<'_>,
    shown: Option<(Option<Notice>, Errors)>,
) -> HttpResponse {
    accounts_page(con, r, shown.unwrap_or_default(), None, 200).await
}

/// `POST accounts/link`: `POST /connections`, then a link to Login with Amazon (a link, not a
/// redirect: the CSP's `form-action 'self'` rightly refuses a form that ends on another site).
pub async fn link(con: &Console, r: &Req<'_>) -> HttpResponse {
    let body = json!({"region": r.form.text("region")});
    let a = con
        .api
        .call(
            &r.session.caller,
            "POST",
            "/connections",
            Some(&body),
            r.inv,
        )
        .await;
    if let Some(e) = a.error() {
        return accounts_page(con, r, Errors::from_api(&e), None, a.status).await;
    }
    let url = a.body["authorizeUrl"].as_str().map(str::to_string);
    accounts_page(con, r, (None, Errors::default()), url, 200).await
}

#[derive(Template)]
#[template(path = "console/unlink.html")]
pub struct UnlinkPage<'a> {
    pub c: Chrome,
    pub title: String,
    pub notice: Option<Notice>,
    pub account: &'a str,
}

/// `GET accounts/{id}/unlink`: the confirmation.
pub fn confirm_unlink(r: &Req<'_>, account: &str) -> HttpResponse {
    let page = UnlinkPage {
        c: r.chrome.clone(),
        title: format!("Unlink account {account}?"),
        notice: None,
        account,
    };
    pages::render(200, &page)
}

/// `POST accounts/{id}/unlink`: `DELETE /accounts/{id}`.
pub async fn unlink(con: &Console, r: &Req<'_>, account: &str) -> HttpResponse {
    let path = format!("/accounts/{}", seg(account));
    let a = con
        .api
        .call(&r.session.caller, "DELETE", &path, None, r.inv)
        .await;
    let shown = match a.error() {
        Some(e) => Errors::from_api(&e),
        None => (
            Notice::ok(format!("Account {account} unlinked.")),
            Errors::default(),
        ),
    };
    accounts_page(con, r, shown, None, a.status.max(200)).await
}

pub struct CountRow {
    pub account: String,
    pub name: String,
    pub period: &'static str,
    pub received: u64,
    pub accepted: u64,
    pub duplicate: u64,
    pub rejected: u64,
    pub reasons: String,
    pub parked: u64,
    pub parked_now: u64,
}

#[derive(Template)]
#[template(path = "console/conversions.html")]
pub struct ConversionsPage {
    pub c: Chrome,
    pub title: String,
    pub notice: Option<Notice>,
    pub rows: Vec<CountRow>,
}

/// `GET conversions`: per account (those the key may see), the last 24 h and 7 days.
pub async fn conversions(con: &Console, r: &Req<'_>, notice: Option<Notice>) -> HttpResponse {
    let list = con.api.get(&r.session.caller, "/accounts", r.inv).await;
    if let Some(e) = list.error() {
        return pages::notice_page(&r.chrome.base, e.status, "Conversions", &e.message);
    }
    let mut rows = Vec::new();
    let mut notice = notice;
    for a in account_rows(&list.body) {
        let periods = match con.counts.periods(&a.id, now_secs()).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the conversion counts");
                notice = Notice::error("Some counts could not be read; reload to try again.");
                continue;
            }
        };
        for (period, c) in [
            ("24 hours", &periods.last_24h),
            ("7 days", &periods.last_7d),
        ] {
            let reasons = c
                .top_reasons(3)
                .iter()
                .map(|(k, v)| format!("{}: {v}", k.replace('_', " ")))
                .collect::<Vec<_>>()
                .join(", ");
            rows.push(CountRow {
                account: a.id.clone(),
                name: a.name.clone(),
                period,
                received: c.received,
                accepted: c.accepted,
                duplicate: c.duplicate,
                rejected: c.rejected,
                reasons,
                parked: c.parked,
                parked_now: a.parked_conversions,
            });
        }
    }
    let page = ConversionsPage {
        c: r.chrome.clone(),
        title: "Conversions".into(),
        notice,
        rows,
    };
    pages::render(200, &page)
}

/// `POST conversions/redrive`: starts conversion-ingest's redrive task (asynchronously). Needs a
/// key that may write conversions for every account, as the task serves them all.
pub async fn redrive(con: &Console, r: &Req<'_>) -> HttpResponse {
    if let Err(denied) = scopes::check(
        &r.session.caller,
        Scope::ConversionsWrite,
        Accounts::Unrestricted,
        None,
    ) {
        let msg = denied.json_body()["error"]["message"]
            .as_str()
            .unwrap_or("not allowed")
            .to_string();
        return conversions(con, r, Notice::error(msg)).await;
    }
    let notice = match con.invoker.redrive_conversions().await {
        Ok(()) => Notice::ok(
            "Redrive started: parked conversions are being sent again. Reload to see the counts fall.",
        ),
        Err(e) => {
            tracing::error!(error = %e, "redrive could not be started");
            Notice::error(
                "The redrive could not be started (Lambda did not accept it). Try again in a minute.",
            )
        }
    };
    conversions(con, r, notice).await
}
