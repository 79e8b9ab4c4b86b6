//! Profiles (`GET /v2/profiles`) and DSP advertisers (`GET /dsp/advertisers`).

use super::client::{AmazonClient, ApiRequest, HeaderStyle};
use super::error::AmazonError;
use super::tokens::LoginRef;
use serde::{Deserialize, Deserializer, Serialize};

/// An Ads API profile. `account_type` is `accountInfo.type` (`agency` for DSP and Data Provider
/// accounts, the only ones adsync links; callers filter).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub profile_id: i64,
    pub country_code: String,
    pub currency_code: String,
    pub timezone: String,
    pub account_type: String,
    pub account_name: String,
    pub account_id: String,
}

/// A DSP advertiser reachable through an agency profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Advertiser {
    pub advertiser_id: i64,
    pub name: String,
    pub currency: String,
    pub country: String,
    pub timezone: String,
}

/// An int64 that may arrive as a JSON number or a string of digits (DSP advertiser ids arrive
/// as strings, Data Provider ids as numbers above 2^53). Never goes through `f64`.
pub(crate) fn de_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        I(i64),
        S(String),
    }
    match NumOrStr::deserialize(d)? {
        NumOrStr::I(i) => Ok(i),
        NumOrStr::S(s) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| serde::de::Error::custom(format!("expected an integer id, got {s:?}"))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireProfile {
    #[serde(deserialize_with = "de_i64")]
    profile_id: i64,
    #[serde(default)]
    country_code: String,
    #[serde(default)]
    currency_code: String,
    #[serde(default)]
    timezone: String,
    #[serde(default)]
    account_info: WireAccountInfo,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireAccountInfo {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireAdvertiser {
    #[serde(deserialize_with = "de_i64")]
    advertiser_id: i64,
    #[serde(default)]
    name: String,
    #[serde(default)]
    currency: String,
    #[serde(default)]
    country: String,
    #[serde(default)]
    timezone: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdvertiserPage {
    #[serde(default)]
    total_results: Option<u64>,
    #[serde(default)]
    response: Vec<WireAdvertiser>,
}

/// DSP advertiser pages hold at most 100.
const PAGE: usize = 100;

pub(crate) fn parse_profiles(body: &[u8]) -> Result<Vec<Profile>, serde_json::Error> {
    let wire: Vec<WireProfile> = serde_json::from_slice(body)?;
    Ok(wire
        .into_iter()
        .map(|p| Profile {
            profile_id: p.profile_id,
            country_code: p.country_code,
            currency_code: p.currency_code,
            timezone: p.timezone,
            account_type: p.account_info.kind,
            account_name: p.account_info.name,
            account_id: p.account_info.id,
        })
        .collect())
}

impl AmazonClient {
    /// Every profile the login can see on its region's host (`GET /v2/profiles`).
    pub async fn list_profiles(&self, login: &LoginRef) -> Result<Vec<Profile>, AmazonError> {
        let req = ApiRequest {
            method: reqwest::Method::GET,
            path: "/v2/profiles".into(),
            headers: HeaderStyle::Advertising { profile_id: None },
            body: None,
            account: None,
            limit: None,
        };
        let resp = self.send(login, &req).await?;
        parse_profiles(&resp.body).map_err(|e| AmazonError::Server {
            status: resp.status,
            message: format!("unexpected /v2/profiles answer: {e}"),
            request_id: resp.request_id.clone(),
        })
    }

    /// Every DSP advertiser of an agency profile (`GET /dsp/advertisers`, 100 per page).
    pub async fn list_advertisers(
        &self,
        login: &LoginRef,
        profile_id: i64,
    ) -> Result<Vec<Advertiser>, AmazonError> {
        Ok(self
            .list_advertisers_upto(login, profile_id, usize::MAX)
            .await?
            .advertisers)
    }

    /// The DSP advertisers of an agency profile, reading no more pages than needed to know
    /// whether there are more than `cap`. The first page says how many there are
    /// (`totalResults`); the other pages are then fetched [`PAGE_CONCURRENCY`] at a time (each
    /// call bounded by the request budget, `crate::budget`). Without `totalResults`, pages are
    /// read one after another until a short page.
    pub async fn list_advertisers_upto(
        &self,
        login: &LoginRef,
        profile_id: i64,
        cap: usize,
    ) -> Result<AdvertiserList, AmazonError> {
        use futures::StreamExt;
        let first = self.advertiser_page(login, profile_id, 0).await?;
        let mut total = first.total_results;
        let mut out: Vec<Advertiser> = Vec::new();
        let mut last_len = first.response.len();
        extend(&mut out, first);
        match total {
            Some(t) => {
                // Enough pages to hold min(total, cap + 1) advertisers.
                let want = (t.min(cap.saturating_add(1) as u64)) as usize;
                let starts: Vec<usize> =
                    (1..).map(|k| k * PAGE).take_while(|s| *s < want).collect();
                let pages: Vec<Result<AdvertiserPage, AmazonError>> = futures::stream::iter(starts)
                    .map(|start| self.advertiser_page(login, profile_id, start))
                    .buffered(PAGE_CONCURRENCY)
                    .collect()
                    .await;
                for p in pages {
                    extend(&mut out, p?);
                }
            }
            None => {
                while last_len == PAGE && out.len() <= cap {
                    let p = self.advertiser_page(login, profile_id, out.len()).await?;
                    last_len = p.response.len();
                    total = total.or(p.total_results);
                    extend(&mut out, p);
                }
            }
        }
        Ok(AdvertiserList {
            total: total
                .map(|t| t as usize)
                .unwrap_or(out.len())
                .max(out.len()),
            advertisers: out,
        })
    }

    async fn advertiser_page(
        &self,
        login: &LoginRef,
        profile_id: i64,
        start: usize,
    ) -> Result<AdvertiserPage, AmazonError> {
        let req = ApiRequest {
            method: reqwest::Method::GET,
            path: format!("/dsp/advertisers?startIndex={start}&count={PAGE}"),
            headers: HeaderStyle::Advertising {
                profile_id: Some(profile_id),
            },
            body: None,
            account: None,
            limit: None,
        };
        let resp = self.send(login, &req).await?;
        resp.json("/dsp/advertisers")
    }
}

/// A profile's advertisers as far as they were read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdvertiserList {
    pub advertisers: Vec<Advertiser>,
    /// How many the profile has (Amazon's `totalResults`, else as many as were read).
    pub total: usize,
}

/// Advertiser pages fetched at once.
pub const PAGE_CONCURRENCY: usize = 4;

fn extend(out: &mut Vec<Advertiser>, page: AdvertiserPage) {
    out.extend(page.response.into_iter().map(|a| Advertiser {
        advertiser_id: a.advertiser_id,
        name: a.name,
        currency: a.currency,
        country: a.country,
        timezone: a.timezone,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_parse_with_account_info() {
        let body = br#"[{"profileId":3333333333333333,"countryCode":"US","currencyCode":"USD","timezone":"America/Los_Angeles",
          "accountInfo":{"marketplaceStringId":"ATVPDKIKX0DER","id":"ENTITY2ABCDEF","type":"agency","name":"Acme DSP US"}},
          {"profileId":9007199254740993,"countryCode":"UK","currencyCode":"GBP","timezone":"Europe/London","accountInfo":{"type":"seller"}}]"#;
        let p = parse_profiles(body).unwrap();
        assert_eq!(p[0].profile_id, 3333333333333333);
        assert_eq!(p[0].account_type, "agency");
        assert_eq!(p[0].account_name, "Acme DSP US");
        assert_eq!(p[0].account_id, "ENTITY2ABCDEF");
        // Above 2^53: exact.
        assert_eq!(p[1].profile_id, 9007199254740993);
        assert_eq!(p[1].account_type, "seller");
    }

    #[test]
    fn advertiser_ids_arrive_as_strings() {
        let page: AdvertiserPage = serde_json::from_slice(
            br#"{"totalResults":2,"response":[{"advertiserId":"4728736040201","name":"Acme","currency":"USD","url":"x","country":"US","timezone":"America/New_York"},{"advertiserId":9007199254740993,"name":"B","currency":"EUR","country":"DE","timezone":"Europe/Berlin"}]}"#,
        )
        .unwrap();
        assert_eq!(page.total_results, Some(2));
        assert_eq!(page.response[0].advertiser_id, 4728736040201);
        assert_eq!(page.response[1].advertiser_id, 9007199254740993);
        let bad =
            serde_json::from_slice::<AdvertiserPage>(br#"{"response":[{"advertiserId":"12ab"}]}"#);
        assert!(
            bad.unwrap_err()
                .to_string()
                .contains("expected an integer id")
        );
    }
}
