//! One job's conversation with GitLab: keep-alive and final state updates (`PUT jobs/:id`)
//! and the trace (`PATCH jobs/:id/trace`), all with the job token.
//!
//! Requests of one job are serialised (one at a time), so a keep-alive can never overtake the
//! final update, and trace chunks go out in order. A background task (started on first use)
//! sends the trace every update interval, or at once when a full chunk is waiting, and
//! touches the job when nothing else reached GitLab for a while.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use reqwest::header::{CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::{Response, Url};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::error::GitlabError;
use super::http::{Http, header, retry_until, token_header, transient_status_to_error};
use super::outcome::JobOutcome;
use super::protocol::{
    JOB_STATUS_HEADER, JOB_TOKEN_HEADER, RemoteStatus, TRACE_UPDATE_INTERVAL_HEADER, content_range,
    parse_range_size, parse_update_interval,
};
use super::retry::Backoff;
use super::trace::{Resync, TraceBuffer};

/// The runner's handle on one job. Cheap to clone; clones share the trace and the status.
#[derive(Clone)]
pub struct JobSession {
    inner: Arc<SessionInner>,
    /// GitLab's `features.failure_reasons`, to map reasons it does not know.
    failure_reasons: Arc<[String]>,
}

impl fmt::Debug for JobSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobSession")
            .field("job_id", &self.inner.job_id)
            .field("status", &*self.inner.status.borrow())
            .finish_non_exhaustive()
    }
}

struct SessionInner {
    http: Arc<Http>,
    job_id: u64,
    token: SecretString,
    state: Mutex<TraceState>,
    /// Woken when buffer space frees up or the trace closes (appenders wait on it).
    space: Notify,
    /// Wakes the background sender (a full chunk is waiting).
    wake: Arc<Notify>,
    /// One request at a time per job.
    send_lock: tokio::sync::Mutex<()>,
    status: watch::Sender<RemoteStatus>,
    loop_started: AtomicBool,
    /// The final update is under way: no more keep-alives.
    finishing: AtomicBool,
}

struct TraceState {
    buffer: TraceBuffer,
    closed: Option<Closed>,
    interval: Duration,
    last_contact: Instant,
}

#[derive(Debug, Clone, Copy)]
enum Closed {
    Finished,
    /// GitLab answered this status (403, 404, 409).
    Gone(u16),
}

/// A 2xx answer to a state update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PutAnswer {
    /// 200: recorded.
    Done,
    /// 202: accepted but not complete (GitLab is still persisting the trace): ask again.
    NotYet,
}

/// What one trace PATCH did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Patched {
    Idle,
    Sent,
    Resynced(Resync),
}

impl JobSession {
    pub(super) fn new(http: Arc<Http>, job_id: u64, token: SecretString) -> Self {
        let trace = http.config().trace;
        Self {
            inner: Arc::new(SessionInner {
                http,
                job_id,
                token,
                state: Mutex::new(TraceState {
                    buffer: TraceBuffer::new(trace.buffer_limit),
                    closed: None,
                    interval: trace.update_interval,
                    last_contact: Instant::now(),
                }),
                space: Notify::new(),
                wake: Arc::new(Notify::new()),
                send_lock: tokio::sync::Mutex::new(()),
                status: watch::Sender::new(RemoteStatus::Running),
                loop_started: AtomicBool::new(false),
                finishing: AtomicBool::new(false),
            }),
            failure_reasons: Arc::from(Vec::new()),
        }
    }

    /// Uses the payload's `features.failure_reasons` to map failure reasons this GitLab does
    /// not know (see [`super::FailureReason::supported_by`]).
    pub fn with_failure_reasons(mut self, reasons: Vec<String>) -> Self {
        self.failure_reasons = Arc::from(reasons);
        self
    }

    pub fn job_id(&self) -> u64 {
        self.inner.job_id
    }

    /// GitLab's latest word on the job, updated by every PUT and PATCH answer. The executor
    /// watches it to cancel (`Canceling`) or abort (`must_abort`).
    pub fn status(&self) -> watch::Receiver<RemoteStatus> {
        self.inner.status.subscribe()
    }

    pub fn current_status(&self) -> RemoteStatus {
        *self.inner.status.borrow()
    }

    /// `PUT jobs/:id` with `state=running`: confirms a job just received (two-phase commit)
    /// and tells GitLab the job is alive. Transient errors are retried within the retry
    /// deadline. A 403/404/409 gives `Ok(RemoteStatus::Gone)`.
    pub async fn keep_alive(&self) -> Result<RemoteStatus, GitlabError> {
        self.inner.ensure_loop();
        match self.inner.put_running().await {
            Ok(_) => Ok(self.current_status()),
            Err(GitlabError::JobGone { .. }) => Ok(RemoteStatus::Gone),
            Err(e) => Err(e),
        }
    }

    /// The job's trace, to append log bytes to.
    pub fn trace(&self) -> TraceSender {
        TraceSender {
            session: self.clone(),
        }
    }

    /// Reports the end of the job: first sends the whole trace, then `PUT jobs/:id` with
    /// `state=success|failed`, `failure_reason`, `exit_code` and the trace's `output`
    /// (checksum and size), retried (transient errors,
    /// and 202 "not yet") until GitLab records it or `final_update_deadline` passes.
    /// [`GitlabError::JobGone`] when GitLab no longer knows the job as this runner's.
    pub async fn finish(&self, outcome: JobOutcome) -> Result<(), GitlabError> {
        let inner = &self.inner;
        let config = inner.http.config();
        let give_up = Instant::now() + config.final_update_deadline;
        let action = format!("report the end of job {}", inner.job_id);
        inner.finishing.store(true, Ordering::SeqCst);

        // The trace is complete once the job reports its end: what GitLab must have got.
        let output = inner.lock().buffer.output();
        let mut body = json!({
            "token": inner.token.expose_secret(),
            "state": outcome.state(),
            "output": {"checksum": output.checksum, "bytesize": output.bytesize},
        });
        if let JobOutcome::Failed { reason, exit_code } = outcome {
            body["failure_reason"] = reason.supported_by(&self.failure_reasons).as_str().into();
            if let Some(code) = exit_code {
                body["exit_code"] = code.into();
            }
        }

        let started = Instant::now();
        let mut backoff = Backoff::new(config.retry);
        loop {
            if inner.flush_until(give_up).await? == RemoteStatus::Gone {
                return Err(inner.gone_error());
            }
            let result = {
                let _one_at_a_time = inner.send_lock.lock().await;
                inner.put_state(&body, &action).await
            };
            let (wait, last) = match result {
                Ok(PutAnswer::Done) => {
                    inner.close(Closed::Finished);
                    return Ok(());
                }
                Ok(PutAnswer::NotYet) => {
                    backoff.reset();
                    let last = GitlabError::Status {
                        action: action.clone(),
                        status: 202,
                        hint: " (accepted, not complete) until the deadline",
                    };
                    (inner.interval(), last)
                }
                Err(e) if e.is_transient() => (backoff.next_delay(), e),
                Err(e) => return Err(e),
            };
            if Instant::now() + wait > give_up {
                return Err(GitlabError::GaveUp {
                    action,
                    after: started.elapsed(),
                    last: Box::new(last),
                });
            }
            tracing::debug!(job_id = inner.job_id, error = %last, ?wait, "final update not recorded yet");
            tokio::time::sleep(wait).await;
        }
    }

    pub(super) async fn append(&self, bytes: &[u8]) -> Result<(), GitlabError> {
        let inner = &self.inner;
        inner.ensure_loop();
        let max_patch = inner.http.config().trace.max_patch;
        let mut rest = bytes;
        while !rest.is_empty() {
            // Registered before looking at the buffer, so that a wake-up between the look
            // and the wait is not missed.
            let space = inner.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            {
                let mut state = inner.lock();
                match state.closed {
                    Some(Closed::Gone(status)) => {
                        return Err(GitlabError::JobGone {
                            job_id: inner.job_id,
                            status,
                        });
                    }
                    Some(Closed::Finished) => {
                        return Err(GitlabError::TraceClosed {
                            job_id: inner.job_id,
                        });
                    }
                    None => {}
                }
                let taken = state.buffer.push(rest);
                rest = &rest[taken..];
                if state.buffer.pending() >= max_patch || state.buffer.room() == 0 {
                    inner.wake.notify_one();
                }
            }
            if !rest.is_empty() {
                space.await;
            }
        }
        Ok(())
    }

    pub(super) async fn flush(&self) -> Result<RemoteStatus, GitlabError> {
        let give_up = Instant::now() + self.inner.http.config().retry.deadline;
        self.inner.flush_until(give_up).await
    }

    pub(super) fn trace_acknowledged(&self) -> u64 {
        self.inner.lock().buffer.acknowledged()
    }
}

impl SessionInner {
    fn lock(&self) -> MutexGuard<'_, TraceState> {
        // The state stays consistent even if a holder panicked: every update is one call.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn url(&self, suffix: &str) -> Result<Url, GitlabError> {
        self.http.endpoint(&format!("jobs/{}{suffix}", self.job_id))
    }

    fn interval(&self) -> Duration {
        self.lock().interval
    }

    fn gone_error(&self) -> GitlabError {
        let status = match self.lock().closed {
            Some(Closed::Gone(s)) => s,
            _ => 403,
        };
        GitlabError::JobGone {
            job_id: self.job_id,
            status,
        }
    }

    fn close(&self, how: Closed) {
        {
            let mut state = self.lock();
            if state.closed.is_none() || matches!(how, Closed::Gone(_)) {
                state.closed = Some(how);
            }
            if matches!(how, Closed::Gone(_)) {
                state.buffer.discard();
            }
        }
        if matches!(how, Closed::Gone(_)) {
            self.status
                .send_modify(|s| *s = s.merge(RemoteStatus::Gone));
        }
        self.space.notify_waiters();
        self.wake.notify_one();
    }

    /// GitLab dropped the job: close the trace and say so.
    fn gone(&self, status: u16) -> GitlabError {
        tracing::warn!(
            job_id = self.job_id,
            status,
            "GitLab no longer accepts this job"
        );
        self.close(Closed::Gone(status));
        GitlabError::JobGone {
            job_id: self.job_id,
            status,
        }
    }

    /// Reads `Job-Status` and `X-GitLab-Trace-Update-Interval` from a 2xx/416 answer.
    fn note_answer(&self, response: &Response) {
        let remote = RemoteStatus::from_header(header(response, JOB_STATUS_HEADER));
        self.status.send_if_modified(|s| {
            let merged = s.merge(remote);
            let changed = merged != *s;
            *s = merged;
            changed
        });
        let mut state = self.lock();
        if let Some(interval) =
            header(response, TRACE_UPDATE_INTERVAL_HEADER).and_then(parse_update_interval)
        {
            state.interval = interval;
        }
        state.last_contact = Instant::now();
    }

    fn job_token_header(&self) -> Result<reqwest::header::HeaderMap, GitlabError> {
        token_header(JOB_TOKEN_HEADER, &self.token, "job token")
    }

    /// One `PUT jobs/:id`; the caller holds `send_lock`.
    async fn put_state(&self, body: &Value, action: &str) -> Result<PutAnswer, GitlabError> {
        let response = self
            .http
            .client
            .put(self.url("")?)
            .headers(self.job_token_header()?)
            .json(body)
            .send()
            .await
            .map_err(|e| GitlabError::transport(action, &e))?;
        let response = transient_status_to_error(response, action)?;
        match response.status().as_u16() {
            200 => {
                self.note_answer(&response);
                Ok(PutAnswer::Done)
            }
            202 => {
                self.note_answer(&response);
                Ok(PutAnswer::NotYet)
            }
            s @ (403 | 404 | 409) => Err(self.gone(s)),
            s => Err(GitlabError::status(action, s)),
        }
    }

    /// `PUT state=running` with retries, one request at a time.
    async fn put_running(&self) -> Result<PutAnswer, GitlabError> {
        let action = format!("update job {}", self.job_id);
        let body = json!({ "token": self.token.expose_secret(), "state": "running" });
        let (body, action_ref) = (&body, action.as_str());
        let give_up = Instant::now() + self.http.config().retry.deadline;
        retry_until(
            self.http.config().retry,
            give_up,
            &action,
            move || async move {
                let _one_at_a_time = self.send_lock.lock().await;
                if let Some(Closed::Gone(_)) = self.lock().closed {
                    return Err(self.gone_error());
                }
                self.put_state(body, action_ref).await
            },
        )
        .await
    }

    /// Sends the next chunk of the trace, if any.
    async fn patch_once(&self) -> Result<Patched, GitlabError> {
        let _one_at_a_time = self.send_lock.lock().await;
        let max_patch = self.http.config().trace.max_patch;
        let chunk = {
            let state = self.lock();
            if let Some(Closed::Gone(status)) = state.closed {
                return Err(GitlabError::JobGone {
                    job_id: self.job_id,
                    status,
                });
            }
            state.buffer.chunk(max_patch)
        };
        let Some(chunk) = chunk else {
            return Ok(Patched::Idle);
        };
        let action = format!("send the trace of job {}", self.job_id);
        let (start, len) = (chunk.start, chunk.bytes.len());
        let range = content_range(start, len).ok_or_else(|| GitlabError::BadResponse {
            action: action.clone(),
            reason: "the trace is longer than 2^64 bytes".into(),
        })?;
        let response = self
            .http
            .client
            .patch(self.url("/trace")?)
            .headers(self.job_token_header()?)
            .header(CONTENT_RANGE, range)
            .header(CONTENT_TYPE, "text/plain")
            .body(chunk.bytes)
            .send()
            .await
            .map_err(|e| GitlabError::transport(&action, &e))?;
        let response = transient_status_to_error(response, &action)?;
        match response.status().as_u16() {
            200 | 202 => {
                self.note_answer(&response);
                self.lock().buffer.acknowledge(start, len);
                self.space.notify_waiters();
                Ok(Patched::Sent)
            }
            416 => {
                let size = header(&response, RANGE.as_str())
                    .and_then(parse_range_size)
                    .ok_or_else(|| GitlabError::BadResponse {
                        action: action.clone(),
                        reason: "416 without a `Range: 0-<size>` header".into(),
                    })?;
                self.note_answer(&response);
                let resync = self.lock().buffer.resync(size);
                match resync {
                    Resync::GitlabLost(n) => tracing::warn!(
                        job_id = self.job_id,
                        bytes = n,
                        "GitLab lost trace bytes it had acknowledged; the log has a gap"
                    ),
                    Resync::GitlabAhead(n) => tracing::warn!(
                        job_id = self.job_id,
                        bytes = n,
                        "GitLab holds more trace bytes than were sent; going on from its size"
                    ),
                    Resync::InSync | Resync::Skipped(_) => {}
                }
                self.space.notify_waiters();
                Ok(Patched::Resynced(resync))
            }
            s @ (403 | 404) => Err(self.gone(s)),
            s => Err(GitlabError::status(action, s)),
        }
    }

    /// Sends every pending byte, retrying transient errors until `give_up`.
    async fn flush_until(&self, give_up: Instant) -> Result<RemoteStatus, GitlabError> {
        let policy = self.http.config().retry;
        let started = Instant::now();
        let mut backoff = Backoff::new(policy);
        loop {
            let failure = match self.patch_once().await {
                Ok(Patched::Idle) => return Ok(*self.status.borrow()),
                Ok(Patched::Sent) | Ok(Patched::Resynced(Resync::Skipped(_))) => {
                    backoff.reset();
                    continue;
                }
                Ok(Patched::Resynced(r)) => {
                    // GitLab refused the range without taking anything: do not hammer it.
                    GitlabError::BadResponse {
                        action: format!("send the trace of job {}", self.job_id),
                        reason: format!("GitLab keeps refusing the range ({r:?})"),
                    }
                }
                Err(GitlabError::JobGone { .. }) => return Ok(RemoteStatus::Gone),
                Err(e) if e.is_transient() => e,
                Err(e) => return Err(e),
            };
            let delay = backoff.next_delay();
            if Instant::now() + delay > give_up {
                return Err(GitlabError::GaveUp {
                    action: format!("send the trace of job {}", self.job_id),
                    after: started.elapsed(),
                    last: Box::new(failure),
                });
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// Sends what is pending now, without retrying.
    async fn send_pending(&self) -> Result<(), GitlabError> {
        loop {
            match self.patch_once().await? {
                Patched::Idle => return Ok(()),
                Patched::Sent | Patched::Resynced(Resync::Skipped(_)) => {}
                Patched::Resynced(r) => {
                    return Err(GitlabError::BadResponse {
                        action: format!("send the trace of job {}", self.job_id),
                        reason: format!("GitLab refused the range ({r:?}); retrying later"),
                    });
                }
            }
        }
    }

    /// How long the background sender may sleep.
    fn idle_wait(&self) -> Duration {
        let trace = self.http.config().trace;
        let state = self.lock();
        if state.buffer.pending() >= trace.max_patch || state.buffer.room() == 0 {
            return Duration::ZERO;
        }
        let keep_alive_in = trace
            .keep_alive_interval
            .saturating_sub(state.last_contact.elapsed());
        state
            .interval
            .min(keep_alive_in.max(Duration::from_millis(10)))
    }

    fn keep_alive_due(&self) -> bool {
        !self.finishing.load(Ordering::SeqCst)
            && self.lock().last_contact.elapsed() >= self.http.config().trace.keep_alive_interval
    }

    fn is_closed(&self) -> bool {
        self.lock().closed.is_some()
    }

    /// Starts the background sender once, if a Tokio runtime is there to run it.
    fn ensure_loop(self: &Arc<Self>) {
        if self.loop_started.swap(true, Ordering::SeqCst) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(run_sender(Arc::downgrade(self), self.wake.clone()));
            }
            Err(_) => self.loop_started.store(false, Ordering::SeqCst),
        }
    }
}

/// The background sender of one job. Holds only a weak reference between rounds, so it
/// ends when the session and all its trace handles are dropped, or when the job is closed.
async fn run_sender(session: Weak<SessionInner>, wake: Arc<Notify>) {
    let mut backoff = None::<Backoff>;
    let mut retry_in = None::<Duration>;
    loop {
        let wait = {
            let Some(inner) = session.upgrade() else {
                return;
            };
            if inner.is_closed() {
                return;
            }
            if backoff.is_none() {
                backoff = Some(Backoff::new(inner.http.config().retry));
            }
            retry_in.unwrap_or_else(|| inner.idle_wait())
        };
        if retry_in.is_some() {
            tokio::time::sleep(wait).await;
        } else {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        let Some(inner) = session.upgrade() else {
            return;
        };
        let Some(backoff) = backoff.as_mut() else {
            return;
        };
        retry_in = match inner.send_pending().await {
            Ok(()) => {
                backoff.reset();
                None
            }
            Err(GitlabError::JobGone { .. }) => return,
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                tracing::debug!(job_id = inner.job_id, error = %e, ?delay, "trace not sent, retrying");
                Some(delay)
            }
            Err(e) => {
                tracing::warn!(job_id = inner.job_id, error = %e, "trace not sent");
                Some(inner.interval())
            }
        };
        if retry_in.is_none() && inner.keep_alive_due() {
            match inner.put_running().await {
                Err(GitlabError::JobGone { .. }) => return,
                Err(e) => tracing::warn!(job_id = inner.job_id, error = %e, "keep-alive failed"),
                Ok(_) => {}
            }
        }
    }
}

/// The executor's handle on a job's trace. Cheap to clone; all clones feed one stream.
#[derive(Debug, Clone)]
pub struct TraceSender {
    session: JobSession,
}

impl TraceSender {
    /// Appends log bytes. Returns once all of them are buffered; waits while the buffer is
    /// full (see [`super::TraceConfig::buffer_limit`]). Fails with [`GitlabError::JobGone`] once
    /// GitLab dropped the job and [`GitlabError::TraceClosed`] after `finish`.
    pub async fn append(&self, bytes: &[u8]) -> Result<(), GitlabError> {
        self.session.append(bytes).await
    }

    /// Sends everything appended so far, retrying transient errors within the retry
    /// deadline, and returns GitLab's latest word on the job. A gone job gives
    /// `Ok(RemoteStatus::Gone)`, not an error: there is nothing left to send to.
    pub async fn flush(&self) -> Result<RemoteStatus, GitlabError> {
        self.session.flush().await
    }

    /// Bytes GitLab has acknowledged.
    pub fn sent(&self) -> u64 {
        self.session.trace_acknowledged()
    }
}
