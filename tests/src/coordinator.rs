//! A fake GitLab for tests: the Runner API endpoints keyhole-runner calls, with fault
//! injection, and git repositories over smart HTTP behind job-token basic auth.
//!
//! It keeps to the documented wire behaviour (JSON shapes of gitlab-runner's
//! `common/network.go`, Rails' status codes and headers), so the runner's client is tested
//! against what GitLab does, not against the client's own idea of it:
//!
//! - `POST /api/v4/runners/verify`: 200 for the registered runner token, 403 otherwise.
//! - `POST /api/v4/jobs/request`: 201 with the next queued job, or 204 with
//!   `X-GitLab-Last-Update` after holding the request up to the long-poll time.
//! - `PUT /api/v4/jobs/:id`: records the update; `Job-Status` answers; 403 for a wrong token,
//!   a job made to disappear ([`Coordinator::forbid`]) or a finished job.
//! - `PATCH /api/v4/jobs/:id/trace`: appends when `Content-Range` starts at the stored size,
//!   else 416 with `Range: 0-<size>` (GitLab's form: the size, not the last index).
//! - `POST /api/v4/jobs/:id/artifacts?artifact_format=&artifact_type=&expire_in=`: the
//!   multipart `file` part streamed to disk and recorded ([`Coordinator::artifacts`]); 201;
//!   403 unless the `JOB-TOKEN` is the job's and the job is running; 400 for a second
//!   artifact of a type the job has (unless the same bytes), or an unknown type or format;
//!   413 over [`CoordinatorOptions::max_artifacts_size`].
//! - `GET /api/v4/jobs/:id/artifacts`: the job's `archive` artifact streamed from disk; the
//!   `JOB-TOKEN` may be any running job's (GitLab gives a dependent job its own token for its
//!   `dependencies[]`); 401 without a token or with an unknown one, 403 for the token of a
//!   finished job, 404 when there is no archive or it expired
//!   ([`Coordinator::expire_artifacts`]).
//! - `<url>/<project path>.git/...`: `git http-backend` (CGI), basic auth
//!   `gitlab-ci-token:<job token>` of a running job, 401 otherwise.

mod api;
mod artifacts;
mod builder;
mod git;
mod state;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

pub use builder::{EnqueuedJob, JobBuilder};
use state::State;
pub use state::{
    Counters, Endpoint, Fault, FinalState, FinalStatus, JobRequestRecord, StateUpdate,
    StoredArtifact,
};

/// How to start a [`Coordinator`].
#[derive(Debug, Clone)]
pub struct CoordinatorOptions {
    /// Where to listen: `127.0.0.1:0` for runner-side tests; `10.213.0.1:0` (the bed's
    /// bridge) when pods must reach it.
    pub bind: SocketAddr,
    /// The registered runner token; `None` makes a random one.
    pub runner_token: Option<String>,
    /// How long `jobs/request` is held when no job is queued (GitLab Workhorse: 50 s).
    pub long_poll: Duration,
    /// `X-GitLab-Trace-Update-Interval` to send on PUT/PATCH answers, in seconds.
    pub trace_update_interval: Option<u64>,
    /// The largest artifact file `POST jobs/:id/artifacts` takes, in bytes; larger ones are
    /// answered 413 (GitLab's "Maximum artifacts size", 100 MB by default).
    pub max_artifacts_size: u64,
}

impl Default for CoordinatorOptions {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            runner_token: None,
            long_poll: Duration::from_secs(5),
            trace_update_interval: None,
            max_artifacts_size: 100 * 1024 * 1024,
        }
    }
}

impl CoordinatorOptions {
    /// Listening on the bed's bridge (`10.213.0.1`), where job and runner pods reach it, with
    /// `jobs/request` held `long_poll`.
    pub fn on_bed_bridge(long_poll: Duration) -> Self {
        Self {
            bind: SocketAddr::from(([10, 213, 0, 1], 0)),
            long_poll,
            ..Self::default()
        }
    }
}

/// Shared between the handlers and the test.
pub(crate) struct Shared {
    pub(crate) runner_token: String,
    pub(crate) long_poll: Duration,
    pub(crate) trace_update_interval: Option<u64>,
    pub(crate) git_root: tempfile::TempDir,
    pub(crate) max_artifacts_size: u64,
    /// Uploaded artifact files.
    pub(crate) artifacts_root: tempfile::TempDir,
    pub(crate) state: Mutex<State>,
    /// Woken at every change of `state`, for long polls and `wait_for_*`.
    pub(crate) changed: Notify,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the state and wakes every waiter.
    pub(crate) fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut self.lock());
        self.changed.notify_waiters();
        out
    }
}

/// A running fake GitLab. Stops when dropped.
pub struct Coordinator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Coordinator {
    /// Binds, starts serving in the background and returns at once.
    pub async fn start(opts: CoordinatorOptions) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(opts.bind)
            .await
            .with_context(|| format!("binding the coordinator to {}", opts.bind))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            runner_token: opts
                .runner_token
                .unwrap_or_else(|| format!("glrt-test-{}", random_hex(20))),
            long_poll: opts.long_poll,
            trace_update_interval: opts.trace_update_interval,
            git_root: tempfile::Builder::new()
                .prefix("keyhole-coordinator-")
                .tempdir()
                .context("creating the coordinator's git root")?,
            max_artifacts_size: opts.max_artifacts_size,
            artifacts_root: tempfile::Builder::new()
                .prefix("keyhole-coordinator-artifacts-")
                .tempdir()
                .context("creating the coordinator's artifact root")?,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let app = api::router(shared.clone());
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                eprintln!("coordinator server stopped: {e}");
            }
        });
        Ok(Self {
            shared,
            addr,
            stop: Some(stop),
            server: Some(server),
        })
    }

    /// `http://<addr>`: GitLab's root URL for the runner config.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The token `runners/verify` and `jobs/request` accept.
    pub fn runner_token(&self) -> &str {
        &self.shared.runner_token
    }

    /// A job made from the example payload, to adjust and enqueue.
    pub fn job(&self) -> JobBuilder<'_> {
        JobBuilder::new(self)
    }

    /// [`Self::job`] without a checkout (`GIT_STRATEGY=none`): for jobs that need no repository.
    pub fn job_without_checkout(&self) -> JobBuilder<'_> {
        self.job().variable("GIT_STRATEGY", "none")
    }

    /// Queues a raw payload (it needs `id`, `token` and
    /// `job_info.project_full_path`); `jobs/request` hands jobs out in order.
    pub fn enqueue(&self, payload: Value) -> Result<EnqueuedJob> {
        let id = payload["id"]
            .as_u64()
            .context("the payload has no numeric `id`")?;
        let token = payload["token"]
            .as_str()
            .context("the payload has no `token`")?
            .to_owned();
        let project_path = payload["job_info"]["project_full_path"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let token_clone = token.clone();
        self.shared
            .update(move |s| s.enqueue(id, token_clone, project_path, payload))?;
        Ok(EnqueuedJob { id, token })
    }

    /// Creates a bare repository served at `<url>/<project_path>.git` with one commit of
    /// `files` (path, content) on `main`; returns the commit SHA.
    pub fn create_repo(&self, project_path: &str, files: &[(&str, &str)]) -> Result<String> {
        git::create_repo(self.shared.git_root.path(), project_path, files)
    }

    /// Where repositories live (`<root>/<project path>.git`).
    pub fn git_root(&self) -> &Path {
        self.shared.git_root.path()
    }

    /// Every state update recorded for a job, in order.
    pub fn updates(&self, job_id: u64) -> Vec<StateUpdate> {
        self.shared
            .lock()
            .jobs
            .get(&job_id)
            .map(|j| j.updates.clone())
            .unwrap_or_default()
    }

    /// The trace bytes stored for a job.
    pub fn trace(&self, job_id: u64) -> Vec<u8> {
        self.shared
            .lock()
            .jobs
            .get(&job_id)
            .map(|j| j.trace.clone())
            .unwrap_or_default()
    }

    /// [`Self::trace`] as text.
    pub fn trace_text(&self, job_id: u64) -> String {
        String::from_utf8_lossy(&self.trace(job_id)).into_owned()
    }

    pub fn final_state(&self, job_id: u64) -> Option<FinalState> {
        self.shared.lock().jobs.get(&job_id)?.final_state.clone()
    }

    /// The artifacts stored for a job, in upload order (expired ones included, marked).
    pub fn artifacts(&self, job_id: u64) -> Vec<StoredArtifact> {
        self.shared
            .lock()
            .jobs
            .get(&job_id)
            .map(|j| j.artifacts.clone())
            .unwrap_or_default()
    }

    /// Where uploaded artifact files are stored (removed with the coordinator).
    pub fn artifacts_dir(&self) -> &Path {
        self.shared.artifacts_root.path()
    }

    /// The job's artifacts expire, as GitLab erases them after `expire_in`: downloads answer
    /// 404 from now on, and a new upload of the same type is taken. The records (and the files,
    /// for [`StoredArtifact::read`]) stay, marked `expired`.
    pub fn expire_artifacts(&self, job_id: u64) {
        self.shared.update(|s| {
            if let Some(job) = s.jobs.get_mut(&job_id) {
                for artifact in &mut job.artifacts {
                    artifact.expired = true;
                }
            }
        });
    }

    /// Request counters, per endpoint and per job.
    pub fn counters(&self) -> Counters {
        self.shared.lock().counters.clone()
    }

    /// The `jobs/request` calls received, with the `last_update` and `info` they carried.
    pub fn job_requests(&self) -> Vec<JobRequestRecord> {
        self.shared.lock().requests.clone()
    }

    /// The next `times` requests to `endpoint` meet `fault`.
    pub fn inject(&self, endpoint: Endpoint, fault: Fault, times: usize) {
        self.shared.update(|s| {
            let queue = s.faults.entry(endpoint).or_default();
            queue.extend(std::iter::repeat_n(fault, times));
        });
    }

    /// GitLab is down for `length` from now: every request (job requests, updates, trace,
    /// artifacts, git) is answered 503 until then.
    pub fn outage(&self, length: Duration) {
        let until = std::time::Instant::now() + length;
        self.shared.update(|s| s.outage_until = Some(until));
    }

    /// The next trace PATCH of this job is answered 416 (with the true `Range`), whatever
    /// its range.
    pub fn force_trace_416(&self, job_id: u64) {
        self.shared.update(|s| {
            if let Some(job) = s.jobs.get_mut(&job_id) {
                job.forced_416 += 1;
            }
        });
    }

    /// A user cancels the job: a queued job is canceled at once; a running one becomes
    /// `canceling` (sent as `Job-Status`), then `canceled` when the runner reports its end.
    pub fn cancel(&self, job_id: u64) {
        self.shared.update(|s| s.cancel(job_id));
    }

    /// The job disappears for the runner: every job endpoint answers 403 from now on.
    pub fn forbid(&self, job_id: u64) {
        self.shared.update(|s| {
            if let Some(job) = s.jobs.get_mut(&job_id) {
                job.forbidden = true;
            }
        });
    }

    /// Waits until `check` returns `Some`, re-checking at every state change.
    async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&State) -> Option<T>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(found) = check(&self.shared.lock()) {
                return Ok(found);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
        }
    }

    /// Waits for the job's final state (success, failed, canceled).
    pub async fn wait_for_final(&self, job_id: u64, timeout: Duration) -> Result<FinalState> {
        self.wait_for(&format!("the final state of job {job_id}"), timeout, |s| {
            s.jobs.get(&job_id)?.final_state.clone()
        })
        .await
        .with_context(|| format!("updates so far: {:?}", self.updates(job_id)))
    }

    /// Waits until GitLab holds at least `len` trace bytes of the job.
    pub async fn wait_for_trace_len(
        &self,
        job_id: u64,
        len: usize,
        timeout: Duration,
    ) -> Result<()> {
        self.wait_for(
            &format!("{len} trace bytes of job {job_id}"),
            timeout,
            |s| (s.jobs.get(&job_id)?.trace.len() >= len).then_some(()),
        )
        .await
    }

    /// Waits until the job has at least `n` recorded state updates; returns them.
    pub async fn wait_for_updates(
        &self,
        job_id: u64,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<StateUpdate>> {
        self.wait_for(&format!("{n} updates of job {job_id}"), timeout, |s| {
            let updates = &s.jobs.get(&job_id)?.updates;
            (updates.len() >= n).then(|| updates.clone())
        })
        .await
    }

    /// Waits until the job has at least `n` stored artifacts; returns them all.
    pub async fn wait_for_artifacts(
        &self,
        job_id: u64,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<StoredArtifact>> {
        self.wait_for(&format!("{n} artifacts of job {job_id}"), timeout, |s| {
            let artifacts = &s.jobs.get(&job_id)?.artifacts;
            (artifacts.len() >= n).then(|| artifacts.clone())
        })
        .await
    }

    /// Waits until `n` injected faults of `endpoint` have been met.
    pub async fn wait_for_faults(
        &self,
        endpoint: Endpoint,
        n: u64,
        timeout: Duration,
    ) -> Result<()> {
        self.wait_for(&format!("{n} faults of {endpoint:?}"), timeout, |s| {
            (s.counters.faults(endpoint) >= n).then_some(())
        })
        .await
    }

    /// Waits until at least `n` trace PATCHes were answered 416.
    pub async fn wait_for_trace_416(&self, n: u64, timeout: Duration) -> Result<()> {
        self.wait_for(&format!("{n} trace 416 answers"), timeout, |s| {
            (s.counters.trace_416 >= n).then_some(())
        })
        .await
    }

    /// Waits until `n` `jobs/request` calls are being held (long poll).
    pub async fn wait_for_pollers(&self, n: usize, timeout: Duration) -> Result<()> {
        self.wait_for(&format!("{n} waiting job requests"), timeout, |s| {
            (s.waiting_pollers >= n).then_some(())
        })
        .await
    }

    /// Stops serving and waits for the server task.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// `n` random lowercase hex digits, for tokens.
pub(crate) fn random_hex(n: usize) -> String {
    (0..n)
        .map(|_| char::from_digit(fastrand::u32(0..16), 16).unwrap_or('0'))
        .collect()
}
