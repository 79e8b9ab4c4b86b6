//! The mapping bodies: `mappings[i]` of `POST /destinations`, and the body of
//! `POST /destinations/{id}/mappings` (`{"mappings":[…]}` or one mapping's fields), as serde
//! structs checked like the others (`super::requests`).

use super::fields::{array, parse_fees};
use super::requests::{from_object, given, refuse_unknown};
use crate::amazon::AudienceFee;
use crate::domain::segment::check_segment_id;
use crate::export::errors::invalid;
use crate::http::ApiResult;
use serde::Deserialize;
use serde_json::{Map, Value};

/// `POST /destinations/{id}/mappings`' body: `{"mappings":[…]}`, or one mapping's fields.
#[derive(Deserialize)]
pub(super) struct AddMappingsBody {
    #[serde(default, deserialize_with = "given")]
    mappings: Option<Value>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

impl AddMappingsBody {
    /// The mappings asked for, checked against the advertiser's `currency`.
    pub(super) fn check(self, currency: &str) -> ApiResult<Vec<MappingRequest>> {
        let reqs = match &self.mappings {
            Some(list) => {
                refuse_unknown(&self.other, "", " (give either mappings or one segmentId)")?;
                parse_mapping_requests(list, "mappings", currency)?
            }
            None => {
                let one: MappingBody = from_object(Value::Object(self.other))?;
                vec![one.check("", currency)?]
            }
        };
        if reqs.is_empty() {
            return Err(invalid(
                "mappings",
                "mappings must list at least one segment",
            ));
        }
        Ok(reqs)
    }
}

/// One mapping as given in `mappings[i]` (or the body of `POST …/mappings`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MappingBody {
    #[serde(default, deserialize_with = "given")]
    segment_id: Option<Value>,
    #[serde(default, deserialize_with = "given")]
    audience_fees: Option<Value>,
    #[serde(default, deserialize_with = "given")]
    audience_id: Option<Value>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// A checked mapping request.
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
        dot(&self.field)
    }

    /// The error field of this mapping's segment id.
    pub(super) fn segment_field(&self) -> String {
        format!("{}segmentId", self.dot())
    }
}

fn dot(prefix: &str) -> String {
    if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}.")
    }
}

impl MappingBody {
    /// Checks the mapping at `prefix` (`mappings[i]`, or "" for a single-object body).
    fn check(self, prefix: &str, currency: &str) -> ApiResult<MappingRequest> {
        let dot = dot(prefix);
        let sf = format!("{dot}segmentId");
        let segment_id = self
            .segment_id
            .as_ref()
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(&sf, format!("{sf} is required (a string)")))?;
        if let Err(why) = check_segment_id(segment_id) {
            return Err(invalid(&sf, format!("{sf} {why}")));
        }
        let fees = match &self.audience_fees {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_fees(v, &format!("{dot}audienceFees"), currency)?),
        };
        let audience_id = crate::export::adopt::parse_audience_id(
            self.audience_id.as_ref(),
            &format!("{dot}audienceId"),
        )?;
        if audience_id.is_some() && fees.is_some() {
            return Err(invalid(
                &format!("{dot}audienceFees"),
                "an adopted audience keeps its own fees: give audienceFees later with PUT …/fees",
            ));
        }
        refuse_unknown(&self.other, &dot, "")?;
        Ok(MappingRequest {
            segment_id: segment_id.to_string(),
            fees,
            audience_id,
            field: prefix.to_string(),
        })
    }
}

/// `mappings`: a list of mapping objects, no segment twice.
pub(super) fn parse_mapping_requests(
    v: &Value,
    field: &str,
    currency: &str,
) -> ApiResult<Vec<MappingRequest>> {
    let items = array(v, field)?;
    let mut out: Vec<MappingRequest> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if !item.is_object() {
            return Err(invalid(
                &f,
                format!("{f} must be an object {{segmentId, audienceFees?}}"),
            ));
        }
        let m: MappingBody = from_object(item.clone())?;
        out.push(m.check(&f, currency)?);
        if out[..i].iter().any(|m| m.segment_id == out[i].segment_id) {
            return Err(invalid(
                &format!("{f}.segmentId"),
                format!("segment {} is listed twice", out[i].segment_id),
            ));
        }
    }
    Ok(out)
}
