//! `GET /oauth/callback?view=…`: the advertiser list, in the browser that signed in.

use super::failure::{
    Failure, START_AGAIN, browser_failure, consume_failure, random_failure, store_failure,
};
use super::{Linking, binding, now_secs, random_token, rfc3339};
use crate::http::html::{AccountsPage, AdvertiserRow, STYLE};
use crate::http::{HttpRequest, HttpResponse, Kind, html};
use crate::store::accounts::{Connection, ConnectionStatus, ConsumeError};

impl Linking {
    /// Whether the request carries the browser cookie of the connection.
    pub(super) async fn check_browser(&self, cid: &str, req: &HttpRequest) -> Result<(), Failure> {
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
    pub(super) async fn render_view(&self, view: &str, req: &HttpRequest) -> HttpResponse {
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
    pub(super) async fn usable_connection(&self, cid: &str) -> Result<Connection, Failure> {
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
                Kind::Gone,
                "This connection ended with an error",
                "This linking attempt failed earlier, and its Amazon login was not kept.",
                START_AGAIN,
            )),
            ConnectionStatus::Pending => Err(Failure::new(
                Kind::Conflict,
                "The Amazon sign-in is not finished",
                "adsync has not received Amazon's consent for this connection yet.",
                START_AGAIN,
            )),
        }
    }
}
