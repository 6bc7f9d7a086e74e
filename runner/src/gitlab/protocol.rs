//! The small, pure pieces of the Runner API wire protocol: header names, the job's remote
//! status, `Content-Range`/`Range` arithmetic and the update-interval header.
//!
//! Kept apart from the HTTP client so each rule is unit-tested on its own.

use std::time::Duration;

/// Job token header of job endpoints (`PUT jobs/:id`, `PATCH jobs/:id/trace`).
pub const JOB_TOKEN_HEADER: &str = "JOB-TOKEN";
/// Runner token header of runner endpoints (the token also travels in the body).
pub const RUNNER_TOKEN_HEADER: &str = "RUNNER-TOKEN";
/// GitLab's view of the job, on PUT and PATCH responses.
pub const JOB_STATUS_HEADER: &str = "Job-Status";
/// Queue version to echo back as `last_update` in the next `jobs/request`.
pub const LAST_UPDATE_HEADER: &str = "X-GitLab-Last-Update";
/// Seconds between trace updates that GitLab asks for.
pub const TRACE_UPDATE_INTERVAL_HEADER: &str = "X-GitLab-Trace-Update-Interval";

/// Interval used until GitLab says otherwise (gitlab-runner's default).
pub const DEFAULT_UPDATE_INTERVAL: Duration = Duration::from_secs(3);
/// Longest interval honoured, whatever GitLab sends (gitlab-runner's cap).
pub const MAX_UPDATE_INTERVAL: Duration = Duration::from_secs(15 * 60);

/// What GitLab says about a job the runner is working on.
///
/// The executor watches it: `Canceling` asks for a graceful stop (run `after_script`, then
/// report), the three abort states ask to stop at once; nothing sent afterwards matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteStatus {
    Running,
    /// A user canceled the job; GitLab waits for the runner's final update.
    Canceling,
    Canceled,
    Failed,
    /// 403/404 (or 409 on the first update): the job is no longer this runner's.
    Gone,
}

impl RemoteStatus {
    /// Reads a `Job-Status` header value. Absent or any other value (`running`, `pending`,
    /// `success`) means the job goes on.
    pub fn from_header(value: Option<&str>) -> Self {
        match value.map(str::trim) {
            Some("canceling") => Self::Canceling,
            Some("canceled") => Self::Canceled,
            Some("failed") => Self::Failed,
            _ => Self::Running,
        }
    }

    /// The job must be stopped now, without `after_script`, and reporting is pointless.
    pub fn must_abort(self) -> bool {
        matches!(self, Self::Canceled | Self::Failed | Self::Gone)
    }

    /// The user asked to cancel: stop the script, run `after_script`, report.
    pub fn cancel_requested(self) -> bool {
        self == Self::Canceling
    }

    /// Combines a newer observation with what is known: abort states are final and
    /// `Canceling` is not undone by a late `running` from another request.
    pub fn merge(self, newer: Self) -> Self {
        match (self, newer) {
            (old, _) if old.must_abort() => old,
            (Self::Canceling, Self::Running) => Self::Canceling,
            (_, newer) => newer,
        }
    }
}

/// `Content-Range` of a trace PATCH: `start-end` with an inclusive end and no unit or total,
/// as GitLab parses it. `None` for an empty chunk, which is never sent.
pub fn content_range(start: u64, len: usize) -> Option<String> {
    let len = u64::try_from(len).ok().filter(|l| *l > 0)?;
    Some(format!("{start}-{}", start.checked_add(len - 1)?))
}

/// Parses a request's `Content-Range` (`start-end`, inclusive) into `(start, end)`.
pub fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let (start, end) = value.trim().split_once('-')?;
    let (start, end) = (start.trim().parse().ok()?, end.trim().parse().ok()?);
    (start <= end).then_some((start, end))
}

/// How many trace bytes GitLab holds, from the `Range: 0-<size>` header of a trace response.
///
/// GitLab puts the stream SIZE after the dash (not the last byte's index, as HTTP would), and
/// gitlab-runner resumes from that number; so do we.
pub fn parse_range_size(value: &str) -> Option<u64> {
    let (start, size) = value.trim().split_once('-')?;
    if start.trim() != "0" {
        return None;
    }
    size.trim().parse().ok()
}

/// The `X-GitLab-Trace-Update-Interval` value, clamped to `[1 s, MAX_UPDATE_INTERVAL]`.
/// `None` when absent or not a positive number of seconds.
pub fn parse_update_interval(value: &str) -> Option<Duration> {
    let secs: u64 = value.trim().parse().ok().filter(|s| *s > 0)?;
    Some(Duration::from_secs(secs).min(MAX_UPDATE_INTERVAL))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn job_status_header() {
        assert_eq!(RemoteStatus::from_header(None), RemoteStatus::Running);
        assert_eq!(
            RemoteStatus::from_header(Some("running")),
            RemoteStatus::Running
        );
        assert_eq!(
            RemoteStatus::from_header(Some("canceling")),
            RemoteStatus::Canceling
        );
        assert_eq!(
            RemoteStatus::from_header(Some(" canceled")),
            RemoteStatus::Canceled
        );
        assert_eq!(
            RemoteStatus::from_header(Some("failed")),
            RemoteStatus::Failed
        );
        assert_eq!(
            RemoteStatus::from_header(Some("success")),
            RemoteStatus::Running
        );
        assert!(RemoteStatus::Gone.must_abort() && RemoteStatus::Canceled.must_abort());
        assert!(!RemoteStatus::Canceling.must_abort());
        assert!(RemoteStatus::Canceling.cancel_requested());
    }

    #[test]
    fn status_merge_keeps_final_states() {
        use RemoteStatus::*;
        assert_eq!(Running.merge(Canceling), Canceling);
        assert_eq!(Canceling.merge(Running), Canceling);
        assert_eq!(Canceling.merge(Canceled), Canceled);
        assert_eq!(Canceled.merge(Running), Canceled);
        assert_eq!(Gone.merge(Canceling), Gone);
        assert_eq!(Running.merge(Gone), Gone);
    }

    #[test]
    fn content_range_is_inclusive() {
        assert_eq!(content_range(0, 1).as_deref(), Some("0-0"));
        assert_eq!(content_range(0, 1024).as_deref(), Some("0-1023"));
        assert_eq!(content_range(1024, 10).as_deref(), Some("1024-1033"));
        assert_eq!(content_range(5, 0), None);
        assert_eq!(content_range(u64::MAX, 2), None);
    }

    #[test]
    fn range_size_parsing() {
        assert_eq!(parse_range_size("0-0"), Some(0));
        assert_eq!(parse_range_size("0-1048576"), Some(1_048_576));
        assert_eq!(parse_range_size(" 0-17 "), Some(17));
        assert_eq!(parse_range_size("5-17"), None);
        assert_eq!(parse_range_size("bytes 0-17/18"), None);
        assert_eq!(parse_range_size("0-"), None);
        assert_eq!(parse_range_size("0--1"), None);
        assert_eq!(parse_range_size(""), None);
    }

    #[test]
    fn update_interval_parsing() {
        assert_eq!(parse_update_interval("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_update_interval(" 30 "), Some(Duration::from_secs(30)));
        assert_eq!(parse_update_interval("100000"), Some(MAX_UPDATE_INTERVAL));
        assert_eq!(parse_update_interval("0"), None);
        assert_eq!(parse_update_interval("-3"), None);
        assert_eq!(parse_update_interval("soon"), None);
    }

    proptest! {
        #[test]
        fn content_range_round_trips(start in 0u64..u64::MAX / 2, len in 1usize..(1 << 21)) {
            let header = content_range(start, len).unwrap();
            let (s, e) = parse_content_range(&header).unwrap();
            prop_assert_eq!(s, start);
            prop_assert_eq!(e - s + 1, len as u64);
        }
    }
}
