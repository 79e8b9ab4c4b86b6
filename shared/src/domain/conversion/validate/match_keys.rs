//! `matchKeys`: Amazon's list form or a flat object; one value per type, at most
//! [`MAX_MATCH_KEYS`]; each value normalised and hashed into `scratch.keys`.

use super::errors::{A_STRING, Errors, short};
use super::{MAX_MATCH_KEYS, Scratch};
use crate::domain::conversion::Reason;
use crate::domain::conversion::input::{Got, ListKey, MatchKeysIn, ValuesIn};
use crate::domain::conversion::matchkey::KeyType;
use crate::domain::conversion::outbound::write_match_key;

pub(super) const MATCH_KEYS_SHAPE: &str =
    "a list of {\"type\",\"values\"} or an object such as {\"email\": \"…\"}";

/// Checks, normalises and hashes the match keys, writing them into `scratch.keys`.
pub(super) fn match_keys(keys: Option<&MatchKeysIn<'_>>, scratch: &mut Scratch, errs: &mut Errors) {
    let Some(keys) = keys else {
        errs.push(
            "matchKeys",
            Reason::Missing,
            "matchKeys is required (at least one key such as EMAIL)",
        );
        return;
    };
    let before = errs.0.len();
    let mut acc = KeyAcc {
        n: 0,
        seen: 0,
        given: 0,
    };
    match keys {
        MatchKeysIn::List(list) => {
            for (i, key) in list.iter().enumerate() {
                if let Some((kind, values)) = list_key(i, key, errs) {
                    let at = format_args!("matchKeys[{i}]");
                    acc.add(kind, values, at, true, scratch, errs);
                }
            }
        }
        MatchKeysIn::Flat(map) => {
            for (name, values) in map {
                let Some(kind) = KeyType::parse(name.as_str().trim()) else {
                    errs.push(
                        format!("matchKeys.{}", short(name.as_str())),
                        Reason::Invalid,
                        unknown_type(name.as_str()),
                    );
                    continue;
                };
                let field = format_args!("matchKeys.{}", name.as_str());
                let values = match errs.got(field, Some(values), "a string") {
                    Ok(Some(v)) => v,
                    _ => continue,
                };
                acc.add(kind, values, field, false, scratch, errs);
            }
        }
    }
    if acc.given > MAX_MATCH_KEYS {
        errs.push(
            "matchKeys",
            Reason::Invalid,
            format!("at most {MAX_MATCH_KEYS} match keys; got {}", acc.given),
        );
    } else if acc.n == 0 && errs.0.len() == before {
        errs.push(
            "matchKeys",
            Reason::NoMatchKey,
            "no usable match key: every key was empty or normalised to nothing",
        );
    }
}

/// The type and values of `matchKeys[i]` in Amazon's list form; `None` (reported) when the entry
/// is not an object, or its type or values are missing, of the wrong JSON type or unknown.
fn list_key<'k, 'a>(
    i: usize,
    key: &'k Got<ListKey<'a>>,
    errs: &mut Errors,
) -> Option<(KeyType, &'k ValuesIn<'a>)> {
    let (kind, values) = match key {
        Got::Ok((k, v)) => (k, v),
        Got::Wrong(found) => {
            errs.push(
                format!("matchKeys[{i}]"),
                Reason::Malformed,
                format!("matchKeys[{i}]: wrong type ({found}), expected an object {{\"type\",\"values\"}}"),
            );
            return None;
        }
    };
    let kind = match errs.got(format_args!("matchKeys[{i}].type"), kind.as_ref(), A_STRING) {
        Err(()) => return None,
        Ok(None) => {
            errs.push(
                format!("matchKeys[{i}].type"),
                Reason::Missing,
                "type is required",
            );
            return None;
        }
        Ok(Some(k)) => match KeyType::parse(k.as_str().trim()) {
            Some(k) => k,
            None => {
                errs.push(
                    format!("matchKeys[{i}].type"),
                    Reason::Invalid,
                    unknown_type(k.as_str()),
                );
                return None;
            }
        },
    };
    let values = match errs.got(
        format_args!("matchKeys[{i}].values"),
        values.as_ref(),
        "a list holding one string",
    ) {
        Err(()) => return None,
        Ok(None) => {
            errs.push(
                format!("matchKeys[{i}].values"),
                Reason::Missing,
                "values is required",
            );
            return None;
        }
        Ok(Some(v)) => v,
    };
    Some((kind, values))
}

/// Match keys gathered so far.
struct KeyAcc {
    n: usize,
    seen: u16,
    given: usize,
}

impl KeyAcc {
    /// `at`: the key's path; `list`: Amazon's form (sub-fields `.type`, `.values[0]`).
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        kind: KeyType,
        values: &ValuesIn<'_>,
        at: std::fmt::Arguments<'_>,
        list: bool,
        scratch: &mut Scratch,
        errs: &mut Errors,
    ) {
        self.given += 1;
        let sub = |s: &str| {
            if list {
                format!("{at}.{s}")
            } else {
                at.to_string()
            }
        };
        if self.seen & kind.bit() != 0 {
            errs.push(
                sub("type"),
                Reason::Invalid,
                format!(
                    "{} is given more than once; one value per type",
                    kind.as_str()
                ),
            );
            return;
        }
        self.seen |= kind.bit();
        if values.count > 1 {
            errs.push(
                sub("values"),
                Reason::Invalid,
                format!(
                    "{} has {} values; one value per type",
                    kind.as_str(),
                    values.count
                ),
            );
            return;
        }
        let v = match values.first.as_ref() {
            None => return, // an empty list normalises to nothing
            Some(Got::Wrong(found)) => {
                let f = sub("values[0]");
                errs.push(
                    f.clone(),
                    Reason::Malformed,
                    format!("{f}: wrong type ({found}), expected a string"),
                );
                return;
            }
            Some(Got::Ok(v)) => v,
        };
        if let Some(kv) = scratch.hasher.key_value(kind, v.as_str())
            && self.n < MAX_MATCH_KEYS
        {
            write_match_key(&mut scratch.keys, kind, &kv);
            self.n += 1;
        }
    }
}

fn unknown_type(t: &str) -> String {
    format!(
        "unknown match key type {:?}; use one of EMAIL, PHONE, FIRST_NAME, LAST_NAME, ADDRESS, CITY, STATE, POSTAL, MAID, RAMP_ID, MATCH_ID, REAL_ID, MERKLE_ID, KANTAR_ID, FIP",
        short(t)
    )
}
