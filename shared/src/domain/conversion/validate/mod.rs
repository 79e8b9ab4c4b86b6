//! Validation and normalisation of one parsed event into a [`ValidEvent`], collecting every
//! problem with its field path (`timestamp`, `matchKeys[1].values[0]`, `consent.amazonConsent`).

mod codes;
mod consent;
mod custom_data;
mod errors;
mod match_keys;
mod time;

pub use codes::{CONVERSION_TYPES, CURRENCIES, Country, EVENT_SOURCES, ISO_COUNTRIES};
pub use consent::ConsentOut;
pub use time::{format_time_ms, parse_time, parse_time_ms};

use super::input::{Got, InEvent, Text};
use super::matchkey::KeyHasher;
use super::{FieldError, Reason};
use consent::consent;
use custom_data::custom_data;
use errors::{A_STRING, Errors, one_of, short};
use match_keys::{MATCH_KEYS_SHAPE, match_keys};

/// The Events API allows 1–15 match keys per event.
pub const MAX_MATCH_KEYS: usize = 15;
/// The Events API allows up to 13 `customData` entries.
pub const MAX_CUSTOM_DATA: usize = 13;
/// Events older than this are rejected (Events API: 21 days).
pub const MAX_AGE_MS: i64 = 21 * 86_400_000;
/// Events further ahead than this are rejected (clock skew allowance).
pub const MAX_AHEAD_MS: i64 = 5 * 60_000;
/// Longest accepted `clientDedupeId` (it is also a DynamoDB key and Amazon's `eventId`).
pub const MAX_ID_CHARS: usize = 256;
/// Longest accepted event `name`.
pub const MAX_NAME_CHARS: usize = 256;

/// Buffers reused for every event: the normalisation scratch, and the outbound JSON of the match
/// keys and custom data of the event being validated (written as they are checked, so a valid
/// event carries no per-key arrays around).
#[derive(Debug, Default)]
pub struct Scratch {
    pub hasher: KeyHasher,
    /// `{"type":…,"values":[…]}` entries, comma-separated.
    pub keys: Vec<u8>,
    /// `{"name":…,"value":…}` entries, comma-separated.
    pub custom: Vec<u8>,
}

impl Scratch {
    pub fn new() -> Self {
        Self {
            hasher: KeyHasher::new(),
            keys: Vec::with_capacity(1024),
            custom: Vec::with_capacity(512),
        }
    }
}

/// An event that passed validation, normalised and with its match keys hashed, ready to be
/// written in the Events API shape; its match keys and custom data are already written in the
/// [`Scratch`] it was validated with. Borrows from the parsed input; no heap allocation.
#[derive(Debug, Clone)]
pub struct ValidEvent<'b> {
    pub name: &'b str,
    pub conversion_type: &'static str,
    pub event_source: &'static str,
    pub data_set_name: Option<&'b str>,
    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`
    pub event_time: [u8; 24],
    pub event_time_ms: i64,
    pub country: Country,
    pub event_id: Option<&'b str>,
    pub value: Option<f64>,
    pub currency_code: Option<[u8; 3]>,
    pub units_sold: Option<i32>,
    pub limited_data_use: bool,
    pub consent: Option<ConsentOut<'b>>,
}

impl ValidEvent<'_> {
    pub fn event_time_str(&self) -> &str {
        std::str::from_utf8(&self.event_time).unwrap_or("")
    }

    pub fn is_purchase(&self) -> bool {
        self.conversion_type == "OFF_AMAZON_PURCHASES"
    }
}

/// Validates and normalises one event. `now_ms` is the time of receipt (epoch milliseconds).
pub fn validate<'b>(
    ev: &'b InEvent<'_>,
    now_ms: i64,
    scratch: &mut Scratch,
) -> Result<ValidEvent<'b>, Vec<FieldError>> {
    scratch.keys.clear();
    scratch.custom.clear();
    let mut errs = Errors(Vec::new());
    let desc = errs
        .got(
            "eventDescription",
            ev.event_description.as_ref(),
            "an object",
        )
        .ok()
        .flatten();
    // A top-level field wins over its `eventDescription` twin.
    let text = |errs: &mut Errors,
                field: &str,
                top: Option<&'b Got<Text<'b>>>,
                nested_field: &str,
                nested: Option<&'b Got<Text<'b>>>|
     -> Result<Option<&'b str>, ()> {
        let top = errs.got(field, top, A_STRING)?;
        let nested = errs.got(nested_field, nested, A_STRING)?;
        Ok(top.or(nested).map(Text::as_str))
    };

    let name = match text(
        &mut errs,
        "name",
        ev.name.as_ref(),
        "eventDescription.name",
        desc.and_then(|d| d.name.as_ref()),
    ) {
        Err(()) => "",
        Ok(None) => {
            errs.push("name", Reason::Missing, "name is required");
            ""
        }
        Ok(Some(n)) if n.trim().is_empty() => {
            errs.push("name", Reason::Invalid, "name must not be empty");
            ""
        }
        Ok(Some(n)) if n.chars().count() > MAX_NAME_CHARS => {
            errs.push(
                "name",
                Reason::Invalid,
                format!("name is longer than {MAX_NAME_CHARS} characters"),
            );
            ""
        }
        Ok(Some(n)) => n,
    };

    let conversion_type = match text(
        &mut errs,
        "eventType",
        ev.event_type.as_ref(),
        "eventDescription.conversionType",
        desc.and_then(|d| d.conversion_type.as_ref()),
    ) {
        Err(()) => "",
        Ok(None) => {
            errs.push(
                "eventType",
                Reason::Missing,
                "eventType is required (one of Amazon's conversion types)",
            );
            ""
        }
        Ok(Some(t)) => one_of(t, &CONVERSION_TYPES).unwrap_or_else(|| {
            errs.push(
                "eventType",
                Reason::Invalid,
                format!(
                    "eventType {:?} is not one of {}",
                    short(t),
                    CONVERSION_TYPES.join(", ")
                ),
            );
            ""
        }),
    };

    let event_source = match text(
        &mut errs,
        "eventActionSource",
        ev.event_action_source.as_ref(),
        "eventDescription.eventSource",
        desc.and_then(|d| d.event_source.as_ref()),
    ) {
        Err(()) => "",
        Ok(None) => "WEBSITE",
        Ok(Some(s)) => one_of(s, &EVENT_SOURCES).unwrap_or_else(|| {
            errs.push(
                "eventActionSource",
                Reason::Invalid,
                format!(
                    "eventActionSource {:?} is not one of {}",
                    short(s),
                    EVENT_SOURCES.join(", ")
                ),
            );
            ""
        }),
    };

    if let Ok(Some(m)) = text(
        &mut errs,
        "eventIngestionMethod",
        ev.event_ingestion_method.as_ref(),
        "eventDescription.eventIngestionMethod",
        desc.and_then(|d| d.event_ingestion_method.as_ref()),
    ) && !m.trim().eq_ignore_ascii_case("SERVER_TO_SERVER")
    {
        errs.push(
            "eventIngestionMethod",
            Reason::Invalid,
            "eventIngestionMethod can only be SERVER_TO_SERVER",
        );
    }

    let data_set_name = text(
        &mut errs,
        "dataSetName",
        ev.data_set_name.as_ref(),
        "eventDescription.dataSetName",
        desc.and_then(|d| d.data_set_name.as_ref()),
    )
    .ok()
    .flatten();
    if let Some(d) = data_set_name {
        let b = d.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 100
            && b[0].is_ascii_alphabetic()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-');
        if !ok {
            errs.push(
                "dataSetName",
                Reason::Invalid,
                "dataSetName must be 1–100 characters: a letter, then letters, digits, _ or -",
            );
        }
    }

    let mut event_time = [0u8; 24];
    let mut event_time_ms = 0;
    match errs.got("timestamp", ev.timestamp.as_ref(), A_STRING) {
        Err(()) => {}
        Ok(None) => errs.push(
            "timestamp",
            Reason::Missing,
            "timestamp is required (ISO 8601 with an offset)",
        ),
        Ok(Some(t)) => match parse_time_ms(t.as_str()) {
            None => errs.push(
                "timestamp",
                Reason::Invalid,
                format!(
                    "timestamp {:?} is not an ISO 8601 date-time with an offset, e.g. 2026-08-20T14:15:22Z",
                    short(t.as_str())
                ),
            ),
            Some(ms) => {
                event_time_ms = ms;
                if now_ms - ms > MAX_AGE_MS {
                    errs.push(
                        "timestamp",
                        Reason::TooOld,
                        "the event is older than 21 days; Amazon does not accept it",
                    );
                } else if ms - now_ms > MAX_AHEAD_MS {
                    errs.push(
                        "timestamp",
                        Reason::InFuture,
                        "the event is more than 5 minutes in the future",
                    );
                } else {
                    event_time = format_time_ms(ms);
                }
            }
        },
    }

    let country = match errs.got("countryCode", ev.country_code.as_ref(), A_STRING) {
        Err(()) => None,
        Ok(None) => {
            errs.push(
                "countryCode",
                Reason::Missing,
                "countryCode is required (ISO 3166 alpha-2, e.g. US, or a locale like en-US)",
            );
            None
        }
        Ok(Some(c)) => Country::parse(c.as_str()).or_else(|| {
            errs.push(
                "countryCode",
                Reason::Invalid,
                format!(
                    "countryCode {:?} is not an ISO 3166 alpha-2 code or a locale like en-US",
                    short(c.as_str())
                ),
            );
            None
        }),
    };

    let event_id = match errs
        .got(
            "clientDedupeId",
            ev.client_dedupe_id.as_ref(),
            "a string or an integer",
        )
        .ok()
        .flatten()
        .map(|i| i.as_str())
    {
        // A blank id (tag managers send "" for "none") means "not deduplicated".
        Some(id) if id.trim().is_empty() => None,
        Some(id) if id.chars().count() > MAX_ID_CHARS || id.chars().any(char::is_control) => {
            errs.push(
                "clientDedupeId",
                Reason::Invalid,
                format!(
                    "clientDedupeId must be at most {MAX_ID_CHARS} characters without control characters"
                ),
            );
            None
        }
        other => other,
    };

    if let Ok(k) = errs.got("matchKeys", ev.match_keys.as_ref(), MATCH_KEYS_SHAPE) {
        match_keys(k, scratch, &mut errs);
    }

    let is_purchase = conversion_type == "OFF_AMAZON_PURCHASES";
    let value = match errs.got("value", ev.value.as_ref(), "a number") {
        Ok(Some(v)) => {
            let v = v.0;
            let cents = v * 100.0;
            if !v.is_finite() || v.abs() > 1e12 {
                errs.push("value", Reason::Invalid, "value must be a finite number");
                None
            } else if (cents - cents.round()).abs() > 1e-6 {
                errs.push(
                    "value",
                    Reason::Invalid,
                    "value has more than 2 decimal places",
                );
                None
            } else if is_purchase && v < 0.0 {
                errs.push(
                    "value",
                    Reason::Invalid,
                    "value of a purchase must not be negative",
                );
                None
            } else {
                Some(cents.round() / 100.0)
            }
        }
        _ => None,
    };

    // currencyCode and unitsSold mean something only for purchases; they are dropped otherwise.
    let currency_code = match errs.got("currencyCode", ev.currency_code.as_ref(), A_STRING) {
        Ok(Some(c)) if is_purchase => {
            let b = c.as_str().trim().as_bytes();
            let code = [
                b.first().map_or(0, u8::to_ascii_uppercase),
                b.get(1).map_or(0, u8::to_ascii_uppercase),
                b.get(2).map_or(0, u8::to_ascii_uppercase),
            ];
            let known = b.len() == 3
                && std::str::from_utf8(&code).is_ok_and(|c| CURRENCIES.binary_search(&c).is_ok());
            if known {
                Some(code)
            } else {
                errs.push(
                    "currencyCode",
                    Reason::Invalid,
                    "currencyCode must be an ISO 4217 code such as USD",
                );
                None
            }
        }
        _ => None,
    };
    let units_sold = match errs.got("unitsSold", ev.units_sold.as_ref(), "a number") {
        Ok(Some(u)) if is_purchase => {
            if u.0.fract() == 0.0 && u.0 >= 1.0 && u.0 <= i32::MAX as f64 {
                Some(u.0 as i32)
            } else {
                errs.push(
                    "unitsSold",
                    Reason::Invalid,
                    "unitsSold must be a whole number of at least 1",
                );
                None
            }
        }
        _ => None,
    };

    let limited_data_use = match errs.got(
        "dataProcessingOptions",
        ev.data_processing_options.as_ref(),
        "[\"LIMITED_DATA_USE\"]",
    ) {
        Ok(Some(o)) => {
            if let Some(w) = o.wrong {
                errs.push(
                    "dataProcessingOptions",
                    Reason::Malformed,
                    format!("dataProcessingOptions: wrong type ({w}), expected a string"),
                );
            } else if let Some(u) = &o.unknown {
                errs.push(
                    "dataProcessingOptions",
                    Reason::Invalid,
                    format!(
                        "unknown data processing option {:?}; the only option is LIMITED_DATA_USE",
                        short(u.as_str())
                    ),
                );
            }
            o.limited_data_use
        }
        _ => false,
    };

    let consent = match errs.got("consent", ev.consent.as_ref(), "an object") {
        Ok(Some(c)) => Some(consent(c, &mut errs)).filter(|c| !c.is_empty()),
        _ => None,
    };
    if let Some(country) = country
        && country.needs_consent()
        && !consent.is_some_and(|c| c.has_signal())
    {
        errs.push(
            "consent",
            Reason::ConsentRequired,
            format!(
                "events for {} (EU/EEA/UK) need a consent signal: consent.geo.ipAddress, consent.amazonConsent, consent.tcf or consent.gpp",
                country.as_str()
            ),
        );
    }

    if let Ok(Some(items)) = errs.got("customData", ev.custom_data.as_ref(), "a list") {
        custom_data(items, &mut scratch.custom, &mut errs);
    }

    if !errs.0.is_empty() {
        return Err(errs.0);
    }
    Ok(ValidEvent {
        name,
        conversion_type,
        event_source,
        data_set_name,
        event_time,
        event_time_ms,
        country: country.unwrap_or(Country::Other),
        event_id,
        value,
        currency_code,
        units_sold,
        limited_data_use,
        consent,
    })
}
