//! The runner's executor on the real bed: job → pod with the broker → masked trace → outcome →
//! pod and Secret gone. Jobs are built in code here; `runner_exec.rs` and `runner_gitlab.rs`
//! drive the same path from a `.gitlab-ci.yml` and from the coordinator.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use keyhole_runner::config::RunnerConfig;
use keyhole_runner::execute::{Control, FailureKind, JobRun, Outcome, TraceChunk, execute};
use keyhole_runner::job::{Image, Job, Variable};
use keyhole_runner::pod::samples::{sample_jobs, sample_runner};
use keyhole_runner::prepare::prepare;
use keyhole_tests::{TestBed, TestNamespace, VaultAdmin, eventually};
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;
use tokio::sync::{mpsc, watch};

struct Setup {
    bed: TestBed,
    ns: TestNamespace,
    runner: RunnerConfig,
}

async fn setup(tag: &str) -> Setup {
    let bed = TestBed::connect().await;
    let ns = TestNamespace::create(
        &bed,
        tag,
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await
    .unwrap();
    ns.create_object::<ServiceAccount>(json!({"metadata": {"name": "job"}}))
        .await;
    let mut runner = sample_runner(
        &ns.name,
        &bed.env.vault_pod_addr,
        "keyhole.local/broker:dev",
    );
    runner.kubernetes.service_account = "job".into();
    runner.kubernetes.image = "keyhole.local/busybox:1".into();
    runner.kubernetes.pull_policy.0 = vec!["never".into()];
    runner.kubernetes.pod_termination_grace_period_seconds = Some(20);
    runner.keyhole.vault_role = Some(ns.name.clone());
    runner.keyhole.kube_api = bed.env.apiserver_url.clone();
    Setup { bed, ns, runner }
}

fn job(id: u64, script: &[&str]) -> Job {
    let (_, mut j) = sample_jobs("unused").remove(0);
    j.id = id;
    j.script = script.iter().map(|s| s.to_string()).collect();
    j
}

struct Ran {
    outcome: Outcome,
    trace: String,
}

impl Ran {
    /// The exit code and message of a job that failed as `kind`; panics with the outcome and
    /// the trace otherwise.
    #[track_caller]
    fn failed_as(&self, kind: FailureKind) -> (Option<i32>, &str) {
        match &self.outcome {
            Outcome::Failed {
                kind: failed,
                exit_code,
                message,
            } if *failed == kind => (*exit_code, message),
            other => panic!("{other:?}\n{}", self.trace),
        }
    }
}

/// Runs `job` to its end: at most 120 s, never canceled.
async fn run(s: &Setup, job: &Job) -> Ran {
    run_job(s, job, Duration::from_secs(120), never_cancel()).await
}

async fn run_job(
    s: &Setup,
    job: &Job,
    timeout: Duration,
    control: watch::Receiver<Control>,
) -> Ran {
    let prepared = prepare(job, &s.runner, None).unwrap_or_else(|e| panic!("{e:?}"));
    let (tx, mut rx) = mpsc::channel::<TraceChunk>(64);
    let collector = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(chunk) = rx.recv().await {
            all.extend(chunk.into_bytes(true));
        }
        all
    });
    let outcome = execute(JobRun {
        client: s.bed.client.clone(),
        objects: prepared.objects,
        timeout,
        start_timeout: Duration::from_secs(s.runner.kubernetes.poll_timeout),
        output_limit: 4096,
        trace: tx,
        control,
        metrics: None,
        retry: keyhole_runner::execute::ApiRetry::default(),
        image_pulls: false,
        pod_watch: None,
    })
    .await;
    let trace = String::from_utf8_lossy(&collector.await.unwrap()).into_owned();
    Ran { outcome, trace }
}

fn never_cancel() -> watch::Receiver<Control> {
    let (tx, rx) = watch::channel(Control::Run);
    std::mem::forget(tx);
    rx
}

/// Puts `password` in Vault at `kv/<namespace>/db`, lets the namespace's jobs read
/// `kv/<namespace>/*`, and gives `job` that password as the file variable `DB_PASSWORD`.
async fn give_db_password(s: &Setup, job: &mut Job, password: &str) {
    let ns = &s.ns.name;
    let vault = VaultAdmin::new(&s.bed.env);
    vault
        .write(
            &format!("kv/data/{ns}/db"),
            json!({"data": {"password": password}}),
        )
        .await
        .unwrap();
    vault
        .grant_job_in_namespace(ns, &[format!("kv/data/{ns}/*")])
        .await
        .unwrap();
    job.variables.push(Variable::public(
        "KEYHOLE_SECRET_DB_PASSWORD",
        format!("vault:kv/{ns}/db#password"),
    ));
}

/// No pod or Secret of the job is left (GC deletes the Secret with the pod).
async fn assert_cleaned_up(s: &Setup) {
    let pods: Api<Pod> = s.ns.api();
    let secrets: Api<Secret> = s.ns.api();
    let lp = ListParams::default().labels("app.kubernetes.io/managed-by=keyhole-runner");
    eventually(
        Duration::from_secs(60),
        Duration::from_millis(500),
        async || {
            let p = pods.list(&lp).await.unwrap().items.len();
            let sec = secrets.list(&lp).await.unwrap().items.len();
            (p == 0 && sec == 0).then_some(())
        },
    )
    .await
    .expect("job pod or Secret still present after 60 s");
}

#[tokio::test]
async fn a_job_runs_its_script_reports_success_and_leaves_nothing_behind() {
    let s = setup("runhello").await;
    let r = run(&s, &job(1, &["echo hello from $CI_JOB_NAME", "id -u"])).await;
    assert_eq!(r.outcome, Outcome::Success, "{}", r.trace);
    assert!(
        r.trace.contains("$ echo hello from $CI_JOB_NAME"),
        "{}",
        r.trace
    );
    assert!(r.trace.contains("hello from hello\n"), "{}", r.trace);
    assert!(r.trace.contains("\n1000\n"), "{}", r.trace);
    assert!(r.trace.contains("Creating pod"), "{}", r.trace);
    // The log ended at the broker's markers, which are not in the trace.
    assert!(!r.trace.contains("end of log ("), "{}", r.trace);
    assert!(!r.trace.contains("may be incomplete"), "{}", r.trace);
    assert_cleaned_up(&s).await;
}

#[tokio::test]
async fn the_broker_cuts_the_log_at_output_limit_and_the_job_still_finishes() {
    let mut s = setup("runlimit").await;
    s.runner.output_limit = 256;
    let r = run(
        &s,
        &job(
            2,
            &[
                "yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c 4194304",
                "echo after-the-limit",
            ],
        ),
    )
    .await;
    assert_eq!(
        r.outcome,
        Outcome::Success,
        "{}",
        &r.trace[..2000.min(r.trace.len())]
    );
    let notice = "Job's log exceeded limit of 256 KiB; the rest is not shown.";
    assert_eq!(
        r.trace.matches(notice).count(),
        1,
        "one notice, by the broker"
    );
    assert!(!r.trace.contains("after-the-limit"));
    // 256 KiB of output, the runner's and the broker's own lines: far below the 4 MiB written.
    assert!(
        r.trace.len() < 256 * 1024 + 16 * 1024,
        "{} bytes",
        r.trace.len()
    );
    assert!(r.trace.len() > 256 * 1024, "{} bytes", r.trace.len());
    assert!(!r.trace.contains("may be incomplete"));
    assert_cleaned_up(&s).await;
}

#[tokio::test]
async fn a_failing_script_fails_the_job_with_its_exit_code_and_after_script_runs() {
    let s = setup("runfail").await;
    let mut j = job(2, &["echo before", "exit 3", "echo never"]);
    j.after_script = vec!["echo after ran".into()];
    let r = run(&s, &j).await;
    let (exit_code, _) = r.failed_as(FailureKind::Script);
    assert_eq!(exit_code, Some(3), "{}", r.trace);
    assert!(r.trace.contains("after ran"), "{}", r.trace);
    assert!(!r.trace.contains("never\n"), "{}", r.trace);
    assert_cleaned_up(&s).await;
}

/// The job's result comes at the log's end: the status the script writes to its `done` FIFO,
/// which the broker passes on with the per-job token, not the pod's status. A script that
/// reports 5 while its process goes on sleeping ends as exit code 5 at once (waiting for the
/// pod would give success a minute later); a status line the job prints itself, without the
/// token, is only output.
#[tokio::test]
async fn the_status_the_script_reports_at_its_end_decides_the_job() {
    let s = setup("runstatus").await;
    let forged = "keyhole-broker: script exited 00000000000000000000000000000000 000";
    let j = job(
        9,
        &[
            &format!("echo '{forged}'"),
            "printf '5\\n' >/keyhole/run/done",
            "sleep 60",
            "echo never",
        ],
    );
    let r = run(&s, &j).await;
    let (exit_code, message) = r.failed_as(FailureKind::Script);
    assert_eq!(exit_code, Some(5), "{message}\n{}", r.trace);
    assert!(r.trace.contains(forged), "{}", r.trace);
    assert!(!r.trace.contains("never\n"), "{}", r.trace);
    assert_cleaned_up(&s).await;
}

#[tokio::test]
async fn secrets_from_vault_and_kubernetes_reach_the_script_masked() {
    let s = setup("runsecrets").await;
    let ns = s.ns.name.clone();
    let db = format!("db-{ns}-\"q\" $HOME 'x' ✓");
    let api_key = format!("api-key-{ns}-0123456789");
    s.ns.create_object::<Secret>(
        json!({"metadata": {"name": "api-credentials"}, "stringData": {"key": api_key}}),
    )
    .await;
    s.ns.create_object::<Role>(json!({"metadata": {"name": "r"}, "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["api-credentials"], "verbs": ["get"]}]})).await;
    s.ns.create_object::<RoleBinding>(json!({"metadata": {"name": "r"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
        "subjects": [{"kind": "ServiceAccount", "name": "job", "namespace": ns}]})).await;
    let mut j = job(
        3,
        &[
            "echo \"db=$(cat \"$DB_PASSWORD\")\"",
            "echo \"key=$API_KEY\"",
            "echo \"path=$DB_PASSWORD\"",
            "stat -c '%a %u' \"$DB_PASSWORD\"",
        ],
    );
    give_db_password(&s, &mut j, &db).await;
    j.variables.push(Variable::public(
        "KEYHOLE_SECRET_API_KEY",
        "k8s:api-credentials/key?file=false",
    ));
    let r = run(&s, &j).await;
    assert_eq!(r.outcome, Outcome::Success, "{}", r.trace);
    for line in [
        "db=[MASKED]",
        "key=[MASKED]",
        "path=/keyhole/secrets/DB_PASSWORD",
        "400 1000",
        "audit secret=DB_PASSWORD",
        // The broker's closing lines come before its end-of-log markers, so they are in the
        // trace whether the script's `done` or the kubelet's SIGTERM ended the job.
        "keyhole-broker: job ended; wiping secrets",
        "Vault token revoked",
    ] {
        assert!(r.trace.contains(line), "missing {line:?}:\n{}", r.trace);
    }
    // The broker's closing lines follow the job's last output.
    let last_output = r.trace.rfind("400 1000").unwrap();
    let closing = r.trace.find("keyhole-broker: job ended").unwrap();
    assert!(last_output < closing, "{}", r.trace);
    assert!(
        !r.trace.contains(&db) && !r.trace.contains(&api_key),
        "a value leaked:\n{}",
        r.trace
    );
    assert_cleaned_up(&s).await;
}

#[tokio::test]
async fn a_secret_the_service_account_may_not_read_fails_the_job_before_the_script() {
    let s = setup("rundeny").await;
    s.ns.create_object::<Secret>(
        json!({"metadata": {"name": "not-yours"}, "stringData": {"k": "forbidden-value-1234"}}),
    )
    .await;
    let mut j = job(4, &["echo script ran"]);
    j.variables
        .push(Variable::public("KEYHOLE_SECRET_STOLEN", "k8s:not-yours/k"));
    let r = run(&s, &j).await;
    r.failed_as(FailureKind::Configuration);
    assert!(
        r.trace.contains("may not read secret not-yours"),
        "{}",
        r.trace
    );
    assert!(!r.trace.contains("script ran"), "{}", r.trace);
    assert!(!r.trace.contains("forbidden-value-1234"), "{}", r.trace);
    assert_cleaned_up(&s).await;
}

/// The kubelet starts the pod's next containers after the broker's postStart hook whatever it
/// returned, so after a failed delivery the build container does start: its script must run
/// none of the job's commands. The job tries to leave a mark the kubelet keeps after its
/// container ends (its termination message); the build container's own log says why it
/// stopped.
#[tokio::test]
async fn a_failed_delivery_runs_none_of_the_jobs_commands() {
    let s = setup("rundead").await;
    let mut j = job(5, &["echo script ran >/dev/termination-log"]);
    j.before_script = vec!["echo before ran >/dev/termination-log".into()];
    j.variables
        .push(Variable::public("KEYHOLE_SECRET_STOLEN", "k8s:not-yours/k"));
    let prepared = prepare(&j, &s.runner, None).unwrap_or_else(|e| panic!("{e:?}"));
    let pods: Api<Pod> = s.ns.api();
    let pod = pods
        .create(&PostParams::default(), &prepared.objects.pod)
        .await
        .unwrap();
    let name = pod.metadata.name.clone().unwrap();
    let mut secret = prepared.objects.secret.clone();
    secret.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: name.clone(),
            uid: pod.metadata.uid.clone().unwrap(),
            ..Default::default()
        },
    ]);
    s.ns.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let terminated = |p: &Pod, container: &str| {
        p.status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .iter()
            .find(|c| c.name == container)?
            .state
            .as_ref()?
            .terminated
            .clone()
    };
    let ended = keyhole_tests::wait_for_pod(&pods, &name, |p: Option<&Pod>| {
        p.is_some_and(|p| {
            terminated(p, "build").is_some() && terminated(p, "keyhole-broker").is_some()
        })
    })
    .await
    .unwrap();
    let broker = terminated(&ended, "keyhole-broker").unwrap();
    assert_eq!(
        broker.exit_code,
        keyhole_contract::exit_code::SECRETS_FAILED
    );
    let build = terminated(&ended, "build").unwrap();
    assert_eq!(build.exit_code, 1, "{build:?}");
    assert!(
        !build.message.clone().unwrap_or_default().contains("ran"),
        "a job command ran: {build:?}"
    );
    let log = pods
        .logs(
            &name,
            &kube::api::LogParams {
                container: Some("build".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(log.trim(), keyhole_runner::script::NOT_DELIVERED);
    pods.delete(&name, &Default::default()).await.unwrap();
}

#[tokio::test]
async fn an_image_that_does_not_exist_fails_as_an_image_pull_failure() {
    let s = setup("runimage").await;
    let mut j = job(5, &["true"]);
    j.image = Some(Image {
        name: "keyhole.local/does-not-exist:1".into(),
        ..Image::default()
    });
    let r = run(&s, &j).await;
    let (_, message) = r.failed_as(FailureKind::ImagePull);
    assert!(
        message.contains("keyhole.local/does-not-exist:1") || message.contains("ErrImageNeverPull"),
        "{message}"
    );
    assert_cleaned_up(&s).await;
}

#[tokio::test]
async fn a_job_past_its_timeout_is_stopped_and_after_script_still_runs() {
    let s = setup("runtimeout").await;
    let mut j = job(6, &["echo started", "sleep 600"]);
    j.after_script = vec!["echo after timeout".into()];
    let r = run_job(&s, &j, Duration::from_secs(8), never_cancel()).await;
    r.failed_as(FailureKind::Timeout);
    assert!(r.trace.contains("started"), "{}", r.trace);
    assert!(r.trace.contains("after timeout"), "{}", r.trace);
    assert_cleaned_up(&s).await;
}

#[tokio::test]
async fn cancel_stops_the_script_runs_after_script_and_deletes_the_pod() {
    let s = setup("runcancel").await;
    let mut j = job(7, &["echo started", "sleep 600", "echo never"]);
    j.after_script = vec!["echo after cancel".into()];
    let (tx, rx) = watch::channel(Control::Run);
    let pods: Api<Pod> = s.ns.api();
    let canceller = tokio::spawn(async move {
        // Cancel once the build container runs. (A plain loop: a task spawned on the runtime
        // cannot hold `eventually`'s async closure, which is not Send for every lifetime.)
        loop {
            let list = pods.list(&ListParams::default()).await.unwrap();
            let running = list.items.iter().any(|p| {
                p.status
                    .as_ref()
                    .and_then(|st| st.container_statuses.as_ref())
                    .is_some_and(|cs| {
                        cs.iter().any(|c| {
                            c.name == "build"
                                && c.state.as_ref().is_some_and(|st| st.running.is_some())
                        })
                    })
            });
            if running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send(Control::Cancel).unwrap();
        tx
    });
    let r = run_job(&s, &j, Duration::from_secs(300), rx).await;
    drop(canceller.await.unwrap());
    r.failed_as(FailureKind::Canceled);
    assert!(r.trace.contains("started"), "{}", r.trace);
    assert!(r.trace.contains("after cancel"), "{}", r.trace);
    assert!(!r.trace.contains("never\n"), "{}", r.trace);
    assert_cleaned_up(&s).await;
}

#[tokio::test]
async fn every_snapshot_pod_is_admitted_by_a_restricted_namespace() {
    let s = setup("runadmit").await;
    s.ns.create_object::<ServiceAccount>(json!({"metadata": {"name": "keyhole-job"}}))
        .await;
    let pods: Api<Pod> = s.ns.api();
    for (name, job) in sample_jobs(&s.bed.env.vault_pod_addr) {
        let runner = sample_runner(
            &s.ns.name,
            &s.bed.env.vault_pod_addr,
            "keyhole.local/broker:dev",
        );
        let prepared = prepare(&job, &runner, None).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        pods.create(
            &PostParams {
                dry_run: true,
                ..PostParams::default()
            },
            &prepared.objects.pod,
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: the apiserver refused the pod: {e}"));
    }
}

#[tokio::test]
async fn a_script_out_of_memory_is_reported_as_oomkilled() {
    let mut s = setup("runoom").await;
    s.runner.kubernetes.memory_limit = Some("24Mi".into());
    s.runner.kubernetes.memory_limit_overwrite_max_allowed = None;
    let j = job(
        8,
        &[
            "echo filling memory",
            "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo ${#x}",
        ],
    );
    let r = run(&s, &j).await;
    let (exit_code, message) = r.failed_as(FailureKind::Script);
    assert_eq!(exit_code, Some(137), "{}", r.trace);
    assert!(message.contains("OOMKilled"), "{message}");
    assert_cleaned_up(&s).await;
}

#[tokio::test]
async fn a_pod_that_cannot_be_scheduled_fails_with_the_schedulers_reason() {
    let mut s = setup("rununsched").await;
    s.runner
        .kubernetes
        .node_selector
        .insert("keyhole.dev/no-such-node".into(), "true".into());
    s.runner.kubernetes.poll_timeout = 5;
    let r = run(&s, &job(9, &["true"])).await;
    let (_, message) = r.failed_as(FailureKind::Unschedulable);
    assert!(message.contains("did not start within 5s"), "{message}");
    let trace = &r.trace;
    assert!(
        trace.contains("node(s) didn't match") || trace.contains("node affinity/selector"),
        "{trace}"
    );
    assert_cleaned_up(&s).await;
}

/// Issue 17 item 6: Vault served over TLS by a private CA (the bed's). The CA bundle reaches the
/// broker through `vault_ca_config_map` (a ConfigMap projected into its inputs only), the
/// broker trusts exactly that bundle, and the job gets its secret; the build container never
/// sees the bundle. Without the ConfigMap the same job fails: the certificate is not trusted.
#[tokio::test]
async fn vault_over_tls_with_a_private_ca_from_a_config_map() {
    let mut s = setup("runtls").await;
    let ns = s.ns.name.clone();
    let password = format!("tls-{ns}-0123456789");
    let ca = std::fs::read_to_string(&s.bed.env.vault_ca_file).unwrap();
    s.ns.create_object::<k8s_openapi::api::core::v1::ConfigMap>(
        json!({"metadata": {"name": "vault-ca"}, "data": {"ca.crt": ca}}),
    )
    .await;
    s.runner.keyhole.vault_addr = Some(s.bed.env.vault_tls_pod_addr.clone());
    s.runner.keyhole.vault_ca_config_map = Some("vault-ca".into());
    let mut j = job(
        21,
        &[
            "echo \"db=$(cat \"$DB_PASSWORD\")\"",
            "ls /keyhole/inputs 2>&1 | head -1",
            // Regular files only: /keyhole also holds the log FIFO, which a plain `grep -r`
            // would open and block on.
            "find /keyhole -type f 2>/dev/null | xargs grep -l 'BEGIN CERTIFICATE' 2>/dev/null || echo no-ca-in-reach",
        ],
    );
    give_db_password(&s, &mut j, &password).await;
    let r = run(&s, &j).await;
    assert_eq!(r.outcome, Outcome::Success, "{}", r.trace);
    for line in [
        "db=[MASKED]",
        &format!("logging in to Vault at {}", s.bed.env.vault_tls_pod_addr),
        "no-ca-in-reach",
    ] {
        assert!(r.trace.contains(line), "missing {line:?}:\n{}", r.trace);
    }
    assert!(!r.trace.contains(&password), "{}", r.trace);
    assert_cleaned_up(&s).await;

    // The same job without the bundle: the broker refuses the server's certificate.
    s.runner.keyhole.vault_ca_config_map = None;
    let r = run(&s, &j).await;
    match &r.outcome {
        Outcome::Failed { .. } => {}
        other => panic!("{other:?}\n{}", r.trace),
    }
    assert!(
        r.trace
            .contains("presented a certificate the broker does not trust")
            && r.trace.contains("vault_ca_config_map"),
        "{}",
        r.trace
    );
    assert!(!r.trace.contains("db=["), "{}", r.trace);
    assert_cleaned_up(&s).await;
}

/// Issue 17 item 3, in a real pod: the job is canceled while the broker (PID 1 of its
/// container) is still resolving: one dynamic read has issued its lease, another is pending in
/// Vault. The broker must take the kubelet's SIGTERM, revoke its token (and with it the lease),
/// and let the pod go within seconds, not at the end of its grace period (120 s here).
#[tokio::test]
async fn a_pod_deleted_while_the_broker_resolves_goes_at_once_and_leaves_no_token_or_lease() {
    let mut s = setup("runterm").await;
    s.runner.kubernetes.pod_termination_grace_period_seconds = Some(120);
    let ns = s.ns.name.clone();
    let vault = VaultAdmin::new(&s.bed.env);
    let silent = keyhole_tests::SilentServer::start().await.unwrap();
    let (quick, stalled) = vault.quick_and_stalled_roles(&ns, &silent).await.unwrap();
    vault
        .grant_job_in_namespace(&ns, &[quick.clone(), stalled.clone()])
        .await
        .unwrap();
    let mut j = job(22, &["echo script ran"]);
    j.variables.push(Variable::public(
        "KEYHOLE_SECRET_QUICK",
        format!("vault:{quick}#password"),
    ));
    j.variables.push(Variable::public(
        "KEYHOLE_SECRET_STALLED",
        format!("vault:{stalled}#password"),
    ));
    let (tx, rx) = watch::channel(Control::Run);
    let canceller = {
        let vault = vault.clone();
        let quick = quick.clone();
        tokio::spawn(async move {
            // Cancel once the quick read has issued its lease: the broker is logged in and the
            // stalled read is in flight.
            // At most a minute; cancel either way (a plain loop, as above).
            for _ in 0..600 {
                if !vault.leases_under(&format!("{quick}/")).await.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tx.send(Control::Cancel).unwrap();
            (tx, std::time::Instant::now())
        })
    };
    let r = run_job(&s, &j, Duration::from_secs(300), rx).await;
    let (_tx, canceled_at) = canceller.await.unwrap();
    match &r.outcome {
        Outcome::Failed {
            kind: FailureKind::Canceled,
            ..
        } => {}
        other => panic!("{other:?}\n{}", r.trace),
    }
    assert!(!r.trace.contains("script ran"), "{}", r.trace);
    assert_cleaned_up(&s).await;
    let gone = canceled_at.elapsed();
    println!(
        "figure: pod gone {} ms after a cancel during resolution",
        gone.as_millis()
    );
    assert!(
        gone < Duration::from_secs(60),
        "the pod took {gone:?} to go (its grace period is 120 s):\n{}",
        r.trace
    );
    let tokens = keyhole_tests::exposure::vault_tokens_of_namespace(&vault, &ns)
        .await
        .unwrap();
    assert!(tokens.is_empty(), "tokens left: {tokens:?}");
    assert_eq!(
        vault.leases_under(&format!("{quick}/")).await,
        Vec::<String>::new(),
        "the lease issued before the cancel is revoked with the token"
    );
}
