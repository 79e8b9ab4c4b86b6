//! `consent`: the geo, Amazon-consent, TCF and GPP signals as sent on the wire, the rule that
//! EU/EEA/UK events carry one, and `dataProcessingOptions` (limited data use).

use super::codes::Country;
use super::errors::{A_STRING, Errors, short};
use crate::domain::conversion::Reason;
use crate::domain::conversion::input::{ConsentIn, Flag, InEvent};

/// Consent as sent on the wire.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ConsentOut<'b> {
    pub ip_address: Option<&'b str>,
    pub amzn_user_data: Option<&'static str>,
    pub amzn_ad_storage: Option<&'static str>,
    pub tcf: Option<&'b str>,
    pub gpp: Option<&'b str>,
}

impl ConsentOut<'_> {
    fn is_empty(&self) -> bool {
        self.ip_address.is_none()
            && self.amzn_user_data.is_none()
            && self.amzn_ad_storage.is_none()
            && self.tcf.is_none()
            && self.gpp.is_none()
    }

    /// Any of `geo`, `amazonConsent.amznUserData`, `tcf`, `gpp`.
    pub fn has_signal(&self) -> bool {
        self.ip_address.is_some()
            || self.amzn_user_data.is_some()
            || self.tcf.is_some()
            || self.gpp.is_some()
    }
}

fn consent<'b>(c: &'b ConsentIn<'_>, errs: &mut Errors) -> ConsentOut<'b> {
    let mut out = ConsentOut::default();
    let geo = errs
        .got("consent.geo", c.geo.as_ref(), "an object")
        .ok()
        .flatten();
    if let Ok(Some(ip)) = errs.got(
        "consent.geo.ipAddress",
        geo.and_then(|g| g.ip_address.as_ref()),
        A_STRING,
    ) {
        let ip = ip.as_str().trim();
        if ip.parse::<std::net::IpAddr>().is_ok() {
            out.ip_address = Some(ip);
        } else if !ip.is_empty() {
            errs.push(
                "consent.geo.ipAddress",
                Reason::Invalid,
                "consent.geo.ipAddress is not an IPv4 or IPv6 address",
            );
        }
    }
    if let Ok(Some(a)) = errs.got(
        "consent.amazonConsent",
        c.amazon_consent.as_ref(),
        "an object",
    ) {
        const FLAG: &str = "\"GRANTED\", \"DENIED\" or a boolean";
        let user = "consent.amazonConsent.amznUserData";
        let storage = "consent.amazonConsent.amznAdStorage";
        if let Ok(Some(f)) = errs.got(user, a.amzn_user_data.as_ref(), FLAG) {
            out.amzn_user_data = flag(f, user, errs);
        }
        if let Ok(Some(f)) = errs.got(storage, a.amzn_ad_storage.as_ref(), FLAG) {
            out.amzn_ad_storage = flag(f, storage, errs);
        }
        if out.amzn_ad_storage.is_some()
            && out.amzn_user_data.is_none()
            && a.amzn_user_data.is_none()
        {
            errs.push(
                user,
                Reason::Missing,
                "consent.amazonConsent needs amznUserData when amznAdStorage is given",
            );
        }
    }
    out.tcf = errs
        .got("consent.tcf", c.tcf.as_ref(), A_STRING)
        .ok()
        .flatten()
        .map(|t| t.as_str().trim())
        .filter(|t| !t.is_empty());
    out.gpp = errs
        .got("consent.gpp", c.gpp.as_ref(), A_STRING)
        .ok()
        .flatten()
        .map(|t| t.as_str().trim())
        .filter(|t| !t.is_empty());
    out
}

/// `GRANTED`/`DENIED`, booleans, and the truthy strings tag managers send.
fn flag(f: &Flag<'_>, field: &str, errs: &mut Errors) -> Option<&'static str> {
    let granted = match f {
        Flag::Bool(b) => Some(*b),
        Flag::Text(t) => {
            let t = t.as_str().trim();
            if ["granted", "true", "yes", "1", "on"]
                .iter()
                .any(|g| g.eq_ignore_ascii_case(t))
            {
                Some(true)
            } else if ["denied", "false", "no", "0", "off"]
                .iter()
                .any(|g| g.eq_ignore_ascii_case(t))
            {
                Some(false)
            } else {
                None
            }
        }
    };
    match granted {
        Some(true) => Some("GRANTED"),
        Some(false) => Some("DENIED"),
        None => {
            errs.push(
                field,
                Reason::Invalid,
                format!("{field} must be GRANTED or DENIED"),
            );
            None
        }
    }
}

/// Checks `dataProcessingOptions`: `true` for limited data use.
pub(super) fn limited_data_use(ev: &InEvent<'_>, errs: &mut Errors) -> bool {
    match errs.got(
        "dataProcessingOptions",
        ev.data_processing_options.as_ref(),
        "[\"LIMITED_DATA_USE\"]",
    ) {
        Ok(Some(o)) => {
            if let Some(w) = o.wrong {
                errs.push(
                    "dataProcessingOptions",
                    Reason::Malformed,
                    format!("dataProcessingOptions: wrong type ({w}), expected a string"),
                );
            } else if let Some(u) = &o.unknown {
                errs.push(
                    "dataProcessingOptions",
                    Reason::Invalid,
                    format!(
                        "unknown data processing option {:?}; the only option is LIMITED_DATA_USE",
                        short(u.as_str())
                    ),
                );
            }
            o.limited_data_use
        }
        _ => false,
    }
}

/// Checks `consent` (`None` when absent or empty), then requires a signal for EU/EEA/UK events.
pub(super) fn event_consent<'b>(
    ev: &'b InEvent<'_>,
    country: Option<Country>,
    errs: &mut Errors,
) -> Option<ConsentOut<'b>> {
    let consent = match errs.got("consent", ev.consent.as_ref(), "an object") {
        Ok(Some(c)) => Some(consent(c, errs)).filter(|c| !c.is_empty()),
        _ => None,
    };
    if let Some(country) = country
        && country.needs_consent()
        && !consent.is_some_and(|c| c.has_signal())
    {
        errs.push(
            "consent",
            Reason::ConsentRequired,
            format!(
                "events for {} (EU/EEA/UK) need a consent signal: consent.geo.ipAddress, consent.amazonConsent, consent.tcf or consent.gpp",
                country.as_str()
            ),
        );
    }
    consent
}
