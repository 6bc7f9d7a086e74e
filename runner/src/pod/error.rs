//! Why a job cannot become a pod: one variant per kind of refusal, each message saying what is
//! wrong, where (the image, a service, a variable) and what to change.

use super::quantity::QuantityError;

/// A job that cannot become a pod, with what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodError {
    /// The build image is not on the runner's `allowed_images`.
    #[error(
        "image {image:?} is not allowed by this runner (allowed_images: {})",
        .allowed.join(", ")
    )]
    ImageNotAllowed { image: String, allowed: Vec<String> },
    /// A service's image is not on the runner's `allowed_services`.
    #[error(
        "service image {image:?} is not allowed by this runner (allowed_services: {})",
        .allowed.join(", ")
    )]
    ServiceImageNotAllowed { image: String, allowed: Vec<String> },
    /// The job's pull policy is not on the runner's `allowed_pull_policies`.
    #[error(
        "pull_policy {policy:?} is not allowed by this runner (allowed: {})",
        .allowed.join(", ")
    )]
    PullPolicyNotAllowed {
        policy: String,
        allowed: Vec<String>,
    },
    /// The job's pull policy is none Kubernetes knows.
    #[error("pull_policy {policy:?} is not one of always, if-not-present, never")]
    PullPolicyUnknown { policy: String },
    /// `kubernetes: user` of `what` (the image, a service) is not `uid` or `uid:gid`; `user`
    /// is its first 40 characters.
    #[error(
        "{what}: `kubernetes: user` is {user:?}; give a numeric `uid` or `uid:gid` (names cannot \
         be resolved before the container starts)"
    )]
    UserNotNumeric { what: String, user: String },
    /// `kubernetes: user` of `what` asks for root on a runner without user namespaces.
    #[error(
        "{what}: `kubernetes: user` asks for uid 0 (root); this runner's job pods run as \
         non-root users (PodSecurity `restricted`): use a non-root uid or an image that works \
         without root, or ask the runner's administrator for root in a user namespace \
         (`[runners.keyhole] user_namespace_root`)"
    )]
    RootWithoutUserNamespace { what: String },
    /// `kubernetes: user` of `what` asks for a `kind` (user, group) id off the runner's
    /// allow-list `key` (`allowed_users`, `allowed_groups`).
    #[error(
        "{what}: `kubernetes: user` asks for {kind} {id}, which this runner does not allow \
         ({key}: {}); use one of those or ask the runner's administrator",
        .allowed.join(", ")
    )]
    IdNotAllowed {
        what: String,
        kind: &'static str,
        id: i64,
        key: &'static str,
        allowed: Vec<String>,
    },
    /// The entrypoint of `what` starts with an empty element but is not cleared.
    #[error(
        "{what}: the entrypoint's first element is empty, so there is no program to run; write \
         [\"\"] to clear the image's entrypoint, or name the program first"
    )]
    EntrypointWithoutProgram { what: String },
    /// A service clears its image's entrypoint and gives no command.
    #[error(
        "{what}: `entrypoint: [\"\"]` clears the image's entrypoint and leaves nothing to run; \
         give the service a `command:`"
    )]
    ServiceWithoutCommand { what: String },
    /// A service's `HEALTHCHECK_TCP_PORT` is no port; `value` is its first 20 characters.
    #[error("{what}: HEALTHCHECK_TCP_PORT is {value:?}; give a TCP port number from 1 to 65535")]
    HealthcheckPort { what: String, value: String },
    /// A resource override (`KUBERNETES_CPU_REQUEST` and friends) or its cap is wrong.
    #[error(transparent)]
    Resources(#[from] QuantityError),
    /// A `KUBERNETES_POD_LABELS_*` / `KUBERNETES_POD_ANNOTATIONS_*` variable is not
    /// `KEY=VALUE`.
    #[error("{variable} must be KEY=VALUE")]
    OverrideNotKeyValue { variable: String },
    /// The runner's `pod_*_overwrite_allowed` is not a regular expression.
    #[error("runner regex {regex:?}: {error}")]
    OverrideRegex { regex: String, error: String },
    /// `variable` sets a label or annotation `key` the runner does not let jobs set.
    #[error("{variable}: {key:?} may not be set by jobs on this runner")]
    OverrideNotAllowed { variable: String, key: String },
    /// A masked or file variable whose name the broker cannot use as a file and env name.
    #[error(
        "variable {name:?} cannot be delivered: a masked or file variable's name may use only \
         letters, digits, '_', '.' and '-'"
    )]
    SecretName { name: String },
    /// The job moves files (artifacts, dependencies, caches) but has no job token to do it.
    #[error(
        "the job has artifacts, dependencies or caches but no job token; only GitLab jobs move \
         files"
    )]
    TransferWithoutToken,
    /// The transfer plan did not serialize (a bug).
    #[error("internal error writing the transfer plan: {0}")]
    TransferPlan(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts are what a job's trace says (and what tests on the bed look for): a variant
    /// must not change them.
    #[test]
    fn each_refusal_says_what_where_and_what_to_do() {
        let allowed = vec!["alpine:*".to_string(), "debian".to_string()];
        for (error, text) in [
            (
                PodError::ImageNotAllowed {
                    image: "evil:1".into(),
                    allowed: allowed.clone(),
                },
                "image \"evil:1\" is not allowed by this runner (allowed_images: alpine:*, debian)",
            ),
            (
                PodError::IdNotAllowed {
                    what: "service \"pg\"".into(),
                    kind: "group",
                    id: 3000,
                    key: "allowed_groups",
                    allowed: vec!["1000".into()],
                },
                "service \"pg\": `kubernetes: user` asks for group 3000, which this runner does \
                 not allow (allowed_groups: 1000); use one of those or ask the runner's \
                 administrator",
            ),
            (
                PodError::HealthcheckPort {
                    what: "service \"web\"".into(),
                    value: "http".into(),
                },
                "service \"web\": HEALTHCHECK_TCP_PORT is \"http\"; give a TCP port number from \
                 1 to 65535",
            ),
            (
                QuantityError::AboveCap {
                    key: "KUBERNETES_CPU_LIMIT".into(),
                    wanted: "9".into(),
                    max: "4".into(),
                }
                .into(),
                "KUBERNETES_CPU_LIMIT=9 is above the runner's maximum 4; ask for at most 4",
            ),
            (
                PodError::OverrideNotAllowed {
                    variable: "KUBERNETES_POD_LABELS_1".into(),
                    key: "team".into(),
                },
                "KUBERNETES_POD_LABELS_1: \"team\" may not be set by jobs on this runner",
            ),
        ] {
            assert_eq!(error.to_string(), text);
        }
    }
}
