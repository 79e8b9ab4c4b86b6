//! What the event is: `name`, `eventType`, `eventActionSource`, `eventIngestionMethod` and
//! `dataSetName` (each read at the top level or, with the Events API's names, inside
//! `eventDescription`; the top level wins), and its `clientDedupeId`.

use super::codes::{CONVERSION_TYPES, EVENT_SOURCES};
use super::errors::{A_STRING, Errors, one_of, short};
use super::{MAX_ID_CHARS, MAX_NAME_CHARS};
use crate::domain::conversion::Reason;
use crate::domain::conversion::input::{Got, InEvent, Text};

/// The description fields of a checked event (`""` where a field was rejected).
pub(super) struct Described<'b> {
    pub name: &'b str,
    pub conversion_type: &'static str,
    pub event_source: &'static str,
    pub data_set_name: Option<&'b str>,
}

/// A text field: `Err(())` when either form had the wrong JSON type (reported), else the
/// top-level value or, when absent, the nested one.
fn text<'b>(
    errs: &mut Errors,
    field: &str,
    top: Option<&'b Got<Text<'b>>>,
    nested_field: &str,
    nested: Option<&'b Got<Text<'b>>>,
) -> Result<Option<&'b str>, ()> {
    let top = errs.got(field, top, A_STRING)?;
    let nested = errs.got(nested_field, nested, A_STRING)?;
    Ok(top.or(nested).map(Text::as_str))
}

/// Checks the description fields, in this order: `eventDescription`, `name`, `eventType`,
/// `eventActionSource`, `eventIngestionMethod`, `dataSetName`.
pub(super) fn description<'b>(ev: &'b InEvent<'_>, errs: &mut Errors) -> Described<'b> {
    let desc = errs
        .got(
            "eventDescription",
            ev.event_description.as_ref(),
            "an object",
        )
        .ok()
        .flatten();
    let name = name(
        text(
            errs,
            "name",
            ev.name.as_ref(),
            "eventDescription.name",
            desc.and_then(|d| d.name.as_ref()),
        ),
        errs,
    );
    let conversion_type = conversion_type(
        text(
            errs,
            "eventType",
            ev.event_type.as_ref(),
            "eventDescription.conversionType",
            desc.and_then(|d| d.conversion_type.as_ref()),
        ),
        errs,
    );
    let event_source = event_source(
        text(
            errs,
            "eventActionSource",
            ev.event_action_source.as_ref(),
            "eventDescription.eventSource",
            desc.and_then(|d| d.event_source.as_ref()),
        ),
        errs,
    );
    if let Ok(Some(m)) = text(
        errs,
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
        errs,
        "dataSetName",
        ev.data_set_name.as_ref(),
        "eventDescription.dataSetName",
        desc.and_then(|d| d.data_set_name.as_ref()),
    )
    .ok()
    .flatten();
    if let Some(d) = data_set_name {
        data_set(d, errs);
    }
    Described {
        name,
        conversion_type,
        event_source,
        data_set_name,
    }
}

fn name<'b>(read: Result<Option<&'b str>, ()>, errs: &mut Errors) -> &'b str {
    match read {
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
    }
}

fn conversion_type(read: Result<Option<&str>, ()>, errs: &mut Errors) -> &'static str {
    match read {
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
    }
}

fn event_source(read: Result<Option<&str>, ()>, errs: &mut Errors) -> &'static str {
    match read {
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
    }
}

fn data_set(d: &str, errs: &mut Errors) {
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

/// `clientDedupeId`: a blank id means "not deduplicated".
pub(super) fn event_id<'b>(ev: &'b InEvent<'_>, errs: &mut Errors) -> Option<&'b str> {
    match errs
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
    }
}
