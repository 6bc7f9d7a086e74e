//! Job payloads for the fake GitLab, made from the example payload (the realistic shape of a
//! `jobs/request` 201 body) with what a test cares about replaced.

use anyhow::Result;
use serde_json::{Value, json};

use super::Coordinator;

const TEMPLATE: &str =
    include_str!("../../../runner/src/gitlab/fixtures/job-response-example.json");

/// A queued job: what a test needs to follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnqueuedJob {
    pub id: u64,
    pub token: String,
}

/// Builds a payload; see [`Coordinator::job`].
#[derive(Debug)]
pub struct JobBuilder<'c> {
    coordinator: &'c Coordinator,
    name: String,
    stage: String,
    project_id: u64,
    project_path: String,
    sha: String,
    script: Vec<String>,
    after_script: Vec<String>,
    image: Option<Value>,
    variables: Vec<Value>,
    services: Vec<Value>,
    secrets: Option<Value>,
    credentials: Option<Value>,
    artifacts: Option<Value>,
    cache: Option<Value>,
    /// `(job id, job name)` of the jobs whose artifacts this one fetches.
    dependencies: Vec<(u64, String)>,
    timeout: u64,
}

impl<'c> JobBuilder<'c> {
    pub(super) fn new(coordinator: &'c Coordinator) -> Self {
        Self {
            coordinator,
            name: "test-job".into(),
            stage: "test".into(),
            project_id: 123,
            project_path: "acme/demo-app".into(),
            sha: "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c".into(),
            script: vec!["echo hello".into()],
            after_script: Vec::new(),
            image: None,
            variables: Vec::new(),
            services: Vec::new(),
            secrets: None,
            credentials: None,
            artifacts: None,
            cache: None,
            dependencies: Vec::new(),
            timeout: 3600,
        }
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// The project (`group/project`); its repository is `<url>/<path>.git`.
    pub fn project(mut self, id: u64, path: &str) -> Self {
        self.project_id = id;
        self.project_path = path.into();
        self
    }

    /// The commit to check out (e.g. from [`Coordinator::create_repo`]).
    pub fn sha(mut self, sha: &str) -> Self {
        self.sha = sha.into();
        self
    }

    pub fn script<S: Into<String>>(mut self, lines: impl IntoIterator<Item = S>) -> Self {
        self.script = lines.into_iter().map(Into::into).collect();
        self
    }

    pub fn after_script<S: Into<String>>(mut self, lines: impl IntoIterator<Item = S>) -> Self {
        self.after_script = lines.into_iter().map(Into::into).collect();
        self
    }

    pub fn image(mut self, image: &str) -> Self {
        self.image = Some(json!({ "name": image }));
        self
    }

    /// The `image` object as GitLab sends it (`name`, `entrypoint`, `pull_policy`, ...).
    pub fn image_spec(mut self, image: Value) -> Self {
        self.image = Some(image);
        self
    }

    /// A public variable (as from `variables:` in `.gitlab-ci.yml`).
    pub fn variable(self, key: &str, value: &str) -> Self {
        self.raw_variable(json!({
            "key": key, "value": value, "public": true, "file": false, "masked": false, "raw": false
        }))
    }

    /// A masked, non-public variable (a project CI/CD variable).
    pub fn secret_variable(self, key: &str, value: &str) -> Self {
        self.raw_variable(json!({
            "key": key, "value": value, "public": false, "file": false, "masked": true, "raw": false
        }))
    }

    /// A variable entry as GitLab sends it.
    pub fn raw_variable(mut self, variable: Value) -> Self {
        self.variables.push(variable);
        self
    }

    /// A `services:` entry as GitLab sends it.
    pub fn service(mut self, service: Value) -> Self {
        self.services.push(service);
        self
    }

    /// The `secrets` object (as in the Vault example payload).
    pub fn secrets(mut self, secrets: Value) -> Self {
        self.secrets = Some(secrets);
        self
    }

    /// The `credentials` array (registry logins GitLab hands the runner).
    pub fn credentials(mut self, credentials: Value) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// The `artifacts` array as GitLab sends it: objects with `name`, `untracked`, `paths`,
    /// `exclude`, `when`, `artifact_type`, `artifact_format`, `expire_in`.
    pub fn artifacts(mut self, artifacts: Value) -> Self {
        self.artifacts = Some(artifacts);
        self
    }

    /// The `cache` array as GitLab sends it: objects with `key`, `untracked`, `policy`,
    /// `paths`, `when`, `fallback_keys` (the cache itself lives in the runner's store).
    pub fn cache(mut self, cache: Value) -> Self {
        self.cache = Some(cache);
        self
    }

    /// A `dependencies[]` entry for job `job_id` (named `name`), as GitLab writes it when the
    /// payload is made: `{id, token, name, artifacts_file: {filename, size}}`, where `token`
    /// is this job's own token (the one the runner downloads with) and `artifacts_file` that
    /// of the archive the coordinator holds for `job_id` (left out when it has none, or it
    /// expired, as GitLab leaves it out).
    pub fn dependency(mut self, job_id: u64, name: &str) -> Self {
        self.dependencies.push((job_id, name.into()));
        self
    }

    pub fn timeout(mut self, seconds: u64) -> Self {
        self.timeout = seconds;
        self
    }

    /// The payload, with a fresh id and job token.
    pub fn payload(&self) -> Value {
        let id = self.coordinator.shared.update(|s| s.allocate_id());
        let token = format!("glcbt-test-{}", super::random_hex(24));
        let url = self.coordinator.url();
        let host = self.coordinator.addr().to_string();
        let mut p: Value = serde_json::from_str(TEMPLATE).unwrap_or_else(|_| json!({}));
        let project_name = self
            .project_path
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();

        p["id"] = id.into();
        p["token"] = token.clone().into();
        p["job_info"]["name"] = self.name.clone().into();
        p["job_info"]["stage"] = self.stage.clone().into();
        p["job_info"]["project_id"] = self.project_id.into();
        p["job_info"]["project_name"] = project_name.into();
        p["job_info"]["project_full_path"] = self.project_path.clone().into();
        p["git_info"] = json!({
            "repo_url": format!("http://gitlab-ci-token:{token}@{host}/{}.git", self.project_path),
            "repo_object_format": "sha1",
            "ref": "main",
            "sha": self.sha,
            "before_sha": "0000000000000000000000000000000000000000",
            "ref_type": "branch",
            "refspecs": ["+refs/heads/main:refs/remotes/origin/main"],
            "depth": 20,
            "protected": false,
        });
        p["runner_info"]["timeout"] = self.timeout.into();

        let public = |key: &str, value: String| json!({"key": key, "value": value, "public": true, "file": false, "masked": false, "raw": false});
        let mut variables = vec![
            public("CI_JOB_ID", id.to_string()),
            public("CI_JOB_NAME", self.name.clone()),
            public("CI_PROJECT_ID", self.project_id.to_string()),
            public("CI_PROJECT_PATH", self.project_path.clone()),
            public("CI_PROJECT_DIR", format!("/builds/{}", self.project_path)),
            public("CI_SERVER_URL", url),
            public("CI_COMMIT_SHA", self.sha.clone()),
            json!({"key": "CI_JOB_TOKEN", "value": token, "public": false, "file": false, "masked": true, "raw": false}),
        ];
        variables.extend(self.variables.iter().cloned());
        p["variables"] = variables.into();

        let mut steps = vec![json!({
            "name": "script", "script": self.script, "timeout": self.timeout,
            "when": "on_success", "allow_failure": false
        })];
        if !self.after_script.is_empty() {
            steps.push(json!({
                "name": "after_script", "script": self.after_script, "timeout": self.timeout,
                "when": "always", "allow_failure": true
            }));
        }
        p["steps"] = steps.into();
        p["image"] = self.image.clone().unwrap_or(Value::Null);
        p["services"] = self.services.clone().into();
        // Not modelled by the coordinator: nothing would serve them.
        for key in ["credentials", "hooks"] {
            p[key] = json!([]);
        }
        p["cache"] = self.cache.clone().unwrap_or_else(|| json!([]));
        p["artifacts"] = self.artifacts.clone().unwrap_or_else(|| json!([]));
        p["dependencies"] = self.dependencies_json(&token).into();
        if let Some(secrets) = &self.secrets {
            p["secrets"] = secrets.clone();
        }
        if let Some(credentials) = &self.credentials {
            p["credentials"] = credentials.clone();
        }
        p
    }

    fn dependencies_json(&self, token: &str) -> Vec<Value> {
        let state = self.coordinator.shared.lock();
        self.dependencies
            .iter()
            .map(|(id, name)| {
                let mut dependency = json!({ "id": id, "token": token, "name": name });
                let archive = state.jobs.get(id).and_then(|j| j.artifact("archive"));
                if let Some(archive) = archive {
                    dependency["artifacts_file"] =
                        json!({ "filename": archive.filename, "size": archive.size });
                }
                dependency
            })
            .collect()
    }

    /// Makes the payload and queues it.
    pub fn enqueue(self) -> Result<EnqueuedJob> {
        let payload = self.payload();
        self.coordinator.enqueue(payload)
    }
}
