//! The linkable advertisers of a login: its agency profiles and their DSP advertisers.

use super::failure::{Failure, listing_failure};
use super::{Linking, MAX_ADVERTISERS};
use crate::amazon::LoginRef;
use crate::http::Kind;
use crate::store::accounts::ListedAdvertiser;

impl Linking {
    /// Agency profiles of the region's marketplaces, and the DSP advertisers of each: the
    /// profiles' pages are read concurrently (bounded), within the request budget, and no more
    /// pages than needed to tell that a login reaches more than [`MAX_ADVERTISERS`].
    pub(super) async fn list_linkable(
        &self,
        login: &LoginRef,
    ) -> Result<Vec<ListedAdvertiser>, Failure> {
        use futures::StreamExt;
        let profiles = self
            .amazon
            .list_profiles(login)
            .await
            .map_err(|e| listing_failure(&e))?;
        let agency: Vec<&crate::amazon::Profile> = profiles
            .iter()
            .filter(|p| {
                p.account_type.eq_ignore_ascii_case("agency")
                    && login
                        .region
                        .marketplaces()
                        .iter()
                        .any(|m| m.eq_ignore_ascii_case(&p.country_code))
            })
            .collect();
        // Futures built in a loop, not a closure over references: keeps the handler future
        // `Send` (rustc's higher-ranked closure limitation).
        let mut futs = Vec::with_capacity(agency.len());
        for p in &agency {
            futs.push(
                self.amazon
                    .list_advertisers_upto(login, p.profile_id, MAX_ADVERTISERS),
            );
        }
        let lists: Vec<_> = futures::stream::iter(futs)
            .buffered(crate::amazon::accounts::PAGE_CONCURRENCY)
            .collect()
            .await;
        let mut out = Vec::new();
        let mut reachable = 0usize;
        for (p, list) in agency.iter().zip(lists) {
            let list = list.map_err(|e| listing_failure(&e))?;
            reachable += list.total;
            for a in list.advertisers {
                if out
                    .iter()
                    .any(|x: &ListedAdvertiser| x.advertiser_id == a.advertiser_id)
                {
                    continue;
                }
                out.push(ListedAdvertiser {
                    profile_id: p.profile_id,
                    advertiser_id: a.advertiser_id,
                    name: a.name,
                    currency: a.currency,
                    country: a.country,
                    timezone: a.timezone,
                    profile_name: p.account_name.clone(),
                });
            }
        }
        if out.len() > MAX_ADVERTISERS {
            return Err(Failure::new(
                Kind::Unprocessable,
                "Too many advertiser accounts",
                format!(
                    "The Amazon login can reach {} advertiser accounts; adsync lists at most {MAX_ADVERTISERS}.",
                    reachable.max(out.len())
                ),
                "Sign in with an Amazon login scoped to fewer advertisers, then start again with POST /connections.",
            ));
        }
        out.sort_by(|a, b| {
            a.name
                .cmp(&b.name)
                .then(a.advertiser_id.cmp(&b.advertiser_id))
        });
        Ok(out)
    }
}
