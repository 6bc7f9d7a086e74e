//! The runner end to end in GitLab mode: the coordinator (a fake GitLab speaking the Runner
//! API) hands out jobs, `keyhole-runner`'s service takes them, real pods with the broker run
//! them on the bed, and the coordinator records the trace and final states.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use keyhole_runner::config::{Config, ServiceAccountRule, UserNamespaceRoot};
use keyhole_tests::coordinator::{EnqueuedJob, FinalState, FinalStatus, JobBuilder};
use keyhole_tests::gitlab_mode::{
    Setup, assert_numbered_lines_once, assert_trace_has, config, job_end, job_end_within,
    numbered_lines_script, run_jobs, run_jobs_with, setup, start_runner, start_runner_via,
    start_runner_with, stop, trace_text, wait_for_trace,
};
use keyhole_tests::{
    Coordinator, CoordinatorOptions, OutageProxy, eventually, restricted_container_security,
    restricted_pod_security,
};
use kube::Api;
use kube::api::{ListParams, PostParams};
use secrecy::SecretString;
use serde_json::{Value, json};

const BUSYBOX: &str = "keyhole.local/busybox:1";

/// A job of project `acme/app` (id 7) that checks out a new repository of `files`.
fn job_with_repo<'a>(s: &'a Setup, files: &[(&str, &str)]) -> JobBuilder<'a> {
    let sha = s.gitlab.create_repo("acme/app", files).unwrap();
    s.gitlab.job().project(7, "acme/app").sha(&sha)
}

/// A job (no checkout) that prints `started` and sleeps ten minutes: one to interrupt.
fn long_job(s: &Setup) -> EnqueuedJob {
    s.gitlab
        .job_without_checkout()
        .script(["echo started", "sleep 600"])
        .enqueue()
        .unwrap()
}

/// A busybox job (no checkout) with `services`.
fn job_with_services<'a>(
    s: &'a Setup,
    services: impl IntoIterator<Item = Value>,
) -> JobBuilder<'a> {
    let mut job = s.gitlab.job_without_checkout().image(BUSYBOX);
    for service in services {
        job = job.service(service);
    }
    job
}

/// [`config`] with the runner waiting up to `seconds` for a job's services.
fn waiting_for_services(s: &Setup, seconds: u64) -> Config {
    let mut config = config(s);
    config.runners[0].kubernetes.wait_for_services_timeout = seconds;
    config
}

async fn no_job_pods_left(s: &Setup) {
    let gone = eventually(
        Duration::from_secs(60),
        Duration::from_millis(500),
        async || {
            let left = s.ns.runner_objects_left().await;
            (!left.iter().any(|o| o.starts_with("pod/"))).then_some(())
        },
    )
    .await;
    assert!(gone.is_some(), "job pods still present after 60 s");
}

#[tokio::test]
async fn a_gitlab_job_checks_out_its_repository_runs_masked_and_succeeds() {
    let s = setup("glok").await;
    let job = job_with_repo(&s, &[("hello.txt", "hello from the repository\n")])
        .script([
            "cat hello.txt",
            "git --version 2>/dev/null || echo 'no git in the build image'",
            "echo \"masked: $MASKED_VAR\"",
            "echo \"job token: $CI_JOB_TOKEN\"",
            "test -z \"$(env | grep -c glcbt-test || true)\" || env | grep -c glcbt-test",
        ])
        .secret_variable("MASKED_VAR", "masked-variable-value-12345")
        .enqueue()
        .unwrap();
    let [(done, trace)] = run_jobs(&s, [job.id]).await;
    assert_eq!(done.status, FinalStatus::Success, "{trace}");
    assert_eq!(
        done.trace_len,
        s.gitlab.trace(job.id).len(),
        "the trace was flushed before the final update"
    );
    assert_trace_has(
        &trace,
        [
            "Checked out",
            "hello from the repository",
            "masked: [MASKED]",
            "job token: [MASKED]",
            "Job succeeded",
        ],
    );
    assert!(
        !trace.contains(&job.token),
        "the job token reached the trace"
    );
    assert!(
        !trace.contains("masked-variable-value-12345"),
        "a masked variable reached the trace"
    );
    no_job_pods_left(&s).await;
}

#[tokio::test]
async fn a_failing_script_is_reported_with_its_exit_code() {
    let s = setup("glfail").await;
    let job = s
        .gitlab
        .job_without_checkout()
        .script(["echo about to fail", "exit 7"])
        .enqueue()
        .unwrap();
    let [(done, trace)] = run_jobs(&s, [job.id]).await;
    assert_eq!(done.status, FinalStatus::Failed, "{trace}");
    assert_eq!(done.failure_reason.as_deref(), Some("script_failure"));
    assert_eq!(done.exit_code, Some(7));
    assert!(trace.contains("about to fail"), "{trace}");
    // What GitLab checks the assembled trace against (issue 11).
    let bytes = s.gitlab.trace(job.id);
    assert_eq!(
        done.output_checksum,
        Some(format!("crc32:{:08x}", crc32fast::hash(&bytes)))
    );
    assert_eq!(done.output_bytesize, Some(bytes.len() as u64));
    no_job_pods_left(&s).await;
}

#[tokio::test]
async fn cancel_from_gitlab_runs_after_script_and_ends_the_job() {
    let s = setup("glcancel").await;
    let job = s
        .gitlab
        .job_without_checkout()
        .script(["echo started", "sleep 600"])
        .after_script(["echo after_script ran"])
        .enqueue()
        .unwrap();
    let (tx, handle) = start_runner(&s);
    wait_for_trace(&s, job.id, "started\n").await;
    s.gitlab.cancel(job.id);
    let (done, trace) = job_end_within(&s, job.id, Duration::from_secs(120)).await;
    stop(tx, handle).await;
    assert_eq!(done.status, FinalStatus::Canceled, "{trace}");
    assert!(trace.contains("after_script ran"), "{trace}");
    no_job_pods_left(&s).await;
}

#[tokio::test]
async fn timeout_image_and_reference_failures_get_their_failure_reasons() {
    let s = setup("glreasons").await;
    let timeout = s
        .gitlab
        .job_without_checkout()
        .script(["sleep 600"])
        .timeout(6)
        .enqueue()
        .unwrap();
    let image = s
        .gitlab
        .job_without_checkout()
        .image("keyhole.local/no-such-image:1")
        .enqueue()
        .unwrap();
    let reference = s
        .gitlab
        .job_without_checkout()
        .variable("KEYHOLE_SECRET_BAD", "s3:bucket/key")
        .enqueue()
        .unwrap();
    let [(t, tt), (i, it), (r, rt)] = run_jobs(&s, [timeout.id, image.id, reference.id]).await;
    assert_eq!(
        t.failure_reason.as_deref(),
        Some("job_execution_timeout"),
        "{tt}"
    );
    assert_eq!(
        i.failure_reason.as_deref(),
        Some("image_pull_failure"),
        "{it}"
    );
    assert_eq!(r.status, FinalStatus::Failed, "{rt}");
    assert!(rt.contains("secret BAD") && rt.contains("expected"), "{rt}");
    no_job_pods_left(&s).await;
}

#[tokio::test]
async fn a_runner_restarted_mid_job_reports_it_and_removes_its_pod() {
    let s = setup("glrestart").await;
    let job = long_job(&s);
    let (_tx, handle) = start_runner(&s);
    wait_for_trace(&s, job.id, "started\n").await;
    // A crash: the service and its job tasks vanish; the pod and the journal stay.
    handle.abort();
    let _ = handle.await;
    let pods: Api<Pod> = s.ns.api();
    let before = pods.list(&ListParams::default()).await.unwrap().items.len();
    assert_eq!(before, 1, "the job pod outlives the crashed runner");
    let restarted = std::time::Instant::now();
    let (tx, handle) = start_runner(&s);
    let (done, trace) = job_end_within(&s, job.id, Duration::from_secs(120)).await;
    let reported_after = restarted.elapsed();
    stop(tx, handle).await;
    println!(
        "FIGURE runner-restarted-mid-job: GitLab had the job's final state {:.1} s after the runner started again",
        reported_after.as_secs_f64()
    );
    assert_eq!(done.status, FinalStatus::Failed);
    assert_eq!(
        done.failure_reason.as_deref(),
        Some("runner_system_failure")
    );
    assert!(trace.contains("restarted while this job ran"));
    no_job_pods_left(&s).await;
    let _ = std::fs::remove_dir_all(&s.journal);
}

/// Issue 15: a runner pod that dies mid-job (node loss, SIGKILL, a replaced pod) takes its
/// memory-backed journal with it; with the journal in a Secret (`journal_secret`, as the chart
/// sets it), the next runner process reports the job once the dead one's Lease has expired,
/// and deletes its pod. A second live instance does not touch the job before that.
#[tokio::test]
async fn a_dead_runner_pods_job_is_reported_by_the_next_pod_through_the_journal_secret() {
    let s = setup("gljsecret").await;
    let secrets: Api<Secret> = s.ns.api();
    let journal_secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "keyhole-journal"}, "type": "Opaque", "data": {}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &journal_secret)
        .await
        .unwrap();
    let mut with_secret = config(&s);
    with_secret.runners[0].keyhole.journal_secret = Some(format!("{}/keyhole-journal", s.ns.name));
    let job = long_job(&s);
    let (_tx, first) = start_runner_with(&s, with_secret.clone());
    wait_for_trace(&s, job.id, "started\n").await;
    let key = format!(
        "{}.{}",
        keyhole_runner::pod::label_value(&with_secret.runners[0].name),
        job.id
    );
    let journal_keys = || async {
        secrets
            .get("keyhole-journal")
            .await
            .unwrap()
            .data
            .unwrap_or_default()
            .into_keys()
            .collect::<Vec<String>>()
    };
    assert_eq!(
        journal_keys().await,
        std::slice::from_ref(&key),
        "the running job is journaled"
    );
    // The pod dies: its process, its memory and its emptyDir go; its Lease is left to expire.
    first.abort();
    let _ = first.await;
    let died = std::time::Instant::now();
    let (tx, second) = start_runner_with(&s, with_secret);
    // The dead instance's Lease lasts up to 30 s: until then its job is left alone.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        s.gitlab.final_state(job.id).is_none(),
        "the job was reported while its instance's Lease was still alive"
    );
    let (done, trace) = job_end_within(&s, job.id, Duration::from_secs(120)).await;
    let reported_after = died.elapsed();
    stop(tx, second).await;
    assert_eq!(done.status, FinalStatus::Failed, "{trace}");
    assert_eq!(
        done.failure_reason.as_deref(),
        Some("runner_system_failure")
    );
    assert!(
        trace.contains(
            "is gone (its pod was replaced or crashed); the job was stopped and its pod deleted"
        ),
        "{trace}"
    );
    assert!(trace.contains("started\n"), "{trace}");
    no_job_pods_left(&s).await;
    assert!(
        journal_keys().await.is_empty(),
        "the reported job left its journal entry"
    );
    eprintln!(
        "figure: job of a dead runner process reported {:.1} s after it died (Lease 30 s, reaper every 30 s)",
        reported_after.as_secs_f64()
    );
    assert!(
        reported_after < Duration::from_secs(75),
        "reported {reported_after:?} after the runner died"
    );
}

#[tokio::test]
async fn stopping_the_runner_takes_no_new_jobs_and_lets_running_ones_finish() {
    let s = setup("gldrain").await;
    let job = s
        .gitlab
        .job_without_checkout()
        .script(["echo started", "sleep 4", "echo finished"])
        .enqueue()
        .unwrap();
    let (tx, handle) = start_runner(&s);
    wait_for_trace(&s, job.id, "started\n").await;
    // SIGTERM's equivalent: stop taking jobs, drain the running one.
    tx.send(true).unwrap();
    let later = s.gitlab.job_without_checkout().enqueue().unwrap();
    handle.await.unwrap().unwrap();
    let done = s
        .gitlab
        .final_state(job.id)
        .expect("the running job was reported before the runner stopped");
    assert_eq!(
        done.status,
        FinalStatus::Success,
        "{}",
        trace_text(&s, job.id)
    );
    assert!(trace_text(&s, job.id).contains("finished"));
    assert!(
        s.gitlab.final_state(later.id).is_none(),
        "a stopping runner took a new job"
    );
    assert!(
        s.gitlab.updates(later.id).is_empty(),
        "a stopping runner took a new job"
    );
    no_job_pods_left(&s).await;
}

/// Issue 17 item 5: `KUBERNETES_SERVICE_ACCOUNT_OVERWRITE` cannot reach an account a rule keeps
/// for other jobs, and the project identity the rules match comes from GitLab's job info only.
/// Both jobs fail while being prepared, so no pod is created.
#[tokio::test]
async fn service_account_rules_bound_the_overwrite_and_trust_only_gitlabs_project() {
    let s = setup("glsarules").await;
    // Another project on an unprotected branch asks for the account the rule keeps for
    // acme/app's protected refs, and claims to be acme/app through CI_PROJECT_PATH.
    let spoof = s
        .gitlab
        .job_without_checkout()
        .project(9, "evil/x")
        .variable("CI_PROJECT_PATH", "acme/app")
        .variable("KUBERNETES_SERVICE_ACCOUNT_OVERWRITE", "app-deployer")
        .enqueue()
        .unwrap();
    // A payload without job_info.project_full_path (an older GitLab), on a protected ref: the
    // rules cannot tell whose job it is, so the reserved account stays out of reach.
    let mut payload = s
        .gitlab
        .job_without_checkout()
        .project(7, "acme/app")
        .variable("KUBERNETES_SERVICE_ACCOUNT_OVERWRITE", "app-deployer")
        .payload();
    payload["job_info"]
        .as_object_mut()
        .unwrap()
        .remove("project_full_path");
    payload["git_info"]["protected"] = true.into();
    let anonymous = s.gitlab.enqueue(payload).unwrap();

    let mut config = config(&s);
    config.runners[0]
        .kubernetes
        .service_account_overwrite_allowed = Some("app-.*".into());
    config.runners[0].keyhole.service_account_rules = vec![ServiceAccountRule {
        project: Some("acme/app".into()),
        protected: Some(true),
        service_account: "app-deployer".into(),
        ..Default::default()
    }];
    let [(spoofed, trace), (unknown, anonymous_trace)] =
        run_jobs_with(&s, config, [spoof.id, anonymous.id]).await;

    assert_eq!(spoofed.status, FinalStatus::Failed, "{trace}");
    assert!(
        trace.contains("service_account_rules[0] reserves")
            && trace.contains("project evil/x, unprotected ref main"),
        "{trace}"
    );
    assert!(!trace.contains("ServiceAccount app-deployer"), "{trace}");
    let trace = anonymous_trace;
    assert_eq!(unknown.status, FinalStatus::Failed, "{trace}");
    assert!(trace.contains("no project path from GitLab"), "{trace}");
    assert!(!trace.contains("ServiceAccount app-deployer"), "{trace}");
    no_job_pods_left(&s).await;
}

/// Issue 17 item 7: a job pod that reached its deadline while its runner was gone (here: made
/// by a runner "ghost" that no longer runs) keeps its per-job Secret (job token, masked
/// variables) in etcd until someone deletes the pod. Any runner of the namespace deletes it,
/// and the Secret with it, within a minute of its end.
#[tokio::test]
async fn a_job_pod_that_ended_without_its_runner_goes_with_its_secret_within_a_minute() {
    use keyhole_runner::pod::{JOB_ID_LABEL, MANAGED_BY, MANAGED_BY_LABEL, RUNNER_LABEL};
    let s = setup("rended").await;
    let pods: Api<Pod> = s.ns.api();
    let secrets: Api<Secret> = s.ns.api();
    let name = "kh-4242-ghost1";
    let mut pod = sleeping_job_pod(
        name,
        json!({MANAGED_BY_LABEL: MANAGED_BY, RUNNER_LABEL: "ghost", JOB_ID_LABEL: "4242"}),
    );
    pod["spec"]["activeDeadlineSeconds"] = 2.into();
    pod["spec"]["terminationGracePeriodSeconds"] = 1.into();
    let pod: Pod = serde_json::from_value(pod).unwrap();
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "ownerReferences": [{"apiVersion": "v1", "kind": "Pod",
            "name": name, "uid": created.metadata.uid}]},
        "immutable": true,
        "stringData": {"var.CI_JOB_TOKEN": "glcbt-ghost-job-token-0123456789"}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    // The deadline ends it: phase Failed, nobody deletes it.
    let ended = eventually(
        Duration::from_secs(60),
        Duration::from_millis(500),
        async || {
            let phase = pods.get(name).await.unwrap().status.and_then(|st| st.phase);
            (phase.as_deref() == Some("Failed")).then(std::time::Instant::now)
        },
    )
    .await
    .expect("the pod reached its deadline within 60 s");

    let (tx, handle) = start_runner(&s);
    let gone = eventually(
        Duration::from_secs(120),
        Duration::from_millis(500),
        async || {
            let pod_left = pods.get_opt(name).await.unwrap().is_some();
            let secret_left = secrets.get_opt(name).await.unwrap().is_some();
            (!pod_left && !secret_left).then(|| ended.elapsed())
        },
    )
    .await;
    stop(tx, handle).await;
    let gone = gone.expect("the ended pod or its Secret was still there 2 minutes after");
    println!(
        "figure: per-job Secret of an ended job gone {} ms after the pod ended",
        gone.as_millis()
    );
    assert!(
        gone <= Duration::from_secs(60),
        "the per-job Secret outlived its job by {gone:?}"
    );
}

/// Issue 11: `image:entrypoint` with gitlab-runner's Kubernetes semantics. `[""]` clears a tool
/// image's entrypoint (the git image's is `git`); a job's entrypoint gets the shell as its
/// arguments, so a wrapper ending in `exec "$@"` runs the script; the image's own entrypoint
/// runs only under `FF_KUBERNETES_HONOR_ENTRYPOINT`; one that cannot start fails the job with
/// the kubelet's reason, as the job's own failure.
#[tokio::test]
async fn image_entrypoints_follow_gitlab_runners_kubernetes_semantics() {
    let s = setup("glentry").await;
    let enqueue = |image: serde_json::Value, extra: Option<(&str, &str)>, script: &str| {
        let mut b = s
            .gitlab
            .job_without_checkout()
            .image_spec(image)
            .script([script]);
        if let Some((k, v)) = extra {
            b = b.variable(k, v);
        }
        b.enqueue().unwrap()
    };
    let wrapped = "echo \"wrapped=${WRAPPED_BY_ENTRYPOINT:-no}\"";
    let cleared = enqueue(
        json!({"name": "keyhole.local/git:2", "entrypoint": [""]}),
        None,
        "git --version | cut -c1-11",
    );
    let given = enqueue(
        json!({"name": "keyhole.local/wrapper:1", "entrypoint": ["/usr/local/bin/entry.sh"]}),
        None,
        wrapped,
    );
    let honored = enqueue(
        json!({"name": "keyhole.local/wrapper:1"}),
        Some(("FF_KUBERNETES_HONOR_ENTRYPOINT", "true")),
        wrapped,
    );
    let replaced = enqueue(json!({"name": "keyhole.local/wrapper:1"}), None, wrapped);
    let broken = enqueue(
        json!({"name": BUSYBOX, "entrypoint": ["/no/such/entrypoint"]}),
        None,
        "echo never",
    );
    let results = run_jobs(
        &s,
        [cleared.id, given.id, honored.id, replaced.id, broken.id],
    )
    .await;
    for (i, expected) in [
        "\ngit version",
        "\nwrapped=yes",
        "\nwrapped=yes",
        "\nwrapped=no",
    ]
    .iter()
    .enumerate()
    {
        let (done, trace) = &results[i];
        assert_eq!(done.status, FinalStatus::Success, "job {i}: {trace}");
        assert!(trace.contains(expected), "job {i}: {trace}");
    }
    let (done, trace) = &results[4];
    assert_eq!(done.status, FinalStatus::Failed, "{trace}");
    assert_eq!(
        done.failure_reason.as_deref(),
        Some("script_failure"),
        "{trace}"
    );
    assert!(
        trace.contains("the build container could not start")
            && trace.contains("/no/such/entrypoint"),
        "{trace}"
    );
    assert!(!trace.contains("\nnever"), "{trace}");
    no_job_pods_left(&s).await;
}

/// Issue 11, variables: GitLab's expansion by the runner (`$VAR`, `${VAR}`, `$$`, unknown →
/// empty, raw never), file variables' contents expanded, the image name built from variables,
/// values with `$(...)` and `$$` untouched by Kubernetes' own `$(VAR)` expansion, names keeping
/// their case, `CI_JOB_STATUS` in `after_script`, and `CI_DEBUG_TRACE` tracing with a warning
/// while masking still holds.
#[tokio::test]
async fn variables_are_expanded_like_gitlab_and_reach_the_job_byte_exact() {
    let s = setup("glvars").await;
    let var = |key: &str, value: &str, raw: bool| json!({"key": key, "value": value, "public": true, "file": false, "masked": false, "raw": raw});
    let passing = s
        .gitlab
        .job_without_checkout()
        .variable("BUSYBOX_IMAGE", BUSYBOX)
        .image("$BUSYBOX_IMAGE")
        .variable("BASE", "base-value")
        .variable("EXPANDED", "x-$BASE-${BASE}-$$BASE-$NO_SUCH_VARIABLE-end")
        .raw_variable(var("RAW_VALUE", "raw-$BASE-${BASE}-$$-$(BASE)-end", true))
        .variable("SUBSTITUTION", "now $(date) and $(BASE) and $(NOT_SET)")
        .variable("lower_Case_name", "keeps-its-case")
        .raw_variable(json!({
            "key": "CONFIG_FILE", "value": "file-$BASE-$$-end", "public": false,
            "file": true, "masked": false, "raw": false
        }))
        .script([
            "printf '<%s>\\n' \"EXPANDED=$EXPANDED\" \"RAW_VALUE=$RAW_VALUE\" \"SUBSTITUTION=$SUBSTITUTION\"",
            "printf '<%s>\\n' \"lower_Case_name=$lower_Case_name\" \"CI_SERVER=$CI_SERVER\"",
            // The broker masks every value of the per-job Secret: compare in the job.
            "test \"$(cat \"$CONFIG_FILE\")\" = 'file-base-value-$-end' && echo '<file content as expected>'",
            "printf '<status while running=%s>\\n' \"$CI_JOB_STATUS\"",
            // The script itself is a container argument: Kubernetes must not expand it either.
            "echo '<script keeps $(BASE) and $$>'",
        ])
        .after_script(["printf '<after_script status=%s>\\n' \"$CI_JOB_STATUS\""])
        .enqueue()
        .unwrap();
    let failing = s
        .gitlab
        .job_without_checkout()
        .script(["exit 3"])
        .after_script(["printf '<after_script status=%s>\\n' \"$CI_JOB_STATUS\""])
        .enqueue()
        .unwrap();
    let debug = s
        .gitlab
        .job_without_checkout()
        .variable("CI_DEBUG_TRACE", "true")
        .secret_variable("DEBUG_SECRET", "debug-secret-value-8472")
        .script(["echo \"$DEBUG_SECRET\" >/dev/null", "echo traced"])
        .enqueue()
        .unwrap();
    let [passed, failed, debugged] = run_jobs(&s, [passing.id, failing.id, debug.id]).await;

    let (done, trace) = passed;
    assert_eq!(done.status, FinalStatus::Success, "{trace}");
    assert_trace_has(
        &trace,
        [
            "<EXPANDED=x-base-value-base-value-$BASE--end>",
            "<RAW_VALUE=raw-$BASE-${BASE}-$$-$(BASE)-end>",
            "<SUBSTITUTION=now $(date) and $(BASE) and $(NOT_SET)>",
            "<lower_Case_name=keeps-its-case>",
            "<CI_SERVER=yes>",
            "<file content as expected>",
            "<status while running=running>",
            "<script keeps $(BASE) and $$>",
            "<after_script status=success>",
        ],
    );

    let (done, trace) = failed;
    assert_eq!(done.status, FinalStatus::Failed, "{trace}");
    assert_eq!(done.exit_code, Some(3), "{trace}");
    assert!(
        trace.contains("<after_script status=failed>"),
        "missing the failed status:\n{trace}"
    );

    let (done, trace) = debugged;
    assert_eq!(done.status, FinalStatus::Success, "{trace}");
    assert!(
        trace.contains("CI_DEBUG_TRACE") && trace.contains("may print secret"),
        "no debug-trace warning:\n{trace}"
    );
    assert!(trace.contains("+ echo traced"), "not traced:\n{trace}");
    assert!(trace.contains("+ echo [MASKED]"), "not masked:\n{trace}");
    assert!(
        !trace.contains("debug-secret-value-8472"),
        "a masked value reached the trace:\n{trace}"
    );
    no_job_pods_left(&s).await;
}

/// Issue 11, services: the script starts only once each service accepts connections on its
/// `ports:` or `HEALTHCHECK_TCP_PORT` (a web server that takes 3 s to listen is answering when
/// the first command runs), a service that never answers costs the job
/// `wait_for_services_timeout` and a warning naming it, and aliases resolve to the services.
/// Without the wait, the first `wget` ran while nothing listened ("Connection refused").
#[tokio::test]
async fn the_script_waits_for_its_services_and_warns_about_a_silent_one() {
    let s = setup("glsvc").await;
    let job = job_with_services(&s, [
        json!({
            "name": BUSYBOX, "alias": "web,www",
            "entrypoint": ["sh", "-c"],
            "command": ["sleep 3; mkdir -p /tmp/www; echo served-by-web > /tmp/www/index.html; exec httpd -f -p 8080 -h /tmp/www"],
            "ports": [{"number": 8080, "protocol": "http"}]
        }),
        json!({
            "name": BUSYBOX, "alias": "silent",
            "entrypoint": ["sleep"],
            "command": ["600"],
            "variables": [{"key": "HEALTHCHECK_TCP_PORT", "value": "9999", "public": true, "file": false, "masked": false, "raw": false}]
        }),
    ])
        .script([
            "wget -q -O- http://web:8080/index.html",
            "wget -q -O- http://www:8080/index.html | sed 's/web/www alias/'",
        ])
        .enqueue()
        .unwrap();
    let [(done, trace)] = run_jobs_with(&s, waiting_for_services(&s, 6), [job.id]).await;
    assert_eq!(done.status, FinalStatus::Success, "{trace}");
    assert!(
        trace.contains("waiting for services to be up and running (timeout 6 s)"),
        "{trace}"
    );
    assert!(
        trace.contains("service web is ready (port 8080 accepted a connection after"),
        "{trace}"
    );
    assert!(
        trace.contains("*** WARNING: Service silent probably didn't start properly")
            && trace.contains("port 9999 within 6 s"),
        "{trace}"
    );
    assert!(
        trace.contains("\nserved-by-web") && trace.contains("\nserved-by-www alias"),
        "{trace}"
    );
    no_job_pods_left(&s).await;
}

/// Issue 11: a service image that needs root (here: it makes its data directory under a
/// root-owned `/var/lib`, as database images do before they drop privileges) stops at once
/// on a restricted pod. The job goes on, as with gitlab-runner, and the trace names the
/// service, how it stopped, the uid it ran as, and what to do.
#[tokio::test]
async fn a_service_that_needs_root_is_named_in_the_trace_with_what_to_do() {
    let s = setup("glsvcroot").await;
    let job = job_with_services(
        &s,
        [json!({
            "name": BUSYBOX, "alias": "db",
            "entrypoint": ["sh", "-c"],
            "command": ["mkdir /var/lib/db && exec httpd -f -p 5432 -h /var/lib/db"],
            "ports": [{"number": 5432, "protocol": "tcp"}]
        })],
    )
    .script(["echo the script ran"])
    .enqueue()
    .unwrap();
    let [(done, trace)] = run_jobs_with(&s, waiting_for_services(&s, 5), [job.id]).await;
    assert_eq!(done.status, FinalStatus::Success, "{trace}");
    assert!(
        trace.contains("*** WARNING: service db exited with code 1 (Error) while the job ran")
            && trace.contains("Services run as uid 1000 without root")
            && trace.contains("kubernetes: {user:"),
        "{trace}"
    );
    assert!(trace.contains("\nthe script ran"), "{trace}");
    no_job_pods_left(&s).await;
}

/// Issue 11: `executor_opts.kubernetes.user` runs the build container as that uid:gid (the pod
/// still passes PodSecurity `restricted`), and the job still reads its delivered values (the
/// broker makes them readable through the pod's fsGroup); uid 0 fails the job with a message.
#[tokio::test]
async fn the_jobs_kubernetes_user_runs_the_script_and_root_is_refused() {
    let s = setup("gluser").await;
    let enqueue = |user: &str| {
        s.gitlab
            .job_without_checkout()
            .secret_variable("PROJECT_SECRET", "s3cr3t-value-for-user-test")
            .image_spec(json!({"name": BUSYBOX,
                "executor_opts": {"kubernetes": {"user": user}}}))
            .script([
                "echo \"uid=$(id -u) gid=$(id -g)\"",
                "test \"$PROJECT_SECRET\" = s3cr3t-value-for-user-test && echo secret-readable",
            ])
            .enqueue()
            .unwrap()
    };
    let other = enqueue("1234:2345");
    let root = enqueue("0");
    let [(done, trace), (refused, root_trace)] = run_jobs(&s, [other.id, root.id]).await;
    assert_eq!(done.status, FinalStatus::Success, "{trace}");
    assert!(
        trace.contains("\nuid=1234 gid=2345") && trace.contains("\nsecret-readable"),
        "{trace}"
    );
    let trace = root_trace;
    assert_eq!(refused.status, FinalStatus::Failed, "{trace}");
    assert!(trace.contains("uid 0 (root)"), "{trace}");
    no_job_pods_left(&s).await;
}

/// Two `[[runners]]` entries, each registered with its own GitLab (token, URL): one process
/// takes a job from each, and each job runs as its own runner (its name in the trace and on
/// its pod). Before, only the first entry was served and the second GitLab's job waited.
#[tokio::test]
async fn every_runners_entry_is_served_with_its_own_token() {
    let s = setup("glmulti").await;
    let second = Coordinator::start(CoordinatorOptions::on_bed_bridge(Duration::from_secs(2)))
        .await
        .unwrap();
    let mut config = config(&s);
    let mut other = config.runners[0].clone();
    other.name = format!("second-{}", s.ns.name);
    other.url = second.url();
    other.token = Some(SecretString::from(second.runner_token().to_string()));
    config.runners.push(other);
    let script = ["echo hello", "sleep 3"];
    let files = [("hello.txt", "hello\n")];
    let sha = s.gitlab.create_repo("acme/one", &files).unwrap();
    let first_job = s
        .gitlab
        .job()
        .project(7, "acme/one")
        .sha(&sha)
        .script(script);
    let first_job = first_job.enqueue().unwrap();
    let sha = second.create_repo("acme/two", &files).unwrap();
    let second_job = second.job().project(8, "acme/two").sha(&sha).script(script);
    let second_job = second_job.enqueue().unwrap();
    let (tx, handle) = start_runner_with(&s, config);
    let (a, b) = tokio::join!(
        s.gitlab
            .wait_for_final(first_job.id, Duration::from_secs(180)),
        second.wait_for_final(second_job.id, Duration::from_secs(180)),
    );
    stop(tx, handle).await;
    let first_trace = trace_text(&s, first_job.id);
    let second_trace = String::from_utf8_lossy(&second.trace(second_job.id)).into_owned();
    assert_eq!(a.unwrap().status, FinalStatus::Success, "{first_trace}");
    assert_eq!(b.unwrap().status, FinalStatus::Success, "{second_trace}");
    assert!(
        first_trace.contains(&format!("on test-{} (namespace", s.ns.name)),
        "{first_trace}"
    );
    assert!(
        second_trace.contains(&format!("on second-{} (namespace", s.ns.name)),
        "{second_trace}"
    );
    no_job_pods_left(&s).await;
    let _ = std::fs::remove_dir_all(&s.journal);
}

/// Runners find their orphaned pods by the name on them, so two entries may not share one:
/// the service refuses to start instead of letting one reap the other's jobs.
#[tokio::test]
async fn two_runners_entries_with_one_name_are_refused() {
    let s = setup("glsame").await;
    let mut config = config(&s);
    let twin = config.runners[0].clone();
    config.runners.push(twin);
    let (_tx, handle) = start_runner_with(&s, config);
    let err = handle.await.unwrap().unwrap_err().to_string();
    assert!(
        err.contains("runners[0] and runners[1] are both named"),
        "{err}"
    );
}

/// The apiserver goes away just as a job's pod is to be created (an apiserver restart, a
/// dropped connection): the runner retries with gitlab-runner's backoff (`retry_limit`,
/// `retry_backoff_max`), says so in the trace, and the job runs once the apiserver is back.
/// Before, the first refused connection failed the job as a system failure.
#[tokio::test]
async fn a_job_whose_pod_meets_an_apiserver_outage_runs_once_it_is_back() {
    let s = setup("gloutage").await;
    let proxy = OutageProxy::start(&s.bed.env.apiserver_url).await.unwrap();
    let job = job_with_repo(&s, &[("hello.txt", "hello\n")]).script(["cat hello.txt"]);
    let (tx, handle) = start_runner_via(&s, &proxy);
    // Let the service connect through the relay before the outage starts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.set_down(true);
    let job = job.enqueue().unwrap();
    wait_for_trace(&s, job.id, "retrying in").await;
    proxy.set_down(false);
    let (done, trace) = job_end(&s, job.id).await;
    stop(tx, handle).await;
    assert_eq!(done.status, FinalStatus::Success, "{trace}");
    assert!(
        trace.contains("the Kubernetes API server did not take Pod"),
        "{trace}"
    );
    no_job_pods_left(&s).await;
    let _ = std::fs::remove_dir_all(&s.journal);
}

/// Issue 11: a job's image in a private registry is pulled (for real, from the bed's registry)
/// with the login GitLab sends in `credentials`, or with the job's `DOCKER_AUTH_CONFIG`, which
/// wins over it; the login goes into the pod's own pull Secret, which goes with the pod. Without
/// a login the pull fails as an image pull failure that says why.
#[tokio::test]
async fn private_images_are_pulled_with_the_jobs_registry_login() {
    let s = setup("glpull").await;
    let registry = s.bed.env.registry().unwrap();
    let reg = PrivateRegistry {
        host: registry.addr.clone(),
        user: registry.user.clone(),
        password: registry.password().unwrap(),
        image: registry.private_image.clone(),
    };
    let pulled = || {
        s.gitlab
            .job_without_checkout()
            .image_spec(json!({"name": reg.image, "pull_policy": ["always"]}))
            .script(["echo pulled-and-ran"])
    };
    let login = |password: &str| json!([{"type": "registry", "url": reg.host, "username": reg.user, "password": password}]);
    let with_credentials = pulled()
        .credentials(login(&reg.password))
        .enqueue()
        .unwrap();
    let auth = base64_of(&format!("{}:{}", reg.user, reg.password));
    let docker_auth_config = format!(r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#, reg.host);
    let with_variable = pulled()
        .credentials(login("wrong-password"))
        .secret_variable("DOCKER_AUTH_CONFIG", &docker_auth_config)
        .enqueue()
        .unwrap();
    let without = pulled().enqueue().unwrap();
    let finals = run_jobs(&s, [with_credentials.id, with_variable.id, without.id]).await;
    let (done, trace) = &finals[0];
    assert_eq!(done.status, FinalStatus::Success, "{trace}");
    assert!(
        trace.contains(&format!(
            "Pulling from {} with the login from GitLab's job credentials",
            reg.host
        )) && trace.contains("\npulled-and-ran"),
        "{trace}"
    );
    let (done, trace) = &finals[1];
    assert_eq!(done.status, FinalStatus::Success, "{trace}");
    assert!(
        trace.contains("with the login from the job's DOCKER_AUTH_CONFIG"),
        "{trace}"
    );
    let (done, trace) = &finals[2];
    assert_eq!(done.status, FinalStatus::Failed, "{trace}");
    assert_eq!(
        done.failure_reason.as_deref(),
        Some("image_pull_failure"),
        "{trace}"
    );
    assert!(trace.contains("cannot get its image"), "{trace}");
    assert!(
        !trace.contains(&reg.password) && !trace.contains(&auth),
        "a registry login reached the trace"
    );
    no_job_pods_left(&s).await;
    let left =
        s.ns.api::<Secret>()
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=keyhole-runner"))
            .await
            .unwrap();
    assert!(
        left.items.is_empty(),
        "Secrets left: {:?}",
        left.items
            .iter()
            .map(|s| s.metadata.name.clone())
            .collect::<Vec<_>>()
    );
}

/// A job's pull policy, how it ended and its trace.
type PolicyOutcome<'a> = (&'a str, FinalState, String);

fn assert_failed_to_pull((policy, done, trace): &PolicyOutcome) {
    assert_eq!(done.status, FinalStatus::Failed, "{policy}: {trace}");
    assert_eq!(
        done.failure_reason.as_deref(),
        Some("image_pull_failure"),
        "{policy}: {trace}"
    );
    assert!(trace.contains("cannot get its image"), "{policy}: {trace}");
}

fn assert_ran((policy, done, trace): &PolicyOutcome) {
    assert_eq!(done.status, FinalStatus::Success, "{policy}: {trace}");
    assert!(trace.contains(&format!("\nran-with-{policy}")), "{trace}");
}

/// containerd's socket on the bed (scripts/lib/up.sh, RUN_DIR).
const CONTAINERD_SOCKET: &str = "/run/keyhole-testbed/containerd.sock";

/// Issue 13: `pull_policy` as the kubelet honours it, against the bed's registry, with an image
/// (the checkout image `scripts/test-all` pushed there) first removed from the node:
/// - `never` fails as an image pull failure while the node lacks the image;
/// - `if-not-present` pulls it (here with the job's login), and then runs it again *without* a
///   login, which only works because nothing is pulled;
/// - `always` asks the registry each time, so without a login it fails even though the node has
///   the image.
///
/// Needs the images `scripts/test-all` builds and pushes to the bed's registry
/// (`scripts/build-images --tag dev --push <registry>/keyhole`).
#[tokio::test]
async fn pull_policies_decide_when_the_registry_is_asked() {
    let s = setup("glpolicy").await;
    let registry = s.bed.env.registry().unwrap();
    let image = format!("{}/keyhole/checkout:dev", registry.addr);
    let password = registry.password().unwrap();
    let mut remove = keyhole_tests::bed_command(&s.bed.env, "ctr");
    remove.args([
        "--address",
        CONTAINERD_SOCKET,
        "-n",
        "k8s.io",
        "images",
        "rm",
        &image,
    ]);
    let removed = keyhole_tests::run(&mut remove).unwrap();
    let stderr = String::from_utf8_lossy(&removed.stderr);
    assert!(
        removed.status.success() || stderr.contains("not found"),
        "removing {image} from the node: {stderr}"
    );
    let login = json!([{"type": "registry", "url": registry.addr, "username": registry.user, "password": password}]);
    let job = |policy: &str, with_login: bool| {
        let mut job = s
            .gitlab
            .job_without_checkout()
            .image_spec(json!({"name": image, "pull_policy": [policy]}))
            .script([format!("echo ran-with-{policy}")]);
        if with_login {
            job = job.credentials(login.clone());
        }
        job.enqueue().unwrap()
    };
    let (tx, handle) = start_runner(&s);
    let mut outcomes = Vec::new();
    // One at a time: each step depends on what the node holds after the one before.
    for (policy, with_login) in [
        ("never", true),
        ("if-not-present", true),
        ("if-not-present", false),
        ("always", false),
    ] {
        let (done, trace) = job_end(&s, job(policy, with_login).id).await;
        outcomes.push((policy, done, trace));
    }
    stop(tx, handle).await;
    assert_failed_to_pull(&outcomes[0]);
    assert_ran(&outcomes[1]);
    assert_ran(&outcomes[2]);
    assert_failed_to_pull(&outcomes[3]);
    assert!(
        outcomes
            .iter()
            .all(|(_, _, trace)| !trace.contains(&password)),
        "the registry password reached a trace"
    );
    no_job_pods_left(&s).await;
}

/// The bed's private registry: its address, its login, and an image only it has.
struct PrivateRegistry {
    host: String,
    user: String,
    password: String,
    image: String,
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Issue 11: with `user_namespace_root`, a job that asks for root (`kubernetes: {user: "0"}`)
/// runs as uid 0 in its pod's own user namespace, while the node sees an unprivileged uid (the
/// uid map), in a PodSecurity `restricted` namespace: it writes where root owns (`/etc`),
/// changes its checked-out files, and reads its masked variable. `verify`'s dry-run probe
/// admits such a pod too. Without the option, root is refused (see
/// `the_jobs_kubernetes_user_runs_the_script_and_root_is_refused`).
#[tokio::test]
async fn a_root_job_runs_in_a_user_namespace_with_an_unprivileged_uid_on_the_node() {
    let s = setup("gluserns").await;
    let job = job_with_repo(&s, &[("hello.txt", "hello\n")])
        .secret_variable("ROOT_JOB_SECRET", "r00t-job-secret-value")
        .image_spec(json!({"name": BUSYBOX,
            "executor_opts": {"kubernetes": {"user": "0"}}}))
        .script([
            "echo \"uid=$(id -u)\"",
            "awk '{print \"map\", $1, ($2 == 0 ? \"identity\" : \"shifted\"), $3}' /proc/self/uid_map",
            "touch /etc/keyhole-root-test && echo wrote-etc",
            "echo changed >> hello.txt && echo changed-checkout",
            "test \"$ROOT_JOB_SECRET\" = r00t-job-secret-value && echo read-secret",
        ])
        .enqueue()
        .unwrap();
    let mut config = config(&s);
    config.runners[0].keyhole.user_namespace_root = UserNamespaceRoot::Allowed;
    keyhole_runner::verify::user_namespace_probe(&s.bed.client, &config.runners[0])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let [(done, trace)] = run_jobs_with(&s, config, [job.id]).await;
    assert_eq!(done.status, FinalStatus::Success, "{trace}");
    assert_trace_has(
        &trace,
        [
            "\nuid=0",
            "\nmap 0 shifted 65536",
            "\nwrote-etc",
            "\nchanged-checkout",
            "\nread-secret",
        ],
    );
    no_job_pods_left(&s).await;
}

/// A job pod made by hand (it sleeps ten minutes, PodSecurity restricted) with `labels`.
fn sleeping_job_pod(name: &str, labels: Value) -> Value {
    json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "securityContext": restricted_pod_security(),
            "containers": [{"name": "build", "image": BUSYBOX, "imagePullPolicy": "Never",
                "command": ["sleep", "600"], "securityContext": restricted_container_security()}]
        }
    })
}

/// A job pod made by hand as runner instance `instance` of the test's runner would make it.
fn instance_pod(s: &Setup, name: &str, job_id: u64, instance: &str) -> Pod {
    serde_json::from_value(sleeping_job_pod(
        name,
        json!({
            "app.kubernetes.io/managed-by": "keyhole-runner",
            "keyhole.dev/runner": format!("test-{}", s.ns.name),
            "keyhole.dev/job-id": job_id.to_string(),
            "keyhole.dev/instance": instance}),
    ))
    .unwrap()
}

/// The Lease runner instance `instance` would keep, last renewed `ago` before now. A dead
/// instance's lasts 30 s (the runner's) and expired long ago; a live one's lasts an hour, as
/// though renewed all along: nothing renews the hand-made one, and with 30 s a slow start on a
/// busy bed let it expire mid-test, so the reaper rightly took the "live" pod (a flake).
fn instance_lease(instance: &str, ago: Duration) -> k8s_openapi::api::coordination::v1::Lease {
    let renewed = k8s_openapi::jiff::Timestamp::now() - ago;
    let duration = if ago.is_zero() { 3600 } else { 30 };
    serde_json::from_value(json!({
        "metadata": {"name": format!("keyhole-runner-{instance}"),
            "labels": {"app.kubernetes.io/managed-by": "keyhole-runner"}},
        "spec": {"holderIdentity": instance, "leaseDurationSeconds": duration,
            "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(renewed)}
    }))
    .unwrap()
}

/// Issue 15: job pods belong to the runner *instance* (process) that made them, not to the
/// runner's name, which every replica and both pods of a rolling update share. A second
/// instance with the same name starting while the first runs a job (what `helm upgrade` and
/// `replicas: 2` do) leaves that job alone, and a hand-made pod of another live instance too;
/// it deletes the pod of an instance whose Lease has expired. Before, the second instance's
/// start-up reap deleted the first one's job pod by name ("the job pod was deleted by someone
/// else").
#[tokio::test]
async fn another_instance_reaps_only_the_pods_of_dead_instances() {
    let s = setup("glinst").await;
    let pods: Api<Pod> = s.ns.api();
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = s.ns.api();
    for (instance, ago) in [("dead-one", 600), ("live-one", 0)] {
        leases
            .create(
                &PostParams::default(),
                &instance_lease(instance, Duration::from_secs(ago)),
            )
            .await
            .unwrap();
    }
    for (name, id, instance) in [
        ("kh-9001-dead00", 9001, "dead-one"),
        ("kh-9002-live00", 9002, "live-one"),
    ] {
        pods.create(
            &PostParams::default(),
            &instance_pod(&s, name, id, instance),
        )
        .await
        .unwrap();
    }
    let job = s
        .gitlab
        .job_without_checkout()
        .script(["echo started", "sleep 10", "echo finished"])
        .enqueue()
        .unwrap();
    let (tx_a, handle_a) = start_runner(&s);
    wait_for_trace(&s, job.id, "started\n").await;
    let mut second = config(&s);
    second.runners[0].keyhole.journal_dir = format!("{}-second", s.journal.display());
    let (tx_b, handle_b) = start_runner_with(&s, second);
    let dead_gone = eventually(
        Duration::from_secs(30),
        Duration::from_millis(500),
        async || {
            let dead = pods.get_opt("kh-9001-dead00").await.unwrap();
            dead.is_none_or(|p| p.metadata.deletion_timestamp.is_some())
                .then_some(())
        },
    )
    .await
    .is_some();
    let (done, trace) = job_end_within(&s, job.id, Duration::from_secs(120)).await;
    let live = pods.get_opt("kh-9002-live00").await.unwrap();
    stop(tx_b, handle_b).await;
    stop(tx_a, handle_a).await;
    assert_eq!(done.status, FinalStatus::Success, "{trace}");
    assert!(trace.contains("\nfinished"), "{trace}");
    assert!(
        dead_gone,
        "the dead instance's pod was not reaped within 30 s"
    );
    assert!(
        live.is_some_and(|p| p.metadata.deletion_timestamp.is_none()),
        "a live instance's pod was deleted"
    );
    // A runner that stopped cleanly gives up its Lease; the hand-made live one stays.
    let left: Vec<String> = leases
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|l| l.metadata.name)
        .collect();
    assert_eq!(left, ["keyhole-runner-dead-one", "keyhole-runner-live-one"]);
    let _ = std::fs::remove_dir_all(&s.journal);
    let _ = std::fs::remove_dir_all(format!("{}-second", s.journal.display()));
}

/// Issue 15: once a job's script and after_script are done, its pod goes within seconds, even
/// with a service that ignores SIGTERM and the default grace period (330 s, which a canceled
/// job's after_script needs). Before, such a pod, with its per-job Secret (the job token),
/// stayed Terminating for the whole grace period after the job was reported.
#[tokio::test]
async fn a_finished_jobs_pod_goes_promptly_even_with_a_service_that_ignores_sigterm() {
    let s = setup("glgrace").await;
    let job = job_with_services(
        &s,
        [json!({
            "name": BUSYBOX, "alias": "stubborn",
            "entrypoint": ["sh", "-c"],
            "command": ["trap '' TERM; while :; do sleep 1; done"]
        })],
    )
    .script(["echo done"])
    .enqueue()
    .unwrap();
    let mut config = config(&s);
    config.runners[0]
        .kubernetes
        .pod_termination_grace_period_seconds = None;
    let (tx, handle) = start_runner_with(&s, config);
    let (done, trace) = job_end(&s, job.id).await;
    let reported = std::time::Instant::now();
    let pods: Api<Pod> = s.ns.api();
    let selector = ListParams::default().labels("app.kubernetes.io/managed-by=keyhole-runner");
    let gone_after = eventually(
        Duration::from_secs(120),
        Duration::from_millis(500),
        async || {
            let left = pods.list(&selector).await.unwrap().items;
            left.is_empty().then(|| reported.elapsed())
        },
    )
    .await;
    stop(tx, handle).await;
    assert_eq!(done.status, FinalStatus::Success, "{trace}");
    let gone_after = gone_after.expect("the pod was still there 120 s after the job was reported");
    println!(
        "figure: finished job's pod gone {:.1} s after the final state",
        gone_after.as_secs_f64()
    );
    assert!(
        gone_after < Duration::from_secs(40),
        "the finished job's pod stayed {gone_after:?} after the job was reported"
    );
}

#[tokio::test]
async fn a_two_stage_pipeline_passes_artifacts_and_a_junit_report_through_gitlab() {
    let s = setup("glart").await;
    let sha = s
        .gitlab
        .create_repo("acme/app", &[("src.txt", "source\n")])
        .unwrap();
    let (tx, handle) = start_runner(&s);
    let build = s
        .gitlab
        .job()
        .name("build")
        .project(7, "acme/app")
        .sha(&sha)
        .script([
            "mkdir -p dist/sub dist/empty",
            "printf 'the binary\\n' > dist/app && chmod 755 dist/app",
            "head -c 300000 /dev/urandom > dist/sub/blob.bin",
            "sha256sum dist/sub/blob.bin",
            "ln -s app dist/link",
            "echo scratch > dist/build.log",
            "echo '<testsuite name=\"unit\" tests=\"1\"><testcase name=\"ok\"/></testsuite>' > report.xml",
            "mkdir -p notes && echo 'not in git' > notes/untracked.txt && echo changed >> src.txt",
        ])
        .variable("DIST", "dist")
        // `untracked`: every file git does not track joins the archive (notes/, report.xml),
        // never a tracked one (src.txt, changed or not).
        .artifacts(json!([
            {"name": "build-$CI_JOB_NAME", "untracked": true, "paths": ["$DIST/"],
             "exclude": ["dist/*.log"], "when": "on_success", "artifact_type": "archive",
             "artifact_format": "zip", "expire_in": "1 week"},
            {"name": "", "untracked": false, "paths": ["report.xml"], "exclude": [],
             "when": "always", "artifact_type": "junit", "artifact_format": "gzip",
             "expire_in": "1 week"}
        ]))
        .enqueue()
        .unwrap();
    let (done, trace) = job_end(&s, build.id).await;
    assert_eq!(done.status, FinalStatus::Success, "{trace}");
    assert_trace_has(
        &trace,
        [
            "Uploading artifacts for successful job",
            "Uploading artifacts as \"archive\" to coordinator... 201 Created",
            "Uploading artifacts as \"junit\" to coordinator... 201 Created",
            // dist/build.log, reached by `paths` and by `untracked`: counted per way, as
            // gitlab-runner counts.
            "excluded 2 files",
        ],
    );
    // dist/app, dist/sub/blob.bin, and the untracked notes/untracked.txt and report.xml.
    let archived = format!("201 Created  id={} files=4 ", build.id);
    assert!(trace.contains(&archived), "missing {archived:?}:\n{trace}");
    assert!(
        !trace.contains(&build.token),
        "the job token reached the trace"
    );
    let blob_sum = trace
        .lines()
        .find(|l| l.ends_with("dist/sub/blob.bin") && !l.starts_with('$'))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no checksum line:\n{trace}"))
        .to_owned();

    let stored = s.gitlab.artifacts(build.id);
    assert_eq!(stored.len(), 2, "{stored:?}");
    let archive = keyhole_tests::coordinator::StoredArtifact::of_type(&stored, "archive");
    assert_eq!(
        (archive.artifact_format.as_str(), archive.filename.as_str()),
        ("zip", "build-build.zip")
    );
    assert_eq!(archive.expire_in.as_deref(), Some("1 week"));
    let files = archive.unzip().unwrap();
    let dist = files.path().join("dist");
    assert_eq!(std::fs::read(dist.join("app")).unwrap(), b"the binary\n");
    assert!(dist.join("empty").is_dir(), "the empty directory was kept");
    assert_eq!(
        std::fs::read_link(dist.join("link")).unwrap(),
        std::path::Path::new("app")
    );
    assert!(
        !dist.join("build.log").exists(),
        "the excluded file was packed"
    );
    assert_eq!(
        std::fs::read(files.path().join("notes/untracked.txt")).unwrap(),
        b"not in git\n"
    );
    assert!(
        files.path().join("report.xml").is_file(),
        "an untracked file was left out"
    );
    assert!(
        !files.path().join("src.txt").exists(),
        "a tracked file was packed as untracked"
    );
    let junit = keyhole_tests::coordinator::StoredArtifact::of_type(&stored, "junit");
    assert_eq!(junit.artifact_format, "gzip");
    let xml = junit.gunzip().unwrap();
    assert!(xml.contains("<testsuite name=\"unit\""), "{xml}");

    let test = s
        .gitlab
        .job()
        .name("test")
        .project(7, "acme/app")
        .sha(&sha)
        .dependency(build.id, "build")
        .script([
            "cat dist/app",
            "sha256sum dist/sub/blob.bin",
            "test -x dist/app && test -L dist/link && test -d dist/empty && echo 'modes and links kept'",
            "cat src.txt",
        ])
        .enqueue()
        .unwrap();
    let (done, trace) = job_end(&s, test.id).await;
    assert_eq!(done.status, FinalStatus::Success, "{trace}");

    // Artifacts that expire between GitLab's payload and the download: the job fails before
    // its script, saying so (gitlab-runner's downloader fails on 404 too).
    let late = s
        .gitlab
        .job_without_checkout()
        .name("late")
        .dependency(build.id, "build")
        .script(["echo 'the script ran'"])
        .enqueue()
        .unwrap();
    s.gitlab.expire_artifacts(build.id);
    let (late_done, late_trace) = job_end(&s, late.id).await;
    stop(tx, handle).await;
    assert_eq!(late_done.status, FinalStatus::Failed, "{late_trace}");
    assert!(late_trace.contains("not found"), "{late_trace}");
    assert!(
        late_trace.contains("downloading the artifacts of earlier jobs failed"),
        "{late_trace}"
    );
    assert!(!late_trace.contains("the script ran"), "{late_trace}");
    assert_trace_has(
        &trace,
        [
            format!("Downloading artifacts for build ({})", build.id),
            "Downloading artifacts from coordinator... ok".to_owned(),
            "the binary".to_owned(),
            format!("{blob_sum}  dist/sub/blob.bin"),
            "modes and links kept".to_owned(),
            "source".to_owned(),
        ],
    );
    no_job_pods_left(&s).await;
}

#[tokio::test]
async fn artifacts_follow_when_refuse_hostile_links_and_fail_the_job_when_too_large() {
    let mut s = setup("glartx").await;
    // A coordinator that takes at most 1 MiB per artifact.
    s.gitlab = Coordinator::start(CoordinatorOptions {
        max_artifacts_size: 1 << 20,
        ..CoordinatorOptions::on_bed_bridge(Duration::from_secs(2))
    })
    .await
    .unwrap();
    let (tx, handle) = start_runner(&s);
    // A failing job: its on_failure artifacts go up, its on_success ones do not. It plants
    // links to the transfer container's plan (which holds the job token) and to the root.
    let failing = s
        .gitlab
        .job_without_checkout()
        .script([
            "mkdir -p out",
            "echo partial > out/log.txt",
            "ln -s /keyhole/transfer/plan.json out/plan",
            "ln -s / out/root",
            "exit 3",
        ])
        .artifacts(json!([
            {"name": "logs", "paths": ["out/", "out/root/etc/passwd", "../outside"],
             "when": "on_failure", "artifact_type": "archive", "artifact_format": "zip"},
            {"name": "", "paths": ["out/log.txt"], "when": "on_success",
             "artifact_type": "junit", "artifact_format": "gzip"}
        ]))
        .enqueue()
        .unwrap();
    // A job whose archive is over the limit: GitLab answers 413 and the job fails.
    let too_large = s
        .gitlab
        .job_without_checkout()
        .script(["head -c 3000000 /dev/urandom > big.bin"])
        .artifacts(json!([
            {"name": "big", "paths": ["big.bin"], "when": "on_success",
             "artifact_type": "archive", "artifact_format": "zip"}
        ]))
        .enqueue()
        .unwrap();
    let (failed, trace) = job_end(&s, failing.id).await;
    let (large, large_trace) = job_end(&s, too_large.id).await;
    stop(tx, handle).await;

    assert_eq!(failed.status, FinalStatus::Failed, "{trace}");
    assert_eq!(failed.exit_code, Some(3), "{trace}");
    assert!(
        trace.contains("Uploading artifacts for failed job"),
        "{trace}"
    );
    assert!(
        trace.contains("../outside: not supported: outside build directory"),
        "{trace}"
    );
    let stored = s.gitlab.artifacts(failing.id);
    assert_eq!(stored.len(), 1, "only the on_failure artifact: {stored:?}");
    let bytes = stored[0].read().unwrap();
    assert!(
        !bytes
            .windows(failing.token.len())
            .any(|w| w == failing.token.as_bytes()),
        "the archive holds the job token: a link was followed"
    );
    let files = stored[0].unzip().unwrap();
    let out = files.path().join("out");
    assert_eq!(std::fs::read(out.join("log.txt")).unwrap(), b"partial\n");
    assert!(
        std::fs::symlink_metadata(out.join("plan"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link is packed as a link"
    );
    // `out/root` (a link to `/`) went in as a link, and nothing was packed through it.
    assert!(
        std::fs::symlink_metadata(out.join("root"))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    let trace = large_trace;
    assert_eq!(large.status, FinalStatus::Failed, "{trace}");
    assert!(trace.contains("too large archive"), "{trace}");
    assert!(
        trace.contains("uploading the job's artifacts failed"),
        "{trace}"
    );
    assert!(s.gitlab.artifacts(too_large.id).is_empty());
    no_job_pods_left(&s).await;
}

/// The runner's config with the bed's S3 store as its cache (objects under `prefix`).
fn with_bed_cache(s: &Setup, prefix: &str) -> Config {
    let mut config = config(s);
    config.runners[0].cache = Some(keyhole_tests::bed_cache_config(&s.bed.env, prefix).unwrap());
    config
}

#[tokio::test]
async fn a_cache_saved_by_one_job_is_restored_by_the_next_and_through_a_fallback_key() {
    use rusty_s3::S3Action as _;
    let s = setup("glcache").await;
    let s3 = s.bed.env.s3().unwrap();
    let secret_key = s3.secret_key().unwrap();
    let (tx, handle) = start_runner_with(&s, with_bed_cache(&s, &s.ns.name));
    let cache = |key: &str, policy: &str, fallbacks: &[&str]| {
        json!([{"key": key, "untracked": false, "policy": policy, "paths": ["vendor/"],
                "when": "on_success", "fallback_keys": fallbacks}])
    };
    let run = |job: keyhole_tests::coordinator::JobBuilder<'_>| {
        let job = job.variable("GIT_STRATEGY", "none").enqueue().unwrap();
        let s = &s;
        async move {
            let (done, trace) = job_end(s, job.id).await;
            (job, done, trace)
        }
    };

    // The first job finds no cache (a warning, not a failure) and saves one.
    let (first, done, trace) = run(s
        .gitlab
        .job()
        .cache(cache("deps", "pull-push", &[]))
        .script([
            "test ! -e vendor && echo 'nothing restored'",
            "mkdir -p vendor/sub && echo 'cached library' > vendor/sub/lib.txt",
        ]))
    .await;
    assert_eq!(done.status, FinalStatus::Success, "{trace}");
    assert_trace_has(
        &trace,
        [
            "Checking cache for deps...",
            "Failed to extract cache",
            "nothing restored",
            "Creating cache deps...",
            "Created cache",
        ],
    );
    // The object sits where gitlab-runner puts it: <Path>/runner/<short token>/project/<id>/<key>.
    let object = format!(
        "{}/runner/{}/project/123/deps",
        s.ns.name,
        keyhole_runner::variables::short_token(s.gitlab.runner_token())
    );
    let url = s3
        .bucket()
        .unwrap()
        .get_object(Some(&s3.credentials().unwrap()), &object)
        .sign(Duration::from_secs(60));
    let stored = reqwest::get(url).await.unwrap();
    assert_eq!(stored.status(), 200, "no cache object at {object}");
    assert!(
        stored.bytes().await.unwrap().starts_with(b"PK"),
        "a zip archive"
    );

    // The next job with the same key gets the files back; `pull` does not save.
    let (second, done, trace) = run(s
        .gitlab
        .job()
        .cache(cache("deps", "pull", &[]))
        .script(["cat vendor/sub/lib.txt"]))
    .await;
    assert_eq!(done.status, FinalStatus::Success, "{trace}");
    assert!(trace.contains("Successfully extracted cache"), "{trace}");
    assert!(trace.contains("cached library"), "{trace}");
    assert!(!trace.contains("Creating cache"), "{trace}");

    // A new key falls back to the old one.
    let (third, done, trace) = run(s
        .gitlab
        .job()
        .cache(cache("feature-deps", "pull", &["deps"]))
        .script(["cat vendor/sub/lib.txt"]))
    .await;
    stop(tx, handle).await;
    assert_eq!(done.status, FinalStatus::Success, "{trace}");
    assert_trace_has(
        &trace,
        [
            "Checking cache for feature-deps...",
            "feature-deps: cache not found",
            "Checking cache for deps...",
            "Successfully extracted cache",
            "cached library",
        ],
    );
    // The store's secret key never reaches a job: not its trace, not its pod's Secret.
    for id in [first.id, second.id, third.id] {
        assert!(!trace_text(&s, id).contains(&secret_key));
    }
    no_job_pods_left(&s).await;
}

/// GitLab down for 60 s in the middle of a job (every request answered 503): the job runs on,
/// and once GitLab is back the trace is complete, every line once and in order, and the final
/// state is acknowledged. Prints how long after the outage the final state arrived.
#[tokio::test]
async fn gitlab_down_for_a_minute_mid_job_loses_no_trace_and_gets_the_final_state() {
    const OUTAGE: Duration = Duration::from_secs(60);
    let s = setup("gldown").await;
    let job = s
        .gitlab
        .job_without_checkout()
        .script([numbered_lines_script(80, "1")])
        .enqueue()
        .unwrap();
    let (tx, handle) = start_runner(&s);
    wait_for_trace(&s, job.id, "line 5 of 80").await;
    s.gitlab.outage(OUTAGE);
    let outage_end = std::time::Instant::now() + OUTAGE;
    // Line 60 was printed before GitLab came back (the job prints one a second and line 5
    // came before the outage): how long the trace takes to catch up.
    tokio::time::sleep_until(outage_end.into()).await;
    wait_for_trace(&s, job.id, "line 60 of 80").await;
    let caught_up = outage_end.elapsed();
    let (done, trace) = job_end_within(&s, job.id, Duration::from_secs(300)).await;
    stop(tx, handle).await;
    assert_eq!(done.status, FinalStatus::Success, "{trace}");
    assert_numbered_lines_once(&trace, 80);
    assert_eq!(done.trace_len, s.gitlab.trace(job.id).len());
    assert!(
        s.gitlab.counters().faults.values().sum::<u64>() > 0,
        "the outage was met"
    );
    println!(
        "FIGURE gitlab-outage-60s: trace caught up {:.1} s after GitLab came back; {} trace bytes, none lost or doubled",
        caught_up.as_secs_f64(),
        done.trace_len
    );
    no_job_pods_left(&s).await;
}

/// The apiserver goes away for 10 s in the middle of a job (every connection of the runner's
/// cut, new ones refused, as in a restart): the job runs on, the runner follows its log again
/// from where it was, and the trace has every line once and in order.
#[tokio::test]
async fn an_apiserver_restart_mid_job_loses_no_trace_and_doubles_none() {
    let s = setup("glapirs").await;
    let proxy = OutageProxy::start(&s.bed.env.apiserver_url).await.unwrap();
    let job = s
        .gitlab
        .job_without_checkout()
        .script([numbered_lines_script(60, "0.5")])
        .enqueue()
        .unwrap();
    let (tx, handle) = start_runner_via(&s, &proxy);
    wait_for_trace(&s, job.id, "line 10 of 60").await;
    proxy.set_down(true);
    tokio::time::sleep(Duration::from_secs(10)).await;
    proxy.set_down(false);
    let back = std::time::Instant::now();
    // Line 30 came out during the outage (one line each half second from line 10 on).
    wait_for_trace(&s, job.id, "line 30 of 60").await;
    let caught_up = back.elapsed();
    let (done, trace) = job_end(&s, job.id).await;
    stop(tx, handle).await;
    assert_eq!(done.status, FinalStatus::Success, "{trace}");
    assert_numbered_lines_once(&trace, 60);
    println!(
        "FIGURE apiserver-restart-10s: the trace caught up {:.1} s after the apiserver came back; no byte lost or doubled",
        caught_up.as_secs_f64()
    );
    no_job_pods_left(&s).await;
    let _ = std::fs::remove_dir_all(&s.journal);
}
