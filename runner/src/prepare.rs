//! Job → everything needed to start it, before anything touches the cluster: the job's
//! variables completed and expanded, the ServiceAccount (from the runner's rules), the checked
//! secret references, the pod and its Secret. A job that fails here fails with every reason
//! listed and no pod created.

use std::time::Duration;

use crate::config::{JobIdentity, RunnerConfig, ServiceAccountChoice, choose_service_account};
use crate::job::Job;
use crate::pod::{
    DEFAULT_JOB_TIMEOUT, JobObjects, PodRequest, build_job_objects, log_end_token, pod_name,
    random_suffix,
};
use crate::secrets::{JobSecrets, collect};
use crate::variables::{RunnerFacts, complete_job};

/// A job ready to run.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub objects: JobObjects,
    pub service_account: ServiceAccountChoice,
    pub secrets: JobSecrets,
    pub timeout: Duration,
}

/// Prepares a job with a fresh pod name.
pub fn prepare(job: &Job, runner: &RunnerConfig) -> Result<Prepared, Vec<String>> {
    prepare_named(job, runner, pod_name(job.id, &random_suffix()))
}

/// [`prepare`] with a given pod name (for snapshots and `render`).
pub fn prepare_named(
    job: &Job,
    runner: &RunnerConfig,
    pod_name: String,
) -> Result<Prepared, Vec<String>> {
    // Once per job, before anything reads a variable: the runner's own variables, then
    // GitLab's expansion of values, image and services (see crate::variables).
    let job = &complete_job(job, &RunnerFacts::of(runner)).map_err(|e| vec![e.to_string()])?;
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
    )
    .map_err(|e| vec![e.to_string()])?;
    let secrets = collect(job, &runner.keyhole, &service_account.name)?;
    let objects = build_job_objects(&PodRequest {
        job,
        runner,
        pod_name,
        service_account: service_account.name.clone(),
        secrets: &secrets,
        log_end_token: log_end_token(),
    })
    .map_err(|e| vec![e.0])?;
    Ok(Prepared {
        objects,
        service_account,
        secrets,
        timeout: job.timeout.unwrap_or(DEFAULT_JOB_TIMEOUT),
    })
}
