//! Validation and normalisation of one parsed event into a [`ValidEvent`], collecting every
//! problem with its field path (`timestamp`, `matchKeys[1].values[0]`, `consent.amazonConsent`).
//!
//! [`validate`] checks the fields in a fixed order, one module per group, so an event's errors
//! always come in the same order: `describe` (name, type, source, ingestion method, data set,
//! `clientDedupeId`), `time` (timestamp), `codes` (country, and the code lists), `match_keys`,
//! `amounts` (value, currency, units), `consent` (data processing options, consent and the
//! EU/EEA/UK rule), `custom_data`. Errors never echo a match-key value (personal data).

mod amounts;
mod codes;
mod consent;
mod custom_data;
mod describe;
mod errors;
mod match_keys;
mod time;

pub use codes::{CONVERSION_TYPES, CURRENCIES, Country, EVENT_SOURCES, ISO_COUNTRIES};
pub use consent::ConsentOut;
pub use time::{format_time_ms, parse_time, parse_time_ms};

use super::FieldError;
use super::input::InEvent;
use super::matchkey::KeyHasher;
use custom_data::custom_data;
use errors::Errors;
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
/// Fields are checked in a fixed order, so an event's errors always come in the same order.
pub fn validate<'b>(
    ev: &'b InEvent<'_>,
    now_ms: i64,
    scratch: &mut Scratch,
) -> Result<ValidEvent<'b>, Vec<FieldError>> {
    scratch.keys.clear();
    scratch.custom.clear();
    let mut errs = Errors(Vec::new());
    let described = describe::description(ev, &mut errs);
    let (event_time, event_time_ms) = time::timestamp(ev, now_ms, &mut errs);
    let country = codes::country(ev, &mut errs);
    let event_id = describe::event_id(ev, &mut errs);
    if let Ok(k) = errs.got("matchKeys", ev.match_keys.as_ref(), MATCH_KEYS_SHAPE) {
        match_keys(k, scratch, &mut errs);
    }
    let is_purchase = described.conversion_type == "OFF_AMAZON_PURCHASES";
    let amounts = amounts::amounts(ev, is_purchase, &mut errs);
    let limited_data_use = consent::limited_data_use(ev, &mut errs);
    let consent = consent::event_consent(ev, country, &mut errs);
    if let Ok(Some(items)) = errs.got("customData", ev.custom_data.as_ref(), "a list") {
        custom_data(items, &mut scratch.custom, &mut errs);
    }

    if !errs.0.is_empty() {
        return Err(errs.0);
    }
    Ok(ValidEvent {
        name: described.name,
        conversion_type: described.conversion_type,
        event_source: described.event_source,
        data_set_name: described.data_set_name,
        event_time,
        event_time_ms,
        country: country.unwrap_or(Country::Other),
        event_id,
        value: amounts.value,
        currency_code: amounts.currency_code,
        units_sold: amounts.units_sold,
        limited_data_use,
        consent,
    })
}
