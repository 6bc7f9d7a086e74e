//! `keyhole-runner`: turns GitLab CI jobs into hardened Kubernetes pods whose secrets arrive
//! through the `keyhole-broker` sidecar, streams their logs back and cleans up.
//!
//! The library holds the pure core (job model, pod builder, config, script) so that tests and
//! the binary share it; Kubernetes and GitLab I/O sit in thin modules at the edges.

pub mod cache;
pub mod config;
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
