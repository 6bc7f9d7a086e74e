//! GitLab's job artifacts API as gitlab-runner's helper uses it: `POST jobs/:id/artifacts`
//! (multipart field `file`, streamed from disk) and `GET jobs/:id/artifacts` (streamed to
//! disk). The job token travels in the `JOB-TOKEN` header only, never in a URL or a line.

use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use secrecy::{ExposeSecret as _, SecretString};
use tokio::io::AsyncWriteExt as _;

/// Attempts for a request that failed on the way or with a 5xx (gitlab-runner retries its
/// helper's transfers too).
const ATTEMPTS: u32 = 3;
/// gitlab-runner's default response-header timeout for artifact transfers.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(600);

/// Why a transfer failed, as the trace's `ERROR:` line says it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// GitLab answered with a status that ends the transfer.
    #[error("{reason}  id={job_id} responseStatus={status}")]
    Refused {
        job_id: u64,
        status: StatusCode,
        reason: &'static str,
    },
    #[error("{0}")]
    Io(String),
}

/// A request once more, or not.
fn retryable(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// How gitlab-runner's helper names a refusal.
fn reason(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not found",
        StatusCode::PAYLOAD_TOO_LARGE => "too large archive",
        StatusCode::BAD_REQUEST => "bad request",
        s if s.is_server_error() => "service unavailable",
        _ => "failed",
    }
}

/// The client for one job's transfers.
#[derive(Debug)]
pub struct Api {
    http: reqwest::Client,
    base: String,
}

/// One upload.
#[derive(Debug)]
pub struct Upload<'a> {
    pub job_id: u64,
    pub token: &'a SecretString,
    pub file: &'a Path,
    pub filename: &'a str,
    pub artifact_type: &'a str,
    pub artifact_format: &'a str,
    pub expire_in: &'a str,
}

impl Api {
    pub fn new(gitlab_url: &str) -> Result<Self, ApiError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(RESPONSE_TIMEOUT)
            .build()
            .map_err(|e| ApiError::Io(format!("cannot make an HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: format!("{}/api/v4", gitlab_url.trim_end_matches('/')),
        })
    }

    /// Uploads `u.file`; returns GitLab's status line (`201 Created`).
    pub async fn upload(&self, u: &Upload<'_>) -> Result<StatusCode, ApiError> {
        let url = format!("{}/jobs/{}/artifacts", self.base, u.job_id);
        let mut query = vec![
            ("artifact_format", u.artifact_format),
            ("artifact_type", u.artifact_type),
        ];
        if !u.expire_in.is_empty() {
            query.push(("expire_in", u.expire_in));
        }
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
            }
            let file = tokio::fs::File::open(u.file)
                .await
                .map_err(|e| ApiError::Io(format!("cannot read the archive: {e}")))?;
            let len = file
                .metadata()
                .await
                .map_err(|e| ApiError::Io(format!("cannot read the archive: {e}")))?
                .len();
            let part = reqwest::multipart::Part::stream_with_length(file_body(file), len)
                .file_name(u.filename.to_owned())
                .mime_str("application/octet-stream")
                .map_err(|e| ApiError::Io(e.to_string()))?;
            let form = reqwest::multipart::Form::new().part("file", part);
            let sent = self
                .http
                .post(&url)
                .query(&query)
                .header("JOB-TOKEN", u.token.expose_secret())
                .multipart(form)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => return Ok(r.status()),
                Ok(r) if retryable(r.status()) => last = Some(refused(u.job_id, r.status())),
                Ok(r) => return Err(refused(u.job_id, r.status())),
                Err(e) => last = Some(ApiError::Io(describe(&e))),
            }
        }
        Err(last.unwrap_or_else(|| ApiError::Io("no attempt made".into())))
    }

    /// Downloads job `job_id`'s archive to `to`; returns its size.
    pub async fn download(
        &self,
        job_id: u64,
        token: &SecretString,
        to: &Path,
    ) -> Result<u64, ApiError> {
        let url = format!("{}/jobs/{job_id}/artifacts", self.base);
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
            }
            let sent = self
                .http
                .get(&url)
                .header("JOB-TOKEN", token.expose_secret())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => match save(r, to).await {
                    Ok(n) => return Ok(n),
                    Err(e) => last = Some(e),
                },
                Ok(r) if retryable(r.status()) => last = Some(refused(job_id, r.status())),
                Ok(r) => return Err(refused(job_id, r.status())),
                Err(e) => last = Some(ApiError::Io(describe(&e))),
            }
        }
        Err(last.unwrap_or_else(|| ApiError::Io("no attempt made".into())))
    }
}

fn refused(job_id: u64, status: StatusCode) -> ApiError {
    ApiError::Refused {
        job_id,
        status,
        reason: reason(status),
    }
}

/// A reqwest error without its URL (ours carry no secret, but the line stays short).
pub(super) fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut text = kind.to_owned();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// Chunks a file is sent in: reqwest's own file body reads a few KiB at a time, which costs
/// more CPU than the network does (P10 measured ~100 MiB/s on loopback).
const SEND_CHUNK: usize = 1 << 20;

/// A file as a request body, read in [`SEND_CHUNK`]s (one or two in flight: memory stays
/// bounded).
pub(super) fn file_body(file: tokio::fs::File) -> reqwest::Body {
    use tokio::io::AsyncReadExt as _;
    let chunks = futures::stream::try_unfold(file, |mut file| async move {
        let mut buf = vec![0u8; SEND_CHUNK];
        let mut filled = 0;
        // Fill the chunk (a read may return less), so chunks stay large.
        while filled < SEND_CHUNK {
            let n = file.read(&mut buf[filled..]).await?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok::<_, std::io::Error>(None);
        }
        buf.truncate(filled);
        Ok(Some((buf, file)))
    });
    reqwest::Body::wrap_stream(chunks)
}

/// Streams a response body to a file, chunk by chunk.
pub(super) async fn save(mut response: reqwest::Response, to: &Path) -> Result<u64, ApiError> {
    let io = |e: std::io::Error| ApiError::Io(format!("cannot write the download: {e}"));
    let mut file = tokio::fs::File::create(to).await.map_err(io)?;
    let mut total = 0u64;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ApiError::Io(describe(&e)))?
    {
        total += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.flush().await.map_err(io)?;
    Ok(total)
}
