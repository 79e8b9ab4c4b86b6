//! `POST /accounts/{accountId}/conversions`: the request checked and parsed into prepared events.

use super::IngestCtx;
use crate::domain::conversion;
use crate::domain::conversion::{Arena, Processor};
use crate::http::{ApiError, ApiResult, Kind};
use crate::http::{HttpRequest, HttpResponse};
use crate::runtime::{Invocation, now_ms};
use crate::store::accounts::IntegratedAccount;

impl IngestCtx {
    /// `POST /accounts/{accountId}/conversions` after authentication.
    pub async fn handle_conversions(
        &self,
        req: &HttpRequest,
        inv: &Invocation,
        account_id: &str,
    ) -> HttpResponse {
        let account = match self.active_account(req, account_id).await {
            Ok(a) => a,
            Err(r) => return r,
        };
        let mut arena = Arena::for_body(req.body.len());
        let mut processor = Processor::new(now_ms() as i64).with_generated_ids();
        let outcomes = match conversion::prepare_body(&req.body, &mut processor, &mut arena) {
            Ok(r) => r,
            Err(e) => return HttpResponse::error(e.status, e.code, e.message),
        };
        let report = self.ingest(&account, &arena, outcomes, inv).await;
        // The console's per-hour counts: one write per request (store::conversion_counts).
        crate::store::conversion_counts::ConversionCounts::new(&self.accounts)
            .record_logged(
                &account.account_id,
                &report.counts(),
                now_ms() as i64 / 1000,
            )
            .await;
        HttpResponse::json(report.status_code(), &report)
    }

    /// The body's envelope checked, then the account it is for, which must be active (the
    /// `crate::http::accounts::require_active`: 404/409 in the contract's words).
    async fn active_account(
        &self,
        req: &HttpRequest,
        account_id: &str,
    ) -> Result<IntegratedAccount, HttpResponse> {
        self.check_envelope(req)?;
        let found = self.find_account(account_id).await?;
        crate::http::accounts::require_active(account_id, found).map_err(ApiError::into_response)
    }

    /// Content type, size and emptiness of the body.
    fn check_envelope(&self, req: &HttpRequest) -> ApiResult<()> {
        crate::http::require_json(req)?;
        if req.body.len() > self.settings.max_body_bytes {
            return Err(ApiError::new(
                Kind::PayloadTooLarge,
                "payload_too_large",
                format!(
                    "the body is {} bytes; the limit is {} (send at most {} events per request)",
                    req.body.len(),
                    self.settings.max_body_bytes,
                    conversion::MAX_EVENTS
                ),
            ));
        }
        if req.body.is_empty() {
            return Err(ApiError::new(
                Kind::BadRequest,
                "invalid_json",
                "the body is empty: send one event or {\"events\":[…]}",
            ));
        }
        Ok(())
    }

    /// The account of a numeric id (`None` for any other id: not found).
    async fn find_account(&self, account_id: &str) -> ApiResult<Option<IntegratedAccount>> {
        if account_id.is_empty() || !account_id.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(None);
        }
        self.accounts.get_account(account_id).await.map_err(|e| {
            tracing::error!(error = %e, "account lookup failed");
            ApiError::unavailable("unavailable", "the account store is unavailable; try again")
        })
    }
}
