//! Amazon Ads regions and the URLs of each region's consent page, token endpoint and Ads API host
//! (docs/amazon-contract.md "Regions and hosts"), with the environment overrides that point every
//! region at the local sandbox.

pub use crate::domain::account::Region;

/// The three URLs of each region. Build with [`Endpoints::amazon`] (production) or
/// [`Endpoints::from_env`] (production, with `AMAZON_ADS_API_URL`, `AMAZON_LWA_AUTH_URL` and
/// `AMAZON_LWA_TOKEN_URL` each replacing that URL for every region when set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    consent: [String; 3],
    token: [String; 3],
    ads_api: [String; 3],
}

impl Endpoints {
    /// Amazon's production URLs.
    pub fn amazon() -> Self {
        Self {
            consent: [
                "https://www.amazon.com/ap/oa".into(),
                "https://eu.account.amazon.com/ap/oa".into(),
                "https://apac.account.amazon.com/ap/oa".into(),
            ],
            token: [
                "https://api.amazon.com/auth/o2/token".into(),
                "https://api.amazon.co.uk/auth/o2/token".into(),
                "https://api.amazon.co.jp/auth/o2/token".into(),
            ],
            ads_api: [
                "https://advertising-api.amazon.com".into(),
                "https://advertising-api-eu.amazon.com".into(),
                "https://advertising-api-fe.amazon.com".into(),
            ],
        }
    }

    /// Amazon's URLs with the environment overrides applied.
    pub fn from_env() -> Self {
        Self::amazon().with_overrides(
            crate::config::optional("AMAZON_LWA_AUTH_URL").as_deref(),
            crate::config::optional("AMAZON_LWA_TOKEN_URL").as_deref(),
            crate::config::optional("AMAZON_ADS_API_URL").as_deref(),
        )
    }

    /// Replaces each given URL for every region (used by `from_env` and by tests).
    pub fn with_overrides(
        mut self,
        consent: Option<&str>,
        token: Option<&str>,
        ads_api: Option<&str>,
    ) -> Self {
        if let Some(u) = consent {
            self.consent = std::array::from_fn(|_| u.trim().to_string());
        }
        if let Some(u) = token {
            self.token = std::array::from_fn(|_| u.trim().to_string());
        }
        if let Some(u) = ads_api {
            // Paths are appended to the host, so a trailing slash would double up.
            let u = u.trim().trim_end_matches('/').to_string();
            self.ads_api = std::array::from_fn(|_| u.clone());
        }
        self
    }

    /// Every region served by one base URL (the sandbox serves LwA under `/ap/oa` and
    /// `/auth/o2/token` and the Ads API on the same port).
    pub fn single_host(base: &str) -> Self {
        let base = base.trim().trim_end_matches('/');
        Self::amazon().with_overrides(
            Some(&format!("{base}/ap/oa")),
            Some(&format!("{base}/auth/o2/token")),
            Some(base),
        )
    }

    pub fn consent_url(&self, r: Region) -> &str {
        &self.consent[r.index()]
    }

    pub fn token_url(&self, r: Region) -> &str {
        &self.token[r.index()]
    }

    pub fn ads_api(&self, r: Region) -> &str {
        &self.ads_api[r.index()]
    }
}

impl Default for Endpoints {
    fn default() -> Self {
        Self::amazon()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_urls_follow_the_contract() {
        let e = Endpoints::amazon();
        assert_eq!(e.consent_url(Region::NA), "https://www.amazon.com/ap/oa");
        assert_eq!(
            e.consent_url(Region::EU),
            "https://eu.account.amazon.com/ap/oa"
        );
        assert_eq!(
            e.consent_url(Region::FE),
            "https://apac.account.amazon.com/ap/oa"
        );
        assert_eq!(
            e.token_url(Region::NA),
            "https://api.amazon.com/auth/o2/token"
        );
        assert_eq!(
            e.token_url(Region::EU),
            "https://api.amazon.co.uk/auth/o2/token"
        );
        assert_eq!(
            e.token_url(Region::FE),
            "https://api.amazon.co.jp/auth/o2/token"
        );
        assert_eq!(e.ads_api(Region::NA), "https://advertising-api.amazon.com");
        assert_eq!(
            e.ads_api(Region::EU),
            "https://advertising-api-eu.amazon.com"
        );
        assert_eq!(
            e.ads_api(Region::FE),
            "https://advertising-api-fe.amazon.com"
        );
    }

    #[test]
    fn each_override_replaces_only_its_url_for_every_region() {
        let e = Endpoints::amazon().with_overrides(None, None, Some("http://127.0.0.1:9400/"));
        for r in Region::ALL {
            assert_eq!(e.ads_api(r), "http://127.0.0.1:9400");
        }
        assert_eq!(
            e.token_url(Region::EU),
            "https://api.amazon.co.uk/auth/o2/token"
        );
        assert_eq!(
            e.consent_url(Region::FE),
            "https://apac.account.amazon.com/ap/oa"
        );

        let e =
            Endpoints::amazon().with_overrides(Some("http://x/ap/oa"), Some("http://x/t"), None);
        for r in Region::ALL {
            assert_eq!(e.consent_url(r), "http://x/ap/oa");
            assert_eq!(e.token_url(r), "http://x/t");
        }
        assert_eq!(
            e.ads_api(Region::FE),
            "https://advertising-api-fe.amazon.com"
        );
    }
}
