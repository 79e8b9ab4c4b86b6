//! Ads API authentication (Bearer token + ClientId header, Scope header) shared by every Ads API
//! route, and the account listing routes `GET /v2/profiles` and `GET /dsp/advertisers`.

use std::collections::HashMap;

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use crate::http::{RequestId, ads_error, header_str, json_response};
use crate::state::{Inner, Sandbox};

/// Who is calling: the token's LwA client and user.
#[derive(Clone, Debug)]
pub struct Caller {
    pub client_id: String,
    pub user_id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// /v2 and /dsp: `Amazon-Advertising-API-ClientId`.
    Classic,
    /// /adsApi (Events API): `Amazon-Ads-ClientId`.
    Events,
}

pub fn unauthorized(api: Api, rid: &RequestId) -> Response {
    match api {
        Api::Classic => ads_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "Authentication failed",
            rid,
        ),
        Api::Events => json_response(
            StatusCode::UNAUTHORIZED,
            json!({"code": "UNAUTHORIZED", "message": "Authentication failed",
                   "details": "Authentication failed", "requestId": rid.0}),
        ),
    }
}

/// Checks the Bearer token (known, unexpired, not expired by admin) and that the ClientId header
/// names the token's client.
pub fn authenticate(
    g: &Inner,
    headers: &HeaderMap,
    api: Api,
    rid: &RequestId,
) -> Result<Caller, Response> {
    let token = header_str(headers, "authorization")
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(t) = token.and_then(|t| g.access_tokens.get(t)) else {
        return Err(unauthorized(api, rid));
    };
    let epoch_ok = g
        .users
        .get(&t.user_id)
        .is_some_and(|u| u.token_epoch == t.epoch);
    if !epoch_ok || g.now() >= t.expires {
        return Err(unauthorized(api, rid));
    }
    let client_header = match api {
        Api::Classic => header_str(headers, "amazon-advertising-api-clientid"),
        Api::Events => header_str(headers, "amazon-ads-clientid"),
    };
    if client_header != Some(t.client_id.as_str()) {
        return Err(unauthorized(api, rid));
    }
    Ok(Caller {
        client_id: t.client_id.clone(),
        user_id: t.user_id.clone(),
    })
}

/// The `Amazon-Advertising-API-Scope` profile: present, and an agency profile of the caller.
pub fn scope_profile(
    g: &Inner,
    headers: &HeaderMap,
    caller: &Caller,
    rid: &RequestId,
) -> Result<i64, Response> {
    let Some(raw) = header_str(headers, "amazon-advertising-api-scope") else {
        return Err(ads_error(
            StatusCode::BAD_REQUEST,
            "400",
            "Scope header is missing",
            rid,
        ));
    };
    let ok = raw
        .trim()
        .parse::<i64>()
        .ok()
        .and_then(|pid| g.user_profile(&caller.user_id, pid))
        .filter(|p| p.account_type == "agency");
    match ok {
        Some(p) => Ok(p.profile_id),
        None => Err(ads_error(
            StatusCode::UNAUTHORIZED,
            "401",
            "Not authorized to access scope",
            rid,
        )),
    }
}

/// `GET /v2/profiles`: every profile of the token's user (all regions: the sandbox serves every
/// region on one host).
pub async fn profiles(
    State(sb): State<Sandbox>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
) -> Response {
    let g = sb.lock();
    let caller = match authenticate(&g, &headers, Api::Classic, &rid) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(user) = g.users.get(&caller.user_id) else {
        return json_response(StatusCode::OK, json!([]));
    };
    let list: Vec<Value> = user
        .profile_ids
        .iter()
        .filter_map(|pid| g.profiles.get(pid))
        .map(|p| {
            json!({
                "profileId": p.profile_id,
                "countryCode": p.country_code,
                "currencyCode": p.currency_code,
                "dailyBudget": 999_999_999.0,
                "timezone": p.timezone,
                "accountInfo": {
                    "marketplaceStringId": p.marketplace_string_id,
                    "id": p.account_id,
                    "type": p.account_type,
                    "name": p.name,
                }
            })
        })
        .collect();
    json_response(StatusCode::OK, Value::Array(list))
}

fn dsp_bad_param(field: &str, message: &str, rid: &RequestId) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({"message": "Bad Request", "requestId": rid.0,
               "errors": [{"errorType": "DSP_INVALID_QUERY_PARAM", "field": field, "message": message}]}),
    )
}

/// `GET /dsp/advertisers?startIndex=&count=`
pub async fn advertisers(
    State(sb): State<Sandbox>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let g = sb.lock();
    let caller = match authenticate(&g, &headers, Api::Classic, &rid) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let pid = match scope_profile(&g, &headers, &caller, &rid) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let start = match q.get("startIndex").map(|s| s.parse::<usize>()) {
        None => 0,
        Some(Ok(n)) if n <= 29_900 => n,
        Some(_) => {
            return dsp_bad_param(
                "startIndex",
                "startIndex must be an integer in 0..=29900",
                &rid,
            );
        }
    };
    let count = match q.get("count").map(|s| s.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        Some(_) => return dsp_bad_param("count", "count must be an integer in 1..=100", &rid),
    };
    let ids = g
        .profiles
        .get(&pid)
        .map(|p| p.advertiser_ids.clone())
        .unwrap_or_default();
    let page: Vec<Value> = ids
        .iter()
        .skip(start)
        .take(count)
        .filter_map(|id| g.advertisers.get(id))
        .map(|a| {
            json!({
                "advertiserId": a.advertiser_id.to_string(),
                "name": a.name,
                "currency": a.currency,
                "country": a.country,
                "timezone": a.timezone,
                "url": a.url,
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({"totalResults": ids.len(), "response": page}),
    )
}
