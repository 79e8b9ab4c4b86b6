//! `GET /oauth/callback?code&state`: the consent's return, the code exchange and the failure of a connection.

use super::binding::Binding;
use super::failure::{
    Failure, START_AGAIN, consume_failure, exchange_failure, kind_of, provider_error,
    random_failure, sanitize_error_code, store_failure,
};
use super::{Linking, PICK_TTL, binding, now_secs, random_token};
use crate::amazon::{LoginRef, Region};
use crate::http::{HttpRequest, HttpResponse, Kind, html};
use crate::store::accounts::{ConnectionStatus, ConsumeError, ListedAdvertiser};

impl Linking {
    pub(super) async fn get_callback(&self, req: &HttpRequest) -> HttpResponse {
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
                Kind::BadRequest,
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
                Kind::BadRequest,
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
    pub(super) async fn provider_declined(&self, error: &str, state: Option<&str>) -> HttpResponse {
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
    pub(super) async fn complete_consent(
        &self,
        cid: &str,
        region: Region,
        code: &str,
        bound: &Binding,
    ) -> Result<(String, String), Failure> {
        self.require_pending(cid, region).await?;
        let login = self.exchange_code(cid, region, code, bound).await?;
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
                Kind::Unprocessable,
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
        self.record_consent(cid, &login, &advertisers).await
    }

    /// The connection must still wait for this consent (pending, in the state's region).
    async fn require_pending(&self, cid: &str, region: Region) -> Result<(), Failure> {
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
        Ok(())
    }

    /// Exchanges the code (with the bound redirect URI and verifier) and stores the login's token.
    async fn exchange_code(
        &self,
        cid: &str,
        region: Region,
        code: &str,
        bound: &Binding,
    ) -> Result<LoginRef, Failure> {
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
        Ok(login)
    }

    /// Records the advertiser list on the connection, a view of it and the browser's binding;
    /// returns the view id and the cookie's value.
    async fn record_consent(
        &self,
        cid: &str,
        login: &LoginRef,
        advertisers: &[ListedAdvertiser],
    ) -> Result<(String, String), Failure> {
        let expires = now_secs() + PICK_TTL.as_secs() as i64;
        if let Err(e) = self
            .accounts
            .mark_consented(cid, &login.secret_name, advertisers, expires)
            .await
        {
            tracing::warn!(connection_id = cid, error = %e, "cannot record consent");
            self.fail_connection(cid, Some(login), "consent_not_recorded")
                .await;
            return Err(match e {
                crate::store::StoreError::Conflict(_) => {
                    consume_failure("state", &ConsumeError::Expired)
                }
                _ => store_failure("record the advertiser list"),
            });
        }
        let (Ok(view), Ok(cookie)) = (random_token(), random_token()) else {
            self.fail_connection(cid, Some(login), "random_unavailable")
                .await;
            return Err(random_failure());
        };
        let recorded = match self.accounts.put_view(&view, cid, expires).await {
            Ok(()) => self.bindings.bind_browser(cid, &cookie, expires).await,
            Err(e) => Err(e),
        };
        if let Err(e) = recorded {
            tracing::error!(connection_id = cid, error = %e, "cannot store the view");
            self.fail_connection(cid, Some(login), "view_not_stored")
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

    /// Leaves nothing half-made: deletes the token secret (when one was written) and marks the
    /// connection failed. Best effort: failures are logged, the user still gets the error page.
    pub(super) async fn fail_connection(&self, cid: &str, login: Option<&LoginRef>, reason: &str) {
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
}
