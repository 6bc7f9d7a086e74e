//! Exponential backoff with jitter for transient GitLab errors.
//!
//! Jitter spreads the retries of many runners (or many jobs of one runner) after a GitLab
//! restart, so they do not hit it in lockstep.

use std::time::Duration;

/// How transient failures (connect errors, timeouts, 5xx, 429) are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay before the first retry (before jitter).
    pub first_delay: Duration,
    /// Cap of the doubling delay.
    pub max_delay: Duration,
    /// Total time spent retrying one call before its last error is returned. The final job
    /// update uses `ClientConfig::final_update_deadline` instead.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            deadline: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `attempt` (0-based), given `unit` drawn uniformly from
    /// `[0, 1)`: the capped exponential delay `d`, of which the upper half is jittered, so the
    /// result lies in `[d/2, d)`. Never zero, never above `max_delay`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        let base = self
            .first_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
            .max(Duration::from_millis(1));
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        base / 2 + (base / 2).mul_f64(unit)
    }
}

/// The retry counter of one call.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    attempt: u32,
}

impl Backoff {
    pub fn new(policy: RetryPolicy) -> Self {
        Self { policy, attempt: 0 }
    }

    /// The next delay, with fresh jitter.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.policy.delay(self.attempt, fastrand::f64());
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// Back to the first delay after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            deadline: Duration::from_secs(60),
        }
    }

    #[test]
    fn doubles_then_caps() {
        let p = policy();
        assert_eq!(p.delay(0, 0.0), Duration::from_millis(50));
        assert_eq!(p.delay(1, 0.0), Duration::from_millis(100));
        assert_eq!(p.delay(2, 0.0), Duration::from_millis(200));
        assert_eq!(p.delay(3, 0.5), Duration::from_millis(600));
        assert_eq!(p.delay(10, 0.0), Duration::from_millis(2500));
        assert_eq!(p.delay(u32::MAX, 0.0), Duration::from_millis(2500));
    }

    #[test]
    fn backoff_resets() {
        let mut b = Backoff::new(policy());
        let first = b.next_delay();
        b.next_delay();
        b.next_delay();
        b.reset();
        let again = b.next_delay();
        assert!(first <= Duration::from_millis(100) && again <= Duration::from_millis(100));
    }

    proptest! {
        #[test]
        fn delay_is_within_bounds(attempt in 0u32..100, unit in proptest::num::f64::ANY) {
            let p = policy();
            let d = p.delay(attempt, unit);
            prop_assert!(d > Duration::ZERO);
            prop_assert!(d <= p.max_delay);
            let base = p.first_delay.saturating_mul(2u32.saturating_pow(attempt.min(31))).min(p.max_delay);
            prop_assert!(d >= base / 2);
        }

        #[test]
        fn delay_grows_with_attempts(attempt in 0u32..40, unit in 0.0f64..1.0) {
            let p = policy();
            prop_assert!(p.delay(attempt + 1, 0.0) >= p.delay(attempt, 0.0));
            prop_assert!(p.delay(attempt, unit) >= p.delay(attempt, 0.0));
        }
    }
}
