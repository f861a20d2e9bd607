use std::time::Duration;

use reqwest::header::HeaderMap;

use crate::config::WorkerSettings;

/// Exponential backoff with jitter, bounded in attempts; the server's own `retry-after-ms` /
/// `Retry-After` wins when it sends one. Attempts count the line's own errors only: a 429 or
/// 503 (the server is busy) and a dead endpoint use none (see `Upstreams::execute`).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    base: Duration,
    max: Duration,
}

impl RetryPolicy {
    pub fn from_settings(w: &WorkerSettings) -> Self {
        Self {
            max_attempts: w.max_attempts,
            base: Duration::from_millis(w.retry_base_ms),
            max: Duration::from_millis(w.retry_max_ms),
        }
    }

    #[cfg(test)]
    pub fn fixed(max_attempts: u32, base: Duration, max: Duration) -> Self {
        Self {
            max_attempts,
            base,
            max,
        }
    }

    /// Timeouts, rate limits and server errors may pass; other client errors will not.
    pub fn retryable_status(status: u16) -> bool {
        matches!(status, 408 | 429) || status >= 500
    }

    /// The server says it is overloaded, not that the line is wrong: retried without using up
    /// an attempt, for as long as the batch's completion window allows.
    pub fn is_backpressure(status: u16) -> bool {
        matches!(status, 429 | 503)
    }

    /// Delay before attempt `attempt + 1`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(d) = retry_after {
            return d.min(self.max);
        }
        let exp = self
            .base
            .saturating_mul(2_u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.max);
        // Half fixed, half random: spreads retries of many lines without ever retrying at once.
        let half = exp / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// The server's hint, read defensively: a header is the server's word, not ours, so a
/// negative, NaN or non-numeric value is ignored (our own backoff applies) and a huge one
/// (`1e20`, `inf`) saturates — `delay` then clamps it to `retry_max_ms`. Never panics.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = get("retry-after-ms").and_then(seconds_or_ms) {
        return Some(duration_secs(ms / 1000.0));
    }
    // Seconds only; an HTTP-date falls back to our own backoff.
    get("retry-after")
        .and_then(seconds_or_ms)
        .map(duration_secs)
}

/// A non-negative number (infinity included); anything else is no hint.
fn seconds_or_ms(v: &str) -> Option<f64> {
    v.trim().parse::<f64>().ok().filter(|n| *n >= 0.0)
}

/// `Duration::from_secs_f64` panics beyond ~5.8e11 years; saturate instead.
fn duration_secs(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
        }
    }

    #[test]
    fn backoff_grows_within_bounds() {
        let p = policy();
        for attempt in 1..10 {
            let d = p.delay(attempt, None);
            let cap =
                Duration::from_millis(100 * 2_u64.pow(attempt - 1)).min(Duration::from_secs(2));
            assert!(d >= cap / 2 && d <= cap, "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn server_hints_win_but_are_capped() {
        let p = policy();
        assert_eq!(
            p.delay(1, Some(Duration::from_millis(700))),
            Duration::from_millis(700)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(60))),
            Duration::from_secs(2)
        );
        let mut h = HeaderMap::new();
        h.insert("retry-after", "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert("retry-after-ms", "250".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        let mut date = HeaderMap::new();
        date.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&date), None);
    }

    #[test]
    fn absurd_hints_never_panic_and_are_clamped() {
        let p = policy();
        for v in ["1e20", "1e308", "inf", "+Infinity", "18446744073709551616"] {
            for name in ["retry-after", "retry-after-ms"] {
                let mut h = HeaderMap::new();
                h.insert(name, v.parse().unwrap());
                let hint = retry_after(&h);
                assert!(
                    hint.is_some_and(|d| d > Duration::from_secs(1 << 40)),
                    "{name}: {v}"
                );
                assert_eq!(p.delay(1, hint), Duration::from_secs(2), "{name}: {v}");
            }
        }
        for v in [
            "-1", "-0.5", "NaN", "nan", "-inf", "soon", "", "1e20s", "0x10",
        ] {
            for name in ["retry-after", "retry-after-ms"] {
                let mut h = HeaderMap::new();
                h.insert(name, v.parse().unwrap());
                assert_eq!(retry_after(&h), None, "{name}: {v:?}");
            }
        }
        // A garbage millisecond hint does not hide a good seconds one.
        let mut h = HeaderMap::new();
        h.insert("retry-after-ms", "NaN".parse().unwrap());
        h.insert("retry-after", "1".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(1)));
    }

    #[test]
    fn which_statuses_are_retried() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(RetryPolicy::retryable_status(s), "{s}");
        }
        for s in [200, 400, 401, 404, 409, 422] {
            assert!(!RetryPolicy::retryable_status(s), "{s}");
        }
    }
}
