//! Every `KEYHOLE_*` environment variable name, so that the side that writes one and the side
//! that reads it spell it the same way.
//!
//! The constants at this level are the broker's settings: the runner sets them on the broker
//! container of each job pod (`runner/src/pod/broker.rs`) and `keyhole-broker run` reads them
//! (`broker/src/main.rs`, with a flag of the same name in lower case for each). [`runner`]
//! holds the runner's own settings, which a Deployment sets. The job variables carrying
//! Keyhole references start with [`crate::reference::KEYHOLE_VARIABLE_PREFIX`].
//!
//! Two names are not here because the compiler needs them as literals: `KEYHOLE_COMMIT` (set by
//! `runner/build.rs`, read with `env!`) and `KEYHOLE_REVISION` (set by whoever builds a
//! release, read with `option_env!`).

/// Where the broker reads its inputs ([`crate::INPUTS_DIR`] by default).
pub const INPUTS_DIR: &str = "KEYHOLE_INPUTS_DIR";
/// Where the broker writes secrets ([`crate::SECRETS_DIR`] by default); also read by
/// `keyhole-broker ready`.
pub const SECRETS_DIR: &str = "KEYHOLE_SECRETS_DIR";
/// The log pipe and the script's status file ([`crate::RUNTIME_DIR`] by default).
pub const RUNTIME_DIR: &str = "KEYHOLE_RUNTIME_DIR";
/// The transfer containers' plan ([`crate::transfer::PLAN_PATH`] by default).
pub const TRANSFER_PLAN: &str = "KEYHOLE_TRANSFER_PLAN";
/// The transfer containers' scratch space ([`crate::transfer::SCRATCH_DIR`] by default).
pub const SCRATCH_DIR: &str = "KEYHOLE_SCRATCH_DIR";

/// Vault's address; without it `vault:` references fail with a clear message.
pub const VAULT_ADDR: &str = "KEYHOLE_VAULT_ADDR";
/// Comma-separated Vault addresses the broker may send a token to.
pub const VAULT_ALLOWED: &str = "KEYHOLE_VAULT_ALLOWED";
/// The Vault Enterprise namespace.
pub const VAULT_NAMESPACE: &str = "KEYHOLE_VAULT_NAMESPACE";
/// The PEM bundle that signs Vault's certificate ([`crate::INPUT_VAULT_CA`] in the inputs).
pub const VAULT_CA_FILE: &str = "KEYHOLE_VAULT_CA_FILE";
/// Mount path of the Vault auth method.
pub const VAULT_AUTH_MOUNT: &str = "KEYHOLE_VAULT_AUTH_MOUNT";
/// `kubernetes` (the pod's ServiceAccount token) or `jwt` (the job's GitLab ID token).
pub const VAULT_AUTH_METHOD: &str = "KEYHOLE_VAULT_AUTH_METHOD";
/// With `jwt`: the per-job Secret key holding the ID token.
pub const VAULT_JWT_INPUT: &str = "KEYHOLE_VAULT_JWT_INPUT";
/// The Vault role the job logs in as.
pub const VAULT_ROLE: &str = "KEYHOLE_VAULT_ROLE";
/// Seconds to keep retrying an unreachable Vault.
pub const VAULT_DEADLINE: &str = "KEYHOLE_VAULT_DEADLINE";

/// The Kubernetes API URL, as pods reach it, for `k8s:` references.
pub const KUBE_API: &str = "KEYHOLE_KUBE_API";
/// The CA bundle of [`KUBE_API`].
pub const KUBE_CA_FILE: &str = "KEYHOLE_KUBE_CA_FILE";
/// The job's namespace, where `k8s:` references are read.
pub const NAMESPACE: &str = "KEYHOLE_NAMESPACE";

/// Owner uid of the delivered files.
pub const FILE_UID: &str = "KEYHOLE_FILE_UID";
/// Group of the delivered files; makes them 0440 instead of 0400.
pub const FILE_GID: &str = "KEYHOLE_FILE_GID";
/// Allows writing secrets to a disk-backed directory (tests only).
pub const ALLOW_DISK: &str = "KEYHOLE_ALLOW_DISK";
/// How many references the broker resolves at once.
pub const CONCURRENCY: &str = "KEYHOLE_CONCURRENCY";

/// Job output passed to the log, in KiB (the runner's `output_limit`).
pub const LOG_LIMIT_KIB: &str = "KEYHOLE_LOG_LIMIT_KIB";
/// The pace of job output past the burst, in KiB/s.
pub const LOG_RATE_KIB: &str = "KEYHOLE_LOG_RATE_KIB";
/// Job output passed at once before the pace applies, in KiB.
pub const LOG_BURST_KIB: &str = "KEYHOLE_LOG_BURST_KIB";

/// The services to wait for: [`crate::encode_service_waits`]'s text.
pub const WAIT_FOR_SERVICES: &str = "KEYHOLE_WAIT_FOR_SERVICES";
/// Seconds the broker waits for services before the job starts anyway.
pub const WAIT_FOR_SERVICES_TIMEOUT: &str = "KEYHOLE_WAIT_FOR_SERVICES_TIMEOUT";
/// The preparation steps to wait for (the broker before opening the gate, a step before it
/// starts): [`crate::encode_steps`]'s text.
pub const WAIT_FOR_STEPS: &str = "KEYHOLE_WAIT_FOR_STEPS";
/// Seconds the broker keeps relaying after its SIGTERM (a canceled job) while the script,
/// already past its gate, runs `after_script` and says it is done: the pod's grace period
/// less the revocation's 10 s and a margin. The kubelet stops every container of the pod at
/// once. 0: stop at the SIGTERM.
pub const CANCEL_WAIT: &str = "KEYHOLE_CANCEL_WAIT_SECONDS";

/// The runner's own settings: overrides of its config file for the first `[[runners]]`
/// entry, so a Deployment can keep the token in a Secret and the rest in a ConfigMap
/// (`runner/src/config/load.rs`).
pub mod runner {
    /// The config file.
    pub const CONFIG: &str = "KEYHOLE_CONFIG";
    /// The runner instance's name (which jobs and pods it owns).
    pub const INSTANCE: &str = "KEYHOLE_INSTANCE";
    /// The runner authentication token.
    pub const RUNNER_TOKEN: &str = "KEYHOLE_RUNNER_TOKEN";
    /// The GitLab URL.
    pub const RUNNER_URL: &str = "KEYHOLE_RUNNER_URL";
    /// The namespace of job pods (the same name the broker reads, see [`super::NAMESPACE`]).
    pub const NAMESPACE: &str = super::NAMESPACE;
    /// The broker image.
    pub const BROKER_IMAGE: &str = "KEYHOLE_BROKER_IMAGE";
    /// Vault's address (the same name the broker reads, see [`super::VAULT_ADDR`]).
    pub const VAULT_ADDR: &str = super::VAULT_ADDR;
}
