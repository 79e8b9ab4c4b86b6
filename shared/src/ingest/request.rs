//! `POST /accounts/{accountId}/conversions`: the request checked and parsed into prepared events.

use super::*;

impl IngestCtx {
    /// `POST /accounts/{accountId}/conversions` after authentication.
    pub async fn handle_conversions(
        &self,
        req: &HttpRequest,
        inv: &Invocation,
        account_id: &str,
    ) -> HttpResponse {
        match req.content_type().as_deref() {
            Some("application/json") => {}
            Some(t) if t.ends_with("+json") => {}
            other => {
                return HttpResponse::error(
                    415,
                    "unsupported_media_type",
                    format!(
                        "Content-Type must be application/json (got {})",
                        other.unwrap_or("none")
                    ),
                );
            }
        }
        if req.body.len() > self.settings.max_body_bytes {
            return HttpResponse::error(
                413,
                "payload_too_large",
                format!(
                    "the body is {} bytes; the limit is {} (send at most {} events per request)",
                    req.body.len(),
                    self.settings.max_body_bytes,
                    conversion::MAX_EVENTS
                ),
            );
        }
        if req.body.is_empty() {
            return HttpResponse::error(
                400,
                "invalid_json",
                "the body is empty: send one event or {\"events\":[…]}",
            );
        }
        let found = if account_id.bytes().all(|b| b.is_ascii_digit()) && !account_id.is_empty() {
            match self.accounts.get_account(account_id).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(error = %e, "account lookup failed");
                    return HttpResponse::error(
                        503,
                        "unavailable",
                        "the account store is unavailable; try again",
                    );
                }
            }
        } else {
            None
        };
        let account = match require_active(account_id, found) {
            Ok(a) => a,
            Err(resp) => return resp,
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
}
