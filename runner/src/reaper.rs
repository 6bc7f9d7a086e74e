//! The orphan reaper: deletes job pods of this runner that no running job owns (a crash, a
//! lost delete). gitlab-runner has none and leaves them to a separate cleanup app. Pods carry
//! the runner's name and the job id in labels, so a runner only ever touches its own.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};

use crate::execute::delete_pod;
use crate::pod::{JOB_ID_LABEL, MANAGED_BY, MANAGED_BY_LABEL, RUNNER_LABEL, label_value};

/// The label selector for this runner's pods.
pub fn selector(runner_name: &str) -> String {
    format!(
        "{MANAGED_BY_LABEL}={MANAGED_BY},{RUNNER_LABEL}={}",
        label_value(runner_name)
    )
}

/// Pods among `pods` whose job is not in `active` (pure, for tests).
pub fn orphans(pods: &[Pod], active: &BTreeSet<u64>) -> Vec<String> {
    pods.iter()
        .filter(|p| {
            let job = p
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(JOB_ID_LABEL))
                .and_then(|id| id.parse::<u64>().ok());
            job.is_none_or(|id| !active.contains(&id))
        })
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name.clone())
        .collect()
}

/// Deletes this runner's orphaned pods in `namespace`; returns their names.
pub async fn reap(
    client: &Client,
    namespace: &str,
    runner_name: &str,
    active: &BTreeSet<u64>,
) -> Result<Vec<String>, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(&selector(runner_name)))
        .await?;
    let names = orphans(&list.items, active);
    for name in &names {
        delete_pod(&pods, name, 0).await;
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, job: Option<&str>) -> Pod {
        let mut labels = serde_json::Map::new();
        if let Some(j) = job {
            labels.insert(JOB_ID_LABEL.into(), j.into());
        }
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": labels}}))
            .unwrap()
    }

    #[test]
    fn only_pods_of_untracked_jobs_are_orphans() {
        let pods = vec![
            pod("a", Some("1")),
            pod("b", Some("2")),
            pod("c", None),
            pod("d", Some("x")),
        ];
        let active: BTreeSet<u64> = [1].into();
        assert_eq!(orphans(&pods, &active), vec!["b", "c", "d"]);
    }

    #[test]
    fn the_selector_names_this_runner_only() {
        assert_eq!(
            selector("prod runner#1"),
            "app.kubernetes.io/managed-by=keyhole-runner,keyhole.dev/runner=prod-runner-1"
        );
    }
}
