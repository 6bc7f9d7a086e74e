//! The Helm chart on the bed, as the deploy tests use it: the values of a test install, a job
//! pod and its per-job Secret of the shape the runner makes, a client acting as the runner's
//! ServiceAccount, and creating objects until the admission policies answer.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::{
    TestBed, bed_command, chart_dir, restricted_container_security, restricted_pod_security, run,
};

pub const BUSYBOX: &str = "keyhole.local/busybox:1";
/// Release name of every test install; namespaces keep releases apart.
pub const RELEASE: &str = "kh";
/// The runner's ServiceAccount for release [`RELEASE`] (`<fullname>-runner`).
pub const RUNNER_SA: &str = "kh-keyhole-runner";
/// Upper bound for a new admission policy to take effect; a deadline against hangs.
pub const POLICY_DEADLINE: Duration = Duration::from_secs(60);

/// The runner's `config.toml` in the release's ConfigMap.
pub fn config_text(cm: &k8s_openapi::api::core::v1::ConfigMap) -> String {
    cm.data
        .as_ref()
        .and_then(|d| d.get("config.toml"))
        .expect("the ConfigMap holds config.toml")
        .clone()
}

/// `helm template` of the chart with extra args; Ok(stdout) or Err(stderr).
pub fn helm_template(bed: &TestBed, extra: &[&str]) -> std::result::Result<String, String> {
    let chart = chart_dir().display().to_string();
    let mut args = vec![
        "template",
        RELEASE,
        chart.as_str(),
        "--namespace",
        "keyhole",
        "--kube-version",
        "1.34.0",
    ];
    args.extend_from_slice(extra);
    let out = run(bed_command(&bed.env, "helm").args(&args)).unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Values of a test install (the "full" values: every runner setting the chart has): jobs in
/// `jobs_ns`, three tenants (two sharing one account, one with no Secrets), NetworkPolicy
/// destinations on the bed's bridge, no image pulls, a GitLab URL on the pod's own loopback
/// (nothing leaves the machine even if a runner image exists). One Vault role for all jobs
/// (`vault.role`), named after the jobs namespace so that tests never share a Vault role.
pub fn test_values(jobs_ns: &str, create_jobs_ns: bool) -> String {
    format!(
        r#"
image: {{pullPolicy: Never}}
runner:
  url: "http://127.0.0.1:1"
  logLevel: "keyhole_runner=debug,info"
  terminationGracePeriodSeconds: 400
  token: {{value: not-a-real-runner-token}}
  kubernetes:
    host: "https://10.213.0.1:6443"
    image: "keyhole.local/busybox:1"
    pull_policy: never
    cpu_request: 100m
    memory_limit: 1Gi
    memory_limit_overwrite_max_allowed: 4Gi
    poll_timeout: 180
    pod_termination_grace_period_seconds: 60
    node_selector: {{"kubernetes.io/os": linux}}
    pod_security_context: {{run_as_user: 1000, run_as_group: 1000, fs_group: 1000}}
broker:
  image: "keyhole.local/broker:dev"
vault:
  address: "http://10.213.0.1:8200"
  namespace: "team-a"
  role: "{jobs_ns}-app"
  tokenExpirationSeconds: 900
jobs:
  namespace: {jobs_ns}
  createNamespace: {create_jobs_ns}
  gitImage: "keyhole.local/git:2"
  kubeApi: "https://10.213.0.1:6443"
tenants:
  - project: acme/app
    protected: true
    serviceAccount: app-deployer
    secrets: [app-db, app-registry]
    vault:
      role: {jobs_ns}-app
      paths: ["kv/data/{jobs_ns}/app/*"]
      tokenTtl: 2m
  - projectRegex: "^acme/tools/.*$"
    serviceAccount: tools
  - project: acme/app-legacy
    refRegex: "main|release-.*"
    serviceAccount: app-deployer
    secrets: [legacy-db]
networkPolicy:
  dns: {{kubeDns: true, cidrs: [10.213.0.53/32]}}
  gitlab: {{cidrs: [10.213.0.1/32], ports: [443]}}
  vault: {{cidrs: [10.213.0.1/32], ports: [8200]}}
  kubernetesApi: {{cidrs: [10.213.0.1/32], ports: [6443]}}
"#
    )
}

pub fn from_json<K: DeserializeOwned>(value: Value) -> K {
    serde_json::from_value(value).expect("test object JSON matches its schema")
}

/// A job pod of the shape the runner builds (see the pod contract in `contract/src/lib.rs`):
/// named `kh-<job id>-<6 random>`, the job labels, the projected `keyhole-inputs` volume whose
/// only Secret is the per-job Secret named like the pod, memory-backed `keyhole-secrets`, the
/// `keyhole-run` emptyDir, a native sidecar `keyhole-broker` and the `build` container, all
/// PodSecurity restricted. Busybox stands in for both images: admission looks at the shape.
pub fn job_pod(name: &str, service_account: &str) -> Value {
    json!({
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/managed-by": "keyhole-runner", "keyhole.dev/runner": "keyhole",
                       "keyhole.dev/job-id": "4242"},
            "annotations": {"secrets.keyhole.dev/DB_PASSWORD": "vault:kv/app/db#password"}
        },
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": service_account,
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "securityContext": restricted_pod_security(),
            "volumes": [
                {"name": "keyhole-inputs", "projected": {"defaultMode": 0o440, "sources": [
                    {"serviceAccountToken": {"audience": "vault", "expirationSeconds": 600, "path": "token"}},
                    {"serviceAccountToken": {"expirationSeconds": 600, "path": "kube-token"}},
                    {"downwardAPI": {"items": [{"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}]}},
                    {"secret": {"name": name, "items": [{"key": "CI_JOB_TOKEN", "path": "job/CI_JOB_TOKEN"}]}}
                ]}},
                {"name": "keyhole-secrets", "emptyDir": {"medium": "Memory", "sizeLimit": "4Mi"}},
                {"name": "keyhole-run", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}
            ],
            "initContainers": [{
                "name": "keyhole-broker", "image": BUSYBOX, "imagePullPolicy": "Never",
                "restartPolicy": "Always", "command": ["sleep", "3600"],
                "securityContext": restricted_container_security(),
                "volumeMounts": broker_mounts()
            }],
            "containers": [{
                "name": "build", "image": BUSYBOX, "imagePullPolicy": "Never",
                "command": ["sh", "-c", "echo build"],
                "securityContext": restricted_container_security(),
                "volumeMounts": build_mounts()
            }]
        }
    })
}

/// The broker sidecar's mounts in a job pod: its inputs read-only, the secrets and the run
/// directory writable.
pub fn broker_mounts() -> Value {
    json!([
        {"name": "keyhole-inputs", "mountPath": "/keyhole/inputs", "readOnly": true},
        {"name": "keyhole-secrets", "mountPath": "/keyhole/secrets"},
        {"name": "keyhole-run", "mountPath": "/keyhole/run"}
    ])
}

/// The build container's mounts in a job pod: the secrets read-only, the run directory.
pub fn build_mounts() -> Value {
    json!([
        {"name": "keyhole-secrets", "mountPath": "/keyhole/secrets", "readOnly": true},
        {"name": "keyhole-run", "mountPath": "/keyhole/run"}
    ])
}

/// The per-job Secret the runner creates after the pod: same name, owned by the pod.
pub fn job_secret(pod: &Pod, with_owner: bool) -> Secret {
    let name = pod.metadata.name.clone().unwrap();
    let mut secret = json!({
        "metadata": {"name": name,
            "labels": {"app.kubernetes.io/managed-by": "keyhole-runner", "keyhole.dev/runner": "keyhole",
                       "keyhole.dev/job-id": "4242"}},
        "immutable": true,
        "stringData": {"CI_JOB_TOKEN": "job-token-not-real-0123456789"}
    });
    if with_owner {
        secret["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "Pod", "name": name,
            "uid": pod.metadata.uid.clone().unwrap()}]);
    }
    from_json(secret)
}

/// A client that acts as the release's runner ServiceAccount (token from TokenRequest).
pub async fn runner_client(bed: &TestBed, release_ns: &str) -> Client {
    let token = bed
        .service_account_token(release_ns, RUNNER_SA, &[])
        .await
        .unwrap();
    bed.client_with_token(&token).unwrap()
}

/// What the apiserver did with a create: admitted it (the test deletes it again) or refused it.
#[derive(Debug)]
pub enum Outcome {
    Admitted,
    Refused(Box<kube::core::Status>),
}

/// Creates `object` as `creator` (the runner, or anyone else); an admitted object is deleted
/// again through `admin`.
pub async fn try_create<K>(creator: &Api<K>, admin: &Api<K>, object: &Value) -> Outcome
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    match creator
        .create(&PostParams::default(), &from_json(object.clone()))
        .await
    {
        Ok(created) => {
            let _ = admin
                .delete(
                    created.meta().name.as_deref().unwrap(),
                    &DeleteParams::default().grace_period(0),
                )
                .await;
            Outcome::Admitted
        }
        Err(kube::Error::Api(status)) => Outcome::Refused(status),
        Err(other) => panic!("creating an object failed on the way: {other:?}"),
    }
}

/// Whether a refusal came from a ValidatingAdmissionPolicy (not RBAC or validation).
pub fn is_policy_denial(status: &kube::core::Status) -> bool {
    status.message.contains("ValidatingAdmissionPolicy")
}

/// Creates `object` as `creator` until an admission policy refuses it, and returns the refusal.
/// A new policy (and the runner's RoleBinding) take a moment to become effective; until then a
/// create is admitted (and deleted again) or refused by RBAC. Bounded by [`POLICY_DEADLINE`].
pub async fn refusal_once_effective<K>(
    creator: &Api<K>,
    admin: &Api<K>,
    object: &Value,
) -> kube::core::Status
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let deadline = tokio::time::Instant::now() + POLICY_DEADLINE;
    loop {
        let last = match try_create(creator, admin, object).await {
            Outcome::Refused(status) if is_policy_denial(&status) => return *status,
            Outcome::Refused(status) => format!("refused otherwise: {}", status.message),
            Outcome::Admitted => "admitted".to_owned(),
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "no admission policy refused the object within {POLICY_DEADLINE:?}; last attempt: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Refusal of an object once the policy is known to be effective.
pub async fn refusal<K>(creator: &Api<K>, admin: &Api<K>, object: &Value, what: &str) -> String
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    match try_create(creator, admin, object).await {
        Outcome::Refused(status) => {
            assert!(
                is_policy_denial(&status),
                "{what}: refused, but not by the policy: {status:?}"
            );
            status.message
        }
        Outcome::Admitted => panic!("{what}: the policy admitted it"),
    }
}
