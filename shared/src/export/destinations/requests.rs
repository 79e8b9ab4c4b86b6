//! The request bodies of the metadata routes, as serde structs.
//!
//! Each body is read as given (every known field a raw JSON value, `null` kept apart from an
//! absent field, other fields collected in `other`) and then checked field by field in a fixed
//! order, so that a body with several problems is always answered with the same first one, in
//! the words of [`super::fields`]. A JSON object's keys are sorted (serde_json's `Map`), so "the
//! first unknown field" is the first in key order.

use super::fields::{
    MAX_AUDIENCE_DESCRIPTION, MAX_NAME_CHARS, opt_string, parse_account_id, parse_controls,
    parse_countries, parse_fees, parse_labels, parse_ttl, req_string,
};
use crate::amazon::AudienceFee;
use crate::domain::export_controls::{ExportControl, ExportLabel};
use crate::export::errors::{invalid, not_an_object};
use crate::http::{ApiError, ApiResult, HttpRequest, Kind, parse_json_body};
use crate::store::destinations::{Destination, DestinationStore};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// Largest request body the metadata routes accept.
const MAX_BODY_BYTES: usize = 256 * 1024;

/// A field as given: `None` when absent, else its JSON value, `null` included.
pub(super) fn given<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// A body struct from a JSON object. Every field of these structs takes any JSON value, so this
/// fails only on a struct that does not follow that rule (a 400 then, never a panic).
pub(super) fn from_object<T: DeserializeOwned>(v: Value) -> ApiResult<T> {
    serde_json::from_value(v)
        .map_err(|e| ApiError::new(Kind::BadRequest, "invalid_json", e.to_string()))
}

/// The body as a JSON object (415, 413 and 400 `invalid_json` otherwise).
pub(super) fn body_object(req: &HttpRequest) -> ApiResult<Map<String, Value>> {
    match parse_json_body::<Value>(req, MAX_BODY_BYTES)? {
        Value::Object(m) => Ok(m),
        _ => Err(not_an_object()),
    }
}

/// The body as the struct `T` (see [`body_object`]).
pub(super) fn body<T: DeserializeOwned>(req: &HttpRequest) -> ApiResult<T> {
    from_object(Value::Object(body_object(req)?))
}

/// 400 for the first of `other`'s fields, if any.
pub(super) fn refuse_unknown(
    other: &Map<String, Value>,
    prefix: &str,
    hint: &str,
) -> ApiResult<()> {
    match other.keys().next() {
        Some(k) => Err(invalid(
            &format!("{prefix}{k}"),
            format!("unknown field {prefix}{k}{hint}"),
        )),
        None => Ok(()),
    }
}

/// `PUT /segments/{segmentId}`'s body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SegmentBody {
    #[serde(default, deserialize_with = "given")]
    segment_id: Option<Value>,
    #[serde(default, deserialize_with = "given")]
    name: Option<Value>,
    #[serde(default, deserialize_with = "given")]
    description: Option<Value>,
    #[serde(default, deserialize_with = "given")]
    data_export_controls: Option<Value>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// A checked segment body: name, description, controls.
pub(super) struct SegmentFields {
    pub(super) name: String,
    pub(super) description: String,
    pub(super) controls: Vec<ExportControl>,
}

impl SegmentBody {
    /// Checks the body of segment `segment_id` (the path's).
    pub(super) fn check(self, segment_id: &str) -> ApiResult<SegmentFields> {
        refuse_unknown(&self.other, "", "")?;
        if let Some(id) = &self.segment_id
            && id.as_str() != Some(segment_id)
        {
            return Err(invalid(
                "segmentId",
                "segmentId in the body differs from the one in the path",
            ));
        }
        Ok(SegmentFields {
            name: req_string(self.name.as_ref(), "name", MAX_NAME_CHARS)?,
            description: opt_string(
                self.description.as_ref(),
                "description",
                MAX_AUDIENCE_DESCRIPTION,
            )?
            .unwrap_or_default(),
            controls: parse_controls(self.data_export_controls.as_ref())?,
        })
    }
}

/// `POST /destinations`' body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct NewDestinationBody {
    #[serde(default, deserialize_with = "given")]
    name: Option<Value>,
    #[serde(default, deserialize_with = "given")]
    description: Option<Value>,
    #[serde(default, deserialize_with = "given")]
    account_id: Option<Value>,
    #[serde(default, deserialize_with = "given")]
    data_export_labels: Option<Value>,
    #[serde(default, deserialize_with = "given")]
    data_source_country: Option<Value>,
    #[serde(default, deserialize_with = "given")]
    ttl_seconds: Option<Value>,
    #[serde(default, deserialize_with = "given")]
    mappings: Option<Value>,
    #[serde(flatten)]
    other: Map<String, Value>,
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

impl NewDestinationBody {
    pub(super) fn check(self) -> ApiResult<NewDestination> {
        refuse_unknown(&self.other, "", "")?;
        let name = req_string(self.name.as_ref(), "name", MAX_NAME_CHARS)?;
        let description = opt_string(
            self.description.as_ref(),
            "description",
            MAX_AUDIENCE_DESCRIPTION,
        )?
        .unwrap_or_default();
        let account_id = parse_account_id(self.account_id.as_ref())?;
        let labels = parse_labels(self.data_export_labels.as_ref())?;
        let ttl_seconds = parse_ttl(self.ttl_seconds.as_ref())?;
        let countries = match &self.data_source_country {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_countries(v)?),
        };
        let mappings = self.mappings.unwrap_or(Value::Array(Vec::new()));
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
}

/// `PATCH /destinations/{id}`'s body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PatchBody {
    #[serde(default, deserialize_with = "given")]
    description: Option<Value>,
    #[serde(default, deserialize_with = "given")]
    data_export_labels: Option<Value>,
    /// Fixed at creation: refused unless unchanged.
    #[serde(default, deserialize_with = "given")]
    name: Option<Value>,
    #[serde(default, deserialize_with = "given")]
    destination_id: Option<Value>,
    /// Fixed at creation: always refused.
    #[serde(default, deserialize_with = "given")]
    account_id: Option<Value>,
    #[serde(default, deserialize_with = "given")]
    mappings: Option<Value>,
    /// `ttlSeconds` and `dataSourceCountry` (`crate::export::audience_meta::parse_settings`),
    /// and unknown fields.
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// A checked `PATCH /destinations/{id}` body: the new description and labels.
pub(super) struct DestinationPatch {
    pub(super) description: String,
    pub(super) labels: Vec<ExportLabel>,
}

impl PatchBody {
    /// Checks the body against destination `d`: the first field (in key order) that may not
    /// change or is unknown is refused, then the description and labels are checked.
    pub(super) fn check(self, d: &Destination) -> ApiResult<DestinationPatch> {
        if let Some((_, refused)) = self.refused(d).into_iter().min_by(|a, b| a.0.cmp(&b.0)) {
            return Err(refused);
        }
        let description = opt_string(
            self.description.as_ref(),
            "description",
            MAX_AUDIENCE_DESCRIPTION,
        )?
        .unwrap_or_else(|| d.description.clone());
        let labels = match &self.data_export_labels {
            Some(v) => parse_labels(Some(v))?,
            None => d.data_export_labels.clone(),
        };
        Ok(DestinationPatch {
            description,
            labels,
        })
    }

    /// Every refused field with its answer.
    fn refused(&self, d: &Destination) -> Vec<(String, ApiError)> {
        let fixed = |k: &str, how: &str| {
            let e = invalid(k, format!("{k} of a destination cannot be changed{how}"));
            (k.to_string(), e)
        };
        let mut out: Vec<(String, ApiError)> = self
            .other
            .keys()
            .filter(|k| !matches!(k.as_str(), "ttlSeconds" | "dataSourceCountry"))
            .map(|k| (k.clone(), invalid(k, format!("unknown field {k}"))))
            .collect();
        if let Some(v) = &self.name
            && v.as_str().map(str::trim) != Some(d.name.as_str())
        {
            let e = invalid("name", "the name of a destination cannot be changed");
            out.push(("name".into(), e));
        }
        if let Some(v) = &self.destination_id
            && v.as_str() != Some(d.destination_id.as_str())
        {
            out.push(fixed("destinationId", ""));
        }
        if self.account_id.is_some() {
            out.push(fixed("accountId", ""));
        }
        if self.mappings.is_some() {
            out.push(fixed(
                "mappings",
                " (use POST /destinations/{id}/mappings and DELETE /destinations/{id}/mappings/{segmentId})",
            ));
        }
        out
    }
}

/// `PUT …/fees`' body: `{"audienceFees":[…]}` (an empty list removes the fee).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct FeesBody {
    #[serde(default, deserialize_with = "given")]
    audience_fees: Option<Value>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

impl FeesBody {
    /// The unknown fields are refused before anything is read.
    pub(super) fn check_fields(&self) -> ApiResult<()> {
        refuse_unknown(&self.other, "", "")
    }

    /// The fees, in the advertiser's `currency`.
    pub(super) fn fees(&self, currency: &str) -> ApiResult<Vec<AudienceFee>> {
        let v = self.audience_fees.as_ref().ok_or_else(|| {
            invalid(
                "audienceFees",
                "audienceFees is required (an empty array removes the fee)",
            )
        })?;
        parse_fees(v, "audienceFees", currency)
    }
}
