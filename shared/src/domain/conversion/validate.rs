//! Validation and normalisation of one parsed event into a [`ValidEvent`], collecting every
//! problem with its field path (`timestamp`, `matchKeys[1].values[0]`, `consent.amazonConsent`).

use super::input::{ConsentIn, CustomDataIn, Flag, Got, InEvent, MatchKeysIn, Text, ValuesIn};
use super::matchkey::{KeyHasher, KeyType};
use super::outbound::{write_custom_entry, write_match_key};
use super::{FieldError, Reason};
use chrono::{DateTime, FixedOffset};

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

/// ISO 3166-1 alpha-2 codes (sorted, for binary search).
pub const ISO_COUNTRIES: [&str; 250] = [
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "XK", "YE", "YT", "ZA", "ZM", "ZW",
];

/// ISO 4217 currency codes (sorted, for binary search).
pub const CURRENCIES: [&str; 155] = [
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD",
    "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD",
    "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ",
    "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD",
    "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR",
    "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN",
    "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR",
    "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB",
    "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS",
    "VES", "VND", "VUV", "WST", "XAF", "XCD", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWL",
];

/// Countries whose events need a consent signal: the EU, the other EEA states and the UK.
const CONSENT_COUNTRIES: [&str; 31] = [
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV",
    "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE", "IS", "LI", "NO", "GB",
];

/// Two-letter code sets as bitmaps: bit `second - 'A'` of entry `first - 'A'` (a lookup on every
/// event's path, without string compares).
const fn code_table(codes: &[&str]) -> [u32; 26] {
    let mut t = [0u32; 26];
    let mut i = 0;
    while i < codes.len() {
        let b = codes[i].as_bytes();
        t[(b[0] - b'A') as usize] |= 1 << (b[1] - b'A');
        i += 1;
    }
    t
}

const ISO_TABLE: [u32; 26] = code_table(&ISO_COUNTRIES);
const CONSENT_TABLE: [u32; 26] = code_table(&CONSENT_COUNTRIES);

/// `c`: two ASCII uppercase letters.
fn in_table(t: &[u32; 26], c: [u8; 2]) -> bool {
    let (a, b) = (c[0].wrapping_sub(b'A'), c[1].wrapping_sub(b'A'));
    a < 26 && b < 26 && t[a as usize] & (1 << b) != 0
}

/// A country code as sent: two letters, or `OTHER` / `OTHER_EEA`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Country {
    Iso([u8; 2]),
    Other,
    OtherEea,
}

impl Country {
    pub fn as_str(&self) -> &str {
        match self {
            // Only ASCII uppercase letters are stored.
            Country::Iso(c) => std::str::from_utf8(c).unwrap_or("ZZ"),
            Country::Other => "OTHER",
            Country::OtherEea => "OTHER_EEA",
        }
    }

    /// EU, EEA or UK: events need a consent signal.
    pub fn needs_consent(&self) -> bool {
        match self {
            Country::Iso(c) => in_table(&CONSENT_TABLE, *c),
            Country::Other => false,
            Country::OtherEea => true,
        }
    }

    /// `US`, `us`, a locale such as `en-US` / `en_US` / `zh-Hant-TW`, `UK` (→ `GB`), `OTHER`,
    /// `OTHER_EEA`, `ZZ`.
    pub fn parse(s: &str) -> Option<Country> {
        let s = s.trim();
        let iso = |mut c: [u8; 2]| {
            c = c.map(|b| b.to_ascii_uppercase());
            if &c == b"UK" {
                c = *b"GB";
            }
            (&c == b"ZZ" || in_table(&ISO_TABLE, c)).then_some(Country::Iso(c))
        };
        if let &[a, b] = s.as_bytes() {
            return iso([a, b]);
        }
        if s.eq_ignore_ascii_case("OTHER") {
            return Some(Country::Other);
        }
        if s.eq_ignore_ascii_case("OTHER_EEA") {
            return Some(Country::OtherEea);
        }
        // A bare code, or the region subtag of a locale (the last two-letter part).
        let region = s
            .split(['-', '_'])
            .rev()
            .find(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_alphabetic()))?;
        if s.len() != 2
            && s.split(['-', '_'])
                .next()
                .is_some_and(|lang| lang.len() < 2 || lang.len() > 3)
        {
            return None;
        }
        iso([region.as_bytes()[0], region.as_bytes()[1]])
    }
}

/// Consent as sent on the wire.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ConsentOut<'b> {
    pub ip_address: Option<&'b str>,
    pub amzn_user_data: Option<&'static str>,
    pub amzn_ad_storage: Option<&'static str>,
    pub tcf: Option<&'b str>,
    pub gpp: Option<&'b str>,
}

impl ConsentOut<'_> {
    fn is_empty(&self) -> bool {
        self.ip_address.is_none()
            && self.amzn_user_data.is_none()
            && self.amzn_ad_storage.is_none()
            && self.tcf.is_none()
            && self.gpp.is_none()
    }

    /// Any of `geo`, `amazonConsent.amznUserData`, `tcf`, `gpp`.
    pub fn has_signal(&self) -> bool {
        self.ip_address.is_some()
            || self.amzn_user_data.is_some()
            || self.tcf.is_some()
            || self.gpp.is_some()
    }
}

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

struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, reason: Reason, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
            reason,
        });
    }

    /// Unwraps a lenient field: `Err(())` when it had the wrong JSON type (reported here).
    /// `field` is formatted only when there is an error (no allocation on the good path).
    fn got<'b, T>(
        &mut self,
        field: impl std::fmt::Display,
        v: Option<&'b Got<T>>,
        expected: &str,
    ) -> Result<Option<&'b T>, ()> {
        match v {
            None => Ok(None),
            Some(Got::Ok(t)) => Ok(Some(t)),
            Some(Got::Wrong(found)) => {
                let field = field.to_string();
                let message = format!("{field}: wrong type ({found}), expected {expected}");
                self.push(field, Reason::Malformed, message);
                Err(())
            }
        }
    }
}

const A_STRING: &str = "a string";

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

const MATCH_KEYS_SHAPE: &str =
    "a list of {\"type\",\"values\"} or an object such as {\"email\": \"…\"}";

fn one_of(s: &str, allowed: &[&'static str]) -> Option<&'static str> {
    let s = s.trim();
    allowed.iter().copied().find(|a| a.eq_ignore_ascii_case(s))
}

/// At most 40 characters of a bad value for an error message (never a match-key value: those
/// are personal data and are never echoed).
fn short(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// ISO 8601 / RFC 3339 with an offset (`Z`, `+02:00`, `+0200`), `T` or space between date and
/// time, optional fraction → epoch milliseconds (UTC). The common shape is parsed by hand (it is
/// on every event's path); anything else goes through chrono.
pub fn parse_time_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    fast_time_ms(s.as_bytes()).or_else(|| parse_time(s).map(|t| t.timestamp_millis()))
}

fn fast_time_ms(b: &[u8]) -> Option<i64> {
    fn num(b: &[u8]) -> Option<i64> {
        let mut v = 0i64;
        for &c in b {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(c - b'0');
        }
        Some(v)
    }
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?);
    let (h, mi, sec) = (num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?);
    let days_in_month = [
        31,
        28 + i64::from(y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)),
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo)
        || d < 1
        || d > days_in_month[(mo - 1) as usize]
        || h > 23
        || mi > 59
        || sec > 59
    {
        return None;
    }
    let mut rest = &b[19..];
    let mut ms = 0i64;
    if let Some((&b'.', frac)) = rest.split_first() {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        for (i, &c) in frac[..n].iter().take(3).enumerate() {
            ms += i64::from(c - b'0') * [100, 10, 1][i];
        }
        rest = &frac[n..];
    }
    let offset_min = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] | [sign @ (b'+' | b'-'), h1, h2, m1, m2] => {
            let oh = num(&[*h1, *h2])?;
            let om = num(&[*m1, *m2])?;
            if oh > 23 || om > 59 {
                return None;
            }
            let v = oh * 60 + om;
            if *sign == b'-' { -v } else { v }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    Some(secs * 1000 + ms)
}

/// The chrono fallback for less common shapes.
pub fn parse_time(s: &str) -> Option<DateTime<FixedOffset>> {
    let s = s.trim();
    DateTime::parse_from_rfc3339(s)
        .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%z"))
        .ok()
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of epoch milliseconds, written without allocating.
pub fn format_time_ms(ms: i64) -> [u8; 24] {
    fn put(out: &mut [u8], mut v: u32) {
        for o in out.iter_mut().rev() {
            *o = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let mut o = *b"0000-00-00T00:00:00.000Z";
    put(&mut o[0..4], y.clamp(0, 9999) as u32);
    put(&mut o[5..7], m);
    put(&mut o[8..10], d);
    put(&mut o[11..13], (in_day / 3_600_000) as u32);
    put(&mut o[14..16], (in_day / 60_000 % 60) as u32);
    put(&mut o[17..19], (in_day / 1000 % 60) as u32);
    put(&mut o[20..23], (in_day % 1000) as u32);
    o
}

/// Checks, normalises and hashes the match keys, writing them into `scratch.keys`.
fn match_keys(keys: Option<&MatchKeysIn<'_>>, scratch: &mut Scratch, errs: &mut Errors) {
    let Some(keys) = keys else {
        errs.push(
            "matchKeys",
            Reason::Missing,
            "matchKeys is required (at least one key such as EMAIL)",
        );
        return;
    };
    let before = errs.0.len();
    let mut acc = KeyAcc {
        n: 0,
        seen: 0,
        given: 0,
    };
    match keys {
        MatchKeysIn::List(list) => {
            for (i, key) in list.iter().enumerate() {
                let (kind, values) = match key {
                    Got::Ok((k, v)) => (k, v),
                    Got::Wrong(found) => {
                        errs.push(
                            format!("matchKeys[{i}]"),
                            Reason::Malformed,
                            format!("matchKeys[{i}]: wrong type ({found}), expected an object {{\"type\",\"values\"}}"),
                        );
                        continue;
                    }
                };
                let kind =
                    match errs.got(format_args!("matchKeys[{i}].type"), kind.as_ref(), A_STRING) {
                        Err(()) => continue,
                        Ok(None) => {
                            errs.push(
                                format!("matchKeys[{i}].type"),
                                Reason::Missing,
                                "type is required",
                            );
                            continue;
                        }
                        Ok(Some(k)) => match KeyType::parse(k.as_str().trim()) {
                            Some(k) => k,
                            None => {
                                errs.push(
                                    format!("matchKeys[{i}].type"),
                                    Reason::Invalid,
                                    unknown_type(k.as_str()),
                                );
                                continue;
                            }
                        },
                    };
                let values = match errs.got(
                    format_args!("matchKeys[{i}].values"),
                    values.as_ref(),
                    "a list holding one string",
                ) {
                    Err(()) => continue,
                    Ok(None) => {
                        errs.push(
                            format!("matchKeys[{i}].values"),
                            Reason::Missing,
                            "values is required",
                        );
                        continue;
                    }
                    Ok(Some(v)) => v,
                };
                acc.add(
                    kind,
                    values,
                    format_args!("matchKeys[{i}]"),
                    true,
                    scratch,
                    errs,
                );
            }
        }
        MatchKeysIn::Flat(map) => {
            for (name, values) in map {
                let Some(kind) = KeyType::parse(name.as_str().trim()) else {
                    errs.push(
                        format!("matchKeys.{}", short(name.as_str())),
                        Reason::Invalid,
                        unknown_type(name.as_str()),
                    );
                    continue;
                };
                let field = format_args!("matchKeys.{}", name.as_str());
                let values = match errs.got(field, Some(values), "a string") {
                    Ok(Some(v)) => v,
                    _ => continue,
                };
                acc.add(kind, values, field, false, scratch, errs);
            }
        }
    }
    if acc.given > MAX_MATCH_KEYS {
        errs.push(
            "matchKeys",
            Reason::Invalid,
            format!("at most {MAX_MATCH_KEYS} match keys; got {}", acc.given),
        );
    } else if acc.n == 0 && errs.0.len() == before {
        errs.push(
            "matchKeys",
            Reason::NoMatchKey,
            "no usable match key: every key was empty or normalised to nothing",
        );
    }
}

/// Match keys gathered so far.
struct KeyAcc {
    n: usize,
    seen: u16,
    given: usize,
}

impl KeyAcc {
    /// `at`: the key's path; `list`: Amazon's form (sub-fields `.type`, `.values[0]`).
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        kind: KeyType,
        values: &ValuesIn<'_>,
        at: std::fmt::Arguments<'_>,
        list: bool,
        scratch: &mut Scratch,
        errs: &mut Errors,
    ) {
        self.given += 1;
        let sub = |s: &str| {
            if list {
                format!("{at}.{s}")
            } else {
                at.to_string()
            }
        };
        if self.seen & kind.bit() != 0 {
            errs.push(
                sub("type"),
                Reason::Invalid,
                format!(
                    "{} is given more than once; one value per type",
                    kind.as_str()
                ),
            );
            return;
        }
        self.seen |= kind.bit();
        if values.count > 1 {
            errs.push(
                sub("values"),
                Reason::Invalid,
                format!(
                    "{} has {} values; one value per type",
                    kind.as_str(),
                    values.count
                ),
            );
            return;
        }
        let v = match values.first.as_ref() {
            None => return, // an empty list normalises to nothing
            Some(Got::Wrong(found)) => {
                let f = sub("values[0]");
                errs.push(
                    f.clone(),
                    Reason::Malformed,
                    format!("{f}: wrong type ({found}), expected a string"),
                );
                return;
            }
            Some(Got::Ok(v)) => v,
        };
        if let Some(kv) = scratch.hasher.key_value(kind, v.as_str())
            && self.n < MAX_MATCH_KEYS
        {
            write_match_key(&mut scratch.keys, kind, &kv);
            self.n += 1;
        }
    }
}

fn unknown_type(t: &str) -> String {
    format!(
        "unknown match key type {:?}; use one of EMAIL, PHONE, FIRST_NAME, LAST_NAME, ADDRESS, CITY, STATE, POSTAL, MAID, RAMP_ID, MATCH_ID, REAL_ID, MERKLE_ID, KANTAR_ID, FIP",
        short(t)
    )
}

fn consent<'b>(c: &'b ConsentIn<'_>, errs: &mut Errors) -> ConsentOut<'b> {
    let mut out = ConsentOut::default();
    let geo = errs
        .got("consent.geo", c.geo.as_ref(), "an object")
        .ok()
        .flatten();
    if let Ok(Some(ip)) = errs.got(
        "consent.geo.ipAddress",
        geo.and_then(|g| g.ip_address.as_ref()),
        A_STRING,
    ) {
        let ip = ip.as_str().trim();
        if ip.parse::<std::net::IpAddr>().is_ok() {
            out.ip_address = Some(ip);
        } else if !ip.is_empty() {
            errs.push(
                "consent.geo.ipAddress",
                Reason::Invalid,
                "consent.geo.ipAddress is not an IPv4 or IPv6 address",
            );
        }
    }
    if let Ok(Some(a)) = errs.got(
        "consent.amazonConsent",
        c.amazon_consent.as_ref(),
        "an object",
    ) {
        const FLAG: &str = "\"GRANTED\", \"DENIED\" or a boolean";
        let user = "consent.amazonConsent.amznUserData";
        let storage = "consent.amazonConsent.amznAdStorage";
        if let Ok(Some(f)) = errs.got(user, a.amzn_user_data.as_ref(), FLAG) {
            out.amzn_user_data = flag(f, user, errs);
        }
        if let Ok(Some(f)) = errs.got(storage, a.amzn_ad_storage.as_ref(), FLAG) {
            out.amzn_ad_storage = flag(f, storage, errs);
        }
        if out.amzn_ad_storage.is_some()
            && out.amzn_user_data.is_none()
            && a.amzn_user_data.is_none()
        {
            errs.push(
                user,
                Reason::Missing,
                "consent.amazonConsent needs amznUserData when amznAdStorage is given",
            );
        }
    }
    out.tcf = errs
        .got("consent.tcf", c.tcf.as_ref(), A_STRING)
        .ok()
        .flatten()
        .map(|t| t.as_str().trim())
        .filter(|t| !t.is_empty());
    out.gpp = errs
        .got("consent.gpp", c.gpp.as_ref(), A_STRING)
        .ok()
        .flatten()
        .map(|t| t.as_str().trim())
        .filter(|t| !t.is_empty());
    out
}

/// `GRANTED`/`DENIED`, booleans, and the truthy strings tag managers send.
fn flag(f: &Flag<'_>, field: &str, errs: &mut Errors) -> Option<&'static str> {
    let granted = match f {
        Flag::Bool(b) => Some(*b),
        Flag::Text(t) => {
            let t = t.as_str().trim();
            if ["granted", "true", "yes", "1", "on"]
                .iter()
                .any(|g| g.eq_ignore_ascii_case(t))
            {
                Some(true)
            } else if ["denied", "false", "no", "0", "off"]
                .iter()
                .any(|g| g.eq_ignore_ascii_case(t))
            {
                Some(false)
            } else {
                None
            }
        }
    };
    match granted {
        Some(true) => Some("GRANTED"),
        Some(false) => Some("DENIED"),
        None => {
            errs.push(
                field,
                Reason::Invalid,
                format!("{field} must be GRANTED or DENIED"),
            );
            None
        }
    }
}

/// `customData[i]`, formatted lazily.
#[derive(Clone, Copy)]
struct CustomAt(usize);

impl std::fmt::Display for CustomAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "customData[{}]", self.0)
    }
}

/// Checks the custom data and writes its entries into `out`.
fn custom_data(items: &[Got<CustomDataIn<'_>>], out: &mut Vec<u8>, errs: &mut Errors) {
    if items.len() > MAX_CUSTOM_DATA {
        errs.push(
            "customData",
            Reason::Invalid,
            format!(
                "at most {MAX_CUSTOM_DATA} customData entries; got {}",
                items.len()
            ),
        );
        return;
    }
    let word = |s: &str| {
        !s.is_empty() && s.len() <= 256 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    for (i, item) in items.iter().enumerate() {
        // Paths are formatted only on errors.
        let at = CustomAt(i);
        let Ok(Some(item)) = errs.got(at, Some(item), "an object {\"name\",\"value\"}") else {
            continue;
        };
        let name = errs
            .got(format_args!("{at}.name"), item.name.as_ref(), A_STRING)
            .map(|n| n.map_or("", Text::as_str));
        let value = errs
            .got(
                format_args!("{at}.value"),
                item.value.as_ref(),
                "a string or an integer",
            )
            .map(|v| v.map_or("", |v| v.as_str()));
        if let Ok(n) = name
            && !word(n)
        {
            errs.push(
                format!("{at}.name"),
                Reason::Invalid,
                "name must be letters, digits or _ (at most 256)",
            );
        }
        if let Ok(v) = value
            && !word(v)
        {
            errs.push(
                format!("{at}.value"),
                Reason::Invalid,
                "value must be letters, digits or _ (send 49.99 as 4999)",
            );
        }
        let data_type = match errs.got(
            format_args!("{at}.dataType"),
            item.data_type.as_ref(),
            A_STRING,
        ) {
            Ok(Some(t)) => {
                let t = one_of(t.as_str(), &["STRING", "INTEGER", "TIMESTAMP"]);
                if t.is_none() {
                    errs.push(
                        format!("{at}.dataType"),
                        Reason::Invalid,
                        "dataType must be STRING, INTEGER or TIMESTAMP",
                    );
                }
                t
            }
            _ => None,
        };
        if let (Ok(name), Ok(value)) = (name, value) {
            write_custom_entry(out, name, value, data_type);
        }
    }
}
