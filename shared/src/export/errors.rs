//! The error answers of the segment-export routes: one constructor per shared answer.

use crate::amazon::AmazonError;
use crate::http::HttpResponse;
use crate::store::StoreError;

pub fn invalid(field: &str, message: impl Into<String>) -> HttpResponse {
    HttpResponse::field_error(400, "invalid_request", field, message)
}

pub fn store_failure(e: StoreError) -> HttpResponse {
    tracing::error!(error = %e, "destination store failure");
    HttpResponse::error(
        503,
        "store_unavailable",
        "adsync could not read or write its tables; try again",
    )
}

pub fn destination_not_found(id: &str) -> HttpResponse {
    HttpResponse::error(
        404,
        "destination_not_found",
        format!("destination {id} does not exist"),
    )
}

pub fn segment_not_found(id: &str, field: Option<&str>) -> HttpResponse {
    let msg = format!("segment {id} does not exist; register it first with PUT /segments/{id}");
    match field {
        Some(f) => HttpResponse::field_error(404, "segment_not_found", f, msg),
        None => HttpResponse::error(404, "segment_not_found", msg),
    }
}

pub fn mapping_not_found(destination_id: &str, segment_id: &str) -> HttpResponse {
    HttpResponse::error(
        404,
        "mapping_not_found",
        format!("segment {segment_id} is not mapped to destination {destination_id}"),
    )
}

/// The answer for an Amazon failure on a user-triggered call, worded by `user_message()`.
pub fn amazon_failure(e: &AmazonError) -> HttpResponse {
    let (status, code) = match e {
        AmazonError::ReauthorizationRequired => (409, "reauthorization_required"),
        AmazonError::AccountNotFound { .. } => (404, "account_not_found"),
        AmazonError::Rejected { .. } | AmazonError::PayloadTooLarge { .. } => {
            (400, "amazon_rejected")
        }
        _ => (502, "amazon_unavailable"),
    };
    HttpResponse::error(status, code, e.user_message())
}

/// A fee update that found no metadata slot within its request budget.
pub fn metadata_busy() -> HttpResponse {
    HttpResponse::error(
        503,
        "metadata_busy",
        "Amazon allows one audience metadata call per second for this LwA client, and every slot \
         until this request's time budget runs out is taken (audience creations, other fee \
         updates). Nothing was changed; send the request again in a few seconds.",
    )
    .with_header("retry-after", "5")
}
