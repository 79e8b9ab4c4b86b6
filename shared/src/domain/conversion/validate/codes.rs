//! The code lists events are checked against (conversion types, event sources, ISO 3166
//! countries, ISO 4217 currencies, the countries that need consent) and [`Country`], with the
//! `countryCode` check.

use super::errors::{A_STRING, Errors, short};
use crate::domain::conversion::Reason;
use crate::domain::conversion::input::InEvent;

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

/// Checks `countryCode`: required, an ISO 3166 code or a locale.
pub(super) fn country(ev: &InEvent<'_>, errs: &mut Errors) -> Option<Country> {
    match errs.got("countryCode", ev.country_code.as_ref(), A_STRING) {
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
    }
}
