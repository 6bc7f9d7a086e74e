//! Which runner process owns a job pod, and whether that process is still alive.
//!
//! Replicas of a Deployment, and the old and new pods of a rolling update, share the runner's
//! name. Owning job pods by name let a new pod reap the jobs an old one was still draining.
//! Instead each process has an instance id (its pod's UID, from the downward API, else a random
//! one) that labels its job pods, and keeps a `coordination.k8s.io` Lease of that name renewed
//! in each jobs namespace it uses. A reaper deletes another instance's pods only once that
//! instance's Lease has expired, and its own only when no job of its own runs in them.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};

use crate::pod::{MANAGED_BY, MANAGED_BY_LABEL};

/// Label on a service-run job pod: the id of the runner process that made it.
pub const INSTANCE_LABEL: &str = "keyhole.dev/instance";

/// How long an instance's Lease lasts without renewal; it is renewed every third of that.
pub const LEASE_DURATION: Duration = Duration::from_secs(30);

/// A process's instance id: `KEYHOLE_INSTANCE` if set (the chart sets the pod's UID), else 32
/// random hex digits. Always a valid label value and Lease name part.
pub fn instance_id(given: Option<&str>) -> String {
    given
        .map(crate::pod::label_value)
        .filter(|id| !id.is_empty())
        .map(|id| id.to_ascii_lowercase().replace(['_', '.'], "-"))
        .unwrap_or_else(|| format!("{:032x}", fastrand::u128(..)))
}

/// The Lease that says instance `id` is alive.
pub fn lease_name(id: &str) -> String {
    format!("keyhole-runner-{id}")
}

/// The instance a Lease speaks for, if it is one of the runner's.
fn lease_instance(lease: &Lease) -> Option<&str> {
    lease.spec.as_ref()?.holder_identity.as_deref()
}

/// Whether a Lease was renewed within its duration before `now` (seconds since the epoch).
pub fn lease_alive(lease: &Lease, now: i64) -> bool {
    let Some(spec) = lease.spec.as_ref() else {
        return false;
    };
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0.as_second());
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0));
    renewed.is_some_and(|at| now < at.saturating_add(duration))
}

fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The instances whose Lease in `namespace` is alive.
pub async fn live_instances(
    client: &Client,
    namespace: &str,
) -> Result<BTreeSet<String>, kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY}");
    let now = now_seconds();
    Ok(leases
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .iter()
        .filter(|l| lease_alive(l, now))
        .filter_map(|l| lease_instance(l).map(str::to_owned))
        .collect())
}

/// The Lease object for instance `id`, renewed now.
fn lease(id: &str) -> Lease {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": lease_name(id), "labels": {MANAGED_BY_LABEL: MANAGED_BY}},
        "spec": {
            "holderIdentity": id,
            "leaseDurationSeconds": LEASE_DURATION.as_secs(),
        }
    }))
    .map(|mut l: Lease| {
        if let Some(spec) = l.spec.as_mut() {
            spec.renew_time = Some(now.clone());
            spec.acquire_time = Some(now);
        }
        l
    })
    .unwrap_or_default()
}

/// Creates or renews instance `id`'s Lease in `namespace` once.
pub async fn renew(client: &Client, namespace: &str, id: &str) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let mut fresh = lease(id);
    match leases.get_opt(&lease_name(id)).await? {
        None => leases
            .create(&PostParams::default(), &fresh)
            .await
            .map(drop),
        Some(old) => {
            fresh.metadata.resource_version = old.metadata.resource_version;
            leases
                .replace(&lease_name(id), &PostParams::default(), &fresh)
                .await
                .map(drop)
        }
    }
}

/// Renews instance `id`'s Lease in `namespace` every third of [`LEASE_DURATION`], for ever
/// (the caller aborts it). A failed renewal is logged and tried again at the next tick; the
/// Lease outlives a few of them.
pub async fn keep_alive(client: Client, namespace: String, id: String) {
    let mut tick = tokio::time::interval(LEASE_DURATION / 3);
    loop {
        tick.tick().await;
        if let Err(e) = renew(&client, &namespace, &id).await {
            tracing::warn!(namespace = %namespace, error = %e, "renewing the runner's instance Lease failed; other runners reap this one's job pods once it expires");
        }
    }
}

/// Deletes instance `id`'s Lease at a clean exit, so that other runners may reap at once what
/// this one left behind.
pub async fn release(client: &Client, namespace: &str, id: &str) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let _ = leases
        .delete(&lease_name(id), &DeleteParams::default())
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease_renewed(ago: i64, duration: i32) -> Lease {
        let at = k8s_openapi::jiff::Timestamp::from_second(1_000_000 - ago).unwrap();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "keyhole-runner-x"},
            "spec": {"holderIdentity": "x", "leaseDurationSeconds": duration,
                "renewTime": MicroTime(at)}
        }))
        .unwrap()
    }

    #[test]
    fn a_lease_is_alive_until_its_duration_after_the_last_renewal() {
        assert!(lease_alive(&lease_renewed(0, 30), 1_000_000));
        assert!(lease_alive(&lease_renewed(29, 30), 1_000_000));
        assert!(!lease_alive(&lease_renewed(30, 30), 1_000_000));
        assert!(!lease_alive(&lease_renewed(3600, 30), 1_000_000));
        assert!(!lease_alive(&Lease::default(), 1_000_000));
    }

    #[test]
    fn instance_ids_are_label_values_and_random_when_not_given() {
        assert_eq!(
            instance_id(Some("0b6f5c1e-3a2d-4c5b-9e8f-1a2b3c4d5e6f")),
            "0b6f5c1e-3a2d-4c5b-9e8f-1a2b3c4d5e6f"
        );
        assert_eq!(instance_id(Some("Pod_UID.x")), "pod-uid-x");
        let a = instance_id(None);
        let b = instance_id(Some(""));
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(lease_name(&a).len() <= 63);
    }
}
