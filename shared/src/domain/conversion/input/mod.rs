//! The inbound event as sent to the webhook: Adobe's field names, with the Events API names as
//! aliases. Strings borrow from the request body whenever they hold no JSON escapes, so parsing
//! allocates only what serde needs (the match-key list and custom data).
//!
//! Every field is wrapped in [`Got`]: a value of the wrong JSON type is consumed and recorded as
//! `Got::Wrong("a string")` instead of failing the parse, so a whole batch is read in one pass
//! and one bad field never sinks the other events (or the other fields of its own event).
//! `validate` turns `Wrong` into an error with the field's path. Types are lenient about *shape*
//! where callers commonly differ (a number for ids and phones, a numeric string for `value`,
//! `dataProcessingOptions` as a string, list or object, match keys as Amazon's list or a flat
//! object).

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

mod shapes;

pub use shapes::{KeyIn, ListKey, MatchKeysIn, ProcessingOptionsIn, ValuesIn};

/// A field as read: its value, or what was found instead ("a list", "a number", …).
#[derive(Debug, Clone, PartialEq)]
pub enum Got<T> {
    Ok(T),
    Wrong(&'static str),
}

impl<T> Got<T> {
    pub fn ok(&self) -> Option<&T> {
        match self {
            Got::Ok(t) => Some(t),
            Got::Wrong(_) => None,
        }
    }
}

/// A string that borrows from the body when it can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text<'a>(pub Cow<'a, str>);

impl Text<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An identifier: a string, or an integer taken as its decimal string (order numbers often
/// arrive as JSON numbers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ident<'a>(pub Text<'a>);

impl Ident<'_> {
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// A number, or a string holding one (tag managers often send `"59.99"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Num(pub f64);

/// A consent flag: `"GRANTED"`/`"DENIED"` (or a truthy string) or a boolean.
#[derive(Debug, Clone, PartialEq)]
pub enum Flag<'a> {
    Bool(bool),
    Text(Text<'a>),
}

/// What a scalar accepts from each JSON type (`None` = wrong type).
trait Scalar<'de>: Sized {
    fn borrowed(_: &'de str) -> Option<Self> {
        None
    }
    fn owned(_: &str) -> Option<Self> {
        None
    }
    fn unsigned(_: u64) -> Option<Self> {
        None
    }
    fn signed(_: i64) -> Option<Self> {
        None
    }
    fn float(_: f64) -> Option<Self> {
        None
    }
    fn boolean(_: bool) -> Option<Self> {
        None
    }
}

impl<'de: 'a, 'a> Scalar<'de> for Text<'a> {
    fn borrowed(v: &'de str) -> Option<Self> {
        Some(Text(Cow::Borrowed(v)))
    }
    fn owned(v: &str) -> Option<Self> {
        Some(Text(Cow::Owned(v.to_owned())))
    }
}

impl<'de: 'a, 'a> Scalar<'de> for Ident<'a> {
    fn borrowed(v: &'de str) -> Option<Self> {
        Some(Ident(Text(Cow::Borrowed(v))))
    }
    fn owned(v: &str) -> Option<Self> {
        Some(Ident(Text(Cow::Owned(v.to_owned()))))
    }
    fn unsigned(v: u64) -> Option<Self> {
        Some(Ident(Text(Cow::Owned(v.to_string()))))
    }
    fn signed(v: i64) -> Option<Self> {
        Some(Ident(Text(Cow::Owned(v.to_string()))))
    }
}

impl<'de> Scalar<'de> for Num {
    fn borrowed(v: &'de str) -> Option<Self> {
        Self::owned(v)
    }
    fn owned(v: &str) -> Option<Self> {
        v.trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Num)
    }
    fn unsigned(v: u64) -> Option<Self> {
        Some(Num(v as f64))
    }
    fn signed(v: i64) -> Option<Self> {
        Some(Num(v as f64))
    }
    fn float(v: f64) -> Option<Self> {
        Some(Num(v))
    }
}

impl<'de: 'a, 'a> Scalar<'de> for Flag<'a> {
    fn borrowed(v: &'de str) -> Option<Self> {
        Some(Flag::Text(Text(Cow::Borrowed(v))))
    }
    fn owned(v: &str) -> Option<Self> {
        Some(Flag::Text(Text(Cow::Owned(v.to_owned()))))
    }
    fn boolean(v: bool) -> Option<Self> {
        Some(Flag::Bool(v))
    }
}

fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

struct ScalarVisitor<T>(PhantomData<T>);

impl<'de, T: Scalar<'de>> Visitor<'de> for ScalarVisitor<T> {
    type Value = Got<T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(T::borrowed(v).map_or(Got::Wrong("a string"), Got::Ok))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(T::owned(v).map_or(Got::Wrong("a string"), Got::Ok))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(T::unsigned(v).map_or(Got::Wrong("a number"), Got::Ok))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(T::signed(v).map_or(Got::Wrong("a number"), Got::Ok))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(T::float(v).map_or(Got::Wrong("a number"), Got::Ok))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(T::boolean(v).map_or(Got::Wrong("a boolean"), Got::Ok))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Got::Wrong("null"))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        drain_map(map)?;
        Ok(Got::Wrong("an object"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        drain_seq(seq)?;
        Ok(Got::Wrong("a list"))
    }
}

macro_rules! scalar {
    ($($t:ty),*) => {$(
        impl<'de: 'a, 'a> Deserialize<'de> for Got<$t> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(ScalarVisitor::<$t>(PhantomData))
            }
        }
    )*};
}

/// A JSON object read with the type's derived `Deserialize`; anything else is `Wrong`.
struct ObjectVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = Got<T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map)).map(Got::Ok)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        drain_seq(seq)?;
        Ok(Got::Wrong("a list"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Got::Wrong("a string"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Got::Wrong("a number"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Got::Wrong("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Got::Wrong("a number"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Got::Wrong("a boolean"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Got::Wrong("null"))
    }
}

/// A JSON list of lenient elements; anything else is `Wrong`.
struct ListVisitor<T>(PhantomData<T>);

impl<'de, T> Visitor<'de> for ListVisitor<T>
where
    Got<T>: Deserialize<'de>,
{
    type Value = Got<Vec<Got<T>>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(4).min(16));
        while let Some(v) = seq.next_element::<Got<T>>()? {
            out.push(v);
        }
        Ok(Got::Ok(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        drain_map(map)?;
        Ok(Got::Wrong("an object"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Got::Wrong("a string"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Got::Wrong("a number"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Got::Wrong("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Got::Wrong("a number"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Got::Wrong("a boolean"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Got::Wrong("null"))
    }
}

macro_rules! object {
    ($($t:ident),*) => {$(
        impl<'de: 'a, 'a> Deserialize<'de> for Got<$t<'a>> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(ObjectVisitor::<$t<'a>>(PhantomData))
            }
        }
        impl<'de: 'a, 'a> Deserialize<'de> for Got<Vec<Got<$t<'a>>>> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(ListVisitor::<$t<'a>>(PhantomData))
            }
        }
    )*};
}

scalar!(Text<'a>, Ident<'a>, Num, Flag<'a>);
object!(
    InEvent,
    EventDescriptionIn,
    KeyIn,
    ConsentIn,
    GeoIn,
    AmazonConsentIn,
    CustomDataIn
);

/// `eventDescription` (the Events API's nesting of name, type and source).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventDescriptionIn<'a> {
    #[serde(borrow, default)]
    pub name: Option<Got<Text<'a>>>,
    #[serde(borrow, default)]
    pub conversion_type: Option<Got<Text<'a>>>,
    #[serde(borrow, default)]
    pub event_source: Option<Got<Text<'a>>>,
    #[serde(borrow, default)]
    pub event_ingestion_method: Option<Got<Text<'a>>>,
    #[serde(borrow, default)]
    pub data_set_name: Option<Got<Text<'a>>>,
}

/// One inbound event.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InEvent<'a> {
    #[serde(borrow, default)]
    pub name: Option<Got<Text<'a>>>,
    #[serde(borrow, default, alias = "conversionType")]
    pub event_type: Option<Got<Text<'a>>>,
    #[serde(borrow, default, alias = "eventSource")]
    pub event_action_source: Option<Got<Text<'a>>>,
    #[serde(borrow, default, alias = "eventTime")]
    pub timestamp: Option<Got<Text<'a>>>,
    #[serde(borrow, default, alias = "eventId")]
    pub client_dedupe_id: Option<Got<Ident<'a>>>,
    #[serde(borrow, default)]
    pub match_keys: Option<Got<MatchKeysIn<'a>>>,
    #[serde(default)]
    pub value: Option<Got<Num>>,
    #[serde(borrow, default)]
    pub currency_code: Option<Got<Text<'a>>>,
    #[serde(default)]
    pub units_sold: Option<Got<Num>>,
    #[serde(borrow, default)]
    pub country_code: Option<Got<Text<'a>>>,
    #[serde(borrow, default)]
    pub data_processing_options: Option<Got<ProcessingOptionsIn<'a>>>,
    #[serde(borrow, default)]
    pub consent: Option<Got<ConsentIn<'a>>>,
    #[serde(borrow, default, alias = "customAttributes")]
    pub custom_data: Option<Got<Vec<Got<CustomDataIn<'a>>>>>,
    #[serde(borrow, default)]
    pub data_set_name: Option<Got<Text<'a>>>,
    #[serde(borrow, default)]
    pub event_description: Option<Got<EventDescriptionIn<'a>>>,
    #[serde(borrow, default)]
    pub event_ingestion_method: Option<Got<Text<'a>>>,
}

/// `consent` (same object in Adobe's action and the Events API).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsentIn<'a> {
    #[serde(borrow, default)]
    pub geo: Option<Got<GeoIn<'a>>>,
    #[serde(borrow, default)]
    pub amazon_consent: Option<Got<AmazonConsentIn<'a>>>,
    #[serde(borrow, default)]
    pub tcf: Option<Got<Text<'a>>>,
    #[serde(borrow, default)]
    pub gpp: Option<Got<Text<'a>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GeoIn<'a> {
    #[serde(borrow, default)]
    pub ip_address: Option<Got<Text<'a>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AmazonConsentIn<'a> {
    #[serde(borrow, default)]
    pub amzn_user_data: Option<Got<Flag<'a>>>,
    #[serde(borrow, default)]
    pub amzn_ad_storage: Option<Got<Flag<'a>>>,
}

/// One `customData` entry (`customAttributes` in the legacy shape).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomDataIn<'a> {
    #[serde(borrow, default)]
    pub name: Option<Got<Text<'a>>>,
    #[serde(borrow, default)]
    pub value: Option<Got<Ident<'a>>>,
    #[serde(borrow, default)]
    pub data_type: Option<Got<Text<'a>>>,
}
