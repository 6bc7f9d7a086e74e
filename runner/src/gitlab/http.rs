//! The HTTP side of the Runner API, shared by the client and every job session: where GitLab
//! is ([`ClientConfig`]), the one connection pool, the token headers and the retry loop.
//! A leaf: it knows requests and transient failures, not jobs or traces.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Response, Url};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use super::error::{GitlabError, is_transient_status};
use super::protocol::RUNNER_TOKEN_HEADER;
use super::retry::{Backoff, RetryPolicy};
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

/// The connection pool and where requests go; one per [`super::GitlabClient`], shared with
/// its job sessions.
#[derive(Debug)]
pub(super) struct Http {
    pub(super) client: reqwest::Client,
    /// `<url>/api/v4/`
    api: Url,
    pub(super) config: ClientConfig,
}

impl Http {
    /// Checks the configuration and builds the HTTP client; no request is made.
    pub(super) fn new(config: ClientConfig) -> Result<Self, GitlabError> {
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
            client: http,
            api,
            config,
        })
    }

    pub(super) fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// `<url>/api/v4/<path>`.
    pub(super) fn endpoint(&self, path: &str) -> Result<Url, GitlabError> {
        self.api.join(path).map_err(|e| GitlabError::Config {
            what: "url",
            reason: format!("cannot be joined with {path}: {e}"),
        })
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
        let give_up = Instant::now() + self.config.retry.deadline;
        retry_until(self.config.retry, give_up, action, op).await
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
    if is_transient_status(status) {
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

pub(super) fn runner_token_header(token: &SecretString) -> Result<HeaderMap, GitlabError> {
    token_header(RUNNER_TOKEN_HEADER, token, "token")
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
}
