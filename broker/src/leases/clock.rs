//! When to renew a lease or the token: pure arithmetic on instants, so it is tested without a
//! Vault or a real clock.

use std::time::Duration;

use tokio::time::Instant;

/// Retries of a failed renewal are no closer than this, so a failing Vault is not hammered.
const MIN_RETRY: Duration = Duration::from_secs(1);

/// The renewal state of one lease (or of the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalClock {
    /// When it ends unless renewed.
    pub expires: Instant,
    /// What each renewal asks for: the TTL it was issued with.
    pub increment: Duration,
    /// When to renew next; `None` once it cannot or need not be renewed any more.
    pub renew_at: Option<Instant>,
}

/// What a renewal's answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewed {
    /// Extended by the full increment; renewed again at 2/3 of it.
    Extended,
    /// Vault granted less than asked: the max TTL is near. It expires then; no more renewals.
    Capped,
}

/// Renew at two thirds of the TTL: late enough not to waste calls, early enough that a slow
/// or briefly failing Vault still leaves a third of the TTL to retry in.
pub fn two_thirds(ttl: Duration) -> Duration {
    ttl * 2 / 3
}

impl RenewalClock {
    /// A lease (or token) just issued with `ttl`. A zero TTL never expires (e.g. a root token)
    /// and a non-renewable one cannot be renewed; neither is scheduled.
    pub fn new(now: Instant, ttl: Duration, renewable: bool) -> Self {
        let renew_at = (renewable && !ttl.is_zero()).then(|| now + two_thirds(ttl));
        Self {
            expires: now + ttl,
            increment: ttl,
            renew_at,
        }
    }

    /// Records Vault's answer to a renewal made at `now`.
    pub fn renewed(&mut self, now: Instant, granted: Duration) -> Renewed {
        self.expires = now + granted;
        if granted < self.increment {
            self.renew_at = None;
            Renewed::Capped
        } else {
            self.renew_at = Some(now + two_thirds(granted));
            Renewed::Extended
        }
    }

    /// Records a failed renewal at `now`: retry when a third of the remaining time has passed,
    /// or give up when too little is left to bother. Returns the time left.
    pub fn failed(&mut self, now: Instant) -> Duration {
        let left = self.expires.saturating_duration_since(now);
        let retry = left / 3;
        self.renew_at = (retry >= MIN_RETRY).then(|| now + retry);
        left
    }

    /// Time left at `now`.
    pub fn left(&self, now: Instant) -> Duration {
        self.expires.saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn renews_at_two_thirds_of_the_ttl() {
        let t0 = Instant::now();
        let c = RenewalClock::new(t0, secs(6), true);
        assert_eq!(c.renew_at, Some(t0 + secs(4)));
        assert_eq!(c.expires, t0 + secs(6));
    }

    #[test]
    fn non_renewable_and_endless_are_never_scheduled() {
        let t0 = Instant::now();
        assert_eq!(RenewalClock::new(t0, secs(6), false).renew_at, None);
        assert_eq!(RenewalClock::new(t0, Duration::ZERO, true).renew_at, None);
    }

    #[test]
    fn a_full_renewal_schedules_the_next_and_a_capped_one_stops() {
        let t0 = Instant::now();
        let mut c = RenewalClock::new(t0, secs(6), true);
        let t1 = t0 + secs(4);
        assert_eq!(c.renewed(t1, secs(6)), Renewed::Extended);
        assert_eq!((c.expires, c.renew_at), (t1 + secs(6), Some(t1 + secs(4))));
        let t2 = t1 + secs(4);
        assert_eq!(c.renewed(t2, secs(2)), Renewed::Capped);
        assert_eq!((c.expires, c.renew_at), (t2 + secs(2), None));
    }

    #[test]
    fn a_failed_renewal_retries_within_the_time_left_then_gives_up() {
        let t0 = Instant::now();
        let mut c = RenewalClock::new(t0, secs(30), true);
        let t1 = t0 + secs(20);
        assert_eq!(c.failed(t1), secs(10));
        assert!(c.renew_at.is_some_and(|at| at > t1 && at < c.expires));
        let late = t0 + secs(29);
        assert_eq!(c.failed(late), secs(1));
        assert_eq!(c.renew_at, None, "no retry with under 3 s left");
        assert_eq!(c.left(t0 + secs(31)), Duration::ZERO);
    }
}
