//! The orphan reaper: deletes job pods that no running job owns (a crash, a lost delete).
//! gitlab-runner has none and leaves them to a separate cleanup app. Pods carry the runner
//! process's instance id, its runner's name and the job id in labels; a reaper deletes its own
//! instance's pods whose job it no longer runs, and another instance's only once that
//! instance's Lease has expired (see [`crate::instance`]), so replicas and the old and new pods
//! of a rolling update never delete each other's live jobs.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};

use crate::execute::delete_pod;
use crate::instance::INSTANCE_LABEL;
use crate::pod::{JOB_ID_LABEL, MANAGED_BY, MANAGED_BY_LABEL, RUNNER_LABEL};

/// A running job as the reaper knows it: its runner's name (as a label value) and its id.
pub type ActiveJob = (String, u64);

/// What the reaper must know to leave live jobs alone.
#[derive(Debug)]
pub struct Owners<'a> {
    /// This process's instance id.
    pub own_instance: &'a str,
    /// The jobs this process runs, taken after the pods were listed, so that a job whose pod
    /// was created meanwhile is never missed.
    pub active: &'a BTreeSet<ActiveJob>,
    /// Other instances whose Lease is alive.
    pub live_instances: &'a BTreeSet<String>,
}

/// Pods among `pods` that no live job owns (pure, for tests): this instance's whose job it does
/// not run, and those of an instance whose Lease is gone. Pods without an instance label (made
/// by `exec`, or by a runner older than instances) are left to their deadline and to the
/// ended-pod sweep.
pub fn orphans(pods: &[Pod], owners: &Owners<'_>) -> Vec<String> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            let labels = p.metadata.labels.as_ref();
            let label = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
            let Some(instance) = label(INSTANCE_LABEL) else {
                return false;
            };
            if instance != owners.own_instance {
                return !owners.live_instances.contains(instance);
            }
            let job = label(JOB_ID_LABEL).and_then(|id| id.parse::<u64>().ok());
            let runner = label(RUNNER_LABEL).unwrap_or_default().to_owned();
            job.is_none_or(|id| !owners.active.contains(&(runner, id)))
        })
        .filter_map(|p| p.metadata.name.clone())
        .collect()
}

/// How long a job pod may stay ended (phase `Succeeded` or `Failed`) before any runner of the
/// namespace deletes it, whichever runner made it. A live runner deletes its own pod as soon as
/// it has the log's end (well under this); a pod still there later ended without one (its
/// runner crashed, the deadline struck while no runner ran) and holds its per-job Secret (job
/// token, masked variables) in etcd for nothing.
pub const ENDED_GRACE: Duration = Duration::from_secs(30);

/// How often the runner looks for such pods: with [`ENDED_GRACE`], a per-job Secret outlives
/// its job by at most about 45 s.
pub const ENDED_SWEEP_INTERVAL: Duration = Duration::from_secs(15);

/// The label selector for every runner-made pod of the namespace.
pub fn any_runner_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY}")
}

/// When a pod ended, in seconds since the epoch: the last container to finish (init
/// containers included), else the last condition change. `None` while it has not ended.
fn ended_at(pod: &Pod) -> Option<i64> {
    let status = pod.status.as_ref()?;
    if !matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let finished = status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0.as_second())
        .max();
    let changed = || {
        status
            .conditions
            .iter()
            .flatten()
            .filter_map(|c| c.last_transition_time.as_ref())
            .map(|t| t.0.as_second())
            .max()
    };
    finished.or_else(changed)
}

/// Pods among `pods` that ended more than `grace` before `now` (seconds since the epoch) and
/// are not being deleted already (pure, for tests).
pub fn long_ended(pods: &[Pod], now: i64, grace: Duration) -> Vec<String> {
    let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| ended_at(p).is_some_and(|at| now.saturating_sub(at) > grace))
        .filter_map(|p| p.metadata.name.clone())
        .collect()
}

/// Deletes runner-made pods of `namespace`, any runner's, that ended more than
/// [`ENDED_GRACE`] ago; their per-job Secrets go with them (owner reference). Returns their
/// names.
pub async fn reap_ended(client: &Client, namespace: &str) -> Result<Vec<String>, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(&any_runner_selector()))
        .await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let names = long_ended(&list.items, now, ENDED_GRACE);
    for name in &names {
        delete_pod(&pods, name, 0).await;
    }
    Ok(names)
}

/// Deletes the orphaned job pods of `namespace` (see [`orphans`]); returns their names.
/// `active` is asked for this process's running jobs after the pods are listed.
pub async fn reap(
    client: &Client,
    namespace: &str,
    own_instance: &str,
    active: impl FnOnce() -> BTreeSet<ActiveJob>,
) -> Result<Vec<String>, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(&any_runner_selector()))
        .await?;
    let live_instances = crate::instance::live_instances(client, namespace).await?;
    let active = active();
    let owners = Owners {
        own_instance,
        active: &active,
        live_instances: &live_instances,
    };
    let names = orphans(&list.items, &owners);
    for name in &names {
        delete_pod(&pods, name, 0).await;
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, instance: Option<&str>, runner: &str, job: Option<&str>) -> Pod {
        let mut labels = serde_json::Map::new();
        labels.insert(RUNNER_LABEL.into(), runner.into());
        if let Some(i) = instance {
            labels.insert(INSTANCE_LABEL.into(), i.into());
        }
        if let Some(j) = job {
            labels.insert(JOB_ID_LABEL.into(), j.into());
        }
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": labels}}))
            .unwrap()
    }

    #[test]
    fn own_pods_of_untracked_jobs_and_pods_of_dead_instances_are_orphans() {
        let me = Some("me");
        let pods = vec![
            pod("running", me, "r1", Some("1")),
            pod("finished", me, "r1", Some("2")),
            pod("no-job-label", me, "r1", None),
            pod("bad-job-label", me, "r1", Some("x")),
            pod("same-id-other-runner", me, "r2", Some("1")),
            pod("live-replica", Some("other"), "r1", Some("7")),
            pod("dead-replica", Some("gone"), "r1", Some("8")),
            pod("exec-or-older", None, "r1", Some("9")),
        ];
        let active: BTreeSet<ActiveJob> = [("r1".to_string(), 1)].into();
        let live: BTreeSet<String> = ["other".to_string()].into();
        let owners = Owners {
            own_instance: "me",
            active: &active,
            live_instances: &live,
        };
        assert_eq!(
            orphans(&pods, &owners),
            [
                "finished",
                "no-job-label",
                "bad-job-label",
                "same-id-other-runner",
                "dead-replica"
            ]
        );
    }

    fn ended(name: &str, phase: &str, finished_at: Option<&str>) -> Pod {
        let state = match finished_at {
            Some(t) => serde_json::json!({"terminated": {"exitCode": 0, "finishedAt": t}}),
            None => serde_json::json!({"running": {}}),
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"phase": phase, "containerStatuses": [{"name": "build", "image": "i",
                "imageID": "", "ready": false, "restartCount": 0, "state": state}]}
        }))
        .unwrap()
    }

    #[test]
    fn only_pods_ended_longer_than_the_grace_are_reaped_whoever_made_them() {
        // 2026-12-03T10:00:00Z
        let now = 1_796_292_000;
        let pods = vec![
            ended("old-failed", "Failed", Some("2026-12-03T09:59:00Z")),
            ended("old-succeeded", "Succeeded", Some("2026-12-03T09:58:00Z")),
            ended("just-ended", "Failed", Some("2026-12-03T09:59:50Z")),
            ended("running", "Running", None),
            ended("pending", "Pending", None),
        ];
        assert_eq!(
            long_ended(&pods, now, Duration::from_secs(30)),
            vec!["old-failed", "old-succeeded"]
        );
        let mut deleting = ended("deleting", "Failed", Some("2026-12-03T09:00:00Z"));
        deleting.metadata.deletion_timestamp = deleting
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| {
                c[0].state
                    .as_ref()?
                    .terminated
                    .as_ref()?
                    .finished_at
                    .clone()
            });
        assert!(long_ended(&[deleting], now, Duration::from_secs(30)).is_empty());
    }
}
