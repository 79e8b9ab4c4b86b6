//! The inbound shapes callers send in more than one form: one match key, its values (a string or
//! a list), `matchKeys` (Amazon's list or a flat object), `dataProcessingOptions`.

use super::{Got, Ident, Scalar, Text, drain_map};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

/// One match key in Amazon's form, `{"type","values":[…]}` (a single `value` is accepted too).
#[derive(Debug, Default, Deserialize)]
pub struct KeyIn<'a> {
    #[serde(borrow, default, rename = "type")]
    pub kind: Option<Got<Text<'a>>>,
    #[serde(borrow, default, alias = "value")]
    pub values: Option<Got<ValuesIn<'a>>>,
}

/// The values of one key: a string (or integer), or a list of them. Only the first is kept and
/// the rest counted, since the contract allows exactly one value per type.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ValuesIn<'a> {
    pub first: Option<Got<Ident<'a>>>,
    pub count: usize,
}

impl<'de: 'a, 'a> Deserialize<'de> for Got<ValuesIn<'a>> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Got<ValuesIn<'a>>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list holding one string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(one(Ident::borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(one(Ident::owned(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(one(Ident::unsigned(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(one(Ident::signed(v)))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Got::Wrong("a fractional number"))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Got::Wrong("a boolean"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Got::Wrong("null"))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                drain_map(map)?;
                Ok(Got::Wrong("an object"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = ValuesIn::default();
                while let Some(v) = seq.next_element::<Got<Ident<'a>>>()? {
                    if out.first.is_none() {
                        out.first = Some(v);
                    }
                    out.count += 1;
                }
                Ok(Got::Ok(out))
            }
        }
        fn one(v: Option<Ident<'_>>) -> Got<ValuesIn<'_>> {
            Got::Ok(ValuesIn {
                first: Some(v.map_or(Got::Wrong("a string"), Got::Ok)),
                count: 1,
            })
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// `matchKeys`: Amazon's list, or a flat object such as `{"email": "…", "phone": "…"}`.
/// One key of Amazon's list form: its `type` and `values`.
pub type ListKey<'a> = (Option<Got<Text<'a>>>, Option<Got<ValuesIn<'a>>>);

#[derive(Debug, Clone, PartialEq)]
pub enum MatchKeysIn<'a> {
    List(Vec<Got<ListKey<'a>>>),
    Flat(Vec<(Text<'a>, Got<ValuesIn<'a>>)>),
}

impl<'de: 'a, 'a> Deserialize<'de> for Got<MatchKeysIn<'a>> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Got<MatchKeysIn<'a>>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a list of {"type","values"} or an object such as {"email": "…"}"#)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut keys = Vec::with_capacity(seq.size_hint().unwrap_or(4).min(16));
                while let Some(k) = seq.next_element::<Got<KeyIn<'a>>>()? {
                    keys.push(match k {
                        Got::Ok(k) => Got::Ok((k.kind, k.values)),
                        Got::Wrong(w) => Got::Wrong(w),
                    });
                }
                Ok(Got::Ok(MatchKeysIn::List(keys)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut keys = Vec::with_capacity(map.size_hint().unwrap_or(4).min(16));
                while let Some(k) = map.next_key::<Got<Text<'a>>>()? {
                    let v: Option<Got<ValuesIn<'a>>> = map.next_value()?;
                    // `"phone": null` means "no phone".
                    if let (Got::Ok(k), Some(v)) = (k, v) {
                        keys.push((k, v));
                    }
                }
                Ok(Got::Ok(MatchKeysIn::Flat(keys)))
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
        d.deserialize_any(V(PhantomData))
    }
}

/// `dataProcessingOptions`: Adobe's `["LIMITED_DATA_USE"]`, the Events API's
/// `{"options":"LIMITED_DATA_USE"}`, or a bare string.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessingOptionsIn<'a> {
    pub limited_data_use: bool,
    /// The first option that is not `LIMITED_DATA_USE` (reported by validation).
    pub unknown: Option<Text<'a>>,
    /// A list element or `options` value of the wrong type.
    pub wrong: Option<&'static str>,
}

impl<'a> ProcessingOptionsIn<'a> {
    fn add(&mut self, t: Got<Text<'a>>) {
        match t {
            Got::Ok(t) if t.as_str().trim().eq_ignore_ascii_case("LIMITED_DATA_USE") => {
                self.limited_data_use = true
            }
            Got::Ok(t) => {
                if self.unknown.is_none() {
                    self.unknown = Some(t);
                }
            }
            Got::Wrong(w) => self.wrong = self.wrong.or(Some(w)),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Got<ProcessingOptionsIn<'a>> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Got<ProcessingOptionsIn<'a>>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"["LIMITED_DATA_USE"] or {"options":"LIMITED_DATA_USE"}"#)
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                let mut o = ProcessingOptionsIn::default();
                o.add(Got::Ok(Text(Cow::Borrowed(v))));
                Ok(Got::Ok(o))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                let mut o = ProcessingOptionsIn::default();
                o.add(Got::Ok(Text(Cow::Owned(v.to_owned()))));
                Ok(Got::Ok(o))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut o = ProcessingOptionsIn::default();
                while let Some(t) = seq.next_element::<Got<Text<'a>>>()? {
                    o.add(t);
                }
                Ok(Got::Ok(o))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut o = ProcessingOptionsIn::default();
                while let Some(k) = map.next_key::<Got<Text<'a>>>()? {
                    if k.ok().is_some_and(|k| k.as_str() == "options") {
                        if let Some(Got::Ok(inner)) =
                            map.next_value::<Option<Got<ProcessingOptionsIn<'a>>>>()?
                        {
                            o.limited_data_use |= inner.limited_data_use;
                            o.unknown = o.unknown.or(inner.unknown);
                            o.wrong = o.wrong.or(inner.wrong);
                        }
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Got::Ok(o))
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
        d.deserialize_any(V(PhantomData))
    }
}
