//! Fault injection: rules registered through `POST /admin/faults` that answer a matching request
//! with a status, delay it, or drop its connection, a given number of times.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultMatch {
    /// HTTP method, case-insensitive.
    pub method: Option<String>,
    pub path_prefix: Option<String>,
    /// The ClientId header (or `client_id` of the LwA calls).
    pub client_id: Option<String>,
    /// The `Amazon-Ads-AccountId` or `Amazon-Advertising-API-Scope` header.
    pub account_id: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAction {
    pub status: Option<u16>,
    /// Seconds, sent as `Retry-After`.
    pub retry_after: Option<u64>,
    /// The answer body: a JSON value is sent as JSON, a JSON string as text.
    pub body: Option<Value>,
    /// Wait this long first; alone, the request then proceeds normally.
    pub delay_ms: Option<u64>,
    /// Close the connection without any answer.
    #[serde(default)]
    pub drop: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultSpec {
    #[serde(rename = "match", default)]
    pub matcher: FaultMatch,
    pub action: FaultAction,
    /// How many requests it applies to; absent = until deleted.
    pub times: Option<u32>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    pub id: String,
    #[serde(flatten)]
    pub spec: FaultSpec,
}

/// What the request carries that a fault may match on.
pub struct RequestFacts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub client_id: Option<&'a str>,
    pub account_id: Option<&'a str>,
}

impl FaultSpec {
    pub fn validate(&self) -> Result<(), String> {
        let a = &self.action;
        if a.status.is_none() && a.delay_ms.is_none() && !a.drop {
            return Err("action needs status, delayMs or drop".into());
        }
        if a.drop && a.status.is_some() {
            return Err("action cannot both drop and answer a status".into());
        }
        if let Some(s) = a.status
            && !(100..=599).contains(&s)
        {
            return Err("action.status must be 100..=599".into());
        }
        if self.times == Some(0) {
            return Err("times must be at least 1".into());
        }
        Ok(())
    }

    fn matches(&self, r: &RequestFacts<'_>) -> bool {
        let m = &self.matcher;
        m.method
            .as_deref()
            .is_none_or(|x| x.eq_ignore_ascii_case(r.method))
            && m.path_prefix
                .as_deref()
                .is_none_or(|p| r.path.starts_with(p))
            && m.client_id
                .as_deref()
                .is_none_or(|c| r.client_id == Some(c))
            && m.account_id
                .as_deref()
                .is_none_or(|a| r.account_id == Some(a))
    }
}

/// Takes the first matching fault (oldest first), counting one use down.
pub fn take(faults: &mut Vec<Fault>, r: &RequestFacts<'_>) -> Option<FaultAction> {
    let i = faults.iter().position(|f| f.spec.matches(r))?;
    let action = faults[i].spec.action.clone();
    if let Some(t) = faults[i].spec.times.as_mut() {
        *t -= 1;
        if *t == 0 {
            faults.remove(i);
        }
    }
    Some(action)
}
