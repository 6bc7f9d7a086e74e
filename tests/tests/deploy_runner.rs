//! The runner as it is deployed: the Helm chart installed on the bed with the runner image
//! (`keyhole.local/runner:dev`), the runner pod talking to the coordinator (a fake GitLab on the
//! bed's bridge) and to the apiserver with its ServiceAccount, a job of a tenant project run in a
//! job pod whose broker reads a Vault secret with the tenant's ServiceAccount, and the release
//! deleted with the runner stopping gracefully.
//!
//! Needs `scripts/testbed up` and both images:
//! `cargo build --release -p keyhole-runner -p keyhole-broker`, then
//! `scripts/testbed image keyhole.local/runner:dev target/release/keyhole-runner` and
//! `scripts/testbed image keyhole.local/broker:dev target/release/keyhole-broker`.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{AsyncBufReadExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret};
use keyhole_tests::coordinator::FinalStatus;
use keyhole_tests::{
    BedEnv, Coordinator, CoordinatorOptions, HelmRelease, TestBed, TestNamespace, VaultAdmin,
    bed_command, bed_script, run_ok,
};
use kube::Api;
use kube::api::{ListParams, LogParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

/// Release name; the namespace keeps test runs apart.
const RELEASE: &str = "kh";
const RUNNER_SELECTOR: &str = "app.kubernetes.io/component=runner";
/// The chart's default `runner.port`.
const RUNNER_PORT: u16 = 9252;
/// Bounds of the waits below (deadlines against hangs, not timing assertions).
const RUNNER_READY: Duration = Duration::from_secs(180);
const JOB_DONE: Duration = Duration::from_secs(240);
const RUNNER_GONE: Duration = Duration::from_secs(150);

/// Removes the tenant's Vault role and policy when dropped.
struct VaultRole {
    env: BedEnv,
    name: String,
}

impl Drop for VaultRole {
    fn drop(&mut self) {
        let _ = bed_script(
            &self.env,
            &format!(
                "vault delete auth/kubernetes/role/{0}; vault policy delete {0}",
                self.name
            ),
        )
        .output();
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// What the runner pod is doing, for a failure message: its status and its log.
async fn describe_runner(pods: &Api<Pod>) -> String {
    let mut out = String::new();
    let list = pods
        .list(&ListParams::default().labels(RUNNER_SELECTOR))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    for pod in list {
        let name = pod.metadata.name.clone().unwrap_or_default();
        out.push_str(&format!(
            "pod {name}: {}\n",
            serde_json::to_string(&pod.status).unwrap_or_default()
        ));
        let log = pods
            .logs(&name, &LogParams::default())
            .await
            .unwrap_or_else(|e| format!("(no log: {e})"));
        out.push_str(&format!("log:\n{log}\n"));
    }
    out
}

/// Waits (by watch) until a runner pod is Ready, i.e. GitLab accepted its token and the
/// apiserver answered it (`/readyz`), and returns it.
async fn ready_runner(pods: &Api<Pod>) -> Pod {
    let ready = watcher(
        pods.clone(),
        watcher::Config::default().labels(RUNNER_SELECTOR),
    )
    .applied_objects()
    .try_filter(|p| std::future::ready(is_ready(p)));
    let mut ready = std::pin::pin!(ready);
    match tokio::time::timeout(RUNNER_READY, ready.try_next()).await {
        Ok(Ok(Some(pod))) => pod,
        Ok(other) => panic!("watching the runner pod: {other:?}"),
        Err(_) => panic!(
            "the runner pod was not Ready within {RUNNER_READY:?}:\n{}",
            describe_runner(pods).await
        ),
    }
}

/// The runner's `/metrics`, through the apiserver's proxy to the pod.
fn metrics(env: &BedEnv, namespace: &str, pod: &str) -> anyhow::Result<String> {
    run_ok(bed_command(env, "kubectl").args([
        "get",
        "--raw",
        &format!("/api/v1/namespaces/{namespace}/pods/{pod}:{RUNNER_PORT}/proxy/metrics"),
    ]))
}

#[tokio::test]
async fn the_charts_runner_takes_a_job_and_completes_it_with_a_vault_secret() {
    let bed = TestBed::connect().await;
    let vault = VaultAdmin::new(&bed.env);
    let ns = TestNamespace::create(
        &bed,
        "deployrun",
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await
    .unwrap();
    let jobs_ns = format!("{}-jobs", ns.name);
    // GitLab on the bed's bridge: the runner pod and the job pod's checkout reach it there.
    let gitlab = Coordinator::start(CoordinatorOptions {
        bind: SocketAddr::from(([10, 213, 0, 1], 0)),
        long_poll: Duration::from_secs(5),
        ..CoordinatorOptions::default()
    })
    .await
    .unwrap();

    // The runner token, in a Secret of our own (not in Helm's release data).
    Api::<Secret>::namespaced(bed.client.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "runner-token"},
                "stringData": {"token": gitlab.runner_token()}
            }))
            .unwrap(),
        )
        .await
        .unwrap();

    // A tenant: its jobs run as their own ServiceAccount, whose Vault role (named like it, and
    // unique to this run) reads one KV path. The values are unique to this run too.
    let project = "acme/deployed-app";
    let tenant_sa = format!("app-{}", ns.name);
    let _vault_role = VaultRole {
        env: bed.env.clone(),
        name: tenant_sa.clone(),
    };
    let password = format!("deployed-db-pw-{}", fastrand::u64(..));
    vault
        .write(
            &format!("kv/data/{}/db", ns.name),
            json!({"data": {"password": password}}),
        )
        .await
        .unwrap();
    let apiserver = &bed.env.apiserver_url;
    let gitlab_port = gitlab.addr().port();
    let values = format!(
        r#"
image: {{repository: keyhole.local/runner, tag: dev, pullPolicy: Never}}
runner:
  url: "{url}"
  logFormat: text
  terminationGracePeriodSeconds: 120
  token: {{secretName: runner-token}}
  kubernetes:
    host: "{apiserver}"
    image: "keyhole.local/busybox:1"
    pull_policy: never
    pod_termination_grace_period_seconds: 20
broker: {{image: "keyhole.local/broker:dev"}}
vault:
  address: "{vault_addr}"
  caBundle: {ca_bundle}
jobs:
  namespace: {jobs_ns}
  kubeApi: "{apiserver}"
tenants:
  - project: {project}
    serviceAccount: {tenant_sa}
    vault:
      paths: ["kv/data/{ns}/*"]
      tokenTtl: 2m
networkPolicy:
  gitlab: {{cidrs: [10.213.0.1/32], ports: [{gitlab_port}]}}
  vault: {{cidrs: [10.213.0.1/32], ports: [8201]}}
  kubernetesApi: {{cidrs: [10.213.0.1/32], ports: [6443]}}
"#,
        url = gitlab.url(),
        // Vault over TLS from the bed's own CA: the chart hands the bundle to the brokers.
        vault_addr = bed.env.vault_tls_pod_addr,
        ca_bundle =
            serde_json::to_string(&std::fs::read_to_string(&bed.env.vault_ca_file).unwrap())
                .unwrap(),
        ns = ns.name,
    );
    let release = HelmRelease::install(&bed.env, RELEASE, &ns.name, &values).unwrap();

    // The Vault commands the chart prints, run as the Vault admin would.
    let notes = release.notes().unwrap();
    let block = notes
        .split_once("# --- keyhole: vault setup ---")
        .and_then(|(_, rest)| rest.split_once("# --- keyhole: end ---"))
        .map(|(block, _)| block)
        .unwrap_or_else(|| panic!("no Vault block in NOTES:\n{notes}"));
    assert!(
        block.contains(&format!("auth/kubernetes/role/{tenant_sa} ")),
        "the tenant's role is named like its ServiceAccount:\n{block}"
    );
    run_ok(&mut bed_script(&bed.env, block)).unwrap();

    let pods: Api<Pod> = ns.api();
    let runner_pod = ready_runner(&pods).await;
    let runner_name = runner_pod.metadata.name.clone().unwrap();

    // A job of the tenant's project: a repository to check out and a Vault secret.
    let sha = gitlab
        .create_repo(
            project,
            &[("hello.txt", "hello from the deployed runner\n")],
        )
        .unwrap();
    let job = gitlab
        .job()
        .project(77, project)
        .sha(&sha)
        .variable(
            "KEYHOLE_SECRET_DB_PASSWORD",
            &format!("vault:kv/{}/db#password", ns.name),
        )
        .script([
            "cat hello.txt",
            "echo \"db password: $(cat \"$DB_PASSWORD\")\"",
        ])
        .enqueue()
        .unwrap();
    let done = match gitlab.wait_for_final(job.id, JOB_DONE).await {
        Ok(done) => done,
        Err(e) => panic!(
            "{e:#}\ntrace:\n{}\n{}",
            String::from_utf8_lossy(&gitlab.trace(job.id)),
            describe_runner(&pods).await
        ),
    };
    let trace = String::from_utf8_lossy(&gitlab.trace(job.id)).into_owned();
    assert_eq!(done.status, FinalStatus::Success, "{trace}");
    for line in [
        "Checked out",
        "hello from the deployed runner",
        "db password: [MASKED]",
        "Job succeeded",
    ] {
        assert!(trace.contains(line), "missing {line:?}:\n{trace}");
    }
    // Over TLS, with the chart's CA bundle (vault.caBundle).
    let tls_login = format!("logging in to Vault at {}", bed.env.vault_tls_pod_addr);
    assert!(
        trace.contains(&tls_login),
        "missing {tls_login:?}:\n{trace}"
    );
    // The Vault role is bound to the tenant's ServiceAccount only: the secret arrived, so the
    // job pod ran as that account.
    assert!(!trace.contains(&password), "the secret reached the trace");
    assert!(
        !trace.contains(&job.token),
        "the job token reached the trace"
    );

    // The runner counts the job (read through the apiserver's proxy to the pod). The count
    // follows the final update, so wait for it, bounded.
    let counted = "keyhole_runner_jobs_total{outcome=\"success\"} 1";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = metrics(&bed.env, &ns.name, &runner_name).unwrap();
        if text.contains(counted) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{counted:?} not in /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Deleting the release stops the runner gracefully: SIGTERM, no new jobs, "stopped", exit.
    let log = pods
        .log_stream(
            &runner_name,
            &LogParams {
                follow: true,
                ..LogParams::default()
            },
        )
        .await
        .unwrap();
    let follow = tokio::spawn(async move {
        let mut lines = log.lines();
        let mut out = Vec::new();
        while let Ok(Some(line)) = lines.try_next().await {
            out.push(line);
        }
        out
    });
    tokio::task::spawn_blocking(move || release.uninstall())
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(
        RUNNER_GONE,
        await_condition(pods.clone(), &runner_name, |p: Option<&Pod>| p.is_none()),
    )
    .await
    .unwrap_or_else(|_| panic!("the runner pod is still there {RUNNER_GONE:?} after uninstall"))
    .unwrap();
    let lines = tokio::time::timeout(RUNNER_GONE, follow)
        .await
        .expect("the runner's log ends with its pod")
        .unwrap();
    let log = lines.join("\n");
    assert!(
        !log.contains("no job journal"),
        "the runner could not keep its journal of running jobs:\n{log}"
    );
    assert!(
        log.contains("stopping: no new jobs"),
        "the runner did not stop taking jobs on SIGTERM:\n{log}"
    );
    assert!(
        lines.last().is_some_and(|l| l.contains("stopped")),
        "the runner's last line is not \"stopped\":\n{log}"
    );
}
