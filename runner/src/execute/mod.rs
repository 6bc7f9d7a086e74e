//! Running jobs on the cluster: pure status reading and the thin I/O loop around it.

mod events;
mod follow;
mod log_end;
mod pod_watch;
mod retry;
mod run;
mod status;
mod trace;

pub use events::image_line;
pub use pod_watch::PodWatch;
pub use retry::{ApiRetry, is_transient, with_retry};
pub use run::{Control, JobRun, delete_pod, execute, execute_timed};
pub use status::{
    ContainerView, FailureKind, Outcome, PodView, ServiceStop, broker_failure, observe,
    progress_line, service_stop_warning, verdict,
};
pub use trace::{Level, TraceChunk, TraceWriter};
