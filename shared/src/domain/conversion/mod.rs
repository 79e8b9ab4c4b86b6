//! Conversion events, pure: parse the webhook body, accept Adobe's field names and the Events API
//! aliases, validate, normalise and hash match keys, and write the Events API body. No I/O.
//!
//! The hot path is allocation-lean by design: the body is split into borrowed raw events
//! ([`parse_body`]), each event is parsed into borrowed strings ([`input::InEvent`]), match keys are
//! normalised into one reused scratch buffer and hashed into stack arrays ([`matchkey`]), and the
//! outbound JSON of every event is written once into one shared [`Arena`]. A batch body for Amazon
//! is then just the concatenation of the events it carries ([`outbound::batch_body`]).
//!
//! Field paths in errors follow the inbound names: `timestamp`, `matchKeys[1].values[0]`,
//! `matchKeys.email`, `consent.geo.ipAddress`, `customData[0].value`.

pub mod input;
pub mod matchkey;
pub mod outbound;
pub mod validate;

pub use matchkey::{KeyHasher, KeyType, KeyValue};
pub use outbound::{batch_body, write_event};
pub use validate::{Country, Scratch, ValidEvent, validate};

use serde::Serialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;
use std::ops::Range;

/// Most events one request may carry.
pub const MAX_EVENTS: usize = 10_000;

/// Why an event was rejected (a metric dimension; stable snake_case names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Not a JSON object, or a field of the wrong JSON type.
    Malformed,
    Missing,
    Invalid,
    TooOld,
    InFuture,
    NoMatchKey,
    ConsentRequired,
    /// Amazon rejected the event (207 error entry or a whole-batch 4xx).
    Amazon,
    /// Neither delivered nor parked (the queue was unavailable): send it again.
    Unavailable,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::Missing => "missing",
            Reason::Invalid => "invalid",
            Reason::TooOld => "too_old",
            Reason::InFuture => "in_future",
            Reason::NoMatchKey => "no_match_key",
            Reason::ConsentRequired => "consent_required",
            Reason::Amazon => "amazon",
            Reason::Unavailable => "unavailable",
        }
    }
}

/// One problem with one event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
    #[serde(skip)]
    pub reason: Reason,
}

/// A body-level problem: the whole request is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BodyError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

/// The events of one body, read in one pass ([`Events::Parsed`]) or, when some event is not
/// even a JSON object (or repeats a field), split into raw events to be read one by one so that
/// the bad ones are rejected alone ([`Events::Raw`]).
#[derive(Debug)]
pub enum Events<'a> {
    Parsed(Vec<input::InEvent<'a>>),
    Raw(Vec<&'a RawValue>),
}

impl Events<'_> {
    pub fn len(&self) -> usize {
        match self {
            Events::Parsed(v) => v.len(),
            Events::Raw(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What became of one event: where its outbound JSON sits, or every problem found with it.
pub type Outcome = Result<Prepared, Vec<FieldError>>;

/// Reads, validates, normalises and hashes every event of a body and writes the valid ones into
/// `arena`; one [`Outcome`] per event, by index.
///
/// A well-formed `{"events":[…]}` body is read in one streaming pass: each event is parsed onto
/// the stack, checked and written before the next is read, so no list of parsed events is ever
/// built. Anything else (one bare event, an event that repeats a field, malformed JSON) takes the
/// [`parse_body`] path, which says what is wrong and where.
pub fn prepare_body(
    body: &[u8],
    p: &mut Processor,
    arena: &mut Arena,
) -> Result<Vec<Outcome>, BodyError> {
    let (json_at, ids_at) = (arena.json.len(), arena.ids.len());
    // One UTF-8 check over the whole body (vectorised) instead of one per string.
    if let Ok(text) = std::str::from_utf8(body) {
        let mut out = Vec::new();
        let mut sink = Sink {
            p: &mut *p,
            arena: &mut *arena,
            out: &mut out,
        };
        let mut de = serde_json::Deserializer::from_str(text);
        let read = de
            .deserialize_map(BodyVisitor(&mut sink))
            .and_then(|n| de.end().map(|()| n));
        if let Ok(Some(n)) = read {
            check_count(n)?;
            return Ok(out);
        }
        arena.json.truncate(json_at);
        arena.ids.truncate(ids_at);
    }
    let events = parse_body(body)?;
    Ok((0..events.len())
        .map(|i| p.prepare_nth(&events, i, arena))
        .collect())
}

/// Where the streaming pass puts what it reads.
struct Sink<'s> {
    p: &'s mut Processor,
    arena: &'s mut Arena,
    out: &'s mut Vec<Outcome>,
}

/// The top-level object: `Some(count)` of its `events`, `None` when it has none (one bare event).
struct BodyVisitor<'k, 's>(&'k mut Sink<'s>);

impl<'de> Visitor<'de> for BodyVisitor<'_, '_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut count = None;
        while let Some(key) = map.next_key::<&'de str>()? {
            if key == "events" {
                if count.is_some() {
                    return Err(de::Error::duplicate_field("events"));
                }
                count = Some(map.next_value_seed(EventsSeed(&mut *self.0))?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(count)
    }
}

/// The `events` list: each event is prepared as it is read; past [`MAX_EVENTS`] they are only
/// counted (the body is refused whole).
struct EventsSeed<'k, 's>(&'k mut Sink<'s>);

impl<'de> DeserializeSeed<'de> for EventsSeed<'_, '_> {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EventsSeed<'_, '_> {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of events")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut n = 0;
        loop {
            let more = if n < MAX_EVENTS {
                seq.next_element_seed(EventSeed(&mut *self.0))?.is_some()
            } else {
                seq.next_element::<IgnoredAny>()?.is_some()
            };
            if !more {
                return Ok(n);
            }
            n += 1;
        }
    }
}

/// One event of the list: parsed, prepared, and its outcome recorded.
struct EventSeed<'k, 's>(&'k mut Sink<'s>);

impl<'de> DeserializeSeed<'de> for EventSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let ev = <input::Got<input::InEvent<'de>> as serde::Deserialize>::deserialize(d)?;
        let outcome = match &ev {
            input::Got::Ok(ev) => self.0.p.prepare_parsed(ev, self.0.arena),
            input::Got::Wrong(found) => Err(vec![FieldError {
                field: String::new(),
                message: format!("an event must be a JSON object (found {found})"),
                reason: Reason::Malformed,
            }]),
        };
        self.0.out.push(outcome);
        Ok(())
    }
}

/// Reads a body: one event object, or `{"events":[…]}` with 1 to [`MAX_EVENTS`] events (the
/// path of bodies that [`prepare_body`]'s streaming pass does not take).
pub fn parse_body(body: &[u8]) -> Result<Events<'_>, BodyError> {
    #[derive(serde::Deserialize)]
    struct Batch<'a> {
        #[serde(borrow, default)]
        events: Option<Vec<input::InEvent<'a>>>,
    }
    // One UTF-8 check over the whole body (fast, vectorised) instead of one per string.
    let body = std::str::from_utf8(body).map_err(|e| BodyError {
        status: 400,
        code: "invalid_json",
        message: format!(
            "the body is not UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        ),
    })?;
    match serde_json::from_str::<Batch<'_>>(body) {
        Ok(Batch {
            events: Some(events),
        }) => {
            check_count(events.len())?;
            Ok(Events::Parsed(events))
        }
        Ok(Batch { events: None }) => match serde_json::from_str::<input::InEvent<'_>>(body) {
            Ok(ev) => Ok(Events::Parsed(vec![ev])),
            Err(_) => split_body(body.as_bytes()).map(Events::Raw),
        },
        Err(e) if e.is_syntax() || e.is_eof() => Err(BodyError {
            status: 400,
            code: "invalid_json",
            message: format!("malformed JSON: {e}"),
        }),
        // Some event is not an object (or repeats a field): read the events one by one.
        Err(_) => split_body(body.as_bytes()).map(Events::Raw),
    }
}

fn check_count(n: usize) -> Result<(), BodyError> {
    if n == 0 {
        return Err(BodyError {
            status: 400,
            code: "invalid_request",
            message: "events is empty: send 1 to 10000 events".into(),
        });
    }
    if n > MAX_EVENTS {
        return Err(BodyError {
            status: 413,
            code: "too_many_events",
            message: format!("{n} events in one request; the limit is {MAX_EVENTS}"),
        });
    }
    Ok(())
}

/// Splits a body into its raw events (the slow path).
pub fn split_body(body: &[u8]) -> Result<Vec<&RawValue>, BodyError> {
    #[derive(serde::Deserialize)]
    struct Probe<'a> {
        #[serde(borrow, default)]
        events: Option<Vec<&'a RawValue>>,
    }
    let bad = |message: String| BodyError {
        status: 400,
        code: "invalid_json",
        message,
    };
    let probe: Probe<'_> = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            bad(format!(
                "the body must be one event object or {{\"events\":[…]}} with up to {MAX_EVENTS} events ({e})"
            ))
        } else {
            bad(format!("malformed JSON: {e}"))
        }
    })?;
    match probe.events {
        Some(events) => {
            check_count(events.len())?;
            Ok(events)
        }
        None => {
            let one: &RawValue =
                serde_json::from_slice(body).map_err(|e| bad(format!("malformed JSON: {e}")))?;
            Ok(vec![one])
        }
    }
}

/// Outbound events of one request, written back to back, and their dedupe ids.
#[derive(Debug, Default)]
pub struct Arena {
    pub json: Vec<u8>,
    pub ids: String,
}

impl Arena {
    pub fn with_capacity(events: usize) -> Self {
        Self {
            json: Vec::with_capacity(events * 640),
            ids: String::with_capacity(events * 24),
        }
    }

    /// Sized for a request body of `len` bytes (outbound events run about 1.5 times their
    /// inbound size: hashes are longer than the values they replace).
    pub fn for_body(len: usize) -> Self {
        Self {
            json: Vec::with_capacity(len * 2),
            ids: String::with_capacity(len / 16),
        }
    }

    pub fn clear(&mut self) {
        self.json.clear();
        self.ids.clear();
    }

    pub fn event(&self, p: &Prepared) -> &[u8] {
        &self.json[p.event.clone()]
    }

    pub fn id(&self, p: &Prepared) -> Option<&str> {
        p.id.clone().map(|r| &self.ids[r])
    }
}

/// Where one valid event's outbound JSON and dedupe id sit in the [`Arena`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared {
    pub event: Range<usize>,
    pub id: Option<Range<usize>>,
    /// The id is one [`Processor::with_generated_ids`] made (the event came without any): it is
    /// sent as `eventId` but is not a caller's dedupe key.
    pub generated_id: bool,
    /// Event time (epoch milliseconds, UTC).
    pub event_time_ms: i64,
}

/// Turns raw events into outbound JSON, reusing its buffers across events.
#[derive(Debug)]
pub struct Processor {
    scratch: Scratch,
    now_ms: i64,
    generate_ids: bool,
}

/// The prefix of the `eventId`s adsync generates for events that come without one.
pub const GENERATED_ID_PREFIX: &str = "adsync-";

impl Processor {
    /// `now_ms`: the time the request was received (epoch milliseconds), for the age checks.
    pub fn new(now_ms: i64) -> Self {
        Self {
            scratch: Scratch::new(),
            now_ms,
            generate_ids: false,
        }
    }

    /// Gives every event without a `clientDedupeId` / `eventId` a generated one
    /// (`adsync-<32 hex>`, random), written into its outbound JSON as `eventId`: it then stays
    /// with the event through parking and redrive, so Amazon can drop a copy that a redrive after
    /// a crash sends again.
    pub fn with_generated_ids(mut self) -> Self {
        self.generate_ids = true;
        self
    }

    /// Validates, normalises and hashes one parsed event, and appends its Events API JSON to
    /// the arena. On failure nothing is appended and every problem found is returned.
    pub fn prepare_parsed(
        &mut self,
        ev: &input::InEvent<'_>,
        arena: &mut Arena,
    ) -> Result<Prepared, Vec<FieldError>> {
        let mut valid = validate(ev, self.now_ms, &mut self.scratch)?;
        let ids_at = arena.ids.len();
        let generated_id = valid.event_id.is_none() && self.generate_ids;
        match valid.event_id {
            Some(id) => arena.ids.push_str(id),
            None if generated_id => {
                arena.ids.push_str(GENERATED_ID_PREFIX);
                let mut buf = uuid::Uuid::encode_buffer();
                arena
                    .ids
                    .push_str(uuid::Uuid::new_v4().simple().encode_lower(&mut buf));
            }
            None => {}
        }
        let id = (arena.ids.len() > ids_at).then_some(ids_at..arena.ids.len());
        if let Some(r) = &id {
            valid.event_id = Some(&arena.ids[r.clone()]);
        }
        let start = arena.json.len();
        write_event(&valid, &self.scratch, &mut arena.json);
        let event = start..arena.json.len();
        Ok(Prepared {
            event,
            id,
            generated_id,
            event_time_ms: valid.event_time_ms,
        })
    }

    /// The same for one raw event (the slow path of [`Events::Raw`]).
    pub fn prepare(&mut self, raw: &str, arena: &mut Arena) -> Result<Prepared, Vec<FieldError>> {
        match serde_json::from_str::<input::InEvent<'_>>(raw) {
            Ok(ev) => self.prepare_parsed(&ev, arena),
            Err(_) => Err(vec![type_error(raw)]),
        }
    }

    /// Prepares event `i` of a body.
    pub fn prepare_nth(
        &mut self,
        events: &Events<'_>,
        i: usize,
        arena: &mut Arena,
    ) -> Result<Prepared, Vec<FieldError>> {
        match events {
            Events::Parsed(v) => self.prepare_parsed(&v[i], arena),
            Events::Raw(v) => self.prepare(v[i].get(), arena),
        }
    }
}

/// Re-parses a malformed event to say which field has the wrong JSON type (the slow path only
/// bad events take).
fn type_error(raw: &str) -> FieldError {
    let de = &mut serde_json::Deserializer::from_str(raw);
    match serde_path_to_error::deserialize::<_, input::InEvent<'_>>(de) {
        Ok(_) => FieldError {
            field: String::new(),
            message: "the event could not be read".into(),
            reason: Reason::Malformed,
        },
        Err(e) => {
            let path = e.path().to_string();
            let msg = e.inner().to_string();
            // The position inside one event's JSON means little to the caller; the path says it.
            let msg = sanitize(&msg);
            if path == "." || path.is_empty() {
                FieldError {
                    field: String::new(),
                    message: format!("an event must be a JSON object ({msg})"),
                    reason: Reason::Malformed,
                }
            } else {
                FieldError {
                    message: format!("{path}: {msg}"),
                    field: path,
                    reason: Reason::Malformed,
                }
            }
        }
    }
}

/// serde's message without the position (meaningless inside one event) and without the
/// offending value (it may be personal data): "invalid type: string \"…\", expected X" becomes
/// "wrong type (string), expected X".
fn sanitize(msg: &str) -> String {
    let msg = match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    };
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            let kind = rest.split([' ', ',']).next().unwrap_or("value");
            let expected = rest
                .find(", expected ")
                .map(|i| &rest[i + 2..])
                .unwrap_or("");
            let what = if prefix.starts_with("invalid type") {
                "wrong type"
            } else {
                "invalid value"
            };
            return format!("{what} ({kind}), {expected}")
                .trim_end_matches([',', ' '])
                .to_string();
        }
    }
    msg.to_string()
}

#[cfg(test)]
mod tests;
