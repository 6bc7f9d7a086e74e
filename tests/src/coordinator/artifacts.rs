//! Job artifacts of the fake GitLab: `POST /api/v4/jobs/:id/artifacts` (what gitlab-runner's
//! `artifacts-uploader` sends through Workhorse) and `GET /api/v4/jobs/:id/artifacts` (what
//! `artifacts-downloader` fetches for a dependency).
//!
//! Bodies go between the socket and a file in the coordinator's temporary artifact root in
//! chunks, never whole in memory: a test can push a 1 GiB archive through it.
//!
//! Status codes follow Rails' `lib/api/ci/runner.rb` and `Ci::JobArtifacts::CreateService`
//! (with Workhorse in front of them):
//!
//! - upload: 201; 403 unless the token is that of the job and the job is running (also
//!   for an unknown job: `authenticate_job!`); 400 for an `artifact_type`/`artifact_format`
//!   GitLab does not know, a body that is not multipart, no `file` part, or a second artifact
//!   of a type the job already has ("another artifact of the same type already exists";
//!   the same bytes again are accepted, as GitLab does when the SHA-256 matches); 413 when
//!   the file is larger than [`CoordinatorOptions::max_artifacts_size`].
//! - download: 200 with the archive; 401 without a job token or with one GitLab does not
//!   know; 403 for the token of a job that is no longer running, or an unknown job
//!   (`authenticate_job_via_dependent_job!`); 404 when the job has no archive, or it expired.
//!
//! [`CoordinatorOptions::max_artifacts_size`]: super::CoordinatorOptions::max_artifacts_size

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWriteExt, BufWriter};

use super::Shared;
use super::api::{Go, faults, finish, header as header_str};
use super::state::{Endpoint, StoredArtifact};

/// `Ci::JobArtifact.file_types` (the values Rails accepts for `artifact_type`).
const ARTIFACT_TYPES: &[&str] = &[
    "archive",
    "metadata",
    "trace",
    "junit",
    "sast",
    "dependency_scanning",
    "container_scanning",
    "dast",
    "codequality",
    "license_scanning",
    "performance",
    "metrics",
    "metrics_referee",
    "network_referee",
    "lsif",
    "dotenv",
    "cobertura",
    "terraform",
    "accessibility",
    "cluster_applications",
    "secret_detection",
    "requirements",
    "coverage_fuzzing",
    "browser_performance",
    "load_performance",
    "api_fuzzing",
    "cluster_image_scanning",
    "cyclonedx",
    "requirements_v2",
    "annotations",
    "repository_xray",
    "jacoco",
];

/// `Ci::JobArtifact.file_formats` (the values Rails accepts for `artifact_format`).
const ARTIFACT_FORMATS: &[&str] = &["raw", "zip", "gzip"];

/// Room for the multipart framing around the file (boundaries, part headers) when a
/// request's `Content-Length` is compared with the size limit before reading.
const MULTIPART_SLACK: u64 = 64 * 1024;

/// How long a refused upload's remaining body is still read and thrown away, so the client,
/// still sending, gets to read the answer instead of a reset connection (nginx's lingering
/// close does the same in front of GitLab).
const LINGER: Duration = Duration::from_secs(30);

/// A JSON error body as Rails renders it.
fn error(code: u16, key: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(json!({ key: message }))).into_response()
}

fn forbidden() -> Response {
    error(403, "message", "403 Forbidden")
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct UploadQuery {
    artifact_format: Option<String>,
    artifact_type: Option<String>,
    expire_in: Option<String>,
    /// Rails also takes the job token as a parameter; gitlab-runner sends `JOB-TOKEN`.
    token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct DownloadQuery {
    token: Option<String>,
    // `direct_download` is taken and ignored (serde skips it): this GitLab has no object
    // storage to redirect to, so it always answers with the bytes.
}

/// The job token: `JOB-TOKEN` header, else the `token` parameter.
fn job_token(headers: &HeaderMap, param: Option<String>) -> Option<String> {
    header_str(headers, "JOB-TOKEN")
        .map(str::to_owned)
        .or(param)
        .filter(|t| !t.is_empty())
}

/// Whether `token` is job `id`'s and the job may still upload (running or canceling).
fn may_upload(shared: &Shared, id: u64, token: Option<&str>) -> bool {
    let state = shared.lock();
    state
        .jobs
        .get(&id)
        .is_some_and(|j| j.is_active() && !j.forbidden && Some(j.token.as_str()) == token)
}

/// Removes a file when dropped unless kept: a refused, failed or abandoned upload (the client
/// went away and the handler was dropped) leaves nothing behind.
struct PartFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What was received of the `file` part.
struct Received {
    file: PartFile,
    filename: String,
    size: u64,
    sha256: String,
}

enum Refused {
    TooLarge,
    Response(Response),
}

/// Streams the part to a new file under `dir`, hashing as it goes.
async fn receive(
    field: &mut axum::extract::multipart::Field<'_>,
    dir: &FsPath,
    job_id: u64,
    max: u64,
) -> Result<Received, Refused> {
    let filename = field.file_name().unwrap_or_default().to_owned();
    let path = dir.join(format!("job-{job_id}-{}", super::random_hex(16)));
    let part = PartFile {
        path: path.clone(),
        keep: false,
    };
    let io_error = |e: std::io::Error| {
        Refused::Response(error(
            500,
            "message",
            &format!("storing {}: {e}", path.display()),
        ))
    };
    let file = tokio::fs::File::create_new(&path).await.map_err(io_error)?;
    let mut out = BufWriter::with_capacity(1024 * 1024, file);
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    loop {
        let chunk = match field.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => {
                return Err(Refused::Response(error(
                    e.status().as_u16(),
                    "error",
                    &e.body_text(),
                )));
            }
        };
        size += chunk.len() as u64;
        if size > max {
            return Err(Refused::TooLarge);
        }
        hasher.update(&chunk);
        out.write_all(&chunk).await.map_err(io_error)?;
    }
    out.flush().await.map_err(io_error)?;
    drop(out);
    Ok(Received {
        file: part,
        filename,
        size,
        sha256: hex(&hasher.finalize()),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads and discards what is left of the request (for at most [`LINGER`]), then drops it.
fn linger(mut multipart: Multipart) {
    tokio::spawn(async move {
        let drain = async {
            while let Ok(Some(mut field)) = multipart.next_field().await {
                while let Ok(Some(_)) = field.chunk().await {}
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    });
}

fn too_large() -> Response {
    // The message of `Ci::JobArtifacts::CreateService` for a file over the limit.
    error(413, "message", "file size has reached maximum size limit")
}

/// `POST /api/v4/jobs/:id/artifacts`.
pub(crate) async fn upload(
    AxState(shared): AxState<Arc<Shared>>,
    Path(id): Path<u64>,
    request: Request,
) -> Response {
    let replace = match faults(&shared, Endpoint::UploadArtifacts).await {
        Go::Answer(r) => return r,
        Go::On(r) => r,
    };
    let response = store_upload(&shared, id, request).await;
    finish(response, replace)
}

async fn store_upload(shared: &Arc<Shared>, id: u64, request: Request) -> Response {
    let query = Query::<UploadQuery>::try_from_uri(request.uri())
        .map(|Query(q)| q)
        .unwrap_or_default();
    let token = job_token(request.headers(), query.token.clone());

    // Workhorse asks Rails (`artifacts/authorize`) before it reads the body.
    if !may_upload(shared, id, token.as_deref()) {
        return forbidden();
    }
    let artifact_type = query
        .artifact_type
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "archive".into());
    let artifact_format = query
        .artifact_format
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| "zip".into());
    if !ARTIFACT_TYPES.contains(&artifact_type.as_str()) {
        return error(400, "error", "artifact_type does not have a valid value");
    }
    if !ARTIFACT_FORMATS.contains(&artifact_format.as_str()) {
        return error(400, "error", "artifact_format does not have a valid value");
    }
    let max = shared.max_artifacts_size;
    let declared = header_str(request.headers(), "Content-Length").and_then(|v| v.parse().ok());
    let early_too_large =
        declared.is_some_and(|len: u64| len > max.saturating_add(MULTIPART_SLACK));

    let mut multipart = match Multipart::from_request(request, &()).await {
        Ok(m) => m,
        Err(rejection) => return rejection.into_response(),
    };
    if early_too_large {
        linger(multipart);
        return too_large();
    }

    let dir = shared.artifacts_root.path();
    let mut received = None;
    loop {
        let mut field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return error(e.status().as_u16(), "error", &e.body_text()),
        };
        // Workhorse takes the first `file` part with a file name; other fields (the
        // runner sends none) are read past.
        if received.is_some() || field.name() != Some("file") || field.file_name().is_none() {
            continue;
        }
        match receive(&mut field, dir, id, max).await {
            Ok(r) => received = Some(r),
            Err(Refused::TooLarge) => {
                drop(field);
                linger(multipart);
                return too_large();
            }
            Err(Refused::Response(r)) => return r,
        }
    }
    let Some(mut received) = received else {
        return error(400, "error", "file is missing");
    };

    // Rails checks the job again once Workhorse has the file.
    if !may_upload(shared, id, token.as_deref()) {
        return forbidden();
    }
    shared.update(|s| {
        let Some(job) = s.jobs.get_mut(&id) else {
            return forbidden();
        };
        if let Some(existing) = job.artifact(&artifact_type) {
            // A retry after a lost answer sends the same bytes: GitLab accepts it.
            if existing.sha256 == received.sha256 {
                return created(id);
            }
            return error(
                400,
                "message",
                "another artifact of the same type already exists",
            );
        }
        received.file.keep = true;
        job.artifacts.push(StoredArtifact {
            job_id: id,
            artifact_type,
            artifact_format,
            filename: received.filename.clone(),
            expire_in: query.expire_in.filter(|e| !e.is_empty()),
            size: received.size,
            sha256: received.sha256.clone(),
            path: received.file.path.clone(),
            expired: false,
        });
        created(id)
    })
}

/// 201. Rails answers a body the runner does not read; the job's id will do.
fn created(id: u64) -> Response {
    (StatusCode::CREATED, axum::Json(json!({ "id": id }))).into_response()
}

/// `GET /api/v4/jobs/:id/artifacts`.
pub(crate) async fn download(
    AxState(shared): AxState<Arc<Shared>>,
    Path(id): Path<u64>,
    Query(query): Query<DownloadQuery>,
    headers: HeaderMap,
) -> Response {
    let replace = match faults(&shared, Endpoint::DownloadArtifacts).await {
        Go::Answer(r) => return r,
        Go::On(r) => r,
    };
    let response = serve_download(&shared, id, job_token(&headers, query.token)).await;
    finish(response, replace)
}

async fn serve_download(shared: &Shared, id: u64, token: Option<String>) -> Response {
    let archive = {
        let state = shared.lock();
        // GitLab hands a dependent job its own token for this call: any running job's token
        // is accepted (GitLab then checks that job's access to the project).
        let Some(consumer) = token
            .as_deref()
            .and_then(|t| state.jobs.values().find(|j| j.token == t))
        else {
            return error(401, "message", "401 Unauthorized");
        };
        if !consumer.is_active() || consumer.forbidden {
            return forbidden();
        }
        let Some(job) = state.jobs.get(&id).filter(|j| !j.forbidden) else {
            return forbidden();
        };
        match job.artifact("archive") {
            Some(a) => a.clone(),
            None => return error(404, "message", "404 Not Found"),
        }
    };
    let file = match tokio::fs::File::open(&archive.path).await {
        Ok(f) => f,
        Err(e) => {
            return error(
                500,
                "message",
                &format!("opening {}: {e}", archive.path.display()),
            );
        }
    };
    let content_type = match archive.artifact_format.as_str() {
        "zip" => "application/zip",
        "gzip" => "application/gzip",
        _ => "application/octet-stream",
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(archive.size));
    if let Ok(v) = HeaderValue::from_str(&content_disposition(&archive.filename)) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        file,
        256 * 1024,
    ));
    (StatusCode::OK, headers, body).into_response()
}

/// `attachment; filename="<ascii>"; filename*=UTF-8''<percent-encoded>` (RFC 6266), as
/// Rails' `send_file` writes it.
fn content_disposition(filename: &str) -> String {
    let ascii: String = filename
        .chars()
        .map(|c| {
            if (c.is_ascii_graphic() && c != '"' && c != '\\') || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = filename
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::content_disposition;

    #[test]
    fn content_disposition_quotes_and_encodes() {
        assert_eq!(
            content_disposition("artifacts.zip"),
            "attachment; filename=\"artifacts.zip\"; filename*=UTF-8''artifacts.zip"
        );
        assert_eq!(
            content_disposition("a \"b\"ü.zip"),
            "attachment; filename=\"a _b__.zip\"; filename*=UTF-8''a%20%22b%22%C3%BC.zip"
        );
    }
}
