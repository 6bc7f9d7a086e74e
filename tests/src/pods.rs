use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{LogParams, PostParams};
use kube::runtime::wait::await_condition;

/// Upper bound for a pod to finish in tests; a deadline against hangs, not a speed assertion.
const POD_DEADLINE: Duration = Duration::from_secs(180);

fn finished(pod: Option<&Pod>) -> bool {
    matches!(
        pod.and_then(|p| p.status.as_ref())
            .and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Waits (by watch) until `cond` holds for the pod, failing with the pod's status on timeout.
pub async fn wait_for_pod(
    api: &Api<Pod>,
    name: &str,
    cond: impl Fn(Option<&Pod>) -> bool,
) -> Result<Pod> {
    let waited = tokio::time::timeout(POD_DEADLINE, await_condition(api.clone(), name, cond)).await;
    match waited {
        Ok(Ok(Some(pod))) => Ok(pod),
        Ok(Ok(None)) => bail!("pod {name} was deleted while waiting"),
        Ok(Err(e)) => Err(e).context("watching pod"),
        Err(_) => {
            let status = api.get(name).await.ok().and_then(|p| p.status);
            bail!(
                "pod {name} did not reach the expected state in {POD_DEADLINE:?}; status: {status:#?}"
            )
        }
    }
}

/// Creates the pod and waits until it has succeeded or failed.
pub async fn run_pod_to_completion(api: &Api<Pod>, pod: &Pod) -> Result<Pod> {
    let created = api.create(&PostParams::default(), pod).await?;
    let name = created.metadata.name.context("created pod has no name")?;
    wait_for_pod(api, &name, finished).await
}

/// The whole log of one container, read back through the apiserver.
pub async fn pod_logs(api: &Api<Pod>, name: &str, container: &str) -> Result<String> {
    Ok(api
        .logs(
            name,
            &LogParams {
                container: Some(container.to_owned()),
                ..LogParams::default()
            },
        )
        .await?)
}
