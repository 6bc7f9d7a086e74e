//! Exposure scanning: where a job's secrets can be found after Keyhole has handled them.
//!
//! The promise is that a secret sits nowhere but in the job's memory-backed volumes (and, for
//! `k8s:` references, its own source Secret; for what the runner alone has, the per-job
//! Secret). These fixtures let a test plant unique values ([`Needle`]) and search every place
//! the bed can show for every form of them (raw, escaped, base64 at any alignment, hex, each
//! line of a multi-line value):
//!
//! - bytes of any kind ([`Scanner::scan`]): a trace, a runner's log;
//! - directory trees ([`Scanner::scan_tree`]): the bed's state and log directories, with files
//!   on tmpfs told apart from files on disk;
//! - etcd ([`Etcd`]): the keyspace now, and every write while a job ran ([`EtcdRecorder`]);
//! - the API ([`scan_namespace_objects`]): pods (spec and status) and Events as served;
//! - Vault ([`vault_tokens`], [`lease_exists`]): tokens and leases a job left behind.
//!
//! Each returns [`Finding`]s (needle, form, place), so a test can say precisely which places
//! hold which value and assert that nothing else does.

mod etcd;
mod needle;
mod scan;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::ListParams;
use serde_json::json;

pub use etcd::{ETCD_URL, Etcd, EtcdEntry, EtcdRecorder, scan_entries};
pub use needle::{Form, Needle};
pub use scan::{Finding, Scanner, report};

use crate::{TestBed, VaultAdmin};

/// Where the bed keeps state and logs: `$KEYHOLE_TESTBED_DIR` (etcd's data, kubelet's pod
/// directories and `pod-logs/`, containerd's root, `logs/` of every part) and the runtime
/// directory (containerd's state with the containers' OCI bundles, runc's state), see
/// `scripts/lib/up.sh`.
pub fn bed_state_dirs(bed: &TestBed) -> Vec<PathBuf> {
    vec![
        bed.env.testbed_dir.clone(),
        PathBuf::from("/run/keyhole-testbed"),
    ]
}

/// Every pod of the namespace (as JSON, spec and status) and every Event, as the API serves
/// them. Places: `pod <name>`, `events`.
pub async fn scan_namespace_objects(
    scanner: &Scanner,
    bed: &TestBed,
    namespace: &str,
) -> Result<Vec<Finding>> {
    let pods: Api<Pod> = Api::namespaced(bed.client.clone(), namespace);
    let events: Api<Event> = Api::namespaced(bed.client.clone(), namespace);
    let mut out = Vec::new();
    for pod in pods.list(&ListParams::default()).await?.items {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let text = serde_json::to_vec(&pod)?;
        out.extend(scanner.scan(&format!("pod {name}"), &text));
    }
    let list = events.list(&ListParams::default()).await?;
    out.extend(scanner.scan("events", &serde_json::to_vec(&list.items)?));
    Ok(out)
}

/// A Vault token as root sees it through its accessor.
#[derive(Debug, Clone)]
pub struct VaultToken {
    pub accessor: String,
    /// `auth/<mount>/login` path it came from, e.g. `auth/kubernetes/login`.
    pub path: String,
    pub display_name: String,
    /// Login metadata (kubernetes auth: `service_account_namespace`, `role`, ...).
    pub meta: BTreeMap<String, String>,
}

/// Every live token (`LIST auth/token/accessors`, then `auth/token/lookup-accessor` each).
/// Tokens that end between the two calls are left out.
pub async fn vault_tokens(vault: &VaultAdmin) -> Result<Vec<VaultToken>> {
    let (status, body) = vault.read("auth/token/accessors?list=true").await?;
    anyhow::ensure!(
        status.is_success(),
        "LIST auth/token/accessors: {status}: {body}"
    );
    let accessors: Vec<String> = body["data"]["keys"]
        .as_array()
        .context("LIST auth/token/accessors has no data.keys")?
        .iter()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    let mut out = Vec::new();
    for accessor in accessors {
        let (status, body) = vault
            .write_status("auth/token/lookup-accessor", json!({"accessor": accessor}))
            .await;
        if !status.is_success() {
            continue; // revoked or expired meanwhile
        }
        let data = &body["data"];
        let meta = data["meta"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        out.push(VaultToken {
            accessor,
            path: data["path"].as_str().unwrap_or_default().to_string(),
            display_name: data["display_name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            meta,
        });
    }
    Ok(out)
}

/// Tokens a kubernetes-auth login of a pod in `namespace` made.
pub async fn vault_tokens_of_namespace(
    vault: &VaultAdmin,
    namespace: &str,
) -> Result<Vec<VaultToken>> {
    Ok(vault_tokens(vault)
        .await?
        .into_iter()
        .filter(|t| t.meta.get("service_account_namespace").map(String::as_str) == Some(namespace))
        .collect())
}

/// Whether Vault still knows the lease (`sys/leases/lookup`).
pub async fn lease_exists(vault: &VaultAdmin, lease_id: &str) -> bool {
    let (status, body) = vault.lease_lookup(lease_id).await;
    status.is_success() && body["data"]["id"].as_str() == Some(lease_id)
}

/// The lease ids the broker's audit lines name (`lease=<id>`), in order of appearance.
pub fn audited_leases(trace: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in trace.split_whitespace() {
        if let Some(id) = word.strip_prefix("lease=")
            && !id.is_empty()
            && !out.iter().any(|o| o == id)
        {
            out.push(id.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_are_taken_from_audit_lines_once_each() {
        let trace = "keyhole-broker: audit secret=U source=vault:database/creds/r#username path=/x lease=database/creds/r/AbC\n\
                     keyhole-broker: audit secret=P source=vault:database/creds/r#password path=/y lease=database/creds/r/AbC\n\
                     keyhole-broker: audit secret=K source=vault:kv/a#b path=/z version=1\n";
        assert_eq!(audited_leases(trace), vec!["database/creds/r/AbC"]);
    }
}
