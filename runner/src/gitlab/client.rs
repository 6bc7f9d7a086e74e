//! The runner's side of GitLab's Runner API: verify the runner, long-poll for jobs, and open a
//! [`JobSession`] per job for state updates and the trace.
//!
//! Tokens are [`SecretString`]s, sent only in sensitive headers and request bodies; no error,
//! log line or `Debug` output contains one.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::error::{GitlabError, PayloadError};
use super::http::{ClientConfig, Http, header, runner_token_header, transient_status_to_error};
use super::payload::{JobPayload, job_from_payload};
use super::protocol::LAST_UPDATE_HEADER;
use super::session::JobSession;

/// Features this runner tells GitLab it supports in `info.features`. Only what Keyhole really
/// does: GitLab changes what it sends (and how it cancels) according to this list.
const FEATURES: &[&str] = &[
    "variables",
    "artifacts",
    "artifacts_exclude",
    "upload_multiple_artifacts",
    "image",
    "services",
    "service_variables",
    "service_multiple_aliases",
    "refspecs",
    "masking",
    "raw_variables",
    "vault_secrets",
    "return_exit_code",
    "cancelable",
    "cancel_gracefully",
    "two_phase_job_commit",
    "trace_checksum",
    "trace_size",
];

/// The result of one `jobs/request`.
#[derive(Debug)]
pub enum JobRequest {
    /// GitLab assigned a job (201). Confirm it at once with [`JobSession::keep_alive`].
    Job(Box<JobPayload>),
    /// No job this time (204). Pass `last_update` to the next request.
    NoJob { last_update: Option<String> },
    /// GitLab assigned a job whose payload this runner cannot read. The job is ours now:
    /// report `error` in its trace and fail it, or it stays pending/running in GitLab.
    Unreadable {
        job_id: u64,
        token: SecretString,
        error: PayloadError,
    },
}

/// A Runner API client. Cheap to clone; clones share one connection pool.
#[derive(Debug, Clone)]
pub struct GitlabClient {
    http: Arc<Http>,
}

impl GitlabClient {
    /// Checks the configuration and builds the HTTP client; no request is made.
    pub fn new(config: ClientConfig) -> Result<Self, GitlabError> {
        Ok(Self {
            http: Arc::new(Http::new(config)?),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.http.config
    }

    /// `POST /api/v4/runners/verify`: is the runner token valid? A 403 is
    /// [`GitlabError::InvalidRunnerToken`].
    pub async fn verify(&self) -> Result<(), GitlabError> {
        const ACTION: &str = "verify the runner token";
        let body = json!({ "token": self.http.config.token.expose_secret(), "info": info(self.http.config.cache) });
        let response = self
            .http
            .with_retries(ACTION, || {
                self.post_runner("runners/verify", &body, None, ACTION)
            })
            .await?;
        match response.status() {
            s if s.is_success() => Ok(()),
            StatusCode::FORBIDDEN => Err(GitlabError::InvalidRunnerToken {
                action: ACTION.into(),
            }),
            StatusCode::UNPROCESSABLE_ENTITY => Err(GitlabError::Status {
                action: ACTION.into(),
                status: 422,
                hint: "; GitLab says the runner is orphaned (its project or group is gone): \
                       register it again",
            }),
            s => Err(GitlabError::status(ACTION, s.as_u16())),
        }
    }

    /// `POST /api/v4/jobs/request`, a long poll: GitLab holds the request until a job is
    /// there or its poll time is over. `last_update` is the `X-GitLab-Last-Update` of the
    /// previous 204, so GitLab answers at once when its queue changed meanwhile.
    pub async fn request_job(&self, last_update: Option<&str>) -> Result<JobRequest, GitlabError> {
        const ACTION: &str = "request a job";
        let mut body = json!({ "token": self.http.config.token.expose_secret(), "info": info(self.http.config.cache) });
        if let Some(lu) = last_update {
            body["last_update"] = Value::from(lu);
        }
        let timeout = self.http.config.long_poll_timeout;
        let response = self
            .http
            .with_retries(ACTION, || {
                self.post_runner("jobs/request", &body, Some(timeout), ACTION)
            })
            .await?;
        match response.status() {
            StatusCode::CREATED => {
                let bytes = response
                    .bytes()
                    .await
                    .map_err(|e| GitlabError::transport(ACTION, &e))?;
                Ok(read_job(&bytes)?)
            }
            StatusCode::NO_CONTENT => Ok(JobRequest::NoJob {
                last_update: header(&response, LAST_UPDATE_HEADER).map(str::to_owned),
            }),
            StatusCode::FORBIDDEN => Err(GitlabError::InvalidRunnerToken {
                action: ACTION.into(),
            }),
            s => Err(GitlabError::status(ACTION, s.as_u16())),
        }
    }

    /// The session of one job: state updates and trace, authenticated by its job token.
    /// Starts nothing and sends nothing until used.
    pub fn job_session(&self, job_id: u64, job_token: SecretString) -> JobSession {
        JobSession::new(self.http.clone(), job_id, job_token)
    }

    /// The session of a job GitLab sent, with the failure reasons that GitLab accepts.
    /// `None` if the job has no token (a local job, not from GitLab).
    pub fn session_for(&self, payload: &JobPayload) -> Option<JobSession> {
        let token = payload.job.token.clone()?;
        Some(
            self.job_session(payload.job.id, token)
                .with_failure_reasons(payload.features.failure_reasons.clone()),
        )
    }

    async fn post_runner(
        &self,
        path: &str,
        body: &Value,
        timeout: Option<Duration>,
        action: &str,
    ) -> Result<Response, GitlabError> {
        let mut request = self
            .http
            .client
            .post(self.http.endpoint(path)?)
            .headers(runner_token_header(&self.http.config.token)?)
            .json(body);
        if let Some(t) = timeout {
            request = request.timeout(t);
        }
        let response = request
            .send()
            .await
            .map_err(|e| GitlabError::transport(action, &e))?;
        transient_status_to_error(response, action)
    }
}

/// Features of a runner with a cache store on top of [`FEATURES`].
const CACHE_FEATURES: &[&str] = &["cache", "fallback_cache_keys"];

/// `info` of runner requests: who we are and what we support.
fn info(cache: bool) -> Value {
    let cache_features = if cache { CACHE_FEATURES } else { &[] };
    let features: serde_json::Map<String, Value> = FEATURES
        .iter()
        .chain(cache_features)
        .map(|f| ((*f).to_owned(), Value::Bool(true)))
        .collect();
    json!({
        "name": "keyhole-runner",
        "version": env!("CARGO_PKG_VERSION"),
        "revision": env!("KEYHOLE_COMMIT"),
        "executor": "kubernetes",
        "platform": std::env::consts::OS,
        "architecture": std::env::consts::ARCH,
        "features": features,
    })
}

/// A 201 body: the job, or (when unreadable but its id and token are there) what is needed
/// to fail it.
fn read_job(bytes: &[u8]) -> Result<JobRequest, GitlabError> {
    match job_from_payload(bytes) {
        Ok(payload) => Ok(JobRequest::Job(Box::new(payload))),
        Err(error) => {
            let ids = serde_json::from_slice::<Value>(bytes).ok().and_then(|v| {
                Some((
                    v.get("id")?.as_u64()?,
                    v.get("token")?
                        .as_str()
                        .filter(|t| !t.is_empty())?
                        .to_owned(),
                ))
            });
            match ids {
                Some((job_id, token)) => Ok(JobRequest::Unreadable {
                    job_id,
                    token: SecretString::from(token),
                    error,
                }),
                None => Err(GitlabError::Payload(error)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_advertises_kubernetes_and_features() {
        let i = info(false);
        assert_eq!(i["executor"], "kubernetes");
        assert_eq!(i["name"], "keyhole-runner");
        assert_eq!(i["features"]["two_phase_job_commit"], true);
        assert_eq!(i["features"].as_object().unwrap().len(), FEATURES.len());
        assert!(
            i["features"].get("cache").is_none(),
            "no cache store, no cache"
        );
        let i = info(true);
        assert_eq!(i["features"]["cache"], true);
        assert_eq!(i["features"]["fallback_cache_keys"], true);
    }

    #[test]
    fn unreadable_jobs_keep_id_and_token() {
        let body = br#"{"id": 7, "token": "glcbt-x", "job_info": 3}"#;
        match read_job(body).unwrap() {
            JobRequest::Unreadable {
                job_id,
                token,
                error,
            } => {
                assert_eq!(job_id, 7);
                assert_eq!(token.expose_secret(), "glcbt-x");
                assert!(matches!(error, PayloadError::WrongType { .. }));
            }
            other => panic!("expected Unreadable, got {other:?}"),
        }
        assert!(matches!(read_job(b"{}"), Err(GitlabError::Payload(_))));
    }

    #[test]
    fn config_errors_are_clear() {
        let cfg = ClientConfig::new("https://glrt-x:y@h", SecretString::from("glrt-x"));
        assert!(matches!(
            GitlabClient::new(cfg),
            Err(GitlabError::Config { what: "url", .. })
        ));
        let mut cfg = ClientConfig::new("https://h", SecretString::from("glrt-x"));
        cfg.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(matches!(
            GitlabClient::new(cfg),
            Err(GitlabError::Config {
                what: "ca_file",
                ..
            })
        ));
        let cfg = ClientConfig::new("https://h", SecretString::from("bad\ntoken"));
        let err = GitlabClient::new(cfg).unwrap_err();
        assert!(!err.to_string().contains("bad\ntoken"));
    }
}
