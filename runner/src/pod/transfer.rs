//! The job's transfer containers: `keyhole-fetch` (an init container after the checkout:
//! downloads the dependencies' artifacts) and `keyhole-store` (beside the build container:
//! waits for the script's end, uploads the artifacts). Both run `keyhole-broker transfer` from
//! the broker's image (already on the node) as the build container's user, so the job owns
//! what they extract and they can read what the job wrote. They mount the project directory,
//! the log pipe, a scratch directory of their own and their plan (job token included), and
//! nothing of the broker's: no secrets volume, no inputs, no ServiceAccount token.

use k8s_openapi::ByteString;
use keyhole_contract as contract;
use keyhole_contract::transfer::{
    CachePlan, FETCH_CONTAINER, PLAN_DIR, PLAN_FILE, PLAN_SECRET_KEY, Plan, SCRATCH_DIR,
    STORE_CONTAINER,
};
use serde_json::{Value, json};

use super::error::PodError;
use crate::config::RunnerConfig;
use crate::job::Job;

/// The plan's volume: the plan key of the per-job Secret, nothing else of it.
const PLAN_VOLUME: &str = "keyhole-transfer-plan";
/// Scratch space for archives on their way (on disk, never in memory).
const SCRATCH_VOLUME: &str = "keyhole-transfer-scratch";

/// What the transfers add to a job pod.
pub(super) struct TransferParts {
    pub fetch: Option<Value>,
    pub store: Option<Value>,
    pub volumes: Vec<Value>,
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
    security_context: &Value,
) -> TransferParts {
    let container = |name: &str, verb: &str| {
        let mut context = security_context.clone();
        context["readOnlyRootFilesystem"] = json!(true);
        json!({
            "name": name,
            "image": runner.keyhole.broker_image,
            "args": ["transfer", verb],
            "securityContext": context,
            "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}},
            "volumeMounts": [
                {"name": PLAN_VOLUME, "mountPath": PLAN_DIR, "readOnly": true},
                {"name": SCRATCH_VOLUME, "mountPath": SCRATCH_DIR},
                {"name": contract::RUNTIME_VOLUME, "mountPath": contract::RUNTIME_DIR},
                {"name": "builds", "mountPath": builds_root}
            ]
        })
    };
    TransferParts {
        fetch: plan.fetches().then(|| container(FETCH_CONTAINER, "fetch")),
        store: plan.stores().then(|| container(STORE_CONTAINER, "store")),
        volumes: vec![
            json!({"name": PLAN_VOLUME, "secret": {"secretName": pod_name, "defaultMode": 0o440,
                "items": [{"key": PLAN_SECRET_KEY, "path": PLAN_FILE}]}}),
            json!({"name": SCRATCH_VOLUME, "emptyDir": {}}),
        ],
    }
}
