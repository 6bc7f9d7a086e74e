//! What the job's log may cost: a size limit and a pace, applied where the log is made.
//!
//! The kubelet keeps a container log in files of `containerLogMaxSize` (10 MiB by default)
//! and rotates them; a follower that is still reading a rotated file when the container exits
//! loses the rest. Two limits keep the runner's follower in the current file:
//!
//! - **Size**: gitlab-runner's `output_limit` (4 MiB by default) cut by the broker rather than
//!   by the runner, so the kubelet never stores what the trace would drop, and a log within the
//!   default limit never rotates.
//! - **Pace**: past a burst, the broker writes no faster than a set rate; the job's writes
//!   block on the full pipe meanwhile, as on a slow terminal. The job's end-to-end time hardly
//!   changes, since the runner cannot deliver the log faster than the kubelet streams it.

use std::time::{Duration, Instant};

/// Limits of one job's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogLimits {
    /// Bytes of job output passed on; the rest is dropped after one notice. None: no limit.
    pub max_bytes: Option<u64>,
    /// None: no pacing.
    pub pace: Option<Pace>,
}

/// A token bucket: `burst` bytes at once, then `bytes_per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    pub bytes_per_second: u64,
    pub burst: u64,
}

/// The job's log budget as it is spent.
#[derive(Debug, Clone)]
pub struct LogBudget {
    limits: LogLimits,
    written: u64,
    /// Whether the limit notice went out: once, at the first byte dropped, even when an
    /// earlier write filled the limit exactly.
    noticed: bool,
    /// Bytes that may go out now; negative after a write larger than what was left.
    tokens: f64,
    refilled: Instant,
}

/// What to do with one piece of masked output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Write the first `keep` bytes, drop the rest.
    pub keep: usize,
    /// This piece crossed the size limit: write the notice after it.
    pub limit_reached: bool,
}

impl LogBudget {
    pub fn new(limits: LogLimits, now: Instant) -> Self {
        let tokens = limits.pace.map_or(0.0, |p| p.burst as f64);
        Self {
            limits,
            written: 0,
            noticed: false,
            tokens,
            refilled: now,
        }
    }

    /// How much of `len` bytes of output may be written (the size limit).
    pub fn admit(&mut self, len: usize) -> Admission {
        let Some(max) = self.limits.max_bytes else {
            self.written += len as u64;
            return Admission {
                keep: len,
                limit_reached: false,
            };
        };
        let room = max.saturating_sub(self.written);
        let keep = usize::try_from(room).unwrap_or(usize::MAX).min(len);
        let limit_reached = max > 0 && keep < len && !self.noticed;
        self.noticed |= limit_reached;
        self.written += keep as u64;
        Admission {
            keep,
            limit_reached,
        }
    }

    /// Records `len` bytes written at `now`; returns how long to wait before the next write
    /// (the pace). Zero without pacing or within the burst.
    pub fn spend(&mut self, len: usize, now: Instant) -> Duration {
        let Some(pace) = self.limits.pace else {
            return Duration::ZERO;
        };
        let rate = pace.bytes_per_second.max(1) as f64;
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * rate).min(pace.burst as f64) - len as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate)
        }
    }

    pub fn max_bytes(&self) -> Option<u64> {
        self.limits.max_bytes
    }

    /// Whether output was dropped for the size limit.
    pub fn over_limit(&self) -> bool {
        self.limits.max_bytes.is_some_and(|m| self.written >= m)
    }
}

/// The line written once when the size limit cuts the log (gitlab-runner's words).
pub fn limit_notice(max_bytes: u64) -> String {
    format!(
        "\nJob's log exceeded limit of {} KiB; the rest is not shown.\n",
        max_bytes / 1024
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn no_limits_pass_everything_at_once() {
        let now = Instant::now();
        let mut b = LogBudget::new(LogLimits::default(), now);
        assert_eq!(
            b.admit(usize::MAX / 2),
            Admission {
                keep: usize::MAX / 2,
                limit_reached: false
            }
        );
        assert_eq!(b.spend(1 << 30, now), Duration::ZERO);
        assert!(!b.over_limit());
    }

    #[test]
    fn the_size_limit_cuts_once_and_drops_the_rest() {
        let now = Instant::now();
        let limits = LogLimits {
            max_bytes: Some(100),
            pace: None,
        };
        let mut b = LogBudget::new(limits, now);
        assert_eq!(b.admit(60).keep, 60);
        let cut = b.admit(60);
        assert_eq!(
            cut,
            Admission {
                keep: 40,
                limit_reached: true
            }
        );
        assert!(b.over_limit());
        assert_eq!(
            b.admit(10),
            Admission {
                keep: 0,
                limit_reached: false
            },
            "the notice comes once"
        );
    }

    #[test]
    fn output_exactly_at_the_limit_is_not_cut() {
        let mut b = LogBudget::new(
            LogLimits {
                max_bytes: Some(100),
                pace: None,
            },
            Instant::now(),
        );
        assert_eq!(
            b.admit(100),
            Admission {
                keep: 100,
                limit_reached: false
            }
        );
    }

    #[test]
    fn the_pace_allows_the_burst_then_the_rate() {
        let start = Instant::now();
        let limits = LogLimits {
            max_bytes: None,
            pace: Some(Pace {
                bytes_per_second: 4 * MIB,
                burst: 8 * MIB,
            }),
        };
        let mut b = LogBudget::new(limits, start);
        assert_eq!(b.spend(8 * MIB as usize, start), Duration::ZERO);
        let wait = b.spend(2 * MIB as usize, start);
        assert_eq!(wait, Duration::from_millis(500));
        // Once the wait is over, the bucket is empty again: the next MiB waits 250 ms.
        let later = start + wait;
        assert_eq!(b.spend(MIB as usize, later), Duration::from_millis(250));
        // A long quiet spell refills the bucket to the burst, no more.
        let much_later = later + Duration::from_secs(3600);
        assert_eq!(b.spend(8 * MIB as usize, much_later), Duration::ZERO);
        assert!(b.spend(1, much_later) > Duration::ZERO);
    }

    /// Found by the property below: output that fills the limit to the byte, then one more
    /// byte, was cut without the notice.
    #[test]
    fn a_write_after_an_exact_fill_still_gets_the_notice() {
        let mut b = LogBudget::new(
            LogLimits {
                max_bytes: Some(10),
                pace: None,
            },
            Instant::now(),
        );
        assert_eq!(
            b.admit(10),
            Admission {
                keep: 10,
                limit_reached: false
            }
        );
        assert_eq!(
            b.admit(1),
            Admission {
                keep: 0,
                limit_reached: true
            }
        );
        assert_eq!(
            b.admit(5),
            Admission {
                keep: 0,
                limit_reached: false
            }
        );
    }

    proptest! {
        /// Whatever the writes, the bytes passed never exceed the limit, the notice comes at
        /// most once, and everything passes while under it.
        #[test]
        fn never_more_than_the_limit(max in 0u64..10_000, lens in proptest::collection::vec(0usize..3000, 0..20)) {
            let mut b = LogBudget::new(LogLimits { max_bytes: Some(max), pace: None }, Instant::now());
            let (mut kept, mut notices, mut offered) = (0u64, 0, 0u64);
            for len in lens {
                let a = b.admit(len);
                prop_assert!(a.keep <= len);
                kept += a.keep as u64;
                offered += len as u64;
                notices += usize::from(a.limit_reached);
            }
            prop_assert_eq!(kept, offered.min(max));
            prop_assert_eq!(notices, usize::from(offered > max && max > 0));
        }

        /// Paced writes, each followed by its wait, never run ahead of burst + rate × time.
        #[test]
        fn the_pace_bounds_the_total(rate in 1u64..10_000_000, burst in 0u64..10_000_000, lens in proptest::collection::vec(1usize..5_000_000, 1..30)) {
            let start = Instant::now();
            let mut now = start;
            let mut b = LogBudget::new(LogLimits { max_bytes: None, pace: Some(Pace { bytes_per_second: rate, burst }) }, start);
            let mut total = 0u64;
            for len in lens {
                total += len as u64;
                now += b.spend(len, now);
                let allowed = burst as f64 + rate as f64 * (now - start).as_secs_f64();
                prop_assert!(total as f64 <= allowed + 1.0, "total {} allowed {}", total, allowed);
            }
        }
    }
}
