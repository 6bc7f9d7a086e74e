//! `keyhole-broker`: the sidecar in every job pod that resolves the job's secret references
//! (Kubernetes Secrets, HashiCorp Vault), delivers them as files on a memory-backed volume,
//! masks them out of the job log and revokes and wipes them when the job ends.
//!
//! # Layout
//!
//! Leaves first; each line says what a module holds and which others it uses. The pod
//! contract shared with the runner (names, reference grammar, transfer plan, exit codes) is
//! the `keyhole-contract` crate, which the runner depends on instead of this one.
//!
//! * [`blame`]: whose fix a failure needs; picks the exit code.
//! * [`termination`]: SIGTERM and SIGINT, from the first instruction to the last.
//! * [`log_budget`]: the job log's size limit and pace.
//! * [`mask`]: masking secret values (and their encoded forms) out of the job log.
//! * [`inputs`]: the projected inputs (annotations, per-job Secret keys) → references.
//! * [`delivery`]: files on the memory-backed volume and the env file, all or nothing, wiped
//!   at the end.
//! * [`job_vars`]: job variables from the per-job Secret. Uses `delivery`.
//! * [`vault`]: the Vault client (login, reads, renewal, revocation, retries). Uses `blame`.
//! * [`leases`]: the Vault session for the life of the job: renews leases, revokes them and
//!   the token. Uses `vault`.
//! * [`kube_secrets`]: `k8s:` references, read with the job ServiceAccount's token. Uses
//!   `blame`.
//! * [`resolve`]: every reference of a job, concurrently and all or nothing. Uses `blame`,
//!   `delivery`, `kube_secrets`, `leases`, `termination`, `vault`.
//! * [`pump`]: the log FIFO → mask → stdout. Uses `log_budget`, `mask`.
//! * [`services`]: waits for the job's services before the script starts. Uses `pump`,
//!   `termination`.
//! * [`steps`]: the preparation steps' markers (checkout, artifacts' download).
//! * [`run`]: `keyhole-broker run`, the I/O edge that ties the above together.
//! * [`transfer`]: `keyhole-broker transfer`, artifacts and caches in their own containers;
//!   uses nothing else here.

pub mod blame;
pub mod delivery;
pub mod inputs;
pub mod job_vars;
pub mod kube_secrets;
pub mod leases;
pub mod log_budget;
pub mod mask;
pub mod pump;
pub mod resolve;
pub mod run;
pub mod services;
pub mod steps;
pub mod termination;
pub mod transfer;
pub mod vault;
