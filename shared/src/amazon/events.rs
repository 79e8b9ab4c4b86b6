//! The Events API: `POST /adsApi/v1/create/events` and the mapping of its 207 answer back to the
//! events we sent.
//!
//! Every index we sent must come back exactly once. An index that never comes back, or comes
//! back more than once (so we cannot tell what happened to it), is reported in `missing`: the
//! caller retries or parks it, and the `eventId` lets Amazon drop a copy it already has. Indexes
//! outside the batch are ignored (with a warning).

use super::client::{AccountCtx, AmazonClient, ApiRequest, HeaderStyle};
use super::error::AmazonError;
use super::tokens::LoginRef;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// What happened to each event of a batch, by 0-based index, each list sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventsOutcome {
    pub accepted: Vec<usize>,
    pub rejected: Vec<(usize, Vec<EventError>)>,
    pub missing: Vec<usize>,
}

/// One per-event error as Amazon reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventError {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub field_location: Option<String>,
}

#[derive(Deserialize)]
struct MultiStatus {
    #[serde(default)]
    success: Vec<SuccessItem>,
    #[serde(default)]
    error: Vec<ErrorItem>,
}

#[derive(Deserialize)]
struct SuccessItem {
    index: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ErrorItem {
    index: Option<serde_json::Value>,
    #[serde(default)]
    errors: Vec<EventError>,
}

/// A non-negative integer index (number or digit string); anything else is unusable.
fn index_of(v: &Option<serde_json::Value>) -> Option<usize> {
    match v.as_ref()? {
        serde_json::Value::Number(n) => n.as_u64().and_then(|u| usize::try_from(u).ok()),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Maps a 207 body to the `count` events we sent.
pub fn map_multi_status(body: &[u8], count: usize) -> Result<EventsOutcome, serde_json::Error> {
    let ms: MultiStatus = serde_json::from_slice(body)?;
    enum Seen {
        None,
        Accepted,
        Rejected(Vec<EventError>),
        Conflicting,
    }
    let mut seen: Vec<Seen> = (0..count).map(|_| Seen::None).collect();
    let mut out_of_range = 0usize;
    let mut record = |idx: Option<usize>, outcome: Seen| match idx {
        Some(i) if i < count => {
            seen[i] = match seen[i] {
                Seen::None => outcome,
                _ => Seen::Conflicting,
            }
        }
        _ => out_of_range += 1,
    };
    for s in ms.success {
        record(index_of(&s.index), Seen::Accepted);
    }
    for e in ms.error {
        record(index_of(&e.index), Seen::Rejected(e.errors));
    }
    let mut out = EventsOutcome::default();
    let mut conflicting = 0usize;
    for (i, s) in seen.into_iter().enumerate() {
        match s {
            Seen::Accepted => out.accepted.push(i),
            Seen::Rejected(errs) => out.rejected.push((i, errs)),
            Seen::None => out.missing.push(i),
            Seen::Conflicting => {
                conflicting += 1;
                out.missing.push(i);
            }
        }
    }
    if out_of_range > 0 || conflicting > 0 || !out.missing.is_empty() {
        tracing::warn!(
            sent = count,
            missing = out.missing.len(),
            reported_twice = conflicting,
            unknown_indexes = out_of_range,
            "Events API answer did not report every event exactly once"
        );
    }
    Ok(out)
}

impl AmazonClient {
    /// Sends a batch (`body` = the whole `{"events":[…]}` document holding `count` events) for
    /// the DSP advertiser `advertiser_id` and maps the 207 answer per event.
    pub async fn create_events(
        &self,
        login: &LoginRef,
        advertiser_id: i64,
        body: Vec<u8>,
        count: usize,
    ) -> Result<EventsOutcome, AmazonError> {
        let req = ApiRequest {
            method: reqwest::Method::POST,
            path: "/adsApi/v1/create/events".into(),
            headers: HeaderStyle::AdsAccount {
                account_id: advertiser_id,
            },
            body: Some(Bytes::from(body)),
            account: Some(AccountCtx {
                advertiser_id,
                not_found_is_account: true,
            }),
            limit: None,
        };
        let resp = self.send(login, &req).await?;
        map_multi_status(&resp.body, count).map_err(|e| AmazonError::Server {
            status: resp.status,
            message: format!("unexpected Events API answer: {e}"),
            request_id: resp.request_id.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_success_and_error_by_zero_based_index() {
        let body = br#"{"success":[{"index":0,"event":{"eventId":"a"}},{"index":2}],
            "error":[{"index":1,"errors":[{"code":"BAD_REQUEST","message":"eventTime is not a valid date-time","fieldLocation":"events[1].eventTime"}]}]}"#;
        let o = map_multi_status(body, 3).unwrap();
        assert_eq!(o.accepted, [0, 2]);
        assert_eq!(
            o.rejected,
            [(
                1,
                vec![EventError {
                    code: "BAD_REQUEST".into(),
                    message: "eventTime is not a valid date-time".into(),
                    field_location: Some("events[1].eventTime".into())
                }]
            )]
        );
        assert!(o.missing.is_empty());
    }

    #[test]
    fn missing_indexes_are_reported() {
        let o = map_multi_status(br#"{"success":[{"index":1}]}"#, 4).unwrap();
        assert_eq!(o.accepted, [1]);
        assert_eq!(o.missing, [0, 2, 3]);
        let o = map_multi_status(b"{}", 2).unwrap();
        assert_eq!(o.missing, [0, 1]);
    }

    #[test]
    fn out_of_range_and_duplicate_indexes_are_handled_safely() {
        let body = br#"{"success":[{"index":0},{"index":0},{"index":5},{"index":-1},{"index":"x"},{"index":1}],
            "error":[{"index":1,"errors":[]},{"index":99,"errors":[]},{"index":2,"errors":[{"code":"C","message":"m"}]}]}"#;
        let o = map_multi_status(body, 3).unwrap();
        // 0 reported twice and 1 reported as both: we cannot tell, so they count as missing.
        assert!(o.accepted.is_empty());
        assert_eq!(o.missing, [0, 1]);
        assert_eq!(o.rejected.len(), 1);
        assert_eq!(o.rejected[0].0, 2);
        assert_eq!(o.rejected[0].1[0].field_location, None);
        // Every index appears in exactly one list.
        let total = o.accepted.len() + o.rejected.len() + o.missing.len();
        assert_eq!(total, 3);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(map_multi_status(b"not json", 1).is_err());
        assert!(map_multi_status(br#"{"success":"x"}"#, 1).is_err());
    }
}
