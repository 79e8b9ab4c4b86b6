//! The one wall clock of adsync: every "now" the stores, leases and windows compare against.
//!
//! All readings are UTC. Epoch milliseconds come in two types because the stores keep both: `u64`
//! where a value can never be before 1970 (deadlines, dedupe windows, leases) and `i64` where it
//! is combined with signed offsets (pacing slots, retry delays, purge deadlines).

use std::time::{SystemTime, UNIX_EPOCH};

/// Now.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

/// Milliseconds since the Unix epoch (0 if the system clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch, signed.
pub fn now_epoch_ms() -> i64 {
    now().timestamp_millis()
}

/// Seconds since the Unix epoch, signed (DynamoDB TTL attributes, `expiresAt`).
pub fn now_secs() -> i64 {
    now().timestamp()
}

/// RFC 3339 with milliseconds, UTC: the timestamp format of every stored item.
pub fn now_rfc3339() -> String {
    now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readings_agree() {
        let (ms, signed, secs) = (now_ms(), now_epoch_ms(), now_secs());
        assert!((signed - ms as i64).abs() < 1_000, "{ms} vs {signed}");
        assert!((secs - signed / 1000).abs() <= 1);
        let t = now_rfc3339();
        assert!(
            t.ends_with('Z') && t.len() == "2026-01-01T00:00:00.000Z".len(),
            "{t}"
        );
    }
}
