//! Job → Kubernetes objects (pure) and their names.

mod broker;
mod build;
mod checkout;
mod containers;
mod env;
mod error;
mod metadata;
mod parts;
mod quantity;
mod resources;
mod transfer;

pub use build::{
    AFTER_SCRIPT_TIMEOUT, DEFAULT_JOB_TIMEOUT, JobObjects, PULL_SECRET_SUFFIX, PodRequest,
    build_job_objects, pull_secret_name,
};
pub use checkout::{CHECKOUT_CONTAINER, CHECKOUT_VOLUME};
pub use containers::image_allowed;
pub use error::PodError;
pub use metadata::{JOB_ID_LABEL, MANAGED_BY, MANAGED_BY_LABEL, RUNNER_LABEL, label_value};
pub use quantity::{QuantityError, parse_quantity, resolve_override};

/// Every name [`pod_name`] gives with a [`random_suffix`], as a regular expression. The chart's
/// admission policies reserve these names (`keyhole.jobNamePattern`, which a deploy test keeps
/// equal to this): the runner may create pods and Secrets of no other name, and nobody else
/// Secrets of such a name, so that the Secret named like a runner-made pod is always its own.
pub const POD_NAME_PATTERN: &str = "^kh-[0-9]+-[a-z0-9]{6}$";

/// Every name [`pull_secret_name`] gives a [`pod_name`]; the chart reserves these too
/// (`keyhole.pullSecretNamePattern`).
pub const PULL_SECRET_NAME_PATTERN: &str = "^kh-[0-9]+-[a-z0-9]{6}-registry$";

/// `kh-<job id>-<suffix>`: unique per attempt, and the name the per-job Secret shares.
pub fn pod_name(job_id: u64, suffix: &str) -> String {
    format!("kh-{job_id}-{suffix}")
}

/// A fresh log-end token for [`PodRequest::log_end_token`]: 32 hex digits. It need not be
/// unguessable: the job cannot print it unmasked, as the broker masks every value of the
/// per-job Secret; random so that no job output matches it by chance.
pub fn log_end_token() -> secrecy::SecretString {
    format!("{:032x}", fastrand::u128(..)).into()
}

/// Six random `[a-z0-9]` characters for [`pod_name`].
pub fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::with_capacity(6);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    let mut n = h.finish();
    for _ in 0..6 {
        let d = (n % 36) as u8;
        out.push(if d < 10 {
            (b'0' + d) as char
        } else {
            (b'a' + d - 10) as char
        });
        n /= 36;
    }
    out
}

pub mod samples;
#[cfg(test)]
mod tests;
