//! Request bodies of the metadata routes and their checks (each error names its field, with indices).

use crate::amazon::AudienceFee;
use crate::domain::export_controls::{ExportControl, ExportLabel};
use crate::domain::segment::check_segment_id;
use crate::export::errors::{from_answer, invalid, not_an_object};
use crate::http::{ApiResult, HttpRequest, parse_json_body};
use crate::store::destinations::{Destination, DestinationStore};
use serde_json::{Map, Value};

/// Largest request body the metadata routes accept.
pub(super) const MAX_BODY_BYTES: usize = 256 * 1024;

/// Amazon's audience `ttl` ceiling, seconds (~397 days).
pub const MAX_TTL_SECONDS: u64 = 34_300_800;

/// The audience `ttl` when a destination does not say (30 days, Amazon's guide example).
pub const DEFAULT_TTL_SECONDS: u64 = 2_592_000;

/// Amazon's audience description limit.
pub(super) const MAX_AUDIENCE_DESCRIPTION: usize = 1000;

pub(super) const MAX_NAME_CHARS: usize = 255;

/// The body as a JSON object (415, 413 and 400 `invalid_json` otherwise).
pub(super) fn body_object(req: &HttpRequest) -> ApiResult<Map<String, Value>> {
    match parse_json_body::<Value>(req, MAX_BODY_BYTES).map_err(from_answer)? {
        Value::Object(m) => Ok(m),
        _ => Err(not_an_object()),
    }
}

/// Segment ids follow one rule everywhere ([`crate::domain::segment::check_segment_id`]).
pub fn valid_segment_id(id: &str) -> bool {
    check_segment_id(id).is_ok()
}

pub(super) fn req_string(obj: &Map<String, Value>, field: &str, max: usize) -> ApiResult<String> {
    match obj.get(field) {
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

pub(super) fn opt_string(
    obj: &Map<String, Value>,
    field: &str,
    max: usize,
) -> ApiResult<Option<String>> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() > max => Err(invalid(
            field,
            format!("{field} is longer than {max} characters"),
        )),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(_) => Err(invalid(field, format!("{field} must be a string"))),
    }
}

pub(super) fn array<'a>(v: &'a Value, field: &str) -> ApiResult<&'a Vec<Value>> {
    v.as_array()
        .ok_or_else(|| invalid(field, format!("{field} must be an array")))
}

pub(super) fn parse_enum_list<T: Copy + PartialEq>(
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
        let obj = item
            .as_object()
            .ok_or_else(|| invalid(&f, format!("{f} must be an object {{cpmCents, currency}}")))?;
        let cf = format!("{f}.cpmCents");
        let cpm = obj
            .get("cpmCents")
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
        let currency = obj.get("currency").and_then(Value::as_str).ok_or_else(|| {
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
        out.push(AudienceFee {
            cpm_cents,
            currency: advertiser_currency.to_ascii_uppercase(),
        });
    }
    Ok(out)
}

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

/// A mapping request as given in `mappings[i]` (or the body of `POST …/mappings`).
pub(super) struct MappingRequest {
    pub(super) segment_id: String,
    pub(super) fees: Option<Vec<AudienceFee>>,
    /// An existing audience to adopt (`crate::export::adopt`).
    pub(super) audience_id: Option<i64>,
    /// `mappings[i]` (or "" for a single-object body), for error fields.
    pub(super) field: String,
}

impl MappingRequest {
    /// The prefix of this mapping's error fields: `mappings[i].`, or "" for a single-object body.
    pub(super) fn dot(&self) -> String {
        if self.field.is_empty() {
            String::new()
        } else {
            format!("{}.", self.field)
        }
    }

    /// The error field of this mapping's segment id.
    pub(super) fn segment_field(&self) -> String {
        format!("{}segmentId", self.dot())
    }
}

pub(super) fn parse_mapping_requests(
    v: &Value,
    field: &str,
    currency: &str,
) -> ApiResult<Vec<MappingRequest>> {
    let items = array(v, field)?;
    let mut out: Vec<MappingRequest> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let obj = item.as_object().ok_or_else(|| {
            invalid(
                &f,
                format!("{f} must be an object {{segmentId, audienceFees?}}"),
            )
        })?;
        out.push(parse_mapping_object(obj, &f, currency)?);
        if out[..i].iter().any(|m| m.segment_id == out[i].segment_id) {
            return Err(invalid(
                &format!("{f}.segmentId"),
                format!("segment {} is listed twice", out[i].segment_id),
            ));
        }
    }
    Ok(out)
}

pub(super) fn parse_mapping_object(
    obj: &Map<String, Value>,
    prefix: &str,
    currency: &str,
) -> ApiResult<MappingRequest> {
    let dot = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}.")
    };
    let sf = format!("{dot}segmentId");
    let segment_id = obj
        .get("segmentId")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(&sf, format!("{sf} is required (a string)")))?;
    if let Err(why) = check_segment_id(segment_id) {
        return Err(invalid(&sf, format!("{sf} {why}")));
    }
    let fees = match obj.get("audienceFees") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_fees(v, &format!("{dot}audienceFees"), currency)?),
    };
    let audience_id = crate::export::adopt::parse_audience_id(
        obj.get("audienceId"),
        &format!("{dot}audienceId"),
    )?;
    if audience_id.is_some() && fees.is_some() {
        return Err(invalid(
            &format!("{dot}audienceFees"),
            "an adopted audience keeps its own fees: give audienceFees later with PUT …/fees",
        ));
    }
    for k in obj.keys() {
        if k != "segmentId" && k != "audienceFees" && k != "audienceId" {
            return Err(invalid(
                &format!("{dot}{k}"),
                format!("unknown field {dot}{k}"),
            ));
        }
    }
    Ok(MappingRequest {
        segment_id: segment_id.to_string(),
        fees,
        audience_id,
        field: prefix.to_string(),
    })
}

/// A checked `POST /destinations` body; its `mappings` are checked once the account (and so the
/// fee currency) is known.
pub(super) struct NewDestination {
    pub(super) name: String,
    pub(super) description: String,
    pub(super) account_id: String,
    pub(super) labels: Vec<ExportLabel>,
    pub(super) ttl_seconds: u64,
    pub(super) countries: Option<Vec<String>>,
    pub(super) mappings: Value,
}

/// Checks a `POST /destinations` body, field by field in a fixed order.
pub(super) fn parse_new_destination(obj: &Map<String, Value>) -> ApiResult<NewDestination> {
    const KNOWN: [&str; 7] = [
        "name",
        "description",
        "accountId",
        "dataExportLabels",
        "dataSourceCountry",
        "ttlSeconds",
        "mappings",
    ];
    if let Some(k) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(invalid(k, format!("unknown field {k}")));
    }
    let name = req_string(obj, "name", MAX_NAME_CHARS)?;
    let description = opt_string(obj, "description", MAX_AUDIENCE_DESCRIPTION)?.unwrap_or_default();
    let account_id = parse_account_id(obj.get("accountId"))?;
    let labels = parse_labels(obj.get("dataExportLabels"))?;
    let ttl_seconds = parse_ttl(obj.get("ttlSeconds"))?;
    let countries = match obj.get("dataSourceCountry") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_countries(v)?),
    };
    let mappings = obj
        .get("mappings")
        .cloned()
        .unwrap_or(Value::Array(Vec::new()));
    if let Some(a) = mappings.as_array()
        && a.len() > DestinationStore::MAX_MAPPINGS_PER_CREATE
    {
        return Err(invalid(
            "mappings",
            format!(
                "at most {} mappings when creating a destination; add more with POST /destinations/{{id}}/mappings",
                DestinationStore::MAX_MAPPINGS_PER_CREATE
            ),
        ));
    }
    Ok(NewDestination {
        name,
        description,
        account_id,
        labels,
        ttl_seconds,
        countries,
        mappings,
    })
}

/// The fields of a `PATCH /destinations/{id}` body: the first one (in key order) that may not
/// change, or is unknown, is refused.
pub(super) fn check_patch_fields(obj: &Map<String, Value>, d: &Destination) -> ApiResult<()> {
    let id = d.destination_id.as_str();
    for (k, v) in obj {
        match k.as_str() {
            "description" | "dataExportLabels" | "ttlSeconds" | "dataSourceCountry" => {}
            "name" => {
                if v.as_str().map(str::trim) != Some(d.name.as_str()) {
                    return Err(invalid(
                        "name",
                        "the name of a destination cannot be changed",
                    ));
                }
            }
            "destinationId" if v.as_str() == Some(id) => {}
            "accountId" | "mappings" | "destinationId" => {
                let how = if k == "mappings" {
                    " (use POST /destinations/{id}/mappings and DELETE /destinations/{id}/mappings/{segmentId})"
                } else {
                    ""
                };
                return Err(invalid(
                    k,
                    format!("{k} of a destination cannot be changed{how}"),
                ));
            }
            _ => return Err(invalid(k, format!("unknown field {k}"))),
        }
    }
    Ok(())
}
