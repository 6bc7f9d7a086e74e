//! The GitLab side: the Runner API client and the job payload.
//!
//! - [`payload`]: the `jobs/request` body turned into a [`crate::job::Job`] (pure).
//! - [`client`]: verify the runner and long-poll for jobs.
//! - [`session`]: one job's state updates and trace, with the retries GitLab needs.
//! - [`trace`]: the trace buffer (what GitLab has not acknowledged yet) and its handle.
//! - [`protocol`], [`retry`], [`outcome`]: the wire rules, backoff and failure reasons.

pub mod client;
pub mod error;
mod fields;
pub mod outcome;
pub mod payload;
pub mod protocol;
pub mod retry;
pub mod session;
pub mod trace;
mod transfers;

pub use client::{ClientConfig, GitlabClient, JobRequest};
pub use error::GitlabError;
pub use outcome::{FailureReason, JobOutcome};
pub use payload::{GitlabFeatures, JobPayload, PayloadError, job_from_payload};
pub use protocol::RemoteStatus;
pub use retry::RetryPolicy;
pub use session::JobSession;
pub use trace::{TraceConfig, TraceSender};
