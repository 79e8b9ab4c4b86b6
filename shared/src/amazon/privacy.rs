//! The Data Provider's privacy and identity calls (`docs/amazon-contract.md`):
//!
//! - `PATCH /v2/dp/users` with `{"operation":"DELETE","users":[…]}` (≤ 1000 users, 202
//!   `{"requestId"}`): Amazon deletes each person's data for the advertiser, audiences included.
//!   It shares the 100 requests/s of `PATCH /v2/dp/audience` ([`Limit::Patch`]).
//! - `POST /dp/records/hashed/` (no `/v2`, trailing slash) with the versioned media type as
//!   `Content-Type` and `Accept`, ≤ 5 MB per body, 10 requests/s ([`Limit::HashedRecords`]): the
//!   hashed PII behind `EXTERNAL_USER_ID-<externalId>` members.
//!
//! Bodies are built here from already hashed values; nothing in this module sees raw PII.

use super::client::{AccountCtx, AccountScope, AmazonClient, ApiRequest, HeaderStyle};
use super::error::AmazonError;
use super::ratelimit::Limit;
use super::tokens::LoginRef;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Most users per deletion request.
pub const MAX_DELETION_USERS: usize = 1000;
/// Largest hashed-records body Amazon takes (5 MB, counted as 5 000 000 bytes to stay clear of
/// either reading of "MB").
pub const MAX_RECORDS_BODY_BYTES: usize = 5_000_000;
/// The media type of `POST /dp/records/hashed/` (both `Content-Type` and `Accept`).
pub const HASHED_RECORDS_MEDIA_TYPE: &str = "application/vnd.dpuploadhashedrecordsrequest.v3+json";

/// One person to delete: `type` is `COOKIE`, `MAID` or `EXTERNAL_USER_ID`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UserId<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub value: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireUser<'a> {
    user_id: UserId<'a>,
    /// A string on the wire (the contract), unlike the audience calls' JSON numbers.
    advertiser_id: String,
    consent_time: i64,
}

#[derive(Serialize)]
struct WireDeletion<'a> {
    operation: &'static str,
    users: Vec<WireUser<'a>>,
}

/// The `PATCH /v2/dp/users` body for one advertiser; `consent_time_ms` is the request's time.
pub fn deletion_body(users: &[UserId<'_>], advertiser_id: i64, consent_time_ms: i64) -> Vec<u8> {
    let body = WireDeletion {
        operation: "DELETE",
        users: users
            .iter()
            .map(|u| WireUser {
                user_id: u.clone(),
                advertiser_id: advertiser_id.to_string(),
                consent_time: consent_time_ms,
            })
            .collect(),
    };
    serde_json::to_vec(&body).expect("serialising plain structs cannot fail")
}

/// One hashed record: each field the 64-hex SHA-256 of the normalised value, absent when unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HashedFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
}

/// The records of one `externalId`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HashedRecord {
    pub external_id: String,
    pub hashed_records: Vec<HashedFields>,
}

#[derive(Serialize)]
struct WireRecords<'a> {
    records: &'a [HashedRecord],
}

/// The `POST /dp/records/hashed/` body.
pub fn records_body(records: &[HashedRecord]) -> Vec<u8> {
    serde_json::to_vec(&WireRecords { records }).expect("serialising plain structs cannot fail")
}

/// Bytes one record adds to a body (its JSON plus the separating comma).
pub fn record_bytes(r: &HashedRecord) -> usize {
    serde_json::to_vec(r).map(|v| v.len()).unwrap_or(0) + 1
}

/// Splits records into bodies of at most `max_bytes` each (`{"records":[` + `]}` included), in
/// order. A record that alone exceeds the limit gets a body of its own (Amazon answers 413).
pub fn pack_records(records: Vec<HashedRecord>, max_bytes: usize) -> Vec<Vec<HashedRecord>> {
    const ENVELOPE: usize = r#"{"records":[]}"#.len();
    let mut out = Vec::new();
    let mut cur: Vec<HashedRecord> = Vec::new();
    let mut size = ENVELOPE;
    for r in records {
        let n = record_bytes(&r);
        if !cur.is_empty() && size + n > max_bytes {
            out.push(std::mem::take(&mut cur));
            size = ENVELOPE;
        }
        size += n;
        cur.push(r);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireAck {
    #[serde(default)]
    request_id: Option<String>,
}

fn request(
    method: reqwest::Method,
    path: &str,
    scope: AccountScope,
    body: Vec<u8>,
    headers: HeaderStyle,
    limit: Limit,
) -> ApiRequest {
    ApiRequest {
        method,
        path: path.to_string(),
        headers,
        body: Some(Bytes::from(body)),
        account: Some(AccountCtx {
            advertiser_id: scope.advertiser_id,
            not_found_is_account: true,
        }),
        limit: Some(limit),
    }
}

impl AmazonClient {
    /// `PATCH /v2/dp/users` (operation `DELETE`); `body` from [`deletion_body`]. Returns Amazon's
    /// request id.
    pub async fn delete_users(
        &self,
        login: &LoginRef,
        scope: AccountScope,
        body: Vec<u8>,
    ) -> Result<Option<String>, AmazonError> {
        let req = request(
            reqwest::Method::PATCH,
            "/v2/dp/users",
            scope,
            body,
            HeaderStyle::Advertising {
                profile_id: Some(scope.profile_id),
            },
            Limit::Patch,
        );
        let resp = self.send(login, &req).await?;
        let ack: WireAck = resp.json("PATCH /v2/dp/users")?;
        Ok(ack.request_id.or(resp.request_id))
    }

    /// `POST /dp/records/hashed/`; `body` from [`records_body`]. 413 comes back as
    /// `PayloadTooLarge` (split and resend). Returns Amazon's request id.
    pub async fn upload_hashed_records(
        &self,
        login: &LoginRef,
        scope: AccountScope,
        body: Vec<u8>,
    ) -> Result<Option<String>, AmazonError> {
        let req = request(
            reqwest::Method::POST,
            "/dp/records/hashed/",
            scope,
            body,
            HeaderStyle::Versioned {
                profile_id: Some(scope.profile_id),
                media_type: HASHED_RECORDS_MEDIA_TYPE,
            },
            Limit::HashedRecords,
        );
        let resp = self.send(login, &req).await?;
        let ack: WireAck = resp.json("POST /dp/records/hashed/")?;
        Ok(ack.request_id.or(resp.request_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deletion_body_matches_the_contract() {
        let users = [
            UserId {
                kind: "MAID",
                value: "m-1",
            },
            UserId {
                kind: "COOKIE",
                value: "c-1",
            },
        ];
        let v: serde_json::Value =
            serde_json::from_slice(&deletion_body(&users, 4728736040201, 1_700_000_000_123))
                .unwrap();
        assert_eq!(
            v,
            json!({"operation":"DELETE","users":[
                {"userId":{"type":"MAID","value":"m-1"},"advertiserId":"4728736040201","consentTime":1_700_000_000_123_i64},
                {"userId":{"type":"COOKIE","value":"c-1"},"advertiserId":"4728736040201","consentTime":1_700_000_000_123_i64}]})
        );
    }

    #[test]
    fn records_are_packed_under_the_byte_limit_in_order() {
        let rec = |i: usize| HashedRecord {
            external_id: format!("u{i}"),
            hashed_records: vec![HashedFields {
                email: Some("a".repeat(64)),
                ..Default::default()
            }],
        };
        let records: Vec<HashedRecord> = (0..100).map(rec).collect();
        let one = records_body(&records[..1]).len();
        let bodies = pack_records(records.clone(), one * 10);
        assert!(bodies.len() > 1);
        let flat: Vec<HashedRecord> = bodies.iter().flatten().cloned().collect();
        assert_eq!(flat, records, "nothing lost, nothing reordered");
        for b in &bodies {
            assert!(
                records_body(b).len() <= one * 10,
                "{}",
                records_body(b).len()
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&records_body(&records[..1])).unwrap();
        assert_eq!(
            v,
            json!({"records":[{"externalId":"u0","hashedRecords":[{"email":"a".repeat(64)}]}]})
        );
    }
}
