//! The admin API (docs/interfaces.md §4, docs/sandbox.md): registers clients and users, hands out
//! refresh tokens, revokes and expires tokens, manages faults and shows what the sandbox accepted.

use std::collections::{BTreeMap, HashMap};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::faults::{Fault, FaultSpec};
use crate::http::json_response;
use crate::state::{Advertiser, Client, Profile, RequestRecord, Sandbox, marketplace_for};

fn bad(message: impl Into<String>) -> Response {
    json_response(StatusCode::BAD_REQUEST, json!({"error": message.into()}))
}

fn not_found(message: impl Into<String>) -> Response {
    json_response(StatusCode::NOT_FOUND, json!({"error": message.into()}))
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid body: {e}")))
}

/// An id given as a JSON number or a string of digits.
#[derive(Deserialize)]
#[serde(untagged)]
enum Id {
    Num(i64),
    Str(String),
}

impl Id {
    fn get(&self, field: &str) -> Result<i64, Response> {
        match self {
            Id::Num(n) if *n > 0 => Ok(*n),
            Id::Str(s) => s
                .parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad(format!("{field} must be a positive integer"))),
            _ => Err(bad(format!("{field} must be a positive integer"))),
        }
    }
}

pub async fn health() -> Response {
    json_response(StatusCode::OK, json!({"ok": true}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClientIn {
    client_id: String,
    client_secret: String,
    #[serde(default)]
    redirect_uris: Vec<String>,
    /// Refresh-token rotation for this client (default off, as Login with Amazon).
    #[serde(default)]
    rotate_refresh_tokens: bool,
}

/// `POST /admin/clients` (create or replace).
pub async fn create_client(State(sb): State<Sandbox>, body: Bytes) -> Response {
    let c: ClientIn = match parse(&body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if c.client_id.is_empty() || c.client_secret.is_empty() {
        return bad("clientId and clientSecret must not be empty");
    }
    let id = c.client_id.clone();
    sb.lock().clients.insert(
        c.client_id.clone(),
        Client {
            client_id: c.client_id,
            client_secret: c.client_secret,
            redirect_uris: c.redirect_uris,
            rotate_refresh_tokens: c.rotate_refresh_tokens,
        },
    );
    json_response(StatusCode::OK, json!({"clientId": id}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AdvertiserIn {
    advertiser_id: Id,
    name: Option<String>,
    currency: String,
    country: String,
    timezone: Option<String>,
    url: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProfileIn {
    profile_id: Id,
    country_code: String,
    currency_code: String,
    timezone: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    name: Option<String>,
    account_id: Option<String>,
    marketplace_string_id: Option<String>,
    #[serde(default)]
    advertisers: Vec<AdvertiserIn>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UserIn {
    user_id: String,
    #[serde(default)]
    profiles: Vec<ProfileIn>,
}

/// `POST /admin/users` (create, or replace the user's profiles).
pub async fn create_user(State(sb): State<Sandbox>, body: Bytes) -> Response {
    let u: UserIn = match parse(&body) {
        Ok(u) => u,
        Err(r) => return r,
    };
    if u.user_id.is_empty() {
        return bad("userId must not be empty");
    }
    let mut profiles = Vec::with_capacity(u.profiles.len());
    for (i, p) in u.profiles.into_iter().enumerate() {
        let profile_id = match p.profile_id.get(&format!("profiles[{i}].profileId")) {
            Ok(v) => v,
            Err(r) => return r,
        };
        let mut advertisers = Vec::with_capacity(p.advertisers.len());
        for (j, a) in p.advertisers.into_iter().enumerate() {
            let advertiser_id = match a
                .advertiser_id
                .get(&format!("profiles[{i}].advertisers[{j}].advertiserId"))
            {
                Ok(v) => v,
                Err(r) => return r,
            };
            let name = a
                .name
                .unwrap_or_else(|| format!("Sandbox advertiser {advertiser_id}"));
            advertisers.push(Advertiser {
                advertiser_id,
                url: a
                    .url
                    .unwrap_or_else(|| format!("www.advertiser-{advertiser_id}.example")),
                name,
                currency: a.currency,
                country: a.country,
                timezone: a
                    .timezone
                    .unwrap_or_else(|| "America/Los_Angeles".to_string()),
            });
        }
        profiles.push((
            Profile {
                profile_id,
                user_id: u.user_id.clone(),
                marketplace_string_id: p
                    .marketplace_string_id
                    .unwrap_or_else(|| marketplace_for(&p.country_code).to_string()),
                country_code: p.country_code,
                currency_code: p.currency_code,
                timezone: p
                    .timezone
                    .unwrap_or_else(|| "America/Los_Angeles".to_string()),
                account_type: p.kind.unwrap_or_else(|| "agency".to_string()),
                name: p
                    .name
                    .unwrap_or_else(|| format!("Sandbox profile {profile_id}")),
                account_id: p
                    .account_id
                    .unwrap_or_else(|| format!("ENTITYSANDBOX{profile_id}")),
                advertiser_ids: advertisers.iter().map(|a| a.advertiser_id).collect(),
            },
            advertisers,
        ));
    }
    match sb.lock().upsert_user(&u.user_id, profiles) {
        Ok(()) => json_response(StatusCode::OK, json!({"userId": u.user_id})),
        Err(e) => json_response(StatusCode::CONFLICT, json!({"error": e})),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RefreshIn {
    client_id: String,
}

/// `POST /admin/users/{userId}/refresh-token`
pub async fn refresh_token(
    State(sb): State<Sandbox>,
    Path(user_id): Path<String>,
    body: Bytes,
) -> Response {
    let r: RefreshIn = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mut g = sb.lock();
    if !g.users.contains_key(&user_id) {
        return not_found("unknown userId");
    }
    if !g.clients.contains_key(&r.client_id) {
        return not_found("unknown clientId");
    }
    let token = g.issue_refresh_token(&r.client_id, &user_id);
    json_response(StatusCode::OK, json!({"refresh_token": token}))
}

/// `POST /admin/users/{userId}/revoke`
pub async fn revoke(State(sb): State<Sandbox>, Path(user_id): Path<String>) -> Response {
    let mut g = sb.lock();
    if !g.users.contains_key(&user_id) {
        return not_found("unknown userId");
    }
    let mut n = 0;
    for t in g.refresh_tokens.values_mut() {
        if t.user_id == user_id && !t.revoked {
            t.revoked = true;
            n += 1;
        }
    }
    json_response(StatusCode::OK, json!({"revoked": n}))
}

/// `POST /admin/users/{userId}/expire-access-tokens`
pub async fn expire_access_tokens(
    State(sb): State<Sandbox>,
    Path(user_id): Path<String>,
) -> Response {
    let mut g = sb.lock();
    let Some(u) = g.users.get_mut(&user_id) else {
        return not_found("unknown userId");
    };
    u.token_epoch += 1;
    json_response(StatusCode::OK, json!({"ok": true}))
}

/// `POST /admin/faults`
pub async fn add_fault(State(sb): State<Sandbox>, body: Bytes) -> Response {
    let spec: FaultSpec = match parse(&body) {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Err(e) = spec.validate() {
        return bad(e);
    }
    let mut g = sb.lock();
    let id = format!("fault-{}", g.next_fault_id);
    g.next_fault_id += 1;
    g.faults.push(Fault {
        id: id.clone(),
        spec,
    });
    json_response(StatusCode::OK, json!({"id": id}))
}

/// `GET /admin/faults` (addition): the faults still active, with their remaining `times`.
pub async fn list_faults(State(sb): State<Sandbox>) -> Response {
    let g = sb.lock();
    json_response(StatusCode::OK, json!({"faults": g.faults}))
}

/// `DELETE /admin/faults/{id}`
pub async fn delete_fault(State(sb): State<Sandbox>, Path(id): Path<String>) -> Response {
    let mut g = sb.lock();
    let before = g.faults.len();
    g.faults.retain(|f| f.id != id);
    if g.faults.len() == before {
        return not_found("unknown fault id");
    }
    json_response(StatusCode::OK, json!({"deleted": id}))
}

fn account_param(q: &HashMap<String, String>, name: &str) -> Result<i64, Response> {
    q.get(name)
        .and_then(|v| v.parse::<i64>().ok())
        .ok_or_else(|| bad(format!("query parameter {name} (an integer) is required")))
}

/// `GET /admin/events?accountId=`
pub async fn events(
    State(sb): State<Sandbox>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let account = match account_param(&q, "accountId") {
        Ok(a) => a,
        Err(r) => return r,
    };
    let g = sb.lock();
    let events = g.events.get(&account).cloned().unwrap_or_default();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for e in &events {
        if let Some(id) = e.get("eventId").and_then(Value::as_str) {
            *counts.entry(id.to_string()).or_default() += 1;
        }
    }
    json_response(
        StatusCode::OK,
        json!({"events": events, "countsByEventId": counts}),
    )
}

/// `GET /admin/audiences?advertiserId=`
pub async fn audiences(
    State(sb): State<Sandbox>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let advertiser = match account_param(&q, "advertiserId") {
        Ok(a) => a,
        Err(r) => return r,
    };
    let mut g = sb.lock();
    let now = g.now();
    for a in g
        .audiences
        .values_mut()
        .filter(|a| a.advertiser_id == advertiser)
    {
        a.expire(now);
    }
    let list: Vec<Value> = g
        .audiences_by_advertiser
        .get(&advertiser)
        .into_iter()
        .flatten()
        .filter_map(|id| g.audiences.get(id))
        .map(|a| {
            let mut v = a.to_json(false);
            v["memberCount"] = Value::from(a.members.len());
            v["clientId"] = Value::from(a.client_id.clone());
            v
        })
        .collect();
    json_response(StatusCode::OK, json!({"audiences": list}))
}

/// `GET /admin/audiences/{id}/members`
pub async fn members(State(sb): State<Sandbox>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return bad("audience id must be an integer");
    };
    let mut members: Vec<String> = {
        let mut g = sb.lock();
        let now = g.now();
        let Some(a) = g.audiences.get_mut(&id) else {
            return not_found("unknown audience id");
        };
        a.expire(now);
        a.members.iter().map(|m| m.to_string()).collect()
    };
    members.sort_unstable();
    json_response(StatusCode::OK, json!({"members": members}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClockIn {
    advance_seconds: u64,
}

/// `POST /admin/audiences/{id}/clock {"advanceSeconds": n}`: moves this audience's clock forward
/// (only its members' TTL expiry; nothing else in the sandbox), so tests see several TTLs pass
/// in seconds. Answers the audience's total offset.
pub async fn audience_clock(
    State(sb): State<Sandbox>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return bad("audience id must be an integer");
    };
    let c: ClockIn = match parse(&body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let mut g = sb.lock();
    let Some(a) = g.audiences.get_mut(&id) else {
        return not_found("unknown audience id");
    };
    a.clock_offset += std::time::Duration::from_secs(c.advance_seconds);
    json_response(
        StatusCode::OK,
        json!({"audienceId": id, "clockOffsetSeconds": a.clock_offset.as_secs()}),
    )
}

/// `GET /admin/requests?clientId=&pathPrefix=&accountId=`
pub async fn requests(
    State(sb): State<Sandbox>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let client = q.get("clientId");
    let prefix = q.get("pathPrefix");
    let account = q.get("accountId");
    let g = sb.lock();
    let list: Vec<&RequestRecord> = g
        .requests
        .iter()
        .filter(|r| client.is_none_or(|c| r.client_id.as_ref() == Some(c)))
        .filter(|r| prefix.is_none_or(|p| r.path.starts_with(p.as_str())))
        .filter(|r| account.is_none_or(|a| r.account_id.as_ref() == Some(a)))
        .collect();
    json_response(StatusCode::OK, json!({"requests": list}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConfigIn {
    metadata_tps: Option<u32>,
    patch_tps: Option<u32>,
    access_token_ttl_secs: Option<u64>,
}

/// `POST /admin/config` → the config now in force.
pub async fn config(State(sb): State<Sandbox>, body: Bytes) -> Response {
    let c: ConfigIn = if body.is_empty() {
        ConfigIn {
            metadata_tps: None,
            patch_tps: None,
            access_token_ttl_secs: None,
        }
    } else {
        match parse(&body) {
            Ok(c) => c,
            Err(r) => return r,
        }
    };
    if c.access_token_ttl_secs == Some(0) {
        return bad("accessTokenTtlSecs must be at least 1");
    }
    let mut g = sb.lock();
    if let Some(v) = c.metadata_tps {
        g.config.metadata_tps = v;
    }
    if let Some(v) = c.patch_tps {
        g.config.patch_tps = v;
    }
    if let Some(v) = c.access_token_ttl_secs {
        g.config.access_token_ttl_secs = v;
    }
    json_response(StatusCode::OK, json!(g.config))
}
