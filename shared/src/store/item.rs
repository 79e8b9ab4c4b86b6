//! Reading stored DynamoDB items: the one attribute helper every table adapter uses.
//!
//! Numbers are parsed from their decimal text, never through a float, so an `i64` above 2^53
//! (Amazon's audience ids) reads back exact.

use super::StoreError;
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;
use std::str::FromStr;

/// A stored item, as the SDK hands it over.
pub(crate) type Item = HashMap<String, AttributeValue>;

/// Typed reads of an item's attributes. The `opt_`/`flag` reads are lenient (a missing or
/// mistyped attribute is `None`/`false`); `req_` reads and [`ItemExt::num`] say what is wrong.
pub(crate) trait ItemExt {
    /// A string attribute.
    fn opt_str(&self, k: &str) -> Option<&str>;
    /// A number attribute that parses as `T`.
    fn opt_num<T: FromStr>(&self, k: &str) -> Option<T>;
    /// A boolean attribute that is `true`.
    fn flag(&self, k: &str) -> bool;
    /// A number attribute if present: absent or `NULL` is `None`; anything else must parse.
    fn num<T: FromStr>(&self, k: &str) -> Result<Option<T>, StoreError>;
    /// A list of strings, each parsed by `parse` (an unknown value is an error); absent is empty.
    fn list<T>(&self, k: &str, parse: impl Fn(&str) -> Option<T>) -> Result<Vec<T>, StoreError>;

    /// A string attribute, owned.
    fn opt_s(&self, k: &str) -> Option<String> {
        self.opt_str(k).map(str::to_string)
    }

    /// A string attribute that must be there.
    fn req_str(&self, k: &str) -> Result<&str, StoreError> {
        self.opt_str(k).ok_or_else(|| missing(k, "string"))
    }

    /// A string attribute that must be there, owned.
    fn req_s(&self, k: &str) -> Result<String, StoreError> {
        self.req_str(k).map(str::to_string)
    }

    /// A number attribute that must be there.
    fn req_num<T: FromStr>(&self, k: &str) -> Result<T, StoreError> {
        self.num(k)?.ok_or_else(|| missing(k, "number"))
    }
}

fn missing(k: &str, kind: &str) -> StoreError {
    StoreError::Corrupt(format!("attribute {k} is missing or not a {kind}"))
}

impl ItemExt for Item {
    fn opt_str(&self, k: &str) -> Option<&str> {
        match self.get(k) {
            Some(AttributeValue::S(v)) => Some(v),
            _ => None,
        }
    }

    fn opt_num<T: FromStr>(&self, k: &str) -> Option<T> {
        match self.get(k) {
            Some(AttributeValue::N(v)) => v.parse().ok(),
            _ => None,
        }
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some(AttributeValue::Bool(true)))
    }

    fn num<T: FromStr>(&self, k: &str) -> Result<Option<T>, StoreError> {
        match self.get(k) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::N(v)) => v
                .parse()
                .map(Some)
                .map_err(|_| StoreError::Corrupt(format!("attribute {k} is not a valid number"))),
            _ => Err(StoreError::Corrupt(format!(
                "attribute {k} is not a number"
            ))),
        }
    }

    fn list<T>(&self, k: &str, parse: impl Fn(&str) -> Option<T>) -> Result<Vec<T>, StoreError> {
        match self.get(k) {
            None => Ok(Vec::new()),
            Some(AttributeValue::L(items)) => items
                .iter()
                .map(|v| match v {
                    AttributeValue::S(x) => parse(x).ok_or_else(|| {
                        StoreError::Corrupt(format!("attribute {k} holds unknown value {x:?}"))
                    }),
                    _ => Err(StoreError::Corrupt(format!(
                        "attribute {k} holds a non-string"
                    ))),
                })
                .collect(),
            _ => Err(StoreError::Corrupt(format!("attribute {k} is not a list"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::dynamo::{key, n, s};

    #[test]
    fn reads_say_what_is_wrong() {
        let mut it = key("P", "S");
        it.insert("big".into(), n(9_007_199_254_740_993_i64));
        it.insert("text".into(), s("x"));
        it.insert("yes".into(), AttributeValue::Bool(true));
        assert_eq!(it.req_str("pk").unwrap(), "P");
        assert_eq!(it.num::<i64>("big").unwrap(), Some(9_007_199_254_740_993));
        assert_eq!(it.opt_num::<u64>("text"), None);
        assert!(it.flag("yes") && !it.flag("text"));
        assert_eq!(it.num::<i64>("absent").unwrap(), None);
        assert!(
            matches!(it.num::<i64>("text"), Err(StoreError::Corrupt(m)) if m == "attribute text is not a number")
        );
        assert!(
            matches!(it.req_s("big"), Err(StoreError::Corrupt(m)) if m == "attribute big is missing or not a string")
        );
        assert!(matches!(
            it.req_num::<i64>("absent"),
            Err(StoreError::Corrupt(_))
        ));
    }
}
