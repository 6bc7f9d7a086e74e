//! The runner as it is deployed: the Helm chart installed on the bed with the runner image
//! (`keyhole.local/runner:dev`), the runner pod talking to the coordinator (a fake GitLab on the
//! bed's bridge) and to the apiserver with its ServiceAccount, a job of a tenant project run in a
//! job pod whose broker reads a Vault secret with the tenant's ServiceAccount, and the release
//! deleted with the runner stopping gracefully; and two runner replicas rolled by a `helm
//! upgrade` while they run jobs, the old pods draining theirs.
//!
//! Needs `scripts/testbed up` and both images:
//! `cargo build --release -p keyhole-runner -p keyhole-broker`, then
//! `scripts/testbed image keyhole.local/runner:dev target/release/keyhole-runner` and
//! `scripts/testbed image keyhole.local/broker:dev target/release/keyhole-broker` (or
//! `scripts/test-all`'s image step, which pulls the shipped images under those names).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret};
use keyhole_runner::instance::INSTANCE_LABEL;
use keyhole_runner::pod::{JOB_ID_LABEL, MANAGED_BY, MANAGED_BY_LABEL};
use keyhole_tests::coordinator::{FinalState, FinalStatus};
use keyhole_tests::gitlab_mode::assert_trace_has;
use keyhole_tests::{
    BedEnv, Coordinator, CoordinatorOptions, HelmRelease, JobNamespace, TestBed, TestNamespace,
    VaultAdmin, VaultRoleRemoved, bed_command, bed_script, eventually, run_ok,
};
use kube::Api;
use kube::api::{DeleteParams, ListParams, LogParams};
use kube::runtime::wait::await_condition;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::task::JoinHandle;

/// Release name; the namespace keeps test runs apart.
const RELEASE: &str = "kh";
const RUNNER_SELECTOR: &str = "app.kubernetes.io/component=runner";
/// The chart's default `runner.port`.
const RUNNER_PORT: u16 = 9252;
/// Bounds of the waits below (deadlines against hangs, not timing assertions).
const RUNNER_READY: Duration = Duration::from_secs(180);
const JOB_DONE: Duration = Duration::from_secs(240);
const RUNNER_GONE: Duration = Duration::from_secs(150);

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

/// Where a release runs: a PodSecurity-restricted namespace for it, the name of its jobs
/// namespace, and a coordinator (GitLab) on the bed's bridge, where the runner pod and the job
/// pods' checkout reach it, with the runner token in a Secret of our own (not in Helm's release
/// data): `runner-token`.
struct Deployment {
    bed: TestBed,
    ns: TestNamespace,
    jobs_ns: String,
    gitlab: Coordinator,
}

impl Deployment {
    async fn new(tag: &str) -> Self {
        let bed = TestBed::connect().await;
        let ns = JobNamespace::builder(tag)
            .restricted()
            .create_on(&bed)
            .await
            .ns;
        let jobs_ns = format!("{}-jobs", ns.name);
        let gitlab = Coordinator::start(CoordinatorOptions::on_bed_bridge(Duration::from_secs(5)))
            .await
            .unwrap();
        ns.create_object::<Secret>(json!({
            "metadata": {"name": "runner-token"},
            "stringData": {"token": gitlab.runner_token()}
        }))
        .await;
        Self {
            bed,
            ns,
            jobs_ns,
            gitlab,
        }
    }

    /// The chart's values for a runner image of this coordinator whose jobs run in busybox in
    /// the jobs namespace. `runner` adds keys under `runner:` (indented two spaces), `more`
    /// adds top-level keys, `network` adds keys under `networkPolicy:` (indented two spaces).
    fn values(&self, runner: &str, more: &str, network: &str) -> String {
        format!(
            r#"
image: {{repository: keyhole.local/runner, tag: dev, pullPolicy: Never}}
runner:
  url: "{url}"
  logFormat: text
  token: {{secretName: runner-token}}
{runner}
  kubernetes:
    host: "{apiserver}"
    image: "keyhole.local/busybox:1"
    pull_policy: never
    pod_termination_grace_period_seconds: 20
broker: {{image: "keyhole.local/broker:dev"}}
jobs:
  namespace: {jobs_ns}
  kubeApi: "{apiserver}"
  gitImage: "keyhole.local/git:2"
{more}
networkPolicy:
  gitlab: {{cidrs: [10.213.0.1/32], ports: [{gitlab_port}]}}
  kubernetesApi: {{cidrs: [10.213.0.1/32], ports: [6443]}}
{network}
"#,
            url = self.gitlab.url(),
            apiserver = self.bed.env.apiserver_url,
            jobs_ns = self.jobs_ns,
            gitlab_port = self.gitlab.addr().port(),
        )
    }
}

/// Waits up to `within` for the job's final state; fails with its trace and what the runner
/// pods are doing.
async fn job_final(gitlab: &Coordinator, pods: &Api<Pod>, id: u64, within: Duration) -> FinalState {
    match gitlab.wait_for_final(id, within).await {
        Ok(done) => done,
        Err(e) => panic!(
            "job {id}: {e:#}\ntrace:\n{}\n{}",
            gitlab.trace_text(id),
            describe_runner(pods).await
        ),
    }
}

/// Follows a pod's log in the background; the task returns its lines once the pod's container
/// has ended.
async fn follow_log(pods: &Api<Pod>, name: &str) -> JoinHandle<Vec<String>> {
    let log = pods
        .log_stream(
            name,
            &LogParams {
                follow: true,
                ..LogParams::default()
            },
        )
        .await
        .unwrap();
    tokio::spawn(async move {
        let mut lines = log.lines();
        let mut out = Vec::new();
        while let Ok(Some(line)) = lines.try_next().await {
            out.push(line);
        }
        out
    })
}

#[tokio::test]
async fn the_charts_runner_takes_a_job_and_completes_it_with_a_vault_secret() {
    let d = Deployment::new("deployrun").await;
    let (bed, ns, jobs_ns, gitlab) = (&d.bed, &d.ns, &d.jobs_ns, &d.gitlab);
    let vault = VaultAdmin::new(&bed.env);

    // A tenant: its jobs run as their own ServiceAccount, whose Vault role (named like it, and
    // unique to this run) reads one KV path. The values are unique to this run too.
    let project = "acme/deployed-app";
    let tenant_sa = format!("app-{}", ns.name);
    let _vault_role = VaultRoleRemoved::on_drop(&bed.env, &tenant_sa);
    let password = format!("deployed-db-pw-{}", fastrand::u64(..));
    vault
        .write(
            &format!("kv/data/{}/db", ns.name),
            json!({"data": {"password": password}}),
        )
        .await
        .unwrap();
    // Vault over TLS from the bed's own CA: the chart hands the bundle to the brokers.
    let vault_and_tenant = format!(
        r#"
vault:
  address: "{vault_addr}"
  caBundle: {ca_bundle}
tenants:
  - project: {project}
    serviceAccount: {tenant_sa}
    vault:
      paths: ["kv/data/{ns}/*"]
      tokenTtl: 2m"#,
        vault_addr = bed.env.vault_tls_pod_addr,
        ca_bundle =
            serde_json::to_string(&std::fs::read_to_string(&bed.env.vault_ca_file).unwrap())
                .unwrap(),
        ns = ns.name,
    );
    let values = d.values(
        "  terminationGracePeriodSeconds: 120",
        &vault_and_tenant,
        "  vault: {cidrs: [10.213.0.1/32], ports: [8201]}",
    );
    let release = HelmRelease::install(&bed.env, RELEASE, &ns.name, &values).unwrap();

    // The Vault commands the chart prints, run as the Vault admin would.
    let block = release.notes_vault_setup().unwrap();
    assert!(
        block.contains(&format!("auth/kubernetes/role/{tenant_sa} ")),
        "the tenant's role is named like its ServiceAccount:\n{block}"
    );
    run_ok(&mut bed_script(&bed.env, &block)).unwrap();

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
    let done = job_final(gitlab, &pods, job.id, JOB_DONE).await;
    let trace = gitlab.trace_text(job.id);
    assert_eq!(done.status, FinalStatus::Success, "{trace}");
    assert_trace_has(
        &trace,
        [
            "Checked out",
            "hello from the deployed runner",
            "db password: [MASKED]",
            "Job succeeded",
        ],
    );
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
    let counted_in = eventually(
        Duration::from_secs(30),
        Duration::from_millis(500),
        async || {
            let text = metrics(&bed.env, &ns.name, &runner_name).unwrap();
            text.contains(counted).then_some(())
        },
    )
    .await;
    assert!(
        counted_in.is_some(),
        "{counted:?} not in /metrics:\n{}",
        metrics(&bed.env, &ns.name, &runner_name).unwrap()
    );

    // The runner pod dies mid-job (force-deleted: killed at once, no shutdown, its Lease left
    // to expire, its emptyDirs gone). The Deployment's next pod finds the job in the journal
    // Secret, reports it to GitLab and deletes its pod.
    let runner_name =
        kill_the_runner_mid_job(gitlab, &pods, &ns.api(), jobs_ns, &runner_name).await;

    // Deleting the release stops the runner gracefully: SIGTERM, no new jobs, "stopped", exit.
    let follow = follow_log(&pods, &runner_name).await;
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

/// Starts a long job, force-deletes the runner pod `runner_name` once the job runs, and checks
/// that the Deployment's next runner pod reports the job as a runner system failure and
/// deletes its pod, printing how long that took. Returns the new runner pod's name.
async fn kill_the_runner_mid_job(
    gitlab: &Coordinator,
    pods: &Api<Pod>,
    journal_secrets: &Api<Secret>,
    jobs_ns: &str,
    runner_name: &str,
) -> String {
    let job = gitlab
        .job_without_checkout()
        .script(["echo started", "sleep 600"])
        .enqueue()
        .unwrap();
    let started = eventually(JOB_DONE, POLL, async || {
        gitlab
            .trace_text(job.id)
            .contains("started\n")
            .then_some(())
    })
    .await;
    assert!(started.is_some(), "{}", gitlab.trace_text(job.id));
    let journal = journal_secrets
        .get(&format!("{RELEASE}-keyhole-journal"))
        .await
        .unwrap();
    assert_eq!(
        journal.data.unwrap_or_default().len(),
        1,
        "the running job is in the journal Secret"
    );
    pods.delete(
        runner_name,
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await
    .unwrap();
    let killed = Instant::now();
    let done = job_final(gitlab, pods, job.id, Duration::from_secs(180)).await;
    let reported = killed.elapsed();
    let trace = gitlab.trace_text(job.id);
    assert_eq!(done.status, FinalStatus::Failed, "{trace}");
    assert_eq!(
        done.failure_reason.as_deref(),
        Some("runner_system_failure")
    );
    assert!(
        trace.contains("is gone (its pod was replaced or crashed)"),
        "{trace}"
    );
    let jobs: Api<Pod> = Api::namespaced(pods.clone().into_client(), jobs_ns);
    let selector = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let pod_gone = eventually(
        Duration::from_secs(60),
        Duration::from_millis(500),
        async || {
            let left = jobs.list(&selector).await.unwrap().items;
            left.is_empty().then(|| killed.elapsed())
        },
    )
    .await
    .expect("the dead runner's job pod is deleted");
    eprintln!(
        "figure: runner pod killed mid-job: GitLab had the job's final state after {:.1} s, its pod was gone after {:.1} s",
        reported.as_secs_f64(),
        pod_gone.as_secs_f64()
    );
    assert!(
        reported < Duration::from_secs(90),
        "reported after {reported:?}"
    );
    let next = ready_runner(pods).await;
    next.metadata.name.unwrap()
}

/// What a watch saw of one runner pod during a rolling upgrade.
#[derive(Debug, Clone, Default)]
struct RunnerPodSeen {
    name: String,
    ready: Option<Instant>,
    /// When its deletion began (Kubernetes sent SIGTERM).
    terminating: Option<Instant>,
    gone: Option<Instant>,
}

/// Runner pods by UID.
type RunnerPods = Arc<Mutex<BTreeMap<String, RunnerPodSeen>>>;

/// Job pods by job id: each pod made for the job, with the runner instance it is labelled with.
type JobPods = Arc<Mutex<BTreeMap<u64, BTreeMap<String, String>>>>;

/// Watches the runner pods in the background, noting when each became Ready, began
/// terminating and was gone (a watch, so that no step falls between two polls).
fn watch_runner_pods(pods: Api<Pod>) -> (RunnerPods, JoinHandle<()>) {
    let seen = RunnerPods::default();
    let record = seen.clone();
    let task = tokio::spawn(async move {
        let events =
            watcher(pods, watcher::Config::default().labels(RUNNER_SELECTOR)).default_backoff();
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            let (pod, deleted) = match event {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => (p, false),
                Ok(watcher::Event::Delete(p)) => (p, true),
                _ => continue,
            };
            let now = Instant::now();
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let mut seen = record.lock().unwrap();
            let entry = seen.entry(uid).or_default();
            entry.name = pod.metadata.name.clone().unwrap_or_default();
            if is_ready(&pod) && pod.metadata.deletion_timestamp.is_none() {
                entry.ready.get_or_insert(now);
            }
            if pod.metadata.deletion_timestamp.is_some() || deleted {
                entry.terminating.get_or_insert(now);
            }
            if deleted {
                entry.gone.get_or_insert(now);
            }
        }
    });
    (seen, task)
}

/// Watches the job pods of `jobs` (a jobs namespace) in the background, noting each pod made
/// for a job and the runner instance it belongs to.
fn watch_job_pods(jobs: Api<Pod>) -> (JobPods, JoinHandle<()>) {
    let seen = JobPods::default();
    let record = seen.clone();
    let task = tokio::spawn(async move {
        let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY}");
        let pods = watcher(jobs, watcher::Config::default().labels(&selector))
            .default_backoff()
            .applied_objects();
        let mut pods = std::pin::pin!(pods);
        while let Some(pod) = pods.next().await {
            let Ok(pod) = pod else { continue };
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            let Some(job) = labels.get(JOB_ID_LABEL).and_then(|id| id.parse().ok()) else {
                continue;
            };
            let instance = labels.get(INSTANCE_LABEL).cloned().unwrap_or_default();
            record
                .lock()
                .unwrap()
                .entry(job)
                .or_default()
                .insert(pod.metadata.name.clone().unwrap_or_default(), instance);
        }
    });
    (seen, task)
}

/// How often the rolling-upgrade test looks again.
const POLL: Duration = Duration::from_millis(200);

/// How many of the trace's lines are exactly `line` (the job's output, not the echoed command).
fn count_lines(trace: &str, line: &str) -> usize {
    trace.lines().filter(|l| l.trim_end() == line).count()
}

/// Two runner replicas, each with three of six 40 s jobs, and a `helm upgrade` that changes
/// the config while they run: the Deployment rolls, the new pods come up and take a new job at
/// once, the old pods stop taking jobs, drain theirs and go, and no job is deleted by the new
/// pods, restarted or failed. Prints how long the rollout and the drain took (issue 15).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_of_two_replicas_drains_the_old_pods_and_loses_no_job() {
    /// Jobs of the first pods: `concurrent` 3 on each of 2 replicas, so both take some.
    const JOBS: u64 = 6;
    let d = Deployment::new("deployroll").await;
    let (bed, ns, jobs_ns, gitlab) = (&d.bed, &d.ns, &d.jobs_ns, &d.gitlab);
    // The grace period covers the jobs' rest: the chart gives the runner 180 - 90 = 90 s to
    // drain (`shutdown_timeout`). A new log level is a config change: the pods roll.
    let values = |log_level: &str| {
        d.values(
            &format!(
                "  logLevel: \"{log_level}\"\n  concurrent: 3\n  terminationGracePeriodSeconds: 180"
            ),
            "replicas: 2",
            "",
        )
    };
    let release = HelmRelease::install(&bed.env, RELEASE, &ns.name, &values("")).unwrap();
    let pods: Api<Pod> = ns.api();
    let (runners, runner_watch) = watch_runner_pods(pods.clone());
    let (job_pods, job_watch) = watch_job_pods(Api::namespaced(bed.client.clone(), jobs_ns));

    let ready_uids = |runners: &RunnerPods| -> BTreeSet<String> {
        runners
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p)| p.ready.is_some() && p.terminating.is_none())
            .map(|(uid, _)| uid.clone())
            .collect()
    };
    let Some(old) = eventually(RUNNER_READY, POLL, async || {
        Some(ready_uids(&runners)).filter(|r| r.len() == 2)
    })
    .await
    else {
        panic!(
            "two runner pods were not Ready within {RUNNER_READY:?}:\n{}",
            describe_runner(&pods).await
        );
    };
    let mut old_logs = Vec::new();
    for uid in &old {
        let name = runners.lock().unwrap()[uid].name.clone();
        old_logs.push((name.clone(), follow_log(&pods, &name).await));
    }

    // Six jobs of 40 s; all run at once, three on each replica.
    let enqueued = Instant::now();
    let jobs: Vec<u64> = (1..=JOBS)
        .map(|n| {
            gitlab
                .job_without_checkout()
                .name(&format!("long-{n}"))
                .script([
                    format!("echo started {n}"),
                    "sleep 40".to_owned(),
                    format!("echo done {n}"),
                ])
                .enqueue()
                .unwrap()
                .id
        })
        .collect();
    let job_instance = |id: u64| -> Option<String> {
        let seen = job_pods.lock().unwrap();
        let made = seen.get(&id)?;
        (made.len() == 1).then(|| made.values().next().cloned().unwrap_or_default())
    };
    let running = eventually(JOB_DONE, POLL, async || {
        jobs.iter()
            .zip(1..)
            .map(|(&id, n)| {
                (count_lines(&gitlab.trace_text(id), &format!("started {n}")) == 1)
                    .then(|| job_instance(id))
                    .flatten()
            })
            .collect::<Option<Vec<String>>>()
    })
    .await;
    let Some(running) = running else {
        let traces: Vec<String> = jobs.iter().map(|&id| gitlab.trace_text(id)).collect();
        let described = describe_runner(&pods).await;
        panic!(
            "the {JOBS} jobs did not all start within {JOB_DONE:?}; traces: {traces:#?}\njob pods: {:?}\n{described}",
            job_pods.lock().unwrap(),
        );
    };
    let mut per_instance: BTreeMap<&str, usize> = BTreeMap::new();
    for instance in &running {
        *per_instance.entry(instance.as_str()).or_default() += 1;
    }
    assert_eq!(
        per_instance
            .keys()
            .map(|i| i.to_string())
            .collect::<BTreeSet<_>>(),
        old,
        "the job pods carry both runner pods' instance ids (their UIDs)"
    );
    assert!(
        per_instance.values().all(|&n| n == 3),
        "three jobs on each replica (concurrent 3): {per_instance:?}"
    );

    // The config changes while the jobs run: the Deployment rolls its pods.
    let upgraded = Instant::now();
    tokio::task::block_in_place(|| release.upgrade(&values("info"))).unwrap();
    let rolled = eventually(RUNNER_READY, POLL, async || {
        let new = &ready_uids(&runners) - &old;
        let seen = runners.lock().unwrap();
        let old_stopping = old.iter().all(|uid| seen[uid].terminating.is_some());
        (new.len() == 2 && old_stopping).then_some(new)
    })
    .await;
    let Some(new) = rolled else {
        let described = describe_runner(&pods).await;
        panic!(
            "the Deployment did not roll within {RUNNER_READY:?}: {:?}\n{described}",
            runners.lock().unwrap(),
        );
    };
    let new_ready = {
        let seen = runners.lock().unwrap();
        new.iter()
            .filter_map(|uid| seen[uid].ready)
            .max()
            .unwrap()
            .duration_since(upgraded)
    };

    // A job after the upgrade: the old pods take no more, a new one runs it.
    let seventh = gitlab
        .job_without_checkout()
        .name("after-upgrade")
        .script(["echo seventh"])
        .enqueue()
        .unwrap()
        .id;

    let all: Vec<u64> = jobs.iter().copied().chain([seventh]).collect();
    let finals = futures::future::join_all(all.iter().map(|&id| {
        let pods = &pods;
        async move {
            let done = job_final(gitlab, pods, id, JOB_DONE).await;
            (id, done, Instant::now())
        }
    }))
    .await;
    let mut finished_at = BTreeMap::new();
    for (id, done, at) in finals {
        let trace = gitlab.trace_text(id);
        assert_eq!(done.status, FinalStatus::Success, "job {id}:\n{trace}");
        assert!(
            !trace.contains("deleted by someone else"),
            "job {id}'s pod was deleted under it:\n{trace}"
        );
        assert!(
            gitlab
                .updates(id)
                .iter()
                .all(|u| u.failure_reason.is_none()),
            "job {id}: {:?}",
            gitlab.updates(id)
        );
        finished_at.insert(id, at);
    }
    let jobs_took = jobs
        .iter()
        .map(|id| finished_at[id])
        .max()
        .unwrap()
        .duration_since(enqueued);
    for (&id, n) in jobs.iter().zip(1..) {
        let trace = gitlab.trace_text(id);
        // Once each: a job started again (on another pod) would print "started" twice.
        assert_eq!(
            count_lines(&trace, &format!("started {n}")),
            1,
            "job {id}:\n{trace}"
        );
        assert_eq!(
            count_lines(&trace, &format!("done {n}")),
            1,
            "job {id}:\n{trace}"
        );
    }
    let trace = gitlab.trace_text(seventh);
    assert_eq!(count_lines(&trace, "seventh"), 1, "{trace}");
    {
        let seen = job_pods.lock().unwrap();
        for id in &all {
            assert_eq!(
                seen.get(id).map_or(0, BTreeMap::len),
                1,
                "job {id} had one pod: {seen:?}"
            );
        }
        let on = seen[&seventh].values().next().unwrap();
        assert!(
            new.contains(on),
            "the job after the upgrade ran on a new runner pod ({new:?}), not on {on}"
        );
    }

    // The old pods drained their jobs and went; they were asked to stop while their jobs ran.
    let Some(drained) = eventually(RUNNER_GONE, POLL, async || {
        let seen = runners.lock().unwrap();
        old.iter()
            .map(|uid| {
                let pod = &seen[uid];
                Some((uid.clone(), pod.terminating?, pod.gone?))
            })
            .collect::<Option<Vec<_>>>()
    })
    .await
    else {
        let described = describe_runner(&pods).await;
        panic!(
            "the old runner pods were not gone {RUNNER_GONE:?} after their jobs: {:?}\n{described}",
            runners.lock().unwrap(),
        );
    };
    let mut drains = Vec::new();
    for (uid, terminating, gone) in &drained {
        let last_job = jobs
            .iter()
            .zip(&running)
            .filter(|(_, instance)| *instance == uid)
            .map(|(id, _)| finished_at[id])
            .max()
            .unwrap();
        assert!(
            *terminating < last_job,
            "runner pod {uid} was stopped only after its jobs ended: the upgrade tested no drain"
        );
        drains.push((
            gone.duration_since(*terminating),
            gone.duration_since(last_job),
        ));
    }
    for (name, log) in old_logs {
        let lines = tokio::time::timeout(RUNNER_GONE, log)
            .await
            .expect("the runner's log ends with its pod")
            .unwrap();
        let log = lines.join("\n");
        assert!(
            log.contains("stopping: no new jobs"),
            "{name} did not stop taking jobs on SIGTERM:\n{log}"
        );
        assert!(
            !log.contains("aborting the remaining jobs"),
            "{name} ran out of grace:\n{log}"
        );
        assert!(
            lines.last().is_some_and(|l| l.contains("stopped")),
            "{name}'s last line is not \"stopped\":\n{log}"
        );
    }
    assert_eq!(
        ready_uids(&runners),
        new,
        "the new runner pods are the Ready ones"
    );
    runner_watch.abort();
    job_watch.abort();

    println!(
        "FIGURE helm-upgrade: 2 new runner pods Ready {:.1} s after `helm upgrade`",
        new_ready.as_secs_f64()
    );
    println!(
        "FIGURE helm-upgrade: old runner pods drained in {} (SIGTERM to gone, with 3 running jobs each)",
        drains
            .iter()
            .map(|(drain, after)| format!(
                "{:.1} s (gone {:.1} s after its last job's final state)",
                drain.as_secs_f64(),
                after.as_secs_f64()
            ))
            .collect::<Vec<_>>()
            .join(" and ")
    );
    println!(
        "FIGURE helm-upgrade: {JOBS} jobs of 40 s took {:.1} s from enqueue to the last final state across the upgrade; none failed, restarted or lost",
        jobs_took.as_secs_f64()
    );
}
