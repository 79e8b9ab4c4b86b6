//! `GET /accounts` and `DELETE /accounts/{id}`.

use super::*;

impl Linking {
    /// The accounts the caller's key may use (all for a key without an `accounts` restriction).
    pub(super) async fn get_accounts(&self, caller: Option<&Caller>) -> HttpResponse {
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

    pub(super) async fn delete_account(&self, account_id: &str) -> HttpResponse {
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
            Ok(None) => crate::store::accounts::require_active(account_id, None)
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
