//! `keyhole-broker`: the sidecar in every job pod that resolves the job's secret references
//! (Kubernetes Secrets, HashiCorp Vault), delivers them as files on a memory-backed volume,
//! masks them out of the job log and revokes and wipes them when the job ends.

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
pub mod termination;
pub mod transfer;
pub mod vault;

/// The pod contract, shared with the runner. Re-exported under its old path for the code that
/// still names it so (`runner/src/execute`); new code names `keyhole_contract`.
pub use keyhole_contract as contract;
