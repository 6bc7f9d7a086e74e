//! Job → everything needed to start it, before anything touches the cluster: the job's
//! variables completed and expanded, the ServiceAccount (from the runner's rules), the checked
//! secret references, the pod and its Secret. A job that fails here fails with every reason
//! listed and no pod created.

use std::time::Duration;

use crate::cache::job_caches;
use crate::config::{
    JobIdentity, RunnerConfig, ServiceAccountChoice, ServiceAccountError, choose_service_account,
};
use crate::job::Job;
use crate::pod::{
    DEFAULT_JOB_TIMEOUT, JobObjects, PodError, PodRequest, build_job_objects, log_end_token,
    pod_name, random_suffix,
};
use crate::registry_auth::{AuthSource, PullAuth, RegistryAuthError, resolve};
use crate::secrets::{JobSecrets, collect};
use crate::variables::{ExpandError, RunnerFacts, complete_job};
use secrecy::SecretString;

/// Why a job cannot start, found before anything touches the cluster: one variant per step of
/// [`prepare_named`], so a caller can tell a bad reference from a pod the runner may not build.
/// Every one is the job's or the runner's configuration (GitLab's `runner_configuration_error`),
/// never the cluster's.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PrepareError {
    /// The job's variables, image or services do not expand.
    #[error(transparent)]
    Variables(#[from] ExpandError),
    /// A registry login (`DOCKER_AUTH_CONFIG`, GitLab's credentials) cannot be used.
    #[error(transparent)]
    RegistryLogin(#[from] RegistryAuthError),
    /// No ServiceAccount the runner's rules allow for this job.
    #[error(transparent)]
    ServiceAccount(#[from] ServiceAccountError),
    /// Secret references the job may not make or that do not parse, one line each.
    #[error("{}", .0.join("\n"))]
    Secrets(Vec<String>),
    /// The pod the job asks for is one the runner does not build (an image, a user, a policy).
    #[error(transparent)]
    Pod(#[from] PodError),
}

impl PrepareError {
    /// The trace lines that say what is wrong, one per problem.
    pub fn lines(&self) -> Vec<String> {
        match self {
            Self::Secrets(problems) => problems.clone(),
            other => vec![other.to_string()],
        }
    }
}

/// A job ready to run.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub objects: JobObjects,
    pub service_account: ServiceAccountChoice,
    pub secrets: JobSecrets,
    pub timeout: Duration,
    /// The registries the pod's own pull Secret logs in to, and whose login each is.
    pub registries: Vec<(String, AuthSource)>,
    /// What the job asks for that this runner does not do, said in the trace as a warning
    /// rather than dropped without a word (e.g. `cache:` without a cache store).
    pub warnings: Vec<String>,
}

impl Prepared {
    /// The trace lines that say, before the pod exists, who the job runs as and, per
    /// registry the pod logs in to, whose login it uses (never a value), as gitlab-runner says
    /// where each came from.
    pub fn announcements(&self) -> Vec<String> {
        let account = format!(
            "ServiceAccount {} ({})",
            self.service_account.name, self.service_account.reason
        );
        let registries = self.registries.iter().map(|(registry, source)| {
            format!("Pulling from {registry} with the login from {source}")
        });
        std::iter::once(account).chain(registries).collect()
    }
}

/// `DOCKER_AUTH_CONFIG`, which gitlab-runner reads from the job and the runner's environment.
const DOCKER_AUTH_CONFIG: &str = "DOCKER_AUTH_CONFIG";

/// The job's registry logins: its own `DOCKER_AUTH_CONFIG` (as expanded), the runner's
/// `environment` one, GitLab's `credentials`.
fn pull_auth(
    payload_job: &Job,
    job: &Job,
    runner: &RunnerConfig,
) -> Result<Option<PullAuth>, RegistryAuthError> {
    let last = |j: &Job| {
        j.variables
            .iter()
            .rev()
            .find(|v| v.key == DOCKER_AUTH_CONFIG)
            .map(|v| v.value.clone())
    };
    let from_job = last(payload_job).and_then(|_| last(job));
    let from_runner = runner
        .environment
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("DOCKER_AUTH_CONFIG="))
        .map(|v| SecretString::from(v.to_owned()));
    resolve(
        from_job.as_ref(),
        from_runner.as_ref(),
        &job.registry_credentials,
    )
}

/// Prepares a job with a fresh pod name; `instance` is the runner process that will own the
/// pod (see [`crate::instance`]), `None` for `exec`.
pub fn prepare(
    job: &Job,
    runner: &RunnerConfig,
    instance: Option<&str>,
) -> Result<Prepared, PrepareError> {
    prepare_named(job, runner, pod_name(job.id, &random_suffix()), instance)
}

/// [`prepare`] with a given pod name (for snapshots and `render`).
pub fn prepare_named(
    job: &Job,
    runner: &RunnerConfig,
    pod_name: String,
    instance: Option<&str>,
) -> Result<Prepared, PrepareError> {
    // Once per job, before anything reads a variable: the runner's own variables, then
    // GitLab's expansion of values, image and services (see crate::variables).
    let payload_job = job;
    let job = &complete_job(job, &RunnerFacts::of(runner))?;
    let pull_auth = pull_auth(payload_job, job, runner)?;
    let identity = JobIdentity {
        project_path: job.project.path.as_deref(),
        ref_name: &job.git.ref_name,
        protected: job.git.protected,
    };
    let service_account = choose_service_account(
        &identity,
        &runner.keyhole.service_account_rules,
        &runner.kubernetes,
        job.public_variable("KUBERNETES_SERVICE_ACCOUNT_OVERWRITE"),
    )?;
    let secrets =
        collect(job, &runner.keyhole, &service_account.name).map_err(PrepareError::Secrets)?;
    let timeout = job.timeout.unwrap_or(DEFAULT_JOB_TIMEOUT);
    let caches = job_caches(job, runner, timeout);
    let objects = build_job_objects(&PodRequest {
        job,
        runner,
        pod_name,
        service_account: service_account.name.clone(),
        secrets: &secrets,
        log_end_token: log_end_token(),
        pull_auth: pull_auth.as_ref(),
        instance,
        caches: caches.plans,
    })?;
    Ok(Prepared {
        objects,
        service_account,
        secrets,
        timeout,
        registries: pull_auth.map(|a| a.registries()).unwrap_or_default(),
        warnings: left_out_warning(job)
            .into_iter()
            .chain(caches.warnings)
            .collect(),
    })
}

/// A local job's keys that move files between jobs, which a job run alone does not use.
fn left_out_warning(job: &Job) -> Option<String> {
    let left_out = &job.transfers.left_out;
    (!left_out.is_empty()).then(|| {
        format!(
            "this job runs alone: its {} {} not used (they pass files between the jobs of a pipeline, which only GitLab runs)",
            left_out.join(", "),
            if left_out.len() == 1 { "is" } else { "are" }
        )
    })
}
