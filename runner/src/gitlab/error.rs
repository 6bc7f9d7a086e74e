//! Errors of the GitLab client. None holds a token: requests carry tokens in headers and
//! bodies, and errors only name the call, the URL path, the HTTP status and the cause.

use std::time::Duration;

/// Why a call to GitLab failed.
#[derive(Debug, thiserror::Error)]
pub enum GitlabError {
    #[error("runner configuration: {what} {reason}")]
    Config { what: &'static str, reason: String },
    #[error(
        "cannot reach GitLab to {action} ({reason}); check the runner's `url`, DNS, proxies and \
         TLS settings (`ca_file`)"
    )]
    Unreachable { action: String, reason: String },
    #[error(
        "GitLab refused the runner token (403) when asked to {action}: the token is wrong or the \
         runner was deleted; register the runner again and update `token` in the runner config"
    )]
    InvalidRunnerToken { action: String },
    #[error("GitLab answered HTTP {status} when asked to {action}{hint}")]
    Status {
        action: String,
        status: u16,
        hint: &'static str,
    },
    #[error(
        "job {job_id} is no longer this runner's (GitLab answered {status}): it was canceled, \
         deleted, timed out or taken by another runner; stop working on it"
    )]
    JobGone { job_id: u64, status: u16 },
    #[error("the trace of job {job_id} is closed: the job was finished or is gone")]
    TraceClosed { job_id: u64 },
    #[error("unexpected answer from GitLab when asked to {action}: {reason}")]
    BadResponse { action: String, reason: String },
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error("gave up trying to {action} after {after:?}; the last error was: {last}")]
    GaveUp {
        action: String,
        after: Duration,
        last: Box<GitlabError>,
    },
}

impl GitlabError {
    /// Worth retrying: the request may succeed later unchanged (connect errors, timeouts,
    /// 5xx, 429 and 408).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Status { status, .. } => is_transient_status(*status),
            _ => false,
        }
    }

    /// An HTTP status the caller did not expect, with a hint at what to do.
    pub(crate) fn status(action: impl Into<String>, status: u16) -> Self {
        let hint = match status {
            429 => "; GitLab is rate limiting this runner, it will retry later",
            500..=599 => "; GitLab is failing or restarting, the runner retries",
            401 | 403 => "; check the runner and job tokens",
            404 => "; check that `url` is the GitLab root URL (without /api/v4)",
            _ => "",
        };
        Self::Status {
            action: action.into(),
            status,
            hint,
        }
    }

    /// A transport error, reduced to its cause chain. reqwest errors name the URL, which is
    /// fine (it holds no token: the client rejects URLs with credentials), but the chain
    /// is what says why.
    pub(crate) fn transport(action: impl Into<String>, err: &reqwest::Error) -> Self {
        let mut reason = if err.is_timeout() {
            "timed out".to_owned()
        } else if err.is_connect() {
            "could not connect".to_owned()
        } else {
            "request failed".to_owned()
        };
        let mut source = std::error::Error::source(err);
        while let Some(s) = source {
            reason.push_str(": ");
            reason.push_str(&s.to_string());
            source = s.source();
        }
        if err.is_builder() {
            // The request could not even be built: retrying will not help.
            Self::BadResponse {
                action: action.into(),
                reason,
            }
        } else {
            Self::Unreachable {
                action: action.into(),
                reason,
            }
        }
    }
}

/// Statuses that say "try again later".
pub(crate) fn is_transient_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599)
}

/// Why a job payload could not be read. Never holds a value from the payload.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error(
        "the job payload from GitLab is not valid JSON ({category} at line {line}, column {column}); \
         check that the runner's `url` points at GitLab itself and not at a proxy error page"
    )]
    Syntax {
        category: &'static str,
        line: usize,
        column: usize,
    },
    #[error(
        "the job payload from GitLab has no `{field}`, which keyhole-runner needs; this GitLab \
         version may not be supported (report it with the field name)"
    )]
    Missing { field: String },
    #[error(
        "in the job payload from GitLab, `{field}` is {found} where {expected} was expected; this \
         GitLab version may not be supported (report it with the field name)"
    )]
    WrongType {
        field: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("in the job payload from GitLab, `{field}` {reason}")]
    Invalid { field: String, reason: String },
    #[error("the job uses `{field}`, which keyhole-runner does not support: {reason}")]
    Unsupported { field: String, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_classification() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(GitlabError::status("x", s).is_transient(), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 412, 416, 422] {
            assert!(!GitlabError::status("x", s).is_transient(), "{s}");
        }
        assert!(
            GitlabError::Unreachable {
                action: "x".into(),
                reason: "y".into()
            }
            .is_transient()
        );
        assert!(
            !GitlabError::JobGone {
                job_id: 1,
                status: 403
            }
            .is_transient()
        );
    }
}
