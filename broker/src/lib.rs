//! `keyhole-broker`: the sidecar in every job pod that resolves the job's secret references
//! (Kubernetes Secrets, HashiCorp Vault), delivers them as files on a memory-backed volume,
//! masks them out of the job log and revokes and wipes them when the job ends.

pub mod blame;
pub mod contract;
pub mod delivery;
pub mod inputs;
pub mod job_vars;
pub mod kube_secrets;
pub mod leases;
pub mod log_budget;
pub mod mask;
pub mod pump;
pub mod reference;
pub mod resolve;
pub mod run;
pub mod services;
pub mod termination;
pub mod transfer;
pub mod vault;
