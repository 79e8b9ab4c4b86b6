//! The error answers of the segment-export routes, as [`ApiError`]s (the status follows from
//! their [`Kind`]): one constructor per answer that more than one route gives, or whose wording
//! is worth finding in one place.

use crate::amazon::AmazonError;
use crate::http::{ApiError, Kind};
use crate::store::StoreError;
use crate::store::accounts::IntegratedAccount;

/// 400 `invalid_request` naming the field at fault.
pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(field, message)
}

/// 400 `invalid_json`: the body is JSON but not an object.
pub fn not_an_object() -> ApiError {
    ApiError::new(
        Kind::BadRequest,
        "invalid_json",
        "the body must be a JSON object",
    )
}

/// 503 `store_unavailable` (the store error is logged, never answered).
pub fn store_failure(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "destination store failure");
    ApiError::unavailable(
        "store_unavailable",
        "adsync could not read or write its tables; try again",
    )
}

pub fn destination_not_found(id: &str) -> ApiError {
    ApiError::not_found(
        "destination_not_found",
        format!("destination {id} does not exist"),
    )
}

/// 404 `segment_not_found`, naming `field` when the segment was given in the body.
pub fn segment_not_found(id: &str, field: Option<&str>) -> ApiError {
    let e = ApiError::not_found(
        "segment_not_found",
        format!("segment {id} does not exist; register it first with PUT /segments/{id}"),
    );
    match field {
        Some(f) => e.at(f),
        None => e,
    }
}

pub fn mapping_not_found(destination_id: &str, segment_id: &str) -> ApiError {
    ApiError::not_found(
        "mapping_not_found",
        format!("segment {segment_id} is not mapped to destination {destination_id}"),
    )
}

/// 409 `destination_deleting`: a change to a destination whose purges run.
pub fn destination_deleting(id: &str) -> ApiError {
    ApiError::conflict(
        "destination_deleting",
        format!("destination {id} is being deleted; GET /destinations/{id} shows the progress"),
    )
}

/// The answer for an Amazon failure on a user-triggered call, worded by `user_message()`.
pub fn amazon_failure(e: &AmazonError) -> ApiError {
    let (kind, code) = match e {
        AmazonError::ReauthorizationRequired => (Kind::Conflict, "reauthorization_required"),
        AmazonError::AccountNotFound { .. } => (Kind::NotFound, "account_not_found"),
        AmazonError::Rejected { .. } | AmazonError::PayloadTooLarge { .. } => {
            (Kind::BadRequest, "amazon_rejected")
        }
        _ => (Kind::BadGateway, "amazon_unavailable"),
    };
    ApiError::new(kind, code, e.user_message())
}

/// 503 for a fee update that found no metadata slot within its request budget.
pub fn metadata_busy() -> ApiError {
    ApiError::unavailable(
        "metadata_busy",
        "Amazon allows one audience metadata call per second for this LwA client, and every slot \
         until this request's time budget runs out is taken (audience creations, other fee \
         updates). Nothing was changed; send the request again in a few seconds.",
    )
    .with_header("retry-after", "5")
}

/// 503 for an adoption that found no metadata slot within its share of the request.
pub fn amazon_busy() -> ApiError {
    ApiError::unavailable(
        "amazon_busy",
        "Amazon's metadata pace (one call per second) is taken by other work; try again",
    )
}

/// 404 for an audience to adopt that does not exist or that this LwA client cannot read.
pub fn audience_not_found(field: &str, id: i64) -> ApiError {
    ApiError::not_found(
        "audience_not_found",
        format!(
            "audience {id} does not exist or this adsync installation (its Amazon client) \
             cannot read it"
        ),
    )
    .at(field)
}

/// 409 for an audience to adopt that belongs to another advertiser.
pub fn other_advertiser(field: &str, id: i64, account: &IntegratedAccount) -> ApiError {
    ApiError::conflict(
        "audience_of_another_advertiser",
        format!(
            "audience {id} does not belong to advertiser {} of this destination",
            account.advertiser_id
        ),
    )
    .at(field)
}

/// The account if it can be used, else 409 `reauthorization_required` or 404
/// `account_not_found` (`crate::http::accounts`).
pub use crate::http::accounts::require_active as active_account;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::HttpResponse;

    #[test]
    fn metadata_busy_says_when_to_come_back() {
        let r: HttpResponse = metadata_busy().into();
        assert_eq!((r.status, r.headers["retry-after"].as_str()), (503, "5"));
    }
}
