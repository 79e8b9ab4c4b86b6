//! Audience membership patches for `PATCH /v2/dp/audience` (pure: no I/O).
//!
//! Owns the device key (`<TYPE>-<id>`, the part between the slashes of a patch path), grouping of membership changes into one patch per device and
//! operation (all audience ids of that device in one `value` array), consent pass-through, and
//! batching into bodies of at most [`MAX_PATCHES`] patches and [`MAX_BODY_BYTES`] bytes with exact
//! byte accounting (the body we measure is the body we send).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Amazon's limit of patches per `PATCH /v2/dp/audience` body.
pub const MAX_PATCHES: usize = 2_000;
/// Amazon's body limit ("The input payload exceeds 1MB limit"); decimal megabyte, the stricter
/// reading.
pub const MAX_BODY_BYTES: usize = 1_000_000;
/// The longest device id we accept (ids are cookies, MAIDs or external user ids: far shorter).
pub const MAX_DEVICE_ID_LEN: usize = 256;
/// The largest consent object we pass through, serialized.
pub const MAX_CONSENT_BYTES: usize = 4_096;

const BODY_PREFIX: &[u8] = br#"{"patches":["#;
const BODY_SUFFIX: &[u8] = b"]}";

/// The record id types of a patch path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IdType {
    Cookie,
    Maid,
    ExternalUserId,
}

impl IdType {
    pub fn as_str(&self) -> &'static str {
        match self {
            IdType::Cookie => "COOKIE",
            IdType::Maid => "MAID",
            IdType::ExternalUserId => "EXTERNAL_USER_ID",
        }
    }

    pub fn parse(s: &str) -> Option<IdType> {
        match s {
            "COOKIE" => Some(IdType::Cookie),
            "MAID" => Some(IdType::Maid),
            "EXTERNAL_USER_ID" => Some(IdType::ExternalUserId),
            _ => None,
        }
    }
}

/// Checks a device id: non-empty, at most [`MAX_DEVICE_ID_LEN`] bytes, printable ASCII without
/// `/` (it would break the patch path) and without white space.
pub fn validate_device_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if id.len() > MAX_DEVICE_ID_LEN {
        return Err(format!("must be at most {MAX_DEVICE_ID_LEN} characters"));
    }
    if let Some(c) = id.chars().find(|c| !c.is_ascii_graphic() || *c == '/') {
        let what = if c == '/' {
            "'/'".to_string()
        } else {
            format!("{:?}", c.escape_default().to_string())
        };
        return Err(format!(
            "must be printable ASCII without '/' or spaces (found {what})"
        ));
    }
    Ok(())
}

/// The device key `<TYPE>-<id>` (e.g. `COOKIE-abc`): the ledger's sort key and the patch path's
/// record id.
pub fn device_key(id_type: IdType, device_id: &str) -> String {
    format!("{}-{}", id_type.as_str(), device_id)
}

/// Splits a device key back into its type and id.
pub fn parse_device_key(key: &str) -> Option<(IdType, &str)> {
    // EXTERNAL_USER_ID contains no '-', so the first '-' ends the type.
    let (t, id) = key.split_once('-')?;
    let t = IdType::parse(t)?;
    (!id.is_empty()).then_some((t, id))
}

/// Add to or remove from audiences.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatchOp {
    Add,
    Remove,
}

impl PatchOp {
    /// The op that makes Amazon match a ledger status.
    pub fn for_status(qualified: bool) -> PatchOp {
        if qualified {
            PatchOp::Add
        } else {
            PatchOp::Remove
        }
    }
}

/// Checks a consent object given with a qualification: exactly one of Amazon's three forms,
/// `{"consentType":"TCF","tcf":"…"}`, `{"consentType":"GPP","gpp":"…"}` or
/// `{"consentType":"Amazon","amazonConsent":{"amazonAdStorage":"GRANTED"|"DENIED",
/// "amazonUserData":"GRANTED"|"DENIED"}}`. Checked strictly because one bad patch makes Amazon
/// reject its whole batch. Returns the compact JSON passed through to Amazon.
pub fn validate_consent(v: &serde_json::Value) -> Result<String, String> {
    use serde_json::Value;
    let obj = v.as_object().ok_or("must be an object")?;
    let ty = obj
        .get("consentType")
        .and_then(Value::as_str)
        .ok_or("consentType is required (TCF, GPP or Amazon)")?;
    let text = |k: &str| {
        obj.get(k)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.trim().is_empty())
    };
    let grant = |o: &serde_json::Map<String, Value>, k: &str| {
        matches!(o.get(k).and_then(Value::as_str), Some("GRANTED" | "DENIED"))
    };
    let ok = match ty {
        "TCF" => text("tcf"),
        "GPP" => text("gpp"),
        "Amazon" => matches!(obj.get("amazonConsent"), Some(Value::Object(a))
            if a.len() == 2 && grant(a, "amazonAdStorage") && grant(a, "amazonUserData")),
        other => {
            return Err(format!(
                "consentType {other:?} is not one of TCF, GPP, Amazon"
            ));
        }
    };
    if !ok || obj.len() != 2 {
        return Err(match ty {
            "TCF" => "a TCF consent is {\"consentType\":\"TCF\",\"tcf\":\"<TC string>\"}".into(),
            "GPP" => "a GPP consent is {\"consentType\":\"GPP\",\"gpp\":\"<GPP string>\"}".into(),
            _ => "an Amazon consent is {\"consentType\":\"Amazon\",\"amazonConsent\":{\"amazonAdStorage\":\"GRANTED|DENIED\",\"amazonUserData\":\"GRANTED|DENIED\"}}".into(),
        });
    }
    let s = serde_json::to_string(v).map_err(|e| e.to_string())?;
    if s.len() > MAX_CONSENT_BYTES {
        return Err(format!("must be at most {MAX_CONSENT_BYTES} bytes"));
    }
    Ok(s)
}

/// One membership change: the device should (op) be in/out of one audience.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub device: String,
    pub op: PatchOp,
    pub audience_id: i64,
    /// Compact consent JSON, passed through.
    pub consent: Option<String>,
}

/// One patch: a device, an op, every audience id it applies to.
#[derive(Clone, Debug, PartialEq)]
pub struct Patch {
    pub device: String,
    pub op: PatchOp,
    pub audience_ids: Vec<i64>,
    pub consent: Option<String>,
}

impl Patch {
    /// The patch's JSON, exactly as it goes into the body.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.device.len() + self.audience_ids.len() * 20);
        out.extend_from_slice(br#"{"op":""#);
        out.extend_from_slice(match self.op {
            PatchOp::Add => b"add",
            PatchOp::Remove => b"remove",
        });
        out.extend_from_slice(br#"","path":"#);
        // serde escapes the id; validated ids need no escaping, but a stored oddity must still
        // give valid JSON.
        let path = format!("/{}/audiences", self.device);
        serde_json::to_writer(&mut out, &path).expect("writing to a Vec cannot fail");
        out.extend_from_slice(br#","value":["#);
        for (i, id) in self.audience_ids.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(id.to_string().as_bytes());
        }
        out.push(b']');
        if let Some(c) = &self.consent {
            out.extend_from_slice(br#","consent":"#);
            out.extend_from_slice(c.as_bytes());
        }
        out.push(b'}');
        out
    }
}

/// Groups changes into one patch per (device, op) carrying all its audience ids (sorted,
/// de-duplicated). When both an add and a remove name the same device and audience, the later
/// change wins. The consent of a device's patch is the last one given for it.
pub fn group(changes: impl IntoIterator<Item = Change>) -> Vec<Patch> {
    // (device, audience) → (op, consent), later wins.
    let mut last: BTreeMap<(String, i64), (PatchOp, Option<String>)> = BTreeMap::new();
    for c in changes {
        last.insert((c.device, c.audience_id), (c.op, c.consent));
    }
    let mut grouped: BTreeMap<(String, PatchOp), Patch> = BTreeMap::new();
    for ((device, audience), (op, consent)) in last {
        let p = grouped
            .entry((device.clone(), op))
            .or_insert_with(|| Patch {
                device,
                op,
                audience_ids: Vec::new(),
                consent: None,
            });
        p.audience_ids.push(audience);
        if consent.is_some() {
            p.consent = consent;
        }
    }
    grouped.into_values().collect()
}

/// A ready body and the tags of the patches in it (in order).
#[derive(Debug)]
pub struct Batch<T> {
    pub body: Vec<u8>,
    pub tags: Vec<T>,
}

impl<T> Batch<T> {
    pub fn len(&self) -> usize {
        self.tags.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }
}

/// A single patch does not fit in an empty body.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("one patch is {bytes} bytes; a body may hold at most {limit}")]
pub struct PatchTooLarge {
    pub bytes: usize,
    pub limit: usize,
}

/// Packs patches into bodies of at most `max_patches` patches and `max_bytes` bytes.
#[derive(Debug)]
pub struct Batcher<T> {
    max_patches: usize,
    max_bytes: usize,
    body: Vec<u8>,
    tags: Vec<T>,
}

impl<T> Default for Batcher<T> {
    fn default() -> Self {
        Self::new(MAX_PATCHES, MAX_BODY_BYTES)
    }
}

impl<T> Batcher<T> {
    pub fn new(max_patches: usize, max_bytes: usize) -> Self {
        Self {
            max_patches: max_patches.max(1),
            max_bytes,
            body: Vec::new(),
            tags: Vec::new(),
        }
    }

    /// Bytes the current body would have if closed now.
    pub fn pending_bytes(&self) -> usize {
        if self.tags.is_empty() {
            0
        } else {
            self.body.len() + BODY_SUFFIX.len()
        }
    }

    pub fn pending_len(&self) -> usize {
        self.tags.len()
    }

    /// Adds a patch; returns the full batch that had to be closed to make room, if any.
    pub fn push(&mut self, patch: &Patch, tag: T) -> Result<Option<Batch<T>>, PatchTooLarge> {
        self.push_json(&patch.to_json(), tag)
    }

    /// Adds an already serialized patch.
    pub fn push_json(&mut self, json: &[u8], tag: T) -> Result<Option<Batch<T>>, PatchTooLarge> {
        let alone = BODY_PREFIX.len() + json.len() + BODY_SUFFIX.len();
        if alone > self.max_bytes {
            return Err(PatchTooLarge {
                bytes: alone,
                limit: self.max_bytes,
            });
        }
        let mut closed = None;
        if !self.tags.is_empty() {
            // current body + ',' + patch + "]}"
            let with = self.body.len() + 1 + json.len() + BODY_SUFFIX.len();
            if self.tags.len() >= self.max_patches || with > self.max_bytes {
                closed = self.take();
            }
        }
        if self.tags.is_empty() {
            self.body.clear();
            self.body.extend_from_slice(BODY_PREFIX);
        } else {
            self.body.push(b',');
        }
        self.body.extend_from_slice(json);
        self.tags.push(tag);
        Ok(closed)
    }

    /// Closes the current body, if it holds any patch.
    pub fn take(&mut self) -> Option<Batch<T>> {
        if self.tags.is_empty() {
            return None;
        }
        let mut body = std::mem::take(&mut self.body);
        body.extend_from_slice(BODY_SUFFIX);
        Some(Batch {
            body,
            tags: std::mem::take(&mut self.tags),
        })
    }
}

/// Splits a body in two halves (for a 413). Returns `None` for a body of one patch (or one that
/// does not parse: it never came from [`Batcher`]).
pub fn split_body(body: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    #[derive(Deserialize)]
    struct Body {
        patches: Vec<serde_json::Value>,
    }
    let parsed: Body = serde_json::from_slice(body).ok()?;
    if parsed.patches.len() < 2 {
        return None;
    }
    let mid = parsed.patches.len() / 2;
    let make = |ps: &[serde_json::Value]| {
        let mut out = BODY_PREFIX.to_vec();
        for (i, p) in ps.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, p).expect("writing to a Vec cannot fail");
        }
        out.extend_from_slice(BODY_SUFFIX);
        out
    };
    Some((make(&parsed.patches[..mid]), make(&parsed.patches[mid..])))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch(dev: &str, op: PatchOp, ids: &[i64]) -> Patch {
        Patch {
            device: dev.into(),
            op,
            audience_ids: ids.to_vec(),
            consent: None,
        }
    }

    #[test]
    fn device_keys_round_trip_and_bad_ids_are_refused() {
        let k = device_key(IdType::ExternalUserId, "u-1");
        assert_eq!(k, "EXTERNAL_USER_ID-u-1");
        assert_eq!(parse_device_key(&k), Some((IdType::ExternalUserId, "u-1")));
        assert_eq!(parse_device_key("MAID-6d92"), Some((IdType::Maid, "6d92")));
        assert_eq!(parse_device_key("FOO-1"), None);
        assert!(validate_device_id("abc-DEF_123+=").is_ok());
        assert!(validate_device_id("").is_err());
        assert!(validate_device_id("a/b").unwrap_err().contains("'/'"));
        assert!(validate_device_id("a b").is_err());
        assert!(validate_device_id(&"x".repeat(257)).is_err());
    }

    #[test]
    fn patch_json_is_the_contract_shape() {
        let mut p = patch("COOKIE-abc", PatchOp::Add, &[72057594038053890, 1]);
        assert_eq!(
            String::from_utf8(p.to_json()).unwrap(),
            r#"{"op":"add","path":"/COOKIE-abc/audiences","value":[72057594038053890,1]}"#
        );
        p.op = PatchOp::Remove;
        p.consent = Some(r#"{"consentType":"TCF","tcf":"CO"}"#.into());
        let v: serde_json::Value = serde_json::from_slice(&p.to_json()).unwrap();
        assert_eq!(v["op"], "remove");
        assert_eq!(v["consent"]["tcf"], "CO");
        assert_eq!(v["value"][0].as_i64(), Some(72057594038053890));
    }

    #[test]
    fn groups_per_device_and_op_and_later_change_wins() {
        let ch = |d: &str, op, a| Change {
            device: d.into(),
            op,
            audience_id: a,
            consent: None,
        };
        let out = group(vec![
            ch("COOKIE-a", PatchOp::Add, 2),
            ch("COOKIE-a", PatchOp::Add, 1),
            ch("COOKIE-b", PatchOp::Remove, 1),
            ch("COOKIE-a", PatchOp::Remove, 3),
            ch("COOKIE-c", PatchOp::Add, 1),
            ch("COOKIE-c", PatchOp::Remove, 1),
        ]);
        assert_eq!(
            out,
            vec![
                patch("COOKIE-a", PatchOp::Add, &[1, 2]),
                patch("COOKIE-a", PatchOp::Remove, &[3]),
                patch("COOKIE-b", PatchOp::Remove, &[1]),
                patch("COOKIE-c", PatchOp::Remove, &[1]),
            ]
        );
    }

    #[test]
    fn consent_is_checked_and_passed_through() {
        let ok = serde_json::json!({"consentType":"Amazon","amazonConsent":{"amazonAdStorage":"GRANTED","amazonUserData":"DENIED"}});
        assert!(validate_consent(&ok).unwrap().contains("amazonAdStorage"));
        assert!(validate_consent(&serde_json::json!({"consentType":"TCF"})).is_err());
        assert!(
            validate_consent(&serde_json::json!({"consentType":"TCF","tcf":"CO","x":1})).is_err()
        );
        assert!(validate_consent(&serde_json::json!({"consentType":"GPP","gpp":"DBA"})).is_ok());
        let half = serde_json::json!({"consentType":"Amazon","amazonConsent":{"amazonAdStorage":"YES","amazonUserData":"DENIED"}});
        assert!(validate_consent(&half).is_err());
        assert!(validate_consent(&serde_json::json!({"consentType":"X","x":1})).is_err());
        assert!(validate_consent(&serde_json::json!("TCF")).is_err());
    }

    #[test]
    fn batches_by_count() {
        let mut b = Batcher::new(2000, MAX_BODY_BYTES);
        let mut batches = Vec::new();
        for i in 0..4001 {
            if let Some(x) = b
                .push(&patch(&format!("COOKIE-{i}"), PatchOp::Add, &[1]), i)
                .unwrap()
            {
                batches.push(x);
            }
        }
        batches.extend(b.take());
        assert_eq!(
            batches.iter().map(|x| x.len()).collect::<Vec<_>>(),
            [2000, 2000, 1]
        );
        let v: serde_json::Value = serde_json::from_slice(&batches[0].body).unwrap();
        assert_eq!(v["patches"].as_array().unwrap().len(), 2000);
        assert_eq!(batches[2].tags, [4000]);
    }

    #[test]
    fn batches_by_bytes_exactly() {
        // Each patch is the same length; choose a limit that fits exactly three.
        let p = |i: usize| patch(&format!("COOKIE-{i:04}"), PatchOp::Add, &[123]);
        let len = p(0).to_json().len();
        let exact3 = BODY_PREFIX.len() + 3 * len + 2 + BODY_SUFFIX.len();
        let mut b = Batcher::new(2000, exact3);
        let mut sizes = Vec::new();
        for i in 0..7 {
            if let Some(x) = b.push(&p(i), ()).unwrap() {
                assert!(x.body.len() <= exact3);
                sizes.push((x.len(), x.body.len()));
            }
        }
        assert_eq!(
            b.pending_bytes(),
            BODY_PREFIX.len() + len + BODY_SUFFIX.len()
        );
        sizes.extend(b.take().map(|x| (x.len(), x.body.len())));
        assert_eq!(sizes[0], (3, exact3));
        assert_eq!(sizes.iter().map(|s| s.0).collect::<Vec<_>>(), [3, 3, 1]);
        // One byte less and only two fit.
        let mut b = Batcher::new(2000, exact3 - 1);
        let mut n = Vec::new();
        for i in 0..3 {
            n.extend(b.push(&p(i), ()).unwrap().map(|x| x.len()));
        }
        assert_eq!(n, [2]);
        // Real limits: bodies never exceed 1 MB even with long ids and many audiences.
        let mut b = Batcher::default();
        let ids: Vec<i64> = (0..40).map(|i| 72057594038053890 + i).collect();
        for i in 0..3000 {
            let dev = format!("EXTERNAL_USER_ID-{}", "x".repeat(200) + &i.to_string());
            if let Some(x) = b.push(&patch(&dev, PatchOp::Add, &ids), ()).unwrap() {
                assert!(x.body.len() <= MAX_BODY_BYTES && x.body.len() > MAX_BODY_BYTES - 1200);
                assert!(serde_json::from_slice::<serde_json::Value>(&x.body).is_ok());
            }
        }
    }

    #[test]
    fn an_oversized_patch_is_an_error_and_bodies_split() {
        let mut b = Batcher::new(10, 50);
        let err = b
            .push(&patch("COOKIE-abcdefghijklmnop", PatchOp::Add, &[1]), ())
            .unwrap_err();
        assert!(err.bytes > 50);
        let mut b = Batcher::default();
        for i in 0..5 {
            assert!(
                b.push(&patch(&format!("MAID-{i}"), PatchOp::Add, &[1]), ())
                    .unwrap()
                    .is_none()
            );
        }
        let body = b.take().unwrap().body;
        let (l, r) = split_body(&body).unwrap();
        let n = |x: &[u8]| {
            serde_json::from_slice::<serde_json::Value>(x).unwrap()["patches"]
                .as_array()
                .unwrap()
                .len()
        };
        assert_eq!((n(&l), n(&r)), (2, 3));
        let one = split_body(&l).and_then(|(a, _)| split_body(&a));
        assert!(one.is_none());
    }
}
