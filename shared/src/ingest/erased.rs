//! Parked conversions of erased devices are never sent.
//!
//! An erasure (`POST /privacy/deletions`, `export::erasure`) writes a tombstone
//! `ERASED#<sha256(MAID-<id>)>` with its request time and deletes the person's data at Amazon. A
//! conversion parked before it still names the MAID; sending it afterwards would give Amazon the
//! person's data again. So before the redrive takes a message's events, it reads the tombstones of
//! their MAIDs (one consistent `BatchGetItem` per 100) and settles every event whose MAID was
//! erased at or after the event's time as `erased`: its claim is completed, so a webhook retry of
//! the same event is answered `duplicate` and is not sent either. If the tombstones cannot be
//! read, the events with a MAID wait for the next run (never sent unchecked); events without one
//! go on.

use super::IngestCtx;
use super::park::ParkedBatch;
use crate::domain::audience::{IdType, device_key};
use crate::store::erasures::device_hash;
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};

/// Which events of a parked message the erasures decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct ErasureCheck {
    /// Indexes of events whose MAID was erased at or after the event's time.
    pub erased: BTreeSet<usize>,
    /// Indexes of events that could not be checked (tombstones unreadable, or the event itself).
    pub unchecked: BTreeSet<usize>,
}

/// The parts of an outbound (Events API) event the check reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Outbound<'a> {
    #[serde(borrow)]
    event_time: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    match_keys: Vec<MatchKey<'a>>,
}

#[derive(Deserialize)]
struct MatchKey<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    values: Vec<std::borrow::Cow<'a, str>>,
}

/// What the check needs of one outbound event.
#[derive(Debug, PartialEq, Eq)]
enum Maids {
    /// No MAID: nothing to check.
    None,
    /// The device hashes its MAIDs may have been erased under, and the event's time (ms).
    Hashes(Vec<String>, i64),
    /// Not readable as an outbound event: not sent unchecked.
    Unreadable,
}

/// The device keys a MAID may have been erased under. Conversions send a MAID as given, and an
/// erasure names it as the system that asked for it wrote it: an IDFA or a GAID is the same
/// device in either case, so the trimmed value, its upper and its lower case are all looked up.
fn maid_variants(value: &str) -> BTreeSet<String> {
    let v = value.trim();
    [v.to_string(), v.to_uppercase(), v.to_lowercase()]
        .into_iter()
        .map(|v| device_hash(&device_key(IdType::Maid, &v)))
        .collect()
}

/// The device hashes of an outbound event's MAIDs and its time (ms since the epoch).
fn maid_hashes(event: &str) -> Maids {
    let Ok(e) = serde_json::from_str::<Outbound>(event) else {
        return Maids::Unreadable;
    };
    let hashes: Vec<String> = e
        .match_keys
        .iter()
        .filter(|k| k.kind == "MAID")
        .flat_map(|k| &k.values)
        .flat_map(|v| maid_variants(v))
        .collect();
    if hashes.is_empty() {
        return Maids::None;
    }
    // An unreadable time counts as older than every erasure: any tombstone covers the event.
    let at = chrono::DateTime::parse_from_rfc3339(&e.event_time)
        .map(|t| t.timestamp_millis())
        .unwrap_or(i64::MIN);
    Maids::Hashes(hashes, at)
}

/// Which events are erased, given each event's hashes and time and the tombstones found.
fn decide(
    events: &[(usize, Vec<String>, i64)],
    tombstones: &HashMap<String, i64>,
) -> BTreeSet<usize> {
    events
        .iter()
        .filter(|(_, hashes, at)| {
            hashes
                .iter()
                .any(|h| tombstones.get(h).is_some_and(|erased_at| erased_at >= at))
        })
        .map(|(i, _, _)| *i)
        .collect()
}

impl IngestCtx {
    /// The erasure check of one parked message (see the module's doc). Without `LEDGER_TABLE`
    /// (no tombstones anywhere) nothing is erased.
    pub(super) async fn erasure_check(&self, batch: &ParkedBatch) -> ErasureCheck {
        let Some(reader) = &self.tombstones else {
            return ErasureCheck::default();
        };
        let mut check = ErasureCheck::default();
        let mut events: Vec<(usize, Vec<String>, i64)> = Vec::new();
        for (i, pe) in batch.events.iter().enumerate() {
            match maid_hashes(pe.event.get()) {
                Maids::None => {}
                Maids::Hashes(h, at) => events.push((i, h, at)),
                Maids::Unreadable => {
                    tracing::error!(account_id = %batch.account_id, park_id = %pe.park_id, "a parked conversion is not a readable event; it waits");
                    check.unchecked.insert(i);
                }
            }
        }
        if events.is_empty() {
            return check;
        }
        let hashes: BTreeSet<String> = events.iter().flat_map(|(_, h, _)| h.clone()).collect();
        match reader.erased_at(&hashes).await {
            Ok(found) => check.erased = decide(&events, &found),
            Err(e) => {
                tracing::error!(error = %e, account_id = %batch.account_id, "could not read the erasure tombstones; conversions with a MAID wait");
                check
                    .unchecked
                    .extend(events.into_iter().map(|(i, _, _)| i));
            }
        }
        check
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: &str = "2026-12-01T10:00:00.000Z";

    fn event(keys: &str) -> String {
        format!(r#"{{"name":"x","eventTime":"{AT}","matchKeys":[{keys}],"eventId":"e"}}"#)
    }

    #[test]
    fn only_maids_are_hashed_as_device_keys() {
        let e =
            event(r#"{"type":"EMAIL","values":["ab12"]},{"type":"MAID","values":[" Ea75-1 "]}"#);
        let Maids::Hashes(hashes, at) = maid_hashes(&e) else {
            panic!("{e}")
        };
        let want: BTreeSet<String> = ["MAID-Ea75-1", "MAID-EA75-1", "MAID-ea75-1"]
            .into_iter()
            .map(device_hash)
            .collect();
        assert_eq!(hashes.into_iter().collect::<BTreeSet<_>>(), want);
        assert_eq!(at, 1_796_119_200_000);
        let email_only = event(r#"{"type":"EMAIL","values":["ab12"]}"#);
        assert_eq!(maid_hashes(&email_only), Maids::None);
        assert_eq!(maid_hashes("{\"eventTime\": 3"), Maids::Unreadable);
    }

    #[test]
    fn an_erasure_at_or_after_the_event_covers_it_an_earlier_one_does_not() {
        let h = device_hash("MAID-m");
        let at = 1_000;
        let events = vec![(0, vec![h.clone()], at), (1, vec!["other".into()], at)];
        for (erased_at, want) in [(at - 1, vec![]), (at, vec![0]), (at + 1, vec![0])] {
            let found = HashMap::from([(h.clone(), erased_at)]);
            assert_eq!(
                decide(&events, &found).into_iter().collect::<Vec<_>>(),
                want
            );
        }
    }

    #[test]
    fn an_unreadable_time_is_covered_by_any_tombstone() {
        let e = r#"{"eventTime":"yesterday","matchKeys":[{"type":"MAID","values":["m"]}]}"#;
        let Maids::Hashes(hashes, at) = maid_hashes(e) else {
            panic!("{e}")
        };
        let found = HashMap::from([(hashes[0].clone(), 0)]);
        assert_eq!(decide(&[(3, hashes, at)], &found), BTreeSet::from([3]));
    }
}
