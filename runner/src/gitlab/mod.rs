//! The GitLab side: the Runner API client and the job payload.
//!
//! - [`payload`]: the `jobs/request` body turned into a [`crate::job::Job`] (pure).
//! - [`client`]: verify the runner and long-poll for jobs; opens a [`JobSession`] per job.
//! - [`session`]: one job's state updates and trace ([`TraceSender`]), with the retries GitLab
//!   needs.
//! - `http`: the connection pool, [`ClientConfig`], token headers and the retry loop, shared
//!   by the client and the sessions.
//! - [`trace`]: the trace buffer, what GitLab has not acknowledged yet (pure).
//! - `fields`, `transfers`: typed reads of the payload's JSON and its artifacts and caches.
//! - [`error`]: [`GitlabError`] and [`PayloadError`].
//! - [`protocol`], [`retry`], [`outcome`]: the wire rules, backoff and failure reasons.
//!
//! Each file depends one way: `client` → `session` → `http` → `trace`, `retry`, `protocol`,
//! `error`; `payload` → `transfers` → `fields` → `error`.

pub mod client;
pub mod error;
mod fields;
mod http;
pub mod outcome;
pub mod payload;
pub mod protocol;
pub mod retry;
pub mod session;
pub mod trace;
mod transfers;

pub use client::{GitlabClient, JobRequest};
pub use error::{GitlabError, PayloadError};
pub use http::ClientConfig;
pub use outcome::{FailureReason, JobOutcome};
pub use payload::{GitlabFeatures, JobPayload, job_from_payload};
pub use protocol::RemoteStatus;
pub use retry::RetryPolicy;
pub use session::{JobSession, TraceSender};
pub use trace::TraceConfig;
