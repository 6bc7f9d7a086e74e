//! Job → pod and per-job Secret, as a pure function (snapshot-tested; `keyhole-runner render`
//! prints its output). The pod passes PodSecurity `restricted`; only the broker gets a
//! ServiceAccount token, through its own projected volume; the build container sees the
//! secrets volume read-only and nothing else of the broker's.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    Container, HostAlias, LocalObjectReference, Pod, PodSecurityContext, PodSpec,
    ProjectedVolumeSource, ResourceRequirements, Secret, Toleration, Volume, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use keyhole_contract as contract;
use keyhole_contract::transfer::Plan;
use secrecy::SecretString;

use super::broker::{broker_container, inputs_sources};
use super::checkout::{checkout, project_dir_root};
use super::containers::{
    build_container, build_image, flag_enabled, restricted_as, service_containers,
};
use super::env::{JobEnv, split_variables};
use super::error::PodError;
use super::metadata::pod_metadata;
use super::parts::{empty_dir, env_var, runtime_default};
use super::resources::build_resources;
use super::transfer::transfer_parts;
use crate::config::{KubernetesConfig, RunnerConfig, UserNamespaceRoot};
use crate::job::{Image, Job};
use crate::registry_auth::PullAuth;
use crate::script::{ScriptOptions, build_script};
use crate::secrets::JobSecrets;

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
        let name = |m: &ObjectMeta| m.name.clone().unwrap_or_default();
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
    let image = build_image(job, k, runner.keyhole.user_namespace_root)?;
    let resources = build_resources(k, job)?;
    let mut env = split_variables(job, runner, &req.log_end_token)?;
    let plan = super::transfer::plan(job, runner, &env.project_dir, &req.caches)?;
    let (labels, annotations) = pod_metadata(job, runner, req.secrets, req.instance)?;
    let spec = job_pod_spec(req, &image, resources, &env, plan.as_ref())?;
    // The transfer plan is for the transfer containers alone, not one of the broker's inputs:
    // it joins the Secret after the inputs volume has listed the Secret's keys.
    if let Some(plan) = &plan {
        let (key, value) = super::transfer::plan_secret(plan)?;
        env.secret_data.insert(key, value);
    }
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(req.pod_name.clone()),
            namespace: Some(k.namespace.clone()),
            labels: Some(labels.clone()),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(spec),
        ..Default::default()
    };
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

/// The pod's containers and volumes, in the pod-level spec. All are regular containers, in the
/// order the kubelet starts them, one after another in one sync: the broker (its postStart hook
/// returns once every secret is delivered), the preparation steps (checkout, the artifacts'
/// download), the build container, the services, the transfers' store. No init container: each
/// one, and each native sidecar, would cost the job a wait for the kubelet's next status
/// relist (once a second) before the next container starts.
fn job_pod_spec(
    req: &PodRequest<'_>,
    image: &Image,
    resources: ResourceRequirements,
    env: &JobEnv,
    plan: Option<&Plan>,
) -> Result<PodSpec, PodError> {
    let (job, runner) = (req.job, req.runner);
    let userns = runner.keyhole.user_namespace_root;
    let services = service_containers(job, &runner.kubernetes, userns, &env.public)?;
    // The steps run as the build container's user, so the job owns the files they write (a
    // job running as another uid, or as root without capabilities, could not change them).
    let build_user = restricted_as(image, "image", &runner.kubernetes, userns)?;
    let sources = inputs_sources(runner, req.secrets, &req.pod_name, env.secret_data.keys());
    let mut volumes = base_volumes(sources);
    let mut steps = Vec::new();
    if let Some((container, volume)) = checkout(
        job,
        &runner.keyhole.git_image,
        &req.pod_name,
        &env.project_dir,
        &build_user,
    ) {
        steps.push(container);
        volumes.push(volume);
    }
    let mut store = None;
    if let Some(plan) = plan {
        let builds_root = project_dir_root(&env.project_dir);
        let parts = transfer_parts(plan, runner, &req.pod_name, &builds_root, &build_user);
        if let Some(fetch) = parts.fetch {
            steps.push(after_steps(fetch, &steps));
        }
        store = parts.store;
        volumes.extend(parts.volumes);
    }
    let step_names: Vec<&str> = steps.iter().map(|c| c.name.as_str()).collect();
    let hand_off = plan.is_some_and(Plan::stores);
    let gate = !services.waits.is_empty() || !step_names.is_empty();
    let script = job_script(req, &env.project_dir, gate, hand_off);
    let honor_entrypoint = flag_enabled(job, "FF_KUBERNETES_HONOR_ENTRYPOINT");
    let build = build_container(
        image,
        runner,
        script,
        &env.public,
        resources,
        honor_entrypoint,
    )?;
    let broker = broker_container(
        runner,
        req.secrets,
        &services.waits,
        &step_names,
        image.user.is_some(),
        cancel_wait_seconds(&runner.kubernetes),
    );
    let mut containers = vec![broker];
    containers.extend(steps);
    containers.push(build);
    containers.extend(services.containers);
    containers.extend(store);
    let mut spec = pod_spec(req, containers, volumes);
    if userns != UserNamespaceRoot::Off {
        // The pod's own user namespace: ids in it map to an unprivileged range on the node.
        spec.host_users = Some(false);
    }
    if !services.host_aliases.is_empty() {
        spec.host_aliases = Some(vec![HostAlias {
            ip: "127.0.0.1".into(),
            hostnames: Some(services.host_aliases),
        }]);
    }
    Ok(spec)
}

/// `step` with the steps before it to wait for: they start together, and the download
/// extracts into the checkout.
fn after_steps(mut step: Container, before: &[Container]) -> Container {
    if !before.is_empty() {
        let names: Vec<&str> = before.iter().map(|c| c.name.as_str()).collect();
        step.env.get_or_insert_with(Vec::new).push(env_var(
            contract::env::WAIT_FOR_STEPS,
            contract::encode_steps(&names),
        ));
    }
    step
}

/// The volumes of every job pod: the broker's inputs (from `sources`), the secrets and the
/// runtime files (in memory), the builds.
fn base_volumes(sources: Vec<VolumeProjection>) -> Vec<Volume> {
    vec![
        Volume {
            name: contract::INPUTS_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(sources),
                ..Default::default()
            }),
            ..Default::default()
        },
        empty_dir(contract::SECRETS_VOLUME, Some("16Mi")),
        empty_dir(contract::RUNTIME_VOLUME, Some("1Mi")),
        empty_dir("builds", None),
    ]
}

/// One of the job's Secrets: immutable, labelled like its pod (which will own it).
fn job_secret(
    name: String,
    req: &PodRequest<'_>,
    labels: &BTreeMap<String, String>,
    type_: &str,
    data: BTreeMap<String, ByteString>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
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

/// The script the build container runs; `wait_at_gate` makes it wait for the broker's word
/// that the steps are done and the services up (or timed out) before the first command.
fn job_script(
    req: &PodRequest<'_>,
    project_dir: &str,
    wait_at_gate: bool,
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
            wait_at_gate,
            hand_off_to_store,
        },
    )
}

/// The pod's grace period: room for `after_script` (it runs at a cancel) and the broker's
/// revocations.
fn termination_grace_seconds(k: &KubernetesConfig) -> i64 {
    k.pod_termination_grace_period_seconds
        .unwrap_or(AFTER_SCRIPT_TIMEOUT.as_secs() as i64 + 30)
}

/// How long the broker keeps relaying after a cancel's SIGTERM ([`contract::env::CANCEL_WAIT`]):
/// the grace period less 10 s for its revocations and 5 s of margin.
fn cancel_wait_seconds(k: &KubernetesConfig) -> u64 {
    u64::try_from(termination_grace_seconds(k) - 15).unwrap_or(0)
}

/// The pod-level spec: no ServiceAccount token mounted, the job's deadline, the runner's
/// scheduling settings.
fn pod_spec(req: &PodRequest<'_>, containers: Vec<Container>, volumes: Vec<Volume>) -> PodSpec {
    let k = &req.runner.kubernetes;
    let security = &k.pod_security_context;
    let timeout = req.job.timeout.unwrap_or(DEFAULT_JOB_TIMEOUT);
    let deadline = i64::try_from(timeout.as_secs().saturating_add(60)).unwrap_or(i64::MAX);
    let grace = termination_grace_seconds(k);
    let own_pull_secret = req.pull_auth.map(|_| pull_secret_name(&req.pod_name));
    let pull_secrets: Vec<LocalObjectReference> = k
        .image_pull_secrets
        .iter()
        .chain(&own_pull_secret)
        .map(|name| LocalObjectReference { name: name.clone() })
        .collect();
    PodSpec {
        restart_policy: Some("Never".into()),
        service_account_name: Some(req.service_account.clone()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(grace),
        active_deadline_seconds: Some(deadline),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(security.run_as_user),
            run_as_group: Some(security.run_as_group),
            fs_group: Some(security.fs_group),
            supplemental_groups: Some(security.supplemental_groups.clone()),
            seccomp_profile: Some(runtime_default()),
            ..Default::default()
        }),
        containers,
        volumes: Some(volumes),
        node_selector: (!k.node_selector.is_empty()).then(|| k.node_selector.clone()),
        tolerations: (!k.node_tolerations.is_empty()).then(|| tolerations(&k.node_tolerations)),
        image_pull_secrets: (!pull_secrets.is_empty()).then_some(pull_secrets),
        priority_class_name: k.priority_class_name.clone(),
        runtime_class_name: k.runtime_class_name.clone(),
        scheduler_name: k.scheduler_name.clone(),
        dns_policy: k.dns_policy.clone(),
        ..Default::default()
    }
}

/// `node_tolerations` (`"key=value"` or `"key"` → effect) as the pod's tolerations.
fn tolerations(node_tolerations: &BTreeMap<String, String>) -> Vec<Toleration> {
    node_tolerations
        .iter()
        .map(|(kv, effect)| {
            let (key, operator, value) = match kv.split_once('=') {
                Some((key, value)) => (key, "Equal", Some(value.to_string())),
                None => (kv.as_str(), "Exists", None),
            };
            Toleration {
                key: Some(key.into()),
                operator: Some(operator.into()),
                value,
                effect: Some(effect.clone()),
                ..Default::default()
            }
        })
        .collect()
}
