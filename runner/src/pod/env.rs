//! The job's variables split by where they may go: public ones into the pod spec (the build
//! container's env), everything that may be secret into the per-job Secret, which only the
//! broker reads.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use keyhole_broker::contract;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::build::PodError;
use crate::config::RunnerConfig;
use crate::job::Job;

/// The job's variables, split.
pub(super) struct JobEnv {
    /// `$CI_PROJECT_DIR`: where the repository is checked out and the script starts.
    pub project_dir: String,
    /// Public variables and the runner's `environment`: the build and service containers' env.
    pub public: BTreeMap<String, String>,
    /// The per-job Secret's data: `var.NAME` and `file.NAME` for the broker, the job token,
    /// the log-end token.
    pub secret_data: BTreeMap<String, ByteString>,
}

/// Splits the job's variables. Masked, file and non-public variables never reach the pod spec;
/// a later variable of the same name wins, as in GitLab.
pub(super) fn split_variables(
    job: &Job,
    runner: &RunnerConfig,
    log_end_token: &SecretString,
) -> Result<JobEnv, PodError> {
    let project_dir = project_dir(job, runner);
    let mut public: BTreeMap<String, String> = BTreeMap::new();
    let mut secret_data: BTreeMap<String, ByteString> = BTreeMap::new();
    for entry in &runner.environment {
        if let Some((key, value)) = entry.split_once('=') {
            public.insert(key.into(), value.into());
        }
    }
    for v in &job.variables {
        if v.key
            .starts_with(keyhole_broker::reference::KEYHOLE_VARIABLE_PREFIX)
        {
            continue; // references: the broker resolves them; the value is a location.
        }
        if v.public && !v.file && !v.masked {
            public.insert(v.key.clone(), v.value.expose_secret().to_string());
        } else {
            public.remove(&v.key);
            let prefix = if v.file { "file." } else { "var." };
            secret_data.insert(
                format!("{prefix}{}", v.key),
                ByteString(v.value.expose_secret().as_bytes().to_vec()),
            );
        }
    }
    if let Some(token) = &job.token {
        secret_data.insert(
            "var.CI_JOB_TOKEN".into(),
            ByteString(token.expose_secret().as_bytes().to_vec()),
        );
    }
    secret_data.insert(
        contract::INPUT_LOG_END_KEY.into(),
        ByteString(log_end_token.expose_secret().as_bytes().to_vec()),
    );
    public.insert("CI_PROJECT_DIR".into(), project_dir.clone());
    public.insert("CI_BUILDS_DIR".into(), runner.builds_dir.clone());
    check_secret_names(&secret_data)?;
    Ok(JobEnv {
        project_dir,
        public,
        secret_data,
    })
}

/// `CI_PROJECT_DIR` as GitLab sent it, else `<builds_dir>/<project path>`.
fn project_dir(job: &Job, runner: &RunnerConfig) -> String {
    if let Some(dir) = job.public_variable("CI_PROJECT_DIR") {
        return dir.to_string();
    }
    // GitLab always sends CI_PROJECT_DIR; without a project path, the id still gives the
    // job a directory of its own.
    let project = match &job.project.path {
        Some(path) => path.clone(),
        None => format!("project-{}", job.project.id),
    };
    format!("{}/{project}", runner.builds_dir.trim_end_matches('/'))
}

/// The broker writes each Secret entry to a file and an env line named after it: only names a
/// shell and a file system take as they are.
fn check_secret_names(secret_data: &BTreeMap<String, ByteString>) -> Result<(), PodError> {
    for key in secret_data.keys() {
        let name = key.split_once('.').map_or(key.as_str(), |(_, n)| n);
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(PodError(format!(
                "variable {name:?} cannot be delivered: a masked or file variable's name may use only letters, digits, '_', '.' and '-'"
            )));
        }
    }
    Ok(())
}

/// A container's `env` list.
pub(super) fn env_list(vars: &BTreeMap<String, String>) -> Value {
    Value::Array(
        vars.iter()
            .map(|(k, v)| json!({"name": k, "value": v}))
            .collect(),
    )
}
