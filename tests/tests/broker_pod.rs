//! The broker as a native sidecar in a real job pod on the bed: it logs in to Vault with the
//! pod's projected token, reads a Kubernetes Secret as the job's ServiceAccount, delivers both
//! and the job variables of the per-job Secret, masks them in the job log, keeps a dynamic
//! secret's lease alive while the job runs, and wipes and revokes at the end. Needs `scripts/testbed up` and
//! the broker image (`cargo build --profile broker -p keyhole-broker && scripts/testbed image
//! keyhole.local/broker:dev target/broker/keyhole-broker`, done by `scripts/test-all`).

use k8s_openapi::api::core::v1::{ContainerStatus, Pod, Secret};
use keyhole_tests::{
    JobNamespace, TestBed, TestNamespace, VaultAdmin, VaultRole, id_token_claims, pod_logs,
    restricted_container_security, restricted_pod_security, run_pod_to_completion,
};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

const BROKER_IMAGE: &str = "keyhole.local/broker:dev";
const BUSYBOX: &str = "keyhole.local/busybox:1";

fn sha256_hex(data: &[u8]) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(data)?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

struct JobSetup {
    bed: TestBed,
    ns: TestNamespace,
    /// The bed's Vault, as root.
    vault: VaultAdmin,
    db_password: String,
    app_token: String,
}

async fn job_setup(tag: &str) -> JobSetup {
    let job = JobNamespace::builder(tag)
        .restricted()
        .service_account("job")
        .secret_reader("read-app-creds", "job", "app-creds")
        .vault_role(VaultRole::new("job").read("kv/data/{ns}/*"))
        .create()
        .await;
    let name = job.name().to_owned();
    let db_password = format!("db-pass-{name}-\"quoted\" $HOME 'x'");
    let app_token = format!("app-token-{name}-0123456789");
    job.ns
        .create_object::<Secret>(
            json!({"metadata": {"name": "app-creds"}, "stringData": {"token": app_token}}),
        )
        .await;
    job.ns.create_object::<Secret>(
        json!({"metadata": {"name": "not-yours"}, "stringData": {"token": "forbidden-value-1234"}}),
    )
    .await;
    job.write_kv("db", json!({"password": db_password})).await;
    let JobNamespace { bed, ns, vault } = job;
    JobSetup {
        bed,
        ns,
        vault,
        db_password,
        app_token,
    }
}

/// A job pod with the broker as native sidecar, logging in to Vault as the role named after
/// the namespace. `vault_env` adds to the broker's settings (e.g. the login method);
/// `extra_sources` adds projected sources (e.g. the per-job Secret).
fn job_pod(
    setup: &JobSetup,
    annotations: serde_json::Value,
    script: &str,
    vault_env: serde_json::Value,
    extra_sources: serde_json::Value,
) -> Pod {
    let env = &setup.bed.env;
    let mut sources = vec![
        json!({"serviceAccountToken": {"audience": "vault", "expirationSeconds": 600, "path": "token"}}),
        json!({"serviceAccountToken": {"expirationSeconds": 600, "path": "kube-token"}}),
        json!({"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}),
        json!({"downwardAPI": {"items": [{"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}]}}),
    ];
    sources.extend(extra_sources.as_array().cloned().unwrap_or_default());
    let mut broker_env = vec![
        json!({"name": "KEYHOLE_VAULT_ADDR", "value": env.vault_pod_addr}),
        json!({"name": "KEYHOLE_VAULT_DEADLINE", "value": "5"}),
        json!({"name": "KEYHOLE_KUBE_API", "value": env.apiserver_url}),
        json!({"name": "KEYHOLE_KUBE_CA_FILE", "value": "/keyhole/inputs/ca.crt"}),
        json!({"name": "KEYHOLE_NAMESPACE", "value": setup.ns.name}),
        json!({"name": "KEYHOLE_VAULT_ROLE", "value": setup.ns.name}),
    ];
    broker_env.extend(vault_env.as_array().cloned().unwrap_or_default());
    serde_json::from_value(json!({
        "metadata": {"name": "job", "annotations": annotations},
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": "job",
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 30,
            "securityContext": restricted_pod_security(),
            "volumes": [
                {"name": "keyhole-inputs", "projected": {"sources": sources}},
                {"name": "keyhole-secrets", "emptyDir": {"medium": "Memory", "sizeLimit": "4Mi"}},
                {"name": "keyhole-run", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}
            ],
            "initContainers": [{
                "name": "keyhole-broker", "image": BROKER_IMAGE, "imagePullPolicy": "Never",
                "restartPolicy": "Always", "args": ["run"],
                "env": broker_env,
                "startupProbe": {"exec": {"command": ["/usr/local/bin/keyhole-broker", "ready"]},
                                 "periodSeconds": 1, "failureThreshold": 60},
                "securityContext": restricted_container_security(),
                "volumeMounts": [
                    {"name": "keyhole-inputs", "mountPath": "/keyhole/inputs", "readOnly": true},
                    {"name": "keyhole-secrets", "mountPath": "/keyhole/secrets"},
                    {"name": "keyhole-run", "mountPath": "/keyhole/run"}]
            }],
            "containers": [{
                "name": "build", "image": BUSYBOX, "imagePullPolicy": "Never",
                "command": ["sh", "-c", script],
                "securityContext": restricted_container_security(),
                "volumeMounts": [
                    {"name": "keyhole-secrets", "mountPath": "/keyhole/secrets", "readOnly": true},
                    {"name": "keyhole-run", "mountPath": "/keyhole/run"}]
            }]
        }
    }))
    .unwrap()
}

/// The broker's log of the pod `job`, which must have succeeded.
async fn succeeded_broker_log(pods: &Api<Pod>, done: &Pod) -> String {
    let log = pod_logs(pods, "job", "keyhole-broker").await.unwrap();
    assert_eq!(
        done.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded"),
        "broker log:\n{log}"
    );
    log
}

/// Panics unless the broker's `log` holds each of `lines`.
fn assert_broker_said(log: &str, lines: &[&str]) {
    for line in lines {
        assert!(log.contains(line), "missing {line:?} in broker log:\n{log}");
    }
}

/// The broker's status in the pod (its first init container), once there is one.
fn broker_status(pod: Option<&Pod>) -> Option<&ContainerStatus> {
    pod?.status
        .as_ref()?
        .init_container_statuses
        .as_ref()?
        .first()
}

#[tokio::test]
async fn broker_delivers_vault_and_kubernetes_secrets_and_masks_them_in_the_job_log() {
    let setup = job_setup("brokerpod").await;
    let ns = &setup.ns.name;
    let ci_job_token = format!("glcbt-64_{ns}-ci-job-token");
    let deploy_config = format!("apiVersion: v1\nkind: Config\ntoken: file-var-{ns}\n");
    setup.ns.create_object::<Secret>(json!({"metadata": {"name": "job-inputs"},
               "stringData": {"var.CI_JOB_TOKEN": ci_job_token, "file.DEPLOY_CONFIG": deploy_config}})).await;
    let script = r#"
        exec > /keyhole/run/log 2>&1
        . /keyhole/secrets/.env
        echo "db=$(cat /keyhole/secrets/DB_PASSWORD)"
        echo "app=$APP_TOKEN"
        echo "job-token=$CI_JOB_TOKEN"
        echo "job-token-sha=$(printf '%s' "$CI_JOB_TOKEN" | sha256sum | cut -d' ' -f1)"
        echo "deploy-config-path=$DEPLOY_CONFIG"
        echo "deploy-config-sha=$(sha256sum < "$DEPLOY_CONFIG" | cut -d' ' -f1)"
        echo "deploy-config-mode=$(stat -c '%a %u' "$DEPLOY_CONFIG")"
        echo "db-b64=$(base64 < /keyhole/secrets/DB_PASSWORD | tr -d '\n')"
        echo "db-sha=$(sha256sum < /keyhole/secrets/DB_PASSWORD | cut -d' ' -f1)"
        echo "db-mode=$(stat -c '%a %u' /keyhole/secrets/DB_PASSWORD)"
        touch /keyhole/secrets/x 2>/dev/null && echo "secrets-writable" || echo "secrets-read-only"
        test -e /keyhole/inputs && echo "inputs-visible" || echo "inputs-hidden"
        test -e /var/run/secrets/kubernetes.io/serviceaccount/token && echo "sa-token-visible" || echo "no-sa-token"
        echo "job done"
    "#;
    let pod = job_pod(
        &setup,
        json!({
            "secrets.keyhole.dev/DB_PASSWORD": format!("vault:kv/{ns}/db#password"),
            "secrets.keyhole.dev/APP_TOKEN": "k8s:app-creds/token?file=false"
        }),
        script,
        json!([]),
        json!([{"secret": {"name": "job-inputs", "items": [
            {"key": "var.CI_JOB_TOKEN", "path": "job/var.CI_JOB_TOKEN"},
            {"key": "file.DEPLOY_CONFIG", "path": "job/file.DEPLOY_CONFIG"}]}}]),
    );
    let pods: Api<Pod> = setup.ns.api();
    let done = run_pod_to_completion(&pods, &pod).await.unwrap();
    let log = succeeded_broker_log(&pods, &done).await;
    assert_broker_said(
        &log,
        &[
            "db=[MASKED]",
            "app=[MASKED]",
            "db-b64=[MASKED]",
            &format!("db-sha={}", sha256_hex(setup.db_password.as_bytes())),
            "job-token=[MASKED]",
            &format!("job-token-sha={}", sha256_hex(ci_job_token.as_bytes())),
            "deploy-config-path=/keyhole/secrets/DEPLOY_CONFIG",
            &format!("deploy-config-sha={}", sha256_hex(deploy_config.as_bytes())),
            "deploy-config-mode=400 1000",
            "audit variable=CI_JOB_TOKEN source=job-secret:var.CI_JOB_TOKEN path=/keyhole/secrets/.env",
            "audit variable=DEPLOY_CONFIG source=job-secret:file.DEPLOY_CONFIG path=/keyhole/secrets/DEPLOY_CONFIG",
            "db-mode=400 1000",
            "secrets-read-only",
            "inputs-hidden",
            "no-sa-token",
            "job done",
            "Vault token revoked",
        ],
    );
    assert!(
        log.contains("audit secret=DB_PASSWORD source=vault:kv/"),
        "{log}"
    );
    assert!(log.contains("version=1"), "{log}");
    for secret in [
        setup.db_password.as_str(),
        setup.app_token.as_str(),
        ci_job_token.as_str(),
        &format!("file-var-{ns}"),
    ] {
        assert!(
            !log.contains(secret),
            "a secret value reached the log:\n{log}"
        );
    }
    let build_log = pod_logs(&pods, "job", "build").await.unwrap();
    assert_eq!(
        build_log, "",
        "the build container's output goes only through the broker"
    );
    let spec = serde_json::to_string(&done).unwrap();
    for secret in [setup.db_password.as_str(), setup.app_token.as_str()] {
        assert!(
            !spec.contains(secret),
            "a secret value is in the pod object"
        );
    }
}

#[tokio::test]
async fn broker_refuses_a_secret_the_service_account_may_not_read_and_the_job_never_starts() {
    let setup = job_setup("brokerdeny").await;
    let ns = &setup.ns.name;
    let pod = job_pod(
        &setup,
        json!({
            "secrets.keyhole.dev/DB_PASSWORD": format!("vault:kv/{ns}/db#password"),
            "secrets.keyhole.dev/STOLEN": "k8s:not-yours/token"
        }),
        "echo the job must not run > /keyhole/run/log",
        json!([]),
        json!([]),
    );
    let pods: Api<Pod> = setup.ns.api();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    // The broker exits with the contract's failure code and restarts (restartPolicy Always);
    // wait for its first termination.
    let failed = keyhole_tests::wait_for_pod(&pods, "job", |p: Option<&Pod>| {
        broker_status(p).is_some_and(|c| {
            c.last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .is_some()
                || c.state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .is_some()
        })
    })
    .await
    .unwrap();
    let status = broker_status(Some(&failed)).unwrap();
    let terminated = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .or_else(|| status.state.as_ref().and_then(|s| s.terminated.clone()))
        .unwrap();
    assert_eq!(
        terminated.exit_code,
        keyhole_contract::exit_code::SECRETS_FAILED
    );
    let log = pods
        .logs(
            "job",
            &kube::api::LogParams {
                container: Some("keyhole-broker".into()),
                previous: status.restart_count > 0,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(
        log.contains(&format!(
            "service account {ns}/job may not read secret not-yours in namespace {ns}"
        )),
        "{log}"
    );
    assert!(!log.contains("forbidden-value-1234"));
    let build = pods
        .get("job")
        .await
        .unwrap()
        .status
        .unwrap()
        .container_statuses
        .unwrap_or_default();
    assert!(
        build.iter().all(
            |c| c.state.as_ref().and_then(|s| s.running.as_ref()).is_none()
                && c.state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .is_none()
        ),
        "the build container never started: {build:?}"
    );
}

#[tokio::test]
async fn broker_logs_in_to_vault_with_the_jobs_gitlab_id_token() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};

    let setup = job_setup("brokerjwt").await;
    let ns = setup.ns.name.clone();
    setup
        .vault
        .jwt_role(&ns, "group/app", &ns, "120s")
        .await
        .unwrap();
    let claims = id_token_claims(&setup.bed.env, "group/app");
    let key =
        EncodingKey::from_rsa_pem(&std::fs::read(&setup.bed.env.jwt_signing_key).unwrap()).unwrap();
    let id_token = encode(&Header::new(Algorithm::RS256), &claims, &key).unwrap();
    setup
        .ns
        .create_object::<Secret>(
            json!({"metadata": {"name": "job-inputs"}, "stringData": {"VAULT_ID_TOKEN": id_token}}),
        )
        .await;
    let pod = job_pod(
        &setup,
        json!({"secrets.keyhole.dev/DB_PASSWORD": format!("vault:kv/{ns}/db?engine=kv-v2#password")}),
        "exec > /keyhole/run/log 2>&1; echo \"db=$(cat /keyhole/secrets/DB_PASSWORD)\"; echo job done",
        json!([{"name": "KEYHOLE_VAULT_AUTH_METHOD", "value": "jwt"},
               {"name": "KEYHOLE_VAULT_AUTH_MOUNT", "value": "jwt"}]),
        json!([{"secret": {"name": "job-inputs", "items": [{"key": "VAULT_ID_TOKEN", "path": "job/VAULT_ID_TOKEN"}]}}]),
    );
    let pods: Api<Pod> = setup.ns.api();
    let done = run_pod_to_completion(&pods, &pod).await.unwrap();
    let log = succeeded_broker_log(&pods, &done).await;
    assert_broker_said(&log, &["db=[MASKED]", "job done", "Vault token revoked"]);
    assert!(
        !log.contains(&setup.db_password) && !log.contains(&id_token),
        "{log}"
    );
}

#[tokio::test]
async fn broker_delivers_dynamic_credentials_renews_their_lease_and_revokes_it_when_the_job_ends() {
    use futures::{AsyncBufReadExt as _, TryStreamExt as _};
    use kube::api::{AttachParams, LogParams};

    const CREDS: &str = "database/creds/short-lived";
    let setup = job_setup("brokerdyn").await;
    let ns = setup.ns.name.clone();
    let vault = &setup.vault;
    vault
        .write(
            &format!("sys/policies/acl/{ns}"),
            json!({"policy": format!(
                "path \"{CREDS}\" {{ capabilities = [\"read\"] }}\n\
                 path \"sys/internal/ui/mounts/*\" {{ capabilities = [\"read\"] }}\n\
                 path \"sys/leases/revoke\" {{ capabilities = [\"update\"] }}\n")}),
        )
        .await
        .unwrap();
    let redis = setup
        .bed
        .env
        .redis
        .clone()
        .expect("the bed has no Redis: run `scripts/testbed build && scripts/testbed up`");
    let (redis_host, redis_port) = redis.pod_addr.split_once(':').unwrap();
    // The job proves the credentials work by talking RESP to Redis itself, then waits until
    // the test has seen a renewal (it creates /keyhole/run/let-the-job-end).
    let script = format!(
        r#"
        exec > /keyhole/run/log 2>&1
        u=$(cat /keyhole/secrets/REDIS_USER); p=$(cat /keyhole/secrets/REDIS_PASSWORD)
        mkfifo /tmp/redis-in
        nc {redis_host} {redis_port} < /tmp/redis-in > /tmp/redis-out &
        exec 3>/tmp/redis-in
        printf '*3\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nQUIT\r\n' ${{#u}} "$u" ${{#p}} "$p" >&3
        wait $!
        exec 3>&-
        echo "redis-says=$(tr -d '\r' < /tmp/redis-out | tr '\n' ' ')"
        i=0
        while [ ! -e /keyhole/run/let-the-job-end ] && [ $i -lt 600 ]; do sleep 0.2; i=$((i + 1)); done
        echo "job done"
        "#
    );
    let pod = job_pod(
        &setup,
        json!({
            "secrets.keyhole.dev/REDIS_USER": format!("vault:{CREDS}#username"),
            "secrets.keyhole.dev/REDIS_PASSWORD": format!("vault:{CREDS}#password"),
        }),
        &script,
        json!([]),
        json!([]),
    );
    let pods: Api<Pod> = setup.ns.api();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    keyhole_tests::wait_for_pod(&pods, "job", |p: Option<&Pod>| {
        broker_status(p).is_some_and(|c| c.started == Some(true))
    })
    .await
    .unwrap();

    // Follow the broker's log: the lease id from the audit line, then a renewal, each checked
    // on Vault's side.
    let mut lines = pods
        .log_stream(
            "job",
            &LogParams {
                follow: true,
                container: Some("keyhole-broker".into()),
                ..LogParams::default()
            },
        )
        .await
        .unwrap()
        .lines();
    let mut seen = String::new();
    let mut lease = None;
    let mut first_expiry = None;
    let mut said = false;
    let deadline = std::time::Duration::from_secs(120);
    let followed = tokio::time::timeout(deadline, async {
        while let Some(line) = lines.try_next().await.unwrap() {
            seen.push_str(&line);
            seen.push('\n');
            said |= line.contains("redis-says=+OK +PONG +OK");
            if lease.is_none()
                && line.contains("audit secret=REDIS_USER")
                && let Some(id) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("lease="))
            {
                first_expiry = Some(vault.lease_expiry(id).await);
                lease = Some(id.to_owned());
            }
            if let Some(id) = &lease
                && said
                && seen.contains(&format!("lease {id} renewed; ttl "))
            {
                return;
            }
        }
    })
    .await;
    assert!(
        followed.is_ok(),
        "no lease renewal in the broker log:\n{seen}"
    );
    let lease = lease.expect("a lease id on the audit line");
    let renewed_expiry = vault.lease_expiry(&lease).await;
    assert!(
        renewed_expiry > first_expiry.unwrap(),
        "Vault moved the lease's expiry forward: {first_expiry:?} -> {renewed_expiry}"
    );
    assert!(
        seen.contains(&format!(
            "audit secret=REDIS_PASSWORD source=vault:{CREDS}#password path=/keyhole/secrets/REDIS_PASSWORD lease={lease}"
        )),
        "both fields come from one lease:\n{seen}"
    );

    // Let the job finish.
    let mut touch = pods
        .exec(
            "job",
            ["touch", "/keyhole/run/let-the-job-end"],
            &AttachParams::default().container("build").stderr(false),
        )
        .await
        .unwrap();
    let touched = touch.take_status().unwrap().await;
    touch.join().await.unwrap();
    assert_eq!(
        touched.and_then(|s| s.status).as_deref(),
        Some("Success"),
        "exec touch in the build container"
    );
    let done = keyhole_tests::wait_for_pod(&pods, "job", |p: Option<&Pod>| {
        matches!(
            p.and_then(|p| p.status.as_ref())
                .and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
    })
    .await
    .unwrap();
    let log = succeeded_broker_log(&pods, &done).await;
    assert_broker_said(
        &log,
        &[
            "redis-says=+OK +PONG +OK",
            "job done",
            &format!("lease {lease} revoked"),
            "Vault token revoked",
        ],
    );
    vault.assert_lease_gone(&lease).await;
}
