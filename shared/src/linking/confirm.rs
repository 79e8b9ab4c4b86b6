//! `POST /oauth/confirm`: the chosen advertiser becomes an integrated account.

use super::Linking;
use super::failure::{Failure, START_AGAIN, consume_failure, kind_of, store_failure};
use crate::amazon::LoginRef;
use crate::http::html::{STYLE, SuccessPage};
use crate::http::{HttpRequest, HttpResponse, Kind, html};
use crate::store::accounts::{AccountStatus, CsrfOutcome, IntegratedAccount};

impl Linking {
    pub(super) async fn post_confirm(&self, req: &HttpRequest) -> HttpResponse {
        let (csrf, advertiser_id) = match read_form(req) {
            Ok(f) => f,
            Err(f) => return f.page(None),
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
                    Kind::Conflict,
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
    pub(super) async fn unlinked_since(&self, cid: &str, advertiser_id: i64) -> Option<Failure> {
        match self.accounts.get_account(&advertiser_id.to_string()).await {
            Ok(Some(a)) if a.status == AccountStatus::Removed && a.connection_id == cid => {
                Some(Failure::new(
                    Kind::Gone,
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
    pub(super) async fn confirm(
        &self,
        cid: &str,
        advertiser_id: i64,
    ) -> Result<IntegratedAccount, Failure> {
        let conn = self.usable_connection(cid).await?;
        let Some(listed) = conn
            .advertisers
            .iter()
            .find(|a| a.advertiser_id == advertiser_id)
        else {
            return Err(Failure::new(
                Kind::BadRequest,
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
    pub(super) async fn release_login(&self, login: &LoginRef) -> bool {
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
}

/// The confirmation form: its CSRF token and the advertiser id (first value of each field).
fn read_form(req: &HttpRequest) -> Result<(String, i64), Failure> {
    if req.content_type().as_deref() != Some("application/x-www-form-urlencoded") {
        return Err(Failure::new(
            Kind::UnsupportedMediaType,
            "Unsupported form",
            "The confirmation must be posted as a form (application/x-www-form-urlencoded).",
            "Press Confirm on the account list page.",
        ));
    }
    if req.body.len() > 4096 {
        return Err(Failure::new(
            Kind::PayloadTooLarge,
            "Form too large",
            "The confirmation form is too large.",
            "Press Confirm on the account list page.",
        ));
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
            Kind::BadRequest,
            "The confirmation is incomplete",
            format!("The form field {field} is missing."),
            "Press Confirm on the account list page.",
        )
    };
    let Some(csrf) = csrf.filter(|c| !c.is_empty()) else {
        return Err(missing("csrf"));
    };
    let Some(advertiser) = advertiser.filter(|a| !a.is_empty()) else {
        return Err(missing("advertiserId"));
    };
    let Some(advertiser_id) = advertiser.trim().parse::<i64>().ok().filter(|a| *a > 0) else {
        return Err(Failure::new(
            Kind::BadRequest,
            "The confirmation is not valid",
            "The form field advertiserId is not an advertiser id (a positive whole number).",
            "Press Confirm on the account list page.",
        ));
    };
    Ok((csrf, advertiser_id))
}
