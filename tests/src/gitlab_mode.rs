//! The set-up of a GitLab-mode test on the bed: a PodSecurity-restricted namespace with the
//! default job ServiceAccount, a coordinator (fake GitLab) on the bed's bridge, where job pods
//! reach it, and the runner config that points at both; the runner service started in the
//! test's process, and its jobs' traces waited for. Shared by the GitLab-mode suites.

use std::time::Duration;

use keyhole_runner::config::{Config, RunnerConfig};
use secrecy::SecretString;

use crate::coordinator::FinalState;
use crate::{
    Coordinator, CoordinatorOptions, JobNamespace, OutageProxy, TestBed, TestNamespace, eventually,
};

/// How long a test waits for a job's final state: a deadline against hangs, not a speed
/// assertion.
pub const JOB_DEADLINE: Duration = Duration::from_secs(180);

/// What a GitLab-mode test works with.
#[derive(Debug)]
pub struct Setup {
    pub bed: TestBed,
    pub ns: TestNamespace,
    pub gitlab: Coordinator,
    pub journal: std::path::PathBuf,
}

/// A namespace named after `tag`, its default job ServiceAccount, and a coordinator.
pub async fn setup(tag: &str) -> Setup {
    let JobNamespace { bed, ns, .. } = JobNamespace::builder(tag)
        .restricted()
        .service_account("keyhole-job")
        .create()
        .await;
    // Pods fetch the repository from the coordinator, so it listens on the bed's bridge.
    let gitlab = Coordinator::start(CoordinatorOptions::on_bed_bridge(Duration::from_secs(2)))
        .await
        .unwrap();
    let journal = std::env::temp_dir().join(format!("keyhole-journal-{}", ns.name));
    Setup {
        bed,
        ns,
        gitlab,
        journal,
    }
}

/// The runner's config for `s`: one runner of that coordinator, jobs in that namespace.
pub fn config(s: &Setup) -> Config {
    let mut runner = RunnerConfig {
        name: format!("test-{}", s.ns.name),
        url: s.gitlab.url(),
        token: Some(SecretString::from(s.gitlab.runner_token().to_string())),
        ..RunnerConfig::default()
    };
    runner.kubernetes.namespace = s.ns.name.clone();
    runner.kubernetes.pull_policy.0 = vec!["never".into()];
    runner.kubernetes.pod_termination_grace_period_seconds = Some(20);
    runner.keyhole.vault_addr = Some(s.bed.env.vault_pod_addr.clone());
    runner.keyhole.kube_api = s.bed.env.apiserver_url.clone();
    runner.keyhole.journal_dir = s.journal.display().to_string();
    Config {
        concurrent: 4,
        runners: vec![runner],
        ..Config::default()
    }
}

/// A job script that prints `line <i> of <total>` for i = 1..=total, `pause` seconds apart
/// (a `sleep` argument such as `0.5`): output spread over time, for faults in the middle of it.
pub fn numbered_lines_script(total: u32, pause: &str) -> String {
    format!(
        "i=1; while [ $i -le {total} ]; do echo \"line $i of {total}\"; i=$((i+1)); sleep {pause}; done"
    )
}

/// Asserts that `trace` holds the lines of [`numbered_lines_script`] each once, in order:
/// nothing lost, nothing doubled.
pub fn assert_numbered_lines_once(trace: &str, total: u32) {
    let suffix = format!(" of {total}");
    let lines: Vec<&str> = trace
        .lines()
        .filter(|l| l.starts_with("line ") && l.ends_with(&suffix))
        .collect();
    let expected: Vec<String> = (1..=total)
        .map(|i| format!("line {i} of {total}"))
        .collect();
    assert_eq!(lines, expected, "every line once, in order:\n{trace}");
}

/// A runner service running in the test's process: send `true` to stop it gracefully.
pub type RunningService = (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<Result<(), keyhole_runner::service::ServiceError>>,
);

/// Runs the service with [`config`] in the background.
pub fn start_runner(s: &Setup) -> RunningService {
    start_runner_with(s, config(s))
}

/// [`start_runner`] with a config the test adjusted.
pub fn start_runner_with(s: &Setup, config: Config) -> RunningService {
    start_service(config, s.bed.client.clone())
}

/// [`start_runner`] talking to the apiserver through `proxy`, which the test can take down.
pub fn start_runner_via(s: &Setup, proxy: &OutageProxy) -> RunningService {
    start_service(config(s), s.bed.client_at(&proxy.url()).unwrap())
}

/// Runs the service with `config`, talking to the apiserver with `client`, in the background.
pub fn start_service(config: Config, client: kube::Client) -> RunningService {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let handle = tokio::spawn(keyhole_runner::service::run_until(config, rx, Some(client)));
    (tx, handle)
}

/// Runs the service with [`config`] until every job of `ids` has its final state, then stops
/// it; see [`run_jobs_with`].
pub async fn run_jobs<const N: usize>(s: &Setup, ids: [u64; N]) -> [(FinalState, String); N] {
    run_jobs_with(s, config(s), ids).await
}

/// Runs the service with `config` until every job of `ids` has its final state (each waited
/// for in turn, up to [`JOB_DEADLINE`]), then stops it. Returns each job's final state and
/// trace, in the order of `ids`.
pub async fn run_jobs_with<const N: usize>(
    s: &Setup,
    config: Config,
    ids: [u64; N],
) -> [(FinalState, String); N] {
    let (tx, handle) = start_runner_with(s, config);
    let mut ended = Vec::with_capacity(N);
    for id in ids {
        ended.push(job_end(s, id).await);
    }
    stop(tx, handle).await;
    ended.try_into().expect("one end per job")
}

/// Waits (up to [`JOB_DEADLINE`]) for the job's final state; returns it with the job's trace.
pub async fn job_end(s: &Setup, id: u64) -> (FinalState, String) {
    job_end_within(s, id, JOB_DEADLINE).await
}

/// [`job_end`] with another deadline.
pub async fn job_end_within(s: &Setup, id: u64, within: Duration) -> (FinalState, String) {
    let done = s.gitlab.wait_for_final(id, within).await.unwrap();
    (done, trace_text(s, id))
}

/// Asserts that `trace` contains each of `lines`, naming the first one missing.
#[track_caller]
pub fn assert_trace_has<S: AsRef<str>>(trace: &str, lines: impl IntoIterator<Item = S>) {
    for line in lines {
        let line = line.as_ref();
        assert!(trace.contains(line), "missing {line:?}:\n{trace}");
    }
}

/// Stops the service gracefully and waits for it to end, which must be without an error.
pub async fn stop(
    tx: tokio::sync::watch::Sender<bool>,
    handle: tokio::task::JoinHandle<Result<(), keyhole_runner::service::ServiceError>>,
) {
    tx.send(true).unwrap();
    handle.await.unwrap().unwrap();
}

/// The job's trace as GitLab holds it, as text.
pub fn trace_text(s: &Setup, id: u64) -> String {
    s.gitlab.trace_text(id)
}

/// Waits (bounded, 2 min, looking every 100 ms) until the job's trace contains `marker`.
pub async fn wait_for_trace(s: &Setup, id: u64, marker: &str) {
    let seen = eventually(
        Duration::from_secs(120),
        Duration::from_millis(100),
        async || trace_text(s, id).contains(marker).then_some(()),
    )
    .await;
    assert!(
        seen.is_some(),
        "{marker:?} never reached the trace:\n{}",
        trace_text(s, id)
    );
}
