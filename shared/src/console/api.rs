//! The API, called in process: a console action becomes the API's own request (method, path,
//! JSON body), is checked against the signed-in key with the API's route policy
//! (`crate::http::scopes`), and is answered by the API's router (`export::route_authorized`,
//! `Linking::route_authorized`). The console therefore applies exactly the API's rules and shows
//! exactly its messages.

use crate::export::ExportCtx;
use crate::http::auth::Caller;
use crate::http::scopes::{self, Access};
use crate::http::{HttpRequest, HttpResponse};
use crate::linking::Linking;
use crate::runtime::Invocation;
use serde_json::Value;

/// The use cases the console calls.
#[derive(Clone)]
pub struct Api {
    pub export: ExportCtx,
    pub linking: Linking,
}

/// An API answer: its status and JSON body.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

/// An API error: `{"error":{"code","message","field"?}}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub field: Option<String>,
}

impl Answer {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The error of a non-2xx answer.
    pub fn error(&self) -> Option<ApiError> {
        if self.ok() {
            return None;
        }
        let e = &self.body["error"];
        Some(ApiError {
            status: self.status,
            code: e["code"].as_str().unwrap_or("error").to_string(),
            message: e["message"]
                .as_str()
                .unwrap_or("adsync could not do this; try again")
                .to_string(),
            field: e["field"].as_str().map(str::to_string),
        })
    }
}

impl From<HttpResponse> for Answer {
    fn from(r: HttpResponse) -> Self {
        Answer {
            status: r.status,
            body: r.json_body(),
        }
    }
}

/// Which router serves an API path: linking owns `/connections` and `/accounts[/{id}]`.
fn is_linking(segs: &[&str]) -> bool {
    matches!(segs, ["connections"] | ["accounts"] | ["accounts", _])
}

impl Api {
    /// Calls `method path?query` with `body` as the signed-in `caller`.
    pub async fn call(
        &self,
        caller: &Caller,
        method: &str,
        path_and_query: &str,
        body: Option<&Value>,
        inv: &Invocation,
    ) -> Answer {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let mut req = HttpRequest::new(method, path).with_query(query);
        if let Some(b) = body {
            req = req
                .with_header("content-type", "application/json")
                .with_body(serde_json::to_vec(b).unwrap_or_default());
        }
        let segs = scopes::route_segments(path);
        if let (Access::Key(scope, rule), account) = scopes::access_for(method, &segs)
            && let Err(denied) = scopes::check(caller, scope, rule, account)
        {
            return denied.into();
        }
        let resp = if is_linking(&segs) {
            self.linking.route_authorized(&req, Some(caller)).await
        } else {
            crate::export::route_authorized(&self.export, &req, inv).await
        };
        resp.into()
    }

    /// A GET.
    pub async fn get(&self, caller: &Caller, path: &str, inv: &Invocation) -> Answer {
        self.call(caller, "GET", path, None, inv).await
    }
}

/// Percent-encodes one path segment (ids typed into forms).
pub fn seg(s: &str) -> String {
    // `:` is allowed in segment ids and safe in a path; the routers do not percent-decode.
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
        .replace("%3A", ":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_ids_keep_their_colons_in_paths() {
        assert_eq!(seg("aam:seg.1"), "aam:seg.1");
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn linking_owns_connections_and_accounts_only() {
        assert!(is_linking(&["connections"]));
        assert!(is_linking(&["accounts"]) && is_linking(&["accounts", "1"]));
        assert!(!is_linking(&["accounts", "1", "identities"]));
        assert!(!is_linking(&["segments"]));
    }

    #[test]
    fn errors_keep_the_apis_words() {
        let a: Answer =
            HttpResponse::field_error(400, "invalid_field", "name", "name is required").into();
        let e = a.error().unwrap();
        assert_eq!(
            (e.code.as_str(), e.field.as_deref()),
            ("invalid_field", Some("name"))
        );
        assert_eq!(e.message, "name is required");
        assert!(
            Answer::from(HttpResponse::json(200, &serde_json::json!({})))
                .error()
                .is_none()
        );
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
    }
}
