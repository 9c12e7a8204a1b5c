//! Backoff and `Retry-After`.
//!
//! Idempotent requests are retried on connect errors, timeouts, 429 and 5xx, with exponential
//! backoff and jitter: attempt `n` waits a random time between half and all of
//! `base · 2ⁿ`, capped at [`MAX_DELAY`]. A `Retry-After` header (delta-seconds or an HTTP date)
//! replaces the computed delay, capped at the same bound.

use std::time::{Duration, SystemTime};

use time::OffsetDateTime;
use time::macros::format_description;

/// The longest we ever wait before one retry, whatever the server asks.
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// The delay before retry number `attempt` (0 for the first retry).
pub(crate) fn backoff(attempt: u32, base: Duration) -> Duration {
    let full = base
        .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
        .min(MAX_DELAY);
    let half = full / 2;
    let jitter_ns = fastrand::u64(0..=u64::try_from(half.as_nanos()).unwrap_or(u64::MAX));
    half + Duration::from_nanos(jitter_ns)
}

/// Parses a `Retry-After` value: delta-seconds or an IMF-fixdate HTTP date
/// (`Sun, 06 Nov 1994 08:49:37 GMT`), relative to `now`. A date in the past gives zero. The
/// result is capped at [`MAX_DELAY`]. `None` for anything unreadable.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = v.parse().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_DELAY));
    }
    let fmt = format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let when = time::PrimitiveDateTime::parse(v, &fmt).ok()?.assume_utc();
    let now = OffsetDateTime::from(now);
    let delta = when - now;
    if delta.is_negative() {
        return Some(Duration::ZERO);
    }
    Some(Duration::try_from(delta).ok()?.min(MAX_DELAY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("3600", now), Some(MAX_DELAY));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(MAX_DELAY)
        );
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("1.5", now), None);
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn retry_after_http_date() {
        // 1994-11-06T08:49:37Z
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        let d = "Sun, 06 Nov 1994 08:49:47 GMT";
        assert_eq!(parse_retry_after(d, now), Some(Duration::from_secs(10)));
        let past = "Sun, 06 Nov 1994 08:49:00 GMT";
        assert_eq!(parse_retry_after(past, now), Some(Duration::ZERO));
        let far = "Mon, 07 Nov 1994 08:49:37 GMT";
        assert_eq!(parse_retry_after(far, now), Some(MAX_DELAY));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:47", now), None);
        assert_eq!(
            parse_retry_after("Sun, 32 Nov 1994 08:49:47 GMT", now),
            None
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let base = Duration::from_millis(100);
        for attempt in 0..40 {
            let full = base
                .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
                .min(MAX_DELAY);
            let d = backoff(attempt, base);
            assert!(d >= full / 2 && d <= full, "{attempt}: {d:?} vs {full:?}");
        }
        assert!(backoff(100, base) <= MAX_DELAY);
        assert_eq!(backoff(3, Duration::ZERO), Duration::ZERO);
    }
}
