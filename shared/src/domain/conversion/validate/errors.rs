//! The problems found with one event, and the small helpers that word them.

use crate::domain::conversion::input::Got;
use crate::domain::conversion::{FieldError, Reason};

pub(super) struct Errors(pub(super) Vec<FieldError>);

impl Errors {
    pub(super) fn push(
        &mut self,
        field: impl Into<String>,
        reason: Reason,
        message: impl Into<String>,
    ) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
            reason,
        });
    }

    /// Unwraps a lenient field: `Err(())` when it had the wrong JSON type (reported here).
    /// `field` is formatted only when there is an error (no allocation on the good path).
    pub(super) fn got<'b, T>(
        &mut self,
        field: impl std::fmt::Display,
        v: Option<&'b Got<T>>,
        expected: &str,
    ) -> Result<Option<&'b T>, ()> {
        match v {
            None => Ok(None),
            Some(Got::Ok(t)) => Ok(Some(t)),
            Some(Got::Wrong(found)) => {
                let field = field.to_string();
                let message = format!("{field}: wrong type ({found}), expected {expected}");
                self.push(field, Reason::Malformed, message);
                Err(())
            }
        }
    }
}

pub(super) const A_STRING: &str = "a string";

pub(super) fn one_of(s: &str, allowed: &[&'static str]) -> Option<&'static str> {
    let s = s.trim();
    allowed.iter().copied().find(|a| a.eq_ignore_ascii_case(s))
}

/// At most 40 characters of a bad value for an error message (never a match-key value: those
/// are personal data and are never echoed).
pub(super) fn short(s: &str) -> String {
    s.chars().take(40).collect()
}
