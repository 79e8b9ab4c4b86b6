//! PKCE (RFC 7636, S256) for the Login with Amazon consent: a fresh verifier per connection,
//! its challenge on the consent redirect, the verifier on the code exchange. Setting `LWA_PKCE`
//! (default on; `false`/`0`/`off` falls back to the state alone, see docs/amazon-contract.md).

use base64::Engine;
use sha2::{Digest, Sha256};

/// Whether consents use PKCE: `LWA_PKCE`, default on.
pub fn enabled_from_env() -> Result<bool, crate::config::ConfigError> {
    match crate::config::optional("LWA_PKCE")
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("1") | Some("true") | Some("on") | Some("yes") => Ok(true),
        Some("0") | Some("false") | Some("off") | Some("no") => Ok(false),
        Some(_) => Err(crate::config::ConfigError::Invalid {
            name: "LWA_PKCE",
            reason: "must be true or false".into(),
        }),
    }
}

/// A new verifier: 256 bits from the OS generator, base64url without padding (43 characters,
/// all in RFC 7636's unreserved set).
pub fn new_verifier() -> Result<String, crate::random::RandomUnavailable> {
    crate::random::token()
}

/// The S256 challenge of a verifier: base64url(SHA-256(verifier)) without padding.
pub fn challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Appends the challenge parameters to a consent URL built by [`super::lwa::authorize_url`].
pub fn with_challenge(authorize_url: &str, verifier: &str) -> String {
    format!(
        "{authorize_url}&code_challenge={}&code_challenge_method=S256",
        challenge(verifier)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_appendix_b_vector() {
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn verifiers_are_valid_and_distinct() {
        let a = new_verifier().unwrap();
        let b = new_verifier().unwrap();
        assert_ne!(a, b);
        assert!((43..=128).contains(&a.len()));
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-._~".contains(&c))
        );
        let u = with_challenge("https://h/ap/oa?client_id=c&state=s", &a);
        let q: std::collections::HashMap<_, _> = url::Url::parse(&u)
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect();
        assert_eq!(q["code_challenge"], challenge(&a));
        assert_eq!(q["code_challenge_method"], "S256");
    }
}
