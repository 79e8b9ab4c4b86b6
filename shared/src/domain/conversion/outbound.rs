//! Writes a [`ValidEvent`] in the Events API shape (`CreateEventRequest.events[]`), straight into
//! a reusable byte buffer: each event is serialised exactly once, and a batch body is the
//! concatenation of already-written events. Match keys and custom data are written while they are
//! checked ([`write_match_key`], [`write_custom_entry`] into the [`Scratch`]); the rest here.

use super::matchkey::{KeyType, KeyValue};
use super::validate::{ConsentOut, Scratch, ValidEvent};

/// Appends one event as compact JSON to `out`; `scratch` is the one it was validated with.
pub fn write_event(e: &ValidEvent<'_>, scratch: &Scratch, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"eventDescription\":{\"name\":");
    string(out, e.name);
    out.extend_from_slice(b",\"conversionType\":\"");
    out.extend_from_slice(e.conversion_type.as_bytes());
    out.extend_from_slice(b"\",\"eventSource\":\"");
    out.extend_from_slice(e.event_source.as_bytes());
    out.extend_from_slice(b"\",\"eventIngestionMethod\":\"SERVER_TO_SERVER\"");
    if let Some(d) = e.data_set_name {
        out.extend_from_slice(b",\"dataSetName\":");
        string(out, d);
    }
    out.extend_from_slice(b"},\"eventTime\":\"");
    out.extend_from_slice(&e.event_time);
    out.extend_from_slice(b"\",\"countryCode\":\"");
    out.extend_from_slice(e.country.as_str().as_bytes());
    out.extend_from_slice(b"\",\"matchKeys\":[");
    out.extend_from_slice(&scratch.keys);
    out.push(b']');
    if let Some(id) = e.event_id {
        out.extend_from_slice(b",\"eventId\":");
        string(out, id);
    }
    if let Some(v) = e.value {
        out.extend_from_slice(b",\"value\":");
        number(out, v);
    }
    if e.is_purchase() {
        if let Some(c) = e.currency_code {
            out.extend_from_slice(b",\"currencyCode\":\"");
            out.extend_from_slice(&c);
            out.push(b'"');
        }
        if let Some(u) = e.units_sold {
            out.extend_from_slice(b",\"unitsSold\":");
            let _ = serde_json::to_writer(&mut *out, &u);
        }
    }
    if e.limited_data_use {
        out.extend_from_slice(b",\"dataProcessingOptions\":{\"options\":\"LIMITED_DATA_USE\"}");
    }
    if let Some(c) = &e.consent {
        write_consent(out, c);
    }
    if !scratch.custom.is_empty() {
        out.extend_from_slice(b",\"customData\":[");
        out.extend_from_slice(&scratch.custom);
        out.push(b']');
    }
    out.push(b'}');
}

/// Appends `,"consent":{…}` with the signals that are present, in the Events API's order.
fn write_consent(out: &mut Vec<u8>, c: &ConsentOut<'_>) {
    out.extend_from_slice(b",\"consent\":{");
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !std::mem::replace(&mut first, false) {
            out.push(b',');
        }
    };
    if let Some(ip) = c.ip_address {
        sep(out);
        out.extend_from_slice(b"\"geo\":{\"ipAddress\":");
        string(out, ip);
        out.push(b'}');
    }
    if let Some(u) = c.amzn_user_data {
        sep(out);
        out.extend_from_slice(b"\"amazonConsent\":{\"amznUserData\":\"");
        out.extend_from_slice(u.as_bytes());
        out.push(b'"');
        if let Some(a) = c.amzn_ad_storage {
            out.extend_from_slice(b",\"amznAdStorage\":\"");
            out.extend_from_slice(a.as_bytes());
            out.push(b'"');
        }
        out.push(b'}');
    }
    if let Some(t) = c.tcf {
        sep(out);
        out.extend_from_slice(b"\"tcf\":");
        string(out, t);
    }
    if let Some(g) = c.gpp {
        sep(out);
        out.extend_from_slice(b"\"gpp\":");
        string(out, g);
    }
    out.push(b'}');
}

/// Appends one `{"type","values":[…]}` entry of `matchKeys` (comma-separated from the previous).
pub(super) fn write_match_key(out: &mut Vec<u8>, kind: KeyType, value: &KeyValue<'_>) {
    if !out.is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_str().as_bytes());
    out.extend_from_slice(b"\",\"values\":[");
    match value {
        KeyValue::Hashed(h) => {
            out.push(b'"');
            out.extend_from_slice(h);
            out.push(b'"');
        }
        KeyValue::Raw(s) => string(out, s),
    }
    out.extend_from_slice(b"]}");
}

/// Appends one `{"name","value","dataType"?}` entry of `customData` (comma-separated).
pub(super) fn write_custom_entry(
    out: &mut Vec<u8>,
    name: &str,
    value: &str,
    data_type: Option<&str>,
) {
    if !out.is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(b"{\"name\":");
    string(out, name);
    out.extend_from_slice(b",\"value\":");
    string(out, value);
    if let Some(t) = data_type {
        out.extend_from_slice(b",\"dataType\":\"");
        out.extend_from_slice(t.as_bytes());
        out.push(b'"');
    }
    out.push(b'}');
}

/// A JSON string with serde_json's escaping (no allocation).
fn string(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A finite number (validation guarantees it), shortest round-trip form.
fn number(out: &mut Vec<u8>, v: f64) {
    let _ = serde_json::to_writer(&mut *out, &v);
}

/// A `{"events":[…]}` body from already-written events.
pub fn batch_body<'a>(events: impl IntoIterator<Item = &'a [u8]>, size_hint: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(size_hint + 16);
    body.extend_from_slice(b"{\"events\":[");
    for (i, e) in events.into_iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(e);
    }
    body.extend_from_slice(b"]}");
    body
}
