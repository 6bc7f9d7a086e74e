//! The parts of P8 (Kubernetes API requests per job) and P9 (throughput): a runner identity of
//! the bench's own (a ServiceAccount with the chart's runner Role and journal Role, a kubeconfig
//! with its token), so the apiserver's audit log (`scripts/lib/audit.sh`) tells its requests
//! from everyone else's, and the count of those requests by verb and resource.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use crate::TestBed;

/// The bench runner's ServiceAccount in the bench namespace.
pub const RUNNER_SA: &str = "bench-runner";
/// Its journal Secret, as the chart deploys one (`journal_secret`).
pub const JOURNAL_SECRET: &str = "bench-journal";

/// A runner identity: its user name as the apiserver audits it, and a kubeconfig for it.
#[derive(Debug)]
pub struct RunnerIdentity {
    pub user: String,
    pub kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

/// Creates the ServiceAccount [`RUNNER_SA`] in `ns` with the chart's runner Role
/// (`deploy/helm/keyhole/templates/rbac-runner.yaml`) and journal Role (get and patch on
/// [`JOURNAL_SECRET`] alone), and writes a kubeconfig with a token of it (valid for
/// `seconds`).
pub async fn runner_identity(bed: &TestBed, ns: &str, seconds: i64) -> Result<RunnerIdentity> {
    let post = PostParams::default();
    Api::<ServiceAccount>::namespaced(bed.client.clone(), ns)
        .create(
            &post,
            &serde_json::from_value(json!({"metadata": {"name": RUNNER_SA}}))?,
        )
        .await
        .context("creating the bench runner's ServiceAccount")?;
    Api::<Secret>::namespaced(bed.client.clone(), ns)
        .create(
            &post,
            &serde_json::from_value(json!({"metadata": {"name": JOURNAL_SECRET}}))?,
        )
        .await
        .context("creating the bench runner's journal Secret")?;
    let roles: Api<Role> = Api::namespaced(bed.client.clone(), ns);
    let bindings: Api<RoleBinding> = Api::namespaced(bed.client.clone(), ns);
    let rules = [
        (
            "bench-runner",
            json!([
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list", "watch", "delete"]},
                {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                 "verbs": ["get", "list", "create", "update", "delete"]},
            ]),
        ),
        (
            "bench-runner-journal",
            json!([{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [JOURNAL_SECRET],
                    "verbs": ["get", "patch"]}]),
        ),
    ];
    for (name, rules) in rules {
        roles
            .create(
                &post,
                &serde_json::from_value(json!({"metadata": {"name": name}, "rules": rules}))?,
            )
            .await
            .with_context(|| format!("creating the Role {name}"))?;
        let binding = json!({"metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": RUNNER_SA, "namespace": ns}]});
        bindings
            .create(&post, &serde_json::from_value(binding)?)
            .await
            .with_context(|| format!("creating the RoleBinding {name}"))?;
    }
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(seconds),
            bound_object_ref: None,
        },
        ..TokenRequest::default()
    };
    let token = Api::<ServiceAccount>::namespaced(bed.client.clone(), ns)
        .create_token_request(RUNNER_SA, &post, &request)
        .await
        .context("TokenRequest for the bench runner")?
        .status
        .context("TokenRequest returned no status")?
        .token;
    let dir = tempfile::Builder::new()
        .prefix("keyhole-bench-kubeconfig-")
        .tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    let config = json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "bench",
        "clusters": [{"name": "bed", "cluster": {"server": bed.env.apiserver_url,
            "certificate-authority": bed.path("pki/ca.crt")}}],
        "users": [{"name": RUNNER_SA, "user": {"token": token}}],
        "contexts": [{"name": "bench", "context": {"cluster": "bed", "user": RUNNER_SA, "namespace": ns}}],
    });
    // JSON is YAML: kubeconfig readers take it.
    std::fs::write(&kubeconfig, serde_json::to_vec_pretty(&config)?)?;
    Ok(RunnerIdentity {
        user: format!("system:serviceaccount:{ns}:{RUNNER_SA}"),
        kubeconfig,
        _dir: dir,
    })
}

/// A user's requests in the apiserver's audit log, each counted once (a watch has two lines).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Requests {
    pub total: u64,
    pub by_verb: BTreeMap<String, u64>,
    /// `resource[/subresource]`, or the path of a non-resource request.
    pub by_resource: BTreeMap<String, u64>,
}

impl Requests {
    /// `key:count,…` of one breakdown.
    pub fn breakdown(map: &BTreeMap<String, u64>) -> String {
        map.iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Counts `user`'s requests in audit log lines (JSON, one event a line).
pub fn count_requests<'a>(lines: impl IntoIterator<Item = &'a str>, user: &str) -> Requests {
    let mut seen = BTreeSet::new();
    let mut out = Requests::default();
    for line in lines {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if event["user"]["username"].as_str() != Some(user) {
            continue;
        }
        let id = event["auditID"].as_str().unwrap_or_default().to_owned();
        if !seen.insert(id) {
            continue;
        }
        let verb = event["verb"].as_str().unwrap_or("?").to_owned();
        let object = &event["objectRef"];
        let resource = match (object["resource"].as_str(), object["subresource"].as_str()) {
            (Some(r), Some(s)) => format!("{r}/{s}"),
            (Some(r), None) => r.to_owned(),
            _ => event["requestURI"]
                .as_str()
                .unwrap_or("?")
                .split('?')
                .next()
                .unwrap_or("?")
                .to_owned(),
        };
        out.total += 1;
        *out.by_verb.entry(verb).or_default() += 1;
        *out.by_resource.entry(resource).or_default() += 1;
    }
    out
}

/// `user`'s requests in every audit log file in `dir` (the current one and its rotated
/// backups, `apiserver-audit*.log`).
pub fn count_requests_in(dir: &Path, user: &str) -> Result<Requests> {
    let mut text = String::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut found = false;
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("apiserver-audit") && name.ends_with(".log") {
            found = true;
            text.push_str(
                &std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?,
            );
            text.push('\n');
        }
    }
    anyhow::ensure!(
        found,
        "no apiserver-audit*.log in {}: the bed's kube-apiserver writes no audit log (scripts/lib/audit.sh; `scripts/testbed restart kube-apiserver` starts it with one)",
        dir.display()
    );
    Ok(count_requests(text.lines(), user))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_requests_are_counted_once_each_by_verb_and_resource() {
        let line = |id: &str, user: &str, verb: &str, stage: &str, object: serde_json::Value| {
            json!({"auditID": id, "stage": stage, "verb": verb, "user": {"username": user},
                   "objectRef": object, "requestURI": "/version"})
            .to_string()
        };
        let me = "system:serviceaccount:b:bench-runner";
        let pods = json!({"resource": "pods", "namespace": "b"});
        let lines = [
            line("1", me, "create", "ResponseComplete", pods.clone()),
            line("2", me, "watch", "ResponseStarted", pods.clone()),
            line("2", me, "watch", "ResponseComplete", pods.clone()),
            line(
                "3",
                me,
                "get",
                "ResponseComplete",
                json!({"resource": "pods", "subresource": "log"}),
            ),
            line("4", "someone-else", "create", "ResponseComplete", pods),
            line("5", me, "get", "ResponseComplete", serde_json::Value::Null),
            "not json".into(),
        ];
        let counted = count_requests(lines.iter().map(String::as_str), me);
        assert_eq!(counted.total, 4);
        assert_eq!(
            Requests::breakdown(&counted.by_verb),
            "create:1,get:2,watch:1"
        );
        assert_eq!(
            Requests::breakdown(&counted.by_resource),
            "/version:1,pods:2,pods/log:1"
        );
    }
}
