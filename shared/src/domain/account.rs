//! The Amazon Ads account a call acts for, as every layer names it: the [`Region`] a login was
//! linked in, the linked login ([`LoginRef`]: region + the secret holding its refresh token), and
//! the DSP account ([`AccountScope`]: agency profile + advertiser). Pure data, no I/O.

use serde::{Deserialize, Serialize};

/// An Amazon Ads region. Serde: `"NA"`, `"EU"`, `"FE"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Region {
    NA,
    EU,
    FE,
}

impl Region {
    pub const ALL: [Region; 3] = [Region::NA, Region::EU, Region::FE];

    /// Parses `NA`, `EU` or `FE`, case-insensitively (surrounding white space ignored).
    pub fn parse(s: &str) -> Option<Region> {
        match s.trim().to_ascii_uppercase().as_str() {
            "NA" => Some(Region::NA),
            "EU" => Some(Region::EU),
            "FE" => Some(Region::FE),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Region::NA => "NA",
            Region::EU => "EU",
            Region::FE => "FE",
        }
    }

    /// The profile `countryCode`s served by this region's Ads API host.
    pub fn marketplaces(&self) -> &'static [&'static str] {
        match self {
            Region::NA => &["US", "CA", "MX", "BR"],
            Region::EU => &[
                "UK", "GB", "FR", "IT", "ES", "DE", "NL", "AE", "PL", "TR", "EG", "SA", "SE", "BE",
                "IN", "ZA",
            ],
            Region::FE => &["JP", "AU", "SG"],
        }
    }

    /// The region's slot in per-region tables (`Endpoints`).
    pub(crate) fn index(self) -> usize {
        match self {
            Region::NA => 0,
            Region::EU => 1,
            Region::FE => 2,
        }
    }
}

impl std::fmt::Display for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A linked login: the region it was linked in and the name of the secret holding its refresh
/// token (and cached access token).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LoginRef {
    pub region: Region,
    pub secret_name: String,
}

/// The DSP account a call acts for: the agency profile (sent as `Amazon-Advertising-API-Scope`)
/// and the advertiser.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AccountScope {
    pub profile_id: i64,
    pub advertiser_id: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_is_case_insensitive_and_serde_uses_codes() {
        assert_eq!(Region::parse("na"), Some(Region::NA));
        assert_eq!(Region::parse(" Eu "), Some(Region::EU));
        assert_eq!(Region::parse("FE"), Some(Region::FE));
        assert_eq!(Region::parse("US"), None);
        assert_eq!(serde_json::to_string(&Region::EU).unwrap(), "\"EU\"");
        assert_eq!(
            serde_json::from_str::<Region>("\"FE\"").unwrap(),
            Region::FE
        );
        for r in Region::ALL {
            assert_eq!(Region::parse(r.as_str()), Some(r));
        }
    }

    #[test]
    fn marketplaces_match_the_hosts() {
        assert_eq!(Region::NA.marketplaces(), ["US", "CA", "MX", "BR"]);
        assert!(Region::EU.marketplaces().contains(&"UK"));
        assert!(Region::EU.marketplaces().contains(&"IN"));
        assert_eq!(Region::FE.marketplaces(), ["JP", "AU", "SG"]);
        // No country is served by two hosts.
        for a in Region::ALL {
            for b in Region::ALL {
                if a != b {
                    assert!(
                        a.marketplaces()
                            .iter()
                            .all(|c| !b.marketplaces().contains(c))
                    );
                }
            }
        }
    }
}
