//! Proof that each part of the test bed is real: RBAC, TokenRequest + Vault kubernetes auth,
//! Vault JWT auth, PodSecurity admission, the kubelet running pods, projected volumes and native
//! sidecars, garbage collection of owned objects, pulls from the private registry with an
//! image pull Secret, and the S3 store's SigV4 checks. Needs `scripts/testbed up`.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use keyhole_tests::{
    TestBed, TestNamespace, VaultAdmin, eventually, id_token_claims, pod_logs,
    restricted_container_security, restricted_pod_security, run_pod_to_completion, wait_for_pod,
};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Resource};
use serde_json::json;

const BUSYBOX: &str = "keyhole.local/busybox:1";

fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        string_data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Secret::default()
    }
}

fn service_account(name: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    }
}

fn pod_from_json(value: serde_json::Value) -> Pod {
    serde_json::from_value(value).expect("test pod JSON matches the Pod schema")
}

fn is_forbidden(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 403)
}

/// A busybox container `name` running `command` (the image is on the node), with the fields
/// of `extra` on top.
fn busybox(name: &str, command: &[&str], extra: serde_json::Value) -> serde_json::Value {
    let mut container =
        json!({"name": name, "image": BUSYBOX, "imagePullPolicy": "Never", "command": command});
    if let (Some(fields), Some(extra)) = (container.as_object_mut(), extra.as_object()) {
        fields.extend(extra.clone());
    }
    container
}

/// A namespace of the test's own on the bed, and its pods.
async fn namespace_for_pods(prefix: &str) -> (TestBed, TestNamespace, Api<Pod>) {
    let bed = TestBed::connect().await;
    let ns = TestNamespace::create(&bed, prefix, &[]).await.unwrap();
    let pods = ns.api();
    (bed, ns, pods)
}

/// A namespace where PodSecurity `restricted` (latest) is enforced.
async fn restricted_namespace(bed: &TestBed, prefix: &str) -> TestNamespace {
    let labels = [
        ("pod-security.kubernetes.io/enforce", "restricted"),
        ("pod-security.kubernetes.io/enforce-version", "latest"),
    ];
    TestNamespace::create(bed, prefix, &labels).await.unwrap()
}

/// Panics, showing the pod's status, unless the pod is in `phase`.
fn assert_phase(pod: &Pod, phase: &str) {
    assert_eq!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some(phase),
        "{:#?}",
        pod.status
    );
}

#[tokio::test]
async fn rbac_resource_names_decide_which_secret_a_service_account_may_get() {
    let bed = TestBed::connect().await;
    let ns = TestNamespace::create(&bed, "rbac", &[]).await.unwrap();
    let secrets: Api<Secret> = ns.api();
    for name in ["a", "b"] {
        secrets
            .create(&PostParams::default(), &secret(name, &[("k", "v")]))
            .await
            .unwrap();
    }
    ns.api::<ServiceAccount>()
        .create(&PostParams::default(), &service_account("job"))
        .await
        .unwrap();
    let token = bed
        .service_account_token(&ns.name, "job", &[])
        .await
        .unwrap();
    let as_job: Api<Secret> = Api::namespaced(bed.client_with_token(&token).unwrap(), &ns.name);

    let denied = as_job
        .get("a")
        .await
        .expect_err("a ServiceAccount with no Role must be denied");
    assert!(is_forbidden(&denied), "expected 403, got {denied:?}");

    ns.create_object::<Role>(json!({"metadata": {"name": "read-a"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["a"],
                   "verbs": ["get"]}]}))
        .await;
    ns.create_object::<RoleBinding>(json!({"metadata": {"name": "job-read-a"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-a"},
        "subjects": [{"kind": "ServiceAccount", "name": "job", "namespace": ns.name}]}))
        .await;

    // The RBAC authorizer learns of new bindings through its informer: allow it a moment.
    let got = eventually(
        Duration::from_secs(5),
        Duration::from_millis(100),
        async || as_job.get("a").await.ok(),
    )
    .await;
    let a = match got {
        Some(a) => a,
        None => as_job
            .get("a")
            .await
            .expect("resourceNames: [a] must allow get on a"),
    };
    assert_eq!(a.metadata.name.as_deref(), Some("a"));

    let denied_b = as_job
        .get("b")
        .await
        .expect_err("b is not in resourceNames");
    assert!(
        is_forbidden(&denied_b),
        "expected 403 for b, got {denied_b:?}"
    );
    let denied_list = as_job
        .list(&Default::default())
        .await
        .expect_err("get on named secrets does not grant list");
    assert!(
        is_forbidden(&denied_list),
        "expected 403 for list, got {denied_list:?}"
    );
}

#[tokio::test]
async fn vault_kubernetes_auth_accepts_only_the_bound_service_account_and_audience() {
    let bed = TestBed::connect().await;
    let vault = VaultAdmin::new(&bed.env);
    let ns = TestNamespace::create(&bed, "vaultk8s", &[]).await.unwrap();
    for sa in ["app", "other"] {
        ns.api::<ServiceAccount>()
            .create(&PostParams::default(), &service_account(sa))
            .await
            .unwrap();
    }
    let role = format!("{}-app", ns.name);
    vault
        .write(
            &format!("auth/kubernetes/role/{role}"),
            json!({
                "bound_service_account_names": ["app"],
                "bound_service_account_namespaces": [ns.name],
                "audience": "vault",
                "token_policies": ["default"],
                "token_ttl": "60s"
            }),
        )
        .await
        .unwrap();

    // Logs in with a token of `service_account` for `audience`.
    let login = async |service_account: &str, audience: &str| {
        vault
            .login_as_service_account(&bed, (&ns.name, service_account), audience, &role)
            .await
    };

    let (status, body) = login("app", "vault").await;
    assert!(status.is_success(), "bound SA must log in: {status} {body}");
    let client_token = body["auth"]["client_token"]
        .as_str()
        .expect("a Vault token");
    assert_eq!(
        body["auth"]["metadata"]["service_account_name"], "app",
        "Vault must know which SA logged in"
    );

    let (status, body) = login("other", "vault").await;
    assert_eq!(
        status.as_u16(),
        403,
        "an unbound SA must be refused: {body}"
    );

    let (status, body) = login("app", "not-vault").await;
    assert_eq!(
        status.as_u16(),
        403,
        "a token for another audience must be refused: {body}"
    );

    // Leave nothing behind on Vault: revoke the token, delete the role.
    VaultAdmin::at(&bed.env.vault_addr, client_token)
        .write("auth/token/revoke-self", json!({}))
        .await
        .unwrap();
    vault
        .delete(&format!("auth/kubernetes/role/{role}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn vault_jwt_auth_trusts_id_tokens_signed_by_the_test_key_only() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};

    let bed = TestBed::connect().await;
    let vault = VaultAdmin::new(&bed.env);
    let role = format!("jwt-test-{}", std::process::id());
    vault
        .jwt_role(&role, "group/app", "default", "60s")
        .await
        .unwrap();

    let pem = std::fs::read(&bed.env.jwt_signing_key).unwrap();
    let bed_key = EncodingKey::from_rsa_pem(&pem).unwrap();
    let stranger = EncodingKey::from_rsa_pem(&strange_key()).unwrap();
    // Logs in with an ID token of `project`, signed with `key`.
    let login = async |project: &str, key: &EncodingKey| {
        let claims = id_token_claims(&bed.env, project);
        let jwt = encode(&Header::new(Algorithm::RS256), &claims, key).unwrap();
        vault
            .login("jwt", json!({"role": role, "jwt": jwt}))
            .await
            .unwrap()
    };

    let (status, body) = login("group/app", &bed_key).await;
    assert!(
        status.is_success(),
        "a token with the bound claims must log in: {status} {body}"
    );

    let (status, body) = login("group/other", &bed_key).await;
    assert!(
        status.is_client_error() && body.to_string().contains("project_path"),
        "a token for another project must be refused on its claim: {status} {body}"
    );

    let (status, body) = login("group/app", &stranger).await;
    assert!(
        status.is_client_error(),
        "a token signed by another key must be refused: {status} {body}"
    );

    if let Some(token) = body["auth"]["client_token"].as_str() {
        panic!("forged token got a Vault token ({} chars)", token.len());
    }
    vault
        .delete(&format!("auth/jwt/role/{role}"))
        .await
        .unwrap();
}

/// A fresh RSA key that Vault has never seen.
fn strange_key() -> Vec<u8> {
    let out = std::process::Command::new("openssl")
        .args(["genrsa", "2048"])
        .output()
        .expect("openssl is installed by scripts/testbed build");
    assert!(out.status.success());
    out.stdout
}

#[tokio::test]
async fn pod_security_restricted_rejects_privileged_pods_and_admits_compliant_ones() {
    let bed = TestBed::connect().await;
    let ns = restricted_namespace(&bed, "psa").await;
    let pods: Api<Pod> = ns.api();

    let privileged = pod_from_json(json!({
        "metadata": {"name": "privileged"},
        "spec": {"containers": [
            busybox("c", &["true"], json!({"securityContext": {"privileged": true}}))]}
    }));
    let err = pods
        .create(&PostParams::default(), &privileged)
        .await
        .expect_err("a privileged pod must be rejected in a restricted namespace");
    match &err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 403, "{s:?}");
            assert!(s.message.contains("violates PodSecurity"), "{}", s.message);
            assert!(s.message.contains("privileged"), "{}", s.message);
        }
        other => panic!("expected an admission rejection, got {other:?}"),
    }

    let compliant = pod_from_json(json!({
        "metadata": {"name": "compliant"},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": restricted_pod_security(),
            "containers": [busybox("c", &["sh", "-c", "id -u"],
                json!({"securityContext": restricted_container_security()}))]}
    }));
    let done = run_pod_to_completion(&pods, &compliant).await.unwrap();
    assert_phase(&done, "Succeeded");
    assert_eq!(
        pod_logs(&pods, "compliant", "c").await.unwrap().trim(),
        "1000"
    );
}

#[tokio::test]
async fn busybox_pod_runs_on_the_kubelet_and_reports_its_log_and_exit_code() {
    let (bed, _ns, pods) = namespace_for_pods("run").await;
    let script = "echo hello from $(hostname); echo to-stderr >&2; exit 3";
    let pod = pod_from_json(json!({
        "metadata": {"name": "busybox"},
        "spec": {"restartPolicy": "Never",
            "containers": [busybox("job", &["sh", "-c", script], json!({}))]}
    }));
    let done = run_pod_to_completion(&pods, &pod).await.unwrap();
    assert_phase(&done, "Failed");
    let terminated = done
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .expect("the container terminated");
    assert_eq!(terminated.exit_code, 3);
    assert_eq!(
        done.spec.unwrap().node_name.as_deref(),
        Some(bed.env.node_name.as_str())
    );

    let log = pod_logs(&pods, "busybox", "job").await.unwrap();
    // stdout and stderr are separate pipes, so their relative order in the log is not fixed.
    let mut lines: Vec<&str> = log.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["hello from busybox", "to-stderr"], "log: {log:?}");
}

#[tokio::test]
async fn projected_volume_memory_volume_and_native_sidecar_behave_as_keyhole_needs() {
    let (_bed, ns, pods) = namespace_for_pods("sidecar").await;
    ns.api::<Secret>()
        .create(
            &PostParams::default(),
            &secret("job-inputs", &[("job-token", "tok-123456789")]),
        )
        .await
        .unwrap();
    let main_script = r#"
        test -f /shared/sidecar-started && echo "sidecar-first=yes"
        for f in token annotations job-token; do echo "$f=$(stat -Lc '%a %g' /inputs/$f)"; done
        echo "token-parts=$(awk -F. '{print NF}' /inputs/token)"
        echo "annotation=$(grep secrets.keyhole.dev/DB /inputs/annotations)"
        echo "job-token-value=$(cat /inputs/job-token)"
        echo "secrets-fs=$(awk '$2 == "/keyhole/secrets" {print $3}' /proc/mounts)"
        echo "sa-token-mounted=$(test -e /var/run/secrets/kubernetes.io/serviceaccount/token && echo yes || echo no)"
    "#;
    let sidecar_script = r#"
        trap 'echo sidecar-got-term; exit 0' TERM
        echo started > /shared/sidecar-started
        while true; do sleep 1; done
    "#;
    let pod = pod_from_json(json!({
        "metadata": {"name": "sidecar", "annotations": {"secrets.keyhole.dev/DB": "vault:kv/db#password"}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 10,
            "securityContext": restricted_pod_security(),
            "volumes": [
                {"name": "inputs", "projected": {"defaultMode": 0o440, "sources": [
                    {"serviceAccountToken": {"audience": "vault", "expirationSeconds": 600, "path": "token"}},
                    {"downwardAPI": {"items": [{"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}]}},
                    {"secret": {"name": "job-inputs", "items": [{"key": "job-token", "path": "job-token"}]}}]}},
                {"name": "secrets", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
                {"name": "shared", "emptyDir": {}}
            ],
            "initContainers": [busybox("broker", &["sh", "-c", sidecar_script], json!({
                "restartPolicy": "Always",
                "startupProbe": {"exec": {"command": ["test", "-f", "/shared/sidecar-started"]},
                    "periodSeconds": 1, "failureThreshold": 30},
                "securityContext": restricted_container_security(),
                "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]}))],
            "containers": [busybox("build", &["sh", "-c", main_script], json!({
                "securityContext": restricted_container_security(),
                "volumeMounts": [
                    {"name": "inputs", "mountPath": "/inputs", "readOnly": true},
                    {"name": "secrets", "mountPath": "/keyhole/secrets", "readOnly": true},
                    {"name": "shared", "mountPath": "/shared", "readOnly": true}]}))]
        }
    }));
    let done = run_pod_to_completion(&pods, &pod).await.unwrap();
    let status = done.status.unwrap();
    assert_eq!(
        status.phase.as_deref(),
        Some("Succeeded"),
        "the pod completes once the build container exits, although the sidecar loops forever"
    );

    let log = pod_logs(&pods, "sidecar", "build").await.unwrap();
    let lines: BTreeMap<&str, &str> = log.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(lines.get("sidecar-first"), Some(&"yes"), "log: {log}");
    for file in ["token", "annotations", "job-token"] {
        // The kubelet writes the serviceAccountToken source 0600 and, with fsGroup, adds group
        // read (0640); the other sources take defaultMode. Nobody else may read any of them.
        let expected = if file == "token" {
            "640 1000"
        } else {
            "440 1000"
        };
        assert_eq!(
            lines.get(file),
            Some(&expected),
            "mode/group of {file}; log: {log}"
        );
    }
    assert_eq!(
        lines.get("token-parts"),
        Some(&"3"),
        "a JWT has three parts; log: {log}"
    );
    assert_eq!(
        lines.get("annotation"),
        Some(&r#"secrets.keyhole.dev/DB="vault:kv/db#password""#),
        "log: {log}"
    );
    assert_eq!(
        lines.get("job-token-value"),
        Some(&"tok-123456789"),
        "log: {log}"
    );
    assert_eq!(lines.get("secrets-fs"), Some(&"tmpfs"), "log: {log}");
    assert_eq!(lines.get("sa-token-mounted"), Some(&"no"), "log: {log}");

    let sidecar = &status.init_container_statuses.unwrap()[0];
    let sidecar_end = sidecar
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("the sidecar is stopped after the build container exits");
    assert_eq!(sidecar_end.exit_code, 0);
    let build_end = status.container_statuses.unwrap()[0]
        .state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .expect("build container terminated");
    assert!(sidecar_end.finished_at.as_ref().unwrap().0 >= build_end.finished_at.unwrap().0);
    let sidecar_log = pod_logs(&pods, "sidecar", "broker").await.unwrap();
    assert!(
        sidecar_log.contains("sidecar-got-term"),
        "sidecar log: {sidecar_log}"
    );
}

#[tokio::test]
async fn deleting_a_pod_garbage_collects_the_secret_it_owns() {
    let (_bed, ns, pods) = namespace_for_pods("gc").await;
    let pod = pod_from_json(json!({
        "metadata": {"name": "owner"},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 0,
            "containers": [busybox("c", &["sleep", "3600"], json!({}))]}
    }));
    let pod = pods.create(&PostParams::default(), &pod).await.unwrap();
    let mut owned = secret("owned", &[("k", "v")]);
    owned.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: "owner".into(),
        uid: pod.meta().uid.clone().unwrap(),
        ..OwnerReference::default()
    }]);
    owned.immutable = Some(true);
    let secrets: Api<Secret> = ns.api();
    let owned = secrets
        .create(&PostParams::default(), &owned)
        .await
        .unwrap();
    let uid = owned.metadata.uid.unwrap();

    pods.delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    let gone = tokio::time::timeout(
        Duration::from_secs(120),
        await_condition(secrets.clone(), "owned", conditions::is_deleted(&uid)),
    )
    .await
    .expect("the garbage collector removes the owned Secret")
    .unwrap();
    assert!(gone.is_none());
    let err = secrets.get("owned").await.expect_err("the Secret is gone");
    assert!(matches!(err, kube::Error::Api(s) if s.code == 404));
}

#[tokio::test]
async fn validating_admission_policy_rejects_what_its_cel_expression_forbids() {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    let bed = TestBed::connect().await;
    let ns = TestNamespace::create(&bed, "vap", &[]).await.unwrap();
    let name = format!("{}-no-hostpath", ns.name);
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(bed.client.clone());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(bed.client.clone());
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["CREATE"], "resources": ["pods"]}]},
            "validations": [{"expression": "!has(object.spec.volumes) || object.spec.volumes.all(v, !has(v.hostPath))",
                "message": "hostPath volumes are not allowed here"}]}
    }))
    .unwrap();
    policies
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name}}}}
    }))
    .unwrap();
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();

    let pods: Api<Pod> = ns.api();
    let host_path = pod_from_json(json!({
        "metadata": {"generateName": "hostpath-"},
        "spec": {"containers": [busybox("c", &["true"], json!({}))],
            "volumes": [{"name": "h", "hostPath": {"path": "/etc"}}]}
    }));
    // The apiserver compiles new policies asynchronously: allow it a few seconds.
    let rejection = eventually(
        Duration::from_secs(20),
        Duration::from_millis(100),
        async || match pods.create(&PostParams::default(), &host_path).await {
            Err(kube::Error::Api(s)) => Some(s),
            Ok(created) => {
                let _ = pods
                    .delete(
                        created.metadata.name.as_deref().unwrap(),
                        &DeleteParams::default(),
                    )
                    .await;
                None
            }
            Err(other) => panic!("unexpected error: {other:?}"),
        },
    )
    .await;
    let _ = bindings.delete(&name, &DeleteParams::default()).await;
    let _ = policies.delete(&name, &DeleteParams::default()).await;
    let rejection = rejection.expect("the policy never took effect");
    assert!(
        rejection
            .message
            .contains("hostPath volumes are not allowed here"),
        "{rejection:?}"
    );

    let plain = pod_from_json(json!({
        "metadata": {"name": "plain"},
        "spec": {"containers": [busybox("c", &["true"], json!({}))]}
    }));
    pods.create(&PostParams::default(), &plain).await.unwrap();
}

/// The waiting reason and message of a pod's first container, if it is waiting.
fn waiting_of(pod: Option<&Pod>) -> Option<(String, String)> {
    let status = pod?.status.as_ref()?.container_statuses.as_ref()?.first()?;
    let waiting = status.state.as_ref()?.waiting.as_ref()?;
    Some((
        waiting.reason.clone().unwrap_or_default(),
        waiting.message.clone().unwrap_or_default(),
    ))
}

/// The private image is in the bed's registry only (`up` removed it from containerd), and
/// `imagePullPolicy: Always` makes the kubelet ask the registry each time: a pod gets it with an
/// image pull Secret holding the registry's credentials, and without one or with a wrong
/// password stays waiting on a pull the registry refused.
#[tokio::test]
async fn private_registry_image_is_pulled_only_with_an_image_pull_secret_holding_its_credentials() {
    let bed = TestBed::connect().await;
    let registry = bed.env.registry().unwrap();
    let password = registry.password().unwrap();
    assert!(!password.is_empty(), "the registry password file is empty");

    // The registry itself refuses anonymous requests and accepts its user: were it open, the
    // pod without credentials below would pull the image as well. Its certificate is from the
    // bed's CA, the one Vault's TLS listeners use.
    let ca = std::fs::read(&bed.env.vault_ca_file).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let base = format!("https://{}/v2/", registry.addr);
    let anonymous = http.get(&base).send().await.unwrap();
    assert_eq!(
        anonymous.status().as_u16(),
        401,
        "the registry must require credentials"
    );
    let authorized = http
        .get(&base)
        .basic_auth(&registry.user, Some(&password))
        .send()
        .await
        .unwrap();
    assert_eq!(
        authorized.status().as_u16(),
        200,
        "the registry must accept its user"
    );

    let ns = restricted_namespace(&bed, "pull").await;
    let secrets: Api<Secret> = ns.api();
    for (name, secret_password) in [
        ("registry", password.as_str()),
        ("wrong-password", "not-the-password"),
    ] {
        let pull_secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/dockerconfigjson".into()),
            string_data: Some(BTreeMap::from([(
                ".dockerconfigjson".to_owned(),
                registry.docker_config_json(&registry.user, secret_password),
            )])),
            ..Secret::default()
        };
        secrets
            .create(&PostParams::default(), &pull_secret)
            .await
            .unwrap();
    }

    let pods: Api<Pod> = ns.api();
    let pod = |name: &str, pull_secret: Option<&str>| {
        pod_from_json(json!({
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": false,
                "securityContext": restricted_pod_security(),
                "imagePullSecrets": pull_secret.map(|s| vec![json!({"name": s})]),
                "containers": [{"name": "c", "image": registry.private_image,
                    "imagePullPolicy": "Always", "command": ["echo", "pulled"],
                    "securityContext": restricted_container_security()}]}
        }))
    };
    for (name, pull_secret) in [
        ("anonymous", None),
        ("wrong-password", Some("wrong-password")),
    ] {
        pods.create(&PostParams::default(), &pod(name, pull_secret))
            .await
            .unwrap();
    }

    let done = run_pod_to_completion(&pods, &pod("with-secret", Some("registry")))
        .await
        .unwrap();
    assert_phase(&done, "Succeeded");
    assert_eq!(
        pod_logs(&pods, "with-secret", "c").await.unwrap().trim(),
        "pulled"
    );
    // The kubelet reports each pull it made; Events are posted asynchronously.
    let events: Api<Event> = ns.api();
    let pulled = eventually(
        Duration::from_secs(5),
        Duration::from_millis(100),
        async || {
            let pulled: Vec<String> = events
                .list(&ListParams::default().fields("involvedObject.name=with-secret"))
                .await
                .unwrap()
                .items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("Pulled"))
                .filter_map(|e| e.message)
                .collect();
            (!pulled.is_empty()).then_some(pulled)
        },
    )
    .await
    .unwrap_or_default();
    assert!(
        pulled
            .iter()
            .any(|m| m.contains("Successfully pulled image") && m.contains(&registry.private_image)),
        "the kubelet must have pulled the image from the registry: {pulled:?}"
    );

    // Were the registry open, these pods would run: waiting stops at that too, to fail fast.
    for (name, refusal) in [
        // containerd sends no request without credentials once the registry asked for Basic auth.
        (
            "anonymous",
            "authorization failed: no basic auth credentials",
        ),
        // Mostly the registry's 401; containerd sometimes reports the same refusal as for an
        // anonymous pull (seen once in test-all): either is a refusal on authorization.
        ("wrong-password", "401 Unauthorized|authorization failed"),
    ] {
        let refused = wait_for_pod(&pods, name, |p| {
            let phase = p.and_then(|p| p.status.as_ref()?.phase.clone());
            matches!(phase.as_deref(), Some("Running" | "Succeeded" | "Failed"))
                || waiting_of(p).is_some_and(|(reason, _)| {
                    reason == "ErrImagePull" || reason == "ImagePullBackOff"
                })
        })
        .await
        .unwrap();
        assert_eq!(
            refused.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Pending"),
            "{name} must not run: {:#?}",
            refused.status
        );
        let (reason, message) = waiting_of(Some(&refused)).unwrap();
        assert!(
            refusal.split('|').any(|r| message.contains(r)),
            "{name}: the pull must fail on authorization ({refusal:?}), got {reason}: {message}"
        );
    }
}

/// The S3 store for CI cache does what the runner will rely on: path-style objects behind
/// pre-signed SigV4 URLs (PUT, GET, HEAD, DELETE), reachable from a job pod, and a real
/// signature check: requests without a signature, signed with another secret, for another
/// object or method, or past their expiry are refused with 403 and change nothing.
#[tokio::test]
async fn s3_store_serves_presigned_sigv4_requests_and_refuses_unsigned_or_wrongly_signed_ones() {
    use rusty_s3::{Credentials, S3Action};

    let bed = TestBed::connect().await;
    let s3 = bed.env.s3().unwrap();
    let bucket = s3.bucket().unwrap();
    let credentials = s3.credentials().unwrap();
    let wrong = Credentials::new(&s3.access_key, "not-the-secret-key");
    let valid = Duration::from_secs(300);
    let http = reqwest::Client::new();
    let id = format!("{:016x}", fastrand::u64(..));
    let key = format!("testbed/{id}/cache.zip");
    let body = format!("cache of {id}").into_bytes();

    let status = |r: reqwest::Response| r.status().as_u16();
    let put = bucket.put_object(Some(&credentials), &key).sign(valid);
    assert!(
        put.as_str()
            .starts_with(&format!("{}/{}/testbed/", s3.endpoint, s3.bucket)),
        "a path-style URL on the bed's endpoint: {put}"
    );
    assert!(put.query().unwrap_or_default().contains("X-Amz-Signature="));
    let r = http.put(put).body(body.clone()).send().await.unwrap();
    assert_eq!(status(r), 200, "a pre-signed PUT stores the object");

    let get = bucket.get_object(Some(&credentials), &key).sign(valid);
    let r = http.get(get.clone()).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), body.as_slice());
    let head = bucket.head_object(Some(&credentials), &key).sign(valid);
    let r = http.head(head).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // The header itself: reqwest's content_length() is the body's, empty for a HEAD.
    assert_eq!(
        r.headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()),
        Some(body.len().to_string().as_str())
    );

    // Refused: each answers 403 and leaves the object as it was.
    let other_key = format!("testbed/{id}/other.zip");
    let expiring = bucket
        .get_object(Some(&credentials), &key)
        .sign(Duration::from_secs(1));
    let unsigned_put = bucket.put_object(None, &key).sign(valid);
    assert!(!unsigned_put.as_str().contains("X-Amz-"), "{unsigned_put}");
    let signed_for_other = bucket
        .get_object(Some(&credentials), &other_key)
        .sign(valid)
        .query()
        .map(str::to_owned);
    let mut other_signature = bucket.object_url(&key);
    other_signature.set_query(signed_for_other.as_deref());
    let refused = [
        (
            "unsigned GET",
            http.get(bucket.get_object(None, &key).sign(valid)),
        ),
        ("unsigned PUT", http.put(unsigned_put).body("overwritten")),
        (
            "unsigned DELETE",
            http.delete(bucket.delete_object(None, &key).sign(valid)),
        ),
        (
            "unsigned bucket listing",
            http.get(bucket.base_url().clone()),
        ),
        (
            "GET signed with a wrong secret key",
            http.get(bucket.get_object(Some(&wrong), &key).sign(valid)),
        ),
        (
            "PUT signed with a wrong secret key",
            http.put(bucket.put_object(Some(&wrong), &key).sign(valid))
                .body("overwritten"),
        ),
        (
            "a GET's signature used for a PUT",
            http.put(get).body("overwritten"),
        ),
        ("another object's signature", http.get(other_signature)),
    ];
    for (what, request) in refused {
        let r = request.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 403, "{what} must be refused");
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = http.get(expiring).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403, "an expired URL must be refused");

    // A job pod reaches the store on the bridge with only a pre-signed URL (busybox wget).
    let ns = TestNamespace::create(&bed, "s3", &[]).await.unwrap();
    let pods: Api<Pod> = ns.api();
    let url = bucket.get_object(Some(&credentials), &key).sign(valid);
    let pod = pod_from_json(json!({
        "metadata": {"name": "cache-get"},
        "spec": {"restartPolicy": "Never", "automountServiceAccountToken": false,
            "containers": [busybox("job", &["wget", "-q", "-O", "-", url.as_str()], json!({}))]}
    }));
    let done = run_pod_to_completion(&pods, &pod).await.unwrap();
    assert_phase(&done, "Succeeded");
    assert_eq!(
        pod_logs(&pods, "cache-get", "job").await.unwrap(),
        String::from_utf8(body.clone()).unwrap(),
        "the pod got the object unchanged by the refused requests"
    );

    let r = http
        .delete(bucket.delete_object(Some(&credentials), &key).sign(valid))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204, "a pre-signed DELETE removes it");
    let r = http
        .get(bucket.get_object(Some(&credentials), &key).sign(valid))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}
