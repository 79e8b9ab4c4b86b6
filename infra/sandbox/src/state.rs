//! The sandbox's in-memory world: LwA clients, users with their profiles and advertisers, codes and
//! tokens, Data Provider audiences with their members, accepted events, faults, the request log and
//! the rate-limit windows. Everything sits behind one mutex that is never held across an await.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::faults::Fault;

/// The seeded LwA client (any redirect URI).
pub const SEED_CLIENT_ID: &str = "amzn1.application-oa2-client.adsynclocal";
pub const SEED_CLIENT_SECRET: &str = "adsync-local-client-secret";
/// The user who "logs in" when the consent URL names none.
pub const SEED_USER: &str = "sandbox-user";
/// A user whose agency profiles have no advertisers.
pub const SEED_EMPTY_USER: &str = "sandbox-empty";

/// First Data Provider audience id: above 2^53 so that any float round trip shows.
pub const FIRST_AUDIENCE_ID: i64 = 72_057_594_038_053_890;
/// Authorization codes live 5 minutes (LwA).
pub const CODE_TTL: Duration = Duration::from_secs(300);
/// The request log keeps this many entries (oldest dropped first).
pub const REQUEST_LOG_CAP: usize = 200_000;

#[derive(Clone, Debug)]
pub struct Client {
    pub client_id: String,
    pub client_secret: String,
    /// Empty = any redirect URI is allowed.
    pub redirect_uris: Vec<String>,
    /// Each refresh issues a new refresh token and revokes the one used (rotation).
    pub rotate_refresh_tokens: bool,
}

#[derive(Clone, Debug)]
pub struct User {
    pub user_id: String,
    pub profile_ids: Vec<i64>,
    /// Access tokens carry the epoch they were issued in; expiring bumps it.
    pub token_epoch: u64,
}

#[derive(Clone, Debug)]
pub struct Profile {
    pub profile_id: i64,
    pub user_id: String,
    pub country_code: String,
    pub currency_code: String,
    pub timezone: String,
    pub account_type: String,
    pub name: String,
    pub account_id: String,
    pub marketplace_string_id: String,
    pub advertiser_ids: Vec<i64>,
}

#[derive(Clone, Debug)]
pub struct Advertiser {
    pub advertiser_id: i64,
    pub name: String,
    pub currency: String,
    pub country: String,
    pub timezone: String,
    pub url: String,
}

#[derive(Clone, Debug)]
pub struct AuthCode {
    pub client_id: String,
    pub redirect_uri: String,
    /// The PKCE S256 challenge of the consent, when it carried one: the exchange must then
    /// present the matching `code_verifier`.
    pub code_challenge: Option<String>,
    pub user_id: String,
    pub issued: Instant,
    pub used: bool,
}

#[derive(Clone, Debug)]
pub struct RefreshToken {
    pub client_id: String,
    pub user_id: String,
    pub revoked: bool,
}

#[derive(Clone, Debug)]
pub struct AccessToken {
    pub client_id: String,
    pub user_id: String,
    pub expires: Instant,
    pub epoch: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AudienceFee {
    pub cpm_cents: u64,
    pub currency: String,
}

#[derive(Clone, Debug)]
pub struct Audience {
    pub id: i64,
    pub client_id: String,
    pub advertiser_id: i64,
    pub name: String,
    pub description: String,
    pub external_audience_id: String,
    pub ttl: Option<u64>,
    pub data_source_country: Vec<String>,
    pub audience_fees: Option<Vec<AudienceFee>>,
    pub members: HashSet<Box<str>>,
    /// Every record id ever added (the "received" side of audienceSize).
    pub received: u64,
    /// When each member was last added, on this audience's clock: Amazon drops a member `ttl`
    /// seconds after the last add that named it ([`Audience::expire`]).
    pub last_added: HashMap<Box<str>, Instant>,
    /// This audience's clock runs ahead of the sandbox's by this much
    /// (`POST /admin/audiences/{id}/clock`), so tests see TTLs lapse without waiting.
    pub clock_offset: Duration,
}

impl Audience {
    /// The audience's clock at sandbox time `now`.
    pub fn clock(&self, now: Instant) -> Instant {
        now + self.clock_offset
    }

    /// Drops the members whose last add is `ttl` seconds old or more (`ttl` 0 or absent: none).
    pub fn expire(&mut self, now: Instant) {
        let Some(ttl) = self.ttl.filter(|t| *t > 0).map(Duration::from_secs) else {
            return;
        };
        let now = self.clock(now);
        let live = |t: &Instant| now.saturating_duration_since(*t) < ttl;
        let last = &self.last_added;
        self.members.retain(|m| last.get(m).is_none_or(live));
        self.last_added.retain(|_, t| live(t));
    }

    /// Records an add of `record` at sandbox time `now`.
    pub fn add_member(&mut self, record: &str, now: Instant) {
        self.received += 1;
        if !self.members.contains(record) {
            self.members.insert(record.into());
        }
        let at = self.clock(now);
        self.last_added.insert(record.into(), at);
    }

    pub fn metadata_json(&self, with_size: bool) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("type".into(), Value::from("DATA_PROVIDER"));
        m.insert(
            "externalAudienceId".into(),
            Value::from(self.external_audience_id.clone()),
        );
        if let Some(ttl) = self.ttl {
            m.insert("ttl".into(), Value::from(ttl));
        }
        m.insert(
            "dataSourceCountry".into(),
            Value::from(self.data_source_country.clone()),
        );
        if let Some(fees) = &self.audience_fees {
            m.insert(
                "audienceFees".into(),
                serde_json::to_value(fees).unwrap_or(Value::Null),
            );
        }
        if with_size {
            let matched = self.members.len() as u64;
            let rate = if self.received == 0 {
                0.0
            } else {
                (matched as f64 / self.received as f64).min(1.0)
            };
            m.insert(
                "audienceSize".into(),
                serde_json::json!({
                    "receivedRecordSize": self.received,
                    "matchedRecordSize": matched,
                    "matchRate": rate,
                }),
            );
        }
        Value::Object(m)
    }

    pub fn to_json(&self, with_size: bool) -> Value {
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "advertiserId": self.advertiser_id,
            "metadata": self.metadata_json(with_size),
        })
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    /// Epoch milliseconds (snake_case on the wire, as docs/interfaces.md §4 has it).
    #[serde(rename = "at_ms")]
    pub at_ms: i64,
    pub method: String,
    pub path: String,
    /// 0 = the connection was dropped by a fault.
    pub status: u16,
    pub client_id: Option<String>,
    pub account_id: Option<String>,
    pub bytes: usize,
}

/// Global knobs (`POST /admin/config`).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// Metadata calls (create/get/update audience) per client per second; 0 = unlimited.
    pub metadata_tps: u32,
    /// PATCH /v2/dp/audience calls per client per second; 0 = unlimited.
    pub patch_tps: u32,
    pub access_token_ttl_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            metadata_tps: 1,
            patch_tps: 100,
            access_token_ttl_secs: 3600,
        }
    }
}

#[derive(Default)]
pub struct Inner {
    pub clients: HashMap<String, Client>,
    pub users: HashMap<String, User>,
    pub profiles: HashMap<i64, Profile>,
    pub advertisers: HashMap<i64, Advertiser>,
    pub codes: HashMap<String, AuthCode>,
    pub refresh_tokens: HashMap<String, RefreshToken>,
    pub access_tokens: HashMap<String, AccessToken>,
    pub audiences: HashMap<i64, Audience>,
    /// (client, advertiser, externalAudienceId) → audience id: creating twice returns the first.
    pub audience_keys: HashMap<(String, i64, String), i64>,
    pub audiences_by_advertiser: HashMap<i64, Vec<i64>>,
    pub next_audience_id: i64,
    /// Accepted events per advertiser (account), in arrival order, repeats included.
    pub events: HashMap<i64, Vec<Value>>,
    pub faults: Vec<Fault>,
    pub next_fault_id: u64,
    pub requests: VecDeque<RequestRecord>,
    pub metadata_windows: HashMap<String, VecDeque<Instant>>,
    pub patch_windows: HashMap<String, VecDeque<Instant>>,
    pub config: Config,
    /// Added to the real clock; only moved by in-process tests (`Sandbox::advance_clock`).
    pub clock_offset: Duration,
    /// No access log on stderr (in-process tests).
    pub quiet: bool,
    /// User deletions and hashed records (`privacy.rs`).
    pub privacy: crate::privacy::PrivacyState,
}

impl Inner {
    pub fn now(&self) -> Instant {
        Instant::now() + self.clock_offset
    }

    /// True when the user owns the profile.
    pub fn user_profile(&self, user_id: &str, profile_id: i64) -> Option<&Profile> {
        self.profiles
            .get(&profile_id)
            .filter(|p| p.user_id == user_id)
    }

    /// The advertiser, when one of the user's profiles lists it.
    pub fn user_advertiser(&self, user_id: &str, advertiser_id: i64) -> Option<&Advertiser> {
        let user = self.users.get(user_id)?;
        let reachable = user.profile_ids.iter().any(|pid| {
            self.profiles
                .get(pid)
                .is_some_and(|p| p.advertiser_ids.contains(&advertiser_id))
        });
        if reachable {
            self.advertisers.get(&advertiser_id)
        } else {
            None
        }
    }

    /// Sliding one-second window: true (and counted) when the call is allowed.
    pub fn take_rate(&mut self, patch: bool, client_id: &str) -> bool {
        let limit = if patch {
            self.config.patch_tps
        } else {
            self.config.metadata_tps
        };
        if limit == 0 {
            return true;
        }
        let now = self.now();
        // A little slack so a client that spaces calls exactly 1 s apart is not punished for
        // network jitter between its clock and ours.
        let window = Duration::from_millis(1000 - 25);
        let windows = if patch {
            &mut self.patch_windows
        } else {
            &mut self.metadata_windows
        };
        let q = windows.entry(client_id.to_string()).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
            q.pop_front();
        }
        if q.len() >= limit as usize {
            return false;
        }
        q.push_back(now);
        true
    }

    pub fn log_request(&mut self, r: RequestRecord) {
        if self.requests.len() >= REQUEST_LOG_CAP {
            self.requests.pop_front();
        }
        self.requests.push_back(r);
    }

    pub fn issue_access_token(&mut self, client_id: &str, user_id: &str) -> String {
        let token = format!("Atza|{}", random_token(96));
        let epoch = self.users.get(user_id).map(|u| u.token_epoch).unwrap_or(0);
        let expires = self.now() + Duration::from_secs(self.config.access_token_ttl_secs);
        self.access_tokens.insert(
            token.clone(),
            AccessToken {
                client_id: client_id.to_string(),
                user_id: user_id.to_string(),
                expires,
                epoch,
            },
        );
        token
    }

    pub fn issue_refresh_token(&mut self, client_id: &str, user_id: &str) -> String {
        let token = format!("Atzr|{}", random_token(96));
        self.refresh_tokens.insert(
            token.clone(),
            RefreshToken {
                client_id: client_id.to_string(),
                user_id: user_id.to_string(),
                revoked: false,
            },
        );
        token
    }

    /// Replaces the user's profiles (and upserts their advertisers). Fails when a profile id
    /// already belongs to another user.
    pub fn upsert_user(
        &mut self,
        user_id: &str,
        profiles: Vec<(Profile, Vec<Advertiser>)>,
    ) -> Result<(), String> {
        for (p, _) in &profiles {
            if let Some(existing) = self.profiles.get(&p.profile_id)
                && existing.user_id != user_id
            {
                return Err(format!(
                    "profileId {} already belongs to another user",
                    p.profile_id
                ));
            }
        }
        let epoch = self.users.get(user_id).map(|u| u.token_epoch).unwrap_or(0);
        if let Some(old) = self.users.get(user_id) {
            for pid in old.profile_ids.clone() {
                self.profiles.remove(&pid);
            }
        }
        let mut ids = Vec::with_capacity(profiles.len());
        for (p, advertisers) in profiles {
            ids.push(p.profile_id);
            for a in advertisers {
                self.advertisers.insert(a.advertiser_id, a);
            }
            self.profiles.insert(p.profile_id, p);
        }
        self.users.insert(
            user_id.to_string(),
            User {
                user_id: user_id.to_string(),
                profile_ids: ids,
                token_epoch: epoch,
            },
        );
        Ok(())
    }
}

/// Cheap to clone handle on the sandbox world.
#[derive(Clone, Default)]
pub struct Sandbox {
    inner: Arc<Mutex<Inner>>,
}

impl Sandbox {
    /// A sandbox with the seed data of docs/sandbox.md.
    pub fn new() -> Self {
        let s = Self::default();
        {
            let mut g = s.lock();
            g.next_audience_id = FIRST_AUDIENCE_ID;
            g.next_fault_id = 1;
            seed(&mut g);
        }
        s
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the sandbox clock forward (code and token expiry, rate windows). For in-process
    /// tests only: the admin API does not expose it, so a shared sandbox is never skewed.
    pub fn advance_clock(&self, by: Duration) {
        self.lock().clock_offset += by;
    }
}

pub fn random_token(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Marketplace ids for the profile's accountInfo (unknown countries get a made-up id).
pub fn marketplace_for(country: &str) -> &'static str {
    match country {
        "US" => "ATVPDKIKX0DER",
        "CA" => "A2EUQ1WTGCTBG2",
        "MX" => "A1AM78C64UM0Y8",
        "BR" => "A2Q3Y263D00KWC",
        "UK" | "GB" => "A1F83G8C2ARO7P",
        "DE" => "A1PA6795UKMFR9",
        "FR" => "A13V1IB3VIYZZH",
        "IT" => "APJ6JRA9NG5V4",
        "ES" => "A1RKKUPIHCS9HS",
        "NL" => "A1805IZSGTT6HS",
        "SE" => "A2NODRKZP88ZB9",
        "PL" => "A1C3SOZRARQ6R3",
        "TR" => "A33AVAJ2PDY3EV",
        "AE" => "A2VIGQ35RCS4UG",
        "SA" => "A17E79C6D8DWNP",
        "EG" => "ARBP9OOSHTCHU",
        "BE" => "AMEN7PMS3EDWL",
        "IN" => "A21TJRUUN4KGV",
        "ZA" => "AE08WJ6YKNBMC",
        "JP" => "A1VC38T7YXB528",
        "AU" => "A39IBJ37TRP1C6",
        "SG" => "A19VAU5U5O7RUS",
        _ => "ASANDBOXMARKET",
    }
}

/// (region, profileId, country, currency, timezone, [(advertiserId, name); 2])
type SeedRegion = (
    &'static str,
    i64,
    &'static str,
    &'static str,
    &'static str,
    [(i64, &'static str); 2],
);

fn seed(g: &mut Inner) {
    g.clients.insert(
        SEED_CLIENT_ID.to_string(),
        Client {
            client_id: SEED_CLIENT_ID.to_string(),
            client_secret: SEED_CLIENT_SECRET.to_string(),
            redirect_uris: vec![],
            rotate_refresh_tokens: false,
        },
    );
    let regions: [SeedRegion; 3] = [
        (
            "NA",
            1_000_000_000_000_001,
            "US",
            "USD",
            "America/Los_Angeles",
            [
                (4_728_736_040_201, "Sandbox US Shoes"),
                (4_728_736_040_202, "Sandbox US Apparel"),
            ],
        ),
        (
            "EU",
            1_000_000_000_000_002,
            "UK",
            "GBP",
            "Europe/London",
            [
                (5_839_847_151_301, "Sandbox UK Shoes"),
                (5_839_847_151_302, "Sandbox UK Apparel"),
            ],
        ),
        (
            "FE",
            1_000_000_000_000_003,
            "JP",
            "JPY",
            "Asia/Tokyo",
            [
                (6_940_958_262_401, "Sandbox JP Shoes"),
                (6_940_958_262_402, "Sandbox JP Apparel"),
            ],
        ),
    ];
    let mut full = Vec::new();
    let mut empty = Vec::new();
    for (region, pid, country, currency, tz, advs) in regions {
        let advertisers: Vec<Advertiser> = advs
            .iter()
            .map(|(id, name)| Advertiser {
                advertiser_id: *id,
                name: name.to_string(),
                currency: currency.to_string(),
                country: country.to_string(),
                timezone: tz.to_string(),
                url: format!("www.{}.example", name.to_lowercase().replace(' ', "-")),
            })
            .collect();
        let profile = |pid: i64, user: &str, name: String, advertiser_ids: Vec<i64>| Profile {
            profile_id: pid,
            user_id: user.to_string(),
            country_code: country.to_string(),
            currency_code: currency.to_string(),
            timezone: tz.to_string(),
            account_type: "agency".to_string(),
            name,
            account_id: format!("ENTITYSANDBOX{pid}"),
            marketplace_string_id: marketplace_for(country).to_string(),
            advertiser_ids,
        };
        full.push((
            profile(
                pid,
                SEED_USER,
                format!("Sandbox DSP {region}"),
                advertisers.iter().map(|a| a.advertiser_id).collect(),
            ),
            advertisers,
        ));
        empty.push((
            profile(
                pid + 1_000,
                SEED_EMPTY_USER,
                format!("Sandbox empty DSP {region}"),
                vec![],
            ),
            vec![],
        ));
    }
    g.upsert_user(SEED_USER, full).expect("seed");
    g.upsert_user(SEED_EMPTY_USER, empty).expect("seed");
}
