//! The job's transfer containers: `keyhole-fetch` (starts with the build container and, once
//! the checkout is done, downloads the dependencies' artifacts) and `keyhole-store` (beside the build container:
//! waits for the script's end, uploads the artifacts). Both run `keyhole-broker transfer` from
//! the broker's image (already on the node) as the build container's user, so the job owns
//! what they extract and they can read what the job wrote. They mount the project directory,
//! the log pipe, a scratch directory of their own and their plan (job token included), and
//! nothing of the broker's: no secrets volume, no inputs, no ServiceAccount token.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Container, SecretVolumeSource, SecurityContext, Volume};
use keyhole_contract as contract;
use keyhole_contract::transfer::{
    CachePlan, FETCH_CONTAINER, PLAN_DIR, PLAN_FILE, PLAN_SECRET_KEY, Plan, SCRATCH_DIR,
    STORE_CONTAINER,
};

use super::error::PodError;
use super::parts::{empty_dir, key_to_path, mount, read_only_mount};
use super::resources::resources;
use crate::config::RunnerConfig;
use crate::job::Job;

/// The plan's volume: the plan key of the per-job Secret, nothing else of it.
const PLAN_VOLUME: &str = "keyhole-transfer-plan";
/// Scratch space for archives on their way (on disk, never in memory).
const SCRATCH_VOLUME: &str = "keyhole-transfer-scratch";

/// What the transfers add to a job pod.
pub(super) struct TransferParts {
    pub fetch: Option<Container>,
    pub store: Option<Container>,
    pub volumes: Vec<Volume>,
}

/// What the job's transfer containers do; `None` when it moves no files.
pub(super) fn plan(
    job: &Job,
    runner: &RunnerConfig,
    project_dir: &str,
    caches: &[CachePlan],
) -> Result<Option<Plan>, PodError> {
    let t = &job.transfers;
    if t.dependencies.is_empty() && t.artifacts.is_empty() && caches.is_empty() {
        return Ok(None);
    }
    let Some(token) = job.token.clone() else {
        return Err(PodError::TransferWithoutToken);
    };
    let plan = Plan {
        gitlab_url: runner.url.trim_end_matches('/').to_owned(),
        job_id: job.id,
        job_token: token,
        project_dir: project_dir.to_owned(),
        dependencies: t.dependencies.clone(),
        artifacts: t.artifacts.clone(),
        compression: job
            .public_variable("ARTIFACT_COMPRESSION_LEVEL")
            .map(str::to_owned),
        caches: caches.to_vec(),
        cache_compression: job
            .public_variable("CACHE_COMPRESSION_LEVEL")
            .map(str::to_owned),
    };
    Ok((plan.fetches() || plan.stores()).then_some(plan))
}

/// The plan as it goes into the per-job Secret.
pub(super) fn plan_secret(plan: &Plan) -> Result<(String, ByteString), PodError> {
    let json = serde_json::to_vec(plan).map_err(|e| PodError::TransferPlan(e.to_string()))?;
    Ok((PLAN_SECRET_KEY.to_owned(), ByteString(json)))
}

/// The containers and volumes, for a job whose plan is in its Secret.
pub(super) fn transfer_parts(
    plan: &Plan,
    runner: &RunnerConfig,
    pod_name: &str,
    builds_root: &str,
    security_context: &SecurityContext,
) -> TransferParts {
    let container = |name: &str, verb: &str| Container {
        name: name.into(),
        image: Some(runner.keyhole.broker_image.clone()),
        args: Some(vec!["transfer".into(), verb.into()]),
        security_context: Some(SecurityContext {
            read_only_root_filesystem: Some(true),
            ..security_context.clone()
        }),
        resources: Some(resources(&[
            ("requests.cpu", Some("50m".into())),
            ("requests.memory", Some("32Mi".into())),
            ("limits.memory", Some("256Mi".into())),
        ])),
        volume_mounts: Some(vec![
            read_only_mount(PLAN_VOLUME, PLAN_DIR),
            mount(SCRATCH_VOLUME, SCRATCH_DIR),
            mount(contract::RUNTIME_VOLUME, contract::RUNTIME_DIR),
            mount("builds", builds_root),
        ]),
        ..Default::default()
    };
    TransferParts {
        fetch: plan.fetches().then(|| container(FETCH_CONTAINER, "fetch")),
        store: plan.stores().then(|| container(STORE_CONTAINER, "store")),
        volumes: vec![plan_volume(pod_name), empty_dir(SCRATCH_VOLUME, None)],
    }
}

/// The plan's volume ([`PLAN_VOLUME`]), its file mode `0440`.
fn plan_volume(pod_name: &str) -> Volume {
    Volume {
        name: PLAN_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(pod_name.into()),
            default_mode: Some(0o440),
            items: Some(vec![key_to_path(PLAN_SECRET_KEY, PLAN_FILE)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}
