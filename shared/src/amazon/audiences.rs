//! Data Provider audiences: metadata (`/v2/dp/audiencemetadata`, spaced ≥ 1 s per client) and
//! membership patches (`PATCH /v2/dp/audience`, ≤ 100/s per client).
//!
//! Audience ids exceed 2^53: they stay `i64` end to end (serde_json reads integers exactly; no
//! value here ever passes through `f64`).

use super::accounts::de_i64;
use super::client::{AccountCtx, AccountScope, AmazonClient, ApiRequest, HeaderStyle};
use super::error::AmazonError;
use super::ratelimit::Limit;
use super::tokens::LoginRef;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use crate::domain::audience_fee::AudienceFee;

/// A new audience (`POST /v2/dp/audiencemetadata/`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewAudience {
    pub name: String,
    pub description: String,
    pub advertiser_id: i64,
    pub external_audience_id: String,
    pub ttl: u64,
    pub data_source_country: Vec<String>,
    pub audience_fees: Option<Vec<AudienceFee>>,
}

/// An update (`PUT /v2/dp/audiencemetadata/{id}`): the full updatable metadata; `name` never.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AudienceUpdate {
    pub description: String,
    pub ttl: u64,
    pub data_source_country: Vec<String>,
    pub audience_fees: Option<Vec<AudienceFee>>,
}

/// An audience as Amazon describes it, flattened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Audience {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub advertiser_id: i64,
    pub external_audience_id: String,
    pub ttl: Option<u64>,
    pub data_source_country: Vec<String>,
    pub audience_fees: Vec<AudienceFee>,
    pub audience_size: Option<AudienceSize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AudienceSize {
    #[serde(default)]
    pub received_record_size: u64,
    #[serde(default)]
    pub matched_record_size: u64,
    #[serde(default)]
    pub match_rate: f64,
}

/// The answer to a membership patch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PatchAck {
    pub job_id: String,
    pub request_id: Option<String>,
}

// ---- wire shapes ----

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireCreate<'a> {
    name: &'a str,
    description: &'a str,
    advertiser_id: i64,
    metadata: WireMetadataOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireUpdate<'a> {
    description: &'a str,
    metadata: WireMetadataOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireMetadataOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    external_audience_id: Option<&'a str>,
    ttl: u64,
    data_source_country: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    audience_fees: Option<&'a [AudienceFee]>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireEnvelope {
    #[serde(default)]
    request_id: Option<String>,
    audience: Option<WireAudience>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireAudience {
    #[serde(deserialize_with = "de_i64", alias = "audienceId")]
    id: i64,
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
    #[serde(deserialize_with = "de_i64")]
    advertiser_id: i64,
    #[serde(default)]
    metadata: WireMetadataIn,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireMetadataIn {
    #[serde(default)]
    external_audience_id: String,
    #[serde(default)]
    ttl: Option<u64>,
    #[serde(default)]
    data_source_country: Vec<String>,
    #[serde(default)]
    audience_fees: Vec<AudienceFee>,
    #[serde(default)]
    audience_size: Option<AudienceSize>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePatchAck {
    job_id: String,
    #[serde(default)]
    request_id: Option<String>,
}

/// Parses the metadata answer `{"requestId","audience":{…}}` (a bare audience is accepted too).
pub(crate) fn parse_audience(body: &[u8]) -> Result<Audience, serde_json::Error> {
    let env: WireEnvelope = serde_json::from_slice(body)?;
    let a = match env.audience {
        Some(a) => a,
        None => serde_json::from_slice::<WireAudience>(body)?,
    };
    let _ = env.request_id;
    Ok(Audience {
        id: a.id,
        name: a.name,
        description: a.description,
        advertiser_id: a.advertiser_id,
        external_audience_id: a.metadata.external_audience_id,
        ttl: a.metadata.ttl,
        data_source_country: a.metadata.data_source_country,
        audience_fees: a.metadata.audience_fees,
        audience_size: a.metadata.audience_size,
    })
}

pub(crate) fn create_body(a: &NewAudience) -> Vec<u8> {
    serde_json::to_vec(&WireCreate {
        name: &a.name,
        description: &a.description,
        advertiser_id: a.advertiser_id,
        metadata: WireMetadataOut {
            kind: "DATA_PROVIDER",
            external_audience_id: Some(&a.external_audience_id),
            ttl: a.ttl,
            data_source_country: &a.data_source_country,
            audience_fees: a.audience_fees.as_deref(),
        },
    })
    .expect("serialising plain structs cannot fail")
}

pub(crate) fn update_body(u: &AudienceUpdate) -> Vec<u8> {
    serde_json::to_vec(&WireUpdate {
        description: &u.description,
        metadata: WireMetadataOut {
            kind: "DATA_PROVIDER",
            external_audience_id: None,
            ttl: u.ttl,
            data_source_country: &u.data_source_country,
            audience_fees: u.audience_fees.as_deref(),
        },
    })
    .expect("serialising plain structs cannot fail")
}

fn dp_request(
    method: reqwest::Method,
    path: String,
    scope: AccountScope,
    body: Option<Vec<u8>>,
    not_found_is_account: bool,
    limit: Limit,
) -> ApiRequest {
    ApiRequest {
        method,
        path,
        headers: HeaderStyle::Advertising {
            profile_id: Some(scope.profile_id),
        },
        body: body.map(Bytes::from),
        account: Some(AccountCtx {
            advertiser_id: scope.advertiser_id,
            not_found_is_account,
        }),
        limit: Some(limit),
    }
}

impl AmazonClient {
    /// `POST /v2/dp/audiencemetadata/`.
    pub async fn create_audience(
        &self,
        login: &LoginRef,
        scope: AccountScope,
        a: &NewAudience,
    ) -> Result<Audience, AmazonError> {
        let req = dp_request(
            reqwest::Method::POST,
            "/v2/dp/audiencemetadata/".into(),
            scope,
            Some(create_body(a)),
            true,
            Limit::Metadata,
        );
        self.audience_call(login, &req).await
    }

    /// `GET /v2/dp/audiencemetadata/{id}` (with `audienceSize`). A 404 is `Rejected` (no such
    /// audience), not `AccountNotFound`.
    pub async fn get_audience(
        &self,
        login: &LoginRef,
        scope: AccountScope,
        audience_id: i64,
    ) -> Result<Audience, AmazonError> {
        let req = dp_request(
            reqwest::Method::GET,
            format!("/v2/dp/audiencemetadata/{audience_id}"),
            scope,
            None,
            false,
            Limit::Metadata,
        );
        self.audience_call(login, &req).await
    }

    /// `PUT /v2/dp/audiencemetadata/{id}` with the full updatable metadata.
    pub async fn update_audience(
        &self,
        login: &LoginRef,
        scope: AccountScope,
        audience_id: i64,
        u: &AudienceUpdate,
    ) -> Result<Audience, AmazonError> {
        let req = dp_request(
            reqwest::Method::PUT,
            format!("/v2/dp/audiencemetadata/{audience_id}"),
            scope,
            Some(update_body(u)),
            false,
            Limit::Metadata,
        );
        self.audience_call(login, &req).await
    }

    /// `PATCH /v2/dp/audience`; `body` is the whole `{"patches":[…]}` document. 413 comes back
    /// as `PayloadTooLarge` (never retried: split and resend).
    pub async fn patch_audiences(
        &self,
        login: &LoginRef,
        scope: AccountScope,
        body: Vec<u8>,
    ) -> Result<PatchAck, AmazonError> {
        let req = dp_request(
            reqwest::Method::PATCH,
            "/v2/dp/audience".into(),
            scope,
            Some(body),
            true,
            Limit::Patch,
        );
        let resp = self.send(login, &req).await?;
        let ack: WirePatchAck = resp.json("PATCH /v2/dp/audience")?;
        Ok(PatchAck {
            job_id: ack.job_id,
            request_id: ack.request_id.or(resp.request_id),
        })
    }

    async fn audience_call(
        &self,
        login: &LoginRef,
        req: &ApiRequest,
    ) -> Result<Audience, AmazonError> {
        let resp = self.send(login, req).await?;
        parse_audience(&resp.body).map_err(|e| AmazonError::Server {
            status: resp.status,
            message: format!("unexpected audience metadata answer: {e}"),
            request_id: resp.request_id.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_body_matches_the_contract() {
        let a = NewAudience {
            name: "AAM segment 1234567 Luxury Travelers".into(),
            description: "Adobe AAM segment 1234567".into(),
            advertiser_id: 4728736040201,
            external_audience_id: "aam-1234567".into(),
            ttl: 2592000,
            data_source_country: vec!["US".into()],
            audience_fees: None,
        };
        let v: serde_json::Value = serde_json::from_slice(&create_body(&a)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"name":"AAM segment 1234567 Luxury Travelers","description":"Adobe AAM segment 1234567",
                "advertiserId":4728736040201_i64,
                "metadata":{"type":"DATA_PROVIDER","externalAudienceId":"aam-1234567","ttl":2592000,"dataSourceCountry":["US"]}})
        );
        let u = AudienceUpdate {
            description: "d".into(),
            ttl: 10,
            data_source_country: vec!["US".into(), "CA".into()],
            audience_fees: Some(vec![AudienceFee {
                cpm_cents: 150,
                currency: "USD".into(),
            }]),
        };
        let v: serde_json::Value = serde_json::from_slice(&update_body(&u)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"description":"d","metadata":{"type":"DATA_PROVIDER","ttl":10,"dataSourceCountry":["US","CA"],
                "audienceFees":[{"cpmCents":150,"currency":"USD"}]}})
        );
        assert!(v.get("name").is_none());
    }

    #[test]
    fn audience_ids_above_2_pow_53_are_exact() {
        let body = br#"{"requestId":"a1","audience":{"id":72057594038053891,"name":"AAM segment 1234567 Luxury Travelers",
          "description":"d","advertiserId":4728736040201,
          "metadata":{"type":"DATA_PROVIDER","externalAudienceId":"aam-1","ttl":2592000,"dataSourceCountry":["US"],
          "audienceFees":[{"cpmCents":150,"currency":"USD"}],"audienceSize":{"receivedRecordSize":120000,"matchedRecordSize":81000,"matchRate":0.675}}}}"#;
        let a = parse_audience(body).unwrap();
        assert_eq!(a.id, 72057594038053891);
        assert_eq!(a.advertiser_id, 4728736040201);
        assert_eq!(a.external_audience_id, "aam-1");
        assert_eq!(a.ttl, Some(2592000));
        assert_eq!(a.audience_fees[0].cpm_cents, 150);
        let size = a.audience_size.unwrap();
        assert_eq!(size.matched_record_size, 81000);
        assert_eq!(size.match_rate, 0.675);
        // Our own serde keeps the id exact too.
        let back: Audience =
            serde_json::from_str(&serde_json::to_string(&parse_audience(body).unwrap()).unwrap())
                .unwrap();
        assert_eq!(back.id, 72057594038053891);
        // A float id is refused rather than rounded.
        assert!(parse_audience(br#"{"audience":{"id":7.2e16,"advertiserId":1}}"#).is_err());
    }
}
