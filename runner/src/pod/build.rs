//! Job → pod and per-job Secret, as a pure function (snapshot-tested; `keyhole-runner render`
//! prints its output). The pod passes PodSecurity `restricted`; only the broker gets a
//! ServiceAccount token, through its own projected volume; the build container sees the
//! secrets volume read-only and nothing else of the broker's.

use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret};
use keyhole_contract as contract;
use secrecy::SecretString;
use serde_json::{Value, json};

use super::broker::{broker_container, inputs_sources};
use super::containers::{build_container, build_image, flag_enabled, service_containers};
use super::env::split_variables;
use super::error::PodError;
use super::metadata::pod_metadata;
use super::resources::build_resources;
use crate::config::{RunnerConfig, UserNamespaceRoot};
use crate::job::Job;
use crate::registry_auth::PullAuth;
use crate::script::{ScriptOptions, build_script};
use crate::secrets::JobSecrets;

/// Label on every pod and Secret the runner makes.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "keyhole-runner";
/// Label carrying the runner's name, so a runner reaps only its own orphans.
pub const RUNNER_LABEL: &str = "keyhole.dev/runner";
/// Label carrying the job id.
pub const JOB_ID_LABEL: &str = "keyhole.dev/job-id";

/// Default timeout when neither the job nor GitLab sets one (gitlab-runner's default).
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(3600);
/// GitLab's `after_script` timeout.
pub const AFTER_SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// What the builder needs beyond the job and the runner's config, decided by the caller.
#[derive(Debug, Clone)]
pub struct PodRequest<'a> {
    pub job: &'a Job,
    pub runner: &'a RunnerConfig,
    /// `kh-<job id>-<random>`; the per-job Secret gets the same name (the admission policy in
    /// `deploy/` allows a job pod to mount only the Secret named like itself).
    pub pod_name: String,
    pub service_account: String,
    pub secrets: &'a JobSecrets,
    /// The per-job Secret's log-end token ([`contract::INPUT_LOG_END_KEY`]), fresh per job
    /// ([`log_end_token`]); a parameter so that the builder stays pure.
    pub log_end_token: SecretString,
    /// The job's registry logins, if any source gave one: they become the pod's own pull
    /// Secret ([`pull_secret_name`]).
    pub pull_auth: Option<&'a PullAuth>,
    /// The runner process that will own the pod (`keyhole-runner run`), for its reaper; `None`
    /// for `exec` and `render`, whose pods no reaper deletes.
    pub instance: Option<&'a str>,
    /// The job's caches as pre-signed URLs ([`crate::cache::job_caches`]); a parameter so
    /// that the builder stays pure.
    pub caches: Vec<keyhole_contract::transfer::CachePlan>,
}

/// What a job pod's own image pull Secret is named after the pod: `<pod>-registry`. The chart's
/// policies keep such names for the runner, as they do the pod's own name.
pub const PULL_SECRET_SUFFIX: &str = "-registry";

/// The name of the pull Secret of pod `pod_name`.
pub fn pull_secret_name(pod_name: &str) -> String {
    format!("{pod_name}{PULL_SECRET_SUFFIX}")
}

/// The objects one job needs. The Secrets get their ownerReference (the pod) at creation.
/// `Debug` names the objects only: the Secrets' data are the job's secrets.
#[derive(Clone)]
pub struct JobObjects {
    pub pod: Pod,
    pub secret: Secret,
    /// The pod's image pull Secret (`kubernetes.io/dockerconfigjson`), when the job has
    /// registry logins. Only the kubelet reads it: no container mounts it.
    pub pull_secret: Option<Secret>,
    /// What the broker's log-end markers carry (in the Secret too): the executor stops
    /// following the log once it has seen them.
    pub log_end_token: SecretString,
}

impl std::fmt::Debug for JobObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            m.name.clone().unwrap_or_default()
        };
        f.debug_struct("JobObjects")
            .field("pod", &name(&self.pod.metadata))
            .field("secret", &name(&self.secret.metadata))
            .field(
                "pull_secret",
                &self.pull_secret.as_ref().map(|s| name(&s.metadata)),
            )
            .finish_non_exhaustive()
    }
}

/// Builds the pod and the per-job Secret.
pub fn build_job_objects(req: &PodRequest<'_>) -> Result<JobObjects, PodError> {
    let job = req.job;
    let runner = req.runner;
    let k = &runner.kubernetes;
    let userns = runner.keyhole.user_namespace_root;
    let image = build_image(job, k, userns)?;
    let resources = build_resources(k, job)?;
    let mut env = split_variables(job, runner, &req.log_end_token)?;
    let plan = super::transfer::plan(job, runner, &env.project_dir, &req.caches)?;
    let (labels, annotations) = pod_metadata(job, runner, req.secrets, req.instance)?;

    let services = service_containers(job, k, userns, &env.public)?;
    let hand_off = plan.as_ref().is_some_and(|p| p.stores());
    let script = job_script(req, &env.project_dir, !services.waits.is_empty(), hand_off);
    let honor_entrypoint = flag_enabled(job, "FF_KUBERNETES_HONOR_ENTRYPOINT");
    let build = build_container(
        &image,
        runner,
        script,
        &env.public,
        resources,
        honor_entrypoint,
    )?;
    // The checkout runs as the build container's user, so the job owns its checked-out files
    // (a job running as another uid, or as root without capabilities, could not change them).
    let build_user = build["securityContext"].clone();
    let mut containers = vec![build];
    containers.extend(services.containers);

    // The transfer plan is for the transfer containers alone, not one of the broker's inputs.
    let sources = inputs_sources(runner, req.secrets, &req.pod_name, env.secret_data.keys());
    let transfers = plan.as_ref().map(|plan| {
        super::transfer::transfer_parts(
            plan,
            runner,
            &req.pod_name,
            &super::checkout::project_dir_root(&env.project_dir),
            &build_user,
        )
    });
    if let Some(plan) = &plan {
        let (key, value) = super::transfer::plan_secret(plan)?;
        env.secret_data.insert(key, value);
    }
    let mut init_containers = vec![broker_container(
        runner,
        req.secrets,
        &services.waits,
        image.user.is_some(),
    )];
    let mut volumes = vec![
        json!({"name": contract::INPUTS_VOLUME, "projected": {"sources": sources}}),
        json!({"name": contract::SECRETS_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}),
        json!({"name": contract::RUNTIME_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
        json!({"name": "builds", "emptyDir": {}}),
    ];
    if let Some((container, volume)) = super::checkout::checkout(
        job,
        &runner.keyhole.git_image,
        &req.pod_name,
        &env.project_dir,
        &build_user,
    ) {
        init_containers.push(container);
        volumes.push(volume);
    }
    if let Some(parts) = transfers {
        init_containers.extend(parts.fetch);
        containers.extend(parts.store);
        volumes.extend(parts.volumes);
    }

    let mut spec = pod_spec(req, init_containers, containers, volumes);
    if userns != UserNamespaceRoot::Off {
        // The pod's own user namespace: ids in it map to an unprivileged range on the node.
        spec["hostUsers"] = json!(false);
    }
    if !services.host_aliases.is_empty() {
        spec["hostAliases"] = json!([{"ip": "127.0.0.1", "hostnames": services.host_aliases}]);
    }
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": req.pod_name, "namespace": k.namespace, "labels": labels, "annotations": annotations},
        "spec": spec
    }))
    .map_err(|e| PodError::Internal(e.to_string()))?;
    let pull_secret = req.pull_auth.map(|auth| {
        let data = auth.dockerconfigjson();
        job_secret(
            pull_secret_name(&req.pod_name),
            req,
            &labels,
            "kubernetes.io/dockerconfigjson",
            [(".dockerconfigjson".to_string(), ByteString(data.to_vec()))].into(),
        )
    });
    let secret = job_secret(
        req.pod_name.clone(),
        req,
        &labels,
        "Opaque",
        env.secret_data,
    );
    Ok(JobObjects {
        pod,
        secret,
        pull_secret,
        log_end_token: req.log_end_token.clone(),
    })
}

/// One of the job's Secrets: immutable, labelled like its pod (which will own it).
fn job_secret(
    name: String,
    req: &PodRequest<'_>,
    labels: &std::collections::BTreeMap<String, String>,
    type_: &str,
    data: std::collections::BTreeMap<String, ByteString>,
) -> Secret {
    Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name),
            namespace: Some(req.runner.kubernetes.namespace.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        immutable: Some(true),
        data: Some(data),
        type_: Some(type_.into()),
        ..Default::default()
    }
}

/// The script the build container runs; `wait_for_services` makes it wait for the broker's
/// word that the services are up (or timed out) before the first command.
fn job_script(
    req: &PodRequest<'_>,
    project_dir: &str,
    wait_for_services: bool,
    hand_off_to_store: bool,
) -> String {
    let job = req.job;
    build_script(
        &job.before_script,
        &job.script,
        &job.after_script,
        &ScriptOptions {
            project_dir: project_dir.to_string(),
            after_script_timeout: AFTER_SCRIPT_TIMEOUT,
            file_secrets: req
                .secrets
                .references
                .iter()
                .filter(|r| r.file)
                .map(|r| r.name.as_str().to_string())
                .collect(),
            debug_trace: job.debug_trace(),
            wait_for_services,
            hand_off_to_store,
        },
    )
}

/// The pod-level spec: no ServiceAccount token mounted, the job's deadline, the runner's
/// scheduling settings.
fn pod_spec(
    req: &PodRequest<'_>,
    init_containers: Vec<Value>,
    containers: Vec<Value>,
    volumes: Vec<Value>,
) -> Value {
    let k = &req.runner.kubernetes;
    let security = &k.pod_security_context;
    let timeout = req.job.timeout.unwrap_or(DEFAULT_JOB_TIMEOUT);
    let grace = k
        .pod_termination_grace_period_seconds
        .unwrap_or(AFTER_SCRIPT_TIMEOUT.as_secs() as i64 + 30);
    let mut spec = json!({
        "restartPolicy": "Never",
        "serviceAccountName": req.service_account,
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "terminationGracePeriodSeconds": grace,
        "activeDeadlineSeconds": timeout.as_secs() + 60,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": security.run_as_user,
            "runAsGroup": security.run_as_group,
            "fsGroup": security.fs_group,
            "supplementalGroups": security.supplemental_groups,
            "seccompProfile": {"type": "RuntimeDefault"}
        },
        "initContainers": init_containers,
        "containers": containers,
        "volumes": volumes
    });
    if !k.node_selector.is_empty() {
        spec["nodeSelector"] = json!(k.node_selector);
    }
    if !k.node_tolerations.is_empty() {
        spec["tolerations"] = Value::Array(
            k.node_tolerations
                .iter()
                .map(|(kv, effect)| match kv.split_once('=') {
                    Some((key, value)) => {
                        json!({"key": key, "operator": "Equal", "value": value, "effect": effect})
                    }
                    None => json!({"key": kv, "operator": "Exists", "effect": effect}),
                })
                .collect(),
        );
    }
    let own_pull_secret = req.pull_auth.map(|_| pull_secret_name(&req.pod_name));
    let pull_secrets: Vec<Value> = k
        .image_pull_secrets
        .iter()
        .chain(&own_pull_secret)
        .map(|n| json!({"name": n}))
        .collect();
    if !pull_secrets.is_empty() {
        spec["imagePullSecrets"] = Value::Array(pull_secrets);
    }
    for (field, value) in [
        ("priorityClassName", &k.priority_class_name),
        ("runtimeClassName", &k.runtime_class_name),
        ("schedulerName", &k.scheduler_name),
        ("dnsPolicy", &k.dns_policy),
    ] {
        if let Some(v) = value {
            spec[field] = json!(v);
        }
    }
    spec
}
