//! `keyhole-runner`: turns GitLab CI jobs into hardened Kubernetes pods whose secrets arrive
//! through the `keyhole-broker` sidecar, streams their logs back and cleans up.
//!
//! The library holds the pure core (job model, pod builder, config, script) so that tests and
//! the binary share it; Kubernetes and GitLab I/O sit in thin modules at the edges.
//!
//! # Layout
//!
//! From the model outwards; each line says what a module holds and which others it uses.
//! The pod contract shared with the broker (names, reference grammar, transfer plan) is the
//! `keyhole-contract` crate.
//!
//! * [`job`]: the job model, one [`job::Job`] whatever its origin. Uses `secrets` (GitLab's
//!   `secrets:` entries) and names what `gitlab`, `pipeline` and `pod` fill in.
//! * [`config`]: `config.toml` (gitlab-runner's shape plus `[runners.keyhole]`) and its
//!   `KEYHOLE_*` overrides. Uses `instance`.
//! * [`pipeline`]: a local `.gitlab-ci.yml` job → [`job::Job`], for `exec` and `render`. Uses
//!   `job`, `secrets`.
//! * [`gitlab`]: the Runner API client (register, long poll, trace, update, artifacts) and the
//!   `jobs/request` payload → [`job::Job`]. Uses `job`, `variables`.
//! * [`variables`]: the variables gitlab-runner adds and its expansion rules. Uses `config`,
//!   `job`, `pod` (names), `gitlab`, `prepare`.
//! * [`secrets`]: a job's secret references collected and checked, the Vault login fixed
//!   against the allow-list; GitLab's `secrets:` parsing. Uses `config`, `job`.
//! * [`registry_auth`]: registry credentials for the job's images. Uses `job`.
//! * [`cache`]: `cache:` keys and pre-signed URLs of the cache store. Uses `config`, `job`,
//!   `pod`, `variables`.
//! * [`script`]: the POSIX `sh` script the build container runs. Uses `job`.
//! * [`pod`]: job → pod, per-job Secret and their names (pure). Uses `cache`, `config`,
//!   `instance`, `job`, `registry_auth`, `script`, `secrets`, `variables`.
//! * [`prepare`]: job → everything needed to start it (variables, ServiceAccount, references,
//!   pod), before anything touches the cluster. Uses the modules above.
//! * [`instance`]: which runner process owns a job pod. Uses `pod`.
//! * [`execute`]: runs a prepared job on the cluster (create, follow the log, read the status,
//!   clean up). Uses `config`, `metrics`, `pod`.
//! * [`local`]: `keyhole-runner exec`. Uses `config`, `execute`, `job`, `prepare`.
//! * [`render`]: YAML output for `keyhole-runner render`.
//! * [`journal`], [`reaper`], [`metrics`]: what the service alone needs: the in-flight job
//!   journal, the orphan-pod reaper (uses `execute`, `instance`, `pod`), Prometheus metrics
//!   and health endpoints.
//! * [`connect`]: how the runner reaches GitLab and the cluster, the clients of a
//!   `[[runners]]` entry, shared by `service`, `verify` and `exec`. Uses `config`, `gitlab` and
//!   the service's error type.
//! * [`service`]: `keyhole-runner run`, the GitLab service. Uses `connect`, `gitlab`,
//!   `prepare`, `execute`, `journal`, `reaper`, `metrics`, `verify` and the model.
//! * [`verify`]: `keyhole-runner verify`, the post-deploy checks. Uses `config`, `connect`,
//!   `instance`, `pod`.

pub mod cache;
pub mod config;
pub mod connect;
pub mod execute;
pub mod gitlab;
pub mod instance;
pub mod job;
pub mod journal;
pub mod local;
pub mod metrics;
pub mod pipeline;
pub mod pod;
pub mod prepare;
pub mod reaper;
pub mod registry_auth;
pub mod render;
pub mod script;
pub mod secrets;
pub mod service;
pub mod variables;
pub mod verify;
