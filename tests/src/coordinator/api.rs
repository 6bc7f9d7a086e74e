//! The Runner API handlers of the fake GitLab.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post, put};
use serde_json::{Value, json};

use super::Shared;
use super::state::{Endpoint, Fault, FinalState, FinalStatus, JobRecord, JobStatus, StateUpdate};
use super::{artifacts, git};

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/v4/runners/verify", post(verify))
        .route("/api/v4/jobs/request", post(request_job))
        .route("/api/v4/jobs/{id}", put(update_job))
        .route("/api/v4/jobs/{id}/trace", patch(append_trace))
        // Artifacts are streamed to disk and held to `max_artifacts_size` by the handler.
        .route(
            "/api/v4/jobs/{id}/artifacts",
            post(artifacts::upload)
                .layer(DefaultBodyLimit::disable())
                .get(artifacts::download),
        )
        .fallback(git::serve)
        // Trace chunks are up to 1 MiB; git packs can be larger.
        .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
        .with_state(shared)
}

type Shr = AxState<Arc<Shared>>;

/// What to do with a request after fault injection.
pub(crate) enum Go {
    /// Process it; then answer this status instead of the real answer, if set.
    On(Option<u16>),
    /// Answer this at once.
    Answer(Response),
}

pub(crate) async fn faults(shared: &Shared, endpoint: Endpoint) -> Go {
    match shared.update(|s| s.take_fault(endpoint)) {
        None => Go::On(None),
        Some(Fault::Status(code)) => Go::Answer(status(code)),
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            Go::On(None)
        }
        Some(Fault::AcceptThenStatus(code)) => Go::On(Some(code)),
    }
}

pub(crate) fn status(code: u16) -> Response {
    StatusCode::from_u16(code)
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        .into_response()
}

pub(crate) fn finish(response: Response, replace: Option<u16>) -> Response {
    match replace {
        Some(code) => status(code),
        None => response,
    }
}

fn json_body(body: &Bytes) -> Option<Value> {
    serde_json::from_slice(body).ok()
}

pub(crate) fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The runner token of a runner request: body `token`, and the `RUNNER-TOKEN` header must
/// agree when sent.
fn runner_token_ok(shared: &Shared, headers: &HeaderMap, body: &Value) -> bool {
    let body_ok = body["token"].as_str() == Some(shared.runner_token.as_str());
    let header_ok = header(headers, "RUNNER-TOKEN").is_none_or(|t| t == shared.runner_token);
    body_ok && header_ok
}

async fn verify(AxState(shared): Shr, headers: HeaderMap, body: Bytes) -> Response {
    let replace = match faults(&shared, Endpoint::Verify).await {
        Go::Answer(r) => return r,
        Go::On(r) => r,
    };
    let Some(body) = json_body(&body) else {
        return status(400);
    };
    let response = if runner_token_ok(&shared, &headers, &body) {
        (
            StatusCode::OK,
            axum::Json(json!({"id": 1, "token": shared.runner_token, "token_expires_at": null})),
        )
            .into_response()
    } else {
        status(403)
    };
    finish(response, replace)
}

/// Counts a held long poll while it lives (also when the client goes away).
struct Poller<'a>(&'a Shared);

impl<'a> Poller<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.update(|s| s.waiting_pollers += 1);
        Self(shared)
    }
}

impl Drop for Poller<'_> {
    fn drop(&mut self) {
        self.0.update(|s| s.waiting_pollers -= 1);
    }
}

async fn request_job(AxState(shared): Shr, headers: HeaderMap, body: Bytes) -> Response {
    let replace = match faults(&shared, Endpoint::RequestJob).await {
        Go::Answer(r) => return r,
        Go::On(r) => r,
    };
    let Some(body) = json_body(&body) else {
        return status(400);
    };
    if !runner_token_ok(&shared, &headers, &body) {
        return finish(status(403), replace);
    }
    shared.update(|s| {
        s.requests.push(super::JobRequestRecord {
            last_update: body["last_update"].as_str().map(str::to_owned),
            info: body["info"].clone(),
        })
    });

    let deadline = tokio::time::Instant::now() + shared.long_poll;
    let mut poller = None;
    loop {
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        // Looking must not notify (our own `changed` would fire): only a handed-out job does.
        let popped = shared.lock().pop_job();
        if let Some(payload) = popped {
            shared.changed.notify_waiters();
            let response = (StatusCode::CREATED, axum::Json(payload)).into_response();
            return finish(response, replace);
        }
        if poller.is_none() {
            poller = Some(Poller::new(&shared));
            // Registering the poller changed the state (and notified): look again.
            continue;
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            break;
        }
    }
    drop(poller);
    let version = shared.lock().queue_version;
    let mut headers = HeaderMap::new();
    headers.insert(
        "X-GitLab-Last-Update",
        HeaderValue::from_str(&format!("queue-{version}")).unwrap_or(HeaderValue::from_static("0")),
    );
    finish((StatusCode::NO_CONTENT, headers).into_response(), replace)
}

/// `Job-Status` and `X-GitLab-Trace-Update-Interval`.
fn job_headers(shared: &Shared, job: &JobRecord) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Job-Status", HeaderValue::from_static(job.job_status()));
    if let Some(secs) = shared.trace_update_interval {
        headers.insert("X-GitLab-Trace-Update-Interval", HeaderValue::from(secs));
    }
    headers
}

async fn update_job(
    AxState(shared): Shr,
    Path(id): Path<u64>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let replace = match faults(&shared, Endpoint::UpdateJob).await {
        Go::Answer(r) => return r,
        Go::On(r) => r,
    };
    let Some(body) = json_body(&body) else {
        return status(400);
    };
    let response = shared.update(|s| {
        let Some(job) = s.jobs.get_mut(&id) else {
            return status(404);
        };
        let token_ok = body["token"].as_str() == Some(job.token.as_str())
            && header(&headers, "JOB-TOKEN").is_none_or(|t| t == job.token);
        if !token_ok || job.forbidden {
            return status(403);
        }
        let update = StateUpdate {
            state: body["state"].as_str().unwrap_or_default().to_owned(),
            failure_reason: body["failure_reason"].as_str().map(str::to_owned),
            exit_code: body["exit_code"].as_i64(),
        };
        let final_status = match update.state.as_str() {
            "running" | "pending" => None,
            "success" => Some(FinalStatus::Success),
            "failed" => Some(FinalStatus::Failed),
            _ => return status(400),
        };
        match (final_status, job.status) {
            // Keep-alive of a running job.
            (None, JobStatus::Running | JobStatus::Canceling) => {}
            (None, _) => return status(403),
            (Some(fin), JobStatus::Running | JobStatus::Canceling) => {
                let fin = if job.status == JobStatus::Canceling {
                    FinalStatus::Canceled
                } else {
                    fin
                };
                job.status = JobStatus::Done;
                job.final_state = Some(FinalState {
                    status: fin,
                    failure_reason: update.failure_reason.clone(),
                    exit_code: update.exit_code,
                    trace_len: job.trace.len(),
                    output_checksum: body["output"]["checksum"].as_str().map(str::to_owned),
                    output_bytesize: body["output"]["bytesize"].as_u64(),
                });
            }
            // A repeated final update (its answer was lost): the same answer again.
            (Some(fin), JobStatus::Done) => {
                let same = job
                    .final_state
                    .as_ref()
                    .is_some_and(|f| f.status == fin || f.status == FinalStatus::Canceled);
                if !same {
                    return status(403);
                }
            }
            (Some(_), JobStatus::Pending) => return status(403),
        }
        job.updates.push(update);
        (StatusCode::OK, job_headers(&shared, job)).into_response()
    });
    finish(response, replace)
}

/// `start-end` (inclusive end) of a trace PATCH.
fn parse_range(value: &str) -> Option<(u64, u64)> {
    let (start, end) = value.split_once('-')?;
    Some((start.trim().parse().ok()?, end.trim().parse().ok()?))
}

async fn append_trace(
    AxState(shared): Shr,
    Path(id): Path<u64>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let replace = match faults(&shared, Endpoint::AppendTrace).await {
        Go::Answer(r) => return r,
        Go::On(r) => r,
    };
    let response = shared.update(|s| {
        let Some(job) = s.jobs.get_mut(&id) else {
            return status(404);
        };
        if header(&headers, "JOB-TOKEN") != Some(job.token.as_str())
            || job.forbidden
            || !job.is_active()
        {
            return status(403);
        }
        let Some((start, end)) = header(&headers, "Content-Range").and_then(parse_range) else {
            return status(400);
        };
        // Stricter than GitLab (which reads only the start): a wrong end is a client bug.
        if body.is_empty() || end.checked_sub(start).map(|d| d + 1) != Some(body.len() as u64) {
            return status(400);
        }
        s.counters.max_patch = s.counters.max_patch.max(body.len());
        let size = job.trace.len() as u64;
        let mismatch = start != size;
        let forced = job.forced_416 > 0;
        if forced || mismatch {
            if forced {
                job.forced_416 -= 1;
            }
            let mut h = job_headers(&shared, job);
            h.insert(
                "Range",
                HeaderValue::from_str(&format!("0-{size}"))
                    .unwrap_or(HeaderValue::from_static("0-0")),
            );
            s.counters.trace_416 += 1;
            return (StatusCode::RANGE_NOT_SATISFIABLE, h).into_response();
        }
        job.trace.extend_from_slice(&body);
        let mut h = job_headers(&shared, job);
        h.insert(
            "Range",
            HeaderValue::from_str(&format!("0-{}", job.trace.len()))
                .unwrap_or(HeaderValue::from_static("0-0")),
        );
        (StatusCode::ACCEPTED, h).into_response()
    });
    finish(response, replace)
}
