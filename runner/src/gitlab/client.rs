//! The runner's side of GitLab's Runner API: verify the runner, long-poll for jobs, and open a
//! [`JobSession`] per job for state updates and the trace.
//!
//! Tokens are [`SecretString`]s, sent only in sensitive headers and request bodies; no error,
//! log line or `Debug` output contains one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Response, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::error::GitlabError;
use super::payload::{JobPayload, PayloadError, job_from_payload};
use super::protocol::{LAST_UPDATE_HEADER, RUNNER_TOKEN_HEADER};
use super::retry::{Backoff, RetryPolicy};
use super::session::JobSession;
use super::trace::TraceConfig;

/// Where GitLab is and how to talk to it.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// GitLab's root URL (`https://gitlab.example.com`), without `/api/v4` and without
    /// credentials.
    pub url: String,
    /// The runner authentication token (`glrt-...`).
    pub token: SecretString,
    /// PEM bundle trusted in addition to the system roots, for a GitLab with a private CA.
    pub ca_file: Option<PathBuf>,
    /// Timeout of one request (except the job long poll).
    pub request_timeout: Duration,
    /// Timeout of one `jobs/request`: GitLab Workhorse holds it up to 50 s by default, so
    /// this must be longer than Workhorse's `apiCiLongPollingDuration`.
    pub long_poll_timeout: Duration,
    /// Retries of transient failures for every call but the final update.
    pub retry: RetryPolicy,
    /// How long the final job update (success/failed) is retried before giving up. Generous
    /// on purpose: a lost final update leaves the job "running" in GitLab until its
    /// stuck-job timeout, which is what happens to gitlab-runner during GitLab restarts.
    pub final_update_deadline: Duration,
    pub trace: TraceConfig,
    /// The runner has a cache store: it tells GitLab it supports `cache` (and fallback keys).
    pub cache: bool,
}

impl ClientConfig {
    /// Defaults for everything but the URL and the token.
    pub fn new(url: impl Into<String>, token: SecretString) -> Self {
        Self {
            url: url.into(),
            token,
            ca_file: None,
            request_timeout: Duration::from_secs(30),
            long_poll_timeout: Duration::from_secs(70),
            retry: RetryPolicy::default(),
            final_update_deadline: Duration::from_secs(3600),
            trace: TraceConfig::default(),
            cache: false,
        }
    }
}

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
    pub(super) inner: Arc<ClientInner>,
}

#[derive(Debug)]
pub(super) struct ClientInner {
    pub(super) http: reqwest::Client,
    /// `<url>/api/v4/`
    pub(super) api: Url,
    pub(super) config: ClientConfig,
}

impl GitlabClient {
    /// Checks the configuration and builds the HTTP client; no request is made.
    pub fn new(config: ClientConfig) -> Result<Self, GitlabError> {
        let api = api_base(&config.url)?;
        if config.trace.max_patch == 0 || config.trace.buffer_limit == 0 {
            return Err(GitlabError::Config {
                what: "trace",
                reason: "max_patch and buffer_limit must be positive".into(),
            });
        }
        runner_token_header(&config.token)?;
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("keyhole-runner/", env!("CARGO_PKG_VERSION")))
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(15)))
            // Redirects would resend bodies that carry tokens to wherever GitLab points.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|e| GitlabError::Config {
                what: "ca_file",
                reason: format!("{} cannot be read: {e}", path.display()),
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| GitlabError::Config {
                    what: "ca_file",
                    reason: format!("{} is not a PEM certificate bundle: {e}", path.display()),
                })?;
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder.build().map_err(|e| GitlabError::Config {
            what: "HTTP client",
            reason: format!("cannot be set up: {e}"),
        })?;
        Ok(Self {
            inner: Arc::new(ClientInner { http, api, config }),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// `POST /api/v4/runners/verify`: is the runner token valid? A 403 is
    /// [`GitlabError::InvalidRunnerToken`].
    pub async fn verify(&self) -> Result<(), GitlabError> {
        const ACTION: &str = "verify the runner token";
        let body = json!({ "token": self.inner.config.token.expose_secret(), "info": info(self.inner.config.cache) });
        let response = self
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
        let mut body = json!({ "token": self.inner.config.token.expose_secret(), "info": info(self.inner.config.cache) });
        if let Some(lu) = last_update {
            body["last_update"] = Value::from(lu);
        }
        let timeout = self.inner.config.long_poll_timeout;
        let response = self
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
        JobSession::new(self.clone(), job_id, job_token)
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

    /// `<url>/api/v4/<path>`.
    pub(super) fn endpoint(&self, path: &str) -> Result<Url, GitlabError> {
        self.inner.api.join(path).map_err(|e| GitlabError::Config {
            what: "url",
            reason: format!("cannot be joined with {path}: {e}"),
        })
    }

    async fn post_runner(
        &self,
        path: &str,
        body: &Value,
        timeout: Option<Duration>,
        action: &str,
    ) -> Result<Response, GitlabError> {
        let mut request = self
            .inner
            .http
            .post(self.endpoint(path)?)
            .headers(runner_token_header(&self.inner.config.token)?)
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

    /// Runs `op` until it gives a non-transient result or the retry deadline passes.
    pub(super) async fn with_retries<T, F, Fut>(
        &self,
        action: &str,
        op: F,
    ) -> Result<T, GitlabError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, GitlabError>>,
    {
        let give_up = Instant::now() + self.inner.config.retry.deadline;
        retry_until(self.inner.config.retry, give_up, action, op).await
    }
}

/// Runs `op`, retrying transient errors with backoff until `give_up`; then the last error
/// is returned inside [`GitlabError::GaveUp`].
pub(super) async fn retry_until<T, F, Fut>(
    policy: RetryPolicy,
    give_up: Instant,
    action: &str,
    mut op: F,
) -> Result<T, GitlabError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, GitlabError>>,
{
    let started = Instant::now();
    let mut backoff = Backoff::new(policy);
    loop {
        match op().await {
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                if Instant::now() + delay > give_up {
                    return Err(GitlabError::GaveUp {
                        action: action.to_owned(),
                        after: started.elapsed(),
                        last: Box::new(e),
                    });
                }
                tracing::debug!(action, error = %e, ?delay, "transient GitLab error, retrying");
                tokio::time::sleep(delay).await;
            }
            other => return other,
        }
    }
}

/// Turns 5xx/429/408 into a transient error so that the retry loop sees it.
pub(super) fn transient_status_to_error(
    response: Response,
    action: &str,
) -> Result<Response, GitlabError> {
    let status = response.status().as_u16();
    if super::error::is_transient_status(status) {
        Err(GitlabError::status(action, status))
    } else {
        Ok(response)
    }
}

pub(super) fn header<'r>(response: &'r Response, name: &str) -> Option<&'r str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

/// A header map with one token header, marked sensitive so that no `Debug` shows it.
pub(super) fn token_header(
    name: &'static str,
    token: &SecretString,
    what: &'static str,
) -> Result<HeaderMap, GitlabError> {
    let mut value =
        HeaderValue::from_str(token.expose_secret()).map_err(|_| GitlabError::Config {
            what,
            reason: "contains characters that cannot be sent in an HTTP header".into(),
        })?;
    value.set_sensitive(true);
    let mut headers = HeaderMap::new();
    headers.insert(name, value);
    Ok(headers)
}

fn runner_token_header(token: &SecretString) -> Result<HeaderMap, GitlabError> {
    token_header(RUNNER_TOKEN_HEADER, token, "token")
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

/// Checks GitLab's root URL and returns `<url>/api/v4/`.
fn api_base(url: &str) -> Result<Url, GitlabError> {
    let bad = |reason: &str| GitlabError::Config {
        what: "url",
        reason: reason.to_owned(),
    };
    let mut base = Url::parse(url.trim())
        .map_err(|_| bad("is not a URL; expected e.g. https://gitlab.example.com"))?;
    if !matches!(base.scheme(), "http" | "https") {
        return Err(bad("must be an http:// or https:// URL"));
    }
    if !base.username().is_empty() || base.password().is_some() {
        // Also keeps tokens out of every error message that quotes the URL.
        return Err(bad(
            "must not contain credentials; put the runner token in `token`",
        ));
    }
    if base.query().is_some() || base.fragment().is_some() {
        return Err(bad("must not have a query or a fragment"));
    }
    let path = base.path().trim_end_matches('/').to_owned();
    let path = path.strip_suffix("/api/v4").unwrap_or(&path);
    base.set_path(&format!("{path}/api/v4/"));
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_base_accepts_roots_and_subpaths() {
        let ok = |u: &str| api_base(u).unwrap().to_string();
        assert_eq!(
            ok("https://gitlab.example.com"),
            "https://gitlab.example.com/api/v4/"
        );
        assert_eq!(
            ok("https://gitlab.example.com/"),
            "https://gitlab.example.com/api/v4/"
        );
        assert_eq!(
            ok("http://127.0.0.1:8080/gitlab"),
            "http://127.0.0.1:8080/gitlab/api/v4/"
        );
        assert_eq!(ok("https://h/api/v4/"), "https://h/api/v4/");
    }

    #[test]
    fn api_base_rejects_credentials_without_echoing_them() {
        let err = api_base("https://glrt-SECRET@gitlab.example.com").unwrap_err();
        assert!(!err.to_string().contains("glrt-SECRET"));
        assert!(api_base("ftp://gitlab.example.com").is_err());
        assert!(api_base("gitlab.example.com").is_err());
        assert!(api_base("https://h/?x=1").is_err());
    }

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
