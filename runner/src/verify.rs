//! `keyhole-runner verify`: the checks a platform engineer would otherwise make by hand after
//! a deploy, each with a line saying what is wrong and what to do.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::Api;
use kube::api::PostParams;

use crate::config::{Config, RunnerConfig, UserNamespaceRoot};

/// What `verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub lines: Vec<String>,
    pub problems: usize,
}

impl VerifyReport {
    fn ok(&mut self, line: impl Into<String>) {
        self.lines.push(format!("ok       {}", line.into()));
    }
    fn problem(&mut self, line: impl Into<String>) {
        self.problems += 1;
        self.lines.push(format!("PROBLEM  {}", line.into()));
    }
    fn note(&mut self, line: impl Into<String>) {
        self.lines.push(format!("note     {}", line.into()));
    }
}

/// What the runner must be allowed in its jobs namespace: `(verb, resource, subresource)`; a
/// resource outside the core group is written `resource.group`. The Lease is the runner
/// instance's word that it is alive (see `crate::instance`): without it, other runners would
/// reap its job pods.
pub const NEEDED: &[(&str, &str, &str)] = &[
    ("get", "leases.coordination.k8s.io", ""),
    ("list", "leases.coordination.k8s.io", ""),
    ("create", "leases.coordination.k8s.io", ""),
    ("update", "leases.coordination.k8s.io", ""),
    ("delete", "leases.coordination.k8s.io", ""),
    ("create", "pods", ""),
    ("get", "pods", ""),
    ("list", "pods", ""),
    ("watch", "pods", ""),
    ("delete", "pods", ""),
    ("get", "pods", "log"),
    ("create", "secrets", ""),
];

/// What it should NOT be allowed: reading Secrets would let a runner bug leak every job's;
/// deleting one would let it remove a tenant's Secret and create its own under that name. The
/// runner never deletes a Secret: the per-job Secret goes with its pod (ownerReference).
pub const UNWANTED: &[(&str, &str, &str)] = &[
    ("get", "secrets", ""),
    ("list", "secrets", ""),
    ("delete", "secrets", ""),
];

async fn may(
    client: &kube::Client,
    ns: &str,
    (verb, resource, sub): (&str, &str, &str),
) -> Result<bool, kube::Error> {
    let (resource, group) = resource.split_once('.').unwrap_or((resource, ""));
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(ns.into()),
                verb: Some(verb.into()),
                resource: Some(resource.into()),
                group: (!group.is_empty()).then(|| group.into()),
                subresource: (!sub.is_empty()).then(|| sub.into()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

fn what((verb, resource, sub): (&str, &str, &str)) -> String {
    if sub.is_empty() {
        format!("{verb} {resource}")
    } else {
        format!("{verb} {resource}/{sub}")
    }
}

/// Runs every check for each `[[runners]]` entry (`run` serves them all).
pub async fn verify(config: &Config) -> VerifyReport {
    let mut report = VerifyReport::default();
    if config.runners.is_empty() {
        report.problem("the config has no [[runners]] entry; add one (see docs/configuration.md)");
        return report;
    }
    for runner in &config.runners {
        report.ok(format!(
            "config: runner {:?}, namespace {}, concurrent {}",
            runner.name, runner.kubernetes.namespace, config.concurrent
        ));
        check_gitlab(runner, &mut report).await;
        check_cluster(runner, &mut report).await;
        check_vault(runner, &mut report).await;
    }
    report
}

async fn check_gitlab(runner: &RunnerConfig, report: &mut VerifyReport) {
    match crate::connect::gitlab_client(runner) {
        Err(e) => report.problem(format!("GitLab: {}", error_chain(&e))),
        Ok(client) => match client.verify().await {
            Ok(()) => report.ok(format!("GitLab {} accepts the runner token", runner.url)),
            Err(e) => report.problem(format!("GitLab {}: {e}", runner.url)),
        },
    }
}

async fn check_cluster(runner: &RunnerConfig, report: &mut VerifyReport) {
    let client = match crate::connect::kube_client(runner).await {
        Ok(c) => c,
        Err(e) => return report.problem(format!("Kubernetes: {}", error_chain(&e))),
    };
    match client.apiserver_version().await {
        Ok(v) => report.ok(format!(
            "Kubernetes API server answers (v{}.{})",
            v.major, v.minor
        )),
        Err(e) => return report.problem(format!("Kubernetes API server: {e}")),
    }
    let ns = &runner.kubernetes.namespace;
    let mut missing = Vec::new();
    for need in NEEDED {
        match may(&client, ns, *need).await {
            Ok(true) => {}
            Ok(false) => missing.push(what(*need)),
            Err(e) => {
                return report
                    .problem(format!("asking the API server what the runner may do: {e}"));
            }
        }
    }
    if missing.is_empty() {
        report.ok(format!("the runner may do what it needs in namespace {ns}"));
    } else {
        report.problem(format!(
            "in namespace {ns} the runner may not: {}; grant them with a Role (deploy/ has one)",
            missing.join(", ")
        ));
    }
    let mut extra = Vec::new();
    for unwanted in UNWANTED {
        if may(&client, ns, *unwanted).await.unwrap_or(false) {
            extra.push(what(*unwanted));
        }
    }
    if extra.is_empty() {
        report.ok("the runner cannot read or delete Secrets (least privilege)");
    } else {
        report.problem(format!(
            "the runner may {} in {ns}: on secrets it needs only create; remove the extra rights so a runner bug cannot read job Secrets or delete a tenant's",
            extra.join(", ")
        ));
    }
    if let Some(value) = &runner.keyhole.journal_secret {
        check_journal_secret(&client, value, report).await;
    }
    if runner.keyhole.user_namespace_root != UserNamespaceRoot::Off {
        match user_namespace_probe(&client, runner).await {
            Ok(()) => report.ok(format!(
                "namespace {ns} admits root jobs in a user namespace (user_namespace_root; a dry run, nothing created)"
            )),
            Err(e) => report.problem(e),
        }
    }
}

/// The journal Secret (`journal_secret`) exists and the runner may get and patch it: a
/// journal that fails only when a runner pod dies would lose the jobs it is for.
async fn check_journal_secret(client: &kube::Client, value: &str, report: &mut VerifyReport) {
    let Some((namespace, name)) = crate::config::journal_secret_parts(value) else {
        return report.problem(format!(
            "keyhole.journal_secret {value:?} is not NAMESPACE/NAME"
        ));
    };
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), namespace);
    if let Err(e) = secrets.get_metadata(name).await {
        return report.problem(format!(
            "the journal Secret {value}: {e}; create it and grant the runner get and patch on it (the chart does)"
        ));
    }
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.into()),
                verb: Some("patch".into()),
                resource: Some("secrets".into()),
                name: Some(name.into()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let allowed = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map(|answer| answer.status.is_some_and(|s| s.allowed));
    match allowed {
        Ok(true) => report.ok(format!(
            "the runner keeps its journal of running jobs in Secret {value}"
        )),
        Ok(false) => report.problem(format!(
            "the runner may read but not patch its journal Secret {value}; grant patch on it (resourceNames) so it can record running jobs"
        )),
        Err(e) => report.problem(format!("asking the API server about the journal Secret: {e}")),
    }
}

/// With `user_namespace_root`, asks the API server to admit, as a dry run (nothing is created),
/// a pod shaped like a root job's: its own user namespace, uid 0, no capabilities. Admission
/// (PodSecurity, the chart's policies) answers as it would for a real job, so a cluster that
/// cannot run root jobs is named at start and in `verify`, not at the first job.
pub async fn user_namespace_probe(
    client: &kube::Client,
    runner: &RunnerConfig,
) -> Result<(), String> {
    let k = &runner.kubernetes;
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kh-0-userns", "labels": {
            crate::pod::MANAGED_BY_LABEL: crate::pod::MANAGED_BY,
            crate::pod::RUNNER_LABEL: crate::pod::label_value(&runner.name),
            crate::pod::JOB_ID_LABEL: "0"}},
        "spec": {
            "hostUsers": false,
            "restartPolicy": "Never",
            "serviceAccountName": k.service_account,
            "automountServiceAccountToken": false,
            "securityContext": {"runAsNonRoot": true, "runAsUser": k.pod_security_context.run_as_user,
                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "build", "image": k.image,
                "securityContext": {"runAsUser": 0, "runAsNonRoot": false,
                    "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]
        }
    }))
    .map_err(|e| format!("internal error building the user namespace probe: {e}"))?;
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &k.namespace);
    pods.create(&params, &pod).await.map(drop).map_err(|e| {
        format!(
            "user_namespace_root is {:?}, but namespace {} refuses a root job pod in a user namespace ({e}); PodSecurity `restricted` admits one only when the API server has the UserNamespacesPodSecurityStandards feature gate on (and the nodes support user namespaces: Kubernetes 1.33+, Linux 6.3+ for idmapped tmpfs); turn it on, or set user_namespace_root = \"off\"",
            runner.keyhole.user_namespace_root, k.namespace
        )
    })
}

/// An error and its causes on one line: reqwest's own text ("error sending request for url")
/// leaves out why (refused, timed out, an untrusted certificate).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

async fn check_vault(runner: &RunnerConfig, report: &mut VerifyReport) {
    let k = &runner.keyhole;
    report.ok(format!("broker image {}", k.broker_image));
    let Some(addr) = &k.vault_addr else {
        report.note("no vault_addr: vault: references will fail jobs (k8s: references still work)");
        return;
    };
    let url = format!("{}/v1/sys/health", addr.trim_end_matches('/'));
    let client = match reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => return report.problem(format!("HTTP client: {e}")),
    };
    match client.get(&url).send().await {
        Ok(r) => match r.status().as_u16() {
            200 | 429 | 472 | 473 => report.ok(format!("Vault {addr} is up and unsealed")),
            503 => report.problem(format!("Vault {addr} is sealed; jobs with vault: references will fail until it is unsealed")),
            501 => report.problem(format!("Vault {addr} is not initialized")),
            s => report.problem(format!("Vault {addr} answered {s} to sys/health")),
        },
        Err(e) => report.note(format!(
            "Vault {addr} cannot be reached from here ({}); job pods may still reach it, check the NetworkPolicy{}",
            error_chain(&e),
            if k.vault_ca_config_map.is_some() {
                " (the brokers trust vault_ca_config_map's CA, this check only the system's)"
            } else {
                ""
            }
        )),
    }
    if !k.vault_allowed.is_empty()
        && !k
            .vault_allowed
            .iter()
            .any(|a| a.trim_end_matches('/') == addr.trim_end_matches('/'))
    {
        report.note("vault_allowed does not list vault_addr; GitLab secrets: naming vault_addr will be refused");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("error sending request")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn an_error_chain_says_why() {
        let err = Outer(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "invalid peer certificate: UnknownIssuer",
        ));
        assert_eq!(
            error_chain(&err),
            "error sending request: invalid peer certificate: UnknownIssuer"
        );
    }

    /// `verify` would report a right as both missing and extra; the chart's Role is checked
    /// against NEEDED by the deploy tests, so this also keeps UNWANTED out of the chart.
    #[test]
    fn nothing_is_both_needed_and_unwanted() {
        for right in UNWANTED {
            assert!(!NEEDED.contains(right), "{right:?}");
        }
    }

    /// On Secrets the runner only creates the per-job one: it reads none (the tenants' would
    /// be readable too) and deletes none (it could replace a tenant's with its own).
    #[test]
    fn on_secrets_the_runner_needs_create_only() {
        let on_secrets: Vec<&str> = NEEDED
            .iter()
            .filter(|(_, resource, _)| *resource == "secrets")
            .map(|(verb, _, _)| *verb)
            .collect();
        assert_eq!(on_secrets, ["create"]);
        for verb in ["get", "list", "delete"] {
            assert!(UNWANTED.contains(&(verb, "secrets", "")), "{verb}");
        }
    }
}
