//! `customData`: at most [`MAX_CUSTOM_DATA`] `{name, value, dataType}` entries, written into the
//! event's scratch buffer as they are checked.

use super::MAX_CUSTOM_DATA;
use super::errors::{A_STRING, Errors, one_of};
use crate::domain::conversion::Reason;
use crate::domain::conversion::input::{CustomDataIn, Got, Text};
use crate::domain::conversion::outbound::write_custom_entry;

/// `customData[i]`, formatted lazily.
#[derive(Clone, Copy)]
struct CustomAt(usize);

impl std::fmt::Display for CustomAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "customData[{}]", self.0)
    }
}

/// Checks the custom data and writes its entries into `out`.
pub(super) fn custom_data(items: &[Got<CustomDataIn<'_>>], out: &mut Vec<u8>, errs: &mut Errors) {
    if items.len() > MAX_CUSTOM_DATA {
        errs.push(
            "customData",
            Reason::Invalid,
            format!(
                "at most {MAX_CUSTOM_DATA} customData entries; got {}",
                items.len()
            ),
        );
        return;
    }
    let word = |s: &str| {
        !s.is_empty() && s.len() <= 256 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    for (i, item) in items.iter().enumerate() {
        // Paths are formatted only on errors.
        let at = CustomAt(i);
        let Ok(Some(item)) = errs.got(at, Some(item), "an object {\"name\",\"value\"}") else {
            continue;
        };
        let name = errs
            .got(format_args!("{at}.name"), item.name.as_ref(), A_STRING)
            .map(|n| n.map_or("", Text::as_str));
        let value = errs
            .got(
                format_args!("{at}.value"),
                item.value.as_ref(),
                "a string or an integer",
            )
            .map(|v| v.map_or("", |v| v.as_str()));
        if let Ok(n) = name
            && !word(n)
        {
            errs.push(
                format!("{at}.name"),
                Reason::Invalid,
                "name must be letters, digits or _ (at most 256)",
            );
        }
        if let Ok(v) = value
            && !word(v)
        {
            errs.push(
                format!("{at}.value"),
                Reason::Invalid,
                "value must be letters, digits or _ (send 49.99 as 4999)",
            );
        }
        let data_type = match errs.got(
            format_args!("{at}.dataType"),
            item.data_type.as_ref(),
            A_STRING,
        ) {
            Ok(Some(t)) => {
                let t = one_of(t.as_str(), &["STRING", "INTEGER", "TIMESTAMP"]);
                if t.is_none() {
                    errs.push(
                        format!("{at}.dataType"),
                        Reason::Invalid,
                        "dataType must be STRING, INTEGER or TIMESTAMP",
                    );
                }
                t
            }
            _ => None,
        };
        if let (Ok(name), Ok(value)) = (name, value) {
            write_custom_entry(out, name, value, data_type);
        }
    }
}
