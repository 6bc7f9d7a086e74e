//! What the fake GitLab remembers: the job queue, each job's updates and trace, injected
//! faults and counters.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::Value;

/// An endpoint, for fault injection and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    Verify,
    RequestJob,
    UpdateJob,
    AppendTrace,
    /// `POST /api/v4/jobs/:id/artifacts`.
    UploadArtifacts,
    /// `GET /api/v4/jobs/:id/artifacts`.
    DownloadArtifacts,
    Git,
}

/// What an injected fault does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status at once, without processing the request.
    Status(u16),
    /// Wait this long, then process normally (a client with a shorter timeout gives up, and
    /// the request is then never processed).
    Delay(Duration),
    /// Process the request (the update or trace bytes are stored), then answer this status
    /// instead of the real answer: a response lost after the work was done.
    AcceptThenStatus(u16),
}

/// How a job ended, as GitLab shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalStatus {
    Success,
    Failed,
    Canceled,
}

/// A job's final state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalState {
    pub status: FinalStatus,
    pub failure_reason: Option<String>,
    pub exit_code: Option<i64>,
    /// Trace bytes held when the final update arrived: the runner must flush first.
    pub trace_len: usize,
    /// The final update's `output.checksum` (`crc32:<hex>`) and `output.bytesize`, which
    /// GitLab checks against the trace it assembled.
    pub output_checksum: Option<String>,
    pub output_bytesize: Option<u64>,
}

/// One `PUT jobs/:id` as received (and processed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateUpdate {
    pub state: String,
    pub failure_reason: Option<String>,
    pub exit_code: Option<i64>,
}

/// One `jobs/request` call.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRequestRecord {
    pub last_update: Option<String>,
    pub info: Value,
}

/// Request counts, for asserting that faults happened and retries followed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Every request received, per endpoint (faulted ones included).
    pub requests: BTreeMap<Endpoint, u64>,
    /// Requests that met an injected fault.
    pub faults: BTreeMap<Endpoint, u64>,
    /// Trace PATCHes answered 416.
    pub trace_416: u64,
    /// The largest trace PATCH body received.
    pub max_patch: usize,
    /// Git requests refused with 401.
    pub git_unauthorized: u64,
}

impl Counters {
    pub fn requests(&self, endpoint: Endpoint) -> u64 {
        self.requests.get(&endpoint).copied().unwrap_or(0)
    }

    pub fn faults(&self, endpoint: Endpoint) -> u64 {
        self.faults.get(&endpoint).copied().unwrap_or(0)
    }
}

/// One artifact file GitLab stored for a job (`POST jobs/:id/artifacts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredArtifact {
    pub job_id: u64,
    /// `artifact_type` of the upload (`archive` when not sent, as GitLab defaults).
    pub artifact_type: String,
    /// `artifact_format` of the upload (`zip` when not sent, as GitLab defaults).
    pub artifact_format: String,
    /// The file name of the multipart `file` part (its `Content-Disposition`).
    pub filename: String,
    /// `expire_in` as sent (GitLab's free text, e.g. `1 week`), if sent.
    pub expire_in: Option<String>,
    /// Bytes stored.
    pub size: u64,
    /// Lowercase hex SHA-256 of the stored bytes.
    pub sha256: String,
    /// Where the bytes are, in the coordinator's temporary artifact root.
    pub path: PathBuf,
    /// Made expired by [`Coordinator::expire_artifacts`](super::Coordinator::expire_artifacts):
    /// GitLab no longer serves it.
    pub expired: bool,
}

impl StoredArtifact {
    /// The stored bytes (the file stays on disk until the coordinator is dropped).
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        std::fs::read(&self.path)
    }

    /// A zip artifact extracted, by the broker's own extractor, into a new temporary
    /// directory (gone when the returned value is dropped).
    pub fn unzip(&self) -> anyhow::Result<tempfile::TempDir> {
        let dir = tempfile::tempdir()?;
        keyhole_broker::transfer::extract::extract_zip(&self.path, dir.path())?;
        Ok(dir)
    }

    /// A gzip artifact (a report) decompressed, as text.
    pub fn gunzip(&self) -> anyhow::Result<String> {
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::MultiGzDecoder::new(&self.read()?[..]),
            &mut text,
        )?;
        Ok(text)
    }

    /// The one of `stored` of type `kind` (`archive`, `junit`, ...); panics naming what there
    /// is when none is (a test helper).
    pub fn of_type<'a>(stored: &'a [StoredArtifact], kind: &str) -> &'a StoredArtifact {
        stored
            .iter()
            .find(|a| a.artifact_type == kind)
            .unwrap_or_else(|| panic!("no {kind} artifact among {stored:?}"))
    }
}

/// Where a job is in GitLab's eyes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobStatus {
    Pending,
    Running,
    Canceling,
    Done,
}

pub(crate) struct JobRecord {
    pub(crate) token: String,
    pub(crate) project_path: String,
    pub(crate) payload: Value,
    pub(crate) status: JobStatus,
    pub(crate) updates: Vec<StateUpdate>,
    pub(crate) trace: Vec<u8>,
    pub(crate) forced_416: u32,
    pub(crate) forbidden: bool,
    pub(crate) final_state: Option<FinalState>,
    /// Uploaded artifacts, in upload order; at most one per `artifact_type` that is not
    /// expired (GitLab's unique index on job and file type).
    pub(crate) artifacts: Vec<StoredArtifact>,
}

impl JobRecord {
    /// The `Job-Status` header value.
    pub(crate) fn job_status(&self) -> &'static str {
        match (self.status, &self.final_state) {
            (JobStatus::Pending, _) => "pending",
            (JobStatus::Running, _) => "running",
            (JobStatus::Canceling, _) => "canceling",
            (JobStatus::Done, Some(f)) => match f.status {
                FinalStatus::Success => "success",
                FinalStatus::Failed => "failed",
                FinalStatus::Canceled => "canceled",
            },
            (JobStatus::Done, None) => "failed",
        }
    }

    /// Still accepting trace and updates.
    pub(crate) fn is_active(&self) -> bool {
        matches!(self.status, JobStatus::Running | JobStatus::Canceling)
    }

    /// The artifact of this type GitLab holds (not expired), if any.
    pub(crate) fn artifact(&self, artifact_type: &str) -> Option<&StoredArtifact> {
        self.artifacts
            .iter()
            .find(|a| !a.expired && a.artifact_type == artifact_type)
    }
}

/// The coordinator's memory.
#[derive(Default)]
pub(crate) struct State {
    pub(crate) queue: VecDeque<u64>,
    /// Bumped at every enqueue; sent as `X-GitLab-Last-Update`.
    pub(crate) queue_version: u64,
    pub(crate) jobs: BTreeMap<u64, JobRecord>,
    pub(crate) faults: HashMap<Endpoint, VecDeque<Fault>>,
    /// Until then every Runner API request is answered 503, as GitLab behind its load
    /// balancer answers while it is down ([`crate::Coordinator::outage`]).
    pub(crate) outage_until: Option<std::time::Instant>,
    pub(crate) counters: Counters,
    pub(crate) requests: Vec<JobRequestRecord>,
    pub(crate) waiting_pollers: usize,
    pub(crate) next_id: u64,
}

impl State {
    pub(crate) fn enqueue(
        &mut self,
        id: u64,
        token: String,
        project_path: String,
        payload: Value,
    ) -> Result<()> {
        if self.jobs.contains_key(&id) {
            bail!("job {id} is already known to the coordinator");
        }
        self.jobs.insert(
            id,
            JobRecord {
                token,
                project_path,
                payload,
                status: JobStatus::Pending,
                updates: Vec::new(),
                trace: Vec::new(),
                forced_416: 0,
                forbidden: false,
                final_state: None,
                artifacts: Vec::new(),
            },
        );
        self.queue.push_back(id);
        self.queue_version += 1;
        Ok(())
    }

    /// A fresh job id (above any enqueued one).
    pub(crate) fn allocate_id(&mut self) -> u64 {
        let max = self.jobs.keys().next_back().copied().unwrap_or(1000);
        self.next_id = self.next_id.max(max) + 1;
        self.next_id
    }

    /// Hands out the next queued job.
    pub(crate) fn pop_job(&mut self) -> Option<Value> {
        while let Some(id) = self.queue.pop_front() {
            if let Some(job) = self.jobs.get_mut(&id)
                && job.status == JobStatus::Pending
            {
                job.status = JobStatus::Running;
                return Some(job.payload.clone());
            }
        }
        None
    }

    pub(crate) fn cancel(&mut self, id: u64) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        match job.status {
            JobStatus::Pending => {
                job.status = JobStatus::Done;
                job.final_state = Some(FinalState {
                    status: FinalStatus::Canceled,
                    failure_reason: None,
                    exit_code: None,
                    trace_len: 0,
                    output_checksum: None,
                    output_bytesize: None,
                });
            }
            JobStatus::Running => job.status = JobStatus::Canceling,
            JobStatus::Canceling | JobStatus::Done => {}
        }
    }

    /// Takes the next fault for `endpoint`, counting the request.
    pub(crate) fn take_fault(&mut self, endpoint: Endpoint) -> Option<Fault> {
        *self.counters.requests.entry(endpoint).or_default() += 1;
        if self
            .outage_until
            .is_some_and(|until| std::time::Instant::now() < until)
        {
            *self.counters.faults.entry(endpoint).or_default() += 1;
            return Some(Fault::Status(503));
        }
        let fault = self.faults.get_mut(&endpoint)?.pop_front()?;
        *self.counters.faults.entry(endpoint).or_default() += 1;
        Some(fault)
    }

    /// Whether `token` belongs to a running job (the job token's lifetime in GitLab).
    pub(crate) fn active_job_token(&self, token: &str, project_path: &str) -> bool {
        self.jobs.values().any(|j| {
            j.is_active() && !j.forbidden && j.token == token && j.project_path == project_path
        })
    }
}
