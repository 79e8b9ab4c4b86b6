//! The answers to a request naming an account it cannot use. The accounts store says why
//! ([`AccountUnavailable`]); the status, code and wording are chosen here.

use super::{ApiError, ApiResult};
use crate::store::accounts::{AccountUnavailable, IntegratedAccount, active_account};

impl From<AccountUnavailable> for ApiError {
    /// Unknown or removed → 404 `account_not_found`; reauthorization required → 409
    /// `reauthorization_required`. Messages use the contract's wording and say what to do.
    fn from(e: AccountUnavailable) -> Self {
        match e {
            AccountUnavailable::ReauthorizationRequired { account_id } => ApiError::conflict(
                "reauthorization_required",
                format!(
                    "Amazon Error: Account {account_id} needs reauthorization: the Amazon login linked to it \
                     was revoked or expired. Link the account again (POST /connections, then confirm \
                     advertiser {account_id}); nothing is sent for it until then."
                ),
            ),
            AccountUnavailable::NotFound { account_id } => ApiError::not_found(
                "account_not_found",
                format!(
                    "Amazon Error: Account {account_id} was not found. Link it first (POST /connections) \
                     or use the id of a linked account (GET /accounts)."
                ),
            ),
        }
    }
}

/// Turns a looked-up account into the account a request may use.
///
/// Unknown or removed → 404 `account_not_found`; reauthorization required → 409
/// `reauthorization_required`. Messages use the contract's wording and say what to do.
pub fn require_active(
    account_id: &str,
    found: Option<IntegratedAccount>,
) -> ApiResult<IntegratedAccount> {
    active_account(account_id, found).map_err(ApiError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::HttpResponse;

    /// The answer of a refused account.
    fn refused(r: ApiResult<IntegratedAccount>) -> HttpResponse {
        r.unwrap_err().into()
    }
    use crate::amazon::Region;
    use crate::store::accounts::AccountStatus;

    fn account(status: AccountStatus) -> IntegratedAccount {
        IntegratedAccount {
            account_id: "123".into(),
            region: Region::EU,
            profile_id: 7,
            advertiser_id: 123,
            name: "Acme".into(),
            currency: "GBP".into(),
            country: "UK".into(),
            connection_id: "c1".into(),
            token_secret: "adsync/tokens/c1".into(),
            status,
            created_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn require_active_maps_status_to_the_documented_errors() {
        assert!(require_active("123", Some(account(AccountStatus::Active))).is_ok());
        let r = refused(require_active("123", None));
        assert_eq!(r.status, 404);
        assert_eq!(r.json_body()["error"]["code"], "account_not_found");
        assert!(
            r.json_body()["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("Amazon Error: Account 123 was not found")
        );
        let r = refused(require_active("123", Some(account(AccountStatus::Removed))));
        assert_eq!(r.status, 404);
        let r = refused(require_active(
            "123",
            Some(account(AccountStatus::ReauthorizationRequired)),
        ));
        assert_eq!(r.status, 409);
        assert_eq!(r.json_body()["error"]["code"], "reauthorization_required");
    }

    #[test]
    fn the_answers_are_the_documented_ones_word_for_word() {
        let r = refused(require_active("123", None));
        assert_eq!(
            r.json_body(),
            serde_json::json!({"error": {"code": "account_not_found", "message":
                "Amazon Error: Account 123 was not found. Link it first (POST /connections) or use \
                 the id of a linked account (GET /accounts)."}})
        );
        let r = refused(require_active(
            "9",
            Some(account(AccountStatus::ReauthorizationRequired)),
        ));
        assert_eq!(
            r.json_body(),
            serde_json::json!({"error": {"code": "reauthorization_required", "message":
                "Amazon Error: Account 9 needs reauthorization: the Amazon login linked to it was \
                 revoked or expired. Link the account again (POST /connections, then confirm \
                 advertiser 9); nothing is sent for it until then."}})
        );
    }
}
