//! Reading a job pod's status (pure): what to tell the user while it starts, and when it has
//! reached an end the job cannot recover from.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use keyhole_contract as contract;
use keyhole_contract::transfer::{FETCH_CONTAINER, STORE_CONTAINER};

/// How a job ended, before it is mapped to GitLab's states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failed {
        kind: FailureKind,
        exit_code: Option<i32>,
        message: String,
    },
}

/// Why a job failed; decides GitLab's `failure_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The script exited non-zero.
    Script,
    /// The job ran past its timeout.
    Timeout,
    /// GitLab or the user canceled it.
    Canceled,
    /// An image could not be pulled.
    ImagePull,
    /// The job cannot run as configured: the broker could not deliver its secrets, or it asks
    /// for what this runner does not allow (an image, a user, a ServiceAccount, a reference).
    /// GitLab's `runner_configuration_error`.
    Configuration,
    /// The pod could not be scheduled in time.
    Unschedulable,
    /// Everything else: the cluster, the broker's deployment, the runner.
    System,
}

/// One container's state, flattened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerView {
    Absent,
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started: bool,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        message: String,
    },
}

/// What the executor needs to know about the pod at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub phase: String,
    /// The scheduler's message when the pod cannot be placed.
    pub unschedulable: Option<String>,
    /// The pod-level failure reason (e.g. `DeadlineExceeded`, `Evicted`).
    pub reason: Option<String>,
    pub message: Option<String>,
    pub broker: ContainerView,
    /// The broker's last termination, also after the kubelet restarted it.
    pub broker_last_exit: Option<i32>,
    /// The broker ended before the build container started: the kubelet starts the build
    /// container after the broker's postStart hook whatever it returned, so after a failed
    /// delivery it runs (and its script stops at once) although nothing was delivered.
    pub broker_ended_before_build: bool,
    pub build: ContainerView,
    /// The repository checkout container, if the job has one.
    pub checkout: ContainerView,
    /// The container downloading dependencies' artifacts, if the job has one.
    pub fetch: ContainerView,
    /// The container uploading artifacts after the script, if the job has one.
    pub store: ContainerView,
    /// Any container stuck on an image: `(container, reason, message)`.
    pub image_problem: Option<(String, String, String)>,
    /// The build, broker or checkout container that the kubelet could not create or start
    /// (a missing program, an exec format error, a bad mount): `(container, reason, message)`.
    pub start_problem: Option<(String, String, String)>,
    /// Service containers that stopped with an error or could not start. The job goes on
    /// without them, as with gitlab-runner, but the trace says why.
    pub service_stops: Vec<ServiceStop>,
}

/// A service container that failed while the job ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStop {
    pub container: String,
    /// How it failed, e.g. `exited with code 1 (Error)`.
    pub how: String,
    /// The uid it ran as, when the pod spec says.
    pub uid: Option<i64>,
}

/// The trace's warning for a failed service. Most such failures on a restricted pod are an
/// image that expects root (to chown its data, write where root owns, switch users), so the
/// warning says what to do about that.
pub fn service_stop_warning(s: &ServiceStop) -> String {
    let uid = s
        .uid
        .map_or_else(|| "a non-root uid".to_string(), |u| format!("uid {u}"));
    format!(
        "*** WARNING: service {} {} while the job ran; the job goes on without it. Services run as {uid} without root, privilege escalation or added capabilities (PodSecurity `restricted`): an image that needs root (to chown its data, write where root owns, or switch users) stops this way. Use a variant of the image that runs unprivileged, or give the service a uid its files allow with `kubernetes: {{user: \"uid:gid\"}}` (within `allowed_users`)",
        s.container, s.how
    )
}

/// How a service container failed, if it did.
fn service_failure(s: &ContainerStatus) -> Option<String> {
    let state = s.state.as_ref()?;
    if let Some(t) = &state.terminated {
        let reason = t.reason.clone().unwrap_or_default();
        if START_ERRORS.contains(&reason.as_str()) {
            let message = t.message.clone().unwrap_or_default();
            return Some(format!("could not start ({reason}: {message})"));
        }
        return (t.exit_code != 0).then(|| format!("exited with code {} ({reason})", t.exit_code));
    }
    let w = state.waiting.as_ref()?;
    let reason = w.reason.clone()?;
    START_ERRORS.contains(&reason.as_str()).then(|| {
        let message = w.message.clone().unwrap_or_default();
        format!("could not start ({reason}: {message})")
    })
}

/// The uid a container runs as: its own `runAsUser`, else the pod's.
fn container_uid(pod: &Pod, container: &str) -> Option<i64> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .find(|c| c.name == container)
        .and_then(|c| c.security_context.as_ref()?.run_as_user)
        .or_else(|| spec.security_context.as_ref()?.run_as_user)
}

fn view(status: Option<&ContainerStatus>) -> ContainerView {
    let Some(s) = status else {
        return ContainerView::Absent;
    };
    let state = s.state.clone().unwrap_or_default();
    if let Some(t) = state.terminated {
        return ContainerView::Terminated {
            exit_code: t.exit_code,
            reason: t.reason.unwrap_or_default(),
            message: t.message.unwrap_or_default(),
        };
    }
    if state.running.is_some() {
        return ContainerView::Running {
            started: s.started.unwrap_or(false),
        };
    }
    match state.waiting {
        Some(w) => ContainerView::Waiting {
            reason: w.reason.unwrap_or_default(),
            message: w.message.unwrap_or_default(),
        },
        None => ContainerView::Absent,
    }
}

const IMAGE_ERRORS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
];

/// The kubelet's reasons for a container it could not create or start. With `restartPolicy:
/// Never` a failed start shows as `terminated` with exit code 128 and reason `StartError`; the
/// `waiting` ones are retried by the kubelet for ever, so the job must not wait for them.
const START_ERRORS: &[&str] = &[
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "StartError",
    "ContainerCannotRun",
    "PreStartHookError",
];

/// The containers whose failed start ends the job: the job cannot run without them.
fn start_problem(statuses: &[&ContainerStatus]) -> Option<(String, String, String)> {
    statuses.iter().find_map(|s| {
        let state = s.state.as_ref()?;
        let (reason, message) = match (&state.waiting, &state.terminated) {
            (Some(w), _) => (w.reason.clone()?, w.message.clone()),
            (None, Some(t)) => (t.reason.clone()?, t.message.clone()),
            (None, None) => return None,
        };
        START_ERRORS
            .contains(&reason.as_str())
            .then(|| (s.name.clone(), reason, message.unwrap_or_default()))
    })
}

/// What to tell the user when a container could not start, and whose fault it is: the build
/// container runs the job's image with the job's entrypoint (a `script_failure` the job's
/// author fixes), the others are the runner's (a system failure).
pub fn start_failure(container: &str, reason: &str, message: &str) -> (FailureKind, String) {
    if container == contract::BUILD_CONTAINER {
        (
            FailureKind::Script,
            format!(
                "the build container could not start ({reason}: {message}); check the job's image and its entrypoint: the script runs with `sh -c`, so the image needs a `sh`, and an `image:entrypoint` must exist in the image and end in `exec \"$@\"` (`entrypoint: [\"\"]` clears the image's own)"
            ),
        )
    } else {
        (
            FailureKind::System,
            format!(
                "container {container} could not start ({reason}: {message}); this is a runner or cluster problem"
            ),
        )
    }
}

/// Flattens a pod's status.
pub fn observe(pod: &Pod) -> PodView {
    let status = pod.status.clone().unwrap_or_default();
    let init = status.init_container_statuses.unwrap_or_default();
    let main = status.container_statuses.unwrap_or_default();
    // Job pods have regular containers only; the init containers are searched too for pods
    // made before (the broker a native sidecar, the checkout and download init containers).
    let named = |name: &str| init.iter().chain(main.iter()).find(|s| s.name == name);
    let broker = named(contract::BROKER_CONTAINER);
    let unschedulable = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .map(|c| c.message.unwrap_or_else(|| c.reason.unwrap_or_default()));
    let image_problem = init.iter().chain(main.iter()).find_map(|s| {
        let w = s.state.as_ref()?.waiting.as_ref()?;
        let reason = w.reason.clone()?;
        IMAGE_ERRORS.contains(&reason.as_str()).then(|| {
            (
                s.name.clone(),
                reason,
                w.message.clone().unwrap_or_default(),
            )
        })
    });
    let essential: Vec<&ContainerStatus> = init
        .iter()
        .chain(main.iter())
        .filter(|s| {
            [
                contract::BUILD_CONTAINER,
                contract::BROKER_CONTAINER,
                crate::pod::CHECKOUT_CONTAINER,
                FETCH_CONTAINER,
                STORE_CONTAINER,
            ]
            .contains(&s.name.as_str())
        })
        .collect();
    let start_problem = start_problem(&essential);
    let service_stops = main
        .iter()
        .filter(|s| !essential.iter().any(|e| e.name == s.name))
        .filter_map(|s| {
            Some(ServiceStop {
                how: service_failure(s)?,
                uid: container_uid(pod, &s.name),
                container: s.name.clone(),
            })
        })
        .collect();
    PodView {
        phase: status.phase.unwrap_or_default(),
        unschedulable,
        reason: status.reason,
        message: status.message,
        broker: view(broker),
        broker_last_exit: broker
            .and_then(|b| b.last_state.as_ref())
            .and_then(|s| s.terminated.as_ref())
            .map(|t| t.exit_code),
        broker_ended_before_build: ended_before(broker, named(contract::BUILD_CONTAINER)),
        build: view(named(contract::BUILD_CONTAINER)),
        checkout: view(named(crate::pod::CHECKOUT_CONTAINER)),
        fetch: view(named(FETCH_CONTAINER)),
        store: view(named(STORE_CONTAINER)),
        image_problem,
        start_problem,
        service_stops,
    }
}

/// Whether `first` has ended, and `then` had not started by then (the API's times are whole
/// seconds: the same second counts as before).
fn ended_before(first: Option<&ContainerStatus>, then: Option<&ContainerStatus>) -> bool {
    let Some(ended) = first
        .and_then(|s| s.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .and_then(|t| t.finished_at.as_ref())
    else {
        return false;
    };
    let state = then.and_then(|s| s.state.as_ref());
    let started = state
        .and_then(|s| s.running.as_ref())
        .and_then(|r| r.started_at.as_ref())
        .or_else(|| {
            state
                .and_then(|s| s.terminated.as_ref())
                .and_then(|t| t.started_at.as_ref())
        });
    started.is_none_or(|started| ended.0 <= started.0)
}

/// The outcome of a script that exited with `code` by itself (not killed by the kubelet).
fn script_exited(code: i32) -> Outcome {
    if code == 0 {
        return Outcome::Success;
    }
    Outcome::Failed {
        kind: FailureKind::Script,
        exit_code: Some(code),
        message: format!("exit code {code}"),
    }
}

/// The outcome from the exit status the script itself reported at the log's end
/// ([`keyhole_contract::script_exit_line`]), without waiting for the pod's status: for a normal
/// exit only. A status of 128 or more is a signal's (SIGKILL by the OOM killer: 137): None,
/// so that the pod's status, which says why (`OOMKilled`), decides. The script's own word is
/// what gitlab-runner's Kubernetes executor goes by too (its shell reports its exit code in
/// the log); a job that lies about it lies about itself.
pub fn outcome_of_script_status(status: u8) -> Option<Outcome> {
    (status < 128).then(|| script_exited(i32::from(status)))
}

/// How the job ended, if the pod's state says it has (pure): an image that cannot be pulled, a
/// container that cannot start, the broker failing before the script started, a failed
/// checkout, the build container's exit, or the pod failing as a whole.
pub fn verdict(v: &PodView, started: bool) -> Option<Outcome> {
    let failed = |kind, exit_code, message: String| {
        Some(Outcome::Failed {
            kind,
            exit_code,
            message,
        })
    };
    if let Some((container, reason, message)) = &v.image_problem {
        return failed(
            FailureKind::ImagePull,
            None,
            format!("container {container} cannot get its image: {reason}: {message}"),
        );
    }
    if let Some((container, reason, message)) = &v.start_problem {
        let (kind, message) = start_failure(container, reason, message);
        return failed(kind, None, message);
    }
    let broker_exit = match &v.broker {
        ContainerView::Terminated { exit_code, .. } if *exit_code != 0 => Some(*exit_code),
        _ => v.broker_last_exit.filter(|c| *c != 0),
    };
    if let (Some(code), true) = (broker_exit, !started || v.broker_ended_before_build) {
        let (kind, message) = broker_failure(code);
        return failed(kind, None, message);
    }
    if let ContainerView::Terminated { exit_code, .. } = &v.checkout
        && *exit_code != 0
    {
        return failed(
            FailureKind::System,
            None,
            format!(
                "checking out the repository failed (exit code {exit_code}); see the lines above"
            ),
        );
    }
    if let ContainerView::Terminated { exit_code, .. } = &v.fetch
        && *exit_code != 0
    {
        return failed(
            FailureKind::Script,
            None,
            format!(
                "downloading the artifacts of earlier jobs failed (exit code {exit_code}); see the lines above"
            ),
        );
    }
    if let ContainerView::Terminated {
        exit_code, reason, ..
    } = &v.build
    {
        // The uploads come after the script (also after a failed one, for `when: on_failure`
        // or `always`): the job ends with them.
        if matches!(
            v.store,
            ContainerView::Waiting { .. } | ContainerView::Running { .. }
        ) {
            return None;
        }
        return match (*exit_code, reason.as_str()) {
            (0, _) => match &v.store {
                ContainerView::Absent | ContainerView::Terminated { exit_code: 0, .. } => {
                    Some(Outcome::Success)
                }
                ContainerView::Terminated { exit_code, .. } => failed(
                    FailureKind::Script,
                    None,
                    format!(
                        "uploading the job's artifacts failed (exit code {exit_code}); see the lines above"
                    ),
                ),
                ContainerView::Waiting { .. } | ContainerView::Running { .. } => None,
            },
            (code, "OOMKilled") => failed(
                FailureKind::Script,
                Some(code),
                format!(
                    "the build container ran out of memory (OOMKilled, exit code {code}); raise its memory limit"
                ),
            ),
            (code, _) => Some(script_exited(code)),
        };
    }
    if v.phase == "Failed" {
        let reason = v.reason.clone().unwrap_or_default();
        let message = v.message.clone().unwrap_or_default();
        return match reason.as_str() {
            "DeadlineExceeded" => failed(
                FailureKind::Timeout,
                None,
                "the pod reached its active deadline".into(),
            ),
            "Evicted" => failed(
                FailureKind::System,
                None,
                format!("the pod was evicted: {message}"),
            ),
            _ => failed(
                FailureKind::System,
                None,
                format!("the pod failed: {reason} {message}"),
            ),
        };
    }
    None
}

/// A short human line for the pod's progress, printed when it changes: scheduling, the
/// broker's delivery of the secrets, the containers checking out the repository and
/// downloading artifacts (when the job has them), the build container.
pub fn progress_line(v: &PodView) -> String {
    if let Some(m) = &v.unschedulable {
        return format!("Waiting for the pod to be scheduled: {m}");
    }
    let container = |name: &str, c: &ContainerView| match c {
        ContainerView::Absent => format!("{name} not created"),
        ContainerView::Waiting { reason, .. } if reason.is_empty() => format!("{name} waiting"),
        ContainerView::Waiting { reason, .. } => format!("{name} {reason}"),
        ContainerView::Running { started: false } => format!("{name} starting"),
        ContainerView::Running { started: true } => format!("{name} running"),
        ContainerView::Terminated { exit_code, .. } => format!("{name} exited {exit_code}"),
    };
    let broker = match &v.broker {
        ContainerView::Running { started: false } => "secrets resolving".to_string(),
        ContainerView::Running { started: true } => "secrets delivered".to_string(),
        other => container("broker", other),
    };
    let mut parts = vec![broker];
    for (name, c) in [("checkout", &v.checkout), ("artifact download", &v.fetch)] {
        if *c != ContainerView::Absent {
            parts.push(container(name, c));
        }
    }
    parts.push(container("build", &v.build));
    format!(
        "Pod {}: {}",
        if v.phase.is_empty() {
            "Pending"
        } else {
            &v.phase
        },
        parts.join(", ")
    )
}

/// The broker's exit codes, explained for the job log.
pub fn broker_failure(code: i32) -> (FailureKind, String) {
    use contract::exit_code;
    match code {
        exit_code::SECRETS_FAILED => (
            FailureKind::Configuration,
            "the job's secrets could not be delivered (see the keyhole-broker lines above); the script did not run".into(),
        ),
        exit_code::BAD_INPUTS => (
            FailureKind::System,
            format!("keyhole-broker refused its inputs (exit {code}); this is a runner or deployment problem, see the lines above"),
        ),
        exit_code::UNAVAILABLE => (
            FailureKind::System,
            "Vault or the Kubernetes API could not be reached in time; the script did not run".into(),
        ),
        other => (
            FailureKind::System,
            format!("keyhole-broker exited with code {other} before the script ran"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap()
    }

    #[test]
    fn the_scripts_own_status_decides_a_normal_exit_and_leaves_a_kill_to_the_pod() {
        assert_eq!(outcome_of_script_status(0), Some(Outcome::Success));
        assert_eq!(
            outcome_of_script_status(3),
            Some(Outcome::Failed {
                kind: FailureKind::Script,
                exit_code: Some(3),
                message: "exit code 3".into()
            })
        );
        // The same outcome as the pod's status gives for that exit.
        let terminated = |code: i32| {
            let build = json!({"name": "build", "image": "i", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"terminated": {"exitCode": code, "reason": "Error"}}});
            verdict(
                &observe(&pod(
                    json!({"phase": "Running", "containerStatuses": [build]}),
                )),
                true,
            )
        };
        for code in [0u8, 1, 3, 127] {
            assert_eq!(outcome_of_script_status(code), terminated(i32::from(code)));
        }
        // 137 may be the OOM killer's SIGKILL: the pod's status says so, the script cannot.
        for killed in [128u8, 137, 143, 255] {
            assert_eq!(outcome_of_script_status(killed), None);
        }
    }

    #[test]
    fn pending_unschedulable_pods_say_why() {
        let v = observe(&pod(json!({"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes are available: 1 Insufficient memory."}
        ]})));
        assert_eq!(
            v.unschedulable.as_deref(),
            Some("0/1 nodes are available: 1 Insufficient memory.")
        );
        assert!(progress_line(&v).contains("Insufficient memory"));
    }

    #[test]
    fn progress_names_the_init_containers_the_job_has() {
        let init = |name: &str, state: serde_json::Value| json!({"name": name, "image": "i", "imageID": "", "ready": false, "restartCount": 0, "state": state});
        let v = observe(&pod(json!({"phase": "Pending",
            "initContainerStatuses": [
                init("keyhole-broker", json!({"running": {}})),
                init(crate::pod::CHECKOUT_CONTAINER, json!({"waiting": {"reason": "PodInitializing"}})),
            ],
            "containerStatuses": [{"name": "build", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "PodInitializing"}}}]})));
        assert_eq!(
            progress_line(&v),
            "Pod Pending: secrets resolving, checkout PodInitializing, build PodInitializing"
        );
        let v = observe(&pod(json!({"phase": "Pending",
        "initContainerStatuses": [
            init("keyhole-broker", json!({"running": {}})),
            init(crate::pod::CHECKOUT_CONTAINER, json!({"terminated": {"exitCode": 0}})),
            init(FETCH_CONTAINER, json!({"running": {}})),
        ]})));
        assert_eq!(v.broker, ContainerView::Running { started: false });
        assert_eq!(
            progress_line(&v),
            "Pod Pending: secrets resolving, checkout exited 0, artifact download starting, build not created"
        );
        // A job without them: as before.
        let v = observe(&pod(json!({"phase": "Pending"})));
        assert_eq!(
            progress_line(&v),
            "Pod Pending: broker not created, build not created"
        );
    }

    #[test]
    fn image_pull_errors_of_any_container_are_found() {
        let v = observe(&pod(json!({"phase": "Pending",
            "initContainerStatuses": [{"name": "keyhole-broker", "image": "b", "imageID": "", "ready": false, "restartCount": 0, "started": true, "state": {"running": {}}}],
            "containerStatuses": [{"name": "build", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ErrImageNeverPull", "message": "image x not present"}}}]})));
        assert_eq!(
            v.image_problem,
            Some((
                "build".into(),
                "ErrImageNeverPull".into(),
                "image x not present".into()
            ))
        );
        assert_eq!(v.broker, ContainerView::Running { started: true });
        assert!(progress_line(&v).contains("secrets delivered"));
    }

    #[test]
    fn a_build_container_that_cannot_start_is_the_jobs_failure_with_the_kubelets_reason() {
        let v = observe(&pod(json!({"phase": "Running",
            "containerStatuses": [{"name": "build", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 128, "reason": "StartError",
                    "message": "exec: \"/nope\": stat /nope: no such file or directory: unknown"}}}]})));
        let (container, reason, message) = v.start_problem.clone().unwrap();
        let (kind, line) = start_failure(&container, &reason, &message);
        assert_eq!(kind, FailureKind::Script);
        assert!(
            line.contains("StartError") && line.contains("/nope"),
            "{line}"
        );
    }

    #[test]
    fn a_container_the_kubelet_keeps_retrying_is_a_failure_at_once() {
        let v = observe(&pod(json!({"phase": "Pending",
            "initContainerStatuses": [{"name": "keyhole-checkout", "image": "g", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "CreateContainerConfigError", "message": "secret \"x\" not found"}}}],
            "containerStatuses": [{"name": "redis", "image": "r", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "CreateContainerError", "message": "a service"}}}]})));
        let (container, reason, message) = v.start_problem.clone().unwrap();
        assert_eq!(container, "keyhole-checkout");
        assert_eq!(
            start_failure(&container, &reason, &message).0,
            FailureKind::System
        );
    }

    #[test]
    fn failed_services_are_named_with_how_and_the_uid_they_ran_as() {
        let mut p = pod(json!({"phase": "Running",
            "containerStatuses": [
                {"name": "build", "image": "x", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}},
                {"name": "db", "image": "postgres", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 1, "reason": "Error"}}},
                {"name": "cache", "image": "r", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"waiting": {"reason": "CreateContainerError", "message": "no such file"}}},
                {"name": "oneshot", "image": "o", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                {"name": "web", "image": "w", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}]}));
        p.spec = Some(
            serde_json::from_value(json!({
                "securityContext": {"runAsUser": 1000},
                "containers": [
                    {"name": "build"},
                    {"name": "db", "securityContext": {"runAsUser": 999}},
                    {"name": "cache"}]
            }))
            .unwrap(),
        );
        let v = observe(&p);
        assert_eq!(
            v.service_stops,
            [
                ServiceStop {
                    container: "db".into(),
                    how: "exited with code 1 (Error)".into(),
                    uid: Some(999),
                },
                ServiceStop {
                    container: "cache".into(),
                    how: "could not start (CreateContainerError: no such file)".into(),
                    uid: Some(1000),
                },
            ]
        );
        let line = service_stop_warning(&v.service_stops[0]);
        assert!(
            line.contains("service db exited with code 1 (Error)")
                && line.contains("uid 999")
                && line.contains("needs root")
                && line.contains("kubernetes: {user:"),
            "{line}"
        );
        assert_eq!(v.start_problem, None, "a service does not end the job");
    }

    #[test]
    fn the_verdict_reads_the_end_of_a_job_off_its_pod() {
        let build = |state: serde_json::Value| {
            observe(&pod(json!({"phase": "Running",
                "containerStatuses": [{"name": "build", "image": "x", "imageID": "", "ready": false,
                    "restartCount": 0, "state": state}]})))
        };
        assert_eq!(verdict(&build(json!({"running": {}})), true), None);
        assert_eq!(
            verdict(&build(json!({"terminated": {"exitCode": 0}})), true),
            Some(Outcome::Success)
        );
        let oom = verdict(
            &build(json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}})),
            true,
        );
        assert!(
            matches!(&oom, Some(Outcome::Failed { kind: FailureKind::Script, exit_code: Some(137), message }) if message.contains("OOMKilled")),
            "{oom:?}"
        );
        let broker = observe(&pod(json!({"phase": "Pending",
            "initContainerStatuses": [{"name": "keyhole-broker", "image": "b", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"terminated": {"exitCode": 64}}}]})));
        assert!(matches!(
            verdict(&broker, false),
            Some(Outcome::Failed {
                kind: FailureKind::Configuration,
                ..
            })
        ));
        let evicted = observe(&pod(
            json!({"phase": "Failed", "reason": "Evicted", "message": "low memory"}),
        ));
        assert!(matches!(
            verdict(&evicted, true),
            Some(Outcome::Failed { kind: FailureKind::System, message, .. }) if message.contains("evicted: low memory")
        ));
    }

    /// The kubelet starts the build container after a failed delivery too (its script stops
    /// at once): the broker's failure is the job's, not the script's exit 1. A broker that
    /// fails while the build container runs leaves the outcome to the build container.
    #[test]
    fn a_broker_that_failed_before_the_build_container_started_decides_the_job() {
        let job_pod = |broker_end: &str, build_start: &str| {
            observe(&pod(json!({"phase": "Failed", "containerStatuses": [
                {"name": "keyhole-broker", "image": "b", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 64, "finishedAt": broker_end}}},
                {"name": "build", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 1, "startedAt": build_start}}}]})))
        };
        for (broker_end, build_start) in [
            ("2026-12-04T10:00:00Z", "2026-12-04T10:00:01Z"),
            ("2026-12-04T10:00:00Z", "2026-12-04T10:00:00Z"),
        ] {
            let v = job_pod(broker_end, build_start);
            assert!(v.broker_ended_before_build);
            assert!(
                matches!(
                    verdict(&v, true),
                    Some(Outcome::Failed {
                        kind: FailureKind::Configuration,
                        exit_code: None,
                        ..
                    })
                ),
                "{v:?}"
            );
        }
        let mid_job = job_pod("2026-12-04T10:00:09Z", "2026-12-04T10:00:01Z");
        assert!(!mid_job.broker_ended_before_build);
        assert!(matches!(
            verdict(&mid_job, true),
            Some(Outcome::Failed {
                kind: FailureKind::Script,
                exit_code: Some(1),
                ..
            })
        ));
    }

    #[test]
    fn a_restarted_broker_keeps_its_last_exit_code() {
        let v = observe(&pod(json!({"phase": "Pending",
            "initContainerStatuses": [{"name": "keyhole-broker", "image": "b", "imageID": "", "ready": false, "restartCount": 1,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 64}}}]})));
        assert_eq!(v.broker_last_exit, Some(64));
        assert_eq!(broker_failure(64).0, FailureKind::Configuration);
        assert_eq!(broker_failure(69).0, FailureKind::System);
    }

    #[test]
    fn the_build_exit_code_and_oom_reason_are_read() {
        let v = observe(&pod(json!({"phase": "Running",
            "containerStatuses": [{"name": "build", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]})));
        assert_eq!(
            v.build,
            ContainerView::Terminated {
                exit_code: 137,
                reason: "OOMKilled".into(),
                message: String::new()
            }
        );
    }

    #[test]
    fn a_job_with_uploads_ends_with_them_and_fails_when_they_fail() {
        let state = |build: serde_json::Value, store: Option<serde_json::Value>| {
            let mut main = vec![
                json!({"name": "build", "image": "b", "imageID": "", "ready": false,
                "restartCount": 0, "state": build}),
            ];
            if let Some(store) = store {
                main.push(
                    json!({"name": STORE_CONTAINER, "image": "s", "imageID": "", "ready": false,
                    "restartCount": 0, "state": store}),
                );
            }
            observe(&pod(json!({"phase": "Running", "containerStatuses": main})))
        };
        let exited = |code: i32| json!({"terminated": {"exitCode": code}});
        let running = json!({"running": {}});
        // The script is over but the uploads are not: the job is not over either, also after
        // a failed script (its `when: on_failure` artifacts are on their way).
        assert_eq!(
            verdict(&state(exited(0), Some(running.clone())), true),
            None
        );
        assert_eq!(verdict(&state(exited(2), Some(running)), true), None);
        assert_eq!(
            verdict(&state(exited(0), Some(exited(0))), true),
            Some(Outcome::Success)
        );
        let Some(Outcome::Failed { kind, message, .. }) =
            verdict(&state(exited(0), Some(exited(1))), true)
        else {
            panic!("a failed upload must fail the job");
        };
        assert_eq!(kind, FailureKind::Script);
        assert!(
            message.contains("uploading the job's artifacts failed"),
            "{message}"
        );
        // The script's own failure is the job's, whatever the uploads did.
        assert!(matches!(
            verdict(&state(exited(4), Some(exited(1))), true),
            Some(Outcome::Failed {
                exit_code: Some(4),
                ..
            })
        ));
        // No store container: the build container's exit is the end, as before.
        assert_eq!(
            verdict(&state(exited(0), None), true),
            Some(Outcome::Success)
        );
    }

    #[test]
    fn a_failed_download_of_dependencies_fails_the_job_before_the_script() {
        let v = observe(&pod(json!({"phase": "Pending", "initContainerStatuses": [
            {"name": FETCH_CONTAINER, "image": "f", "imageID": "", "ready": false,
             "restartCount": 0, "state": {"terminated": {"exitCode": 1}}}]})));
        let Some(Outcome::Failed { message, .. }) = verdict(&v, false) else {
            panic!("a failed download must fail the job");
        };
        assert!(message.contains("downloading the artifacts"), "{message}");
    }
}
