//! `GET /accounts` and `DELETE /accounts/{id}`.

use super::Linking;
use crate::http::auth::Caller;
use crate::http::error::{ApiError, ApiResult, respond};
use crate::http::{HttpResponse, Kind};
use crate::store::accounts::{AccountStatus, IntegratedAccount};

impl Linking {
    /// The accounts the caller's key may use (all for a key without an `accounts` restriction).
    pub(super) async fn get_accounts(&self, caller: Option<&Caller>) -> HttpResponse {
        respond(self.list_accounts(caller).await)
    }

    async fn list_accounts(&self, caller: Option<&Caller>) -> ApiResult<HttpResponse> {
        let list = self.accounts.list_accounts().await.map_err(|e| {
            tracing::error!(error = %e, "cannot list accounts");
            ApiError::unavailable(
                "store_unavailable",
                "adsync could not read the accounts; try again",
            )
        })?;
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
                    v["parked"] =
                        serde_json::json!(p.get(&a.account_id).copied().unwrap_or_default());
                }
                v
            })
            .collect();
        Ok(HttpResponse::json(
            200,
            &serde_json::json!({ "accounts": accounts }),
        ))
    }

    pub(super) async fn delete_account(&self, account_id: &str) -> HttpResponse {
        respond(self.unlink(account_id).await)
    }

    async fn unlink(&self, account_id: &str) -> ApiResult<HttpResponse> {
        if account_id.is_empty()
            || account_id.len() > 20
            || !account_id.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(ApiError::new(
                Kind::BadRequest,
                "invalid_field",
                "the account id is the advertiser id, a decimal number",
            )
            .at("accountId"));
        }
        let removed = self
            .accounts
            .remove_account(account_id)
            .await
            .map_err(|e| {
                tracing::error!(account_id, error = %e, "cannot unlink account");
                ApiError::unavailable(
                    "store_unavailable",
                    "adsync could not unlink the account; try again",
                )
            })?;
        let Some(before) = removed else {
            return Ok(not_linked(account_id));
        };
        let deleted = self.release_login(&before.login()).await;
        tracing::info!(
            account_id,
            token_secret_deleted = deleted,
            "account unlinked"
        );
        Ok(HttpResponse::json(
            200,
            &serde_json::json!({
                "accountId": account_id,
                "status": AccountStatus::Removed.as_str(),
                "tokenSecretDeleted": deleted,
            }),
        ))
    }
}

/// The accounts store's own answer for an account that is not linked (404 `account_not_found`).
fn not_linked(account_id: &str) -> HttpResponse {
    let unknown = crate::store::accounts::AccountUnavailable::NotFound {
        account_id: account_id.to_string(),
    };
    crate::http::ApiError::from(unknown).into()
}

pub(super) fn account_json(a: &IntegratedAccount) -> serde_json::Value {
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
