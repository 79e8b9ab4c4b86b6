//! What a purchase is worth: `value` (any event), and `currencyCode` and `unitsSold`, which mean
//! something only for purchases and are dropped (unchecked) otherwise.

use super::codes::CURRENCIES;
use super::errors::{A_STRING, Errors};
use crate::domain::conversion::Reason;
use crate::domain::conversion::input::InEvent;

/// The checked amounts of an event (`None` where absent, rejected or dropped).
pub(super) struct Amounts {
    pub value: Option<f64>,
    pub currency_code: Option<[u8; 3]>,
    pub units_sold: Option<i32>,
}

/// Checks `value`, `currencyCode` and `unitsSold`, in that order.
pub(super) fn amounts(ev: &InEvent<'_>, is_purchase: bool, errs: &mut Errors) -> Amounts {
    let value = match errs.got("value", ev.value.as_ref(), "a number") {
        Ok(Some(v)) => value(v.0, is_purchase, errs),
        _ => None,
    };
    // currencyCode and unitsSold mean something only for purchases; they are dropped otherwise.
    let currency_code = match errs.got("currencyCode", ev.currency_code.as_ref(), A_STRING) {
        Ok(Some(c)) if is_purchase => currency(c.as_str(), errs),
        _ => None,
    };
    let units_sold = match errs.got("unitsSold", ev.units_sold.as_ref(), "a number") {
        Ok(Some(u)) if is_purchase => units(u.0, errs),
        _ => None,
    };
    Amounts {
        value,
        currency_code,
        units_sold,
    }
}

/// A finite amount with at most two decimals (not negative for a purchase), rounded to cents.
fn value(v: f64, is_purchase: bool, errs: &mut Errors) -> Option<f64> {
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

/// An ISO 4217 code, any case, uppercased.
fn currency(c: &str, errs: &mut Errors) -> Option<[u8; 3]> {
    let b = c.trim().as_bytes();
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

/// A whole number of at least 1.
fn units(u: f64, errs: &mut Errors) -> Option<i32> {
    if u.fract() == 0.0 && u >= 1.0 && u <= i32::MAX as f64 {
        Some(u as i32)
    } else {
        errs.push(
            "unitsSold",
            Reason::Invalid,
            "unitsSold must be a whole number of at least 1",
        );
        None
    }
}
