//! The checks of single fields of the metadata bodies: each error names its field (with indices)
//! and says what is expected.

use super::requests::{from_object, given};
use crate::amazon::AudienceFee;
use crate::domain::export_controls::{ExportControl, ExportLabel};
use crate::domain::segment::check_segment_id;
use crate::export::errors::invalid;
use crate::http::ApiResult;
use serde::Deserialize;
use serde_json::Value;

/// Amazon's audience `ttl` ceiling, seconds (~397 days).
pub const MAX_TTL_SECONDS: u64 = 34_300_800;

/// The audience `ttl` when a destination does not say (30 days, Amazon's guide example).
pub const DEFAULT_TTL_SECONDS: u64 = 2_592_000;

/// Amazon's audience description limit.
pub(super) const MAX_AUDIENCE_DESCRIPTION: usize = 1000;

/// Longest segment and destination name.
pub(super) const MAX_NAME_CHARS: usize = 255;

/// Segment ids follow one rule everywhere ([`crate::domain::segment::check_segment_id`]).
pub fn valid_segment_id(id: &str) -> bool {
    check_segment_id(id).is_ok()
}

/// A required string field, trimmed: not empty, at most `max` characters.
pub(super) fn req_string(v: Option<&Value>, field: &str, max: usize) -> ApiResult<String> {
    match v {
        None | Some(Value::Null) => Err(invalid(field, format!("{field} is required"))),
        Some(Value::String(s)) => {
            let t = s.trim();
            if t.is_empty() {
                Err(invalid(field, format!("{field} must not be empty")))
            } else if t.chars().count() > max {
                Err(invalid(
                    field,
                    format!("{field} is longer than {max} characters"),
                ))
            } else {
                Ok(t.to_string())
            }
        }
        Some(_) => Err(invalid(field, format!("{field} must be a string"))),
    }
}

/// An optional string field (`null` counts as absent), trimmed, at most `max` characters.
pub(super) fn opt_string(v: Option<&Value>, field: &str, max: usize) -> ApiResult<Option<String>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() > max => Err(invalid(
            field,
            format!("{field} is longer than {max} characters"),
        )),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(_) => Err(invalid(field, format!("{field} must be a string"))),
    }
}

/// The field as an array.
pub(super) fn array<'a>(v: &'a Value, field: &str) -> ApiResult<&'a Vec<Value>> {
    v.as_array()
        .ok_or_else(|| invalid(field, format!("{field} must be an array")))
}

/// A list of enum names (`null` or absent: empty), deduplicated in order.
fn parse_enum_list<T: Copy + PartialEq>(
    v: Option<&Value>,
    field: &str,
    parse: impl Fn(&str) -> Option<T>,
    allowed: &[&str],
) -> ApiResult<Vec<T>> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (i, item) in array(v, field)?.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let parsed = item
            .as_str()
            .and_then(&parse)
            .ok_or_else(|| invalid(&f, format!("{f} must be one of {}", allowed.join(", "))))?;
        if !out.contains(&parsed) {
            out.push(parsed);
        }
    }
    Ok(out)
}

pub(super) fn parse_labels(v: Option<&Value>) -> ApiResult<Vec<ExportLabel>> {
    let allowed: Vec<&str> = ExportLabel::ALL.iter().map(|l| l.as_str()).collect();
    parse_enum_list(v, "dataExportLabels", ExportLabel::parse, &allowed)
}

pub(super) fn parse_controls(v: Option<&Value>) -> ApiResult<Vec<ExportControl>> {
    let allowed: Vec<&str> = ExportControl::ALL.iter().map(|c| c.as_str()).collect();
    parse_enum_list(v, "dataExportControls", ExportControl::parse, &allowed)
}

/// `audienceFees`: `[{"cpmCents": <non-negative integer>, "currency": <the advertiser's>}]`,
/// at most one fee (one currency is allowed, so a second entry could only contradict the first).
pub fn parse_fees(
    v: &Value,
    field: &str,
    advertiser_currency: &str,
) -> ApiResult<Vec<AudienceFee>> {
    let items = array(v, field)?;
    if items.len() > 1 {
        return Err(invalid(
            &format!("{field}[1]"),
            format!(
                "{field} holds at most one fee (in the advertiser's currency, {advertiser_currency})"
            ),
        ));
    }
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if !item.is_object() {
            return Err(invalid(
                &f,
                format!("{f} must be an object {{cpmCents, currency}}"),
            ));
        }
        let fee: FeeBody = from_object(item.clone())?;
        out.push(fee.check(&f, advertiser_currency)?);
    }
    Ok(out)
}

/// One entry of `audienceFees`, as given (other fields are ignored).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FeeBody {
    #[serde(default, deserialize_with = "given")]
    cpm_cents: Option<Value>,
    #[serde(default, deserialize_with = "given")]
    currency: Option<Value>,
}

impl FeeBody {
    /// The fee of entry `f`: a `cpmCents` that fits a `u32`, in the advertiser's currency.
    fn check(self, f: &str, advertiser_currency: &str) -> ApiResult<AudienceFee> {
        let cf = format!("{f}.cpmCents");
        let cpm = self
            .cpm_cents
            .ok_or_else(|| invalid(&cf, format!("{cf} is required")))?;
        let cpm_cents = cpm
            .as_u64()
            .and_then(|c| u32::try_from(c).ok())
            .ok_or_else(|| {
                invalid(
                    &cf,
                    format!("{cf} must be a non-negative integer (cents per thousand)"),
                )
            })?;
        let kf = format!("{f}.currency");
        let currency = self
            .currency
            .as_ref()
            .and_then(Value::as_str)
            .ok_or_else(|| {
                invalid(
                    &kf,
                    format!("{kf} is required (a string such as {advertiser_currency})"),
                )
            })?;
        if !currency.eq_ignore_ascii_case(advertiser_currency) {
            return Err(invalid(
                &kf,
                format!(
                    "{kf} must be the advertiser's currency {advertiser_currency} (got {currency}); Amazon \
                     only accepts audience fees in the DSP account's currency"
                ),
            ));
        }
        Ok(AudienceFee {
            cpm_cents,
            currency: advertiser_currency.to_ascii_uppercase(),
        })
    }
}

/// `dataSourceCountry`: ISO 3166 alpha-2 codes, at least one, upper-cased and deduplicated.
pub(in crate::export) fn parse_countries(v: &Value) -> ApiResult<Vec<String>> {
    let field = "dataSourceCountry";
    let items = array(v, field)?;
    if items.is_empty() {
        return Err(invalid(
            field,
            "dataSourceCountry must list at least one country",
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let c = item
            .as_str()
            .filter(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()))
            .ok_or_else(|| {
                invalid(
                    &f,
                    format!("{f} must be an ISO 3166 alpha-2 country code such as \"US\""),
                )
            })?
            .to_ascii_uppercase();
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(out)
}

/// `ttlSeconds` (absent or `null`: [`DEFAULT_TTL_SECONDS`]).
pub(super) fn parse_ttl(v: Option<&Value>) -> ApiResult<u64> {
    match v {
        None | Some(Value::Null) => Ok(DEFAULT_TTL_SECONDS),
        Some(v) => v.as_u64().filter(|t| *t <= MAX_TTL_SECONDS).ok_or_else(|| {
            invalid(
                "ttlSeconds",
                format!(
                    "ttlSeconds must be an integer from 0 to {MAX_TTL_SECONDS} (about 397 days)"
                ),
            )
        }),
    }
}

/// The account id as users give it: a decimal string or a JSON integer.
pub(super) fn parse_account_id(v: Option<&Value>) -> ApiResult<String> {
    let field = "accountId";
    let s = match v {
        None | Some(Value::Null) => return Err(invalid(field, "accountId is required")),
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Number(n)) if n.is_u64() => n.to_string(),
        Some(_) => {
            return Err(invalid(
                field,
                "accountId must be the advertiser id as a string of digits",
            ));
        }
    };
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(
            field,
            "accountId must be the advertiser id as a string of digits",
        ));
    }
    Ok(s)
}
