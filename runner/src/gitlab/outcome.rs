//! How a job ended, in the words GitLab's final `PUT jobs/:id` expects.

use std::fmt;

/// The result the runner reports at the end of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    Success,
    /// `exit_code` is the script's exit status when there was one (GitLab shows it and
    /// matches it against `allow_failure:exit_codes`).
    ///
    /// After a cancel request (`RemoteStatus::Canceling`) report `Failed` too: GitLab turns a
    /// canceling job into `canceled` whatever the runner sends.
    Failed {
        reason: FailureReason,
        exit_code: Option<i32>,
    },
}

impl JobOutcome {
    /// The `state` field of the final update.
    pub fn state(&self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failed { .. } => "failed",
        }
    }
}

/// GitLab's `failure_reason` values that a runner may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// The job's script failed (non-zero exit).
    ScriptFailure,
    /// Keyhole or Kubernetes failed (pod could not be created, lost node, ...).
    RunnerSystemFailure,
    /// The job ran past its timeout.
    JobExecutionTimeout,
    /// The job was stuck (e.g. never scheduled).
    StuckOrTimeoutFailure,
    /// An image (build or service) could not be pulled.
    ImagePullFailure,
    UnknownFailure,
    /// The runner configuration does not allow the job (e.g. no service-account rule matches).
    RunnerConfigurationError,
    /// A dependency outside the runner failed (Vault, registry).
    RunnerExternalDependencyFailure,
    /// The runner stopped (SIGTERM) before the job finished.
    RunnerInterrupted,
    /// The job asks for something this runner does not implement.
    RunnerUnsupported,
}

impl FailureReason {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ScriptFailure => "script_failure",
            Self::RunnerSystemFailure => "runner_system_failure",
            Self::JobExecutionTimeout => "job_execution_timeout",
            Self::StuckOrTimeoutFailure => "stuck_or_timeout_failure",
            Self::ImagePullFailure => "image_pull_failure",
            Self::UnknownFailure => "unknown_failure",
            Self::RunnerConfigurationError => "runner_configuration_error",
            Self::RunnerExternalDependencyFailure => "runner_external_dependency_failure",
            Self::RunnerInterrupted => "runner_interrupted",
            Self::RunnerUnsupported => "runner_unsupported",
        }
    }

    /// Reasons every GitLab version accepts.
    fn always_supported(self) -> bool {
        matches!(
            self,
            Self::ScriptFailure | Self::RunnerSystemFailure | Self::JobExecutionTimeout
        )
    }

    /// This reason, or the closest one GitLab lists in the payload's
    /// `features.failure_reasons`: an older GitLab rejects an update whose reason it does not
    /// know, and then the job would stay running. An empty list means GitLab did not say:
    /// the reason is sent as is.
    pub fn supported_by(self, supported: &[String]) -> Self {
        if supported.is_empty()
            || self.always_supported()
            || supported.iter().any(|s| s == self.as_str())
        {
            return self;
        }
        match self {
            Self::StuckOrTimeoutFailure => Self::JobExecutionTimeout,
            Self::RunnerConfigurationError => Self::ScriptFailure,
            _ => Self::RunnerSystemFailure,
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn wire_strings() {
        assert_eq!(FailureReason::ScriptFailure.as_str(), "script_failure");
        assert_eq!(
            FailureReason::ImagePullFailure.to_string(),
            "image_pull_failure"
        );
        assert_eq!(JobOutcome::Success.state(), "success");
        let failed = JobOutcome::Failed {
            reason: FailureReason::ScriptFailure,
            exit_code: Some(2),
        };
        assert_eq!(failed.state(), "failed");
    }

    #[test]
    fn unsupported_reasons_fall_back() {
        let old = list(&[
            "script_failure",
            "runner_system_failure",
            "job_execution_timeout",
        ]);
        assert_eq!(
            FailureReason::ImagePullFailure.supported_by(&old),
            FailureReason::RunnerSystemFailure
        );
        assert_eq!(
            FailureReason::StuckOrTimeoutFailure.supported_by(&old),
            FailureReason::JobExecutionTimeout
        );
        assert_eq!(
            FailureReason::RunnerConfigurationError.supported_by(&old),
            FailureReason::ScriptFailure
        );
        assert_eq!(
            FailureReason::ScriptFailure.supported_by(&old),
            FailureReason::ScriptFailure
        );
        let new = list(&["image_pull_failure"]);
        assert_eq!(
            FailureReason::ImagePullFailure.supported_by(&new),
            FailureReason::ImagePullFailure
        );
        assert_eq!(
            FailureReason::RunnerInterrupted.supported_by(&[]),
            FailureReason::RunnerInterrupted
        );
    }
}
