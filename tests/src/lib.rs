//! Fixtures for Keyhole's integration and end-to-end tests on the real test bed
//! (`scripts/testbed up`): kube-apiserver, etcd, kubelet, containerd and Vault on this machine.
//!
//! Every test connects through [`TestBed::connect`], works in its own [`TestNamespace`] and leaves
//! nothing behind. When the bed is not up, tests fail loudly with the command to run; they never
//! pass silently.

mod access;
mod bed;
pub mod bench;
mod broker_process;
mod cache_store;
pub mod chart;
pub mod coordinator;
mod eventually;
pub mod exposure;
mod fixture;
pub mod gitlab_ci;
pub mod gitlab_mode;
mod helm;
mod namespace;
mod outage;
pub mod output;
mod pods;
mod redis;
mod runner_process;
mod silent;
mod vault;

pub use access::{Access, service_account_may, wait_until_allowed};
pub use bed::{BedEnv, RedisEnv, RegistryEnv, TestBed};
pub use broker_process::{
    BrokerDirs, BrokerExit, BrokerJob, BrokerProcess, broker_binary, lease_of, runner_binary,
};
pub use cache_store::bed_cache_config;
pub use coordinator::{Coordinator, CoordinatorOptions};
pub use eventually::eventually;
pub use fixture::{
    JobNamespace, JobNamespaceBuilder, restricted_container_security, restricted_pod_security,
};
pub use helm::{
    HelmRelease, bed_command, bed_script, chart_dir, repo_dir, run, run_ok, with_bed_env,
};
pub use namespace::TestNamespace;
pub use outage::OutageProxy;
pub use pods::{pod_logs, run_pod_to_completion, wait_for_pod};
pub use redis::{Redis, Reply};
pub use runner_process::{RunnerLog, RunnerProcess};
pub use silent::SilentServer;
pub use vault::{
    AuditedCall, OwnVault, VaultAdmin, VaultRole, VaultRoleRemoved, audited_calls_of_namespace,
    free_port, id_token_claims, rfc3339_seconds,
};
