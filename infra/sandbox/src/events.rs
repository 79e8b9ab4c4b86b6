//! The Events API: `POST /adsApi/v1/create/events`. Every event is validated strictly against the
//! `EventCreate` shape (docs/amazon-contract.md, reference/amazon-events-api.md §2.2); the answer is
//! HTTP 207 naming each 0-based index exactly once; accepted events are kept per account.

use std::collections::HashSet;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value, json};

use crate::accounts::{Api, authenticate};
use crate::http::{RequestId, events_error, header_str, is_json, json_response};
use crate::state::Sandbox;

pub const MAX_EVENTS: usize = 500;
pub const MAX_MATCH_KEYS: usize = 15;
pub const MAX_CUSTOM_DATA: usize = 13;
/// Errors reported per event at most (the API's schema caps the list at 20).
const MAX_ERRORS_PER_EVENT: usize = 20;

pub const CONVERSION_TYPES: [&str; 12] = [
    "ADD_TO_SHOPPING_CART",
    "APPLICATION",
    "CHECKOUT",
    "CONTACT",
    "LEAD",
    "MOBILE_APP_FIRST_START",
    "OFF_AMAZON_PURCHASES",
    "OTHER",
    "PAGE_VIEW",
    "SEARCH",
    "SIGN_UP",
    "SUBSCRIBE",
];
pub const EVENT_SOURCES: [&str; 6] = [
    "ANDROID",
    "FIRE_TV",
    "IOS",
    "MEASUREMENT_ATTRIBUTION_PARTNER",
    "OFFLINE",
    "WEBSITE",
];
/// Match key types sent as lowercase hex SHA-256.
pub const HASHED_KEYS: [&str; 8] = [
    "EMAIL",
    "PHONE",
    "FIRST_NAME",
    "LAST_NAME",
    "ADDRESS",
    "CITY",
    "STATE",
    "POSTAL",
];
/// Match key types sent as given.
pub const RAW_KEYS: [&str; 7] = [
    "MAID",
    "RAMP_ID",
    "MATCH_ID",
    "REAL_ID",
    "MERKLE_ID",
    "KANTAR_ID",
    "FIP",
];

/// ISO 3166-1 alpha-2 (the Events API `CountryCode` enum adds OTHER, OTHER_EEA and ZZ).
const ISO_COUNTRIES: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ \
BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET \
FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR \
IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN \
MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY \
QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR \
TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS XK YE YT ZA ZM ZW";

/// EU, EEA and UK: an event from here needs a consent signal.
const CONSENT_COUNTRIES: &str = "AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE \
IS LI NO GB OTHER_EEA";

/// ISO 4217 currency codes.
const CURRENCIES: &str = "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN \
BWP BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF \
GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL \
LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG \
QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS \
UAH UGX USD UYU UZS VES VND VUV WST XAF XCD XOF XPF YER ZAR ZMW ZWL";

fn in_list(list: &str, v: &str) -> bool {
    !v.is_empty() && list.split_ascii_whitespace().any(|c| c == v)
}

fn valid_country(c: &str) -> bool {
    matches!(c, "OTHER" | "OTHER_EEA" | "ZZ") || (c.len() == 2 && in_list(ISO_COUNTRIES, c))
}

fn word_chars(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Collects the errors of one event.
struct Check {
    prefix: String,
    errors: Vec<Value>,
}

impl Check {
    fn err(&mut self, code: &str, field: &str, message: impl Into<String>) {
        let location = if field.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}.{field}", self.prefix)
        };
        self.errors
            .push(json!({"code": code, "message": message.into(), "fieldLocation": location}));
    }

    fn missing(&mut self, field: &str) {
        self.err("FIELD_VALUE_IS_NULL", field, format!("{field} is required"));
    }

    fn unknown_fields(&mut self, m: &Map<String, Value>, allowed: &[&str], at: &str) {
        for k in m.keys() {
            if !allowed.contains(&k.as_str()) {
                let field = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                self.err(
                    "BAD_REQUEST",
                    &field,
                    format!("{field} is not a known field"),
                );
            }
        }
    }

    /// A required, non-empty string.
    fn string<'a>(&mut self, m: &'a Map<String, Value>, key: &str, field: &str) -> Option<&'a str> {
        match m.get(key) {
            None | Some(Value::Null) => {
                self.missing(field);
                None
            }
            Some(Value::String(s)) if s.trim().is_empty() => {
                self.err(
                    "FIELD_VALUE_IS_EMPTY",
                    field,
                    format!("{field} must not be empty"),
                );
                None
            }
            Some(Value::String(s)) => Some(s),
            Some(_) => {
                self.err(
                    "FIELD_VALUE_IS_INVALID",
                    field,
                    format!("{field} must be a string"),
                );
                None
            }
        }
    }

    fn optional_string<'a>(
        &mut self,
        m: &'a Map<String, Value>,
        key: &str,
        field: &str,
    ) -> Option<&'a str> {
        if m.contains_key(key) {
            self.string(m, key, field)
        } else {
            None
        }
    }
}

/// Decimal places of a JSON number as written.
fn decimals(n: &serde_json::Number) -> i64 {
    let s = n.to_string();
    let (mantissa, exp) = match s.split_once(['e', 'E']) {
        Some((m, e)) => (m.to_string(), e.parse::<i64>().unwrap_or(0)),
        None => (s, 0),
    };
    let frac = mantissa
        .split_once('.')
        .map(|(_, f)| f.len() as i64)
        .unwrap_or(0);
    (frac - exp).max(0)
}

fn check_description(c: &mut Check, e: &Map<String, Value>) -> Option<String> {
    let Some(d) = e.get("eventDescription") else {
        c.missing("eventDescription");
        return None;
    };
    let Value::Object(d) = d else {
        c.err(
            "FIELD_VALUE_IS_INVALID",
            "eventDescription",
            "eventDescription must be an object",
        );
        return None;
    };
    c.unknown_fields(
        d,
        &[
            "name",
            "conversionType",
            "eventSource",
            "eventIngestionMethod",
            "dataSetName",
        ],
        "eventDescription",
    );
    if let Some(n) = c.string(d, "name", "eventDescription.name")
        && n.chars().count() > 256
    {
        c.err(
            "FIELD_SIZE_IS_ABOVE_MAXIMUM_LIMIT",
            "eventDescription.name",
            "eventDescription.name is longer than 256 characters",
        );
    }
    let conversion_type = c.string(d, "conversionType", "eventDescription.conversionType");
    if let Some(t) = conversion_type
        && !CONVERSION_TYPES.contains(&t)
    {
        c.err(
            "FIELD_VALUE_IS_INVALID",
            "eventDescription.conversionType",
            format!(
                "eventDescription.conversionType must be one of {}",
                CONVERSION_TYPES.join(", ")
            ),
        );
    }
    if let Some(s) = c.string(d, "eventSource", "eventDescription.eventSource")
        && !EVENT_SOURCES.contains(&s)
    {
        c.err(
            "FIELD_VALUE_IS_INVALID",
            "eventDescription.eventSource",
            format!(
                "eventDescription.eventSource must be one of {}",
                EVENT_SOURCES.join(", ")
            ),
        );
    }
    if let Some(m) = c.string(
        d,
        "eventIngestionMethod",
        "eventDescription.eventIngestionMethod",
    ) && m != "SERVER_TO_SERVER"
    {
        c.err(
            "FIELD_VALUE_IS_INVALID",
            "eventDescription.eventIngestionMethod",
            "eventDescription.eventIngestionMethod must be SERVER_TO_SERVER",
        );
    }
    if let Some(ds) = c.optional_string(d, "dataSetName", "eventDescription.dataSetName") {
        let ok = ds.len() <= 100
            && ds.as_bytes()[0].is_ascii_alphabetic()
            && ds
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            c.err(
                "FIELD_VALUE_CONTAINS_INVALID_CHARACTERS",
                "eventDescription.dataSetName",
                "eventDescription.dataSetName must match [A-Za-z][A-Za-z0-9_-]* (at most 100 characters)",
            );
        }
    }
    conversion_type
        .filter(|t| CONVERSION_TYPES.contains(t))
        .map(str::to_string)
}

fn check_match_keys(c: &mut Check, e: &Map<String, Value>) {
    let Some(keys) = e.get("matchKeys") else {
        c.missing("matchKeys");
        return;
    };
    let Value::Array(keys) = keys else {
        c.err(
            "FIELD_VALUE_IS_INVALID",
            "matchKeys",
            "matchKeys must be a list",
        );
        return;
    };
    if keys.is_empty() {
        c.err(
            "FIELD_VALUE_IS_EMPTY",
            "matchKeys",
            "matchKeys must hold at least one key",
        );
        return;
    }
    if keys.len() > MAX_MATCH_KEYS {
        c.err(
            "FIELD_SIZE_IS_ABOVE_MAXIMUM_LIMIT",
            "matchKeys",
            format!(
                "matchKeys holds {} keys; at most {MAX_MATCH_KEYS} are allowed",
                keys.len()
            ),
        );
    }
    let mut seen = HashSet::new();
    for (j, k) in keys.iter().enumerate() {
        let at = format!("matchKeys[{j}]");
        let Value::Object(k) = k else {
            c.err(
                "FIELD_VALUE_IS_INVALID",
                &at,
                format!("{at} must be an object"),
            );
            continue;
        };
        c.unknown_fields(k, &["type", "values"], &at);
        let kind = c.string(k, "type", &format!("{at}.type"));
        let hashed = match kind {
            Some(t) if HASHED_KEYS.contains(&t) => Some(true),
            Some(t) if RAW_KEYS.contains(&t) => Some(false),
            Some(_) => {
                c.err(
                    "FIELD_VALUE_IS_INVALID",
                    &format!("{at}.type"),
                    format!("{at}.type is not a match key type"),
                );
                None
            }
            None => None,
        };
        if let (Some(t), Some(_)) = (kind, hashed)
            && !seen.insert(t.to_string())
        {
            c.err(
                "FIELD_VALUE_IS_INVALID",
                &format!("{at}.type"),
                format!("match key type {t} appears more than once"),
            );
        }
        let values_at = format!("{at}.values");
        let value = match k.get("values") {
            None => {
                c.missing(&values_at);
                None
            }
            Some(Value::Array(v)) if v.len() == 1 => match &v[0] {
                Value::String(s) => Some(s.as_str()),
                _ => {
                    c.err(
                        "FIELD_VALUE_IS_INVALID",
                        &format!("{values_at}[0]"),
                        "a match key value must be a string",
                    );
                    None
                }
            },
            Some(_) => {
                c.err(
                    "FIELD_VALUE_IS_INVALID",
                    &values_at,
                    format!("{values_at} must hold exactly one value"),
                );
                None
            }
        };
        match (hashed, value) {
            (Some(true), Some(v))
                if !(v.len() == 64
                    && v.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))) =>
            {
                c.err(
                    "FIELD_VALUE_IS_INVALID",
                    &format!("{values_at}[0]"),
                    format!(
                        "{} values must be SHA-256 hashes: exactly 64 lowercase hex characters",
                        kind.unwrap_or_default()
                    ),
                );
            }
            (Some(false), Some(v)) if v.trim().is_empty() => {
                c.err(
                    "FIELD_VALUE_IS_EMPTY",
                    &format!("{values_at}[0]"),
                    "a match key value must not be empty",
                );
            }
            _ => {}
        }
    }
}

fn check_consent(c: &mut Check, e: &Map<String, Value>) -> bool {
    let Some(consent) = e.get("consent") else {
        return false;
    };
    let Value::Object(m) = consent else {
        c.err(
            "FIELD_VALUE_IS_INVALID",
            "consent",
            "consent must be an object",
        );
        return false;
    };
    c.unknown_fields(m, &["geo", "amazonConsent", "tcf", "gpp"], "consent");
    if let Some(geo) = m.get("geo") {
        match geo {
            Value::Object(g) => {
                c.unknown_fields(g, &["ipAddress"], "consent.geo");
                if let Some(ip) = c.string(g, "ipAddress", "consent.geo.ipAddress")
                    && ip.parse::<std::net::IpAddr>().is_err()
                {
                    c.err(
                        "FIELD_VALUE_IS_INVALID",
                        "consent.geo.ipAddress",
                        "consent.geo.ipAddress is not an IP address",
                    );
                }
            }
            _ => c.err(
                "FIELD_VALUE_IS_INVALID",
                "consent.geo",
                "consent.geo must be an object",
            ),
        }
    }
    if let Some(ac) = m.get("amazonConsent") {
        match ac {
            Value::Object(a) => {
                c.unknown_fields(
                    a,
                    &["amznUserData", "amznAdStorage"],
                    "consent.amazonConsent",
                );
                let status = |v: Option<&Value>| {
                    matches!(v.and_then(Value::as_str), Some("GRANTED") | Some("DENIED"))
                };
                if !status(a.get("amznUserData")) {
                    c.err(
                        "FIELD_VALUE_IS_INVALID",
                        "consent.amazonConsent.amznUserData",
                        "consent.amazonConsent.amznUserData must be GRANTED or DENIED",
                    );
                }
                if a.contains_key("amznAdStorage") && !status(a.get("amznAdStorage")) {
                    c.err(
                        "FIELD_VALUE_IS_INVALID",
                        "consent.amazonConsent.amznAdStorage",
                        "consent.amazonConsent.amznAdStorage must be GRANTED or DENIED",
                    );
                }
            }
            _ => c.err(
                "FIELD_VALUE_IS_INVALID",
                "consent.amazonConsent",
                "consent.amazonConsent must be an object",
            ),
        }
    }
    c.optional_string(m, "tcf", "consent.tcf");
    c.optional_string(m, "gpp", "consent.gpp");
    ["geo", "amazonConsent", "tcf", "gpp"]
        .iter()
        .any(|k| m.contains_key(*k))
}

const EVENT_FIELDS: [&str; 15] = [
    "eventDescription",
    "eventTime",
    "countryCode",
    "matchKeys",
    "value",
    "currencyCode",
    "unitsSold",
    "eventId",
    "dataProcessingOptions",
    "consent",
    "customData",
    "deviceInfo",
    "amazonAdEventKey",
    "arefMeasurementTokens",
    "partner",
];

/// Validates one event; returns its errors (empty = accepted).
pub fn validate_event(index: usize, event: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let mut c = Check {
        prefix: format!("events[{index}]"),
        errors: Vec::new(),
    };
    let Value::Object(e) = event else {
        c.err("BAD_REQUEST", "", "an event must be a JSON object");
        return c.errors;
    };
    c.unknown_fields(e, &EVENT_FIELDS, "");
    let conversion_type = check_description(&mut c, e);
    let purchase = conversion_type.as_deref() == Some("OFF_AMAZON_PURCHASES");

    if let Some(t) = c.string(e, "eventTime", "eventTime") {
        match DateTime::parse_from_rfc3339(t) {
            Err(_) => c.err(
                "FIELD_VALUE_IS_INVALID",
                "eventTime",
                "eventTime is not an RFC 3339 date-time",
            ),
            Ok(t) => {
                let t = t.with_timezone(&Utc);
                if t < now - Duration::days(21) {
                    c.err(
                        "FIELD_VALUE_IS_OUT_OF_RANGE",
                        "eventTime",
                        "eventTime is more than 21 days in the past",
                    );
                } else if t > now + Duration::minutes(5) {
                    c.err(
                        "FIELD_VALUE_IS_OUT_OF_RANGE",
                        "eventTime",
                        "eventTime is more than 5 minutes in the future",
                    );
                }
            }
        }
    }

    let country = c.string(e, "countryCode", "countryCode");
    if let Some(cc) = country
        && !valid_country(cc)
    {
        c.err(
            "FIELD_VALUE_IS_INVALID",
            "countryCode",
            "countryCode must be an ISO 3166-1 alpha-2 code (e.g. GB, not UK), OTHER, OTHER_EEA or ZZ",
        );
    }

    check_match_keys(&mut c, e);

    if let Some(v) = e.get("value") {
        match v {
            Value::Number(n) => {
                if decimals(n) > 2 {
                    c.err(
                        "FIELD_VALUE_IS_INVALID",
                        "value",
                        "value has more than 2 decimal places",
                    );
                }
                if purchase && n.as_f64().is_some_and(|f| f < 0.0) {
                    c.err(
                        "FIELD_VALUE_IS_OUT_OF_RANGE",
                        "value",
                        "a purchase value must not be negative",
                    );
                }
            }
            _ => c.err("FIELD_VALUE_IS_INVALID", "value", "value must be a number"),
        }
    }
    if e.contains_key("currencyCode") {
        if !purchase {
            c.err(
                "BAD_REQUEST",
                "currencyCode",
                "currencyCode is only allowed with OFF_AMAZON_PURCHASES",
            );
        } else if let Some(cur) = c.string(e, "currencyCode", "currencyCode")
            && !in_list(CURRENCIES, cur)
        {
            c.err(
                "FIELD_VALUE_IS_INVALID",
                "currencyCode",
                "currencyCode must be an ISO 4217 code",
            );
        }
    }
    if let Some(u) = e.get("unitsSold") {
        if !purchase {
            c.err(
                "BAD_REQUEST",
                "unitsSold",
                "unitsSold is only allowed with OFF_AMAZON_PURCHASES",
            );
        } else if !u
            .as_i64()
            .is_some_and(|n| (0..=i32::MAX as i64).contains(&n))
            || u.is_f64()
        {
            c.err(
                "FIELD_VALUE_IS_INVALID",
                "unitsSold",
                "unitsSold must be a non-negative 32-bit integer",
            );
        }
    }
    if let Some(id) = c.optional_string(e, "eventId", "eventId")
        && id.chars().count() > 1000
    {
        c.err(
            "FIELD_SIZE_IS_ABOVE_MAXIMUM_LIMIT",
            "eventId",
            "eventId is longer than 1000 characters",
        );
    }
    if let Some(d) = e.get("dataProcessingOptions") {
        let ok = matches!(d, Value::Object(m) if m.len() == 1 && m.get("options").and_then(Value::as_str) == Some("LIMITED_DATA_USE"));
        if !ok {
            c.err(
                "FIELD_VALUE_IS_INVALID",
                "dataProcessingOptions",
                "dataProcessingOptions must be {\"options\":\"LIMITED_DATA_USE\"}",
            );
        }
    }
    let has_consent = check_consent(&mut c, e);
    if let Some(cc) = country
        && in_list(CONSENT_COUNTRIES, cc)
        && !has_consent
    {
        c.err(
            "FIELD_VALUE_IS_NULL",
            "consent",
            format!("consent (geo, amazonConsent, tcf or gpp) is required for countryCode {cc}"),
        );
    }
    if let Some(cd) = e.get("customData") {
        match cd {
            Value::Array(items) => {
                if items.len() > MAX_CUSTOM_DATA {
                    c.err(
                        "FIELD_SIZE_IS_ABOVE_MAXIMUM_LIMIT",
                        "customData",
                        format!(
                            "customData holds {} items; at most {MAX_CUSTOM_DATA} are allowed",
                            items.len()
                        ),
                    );
                }
                for (j, item) in items.iter().enumerate() {
                    let at = format!("customData[{j}]");
                    let Value::Object(m) = item else {
                        c.err(
                            "FIELD_VALUE_IS_INVALID",
                            &at,
                            format!("{at} must be an object"),
                        );
                        continue;
                    };
                    c.unknown_fields(m, &["name", "value", "dataType"], &at);
                    for key in ["name", "value"] {
                        if let Some(s) = c.string(m, key, &format!("{at}.{key}"))
                            && !word_chars(s)
                        {
                            c.err(
                                "FIELD_VALUE_CONTAINS_INVALID_CHARACTERS",
                                &format!("{at}.{key}"),
                                format!("{at}.{key} may hold only letters, digits and underscores"),
                            );
                        }
                    }
                    if let Some(t) = c.optional_string(m, "dataType", &format!("{at}.dataType"))
                        && !["STRING", "INTEGER", "TIMESTAMP"].contains(&t)
                    {
                        c.err(
                            "FIELD_VALUE_IS_INVALID",
                            &format!("{at}.dataType"),
                            format!("{at}.dataType must be STRING, INTEGER or TIMESTAMP"),
                        );
                    }
                }
            }
            _ => c.err(
                "FIELD_VALUE_IS_INVALID",
                "customData",
                "customData must be a list",
            ),
        }
    }
    if let Some(d) = e.get("deviceInfo") {
        match d {
            Value::Object(m) => {
                c.unknown_fields(m, &["userAgent"], "deviceInfo");
                if let Some(ua) = c.optional_string(m, "userAgent", "deviceInfo.userAgent")
                    && ua.chars().count() > 512
                {
                    c.err(
                        "FIELD_SIZE_IS_ABOVE_MAXIMUM_LIMIT",
                        "deviceInfo.userAgent",
                        "deviceInfo.userAgent is longer than 512 characters",
                    );
                }
            }
            _ => c.err(
                "FIELD_VALUE_IS_INVALID",
                "deviceInfo",
                "deviceInfo must be an object",
            ),
        }
    }
    c.optional_string(e, "amazonAdEventKey", "amazonAdEventKey");
    c.optional_string(e, "partner", "partner");
    if let Some(tokens) = c.optional_string(e, "arefMeasurementTokens", "arefMeasurementTokens") {
        let ok = tokens.split('|').all(|pair| {
            pair.split_once('.').is_some_and(|(t, ms)| {
                t.len() == 10
                    && t.bytes().all(|b| b.is_ascii_alphanumeric())
                    && ms.len() == 13
                    && ms.bytes().all(|b| b.is_ascii_digit())
            })
        });
        if !ok {
            c.err(
                "FIELD_VALUE_IS_INVALID",
                "arefMeasurementTokens",
                "arefMeasurementTokens must be <10-char token>.<13-digit epoch ms> pairs separated by |",
            );
        }
    }
    c.errors.truncate(MAX_ERRORS_PER_EVENT);
    c.errors
}

/// `POST /adsApi/v1/create/events`
pub async fn create_events(
    State(sb): State<Sandbox>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let account = {
        let g = sb.lock();
        let caller = match authenticate(&g, &headers, Api::Events, &rid) {
            Ok(c) => c,
            Err(r) => return r,
        };
        let Some(raw) = header_str(&headers, "amazon-ads-accountid") else {
            return events_error(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "The Amazon-Ads-AccountId header is missing",
            );
        };
        match raw
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|id| g.user_advertiser(&caller.user_id, *id).is_some())
        {
            Some(id) => id,
            None => {
                return events_error(
                    StatusCode::FORBIDDEN,
                    "FORBIDDEN",
                    "The caller is not authorized to access this account",
                );
            }
        }
    };
    if !is_json(&headers) {
        return events_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "Content-Type must be application/json",
        );
    }
    let root: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return events_error(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                &format!("Malformed JSON: {e}"),
            );
        }
    };
    let Value::Object(root) = root else {
        return events_error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "The body must be a JSON object",
        );
    };
    if let Some(k) = root.keys().find(|k| k.as_str() != "events") {
        return events_error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            &format!("{k} is not a known field"),
        );
    }
    let Some(Value::Array(events)) = root.get("events") else {
        return events_error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "events must be a list",
        );
    };
    if events.is_empty() || events.len() > MAX_EVENTS {
        return events_error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            &format!(
                "events must hold 1 to {MAX_EVENTS} events; got {}",
                events.len()
            ),
        );
    }
    let now = Utc::now();
    let mut success = Vec::new();
    let mut error = Vec::new();
    let mut accepted = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let errs = validate_event(i, e, now);
        if errs.is_empty() {
            success.push(json!({"index": i, "event": e}));
            accepted.push(e.clone());
        } else {
            error.push(json!({"index": i, "errors": errs}));
        }
    }
    if !accepted.is_empty() {
        sb.lock()
            .events
            .entry(account)
            .or_default()
            .extend(accepted);
    }
    json_response(
        StatusCode::MULTI_STATUS,
        json!({"success": success, "error": error}),
    )
}
