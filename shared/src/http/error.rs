//! [`ApiError`]: the one error type of every route, and the one place its HTTP status is chosen.
//!
//! A handler returns `Result<_, ApiError>`; the error becomes the JSON error shape
//! `{"error":{"code","message","field"?}}` (`super::ErrorBody`) with the status of its [`Kind`].

use super::{ErrorBody, HttpResponse};
use std::collections::BTreeMap;

/// What kind of failure: this alone decides the HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 400: the request is malformed or a field is invalid.
    BadRequest,
    /// 401: no or unknown credentials.
    Unauthorized,
    /// 403: credentials without the right.
    Forbidden,
    /// 404: no such thing.
    NotFound,
    /// 405: the path exists with other methods.
    MethodNotAllowed,
    /// 409: the current state forbids it.
    Conflict,
    /// 410: it existed and is gone (expired).
    Gone,
    /// 413: the body is too large.
    PayloadTooLarge,
    /// 415: the body is not JSON.
    UnsupportedMediaType,
    /// 422: well-formed but not acceptable.
    Unprocessable,
    /// 429: slow down.
    TooManyRequests,
    /// 500: adsync's own fault.
    Internal,
    /// 502: Amazon answered with a failure.
    BadGateway,
    /// 503: a dependency is unavailable or the budget ran out; try again.
    Unavailable,
    /// 504: Amazon did not answer in time.
    GatewayTimeout,
}

impl Kind {
    /// The HTTP status of this kind.
    pub const fn status(self) -> u16 {
        match self {
            Kind::BadRequest => 400,
            Kind::Unauthorized => 401,
            Kind::Forbidden => 403,
            Kind::NotFound => 404,
            Kind::MethodNotAllowed => 405,
            Kind::Conflict => 409,
            Kind::Gone => 410,
            Kind::PayloadTooLarge => 413,
            Kind::UnsupportedMediaType => 415,
            Kind::Unprocessable => 422,
            Kind::TooManyRequests => 429,
            Kind::Internal => 500,
            Kind::BadGateway => 502,
            Kind::Unavailable => 503,
            Kind::GatewayTimeout => 504,
        }
    }
}

/// A failed request: kind, machine-readable code, message, and the field at fault if any.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub kind: Kind,
    pub code: String,
    pub message: String,
    pub field: Option<String>,
    /// Extra headers (`allow`, `retry-after`, …).
    pub headers: BTreeMap<String, String>,
}

/// A route's result.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(kind: Kind, code: &str, message: impl Into<String>) -> Self {
        Self {
            kind,
            code: code.to_string(),
            message: message.into(),
            field: None,
            headers: BTreeMap::new(),
        }
    }

    /// The same error naming the field at fault (`destinations[0].segmentId`, …).
    pub fn at(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .insert(name.to_ascii_lowercase(), value.to_string());
        self
    }

    /// 400 `invalid_request` naming the field at fault.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Kind::BadRequest, "invalid_request", message).at(field)
    }

    pub fn not_found(code: &str, message: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, code, message)
    }

    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::new(Kind::Conflict, code, message)
    }

    pub fn unavailable(code: &str, message: impl Into<String>) -> Self {
        Self::new(Kind::Unavailable, code, message)
    }

    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// The JSON answer.
    pub fn into_response(self) -> HttpResponse {
        let mut r = HttpResponse::json(
            self.status(),
            &ErrorBody::new(&self.code, self.message, self.field),
        );
        r.headers.extend(self.headers);
        r
    }
}

impl From<ApiError> for HttpResponse {
    fn from(e: ApiError) -> Self {
        e.into_response()
    }
}

/// The answer of a route: its success response or its error's.
pub fn respond(r: ApiResult<HttpResponse>) -> HttpResponse {
    r.unwrap_or_else(ApiError::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_decides_the_status_and_the_body_keeps_its_shape() {
        let r: HttpResponse = ApiError::invalid("destinations[0].segmentId", "must be a string")
            .with_header("X-Why", "test")
            .into();
        assert_eq!(r.status, 400);
        assert_eq!(r.headers["x-why"], "test");
        assert_eq!(
            r.json_body(),
            serde_json::json!({"error": {"code": "invalid_request",
                "message": "must be a string", "field": "destinations[0].segmentId"}})
        );
        let r = respond(Err(ApiError::conflict("segment_mapped", "mapped")));
        assert_eq!((r.status, r.json_body()["error"].get("field")), (409, None));
        assert_eq!(Kind::GatewayTimeout.status(), 504);
    }
}
