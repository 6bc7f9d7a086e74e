//! Requests and limits of the pod's containers: the runner's settings, with the job's capped
//! overrides for the build container (`KUBERNETES_CPU_REQUEST` and friends).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::error::PodError;
use super::quantity::resolve_override;
use crate::config::KubernetesConfig;
use crate::job::Job;

/// `resources` from `("requests.cpu", Some("100m"))`-style pairs; unset ones are left out.
pub(super) fn resources(pairs: &[(&str, Option<String>)]) -> ResourceRequirements {
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    for (key, value) in pairs {
        if let Some(v) = value {
            let (kind, resource) = key.split_once('.').unwrap_or(("requests", key));
            let target = if kind == "limits" {
                &mut limits
            } else {
                &mut requests
            };
            target.insert(resource.to_string(), Quantity(v.clone()));
        }
    }
    ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..Default::default()
    }
}

/// The build container's: configured values, overridden by the job's variables up to the
/// runner's `*_overwrite_max_allowed`.
pub(super) fn build_resources(
    k: &KubernetesConfig,
    job: &Job,
) -> Result<ResourceRequirements, PodError> {
    let over = |key: &str, configured: &Option<String>, max: &Option<String>| {
        resolve_override(
            key,
            configured.as_deref(),
            max.as_deref(),
            job.public_variable(key),
        )
        .map_err(PodError::from)
    };
    Ok(resources(&[
        (
            "requests.cpu",
            over(
                "KUBERNETES_CPU_REQUEST",
                &k.cpu_request,
                &k.cpu_request_overwrite_max_allowed,
            )?,
        ),
        (
            "limits.cpu",
            over(
                "KUBERNETES_CPU_LIMIT",
                &k.cpu_limit,
                &k.cpu_limit_overwrite_max_allowed,
            )?,
        ),
        (
            "requests.memory",
            over(
                "KUBERNETES_MEMORY_REQUEST",
                &k.memory_request,
                &k.memory_request_overwrite_max_allowed,
            )?,
        ),
        (
            "limits.memory",
            over(
                "KUBERNETES_MEMORY_LIMIT",
                &k.memory_limit,
                &k.memory_limit_overwrite_max_allowed,
            )?,
        ),
        (
            "requests.ephemeral-storage",
            k.ephemeral_storage_request.clone(),
        ),
        (
            "limits.ephemeral-storage",
            k.ephemeral_storage_limit.clone(),
        ),
    ]))
}

/// The broker's (`helper_*` settings): small defaults, as it only moves secrets and the log.
pub(super) fn broker_resources(k: &KubernetesConfig) -> ResourceRequirements {
    resources(&[
        (
            "requests.cpu",
            k.helper_cpu_request.clone().or(Some("10m".into())),
        ),
        ("limits.cpu", k.helper_cpu_limit.clone()),
        (
            "requests.memory",
            k.helper_memory_request.clone().or(Some("16Mi".into())),
        ),
        (
            "limits.memory",
            k.helper_memory_limit.clone().or(Some("64Mi".into())),
        ),
    ])
}

/// Each service container's (`service_*` settings).
pub(super) fn service_resources(k: &KubernetesConfig) -> ResourceRequirements {
    resources(&[
        ("requests.cpu", k.service_cpu_request.clone()),
        ("limits.cpu", k.service_cpu_limit.clone()),
        ("requests.memory", k.service_memory_request.clone()),
        ("limits.memory", k.service_memory_limit.clone()),
    ])
}
