//! Event timestamps: ISO 8601 / RFC 3339 with an offset → epoch milliseconds, and back to the
//! Events API's `YYYY-MM-DDTHH:MM:SS.mmmZ`, without allocating on the common path.

use super::errors::{A_STRING, Errors, short};
use super::{MAX_AGE_MS, MAX_AHEAD_MS};
use crate::domain::conversion::Reason;
use crate::domain::conversion::input::InEvent;
use chrono::{DateTime, FixedOffset};

/// Checks `timestamp` against the time of receipt: the Events API's `eventTime` and its epoch
/// milliseconds (zeros when it was rejected).
pub(super) fn timestamp(ev: &InEvent<'_>, now_ms: i64, errs: &mut Errors) -> ([u8; 24], i64) {
    let mut event_time = [0u8; 24];
    let mut event_time_ms = 0;
    match errs.got("timestamp", ev.timestamp.as_ref(), A_STRING) {
        Err(()) => {}
        Ok(None) => errs.push(
            "timestamp",
            Reason::Missing,
            "timestamp is required (ISO 8601 with an offset)",
        ),
        Ok(Some(t)) => match parse_time_ms(t.as_str()) {
            None => errs.push(
                "timestamp",
                Reason::Invalid,
                format!(
                    "timestamp {:?} is not an ISO 8601 date-time with an offset, e.g. 2026-08-20T14:15:22Z",
                    short(t.as_str())
                ),
            ),
            Some(ms) => {
                event_time_ms = ms;
                if now_ms - ms > MAX_AGE_MS {
                    errs.push(
                        "timestamp",
                        Reason::TooOld,
                        "the event is older than 21 days; Amazon does not accept it",
                    );
                } else if ms - now_ms > MAX_AHEAD_MS {
                    errs.push(
                        "timestamp",
                        Reason::InFuture,
                        "the event is more than 5 minutes in the future",
                    );
                } else {
                    event_time = format_time_ms(ms);
                }
            }
        },
    }
    (event_time, event_time_ms)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// ISO 8601 / RFC 3339 with an offset (`Z`, `+02:00`, `+0200`), `T` or space between date and
/// time, optional fraction → epoch milliseconds (UTC). The common shape is parsed by hand (it is
/// on every event's path); anything else goes through chrono.
pub fn parse_time_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    fast_time_ms(s.as_bytes()).or_else(|| parse_time(s).map(|t| t.timestamp_millis()))
}

fn fast_time_ms(b: &[u8]) -> Option<i64> {
    fn num(b: &[u8]) -> Option<i64> {
        let mut v = 0i64;
        for &c in b {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(c - b'0');
        }
        Some(v)
    }
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?);
    let (h, mi, sec) = (num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?);
    let days_in_month = [
        31,
        28 + i64::from(y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)),
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo)
        || d < 1
        || d > days_in_month[(mo - 1) as usize]
        || h > 23
        || mi > 59
        || sec > 59
    {
        return None;
    }
    let mut rest = &b[19..];
    let mut ms = 0i64;
    if let Some((&b'.', frac)) = rest.split_first() {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        for (i, &c) in frac[..n].iter().take(3).enumerate() {
            ms += i64::from(c - b'0') * [100, 10, 1][i];
        }
        rest = &frac[n..];
    }
    let offset_min = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] | [sign @ (b'+' | b'-'), h1, h2, m1, m2] => {
            let oh = num(&[*h1, *h2])?;
            let om = num(&[*m1, *m2])?;
            if oh > 23 || om > 59 {
                return None;
            }
            let v = oh * 60 + om;
            if *sign == b'-' { -v } else { v }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    Some(secs * 1000 + ms)
}

/// The chrono fallback for less common shapes.
pub fn parse_time(s: &str) -> Option<DateTime<FixedOffset>> {
    let s = s.trim();
    DateTime::parse_from_rfc3339(s)
        .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%z"))
        .ok()
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of epoch milliseconds, written without allocating.
pub fn format_time_ms(ms: i64) -> [u8; 24] {
    fn put(out: &mut [u8], mut v: u32) {
        for o in out.iter_mut().rev() {
            *o = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let mut o = *b"0000-00-00T00:00:00.000Z";
    put(&mut o[0..4], y.clamp(0, 9999) as u32);
    put(&mut o[5..7], m);
    put(&mut o[8..10], d);
    put(&mut o[11..13], (in_day / 3_600_000) as u32);
    put(&mut o[14..16], (in_day / 60_000 % 60) as u32);
    put(&mut o[17..19], (in_day / 1000 % 60) as u32);
    put(&mut o[20..23], (in_day % 1000) as u32);
    o
}
