//! The Data Provider API: audience metadata (`POST /v2/dp/audiencemetadata/`, `GET`/`PUT
//! /v2/dp/audiencemetadata/{id}`) and membership (`PATCH /v2/dp/audience`), with Amazon's limits
//! (1 TPS metadata, 100 TPS patches, 2000 patches / 1 MB per body) and error bodies.

use std::borrow::Cow;
use std::collections::HashSet;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::accounts::{Api, Caller, authenticate, scope_profile};
use crate::http::{DpErr, RequestId, dp_error, is_json, json_response, with_retry_after};
use crate::state::{Audience, AudienceFee, Inner, Sandbox};

pub const MAX_TTL: u64 = 34_300_800;
pub const MAX_PATCH_BYTES: usize = 1_000_000;
pub const MAX_PATCHES: usize = 2000;
/// Currencies the Data Provider API accepts for audience fees.
pub const FEE_CURRENCIES: [&str; 13] = [
    "USD", "CAD", "JPY", "GBP", "EUR", "AUD", "AED", "SAR", "MXN", "INR", "SEK", "TRY", "BRL",
];
/// Errors listed in one 400 answer at most (the first ones, in body order).
const MAX_REPORTED_ERRORS: usize = 50;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Limit {
    Metadata,
    Patch,
}

fn bad_request(rid: &RequestId, errors: Vec<DpErr>) -> Response {
    dp_error(StatusCode::BAD_REQUEST, rid, "Bad Request", errors)
}

fn one(
    status: StatusCode,
    rid: &RequestId,
    description: &str,
    error_type: &'static str,
    message: &str,
    field: Option<&str>,
) -> Response {
    dp_error(
        status,
        rid,
        description,
        vec![DpErr {
            error_type,
            message: message.to_string(),
            field_name: field.map(str::to_string),
        }],
    )
}

/// Authentication, scope profile and rate limit, in that order.
fn gate(
    g: &mut Inner,
    headers: &HeaderMap,
    rid: &RequestId,
    limit: Limit,
) -> Result<(Caller, i64), Response> {
    let caller = authenticate(g, headers, Api::Classic, rid)?;
    let profile_id = scope_profile(g, headers, &caller, rid)?;
    if !g.take_rate(limit == Limit::Patch, &caller.client_id) {
        let tps = match limit {
            Limit::Metadata => g.config.metadata_tps,
            Limit::Patch => g.config.patch_tps,
        };
        let resp = one(
            StatusCode::TOO_MANY_REQUESTS,
            rid,
            "Too Many Requests",
            "TOO_MANY_REQUESTS",
            &format!("The request rate exceeded {tps} TPS for this client"),
            None,
        );
        return Err(with_retry_after(resp, 1));
    }
    Ok((caller, profile_id))
}

fn unsupported_media(rid: &RequestId) -> Response {
    one(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        rid,
        "Unsupported Media Type",
        "UNSUPPORTED_MEDIA_TYPE",
        "Content-Type must be application/json",
        None,
    )
}

fn parse_object(body: &[u8], rid: &RequestId) -> Result<Map<String, Value>, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad_request(
            rid,
            vec![DpErr::invalid(
                "body",
                "The request body must be a JSON object",
            )],
        )),
        Err(e) => Err(bad_request(
            rid,
            vec![DpErr::invalid("body", format!("Malformed JSON: {e}"))],
        )),
    }
}

/// A JSON integer (not a string, not a float).
fn json_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) if !n.is_f64() => n.as_i64(),
        _ => None,
    }
}

fn check_unknown(m: &Map<String, Value>, allowed: &[&str], prefix: &str, errs: &mut Vec<DpErr>) {
    for k in m.keys() {
        if !allowed.contains(&k.as_str()) {
            errs.push(DpErr::invalid(
                format!("{prefix}{k}"),
                format!("The input field '{prefix}{k}' is not supported"),
            ));
        }
    }
}

/// Metadata fields as given (each `None` when absent).
#[derive(Default)]
struct MetaIn {
    external_audience_id: Option<String>,
    ttl: Option<u64>,
    data_source_country: Option<Vec<String>>,
    audience_fees: Option<Vec<AudienceFee>>,
}

fn parse_metadata(
    m: &Map<String, Value>,
    create: bool,
    existing: Option<&Audience>,
    errs: &mut Vec<DpErr>,
) -> MetaIn {
    let mut out = MetaIn::default();
    check_unknown(
        m,
        &[
            "type",
            "externalAudienceId",
            "ttl",
            "dataSourceCountry",
            "audienceFees",
        ],
        "metadata.",
        errs,
    );
    match m.get("type") {
        Some(Value::String(t)) if t == "DATA_PROVIDER" => {}
        None if !create => {}
        _ => errs.push(DpErr::invalid(
            "metadata.type",
            "The input field 'metadata.type' must be DATA_PROVIDER",
        )),
    }
    match (m.get("externalAudienceId"), existing) {
        (Some(Value::String(s)), None) if !s.trim().is_empty() && s.len() <= 256 => {
            out.external_audience_id = Some(s.clone())
        }
        (Some(Value::String(s)), Some(a)) if *s == a.external_audience_id => {}
        (Some(_), Some(_)) => errs.push(DpErr::invalid(
            "metadata.externalAudienceId",
            "The input field 'metadata.externalAudienceId' cannot be updated",
        )),
        (None, Some(_)) => {}
        _ => errs.push(DpErr::invalid(
            "metadata.externalAudienceId",
            "The input field 'metadata.externalAudienceId' must be a non-empty string of at most 256 characters",
        )),
    }
    if let Some(v) = m.get("ttl") {
        match json_int(v) {
            Some(t) if (0..=MAX_TTL as i64).contains(&t) => out.ttl = Some(t as u64),
            _ => errs.push(DpErr::invalid(
                "metadata.ttl",
                format!(
                    "The input field 'metadata.ttl' must be an integer between 0 and {MAX_TTL}"
                ),
            )),
        }
    }
    match m.get("dataSourceCountry") {
        None if !create => {}
        Some(Value::Array(list))
            if !list.is_empty()
                && list.iter().all(|c| {
                    c.as_str()
                        .is_some_and(|s| s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase()))
                }) =>
        {
            out.data_source_country = Some(
                list.iter()
                    .filter_map(|c| c.as_str().map(str::to_string))
                    .collect(),
            );
        }
        _ => errs.push(DpErr::invalid(
            "metadata.dataSourceCountry",
            "The input field 'metadata.dataSourceCountry' must be a non-empty list of ISO 3166-1 alpha-2 codes",
        )),
    }
    if let Some(v) = m.get("audienceFees") {
        let Value::Array(list) = v else {
            errs.push(DpErr::invalid(
                "metadata.audienceFees",
                "The input field 'metadata.audienceFees' must be a list",
            ));
            return out;
        };
        let mut fees = Vec::with_capacity(list.len());
        for (i, f) in list.iter().enumerate() {
            let field = format!("metadata.audienceFees[{i}]");
            let Value::Object(fm) = f else {
                errs.push(DpErr::invalid(
                    field.clone(),
                    format!("{field} must be an object"),
                ));
                continue;
            };
            check_unknown(fm, &["cpmCents", "currency"], &format!("{field}."), errs);
            let cpm = fm.get("cpmCents").and_then(json_int).filter(|c| *c >= 0);
            let currency = fm
                .get("currency")
                .and_then(Value::as_str)
                .filter(|c| FEE_CURRENCIES.contains(c));
            if cpm.is_none() {
                errs.push(DpErr::invalid(
                    format!("{field}.cpmCents"),
                    format!("The input field '{field}.cpmCents' must be a non-negative integer"),
                ));
            }
            if currency.is_none() {
                errs.push(DpErr::invalid(
                    format!("{field}.currency"),
                    format!(
                        "The input field '{field}.currency' must be one of {}",
                        FEE_CURRENCIES.join(", ")
                    ),
                ));
            }
            if let (Some(cpm), Some(currency)) = (cpm, currency) {
                fees.push(AudienceFee {
                    cpm_cents: cpm as u64,
                    currency: currency.to_string(),
                });
            }
        }
        out.audience_fees = Some(fees);
    }
    out
}

fn check_description(
    m: &Map<String, Value>,
    required: bool,
    errs: &mut Vec<DpErr>,
) -> Option<String> {
    match m.get("description") {
        None if !required => None,
        Some(Value::String(d)) if d.chars().count() <= 1000 => Some(d.clone()),
        _ => {
            errs.push(DpErr::invalid(
                "description",
                "The input field 'description' must be a string of at most 1000 characters",
            ));
            None
        }
    }
}

/// Fee currencies must equal the advertiser's currency.
fn check_fee_currency(fees: &Option<Vec<AudienceFee>>, currency: &str, errs: &mut Vec<DpErr>) {
    for (i, f) in fees.iter().flatten().enumerate() {
        if f.currency != currency {
            errs.push(DpErr::invalid(
                format!("metadata.audienceFees[{i}].currency"),
                format!(
                    "The audience fee currency {} does not match the advertiser's currency {currency}",
                    f.currency
                ),
            ));
        }
    }
}

fn no_matching_advertiser(rid: &RequestId) -> Response {
    one(
        StatusCode::UNAUTHORIZED,
        rid,
        "No matching advertiser found for scope",
        "UNAUTHORIZED",
        "No matching advertiser found for scope",
        Some("advertiserId"),
    )
}

fn audience_answer(rid: &RequestId, a: &Audience, with_size: bool) -> Response {
    json_response(
        StatusCode::OK,
        json!({"requestId": rid.0, "audience": a.to_json(with_size)}),
    )
}

/// `POST /v2/dp/audiencemetadata/`
pub async fn create(
    State(sb): State<Sandbox>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (caller, profile_id) = match gate(&mut sb.lock(), &headers, &rid, Limit::Metadata) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if !is_json(&headers) {
        return unsupported_media(&rid);
    }
    let m = match parse_object(&body, &rid) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let mut errs = Vec::new();
    check_unknown(
        &m,
        &["name", "description", "advertiserId", "metadata"],
        "",
        &mut errs,
    );
    let name = match m.get("name") {
        Some(Value::String(n)) if (10..=128).contains(&n.chars().count()) => Some(n.clone()),
        _ => {
            errs.push(DpErr::invalid(
                "name",
                "The input field 'name' must be a string of 10 to 128 characters",
            ));
            None
        }
    };
    let description = check_description(&m, true, &mut errs);
    let advertiser_id = match m.get("advertiserId").and_then(json_int) {
        Some(a) if a > 0 => Some(a),
        _ => {
            errs.push(DpErr::invalid(
                "advertiserId",
                "The input field 'advertiserId' must be an integer (a JSON number)",
            ));
            None
        }
    };
    let meta = match m.get("metadata") {
        Some(Value::Object(mm)) => Some(parse_metadata(mm, true, None, &mut errs)),
        _ => {
            errs.push(DpErr::invalid(
                "metadata",
                "The input field 'metadata' must be an object",
            ));
            None
        }
    };
    let (Some(name), Some(description), Some(advertiser_id), Some(meta)) =
        (name, description, advertiser_id, meta)
    else {
        return bad_request(&rid, errs);
    };
    if !errs.is_empty() {
        return bad_request(&rid, errs);
    }
    let mut g = sb.lock();
    let in_scope = g
        .profiles
        .get(&profile_id)
        .is_some_and(|p| p.advertiser_ids.contains(&advertiser_id));
    let Some(currency) = g
        .advertisers
        .get(&advertiser_id)
        .filter(|_| in_scope)
        .map(|a| a.currency.clone())
    else {
        return no_matching_advertiser(&rid);
    };
    check_fee_currency(&meta.audience_fees, &currency, &mut errs);
    if !errs.is_empty() {
        return bad_request(&rid, errs);
    }
    let external = meta.external_audience_id.unwrap_or_default();
    let key = (caller.client_id.clone(), advertiser_id, external.clone());
    // Idempotent create: the same externalAudienceId for the same advertiser (and client) answers
    // the audience created first, unchanged, so a retried create never makes a second audience.
    if let Some(a) = g.audience_keys.get(&key).and_then(|id| g.audiences.get(id)) {
        return audience_answer(&rid, a, false);
    }
    let id = g.next_audience_id;
    g.next_audience_id += 1;
    let audience = Audience {
        id,
        client_id: caller.client_id,
        advertiser_id,
        name,
        description,
        external_audience_id: external,
        ttl: meta.ttl,
        data_source_country: meta.data_source_country.unwrap_or_default(),
        audience_fees: meta.audience_fees,
        members: HashSet::new(),
        received: 0,
        last_added: Default::default(),
        clock_offset: Default::default(),
    };
    let resp = audience_answer(&rid, &audience, false);
    g.audience_keys.insert(key, id);
    g.audiences_by_advertiser
        .entry(advertiser_id)
        .or_default()
        .push(id);
    g.audiences.insert(id, audience);
    resp
}

/// The audience, when it exists, is this client's, and its advertiser is in the scope profile.
fn find_audience<'a>(
    g: &'a Inner,
    raw_id: &str,
    caller: &Caller,
    profile_id: i64,
    rid: &RequestId,
) -> Result<&'a Audience, Response> {
    let Ok(id) = raw_id.parse::<i64>() else {
        return Err(bad_request(
            rid,
            vec![DpErr::invalid(
                "audienceId",
                "The audience id must be an integer",
            )],
        ));
    };
    let Some(a) = g.audiences.get(&id) else {
        return Err(one(
            StatusCode::NOT_FOUND,
            rid,
            "Not Found",
            "NOT_FOUND",
            &format!("Audience {id} was not found"),
            Some("audienceId"),
        ));
    };
    if a.client_id != caller.client_id {
        return Err(one(
            StatusCode::FORBIDDEN,
            rid,
            "Forbidden",
            "FORBIDDEN",
            "The client is not allowed to access this audience",
            Some("audienceId"),
        ));
    }
    let in_scope = g
        .profiles
        .get(&profile_id)
        .is_some_and(|p| p.advertiser_ids.contains(&a.advertiser_id));
    if !in_scope {
        return Err(no_matching_advertiser(rid));
    }
    Ok(a)
}

/// `GET /v2/dp/audiencemetadata/{id}`
pub async fn get_one(
    State(sb): State<Sandbox>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let mut g = sb.lock();
    let (caller, profile_id) = match gate(&mut g, &headers, &rid, Limit::Metadata) {
        Ok(x) => x,
        Err(r) => return r,
    };
    // Members whose TTL lapsed are gone before the size is reported.
    let now = g.now();
    if let Some(a) = id.parse::<i64>().ok().and_then(|i| g.audiences.get_mut(&i)) {
        a.expire(now);
    }
    match find_audience(&g, &id, &caller, profile_id, &rid) {
        Ok(a) => audience_answer(&rid, a, true),
        Err(r) => r,
    }
}

/// `PUT /v2/dp/audiencemetadata/{id}`: fields present replace the stored ones; absent ones stay.
pub async fn update(
    State(sb): State<Sandbox>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let (caller, profile_id) = match gate(&mut sb.lock(), &headers, &rid, Limit::Metadata) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if !is_json(&headers) {
        return unsupported_media(&rid);
    }
    let m = match parse_object(&body, &rid) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let mut g = sb.lock();
    let (audience_id, meta, description) = {
        let a = match find_audience(&g, &id, &caller, profile_id, &rid) {
            Ok(a) => a,
            Err(r) => return r,
        };
        let mut errs = Vec::new();
        if m.contains_key("name") {
            errs.push(DpErr::invalid(
                "name",
                "The input field 'name' cannot be updated",
            ));
        }
        if let Some(v) = m.get("advertiserId")
            && json_int(v) != Some(a.advertiser_id)
        {
            errs.push(DpErr::invalid(
                "advertiserId",
                "The input field 'advertiserId' cannot be updated",
            ));
        }
        check_unknown(
            &m,
            &["name", "description", "advertiserId", "metadata"],
            "",
            &mut errs,
        );
        let description = check_description(&m, false, &mut errs);
        let meta = match m.get("metadata") {
            None => MetaIn::default(),
            Some(Value::Object(mm)) => parse_metadata(mm, false, Some(a), &mut errs),
            Some(_) => {
                errs.push(DpErr::invalid(
                    "metadata",
                    "The input field 'metadata' must be an object",
                ));
                MetaIn::default()
            }
        };
        let currency = g
            .advertisers
            .get(&a.advertiser_id)
            .map(|adv| adv.currency.clone())
            .unwrap_or_default();
        check_fee_currency(&meta.audience_fees, &currency, &mut errs);
        if !errs.is_empty() {
            return bad_request(&rid, errs);
        }
        (a.id, meta, description)
    };
    let Some(a) = g.audiences.get_mut(&audience_id) else {
        return one(
            StatusCode::NOT_FOUND,
            &rid,
            "Not Found",
            "NOT_FOUND",
            "Audience was not found",
            None,
        );
    };
    if let Some(d) = description {
        a.description = d;
    }
    if let Some(t) = meta.ttl {
        a.ttl = Some(t);
    }
    if let Some(c) = meta.data_source_country {
        a.data_source_country = c;
    }
    if let Some(f) = meta.audience_fees {
        a.audience_fees = Some(f);
    }
    audience_answer(&rid, a, false)
}

/// One parsed patch: add or remove one record in some audiences.
struct Patch<'a> {
    add: bool,
    record: Cow<'a, str>,
    audiences: Vec<i64>,
}

/// The typed shape of a valid body: parsing into it is several times faster than into `Value`,
/// which matters for the backfill benchmark (hundreds of 1 MB bodies). Anything it refuses goes
/// through the `Value` path, which names each problem.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FastBody<'a> {
    #[serde(borrow)]
    patches: Vec<FastPatch<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FastPatch<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(borrow)]
    path: Cow<'a, str>,
    value: Vec<i64>,
    consent: Option<Value>,
}

/// The patches when the body is entirely well formed, else `None`.
fn fast_parse(body: &[u8]) -> Option<Vec<Patch<'_>>> {
    let parsed: FastBody<'_> = serde_json::from_slice(body).ok()?;
    if parsed.patches.is_empty() || parsed.patches.len() > MAX_PATCHES {
        return None;
    }
    let mut out = Vec::with_capacity(parsed.patches.len());
    for p in parsed.patches {
        let add = match p.op.as_ref() {
            "add" => true,
            "remove" => false,
            _ => return None,
        };
        if p.value.is_empty() || p.consent.as_ref().is_some_and(|c| !valid_consent(c)) {
            return None;
        }
        let record = match p.path {
            Cow::Borrowed(path) => Cow::Borrowed(parse_path(path)?),
            Cow::Owned(path) => Cow::Owned(parse_path(&path)?.to_string()),
        };
        out.push(Patch {
            add,
            record,
            audiences: p.value,
        });
    }
    Some(out)
}

const RECORD_TYPES: [&str; 3] = ["COOKIE", "MAID", "EXTERNAL_USER_ID"];

/// `/<TYPE>-<id>/audiences` → `<TYPE>-<id>`.
fn parse_path(path: &str) -> Option<&str> {
    let record = path.strip_prefix('/')?.strip_suffix("/audiences")?;
    let (kind, id) = record.split_once('-')?;
    let id_ok = !id.is_empty()
        && id.len() <= 512
        && !id.contains('/')
        && !id.chars().any(|c| c.is_whitespace() || c.is_control());
    (RECORD_TYPES.contains(&kind) && id_ok).then_some(record)
}

fn grants(v: Option<&Value>) -> bool {
    matches!(v.and_then(Value::as_str), Some("GRANTED") | Some("DENIED"))
}

/// The TCF, GPP or Amazon consent form.
fn valid_consent(c: &Value) -> bool {
    let Value::Object(m) = c else { return false };
    let non_empty = |k: &str| {
        m.get(k)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.trim().is_empty())
    };
    match m.get("consentType").and_then(Value::as_str) {
        Some("TCF") => m.len() == 2 && non_empty("tcf"),
        Some("GPP") => m.len() == 2 && non_empty("gpp"),
        Some("Amazon") => {
            m.len() == 2
                && match m.get("amazonConsent") {
                    Some(Value::Object(a)) => {
                        a.len() == 2
                            && grants(a.get("amazonAdStorage"))
                            && grants(a.get("amazonUserData"))
                    }
                    _ => false,
                }
        }
        _ => false,
    }
}

fn parse_patch<'a>(i: usize, p: &'a Value, errs: &mut Vec<DpErr>) -> Option<Patch<'a>> {
    let field = |f: &str| format!("patches[{i}].{f}");
    let Value::Object(m) = p else {
        errs.push(DpErr::invalid(
            format!("patches[{i}]"),
            format!("Patch {i} must be an object"),
        ));
        return None;
    };
    let before = errs.len();
    for k in m.keys() {
        if !["op", "path", "value", "consent"].contains(&k.as_str()) {
            errs.push(DpErr::invalid(
                field(k),
                format!("Patch {i}: unsupported field '{k}'"),
            ));
        }
    }
    let add = match m.get("op").and_then(Value::as_str) {
        Some("add") => Some(true),
        Some("remove") => Some(false),
        _ => {
            errs.push(DpErr::invalid(
                field("op"),
                format!("Patch {i}: op must be \"add\" or \"remove\""),
            ));
            None
        }
    };
    let record = match m.get("path").and_then(Value::as_str).and_then(parse_path) {
        Some(r) => Some(r),
        None => {
            errs.push(DpErr::invalid(
                field("path"),
                format!("Patch {i}: path must be /<COOKIE|MAID|EXTERNAL_USER_ID>-<id>/audiences"),
            ));
            None
        }
    };
    let audiences = match m.get("value") {
        Some(Value::Array(list)) if !list.is_empty() => {
            let ids: Vec<Option<i64>> = list.iter().map(json_int).collect();
            if ids.iter().all(Option::is_some) {
                Some(ids.into_iter().flatten().collect::<Vec<_>>())
            } else {
                errs.push(DpErr::invalid(
                    field("value"),
                    format!("Patch {i}: value must hold audience ids as JSON integers"),
                ));
                None
            }
        }
        _ => {
            errs.push(DpErr::invalid(
                field("value"),
                format!("Patch {i}: value must be a non-empty list of audience ids"),
            ));
            None
        }
    };
    if let Some(c) = m.get("consent")
        && !valid_consent(c)
    {
        errs.push(DpErr::invalid(
            field("consent"),
            format!("Patch {i}: consent must be a TCF, GPP or Amazon consent object"),
        ));
    }
    if errs.len() > before {
        return None;
    }
    Some(Patch {
        add: add?,
        record: Cow::Borrowed(record?),
        audiences: audiences?,
    })
}

/// Parses an already-decoded body, naming every problem.
fn slow_parse<'a>(m: &'a Map<String, Value>, rid: &RequestId) -> Result<Vec<Patch<'a>>, Response> {
    let mut errs = Vec::new();
    check_unknown(m, &["patches"], "", &mut errs);
    let Some(Value::Array(list)) = m.get("patches") else {
        errs.push(DpErr::invalid(
            "patches",
            "The input field 'patches' must be a list",
        ));
        return Err(bad_request(rid, errs));
    };
    if list.len() > MAX_PATCHES {
        return Err(too_large(
            rid,
            "The input exceeds the limit of 2000 patches per request.",
        ));
    }
    if list.is_empty() {
        errs.push(DpErr::invalid(
            "patches",
            "The input field 'patches' must not be empty",
        ));
    }
    let patches: Vec<Patch<'_>> = list
        .iter()
        .enumerate()
        .filter_map(|(i, p)| parse_patch(i, p, &mut errs))
        .collect();
    if !errs.is_empty() {
        errs.truncate(MAX_REPORTED_ERRORS);
        return Err(bad_request(rid, errs));
    }
    Ok(patches)
}

fn too_large(rid: &RequestId, message: &str) -> Response {
    one(
        StatusCode::PAYLOAD_TOO_LARGE,
        rid,
        "Payload Too Large",
        "INPUT_TOO_LARGE",
        message,
        None,
    )
}

/// `PATCH /v2/dp/audience`: the whole body is validated before any membership changes.
pub async fn patch(
    State(sb): State<Sandbox>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (caller, profile_id) = match gate(&mut sb.lock(), &headers, &rid, Limit::Patch) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if !is_json(&headers) {
        return unsupported_media(&rid);
    }
    if body.len() > MAX_PATCH_BYTES {
        return too_large(&rid, "The input payload exceeds 1MB limit.");
    }
    let slow;
    let patches = match fast_parse(&body) {
        Some(p) => p,
        None => {
            slow = match parse_object(&body, &rid) {
                Ok(m) => m,
                Err(r) => return r,
            };
            match slow_parse(&slow, &rid) {
                Ok(p) => p,
                Err(r) => return r,
            }
        }
    };
    let mut errs = Vec::new();

    let mut g = sb.lock();
    let scope_advertisers: HashSet<i64> = g
        .profiles
        .get(&profile_id)
        .map(|p| p.advertiser_ids.iter().copied().collect())
        .unwrap_or_default();
    for (i, p) in patches.iter().enumerate() {
        for id in &p.audiences {
            let problem = match g.audiences.get(id) {
                None => Some(format!("Patch {i}: audience {id} does not exist")),
                Some(a) if a.client_id != caller.client_id => Some(format!(
                    "Patch {i}: audience {id} belongs to another client"
                )),
                Some(a) if !scope_advertisers.contains(&a.advertiser_id) => Some(format!(
                    "Patch {i}: audience {id} does not belong to an advertiser of the scope profile"
                )),
                Some(_) => None,
            };
            if let Some(message) = problem {
                errs.push(DpErr::invalid(format!("patches[{i}].value"), message));
            }
        }
        if errs.len() >= MAX_REPORTED_ERRORS {
            break;
        }
    }
    if !errs.is_empty() {
        errs.truncate(MAX_REPORTED_ERRORS);
        return bad_request(&rid, errs);
    }
    let now = g.now();
    for p in &patches {
        for id in &p.audiences {
            if let Some(a) = g.audiences.get_mut(id) {
                let record: &str = &p.record;
                if p.add {
                    a.add_member(record, now);
                } else {
                    a.members.remove(record);
                    a.last_added.remove(record);
                }
            }
        }
    }
    drop(g);
    json_response(
        StatusCode::OK,
        json!({"jobId": uuid::Uuid::new_v4().to_string(), "requestId": rid.0}),
    )
}
