//! `login_notification.rate_limit`: a token bucket over events per second. Events over the
//! limit are not sent one by one; they are counted by user name and remote host, and a
//! `"suppressed"` summary is sent once per interval instead. Pure Rust, unit-tested.

use crate::event::{LoginEvent, SuppressedSummary};
use std::time::{Duration, Instant};

/// How often a summary of suppressed events is sent while a flood lasts.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);
/// Distinct user names / hosts listed in one summary; the rest are added up under OTHER.
const MAX_KEYS: usize = 100;
const OTHER: &str = "(other)";

pub struct RateLimiter {
    per_second: u32,
    tokens: f64,
    refilled_at: Instant,
    summary: Option<(Instant, SuppressedSummary)>,
}

impl RateLimiter {
    pub fn new(per_second: u32, now: Instant) -> RateLimiter {
        RateLimiter {
            per_second,
            tokens: f64::from(per_second),
            refilled_at: now,
            summary: None,
        }
    }

    pub fn set_rate(&mut self, per_second: u32) {
        self.per_second = per_second;
        self.tokens = self.tokens.min(f64::from(per_second));
    }

    /// True: send this event. False: it was counted into the pending summary.
    pub fn admit(&mut self, ev: &LoginEvent, now: Instant) -> bool {
        if self.per_second == 0 {
            return true;
        }
        let rate = f64::from(self.per_second);
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.refilled_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return true;
        }
        let (_, summary) = self.summary.get_or_insert_with(|| {
            (
                now,
                SuppressedSummary {
                    period_start_us: ev.time_us,
                    ..Default::default()
                },
            )
        });
        summary.total += 1;
        summary.period_end_us = summary.period_end_us.max(ev.time_us);
        add(&mut summary.by_user, &ev.user_name.to_str_lossy());
        add(&mut summary.by_remote_host, &ev.remote_host.to_str_lossy());
        false
    }

    /// The pending summary, once `SUMMARY_INTERVAL` has passed since its first event (or at
    /// once when `flush`, e.g. at shutdown).
    pub fn due_summary(&mut self, now: Instant, flush: bool) -> Option<SuppressedSummary> {
        match &self.summary {
            Some((started, _)) if flush || now.duration_since(*started) >= SUMMARY_INTERVAL => {
                self.summary.take().map(|(_, s)| s)
            }
            _ => None,
        }
    }
}

fn add(counts: &mut std::collections::BTreeMap<String, u64>, key: &str) {
    let key = if counts.contains_key(key) || counts.len() < MAX_KEYS {
        key
    } else {
        OTHER
    };
    *counts.entry(key.to_string()).or_default() += 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::FixedStr;

    fn ev(user: &str, host: &str, time_us: i64) -> LoginEvent {
        LoginEvent {
            user_name: FixedStr::new(user.as_bytes()),
            remote_host: FixedStr::new(host.as_bytes()),
            time_us,
            ..LoginEvent::EMPTY
        }
    }

    #[test]
    fn zero_means_unlimited() {
        let now = Instant::now();
        let mut limiter = RateLimiter::new(0, now);
        assert!((0..10_000).all(|i| limiter.admit(&ev("a", "h", i), now)));
        assert_eq!(limiter.due_summary(now, true), None);
    }

    #[test]
    fn a_burst_over_the_limit_is_summarised() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(5, t0);
        let admitted = (0..20)
            .filter(|&i| {
                limiter.admit(
                    &ev(
                        if i % 2 == 0 { "mallory" } else { "eve" },
                        "10.0.0.9",
                        1000 + i,
                    ),
                    t0,
                )
            })
            .count();
        assert_eq!(admitted, 5);
        assert_eq!(
            limiter.due_summary(t0 + Duration::from_secs(1), false),
            None,
            "not due yet"
        );
        let summary = limiter.due_summary(t0 + SUMMARY_INTERVAL, false).unwrap();
        assert_eq!(summary.total, 15);
        assert_eq!(summary.by_user.values().sum::<u64>(), 15);
        assert_eq!(summary.by_remote_host["10.0.0.9"], 15);
        assert_eq!(
            (summary.period_start_us, summary.period_end_us),
            (1005, 1019)
        );
        assert_eq!(
            limiter.due_summary(t0 + SUMMARY_INTERVAL * 2, false),
            None,
            "sent once"
        );
    }

    #[test]
    fn tokens_refill_with_time() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(2, t0);
        assert!(limiter.admit(&ev("a", "h", 0), t0));
        assert!(limiter.admit(&ev("a", "h", 0), t0));
        assert!(!limiter.admit(&ev("a", "h", 0), t0));
        assert!(limiter.admit(&ev("a", "h", 0), t0 + Duration::from_millis(600)));
    }

    #[test]
    fn many_distinct_names_are_capped() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(1, t0);
        for i in 0..500 {
            limiter.admit(&ev(&format!("user{i}"), "h", i), t0);
        }
        let summary = limiter.due_summary(t0, true).unwrap();
        assert_eq!(summary.by_user.len(), MAX_KEYS + 1);
        assert_eq!(summary.by_user.values().sum::<u64>(), 499);
    }
}
