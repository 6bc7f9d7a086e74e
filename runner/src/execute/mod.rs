//! Running jobs on the cluster: pure status reading and the thin I/O loop around it.

mod run;
mod status;

pub use run::{Control, JobRun, TraceWriter, delete_pod, execute};
pub use status::{
    ContainerView, FailureKind, Outcome, PodView, broker_failure, observe, progress_line,
};
