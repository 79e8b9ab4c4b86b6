//! Random values for secrets that leave the process (OAuth states, PKCE verifiers, view ids, CSRF
//! tokens, browser-binding cookies), drawn from the OS generator only.
//!
//! When the OS generator fails there is no safe fallback (a user-space generator would itself
//! have to be seeded from the OS), so the failure is an error the caller turns into a 503, never
//! a panic.

use base64::Engine;
use rand::TryRngCore;

/// The OS random generator did not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the operating system's random generator is unavailable")]
pub struct RandomUnavailable;

/// Fills `buf` from the OS generator.
pub fn fill(buf: &mut [u8]) -> Result<(), RandomUnavailable> {
    fill_with(&mut rand::rngs::OsRng, buf)
}

fn fill_with<R: TryRngCore>(rng: &mut R, buf: &mut [u8]) -> Result<(), RandomUnavailable> {
    rng.try_fill_bytes(buf).map_err(|_| {
        tracing::error!("the OS random generator failed");
        RandomUnavailable
    })
}

/// 256 bits from the OS, base64url without padding (43 URL- and form-safe characters).
pub fn token() -> Result<String, RandomUnavailable> {
    let mut buf = [0u8; 32];
    fill(&mut buf)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A generator that always fails, standing in for a broken OS source.
    struct Broken;

    impl TryRngCore for Broken {
        type Error = std::io::Error;
        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            Err(std::io::Error::other("no entropy"))
        }
        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            Err(std::io::Error::other("no entropy"))
        }
        fn try_fill_bytes(&mut self, _dst: &mut [u8]) -> Result<(), Self::Error> {
            Err(std::io::Error::other("no entropy"))
        }
    }

    #[test]
    fn a_failing_generator_is_an_error_not_a_panic() {
        let mut buf = [0u8; 8];
        assert_eq!(fill_with(&mut Broken, &mut buf), Err(RandomUnavailable));
    }

    #[test]
    fn tokens_are_long_and_distinct() {
        let a = token().unwrap();
        assert_eq!(a.len(), 43);
        assert_ne!(a, token().unwrap());
    }
}
